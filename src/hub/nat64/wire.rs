//! Byte-level helpers for NAT64: checked header views, Internet checksums (RFC 1071, with
//! RFC 1624 incremental updates) and the RFC 7915 ICMP type mapping.
//!
//! Every accessor is bounds-checked when the view is made (`new_checked`), so nothing here can
//! panic on input from the network.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::Nat64Drop;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;

pub const IPV4_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;
/// RFC 8200 minimum link MTU; also the size cap of ICMPv6 errors (RFC 4443 §2.4 (c)).
pub const IPV6_MIN_MTU: usize = 1280;

/// Reads a big-endian u16 at `at`; callers have checked the length.
#[inline]
pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Ones' complement sum of `data` as 16-bit big-endian words (odd length padded with zero),
/// added to `acc`, not folded.
pub fn sum(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

/// Folds a sum to 16 bits and complements it: the checksum field value.
pub fn finish(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// RFC 1624 eqn. 3: the checksum after the words `old` of the covered data were replaced by
/// `new` (both even-length). Keeps an incoming checksum error an error after translation, as
/// RFC 7915 §4.5 / §5.5 want.
pub fn adjust(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut acc = u64::from(!checksum);
    for c in old.chunks_exact(2) {
        acc += u64::from(!u16::from_be_bytes([c[0], c[1]]));
    }
    acc = sum(acc, new);
    finish(acc)
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1).
pub fn pseudo_v6(src: &Ipv6Addr, dst: &Ipv6Addr, len: u32, next: u8) -> u64 {
    let mut acc = sum(0, &src.octets());
    acc = sum(acc, &dst.octets());
    acc += u64::from(len >> 16) + u64::from(len & 0xffff) + u64::from(next);
    acc
}

/// The IPv6 pseudo-header as bytes, for [`adjust`] when a checksum gains one (ICMPv4 → ICMPv6).
pub fn pseudo_v6_bytes(src: &Ipv6Addr, dst: &Ipv6Addr, len: u32, next: u8) -> [u8; 40] {
    let mut b = [0u8; 40];
    b[..16].copy_from_slice(&src.octets());
    b[16..32].copy_from_slice(&dst.octets());
    b[32..36].copy_from_slice(&len.to_be_bytes());
    b[39] = next;
    b
}

/// Sum of the IPv4 pseudo-header (RFC 793 §3.1); the translator never needs it whole (it
/// adjusts checksums), the tests verify with it.
#[cfg(test)]
pub fn pseudo_v4(src: &Ipv4Addr, dst: &Ipv4Addr, len: u16, proto: u8) -> u64 {
    let mut acc = sum(0, &src.octets());
    acc = sum(acc, &dst.octets());
    acc + u64::from(len) + u64::from(proto)
}

/// A checked view of an IPv4 packet: the header is complete and `total_len` fits the buffer.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4View<'a> {
    buf: &'a [u8],
    header_len: usize,
    total_len: usize,
}

impl<'a> Ipv4View<'a> {
    /// Checks version, header length and total length. `truncated_ok` accepts a packet shorter
    /// than its total length (the quoted packet inside an ICMP error).
    pub fn new_checked(buf: &'a [u8], truncated_ok: bool) -> Result<Self, Nat64Drop> {
        if buf.len() < IPV4_HEADER_LEN {
            return Err(Nat64Drop::Malformed("IPv4 header truncated"));
        }
        if buf[0] >> 4 != 4 {
            return Err(Nat64Drop::Malformed("not IPv4"));
        }
        let header_len = usize::from(buf[0] & 0x0f) * 4;
        let total_len = usize::from(be16(buf, 2));
        if header_len < IPV4_HEADER_LEN || buf.len() < header_len || total_len < header_len {
            return Err(Nat64Drop::Malformed("IPv4 header length"));
        }
        if !truncated_ok && total_len > buf.len() {
            return Err(Nat64Drop::Malformed("IPv4 total length beyond packet"));
        }
        Ok(Ipv4View {
            buf,
            header_len,
            total_len,
        })
    }
    pub fn header_len(&self) -> usize {
        self.header_len
    }
    /// Total length field (may exceed the bytes present for a quoted packet).
    pub fn total_len(&self) -> usize {
        self.total_len
    }
    pub fn tos(&self) -> u8 {
        self.buf[1]
    }
    /// True when this is a fragment (MF set or a non-zero offset).
    pub fn is_fragment(&self) -> bool {
        be16(self.buf, 6) & 0x3fff != 0
    }
    /// Fragment offset in 8-byte units (non-zero: no transport header in this fragment).
    pub fn frag_offset(&self) -> u16 {
        be16(self.buf, 6) & 0x1fff
    }
    pub fn ttl(&self) -> u8 {
        self.buf[8]
    }
    pub fn protocol(&self) -> u8 {
        self.buf[9]
    }
    pub fn header_checksum_ok(&self) -> bool {
        finish(sum(0, &self.buf[..self.header_len])) == 0
    }
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.buf[12], self.buf[13], self.buf[14], self.buf[15])
    }
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.buf[16], self.buf[17], self.buf[18], self.buf[19])
    }
    /// The payload bytes present (up to the total length).
    pub fn payload(&self) -> &'a [u8] {
        let end = self.total_len.min(self.buf.len());
        &self.buf[self.header_len..end]
    }
}

