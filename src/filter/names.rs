//! A compact set of domain names stored as 64-bit hashes, matched by suffix.
//!
//! Plain-domain rules are the vast majority of every DNS block list, so they skip the general rule
//! engine: each name is kept as one `u64` in an open-addressing table (about 12 bytes per name at
//! the 2/3 load factor used here) and a query walks its own suffixes (`a.b.c.com`, `b.c.com`,
//! `c.com`, `com`), one probe each.
//!
//! The suffix hashes come from a single right-to-left pass over the name: the hash state at each
//! label boundary is the hash of that suffix, so a name of `k` labels costs one pass plus `k`
//! probes, with no allocation. A 64-bit hash can in theory collide; with 10^6 names the chance that
//! a given unrelated name hits one is about 10^6 / 2^64 ≈ 5·10^-14, far below any other error rate
//! of a DNS filter.

/// Most suffixes a query is checked at. A valid DNS name (≤ 253 bytes) has at most 127 labels;
/// longer inputs are checked at their 128 shortest suffixes.
pub(crate) const MAX_SUFFIXES: usize = 128;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The hashes of a name's suffixes, shortest first, with their label counts.
pub(crate) struct Suffixes {
    hashes: [u64; MAX_SUFFIXES],
    len: usize,
}

impl Suffixes {
    /// Hashes every suffix of `name` that starts at a label boundary. ASCII letters are folded to
    /// lower case and one trailing dot is ignored, so `Ads.Example.` and `ads.example` agree.
    pub(crate) fn of(name: &str) -> Suffixes {
        let bytes = name.as_bytes();
        let bytes = bytes.strip_suffix(b".").unwrap_or(bytes);
        let mut out = Suffixes {
            hashes: [0; MAX_SUFFIXES],
            len: 0,
        };
        if bytes.is_empty() {
            return out;
        }
        let mut state = FNV_OFFSET;
        for &b in bytes.iter().rev() {
            if b == b'.' {
                if out.len == MAX_SUFFIXES {
                    return out;
                }
                out.hashes[out.len] = finish(state);
                out.len += 1;
            }
            state = step(state, b);
        }
        if out.len < MAX_SUFFIXES {
            out.hashes[out.len] = finish(state);
            out.len += 1;
        }
        out
    }

    /// `(hash, label count)` of each suffix, shortest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.hashes[..self.len]
            .iter()
            .enumerate()
            .map(|(i, &h)| (h, i + 1))
    }
}

/// The hash of a whole name, as [`Suffixes`] computes it for its longest suffix.
pub(crate) fn name_hash(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let bytes = bytes.strip_suffix(b".").unwrap_or(bytes);
    finish(bytes.iter().rev().fold(FNV_OFFSET, |s, &b| step(s, b)))
}

/// Number of labels of a name (dots + 1), ignoring one trailing dot.
pub(crate) fn label_count(name: &str) -> usize {
    let bytes = name.as_bytes();
    let bytes = bytes.strip_suffix(b".").unwrap_or(bytes);
    bytes.iter().filter(|&&b| b == b'.').count() + 1
}

#[inline]
fn step(state: u64, b: u8) -> u64 {
    (state ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(FNV_PRIME)
}

/// FNV-1a alone spreads short keys poorly over the high bits the table indexes by; the murmur3
/// finaliser (a bijection) fixes that. Zero marks an empty slot, so it is moved to one.
#[inline]
fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h.max(1)
}

/// A set of name hashes with suffix matching. Built once, read many times.
#[derive(Debug, Default)]
pub(crate) struct NameSet {
    /// Open addressing with linear probing; `0` is an empty slot.
    slots: Box<[u64]>,
    len: usize,
    /// Bit `k - 1` is set when some name has `k` labels (`k ≥ 64` shares bit 63), so a query
    /// skips the probes for suffix lengths no entry has (usually the bare TLD).
    label_mask: u64,
}

impl NameSet {
    /// Builds the set from name hashes (duplicates are merged) and the mask of label counts seen.
    fn from_hashes(mut hashes: Vec<u64>, label_mask: u64) -> NameSet {
        hashes.sort_unstable();
        hashes.dedup();
        if hashes.is_empty() {
            return NameSet::default();
        }
        let capacity = hashes.len() + hashes.len() / 2 + 8;
        let mut set = NameSet {
            slots: vec![0u64; capacity].into_boxed_slice(),
            len: hashes.len(),
            label_mask,
        };
        for hash in hashes {
            let mut i = set.home(hash);
            while set.slots[i] != 0 {
                i = if i + 1 == capacity { 0 } else { i + 1 };
            }
            set.slots[i] = hash;
        }
        set
    }

