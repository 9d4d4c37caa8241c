//! Resumable drops: how the cloudpc CLI on a device (`cloudpc drop send FILE --to DEVICE`)
//! puts a file in the Cloud PC's inbox. LocalSend has no way to go on with a transfer that
//! broke, so the CLI uses one more endpoint beside LocalSend's, on the same port and TLS, with
//! the same rule for who may drop (the tunnel's source address names the device):
//!
//! `POST /api/cloudpc/v1/drop?sha256=H&name=N&size=S[&to=DEVICE][&offset=O]`
//!
//! - Without `offset`, the hub answers how much of that file (the sender's, by its SHA-256)
//!   it holds already: `{"offset": n}`.
//! - With `offset`, the body is the file's bytes from there on. A body that ends early (the
//!   connection broke) keeps what came for [`KEEP_PARTIAL`]: the next call goes on from
//!   there. An `offset` that is not what the hub holds gets 409 with the right one.
//! - Once every byte came and the SHA-256 matches, the file is in the inbox (`{"id": …}`), and
//!   with `to` it is forwarded to that device at once or as soon as it is online (`"status":
//!   "delivered"` or `"queued"`). A file for a device is encrypted to the hub's key (the hub
//!   hands it over); one without `to` to the owner's keys when set, like LocalSend's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Response, StatusCode};
use parking_lot::Mutex;

use super::localsend::Senders;
use super::{DropError, Inbox, Incoming};

/// The endpoint's path.
pub const PATH: &str = "/api/cloudpc/v1/drop";
/// A broken upload is kept this long for the sender to go on.
pub const KEEP_PARTIAL: Duration = Duration::from_secs(3600);
/// Broken uploads kept per device.
const PARTIALS_PER_DEVICE: usize = 4;

type Resp = Response<http_body_util::Full<Bytes>>;

/// One upload: what came so far.
struct Partial {
    incoming: Incoming,
    hash: ring::digest::Context,
    sha256: String,
    to: Option<String>,
    seen: Instant,
}

type Key = (IpAddr, String);

/// An upload by device and file: arriving now on a connection (that connection's number), or
/// kept after it broke off.
enum Slot {
    Arriving(u64),
    Kept(Box<Partial>),
}

/// The broken uploads, by device address and the file's SHA-256.
#[derive(Default)]
pub struct Partials {
    slots: Mutex<HashMap<Key, Slot>>,
    next: std::sync::atomic::AtomicU64,
}

/// Marks an upload as arriving on one connection; the mark goes with it (unless the upload
/// was kept, or another connection has it by now).
struct Arriving<'a> {
    partials: &'a Partials,
    key: Key,
    id: u64,
}

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        let mut m = self.partials.slots.lock();
        if matches!(m.get(&self.key), Some(Slot::Arriving(id)) if *id == self.id) {
            m.remove(&self.key);
        }
    }
}

/// An upload's parameters, read from the query string.
#[derive(Debug, PartialEq, Eq)]
pub struct Params {
    pub sha256: String,
    pub name: String,
    pub size: u64,
    pub to: Option<String>,
    pub offset: Option<u64>,
}

/// Characters sent as they are in a query value (RFC 3986 unreserved).
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A query value decoded (`+` is a space); `None` for a `%` without two hex digits or bytes
/// that are not UTF-8.
fn unescape(v: &str) -> Option<String> {
    let well_formed = v
        .split('%')
        .skip(1)
        .all(|p| p.len() >= 2 && p.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit));
    if !well_formed {
        return None;
    }
    percent_encoding::percent_decode_str(&v.replace('+', " "))
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Reads an upload's query string; `None` when it is not a valid one.
pub fn params(query: &str) -> Option<Params> {
    let mut q = HashMap::new();
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=')?;
        if q.insert(k, unescape(v)?).is_some() {
            return None;
        }
    }
    let sha256 = q.remove("sha256")?.to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let name = q.remove("name")?;
    if name.len() > 1024 {
        return None;
    }
    let size = q.remove("size")?.parse().ok()?;
    let to = q.remove("to").filter(|t| !t.is_empty());
    let offset = match q.remove("offset") {
        Some(o) => Some(o.parse().ok()?),
        None => None,
    };
    Some(Params {
        sha256,
        name,
        size,
        to,
        offset,
    })
}

