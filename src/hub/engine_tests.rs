//! Engine tests: in-memory boringtun clients talking to the engine through a recording sink.

use super::*;
use crate::enroll::keys::KeyPair;
use crate::hub::packet::tests::ipv4;
use crate::store::{Device, Overlay};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Instant;

#[derive(Default)]
struct Recorder {
    udp: RefCell<Vec<(SocketAddr, Vec<u8>)>>,
    tun: RefCell<Vec<Vec<u8>>>,
}
impl Sink for Recorder {
    fn send_udp(&self, to: Endpoint, d: &[u8]) {
        self.udp.borrow_mut().push((to.addr, d.to_vec()));
    }
    fn write_tun(&self, p: &[u8]) {
        self.tun.borrow_mut().push(p.to_vec());
    }
}

struct Client {
    tunn: Tunn,
    addr: SocketAddr,
    v4: Ipv4Addr,
}

struct World {
    engine: Engine,
    hub_public: PublicKey,
    sink: Recorder,
    bufs: Bufs,
    devices: Vec<Device>,
    next: u32,
}

impl World {
    fn new() -> World {
        World::with_nat64(None)
    }

    fn with_nat64(nat64: Option<Arc<dyn Nat64>>) -> World {
        let hub = KeyPair::generate();
        let ctx = RouteCtx {
            overlay: Overlay {
                v4: "100.96.0.0/16".parse().unwrap(),
                v6: "fd00:1::/48".parse().unwrap(),
            },
            dns64_prefix: Some("64:ff9b::/96".parse().unwrap()),
        };
        World {
            engine: Engine::new(hub.private.clone(), ctx, nat64),
            hub_public: hub.public,
            sink: Recorder::default(),
            bufs: Bufs::default(),
            devices: vec![],
            next: 0,
        }
    }

    fn add(&mut self, n: u8) -> Client {
        let kp = KeyPair::generate();
        let v4 = Ipv4Addr::new(100, 96, 0, n);
        self.devices.push(Device {
            name: format!("d{n}"),
            public_key: kp.public_b64(),
            ipv4: v4,
            ipv6: format!("fd00:1::{n}").parse().unwrap(),
            split: false,
            group: None,
            owner: false,
            no_log: false,
            admin: false,
            person: None,
            created_at: 0,
        });
        self.reload();
        Client {
            tunn: Tunn::new(kp.private, self.hub_public, None, None, u32::from(n), None),
            addr: SocketAddr::from(([198, 51, 100, n], 40000 + u16::from(n))),
            v4,
        }
    }

    fn reload(&mut self) {
        let (t, _) = self
            .engine
            .table
            .load()
            .rebuilt(&self.devices, &mut self.next);
        self.engine.set_table(t);
    }

    /// Delivers a client's datagram to the hub; returns what the hub sent.
    fn deliver(&mut self, from: SocketAddr, d: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
        self.engine
            .handle_datagram(from.into(), d, Instant::now(), &mut self.bufs, &self.sink);
        self.sink.udp.borrow_mut().drain(..).collect()
    }

    fn handshake(&mut self, c: &mut Client) {
        let mut buf = vec![0u8; 2048];
        let TunnResult::WriteToNetwork(init) = c.tunn.format_handshake_initiation(&mut buf, false)
        else {
            panic!("no initiation")
        };
        let init = init.to_vec();
        let out = self.deliver(c.addr, &init);
        assert_eq!(out.len(), 1, "one handshake response");
        assert_eq!(out[0].0, c.addr);
        let mut dst = vec![0u8; 2048];
        if let TunnResult::WriteToNetwork(ka) = c.tunn.decapsulate(None, &out[0].1, &mut dst) {
            let ka = ka.to_vec();
            self.deliver(c.addr, &ka);
        }
    }
}

fn seal(c: &mut Client, pkt: &[u8]) -> Vec<u8> {
    let mut dst = vec![0u8; pkt.len() + 200];
    match c.tunn.encapsulate(pkt, &mut dst) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        other => panic!("no session: {other:?}"),
    }
}

