//! The sync API: owner devices fetch the encrypted entries over the tunnel.
//!
//! `GET /querylog?since=SEQ[&limit=N]` on the hub's overlay addresses, port [`SYNC_PORT`].
//! The caller is identified only by its source address: inside the WireGuard overlay the hub
//! accepts a packet from an overlay address only from the peer whose key owns it, so the address
//! proves the key. A caller that is not a registered device with `owner` set gets 403. Bind this
//! server only on overlay addresses; on any other address a source address proves nothing.
//!
//! Response (200, `application/json`):
//! `{"log_id":"…","enabled":true,"last_seq":N,"more":false,"entries":[{"seq":1,"time":UNIX_SECS,"data":"BASE64"}]}`
//! where `data` is the binary age ciphertext in standard base64, entries are in `seq` order,
//! at most `limit` (default and maximum [`PAGE_MAX`]) of them, and `more` says another page waits.
//! `log_id` changes only when the hub's state is recreated; a client then starts over at 0.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::settings;
use crate::dns::slots::ConnSlots;
use crate::store::{Device, Overlay, Store};

/// TCP port of the sync API on the hub's overlay addresses.
pub const SYNC_PORT: u16 = 8053;

/// Most entries in one response (~1 KiB of JSON each with two recipients).
pub const PAGE_MAX: usize = 500;

/// Connections served at once (of them at most `dns::slots::PER_ADDRESS` from one address);
/// more are closed at once.
const MAX_CONNECTIONS: usize = 32;

/// A connection (all its requests) must finish within this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the sync server could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A listen address could not be bound (not assigned yet, or in use).
    #[error("cannot listen for query log sync on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// No listen address was given.
    #[error("the query log sync server needs at least one listen address")]
    NoListen,
}

/// The running sync server. Dropping it stops every listener.
pub struct SyncServer {
    addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl SyncServer {
    /// The bound addresses (with the real port when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Runs until the listeners stop (they only stop when aborted).
    pub async fn wait(mut self) {
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for SyncServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Ctx {
    state_dir: PathBuf,
    overlay: Overlay,
}

/// Binds `listen` (the hub's overlay addresses, port [`SYNC_PORT`]) and serves the sync API
/// from the state database in `state_dir`. Callers outside `overlay` are refused like
/// non-owners. Must be called inside a tokio runtime.
pub async fn serve_sync(
    listen: Vec<SocketAddr>,
    state_dir: &Path,
    overlay: Overlay,
) -> Result<SyncServer, SyncError> {
    if listen.is_empty() {
        return Err(SyncError::NoListen);
    }
    let ctx = Arc::new(Ctx {
        state_dir: state_dir.to_path_buf(),
        overlay,
    });
    // The one accept loop of the program, with its per-address cap.
    let slots = ConnSlots::new(MAX_CONNECTIONS, crate::dns::slots::PER_ADDRESS);
    let mut addrs = Vec::new();
    let mut listeners = Vec::new();
    for addr in listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|error| SyncError::Bind { addr, error })?;
        addrs.push(l.local_addr().unwrap_or(addr));
        listeners.push(l);
    }
    let tasks = listeners
        .into_iter()
        .map(|l| {
            let ctx = ctx.clone();
            crate::dns::server::accept_loop(l, slots.clone(), move |stream, peer| {
                serve_connection(ctx.clone(), stream, peer)
            })
        })
        .collect();
    tracing::info!(listeners = addrs.len(), port = ?addrs.first().map(|a| a.port()), "query log sync API listening");
    Ok(SyncServer { addrs, tasks })
}

/// Serves one connection (HTTP/1.1, closed after `CONNECTION_TIMEOUT`).
async fn serve_connection(ctx: Arc<Ctx>, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let service = hyper::service::service_fn({
        let ctx = ctx.clone();
        move |req| handle_request(ctx.clone(), peer.ip(), req)
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::trace!(error = %e, "sync connection error"),
        Err(_) => tracing::trace!("sync connection timed out"),
    }
}

async fn handle_request(
    ctx: Arc<Ctx>,
    peer: IpAddr,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let reply = tokio::task::spawn_blocking(move || {
        answer(&ctx.state_dir, &ctx.overlay, peer, &method, &path, &query)
    })
    .await
    .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"));
    let (status, body) = reply;
    let resp = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    Ok(resp)
}

fn error(status: StatusCode, msg: &str) -> (StatusCode, Vec<u8>) {
    let body = serde_json::json!({ "error": msg });
    (status, body.to_string().into_bytes())
}

/// Why a caller is turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The source address is not in the overlay.
    NotOverlay,
    /// No registered device has that address.
    UnknownDevice,
    /// The device exists but is not an owner.
    NotOwner,
}

/// Decides whether `peer` may fetch the log: it must be a registered owner device's overlay address.
pub(crate) fn authorize<'d>(
    devices: &'d [Device],
    overlay: &Overlay,
    peer: IpAddr,
) -> Result<&'d Device, Refusal> {
    let peer = peer.to_canonical();
    if !overlay.nets().iter().any(|n| n.contains(&peer)) {
        return Err(Refusal::NotOverlay);
    }
    let d = devices
        .iter()
        .find(|d| IpAddr::V4(d.ipv4) == peer || IpAddr::V6(d.ipv6) == peer)
        .ok_or(Refusal::UnknownDevice)?;
    if d.owner {
        Ok(d)
    } else {
        Err(Refusal::NotOwner)
    }
}

