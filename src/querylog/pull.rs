//! `cloudpc querylog pull`: an owner device fetches the encrypted entries and reads them.
//!
//! Runs on the device, not the hub. It asks the hub's sync API (see [`super::sync`]) for every
//! entry after the last sequence number it has, keeps the ciphertexts in a local SQLite copy
//! (`DIR/hub-ADDR.db`, one per hub), and decrypts them with the device's age identity file.
//! A damaged entry is skipped and counted; it never stops the others.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rusqlite::{params, Connection, OptionalExtension};

use super::entry::{self, DecryptFailure, LogEntry};
use super::sync::SYNC_PORT;

/// A response body larger than this is refused (a full page is well under 1 MiB).
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Connect and per-request limits.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// `--hub` is not `ADDR[:PORT]`.
    #[error("--hub {0:?}: expected an address like 100.96.0.1, 100.96.0.1:8053, [fd12::1]:8053 or a host name")]
    BadHub(String),
    /// The hub's name did not resolve.
    #[error("cannot resolve hub {host}: {error}")]
    Resolve { host: String, error: std::io::Error },
    /// No TCP connection to the hub.
    #[error("cannot connect to the hub at {addr}: {error} (is the tunnel up, and is `cloudpc run` running with the query log sync API?)")]
    Connect {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// The hub did not answer in time.
    #[error("the hub at {0} did not answer in time")]
    Timeout(SocketAddr),
    /// HTTP failed mid-way.
    #[error("query log sync with the hub failed: {0}")]
    Http(String),
    /// The hub refused: this device is not an owner.
    #[error("the hub refused: {0}")]
    Refused(String),
    /// Any other HTTP status.
    #[error("the hub answered {status}: {message}")]
    Status { status: u16, message: String },
    /// The response is not the sync API's JSON.
    #[error("the hub's answer is not a query log page: {0}")]
    Protocol(String),
    /// The identity file could not be used.
    #[error("identity file {path}: {message}")]
    Identity { path: PathBuf, message: String },
    /// The local copy could not be read or written.
    #[error("local copy {path}: {error}")]
    Local {
        path: PathBuf,
        error: rusqlite::Error,
    },
    /// The local directory could not be created.
    #[error("cannot create {path}: {error}")]
    LocalDir {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// A hub address: host (IP or name) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubAddr {
    pub host: String,
    pub port: u16,
}

impl HubAddr {
    /// Parses `ADDR[:PORT]`; the port defaults to [`SYNC_PORT`].
    pub fn parse(s: &str) -> Result<HubAddr, PullError> {
        let bad = || PullError::BadHub(s.chars().take(100).collect());
        let s = s.trim();
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(HubAddr {
                host: sa.ip().to_string(),
                port: sa.port(),
            });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(HubAddr {
                host: ip.to_string(),
                port: SYNC_PORT,
            });
        }
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let ip: Ipv6Addr = inner.parse().map_err(|_| bad())?;
            return Ok(HubAddr {
                host: ip.to_string(),
                port: SYNC_PORT,
            });
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
            None => (s, SYNC_PORT),
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !host_ok || port == 0 {
            return Err(bad());
        }
        Ok(HubAddr {
            host: host.to_string(),
            port,
        })
    }

    /// File-name-safe form, for the local copy.
    fn file_stem(&self) -> String {
        let h: String = self
            .host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("hub-{h}-{}", self.port)
    }

    async fn resolve(&self) -> Result<Vec<SocketAddr>, PullError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|error| PullError::Resolve {
                host: self.host.clone(),
                error,
            })?;
        Ok(addrs.collect())
    }
}