fn answer(status: StatusCode, v: serde_json::Value) -> Resp {
    let mut r = Response::new(http_body_util::Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn message(status: StatusCode, m: &str) -> Resp {
    answer(status, serde_json::json!({ "message": m }))
}

impl Partials {
    /// Serves one call of the endpoint from device `ip`.
    pub async fn handle(
        &self,
        inbox: &Arc<Inbox>,
        senders: &Arc<dyn Senders>,
        ip: IpAddr,
        query: &str,
        mut body: hyper::body::Incoming,
    ) -> Resp {
        let Some((from, recipients)) = senders.sender(ip) else {
            return message(StatusCode::FORBIDDEN, "this device may not drop files");
        };
        let Some(p) = params(query) else {
            return message(
                StatusCode::BAD_REQUEST,
                "sha256 (64 hex digits), name and size are needed",
            );
        };
        if let Some(to) = &p.to {
            let (s, to) = (senders.clone(), to.clone());
            match tokio::task::spawn_blocking(move || s.may_send(ip, &to)).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return message(StatusCode::FORBIDDEN, &why),
                Err(_) => return message(StatusCode::INTERNAL_SERVER_ERROR, "cannot check"),
            }
        }
        let key = (ip, p.sha256.clone());
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The same file arriving on a connection that just broke: wait for it to let go.
        let mut tries = 0;
        let held = loop {
            {
                let mut m = self.slots.lock();
                m.retain(|_, x| match x {
                    Slot::Kept(x) => x.seen.elapsed() < KEEP_PARTIAL,
                    Slot::Arriving(_) => true,
                });
                if !matches!(m.get(&key), Some(Slot::Arriving(_))) {
                    break match m.insert(key.clone(), Slot::Arriving(id)) {
                        Some(Slot::Kept(x)) => Some(*x),
                        _ => None,
                    };
                }
            }
            tries += 1;
            if tries > 100 {
                return message(
                    StatusCode::CONFLICT,
                    "this file is arriving on another connection; try again",
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _arriving = Arriving {
            partials: self,
            key: key.clone(),
            id,
        };
        let held_bytes = held.as_ref().map_or(0, |h| h.incoming.written);
        let Some(offset) = p.offset else {
            if let Some(h) = held {
                self.keep(key, h);
            }
            return answer(StatusCode::OK, serde_json::json!({ "offset": held_bytes }));
        };
        let mut up = match held {
            Some(h) if offset == h.incoming.written && h.incoming.item.size == p.size => h,
            None if offset == 0 => {
                // A file for a device is read by the hub, so it goes to the hub's key.
                let keys: &[age::x25519::Recipient] =
                    if p.to.is_some() { &[] } else { &recipients };
                let incoming = match inbox.begin(&p.name, p.size, &from, keys) {
                    Ok(i) => i,
                    Err(e @ DropError::Full { .. }) => {
                        return message(StatusCode::INSUFFICIENT_STORAGE, &e.to_string())
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a drop could not be stored");
                        return message(StatusCode::INTERNAL_SERVER_ERROR, "cannot store it");
                    }
                };
                Partial {
                    incoming,
                    hash: ring::digest::Context::new(&ring::digest::SHA256),
                    sha256: p.sha256.clone(),
                    to: p.to.clone(),
                    seen: Instant::now(),
                }
            }
            other => {
                if let Some(h) = other {
                    self.keep(key, h);
                }
                return answer(
                    StatusCode::CONFLICT,
                    serde_json::json!({ "offset": held_bytes }),
                );
            }
        };
        let mut broke = false;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                broke = true;
                break;
            };
            if let Ok(data) = frame.into_data() {
                let r = tokio::task::block_in_place(|| up.incoming.write(&data));
                if r.is_err() {
                    return message(StatusCode::BAD_REQUEST, "more bytes than the size given");
                }
                up.hash.update(&data);
            }
        }
        if up.incoming.written < up.incoming.item.size {
            let n = up.incoming.written;
            up.seen = Instant::now();
            self.keep(key, up);
            if broke {
                tracing::info!(bytes = n, "a drop broke off; kept to go on with");
            }
            return answer(StatusCode::ACCEPTED, serde_json::json!({ "offset": n }));
        }
        if crate::certs::hex(up.hash.finish().as_ref()) != up.sha256 {
            return message(
                StatusCode::BAD_REQUEST,
                "the bytes do not match the SHA-256 given (did the file change?)",
            );
        }
        let item = match tokio::task::block_in_place(|| up.incoming.finish()) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "a drop could not be stored");
                return message(StatusCode::INTERNAL_SERVER_ERROR, "cannot store it");
            }
        };
        tracing::info!(bytes = item.size, "a file was dropped on the Cloud PC");
        let Some(to) = up.to else {
            return answer(
                StatusCode::OK,
                serde_json::json!({ "id": item.id, "status": "stored" }),
            );
        };
        let (s, id) = (senders.clone(), item.id.clone());
        match tokio::task::spawn_blocking(move || s.send_to(ip, &id, &to)).await {
            Ok(Ok(status)) => answer(
                StatusCode::OK,
                serde_json::json!({ "id": item.id, "status": status }),
            ),
            Ok(Err(why)) => answer(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({ "id": item.id, "message": why }),
            ),
            Err(_) => message(StatusCode::INTERNAL_SERVER_ERROR, "forwarding failed"),
        }
    }

    /// Keeps a broken upload (a device keeps at most a few: its oldest goes first).
    fn keep(&self, key: Key, up: Partial) {
        let mut m = self.slots.lock();
        let mine: Vec<(Key, Instant)> = m
            .iter()
            .filter(|(k, _)| k.0 == key.0 && **k != key)
            .filter_map(|(k, v)| match v {
                Slot::Kept(x) => Some((k.clone(), x.seen)),
                Slot::Arriving(_) => None,
            })
            .collect();
        if mine.len() >= PARTIALS_PER_DEVICE {
            if let Some((old, _)) = mine.into_iter().min_by_key(|x| x.1) {
                m.remove(&old);
            }
        }
        m.insert(key, Slot::Kept(Box::new(up)));
    }
}

