//! TCP receive coalescing for TUN writes (GRO in user space), done as packets are queued.
//!
//! A decrypted TCP segment that continues the last queued segment of its flow (same
//! addresses, ports, IP and TCP header fields, next sequence number, ACK or ACK+PSH only) has
//! its payload appended to that buffer; at the flush the buffer gets a virtio-net header that
//! asks the kernel to treat it as one TSO super-packet (it forwards and NATs it once, and
//! splits it again only if it must). The checksum of every segment is checked before it is
//! merged, since the kernel recomputes the super-packet's checksum.
//!
//! tun-rs does the same in `send_multiple`, but copies every packet into a fresh allocation
//! first (about 4 % of the hub's CPU on a fast flow); here the only copy is the append.
//! wireguard-go's `tun/offload_linux.go` and the kernel's `tcp_gro_receive` decide the same way
//! what may be merged.

use tun_rs::VIRTIO_NET_HDR_LEN;

/// virtio-net header values (linux/virtio_net.h).
const F_NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
/// Where the checksum sits in a TCP header.
const TCP_CSUM_OFFSET: usize = 16;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
/// Segments one super-packet may carry (the kernel's `UDP_MAX_SEGMENTS`-like bound for TCP
/// is 64 KiB of IP length; this keeps runs short enough to go out without delay).
const MAX_SEGMENTS: u16 = 64;

/// A TCP segment's layout, when it may take part in coalescing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    v6: bool,
    /// IP header length.
    ip_len: usize,
    /// IP + TCP header length.
    hdr_len: usize,
    seq: u32,
    flags: u8,
}

impl Segment {
    /// The layout of `p` when it is a TCP segment that carries data, without IP options,
    /// extension headers or fragmentation, and with only ACK (and PSH) set; else `None`
    /// (such packets are written as they are).
    pub fn parse(p: &[u8]) -> Option<Segment> {
        let (v6, ip_len) = match p.first()? >> 4 {
            4 => {
                // No options; TCP; DF set and no fragment; the length field is the length.
                let ok = p.len() >= 20
                    && p[0] == 0x45
                    && p[9] == 6
                    && p[6] == 0x40
                    && p[7] == 0
                    && usize::from(u16::from_be_bytes([p[2], p[3]])) == p.len();
                (false, ok.then_some(20)?)
            }
            6 => {
                let ok = p.len() >= 40
                    && p[6] == 6
                    && usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 == p.len();
                (true, ok.then_some(40)?)
            }
            _ => return None,
        };
        let th = p.get(ip_len..ip_len + 20)?;
        let doff = usize::from(th[12] >> 4) * 4;
        let hdr_len = ip_len + doff;
        let flags = th[13];
        if doff < 20 || hdr_len >= p.len() || flags & !PSH != ACK {
            return None;
        }
        Some(Segment {
            v6,
            ip_len,
            hdr_len,
            seq: u32::from_be_bytes([th[4], th[5], th[6], th[7]]),
            flags,
        })
    }

    fn payload(&self, p: &[u8]) -> usize {
        p.len() - self.hdr_len
    }

    /// Whether `a` (this layout) and `b` (layout `other`) may share a super-packet: equal IP
    /// version, TOS or traffic class and flow label, TTL or hop limit, addresses; TCP ports,
    /// ACK number, header length, window, urgent pointer and options. (Sequence numbers,
    /// lengths, IDs and checksums differ.)
    fn compatible(&self, a: &[u8], other: &Segment, b: &[u8]) -> bool {
        if self.v6 != other.v6 || self.hdr_len != other.hdr_len {
            return false;
        }
        let ip = if self.v6 {
            a[..4] == b[..4] && a[7] == b[7] && a[8..40] == b[8..40]
        } else {
            a[..2] == b[..2] && a[6] == b[6] && a[8..10] == b[8..10] && a[12..20] == b[12..20]
        };
        let t = self.ip_len;
        ip && a[t..t + 4] == b[t..t + 4]
            && a[t + 8..t + 13] == b[t + 8..t + 13]
            && a[t + 14..t + 16] == b[t + 14..t + 16]
            && a[t + 18..self.hdr_len] == b[t + 18..self.hdr_len]
    }
}

/// A key for the TCP connection `p` belongs to (IP version, addresses, ports), for any TCP
/// packet but a non-first IPv4 fragment; `None` for anything else. Packets of one connection
/// keep their order in the queue: a segment is only ever appended to the last queued packet
/// of its connection. (Two connections with one key only coalesce less.)
pub fn flow_key(p: &[u8]) -> Option<u64> {
    let (t, addrs) = match p.first()? >> 4 {
        4 if p.len() >= 20 && p[9] == 6 && u16::from_be_bytes([p[6], p[7]]) & 0x1fff == 0 => {
            (usize::from(p[0] & 0x0f) * 4, p.get(12..20)?)
        }
        6 if p.len() >= 40 && p[6] == 6 => (40, &p[8..40]),
        _ => return None,
    };
    let ports = p.get(t..t + 4)?;
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ u64::from(p[0] >> 4);
    for &b in addrs.iter().chain(ports) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    Some(h)
}

