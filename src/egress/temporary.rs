//! Temporary egress addresses, without I/O: which public source address the new connections
//! of each `temporary` device leave with, when it rotates, and which old addresses are still
//! draining or already cut.
//!
//! Drive it with the devices that want a temporary address ([`TempEgress::set_wanted`]), an
//! on-demand change ([`TempEgress::renew`]) and the clock ([`TempEgress::tick`] at
//! [`TempEgress::next_change`]); `now` is Unix seconds from the caller. After each call the
//! caller puts [`TempEgress::snat`] (one source NAT per device: new connections only, since
//! the kernel's conntrack keeps an open connection's address), [`TempEgress::cut`] (old
//! addresses whose drain ended: their connections are reset) and [`TempEgress::in_use6`]
//! (addresses the host must receive for) in force.
//!
//! Invariants: an address is held by at most one device at a time (held or draining); an IPv6
//! address is never handed out twice (random out of the prefix, and remembered); an IPv4 pool
//! address goes back to the pool only when its drain ended, and the longest-rested one is
//! handed out first. With no free IPv4 address a new device keeps the hub's address for IPv4
//! (its lease says so), never another device's.
//!
//! The mapping lives in memory only: it is never written to disk, and logged at debug at most.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};

/// How a device's internet traffic leaves the Cloud PC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    /// With the Cloud PC's own address (masquerade).
    #[default]
    Hub,
    /// With an address of the device's own, out of `egress.ipv6_prefix` and
    /// `egress.ipv4_pool`, changed on a schedule and on demand.
    Temporary,
}

impl EgressMode {
    /// `hub` or `temporary`.
    pub fn as_str(self) -> &'static str {
        match self {
            EgressMode::Hub => "hub",
            EgressMode::Temporary => "temporary",
        }
    }

    /// Reads `hub` or `temporary`.
    pub fn parse(s: &str) -> Result<EgressMode, String> {
        match s {
            "hub" => Ok(EgressMode::Hub),
            "temporary" => Ok(EgressMode::Temporary),
            _ => Err(format!("{s:?} is not an egress mode: use hub or temporary")),
        }
    }
}

/// Where temporary addresses come from (checked against the host by the caller).
#[derive(Debug, Clone, Default)]
pub struct Pool {
    /// The IPv6 prefix; `None` = IPv6 keeps the hub's address.
    pub v6: Option<Ipv6Net>,
    /// Extra IPv4 addresses of the VM.
    pub v4: Vec<Ipv4Addr>,
    /// Addresses never handed out (the host's own).
    pub avoid: Vec<IpAddr>,
    /// Seconds between rotations; `None` = only on demand.
    pub rotate: Option<u64>,
    /// Seconds an old address keeps its open connections before they are cut.
    pub drain: u64,
}

/// A device that wants a temporary address: its public key and overlay addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub key: String,
    pub overlay4: Ipv4Addr,
    pub overlay6: Ipv6Addr,
}

/// The addresses a device's new connections leave with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// `None`: IPv6 leaves with the hub's address (no prefix; `note` says why).
    pub ipv6: Option<Ipv6Addr>,
    /// `None`: IPv4 leaves with the hub's address (no pool, or no free address in it).
    pub ipv4: Option<Ipv4Addr>,
    /// Unix seconds the addresses were handed out.
    pub since: i64,
    /// Unix seconds of the next rotation by itself (`None` = only on demand).
    pub next_rotation: Option<i64>,
    /// What the device does not get, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone)]
struct Held {
    want: Want,
    lease: Lease,
    /// Why the lease has no IPv6 address of its own, if it has none (the IPv4 half of
    /// `lease.note` changes when a pool address frees up; this half does not).
    note6: Option<&'static str>,
}

/// The two halves of a lease's note, joined.
fn join_notes(note6: Option<&str>, note4: Option<&str>) -> Option<String> {
    match (note6, note4) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b).map(String::from),
    }
}

