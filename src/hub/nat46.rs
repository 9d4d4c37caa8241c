//! NAT46: IPv4-only apps and devices reach IPv6-only sites through the Cloud PC.
//!
//! - **DNS46** (the resolver): an A question from a device, for a name with no A records but
//!   with AAAA records, is answered with an address of the pool (`dns.dns46_pool`) that
//!   [`Nat46::map`] binds to the first AAAA address, for that device.
//! - **device → internet**: an IPv4 packet from the device to a pool address it has a
//!   mapping for is translated (RFC 7915, [`translate::to_v6`]) to IPv6 from the device's
//!   NAT46 source to the mapped address and written to
//!   the TUN; the kernel masquerades it like any overlay source, so it leaves from the Cloud
//!   PC's global IPv6 address. No mapping: ICMP host unreachable back to the device.
//! - **internet → device**: an IPv6 packet read from the TUN for a NAT46 source is translated
//!   back (from the pool address of its source, to the device's IPv4 address).
//!
//! The NAT46 source is `<overlay>::4646:<device IPv4>` (in the overlay's host part, so the
//! egress masquerade and the TUN route cover it).
//!
//! Mappings are per device (each device has the whole pool), bounded per device (the least
//! recently used one whose DNS answer's TTL has run out goes first; none: the name is answered
//! without DNS46 and counted), and end when idle for `dns.dns46_idle` and past their TTL.
//! Addresses outside global unicast (`2000::/3`: no loopback, link-local, unique-local,
//! multicast, IPv4-mapped) and in the overlay are never mapped.

pub mod translate;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ipnet::{Ipv4Net, Ipv6Net};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

pub use translate::Drop46;

/// How NAT46 runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pool: Ipv4Net,
    /// The overlay's IPv6 range (never mapped; the NAT46 sources are made in it).
    pub overlay_v6: Ipv6Net,
    /// A mapping unused this long (and past its DNS TTL) ends.
    pub idle: Duration,
    /// Mappings one device may hold.
    pub per_device: usize,
}

/// Counters for `status` and `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Nat46Stats {
    /// Mappings held now (all devices).
    pub mappings: u64,
    /// Packets translated device → internet.
    pub translated_out: u64,
    /// Packets translated internet → device.
    pub translated_in: u64,
    /// Packets to a pool address with no mapping (answered with ICMP unreachable).
    pub no_mapping: u64,
    /// Packets that could not be translated (malformed, unsupported, hop limit).
    pub dropped: u64,
    /// Names answered without DNS46 because the device held its most mappings.
    pub device_full: u64,
}

struct Entry {
    v6: Ipv6Addr,
    used: Instant,
    /// The DNS answer's TTL runs out then: the mapping lives at least that long.
    until: Instant,
}

#[derive(Default)]
struct Device {
    by_pool: FxHashMap<Ipv4Addr, Entry>,
    by_v6: FxHashMap<Ipv6Addr, Ipv4Addr>,
    next: u32,
}

