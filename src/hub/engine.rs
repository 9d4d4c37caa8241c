//! The hub's packet engine: datagrams and TUN packets in, datagrams and TUN packets out.
//!
//! [`Engine`] does no I/O of its own; the tasks in `hub::io` read sockets and the TUN and hand
//! each packet to `handle_datagram` / `handle_tun_packet`, which write their output through a
//! [`Sink`]. Buffers ([`Bufs`]) belong to the calling task and are reused for every packet, so
//! the steady state allocates nothing. Time comes from the caller: every entry point takes
//! `now` (sessions, NAT64 mappings and timers are decided against it; boringtun's own session
//! timers still read its clock).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use parking_lot::RwLock;

use super::peers::{Endpoint, Peer, PeerTable, Via};
use super::route::{route_from_device, route_from_tun, DropReason, RouteCtx, Verdict};

/// Largest datagram or inner packet handled (IPv4/IPv6 maximum without jumbograms).
pub const MAX_PACKET: usize = 65_535;
/// Room for the WireGuard data header and tag; boringtun also wants at least 148 bytes.
const OVERHEAD: usize = 32;

/// Handshakes per second, across all devices, answered before the hub asks for cookies.
/// Each handshake is counted twice (once by the hub before it spends a Diffie-Hellman on
/// finding the device, once inside boringtun), hence the factor 2 where it is used.
pub const HANDSHAKES_PER_SEC: u64 = 5_000;

/// Where the engine's output goes.
pub trait Sink {
    /// Sends a WireGuard datagram.
    fn send_udp(&self, to: Endpoint, datagram: &[u8]);
    /// Writes an IP packet to the TUN.
    fn write_tun(&self, pkt: &[u8]);
}

/// Seam for the NAT64 translator (`crate::hub::nat64`, RFC 6146 / RFC 7915).
///
/// The translator owns one IPv4 pool address (a spare overlay address, routed to the TUN and
/// covered by the egress masquerade); IPv6 packets from devices to the DNS64 prefix become
/// IPv4 packets from that address, and IPv4 packets that come back to it become IPv6 packets
/// to the device. The signatures follow `crate::hub::nat64::Nat64`, which is `&mut self`;
/// the engine calls from several tasks, so the adapter wraps it in a mutex:
///
/// ```ignore
/// impl engine::Nat64 for parking_lot::Mutex<nat64::Nat64> {
///     fn pool_v4(&self) -> Ipv4Addr { self.lock().pool() }
///     fn translate_6to4(&self, p: &[u8], now: Instant, out: &mut Vec<u8>) -> bool {
///         self.lock().translate_6to4(p, now, out).is_ok()
///     }
///     fn translate_4to6(&self, p: &[u8], now: Instant, out: &mut Vec<u8>) -> bool {
///         self.lock().translate_4to6(p, now, out).is_ok()
///     }
///     fn expire(&self, now: Instant) { self.lock().expire(now) }
/// }
/// ```
pub trait Nat64: Send + Sync {
    /// The IPv4 source address translated packets use.
    fn pool_v4(&self) -> Ipv4Addr;
    /// Translates an IPv6 packet from a device into IPv4 (`out` is cleared and refilled);
    /// false to drop it.
    fn translate_6to4(&self, pkt: &[u8], now: Instant, out: &mut Vec<u8>) -> bool;
    /// Translates an IPv4 packet addressed to [`Nat64::pool_v4`] back into IPv6 for the
    /// device (`out` is cleared and refilled); false to drop it.
    fn translate_4to6(&self, pkt: &[u8], now: Instant, out: &mut Vec<u8>) -> bool;
    /// Drops idle bindings; called on every timer tick.
    fn expire(&self, now: Instant);
}

/// Per-task scratch space, reused for every packet.
pub struct Bufs {
    plain: Box<[u8]>,
    crypt: Box<[u8]>,
    nat: Vec<u8>,
    /// This I/O task's last firewall decision (a run of one connection's packets skips the
    /// shared tables).
    fw: crate::firewall::FastPath,
}

