use proptest::prelude::*;

use super::*;
use crate::hub::batch::TunQueue;

const SRC4: [u8; 4] = [100, 96, 0, 2];
const DST4: [u8; 4] = [192, 0, 2, 80];

/// A TCP segment with a valid checksum: IPv4 (or IPv6 when `v6`), ports 40000 → 5201,
/// `flags`, `seq`, a timestamp option and `payload`.
fn segment(v6: bool, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let ip_len = if v6 { 40 } else { 20 };
    let mut p = vec![0u8; ip_len + 32];
    if v6 {
        p[0] = 0x60;
        p[6] = 6;
        p[7] = 64;
        p[8..24].copy_from_slice(&[0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p[24..40].copy_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]);
    } else {
        p[0] = 0x45;
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&SRC4);
        p[16..20].copy_from_slice(&DST4);
    }
    let t = ip_len;
    p[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
    p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    p[t + 8..t + 12].copy_from_slice(&777u32.to_be_bytes());
    p[t + 12] = 8 << 4;
    p[t + 13] = flags;
    p[t + 14..t + 16].copy_from_slice(&502u16.to_be_bytes());
    // NOP, NOP, timestamps.
    p[t + 20..t + 24].copy_from_slice(&[1, 1, 8, 10]);
    p[t + 24..t + 32].copy_from_slice(&[0, 0, 1, 2, 0, 0, 3, 4]);
    p.extend_from_slice(payload);
    fix_lengths_and_checksums(&mut p, v6);
    p
}

