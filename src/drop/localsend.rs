//! The Cloud PC as a LocalSend peer (protocol v2, the open, cross-platform AirDrop): HTTPS on
//! port 53317 of the hub's overlay addresses. A device's LocalSend app sends a file with
//! `prepare-upload` (the hub answers a session and a token per file) and one `upload` per
//! file; the bytes go straight, encrypted, into the [`Inbox`].
//!
//! Only the owner's and members' devices may drop files (guests and links get 403). Uploads
//! are bounded by their announced size and the inbox's quota; a transfer cut short leaves
//! nothing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use parking_lot::Mutex;

use super::{DropError, Inbox};

/// LocalSend's port.
pub const PORT: u16 = 53317;
/// The name every LocalSend app shows for the hub.
pub const ALIAS: &str = "Cloud PC";
/// Largest JSON body (the file list of one transfer).
const MAX_JSON: usize = 256 * 1024;
/// Files per transfer.
const MAX_FILES: usize = 1000;
/// A session unused this long is forgotten.
const SESSION_IDLE: Duration = Duration::from_secs(600);

type Resp = Response<Full<Bytes>>;

/// Who a LocalSend sender is: its device name, and the keys its files go to (empty: the
/// hub's). `None`: it may not drop files.
pub trait Senders: Send + Sync {
    fn sender(&self, ip: IpAddr) -> Option<(String, Vec<age::x25519::Recipient>)>;
    /// Whether the device at `from` may send files to device `to` (why not, else).
    fn may_send(&self, from: IpAddr, to: &str) -> Result<(), String>;
    /// Forwards inbox file `id` to device `to` for the device at `from`: `delivered`,
    /// `queued`, or why not.
    fn send_to(&self, from: IpAddr, id: &str, to: &str) -> Result<String, String> {
        self.may_send(from, to)?;
        self.forward(id, to)
    }
    /// Forwards inbox file `id` to device `to`: `delivered`, `queued`, or why not.
    fn forward(&self, id: &str, to: &str) -> Result<String, String>;
}

struct File {
    token: String,
    name: String,
    size: u64,
}

struct Session {
    peer: IpAddr,
    from: String,
    recipients: Vec<age::x25519::Recipient>,
    files: HashMap<String, File>,
    seen: Instant,
}

/// The LocalSend peer's state.
pub struct LocalSend {
    inbox: Arc<Inbox>,
    senders: Arc<dyn Senders>,
    /// SHA-256 of the certificate served, upper-case hex (LocalSend's fingerprint).
    fingerprint: String,
    sessions: Mutex<HashMap<String, Session>>,
    /// Uploads of the cloudpc CLI that broke off ([`super::resume`]).
    partials: super::resume::Partials,
}

fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn token() -> String {
    crate::certs::hex(&rand::random::<[u8; 16]>())
}