impl Default for Bufs {
    fn default() -> Self {
        Bufs {
            plain: vec![0; MAX_PACKET + OVERHEAD].into_boxed_slice(),
            crypt: vec![0; MAX_PACKET + OVERHEAD].into_boxed_slice(),
            // NAT64 may add 20 bytes (IPv4 → IPv6 header).
            nat: Vec::with_capacity(MAX_PACKET + OVERHEAD),
            fw: Default::default(),
        }
    }
}

/// Hub-wide counters of dropped and refused input.
#[derive(Debug, Default, serde::Serialize)]
pub struct Counters {
    /// Datagrams that are not WireGuard messages.
    #[serde(serialize_with = "ser")]
    pub malformed_datagrams: AtomicU64,
    /// WireGuard messages for no registered device (unknown key or index, removed device).
    #[serde(serialize_with = "ser")]
    pub unknown_peer: AtomicU64,
    /// Handshakes with a bad MAC or that failed to decrypt.
    #[serde(serialize_with = "ser")]
    pub bad_handshakes: AtomicU64,
    /// Cookie replies sent because handshakes came faster than [`HANDSHAKES_PER_SEC`].
    #[serde(serialize_with = "ser")]
    pub cookies_sent: AtomicU64,
    /// Data or handshakes boringtun refused (replay, bad tag, no session).
    #[serde(serialize_with = "ser")]
    pub decrypt_errors: AtomicU64,
    /// Inner packets that are not readable IP.
    #[serde(serialize_with = "ser")]
    pub malformed_inner: AtomicU64,
    /// Inner packets whose source is not the device's own address.
    #[serde(serialize_with = "ser")]
    pub spoofed: AtomicU64,
    /// Inner packets with nowhere to go.
    #[serde(serialize_with = "ser")]
    pub no_route: AtomicU64,
    /// Packets NAT64 could not take.
    #[serde(serialize_with = "ser")]
    pub nat64_dropped: AtomicU64,
    /// Packets for a device whose endpoint is not known yet.
    #[serde(serialize_with = "ser")]
    pub no_endpoint: AtomicU64,
    /// Handshakes with devices that completed (the hub answered a valid initiation).
    #[serde(serialize_with = "ser")]
    pub handshakes: AtomicU64,
    /// A device's endpoint moved to another address (roaming).
    #[serde(serialize_with = "ser")]
    pub endpoint_changes: AtomicU64,
    /// Packets a device's firewall dropped.
    #[serde(serialize_with = "ser")]
    pub firewall_dropped: AtomicU64,
    /// Discovery (multicast) packets delivered to other devices, one per copy.
    #[serde(serialize_with = "ser")]
    pub discovery_relayed: AtomicU64,
    /// Discovery packets dropped: over the sender's rate, or a sender that takes no part.
    #[serde(serialize_with = "ser")]
    pub discovery_dropped: AtomicU64,
}

fn ser<S: serde::Serializer>(v: &AtomicU64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(v.load(Ordering::Relaxed))
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The packet engine shared by every I/O task.
pub struct Engine {
    private: StaticSecret,
    public: PublicKey,
    pub(crate) table: ArcSwap<PeerTable>,
    pub(crate) rate_limiter: Arc<RateLimiter>,
    ctx: RouteCtx,
    nat64: Option<Arc<dyn Nat64>>,
    /// Device keys by the address their latest authenticated packet came from. A handshake
    /// initiation from such an address goes straight to that device's session, which skips
    /// the anonymous decryption of the initiator's static key: one X25519 of the five a
    /// responder otherwise spends (`benches/hub_scale.rs` measures the difference).
    endpoints: RwLock<HashMap<(SocketAddr, Via), [u8; 32]>>,
    pub counters: Counters,
    /// Each device's firewall (empty: every packet routes as it is).
    firewall: Arc<crate::firewall::Firewall>,
    /// Who takes part in discovery (multicast between devices), and whom each reaches.
    discovery: ArcSwap<super::discovery::Policy>,
    /// The hub's LocalSend device info (JSON), its answer to a device's announcement.
    localsend_info: ArcSwap<Vec<u8>>,
    /// NAT46 (IPv4 devices to IPv6-only sites), when on.
    nat46: Option<Arc<super::nat46::Nat46>>,
}

/// How [`Engine::identify`] found a datagram's device.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Found {
    /// By its session index or its decrypted static key: certain.
    Sure,
    /// By the source address of an initiation: boringtun checks the key, and a wrong guess
    /// (another device now behind that address) falls back to the anonymous decryption.
    ByEndpoint,
}