/// Parses `since=SEQ&limit=N`.
fn parse_query(query: &str) -> Result<(i64, usize), String> {
    let mut since = 0i64;
    let mut limit = PAGE_MAX;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "since" => {
                since = v
                    .parse::<i64>()
                    .ok()
                    .filter(|s| *s >= 0)
                    .ok_or("since must be a sequence number (0 or more)")?;
            }
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=PAGE_MAX).contains(l))
                    .ok_or(format!("limit must be 1 to {PAGE_MAX}"))?;
            }
            _ => {}
        }
    }
    Ok((since, limit))
}

/// One request, answered from the database (blocking).
fn answer(
    state_dir: &Path,
    overlay: &Overlay,
    peer: IpAddr,
    method: &Method,
    path: &str,
    query: &str,
) -> (StatusCode, Vec<u8>) {
    if path != "/querylog" {
        return error(
            StatusCode::NOT_FOUND,
            "not found; the API is GET /querylog?since=SEQ",
        );
    }
    if method != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed");
    }
    let store = match Store::open(state_dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "sync: cannot open the state database");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "state database unavailable",
            );
        }
    };
    let devices = match store.devices() {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "sync: cannot read devices");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "state database unavailable",
            );
        }
    };
    let device = match authorize(&devices, overlay, peer) {
        Ok(d) => d,
        Err(r) => {
            tracing::info!(reason = ?r, "query log sync refused a caller");
            tracing::debug!(%peer, reason = ?r, "query log sync refused");
            return error(
                StatusCode::FORBIDDEN,
                "only devices marked owner may fetch the query log (`cloudpc device set NAME --owner` on the hub)",
            );
        }
    };
    let (since, limit) = match parse_query(query) {
        Ok(x) => x,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    match page(&store, since, limit) {
        Ok(body) => {
            tracing::debug!(device = %device.name, since, "query log page served");
            (StatusCode::OK, body)
        }
        Err(e) => {
            tracing::warn!(error = %e, "sync: cannot read the query log");
            error(StatusCode::SERVICE_UNAVAILABLE, "query log unavailable")
        }
    }
}

#[derive(serde::Serialize)]
struct WireEntry {
    seq: i64,
    time: i64,
    data: String,
}

#[derive(serde::Serialize)]
struct WirePage {
    log_id: String,
    enabled: bool,
    last_seq: i64,
    more: bool,
    entries: Vec<WireEntry>,
}

