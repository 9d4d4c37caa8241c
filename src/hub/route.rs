//! Routing decisions inside the hub: a packet in, where it goes out. No I/O here.
//!
//! A packet decrypted from a device goes to another device directly (re-encrypted, never
//! through the kernel), to the TUN (the hub's own addresses and the internet), or to the NAT64
//! translator (the DNS64 prefix). A packet read from the TUN goes to the device that owns its
//! destination. A device may only send from its own overlay addresses (anti-spoofing).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;

use super::packet::{IpHeader, PacketError};
use crate::store::Overlay;

/// Why the hub dropped an inner packet; each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not a readable IP packet.
    Malformed(PacketError),
    /// The source is not one of the sending device's overlay addresses.
    Spoofed,
    /// An overlay address that no device owns, or a destination the hub never forwards
    /// (multicast, link-local, unspecified, loopback).
    NoRoute,
    /// NAT64 is not available in this build or refused the packet.
    Nat64Unavailable,
}

/// Where a packet goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<P> {
    /// Encrypt to this device.
    Peer(P),
    /// Write to the TUN: the hub's own services, or egress to the internet.
    Tun,
    /// Translate IPv6 → IPv4 (destination in the DNS64 prefix).
    Nat64,
    /// A discovery group (`hub::discovery`): to the other devices that may see it.
    Discovery,
    /// Drop and count.
    Drop(DropReason),
}

impl<P> Verdict<P> {
    /// The verdict without the peer handle (for logging).
    pub fn kind(&self) -> Verdict<()> {
        match self {
            Verdict::Peer(_) => Verdict::Peer(()),
            Verdict::Tun => Verdict::Tun,
            Verdict::Nat64 => Verdict::Nat64,
            Verdict::Discovery => Verdict::Discovery,
            Verdict::Drop(r) => Verdict::Drop(*r),
        }
    }
}

/// Who owns an overlay address.
pub trait OwnerLookup {
    /// A handle to the device (an `Arc` in the hub, an id in tests).
    type Peer;
    /// The device that owns `ip`, if any.
    fn owner_v4(&self, ip: Ipv4Addr) -> Option<Self::Peer>;
    /// The device that owns `ip`, if any.
    fn owner_v6(&self, ip: Ipv6Addr) -> Option<Self::Peer>;
}

/// The fixed facts routing needs.
#[derive(Debug, Clone, Copy)]
pub struct RouteCtx {
    pub overlay: Overlay,
    pub dns64_prefix: Option<Ipv6Net>,
}

/// The sending device's own overlay addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderAddrs {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

