//! NAT46 tests with hand-built packets: every checksum is verified by recomputing it, and
//! there-and-back gives the packet it started as.

use super::translate::*;
use super::*;
use crate::hub::nat64::wire::*;
use proptest::prelude::*;

const DEV: Ipv4Addr = Ipv4Addr::new(100, 96, 0, 2);
const POOL: Ipv4Addr = Ipv4Addr::new(100, 127, 0, 1);
const SITE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x80, 0, 0, 0, 0, 0x80);

fn nat(per_device: usize) -> Nat46 {
    let n = Nat46::new(Settings {
        pool: "100.127.0.0/16".parse().unwrap(),
        overlay_v6: "fd00:1:2::/48".parse().unwrap(),
        idle: Duration::from_secs(60),
        per_device,
    });
    n.set_devices(&[(DEV, "fd00:1:2::2".parse().unwrap())]);
    n
}

/// An IPv4 packet of `proto` carrying `l4` (its checksum made), from `src` to `dst`.
fn v4(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, mut l4: Vec<u8>) -> Vec<u8> {
    match proto {
        PROTO_TCP | PROTO_UDP => {
            let at = if proto == PROTO_TCP { 16 } else { 6 };
            put16(&mut l4, at, 0);
            let c = finish(sum(pseudo_v4(&src, &dst, l4.len() as u16, proto), &l4));
            put16(&mut l4, at, if c == 0 { 0xffff } else { c });
        }
        _ => {
            put16(&mut l4, 2, 0);
            let c = finish(sum(0, &l4));
            put16(&mut l4, 2, c);
        }
    }
    let mut p = Vec::new();
    emit_ipv4(
        &mut p,
        0,
        (20 + l4.len()) as u16,
        7,
        true,
        64,
        proto,
        src,
        dst,
    );
    p.extend(l4);
    p
}

fn l4(proto: u8, data: &[u8]) -> Vec<u8> {
    let mut s = match proto {
        PROTO_TCP => {
            let mut s = vec![0u8; 20];
            s[12] = 5 << 4;
            s
        }
        PROTO_UDP => {
            let mut s = vec![0u8; 8];
            put16(&mut s, 4, (8 + data.len()) as u16);
            s
        }
        _ => vec![8, 0, 0, 0, 0, 1, 0, 1],
    };
    if proto != PROTO_ICMP {
        put16(&mut s, 0, 40000);
        put16(&mut s, 2, 443);
    }
    s.extend_from_slice(data);
    s
}

fn v6_ok(p: &[u8]) -> bool {
    let v = Ipv6View::new_checked(p).unwrap();
    let (mut next, mut seg) = (v.next_header(), v.payload());
    if next == 44 {
        next = seg[0];
        seg = &seg[8..];
    }
    finish(sum(
        pseudo_v6(&v.src(), &v.dst(), seg.len() as u32, next),
        seg,
    )) == 0
}

fn v4_ok(p: &[u8]) -> bool {
    let v = Ipv4View::new_checked(p, false).unwrap();
    let seg = v.payload();
    let l4 = if v.protocol() == PROTO_ICMP {
        finish(sum(0, seg)) == 0
    } else {
        finish(sum(
            pseudo_v4(&v.src(), &v.dst(), seg.len() as u16, v.protocol()),
            seg,
        )) == 0
    };
    v.header_checksum_ok() && l4
}

#[test]
fn dns46_maps_per_device_and_bounds_each_one() {
    let n = nat(2);
    let t = Instant::now();
    let a = n.map(DEV, SITE, 30, t).unwrap();
    assert!(n.pool().contains(&a));
    assert_eq!(
        n.map(DEV, SITE, 30, t),
        Some(a),
        "the same site, the same address"
    );
    let other: Ipv6Addr = "2001:db8:81::1".parse().unwrap();
    let b = n.map(DEV, other, 30, t).unwrap();
    assert_ne!(a, b);
    // Full, and both still within their TTL: nothing may go.
    let third: Ipv6Addr = "2001:db8:82::1".parse().unwrap();
    assert_eq!(n.map(DEV, third, 30, t), None);
    assert_eq!(n.stats().device_full, 1);
    // Another device is not affected.
    let dev2 = Ipv4Addr::new(100, 96, 0, 3);
    assert!(n.map(dev2, third, 30, t).is_some());
    // Past the TTL the least recently used one goes.
    let later = t + Duration::from_secs(31);
    let mut out = Vec::new();
    let p = v4(PROTO_UDP, DEV, b, l4(PROTO_UDP, b"x"));
    n.outbound(&p, DEV, later, &mut out).unwrap();
    let c = n.map(DEV, third, 30, later).unwrap();
    assert_ne!(c, b, "the one in use stays");
    assert_eq!(
        n.stats().mappings,
        3,
        "two of this device, one of the other"
    );
    assert!(n
        .outbound(
            &v4(PROTO_UDP, DEV, b, l4(PROTO_UDP, b"x")),
            DEV,
            later,
            &mut out
        )
        .is_ok());
    // Idle and past the TTL: gone.
    n.expire(later + Duration::from_secs(61));
    assert_eq!(n.stats().mappings, 0);
    assert_eq!(
        n.outbound(&p, DEV, later, &mut out),
        Err(true),
        "no mapping: unreachable"
    );
}

