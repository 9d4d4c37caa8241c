//! A checked view over an inner IP packet: version, source and destination, nothing more.
//!
//! The hub routes on addresses only, so this is all it parses. [`IpHeader::parse`] never panics:
//! anything short, of an unknown version, or whose length field disagrees with the buffer is an
//! error, and the caller drops the packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an inner packet could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than the fixed header of its version.
    #[error("packet shorter than its IP header")]
    Truncated,
    /// The version nibble is neither 4 nor 6.
    #[error("not an IPv4 or IPv6 packet")]
    BadVersion,
    /// The header's length fields do not fit the buffer.
    #[error("IP length fields disagree with the packet size")]
    BadLength,
}

/// The addresses of an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Total length the header claims (≤ the buffer's length).
    pub len: usize,
}

impl IpHeader {
    /// Reads the header of `pkt`, checking every length it relies on.
    pub fn parse(pkt: &[u8]) -> Result<IpHeader, PacketError> {
        let first = *pkt.first().ok_or(PacketError::Truncated)?;
        match first >> 4 {
            4 => {
                let h: &[u8; 20] = pkt
                    .get(..20)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(PacketError::Truncated)?;
                let ihl = usize::from(h[0] & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
                if ihl < 20 || total < ihl || total > pkt.len() {
                    return Err(PacketError::BadLength);
                }
                let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
                let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
                Ok(IpHeader {
                    src: src.into(),
                    dst: dst.into(),
                    len: total,
                })
            }
            6 => {
                let h: &[u8; 40] = pkt
                    .get(..40)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(PacketError::Truncated)?;
                let total = 40 + usize::from(u16::from_be_bytes([h[4], h[5]]));
                if total > pkt.len() {
                    return Err(PacketError::BadLength);
                }
                let mut s = [0u8; 16];
                let mut d = [0u8; 16];
                s.copy_from_slice(&h[8..24]);
                d.copy_from_slice(&h[24..40]);
                Ok(IpHeader {
                    src: Ipv6Addr::from(s).into(),
                    dst: Ipv6Addr::from(d).into(),
                    len: total,
                })
            }
            _ => Err(PacketError::BadVersion),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal IPv4 packet with `payload` bytes of zeroes (checksum not filled in).
    pub(crate) fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, payload: usize) -> Vec<u8> {
        let total = 20 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        p
    }

    /// A minimal IPv6 packet with `payload` bytes of zeroes.
    pub(crate) fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&dst.octets());
        p
    }

    #[test]
    fn reads_both_families() {
        let p = ipv4(Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8), 8);
        let h = IpHeader::parse(&p).unwrap();
        assert_eq!(h.src, IpAddr::from([1, 2, 3, 4]));
        assert_eq!(h.dst, IpAddr::from([5, 6, 7, 8]));
        assert_eq!(h.len, 28);
        let p = ipv6(Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED, 3);
        let h = IpHeader::parse(&p).unwrap();
        assert_eq!(h.src, IpAddr::from(Ipv6Addr::LOCALHOST));
        assert_eq!(h.len, 43);
    }

    #[test]
    fn short_or_lying_packets_are_errors() {
        assert_eq!(IpHeader::parse(&[]), Err(PacketError::Truncated));
        assert_eq!(IpHeader::parse(&[0x45; 10]), Err(PacketError::Truncated));
        assert_eq!(IpHeader::parse(&[0x20; 40]), Err(PacketError::BadVersion));
        let mut p = ipv4(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 0);
        p[3] = 200;
        assert_eq!(IpHeader::parse(&p), Err(PacketError::BadLength));
        let mut p = ipv6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 0);
        p[5] = 1;
        assert_eq!(IpHeader::parse(&p), Err(PacketError::BadLength));
    }
}
