//! Stateful NAT64 (RFC 6146) with RFC 7915 header translation: lets an IPv6-only device reach
//! IPv4-only hosts through the addresses the resolver's DNS64 synthesises (`64:ff9b::a.b.c.d`).
//!
//! Pure and I/O-free: packets in, packets out, `now` passed in. How the hub drives it:
//!
//! - **device → internet**: an IPv6 packet from a device whose destination is in the prefix
//!   ([`Nat64::handles_v6_dst`]) goes to [`Nat64::translate_6to4`]; the IPv4 packet it writes
//!   (source = the pool address and a pool port) is written to the TUN, where the kernel routes
//!   and masquerades it like any other egress.
//! - **internet → device**: an IPv4 packet read from the TUN whose destination is the pool
//!   address goes to [`Nat64::translate_4to6`]; it returns the device's IPv6 address, and the
//!   IPv6 packet it wrote is routed to that device.
//! - about once a second, [`Nat64::expire`] drops idle bindings (lookups also ignore expired
//!   sessions, so the cadence only bounds memory).
//!
//! The pool address must not be an address the host itself owns (the kernel drops packets from
//! the TUN whose source is local unless `accept_local` is set): use a spare address of the
//! overlay range, routed to the TUN.
//!
//! Hot path: translating a packet of an existing session does not allocate — `out` is cleared
//! and refilled, so reuse one buffer (capacity ≥ the largest packet + 20). Only a new binding
//! or session allocates (hash map and session list growth).
//!
//! Choices where the RFCs leave room: endpoint-independent mapping, address-and-port-dependent
//! filtering (a reply is accepted only from a remote the device has sent to); TCP bindings are
//! made by a SYN from the device only; port preservation when the device's port ≥ 1024 is free,
//! else a random free pool port. Not translated (dropped, with a reason): IPv6 extension
//! headers and fragments, IPv4 fragments, ICMP other than echo and the errors of RFC 7915
//! §4.2 / §5.2 (errors about TCP and UDP sessions go both ways; about echo only 4→6), destinations that RFC 6052 §3.1 excludes from the well-known
//! prefix (private, shared, loopback, link-local, multicast). Hop limit / TTL ≤ 1 is dropped
//! rather than answered with Time Exceeded.

mod bindings;
#[cfg(test)]
mod tests;
pub(crate) mod wire;

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::Ipv6Net;

use bindings::{Proto, Table};
use wire::*;

/// Why a packet was not translated. Cheap to make: counted by the caller, never logged with
/// addresses above debug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Nat64Drop {
    /// A header is truncated, inconsistent or not the expected IP version.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// An IPv6 packet whose destination is not in the NAT64 prefix.
    #[error("destination not in the NAT64 prefix")]
    NotInPrefix,
    /// An IPv4 packet whose destination is not the pool address.
    #[error("destination is not the NAT64 pool address")]
    NotForPool,
    /// The embedded IPv4 destination may not be reached through NAT64 (RFC 6052 §3.1).
    #[error("destination not allowed through NAT64")]
    ForbiddenDestination,
    /// A protocol, header or message type the translator does not handle.
    #[error("not translated: {0}")]
    Unsupported(&'static str),
    /// The hop limit or TTL would reach zero.
    #[error("hop limit exceeded")]
    HopLimitExceeded,
    /// An ICMP message or IPv4 header with a wrong checksum.
    #[error("bad checksum")]
    BadChecksum,
    /// No binding or session matches (an unsolicited packet, or one after expiry).
    #[error("no NAT64 binding")]
    NoBinding,
    /// No free pool port is left for the protocol.
    #[error("NAT64 pool exhausted")]
    PoolExhausted,
    /// The device has as many bindings, or the binding as many sessions, as allowed.
    #[error("NAT64 limit per device reached")]
    LimitReached,
}

/// Why a translator could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Nat64Error {
    /// Only /96 prefixes (RFC 6052 §2.2, the last 32 bits hold the IPv4 address) are handled.
    #[error("NAT64 prefix {0} is not a /96")]
    PrefixLength(Ipv6Net),
}

