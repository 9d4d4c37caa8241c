//! The device table: one boringtun session per registered device, found by key, by session
//! index and by overlay address.
//!
//! The table is immutable once built; [`PeerTable::rebuilt`] makes the next one from the
//! store's device list, keeping the session (and its counters) of every device whose key and
//! addresses did not change. The hub swaps tables atomically, so a removed device's packets
//! stop matching the moment the new table is published.
//!
//! A boringtun `Tunn` is about 11 KB, so a device only has one while it is active: it is made
//! when the device sends a handshake initiation (or the hub has a packet for a device whose
//! endpoint it knows), and retired by the timers once boringtun expires it (no handshake for
//! 9 minutes) or when a handshake never completed. An idle device costs a few hundred bytes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519::{PublicKey, StaticSecret};
use parking_lot::{Mutex, RwLock};

use super::route::{OwnerLookup, SenderAddrs};
use crate::store::Device;

/// Session indexes are 24 bits: boringtun puts a session counter in the low 8 bits.
const INDEX_MASK: u32 = 0x00ff_ffff;

/// Where a device is reached: its address and port as the hub saw them, and the hub's own
/// address the device sent to, used as the source of replies (a hub with several addresses,
/// e.g. IPv6 privacy addresses, must answer from the one the device dialled).
/// `via` says which transport: a datagram on the WireGuard port, or one of the TLS streams
/// of the hub's TLS transport (`hub::tls`), whose `addr` is the stream's TCP peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub local: Option<IpAddr>,
    pub via: Via,
}

/// The transport an endpoint is reached by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    Udp,
    /// The TLS stream with this id.
    Tls(u32),
}

impl Via {
    /// `udp` or `tls`, as `status` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Via::Udp => "udp",
            Via::Tls(_) => "tls",
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            local: None,
            via: Via::Udp,
        }
    }
}

/// One registered device and its WireGuard session.
pub struct Peer {
    /// Current name (renames keep the session).
    pub name: RwLock<String>,
    pub public_key: [u8; 32],
    pub addrs: SenderAddrs,
    /// The 24-bit index that incoming packets name this session by.
    pub index: u32,
    /// The WireGuard session while the device is active.
    pub session: Mutex<Option<Box<Session>>>,
    /// Where the latest authenticated packet came from (roaming follows it).
    pub endpoint: Mutex<Option<Endpoint>>,
    /// Counters and last handshake of retired sessions.
    retired: Retired,
    /// Its allowance of discovery (multicast) packets.
    pub discovery: Mutex<super::discovery::Bucket>,
}

/// A live session.
pub struct Session {
    pub tunn: Tunn,
    made: Instant,
}

#[derive(Default)]
struct Retired {
    rx: AtomicU64,
    tx: AtomicU64,
    last_handshake: Mutex<Option<Instant>>,
}

/// A session that never completes a handshake is retired after this long (boringtun gives
/// up initiating after 90 s too).
const UNESTABLISHED_LIFETIME: Duration = Duration::from_secs(90);