/// What came out of decrypting a datagram, once the session lock is released.
enum Inner {
    None,
    Packet(usize, usize),
    /// The initiation is not from the device its source address suggested.
    WrongKey,
}

const HANDSHAKE_RESPONSE: u8 = 2;

impl Engine {
    /// An engine with no devices yet.
    pub fn new(private: StaticSecret, ctx: RouteCtx, nat64: Option<Arc<dyn Nat64>>) -> Engine {
        let public = PublicKey::from(&private);
        Engine {
            rate_limiter: Arc::new(RateLimiter::new(&public, 2 * HANDSHAKES_PER_SEC)),
            private,
            public,
            table: ArcSwap::from_pointee(PeerTable::default()),
            ctx,
            nat64,
            endpoints: RwLock::new(HashMap::new()),
            counters: Counters::default(),
            firewall: Arc::default(),
            discovery: ArcSwap::from_pointee(Default::default()),
            localsend_info: ArcSwap::from_pointee(Vec::new()),
            nat46: None,
        }
    }

    /// NAT46, when on.
    pub fn nat46(&self) -> Option<&Arc<super::nat46::Nat46>> {
        self.nat46.as_ref()
    }

    /// The engine with NAT46 (shared with the resolver's DNS46).
    pub fn with_nat46(mut self, n: Option<Arc<super::nat46::Nat46>>) -> Engine {
        self.nat46 = n;
        self
    }

    /// The hub's LocalSend device info (JSON) it answers announcements with (empty: none).
    pub fn set_localsend_info(&self, info: Vec<u8>) {
        self.localsend_info.store(Arc::new(info));
    }

    /// Puts a discovery policy in force.
    pub fn set_discovery(&self, p: super::discovery::Policy) {
        self.discovery.store(Arc::new(p));
    }

    /// The engine with the devices' firewalls in `fw` (shared with the resolver).
    pub fn with_firewall(mut self, fw: Arc<crate::firewall::Firewall>) -> Engine {
        self.firewall = fw;
        self
    }

    /// What new sessions are made with.
    pub fn session_params(&self) -> super::peers::SessionParams {
        super::peers::SessionParams {
            private: self.private.clone(),
            rate_limiter: self.rate_limiter.clone(),
        }
    }

    /// Publishes a new device table.
    pub fn set_table(&self, t: PeerTable) {
        self.table.store(Arc::new(t));
    }

