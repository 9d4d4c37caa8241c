//! Per-task output batching: encrypted datagrams are collected and sent as UDP GSO runs
//! (one `sendmsg` for up to 64 same-size datagrams to one endpoint), decrypted packets are
//! collected and written to the TUN with GRO coalescing (TCP: [`gro`], as they are
//! queued; the rest: `tun-rs` `send_multiple`).
//!
//! A task handles a whole receive batch through a [`BatchSink`], then calls
//! [`BatchSink::flush`]. How big a batch is decides what a packet costs: GRO merges only the
//! segments of one batch into a super-packet, and the kernel forwards and NATs a
//! super-packet once. The UDP task therefore pauses briefly between reads while a flow keeps
//! it busy (`hub::io::udp_task`).
//!
//! Buffers keep their capacity between batches, so the steady state allocates nothing.
//! [`gso_runs`] (which datagrams share a `sendmsg`) is a pure function.

use std::cell::RefCell;
use std::sync::atomic::Ordering;

use tun_rs::{GROTable, VIRTIO_NET_HDR_LEN};

use super::engine::Sink;
use super::gro::{self, Run, Segment};
use super::io::NetSink;
use super::peers::Endpoint;

/// Largest UDP GSO send (the kernel's limit is 64 KiB of payload).
const GSO_MAX_BYTES: usize = 65_000;

/// Capacity of a TUN write buffer: the largest IP packet plus the headroom tun-rs asks of
/// a buffer it coalesces into (twice the virtio-net header).
const TUN_BUF_CAPACITY: usize = 2 * VIRTIO_NET_HDR_LEN + 65_535;

/// One queued datagram: destination and its place in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub to: Endpoint,
    pub start: usize,
    pub len: usize,
}

/// A run of consecutive queued datagrams sent with one `sendmsg`: same destination, all of
/// `segment` bytes except possibly the last, which may be shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsoRun {
    pub to: Endpoint,
    pub start: usize,
    pub end: usize,
    pub segment: usize,
    pub count: usize,
}

/// Groups queued datagrams (laid out back to back in the arena) into GSO runs of at most
/// `max_segments` datagrams and `GSO_MAX_BYTES`.
pub fn gso_runs(queued: &[Queued], max_segments: usize, out: &mut Vec<GsoRun>) {
    out.clear();
    for q in queued {
        if let Some(r) = out.last_mut() {
            let fits = r.to == q.to
                && r.end == q.start
                && q.len <= r.segment
                && r.count < max_segments.max(1)
                && r.end - r.start + q.len <= GSO_MAX_BYTES
                // A shorter datagram ends a run: only the last may be short.
                && (r.end - r.start) == r.segment * r.count;
            if fits {
                r.end += q.len;
                r.count += 1;
                continue;
            }
        }
        out.push(GsoRun {
            to: q.to,
            start: q.start,
            end: q.start + q.len,
            segment: q.len,
            count: 1,
        });
    }
}

#[derive(Default)]
struct UdpQueue {
    arena: Vec<u8>,
    queued: Vec<Queued>,
    runs: Vec<GsoRun>,
}

/// Packets for the TUN (the client's TUN uses it too). TCP segments are merged as they are
/// queued ([`gro`]) and written one buffer per super-packet; everything else goes
/// through tun-rs `send_multiple` (its UDP coalescing).
pub struct TunQueue {
    /// TCP packets, each after room for the virtio-net header; merged runs grow in place.
    tcp: Vec<Vec<u8>>,
    /// Per queued `tcp` buffer: its connection's key and, while it may grow, its run.
    runs: Vec<(u64, Option<Run>)>,
    /// Everything else, after the same room.
    bufs: Vec<Vec<u8>>,
    used: usize,
    gro: GROTable,
    /// The TUN takes virtio-net headers: learned at the first flush, no merging before.
    offload: bool,
}

/// How far back a segment looks for the last queued packet of its connection.
const SCAN: usize = 8;

impl Default for TunQueue {
    fn default() -> TunQueue {
        TunQueue {
            tcp: Vec::new(),
            runs: Vec::new(),
            bufs: Vec::new(),
            used: 0,
            gro: GROTable::new(),
            offload: false,
        }
    }
}

/// Fills buffer `i` of `bufs` (made when missing) with the virtio-net room and `pkt`.
fn put(bufs: &mut Vec<Vec<u8>>, i: usize, pkt: &[u8]) {
    if i == bufs.len() {
        // Room for a whole coalesced super-packet: merging never reallocates (and tun-rs
        // only merges a segment into a buffer whose capacity already holds the result).
        bufs.push(Vec::with_capacity(TUN_BUF_CAPACITY));
    }
    let b = &mut bufs[i];
    b.clear();
    b.resize(VIRTIO_NET_HDR_LEN, 0);
    b.extend_from_slice(pkt);
}

impl TunQueue {
    /// Queues one IP packet.
    pub fn push(&mut self, pkt: &[u8]) {
        if let Some(key) = self.offload.then(|| gro::flow_key(pkt)).flatten() {
            let seg = Segment::parse(pkt);
            let n = self.runs.len();
            // Only the connection's last queued packet may take it, so its order holds.
            if let Some(i) = (n.saturating_sub(SCAN)..n)
                .rev()
                .find(|&i| self.runs[i].0 == key)
            {
                if let (Some(seg), Some(run)) = (&seg, &mut self.runs[i].1) {
                    if run.append(&mut self.tcp[i], seg, pkt) {
                        return;
                    }
                }
            }
            put(&mut self.tcp, n, pkt);
            self.runs.push((key, seg.map(|s| Run::start(s, pkt))));
            return;
        }
        put(&mut self.bufs, self.used, pkt);
        self.used += 1;
    }