/// What `status` and `wg show` report for a device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub since_handshake: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl Peer {
    /// The endpoint, if the device has been heard from.
    pub fn endpoint(&self) -> Option<Endpoint> {
        *self.endpoint.lock()
    }

    /// The session in `slot`, made now if there is none.
    pub fn session_in<'a>(
        &self,
        slot: &'a mut Option<Box<Session>>,
        p: &SessionParams,
        now: Instant,
    ) -> &'a mut Tunn {
        &mut slot
            .get_or_insert_with(|| {
                Box::new(Session {
                    tunn: Tunn::new(
                        p.private.clone(),
                        PublicKey::from(self.public_key),
                        None,
                        None,
                        self.index,
                        Some(p.rate_limiter.clone()),
                    ),
                    made: now,
                })
            })
            .tunn
    }

    /// Decides whether the session in `slot` is done (boringtun expired it, or it never
    /// completed a handshake in time) and retires it, keeping its counters.
    pub fn retire_if_idle(&self, slot: &mut Option<Box<Session>>, expired: bool, now: Instant) {
        let Some(s) = slot.as_ref() else { return };
        let (hs, tx, rx, _, _) = s.tunn.stats();
        let stale = hs.is_none() && now.duration_since(s.made) > UNESTABLISHED_LIFETIME;
        if !(expired || stale) {
            return;
        }
        self.retired.rx.fetch_add(rx as u64, Ordering::Relaxed);
        self.retired.tx.fetch_add(tx as u64, Ordering::Relaxed);
        if let Some(d) = hs {
            *self.retired.last_handshake.lock() = now.checked_sub(d);
        }
        *slot = None;
    }

    /// Counters over the device's sessions so far, and time since its last handshake.
    pub fn stats(&self, now: Instant) -> PeerStats {
        let mut st = PeerStats {
            since_handshake: self
                .retired
                .last_handshake
                .lock()
                .map(|t| now.saturating_duration_since(t)),
            rx_bytes: self.retired.rx.load(Ordering::Relaxed),
            tx_bytes: self.retired.tx.load(Ordering::Relaxed),
        };
        if let Some(s) = self.session.lock().as_ref() {
            let (hs, tx, rx, _, _) = s.tunn.stats();
            st.since_handshake = hs.or(st.since_handshake);
            st.rx_bytes += rx as u64;
            st.tx_bytes += tx as u64;
        }
        st
    }

    /// Records the source of an authenticated packet; when it moved, returns where it was
    /// before (`Some(None)` for a device heard from for the first time).
    pub fn handle_authenticated_from(&self, from: Endpoint) -> Option<Option<Endpoint>> {
        let mut ep = self.endpoint.lock();
        if *ep == Some(from) {
            return None;
        }
        Some(ep.replace(from))
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
    pub fn rebuilt(&self, devices: &[Device], next_index: &mut u32) -> (PeerTable, usize) {
        let mut t = PeerTable::default();
        let mut skipped = 0;
        for d in devices {
            let Ok(key) = crate::enroll::keys::decode_key(&d.public_key, "device key") else {
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
                        session: Mutex::new(None),
                        endpoint: Mutex::new(None),
                        retired: Retired::default(),
                        discovery: Mutex::default(),
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
    use crate::enroll::keys::KeyPair;

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
            admin: false,
            person: None,
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
    fn sessions_are_made_on_use_and_retired_when_stale() {
        let a = KeyPair::generate();
        let (t, _) = PeerTable::default().rebuilt(&[device("a", &a.public_b64(), 2)], &mut 0);
        let peer = t.by_key(a.public.as_bytes()).unwrap();
        assert!(peer.session.lock().is_none(), "idle device has no session");
        let t0 = Instant::now();
        let mut slot = peer.session.lock();
        peer.session_in(&mut slot, &params(), t0);
        peer.retire_if_idle(&mut slot, false, t0 + Duration::from_secs(10));
        assert!(slot.is_some(), "young session kept");
        peer.retire_if_idle(&mut slot, false, t0 + Duration::from_secs(91));
        assert!(slot.is_none(), "never-established session retired");
    }

    #[test]
    fn rebuild_keeps_sessions_follows_renames_and_drops_removed() {
        let (a, b) = (KeyPair::generate(), KeyPair::generate());
        let mut idx = 0;
        let (t1, _) = PeerTable::default().rebuilt(
            &[
                device("a", &a.public_b64(), 2),
                device("b", &b.public_b64(), 3),
            ],
            &mut idx,
        );
        assert_eq!(t1.len(), 2);
        let pa = t1.by_key(a.public.as_bytes()).unwrap().clone();
        let (t2, _) = t1.rebuilt(&[device("laptop", &a.public_b64(), 2)], &mut idx);
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
        let (t, skipped) = PeerTable::default().rebuilt(&[device("x", "placeholder-x", 2)], &mut 0);
        assert!(t.is_empty());
        assert_eq!(skipped, 1);
    }
}