/// An old address whose open connections may finish until `until`.
#[derive(Clone)]
struct Draining {
    want: Want,
    ipv6: Option<Ipv6Addr>,
    ipv4: Option<Ipv4Addr>,
    until: i64,
}

/// How long a cut (overlay, address) pair is remembered: longer than the kernel keeps an idle
/// established TCP connection (`nf_conntrack_tcp_timeout_established`, 5 days), so a cut
/// connection cannot come back.
const CUT_KEEP_SECS: i64 = 5 * 86_400 + 3600;
/// At most this many cut pairs (oldest go first): 20 devices rotating hourly make 40 a hour.
const MAX_CUT: usize = 16_384;
/// How many handed-out IPv6 addresses are remembered so that none comes back; beyond this a
/// repeat needs a 64-bit random collision.
const MAX_USED6: usize = 65_536;

/// The temporary addresses in force (see the module docs).
#[derive(Clone)]
pub struct TempEgress {
    pool: Pool,
    held: HashMap<String, Held>,
    draining: Vec<Draining>,
    /// Cut pairs and when they were cut, oldest first.
    cut: VecDeque<((IpAddr, IpAddr), i64)>,
    used6: HashSet<Ipv6Addr>,
    used6_order: VecDeque<Ipv6Addr>,
    free4: VecDeque<Ipv4Addr>,
}

/// `renew` for a device that has no temporary address.
#[derive(Debug, PartialEq, Eq)]
pub struct NotTemporary;

impl TempEgress {
    /// Nothing handed out yet.
    pub fn new(pool: Pool) -> TempEgress {
        let free4 = pool.v4.iter().copied().collect();
        TempEgress {
            pool,
            held: HashMap::new(),
            draining: Vec::new(),
            cut: VecDeque::new(),
            used6: HashSet::new(),
            used6_order: VecDeque::new(),
            free4,
        }
    }

    /// Where addresses come from.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Makes exactly the devices of `wanted` hold temporary addresses: new ones get theirs,
    /// ones no longer in it start draining. Returns whether anything changed.
    pub fn set_wanted(&mut self, wanted: &[Want], now: i64, rng: &mut impl rand::Rng) -> bool {
        let keys: HashSet<&str> = wanted.iter().map(|w| w.key.as_str()).collect();
        let gone: Vec<String> = self
            .held
            .keys()
            .filter(|k| !keys.contains(k.as_str()))
            .cloned()
            .collect();
        let mut changed = !gone.is_empty();
        for k in gone {
            if let Some(h) = self.held.remove(&k) {
                self.retire(h.want, h.lease.ipv6, h.lease.ipv4, now);
            }
        }
        for w in wanted {
            match self.held.get(&w.key) {
                Some(h) if h.want == *w => continue,
                Some(_) => {
                    // Same key, other overlay addresses: start over.
                    if let Some(h) = self.held.remove(&w.key) {
                        self.retire(h.want, h.lease.ipv6, h.lease.ipv4, now);
                    }
                }
                None => {}
            }
            let held = self.lease_for(w, None, now, rng);
            self.held.insert(w.key.clone(), held);
            changed = true;
        }
        self.finish_drains(now);
        changed
    }

    /// New addresses for the device with public key `key` at once; its old ones drain.
    pub fn renew(
        &mut self,
        key: &str,
        now: i64,
        rng: &mut impl rand::Rng,
    ) -> Result<Lease, NotTemporary> {
        let h = self.held.remove(key).ok_or(NotTemporary)?;
        let lease = self.rotate(h, now, rng);
        Ok(lease)
    }

