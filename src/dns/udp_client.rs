//! A plain-DNS UDP client for `udp://` upstreams that keeps a few long-lived sockets instead of
//! opening one per query.
//!
//! Measured with strace under dnsperf: the general client spends seven system calls per
//! forwarded query (socket, bind, two epoll_ctl, sendto, recvfrom, close); this one spends one
//! send and a share of one receive. Answers are matched by id *and* question (RFC 5452 §9.1);
//! ids are random. Truncated answers are reported so the caller can retry over TCP.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use super::engine::Pending as EnginePending;

/// Sockets per upstream (each has its own kernel-chosen source port).
const SOCKETS: usize = 4;

/// Why a UDP exchange failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UdpClientError {
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The answer did not fit (TC bit): ask again over TCP.
    #[error("truncated answer")]
    Truncated,
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(String),
}

/// Most queries in flight to one upstream (over all of its sockets).
pub const MAX_IN_FLIGHT: usize = 4096;

/// The queries sent on one upstream socket and not answered yet, with whatever waits for each
/// (`W`): ids are random and unique among them, and an answer is taken only when it repeats
/// its query's question (RFC 5452 §9.1). Both the async client here and the UDP listeners'
/// own forwarding (`dns::udp_batch`) keep theirs in one of these; time comes from the caller.
pub struct InFlight<W> {
    map: HashMap<u16, Slot<W>>,
}

struct Slot<W> {
    question: Box<[u8]>,
    sent: Instant,
    waiter: W,
}

impl<W> Default for InFlight<W> {
    fn default() -> Self {
        InFlight {
            map: HashMap::new(),
        }
    }
}

impl<W> InFlight<W> {
    /// Number of queries waiting.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Registers `question` (from [`put_question`]) sent at `now`; returns the id to send it
    /// with, or gives `waiter` back when [`MAX_IN_FLIGHT`] queries wait or no free id was found.
    pub fn insert(&mut self, question: &[u8], waiter: W, now: Instant) -> Result<u16, W> {
        if self.map.len() >= MAX_IN_FLIGHT {
            return Err(waiter);
        }
        for _ in 0..16 {
            let id: u16 = rand::random();
            if let std::collections::hash_map::Entry::Vacant(v) = self.map.entry(id) {
                v.insert(Slot {
                    question: question.into(),
                    sent: now,
                    waiter,
                });
                return Ok(id);
            }
        }
        Err(waiter)
    }

    /// Takes the waiter of the query that `answer` answers (its id and its question), with
    /// when the query was sent; `None` when the datagram answers nothing of ours.
    pub fn take(&mut self, answer: &[u8]) -> Option<(W, Instant)> {
        self.take_if(answer, |_| true)
    }

    /// Like [`take`](Self::take), but only when `mine` says the waiter is this reader's (a
    /// table shared by several sockets takes an answer only on the socket its query left by).
    pub fn take_if(&mut self, answer: &[u8], mine: impl Fn(&W) -> bool) -> Option<(W, Instant)> {
        let id = answer_id(answer)?;
        let slot = self.map.get(&id)?;
        if !answers_question(answer, &slot.question) || !mine(&slot.waiter) {
            return None;
        }
        self.map.remove(&id).map(|s| (s.waiter, s.sent))
    }

    /// Forgets query `id` (its waiter gave up).
    pub fn remove(&mut self, id: u16) -> Option<W> {
        self.map.remove(&id).map(|s| s.waiter)
    }

    /// Moves the waiters of queries sent `timeout` or longer before `now` into `out`.
    pub fn expire(&mut self, now: Instant, timeout: Duration, out: &mut Vec<W>) {
        self.expire_if(now, timeout, |_| true, out)
    }

    /// Like [`expire`](Self::expire), for the waiters `mine` says are this reader's only.
    pub fn expire_if(
        &mut self,
        now: Instant,
        timeout: Duration,
        mine: impl Fn(&W) -> bool,
        out: &mut Vec<W>,
    ) {
        let late: Vec<u16> = self
            .map
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.sent) >= timeout && mine(&s.waiter))
            .map(|(id, _)| *id)
            .collect();
        out.extend(late.iter().filter_map(|id| self.remove(*id)));
    }
}

