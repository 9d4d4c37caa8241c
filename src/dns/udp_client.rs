//! A plain-DNS UDP client for `udp://` upstreams that keeps a few long-lived sockets instead of
//! opening one per query.
//!
//! Measured with strace under dnsperf: the general client spends seven system calls per
//! forwarded query (socket, bind, two epoll_ctl, sendto, recvfrom, close); this one spends one
//! send and a share of one receive. Answers are matched by id *and* question (RFC 5452 §9.1);
//! ids are random. Truncated answers are reported so the caller can retry over TCP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

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

type Pending = Mutex<HashMap<u16, (Box<[u8]>, oneshot::Sender<Vec<u8>>)>>;

struct Lane {
    sock: Arc<UdpSocket>,
    pending: Arc<Pending>,
}

/// A client for one upstream address.
pub struct UdpClient {
    lanes: Vec<Lane>,
    next: AtomicUsize,
    upstream: SocketAddr,
}

impl UdpClient {
    /// Opens the sockets (connected to `upstream`) and starts their readers.
    pub async fn new(upstream: SocketAddr) -> Result<UdpClient, UdpClientError> {
        let mut lanes = Vec::new();
        for _ in 0..SOCKETS {
            let bind: SocketAddr = if upstream.is_ipv4() {
                "0.0.0.0:0".parse().expect("constant")
            } else {
                "[::]:0".parse().expect("constant")
            };
            let sock = UdpSocket::bind(bind)
                .await
                .map_err(|e| UdpClientError::Io(e.to_string()))?;
            sock.connect(upstream)
                .await
                .map_err(|e| UdpClientError::Io(e.to_string()))?;
            let sock = Arc::new(sock);
            let pending: Arc<Pending> = Arc::new(Mutex::new(HashMap::new()));
            tokio::spawn(read_loop(sock.clone(), Arc::downgrade(&pending)));
            lanes.push(Lane { sock, pending });
        }
        Ok(UdpClient {
            lanes,
            next: AtomicUsize::new(0),
            upstream,
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
        let lane = &self.lanes[self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len()];
        let mut question = Vec::with_capacity(qname.len() + 4);
        put_question(&mut question, qname, qtype);
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut p = lane.pending.lock();
            let mut id: u16 = rand::random();
            let mut tries = 0;
            while p.contains_key(&id) {
                id = rand::random();
                tries += 1;
                if tries > 16 {
                    return Err(UdpClientError::Io("too many queries in flight".into()));
                }
            }
            p.insert(id, (question.clone().into_boxed_slice(), tx));
            id
        };
        let mut msg = Vec::with_capacity(12 + question.len() + 11);
        put_query(&mut msg, id, &question);
        if let Err(e) = lane.sock.send(&msg).await {
            lane.pending.lock().remove(&id);
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
                lane.pending.lock().remove(&id);
                Err(UdpClientError::Timeout)
            }
        }
    }
}

async fn read_loop(sock: Arc<UdpSocket>, pending: std::sync::Weak<Pending>) {
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
        let Some(id) = answer_id(b) else {
            continue;
        };
        let mut p = pending.lock();
        let Some((question, _)) = p.get(&id) else {
            continue;
        };
        if !answers_question(b, question) {
            continue;
        }
        if let Some((_, tx)) = p.remove(&id) {
            drop(p);
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