fn open(c: &mut Client, d: &[u8]) -> Vec<u8> {
    let mut dst = vec![0u8; d.len() + 200];
    match c.tunn.decapsulate(None, d, &mut dst) {
        TunnResult::WriteToTunnelV4(p, _) => p.to_vec(),
        other => panic!("not a packet: {other:?}"),
    }
}

#[test]
fn device_to_device_is_reencrypted_to_the_peer_without_the_tun() {
    let mut w = World::new();
    let (mut a, mut b) = (w.add(2), w.add(3));
    w.handshake(&mut a);
    w.handshake(&mut b);
    let pkt = ipv4(a.v4, b.v4, 100);
    let d = seal(&mut a, &pkt);
    let out = w.deliver(a.addr, &d);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, b.addr);
    assert_eq!(open(&mut b, &out[0].1), pkt);
    assert!(w.sink.tun.borrow().is_empty());
}

#[test]
fn hub_and_internet_traffic_goes_to_the_tun_and_back() {
    let mut w = World::new();
    let mut a = w.add(2);
    w.handshake(&mut a);
    let pkt = ipv4(a.v4, Ipv4Addr::new(192, 0, 2, 80), 10);
    let d = seal(&mut a, &pkt);
    w.deliver(a.addr, &d);
    assert_eq!(w.sink.tun.borrow().as_slice(), &[pkt]);
    let reply = ipv4(Ipv4Addr::new(192, 0, 2, 80), a.v4, 10);
    w.engine
        .handle_tun_packet(&reply, Instant::now(), &mut w.bufs, &w.sink);
    let out: Vec<_> = w.sink.udp.borrow_mut().drain(..).collect();
    assert_eq!(out.len(), 1);
    assert_eq!(open(&mut a, &out[0].1), reply);
}

#[test]
fn roaming_follows_the_latest_authenticated_packet_only() {
    let mut w = World::new();
    let mut a = w.add(2);
    w.handshake(&mut a);
    let moved = SocketAddr::from(([203, 0, 113, 9], 5555));
    let av4 = a.v4;
    let d = seal(&mut a, &ipv4(av4, Ipv4Addr::new(100, 96, 0, 1), 0));
    // A forged (garbage) datagram from elsewhere does not move the endpoint...
    let mut forged = d.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    w.deliver(SocketAddr::from(([6, 6, 6, 6], 1)), &forged);
    use crate::hub::route::OwnerLookup;
    let peer = w.engine.table.load().owner_v4(a.v4).unwrap();
    assert_eq!(peer.endpoint().map(|e| e.addr), Some(a.addr));
    // ...an authentic one does, and replies follow it.
    w.deliver(moved, &d);
    assert_eq!(peer.endpoint().map(|e| e.addr), Some(moved));
    w.engine.handle_tun_packet(
        &ipv4(Ipv4Addr::new(1, 1, 1, 1), a.v4, 0),
        Instant::now(),
        &mut w.bufs,
        &w.sink,
    );
    assert_eq!(w.sink.udp.borrow()[0].0, moved);
}

#[test]
fn another_device_behind_a_known_address_gets_its_own_handshake() {
    let mut w = World::new();
    let (mut a, mut b) = (w.add(2), w.add(3));
    w.handshake(&mut a);
    // b now sends from the address a was last seen at (a NAT reused the port): the hub's
    // guess by address is wrong, and b must still be answered as b.
    b.addr = a.addr;
    w.handshake(&mut b);
    let (av4, bv4) = (a.v4, b.v4);
    let d = seal(&mut b, &ipv4(bv4, Ipv4Addr::new(192, 0, 2, 80), 10));
    w.deliver(b.addr, &d);
    assert_eq!(w.sink.tun.borrow().len(), 1, "b's session works");
    use crate::hub::route::OwnerLookup;
    let table = w.engine.table.load();
    let (pa, pb) = (table.owner_v4(av4).unwrap(), table.owner_v4(bv4).unwrap());
    assert_eq!(pb.endpoint().map(|e| e.addr), Some(b.addr));
    assert!(pa.session.lock().is_some(), "a's session untouched");
    assert_eq!(w.engine.counters.decrypt_errors.load(Ordering::Relaxed), 0);
    // A re-handshake from a known address goes to its device directly and still works.
    w.handshake(&mut b);
    let d = seal(&mut b, &ipv4(bv4, Ipv4Addr::new(192, 0, 2, 80), 10));
    w.deliver(b.addr, &d);
    assert_eq!(w.sink.tun.borrow().len(), 2);
}

