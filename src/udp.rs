//! The program's one batched-UDP stack: the hub's WireGuard ports, the resolver's DNS
//! listeners and the listeners' upstream sockets bind, receive and send through here.
//!
//! - [`bind`]: a socket with large buffers, quinn-udp's state (destination address of every
//!   datagram, GSO/GRO where the kernel has them; GRO only where asked).
//! - [`RecvBatch`]: one `recvmmsg` (quinn-udp) for up to [`BATCH_SIZE`] datagrams, GRO
//!   super-datagrams split back into their segments.
//! - [`try_send`]: one `sendmsg` of one destination's run of datagrams (GSO when `segment` is
//!   given) from a chosen source address (quinn-udp).
//! - [`SendBatch`]: one `sendmmsg` for datagrams to many destinations (the resolver's answers),
//!   each from the address its query came to. quinn-udp has no multi-destination send, so
//!   this one is written here.
//!
//! Per-packet system calls, not work, bound throughput on this machine kind (FIELD-NOTES):
//! that is why both the hub and the resolver read and write in batches.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

pub use quinn_udp::BATCH_SIZE;
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

/// How a socket is set up.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Receive and send buffer size asked for.
    pub buffer: usize,
    /// Get past the `net.core.[rw]mem_max` caps (needs CAP_NET_ADMIN; best effort).
    pub force_buffers: bool,
    /// SO_REUSEPORT: several sockets (one per thread) share the address.
    pub reuse_port: bool,
    /// Let the kernel coalesce a flow's datagrams (UDP GRO): right for WireGuard's bulk
    /// flows, wrong for DNS, whose datagrams are small and each a message of its own.
    pub gro: bool,
}

/// A bound, non-blocking socket and its quinn-udp state.
pub struct Port {
    pub sock: std::net::UdpSocket,
    pub state: UdpSocketState,
}

impl Port {
    /// The socket quinn-udp works on.
    pub fn sock_ref(&self) -> UdpSockRef<'_> {
        (&self.sock).into()
    }
}

/// How many sockets (and threads) "one per core" means: the cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Binds `addr` (an IPv6 address only for IPv6) non-blocking with `opts`.
pub fn bind(addr: SocketAddr, opts: Options) -> io::Result<Port> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if opts.reuse_port {
        s.set_reuse_port(true)?;
    }
    // Best effort: the kernel caps these at net.core.[rw]mem_max unless we may force them.
    let _ = s.set_recv_buffer_size(opts.buffer);
    let _ = s.set_send_buffer_size(opts.buffer);
    if opts.force_buffers {
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            setsockopt_int(&s, libc::SOL_SOCKET, opt, opts.buffer as libc::c_int);
        }
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    let state = UdpSocketState::new((&s).into())?;
    if !opts.gro {
        // quinn-udp turns GRO on where the kernel has it.
        setsockopt_int(&s, libc::SOL_UDP, UDP_GRO, 0);
    }
    // quinn-udp asks for more per-datagram control messages than we read: no receive
    // timestamps and no ECN marks; and a socket bound to one address needs no destination
    // address either (its answers leave from that address). Each one costs the kernel and
    // `recvmmsg`'s decoding for every datagram.
    setsockopt_int(&s, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 0);
    if addr.is_ipv4() {
        setsockopt_int(&s, libc::IPPROTO_IP, libc::IP_RECVTOS, 0);
        if !addr.ip().is_unspecified() {
            setsockopt_int(&s, libc::IPPROTO_IP, libc::IP_PKTINFO, 0);
        }
    } else {
        setsockopt_int(&s, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 0);
        if !addr.ip().is_unspecified() {
            setsockopt_int(&s, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 0);
        }
    }
    Ok(Port {
        sock: s.into(),
        state,
    })
}

/// `UDP_GRO` from linux/udp.h (not in the libc crate for glibc targets).
const UDP_GRO: libc::c_int = 104;

fn setsockopt_int(s: &Socket, level: libc::c_int, opt: libc::c_int, v: libc::c_int) {
    // SAFETY: a valid fd and a pointer to a c_int of the stated size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// An IPv4-mapped IPv6 source as the IPv4 address it is.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        _ => a,
    }
}

