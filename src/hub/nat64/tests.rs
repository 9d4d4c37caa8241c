//! NAT64 tests with hand-built packets; every checksum the translator writes is verified by
//! recomputing it from scratch.

use super::wire::*;
use super::*;
use proptest::prelude::*;

const DEV: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 2, 0, 0, 0, 0, 2);
const POOL: Ipv4Addr = Ipv4Addr::new(100, 96, 255, 254);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const ROUTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

fn nat() -> Nat64 {
    Nat64::new("64:ff9b::/96".parse().unwrap(), POOL).unwrap()
}

fn server6() -> Ipv6Addr {
    "64:ff9b::198.51.100.10".parse().unwrap()
}

fn t0() -> Instant {
    Instant::now()
}

fn tcp_segment(sport: u16, dport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut s = vec![0u8; 20];
    put16(&mut s, 0, sport);
    put16(&mut s, 2, dport);
    s[4..8].copy_from_slice(&1000u32.to_be_bytes());
    s[12] = 5 << 4;
    s[13] = flags;
    put16(&mut s, 14, 64240);
    s.extend_from_slice(data);
    s
}

fn udp_datagram(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut s = vec![0u8; 8];
    put16(&mut s, 0, sport);
    put16(&mut s, 2, dport);
    put16(&mut s, 4, (8 + data.len()) as u16);
    s.extend_from_slice(data);
    s
}

fn icmp_echo(ty: u8, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut s = vec![ty, 0, 0, 0];
    s.extend_from_slice(&id.to_be_bytes());
    s.extend_from_slice(&seq.to_be_bytes());
    s.extend_from_slice(data);
    s
}

/// Offset of the checksum field for a protocol.
fn ck_at(proto: u8) -> usize {
    match proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => 2,
    }
}

/// An IPv6 packet with a correct transport checksum.
fn v6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop: u8, mut payload: Vec<u8>) -> Vec<u8> {
    let at = ck_at(next);
    put16(&mut payload, at, 0);
    let mut ck = finish(sum(
        pseudo_v6(&src, &dst, payload.len() as u32, next),
        &payload,
    ));
    if next == PROTO_UDP && ck == 0 {
        ck = 0xffff;
    }
    put16(&mut payload, at, ck);
    let mut p = vec![];
    emit_ipv6(&mut p, 0, payload.len() as u16, next, hop, src, dst);
    p.extend_from_slice(&payload);
    p
}

/// An IPv4 packet with correct header and transport checksums.
fn v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, mut payload: Vec<u8>) -> Vec<u8> {
    let at = ck_at(proto);
    put16(&mut payload, at, 0);
    let base = if proto == PROTO_ICMP {
        0
    } else {
        pseudo_v4(&src, &dst, payload.len() as u16, proto)
    };
    let ck = finish(sum(base, &payload));
    put16(&mut payload, at, ck);
    let mut p = vec![];
    emit_ipv4(
        &mut p,
        0,
        (20 + payload.len()) as u16,
        7,
        true,
        ttl,
        proto,
        src,
        dst,
    );
    p.extend_from_slice(&payload);
    p
}

/// Asserts `p` is a well-formed IPv4 packet with valid checksums; returns the view.
fn check_v4(p: &[u8]) -> Ipv4View<'_> {
    let ip = Ipv4View::new_checked(p, false).unwrap();
    assert_eq!(ip.total_len(), p.len());
    assert!(ip.header_checksum_ok(), "IPv4 header checksum");
    let base = match ip.protocol() {
        PROTO_ICMP => 0,
        proto => pseudo_v4(&ip.src(), &ip.dst(), ip.payload().len() as u16, proto),
    };
    assert_eq!(
        finish(sum(base, ip.payload())),
        0,
        "IPv4 transport checksum"
    );
    ip
}