#[test]
fn never_mapped_addresses() {
    let n = nat(10);
    for a in [
        "::1",
        "fe80::1",
        "fd00:1:2::5",
        "fc00::1",
        "ff02::1",
        "::ffff:192.0.2.1",
        "64:ff9b::c000:201",
        "::",
    ] {
        assert_eq!(
            n.map(DEV, a.parse().unwrap(), 30, Instant::now()),
            None,
            "{a}"
        );
    }
    assert!(n.mappable(SITE));
}

#[test]
fn the_source_is_in_the_overlay_and_the_egress_can_name_it() {
    for overlay in ["fd00:1:2::/48", "2001:db8:aa:bb::/64", "fd12::/16"] {
        let n = Nat46::new(Settings {
            pool: "100.127.0.0/16".parse().unwrap(),
            overlay_v6: overlay.parse().unwrap(),
            idle: Duration::from_secs(60),
            per_device: 4,
        });
        let net: Ipv6Net = overlay.parse().unwrap();
        let dev6 = Ipv6Addr::from(u128::from(net.network()) + 2);
        let s = n.source_of(DEV);
        assert!(
            net.contains(&s) && n.source_range().contains(&s),
            "{overlay}: {s}"
        );
        assert_eq!(source_for(dev6, DEV), s, "{overlay}");
    }
}

#[test]
fn only_devices_it_is_on_for() {
    let n = nat(10);
    assert_eq!(n.device_of(IpAddr::V4(DEV)), Some(DEV));
    assert_eq!(n.device_of("fd00:1:2::2".parse().unwrap()), Some(DEV));
    assert_eq!(n.device_of(IpAddr::V4(Ipv4Addr::new(100, 96, 0, 3))), None);
    n.set_devices(&[]);
    assert_eq!(n.device_of(IpAddr::V4(DEV)), None);
}

#[test]
fn a_tcp_exchange_goes_there_and_back() {
    let n = nat(10);
    let t = Instant::now();
    let pool = n.map(DEV, SITE, 30, t).unwrap();
    let syn = v4(PROTO_TCP, DEV, pool, l4(PROTO_TCP, b"hello"));
    let mut out6 = Vec::new();
    n.outbound(&syn, DEV, t, &mut out6).unwrap();
    let v = Ipv6View::new_checked(&out6).unwrap();
    assert_eq!(v.src(), n.source_of(DEV));
    assert_eq!(v.dst(), SITE);
    assert_eq!(v.hop_limit(), 63);
    assert!(v6_ok(&out6));
    // The reply, from the site to the device's source.
    let mut reply = out6.clone();
    reply[8..24].copy_from_slice(&SITE.octets());
    reply[24..40].copy_from_slice(&n.source_of(DEV).octets());
    let mut out4 = Vec::new();
    assert_eq!(n.inbound(&reply, t, &mut out4), Some(DEV));
    let v = Ipv4View::new_checked(&out4, false).unwrap();
    assert_eq!((v.src(), v.dst()), (pool, DEV));
    assert!(v4_ok(&out4));
    assert_eq!(&out4[40..], b"hello");
    // From a site it has no mapping for: nothing.
    reply[8..24].copy_from_slice(&"2001:db8:99::1".parse::<Ipv6Addr>().unwrap().octets());
    assert_eq!(n.inbound(&reply, t, &mut out4), None);
}