/// One datagram of a received batch.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// Who sent it.
    pub from: SocketAddr,
    /// The address it was sent to (where the answer must come from), on a socket bound to a
    /// wildcard address; `None` on a socket bound to one address.
    pub local: Option<IpAddr>,
    pub data: &'a [u8],
}

/// Buffers for one `recvmmsg` of up to [`BATCH_SIZE`] datagrams.
pub struct RecvBatch {
    storage: Vec<Box<[u8]>>,
    meta: [RecvMeta; BATCH_SIZE],
    n: usize,
}

impl RecvBatch {
    /// Room for [`BATCH_SIZE`] datagrams (or GRO super-datagrams) of `slot` bytes each.
    pub fn new(slot: usize) -> RecvBatch {
        RecvBatch {
            storage: (0..BATCH_SIZE)
                .map(|_| vec![0u8; slot].into_boxed_slice())
                .collect(),
            meta: [RecvMeta::default(); BATCH_SIZE],
            n: 0,
        }
    }

    /// Reads what `port` has queued, up to a batch, without blocking: the number of
    /// datagrams read (a GRO super-datagram counts once), or `WouldBlock`.
    pub fn recv(&mut self, port: &Port) -> io::Result<usize> {
        self.recv_from(&port.state, port.sock_ref())
    }

    /// [`recv`](Self::recv) on a socket held elsewhere (e.g. inside tokio's).
    pub fn recv_from(&mut self, state: &UdpSocketState, sock: UdpSockRef<'_>) -> io::Result<usize> {
        self.n = 0;
        let mut it = self.storage.iter_mut();
        let mut slices: [IoSliceMut<'_>; BATCH_SIZE] =
            std::array::from_fn(|_| IoSliceMut::new(it.next().map_or(&mut [][..], |b| &mut b[..])));
        self.n = state.recv(sock, &mut slices, &mut self.meta)?;
        Ok(self.n)
    }

    /// The datagrams of the last read, GRO runs split into their segments.
    pub fn datagrams(&self) -> impl Iterator<Item = Datagram<'_>> {
        self.meta
            .iter()
            .zip(&self.storage)
            .take(self.n)
            .flat_map(|(m, buf)| {
                let data = &buf[..m.len.min(buf.len())];
                let stride = if m.stride == 0 { data.len() } else { m.stride };
                let (from, local) = (unmap(m.addr), m.dst_ip);
                data.chunks(stride.max(1))
                    .map(move |data| Datagram { from, local, data })
            })
    }
}

/// Sends `data` to `to` from `src` (the system's choice when `None`) in one `sendmsg`: one
/// datagram, or with `segment` a GSO run of `segment`-byte datagrams (the last may be
/// shorter; the caller checks [`UdpSocketState::max_gso_segments`]). Never blocks.
pub fn try_send(
    state: &UdpSocketState,
    sock: UdpSockRef<'_>,
    to: SocketAddr,
    src: Option<IpAddr>,
    data: &[u8],
    segment: Option<usize>,
) -> io::Result<()> {
    let t = Transmit {
        destination: to,
        ecn: None,
        contents: data,
        segment_size: segment,
        src_ip: src,
    };
    state.try_send(sock, &t)
}

/// Control-message room for one source address (an `in6_pktinfo`, the bigger of the two).
const CMSG_ROOM: usize = 64;

/// Datagrams to many destinations, queued and then sent with one `sendmmsg`.
pub struct SendBatch {
    bufs: Vec<Vec<u8>>,
    to: Vec<socket2::SockAddr>,
    src: Vec<Option<IpAddr>>,
    ctrl: Vec<[u64; CMSG_ROOM / 8]>,
    n: usize,
}

