//! The cross-platform WireGuard UAPI (`/var/run/wireguard/<interface>.sock`), read side, so
//! `wg show <interface>` works on the hub.
//!
//! `get=1` answers with the listen port and, per device, its public key, endpoint, allowed
//! IPs (its two overlay addresses), last handshake and byte counters. The hub's private key is
//! deliberately not served: `wg show` then prints no interface public key (`cloudpc status`
//! and the device configs carry it), and a socket that hands out the hub key cannot leak it.
//! `set=1` is refused with `errno=1` (EPERM): devices are managed with `cloudpc device`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use super::engine::Engine;

/// Directory of WireGuard UAPI sockets, as `wg` looks for them.
pub const UAPI_DIR: &str = "/var/run/wireguard";

/// The socket path for `interface`.
pub fn socket_path(interface: &str) -> PathBuf {
    Path::new(UAPI_DIR).join(format!("{interface}.sock"))
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// The `get=1` answer.
pub fn render_get(engine: &Engine, listen_port: u16, now: SystemTime) -> String {
    let mut out = format!("listen_port={listen_port}\n");
    let table = engine.table.load();
    let mut peers: Vec<_> = table.peers().collect();
    peers.sort_by_key(|p| p.index);
    for p in peers {
        let st = p.stats(std::time::Instant::now());
        let (hs, tx, rx) = (st.since_handshake, st.tx_bytes, st.rx_bytes);
        let _ = writeln!(out, "public_key={}", hex(&p.public_key));
        if let Some(ep) = p.endpoint() {
            let _ = writeln!(out, "endpoint={}", ep.addr);
        }
        let _ = writeln!(out, "allowed_ip={}/32", p.addrs.v4);
        let _ = writeln!(out, "allowed_ip={}/128", p.addrs.v6);
        let (sec, nsec) = match hs.and_then(|d| now.checked_sub(d)) {
            Some(t) => {
                let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                (d.as_secs(), d.subsec_nanos())
            }
            None => (0, 0),
        };
        let _ = writeln!(out, "last_handshake_time_sec={sec}");
        let _ = writeln!(out, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(out, "rx_bytes={rx}");
        let _ = writeln!(out, "tx_bytes={tx}");
        out.push_str("persistent_keepalive_interval=0\nprotocol_version=1\n");
    }
    out.push_str("errno=0\n\n");
    out
}

/// Binds the socket (replacing a stale one), mode 0600.
pub fn bind(interface: &str) -> std::io::Result<(UnixListener, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(UAPI_DIR)?;
    let path = socket_path(interface);
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok((l, path))
}

/// Serves UAPI connections until the task is aborted.
pub async fn serve(listener: UnixListener, engine: Arc<Engine>, listen_port: u16) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = match line.as_str() {
                    "get=1" => {
                        // The request ends with an empty line.
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l.is_empty() {
                                break;
                            }
                        }
                        render_get(&engine, listen_port, SystemTime::now())
                    }
                    "set=1" => {
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l.is_empty() {
                                break;
                            }
                        }
                        "errno=1\n\n".to_string()
                    }
                    "" => continue,
                    _ => return,
                };
                if w.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}
