//! The UDP receive/answer loop: a thread per socket that takes up to [`BATCH`] datagrams per
//! `recvmmsg` and sends the answers with one `sendmmsg`, so a busy resolver pays two system
//! calls per batch instead of two per query (FIELD-NOTES: per-packet system calls, not work,
//! bound throughput on this machine). Both go through the program's one batched-UDP stack
//! (`crate::udp`), and every answer leaves from the address its query came to. With a
//! `udp://` upstream asked first, each listener also forwards its misses itself, on a socket
//! that shares that upstream's one in-flight table (`udp_client::ListenerSocket`). Both drive
//! the one resolver core (`dns::engine`): a query's [`Step`] is finished here when the
//! upstream answers this thread, and by [`DnsService::finish`] on the async runtime otherwise
//! (truncated and failed answers: TCP, fail-over to the other upstreams; a query unanswered
//! within the upstream timeout too).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::{Pending, Step, Transport};
use super::service::DnsService;
use super::stats::Protocol;
use super::udp_client::{Forwarded, ListenerSocket};
use super::upstream::UpstreamAnswer;
use crate::udp::{Port, RecvBatch, SendBatch};

/// Datagrams taken per system call.
pub const BATCH: usize = crate::udp::BATCH_SIZE;
/// Largest query read (bigger datagrams are truncated and answered FORMERR or dropped).
const BUF: usize = 4096;
/// Largest upstream answer read.
const UPSTREAM_BUF: usize = 65_535;
/// How often forwarded queries are checked for the upstream timeout.
const SWEEP: Duration = Duration::from_millis(100);

/// Sends one datagram from `local` without blocking (used from async tasks; a full buffer
/// drops it, as the network would).
pub fn send_nonblocking(port: &Port, data: &[u8], to: SocketAddr, local: Option<IpAddr>) {
    let _ = crate::udp::try_send(&port.state, port.sock_ref(), to, local, data, None);
}

/// Sends the question of `pending` on `lane` for `client` (answered from `local`) at `now`;
/// gives the token back when it could not be taken.
fn forward(
    lane: &mut ListenerSocket,
    pending: Box<Pending>,
    client: SocketAddr,
    local: Option<IpAddr>,
    now: Instant,
    scratch: &mut (Vec<u8>, Vec<u8>),
) -> Result<(), Box<Pending>> {
    let (question, msg) = scratch;
    question.clear();
    pending.put_question(question);
    let f = Forwarded {
        client,
        local,
        pending,
    };
    lane.send(question, f, now, msg).map_err(|f| f.pending)
}

/// Hands a step to the async runtime, which finishes it and sends the answer. `skip` is an
/// upstream that already failed this query (the others are asked instead).
fn spawn_finish(
    rt: &tokio::runtime::Handle,
    service: &Arc<DnsService>,
    port: &Arc<Port>,
    pending: Box<Pending>,
    (peer, local): (SocketAddr, Option<IpAddr>),
    skip: Option<SocketAddr>,
) {
    let (d, p) = (service.clone(), port.clone());
    rt.spawn(async move {
        let out = Vec::with_capacity(512);
        if let Some(ans) = d.finish_skipping(Step::Ask(pending), out, skip).await {
            send_nonblocking(&p, &ans, peer, local);
        }
    });
}