impl SendBatch {
    /// Room for `cap` datagrams of about `size` bytes.
    pub fn new(cap: usize, size: usize) -> SendBatch {
        let any = socket2::SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        SendBatch {
            bufs: (0..cap).map(|_| Vec::with_capacity(size)).collect(),
            to: vec![any; cap],
            src: vec![None; cap],
            ctrl: vec![[0; CMSG_ROOM / 8]; cap],
            n: 0,
        }
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// True when no more can be queued before a [`flush`](Self::flush).
    pub fn is_full(&self) -> bool {
        self.n == self.bufs.len()
    }

    /// The (cleared) buffer of the next datagram; it is queued by [`push`](Self::push), and
    /// left out otherwise. Panics when full.
    pub fn next_buf(&mut self) -> &mut Vec<u8> {
        let b = &mut self.bufs[self.n];
        b.clear();
        b
    }

    /// Queues what was written into [`next_buf`](Self::next_buf) for `to`, from `src`.
    pub fn push(&mut self, to: SocketAddr, src: Option<IpAddr>) {
        self.to[self.n] = to.into();
        self.src[self.n] = src;
        self.n += 1;
    }

    /// Sends everything queued from `port` (a destination that fails is skipped) and empties
    /// the batch.
    pub fn flush(&mut self, port: &Port) {
        let m = self.n;
        self.n = 0;
        if m == 0 {
            return;
        }
        // SAFETY: the C structs are plain data; all-zero is valid for each.
        let mut iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; m];
        let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; m];
        for j in 0..m {
            iov[j] = libc::iovec {
                iov_base: self.bufs[j].as_ptr() as *mut libc::c_void,
                iov_len: self.bufs[j].len(),
            };
            let h = &mut msgs[j].msg_hdr;
            h.msg_name = self.to[j].as_ptr() as *mut libc::c_void;
            h.msg_namelen = self.to[j].len();
            h.msg_iov = &mut iov[j];
            h.msg_iovlen = 1;
            if let Some(src) = self.src[j] {
                h.msg_control = self.ctrl[j].as_mut_ptr().cast();
                h.msg_controllen = CMSG_ROOM as _;
                // SAFETY: the control buffer is CMSG_ROOM bytes, aligned, and big enough
                // for one pktinfo message of either family.
                h.msg_controllen = unsafe { put_source(h, src) } as _;
            }
        }
        let fd = port.sock.as_raw_fd();
        let mut sent = 0;
        while sent < m {
            // SAFETY: msgs[sent..m] point at live buffers, addresses and control data.
            let r = unsafe { libc::sendmmsg(fd, msgs[sent..].as_mut_ptr(), (m - sent) as u32, 0) };
            if r <= 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // One bad destination (unreachable, or the buffer is full): skip it.
                sent += 1;
                continue;
            }
            sent += r as usize;
        }
    }
}

/// Writes an IP_PKTINFO / IPV6_PKTINFO message naming `src` as the source address into
/// `h`'s control buffer; returns the control length used.
///
/// # Safety
/// `h.msg_control` must point at `h.msg_controllen` writable, cmsghdr-aligned bytes, at
/// least `CMSG_SPACE(sizeof(in6_pktinfo))` of them.
unsafe fn put_source(h: &mut libc::msghdr, src: IpAddr) -> usize {
    let c = libc::CMSG_FIRSTHDR(h);
    match src {
        IpAddr::V4(v4) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            let len = std::mem::size_of::<libc::in_pktinfo>() as u32;
            (*c).cmsg_level = libc::IPPROTO_IP;
            (*c).cmsg_type = libc::IP_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(len) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
            libc::CMSG_SPACE(len) as usize
        }
        IpAddr::V6(v6) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                ipi6_ifindex: 0,
            };
            let len = std::mem::size_of::<libc::in6_pktinfo>() as u32;
            (*c).cmsg_level = libc::IPPROTO_IPV6;
            (*c).cmsg_type = libc::IPV6_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(len) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
            libc::CMSG_SPACE(len) as usize
        }
    }
}