/// Asserts `p` is a well-formed IPv6 packet with a valid transport checksum.
fn check_v6(p: &[u8]) -> Ipv6View<'_> {
    let ip = Ipv6View::new_checked(p).unwrap();
    assert_eq!(40 + ip.payload().len(), p.len());
    let base = pseudo_v6(
        &ip.src(),
        &ip.dst(),
        ip.payload().len() as u32,
        ip.next_header(),
    );
    assert_eq!(
        finish(sum(base, ip.payload())),
        0,
        "IPv6 transport checksum"
    );
    ip
}

/// Sends a TCP SYN from the device; returns the translated packet.
fn syn_out(n: &mut Nat64, now: Instant, sport: u16) -> Vec<u8> {
    let pkt = v6(
        DEV,
        server6(),
        PROTO_TCP,
        64,
        tcp_segment(sport, 443, TCP_SYN, b""),
    );
    let mut out = vec![];
    n.translate_6to4(&pkt, now, &mut out).unwrap();
    out
}

#[test]
fn tcp_syn_6to4_comes_from_the_pool_with_valid_checksums() {
    let mut n = nat();
    let out = syn_out(&mut n, t0(), 40000);
    let ip = check_v4(&out);
    assert_eq!(ip.src(), POOL);
    assert_eq!(ip.dst(), SERVER);
    assert_eq!(ip.protocol(), PROTO_TCP);
    assert_eq!(ip.ttl(), 63, "hop limit 64 decremented");
    let tcp = ip.payload();
    assert_eq!(be16(tcp, 0), 40000, "a free port >= 1024 is preserved");
    assert_eq!(be16(tcp, 2), 443);
    assert_eq!(tcp[13], TCP_SYN);
    assert_eq!(n.stats().tcp_bindings, 1);
}

#[test]
fn tcp_reply_4to6_maps_back_to_the_device() {
    let mut n = nat();
    let now = t0();
    let out = syn_out(&mut n, now, 40000);
    let pool_port = be16(Ipv4View::new_checked(&out, false).unwrap().payload(), 0);
    let reply = v4(
        SERVER,
        POOL,
        PROTO_TCP,
        50,
        tcp_segment(443, pool_port, TCP_SYN | 0x10, b"hello"),
    );
    let mut back = vec![];
    let dev = n.translate_4to6(&reply, now, &mut back).unwrap();
    assert_eq!(dev, DEV);
    let ip = check_v6(&back);
    assert_eq!(ip.src(), server6());
    assert_eq!(ip.dst(), DEV);
    assert_eq!(ip.hop_limit(), 49);
    assert_eq!(be16(ip.payload(), 0), 443);
    assert_eq!(be16(ip.payload(), 2), 40000);
    assert_eq!(&ip.payload()[20..], b"hello");
}

#[test]
fn taken_port_gets_another_pool_port_and_both_map_back() {
    let mut n = nat();
    let now = t0();
    let other: Ipv6Addr = "fd00:1:2::3".parse().unwrap();
    syn_out(&mut n, now, 40000);
    let pkt = v6(
        other,
        server6(),
        PROTO_TCP,
        64,
        tcp_segment(40000, 443, TCP_SYN, b""),
    );
    let mut out = vec![];
    n.translate_6to4(&pkt, now, &mut out).unwrap();
    let p2 = be16(check_v4(&out).payload(), 0);
    assert_ne!(p2, 40000);
    assert!(p2 >= 1024);
    let reply = v4(SERVER, POOL, PROTO_TCP, 50, tcp_segment(443, p2, 0x12, b""));
    let mut back = vec![];
    assert_eq!(n.translate_4to6(&reply, now, &mut back).unwrap(), other);
}

