//! Per-task output batching: encrypted datagrams are collected and sent as UDP GSO runs
//! (one `sendmsg` for up to 64 same-size datagrams to one endpoint), decrypted packets are
//! collected and written to the TUN with GRO coalescing (`tun-rs` `send_multiple`).
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

/// Packets for the TUN, written together with GRO coalescing (the client's TUN uses it too).
pub struct TunQueue {
    bufs: Vec<Vec<u8>>,
    used: usize,
    gro: GROTable,
}

impl Default for TunQueue {
    fn default() -> TunQueue {
        TunQueue {
            bufs: Vec::new(),
            used: 0,
            gro: GROTable::new(),
        }
    }
}

impl TunQueue {
    /// Queues one IP packet.
    pub fn push(&mut self, pkt: &[u8]) {
        let i = self.used;
        if i == self.bufs.len() {
            // Room for a whole coalesced super-packet: tun-rs only merges a segment into a
            // buffer whose capacity already holds the result (it never reallocates), so an
            // MTU-sized buffer would silently turn GRO off and cost one write per packet.
            self.bufs.push(Vec::with_capacity(TUN_BUF_CAPACITY));
        }
        let b = &mut self.bufs[i];
        b.clear();
        // Headroom for the virtio-net header `send_multiple` writes in front.
        b.resize(VIRTIO_NET_HDR_LEN, 0);
        b.extend_from_slice(pkt);
        self.used += 1;
    }

    /// Writes what is queued; false when the write failed.
    pub async fn flush(&mut self, tun: &tun_rs::AsyncDevice) -> bool {
        if self.used == 0 {
            return true;
        }
        let n = self.used;
        self.used = 0;
        tun.send_multiple(&mut self.gro, &mut self.bufs[..n], VIRTIO_NET_HDR_LEN)
            .await
            .is_ok()
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