/// A queued buffer's coalescing state (the buffer holds the virtio-net header room, then the
/// head segment with the payloads of the segments merged into it).
#[derive(Debug, Clone, Copy)]
pub struct Run {
    seg: Segment,
    /// Payload bytes of each segment (the head's); a shorter one ends the run.
    size: usize,
    count: u16,
    next_seq: u32,
    /// Nothing more may be appended (a short segment or PSH came, or a checksum failed).
    closed: bool,
}

impl Run {
    /// A run headed by packet `p` with layout `seg`.
    pub fn start(seg: Segment, p: &[u8]) -> Run {
        let size = seg.payload(p);
        Run {
            seg,
            size,
            count: 1,
            next_seq: seg.seq.wrapping_add(size as u32),
            closed: seg.flags & PSH != 0,
        }
    }

    /// Appends `p` (layout `seg`) to `buf` (virtio-net room + head) when it continues the
    /// run; false when it does not (the caller queues it on its own).
    pub fn append(&mut self, buf: &mut Vec<u8>, seg: &Segment, p: &[u8]) -> bool {
        let payload = seg.payload(p);
        let ip_total = buf.len() - VIRTIO_NET_HDR_LEN + payload;
        if self.closed
            || !self.seg.compatible(&buf[VIRTIO_NET_HDR_LEN..], seg, p)
            || seg.seq != self.next_seq
            || payload > self.size
            || self.count >= MAX_SEGMENTS
            || ip_total > usize::from(u16::MAX)
            || buf.capacity() < buf.len() + payload
        {
            return false;
        }
        if self.count == 1 && !checksum_valid(&buf[VIRTIO_NET_HDR_LEN..], &self.seg) {
            self.closed = true;
            return false;
        }
        if !checksum_valid(p, seg) {
            self.closed = true;
            return false;
        }
        buf.extend_from_slice(&p[seg.hdr_len..]);
        self.count += 1;
        self.next_seq = self.next_seq.wrapping_add(payload as u32);
        if seg.flags & PSH != 0 {
            buf[VIRTIO_NET_HDR_LEN + self.seg.ip_len + 13] |= PSH;
            self.closed = true;
        }
        if payload < self.size {
            self.closed = true;
        }
        true
    }

    /// Makes `buf` ready to write: for a merged run, new IP lengths and header checksum, the
    /// TCP pseudo-header sum in the checksum field and a virtio-net header asking for
    /// segmentation and the checksum; for a lone segment, a zeroed header (as it came).
    pub fn finish(&self, buf: &mut [u8]) {
        let (hdr, p) = buf.split_at_mut(VIRTIO_NET_HDR_LEN);
        hdr.fill(0);
        if self.count < 2 {
            return;
        }
        let s = &self.seg;
        let tcp_len = p.len() - s.ip_len;
        if s.v6 {
            p[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        } else {
            let total = p.len() as u16;
            p[2..4].copy_from_slice(&total.to_be_bytes());
            p[10..12].fill(0);
            let c = !fold(sum(&p[..20], 0));
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let pseudo = fold(pseudo_sum(p, s, tcp_len));
        let at = s.ip_len + TCP_CSUM_OFFSET;
        p[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
        hdr[0] = F_NEEDS_CSUM;
        hdr[1] = if s.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        hdr[2..4].copy_from_slice(&(s.hdr_len as u16).to_ne_bytes());
        hdr[4..6].copy_from_slice(&(self.size as u16).to_ne_bytes());
        hdr[6..8].copy_from_slice(&(s.ip_len as u16).to_ne_bytes());
        hdr[8..10].copy_from_slice(&(TCP_CSUM_OFFSET as u16).to_ne_bytes());
    }
}

/// `acc` plus the one's-complement sum of `b` (big-endian 16-bit words, an odd last byte
/// padded), not folded. Summed in native byte order, 32 bits at a time (the compiler
/// vectorizes it), then swapped: the sum of byte-swapped words is the byte-swapped sum
/// (RFC 1071, 2(B)).
fn sum(b: &[u8], acc: u64) -> u64 {
    let mut words = b.chunks_exact(4);
    let mut native: u64 = (&mut words)
        .map(|w| u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .sum();
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    native += u64::from(u32::from_ne_bytes(tail));
    acc + u64::from(u16::from_be(fold(native)))
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The TCP pseudo-header's sum for packet `p` with a TCP part of `tcp_len` bytes.
fn pseudo_sum(p: &[u8], s: &Segment, tcp_len: usize) -> u64 {
    let addrs = if s.v6 { &p[8..40] } else { &p[12..20] };
    sum(addrs, 6 + tcp_len as u64)
}

/// Whether the TCP checksum of `p` (layout `s`) is right.
fn checksum_valid(p: &[u8], s: &Segment) -> bool {
    let tcp = &p[s.ip_len..];
    fold(sum(tcp, pseudo_sum(p, s, tcp.len()))) == 0xffff
}

#[cfg(test)]
mod tests;