#[test]
fn icmp_echo_round_trip() {
    let mut n = nat();
    let now = t0();
    let req = v6(
        DEV,
        server6(),
        PROTO_ICMPV6,
        64,
        icmp_echo(128, 7, 1, b"ping"),
    );
    let mut out = vec![];
    n.translate_6to4(&req, now, &mut out).unwrap();
    let ip = check_v4(&out);
    assert_eq!(ip.protocol(), PROTO_ICMP);
    let icmp = ip.payload();
    assert_eq!((icmp[0], icmp[1]), (8, 0));
    assert_eq!(be16(icmp, 6), 1);
    let pool_id = be16(icmp, 4);
    let reply = v4(
        SERVER,
        POOL,
        PROTO_ICMP,
        60,
        icmp_echo(0, pool_id, 1, b"ping"),
    );
    let mut back = vec![];
    assert_eq!(n.translate_4to6(&reply, now, &mut back).unwrap(), DEV);
    let ip6 = check_v6(&back);
    assert_eq!(ip6.next_header(), PROTO_ICMPV6);
    let p = ip6.payload();
    assert_eq!((p[0], p[1]), (129, 0));
    assert_eq!(be16(p, 4), 7, "the device's echo id is restored");
    assert_eq!(&p[8..], b"ping");
}

#[test]
fn udp_round_trip_and_zero_checksum_from_ipv4_is_computed() {
    let mut n = nat();
    let now = t0();
    let q = v6(
        DEV,
        server6(),
        PROTO_UDP,
        64,
        udp_datagram(5353, 53, b"query"),
    );
    let mut out = vec![];
    n.translate_6to4(&q, now, &mut out).unwrap();
    let pool_port = be16(check_v4(&out).payload(), 0);
    // An IPv4 reply without a UDP checksum (allowed in IPv4).
    let mut reply = v4(
        SERVER,
        POOL,
        PROTO_UDP,
        60,
        udp_datagram(53, pool_port, b"answer"),
    );
    put16(&mut reply, 20 + 6, 0);
    let mut back = vec![];
    assert_eq!(n.translate_4to6(&reply, now, &mut back).unwrap(), DEV);
    let ip = check_v6(&back);
    assert_ne!(be16(ip.payload(), 6), 0);
    assert_eq!(be16(ip.payload(), 2), 5353);
    assert_eq!(&ip.payload()[8..], b"answer");
}

#[test]
fn corrupted_tcp_checksum_stays_corrupted_after_translation() {
    let mut n = nat();
    let mut pkt = v6(
        DEV,
        server6(),
        PROTO_TCP,
        64,
        tcp_segment(40000, 80, TCP_SYN, b"x"),
    );
    let last = pkt.len() - 1;
    pkt[last] ^= 0x40;
    let mut out = vec![];
    n.translate_6to4(&pkt, t0(), &mut out).unwrap();
    let ip = Ipv4View::new_checked(&out, false).unwrap();
    let base = pseudo_v4(&ip.src(), &ip.dst(), ip.payload().len() as u16, PROTO_TCP);
    assert_ne!(finish(sum(base, ip.payload())), 0);
}

#[test]
fn icmp_port_unreachable_for_udp_becomes_icmpv6_unreachable_to_the_device() {
    let mut n = nat();
    let now = t0();
    let q = v6(
        DEV,
        server6(),
        PROTO_UDP,
        64,
        udp_datagram(5353, 9999, b"probe"),
    );
    let mut sent = vec![];
    n.translate_6to4(&q, now, &mut sent).unwrap();
    // The server answers Port Unreachable quoting the IPv4 packet we sent.
    let mut err = vec![3, 3, 0, 0, 0, 0, 0, 0];
    err.extend_from_slice(&sent);
    let icmp = v4(SERVER, POOL, PROTO_ICMP, 60, err);
    let mut back = vec![];
    assert_eq!(n.translate_4to6(&icmp, now, &mut back).unwrap(), DEV);
    let ip = check_v6(&back);
    assert_eq!(ip.dst(), DEV);
    assert_eq!(ip.src(), server6());
    let m = ip.payload();
    assert_eq!(
        (m[0], m[1]),
        (1, 4),
        "Destination Unreachable, port unreachable"
    );
    // The quoted packet is the device's original, byte for byte, but for the hop limit the
    // translator decremented on the way out.
    let mut expected = q.clone();
    expected[7] -= 1;
    assert_eq!(&m[8..], &expected[..]);
}