/// Idle timeouts (RFC 6146 §4 defaults, TCP established rounded to 2 h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub udp: Duration,
    pub tcp_established: Duration,
    /// Before the connection is established, and after RST or FIN in both directions.
    pub tcp_transitory: Duration,
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            udp: Duration::from_secs(5 * 60),
            tcp_established: Duration::from_secs(2 * 60 * 60),
            tcp_transitory: Duration::from_secs(4 * 60),
            icmp: Duration::from_secs(60),
        }
    }
}

/// Limits that keep one device from taking the whole pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bindings (source address + port/id) per device address, all protocols together.
    pub bindings_per_device: usize,
    /// Remote endpoints per binding.
    pub sessions_per_binding: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            bindings_per_device: 8192,
            sessions_per_binding: 1024,
        }
    }
}

/// The translator: prefix, pool address and the binding tables.
#[derive(Debug)]
pub struct Nat64 {
    prefix: Ipv6Net,
    pool: Ipv4Addr,
    timeouts: Timeouts,
    limits: Limits,
    tables: [Table; 3],
    per_device: HashMap<Ipv6Addr, usize>,
    /// xorshift state for port choice and IPv4 identification.
    rng: u64,
    ident: u16,
}

/// What [`Nat64::stats`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Nat64Stats {
    pub tcp_bindings: usize,
    pub udp_bindings: usize,
    pub icmp_bindings: usize,
}

impl Nat64 {
    /// A translator for `prefix` (a /96) using `pool` as the IPv4 source of translated packets,
    /// with default timeouts and limits.
    pub fn new(prefix: Ipv6Net, pool: Ipv4Addr) -> Result<Nat64, Nat64Error> {
        if prefix.prefix_len() != 96 {
            return Err(Nat64Error::PrefixLength(prefix));
        }
        Ok(Nat64 {
            prefix: prefix.trunc(),
            pool,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            tables: Default::default(),
            per_device: HashMap::new(),
            rng: rand::random::<u64>() | 1,
            ident: rand::random(),
        })
    }

    /// Replaces the idle timeouts.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Nat64 {
        self.timeouts = timeouts;
        self
    }

    /// Replaces the per-device limits.
    pub fn with_limits(mut self, limits: Limits) -> Nat64 {
        self.limits = limits;
        self
    }

    /// The NAT64 prefix.
    pub fn prefix(&self) -> Ipv6Net {
        self.prefix
    }

    /// The pool address.
    pub fn pool(&self) -> Ipv4Addr {
        self.pool
    }

    /// True when an IPv6 destination is in the NAT64 prefix (the packet belongs here).
    pub fn handles_v6_dst(&self, dst: &Ipv6Addr) -> bool {
        self.prefix.contains(dst)
    }

    /// True when an IPv4 destination is the pool address (the packet belongs here).
    pub fn handles_v4_dst(&self, dst: &Ipv4Addr) -> bool {
        *dst == self.pool
    }

    /// Bindings per protocol.
    pub fn stats(&self) -> Nat64Stats {
        Nat64Stats {
            tcp_bindings: self.tables[Proto::Tcp as usize].by_pool.len(),
            udp_bindings: self.tables[Proto::Udp as usize].by_pool.len(),
            icmp_bindings: self.tables[Proto::Icmp as usize].by_pool.len(),
        }
    }

    /// The IPv6 address representing `v4` (RFC 6052 /96 embedding).
    pub fn embed(&self, v4: Ipv4Addr) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.prefix.network()) | u128::from(u32::from(v4)))
    }

    fn extract(&self, v6: &Ipv6Addr) -> Ipv4Addr {
        Ipv4Addr::from(u128::from(*v6) as u32)
    }

    /// Destinations RFC 6052 §3.1 keeps out of the well-known prefix, plus those never
    /// meaningful as a unicast destination on any prefix.
    fn forbidden(&self, v4: Ipv4Addr) -> bool {
        let o = v4.octets();
        let always = v4.is_unspecified()
            || o[0] == 0
            || v4.is_loopback()
            || v4.is_link_local()
            || v4.is_multicast()
            || v4.is_broadcast()
            || o[0] >= 240
            || v4 == self.pool;
        let well_known = self.prefix.network() == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0);
        let non_global = v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64);
        always || (well_known && non_global)
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64: port choice only needs to be hard to guess from outside, not crypto.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// Bytes of the addresses and port a TCP/UDP checksum covers on the IPv6 side.
fn words_v6(src: Ipv6Addr, dst: Ipv6Addr, port: u16) -> [u8; 34] {
    let mut b = [0u8; 34];
    b[..16].copy_from_slice(&src.octets());
    b[16..32].copy_from_slice(&dst.octets());
    b[32..].copy_from_slice(&port.to_be_bytes());
    b
}