#[test]
fn replay_spoof_and_removed_device_are_dropped_and_counted() {
    let mut w = World::new();
    let (mut a, mut b) = (w.add(2), w.add(3));
    w.handshake(&mut a);
    w.handshake(&mut b);
    let (av4, bv4) = (a.v4, b.v4);
    let d = seal(&mut a, &ipv4(av4, bv4, 10));
    assert_eq!(w.deliver(a.addr, &d).len(), 1);
    assert!(w.deliver(a.addr, &d).is_empty(), "replay");
    assert_eq!(w.engine.counters.decrypt_errors.load(Ordering::Relaxed), 1);
    let spoof = seal(&mut a, &ipv4(bv4, Ipv4Addr::new(100, 96, 0, 1), 10));
    assert!(w.deliver(a.addr, &spoof).is_empty());
    assert!(w.sink.tun.borrow().is_empty());
    assert_eq!(w.engine.counters.spoofed.load(Ordering::Relaxed), 1);
    w.devices.retain(|d| d.name != "d2");
    w.reload();
    let d = seal(&mut a, &ipv4(av4, bv4, 10));
    assert!(w.deliver(a.addr, &d).is_empty(), "removed device cut off");
    assert_eq!(w.engine.counters.unknown_peer.load(Ordering::Relaxed), 1);
}

#[test]
fn handshake_flood_is_answered_with_cookies() {
    let mut w = World::new();
    let mut a = w.add(2);
    let mut buf = vec![0u8; 2048];
    let mut cookies = 0;
    for _ in 0..(2 * HANDSHAKES_PER_SEC + 10) {
        let TunnResult::WriteToNetwork(init) = a.tunn.format_handshake_initiation(&mut buf, true)
        else {
            panic!()
        };
        let init = init.to_vec();
        let out = w.deliver(a.addr, &init);
        cookies += out.iter().filter(|(_, d)| d[0] == 3).count();
    }
    assert!(cookies > 0);
    assert_eq!(
        w.engine.counters.cookies_sent.load(Ordering::Relaxed) as usize,
        cookies
    );
}

proptest::proptest! {
    // Each case makes a handshake (X25519), so fewer cases than the default 256.
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    #[test]
    fn random_datagrams_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let mut w = World::new();
        let mut a = w.add(2);
        w.handshake(&mut a);
        w.deliver(a.addr, &bytes);
        w.engine.handle_tun_packet(&bytes, Instant::now(), &mut w.bufs, &w.sink);
    }
}

#[test]
fn truncated_messages_are_counted_as_malformed_and_answered_by_nothing() {
    let mut w = World::new();
    let mut a = w.add(2);
    let mut buf = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = a.tunn.format_handshake_initiation(&mut buf, false)
    else {
        panic!("no initiation")
    };
    let init = init.to_vec();
    for cut in [0, 3, 4, 100, 147] {
        assert!(w.deliver(a.addr, &init[..cut]).is_empty());
    }
    assert_eq!(
        w.engine
            .counters
            .malformed_datagrams
            .load(Ordering::Relaxed),
        5
    );
    // The whole message still works afterwards.
    assert_eq!(w.deliver(a.addr, &init).len(), 1);
}

/// A stand-in translator: 6→4 emits a fixed IPv4 packet from the pool, 4→6 a fixed IPv6
/// packet to device 2.
struct FakeNat64 {
    expired: AtomicU64,
}

const POOL: Ipv4Addr = Ipv4Addr::new(100, 96, 255, 254);