#[test]
fn udp_without_a_checksum_gets_one() {
    let mut p = v4(PROTO_UDP, DEV, POOL, l4(PROTO_UDP, b"dns?"));
    put16(&mut p, 26, 0);
    let mut out = Vec::new();
    to_v6(&p, "fd00::1".parse().unwrap(), SITE, &mut out).unwrap();
    assert!(v6_ok(&out));
    assert_ne!(be16(&out, 46), 0);
}

#[test]
fn echo_and_errors_are_translated_with_what_they_quote() {
    let src6: Ipv6Addr = "fd00:1:2:4646::6460:2".parse().unwrap();
    let ping = v4(PROTO_ICMP, DEV, POOL, l4(PROTO_ICMP, b"ping"));
    let mut out = Vec::new();
    to_v6(&ping, src6, SITE, &mut out).unwrap();
    assert_eq!((out[6], out[40]), (PROTO_ICMPV6, 128));
    assert!(v6_ok(&out));
    let mut back = Vec::new();
    to_v4(&out, DEV, POOL, &mut back).unwrap();
    assert_eq!(back[20], 8);
    assert!(v4_ok(&back));
    assert_eq!(&back[20..], &ping[20..]);

    // A router says the site is unreachable, quoting the device's UDP datagram (as IPv6).
    let udp4 = v4(PROTO_UDP, DEV, POOL, l4(PROTO_UDP, b"q"));
    let mut udp6 = Vec::new();
    to_v6(&udp4, src6, SITE, &mut udp6).unwrap();
    let mut icmp = vec![1u8, 4, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&udp6);
    let router: Ipv6Addr = "2001:db8:ff::1".parse().unwrap();
    let c = finish(sum(pseudo_v6(&router, &src6, icmp.len() as u32, 58), &icmp));
    put16(&mut icmp, 2, c);
    let mut err6 = Vec::new();
    emit_ipv6(&mut err6, 0, icmp.len() as u16, 58, 60, router, src6);
    err6.extend_from_slice(&icmp);
    let mut err4 = Vec::new();
    to_v4(&err6, POOL, DEV, &mut err4).unwrap();
    assert_eq!((err4[20], err4[21]), (3, 3), "port unreachable");
    assert!(v4_ok(&err4));
    let quoted = Ipv4View::new_checked(&err4[28..], true).unwrap();
    assert_eq!((quoted.src(), quoted.dst()), (DEV, POOL));
    assert!(quoted.header_checksum_ok());
    // The quoted datagram's checksum is the device's own again.
    assert_eq!(&err4[28 + 20..], &udp4[20..]);

    // Other ICMP is not translated.
    let mut other = l4(PROTO_ICMP, b"");
    other[0] = 13;
    assert!(to_v6(&v4(PROTO_ICMP, DEV, POOL, other), src6, SITE, &mut out).is_err());
}

#[test]
fn fragments_stay_fragments() {
    let src6: Ipv6Addr = "fd00:1:2:4646::6460:2".parse().unwrap();
    let mut p = v4(PROTO_UDP, DEV, POOL, l4(PROTO_UDP, &[7u8; 64]));
    // The second fragment of a larger datagram: offset 9 (72 bytes), more to come.
    put16(&mut p, 6, 0x2000 | 9);
    put16(&mut p, 10, 0);
    let c = finish(sum(0, &p[..20]));
    put16(&mut p, 10, c);
    let mut out = Vec::new();
    to_v6(&p, src6, SITE, &mut out).unwrap();
    assert_eq!(out[6], 44, "a Fragment header");
    assert_eq!(out[40], PROTO_UDP);
    assert_eq!(be16(&out, 42), (9 << 3) | 1);
    assert_eq!(
        &out[48..],
        &p[20..],
        "a later fragment's bytes are not touched"
    );
    let mut back = Vec::new();
    to_v4(&out, DEV, POOL, &mut back).unwrap();
    assert_eq!(be16(&back, 6), 0x2000 | 9);
    assert_eq!(be16(&back, 4), 7, "the identification comes back");
    assert!(Ipv4View::new_checked(&back, false)
        .unwrap()
        .header_checksum_ok());
    assert_eq!(&back[20..], &p[20..]);
}