#[test]
fn frag_needed_becomes_packet_too_big_with_mtu_plus_20() {
    let mut n = nat();
    let now = t0();
    let syn = syn_out(&mut n, now, 40000);
    let mut err = vec![3, 4, 0, 0, 0, 0, 0x05, 0xc8]; // next-hop MTU 1480
    err.extend_from_slice(&syn);
    let icmp = v4(ROUTER, POOL, PROTO_ICMP, 60, err);
    let mut back = vec![];
    n.translate_4to6(&icmp, now, &mut back).unwrap();
    let ip = check_v6(&back);
    assert_eq!(ip.src(), n.embed(ROUTER));
    let m = ip.payload();
    assert_eq!(m[0], 2, "Packet Too Big");
    assert_eq!(u32::from_be_bytes([m[4], m[5], m[6], m[7]]), 1500);
    // The quoted TCP header carries the device's port and a checksum valid for the device's view.
    let inner = Ipv6View::new_checked(&m[8..]).unwrap();
    assert_eq!(inner.src(), DEV);
    assert_eq!(inner.dst(), server6());
    assert_eq!(be16(inner.payload(), 0), 40000);
    check_v6(&m[8..]);

    // A tiny MTU is raised to the IPv6 minimum.
    let mut err = vec![3, 4, 0, 0, 0, 0, 0x02, 0x40];
    err.extend_from_slice(&syn);
    let icmp = v4(ROUTER, POOL, PROTO_ICMP, 60, err);
    n.translate_4to6(&icmp, now, &mut back).unwrap();
    let m = &back[40..];
    assert_eq!(u32::from_be_bytes([m[4], m[5], m[6], m[7]]), 1280);
}

#[test]
fn time_exceeded_about_an_echo_restores_the_echo_id() {
    let mut n = nat();
    let now = t0();
    let req = v6(
        DEV,
        server6(),
        PROTO_ICMPV6,
        64,
        icmp_echo(128, 99, 3, b"trace"),
    );
    let mut sent = vec![];
    n.translate_6to4(&req, now, &mut sent).unwrap();
    let mut err = vec![11, 0, 0, 0, 0, 0, 0, 0];
    err.extend_from_slice(&sent);
    let icmp = v4(ROUTER, POOL, PROTO_ICMP, 60, err);
    let mut back = vec![];
    n.translate_4to6(&icmp, now, &mut back).unwrap();
    let m = check_v6(&back).payload();
    assert_eq!((m[0], m[1]), (3, 0));
    let inner = Ipv6View::new_checked(&m[8..]).unwrap();
    assert_eq!(inner.next_header(), PROTO_ICMPV6);
    assert_eq!(inner.payload()[0], 128);
    assert_eq!(be16(inner.payload(), 4), 99);
    // The quoted echo request's checksum is valid as ICMPv6 again.
    check_v6(&m[8..]);
    let mut expected = req.clone();
    expected[7] -= 1;
    assert_eq!(&m[8..], &expected[..]);
}

#[test]
fn unknown_binding_and_unknown_remote_are_dropped() {
    let mut n = nat();
    let now = t0();
    let mut out = vec![];
    let stray = v4(SERVER, POOL, PROTO_UDP, 60, udp_datagram(53, 4444, b"x"));
    assert_eq!(
        n.translate_4to6(&stray, now, &mut out),
        Err(Nat64Drop::NoBinding)
    );
    // A binding exists, but this remote was never contacted (address-dependent filtering).
    let q = v6(DEV, server6(), PROTO_UDP, 64, udp_datagram(5353, 53, b"q"));
    n.translate_6to4(&q, now, &mut out).unwrap();
    let port = be16(&out[20..], 0);
    let other = v4(ROUTER, POOL, PROTO_UDP, 60, udp_datagram(53, port, b"x"));
    assert_eq!(
        n.translate_4to6(&other, now, &mut out),
        Err(Nat64Drop::NoBinding)
    );
    // Not addressed to the pool at all.
    let elsewhere = v4(SERVER, ROUTER, PROTO_UDP, 60, udp_datagram(53, port, b"x"));
    assert_eq!(
        n.translate_4to6(&elsewhere, now, &mut out),
        Err(Nat64Drop::NotForPool)
    );
    // An ICMP error about a session that does not exist.
    let mut err = vec![3, 3, 0, 0, 0, 0, 0, 0];
    err.extend_from_slice(&v4(
        POOL,
        ROUTER,
        PROTO_UDP,
        60,
        udp_datagram(port, 53, b"x"),
    ));
    let icmp = v4(ROUTER, POOL, PROTO_ICMP, 60, err);
    assert_eq!(
        n.translate_4to6(&icmp, now, &mut out),
        Err(Nat64Drop::NoBinding)
    );
}