fn escape(v: &str) -> String {
    percent_encoding::utf8_percent_encode(v, QUERY_VALUE).to_string()
}

/// What [`send`] did.
#[derive(Debug)]
pub struct Sent {
    pub id: String,
    /// `stored`, `delivered` or `queued`.
    pub status: String,
    /// Bytes the hub held already (a broken transfer went on from there).
    pub resumed_at: u64,
}

/// Sends `path` to the Cloud PC at `hub` (an address or name, port 53317 assumed), for device
/// `to` when given; goes on from where a broken transfer of the same file stopped.
pub async fn send(hub: &str, path: &Path, to: Option<&str>) -> anyhow::Result<Sent> {
    use crate::connect::invite::{https_post, Trust};
    use anyhow::Context;
    let port = super::localsend::PORT;
    let authority = match hub.parse::<IpAddr>() {
        Ok(IpAddr::V6(a)) => format!("[{a}]:{port}"),
        _ => format!("{hub}:{port}"),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file")
        .to_string();
    let p = path.to_path_buf();
    let (size, sha256) = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, String)> {
        use std::io::Read;
        let mut f = std::fs::File::open(&p)?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            let k = f.read(&mut buf)?;
            if k == 0 {
                return Ok((n, crate::certs::hex(ctx.finish().as_ref())));
            }
            ctx.update(&buf[..k]);
            n += k as u64;
        }
    })
    .await?
    .with_context(|| format!("cannot read {}", path.display()))?;
    let mut query = format!("sha256={sha256}&name={}&size={size}", escape(&name));
    if let Some(t) = to {
        query.push_str(&format!("&to={}", escape(t)));
    }
    let call = |q: String, body| {
        let authority = authority.clone();
        async move {
            https_post(
                &authority,
                hub,
                &Trust::Tunnel,
                &format!("{PATH}?{q}"),
                "application/octet-stream",
                body,
            )
            .await
        }
    };
    let read_json = |status: u16, b: &Bytes| -> anyhow::Result<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(b).unwrap_or_default();
        if !(200..300).contains(&status) {
            let why = v["message"].as_str().unwrap_or("").to_string();
            anyhow::bail!("the Cloud PC answered {status}: {why}");
        }
        Ok(v)
    };
    let (status, b) = call(
        query.clone(),
        http_body_util::Either::Left(http_body_util::Full::new(Bytes::new())),
    )
    .await
    .with_context(|| format!("cannot reach the Cloud PC at {authority} (through the tunnel)"))?;
    let offset = read_json(status, &b)?["offset"].as_u64().unwrap_or(0);
    let mut f = std::fs::File::open(path)?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset))?;
    let (body, reader) = super::forward::read_body(Box::new(f));
    let r = call(
        format!("{query}&offset={offset}"),
        http_body_util::Either::Right(body),
    )
    .await;
    let _ = reader.await;
    let (status, b) = r.context("the transfer broke off: run the same command again to go on")?;
    let v = read_json(status, &b)?;
    if status == 202 {
        anyhow::bail!(
            "the transfer broke off at {} of {size} bytes: run the same command again to go on",
            v["offset"]
        );
    }
    Ok(Sent {
        id: v["id"].as_str().unwrap_or_default().to_string(),
        status: v["status"].as_str().unwrap_or("stored").to_string(),
        resumed_at: offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_read_back_or_are_refused() {
        let h = "ab".repeat(32);
        let q = format!(
            "sha256={h}&name={}&size=10&to=my%20phone",
            escape("a b/ü.txt")
        );
        let p = params(&q).unwrap();
        assert_eq!(p.name, "a b/ü.txt");
        assert_eq!(p.to.as_deref(), Some("my phone"));
        assert_eq!((p.size, p.offset), (10, None));
        assert_eq!(params(&format!("{q}&offset=4")).unwrap().offset, Some(4));
        for bad in [
            "sha256=ab&name=x&size=1".to_string(),
            format!("sha256={h}&name=x"),
            format!("sha256={h}&name=x&size=-1"),
            format!("sha256={h}&name=x&size=1&size=2"),
            format!("sha256={h}&name=%zz&size=1"),
            format!("sha256={h}&name=x&size=1&offset=y"),
        ] {
            assert_eq!(params(&bad), None, "{bad}");
        }
    }

    #[test]
    fn fuzz_resumable_drop_queries() {
        let seeds = vec![
            format!(
                "sha256={}&name=..%2F..%2Fetc%2Fpasswd&size=1&offset=0",
                "0".repeat(64)
            )
            .into_bytes(),
            b"sha256=&name=%&size=18446744073709551616".to_vec(),
        ];
        crate::fuzz::run(
            "resumable_drop_queries",
            crate::fuzz::bytes(seeds, 300),
            |b| {
                let Ok(s) = std::str::from_utf8(b) else {
                    return;
                };
                if let Some(p) = params(s) {
                    assert_eq!(p.sha256.len(), 64);
                    let q = format!(
                        "sha256={}&name={}&size={}",
                        p.sha256,
                        escape(&p.name),
                        p.size
                    );
                    assert_eq!(params(&q).map(|x| x.name), Some(p.name));
                }
            },
        );
    }
}
