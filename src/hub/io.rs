//! The hub's I/O: the UDP sockets, the TUN, and the tasks that move bytes between them and
//! the [`Engine`]. No decisions are made here.
//!
//! One task per UDP socket (IPv4, IPv6) and one for the TUN each own their [`Bufs`]; a timer
//! task drives session timers every 250 ms. Sends are non-blocking (`try_send`): when a socket
//! or the TUN queue is full the packet is dropped, as a router would, and TCP backs off.

use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tun_rs::AsyncDevice;

use super::engine::{Bufs, Engine, Sink, MAX_PACKET};
use crate::store::Overlay;

/// Socket buffer size asked for: a burst of a fast flow must not overflow the receive queue.
const SOCKET_BUFFER: usize = 8 << 20;
/// How often session timers run (boringtun's recommended tick).
pub const TIMER_TICK: Duration = Duration::from_millis(250);

/// The real outputs: both UDP sockets and the TUN.
pub struct NetSink {
    pub v4: Arc<UdpSocket>,
    pub v6: Option<Arc<UdpSocket>>,
    pub tun: Arc<AsyncDevice>,
    /// Packets dropped because a queue was full or a send failed.
    pub send_drops: AtomicU64,
}

impl Sink for NetSink {
    fn send_udp(&self, to: SocketAddr, datagram: &[u8]) {
        let sock = match to {
            SocketAddr::V4(_) => Some(&self.v4),
            SocketAddr::V6(_) => self.v6.as_ref(),
        };
        let ok = sock.is_some_and(|s| s.try_send_to(datagram, to).is_ok());
        if !ok {
            self.send_drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn write_tun(&self, pkt: &[u8]) {
        if self.tun.try_send(pkt).is_err() {
            self.send_drops.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Binds the WireGuard port on one family, with large buffers.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Best effort: the kernel caps these at net.core.[rw]mem_max unless we may force them.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    force_buffers(&s);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// SO_RCVBUFFORCE / SO_SNDBUFFORCE (CAP_NET_ADMIN) get past the sysctl caps.
fn force_buffers(s: &Socket) {
    use std::os::fd::AsRawFd;
    let v = SOCKET_BUFFER as libc::c_int;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: a valid fd and a pointer to a c_int of the stated size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// Creates the TUN carrying the hub's overlay addresses; the kernel adds the overlay routes
/// with the addresses (`hub_v4` in the IPv4 range, `hub_v6` in the IPv6 prefix).
pub fn create_tun(name: &str, overlay: &Overlay, mtu: u16) -> io::Result<AsyncDevice> {
    tun_rs::DeviceBuilder::new()
        .name(name)
        .mtu(mtu)
        .ipv4(overlay.hub_v4(), overlay.v4.prefix_len(), None)
        .ipv6(overlay.hub_v6(), overlay.v6.prefix_len())
        .build_async()
}

/// Reads datagrams from one socket into the engine until the socket fails.
pub async fn udp_task(sock: Arc<UdpSocket>, engine: Arc<Engine>, sink: Arc<NetSink>) {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut bufs = Bufs::default();
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let from = unmap(from);
                engine.handle_datagram(from, &buf[..n], &mut bufs, &*sink);
            }
            // ICMP errors surface as ECONNREFUSED and friends on the next read: not fatal.
            Err(e) if e.kind() != io::ErrorKind::NotConnected => {
                tracing::trace!(error = %e, "udp receive error");
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "udp socket failed");
                return;
            }
        }
    }
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        _ => a,
    }
}

/// Reads packets from the TUN into the engine until the TUN goes away.
pub async fn tun_task(tun: Arc<AsyncDevice>, engine: Arc<Engine>, sink: Arc<NetSink>) {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut bufs = Bufs::default();
    loop {
        match tun.recv(&mut buf).await {
            Ok(n) => engine.handle_tun_packet(&buf[..n], &mut bufs, &*sink),
            Err(e) => {
                tracing::error!(error = %e, "tun read failed");
                return;
            }
        }
    }
}

/// Drives session timers.
pub async fn timer_task(engine: Arc<Engine>, sink: Arc<NetSink>) {
    let mut bufs = Bufs::default();
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        engine.poll_timers(&mut bufs, &*sink);
    }
}

/// The IPv6 wildcard for the v6 socket.
pub const V6_ANY: Ipv6Addr = Ipv6Addr::UNSPECIFIED;
