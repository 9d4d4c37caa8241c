//! The hub's I/O: the UDP sockets, the TUN, and the tasks that move bytes between them and
//! the [`Engine`]. No decisions are made here.
//!
//! Batching, because per-packet system calls cost this kind of machine more than the crypto:
//! UDP is read with `recvmmsg` + GRO and written with GSO (the program's one batched-UDP
//! stack, `crate::udp`); the TUN runs with
//! IFF_VNET_HDR offloads (tun-rs), so one read can carry a 64 KiB TCP super-packet that is
//! split into MTU-sized packets, and writes are GRO-coalesced. Each task owns its buffers and
//! a [`BatchSink`], handles a whole batch, then flushes it. Without offload support (or with
//! `CLOUDPC_HUB_OFFLOAD=0`) the same code runs one packet per read.

use std::io::{self, IoSlice};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_udp::UdpSocketState;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tun_rs::{AsyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::batch::BatchSink;
use super::engine::{Bufs, Engine, Sink, MAX_PACKET};
use super::peers::{Endpoint, Via};
use crate::store::Overlay;
use crate::udp::BATCH_SIZE;

/// Socket buffer size asked for: a burst of a fast flow must not overflow the receive queue.
const SOCKET_BUFFER: usize = 8 << 20;
/// How often session timers run (boringtun's recommended tick).
pub const TIMER_TICK: Duration = Duration::from_millis(250);
/// The IPv6 wildcard for the v6 socket.
pub const V6_ANY: Ipv6Addr = Ipv6Addr::UNSPECIFIED;

/// One bound WireGuard socket with its quinn-udp state (GSO/GRO capabilities).
pub struct UdpPort {
    pub sock: UdpSocket,
    pub state: UdpSocketState,
}

/// The real outputs: both UDP sockets and the TUN.
pub struct NetSink {
    pub v4: UdpPort,
    pub v6: Option<UdpPort>,
    /// More sockets on the same ports (SO_REUSEPORT), read by their own tasks so that devices
    /// are decrypted on every core (the kernel spreads them over the sockets by address);
    /// the hub sends from `v4` and `v6`.
    pub more: Vec<UdpPort>,
    /// The TUN's queues (IFF_MULTI_QUEUE: one per core), each read by its own task; the
    /// kernel spreads the packets it routes into the TUN over them by flow. Writes go to any.
    pub tun: Vec<AsyncDevice>,
    /// The TUN carries virtio-net headers (offloads on).
    pub offload: bool,
    /// Packets dropped because a queue was full or a send failed.
    pub send_drops: AtomicU64,
    /// The open streams of the TLS transport.
    pub tls: Arc<super::tls::TlsStreams>,
}

impl NetSink {
    /// TUN queue `i` (wrapping around), for a task to write to a queue of its own.
    pub fn tun_queue(&self, i: usize) -> &AsyncDevice {
        &self.tun[i % self.tun.len()]
    }

    fn port(&self, to: SocketAddr) -> Option<&UdpPort> {
        match to {
            SocketAddr::V4(_) => Some(&self.v4),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
    }

    /// How many datagrams one GSO send may carry.
    pub fn max_gso_segments(&self) -> usize {
        self.v4.state.max_gso_segments()
    }

    /// Sends `data` to `to` as datagrams of `segment` bytes (the last may be shorter), in
    /// one `sendmsg` when GSO allows, waiting while the socket buffer is full. False when
    /// the send failed.
    pub async fn send_gso(&self, to: Endpoint, data: &[u8], segment: usize) -> bool {
        if let Via::Tls(id) = to.via {
            // Every segment is queued even when an earlier one was dropped.
            let queued = data.chunks(segment.max(1)).filter(|d| self.tls.send(id, d));
            return queued.count() == data.len().div_ceil(segment.max(1));
        }
        let Some(port) = self.port(to.addr) else {
            return false;
        };
        let many = data.len() > segment;
        if !many || port.state.max_gso_segments() > 1 {
            if send_on(port, to, data, many.then_some(segment))
                .await
                .is_ok()
            {
                return true;
            }
            if !many {
                return false;
            }
            // GSO refused (e.g. no checksum offload on the route): one by one.
        }
        let mut ok = true;
        for chunk in data.chunks(segment.max(1)) {
            ok &= send_on(port, to, chunk, None).await.is_ok();
        }
        ok
    }
}

/// One send on `port`, waiting while its buffer is full.
async fn send_on(
    port: &UdpPort,
    to: Endpoint,
    data: &[u8],
    segment: Option<usize>,
) -> io::Result<()> {
    port.sock
        .async_io(Interest::WRITABLE, || {
            crate::udp::try_send(
                &port.state,
                (&port.sock).into(),
                to.addr,
                to.local,
                data,
                segment,
            )
        })
        .await
}

/// Unbatched sends, for the timer task (handshake retries and keepalives).
impl Sink for NetSink {
    fn send_udp(&self, to: Endpoint, datagram: &[u8]) {
        if let Via::Tls(id) = to.via {
            if !self.tls.send(id, datagram) {
                self.send_drops.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let ok = self.port(to.addr).is_some_and(|p| {
            crate::udp::try_send(
                &p.state,
                (&p.sock).into(),
                to.addr,
                to.local,
                datagram,
                None,
            )
            .is_ok()
        });
        if !ok {
            self.send_drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn write_tun(&self, pkt: &[u8]) {
        // A zeroed virtio-net header means "no offload" for this one packet.
        let r = if self.offload {
            let hdr = [0u8; VIRTIO_NET_HDR_LEN];
            self.tun[0].try_send_vectored(&[IoSlice::new(&hdr), IoSlice::new(pkt)])
        } else {
            self.tun[0].try_send(pkt)
        };
        if r.is_err() {
            self.send_drops.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Binds the WireGuard port on one family: `n` sockets sharing it (SO_REUSEPORT), with large
/// buffers and GSO/GRO where the kernel has them. The port is first checked free with a
/// socket that does not share: another program's socket on it is an error, never a share.
pub fn bind_udp(addr: SocketAddr, n: usize) -> io::Result<Vec<UdpPort>> {
    let mut opts = crate::udp::Options {
        buffer: 4096,
        force_buffers: false,
        reuse_port: false,
        gro: false,
    };
    drop(crate::udp::bind(addr, opts)?);
    opts = crate::udp::Options {
        buffer: SOCKET_BUFFER,
        force_buffers: true,
        reuse_port: true,
        gro: true,
    };
    (0..n.max(1))
        .map(|_| {
            let p = crate::udp::bind(addr, opts)?;
            Ok(UdpPort {
                sock: UdpSocket::from_std(p.sock)?,
                state: p.state,
            })
        })
        .collect()
}

/// One per core the process may run on, or the number in the environment variable `var`
/// (e.g. 1 to compare), at most 16.
fn per_core(var: &str) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(crate::udp::cores)
        .clamp(1, 16)
}

/// How many sockets share each WireGuard port: one per core (`CLOUDPC_HUB_UDP_SOCKETS`
/// overrides it).
pub fn udp_sockets() -> usize {
    per_core("CLOUDPC_HUB_UDP_SOCKETS")
}

/// How many queues the TUN has: one per core (`CLOUDPC_HUB_TUN_QUEUES` overrides it).
pub fn tun_queues() -> usize {
    per_core("CLOUDPC_HUB_TUN_QUEUES")
}

/// Creates the TUN carrying the hub's overlay addresses, with `queues` queues (one when the
/// kernel refuses more); the kernel adds the overlay routes with the addresses (`hub_v4` in
/// the IPv4 range, `hub_v6` in the IPv6 prefix). Offloads are asked for and dropped when the
/// kernel refuses them; the bool says which it got.
pub fn create_tun(
    name: &str,
    overlay: &Overlay,
    mtu: u16,
    queues: usize,
) -> io::Result<(Vec<AsyncDevice>, bool)> {
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .ipv4(overlay.hub_v4(), overlay.v4.prefix_len(), None)
            .ipv6(overlay.hub_v6(), overlay.v6.prefix_len())
            .offload(offload)
            .multi_queue(queues > 1)
            .build_async()
    };
    let want = std::env::var("CLOUDPC_HUB_OFFLOAD").map_or(true, |v| v != "0");
    let (first, offload) = match want.then(|| build(true)) {
        Some(Ok(d)) => {
            let on = d.tcp_gso();
            (d, on)
        }
        other => {
            if let Some(Err(e)) = other {
                tracing::info!(error = %e, "TUN offload unavailable; one packet per read");
            }
            (build(false)?, false)
        }
    };
    let mut all = vec![first];
    while all.len() < queues {
        match all[0].try_clone() {
            Ok(q) => all.push(q),
            Err(e) => {
                tracing::info!(error = %e, "no more TUN queues");
                break;
            }
        }
    }
    Ok((all, offload))
}

/// Which socket a [`udp_task`] reads.
#[derive(Debug, Clone, Copy)]
pub enum Reads {
    V4,
    V6,
    /// `NetSink::more[i]`.
    More(usize),
}

/// Reads datagram batches from one socket into the engine, writing to TUN queue `queue`.
pub async fn udp_task(reads: Reads, queue: usize, net: Arc<NetSink>, engine: Arc<Engine>) {
    let port = match reads {
        Reads::V4 => &net.v4,
        Reads::V6 => match &net.v6 {
            Some(p) => p,
            None => return,
        },
        Reads::More(i) => &net.more[i],
    };
    let mut batch = crate::udp::RecvBatch::new(MAX_PACKET);
    let mut bufs = Bufs::default();
    let mut sink = BatchSink::new(&net, queue);
    let mut pacer = Pacer::default();
    loop {
        let r = port
            .sock
            .async_io(Interest::READABLE, || {
                batch.recv_from(&port.state, (&port.sock).into())
            })
            .await;
        let n = match r {
            Ok(n) => n,
            Err(e) => {
                // ICMP errors and the like surface here; the socket itself is fine.
                tracing::trace!(error = %e, "udp receive error");
                continue;
            }
        };
        let now = Instant::now();
        for d in batch.datagrams() {
            let from = Endpoint {
                addr: d.from,
                local: d.local,
                via: Via::Udp,
            };
            engine.handle_datagram(from, d.data, now, &mut bufs, &sink);
        }
        sink.flush().await;
        if let Some(pause) = pacer.handle_read(n, Instant::now()) {
            // A plain sleep: it holds this worker for a fraction of a millisecond (tokio's
            // timers are millisecond-grained) while the runtime's other workers go on.
            std::thread::sleep(pause);
        }
    }
}

/// The coalescing wait between UDP reads. Under a steady flow that the hub outpaces, each
/// `recvmmsg` finds only a couple of datagrams and every wake-up costs more than the packets
/// it brings; a short pause lets a batch build up, so GRO writes bigger super-packets and the
/// task wakes less often (benches/tunnel, device→hub→internet: about 10% less hub CPU per
/// GB, TUN writes 15k/s → 5k/s). Only while busy: a lone packet (a ping, a DNS query) never
/// waits.
#[derive(Debug, Default)]
pub struct Pacer {
    busy: u32,
    last_read: Option<std::time::Instant>,
}

/// Reads closer together than this count as one flow.
const BUSY_GAP: Duration = Duration::from_micros(500);
/// Back-to-back reads before the coalescing wait starts.
const BUSY_READS: u32 = 8;
/// The coalescing wait (the kernel adds its timer slack, ~50 µs).
const COALESCE_WAIT: Duration = Duration::from_micros(150);

impl Pacer {
    /// A read returned `n` datagrams at `now`: how long to pause before the next one.
    pub fn handle_read(&mut self, n: usize, now: std::time::Instant) -> Option<Duration> {
        let close = self
            .last_read
            .is_some_and(|t| now.saturating_duration_since(t) < BUSY_GAP);
        self.busy = if n > 0 && close {
            self.busy.saturating_add(1)
        } else {
            0
        };
        self.last_read = Some(now);
        // A full batch means the socket has plenty queued: read on at once.
        (self.busy >= BUSY_READS && n < BATCH_SIZE / 2).then_some(COALESCE_WAIT)
    }
}

/// Reads packet batches from TUN queue `queue` into the engine.
pub async fn tun_task(net: Arc<NetSink>, queue: usize, engine: Arc<Engine>, mtu: u16) {
    let seg = (usize::from(mtu) + 128).max(2048);
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + MAX_PACKET];
    let mut segs: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE).map(|_| vec![0u8; seg]).collect();
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut bufs = Bufs::default();
    let mut sink = BatchSink::new(&net, queue);
    let tun = net.tun_queue(queue);
    let mut errors = 0u32;
    loop {
        let n = match tun
            .recv_multiple(&mut original, &mut segs, &mut sizes, 0)
            .await
        {
            Ok(n) => {
                errors = 0;
                n
            }
            Err(e) => {
                // A malformed offload packet is dropped; a TUN that keeps failing is gone.
                errors += 1;
                tracing::trace!(error = %e, "tun read error");
                if errors > 1000 {
                    tracing::error!(error = %e, "tun read keeps failing; hub data plane stopped");
                    return;
                }
                continue;
            }
        };
        let now = Instant::now();
        for (s, &len) in segs.iter().zip(&sizes).take(n) {
            engine.handle_tun_packet(&s[..len.min(s.len())], now, &mut bufs, &sink);
        }
        sink.flush().await;
    }
}

/// Drives session timers.
pub async fn timer_task(engine: Arc<Engine>, net: Arc<NetSink>) {
    let mut bufs = Bufs::default();
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        engine.poll_timers(Instant::now(), &mut bufs, &*net);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_port_is_shared_by_our_sockets_and_never_with_another_program() {
        // Another program holds a port: an error, not a share.
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let taken = other.local_addr().unwrap();
        assert!(bind_udp(taken, 2).is_err());
        drop(other);
        // A free port: two sockets on it, each receiving.
        let socks = bind_udp(taken, 2).unwrap();
        assert_eq!(socks.len(), 2);
        for s in &socks {
            assert_eq!(s.sock.local_addr().unwrap(), taken);
        }
        // And nobody else joins them.
        assert!(std::net::UdpSocket::bind(taken).is_err());
    }

    #[test]
    fn a_steady_flow_gets_the_coalescing_wait_and_lone_packets_never_do() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        // Pings 10 ms apart: never.
        for i in 0..20 {
            assert_eq!(p.handle_read(1, t0 + Duration::from_millis(10 * i)), None);
        }
        // Reads 50 µs apart with a few datagrams each: after BUSY_READS of them.
        let t1 = t0 + Duration::from_secs(1);
        let waits: Vec<_> = (0..12)
            .map(|i| p.handle_read(3, t1 + Duration::from_micros(50 * i)))
            .collect();
        assert!(waits[..BUSY_READS as usize].iter().all(Option::is_none));
        assert_eq!(waits[BUSY_READS as usize + 1], Some(COALESCE_WAIT));
        // A full batch is read on at once; a gap ends the busy spell.
        let t2 = t1 + Duration::from_micros(600);
        assert_eq!(p.handle_read(BATCH_SIZE, t2), None);
        assert_eq!(p.handle_read(3, t2 + Duration::from_millis(5)), None);
        assert_eq!(p.handle_read(3, t2 + Duration::from_micros(5050)), None);
    }
}
