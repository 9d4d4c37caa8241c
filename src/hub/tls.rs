//! The TLS transport: WireGuard over TLS on TCP 443, for networks where only HTTPS gets out.
//!
//! A device (`cloudpc connect`) opens TLS to port 443 of the hub with the ALPN protocol
//! [`ALPN`] (the HTTPS listener that also serves DoH and the admin page hands such a stream
//! here) and sends its WireGuard datagrams on it, each prefixed with its length as two bytes,
//! big-endian; the hub answers the same way. To the engine the stream is one more endpoint of
//! the device ([`Via::Tls`]): the WireGuard session, anti-spoofing, policy and counters are
//! the ones of UDP, and the device's endpoint moves between UDP and TLS like any roaming
//! endpoint. The TLS layer adds no security of its own (the client does not check the
//! certificate: the WireGuard handshake inside authenticates the hub); it only makes the
//! traffic look like HTTPS.
//!
//! A stream that sends a frame that is not a WireGuard message, or no authenticated one
//! within [`AUTH_WINDOW`], is closed; open streams are bounded per source address and in all.
//! Output is queued per stream in one buffer and written by the stream's writer task in as
//! few TLS records as it can, so a burst from the engine costs one write.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::Tunn;
use parking_lot::{Mutex, RwLock};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::batch::BatchSink;
use super::engine::{Bufs, Engine};
use super::io::NetSink;
use super::peers::{Endpoint, Via};

/// The ALPN protocol of a WireGuard-over-TLS stream.
pub const ALPN: &[u8] = b"cloudpc-wg/1";
/// A stream must carry an authenticated WireGuard message this soon after it opened.
pub const AUTH_WINDOW: Duration = Duration::from_secs(5);
/// A stream with no input for this long is closed (devices keep theirs alive).
const IDLE: Duration = Duration::from_secs(600);
/// Open streams per source address.
pub const PER_SOURCE: usize = 8;
/// Open streams in all.
const MAX_STREAMS: usize = 4096;
/// Bytes queued for one stream before further datagrams are dropped (a stalled reader).
const OUTBOX_MAX: usize = 4 << 20;
/// Read buffer: room for a few maximal frames.
const READ_BUF: usize = 4 * (2 + super::engine::MAX_PACKET);

/// Why a stream was closed on its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadFrame {
    /// A zero length.
    Empty,
    /// The frame does not hold a WireGuard message.
    NotWireGuard,
}

/// The next frame at the start of `buf`: `Ok(Some(len))` when a whole frame of `len`
/// payload bytes (after the 2-byte prefix) is there, `Ok(None)` when more bytes are needed.
pub fn next_frame(buf: &[u8]) -> Result<Option<usize>, BadFrame> {
    let Some(prefix) = buf.get(..2) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
    if len == 0 {
        return Err(BadFrame::Empty);
    }
    let Some(d) = buf.get(2..2 + len) else {
        return Ok(None);
    };
    Tunn::parse_incoming_packet(d).map_err(|_| BadFrame::NotWireGuard)?;
    Ok(Some(len))
}

/// Appends `d` as one frame to `out`.
pub fn push_frame(out: &mut Vec<u8>, d: &[u8]) {
    out.extend_from_slice(&(d.len() as u16).to_be_bytes());
    out.extend_from_slice(d);
}

/// What waits to be written to one stream (the client's stream uses it too).
pub struct Outbox {
    buf: Mutex<Vec<u8>>,
    ready: tokio::sync::Notify,
    closed: AtomicBool,
}