/// The JSON page of entries after `since`.
fn page(store: &Store, since: i64, limit: usize) -> Result<Vec<u8>, super::QueryLogError> {
    let p = store.querylog_page(since, limit)?;
    let p = WirePage {
        log_id: p.log_id,
        enabled: settings::LogSettings::from_meta(&p.meta).enabled,
        last_seq: p.last_seq,
        more: p.more,
        entries: p
            .rows
            .into_iter()
            .map(|r| WireEntry {
                seq: r.seq,
                time: r.time,
                data: base64::engine::general_purpose::STANDARD.encode(r.data),
            })
            .collect(),
    };
    Ok(serde_json::to_vec(&p).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay() -> Overlay {
        Overlay {
            v4: "100.96.0.0/16".parse().unwrap(),
            v6: "fd00:1:2::/48".parse().unwrap(),
        }
    }

    fn devices() -> (tempfile::TempDir, Vec<Device>) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.add_device("phone", "k1", false, &overlay()).unwrap();
        s.add_device("guest", "k2", false, &overlay()).unwrap();
        s.set_device("phone", None, Some(true), None).unwrap();
        let d = s.devices().unwrap();
        (dir, d)
    }

    #[test]
    fn owner_is_allowed_on_both_addresses() {
        let (_d, devs) = devices();
        let phone = devs.iter().find(|d| d.name == "phone").unwrap();
        assert!(authorize(&devs, &overlay(), IpAddr::V4(phone.ipv4)).is_ok());
        assert!(authorize(&devs, &overlay(), IpAddr::V6(phone.ipv6)).is_ok());
        let mapped = IpAddr::V6(phone.ipv4.to_ipv6_mapped());
        assert!(authorize(&devs, &overlay(), mapped).is_ok());
    }

    #[test]
    fn non_owner_unknown_and_outside_callers_are_refused() {
        let (_d, devs) = devices();
        let guest = devs.iter().find(|d| d.name == "guest").unwrap();
        assert_eq!(
            authorize(&devs, &overlay(), IpAddr::V4(guest.ipv4)).err(),
            Some(Refusal::NotOwner)
        );
        assert_eq!(
            authorize(&devs, &overlay(), "100.96.9.9".parse().unwrap()).err(),
            Some(Refusal::UnknownDevice)
        );
        assert_eq!(
            authorize(&devs, &overlay(), "203.0.113.5".parse().unwrap()).err(),
            Some(Refusal::NotOverlay)
        );
    }

    #[test]
    fn non_owner_request_gets_403() {
        let (dir, devs) = devices();
        let guest = devs.iter().find(|d| d.name == "guest").unwrap();
        let (status, _) = answer(
            dir.path(),
            &overlay(),
            IpAddr::V4(guest.ipv4),
            &Method::GET,
            "/querylog",
            "since=0",
        );
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn pages_are_bounded_and_continue() {
        let (dir, devs) = devices();
        let phone = devs.iter().find(|d| d.name == "phone").unwrap();
        let store = Store::open(dir.path()).unwrap();
        let owner = age::x25519::Identity::generate().to_public().to_string();
        settings::enable(&store, &settings::Recipients::parse(&[owner]).unwrap()).unwrap();
        store
            .append_querylog(|_| {
                Ok::<_, super::super::QueryLogError>(
                    (0..5).map(|t| (t, vec![0x00, 0xff])).collect(),
                )
            })
            .unwrap();
        let get = |q: &str| {
            let (s, b) = answer(
                dir.path(),
                &overlay(),
                IpAddr::V4(phone.ipv4),
                &Method::GET,
                "/querylog",
                q,
            );
            assert_eq!(s, StatusCode::OK);
            serde_json::from_slice::<serde_json::Value>(&b).unwrap()
        };

        let p = get("since=0&limit=3");
        assert_eq!(p["entries"].as_array().unwrap().len(), 3);
        assert_eq!(p["more"], true);
        assert_eq!(p["entries"][0]["data"], "AP8=");
        let p = get("since=3&limit=3");
        assert_eq!(p["entries"].as_array().unwrap().len(), 2);
        assert_eq!(p["more"], false);
        assert_eq!(p["last_seq"], 5);
    }

    proptest::proptest! {
        #[test]
        fn query_parser_never_panics(q in "\\PC{0,60}") {
            let _ = parse_query(&q);
        }
    }

    #[test]
    fn bad_query_is_400() {
        assert!(parse_query("since=-1").is_err());
        assert!(parse_query("since=abc").is_err());
        assert!(parse_query(&format!("limit={}", PAGE_MAX + 1)).is_err());
        assert_eq!(parse_query(""), Ok((0, PAGE_MAX)));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;

    #[test]
    fn fuzz_sync_query_string() {
        let seeds = vec![
            b"since=12&limit=100".to_vec(),
            b"limit=1&since=0&x".to_vec(),
        ];
        crate::fuzz::run("querylog_sync_query", crate::fuzz::bytes(seeds, 200), |b| {
            if let Ok((since, limit)) = parse_query(&String::from_utf8_lossy(b)) {
                assert!(since >= 0);
                assert!((1..=PAGE_MAX).contains(&limit));
            }
        });
    }
}