    /// TCP buffer `i` ready to write (virtio-net header and packet; a packet that starts no
    /// run keeps the zeroed header `put` gave it).
    fn finish(&mut self, i: usize) -> &[u8] {
        let b = &mut self.tcp[i];
        if let Some(r) = &self.runs[i].1 {
            r.finish(b);
        }
        b
    }

    /// A queue that merges from the start (as after a flush to a TUN with offloads).
    #[cfg(test)]
    pub fn merging() -> TunQueue {
        TunQueue {
            offload: true,
            ..TunQueue::default()
        }
    }

    /// What a flush would write, without a TUN: the TCP buffers (virtio-net header and
    /// packet), then the other packets (without the header room).
    #[cfg(test)]
    pub fn take(&mut self) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let tcp = (0..self.runs.len())
            .map(|i| self.finish(i).to_vec())
            .collect();
        self.runs.clear();
        let other = self.bufs[..self.used]
            .iter()
            .map(|b| b[VIRTIO_NET_HDR_LEN..].to_vec())
            .collect();
        self.used = 0;
        (tcp, other)
    }

    /// Writes what is queued; false when a write failed.
    pub async fn flush(&mut self, tun: &tun_rs::AsyncDevice) -> bool {
        self.offload = tun.tcp_gso();
        let mut ok = true;
        for i in 0..self.runs.len() {
            ok &= tun.send(self.finish(i)).await.is_ok();
        }
        self.runs.clear();
        if self.used > 0 {
            let n = self.used;
            self.used = 0;
            ok &= tun
                .send_multiple(&mut self.gro, &mut self.bufs[..n], VIRTIO_NET_HDR_LEN)
                .await
                .is_ok();
        }
        ok
    }
}

/// A [`Sink`] that queues; see the module docs.
pub struct BatchSink<'a> {
    net: &'a NetSink,
    /// The TUN queue this batch writes to.
    queue: usize,
    udp: RefCell<UdpQueue>,
    tun: RefCell<TunQueue>,
}

impl<'a> BatchSink<'a> {
    /// An empty batch over the real sockets and TUN queue `queue`.
    pub fn new(net: &'a NetSink, queue: usize) -> BatchSink<'a> {
        BatchSink {
            net,
            queue,
            udp: RefCell::new(UdpQueue::default()),
            tun: RefCell::new(TunQueue::default()),
        }
    }

    /// Sends everything queued: UDP first (GSO runs), then the TUN (GRO-coalesced).
    pub async fn flush(&mut self) {
        self.flush_udp().await;
        self.flush_tun().await;
    }

    async fn flush_udp(&mut self) {
        let q = self.udp.get_mut();
        if q.queued.is_empty() {
            return;
        }
        let max = self.net.max_gso_segments();
        gso_runs(&q.queued, max, &mut q.runs);
        for r in &q.runs {
            let data = &q.arena[r.start..r.end];
            if !self.net.send_gso(r.to, data, r.segment).await {
                self.net
                    .send_drops
                    .fetch_add(r.count as u64, Ordering::Relaxed);
            }
        }
        q.arena.clear();
        q.queued.clear();
    }

    async fn flush_tun(&mut self) {
        if !self
            .tun
            .get_mut()
            .flush(self.net.tun_queue(self.queue))
            .await
        {
            self.net.send_drops.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Sink for BatchSink<'_> {
    fn send_udp(&self, to: Endpoint, datagram: &[u8]) {
        let mut q = self.udp.borrow_mut();
        let start = q.arena.len();
        q.arena.extend_from_slice(datagram);
        q.queued.push(Queued {
            to,
            start,
            len: datagram.len(),
        });
    }

    fn write_tun(&self, pkt: &[u8]) {
        self.tun.borrow_mut().push(pkt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn q(to: u16, start: usize, len: usize) -> Queued {
        Queued {
            to: SocketAddr::from(([10, 0, 0, 1], to)).into(),
            start,
            len,
        }
    }

    #[test]
    fn same_size_datagrams_to_one_endpoint_share_a_send() {
        let queued = [q(1, 0, 100), q(1, 100, 100), q(1, 200, 40), q(1, 240, 100)];
        let mut runs = vec![];
        gso_runs(&queued, 64, &mut runs);
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].count, runs[0].segment, runs[0].end), (3, 100, 240));
        assert_eq!((runs[1].start, runs[1].count), (240, 1));
    }

    #[test]
    fn destination_change_and_segment_limit_split_runs() {
        let queued = [q(1, 0, 10), q(2, 10, 10), q(2, 20, 10), q(2, 30, 10)];
        let mut runs = vec![];
        gso_runs(&queued, 2, &mut runs);
        let counts: Vec<_> = runs.iter().map(|r| r.count).collect();
        assert_eq!(counts, [1, 2, 1]);
    }

    #[test]
    fn a_longer_datagram_starts_a_new_run() {
        let queued = [q(1, 0, 10), q(1, 10, 20)];
        let mut runs = vec![];
        gso_runs(&queued, 64, &mut runs);
        assert_eq!(runs.len(), 2);
    }
}