fn fix_lengths_and_checksums(p: &mut [u8], v6: bool) {
    let ip_len = if v6 { 40 } else { 20 };
    let len = p.len();
    if v6 {
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    } else {
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[10..12].fill(0);
        let c = !fold(sum(&p[..20], 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let at = ip_len + TCP_CSUM_OFFSET;
    p[at..at + 2].fill(0);
    let s = Segment::parse(p).map(|s| s.v6).unwrap_or(v6);
    let addrs = if s { &p[8..40] } else { &p[12..20] };
    let c = !fold(sum(&p[ip_len..], sum(addrs, 6 + (len - ip_len) as u64)));
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// What the kernel does with a buffer written with a virtio-net header: completes the
/// checksum where asked and cuts a TSO super-packet into segments of `gso_size`.
fn kernel_receives(buf: &[u8]) -> Vec<Vec<u8>> {
    let (hdr, p) = buf.split_at(VIRTIO_NET_HDR_LEN);
    let ne = |i: usize| usize::from(u16::from_ne_bytes([hdr[i], hdr[i + 1]]));
    if hdr[0] == 0 && hdr[1] == 0 {
        return vec![p.to_vec()];
    }
    assert_eq!(hdr[0], F_NEEDS_CSUM);
    let v6 = hdr[1] == GSO_TCPV6;
    let (hdr_len, size, start, off) = (ne(2), ne(4), ne(6), ne(8));
    assert_eq!((start, off), (if v6 { 40 } else { 20 }, TCP_CSUM_OFFSET));
    // The pseudo-header sum is in the checksum field: checksumming the whole TCP part with
    // it in place gives the full checksum.
    let mut whole = p.to_vec();
    let c = !fold(sum(&whole[start..], 0));
    whole[start + off..start + off + 2].copy_from_slice(&c.to_be_bytes());
    assert!(
        checksum_valid(&whole, &Segment::parse(&whole).expect("a TCP super-packet")),
        "the completed checksum of the super-packet is right"
    );
    if !v6 {
        assert_eq!(fold(sum(&whole[..20], 0)), 0xffff, "IPv4 header checksum");
    }
    let seq0 = u32::from_be_bytes(whole[start + 4..start + 8].try_into().unwrap());
    let flags = whole[start + 13];
    let payload = &whole[hdr_len..];
    let n = payload.len().div_ceil(size);
    payload
        .chunks(size)
        .enumerate()
        .map(|(i, chunk)| {
            let mut s = whole[..hdr_len].to_vec();
            let seq = seq0.wrapping_add((i * size) as u32);
            s[start + 4..start + 8].copy_from_slice(&seq.to_be_bytes());
            // PSH only on the last segment, as TSO does.
            s[start + 13] = if i + 1 == n { flags } else { flags & !PSH };
            s.extend_from_slice(chunk);
            fix_lengths_and_checksums(&mut s, v6);
            s
        })
        .collect()
}

fn through_queue(packets: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut q = TunQueue::merging();
    for p in packets {
        q.push(p);
    }
    q.take()
}

fn flow(v6: bool, sizes: &[usize], last_flags: u8) -> Vec<Vec<u8>> {
    let mut seq = 1000u32;
    let n = sizes.len();
    sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let flags = if i + 1 == n { last_flags } else { ACK };
            let payload: Vec<u8> = (0..len).map(|k| (k + i * 7) as u8).collect();
            let p = segment(v6, seq, flags, &payload);
            seq = seq.wrapping_add(len as u32);
            p
        })
        .collect()
}

#[test]
fn a_run_of_segments_becomes_one_super_packet_that_the_kernel_cuts_back() {
    for v6 in [false, true] {
        let packets = flow(v6, &[1368; 20], ACK | PSH);
        let (tcp, other) = through_queue(&packets);
        assert!(other.is_empty());
        assert_eq!(tcp.len(), 1, "one write for the whole run (v6 {v6})");
        assert_eq!(kernel_receives(&tcp[0]), packets);
    }
}

#[test]
fn a_short_segment_or_psh_ends_a_run_and_sizes_never_grow() {
    // 1368, 1368, 500 (ends), 1368 → two buffers; PSH in the middle ends the first too.
    let packets = flow(false, &[1368, 1368, 500, 1368, 1368], ACK);
    let (tcp, _) = through_queue(&packets);
    assert_eq!(tcp.len(), 2);
    let back: Vec<_> = tcp.iter().flat_map(|b| kernel_receives(b)).collect();
    assert_eq!(back, packets);

    let mut packets = flow(false, &[1000; 4], ACK);
    packets[1] = segment(false, 2000, ACK | PSH, &[9; 1000]);
    let (tcp, _) = through_queue(&packets);
    assert_eq!(tcp.len(), 2);
    assert_eq!(
        tcp.iter()
            .flat_map(|b| kernel_receives(b))
            .collect::<Vec<_>>(),
        packets
    );
}

#[test]
fn what_may_not_be_merged_is_written_as_it_came() {
    let base = flow(false, &[1000, 1000], ACK);
    let alone = |second: Vec<u8>| {
        let (tcp, other) = through_queue(&[base[0].clone(), second.clone()]);
        assert!(other.is_empty());
        assert_eq!(tcp.len(), 2, "not merged");
        assert_eq!(kernel_receives(&tcp[0]), vec![base[0].clone()]);
        assert_eq!(kernel_receives(&tcp[1]), vec![second]);
    };
    // A gap in the sequence, a SYN/FIN/RST, another ACK number or window, a bad checksum.
    alone(segment(false, 2001, ACK, &[1; 1000]));
    alone(segment(false, 2000, ACK | 0x01, &[1; 1000]));
    let mut other_ack = base[1].clone();
    other_ack[28] ^= 1;
    fix_lengths_and_checksums(&mut other_ack, false);
    alone(other_ack);
    let mut other_window = base[1].clone();
    other_window[34] ^= 1;
    fix_lengths_and_checksums(&mut other_window, false);
    alone(other_window);
    let mut corrupt = base[1].clone();
    corrupt[100] ^= 0xff;
    alone(corrupt);
    // A head with a bad checksum is not merged into either.
    let mut bad_head = base[0].clone();
    bad_head[100] ^= 0xff;
    let (tcp, _) = through_queue(&[bad_head.clone(), base[1].clone()]);
    assert_eq!(tcp.len(), 2);
    assert_eq!(&tcp[0][VIRTIO_NET_HDR_LEN..], &bad_head[..]);
}

#[test]
fn connections_interleaved_keep_their_order_and_other_packets_pass_by() {
    let a = flow(false, &[1000; 6], ACK);
    let b = flow(true, &[1200; 6], ACK);
    let mut udp = segment(false, 0, ACK, &[7; 100]);
    udp[9] = 17;
    let mut mixed = Vec::new();
    for i in 0..6 {
        mixed.push(a[i].clone());
        mixed.push(b[i].clone());
    }
    mixed.insert(5, udp.clone());
    let (tcp, other) = through_queue(&mixed);
    assert_eq!(tcp.len(), 2, "one super-packet per connection");
    assert_eq!(other, vec![udp]);
    assert_eq!(kernel_receives(&tcp[0]), a);
    assert_eq!(kernel_receives(&tcp[1]), b);

    // A packet of the connection that cannot be merged (a pure ACK) is a barrier: later
    // segments never jump ahead of it.
    let ack = segment(false, 3000, ACK, &[]);
    let seq = [a[0].clone(), a[1].clone(), ack.clone(), a[2].clone()];
    let (tcp, _) = through_queue(&seq);
    let back: Vec<_> = tcp.iter().flat_map(|b| kernel_receives(b)).collect();
    assert_eq!(back, seq);
}

/// RFC 1071's sum, 16 bits at a time in network order: what [`sum`] must equal.
fn reference_sum(b: &[u8]) -> u16 {
    let mut acc = 0u32;
    for pair in b.chunks(2) {
        acc += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[test]
fn a_known_header_checksum() {
    // RFC 1071's example words and a real IPv4 header (checksum 0xb861).
    let h = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(!fold(sum(&h, 0)), 0xb861);
    assert_eq!(
        fold(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0)),
        0xddf2
    );
}

proptest! {
    #[test]
    fn the_fast_sum_is_rfc_1071s(b in proptest::collection::vec(any::<u8>(), 0..3000), acc in 0u64..0xffff) {
        let want = fold(u64::from(reference_sum(&b)) + acc);
        prop_assert_eq!(fold(sum(&b, acc)), want);
    }

    /// Any mix of segment sizes, flags and connections comes out of the kernel as it went in.
    #[test]
    fn every_packet_comes_out_as_it_went_in(
        runs in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(1usize..1400, 1..30), any::<bool>()),
            1..4,
        )
    ) {
        let flows: Vec<Vec<Vec<u8>>> = runs
            .iter()
            .enumerate()
            .map(|(k, (v6, sizes, psh))| {
                let mut f = flow(*v6, sizes, if *psh { ACK | PSH } else { ACK });
                // Distinct connections: another source port each.
                for p in &mut f {
                    let t = if *v6 { 40 } else { 20 };
                    p[t + 1] = p[t + 1].wrapping_add(k as u8);
                    fix_lengths_and_checksums(p, *v6);
                }
                f
            })
            .collect();
        // Interleave the connections round robin.
        let longest = flows.iter().map(Vec::len).max().unwrap_or(0);
        let mixed: Vec<Vec<u8>> = (0..longest)
            .flat_map(|i| flows.iter().filter_map(move |f| f.get(i).cloned()))
            .collect();
        let (tcp, other) = through_queue(&mixed);
        prop_assert!(other.is_empty());
        let back: Vec<Vec<u8>> = tcp.iter().flat_map(|b| kernel_receives(b)).collect();
        for f in &flows {
            let got: Vec<&Vec<u8>> = back.iter().filter(|p| flow_key(p) == flow_key(&f[0])).collect();
            prop_assert_eq!(got.len(), f.len());
            for (g, want) in got.iter().zip(f) {
                prop_assert_eq!(*g, want);
            }
        }
    }
}

#[test]
fn fuzz_tun_coalescing() {
    let seeds = flow(false, &[100, 100], ACK)
        .into_iter()
        .chain(flow(true, &[100], ACK | PSH))
        .collect();
    let mut q = TunQueue::merging();
    let mut n = 0;
    crate::fuzz::run("tun_coalescing", crate::fuzz::bytes(seeds, 1500), |p| {
        q.push(p);
        n += 1;
        if n % 5 == 0 {
            // Whatever came in, what goes out is well-formed for the kernel.
            let (tcp, _) = q.take();
            for b in tcp {
                let _ = kernel_receives(&b);
            }
        }
    });
}