impl Outbox {
    pub fn new() -> Arc<Outbox> {
        Arc::new(Outbox {
            buf: Mutex::new(Vec::new()),
            ready: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// Queues datagram `d` as a frame; false when it is too big or the queue is full.
    pub fn push(&self, d: &[u8]) -> bool {
        {
            let mut b = self.buf.lock();
            if d.len() > usize::from(u16::MAX) || b.len() + 2 + d.len() > OUTBOX_MAX {
                return false;
            }
            push_frame(&mut b, d);
        }
        self.ready.notify_one();
        true
    }

    /// Ends the writer (after what it is writing).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.ready.notify_one();
    }
}

/// Counters of the TLS transport.
#[derive(Debug, Default)]
pub struct TlsCounters {
    pub opened: AtomicU64,
    /// Refused for the per-source or total bound.
    pub refused: AtomicU64,
    /// Closed for a frame that is not WireGuard, or no authenticated message in time.
    pub rejected: AtomicU64,
}

/// The open streams, by id.
#[derive(Default)]
pub struct TlsStreams {
    next: AtomicU32,
    streams: RwLock<HashMap<u32, Arc<Outbox>>>,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    pub counters: TlsCounters,
}

impl TlsStreams {
    /// Queues datagram `d` for stream `id`; false when the stream is gone or its queue full.
    pub fn send(&self, id: u32, d: &[u8]) -> bool {
        let streams = self.streams.read();
        streams.get(&id).is_some_and(|o| o.push(d))
    }

    /// Number of open streams.
    pub fn open(&self) -> usize {
        self.streams.read().len()
    }

    /// Takes a place for a stream from `ip`, or `None` when the bounds are reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut per = self.per_source.lock();
        let total: usize = per.values().sum();
        let n = per.entry(ip).or_insert(0);
        if *n >= PER_SOURCE || total >= MAX_STREAMS {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        drop(per);
        let out = Outbox::new();
        let id = {
            let mut streams = self.streams.write();
            // Ids are never 0 and never those of a stream still open (after a wrap).
            let id = loop {
                let id = self.next.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                if id != 0 && !streams.contains_key(&id) {
                    break id;
                }
            };
            streams.insert(id, out.clone());
            id
        };
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
        Some(Admitted {
            streams: self.clone(),
            ip,
            id,
            out,
        })
    }
}

/// A stream's place; given back on drop.
struct Admitted {
    streams: Arc<TlsStreams>,
    ip: IpAddr,
    id: u32,
    out: Arc<Outbox>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.out.close();
        self.streams.streams.write().remove(&self.id);
        let mut per = self.streams.per_source.lock();
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
    }
}

/// The hub's side of the transport, handed to the HTTPS listeners.
#[derive(Clone)]
pub struct WgTls {
    pub(crate) engine: Arc<Engine>,
    pub(crate) net: Arc<NetSink>,
}

impl WgTls {
    /// Serves one stream (already past TLS and ALPN) from `peer` until it closes or is
    /// closed.
    pub async fn serve<S>(&self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let Some(place) = self.net.tls.admit(peer.ip()) else {
            return;
        };
        let (mut r, w) = tokio::io::split(stream);
        let writer = tokio::spawn(write_loop(place.out.clone(), w));
        let from = Endpoint {
            addr: peer,
            local: None,
            via: Via::Tls(place.id),
        };
        if !self.read_loop(&mut r, from).await {
            self.net
                .tls
                .counters
                .rejected
                .fetch_add(1, Ordering::Relaxed);
        }
        drop(place);
        let _ = writer.await;
    }