/// A miss a UDP listener thread forwarded itself (`dns::udp_batch`): whom to answer, from
/// which address, and the resolver's token.
pub struct Forwarded {
    pub client: SocketAddr,
    pub local: Option<IpAddr>,
    pub pending: Box<EnginePending>,
}

/// What waits for an answer: a task of the async client, or a listener thread.
enum Waiter {
    Task(oneshot::Sender<Vec<u8>>),
    Listener(Forwarded),
}

/// The one table of an upstream's queries: the socket each left by, and what waits for it.
type Table = Mutex<InFlight<(usize, Waiter)>>;

/// A socket of a UDP listener thread connected to one upstream, sharing that upstream's one
/// in-flight table with the async client's sockets ([`UdpClient::listener_socket`]). Only its
/// thread reads it: answers are taken only for the queries that left by it.
pub struct ListenerSocket {
    pub port: crate::udp::Port,
    index: usize,
    table: Arc<Table>,
    upstream: SocketAddr,
    waiting: usize,
}

impl ListenerSocket {
    /// The upstream this socket is connected to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// True while queries sent on this socket wait for an answer.
    pub fn is_waiting(&self) -> bool {
        self.waiting > 0
    }

    /// Sends `question` (from [`put_question`]) for `f` at `now` (`msg` is scratch room);
    /// gives `f` back when the table is full or the send failed.
    pub fn send(
        &mut self,
        question: &[u8],
        f: Forwarded,
        now: Instant,
        msg: &mut Vec<u8>,
    ) -> Result<(), Forwarded> {
        let back = |w: (usize, Waiter)| match w.1 {
            Waiter::Listener(f) => f,
            Waiter::Task(_) => unreachable!("a listener inserts only its own"),
        };
        let id = self
            .table
            .lock()
            .insert(question, (self.index, Waiter::Listener(f)), now)
            .map_err(back)?;
        msg.clear();
        put_query(msg, id, question);
        if self.port.sock.send(msg).is_err() {
            let w = self.table.lock().remove(id).expect("just inserted");
            return Err(back(w));
        }
        self.waiting += 1;
        Ok(())
    }

    /// The forwarded query that `answer` (read from this socket) answers, and when it was
    /// sent.
    pub fn take(&mut self, answer: &[u8]) -> Option<(Forwarded, Instant)> {
        let index = self.index;
        let taken = self.table.lock().take_if(answer, |w| w.0 == index);
        match taken {
            Some(((_, Waiter::Listener(f)), sent)) => {
                self.waiting -= 1;
                Some((f, sent))
            }
            _ => None,
        }
    }

    /// Moves this socket's queries sent `timeout` or longer before `now` into `out`.
    pub fn expire(&mut self, now: Instant, timeout: Duration, out: &mut Vec<Forwarded>) {
        let index = self.index;
        let mut late = Vec::new();
        self.table
            .lock()
            .expire_if(now, timeout, |w| w.0 == index, &mut late);
        self.waiting -= late.len();
        out.extend(late.into_iter().filter_map(|w| match w.1 {
            Waiter::Listener(f) => Some(f),
            Waiter::Task(_) => None,
        }));
    }
}

/// A client for one upstream address.
pub struct UdpClient {
    sockets: Vec<Arc<UdpSocket>>,
    table: Arc<Table>,
    next: AtomicUsize,
    /// Index of the next listener socket (after the client's own).
    next_listener: AtomicUsize,
    upstream: SocketAddr,
}

