//! Moving bytes: UDP (RFC 1035), TCP and DoT (RFC 7766 / RFC 7858: pipelining, out-of-order
//! answers, idle timeouts). The answers come from [`DnsService`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use super::engine::Transport;
use super::service::DnsService;
use super::slots::ConnSlots;
use super::stats::Protocol;
use super::tokens::Asker;

/// Most TCP/DoT/DoH connections served at once (of them at most
/// [`slots::PER_ADDRESS`](super::slots::PER_ADDRESS) from one address).
pub const MAX_CONNECTIONS: usize = 1024;
/// Most queries in flight on one connection (RFC 7766 §6.2.1.1 pipelining).
const MAX_IN_FLIGHT: usize = 32;
/// Time allowed for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Socket buffer size asked for on UDP sockets (bursts of queries are short-lived).
const UDP_BUFFER: usize = 4 << 20;

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding failed (port in use, no permission for port < 1024, address not local).
    #[error(
        "cannot listen on {addr}: {cause} (port 53/853/443 need root or CAP_NET_BIND_SERVICE)"
    )]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
}

/// Binds one of the UDP listener sockets of `addr` (SO_REUSEPORT: one per thread).
fn bind_udp(addr: SocketAddr) -> std::io::Result<crate::udp::Port> {
    let opts = crate::udp::Options {
        buffer: UDP_BUFFER,
        force_buffers: false,
        reuse_port: true,
        gro: false,
    };
    crate::udp::bind(addr, opts)
}

/// Serves UDP on `addr`: `threads` sockets (SO_REUSEPORT) and threads, 0 meaning one per core
/// the process may run on. Each thread receives and answers in batches (recvmmsg/sendmmsg),
/// answering cache hits and blocked names in place; queries that need an upstream go to the
/// async runtime and are answered from there.
pub fn serve_udp(
    service: Arc<DnsService>,
    addr: SocketAddr,
    threads: usize,
    rt: tokio::runtime::Handle,
) -> Result<(), ServeError> {
    let n = match threads {
        0 => crate::udp::cores(),
        n => n,
    };
    let mut sockets = Vec::new();
    for _ in 0..n {
        let s = bind_udp(addr).map_err(|cause| ServeError::Bind { addr, cause })?;
        sockets.push(Arc::new(s));
    }
    for sock in sockets {
        let (r, rt) = (service.clone(), rt.clone());
        std::thread::Builder::new()
            .name("dns-udp".into())
            .spawn(move || super::udp_batch::run(r, sock, rt))
            .map_err(|cause| ServeError::Bind { addr, cause })?;
    }
    Ok(())
}

/// Binds a TCP listener.
pub async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let make = || -> std::io::Result<TcpListener> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        TcpListener::from_std(s.into())
    };
    make().map_err(|cause| ServeError::Bind { addr, cause })
}

/// Accepts connections on `listener` and runs `serve_conn` for each on its own task, holding
/// a slot of `slots` until it ends. A connection for which no slot is free (all taken, or its
/// address holds its share) is closed at once. Every TCP listener of the program uses this.
pub fn accept_loop<F, Fut>(
    listener: TcpListener,
    slots: Arc<ConnSlots>,
    serve_conn: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let slot = match slots.try_acquire(peer.ip()) {
                Ok(s) => s,
                Err(why) => {
                    tracing::trace!(?why, "connection refused: no slot");
                    drop(tcp);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let conn = serve_conn(tcp, peer);
            tokio::spawn(async move {
                let _slot = slot;
                conn.await
            });
        }
    })
}

/// Completes a TLS handshake within `HANDSHAKE_TIMEOUT`.
pub async fn tls_handshake(
    acc: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acc.accept(tcp)).await {
        Ok(Ok(s)) => Some(s),
        _ => None,
    }
}

/// Serves plain DNS over TCP (or DoT when `tls` is given) on `listener`.
pub fn serve_stream(
    service: Arc<DnsService>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    idle: Duration,
    slots: Arc<ConnSlots>,
) {
    accept_loop(listener, slots, move |tcp, peer| {
        let (r, tls) = (service.clone(), tls.clone());
        async move {
            match tls {
                None => handle_stream(r, tcp, Asker::Address(peer.ip()), idle, Protocol::Tcp).await,
                Some(acc) => {
                    if let Some(s) = tls_handshake(&acc, tcp).await {
                        // A token in the server name names the device (DoT off the tunnel).
                        let sni = s.get_ref().1.server_name();
                        let asker = r.tokens().judge(r.tokens().token_of_sni(sni), peer.ip());
                        handle_stream(r, s, asker, idle, Protocol::Tls).await
                    }
                }
            }
        }
    });
}

/// One DNS-over-stream connection: length-prefixed messages, answered concurrently and
/// written as they finish. Closed after `idle` without a new query, or when a peer sends a
/// length prefix and stalls.
pub async fn handle_stream<S>(
    service: Arc<DnsService>,
    stream: S,
    asker: Asker,
    idle: Duration,
    proto: Protocol,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let Ok(len) = u16::try_from(msg.len()) else {
                continue;
            };
            let mut framed = Vec::with_capacity(msg.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&msg);
            if wr.write_all(&framed).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let len = match tokio::time::timeout(idle, rd.read_u16()).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => n as usize,
        };
        let mut msg = vec![0u8; len];
        match tokio::time::timeout(idle, rd.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        service.resolver().stats.count_protocol(proto);
        let (r, tx) = (service.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(ans) = r.answer_as(&msg, asker, Transport::Stream).await {
                let _ = tx.send(ans).await;
            }
        });
    }
    drop(tx);
    let _ = writer.await;
}
