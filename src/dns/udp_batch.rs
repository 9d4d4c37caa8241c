//! The UDP receive/answer loop: a blocking thread per socket that takes up to [`BATCH`]
//! datagrams per `recvmmsg` and sends the answers with one `sendmmsg`, so a busy resolver pays
//! two system calls per batch instead of two per query (FIELD-NOTES: per-packet system calls,
//! not work, bound throughput on this machine).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::engine::{Fast, Resolver, Transport};

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

/// Runs the loop on `sock` (blocking mode) until the process ends.
pub fn run(resolver: Arc<Resolver>, sock: Arc<std::net::UdpSocket>, rt: tokio::runtime::Handle) {
    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; BUF]; BATCH];
    // SAFETY: sockaddr_storage and the C structs below are plain data; all-zero is valid.
    let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(BUF)).collect();
    let mut out_addrs: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut out_lens: Vec<libc::socklen_t> = vec![0; BATCH];
    let mut out_iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut out_msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    loop {
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
        // SAFETY: msgs/iov/addrs/bufs are live, sized BATCH, and point at each other as set
        // up above.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::trace!(error = %e, "udp receive error");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            continue;
        }
        let mut m = 0;
        for i in 0..n as usize {
            let len = (msgs[i].msg_len as usize).min(BUF);
            let Some(peer) = to_socket_addr(&addrs[i]) else {
                continue;
            };
            let query = &bufs[i][..len];
            match resolver.handle_fast(query, peer.ip(), Transport::Udp, &mut outs[m]) {
                Fast::Answered => {
                    out_addrs[m] = addrs[i];
                    out_lens[m] = msgs[i].msg_hdr.msg_namelen;
                    m += 1;
                }
                Fast::Drop => {}
                Fast::Slow => {
                    let (r, s, q) = (resolver.clone(), sock.clone(), query.to_vec());
                    rt.spawn(async move {
                        let mut out = Vec::with_capacity(512);
                        r.handle_slow(&q, peer.ip(), Transport::Udp, &mut out).await;
                        if !out.is_empty() {
                            send_nonblocking(&s, &out, peer);
                        }
                    });
                }
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