fn query(uri: &hyper::Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl LocalSend {
    pub fn new(inbox: Arc<Inbox>, senders: Arc<dyn Senders>, fingerprint: &str) -> LocalSend {
        LocalSend {
            inbox,
            senders,
            fingerprint: fingerprint.to_ascii_uppercase(),
            sessions: Mutex::new(HashMap::new()),
            partials: Default::default(),
        }
    }

    /// What the hub says about itself (`info`, `register`, announcements).
    pub fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "alias": ALIAS,
            "version": "2.1",
            "deviceModel": "cloudpc",
            "deviceType": "server",
            "fingerprint": self.fingerprint,
            "port": PORT,
            "protocol": "https",
            "download": false,
        })
    }

    /// Answers one request from `peer`.
    pub async fn handle(&self, peer: SocketAddr, req: Request<hyper::body::Incoming>) -> Resp {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        match (&parts.method, path.as_str()) {
            (&Method::GET, "/api/localsend/v2/info")
            | (&Method::POST, "/api/localsend/v2/register") => {
                let _ = Limited::new(body, MAX_JSON).collect().await;
                json(StatusCode::OK, &self.info())
            }
            (&Method::POST, "/api/localsend/v2/prepare-upload") => {
                let bytes = match Limited::new(body, MAX_JSON).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => return empty(StatusCode::PAYLOAD_TOO_LARGE),
                };
                self.prepare(peer.ip(), &bytes)
            }
            (&Method::POST, "/api/localsend/v2/upload") => {
                let q = query(&parts.uri);
                self.upload(peer.ip(), &q, body).await
            }
            (&Method::POST, "/api/localsend/v2/cancel") => {
                let q = query(&parts.uri);
                if let Some(id) = q.get("sessionId") {
                    let mut s = self.sessions.lock();
                    if s.get(id).is_some_and(|x| x.peer == peer.ip()) {
                        s.remove(id);
                    }
                }
                empty(StatusCode::OK)
            }
            (&Method::POST, super::resume::PATH) => {
                let q = parts.uri.query().unwrap_or("");
                self.partials
                    .handle(&self.inbox, &self.senders, peer.ip(), q, body)
                    .await
            }
            _ => empty(StatusCode::NOT_FOUND),
        }
    }

    fn prepare(&self, ip: IpAddr, body: &[u8]) -> Resp {
        let Some((from, recipients)) = self.senders.sender(ip) else {
            return empty(StatusCode::FORBIDDEN);
        };
        let files = match read_files(body) {
            Ok(f) => f,
            Err(status) => return empty(status),
        };
        let mut want = HashMap::new();
        let mut total = 0u64;
        for (id, name, size) in files {
            total = total.saturating_add(size);
            want.insert(
                id,
                File {
                    token: token(),
                    name,
                    size,
                },
            );
        }
        let used = self.inbox.used();
        if used.saturating_add(total) > self.inbox.settings.max_bytes {
            tracing::info!(bytes = total, "a drop refused: the inbox is full");
            return json(
                StatusCode::INSUFFICIENT_STORAGE,
                &serde_json::json!({ "message": "the Cloud PC's inbox is full" }),
            );
        }
        let session = token();
        let tokens: serde_json::Map<String, serde_json::Value> = want
            .iter()
            .map(|(id, f)| (id.clone(), serde_json::Value::from(f.token.clone())))
            .collect();
        let mut s = self.sessions.lock();
        s.retain(|_, x| x.seen.elapsed() < SESSION_IDLE);
        s.insert(
            session.clone(),
            Session {
                peer: ip,
                from,
                recipients,
                files: want,
                seen: Instant::now(),
            },
        );
        json(
            StatusCode::OK,
            &serde_json::json!({ "sessionId": session, "files": tokens }),
        )
    }

    async fn upload(
        &self,
        ip: IpAddr,
        q: &HashMap<String, String>,
        mut body: hyper::body::Incoming,
    ) -> Resp {
        let (Some(sid), Some(fid), Some(tok)) =
            (q.get("sessionId"), q.get("fileId"), q.get("token"))
        else {
            return empty(StatusCode::BAD_REQUEST);
        };
        // The file's slot is taken out of the session for the upload (a second upload of the
        // same file is refused).
        let (file, from, recipients) = {
            let mut s = self.sessions.lock();
            let Some(sess) = s.get_mut(sid).filter(|x| x.peer == ip) else {
                return empty(StatusCode::FORBIDDEN);
            };
            if sess.files.get(fid).is_none_or(|f| &f.token != tok) {
                return empty(StatusCode::FORBIDDEN);
            }
            sess.seen = Instant::now();
            let f = sess.files.remove(fid).expect("checked");
            (f, sess.from.clone(), sess.recipients.clone())
        };
        let mut incoming = match self.inbox.begin(&file.name, file.size, &from, &recipients) {
            Ok(i) => i,
            Err(DropError::Full { .. }) => return empty(StatusCode::INSUFFICIENT_STORAGE),
            Err(e) => {
                tracing::warn!(error = %e, "a drop could not be stored");
                return empty(StatusCode::INTERNAL_SERVER_ERROR);
            }
        };
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return empty(StatusCode::BAD_REQUEST);
            };
            if let Ok(data) = frame.into_data() {
                let r = tokio::task::block_in_place(|| incoming.write(&data));
                if r.is_err() {
                    return empty(StatusCode::BAD_REQUEST);
                }
            }
        }
        match tokio::task::block_in_place(|| incoming.finish()) {
            Ok(item) => {
                tracing::info!(bytes = item.size, "a file was dropped on the Cloud PC");
                empty(StatusCode::OK)
            }
            Err(_) => empty(StatusCode::BAD_REQUEST),
        }
    }
}