/// A checked view of an IPv6 packet with no extension headers handled: the fixed header is
/// complete and the payload length fits the buffer.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6View<'a> {
    buf: &'a [u8],
    payload_len: usize,
}

impl<'a> Ipv6View<'a> {
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, Nat64Drop> {
        Self::check(buf, false)
    }

    /// Like [`Ipv6View::new_checked`] but accepts a packet shorter than its payload length
    /// (the quoted packet inside an ICMPv6 error); [`Ipv6View::payload`] is then what is present.
    pub fn new_checked_quoted(buf: &'a [u8]) -> Result<Self, Nat64Drop> {
        Self::check(buf, true)
    }

    fn check(buf: &'a [u8], truncated_ok: bool) -> Result<Self, Nat64Drop> {
        if buf.len() < IPV6_HEADER_LEN {
            return Err(Nat64Drop::Malformed("IPv6 header truncated"));
        }
        if buf[0] >> 4 != 6 {
            return Err(Nat64Drop::Malformed("not IPv6"));
        }
        let payload_len = usize::from(be16(buf, 4));
        if payload_len == 0 {
            // Zero means a jumbogram (RFC 2675), never valid on a tunnel.
            return Err(Nat64Drop::Malformed("IPv6 payload length zero"));
        }
        if IPV6_HEADER_LEN + payload_len > buf.len() {
            if !truncated_ok {
                return Err(Nat64Drop::Malformed("IPv6 payload length beyond packet"));
            }
            return Ok(Ipv6View {
                buf,
                payload_len: buf.len() - IPV6_HEADER_LEN,
            });
        }
        Ok(Ipv6View { buf, payload_len })
    }

    /// The payload length field (the original length for a quoted packet).
    pub fn payload_len_field(&self) -> u16 {
        be16(self.buf, 4)
    }
    pub fn traffic_class(&self) -> u8 {
        (be16(self.buf, 0) >> 4) as u8
    }
    pub fn next_header(&self) -> u8 {
        self.buf[6]
    }
    pub fn hop_limit(&self) -> u8 {
        self.buf[7]
    }
    pub fn src(&self) -> Ipv6Addr {
        Ipv6Addr::from(octets16(&self.buf[8..24]))
    }
    pub fn dst(&self) -> Ipv6Addr {
        Ipv6Addr::from(octets16(&self.buf[24..40]))
    }
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[IPV6_HEADER_LEN..IPV6_HEADER_LEN + self.payload_len]
    }
}

fn octets16(b: &[u8]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    o
}