impl Nat64 for FakeNat64 {
    fn pool_v4(&self) -> Ipv4Addr {
        POOL
    }
    fn translate_6to4(&self, _p: &[u8], _now: Instant, out: &mut Vec<u8>) -> bool {
        out.clear();
        out.extend_from_slice(&ipv4(POOL, Ipv4Addr::new(192, 0, 2, 80), 8));
        true
    }
    fn translate_4to6(&self, _p: &[u8], _now: Instant, out: &mut Vec<u8>) -> bool {
        out.clear();
        out.extend_from_slice(&crate::hub::packet::tests::ipv6(
            "64:ff9b::c000:250".parse().unwrap(),
            "fd00:1::2".parse().unwrap(),
            8,
        ));
        true
    }
    fn expire(&self, _now: Instant) {
        self.expired.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn dns64_traffic_goes_through_the_nat64_seam_both_ways() {
    let fake = Arc::new(FakeNat64 {
        expired: AtomicU64::new(0),
    });
    let mut w = World::with_nat64(Some(fake.clone()));
    let mut a = w.add(2);
    w.handshake(&mut a);
    let out6 = crate::hub::packet::tests::ipv6(
        "fd00:1::2".parse().unwrap(),
        "64:ff9b::c000:250".parse().unwrap(),
        8,
    );
    let d = seal(&mut a, &out6);
    w.deliver(a.addr, &d);
    let tun = w.sink.tun.borrow().clone();
    assert_eq!(tun.len(), 1);
    assert_eq!(
        &tun[0][12..16],
        &POOL.octets(),
        "translated packet to the TUN"
    );
    // The reply to the pool address comes back as IPv6 to the device.
    let back = ipv4(Ipv4Addr::new(192, 0, 2, 80), POOL, 8);
    w.engine
        .handle_tun_packet(&back, Instant::now(), &mut w.bufs, &w.sink);
    let out: Vec<_> = w.sink.udp.borrow_mut().drain(..).collect();
    assert_eq!(out.len(), 1);
    let mut dst = vec![0u8; 2048];
    match a.tunn.decapsulate(None, &out[0].1, &mut dst) {
        TunnResult::WriteToTunnelV6(p, _) => assert_eq!(p[0] >> 4, 6),
        other => panic!("not an IPv6 packet: {other:?}"),
    }
    w.engine.poll_timers(Instant::now(), &mut w.bufs, &w.sink);
    assert_eq!(fake.expired.load(Ordering::Relaxed), 1);
}

#[test]
fn without_a_translator_dns64_traffic_is_dropped_and_counted() {
    let mut w = World::new();
    let mut a = w.add(2);
    w.handshake(&mut a);
    let out6 = crate::hub::packet::tests::ipv6(
        "fd00:1::2".parse().unwrap(),
        "64:ff9b::c000:250".parse().unwrap(),
        8,
    );
    let d = seal(&mut a, &out6);
    w.deliver(a.addr, &d);
    assert!(w.sink.tun.borrow().is_empty());
    assert_eq!(w.engine.counters.nat64_dropped.load(Ordering::Relaxed), 1);
}

#[test]
fn a_restarted_hub_reaches_a_device_at_its_stored_endpoint_without_waiting_for_it() {
    let mut w = World::new();
    let mut c = w.add(2);
    let key = crate::enroll::keys::decode_key(&w.devices[0].public_key, "key").unwrap();

    // The hub starts the handshake towards the endpoint it kept.
    assert!(w
        .engine
        .initiate(&key, c.addr.into(), Instant::now(), &mut w.bufs, &w.sink));
    let sent: Vec<_> = w.sink.udp.borrow_mut().drain(..).collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, c.addr);
    assert_eq!(sent[0].1[0], 1, "a handshake initiation");

    // The device answers; the hub confirms the session with a keepalive.
    let mut dst = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(resp) = c.tunn.decapsulate(None, &sent[0].1, &mut dst) else {
        panic!("the device did not answer the initiation")
    };
    let resp = resp.to_vec();
    let out = w.deliver(c.addr, &resp);
    assert_eq!(out.len(), 1, "keepalive after the response");
    let mut dst = vec![0u8; 2048];
    assert!(matches!(
        c.tunn.decapsulate(None, &out[0].1, &mut dst),
        TunnResult::Done
    ));

    // Traffic from the hub's side reaches the device at once.
    let pkt = ipv4(Ipv4Addr::new(100, 96, 0, 1), c.v4, 20);
    w.engine
        .handle_tun_packet(&pkt, Instant::now(), &mut w.bufs, &w.sink);
    let sent: Vec<_> = w.sink.udp.borrow_mut().drain(..).collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(open(&mut c, &sent[0].1), pkt);

    // A key that is not registered (a device removed meanwhile) gets nothing.
    let other = KeyPair::generate();
    assert!(!w.engine.initiate(
        other.public.as_bytes(),
        c.addr.into(),
        Instant::now(),
        &mut w.bufs,
        &w.sink
    ));
    assert!(w.sink.udp.borrow().is_empty());
}

mod fuzz {
    use super::*;
    use crate::fuzz;