/// Waits until one of `fds` is readable or `timeout_ms` passed (-1: no limit); for the
/// blocking threads that drive non-blocking sockets.
pub fn wait_readable(fds: &[&Port], timeout_ms: i32) {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|port| libc::pollfd {
            fd: port.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: p is a live array of p.len() pollfd.
    unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(addr: &str) -> Port {
        let opts = Options {
            buffer: 1 << 20,
            force_buffers: false,
            reuse_port: false,
            gro: false,
        };
        bind(addr.parse().unwrap(), opts).unwrap()
    }

    /// Datagrams to several destinations leave in one batch, each from the address its
    /// sender asked for, and are read back in one batch with their addresses.
    #[test]
    fn a_batch_goes_out_to_many_destinations_and_comes_back_with_addresses() {
        // The receivers are bound to the wildcard address, so they learn where each datagram
        // was sent to.
        for (a, any, lo) in [
            ("127.0.0.1:0", "0.0.0.0:0", "127.0.0.1"),
            ("[::1]:0", "[::]:0", "::1"),
        ] {
            let (server, x, y) = (port(a), port(any), port(any));
            let server_addr = server.sock.local_addr().unwrap();
            let lo: IpAddr = lo.parse().unwrap();
            let to = |p: &Port| SocketAddr::new(lo, p.sock.local_addr().unwrap().port());
            let mut out = SendBatch::new(4, 64);
            for (i, dest) in [&x, &y, &x].iter().enumerate() {
                out.next_buf()
                    .extend_from_slice(format!("answer {i}").as_bytes());
                out.push(to(dest), Some(server_addr.ip()));
            }
            // A buffer written but not pushed is not sent.
            out.next_buf().extend_from_slice(b"dropped");
            assert_eq!(out.len(), 3);
            out.flush(&server);
            assert!(out.is_empty());
            let mut got = Vec::new();
            for p in [&x, &y] {
                let mut r = RecvBatch::new(2048);
                wait_readable(&[p], 1000);
                let n = r.recv(p).unwrap();
                assert!(n >= 1);
                for d in r.datagrams() {
                    assert_eq!(d.from, server_addr);
                    assert_eq!(d.local, Some(lo));
                    got.push(String::from_utf8(d.data.to_vec()).unwrap());
                }
                // x got two: read the rest if the first read took one.
                if n == 1 && std::ptr::eq(p, &x) {
                    wait_readable(&[p], 1000);
                    r.recv(p).unwrap();
                    got.extend(
                        r.datagrams()
                            .map(|d| String::from_utf8_lossy(d.data).into()),
                    );
                }
            }
            got.sort();
            assert_eq!(got, ["answer 0", "answer 1", "answer 2"]);
            // A socket bound to one address is not told it (its answers leave from there).
            let mut one = SendBatch::new(1, 64);
            one.next_buf().push(1);
            one.push(server_addr, None);
            one.flush(&x);
            let mut r = RecvBatch::new(2048);
            wait_readable(&[&server], 1000);
            assert_eq!(r.recv(&server).unwrap(), 1);
            let d = r.datagrams().next().unwrap();
            assert_eq!((d.from, d.local, d.data), (to(&x), None, &[1u8][..]));
            // Nothing else is queued.
            let mut r = RecvBatch::new(2048);
            assert_eq!(r.recv(&x).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        }
    }

    /// A GSO run of one `sendmsg` arrives as separate datagrams.
    #[test]
    fn a_gso_run_arrives_as_its_datagrams() {
        let (a, b) = (port("127.0.0.1:0"), port("127.0.0.1:0"));
        let to = b.sock.local_addr().unwrap();
        let data: Vec<u8> = (0..250u8).collect();
        let segment = (a.state.max_gso_segments() > 1).then_some(100);
        if segment.is_some() {
            try_send(&a.state, a.sock_ref(), to, None, &data, segment).unwrap();
        } else {
            for c in data.chunks(100) {
                try_send(&a.state, a.sock_ref(), to, None, c, None).unwrap();
            }
        }
        let mut r = RecvBatch::new(4096);
        let mut lens = Vec::new();
        while lens.iter().sum::<usize>() < data.len() {
            wait_readable(&[&b], 1000);
            r.recv(&b).unwrap();
            lens.extend(r.datagrams().map(|d| d.data.len()));
        }
        assert_eq!(lens, [100, 100, 50]);
    }
}