/// Reads an age identity file (`AGE-SECRET-KEY-1...` lines, as `age-keygen` writes).
pub fn load_identities(
    path: &Path,
) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, PullError> {
    let err = |message: String| PullError::Identity {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let parsed = age::IdentityFile::from_buffer(std::io::BufReader::new(file)).map_err(|e| {
        err(format!(
            "{e}; expected an age identity file with an AGE-SECRET-KEY-1... line, as `age-keygen -o FILE` writes"
        ))
    })?;
    let ids = parsed.into_identities().map_err(|e| err(e.to_string()))?;
    if ids.is_empty() {
        return Err(err(
            "no AGE-SECRET-KEY-1... line found (age-keygen -o FILE makes one)".into(),
        ));
    }
    Ok(ids)
}

#[derive(Debug, serde::Deserialize)]
struct WireEntry {
    seq: i64,
    time: i64,
    data: String,
}

#[derive(Debug, serde::Deserialize)]
struct WirePage {
    log_id: String,
    enabled: bool,
    last_seq: i64,
    more: bool,
    entries: Vec<WireEntry>,
}

#[derive(Debug, serde::Deserialize)]
struct WireError {
    error: String,
}

/// One GET of the sync API over a fresh connection, optionally from a chosen source address.
async fn fetch_page(
    addr: SocketAddr,
    source: Option<IpAddr>,
    host: &str,
    since: i64,
) -> Result<WirePage, PullError> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|error| PullError::Connect { addr, error })?;
    if let Some(src) = source {
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(|error| PullError::Connect { addr, error })?;
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
        .await
        .map_err(|_| PullError::Timeout(addr))?
        .map_err(|error| PullError::Connect { addr, error })?;
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| PullError::Http(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let req = Request::get(format!("/querylog?since={since}"))
            .header("host", host)
            .header("accept", "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| PullError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| PullError::Http(e.to_string()))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| PullError::Http(e.to_string()))?
            .to_bytes();
        driver.abort();
        Ok::<_, PullError>((status, body))
    };
    let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| PullError::Timeout(addr))??;
    let message = || {
        serde_json::from_slice::<WireError>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect())
    };
    match status {
        StatusCode::OK => {
            serde_json::from_slice(&body).map_err(|e| PullError::Protocol(e.to_string()))
        }
        StatusCode::FORBIDDEN => Err(PullError::Refused(message())),
        s => Err(PullError::Status {
            status: s.as_u16(),
            message: message(),
        }),
    }
}

/// The local copy of one hub's ciphertexts.
pub struct LocalCopy {
    conn: Connection,
    path: PathBuf,
}