    fn world() -> (World, Client) {
        let pool = Ipv4Addr::new(100, 96, 255, 254);
        let nat = crate::hub::nat64::Nat64::new("64:ff9b::/96".parse().unwrap(), pool).unwrap();
        let nat: Arc<dyn Nat64> = Arc::new(parking_lot::Mutex::new(nat));
        let mut w = World::with_nat64(Some(nat));
        let mut a = w.add(2);
        w.handshake(&mut a);
        w.add(3);
        (w, a)
    }

    fn ip_seeds() -> Vec<Vec<u8>> {
        use crate::hub::packet::tests::{ipv4, ipv6};
        let a4 = Ipv4Addr::new(100, 96, 0, 2);
        let a6: std::net::Ipv6Addr = "fd00:1::2".parse().unwrap();
        let far: std::net::Ipv6Addr = "64:ff9b::c000:201".parse().unwrap();
        let mut tcp6 = ipv6(a6, far, 20);
        tcp6[6] = 6;
        tcp6[40 + 12] = 0x50;
        let mut icmp6 = ipv6(a6, far, 8);
        icmp6[6] = 58;
        icmp6[40] = 128;
        vec![
            ipv4(a4, Ipv4Addr::new(100, 96, 0, 3), 8),
            ipv4(a4, Ipv4Addr::new(192, 0, 2, 1), 28),
            ipv6(a6, far, 8),
            tcp6,
            icmp6,
            ipv4(
                Ipv4Addr::new(192, 0, 2, 1),
                Ipv4Addr::new(100, 96, 255, 254),
                8,
            ),
        ]
    }

    #[test]
    fn fuzz_hub_datagrams() {
        let (mut w, mut a) = world();
        let mut buf = vec![0u8; 2048];
        let init = match a.tunn.format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(init) => init.to_vec(),
            _ => panic!("no initiation"),
        };
        let seeds = vec![init, seal(&mut a, &ip_seeds()[0]), vec![4, 0, 0, 0]];
        let from = a.addr;
        let stranger = SocketAddr::from(([203, 0, 113, 9], 5555));
        fuzz::run("hub_datagrams", fuzz::bytes(seeds, 1500), |d| {
            w.deliver(from, d);
            w.deliver(stranger, d);
            w.sink.tun.borrow_mut().clear();
        });
    }

    #[test]
    fn fuzz_ip_packets_routing_and_nat64() {
        let (mut w, mut a) = world();
        let from = a.addr;
        fuzz::run("ip_packets", fuzz::bytes(ip_seeds(), 1500), |p| {
            let _ = crate::hub::packet::IpHeader::parse(p);
            // From a device (routing, NAT64 6→4), then from the TUN (routing, NAT64 4→6).
            if !p.is_empty() {
                let d = seal(&mut a, p);
                w.deliver(from, &d);
            }
            w.engine
                .handle_tun_packet(p, Instant::now(), &mut w.bufs, &w.sink);
            for out in w.sink.tun.borrow_mut().drain(..) {
                let parsed = crate::hub::packet::IpHeader::parse(&out);
                assert!(parsed.is_ok(), "what the hub writes to the TUN parses");
            }
            w.sink.udp.borrow_mut().clear();
        });
    }
}