fn never_forwarded(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            a.is_multicast() || a.is_broadcast() || a.is_unspecified() || a.is_loopback()
        }
        IpAddr::V6(a) => {
            a.is_multicast()
                || a.is_unspecified()
                || a.is_loopback()
                || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Decides where a packet decrypted from device `from` goes.
pub fn route_from_device<T: OwnerLookup>(
    ctx: &RouteCtx,
    table: &T,
    from: SenderAddrs,
    pkt: &[u8],
) -> Verdict<T::Peer> {
    let h = match IpHeader::parse(pkt) {
        Ok(h) => h,
        Err(e) => return Verdict::Drop(DropReason::Malformed(e)),
    };
    let own = match h.src {
        IpAddr::V4(s) => s == from.v4,
        IpAddr::V6(s) => s == from.v6,
    };
    let discovery = super::discovery::classify(pkt).is_some();
    // IPv6 multicast leaves a device's tunnel from its link-local address: the hub puts the
    // device's own address in (`discovery::own_source`), so no device can pass as another.
    let link_local = matches!(h.src, IpAddr::V6(s) if (s.segments()[0] & 0xffc0) == 0xfe80);
    if discovery && (own || link_local) {
        return Verdict::Discovery;
    }
    if !own {
        return Verdict::Drop(DropReason::Spoofed);
    }
    if never_forwarded(h.dst) {
        return Verdict::Drop(DropReason::NoRoute);
    }
    match h.dst {
        IpAddr::V4(d) if ctx.overlay.v4.contains(&d) => {
            if d == ctx.overlay.hub_v4() {
                Verdict::Tun
            } else {
                table
                    .owner_v4(d)
                    .map_or(Verdict::Drop(DropReason::NoRoute), Verdict::Peer)
            }
        }
        IpAddr::V6(d) if ctx.overlay.v6.contains(&d) => {
            if d == ctx.overlay.hub_v6() {
                Verdict::Tun
            } else {
                table
                    .owner_v6(d)
                    .map_or(Verdict::Drop(DropReason::NoRoute), Verdict::Peer)
            }
        }
        IpAddr::V6(d) if ctx.dns64_prefix.is_some_and(|p| p.contains(&d)) => Verdict::Nat64,
        _ => Verdict::Tun,
    }
}

/// Decides where a packet read from the TUN goes: the device owning its destination.
pub fn route_from_tun<T: OwnerLookup>(table: &T, pkt: &[u8]) -> Verdict<T::Peer> {
    let h = match IpHeader::parse(pkt) {
        Ok(h) => h,
        Err(e) => return Verdict::Drop(DropReason::Malformed(e)),
    };
    let owner = match h.dst {
        IpAddr::V4(d) => table.owner_v4(d),
        IpAddr::V6(d) => table.owner_v6(d),
    };
    owner.map_or(Verdict::Drop(DropReason::NoRoute), Verdict::Peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::packet::tests::{ipv4, ipv6};
    use proptest::prelude::*;
    use std::collections::HashMap;

    struct Table(HashMap<IpAddr, u32>);
    impl OwnerLookup for Table {
        type Peer = u32;
        fn owner_v4(&self, ip: Ipv4Addr) -> Option<u32> {
            self.0.get(&IpAddr::V4(ip)).copied()
        }
        fn owner_v6(&self, ip: Ipv6Addr) -> Option<u32> {
            self.0.get(&IpAddr::V6(ip)).copied()
        }
    }

    fn ctx() -> RouteCtx {
        RouteCtx {
            overlay: Overlay {
                v4: "100.96.0.0/16".parse().unwrap(),
                v6: "fd00:1::/48".parse().unwrap(),
            },
            dns64_prefix: Some("64:ff9b::/96".parse().unwrap()),
        }
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn table() -> Table {
        let mut m = HashMap::new();
        m.insert(IpAddr::V4(v4("100.96.0.2")), 2);
        m.insert(IpAddr::V6(v6("fd00:1::2")), 2);
        m.insert(IpAddr::V4(v4("100.96.0.3")), 3);
        m.insert(IpAddr::V6(v6("fd00:1::3")), 3);
        Table(m)
    }

    const A: SenderAddrs = SenderAddrs {
        v4: Ipv4Addr::new(100, 96, 0, 2),
        v6: Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2),
    };

    #[test]
    fn device_to_device_goes_straight_to_the_peer() {
        let p = ipv4(A.v4, v4("100.96.0.3"), 10);
        assert_eq!(route_from_device(&ctx(), &table(), A, &p), Verdict::Peer(3));
        let p = ipv6(A.v6, v6("fd00:1::3"), 10);
        assert_eq!(route_from_device(&ctx(), &table(), A, &p), Verdict::Peer(3));
    }

    #[test]
    fn hub_addresses_and_internet_go_to_the_tun() {
        for dst in ["100.96.0.1", "93.184.216.34"] {
            let p = ipv4(A.v4, v4(dst), 0);
            assert_eq!(route_from_device(&ctx(), &table(), A, &p), Verdict::Tun);
        }
        let p = ipv6(A.v6, v6("fd00:1::1"), 0);
        assert_eq!(route_from_device(&ctx(), &table(), A, &p), Verdict::Tun);
        let p = ipv6(A.v6, v6("2001:db8::1"), 0);
        assert_eq!(route_from_device(&ctx(), &table(), A, &p), Verdict::Tun);
    }

    #[test]
    fn discovery_groups_from_the_own_address_are_discovery() {
        let mut p = ipv4(A.v4, v4("224.0.0.251"), 20);
        p[9] = 17;
        p[22..24].copy_from_slice(&5353u16.to_be_bytes());
        assert_eq!(
            route_from_device(&ctx(), &table(), A, &p),
            Verdict::Discovery
        );
        p[12..16].copy_from_slice(&[100, 96, 0, 3]);
        assert_eq!(
            route_from_device(&ctx(), &table(), A, &p),
            Verdict::Drop(DropReason::Spoofed)
        );
        // IPv6 mDNS comes from the device's link-local address: discovery (the hub puts the
        // device's own address in); anything else from there is spoofed.
        let mut p = ipv6(v6("fe80::1234"), v6("ff02::fb"), 20);
        p[6] = 17;
        p[42..44].copy_from_slice(&5353u16.to_be_bytes());
        assert_eq!(
            route_from_device(&ctx(), &table(), A, &p),
            Verdict::Discovery
        );
        let out = super::super::discovery::own_source(&p, A.v6).unwrap();
        assert_eq!(&out[8..24], &A.v6.octets());
        assert!(super::super::discovery::own_source(&out, A.v6).is_none());
        p[42..44].copy_from_slice(&53u16.to_be_bytes());
        assert_eq!(
            route_from_device(&ctx(), &table(), A, &p),
            Verdict::Drop(DropReason::Spoofed)
        );
    }

    #[test]
    fn dns64_prefix_goes_to_nat64() {
        let p = ipv6(A.v6, v6("64:ff9b::c000:250"), 0);
        assert_eq!(route_from_device(&ctx(), &table(), A, &p), Verdict::Nat64);
    }

    #[test]
    fn foreign_source_is_dropped_as_spoofed() {
        for src in ["100.96.0.3", "10.0.0.1"] {
            let p = ipv4(v4(src), v4("100.96.0.1"), 0);
            assert_eq!(
                route_from_device(&ctx(), &table(), A, &p),
                Verdict::Drop(DropReason::Spoofed)
            );
        }
        let p = ipv6(v6("fd00:1::3"), v6("fd00:1::1"), 0);
        assert_eq!(
            route_from_device(&ctx(), &table(), A, &p),
            Verdict::Drop(DropReason::Spoofed)
        );
    }

    #[test]
    fn unowned_overlay_and_multicast_have_no_route() {
        let p = ipv4(A.v4, v4("100.96.9.9"), 0);
        assert_eq!(
            route_from_device(&ctx(), &table(), A, &p),
            Verdict::Drop(DropReason::NoRoute)
        );
        let p = ipv6(A.v6, v6("ff02::1"), 0);
        assert_eq!(
            route_from_device(&ctx(), &table(), A, &p),
            Verdict::Drop(DropReason::NoRoute)
        );
    }

    #[test]
    fn tun_packets_go_to_the_owner_or_nowhere() {
        let p = ipv4(v4("1.1.1.1"), v4("100.96.0.3"), 0);
        assert_eq!(route_from_tun(&table(), &p), Verdict::Peer(3));
        let p = ipv4(v4("1.1.1.1"), v4("100.96.0.7"), 0);
        assert_eq!(
            route_from_tun(&table(), &p),
            Verdict::Drop(DropReason::NoRoute)
        );
    }

    proptest! {
        #[test]
        fn routing_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = route_from_device(&ctx(), &table(), A, &bytes);
            let _ = route_from_tun(&table(), &bytes);
            let _ = IpHeader::parse(&bytes);
        }

        #[test]
        fn spoofed_v4_sources_never_pass(src in any::<u32>(), dst in any::<u32>(), len in 0usize..64) {
            let src = Ipv4Addr::from(src);
            prop_assume!(src != A.v4);
            let p = ipv4(src, Ipv4Addr::from(dst), len);
            prop_assert_eq!(route_from_device(&ctx(), &table(), A, &p), Verdict::Drop(DropReason::Spoofed));
        }
    }
}