/// The mappings and the devices DNS46 is on for.
pub struct Nat46 {
    s: Settings,
    source: Ipv6Net,
    devices: Mutex<FxHashMap<Ipv4Addr, Device>>,
    /// The devices it is on for: each of their addresses → their IPv4 address.
    enabled: ArcSwap<FxHashMap<IpAddr, Ipv4Addr>>,
    out: AtomicU64,
    back: AtomicU64,
    no_mapping: AtomicU64,
    dropped: AtomicU64,
    full: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Nat46 {
    pub fn new(s: Settings) -> Nat46 {
        // In the host part of the overlay (a /64 or larger, as the config requires), clear of
        // the devices' addresses (the lowest ones).
        let base = u128::from(s.overlay_v6.network()) | (0x4646u128 << 32);
        let source = Ipv6Net::new(Ipv6Addr::from(base), 96).expect("96 is a prefix length");
        Nat46 {
            s,
            source,
            devices: Mutex::default(),
            enabled: ArcSwap::from_pointee(FxHashMap::default()),
            out: AtomicU64::new(0),
            back: AtomicU64::new(0),
            no_mapping: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            full: AtomicU64::new(0),
        }
    }

    /// The pool DNS46 answers from.
    pub fn pool(&self) -> Ipv4Net {
        self.s.pool
    }

    /// The range the devices' NAT46 sources are in (replies to it come back to the hub).
    pub fn source_range(&self) -> Ipv6Net {
        self.source
    }

    /// Puts DNS46 on for exactly these devices (IPv4, IPv6 overlay addresses); mappings of
    /// the others end.
    pub fn set_devices(&self, devices: &[(Ipv4Addr, Ipv6Addr)]) {
        let mut m = FxHashMap::default();
        for (v4, v6) in devices {
            m.insert(IpAddr::V4(*v4), *v4);
            m.insert(IpAddr::V6(*v6), *v4);
        }
        self.devices
            .lock()
            .retain(|d, _| m.contains_key(&IpAddr::V4(*d)));
        self.enabled.store(Arc::new(m));
    }

    /// The device (by IPv4 address) a DNS client address belongs to, when DNS46 is on for it.
    pub fn device_of(&self, client: IpAddr) -> Option<Ipv4Addr> {
        self.enabled.load().get(&client).copied()
    }

    /// Whether `a` may be mapped: global unicast, not the overlay's.
    pub fn mappable(&self, a: Ipv6Addr) -> bool {
        (a.segments()[0] & 0xe000) == 0x2000 && !self.s.overlay_v6.contains(&a)
    }

    /// The pool address `device` reaches `v6` at, made if need be; lives at least `ttl`.
    /// `None`: not mappable, or the device holds its most mappings and none may go.
    pub fn map(&self, device: Ipv4Addr, v6: Ipv6Addr, ttl: u32, now: Instant) -> Option<Ipv4Addr> {
        if !self.mappable(v6) {
            return None;
        }
        let until = now + Duration::from_secs(u64::from(ttl));
        let mut all = self.devices.lock();
        let d = all.entry(device).or_default();
        if let Some(p) = d.by_v6.get(&v6).copied() {
            if let Some(e) = d.by_pool.get_mut(&p) {
                e.until = e.until.max(until);
                e.used = now;
                return Some(p);
            }
        }
        let hosts = (1u64 << (32 - self.s.pool.prefix_len()))
            .saturating_sub(2)
            .max(1);
        if d.by_pool.len() as u64 >= (self.s.per_device as u64).min(hosts) {
            let oldest = d
                .by_pool
                .iter()
                .filter(|(_, e)| e.until <= now)
                .min_by_key(|(_, e)| e.used)
                .map(|(p, _)| *p);
            match oldest {
                Some(p) => {
                    if let Some(e) = d.by_pool.remove(&p) {
                        d.by_v6.remove(&e.v6);
                    }
                }
                None => {
                    bump(&self.full);
                    return None;
                }
            }
        }
        // The next free host address of the pool, round robin (a freed address is the last
        // to come back).
        let base = u32::from(self.s.pool.network());
        for _ in 0..hosts {
            d.next = (d.next % hosts as u32) + 1;
            let p = Ipv4Addr::from(base + d.next);
            if let std::collections::hash_map::Entry::Vacant(slot) = d.by_pool.entry(p) {
                slot.insert(Entry {
                    v6,
                    used: now,
                    until,
                });
                d.by_v6.insert(v6, p);
                return Some(p);
            }
        }
        bump(&self.full);
        None
    }

    /// `device`'s NAT46 source address.
    pub fn source_of(&self, device: Ipv4Addr) -> Ipv6Addr {
        let mut o = self.source.network().octets();
        o[12..].copy_from_slice(&device.octets());
        Ipv6Addr::from(o)
    }

    /// Translates `pkt` (IPv4 from `device` to a pool address) into `out` (IPv6). `Err(true)`:
    /// no mapping (answer with [`unreachable()`]); `Err(false)`: dropped.
    pub fn outbound(
        &self,
        pkt: &[u8],
        device: Ipv4Addr,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), bool> {
        let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
        let v6 = {
            let mut all = self.devices.lock();
            let e = all.get_mut(&device).and_then(|d| d.by_pool.get_mut(&dst));
            match e {
                Some(e) => {
                    e.used = now;
                    e.v6
                }
                None => {
                    bump(&self.no_mapping);
                    return Err(true);
                }
            }
        };
        match translate::to_v6(pkt, self.source_of(device), v6, out) {
            Ok(()) => {
                bump(&self.out);
                Ok(())
            }
            Err(e) => {
                tracing::trace!(error = %e, "NAT46 dropped a packet");
                bump(&self.dropped);
                Err(false)
            }
        }
    }

    /// Translates `pkt` (IPv6 read from the TUN, to a NAT46 source) into `out` (IPv4 to the
    /// device); returns the device's address.
    pub fn inbound(&self, pkt: &[u8], now: Instant, out: &mut Vec<u8>) -> Option<Ipv4Addr> {
        let r = self.inbound_inner(pkt, now, out);
        match r {
            Some(_) => bump(&self.back),
            None => bump(&self.dropped),
        }
        r
    }

    fn inbound_inner(&self, pkt: &[u8], now: Instant, out: &mut Vec<u8>) -> Option<Ipv4Addr> {
        if pkt.len() < 48 {
            return None;
        }
        let device = Ipv4Addr::new(pkt[36], pkt[37], pkt[38], pkt[39]);
        // An ICMPv6 error may come from a router on the way: it is about the remote its
        // quoted packet went to.
        let error = pkt[6] == 58 && (1..=4).contains(&pkt[40]) && pkt.len() >= 48 + 40;
        let at = if error { 48 + 24 } else { 8 };
        let remote = Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[at..at + 16]).ok()?);
        let pool = {
            let mut all = self.devices.lock();
            let d = all.get_mut(&device)?;
            let p = *d.by_v6.get(&remote)?;
            d.by_pool.get_mut(&p)?.used = now;
            p
        };
        translate::to_v4(pkt, pool, device, out).ok()?;
        Some(device)
    }

    /// Ends the mappings idle longer than `dns46_idle` and past their TTL.
    pub fn expire(&self, now: Instant) {
        let idle = self.s.idle;
        let mut all = self.devices.lock();
        for d in all.values_mut() {
            let Device { by_pool, by_v6, .. } = d;
            by_pool.retain(|_, e| {
                let keep = e.until > now || now.saturating_duration_since(e.used) < idle;
                if !keep {
                    by_v6.remove(&e.v6);
                }
                keep
            });
        }
        all.retain(|_, d| !d.by_pool.is_empty());
    }

    pub fn stats(&self) -> Nat46Stats {
        Nat46Stats {
            mappings: self
                .devices
                .lock()
                .values()
                .map(|d| d.by_pool.len() as u64)
                .sum(),
            translated_out: self.out.load(Ordering::Relaxed),
            translated_in: self.back.load(Ordering::Relaxed),
            no_mapping: self.no_mapping.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            device_full: self.full.load(Ordering::Relaxed),
        }
    }

    /// The TTL a DNS46 answer gets: the AAAA record's, at most the idle time.
    pub fn answer_ttl(&self, ttl: u32) -> u32 {
        ttl.min(self.s.idle.as_secs().min(u64::from(u32::MAX)) as u32)
    }
}