    /// Number of distinct names.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// True when the name with `hash` (of `labels` labels) is in the set.
    #[inline]
    pub(crate) fn contains(&self, hash: u64, labels: usize) -> bool {
        if self.label_mask & label_bit(labels) == 0 {
            return false;
        }
        let capacity = self.slots.len();
        let mut i = self.home(hash);
        // The load factor is ≤ 2/3, so an empty slot is always reached.
        loop {
            let slot = self.slots[i];
            if slot == hash {
                return true;
            }
            if slot == 0 {
                return false;
            }
            i = if i + 1 == capacity { 0 } else { i + 1 };
        }
    }

    /// True when any suffix in `suffixes` is in the set.
    #[inline]
    pub(crate) fn matches(&self, suffixes: &Suffixes) -> bool {
        self.len != 0 && suffixes.iter().any(|(h, k)| self.contains(h, k))
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<u64>()
    }

    /// Slot index a hash starts probing at (multiply-shift range reduction: no power-of-two size).
    #[inline]
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
    }
}

#[inline]
fn label_bit(labels: usize) -> u64 {
    1u64 << (labels.clamp(1, 64) - 1)
}

/// Gathers names for a [`NameSet`]: 8 bytes per name while a list is parsed.
#[derive(Debug, Default)]
pub(crate) struct NameSetBuilder {
    hashes: Vec<u64>,
    label_mask: u64,
}

impl NameSetBuilder {
    /// Adds the name with `hash` and `labels` labels.
    pub(crate) fn push(&mut self, hash: u64, labels: usize) {
        self.hashes.push(hash);
        self.label_mask |= label_bit(labels);
    }

    /// Names pushed so far (duplicates included).
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True when nothing was pushed.
    pub(crate) fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Drops the names pushed after the first `len`. The label mask keeps their bits: it only
    /// has to be a superset of the labels present, so a stale bit costs a probe, never a result.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.hashes.truncate(len);
    }

    /// Hashes pushed so far.
    pub(crate) fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    /// Keeps only the hashes for which `keep` is true.
    pub(crate) fn retain(&mut self, keep: impl FnMut(&u64) -> bool) {
        self.hashes.retain(keep);
    }

    /// The finished set.
    pub(crate) fn build(self) -> NameSet {
        NameSet::from_hashes(self.hashes, self.label_mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of(names: &[&str]) -> NameSet {
        let mut builder = NameSetBuilder::default();
        for n in names {
            builder.push(name_hash(n), label_count(n));
        }
        builder.build()
    }

    #[test]
    fn suffix_hashes_agree_with_whole_name_hashes() {
        let s = Suffixes::of("a.b.c.com");
        let got: Vec<_> = s.iter().collect();
        assert_eq!(
            got,
            vec![
                (name_hash("com"), 1),
                (name_hash("c.com"), 2),
                (name_hash("b.c.com"), 3),
                (name_hash("a.b.c.com"), 4),
            ]
        );
    }

    #[test]
    fn case_and_trailing_dot_do_not_matter() {
        assert_eq!(name_hash("Ads.Tracker.NET."), name_hash("ads.tracker.net"));
    }

    #[test]
    fn set_matches_listed_names_and_their_subdomains_only() {
        let set = set_of(&["tracker.net", "ads.shop.org", "tracker.net"]);
        assert_eq!(set.len(), 2);
        assert!(set.matches(&Suffixes::of("tracker.net")));
        assert!(set.matches(&Suffixes::of("x.y.tracker.net")));
        assert!(set.matches(&Suffixes::of("ads.shop.org")));
        assert!(!set.matches(&Suffixes::of("shop.org")));
        assert!(!set.matches(&Suffixes::of("mytracker.net")));
        assert!(!set.matches(&Suffixes::of("net")));
        assert!(!set.matches(&Suffixes::of("")));
    }

    #[test]
    fn empty_set_matches_nothing() {
        let set = NameSet::default();
        assert!(!set.matches(&Suffixes::of("anything.org")));
    }

    #[test]
    fn overlong_names_do_not_panic() {
        let long = "a.".repeat(500) + "tracker.net";
        let set = set_of(&["tracker.net"]);
        assert!(set.matches(&Suffixes::of(&long)));
        let dots = ".".repeat(1000);
        assert!(!set.matches(&Suffixes::of(&dots)));
    }
}