    /// Rotations whose time came, drains that ended, and IPv4 addresses for leases that had
    /// none while the pool was empty. Returns whether anything changed.
    pub fn tick(&mut self, now: i64, rng: &mut impl rand::Rng) -> bool {
        let due: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.lease.next_rotation.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut changed = !due.is_empty();
        for k in due {
            if let Some(h) = self.held.remove(&k) {
                self.rotate(h, now, rng);
            }
        }
        changed |= self.finish_drains(now);
        // Pool addresses freed by the drains go to leases that had to do without.
        let mut waiting: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.lease.ipv4.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        waiting.sort();
        for k in waiting {
            let Some(h) = self.held.get(&k) else { continue };
            let want = h.want.clone();
            let Some(a) = self.take4(&want) else { break };
            if let Some(h) = self.held.get_mut(&k) {
                h.lease.ipv4 = Some(a);
                h.lease.note = join_notes(h.note6, None);
                changed = true;
            }
        }
        changed
    }

    /// Unix seconds of the next change by itself (a rotation or a drain ending).
    pub fn next_change(&self) -> Option<i64> {
        let rotations = self.held.values().filter_map(|h| h.lease.next_rotation);
        let drains = self.draining.iter().map(|d| d.until);
        rotations.chain(drains).min()
    }

    /// The lease of the device with public key `key`.
    pub fn lease(&self, key: &str) -> Option<&Lease> {
        self.held.get(key).map(|h| &h.lease)
    }

    /// Source NAT for new connections: (overlay address, public address) per held lease.
    pub fn snat(&self) -> Vec<(IpAddr, IpAddr)> {
        let mut v = Vec::new();
        for h in self.held.values() {
            if let Some(a) = h.lease.ipv6 {
                v.push((h.want.overlay6.into(), a.into()));
            }
            if let Some(a) = h.lease.ipv4 {
                v.push((h.want.overlay4.into(), a.into()));
            }
        }
        v.sort();
        v
    }

    /// [`Self::snat`], and for each IPv6 lease the device's NAT46 source too: its IPv4
    /// traffic to IPv6-only sites (`hub::nat46`) leaves with the same address.
    pub fn snat_with_nat46(&self) -> Vec<(IpAddr, IpAddr)> {
        let mut v = self.snat();
        for h in self.held.values() {
            if let Some(a) = h.lease.ipv6 {
                let n46 = crate::hub::nat46::source_for(h.want.overlay6, h.want.overlay4);
                v.push((n46.into(), a.into()));
            }
        }
        v.sort();
        v
    }

    /// (overlay address, old public address) pairs whose connections are cut.
    pub fn cut(&self) -> Vec<(IpAddr, IpAddr)> {
        let mut v: Vec<_> = self.cut.iter().map(|c| c.0).collect();
        v.sort();
        v
    }

    /// IPv6 addresses the host must receive packets for (held and draining).
    pub fn in_use6(&self) -> Vec<Ipv6Addr> {
        let mut v: Vec<Ipv6Addr> = self
            .held
            .values()
            .filter_map(|h| h.lease.ipv6)
            .chain(self.draining.iter().filter_map(|d| d.ipv6))
            .collect();
        v.sort();
        v
    }

    /// How many devices hold temporary addresses.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// How many addresses are draining now.
    pub fn draining(&self) -> usize {
        self.draining.len()
    }

    fn rotate(&mut self, h: Held, now: i64, rng: &mut impl rand::Rng) -> Lease {
        let next = self.lease_for(&h.want, h.lease.ipv4, now, rng);
        let lease = next.lease.clone();
        // An IPv4 address kept (no free one to move to) does not drain.
        let old4 = h.lease.ipv4.filter(|a| lease.ipv4 != Some(*a));
        self.retire(h.want, h.lease.ipv6, old4, now);
        self.held.insert(next.want.key.clone(), next);
        self.finish_drains(now);
        lease
    }