    /// Finds the device a datagram is for, answering with a cookie under load.
    fn identify(
        &self,
        table: &PeerTable,
        from: Endpoint,
        d: &[u8],
        bufs: &mut Bufs,
        sink: &impl Sink,
    ) -> Option<(Arc<Peer>, Found)> {
        let packet = match Tunn::parse_incoming_packet(d) {
            Ok(p) => p,
            Err(_) => {
                bump(&self.counters.malformed_datagrams);
                return None;
            }
        };
        let peer = match packet {
            Packet::HandshakeInit(ref init) => {
                // MAC1 and the load check first: cheap, and they stop a flood before the
                // Diffie-Hellman below.
                match self
                    .rate_limiter
                    .verify_packet(Some(from.addr.ip()), d, &mut bufs.crypt)
                {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        bump(&self.counters.cookies_sent);
                        sink.send_udp(from, cookie);
                        return None;
                    }
                    Err(_) => {
                        bump(&self.counters.bad_handshakes);
                        return None;
                    }
                }
                if let Some(p) = self.by_endpoint(table, from) {
                    return Some((p, Found::ByEndpoint));
                }
                let found = self.by_static_key(table, init);
                if found.is_none() {
                    // A handshake for no device cost the same Diffie-Hellman as a real one,
                    // which boringtun would have counted a second time: count it again so a
                    // flood of them reaches the limit as fast (the MAC1 check is cheap).
                    let _ = self.rate_limiter.verify_packet(None, d, &mut bufs.crypt);
                }
                return found.map(|p| (p, Found::Sure));
            }
            Packet::HandshakeResponse(r) => table.by_receiver_index(r.receiver_idx),
            Packet::PacketCookieReply(c) => table.by_receiver_index(c.receiver_idx),
            Packet::PacketData(p) => table.by_receiver_index(p.receiver_idx),
        };
        if peer.is_none() {
            bump(&self.counters.unknown_peer);
        }
        peer.cloned().map(|p| (p, Found::Sure))
    }

    /// The device whose latest authenticated packet came from `from`, if it still does.
    fn by_endpoint(&self, table: &PeerTable, from: Endpoint) -> Option<Arc<Peer>> {
        let key = *self.endpoints.read().get(&(from.addr, from.via))?;
        let p = table.by_key(&key)?;
        (p.endpoint().map(|e| (e.addr, e.via)) == Some((from.addr, from.via))).then(|| p.clone())
    }

    /// True when a device's latest authenticated packet came from `ep`.
    pub fn knows_endpoint(&self, ep: Endpoint) -> bool {
        self.endpoints.read().contains_key(&(ep.addr, ep.via))
    }

    /// The device an initiation is from, by decrypting its static key (one X25519).
    fn by_static_key(
        &self,
        table: &PeerTable,
        init: &boringtun::noise::HandshakeInit,
    ) -> Option<Arc<Peer>> {
        let Ok(half) = parse_handshake_anon(&self.private, &self.public, init) else {
            bump(&self.counters.bad_handshakes);
            return None;
        };
        let peer = table.by_key(&half.peer_static_public).cloned();
        if peer.is_none() {
            bump(&self.counters.unknown_peer);
        }
        peer
    }

    /// Records that `peer` sent an authenticated packet from `from` (roaming follows it).
    fn handle_authenticated(&self, peer: &Peer, from: Endpoint) {
        if let Some(before) = peer.handle_authenticated_from(from) {
            if before.is_some() {
                bump(&self.counters.endpoint_changes);
            }
            let mut m = self.endpoints.write();
            if let Some(b) = before {
                if m.get(&(b.addr, b.via)) == Some(&peer.public_key) {
                    m.remove(&(b.addr, b.via));
                }
            }
            m.insert((from.addr, from.via), peer.public_key);
        }
    }

    /// Handles one datagram received from `from` on the WireGuard port.
    pub fn handle_datagram(
        &self,
        from: Endpoint,
        d: &[u8],
        now: Instant,
        bufs: &mut Bufs,
        sink: &impl Sink,
    ) {
        let table = self.table.load();
        let Some((peer, found)) = self.identify(&table, from, d, bufs, sink) else {
            return;
        };
        let (peer, inner) = match self.decrypt(&peer, found, from, d, now, bufs, sink) {
            Inner::WrongKey => {
                // Another device is behind the address now: find it by its key.
                let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(d) else {
                    return;
                };
                let Some(p) = self.by_static_key(&table, &init) else {
                    return;
                };
                let inner = self.decrypt(&p, Found::Sure, from, d, now, bufs, sink);
                (p, inner)
            }
            inner => (peer, inner),
        };
        // The source session's lock is released here: routing may lock another session, and
        // two devices talking to each other must not wait on each other's locks.
        if let Inner::Packet(off, len) = inner {
            let Bufs {
                plain,
                crypt,
                nat,
                fw,
            } = bufs;
            let pkt = &plain[off..off + len];
            self.route_device_packet(&table, &peer, pkt, now, crypt, nat, fw, sink);
        }
    }

    /// Runs datagram `d` through `peer`'s session.
    // The caller's buffers, sink and clock are passed apart (no bundle of them lives long).
    #[allow(clippy::too_many_arguments)]
    fn decrypt(
        &self,
        peer: &Arc<Peer>,
        found: Found,
        from: Endpoint,
        d: &[u8],
        now: Instant,
        bufs: &mut Bufs,
        sink: &impl Sink,
    ) -> Inner {
        let is_data = d.first() == Some(&4);
        {
            let mut slot = peer.session.lock();
            if slot.is_none() {
                // Only a handshake initiation starts a session; anything else for an idle
                // device has nothing to be decrypted with.
                if d.first() != Some(&1) {
                    bump(&self.counters.decrypt_errors);
                    return Inner::None;
                }
                peer.session_in(&mut slot, &self.session_params(), now);
            }
            let Some(session) = slot.as_mut() else {
                return Inner::None;
            };
            let tunn = &mut session.tunn;
            let base = bufs.plain.as_ptr() as usize;
            match tunn.decapsulate(Some(from.addr.ip()), d, &mut bufs.plain) {
                TunnResult::Done => {
                    // A keepalive decrypted: authenticated.
                    if is_data {
                        self.handle_authenticated(peer, from);
                    }
                    Inner::None
                }
                TunnResult::Err(WireGuardError::WrongKey) if found == Found::ByEndpoint => {
                    Inner::WrongKey
                }
                TunnResult::Err(e) => {
                    self.count_wg_error(&e);
                    Inner::None
                }
                TunnResult::WriteToNetwork(out) => {
                    // A handshake response proves the initiation was authentic; a cookie reply
                    // (boringtun's own load check) proves nothing about the sender.
                    // The hub answered a device's initiation, or a device answered the hub's.
                    if out.first() == Some(&HANDSHAKE_RESPONSE)
                        || d.first() == Some(&HANDSHAKE_RESPONSE)
                    {
                        bump(&self.counters.handshakes);
                    }
                    if out.first() == Some(&HANDSHAKE_RESPONSE) || is_data {
                        self.handle_authenticated(peer, from);
                    }
                    sink.send_udp(from, out);
                    // Packets queued while the handshake ran go out now.
                    while let TunnResult::WriteToNetwork(out) =
                        tunn.decapsulate(None, &[], &mut bufs.crypt)
                    {
                        sink.send_udp(from, out);
                    }
                    Inner::None
                }
                TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                    self.handle_authenticated(peer, from);
                    Inner::Packet(p.as_ptr() as usize - base, p.len())
                }
            }
        }
    }

    // `pkt` borrows the plaintext buffer, so the other two buffers come apart from it.
    #[allow(clippy::too_many_arguments)]
    fn route_device_packet(
        &self,
        table: &PeerTable,
        from: &Peer,
        pkt: &[u8],
        now: Instant,
        crypt: &mut [u8],
        nat: &mut Vec<u8>,
        fw: &mut crate::firewall::FastPath,
        sink: &impl Sink,
    ) {
        let verdict = route_from_device(&self.ctx, table, from.addrs, pkt);
        if self.firewall.is_active() && !self.firewall_admits(from, &verdict, pkt, now, fw) {
            bump(&self.counters.firewall_dropped);
            return;
        }
        if tracing::enabled!(tracing::Level::TRACE) {
            let h = super::packet::IpHeader::parse(pkt).ok();
            tracing::trace!(header = ?h, verdict = ?verdict.kind(), "from device");
        }
        match verdict {
            Verdict::Peer(to) => self.send_to_peer(&to, pkt, now, crypt, sink),
            Verdict::Tun => match &self.nat46 {
                Some(n) if pkt[0] >> 4 == 4 && n.pool().contains(&packet_dst_v4(pkt)) => {
                    match n.outbound(pkt, from.addrs.v4, now, nat) {
                        // The device's packet rules see the real destination too.
                        Ok(())
                            if self.firewall.is_active()
                                && self.firewall.denies(from.addrs.v4, nat) =>
                        {
                            bump(&self.counters.firewall_dropped)
                        }
                        Ok(()) => sink.write_tun(nat),
                        Err(true) => {
                            if let Some(icmp) = super::nat46::unreachable(pkt) {
                                self.send_to_peer(from, &icmp, now, crypt, sink);
                            }
                        }
                        Err(false) => {}
                    }
                }
                _ => sink.write_tun(pkt),
            },
            Verdict::Nat64 => match &self.nat64 {
                Some(t) => {
                    if t.translate_6to4(pkt, now, nat) {
                        sink.write_tun(nat);
                    } else {
                        bump(&self.counters.nat64_dropped);
                    }
                }
                None => self.count_drop(DropReason::Nat64Unavailable),
            },
            Verdict::Discovery => self.relay_discovery(table, from, pkt, now, crypt, sink),
            Verdict::Drop(r) => self.count_drop(r),
        }
    }

    /// Delivers a device's packet to a discovery group to the other devices that may see it
    /// (never back to the sender), within the sender's rate.
    fn relay_discovery(
        &self,
        table: &PeerTable,
        from: &Peer,
        pkt: &[u8],
        now: Instant,
        crypt: &mut [u8],
        sink: &impl Sink,
    ) {
        let policy = self.discovery.load();
        if policy.is_empty() || !from.discovery.lock().take(now) {
            return bump(&self.counters.discovery_dropped);
        }
        let own = super::discovery::own_source(pkt, from.addrs.v6);
        let pkt = own.as_deref().unwrap_or(pkt);
        for to in table.peers() {
            if policy.may(from.addrs.v4, to.addrs.v4) && to.endpoint().is_some() {
                self.send_to_peer(to, pkt, now, crypt, sink);
                bump(&self.counters.discovery_relayed);
            }
        }
        // The hub answers for the devices this one may reach: `NAME.local`.
        let lookup = |name: &str| {
            table
                .peers()
                .find(|p| p.name.read().eq_ignore_ascii_case(name))
                .filter(|p| policy.may(from.addrs.v4, p.addrs.v4))
                .map(|p| (p.addrs.v4, p.addrs.v6))
        };
        let hub = (self.ctx.overlay.hub_v4(), self.ctx.overlay.hub_v6());
        if let Some(answer) = super::discovery::answer_local(pkt, hub, lookup) {
            self.send_to_peer(from, &answer, now, crypt, sink);
        }
        let info = self.localsend_info.load();
        if !info.is_empty() && policy.is_member(from.addrs.v4) {
            if let Some(answer) = super::discovery::answer_localsend(pkt, hub.0, &info) {
                self.send_to_peer(from, &answer, now, crypt, sink);
            }
        }
    }

    /// The device firewall's decision on a routed packet.
    fn firewall_admits(
        &self,
        from: &Peer,
        verdict: &Verdict<Arc<Peer>>,
        pkt: &[u8],
        now: Instant,
        fast: &mut crate::firewall::FastPath,
    ) -> bool {
        use crate::firewall::Target;
        let target = match verdict {
            Verdict::Peer(to) => Target::Device(to.addrs.v4),
            Verdict::Nat64 => Target::Nat64,
            // Who may hear whom is the discovery policy's.
            Verdict::Drop(_) | Verdict::Discovery => return true,
            Verdict::Tun => {
                let hub = match pkt[0] >> 4 {
                    4 => pkt.get(16..20) == Some(&self.ctx.overlay.hub_v4().octets()[..]),
                    _ => pkt.get(24..40) == Some(&self.ctx.overlay.hub_v6().octets()[..]),
                };
                if hub {
                    Target::Hub
                } else {
                    Target::Internet
                }
            }
        };
        self.firewall
            .admit_fast(fast, from.addrs.v4, target, pkt, now)
    }

    /// Handles one packet read from the TUN.
    pub fn handle_tun_packet(&self, pkt: &[u8], now: Instant, bufs: &mut Bufs, sink: &impl Sink) {
        let table = self.table.load();
        let mut pkt = pkt;
        let nat64 = self
            .nat64
            .as_ref()
            .filter(|t| pkt.len() >= 20 && pkt[0] >> 4 == 4 && pkt[16..20] == t.pool_v4().octets());
        let nat46 = self.nat46.as_ref().filter(|n| {
            pkt.len() >= 40 && pkt[0] >> 4 == 6 && n.source_range().contains(&packet_dst_v6(pkt))
        });
        if let Some(t) = nat64 {
            if !t.translate_4to6(pkt, now, &mut bufs.nat) {
                return bump(&self.counters.nat64_dropped);
            }
            pkt = &bufs.nat;
        } else if let Some(n) = nat46 {
            if n.inbound(pkt, now, &mut bufs.nat).is_none() {
                return;
            }
            pkt = &bufs.nat;
        }
        match route_from_tun(&**table, pkt) {
            Verdict::Peer(to) => self.send_to_peer(&to, pkt, now, &mut bufs.crypt, sink),
            Verdict::Drop(r) => self.count_drop(r),
            Verdict::Tun | Verdict::Nat64 | Verdict::Discovery => {
                self.count_drop(DropReason::NoRoute)
            }
        }
    }

    /// Encrypts `pkt` to `to` and sends it to the device's endpoint.
    fn send_to_peer(
        &self,
        to: &Peer,
        pkt: &[u8],
        now: Instant,
        crypt: &mut [u8],
        sink: &impl Sink,
    ) {
        // A device never heard from (since the hub started) cannot be reached: WireGuard
        // needs an endpoint, and only the device can tell it.
        let Some(endpoint) = to.endpoint() else {
            return bump(&self.counters.no_endpoint);
        };
        let mut slot = to.session.lock();
        let tunn = to.session_in(&mut slot, &self.session_params(), now);
        match tunn.encapsulate(pkt, crypt) {
            TunnResult::WriteToNetwork(out) => sink.send_udp(endpoint, out),
            TunnResult::Err(e) => self.count_wg_error(&e),
            _ => {}
        }
    }

    /// Starts a handshake with the device `key` at `to`, its endpoint from before a restart.
    ///
    /// A stock WireGuard client whose hub restarted keeps using its dead session until it has
    /// sent data for ~15 s without an answer; an initiation from the hub gives it a fresh
    /// session at once. boringtun's timers retry it like any handshake. False when the device
    /// is not registered.
    pub fn initiate(
        &self,
        key: &[u8; 32],
        to: Endpoint,
        now: Instant,
        bufs: &mut Bufs,
        sink: &impl Sink,
    ) -> bool {
        let table = self.table.load();
        let Some(peer) = table.by_key(key) else {
            return false;
        };
        // The stored endpoint was the source of the device's latest authenticated packet.
        self.handle_authenticated(peer, to);
        let mut slot = peer.session.lock();
        let tunn = peer.session_in(&mut slot, &self.session_params(), now);
        match tunn.format_handshake_initiation(&mut bufs.crypt, false) {
            TunnResult::WriteToNetwork(out) => {
                sink.send_udp(to, out);
                true
            }
            _ => false,
        }
    }

    /// Runs every session's timers (call about every 250 ms): handshake retries, keepalives,
    /// session expiry; also resets the handshake rate limiter once a second.
    pub fn poll_timers(&self, now: Instant, bufs: &mut Bufs, sink: &impl Sink) {
        self.rate_limiter.reset_count();
        let table = self.table.load();
        if let Some(t) = &self.nat64 {
            t.expire(now);
        }
        if let Some(n) = &self.nat46 {
            n.expire(now);
        }
        for peer in table.peers() {
            let mut slot = peer.session.lock();
            let Some(session) = slot.as_mut() else {
                continue;
            };
            let expired = match session.tunn.update_timers(&mut bufs.crypt) {
                TunnResult::WriteToNetwork(out) => {
                    if let Some(ep) = peer.endpoint() {
                        sink.send_udp(ep, out);
                    }
                    false
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => true,
                _ => false,
            };
            peer.retire_if_idle(&mut slot, expired, now);
        }
    }

    fn count_wg_error(&self, e: &WireGuardError) {
        tracing::trace!(error = ?e, "wireguard message refused");
        bump(&self.counters.decrypt_errors);
    }

    fn count_drop(&self, r: DropReason) {
        tracing::trace!(reason = ?r, "inner packet dropped");
        bump(match r {
            DropReason::Malformed(_) => &self.counters.malformed_inner,
            DropReason::Spoofed => &self.counters.spoofed,
            DropReason::NoRoute => &self.counters.no_route,
            DropReason::Nat64Unavailable => &self.counters.nat64_dropped,
        });
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

/// The destination of an IPv4 packet (at least 20 bytes).
fn packet_dst_v4(pkt: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19])
}

/// The destination of an IPv6 packet (at least 40 bytes).
fn packet_dst_v6(pkt: &[u8]) -> std::net::Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&pkt[24..40]);
    std::net::Ipv6Addr::from(o)
}
