//! The UDP receive/answer loop: a blocking thread per socket that takes up to [`BATCH`]
//! datagrams per `recvmmsg` and sends the answers with one `sendmmsg`, so a busy resolver pays
//! two system calls per batch instead of two per query (FIELD-NOTES: per-packet system calls,
//! not work, bound throughput on this machine). With a `udp://` upstream asked first, each
//! listener also forwards its misses itself (`ForwardLane`). Both drive the one resolver core
//! (`dns::engine`): a query's [`Step`] is finished here when the upstream answers this thread,
//! and by [`DnsService::finish`] on the async runtime otherwise. Both drive the one resolver core
//! (`dns::engine`): a query's [`Step`] is finished here when the upstream answers this thread,
//! and by [`DnsService::finish`] on the async runtime otherwise.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::{Pending, Step, Transport};
use super::service::DnsService;
use super::udp_client;
use super::upstream::UpstreamAnswer;

/// Datagrams taken per system call.
pub const BATCH: usize = 32;
/// Largest query read (bigger datagrams are truncated and answered FORMERR or dropped).
const BUF: usize = 4096;

fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Sends one datagram without blocking (used from async tasks; a full buffer drops it, as
/// the network would).
pub fn send_nonblocking(sock: &std::net::UdpSocket, data: &[u8], to: SocketAddr) {
    let ss = socket2::SockAddr::from(to);
    // SAFETY: fd is a valid socket for the life of `sock`; pointers are to live buffers with
    // the lengths given.
    unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_DONTWAIT,
            ss.as_ptr() as *const libc::sockaddr,
            ss.len(),
        );
    }
}

/// A miss this listener sent upstream itself: whom to answer, and the resolver's token.
struct Forwarded {
    client: libc::sockaddr_storage,
    client_len: libc::socklen_t,
    peer: SocketAddr,
    pending: Box<Pending>,
}

/// The listener's own upstream socket: misses (cache misses that are neither local nor
/// blocked) are sent from here and their answers read in the same loop, so a forwarded query
/// never waits for the async runtime to be scheduled (the tail of the latency at a fixed
/// rate is made of these). Truncated and failed answers go to the async path (TCP, fail-over
/// to the other upstreams); a query unanswered within the upstream timeout too.
struct ForwardLane {
    sock: std::net::UdpSocket,
    upstream: SocketAddr,
    timeout: Duration,
    in_flight: udp_client::InFlight<Forwarded>,
    last_sweep: Instant,
}

impl ForwardLane {
    fn open(upstream: SocketAddr, timeout: Duration) -> std::io::Result<ForwardLane> {
        let bind: SocketAddr = if upstream.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = std::net::UdpSocket::bind(bind)?;
        sock.connect(upstream)?;
        sock.set_nonblocking(true)?;
        Ok(ForwardLane {
            sock,
            upstream,
            timeout,
            in_flight: udp_client::InFlight::default(),
            last_sweep: Instant::now(),
        })
    }

    /// Sends the question of `pending` upstream for the client at `client` at `now`; gives
    /// the token back when it could not be taken.
    fn send(
        &mut self,
        pending: Box<Pending>,
        client: (libc::sockaddr_storage, libc::socklen_t, SocketAddr),
        now: Instant,
        msg: &mut Vec<u8>,
        question: &mut Vec<u8>,
    ) -> Result<(), Box<Pending>> {
        question.clear();
        pending.put_question(question);
        let f = Forwarded {
            client: client.0,
            client_len: client.1,
            peer: client.2,
            pending,
        };
        let id = self
            .in_flight
            .insert(question, f, now)
            .map_err(|f| f.pending)?;
        msg.clear();
        udp_client::put_query(msg, id, question);
        if self.sock.send(msg).is_err() {
            let f = self.in_flight.remove(id).expect("just inserted");
            return Err(f.pending);
        }
        Ok(())
    }

    /// Queries that waited longer than the upstream timeout (checked a few times a second).
    fn expired(&mut self, now: Instant, out: &mut Vec<Forwarded>) {
        if now.duration_since(self.last_sweep) < Duration::from_millis(100) {
            return;
        }
        self.last_sweep = now;
        self.in_flight.expire(now, self.timeout, out);
    }
}

/// Hands a step to the async runtime, which finishes it and sends the answer. `skip` is an
/// upstream that already failed this query (the others are asked instead).
fn spawn_finish(
    rt: &tokio::runtime::Handle,
    service: &Arc<DnsService>,
    sock: &Arc<std::net::UdpSocket>,
    pending: Box<Pending>,
    peer: SocketAddr,
    skip: Option<SocketAddr>,
) {
    let (d, s) = (service.clone(), sock.clone());
    rt.spawn(async move {
        let out = Vec::with_capacity(512);
        if let Some(ans) = d.finish_skipping(Step::Ask(pending), out, skip).await {
            send_nonblocking(&s, &ans, peer);
        }
    });
}

