//! Connection slots for the stream listeners (TCP DNS, DoT, DoH and the API's TCP listeners):
//! a global cap and a cap per client address, so that one address cannot take every slot.
//!
//! [`ConnSlots::try_acquire`] takes a slot for a peer address and returns a [`ConnSlot`] guard
//! that gives it back when dropped (when the connection's task ends). The accept loop
//! (`server::accept_loop`) closes a connection at once when no slot is free. The bookkeeping is
//! a counter per [`SlotKey`] under a mutex held for a map update only.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use parking_lot::Mutex;

/// Most connections one address may hold at once on the DNS stream listeners. Well above what
/// a host behind one NAT address needs (a stub resolver keeps one or a few connections), well
/// below the global cap so that 16 such hosts cannot fill it.
pub const PER_ADDRESS: usize = 64;

/// Whom a per-address count belongs to: an IPv4 address, or an IPv6 /64 (one host can take
/// any address in its /64, so a finer key would not bound it). IPv4-mapped IPv6 counts as the
/// IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotKey {
    V4(Ipv4Addr),
    /// The upper 64 bits of the address.
    V6Net(u64),
}

impl SlotKey {
    /// The key of client address `ip`.
    pub fn of(ip: IpAddr) -> SlotKey {
        match crate::dns::engine::canonical(ip) {
            IpAddr::V4(v4) => SlotKey::V4(v4),
            IpAddr::V6(v6) => SlotKey::V6Net((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefused {
    /// Every slot of the listener group is taken.
    Full,
    /// This address (or /64) already holds its share.
    AddressFull,
}

/// Connection slots shared by a group of listeners.
#[derive(Debug)]
pub struct ConnSlots {
    global: usize,
    per_address: usize,
    taken: Mutex<Taken>,
}

#[derive(Debug, Default)]
struct Taken {
    total: usize,
    by_key: HashMap<SlotKey, usize>,
}

impl ConnSlots {
    /// `global` slots in all, at most `per_address` of them for one [`SlotKey`].
    pub fn new(global: usize, per_address: usize) -> Arc<ConnSlots> {
        Arc::new(ConnSlots {
            global,
            per_address,
            taken: Mutex::new(Taken::default()),
        })
    }

    /// Takes a slot for a connection from `peer`; it is given back when the guard is dropped.
    pub fn try_acquire(self: &Arc<Self>, peer: IpAddr) -> Result<ConnSlot, SlotRefused> {
        let key = SlotKey::of(peer);
        let mut t = self.taken.lock();
        if t.total >= self.global {
            return Err(SlotRefused::Full);
        }
        let n = t.by_key.entry(key).or_insert(0);
        if *n >= self.per_address {
            return Err(SlotRefused::AddressFull);
        }
        *n += 1;
        t.total += 1;
        Ok(ConnSlot {
            slots: self.clone(),
            key,
        })
    }

    /// Slots taken in all.
    pub fn in_use(&self) -> usize {
        self.taken.lock().total
    }

    /// Slots taken by `peer`'s key.
    pub fn in_use_by(&self, peer: IpAddr) -> usize {
        let t = self.taken.lock();
        t.by_key.get(&SlotKey::of(peer)).copied().unwrap_or(0)
    }

    fn release(&self, key: SlotKey) {
        let mut t = self.taken.lock();
        t.total = t.total.saturating_sub(1);
        if let Some(n) = t.by_key.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                // Forget idle addresses: the map holds only addresses with a connection open.
                t.by_key.remove(&key);
            }
        }
    }
}

/// One taken slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct ConnSlot {
    slots: Arc<ConnSlots>,
    key: SlotKey,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.slots.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_gets_its_share_and_no_more() {
        let slots = ConnSlots::new(10, 3);
        let held: Vec<_> = (0..3)
            .map(|_| slots.try_acquire(ip("192.0.2.1")).unwrap())
            .collect();
        assert_eq!(
            slots.try_acquire(ip("192.0.2.1")).unwrap_err(),
            SlotRefused::AddressFull
        );
        assert!(slots.try_acquire(ip("192.0.2.2")).is_ok());
        assert_eq!(held.len(), 3);
    }

    #[test]
    fn the_global_cap_holds_across_addresses() {
        let slots = ConnSlots::new(4, 3);
        let _a: Vec<_> = (0..3)
            .map(|_| slots.try_acquire(ip("192.0.2.1")).unwrap())
            .collect();
        let _b = slots.try_acquire(ip("192.0.2.2")).unwrap();
        assert_eq!(
            slots.try_acquire(ip("192.0.2.3")).unwrap_err(),
            SlotRefused::Full
        );
        assert_eq!(slots.in_use(), 4);
    }

    #[test]
    fn dropping_a_guard_gives_the_slot_back() {
        let slots = ConnSlots::new(10, 1);
        let a = slots.try_acquire(ip("192.0.2.1")).unwrap();
        assert!(slots.try_acquire(ip("192.0.2.1")).is_err());
        drop(a);
        assert_eq!(slots.in_use(), 0);
        assert_eq!(slots.in_use_by(ip("192.0.2.1")), 0);
        assert!(slots.try_acquire(ip("192.0.2.1")).is_ok());
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address() {
        let slots = ConnSlots::new(10, 2);
        let _a = slots.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        let _b = slots.try_acquire(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(
            slots.try_acquire(ip("2001:db8:1:2::3")).unwrap_err(),
            SlotRefused::AddressFull
        );
        // The next /64 is another address.
        assert!(slots.try_acquire(ip("2001:db8:1:3::1")).is_ok());
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_the_ipv4_address() {
        let slots = ConnSlots::new(10, 1);
        let _a = slots.try_acquire(ip("192.0.2.1")).unwrap();
        assert_eq!(
            slots.try_acquire(ip("::ffff:192.0.2.1")).unwrap_err(),
            SlotRefused::AddressFull
        );
        assert_eq!(
            SlotKey::of(ip("::ffff:192.0.2.1")),
            SlotKey::of(ip("192.0.2.1"))
        );
        // Other addresses in ::ffff:0:0/96 are other IPv4 hosts, not one /64.
        assert!(slots.try_acquire(ip("::ffff:192.0.2.2")).is_ok());
    }
}