impl UdpClient {
    /// Opens the sockets (connected to `upstream`) and starts their readers.
    pub async fn new(upstream: SocketAddr) -> Result<UdpClient, UdpClientError> {
        let mut sockets = Vec::new();
        // One table for all of this upstream's sockets: ids are unique per upstream.
        let table: Arc<Table> = Arc::new(Mutex::new(InFlight::default()));
        for index in 0..SOCKETS {
            let sock = UdpSocket::bind(any_for(upstream))
                .await
                .map_err(|e| UdpClientError::Io(e.to_string()))?;
            sock.connect(upstream)
                .await
                .map_err(|e| UdpClientError::Io(e.to_string()))?;
            let sock = Arc::new(sock);
            tokio::spawn(read_loop(sock.clone(), index, Arc::downgrade(&table)));
            sockets.push(sock);
        }
        Ok(UdpClient {
            sockets,
            table,
            next: AtomicUsize::new(0),
            next_listener: AtomicUsize::new(SOCKETS),
            upstream,
        })
    }

    /// Opens a socket to the upstream for a UDP listener thread, on the batched-UDP stack,
    /// sharing this upstream's in-flight table.
    pub fn listener_socket(&self) -> std::io::Result<ListenerSocket> {
        let opts = crate::udp::Options {
            buffer: 1 << 20,
            force_buffers: false,
            reuse_port: false,
            gro: false,
        };
        let port = crate::udp::bind(any_for(self.upstream), opts)?;
        port.sock.connect(self.upstream)?;
        Ok(ListenerSocket {
            port,
            index: self.next_listener.fetch_add(1, Ordering::Relaxed),
            table: self.table.clone(),
            upstream: self.upstream,
            waiting: 0,
        })
    }

    /// The upstream's address.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Sends a query for `qname` (wire labels) / `qtype` (class IN, RD, EDNS 1232) and waits
    /// up to `timeout` for the matching answer's bytes.
    pub async fn query(
        &self,
        qname: &[u8],
        qtype: u16,
        timeout: Duration,
    ) -> Result<Vec<u8>, UdpClientError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.sockets.len();
        let sock = &self.sockets[index];
        let mut question = Vec::with_capacity(qname.len() + 4);
        put_question(&mut question, qname, qtype);
        let (tx, rx) = oneshot::channel();
        let inserted =
            self.table
                .lock()
                .insert(&question, (index, Waiter::Task(tx)), Instant::now());
        let Ok(id) = inserted else {
            return Err(UdpClientError::Io("too many queries in flight".into()));
        };
        let mut msg = Vec::with_capacity(12 + question.len() + 11);
        put_query(&mut msg, id, &question);
        if let Err(e) = sock.send(&msg).await {
            self.table.lock().remove(id);
            return Err(UdpClientError::Io(e.to_string()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => {
                if answer.get(2).is_some_and(|f| f & 0x02 != 0) {
                    Err(UdpClientError::Truncated)
                } else {
                    Ok(answer)
                }
            }
            Ok(Err(_)) => Err(UdpClientError::Io("reader stopped".into())),
            Err(_) => {
                self.table.lock().remove(id);
                Err(UdpClientError::Timeout)
            }
        }
    }
}

/// The wildcard address of `upstream`'s family.
fn any_for(upstream: SocketAddr) -> SocketAddr {
    if upstream.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    }
}

async fn read_loop(sock: Arc<UdpSocket>, index: usize, pending: std::sync::Weak<Table>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let n = match sock.recv(&mut buf).await {
            Ok(n) => n,
            Err(_) => {
                // ICMP port unreachable and the like: keep reading (timeouts handle the query).
                if pending.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let Some(pending) = pending.upgrade() else {
            return;
        };
        let b = &buf[..n];
        let taken = pending.lock().take_if(b, |w| w.0 == index);
        if let Some(((_, Waiter::Task(tx)), _)) = taken {
            let _ = tx.send(b.to_vec());
        }
    }
}

/// The question section of a query: `qname` (wire labels, lower-cased here), `qtype`, IN.
pub fn put_question(out: &mut Vec<u8>, qname: &[u8], qtype: u16) {
    out.extend(qname.iter().map(u8::to_ascii_lowercase));
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&super::wire::CLASS_IN.to_be_bytes());
}