/// Appends an IPv4 header (no options) with a correct header checksum.
#[allow(clippy::too_many_arguments)]
pub fn emit_ipv4(
    out: &mut Vec<u8>,
    tos: u8,
    total_len: u16,
    ident: u16,
    dont_fragment: bool,
    ttl: u8,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) {
    let start = out.len();
    out.extend_from_slice(&[0x45, tos]);
    out.extend_from_slice(&total_len.to_be_bytes());
    out.extend_from_slice(&ident.to_be_bytes());
    out.extend_from_slice(&(if dont_fragment { 0x4000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&[ttl, proto, 0, 0]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    let c = finish(sum(0, &out[start..start + IPV4_HEADER_LEN]));
    put16(out, start + 10, c);
}

/// Appends an IPv6 header (flow label 0).
pub fn emit_ipv6(
    out: &mut Vec<u8>,
    traffic_class: u8,
    payload_len: u16,
    next: u8,
    hop_limit: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
) {
    let first = 0x6000_0000u32 | (u32::from(traffic_class) << 20);
    out.extend_from_slice(&first.to_be_bytes());
    out.extend_from_slice(&payload_len.to_be_bytes());
    out.extend_from_slice(&[next, hop_limit]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
}

/// What an ICMPv4 error becomes in ICMPv6 (RFC 7915 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Icmp6Error {
    /// Destination Unreachable (type 1) with this code.
    Unreachable(u8),
    /// Packet Too Big (type 2); the MTU is computed by the caller.
    PacketTooBig,
    /// Time Exceeded (type 3) with this code.
    TimeExceeded(u8),
    /// Parameter Problem (type 4) with this code and pointer.
    ParameterProblem(u8, u32),
}

/// Maps an ICMPv4 error type/code (and Parameter Problem pointer) to ICMPv6, or `None` when
/// RFC 7915 says to drop it.
pub fn map_icmp4_error(ty: u8, code: u8, pointer: u8) -> Option<Icmp6Error> {
    use Icmp6Error::*;
    match (ty, code) {
        // Destination Unreachable.
        (3, 0 | 1 | 5 | 6 | 7 | 8 | 11 | 12) => Some(Unreachable(0)),
        (3, 2) => Some(ParameterProblem(1, 6)),
        (3, 3) => Some(Unreachable(4)),
        (3, 4) => Some(PacketTooBig),
        (3, 9 | 10 | 13 | 15) => Some(Unreachable(1)),
        // Time Exceeded keeps its code.
        (11, c @ (0 | 1)) => Some(TimeExceeded(c)),
        // Parameter Problem: translate the pointer (RFC 7915 Figure 3).
        (12, 0 | 2) => {
            let p = match pointer {
                0 => 0,
                1 => 1,
                2 | 3 => 4,
                8 => 7,
                9 => 6,
                12..=15 => 8,
                16..=19 => 24,
                _ => return None,
            };
            Some(ParameterProblem(0, p))
        }
        _ => None,
    }
}

/// What an ICMPv6 error becomes in ICMPv4 (RFC 7915 §5.2): type, code, and the second word
/// (pointer for Parameter Problem; the MTU is filled in by the caller for Packet Too Big).
pub fn map_icmp6_error(ty: u8, code: u8, pointer: u32) -> Option<(u8, u8, u32)> {
    match (ty, code) {
        (1, 0 | 2 | 3) => Some((3, 1, 0)),
        (1, 1) => Some((3, 10, 0)),
        (1, 4) => Some((3, 3, 0)),
        (2, _) => Some((3, 4, 0)),
        (3, c @ (0 | 1)) => Some((11, c, 0)),
        (4, 0) => {
            let p = match pointer {
                0 => 0,
                1 => 1,
                4 | 5 => 2,
                6 => 9,
                7 => 8,
                8..=23 => 12,
                24..=39 => 16,
                _ => return None,
            };
            // The pointer is the first byte of the second word.
            Some((12, 0, p << 24))
        }
        (4, 1) => Some((3, 2, 0)),
        _ => None,
    }
}

/// RFC 1191 §7 plateau below `len`, for Fragmentation Needed messages with a zero MTU field.
pub fn plateau_below(len: usize) -> u16 {
    const PLATEAUS: [u16; 10] = [32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68];
    PLATEAUS
        .iter()
        .copied()
        .find(|&p| usize::from(p) < len)
        .unwrap_or(68)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2, checksum 220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(sum(0, &data)), !0xddf2);
    }

    #[test]
    fn incremental_adjust_equals_recomputing() {
        let mut data: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
        let before = finish(sum(0, &data));
        let old = data[10..14].to_vec();
        data[10..14].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let after = finish(sum(0, &data));
        let adjusted = adjust(before, &old, &data[10..14]);
        assert_eq!(adjusted, after);
    }

    #[test]
    fn parameter_problem_pointers_follow_rfc7915() {
        assert_eq!(
            map_icmp4_error(12, 0, 9),
            Some(Icmp6Error::ParameterProblem(0, 6))
        );
        assert_eq!(
            map_icmp4_error(12, 0, 16),
            Some(Icmp6Error::ParameterProblem(0, 24))
        );
        assert_eq!(map_icmp4_error(12, 0, 5), None);
        assert_eq!(map_icmp4_error(5, 0, 0), None, "redirects are dropped");
        assert_eq!(map_icmp4_error(3, 3, 0), Some(Icmp6Error::Unreachable(4)));
    }

    #[test]
    fn plateaus() {
        assert_eq!(plateau_below(1500), 1492);
        assert_eq!(plateau_below(1492), 1006);
        assert_eq!(plateau_below(10), 68);
    }
}
