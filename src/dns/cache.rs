//! The answer cache: finished responses kept as wire bytes with the offsets of their TTLs, so a
//! hit is a copy plus a few patched bytes (id, question case, TTLs, OPT) and no parsing.
//!
//! TTLs are honoured: an entry lives for the smallest TTL in it (positive answers) or the
//! RFC 2308 §5 negative TTL (NXDOMAIN / NODATA), and TTLs handed out count down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustc_hash::FxBuildHasher;

use super::wire::{self, QueryView, HEADER_LEN};

const SHARDS: usize = 32;
/// Longest time anything is cached, whatever the upstream says.
pub const MAX_TTL: u32 = 86_400;
/// Longest time a negative answer is cached (RFC 2308 §5 suggests 1–3 hours at most).
pub const MAX_NEGATIVE_TTL: u32 = 3_600;

/// One cached answer.
#[derive(Debug)]
pub struct Entry {
    /// The full response with id 0, a lower-case question and no OPT record.
    wire: Box<[u8]>,
    /// (offset, original TTL) of every record.
    ttls: Box<[(u16, u32)]>,
    stored: Instant,
    expires: Instant,
}

impl Entry {
    /// Makes an entry from response bytes (no OPT), to live `ttl` seconds from `now`.
    /// `None` when the bytes do not walk cleanly.
    pub fn new(wire: Vec<u8>, ttl: u32, now: Instant) -> Option<Entry> {
        let ttls = wire::ttl_fields(&wire)?;
        Some(Entry {
            wire: wire.into_boxed_slice(),
            ttls: ttls.into_boxed_slice(),
            stored: now,
            expires: now + Duration::from_secs(ttl as u64),
        })
    }

    /// The response code stored.
    pub fn rcode(&self) -> u8 {
        self.wire.get(3).map(|f| f & 0x0F).unwrap_or(0)
    }

    /// True when the answer holds a record of type `rtype`.
    pub fn has_record(&self, rtype: u16) -> bool {
        self.ttls.iter().any(|&(off, _)| {
            let at = usize::from(off).saturating_sub(4);
            self.wire.get(at..at + 2) == Some(&rtype.to_be_bytes()[..])
        })
    }

    /// Writes this answer for query `q` (bytes `query`) into `out`: id, RD/CD, the client's
    /// spelling of the name, TTLs counted down, and an OPT when the client sent one.
    pub fn write_answer(&self, q: &QueryView<'_>, now: Instant, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.wire);
        out[0..2].copy_from_slice(&q.id.to_be_bytes());
        let flags = u16::from_be_bytes([out[2], out[3]]) & !0x0110 | (q.flags & 0x0110);
        out[2..4].copy_from_slice(&flags.to_be_bytes());
        // 0x20 case randomisation (and plain courtesy): echo the name as asked.
        if let Some(dst) = out.get_mut(HEADER_LEN..HEADER_LEN + q.qname.len()) {
            dst.copy_from_slice(q.qname);
        }
        let elapsed = now.saturating_duration_since(self.stored).as_secs() as u32;
        for &(off, ttl) in self.ttls.iter() {
            let off = off as usize;
            if let Some(dst) = out.get_mut(off..off + 4) {
                dst.copy_from_slice(&ttl.saturating_sub(elapsed).to_be_bytes());
            }
        }
        if let Some(e) = q.edns {
            wire::put_opt(out, e.dnssec_ok);
            let ar = u16::from_be_bytes([out[10], out[11]]).wrapping_add(1);
            out[10..12].copy_from_slice(&ar.to_be_bytes());
        }
    }
}

/// Builds the cache key of a query into `buf`: lower-case name, type, class, DO bit and the
/// id of the policy that admitted it (answers that passed one group's CNAME check are not
/// served to another group).
pub fn key<'b>(q: &QueryView<'_>, policy: u8, buf: &'b mut [u8; 263]) -> &'b [u8] {
    let n = q.qname.len().min(256);
    for (d, s) in buf.iter_mut().zip(&q.qname[..n]) {
        *d = s.to_ascii_lowercase();
    }
    buf[n..n + 2].copy_from_slice(&q.qtype.to_be_bytes());
    buf[n + 2..n + 4].copy_from_slice(&q.qclass.to_be_bytes());
    buf[n + 4] = q.edns.map(|e| e.dnssec_ok as u8).unwrap_or(0);
    buf[n + 5] = policy;
    &buf[..n + 6]
}