/// A recursive query with id `id` for `question` (from [`put_question`]), EDNS 1232.
pub fn put_query(out: &mut Vec<u8>, id: u16, question: &[u8]) {
    super::wire::put_header(out, id, 0x0100, [1, 0, 0, 1]);
    out.extend_from_slice(question);
    super::wire::put_opt(out, false);
}

/// The id of a datagram that looks like an answer (QR set, a whole header).
pub fn answer_id(b: &[u8]) -> Option<u16> {
    (b.len() >= 12 && b[2] & 0x80 != 0).then(|| u16::from_be_bytes([b[0], b[1]]))
}

/// True when answer `b` repeats `question` (case-insensitively): otherwise it is not ours
/// (RFC 5452 §9.1), whatever its id.
pub fn answers_question(b: &[u8], question: &[u8]) -> bool {
    let qd = b.get(4..6).map(|c| u16::from_be_bytes([c[0], c[1]]));
    qd == Some(1)
        && b.get(12..12 + question.len()).is_some_and(|q| {
            q.iter()
                .map(u8::to_ascii_lowercase)
                .eq(question.iter().copied())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: u16, question: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        super::super::wire::put_header(&mut a, id, 0x8180, [1, 0, 0, 0]);
        a.extend_from_slice(question);
        a
    }

    fn question(name: &[u8]) -> Vec<u8> {
        let mut q = Vec::new();
        put_question(&mut q, name, 1);
        q
    }

    #[test]
    fn answer_is_taken_by_id_and_question_only() {
        let now = Instant::now();
        let mut t = InFlight::default();
        let q = question(b"\x03www\x07example\x00");
        let id = t.insert(&q, "waiter", now).unwrap();
        // Right id, another question: a spoofing attempt, not ours.
        assert!(t.take(&answer(id, &question(b"\x03evil\x00"))).is_none());
        assert!(t.take(&answer(id.wrapping_add(1), &q)).is_none());
        // The question may come back in another case (0x20).
        let upper = answer(id, b"\x03WWW\x07EXAMPLE\x00\x00\x01\x00\x01");
        assert_eq!(t.take(&upper), Some(("waiter", now)));
        assert!(t.is_empty());
    }

    #[test]
    fn a_shared_table_takes_an_answer_only_on_its_socket() {
        let now = Instant::now();
        let mut t = InFlight::default();
        let q = question(b"\x01a\x00");
        let id = t.insert(&q, (1usize, "w"), now).unwrap();
        assert!(
            t.take_if(&answer(id, &q), |w| w.0 == 0).is_none(),
            "another socket"
        );
        assert_eq!(
            t.take_if(&answer(id, &q), |w| w.0 == 1),
            Some(((1, "w"), now))
        );
    }

    #[test]
    fn ids_are_unique_and_the_table_is_bounded() {
        let now = Instant::now();
        let mut t = InFlight::default();
        let q = question(b"\x01a\x00");
        let mut ids = std::collections::HashSet::new();
        for i in 0..MAX_IN_FLIGHT {
            match t.insert(&q, i, now) {
                Ok(id) => assert!(ids.insert(id), "ids in flight are unique"),
                Err(_) => break,
            }
        }
        assert!(t.len() > MAX_IN_FLIGHT / 2);
        while t.len() < MAX_IN_FLIGHT {
            let _ = t.insert(&q, 0, now);
        }
        assert_eq!(t.insert(&q, 7, now), Err(7), "full: the waiter comes back");
    }

    #[test]
    fn queries_expire_after_the_timeout() {
        let now = Instant::now();
        let mut t = InFlight::default();
        let q = question(b"\x01a\x00");
        t.insert(&q, 1, now).unwrap();
        t.insert(&q, 2, now + Duration::from_secs(1)).unwrap();
        let mut late = Vec::new();
        t.expire(
            now + Duration::from_millis(1999),
            Duration::from_secs(2),
            &mut late,
        );
        assert!(late.is_empty());
        t.expire(
            now + Duration::from_secs(2),
            Duration::from_secs(2),
            &mut late,
        );
        assert_eq!(late, vec![1]);
        assert_eq!(t.len(), 1);
    }
}