#[test]
fn bad_input_is_refused() {
    let mut out = Vec::new();
    let src6: Ipv6Addr = "fd00::1".parse().unwrap();
    assert!(to_v6(&[0x45, 0, 0], src6, SITE, &mut out).is_err());
    let mut p = v4(PROTO_UDP, DEV, POOL, l4(PROTO_UDP, b"x"));
    p[8] = 1;
    put16(&mut p, 10, 0);
    let c = finish(sum(0, &p[..20]));
    put16(&mut p, 10, c);
    assert_eq!(to_v6(&p, src6, SITE, &mut out), Err(Drop46::HopLimit));
    p[10] ^= 0xff;
    assert!(
        to_v6(&p, src6, SITE, &mut out).is_err(),
        "bad header checksum"
    );
    assert!(to_v4(&[0x60; 30], DEV, POOL, &mut out).is_err());
    // A packet to an unmapped pool address is answered with host unreachable.
    let p = v4(PROTO_TCP, DEV, POOL, l4(PROTO_TCP, b""));
    let u = unreachable(&p).unwrap();
    assert!(v4_ok(&u));
    assert_eq!((u[20], u[21]), (3, 1));
    assert_eq!(&u[12..16], &POOL.octets());
    assert!(unreachable(&u).is_none(), "never an error about an error");
}

proptest! {
    #[test]
    fn there_and_back_gives_the_same_packet(
        proto in prop::sample::select(vec![PROTO_TCP, PROTO_UDP, PROTO_ICMP]),
        data in prop::collection::vec(any::<u8>(), 0..1300),
        dev in any::<u32>(),
        pool in any::<u32>(),
        src6 in any::<u128>(),
        dst6 in any::<u128>(),
        tos in any::<u8>(),
    ) {
        let (dev, pool) = (Ipv4Addr::from(dev), Ipv4Addr::from(pool));
        let (src6, dst6) = (Ipv6Addr::from(src6), Ipv6Addr::from(dst6));
        let mut p = v4(proto, dev, pool, l4(proto, &data));
        p[1] = tos;
        put16(&mut p, 10, 0);
        let c = finish(sum(0, &p[..20]));
        put16(&mut p, 10, c);
        let mut six = Vec::new();
        to_v6(&p, src6, dst6, &mut six).unwrap();
        prop_assert!(v6_ok(&six));
        let mut back = Vec::new();
        to_v4(&six, dev, pool, &mut back).unwrap();
        prop_assert!(v4_ok(&back));
        prop_assert_eq!(&back[20..], &p[20..]);
        prop_assert_eq!(back[1], tos);
        prop_assert_eq!(back[8], 62);
    }

    #[test]
    fn random_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut out = Vec::new();
        let _ = to_v6(&b, SITE, SITE, &mut out);
        let _ = to_v4(&b, DEV, POOL, &mut out);
        let _ = unreachable(&b);
        let n = nat(4);
        let _ = n.inbound(&b, Instant::now(), &mut out);
    }
}

#[test]
fn fuzz_nat46_packets() {
    let src6: Ipv6Addr = "fd00:1:2:4646::6460:2".parse().unwrap();
    let tcp = v4(PROTO_TCP, DEV, POOL, l4(PROTO_TCP, b"GET / HTTP/1.1\r\n"));
    let ping = v4(PROTO_ICMP, DEV, POOL, l4(PROTO_ICMP, b"ping"));
    let mut six = Vec::new();
    to_v6(&tcp, src6, SITE, &mut six).unwrap();
    let mut err = vec![1u8, 4, 0, 0, 0, 0, 0, 0];
    err.extend_from_slice(&six);
    let c = finish(sum(pseudo_v6(&SITE, &src6, err.len() as u32, 58), &err));
    put16(&mut err, 2, c);
    let mut err6 = Vec::new();
    emit_ipv6(&mut err6, 0, err.len() as u16, 58, 60, SITE, src6);
    err6.extend_from_slice(&err);
    let seeds = vec![tcp, ping, six, err6];
    let n = nat(8);
    let pool = n.map(DEV, SITE, 30, Instant::now()).unwrap();
    crate::fuzz::run("nat46_packets", crate::fuzz::bytes(seeds, 1500), |b| {
        let mut out = Vec::new();
        if to_v6(b, src6, SITE, &mut out).is_ok() {
            // What comes out is a whole IPv6 packet.
            assert_eq!(usize::from(be16(&out, 4)) + 40, out.len());
        }
        if to_v4(b, pool, DEV, &mut out).is_ok() {
            assert_eq!(usize::from(be16(&out, 2)), out.len());
            assert!(Ipv4View::new_checked(&out, false)
                .unwrap()
                .header_checksum_ok());
        }
        let _ = n.inbound(b, Instant::now(), &mut out);
        if let Some(u) = unreachable(b) {
            assert!(v4_ok(&u));
        }
    });
}