    /// A fresh lease for `w`; `current4` is kept when the pool has no other free address.
    fn lease_for(
        &mut self,
        w: &Want,
        current4: Option<Ipv4Addr>,
        now: i64,
        rng: &mut impl rand::Rng,
    ) -> Held {
        let (ipv6, note6) = match self.pool.v6 {
            Some(net) => match self.fresh6(net, rng) {
                Some(a) => (Some(a), None),
                None => (None, Some("no unused IPv6 address found in the prefix: IPv6 leaves with the hub's address")),
            },
            None => (None, Some("no IPv6 prefix for temporary addresses: IPv6 leaves with the hub's address")),
        };
        let (ipv4, note4) = match self.take4(w) {
            Some(a) => (Some(a), None),
            None if current4.is_some() => (current4, Some("no other free address in egress.ipv4_pool: IPv4 keeps its address")),
            None if self.pool.v4.is_empty() => (None, Some("no egress.ipv4_pool: IPv4 leaves with the hub's address")),
            None => (None, Some("every address of egress.ipv4_pool is in use: IPv4 leaves with the hub's address")),
        };
        Held {
            want: w.clone(),
            lease: Lease {
                ipv6,
                ipv4,
                since: now,
                next_rotation: self
                    .pool
                    .rotate
                    .map(|s| now.saturating_add(s.min(i64::MAX as u64) as i64)),
                note: join_notes(note6, note4),
            },
            note6,
        }
    }

    /// The longest-rested free pool address for `w`, if any (its old pairing with `w` leaves
    /// the cut set, or the new connections would be cut).
    fn take4(&mut self, w: &Want) -> Option<Ipv4Addr> {
        let a = self.free4.pop_front()?;
        let pair = (IpAddr::from(w.overlay4), IpAddr::from(a));
        self.cut.retain(|c| c.0 != pair);
        Some(a)
    }

    /// A random address of `net` that was never handed out and is not the host's.
    fn fresh6(&mut self, net: Ipv6Net, rng: &mut impl rand::Rng) -> Option<Ipv6Addr> {
        let host_bits = 128 - u32::from(net.prefix_len());
        let mask: u128 = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let base = u128::from(net.network());
        for _ in 0..64 {
            let iid = rng.random::<u128>() & mask;
            // Not the subnet-router anycast (all zero), nor the reserved anycast interface
            // identifiers at the top of a /64 (RFC 5453).
            if iid == 0 || (host_bits == 64 && iid >= 0xfdff_ffff_ffff_ff80) {
                continue;
            }
            let a = Ipv6Addr::from(base | iid);
            if self.used6.contains(&a) || self.pool.avoid.contains(&IpAddr::V6(a)) {
                continue;
            }
            self.used6.insert(a);
            self.used6_order.push_back(a);
            if self.used6_order.len() > MAX_USED6 {
                if let Some(old) = self.used6_order.pop_front() {
                    self.used6.remove(&old);
                }
            }
            return Some(a);
        }
        None
    }

    fn retire(&mut self, want: Want, ipv6: Option<Ipv6Addr>, ipv4: Option<Ipv4Addr>, now: i64) {
        if ipv6.is_none() && ipv4.is_none() {
            return;
        }
        self.draining.push(Draining {
            want,
            ipv6,
            ipv4,
            until: now.saturating_add(self.pool.drain.min(i64::MAX as u64) as i64),
        });
    }

    /// Ends the drains due at `now`: their connections are cut and IPv4 addresses go back
    /// to the pool (to the end of the queue: the longest-rested address goes out first).
    fn finish_drains(&mut self, now: i64) -> bool {
        let (done, keep): (Vec<Draining>, Vec<Draining>) = std::mem::take(&mut self.draining)
            .into_iter()
            .partition(|d| d.until <= now);
        self.draining = keep;
        let changed = !done.is_empty();
        for d in done {
            if let Some(a) = d.ipv6 {
                self.push_cut((d.want.overlay6.into(), a.into()), now);
            }
            if let Some(a) = d.ipv4 {
                self.push_cut((d.want.overlay4.into(), a.into()), now);
                self.free4.push_back(a);
            }
        }
        while self.cut.front().is_some_and(|c| c.1 + CUT_KEEP_SECS <= now) {
            self.cut.pop_front();
        }
        changed
    }