/// One shard: its map and when expired entries were last swept out of it.
struct Shard {
    map: HashMap<Box<[u8]>, Arc<Entry>, FxBuildHasher>,
    /// None until the first sweep.
    last_sweep: Option<Instant>,
}

/// Shortest time between two sweeps of a full shard. A sweep walks the whole shard, so doing
/// one per insert made a full cache cost O(n) per miss (31% of CPU under dnsperf, perf record).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A sharded map from query key to answer.
pub struct Cache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

impl Cache {
    /// A cache holding about `capacity` answers (0 turns caching off).
    pub fn new(capacity: usize) -> Cache {
        Cache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::with_hasher(FxBuildHasher),
                        last_sweep: None,
                    })
                })
                .collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, key: &[u8]) -> &Mutex<Shard> {
        use std::hash::BuildHasher;
        let h = FxBuildHasher.hash_one(key);
        &self.shards[(h as usize >> 7) % SHARDS]
    }

    /// The live entry for `key`, if any.
    pub fn get(&self, key: &[u8], now: Instant) -> Option<Arc<Entry>> {
        if self.per_shard == 0 {
            return None;
        }
        let shard = self.shard(key).lock();
        let e = shard.map.get(key)?;
        (now < e.expires).then(|| e.clone())
    }

    /// Stores an entry at `now`, evicting expired ones (or any one) when the shard is full.
    pub fn insert(&self, key: &[u8], entry: Arc<Entry>, now: Instant) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self.shard(key).lock();
        if shard.map.len() >= self.per_shard && !shard.map.contains_key(key) {
            let due = shard
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY);
            if due {
                shard.map.retain(|_, e| e.expires > now);
                shard.last_sweep = Some(now);
            }
            if shard.map.len() >= self.per_shard {
                // Still full: drop one entry (hash order, i.e. arbitrary) for the new one.
                if let Some(k) = shard.map.keys().next().cloned() {
                    shard.map.remove(&k);
                }
            }
        }
        shard.map.insert(key.into(), entry);
    }

    /// Drops everything (after a filter change, so no stale verdict is served).
    pub fn clear(&self) {
        for s in self.shards.iter() {
            s.lock().map.clear();
        }
    }

    /// Number of entries (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], edns: bool) -> Vec<u8> {
        let mut q = vec![0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, edns as u8];
        q.extend_from_slice(name);
        q.extend_from_slice(&[0, 1, 0, 1]);
        if edns {
            q.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0]);
        }
        q
    }

    fn answer() -> Vec<u8> {
        let mut a = vec![0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        a.extend_from_slice(b"\x03www\x07example\x03com\x00\x00\x01\x00\x01");
        a.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 100, 0, 4, 192, 0, 2, 1]);
        a
    }

    #[test]
    fn hit_patches_id_case_and_counts_ttl_down() {
        let now = Instant::now();
        let e = Entry::new(answer(), 100, now).unwrap();
        let qb = query(b"\x03WwW\x07example\x03com\x00", true);
        let q = QueryView::parse(&qb).unwrap();
        let mut out = Vec::new();
        e.write_answer(&q, now + Duration::from_secs(30), &mut out);
        assert_eq!(&out[0..2], &[0xAB, 0xCD]);
        assert_eq!(&out[13..16], b"WwW");
        let ttl_at = out.len() - 11 - 10;
        assert_eq!(&out[ttl_at..ttl_at + 4], &70u32.to_be_bytes());
        assert_eq!(u16::from_be_bytes([out[10], out[11]]), 1, "OPT added");
    }

    #[test]
    fn entries_expire_with_their_ttl() {
        let c = Cache::new(100);
        let now = Instant::now();
        c.insert(b"k", Arc::new(Entry::new(answer(), 5, now).unwrap()), now);
        assert!(c.get(b"k", now + Duration::from_secs(4)).is_some());
        assert!(c.get(b"k", now + Duration::from_secs(6)).is_none());
    }

    #[test]
    fn full_cache_evicts_instead_of_growing() {
        let c = Cache::new(SHARDS);
        let now = Instant::now();
        for i in 0..1000u32 {
            c.insert(
                &i.to_be_bytes(),
                Arc::new(Entry::new(answer(), 100, now).unwrap()),
                now,
            );
        }
        assert!(c.len() <= SHARDS * 2);
    }
}