    /// Hands the stream's datagrams to the engine; false when it was closed for bad input.
    async fn read_loop<R: AsyncRead + Unpin>(&self, r: &mut R, from: Endpoint) -> bool {
        let mut buf = vec![0u8; READ_BUF];
        let mut filled = 0;
        let mut bufs = Bufs::default();
        let mut sink = BatchSink::new(&self.net, 0);
        let deadline = tokio::time::Instant::now() + AUTH_WINDOW;
        let mut authenticated = false;
        loop {
            let read = r.read(&mut buf[filled..]);
            let n = if authenticated {
                tokio::time::timeout(IDLE, read).await
            } else {
                tokio::time::timeout_at(deadline, read).await
            };
            let n = match n {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => n,
                // Quiet too long, or no authenticated message in time.
                Err(_) => return authenticated,
            };
            filled += n;
            let now = Instant::now();
            let mut pos = 0;
            loop {
                match next_frame(&buf[pos..filled]) {
                    Ok(Some(len)) => {
                        let d = &buf[pos + 2..pos + 2 + len];
                        self.engine.handle_datagram(from, d, now, &mut bufs, &sink);
                        pos += 2 + len;
                    }
                    Ok(None) => break,
                    Err(why) => {
                        tracing::debug!(?why, "TLS stream closed for bad input");
                        sink.flush().await;
                        return false;
                    }
                }
            }
            buf.copy_within(pos..filled, 0);
            filled -= pos;
            sink.flush().await;
            authenticated = authenticated || self.engine.knows_endpoint(from);
        }
    }
}

/// Writes what is queued for a stream until the stream is closed or a write fails.
pub async fn write_loop<W: AsyncWrite + Unpin>(out: Arc<Outbox>, mut w: W) {
    let mut local = Vec::new();
    loop {
        out.ready.notified().await;
        if out.closed.load(Ordering::Relaxed) {
            break;
        }
        std::mem::swap(&mut *out.buf.lock(), &mut local);
        if local.is_empty() {
            continue;
        }
        if w.write_all(&local).await.is_err() || w.flush().await.is_err() {
            break;
        }
        local.clear();
    }
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake_init() -> Vec<u8> {
        let mut d = vec![0u8; 148];
        d[0] = 1;
        d
    }

    #[test]
    fn frames_are_read_whole_and_only_when_complete() {
        let mut buf = Vec::new();
        push_frame(&mut buf, &handshake_init());
        assert_eq!(next_frame(&buf), Ok(Some(148)));
        assert_eq!(next_frame(&buf[..100]), Ok(None));
        assert_eq!(next_frame(&buf[..1]), Ok(None));
        assert_eq!(next_frame(&[0, 0, 1]), Err(BadFrame::Empty));
        let mut junk = Vec::new();
        push_frame(&mut junk, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(next_frame(&junk), Err(BadFrame::NotWireGuard));
    }

    #[test]
    fn every_open_stream_has_its_own_id_and_gets_only_its_own_datagrams() {
        let s = Arc::new(TlsStreams::default());
        let a = s.admit("192.0.2.1".parse().unwrap()).unwrap();
        let b = s.admit("192.0.2.2".parse().unwrap()).unwrap();
        assert_ne!(a.id, b.id);
        assert!(s.send(a.id, b"to a"));
        assert!(a.out.buf.lock().ends_with(b"to a"));
        assert!(b.out.buf.lock().is_empty(), "b got a's datagram");
        // Closing one leaves the other in place; a wrapped counter skips 0 and open ids.
        s.next.store(u32::MAX, Ordering::Relaxed);
        let c = s.admit("192.0.2.3".parse().unwrap()).unwrap();
        assert!(c.id != 0 && c.id != a.id && c.id != b.id);
        drop(a);
        assert!(s.send(b.id, b"to b"));
    }

    #[test]
    fn streams_are_bounded_per_source_and_give_their_place_back() {
        let s = Arc::new(TlsStreams::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let places: Vec<_> = (0..PER_SOURCE).map(|_| s.admit(ip).unwrap()).collect();
        assert!(s.admit(ip).is_none(), "a ninth stream from one address");
        assert!(s.admit("192.0.2.2".parse().unwrap()).is_some());
        let id = places[0].id;
        assert!(s.send(id, &handshake_init()));
        drop(places);
        assert!(
            !s.send(id, &handshake_init()),
            "a closed stream takes nothing"
        );
        assert!(s.admit(ip).is_some());
        assert_eq!(s.counters.refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn fuzz_tls_frames() {
        let mut seed = Vec::new();
        push_frame(&mut seed, &handshake_init());
        push_frame(&mut seed, &[4; 32]);
        crate::fuzz::run(
            "tls_frames",
            crate::fuzz::bytes(vec![seed, vec![0, 0], vec![255, 255, 1]], 400),
            |b| {
                let mut pos = 0;
                while let Ok(Some(len)) = next_frame(&b[pos..]) {
                    assert!(pos + 2 + len <= b.len());
                    pos += 2 + len;
                }
            },
        );
    }
}