impl LocalCopy {
    /// Opens (creating) `dir/hub-ADDR-PORT.db`.
    pub fn open(dir: &Path, hub: &HubAddr) -> Result<LocalCopy, PullError> {
        std::fs::create_dir_all(dir).map_err(|error| PullError::LocalDir {
            path: dir.to_path_buf(),
            error,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let path = dir.join(format!("{}.db", hub.file_stem()));
        let local = |error| PullError::Local {
            path: path.clone(),
            error,
        };
        let conn = Connection::open(&path).map_err(local)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(local)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS entries (
                 log_id TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 time INTEGER NOT NULL,
                 data BLOB NOT NULL,
                 PRIMARY KEY (log_id, seq)
             );
             CREATE INDEX IF NOT EXISTS entries_time ON entries(time);
             CREATE TABLE IF NOT EXISTS cursors (log_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )
        .map_err(local)?;
        Ok(LocalCopy { conn, path })
    }

    fn err(&self, error: rusqlite::Error) -> PullError {
        PullError::Local {
            path: self.path.clone(),
            error,
        }
    }

    /// The log id seen last and our cursor in it.
    fn current(&self) -> Result<(String, i64), PullError> {
        let id: Option<String> = self
            .conn
            .query_row("SELECT value FROM state WHERE key = 'log_id'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        let id = id.unwrap_or_default();
        Ok((id.clone(), self.cursor(&id)?))
    }

    fn cursor(&self, log_id: &str) -> Result<i64, PullError> {
        let c: Option<i64> = self
            .conn
            .query_row(
                "SELECT last_seq FROM cursors WHERE log_id = ?1",
                [log_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(c.unwrap_or(0))
    }

    /// Stores one page and moves the cursor, in one transaction. Returns (stored, damaged).
    fn store_page(&self, page: &WirePage, cursor: i64) -> Result<(u64, u64), PullError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let (mut stored, mut damaged) = (0, 0);
        let mut next = cursor;
        for e in &page.entries {
            next = next.max(e.seq);
            match base64::engine::general_purpose::STANDARD.decode(&e.data) {
                Ok(data) => {
                    stored += tx
                        .execute(
                            "INSERT OR IGNORE INTO entries(log_id, seq, time, data) VALUES (?1, ?2, ?3, ?4)",
                            params![page.log_id, e.seq, e.time, data],
                        )
                        .map_err(|e| self.err(e))? as u64;
                }
                Err(_) => damaged += 1,
            }
        }
        tx.execute(
            "INSERT INTO cursors(log_id, last_seq) VALUES (?1, ?2)
             ON CONFLICT(log_id) DO UPDATE SET last_seq = excluded.last_seq",
            params![page.log_id, next],
        )
        .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO state(key, value) VALUES ('log_id', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [&page.log_id],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok((stored, damaged))
    }

    /// Ciphertexts with `time >= since_secs` (all when `None`), oldest first; with
    /// `min_rowid`, only rows added after that row id (this pull's).
    fn ciphertexts(
        &self,
        since_secs: Option<i64>,
        min_rowid: Option<i64>,
    ) -> Result<Vec<(i64, Vec<u8>)>, PullError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT seq, data FROM entries WHERE time >= ?1 AND rowid > ?2
                 ORDER BY time, log_id, seq",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(
                params![since_secs.unwrap_or(i64::MIN), min_rowid.unwrap_or(0)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn max_rowid(&self) -> Result<i64, PullError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(rowid), 0) FROM entries", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))
    }

    /// Entries in the local copy.
    pub fn len(&self) -> Result<u64, PullError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM entries", [], |r| r.get::<_, i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| self.err(e))
    }

    /// True when the local copy holds no entry.
    pub fn is_empty(&self) -> Result<bool, PullError> {
        Ok(self.len()? == 0)
    }
}

/// What to pull and print.
#[derive(Debug, Clone)]
pub struct PullRequest {
    pub hub: HubAddr,
    /// Connect from this address (default: the OS picks, which over the tunnel is the overlay address).
    pub source: Option<IpAddr>,
    /// Directory of the local copies.
    pub dir: PathBuf,
    /// Show entries from this Unix millisecond on (from the whole local copy); `None` shows only
    /// the entries this pull fetched.
    pub since_ms: Option<i64>,
}

/// One decrypted entry with its hub sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledEntry {
    pub seq: i64,
    pub entry: LogEntry,
}

/// The outcome of a pull.
#[derive(Debug, Default)]
pub struct PullReport {
    /// Entries fetched and stored this time.
    pub fetched: u64,
    /// Entries in the local copy after the pull.
    pub local_total: u64,
    /// Decrypted entries to show, oldest first.
    pub entries: Vec<PulledEntry>,
    /// Damaged entries skipped (bad base64, bad ciphertext, bad plaintext).
    pub damaged: u64,
    /// Intact entries encrypted to other keys.
    pub not_for_this_key: u64,
    /// Whether the hub's query log is on.
    pub hub_enabled: bool,
}

/// Fetches every new entry from the hub into the local copy (no decryption).
/// Returns (entries stored, entries damaged in transit and skipped, whether the hub's log is on).
async fn sync_local(req: &PullRequest, local: &LocalCopy) -> Result<(u64, u64, bool), PullError> {
    let addrs = req.hub.resolve().await?;
    let addr = *addrs
        .first()
        .ok_or_else(|| PullError::BadHub(req.hub.host.clone()))?;
    let host = match addr {
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        SocketAddr::V4(a) => a.to_string(),
    };
    let (mut log_id, mut since) = local.current()?;
    let (mut fetched, mut damaged) = (0u64, 0u64);
    let mut restarted = false;
    let mut enabled;
    loop {
        let page = fetch_page(addr, req.source, &host, since).await?;
        enabled = page.enabled;
        if page.log_id != log_id || page.last_seq < since {
            // A different log (the hub's state was recreated), or one that went backwards:
            // continue from our cursor in that log, or from its start.
            if restarted {
                return Err(PullError::Protocol(
                    "the hub's sequence numbers went backwards".into(),
                ));
            }
            restarted = true;
            let cursor = if page.log_id == log_id {
                0
            } else {
                local.cursor(&page.log_id)?
            };
            log_id = page.log_id.clone();
            since = if cursor > page.last_seq { 0 } else { cursor };
            continue;
        }
        if page.entries.iter().any(|e| e.seq <= since) {
            return Err(PullError::Protocol("entries out of order".into()));
        }
        let (s, d) = local.store_page(&page, since)?;
        fetched += s;
        damaged += d;
        since = page.entries.iter().map(|e| e.seq).max().unwrap_or(since);
        if !page.more || page.entries.is_empty() {
            break;
        }
    }
    Ok((fetched, damaged, enabled))
}

/// Pulls from the hub, then decrypts what is to be shown. Damaged entries are counted, not fatal.
pub async fn pull(
    req: &PullRequest,
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> Result<PullReport, PullError> {
    let local = LocalCopy::open(&req.dir, &req.hub)?;
    let before = local.max_rowid()?;
    let (fetched, damaged_wire, hub_enabled) = sync_local(req, &local).await?;
    let rows = match req.since_ms {
        Some(ms) => local.ciphertexts(Some(ms.div_euclid(1000)), None)?,
        None => local.ciphertexts(None, Some(before))?,
    };
    let mut report = decrypt_rows(&rows, identities, req.since_ms);
    report.fetched = fetched;
    report.hub_enabled = hub_enabled;
    report.damaged += damaged_wire;
    report.local_total = local.len()?;
    Ok(report)
}

/// Decrypts ciphertexts, skipping and counting the ones that fail; keeps those at or after `since_ms`.
pub fn decrypt_rows(
    rows: &[(i64, Vec<u8>)],
    identities: &[Box<dyn age::Identity + Send + Sync>],
    since_ms: Option<i64>,
) -> PullReport {
    let mut report = PullReport::default();
    for (seq, data) in rows {
        match entry::decrypt(identities, data) {
            Ok(e) if since_ms.is_none_or(|s| e.time_ms >= s) => report.entries.push(PulledEntry {
                seq: *seq,
                entry: e,
            }),
            Ok(_) => {}
            Err(DecryptFailure::NotForThisKey) => report.not_for_this_key += 1,
            Err(DecryptFailure::Corrupt(_)) => report.damaged += 1,
        }
    }
    report.entries.sort_by_key(|e| (e.entry.time_ms, e.seq));
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::querylog::Verdict;
    use age::x25519;

    #[test]
    fn hub_addresses_parse_with_default_port() {
        let p = |s| HubAddr::parse(s).unwrap();
        assert_eq!(p("100.96.0.1").port, SYNC_PORT);
        assert_eq!(p("100.96.0.1:9000").port, 9000);
        assert_eq!(p("[fd00::1]:9000").host, "fd00::1");
        assert_eq!(p("[fd00::1]").port, SYNC_PORT);
        assert_eq!(p("fd00::1").port, SYNC_PORT);
        assert_eq!(p("hub.mesh").host, "hub.mesh");
        for bad in ["", "hub.mesh:x", "a b", "1.2.3.4:99999", "[zz]"] {
            assert!(HubAddr::parse(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn hub_parser_never_panics(s in "\\PC{0,60}") {
            let _ = HubAddr::parse(&s);
        }
    }

    fn sample(name: &str, ms: i64) -> LogEntry {
        LogEntry {
            time_ms: ms,
            device: Some("phone".into()),
            client: "100.96.0.2".parse().unwrap(),
            name: name.into(),
            qtype: 1,
            verdict: Verdict::Cached,
            rcode: 0,
            upstream_ms: None,
        }
    }

    #[test]
    fn corrupted_entry_is_skipped_and_counted() {
        let id = x25519::Identity::generate();
        let r = [id.to_public()];
        let good1 = entry::encrypt(&r, &sample("a.example", 1000).encode()).unwrap();
        let good2 = entry::encrypt(&r, &sample("b.example", 2000).encode()).unwrap();
        let mut bad = good2.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        let other = x25519::Identity::generate();
        let foreign = entry::encrypt(&[other.to_public()], &sample("c", 3000).encode()).unwrap();
        let rows = vec![
            (1, good1),
            (2, bad),
            (3, b"not age at all".to_vec()),
            (4, good2),
            (5, foreign),
        ];
        let ids: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(id)];

        let rep = decrypt_rows(&rows, &ids, None);

        let names: Vec<_> = rep.entries.iter().map(|e| e.entry.name.as_str()).collect();
        assert_eq!(names, ["a.example", "b.example"]);
        assert_eq!(rep.damaged, 2);
        assert_eq!(rep.not_for_this_key, 1);
        let later = decrypt_rows(&rows, &ids, Some(1500));
        assert_eq!(later.entries.len(), 1);
    }

    #[test]
    fn identity_file_as_age_keygen_writes_it_loads() {
        use age::secrecy::ExposeSecret;
        let dir = tempfile::tempdir().unwrap();
        let id = x25519::Identity::generate();
        let path = dir.path().join("key.txt");
        std::fs::write(
            &path,
            format!(
                "# created: 2026-11-26T16:00:00Z\n# public key: {}\n{}\n",
                id.to_public(),
                id.to_string().expose_secret()
            ),
        )
        .unwrap();
        assert_eq!(load_identities(&path).unwrap().len(), 1);

        std::fs::write(&path, format!("{}\n", id.to_public())).unwrap();
        let e = load_identities(&path).err().unwrap().to_string();
        assert!(e.contains("AGE-SECRET-KEY-1"), "{e}");
    }
}
