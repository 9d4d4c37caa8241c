//! RFC 7915 header translation for NAT46, with the addresses given: an IPv4 packet from a
//! device becomes IPv6 ([`to_v6`]), an IPv6 reply becomes IPv4 ([`to_v4`]). Stateless; the
//! mapping of addresses is [`super::Nat46`]'s.
//!
//! TCP and UDP checksums are adjusted for the new pseudo-header (RFC 1624), so fragments keep
//! theirs; an IPv4 UDP datagram without a checksum gets one (a fragment of one is dropped, as
//! RFC 7915 §4.5 allows). Fragments travel as fragments (an IPv6 Fragment header either way,
//! RFC 7915 §4.1 and §5.1.1). ICMP echo and the errors of RFC 7915 §4.2 / §5.2 are translated,
//! the packet an error quotes too; other ICMP and IPv6 extension headers are dropped. The hop
//! limit / TTL goes down by one (≤ 1: dropped).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::hub::nat64::wire::*;

/// Why a packet was not translated (counted, never logged with addresses above debug).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Drop46 {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("not translated: {0}")]
    Unsupported(&'static str),
    #[error("hop limit exceeded")]
    HopLimit,
}

impl From<crate::hub::nat64::Nat64Drop> for Drop46 {
    fn from(_: crate::hub::nat64::Nat64Drop) -> Self {
        Drop46::Malformed("IP header")
    }
}

const FRAG_HEADER: u8 = 44;

/// The transport checksum's offset in a segment of `proto`, when it has one to adjust.
fn checksum_at(proto: u8) -> Option<usize> {
    match proto {
        PROTO_TCP => Some(16),
        PROTO_UDP => Some(6),
        _ => None,
    }
}

/// Adjusts the TCP/UDP checksum of `seg` (if present in full) for new pseudo-header addresses.
fn adjust_l4(seg: &mut [u8], proto: u8, old: &[u8], new: &[u8]) {
    if let Some(at) = checksum_at(proto).filter(|at| seg.len() >= at + 2) {
        let c = be16(seg, at);
        if proto == PROTO_UDP && c == 0 {
            return;
        }
        let mut n = adjust(c, old, new);
        if proto == PROTO_UDP && n == 0 {
            n = 0xffff;
        }
        put16(seg, at, n);
    }
}

fn addrs4(src: Ipv4Addr, dst: Ipv4Addr) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&src.octets());
    b[4..].copy_from_slice(&dst.octets());
    b
}

fn addrs6(src: Ipv6Addr, dst: Ipv6Addr) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..16].copy_from_slice(&src.octets());
    b[16..].copy_from_slice(&dst.octets());
    b
}

/// Translates IPv4 `pkt` to IPv6 from `src` to `dst` into `out` (cleared first).
pub fn to_v6(pkt: &[u8], src: Ipv6Addr, dst: Ipv6Addr, out: &mut Vec<u8>) -> Result<(), Drop46> {
    let v4 = Ipv4View::new_checked(pkt, false)?;
    if !v4.header_checksum_ok() {
        return Err(Drop46::Malformed("IPv4 header checksum"));
    }
    if v4.ttl() <= 1 {
        return Err(Drop46::HopLimit);
    }
    let proto = v4.protocol();
    let payload = v4.payload();
    let fragment = v4.is_fragment();
    let first = v4.frag_offset() == 0;
    let next = if proto == PROTO_ICMP {
        PROTO_ICMPV6
    } else {
        proto
    };
    let body = if proto == PROTO_ICMP {
        if fragment {
            return Err(Drop46::Unsupported("fragmented ICMP"));
        }
        Some(icmp_to_v6(payload, src, dst)?)
    } else {
        None
    };
    let l4 = body.as_deref().unwrap_or(payload);
    out.clear();
    let frag_len = if fragment { 8 } else { 0 };
    let len = u16::try_from(l4.len() + frag_len).map_err(|_| Drop46::Malformed("too long"))?;
    let first_next = if fragment { FRAG_HEADER } else { next };
    emit_ipv6(out, v4.tos(), len, first_next, v4.ttl() - 1, src, dst);
    if fragment {
        let more = be16(pkt, 6) & 0x2000 != 0;
        out.extend_from_slice(&[next, 0]);
        out.extend_from_slice(&((v4.frag_offset() << 3) | u16::from(more)).to_be_bytes());
        out.extend_from_slice(&u32::from(be16(pkt, 4)).to_be_bytes());
    }
    let at = out.len();
    out.extend_from_slice(l4);
    if body.is_none() && first {
        let seg = &mut out[at..];
        if proto == PROTO_UDP && seg.len() >= 8 && be16(seg, 6) == 0 {
            if fragment {
                return Err(Drop46::Unsupported("fragmented UDP without checksum"));
            }
            let c = finish(sum(pseudo_v6(&src, &dst, seg.len() as u32, PROTO_UDP), seg));
            put16(seg, 6, if c == 0 { 0xffff } else { c });
        } else {
            adjust_l4(seg, proto, &addrs4(v4.src(), v4.dst()), &addrs6(src, dst));
        }
    }
    Ok(())
}