/// Runs the loop on `port` until the process ends.
pub fn run(service: Arc<DnsService>, port: Arc<Port>, rt: tokio::runtime::Handle) {
    let resolver = service.resolver();
    let upstreams = service.upstreams();
    let mut queries = RecvBatch::new(BUF);
    // Room for a batch of answers from the cache plus a batch of forwarded answers.
    let mut out = SendBatch::new(2 * BATCH, BUF);
    let mut lane = upstreams
        .preferred_udp_client()
        .and_then(|c| match c.listener_socket() {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::debug!(error = %e, "no forwarding socket in the UDP listener");
                None
            }
        });
    let mut answers = RecvBatch::new(UPSTREAM_BUF);
    let mut scratch = (Vec::with_capacity(260), Vec::with_capacity(512));
    let mut late = Vec::new();
    let mut last_sweep = Instant::now();
    let mut idle = false;
    loop {
        if idle {
            // Nothing came last turn: wait for the listener, or for an answer while
            // queries are in flight (and then no longer than until the next sweep).
            match lane.as_ref().filter(|l| l.is_waiting()) {
                Some(l) => crate::udp::wait_readable(&[&port, &l.port], SWEEP.as_millis() as i32),
                None => crate::udp::wait_readable(&[&port], -1),
            }
        }
        let n = match queries.recv(&port) {
            Ok(n) => n,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) {
                    tracing::trace!(error = %e, "udp receive error");
                }
                0
            }
        };
        // A lane is used only while its upstream is the one asked first (fail-over moved
        // on otherwise, and the general path follows it).
        let now = Instant::now();
        let preferred = upstreams.preferred_udp();
        let mut usable = lane.as_mut().filter(|l| preferred == Some(l.upstream()));
        for q in queries.datagrams() {
            if out.is_full() {
                out.flush(&port);
            }
            let peer = q.from;
            resolver.stats.count_protocol(Protocol::Udp);
            match resolver.handle_query(q.data, peer.ip(), Transport::Udp, now, out.next_buf()) {
                Step::Answered => out.push(peer, q.local),
                Step::Drop => {}
                Step::Ask(p) => {
                    let sent = match usable.as_deref_mut() {
                        Some(l) => forward(l, p, peer, q.local, now, &mut scratch),
                        None => Err(p),
                    };
                    if let Err(p) = sent {
                        spawn_finish(&rt, &service, &port, p, (peer, q.local), None);
                    }
                }
            }
        }
        let mut got = 0;
        if let Some(l) = lane.as_mut() {
            // Answers from upstream, a batch of them per turn.
            got = answers.recv(&l.port).unwrap_or(0);
            for a in answers.datagrams() {
                let Some((f, sent)) = l.take(a.data) else {
                    continue;
                };
                let truncated = a.data.get(2).is_some_and(|b| b & 0x02 != 0);
                let parsed = match truncated {
                    // Asked again over TCP by the pool.
                    true => Err(None),
                    // A failed answer: the other upstreams are asked.
                    false => UpstreamAnswer::from_wire(a.data).map_err(|_| Some(l.upstream())),
                };
                let client = (f.client, f.local);
                // A truncated answer is a timely one (it is asked again over TCP).
                let outcome = match &parsed {
                    Ok(_) | Err(None) => Ok(now.saturating_duration_since(sent)),
                    Err(Some(_)) => Err(()),
                };
                upstreams.record_udp(l.upstream(), outcome);
                let answer = match parsed {
                    Ok(answer) => answer,
                    Err(skip) => {
                        spawn_finish(&rt, &service, &port, f.pending, client, skip);
                        continue;
                    }
                };
                if out.is_full() {
                    out.flush(&port);
                }
                match resolver.handle_upstream(f.pending, Ok(answer), now, out.next_buf()) {
                    Step::Answered => out.push(f.client, f.local),
                    Step::Drop => {}
                    // DNS64's second question goes out on this lane too.
                    Step::Ask(p) => {
                        if let Err(p) = forward(l, p, f.client, f.local, now, &mut scratch) {
                            spawn_finish(&rt, &service, &port, p, client, None);
                        }
                    }
                }
            }
            if now.duration_since(last_sweep) >= SWEEP {
                last_sweep = now;
                l.expire(now, upstreams.timeout(), &mut late);
                for f in late.drain(..) {
                    upstreams.record_udp(l.upstream(), Err(()));
                    let client = (f.client, f.local);
                    let skip = Some(l.upstream());
                    spawn_finish(&rt, &service, &port, f.pending, client, skip);
                }
            }
        }
        idle = n == 0 && got == 0;
        out.flush(&port);
    }
}