/// The NAT46 source of the device with these overlay addresses (what [`Nat46::source_of`]
/// gives, for an overlay of /64 or larger: the devices' addresses are its lowest).
pub fn source_for(device_v6: Ipv6Addr, device_v4: Ipv4Addr) -> Ipv6Addr {
    let net = u128::from(device_v6) & !((1u128 << 64) - 1);
    Ipv6Addr::from(net | (0x4646u128 << 32) | u128::from(u32::from(device_v4)))
}

/// ICMP host unreachable for IPv4 `pkt` (from the device to an unmapped pool address), from
/// that address back to the device.
pub fn unreachable(pkt: &[u8]) -> Option<Vec<u8>> {
    use crate::hub::nat64::wire::{emit_ipv4, finish, put16, sum};
    let ihl = usize::from(*pkt.first()? & 0x0f) * 4;
    if pkt.len() < ihl.max(20) || pkt[9] == 1 && pkt.get(ihl).is_some_and(|t| ![0, 8].contains(t)) {
        // Never an error about an error.
        return None;
    }
    let quote = &pkt[..pkt.len().min(ihl + 8)];
    let src = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    let dst = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let mut out = Vec::with_capacity(28 + quote.len());
    emit_ipv4(
        &mut out,
        0,
        (28 + quote.len()) as u16,
        0,
        false,
        64,
        1,
        src,
        dst,
    );
    out.extend_from_slice(&[3, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(quote);
    let c = finish(sum(0, &out[20..]));
    put16(&mut out, 22, c);
    Some(out)
}

#[cfg(test)]
mod tests;