/// Translates IPv6 `pkt` to IPv4 from `src` to `dst` into `out` (cleared first).
pub fn to_v4(pkt: &[u8], src: Ipv4Addr, dst: Ipv4Addr, out: &mut Vec<u8>) -> Result<(), Drop46> {
    let v6 = Ipv6View::new_checked(pkt)?;
    if v6.hop_limit() <= 1 {
        return Err(Drop46::HopLimit);
    }
    let mut next = v6.next_header();
    let mut payload = v6.payload();
    // (offset in 8-byte units, more fragments, identification)
    let mut frag = None;
    if next == FRAG_HEADER {
        if payload.len() < 8 {
            return Err(Drop46::Malformed("fragment header truncated"));
        }
        let om = be16(payload, 2);
        let id = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        frag = Some((om >> 3, om & 1 == 1, id));
        next = payload[0];
        payload = &payload[8..];
    }
    if matches!(
        next,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    ) {
        return Err(Drop46::Unsupported("IPv6 extension header"));
    }
    let proto = if next == PROTO_ICMPV6 {
        PROTO_ICMP
    } else {
        next
    };
    let first = frag.is_none_or(|f| f.0 == 0);
    let body = if next == PROTO_ICMPV6 {
        if frag.is_some() {
            return Err(Drop46::Unsupported("fragmented ICMPv6"));
        }
        Some(icmp_to_v4(payload, (v6.src(), v6.dst()), src, dst)?)
    } else {
        None
    };
    let l4 = body.as_deref().unwrap_or(payload);
    let total = u16::try_from(IPV4_HEADER_LEN + l4.len())
        .map_err(|_| Drop46::Malformed("too long for IPv4"))?;
    out.clear();
    let ident = frag.map_or(0, |f| f.2 as u16);
    emit_ipv4(
        out,
        v6.traffic_class(),
        total,
        ident,
        frag.is_none(),
        v6.hop_limit() - 1,
        proto,
        src,
        dst,
    );
    if let Some((offset, more, _)) = frag {
        put16(out, 6, (u16::from(more) << 13) | (offset & 0x1fff));
        put16(out, 10, 0);
        let c = finish(sum(0, &out[..IPV4_HEADER_LEN]));
        put16(out, 10, c);
    }
    out.extend_from_slice(l4);
    if body.is_none() && first {
        let seg = &mut out[IPV4_HEADER_LEN..];
        adjust_l4(seg, proto, &addrs6(v6.src(), v6.dst()), &addrs4(src, dst));
    }
    Ok(())
}

/// An ICMPv4 message (from the device) as ICMPv6 from `src` to `dst`, checksum made.
fn icmp_to_v6(icmp: &[u8], src: Ipv6Addr, dst: Ipv6Addr) -> Result<Vec<u8>, Drop46> {
    if icmp.len() < 8 {
        return Err(Drop46::Malformed("ICMP header truncated"));
    }
    // The new checksum is made from scratch: a broken message must not come out whole.
    if finish(sum(0, icmp)) != 0 {
        return Err(Drop46::Malformed("ICMP checksum"));
    }
    let mut out = Vec::with_capacity(icmp.len() + 20);
    match icmp[0] {
        8 | 0 => {
            out.extend_from_slice(&[if icmp[0] == 8 { 128 } else { 129 }, 0, 0, 0]);
            out.extend_from_slice(&icmp[4..]);
        }
        3 | 11 | 12 => {
            let e = map_icmp4_error(icmp[0], icmp[1], icmp[4])
                .ok_or(Drop46::Unsupported("ICMP error type"))?;
            let inner = Ipv4View::new_checked(&icmp[8..], true)?;
            let (ty, code, word) = match e {
                Icmp6Error::Unreachable(c) => (1, c, 0u32),
                Icmp6Error::PacketTooBig => {
                    let mtu = match be16(icmp, 6) {
                        0 => plateau_below(inner.total_len()),
                        m => m,
                    };
                    (2, 0, (u32::from(mtu) + 20).max(IPV6_MIN_MTU as u32))
                }
                Icmp6Error::TimeExceeded(c) => (3, c, 0),
                Icmp6Error::ParameterProblem(c, p) => (4, c, p),
            };
            out.extend_from_slice(&[ty, code, 0, 0]);
            out.extend_from_slice(&word.to_be_bytes());
            // The quoted packet went from the remote (dst) to the device (src).
            quoted_to_v6(&inner, &icmp[8..], dst, src, &mut out);
            out.truncate(IPV6_MIN_MTU - IPV6_HEADER_LEN);
        }
        _ => return Err(Drop46::Unsupported("ICMP type")),
    }
    let c = finish(sum(
        pseudo_v6(&src, &dst, out.len() as u32, PROTO_ICMPV6),
        &out,
    ));
    put16(&mut out, 2, c);
    Ok(out)
}