#[test]
fn tcp_without_syn_makes_no_binding() {
    let mut n = nat();
    let ack = v6(
        DEV,
        server6(),
        PROTO_TCP,
        64,
        tcp_segment(40000, 443, 0x10, b""),
    );
    let mut out = vec![];
    assert_eq!(
        n.translate_6to4(&ack, t0(), &mut out),
        Err(Nat64Drop::NoBinding)
    );
    assert_eq!(n.stats().tcp_bindings, 0);
}

#[test]
fn forbidden_destinations_and_hop_limit_are_dropped() {
    let mut n = nat();
    let mut out = vec![];
    for dst in [
        "64:ff9b::10.0.0.1",
        "64:ff9b::127.0.0.1",
        "64:ff9b::100.96.0.2",
        "64:ff9b::224.0.0.1",
    ] {
        let pkt = v6(
            DEV,
            dst.parse().unwrap(),
            PROTO_UDP,
            64,
            udp_datagram(1, 2, b""),
        );
        assert_eq!(
            n.translate_6to4(&pkt, t0(), &mut out),
            Err(Nat64Drop::ForbiddenDestination),
            "{dst}"
        );
    }
    let pkt = v6(DEV, server6(), PROTO_UDP, 1, udp_datagram(1, 2, b""));
    assert_eq!(
        n.translate_6to4(&pkt, t0(), &mut out),
        Err(Nat64Drop::HopLimitExceeded)
    );
    let pkt = v6(
        DEV,
        "2001:db8::1".parse().unwrap(),
        PROTO_UDP,
        9,
        udp_datagram(1, 2, b""),
    );
    assert_eq!(
        n.translate_6to4(&pkt, t0(), &mut out),
        Err(Nat64Drop::NotInPrefix)
    );
    assert!(out.is_empty(), "a dropped packet leaves no output");
}

#[test]
fn bindings_expire_after_their_timeouts() {
    let mut n = nat();
    let now = t0();
    let q = v6(DEV, server6(), PROTO_UDP, 64, udp_datagram(5353, 53, b"q"));
    let mut out = vec![];
    n.translate_6to4(&q, now, &mut out).unwrap();
    let port = be16(&out[20..], 0);
    let reply = v4(SERVER, POOL, PROTO_UDP, 60, udp_datagram(53, port, b"a"));
    let later = now + Duration::from_secs(4 * 60);
    assert!(n.translate_4to6(&reply, later, &mut out).is_ok());
    // Refreshed at `later`; gone five minutes after that.
    let gone = later + Duration::from_secs(5 * 60 + 1);
    assert_eq!(
        n.translate_4to6(&reply, gone, &mut out),
        Err(Nat64Drop::NoBinding)
    );
    n.expire(gone);
    assert_eq!(n.stats().udp_bindings, 0);

    // TCP: established lasts two hours, a half-open one four minutes.
    let syn = syn_out(&mut n, now, 40000);
    let pool_port = be16(&syn[20..], 0);
    syn_out(&mut n, now, 40001);
    let synack = v4(
        SERVER,
        POOL,
        PROTO_TCP,
        60,
        tcp_segment(443, pool_port, 0x12, b""),
    );
    n.translate_4to6(&synack, now, &mut out).unwrap();
    n.expire(now + Duration::from_secs(60 * 60));
    assert_eq!(
        n.stats().tcp_bindings,
        1,
        "the half-open one expired, the established one not"
    );
    n.expire(now + Duration::from_secs(2 * 60 * 60 + 1));
    assert_eq!(n.stats().tcp_bindings, 0);
}