/// Runs the loop on `sock` (blocking mode) until the process ends.
pub fn run(service: Arc<DnsService>, sock: Arc<std::net::UdpSocket>, rt: tokio::runtime::Handle) {
    let resolver = service.resolver();
    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; BUF]; BATCH];
    // SAFETY: sockaddr_storage and the C structs below are plain data; all-zero is valid.
    let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    // Room for a batch of answers from the cache plus a batch of forwarded answers.
    let mut outs: Vec<Vec<u8>> = (0..2 * BATCH).map(|_| Vec::with_capacity(BUF)).collect();
    let mut out_addrs: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; 2 * BATCH];
    let mut out_lens: Vec<libc::socklen_t> = vec![0; 2 * BATCH];
    let mut out_iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; 2 * BATCH];
    let mut out_msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; 2 * BATCH];
    let upstreams = service.upstreams();
    let mut lane =
        upstreams
            .preferred_udp()
            .and_then(|u| match ForwardLane::open(u, upstreams.timeout()) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::debug!(error = %e, "no forwarding socket in the UDP listener");
                    None
                }
            });
    let mut upstream_buf = vec![0u8; 65_535];
    let mut upstream_msg = Vec::with_capacity(512);
    let mut question = Vec::with_capacity(260);
    let mut late = Vec::new();
    loop {
        // With queries in flight, wait for either socket; otherwise block on the listener.
        let waiting = lane.as_ref().filter(|l| !l.in_flight.is_empty());
        let mut listener_ready = true;
        if let Some(l) = waiting {
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: l.sock.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: fds is a live array of two pollfd.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
            listener_ready = r > 0 && fds[0].revents != 0;
        }
        let blocking = waiting.is_none();
        let mut m = 0;
        let n = if listener_ready {
            for i in 0..BATCH {
                iov[i] = libc::iovec {
                    iov_base: bufs[i].as_mut_ptr() as *mut libc::c_void,
                    iov_len: BUF,
                };
                let h = &mut msgs[i].msg_hdr;
                h.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
                h.msg_iov = &mut iov[i];
                h.msg_iovlen = 1;
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
                h.msg_flags = 0;
                msgs[i].msg_len = 0;
            }
            // Blocking only when nothing is in flight (poll said the listener is readable
            // otherwise).
            let flags = if blocking {
                libc::MSG_WAITFORONE
            } else {
                libc::MSG_DONTWAIT
            };
            // SAFETY: msgs/iov/addrs/bufs are live, sized BATCH, and point at each other as
            // set up above.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    msgs.as_mut_ptr(),
                    BATCH as u32,
                    flags,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) {
                    tracing::trace!(error = %e, "udp receive error");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            n.max(0) as usize
        } else {
            0
        };
        // A lane is used only while its upstream is the one asked first (fail-over moved
        // on otherwise, and the general path follows it).
        let now = Instant::now();
        let mut usable = lane
            .as_mut()
            .filter(|l| upstreams.preferred_udp() == Some(l.upstream));
        for i in 0..n {
            let len = (msgs[i].msg_len as usize).min(BUF);
            let Some(peer) = to_socket_addr(&addrs[i]) else {
                continue;
            };
            let query = &bufs[i][..len];
            match resolver.handle_query(query, peer.ip(), Transport::Udp, now, &mut outs[m]) {
                Step::Answered => {
                    out_addrs[m] = addrs[i];
                    out_lens[m] = msgs[i].msg_hdr.msg_namelen;
                    m += 1;
                }
                Step::Drop => {}
                Step::Ask(p) => {
                    let client = (addrs[i], msgs[i].msg_hdr.msg_namelen, peer);
                    let sent = match usable.as_deref_mut() {
                        Some(l) => l.send(p, client, now, &mut upstream_msg, &mut question),
                        None => Err(p),
                    };
                    if let Err(p) = sent {
                        spawn_finish(&rt, &service, &sock, p, peer, None);
                    }
                }
            }
        }
        if let Some(l) = lane.as_mut() {
            // Answers from upstream, up to a batch of them per turn.
            while m < outs.len() {
                let Ok(len) = l.sock.recv(&mut upstream_buf) else {
                    break;
                };
                let Some((f, _)) = l.in_flight.take(&upstream_buf[..len]) else {
                    continue;
                };
                let answer = &upstream_buf[..len];
                let truncated = answer.get(2).is_some_and(|b| b & 0x02 != 0);
                let parsed = match truncated {
                    // Asked again over TCP by the pool.
                    true => Err(None),
                    // A failed answer: the other upstreams are asked.
                    false => UpstreamAnswer::from_wire(answer).map_err(|_| Some(l.upstream)),
                };
                let a = match parsed {
                    Ok(a) => a,
                    Err(skip) => {
                        spawn_finish(&rt, &service, &sock, f.pending, f.peer, skip);
                        continue;
                    }
                };
                match resolver.handle_upstream(f.pending, Ok(a), now, &mut outs[m]) {
                    Step::Answered => {
                        out_addrs[m] = f.client;
                        out_lens[m] = f.client_len;
                        m += 1;
                    }
                    Step::Drop => {}
                    // DNS64's second question goes out on this lane too.
                    Step::Ask(p) => {
                        let client = (f.client, f.client_len, f.peer);
                        if let Err(p) = l.send(p, client, now, &mut upstream_msg, &mut question) {
                            spawn_finish(&rt, &service, &sock, p, f.peer, None);
                        }
                    }
                }
            }
            l.expired(now, &mut late);
            for f in late.drain(..) {
                spawn_finish(&rt, &service, &sock, f.pending, f.peer, Some(l.upstream));
            }
        }
        if m == 0 {
            continue;
        }
        for j in 0..m {
            out_iov[j] = libc::iovec {
                iov_base: outs[j].as_mut_ptr() as *mut libc::c_void,
                iov_len: outs[j].len(),
            };
            let h = &mut out_msgs[j].msg_hdr;
            h.msg_name = &mut out_addrs[j] as *mut _ as *mut libc::c_void;
            h.msg_namelen = out_lens[j];
            h.msg_iov = &mut out_iov[j];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        let mut sent = 0;
        while sent < m {
            // SAFETY: out_msgs[sent..m] point at live buffers and addresses set up above.
            let r =
                unsafe { libc::sendmmsg(fd, out_msgs[sent..].as_mut_ptr(), (m - sent) as u32, 0) };
            if r <= 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // One bad destination (e.g. unreachable): skip it and go on.
                sent += 1;
                continue;
            }
            sent += r as usize;
        }
    }
}