/// Bytes of the addresses and port a TCP/UDP checksum covers on the IPv4 side.
fn words_v4(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> [u8; 10] {
    let mut b = [0u8; 10];
    b[..4].copy_from_slice(&src.octets());
    b[4..8].copy_from_slice(&dst.octets());
    b[8..].copy_from_slice(&port.to_be_bytes());
    b
}

/// Checks a TCP header's length fields; returns the flags.
fn tcp_flags(seg: &[u8]) -> Result<u8, Nat64Drop> {
    if seg.len() < 20 {
        return Err(Nat64Drop::Malformed("TCP header truncated"));
    }
    let data_off = usize::from(seg[12] >> 4) * 4;
    if data_off < 20 || data_off > seg.len() {
        return Err(Nat64Drop::Malformed("TCP data offset"));
    }
    Ok(seg[13])
}

/// Checks a UDP header against the IP payload.
fn check_udp(dgram: &[u8]) -> Result<(), Nat64Drop> {
    if dgram.len() < 8 {
        return Err(Nat64Drop::Malformed("UDP header truncated"));
    }
    if usize::from(be16(dgram, 4)) != dgram.len() {
        return Err(Nat64Drop::Malformed("UDP length differs from IP payload"));
    }
    Ok(())
}

fn ports(seg: &[u8]) -> Result<(u16, u16), Nat64Drop> {
    let (s, d) = (be16(seg, 0), be16(seg, 2));
    if s == 0 || d == 0 {
        return Err(Nat64Drop::Malformed("port zero"));
    }
    Ok((s, d))
}

impl Nat64 {
    /// Translates an IPv6 packet from a device, addressed into the prefix, to IPv4 from the pool
    /// address (RFC 7915 §5, RFC 6146 §3.5). `out` is cleared and receives the IPv4 packet.
    ///
    /// Makes a binding for a TCP SYN, any UDP datagram or an ICMPv6 echo request; refreshes it
    /// for later packets. The hop limit is decremented into the TTL.
    pub fn translate_6to4(
        &mut self,
        pkt: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), Nat64Drop> {
        out.clear();
        let ip = Ipv6View::new_checked(pkt)?;
        let dst6 = ip.dst();
        if !self.prefix.contains(&dst6) {
            return Err(Nat64Drop::NotInPrefix);
        }
        let dst4 = self.extract(&dst6);
        if self.forbidden(dst4) {
            return Err(Nat64Drop::ForbiddenDestination);
        }
        let src6 = ip.src();
        if self.prefix.contains(&src6) || src6.is_multicast() || src6.is_unspecified() {
            return Err(Nat64Drop::Malformed("source address"));
        }
        if ip.hop_limit() <= 1 {
            return Err(Nat64Drop::HopLimitExceeded);
        }
        let ttl = ip.hop_limit() - 1;
        let payload = ip.payload();
        let total = u16::try_from(IPV4_HEADER_LEN + payload.len())
            .map_err(|_| Nat64Drop::Malformed("too large for IPv4"))?;
        // RFC 7915 §5.1: packets that fit the IPv6 minimum MTU may be fragmented on the IPv4
        // side (DF clear, fresh identification); larger ones carry DF for path MTU discovery.
        let df = IPV6_HEADER_LEN + payload.len() > IPV6_MIN_MTU;
        let tc = ip.traffic_class();
        match ip.next_header() {
            PROTO_TCP => {
                let flags = tcp_flags(payload)?;
                let (sport, dport) = ports(payload)?;
                let pool_port = self.outbound(
                    Proto::Tcp,
                    src6,
                    sport,
                    dst4,
                    dport,
                    flags & TCP_SYN != 0,
                    flags,
                    now,
                )?;
                let ident = self.ident(df);
                emit_ipv4(out, tc, total, ident, df, ttl, PROTO_TCP, self.pool, dst4);
                let t = out.len();
                out.extend_from_slice(payload);
                put16(out, t, pool_port);
                let ck = adjust(
                    be16(payload, 16),
                    &words_v6(src6, dst6, sport),
                    &words_v4(self.pool, dst4, pool_port),
                );
                put16(out, t + 16, ck);
            }
            PROTO_UDP => {
                check_udp(payload)?;
                let (sport, dport) = ports(payload)?;
                let old_ck = be16(payload, 6);
                if old_ck == 0 {
                    // RFC 8200 §8.1: a zero UDP checksum is invalid over IPv6.
                    return Err(Nat64Drop::BadChecksum);
                }
                let pool_port =
                    self.outbound(Proto::Udp, src6, sport, dst4, dport, true, 0, now)?;
                let ident = self.ident(df);
                emit_ipv4(out, tc, total, ident, df, ttl, PROTO_UDP, self.pool, dst4);
                let t = out.len();
                out.extend_from_slice(payload);
                put16(out, t, pool_port);
                let mut ck = adjust(
                    old_ck,
                    &words_v6(src6, dst6, sport),
                    &words_v4(self.pool, dst4, pool_port),
                );
                if ck == 0 {
                    ck = 0xffff;
                }
                put16(out, t + 6, ck);
            }
            PROTO_ICMPV6 => {
                if payload.len() < 8 {
                    return Err(Nat64Drop::Malformed("ICMPv6 header truncated"));
                }
                let len = payload.len() as u32;
                if finish(sum(pseudo_v6(&src6, &dst6, len, PROTO_ICMPV6), payload)) != 0 {
                    return Err(Nat64Drop::BadChecksum);
                }
                match payload[0] {
                    128 => {}
                    1..=4 => return self.icmp_error_6to4(&ip, payload, ttl, now, out),
                    _ => return Err(Nat64Drop::Unsupported("ICMPv6 type")),
                }
                let id = be16(payload, 4);
                let pool_id = self.outbound(Proto::Icmp, src6, id, dst4, 0, true, 0, now)?;
                let ident = self.ident(df);
                emit_ipv4(out, tc, total, ident, df, ttl, PROTO_ICMP, self.pool, dst4);
                let t = out.len();
                out.extend_from_slice(payload);
                out[t] = 8; // Echo Request
                out[t + 1] = 0;
                put16(out, t + 2, 0);
                put16(out, t + 4, pool_id);
                let ck = finish(sum(0, &out[t..]));
                put16(out, t + 2, ck);
            }
            0 | 43 | 44 | 60 => return Err(Nat64Drop::Unsupported("IPv6 extension header")),
            _ => return Err(Nat64Drop::Unsupported("protocol")),
        }
        Ok(())
    }

    fn ident(&mut self, df: bool) -> u16 {
        if df {
            0
        } else {
            self.ident = self.ident.wrapping_add(1);
            self.ident
        }
    }

    /// Translates an IPv4 packet addressed to the pool address back to IPv6 for the device that
    /// owns the binding (RFC 7915 §4, RFC 6146 §3.5), including ICMPv4 errors about translated
    /// packets, whose quoted packet is translated too. `out` is cleared and receives the IPv6
    /// packet; returns the device's address (its destination).
    pub fn translate_4to6(
        &mut self,
        pkt: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<Ipv6Addr, Nat64Drop> {
        out.clear();
        let ip = Ipv4View::new_checked(pkt, false)?;
        if !ip.header_checksum_ok() {
            return Err(Nat64Drop::BadChecksum);
        }
        if ip.dst() != self.pool {
            return Err(Nat64Drop::NotForPool);
        }
        if ip.is_fragment() {
            return Err(Nat64Drop::Unsupported("IPv4 fragment"));
        }
        if ip.ttl() <= 1 {
            return Err(Nat64Drop::HopLimitExceeded);
        }
        let hop = ip.ttl() - 1;
        let src4 = ip.src();
        let src6 = self.embed(src4);
        let payload = ip.payload();
        let plen = payload.len() as u16;
        match ip.protocol() {
            PROTO_TCP => {
                let flags = tcp_flags(payload)?;
                let (sport, dport) = ports(payload)?;
                let (dev, dev_port) =
                    self.inbound(Proto::Tcp, dport, src4, sport, flags, true, now)?;
                emit_ipv6(out, ip.tos(), plen, PROTO_TCP, hop, src6, dev);
                let t = out.len();
                out.extend_from_slice(payload);
                put16(out, t + 2, dev_port);
                let ck = adjust(
                    be16(payload, 16),
                    &words_v4(src4, self.pool, dport),
                    &words_v6(src6, dev, dev_port),
                );
                put16(out, t + 16, ck);
                Ok(dev)
            }
            PROTO_UDP => {
                check_udp(payload)?;
                let (sport, dport) = ports(payload)?;
                let (dev, dev_port) = self.inbound(Proto::Udp, dport, src4, sport, 0, true, now)?;
                emit_ipv6(out, ip.tos(), plen, PROTO_UDP, hop, src6, dev);
                let t = out.len();
                out.extend_from_slice(payload);
                put16(out, t + 2, dev_port);
                let old_ck = be16(payload, 6);
                let mut ck = if old_ck == 0 {
                    // IPv4 allows "no checksum"; IPv6 does not (RFC 7915 §4.5): compute it.
                    put16(out, t + 6, 0);
                    finish(sum(
                        pseudo_v6(&src6, &dev, u32::from(plen), PROTO_UDP),
                        &out[t..],
                    ))
                } else {
                    adjust(
                        old_ck,
                        &words_v4(src4, self.pool, dport),
                        &words_v6(src6, dev, dev_port),
                    )
                };
                if ck == 0 {
                    ck = 0xffff;
                }
                put16(out, t + 6, ck);
                Ok(dev)
            }
            PROTO_ICMP => {
                if payload.len() < 8 {
                    return Err(Nat64Drop::Malformed("ICMP header truncated"));
                }
                if finish(sum(0, payload)) != 0 {
                    return Err(Nat64Drop::BadChecksum);
                }
                match payload[0] {
                    0 => {
                        let pool_id = be16(payload, 4);
                        let (dev, dev_id) =
                            self.inbound(Proto::Icmp, pool_id, src4, 0, 0, true, now)?;
                        emit_ipv6(out, ip.tos(), plen, PROTO_ICMPV6, hop, src6, dev);
                        let t = out.len();
                        out.extend_from_slice(payload);
                        out[t] = 129; // Echo Reply
                        out[t + 1] = 0;
                        put16(out, t + 2, 0);
                        put16(out, t + 4, dev_id);
                        let ck = finish(sum(
                            pseudo_v6(&src6, &dev, u32::from(plen), PROTO_ICMPV6),
                            &out[t..],
                        ));
                        put16(out, t + 2, ck);
                        Ok(dev)
                    }
                    3 | 11 | 12 => self.icmp_error_4to6(&ip, payload, hop, now, out),
                    _ => Err(Nat64Drop::Unsupported("ICMPv4 type")),
                }
            }
            _ => Err(Nat64Drop::Unsupported("protocol")),
        }
    }

    /// An ICMPv4 error about a packet we translated becomes an ICMPv6 error to the device, its
    /// quoted packet translated back to the device's view (RFC 7915 §4.2-4.3).
    fn icmp_error_4to6(
        &mut self,
        outer: &Ipv4View<'_>,
        icmp: &[u8],
        hop: u8,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<Ipv6Addr, Nat64Drop> {
        let mapped = map_icmp4_error(icmp[0], icmp[1], icmp[4])
            .ok_or(Nat64Drop::Unsupported("ICMPv4 error type or code"))?;
        let inner = Ipv4View::new_checked(&icmp[8..], true)?;
        if inner.src() != self.pool {
            return Err(Nat64Drop::NoBinding);
        }
        if inner.frag_offset() != 0 {
            return Err(Nat64Drop::Unsupported(
                "ICMPv4 error about a non-first fragment",
            ));
        }
        let quoted = inner.payload();
        if quoted.len() < 8 {
            return Err(Nat64Drop::Malformed("ICMPv4 error quotes too little"));
        }
        let remote = inner.dst();
        let (proto, pool_port, remote_port) = match inner.protocol() {
            PROTO_TCP => (Proto::Tcp, be16(quoted, 0), be16(quoted, 2)),
            PROTO_UDP => (Proto::Udp, be16(quoted, 0), be16(quoted, 2)),
            PROTO_ICMP if quoted[0] == 8 => (Proto::Icmp, be16(quoted, 4), 0),
            // Never an error about an error (RFC 1122 §3.2.2).
            _ => return Err(Nat64Drop::Unsupported("ICMPv4 error about this protocol")),
        };
        let (dev, dev_port) = self.inbound(proto, pool_port, remote, remote_port, 0, false, now)?;

        let src6 = self.embed(outer.src());
        let remote6 = self.embed(remote);
        // Upper-layer length of the original packet, even when only part of it is quoted.
        let inner_len = inner.total_len() - inner.header_len();
        let keep = quoted.len().min(IPV6_MIN_MTU - 2 * IPV6_HEADER_LEN - 8);
        let icmp6_len = 8 + IPV6_HEADER_LEN + keep;
        let (ty, code, rest) = match mapped {
            Icmp6Error::Unreachable(c) => (1u8, c, 0u32),
            Icmp6Error::PacketTooBig => {
                let mtu4 = match be16(icmp, 6) {
                    0 => plateau_below(inner.total_len()),
                    m => m,
                };
                // RFC 7915 §4.2: the IPv6 packet is 20 bytes larger; IPv6 never goes below 1280.
                (2, 0, (u32::from(mtu4) + 20).max(IPV6_MIN_MTU as u32))
            }
            Icmp6Error::TimeExceeded(c) => (3, c, 0),
            Icmp6Error::ParameterProblem(c, p) => (4, c, p),
        };
        emit_ipv6(
            out,
            outer.tos(),
            icmp6_len as u16,
            PROTO_ICMPV6,
            hop,
            src6,
            dev,
        );
        let ic = out.len();
        out.extend_from_slice(&[ty, code, 0, 0]);
        out.extend_from_slice(&rest.to_be_bytes());
        let inner_next = match proto {
            Proto::Icmp => PROTO_ICMPV6,
            _ => inner.protocol(),
        };
        emit_ipv6(
            out,
            inner.tos(),
            inner_len as u16,
            inner_next,
            inner.ttl(),
            dev,
            remote6,
        );
        let t = out.len();
        out.extend_from_slice(&quoted[..keep]);
        match proto {
            Proto::Tcp | Proto::Udp => {
                put16(out, t, dev_port);
                let at = if proto == Proto::Tcp { 16 } else { 6 };
                if keep >= at + 2 {
                    let ck = be16(out, t + at);
                    if !(proto == Proto::Udp && ck == 0) {
                        let mut new = adjust(
                            ck,
                            &words_v4(self.pool, remote, pool_port),
                            &words_v6(dev, remote6, dev_port),
                        );
                        if proto == Proto::Udp && new == 0 {
                            new = 0xffff;
                        }
                        put16(out, t + at, new);
                    }
                }
            }
            Proto::Icmp => {
                let code = out[t + 1];
                let ck = be16(out, t + 2);
                out[t] = 128;
                put16(out, t + 4, dev_port);
                let old = [8, code, (pool_port >> 8) as u8, pool_port as u8];
                let new = [128, code, (dev_port >> 8) as u8, dev_port as u8];
                let ck = adjust(ck, &old, &new);
                let pseudo = pseudo_v6_bytes(&dev, &remote6, inner_len as u32, PROTO_ICMPV6);
                put16(out, t + 2, adjust(ck, &[], &pseudo));
            }
        }
        let ck = finish(sum(
            pseudo_v6(&src6, &dev, icmp6_len as u32, PROTO_ICMPV6),
            &out[ic..],
        ));
        put16(out, ic + 2, ck);
        Ok(dev)
    }
}

/// ICMPv4 errors are at most 576 bytes (RFC 1812 §4.3.2.3).
const ICMPV4_ERROR_MAX: usize = 576;

impl Nat64 {
    /// An ICMPv6 error from a device about a packet we translated to it becomes an ICMPv4 error
    /// from the pool address to the remote host, its quoted packet translated back to the
    /// remote's view (RFC 7915 §5.2-5.3).
    fn icmp_error_6to4(
        &mut self,
        outer: &Ipv6View<'_>,
        icmp: &[u8],
        ttl: u8,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), Nat64Drop> {
        out.clear();
        let word = u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]);
        let (ty, code, mut rest) = map_icmp6_error(icmp[0], icmp[1], word)
            .ok_or(Nat64Drop::Unsupported("ICMPv6 error type or code"))?;
        if icmp[0] == 2 {
            // Packet Too Big: the IPv4 packet is 20 bytes smaller (RFC 7915 §5.2).
            let mtu4 = word.saturating_sub(20).clamp(68, 65535);
            rest = mtu4;
        }
        let inner = Ipv6View::new_checked_quoted(&icmp[8..])?;
        // A device may only report about packets it received.
        if inner.dst() != outer.src() || !self.prefix.contains(&inner.src()) {
            return Err(Nat64Drop::NoBinding);
        }
        let quoted = inner.payload();
        if quoted.len() < 8 {
            return Err(Nat64Drop::Malformed("ICMPv6 error quotes too little"));
        }
        let (proto, ck_at) = match inner.next_header() {
            PROTO_TCP => (Proto::Tcp, 16),
            PROTO_UDP => (Proto::Udp, 6),
            _ => return Err(Nat64Drop::Unsupported("ICMPv6 error about this protocol")),
        };
        let dev = outer.src();
        let remote6 = inner.src();
        let remote = self.extract(&remote6);
        let (remote_port, dev_port) = (be16(quoted, 0), be16(quoted, 2));
        let pool_port = self.lookup_v6(proto, dev, dev_port, remote, remote_port, now)?;

        let keep = quoted.len().min(ICMPV4_ERROR_MAX - 2 * IPV4_HEADER_LEN - 8);
        let total = (2 * IPV4_HEADER_LEN + 8 + keep) as u16;
        let ident = self.ident(false);
        emit_ipv4(
            out,
            outer.traffic_class(),
            total,
            ident,
            false,
            ttl,
            PROTO_ICMP,
            self.pool,
            remote,
        );
        let ic = out.len();
        out.extend_from_slice(&[ty, code, 0, 0]);
        out.extend_from_slice(&rest.to_be_bytes());
        let inner_total = u16::try_from(IPV4_HEADER_LEN + usize::from(inner.payload_len_field()))
            .map_err(|_| Nat64Drop::Malformed("quoted packet too large for IPv4"))?;
        emit_ipv4(
            out,
            inner.traffic_class(),
            inner_total,
            0,
            false,
            inner.hop_limit(),
            inner.next_header(),
            remote,
            self.pool,
        );
        let t = out.len();
        out.extend_from_slice(&quoted[..keep]);
        put16(out, t + 2, pool_port);
        if keep >= ck_at + 2 {
            let ck = be16(out, t + ck_at);
            let mut new = adjust(
                ck,
                &words_v6(remote6, dev, dev_port),
                &words_v4(remote, self.pool, pool_port),
            );
            if proto == Proto::Udp && new == 0 {
                new = 0xffff;
            }
            put16(out, t + ck_at, new);
        }
        let ck = finish(sum(0, &out[ic..]));
        put16(out, ic + 2, ck);
        Ok(())
    }
}