/// The files of a `prepare-upload` body: (id, name, size) each, or the status to answer.
pub fn read_files(body: &[u8]) -> Result<Vec<(String, String, u64)>, StatusCode> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| StatusCode::BAD_REQUEST)?;
    let files = v
        .get("files")
        .and_then(|f| f.as_object())
        .ok_or(StatusCode::BAD_REQUEST)?;
    if files.is_empty() {
        return Err(StatusCode::NO_CONTENT);
    }
    if files.len() > MAX_FILES {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    files
        .iter()
        .map(|(id, f)| {
            let name = f.get("fileName").and_then(|n| n.as_str());
            let size = f.get("size").and_then(|s| s.as_u64());
            match (name, size) {
                (Some(n), Some(s)) if id.len() <= 256 => Ok((id.clone(), n.to_string(), s)),
                _ => Err(StatusCode::BAD_REQUEST),
            }
        })
        .collect()
}

/// Serves LocalSend on `addrs` with TLS (`acc`).
pub async fn serve(
    ls: Arc<LocalSend>,
    addrs: &[SocketAddr],
    acc: tokio_rustls::TlsAcceptor,
) -> Vec<SocketAddr> {
    let slots = crate::dns::slots::ConnSlots::new(256, 32);
    let mut bound = Vec::new();
    for a in addrs {
        let listener = match crate::dns::server::bind_tcp(*a).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LocalSend not served on an overlay address");
                continue;
            }
        };
        bound.push(*a);
        let (ls, acc) = (ls.clone(), acc.clone());
        crate::dns::server::accept_loop(listener, slots.clone(), move |tcp, peer| {
            let (ls, acc) = (ls.clone(), acc.clone());
            async move {
                let Some(tls) = crate::dns::server::tls_handshake(&acc, tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let ls = ls.clone();
                    async move { Ok::<_, std::convert::Infallible>(ls.handle(peer, req).await) }
                });
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30));
                let _ = b
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            }
        });
    }
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_bodies_read_or_get_a_status() {
        let ok = br#"{"info":{"alias":"x"},"files":{"f1":{"id":"f1","fileName":"a.jpg","size":5,"fileType":"image/jpeg"}}}"#;
        assert_eq!(
            read_files(ok).unwrap(),
            vec![("f1".to_string(), "a.jpg".to_string(), 5)]
        );
        assert_eq!(read_files(br#"{"files":{}}"#), Err(StatusCode::NO_CONTENT));
        assert_eq!(read_files(b"[]"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(
            read_files(br#"{"files":{"f":{"fileName":"a"}}}"#),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn fuzz_localsend_requests() {
        let seeds = vec![
            br#"{"files":{"f1":{"fileName":"../../etc/passwd","size":1}}}"#.to_vec(),
            br#"{"files":{"a":{"fileName":"\u0000","size":18446744073709551615}}}"#.to_vec(),
        ];
        crate::fuzz::run("localsend_requests", crate::fuzz::bytes(seeds, 400), |b| {
            if let Ok(files) = read_files(b) {
                for (_, name, _) in files {
                    let s = super::super::sanitize(&name);
                    assert!(!s.is_empty() && !s.contains('/') && !s.contains('\\'));
                    assert!(!s.starts_with('.') && !s.chars().any(char::is_control));
                }
            }
        });
    }
}