#[test]
fn per_device_limit_refuses_new_bindings() {
    let mut n = nat().with_limits(Limits {
        bindings_per_device: 2,
        sessions_per_binding: 8,
    });
    let now = t0();
    syn_out(&mut n, now, 1000);
    syn_out(&mut n, now, 1001);
    let pkt = v6(
        DEV,
        server6(),
        PROTO_TCP,
        64,
        tcp_segment(1002, 443, TCP_SYN, b""),
    );
    let mut out = vec![];
    assert_eq!(
        n.translate_6to4(&pkt, now, &mut out),
        Err(Nat64Drop::LimitReached)
    );
    // Ports below 1024 are never handed out.
    assert!(n.tables[Proto::Tcp as usize]
        .by_pool
        .keys()
        .all(|&p| p >= 1024));
}

#[test]
fn prefix_must_be_a_96() {
    assert!(Nat64::new("64:ff9b::/64".parse().unwrap(), POOL).is_err());
}

#[test]
fn hot_path_reuses_the_output_buffer() {
    let mut n = nat();
    let now = t0();
    let mut out = Vec::with_capacity(2048);
    let ptr = out.as_ptr();
    syn_out(&mut n, now, 40000);
    let seg = v6(
        DEV,
        server6(),
        PROTO_TCP,
        64,
        tcp_segment(40000, 443, 0x10, &[7; 1200]),
    );
    for _ in 0..3 {
        n.translate_6to4(&seg, now, &mut out).unwrap();
    }
    assert_eq!(out.as_ptr(), ptr);
}

#[test]
fn device_port_unreachable_becomes_icmpv4_error_to_the_remote() {
    let mut n = nat();
    let now = t0();
    let q = v6(DEV, server6(), PROTO_UDP, 64, udp_datagram(5353, 53, b"q"));
    let mut out = vec![];
    n.translate_6to4(&q, now, &mut out).unwrap();
    let pool_port = be16(&out[20..], 0);
    let reply = v4(
        SERVER,
        POOL,
        PROTO_UDP,
        60,
        udp_datagram(53, pool_port, b"late answer"),
    );
    let mut back = vec![];
    n.translate_4to6(&reply, now, &mut back).unwrap();
    // The device's socket is gone: it answers Port Unreachable quoting what it received.
    let mut err = vec![1, 4, 0, 0, 0, 0, 0, 0];
    err.extend_from_slice(&back);
    let icmp6 = v6(DEV, server6(), PROTO_ICMPV6, 64, err);
    n.translate_6to4(&icmp6, now, &mut out).unwrap();
    let ip = check_v4(&out);
    assert_eq!(
        (ip.src(), ip.dst(), ip.protocol()),
        (POOL, SERVER, PROTO_ICMP)
    );
    let m = ip.payload();
    assert_eq!((m[0], m[1]), (3, 3), "Port Unreachable");
    // The quoted packet is the server's, as it sent it (but for the TTL we decremented).
    let inner = check_v4(&m[8..]);
    assert_eq!((inner.src(), inner.dst()), (SERVER, POOL));
    assert_eq!(inner.ttl(), 59);
    assert_eq!(inner.payload(), &reply[20..]);

    // An error quoting a packet sent to someone else is refused.
    let other: Ipv6Addr = "fd00:1:2::9".parse().unwrap();
    let mut err = vec![1, 4, 0, 0, 0, 0, 0, 0];
    err.extend_from_slice(&back);
    let forged = v6(other, server6(), PROTO_ICMPV6, 64, err);
    assert_eq!(
        n.translate_6to4(&forged, now, &mut out),
        Err(Nat64Drop::NoBinding)
    );
}

