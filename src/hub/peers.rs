//! The device table: one boringtun session per registered device, found by key, by session
//! index and by overlay address.
//!
//! The table is immutable once built; [`PeerTable::rebuilt`] makes the next one from the
//! store's device list, keeping the session (and its counters) of every device whose key and
//! addresses did not change. The hub swaps tables atomically, so a removed device's packets
//! stop matching the moment the new table is published.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519::{PublicKey, StaticSecret};
use parking_lot::{Mutex, RwLock};

use super::route::{OwnerLookup, SenderAddrs};
use crate::store::Device;

/// Session indexes are 24 bits: boringtun puts a session counter in the low 8 bits.
const INDEX_MASK: u32 = 0x00ff_ffff;

/// One registered device and its WireGuard session.
pub struct Peer {
    /// Current name (renames keep the session).
    pub name: RwLock<String>,
    pub public_key: [u8; 32],
    pub addrs: SenderAddrs,
    /// The 24-bit index that incoming packets name this session by.
    pub index: u32,
    pub tunn: Mutex<Tunn>,
    /// Where the latest authenticated packet came from (roaming follows it).
    pub endpoint: Mutex<Option<SocketAddr>>,
}

impl Peer {
    /// The endpoint, if the device has been heard from.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        *self.endpoint.lock()
    }

    /// Records the source of an authenticated packet; returns true when it moved.
    pub fn handle_authenticated_from(&self, from: SocketAddr) -> bool {
        let mut ep = self.endpoint.lock();
        if *ep == Some(from) {
            return false;
        }
        *ep = Some(from);
        true
    }
}

/// All devices the hub serves right now.
#[derive(Default)]
pub struct PeerTable {
    by_key: HashMap<[u8; 32], Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    by_v4: HashMap<Ipv4Addr, Arc<Peer>>,
    by_v6: HashMap<Ipv6Addr, Arc<Peer>>,
}

/// What the hub needs to make sessions.
pub struct SessionParams {
    pub private: StaticSecret,
    pub rate_limiter: Arc<RateLimiter>,
}

impl PeerTable {
    /// The device with this public key.
    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Arc<Peer>> {
        self.by_key.get(key)
    }

    /// The device whose session carries this receiver index (the full 32-bit wire value).
    pub fn by_receiver_index(&self, receiver_idx: u32) -> Option<&Arc<Peer>> {
        self.by_index.get(&(receiver_idx >> 8))
    }

    /// Every device, in no particular order.
    pub fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.by_key.values()
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when no device is registered.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The next table for `devices`: unchanged devices keep their session, new ones get a
    /// fresh one, and devices missing from the list are gone. Devices whose stored key is not
    /// a WireGuard key are skipped (and reported in the second value).
    pub fn rebuilt(
        &self,
        devices: &[Device],
        params: &SessionParams,
        next_index: &mut u32,
    ) -> (PeerTable, usize) {
        let mut t = PeerTable::default();
        let mut skipped = 0;
        for d in devices {
            let Ok(key) = crate::hub::keys::decode_key(&d.public_key, "device key") else {
                skipped += 1;
                continue;
            };
            let addrs = SenderAddrs {
                v4: d.ipv4,
                v6: d.ipv6,
            };
            let peer = match self.by_key.get(&key) {
                Some(p) if p.addrs == addrs => {
                    if *p.name.read() != d.name {
                        *p.name.write() = d.name.clone();
                    }
                    p.clone()
                }
                _ => {
                    let index = loop {
                        *next_index = (*next_index + 1) & INDEX_MASK;
                        if !self.by_index.contains_key(next_index)
                            && !t.by_index.contains_key(next_index)
                        {
                            break *next_index;
                        }
                    };
                    Arc::new(Peer {
                        name: RwLock::new(d.name.clone()),
                        public_key: key,
                        addrs,
                        index,
                        tunn: Mutex::new(Tunn::new(
                            params.private.clone(),
                            PublicKey::from(key),
                            None,
                            None,
                            index,
                            Some(params.rate_limiter.clone()),
                        )),
                        endpoint: Mutex::new(None),
                    })
                }
            };
            t.by_index.insert(peer.index, peer.clone());
            t.by_v4.insert(addrs.v4, peer.clone());
            t.by_v6.insert(addrs.v6, peer.clone());
            t.by_key.insert(key, peer);
        }
        (t, skipped)
    }
}

impl OwnerLookup for PeerTable {
    type Peer = Arc<Peer>;
    fn owner_v4(&self, ip: Ipv4Addr) -> Option<Arc<Peer>> {
        self.by_v4.get(&ip).cloned()
    }
    fn owner_v6(&self, ip: Ipv6Addr) -> Option<Arc<Peer>> {
        self.by_v6.get(&ip).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::keys::KeyPair;

    fn device(name: &str, key: &str, n: u8) -> Device {
        Device {
            name: name.into(),
            public_key: key.into(),
            ipv4: Ipv4Addr::new(100, 96, 0, n),
            ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n.into()),
            split: false,
            group: None,
            owner: false,
            no_log: false,
            created_at: 0,
        }
    }

    fn params() -> SessionParams {
        let hub = KeyPair::generate();
        SessionParams {
            rate_limiter: Arc::new(RateLimiter::new(&hub.public, 10)),
            private: hub.private,
        }
    }

    #[test]
    fn rebuild_keeps_sessions_follows_renames_and_drops_removed() {
        let (a, b) = (KeyPair::generate(), KeyPair::generate());
        let p = params();
        let mut idx = 0;
        let (t1, _) = PeerTable::default().rebuilt(
            &[
                device("a", &a.public_b64(), 2),
                device("b", &b.public_b64(), 3),
            ],
            &p,
            &mut idx,
        );
        assert_eq!(t1.len(), 2);
        let pa = t1.by_key(a.public.as_bytes()).unwrap().clone();
        let (t2, _) = t1.rebuilt(&[device("laptop", &a.public_b64(), 2)], &p, &mut idx);
        assert_eq!(t2.len(), 1);
        let pa2 = t2.by_key(a.public.as_bytes()).unwrap();
        assert!(Arc::ptr_eq(&pa, pa2), "unchanged device keeps its session");
        assert_eq!(*pa2.name.read(), "laptop");
        assert!(t2.by_key(b.public.as_bytes()).is_none());
        assert!(t2.owner_v4(Ipv4Addr::new(100, 96, 0, 3)).is_none());
        assert!(t2.by_receiver_index(pa.index << 8 | 5).is_some());
    }

    #[test]
    fn placeholder_keys_are_skipped() {
        let (t, skipped) =
            PeerTable::default().rebuilt(&[device("x", "placeholder-x", 2)], &params(), &mut 0);
        assert!(t.is_empty());
        assert_eq!(skipped, 1);
    }
}