    fn push_cut(&mut self, pair: (IpAddr, IpAddr), now: i64) {
        self.cut.push_back((pair, now));
        while self.cut.len() > MAX_CUT {
            self.cut.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    fn want(n: u8) -> Want {
        Want {
            key: format!("key{n}"),
            overlay4: Ipv4Addr::new(100, 96, 0, n),
            overlay6: format!("fd00:1::{n}").parse().unwrap(),
        }
    }

    fn pool(v4: &[&str]) -> Pool {
        Pool {
            v6: Some("2001:db8:1::/64".parse().unwrap()),
            v4: v4.iter().map(|a| a.parse().unwrap()).collect(),
            avoid: vec!["2001:db8:1::1".parse().unwrap()],
            rotate: Some(3600),
            drain: 600,
        }
    }

    #[test]
    fn two_devices_get_different_addresses_from_the_prefix_and_the_pool() {
        let mut t = TempEgress::new(pool(&["203.0.113.3", "203.0.113.4"]));
        assert!(t.set_wanted(&[want(2), want(3)], 1000, &mut rng()));
        let (a, b) = (t.lease("key2").unwrap(), t.lease("key3").unwrap());
        let net: Ipv6Net = "2001:db8:1::/64".parse().unwrap();
        assert!(net.contains(&a.ipv6.unwrap()) && net.contains(&b.ipv6.unwrap()));
        assert_ne!(a.ipv6, b.ipv6);
        assert_ne!(a.ipv4, b.ipv4);
        assert!(a.ipv4.is_some() && b.ipv4.is_some());
        assert_eq!(a.next_rotation, Some(4600));
        assert_eq!(t.snat().len(), 4);
        assert_eq!(t.in_use6().len(), 2);
        // Asking again for the same devices changes nothing.
        assert!(!t.set_wanted(&[want(2), want(3)], 1001, &mut rng()));
    }

    #[test]
    fn a_new_address_drains_the_old_one_then_cuts_it() {
        let mut t = TempEgress::new(pool(&["203.0.113.3", "203.0.113.4"]));
        let mut r = rng();
        t.set_wanted(&[want(2)], 1000, &mut r);
        let old = t.lease("key2").unwrap().clone();
        let new = t.renew("key2", 1100, &mut r).unwrap();
        assert_ne!(new.ipv6, old.ipv6);
        assert_ne!(new.ipv4, old.ipv4, "a free pool address is taken");
        assert_eq!(new.next_rotation, Some(4700));
        // The old address still receives (open connections) and is not cut yet.
        assert!(t.in_use6().contains(&old.ipv6.unwrap()));
        assert!(t.cut().is_empty());
        assert_eq!(t.next_change(), Some(1700));
        assert!(t.tick(1700, &mut r));
        assert!(!t.in_use6().contains(&old.ipv6.unwrap()));
        let cut = t.cut();
        assert!(cut.contains(&("fd00:1::2".parse().unwrap(), old.ipv6.unwrap().into())));
        assert!(cut.contains(&("100.96.0.2".parse().unwrap(), old.ipv4.unwrap().into())));
        // The SNAT is the new lease only.
        assert_eq!(
            t.snat(),
            vec![
                ("100.96.0.2".parse().unwrap(), new.ipv4.unwrap().into()),
                ("fd00:1::2".parse().unwrap(), new.ipv6.unwrap().into()),
            ]
        );
    }

    #[test]
    fn rotation_comes_by_itself_and_never_repeats_an_address() {
        let mut t = TempEgress::new(pool(&[]));
        let mut r = rng();
        t.set_wanted(&[want(2)], 0, &mut r);
        let mut seen = HashSet::new();
        seen.insert(t.lease("key2").unwrap().ipv6.unwrap());
        for i in 1..=200 {
            let now = i * 3600;
            assert!(t.next_change().unwrap() <= now);
            assert!(t.tick(now, &mut r));
            let a = t.lease("key2").unwrap().ipv6.unwrap();
            assert!(seen.insert(a), "{a} came back");
        }
        assert_eq!(t.draining(), 1);
    }

    #[test]
    fn an_exhausted_ipv4_pool_falls_back_to_the_hub_never_to_another_device() {
        let mut t = TempEgress::new(pool(&["203.0.113.3"]));
        let mut r = rng();
        t.set_wanted(&[want(2), want(3)], 0, &mut r);
        let l2 = t.lease("key2").unwrap().clone();
        let l3 = t.lease("key3").unwrap().clone();
        let with: Vec<_> = [&l2, &l3].iter().filter_map(|l| l.ipv4).collect();
        assert_eq!(with, vec!["203.0.113.3".parse::<Ipv4Addr>().unwrap()]);
        let without = if l2.ipv4.is_none() { &l2 } else { &l3 };
        assert!(
            without.note.as_deref().unwrap().contains("in use"),
            "{without:?}"
        );
        // Rotating the holder with nothing else free keeps its address (no drain of it).
        let holder = if l2.ipv4.is_some() { "key2" } else { "key3" };
        let again = t.renew(holder, 10, &mut r).unwrap();
        assert_eq!(again.ipv4, Some("203.0.113.3".parse().unwrap()));
        assert!(again.note.unwrap().contains("keeps"));
        // Without a pool at all, IPv4 keeps the hub's address and the lease says so.
        let mut t = TempEgress::new(pool(&[]));
        t.set_wanted(&[want(2)], 0, &mut r);
        assert!(t
            .lease("key2")
            .unwrap()
            .note
            .as_deref()
            .unwrap()
            .contains("egress.ipv4_pool"));
    }

    #[test]
    fn a_pool_address_goes_back_after_its_drain_longest_rested_first() {
        let mut t = TempEgress::new(pool(&["203.0.113.3", "203.0.113.4", "203.0.113.5"]));
        let mut r = rng();
        t.set_wanted(&[want(2)], 0, &mut r);
        assert_eq!(
            t.lease("key2").unwrap().ipv4,
            Some("203.0.113.3".parse().unwrap())
        );
        t.renew("key2", 10, &mut r).unwrap();
        assert_eq!(
            t.lease("key2").unwrap().ipv4,
            Some("203.0.113.4".parse().unwrap())
        );
        // .3 drains until 610: a second device gets .5, not .3.
        t.set_wanted(&[want(2), want(3)], 20, &mut r);
        assert_eq!(
            t.lease("key3").unwrap().ipv4,
            Some("203.0.113.5".parse().unwrap())
        );
        // A third device finds nothing free until .3's drain ends.
        t.set_wanted(&[want(2), want(3), want(4)], 30, &mut r);
        assert_eq!(t.lease("key4").unwrap().ipv4, None);
        // When .3's drain ends it goes to the device that was waiting.
        assert!(t.tick(610, &mut r));
        assert_eq!(
            t.lease("key4").unwrap().ipv4,
            Some("203.0.113.3".parse().unwrap())
        );
        // Its old pairing with device 2 is cut; device 4's pairing is not.
        let cut = t.cut();
        assert!(cut.contains(&(
            "100.96.0.2".parse().unwrap(),
            "203.0.113.3".parse().unwrap()
        )));
        assert!(!cut.contains(&(
            "100.96.0.4".parse().unwrap(),
            "203.0.113.3".parse().unwrap()
        )));
    }

    #[test]
    fn a_lease_without_ipv4_gets_the_next_freed_pool_address() {
        let mut p = pool(&["203.0.113.3"]);
        p.rotate = None;
        let mut t = TempEgress::new(p);
        let mut r = rng();
        t.set_wanted(&[want(2), want(3)], 0, &mut r);
        let without = if t.lease("key2").unwrap().ipv4.is_none() {
            "key2"
        } else {
            "key3"
        };
        let holder = if without == "key2" { "key3" } else { "key2" };
        // The holder leaves temporary mode: its address drains, then goes to the other device.
        let keep = if holder == "key2" { want(3) } else { want(2) };
        t.set_wanted(&[keep], 10, &mut r);
        assert_eq!(t.lease(without).unwrap().ipv4, None);
        assert_eq!(t.next_change(), Some(610));
        assert!(t.tick(610, &mut r));
        let l = t.lease(without).unwrap();
        assert_eq!(l.ipv4, Some("203.0.113.3".parse().unwrap()));
        assert!(l.note.is_none(), "{l:?}");
    }

    #[test]
    fn cut_pairs_are_forgotten_after_conntrack_would_have() {
        let mut p = pool(&[]);
        p.rotate = None;
        let mut t = TempEgress::new(p);
        let mut r = rng();
        t.set_wanted(&[want(2)], 0, &mut r);
        t.renew("key2", 1, &mut r).unwrap();
        t.tick(601, &mut r);
        assert_eq!(t.cut().len(), 1);
        t.tick(601 + CUT_KEEP_SECS - 1, &mut r);
        assert!(!t.cut().is_empty());
        t.tick(601 + CUT_KEEP_SECS, &mut r);
        assert!(t.cut().is_empty());
    }

    #[test]
    fn a_device_back_to_hub_mode_drains_its_addresses() {
        let mut t = TempEgress::new(pool(&["203.0.113.3"]));
        let mut r = rng();
        t.set_wanted(&[want(2)], 0, &mut r);
        let a = t.lease("key2").unwrap().ipv6.unwrap();
        assert!(t.set_wanted(&[], 5, &mut r));
        assert!(t.snat().is_empty());
        assert_eq!(t.in_use6(), vec![a]);
        assert_eq!(t.renew("key2", 6, &mut r), Err(NotTemporary));
        t.tick(605, &mut r);
        assert!(t.in_use6().is_empty());
        assert_eq!(t.cut().len(), 2);
    }

    #[test]
    fn no_prefix_means_no_temporary_ipv6_and_the_lease_says_so() {
        let mut p = pool(&["203.0.113.3"]);
        p.v6 = None;
        p.rotate = None;
        let mut t = TempEgress::new(p);
        t.set_wanted(&[want(2)], 0, &mut rng());
        let l = t.lease("key2").unwrap();
        assert_eq!(l.ipv6, None);
        assert!(l.ipv4.is_some());
        assert!(l.note.as_deref().unwrap().contains("IPv6"));
        assert_eq!(l.next_rotation, None);
        assert_eq!(t.next_change(), None);
    }

    #[test]
    fn addresses_avoid_the_host_and_reserved_identifiers() {
        let mut p = pool(&[]);
        // A /126 has three usable identifiers; ::1 is the host's, ::0 the anycast.
        p.v6 = Some("2001:db8:1::/126".parse().unwrap());
        let mut t = TempEgress::new(p);
        let mut r = rng();
        let mut got = HashSet::new();
        for i in 0..2u8 {
            t.set_wanted(&[want(i)], 0, &mut r);
            got.insert(t.lease(&format!("key{i}")).unwrap().ipv6);
            t.set_wanted(&[], 0, &mut r);
        }
        let expect: HashSet<Option<Ipv6Addr>> = ["2001:db8:1::2", "2001:db8:1::3"]
            .iter()
            .map(|a| Some(a.parse().unwrap()))
            .collect();
        assert_eq!(got, expect);
        // Nothing left: the lease says so rather than repeat an address.
        t.set_wanted(&[want(9)], 0, &mut r);
        assert_eq!(t.lease("key9").unwrap().ipv6, None);
    }
}