#[test]
fn device_packet_too_big_becomes_frag_needed_with_mtu_minus_20() {
    let mut n = nat();
    let now = t0();
    let syn = syn_out(&mut n, now, 40000);
    let pool_port = be16(&syn[20..], 0);
    let data = tcp_segment(443, pool_port, 0x10, &[1; 1000]);
    let big = v4(SERVER, POOL, PROTO_TCP, 60, data);
    let mut back = vec![];
    n.translate_4to6(&big, now, &mut back).unwrap();
    let mut err = vec![2, 0, 0, 0];
    err.extend_from_slice(&1300u32.to_be_bytes());
    err.extend_from_slice(&back);
    let icmp6 = v6(DEV, server6(), PROTO_ICMPV6, 64, err);
    let mut out = vec![];
    n.translate_6to4(&icmp6, now, &mut out).unwrap();
    let ip = check_v4(&out);
    assert!(out.len() <= 576, "ICMPv4 errors stay within 576 bytes");
    let m = ip.payload();
    assert_eq!((m[0], m[1]), (3, 4));
    assert_eq!(be16(m, 6), 1280);
    let inner = Ipv4View::new_checked(&m[8..], true).unwrap();
    assert_eq!(
        inner.total_len(),
        big.len(),
        "the quoted length is the original's"
    );
    assert_eq!(be16(inner.payload(), 2), pool_port);
}

proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut n = nat();
        let mut out = vec![];
        let _ = n.translate_6to4(&data, t0(), &mut out);
        let _ = n.translate_4to6(&data, t0(), &mut out);
    }

    #[test]
    fn mutated_packets_never_panic(pos in 0usize..120, val in any::<u8>(), cut in 0usize..40, which in 0usize..6) {
        let mut n = nat();
        let now = t0();
        let syn = syn_out(&mut n, now, 40000);
        let mut out = vec![];
        let udp = v6(DEV, server6(), PROTO_UDP, 64, udp_datagram(5353, 53, b"q"));
        n.translate_6to4(&udp, now, &mut out).unwrap();
        let udp4 = out.clone();
        let mut err = vec![3, 4, 0, 0, 0, 0, 0, 0];
        err.extend_from_slice(&syn);
        let mut err2 = vec![12, 0, 0, 0, 9, 0, 0, 0];
        err2.extend_from_slice(&udp4);
        let mut back = vec![];
        let reply = v4(SERVER, POOL, PROTO_UDP, 60, udp_datagram(53, be16(&udp4[20..], 0), b"a"));
        n.translate_4to6(&reply, now, &mut back).unwrap();
        let mut err6 = vec![1, 4, 0, 0, 0, 0, 0, 0];
        err6.extend_from_slice(&back);
        let candidates = [
            v4(ROUTER, POOL, PROTO_ICMP, 60, err),
            v4(ROUTER, POOL, PROTO_ICMP, 60, err2),
            v4(SERVER, POOL, PROTO_TCP, 60, tcp_segment(443, be16(&syn[20..], 0), 0x12, b"x")),
            v6(DEV, server6(), PROTO_ICMPV6, 64, icmp_echo(128, 1, 1, b"x")),
            udp,
            v6(DEV, server6(), PROTO_ICMPV6, 64, err6),
        ];
        let mut p = candidates[which].clone();
        if pos < p.len() {
            p[pos] = val;
        }
        if cut < 20 {
            p.truncate(p.len().saturating_sub(cut));
        }
        if n.translate_6to4(&p, now, &mut out).is_ok() {
            Ipv4View::new_checked(&out, false).unwrap();
        }
        if let Ok(_dev) = n.translate_4to6(&p, now, &mut out) {
            // Whatever comes out is a well-formed IPv6 packet.
            Ipv6View::new_checked(&out).unwrap();
        }
    }
}