/// An ICMPv6 message (from the remote, with the IPv6 addresses `from`) as ICMPv4 from `src` to
/// `dst`, checksum made.
fn icmp_to_v4(
    icmp: &[u8],
    from: (Ipv6Addr, Ipv6Addr),
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Result<Vec<u8>, Drop46> {
    if icmp.len() < 8 {
        return Err(Drop46::Malformed("ICMPv6 header truncated"));
    }
    if finish(sum(
        pseudo_v6(&from.0, &from.1, icmp.len() as u32, PROTO_ICMPV6),
        icmp,
    )) != 0
    {
        return Err(Drop46::Malformed("ICMPv6 checksum"));
    }
    let mut out = Vec::with_capacity(icmp.len());
    match icmp[0] {
        128 | 129 => {
            out.extend_from_slice(&[if icmp[0] == 128 { 8 } else { 0 }, 0, 0, 0]);
            out.extend_from_slice(&icmp[4..]);
        }
        1..=4 => {
            let word = u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]);
            let (ty, code, mut second) = map_icmp6_error(icmp[0], icmp[1], word)
                .ok_or(Drop46::Unsupported("ICMPv6 error type"))?;
            if icmp[0] == 2 {
                second = word.saturating_sub(20).clamp(68, 0xffff);
            }
            out.extend_from_slice(&[ty, code, 0, 0]);
            out.extend_from_slice(&second.to_be_bytes());
            let inner = Ipv6View::new_checked_quoted(&icmp[8..])?;
            // The quoted packet went from the device (dst) to the remote (src).
            quoted_to_v4(&inner, dst, src, &mut out)?;
            out.truncate(576 - IPV4_HEADER_LEN);
        }
        _ => return Err(Drop46::Unsupported("ICMPv6 type")),
    }
    let c = finish(sum(0, &out));
    put16(&mut out, 2, c);
    Ok(out)
}

/// The IPv4 packet an ICMP error quotes, as IPv6 from `src` to `dst` (appended to `out`).
fn quoted_to_v6(inner: &Ipv4View<'_>, raw: &[u8], src: Ipv6Addr, dst: Ipv6Addr, out: &mut Vec<u8>) {
    let proto = inner.protocol();
    let next = if proto == PROTO_ICMP {
        PROTO_ICMPV6
    } else {
        proto
    };
    let len = inner.total_len().saturating_sub(inner.header_len()) as u16;
    emit_ipv6(out, inner.tos(), len, next, inner.ttl(), src, dst);
    let at = out.len();
    out.extend_from_slice(inner.payload());
    let seg = &mut out[at..];
    if proto == PROTO_ICMP && !seg.is_empty() {
        seg[0] = match seg[0] {
            8 => 128,
            0 => 129,
            t => t,
        };
    } else if inner.frag_offset() == 0 {
        let old = addrs4(
            Ipv4Addr::from(<[u8; 4]>::try_from(&raw[12..16]).unwrap_or_default()),
            Ipv4Addr::from(<[u8; 4]>::try_from(&raw[16..20]).unwrap_or_default()),
        );
        adjust_l4(seg, proto, &old, &addrs6(src, dst));
    }
}

/// The IPv6 packet an ICMPv6 error quotes, as IPv4 from `src` to `dst` (appended to `out`).
fn quoted_to_v4(
    inner: &Ipv6View<'_>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    out: &mut Vec<u8>,
) -> Result<(), Drop46> {
    let next = inner.next_header();
    if matches!(next, 0 | 43 | 44 | 50 | 51 | 60) {
        return Err(Drop46::Unsupported("quoted IPv6 extension header"));
    }
    let proto = if next == PROTO_ICMPV6 {
        PROTO_ICMP
    } else {
        next
    };
    let total = (IPV4_HEADER_LEN + usize::from(inner.payload_len_field())) as u16;
    emit_ipv4(
        out,
        inner.traffic_class(),
        total,
        0,
        true,
        inner.hop_limit(),
        proto,
        src,
        dst,
    );
    let at = out.len();
    out.extend_from_slice(inner.payload());
    let seg = &mut out[at..];
    if proto == PROTO_ICMP && !seg.is_empty() {
        seg[0] = match seg[0] {
            128 => 8,
            129 => 0,
            t => t,
        };
    } else {
        adjust_l4(
            seg,
            proto,
            &addrs6(inner.src(), inner.dst()),
            &addrs4(src, dst),
        );
    }
    Ok(())
}
