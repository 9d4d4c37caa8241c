//! `cloudpc connect --status`: what the client is doing, served as JSON on a Unix socket and
//! printed by a second invocation.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;

use super::path::Mode;
use super::{Client, Link};

/// Where the status socket of the client of interface `dev` is.
pub fn status_socket(dev: &str) -> PathBuf {
    PathBuf::from(format!("/run/cloudpc/connect-{dev}.sock"))
}

/// What `--status` prints (JSON over the status socket).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub interface: String,
    pub relay: bool,
    pub transport: String,
    pub endpoint: String,
    pub doing: String,
    pub last_handshake_secs_ago: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub switches: u64,
}

fn status_of(link: &Link, client: Option<&Client>, dev: &str, relay: bool) -> Status {
    let now = Instant::now();
    let p = link.path.lock().clone();
    let (hs, tx, rx) = match client {
        Some(c) => {
            let (hs, tx, rx, _, _) = c.tunn.lock().stats();
            (hs, tx as u64, rx as u64)
        }
        None => (
            None,
            link.relay_tx.load(Ordering::Relaxed),
            link.relay_rx.load(Ordering::Relaxed),
        ),
    };
    let endpoint = match p.mode() {
        Mode::Udp => link.hub_udp,
        Mode::Tls => link.hub_tls,
    };
    Status {
        interface: dev.to_string(),
        relay,
        transport: match p.mode() {
            Mode::Udp => "udp".into(),
            Mode::Tls => "tls".into(),
        },
        endpoint: endpoint.to_string(),
        doing: match (p.mode(), p.tls_up(), link.tls_problem.lock().as_deref()) {
            (Mode::Tls, false, Some(why)) => format!("{} (last: {why})", p.doing(now)),
            _ => p.doing(now),
        },
        last_handshake_secs_ago: hs.map(|d| d.as_secs()),
        rx_bytes: rx,
        tx_bytes: tx,
        switches: link.switches.load(Ordering::Relaxed),
    }
}

/// Answers `--status` on the status socket.
pub(super) fn status_server(
    dev: String,
    relay: bool,
    link: Arc<Link>,
    client: Option<Arc<Client>>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let path = status_socket(&dev);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&path);
    let l = tokio::net::UnixListener::bind(&path)
        .map_err(|e| anyhow::anyhow!("cannot serve status on {}: {e}", path.display()))?;
    Ok(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let st = status_of(&link, client.as_deref(), &dev, relay);
            let mut body = serde_json::to_vec(&st).unwrap_or_default();
            body.push(b'\n');
            let _ = s.write_all(&body).await;
        }
    })
}

/// `cloudpc connect --status`: what the client of `dev` is doing.
pub fn print_status(dev: &str, json: bool) -> anyhow::Result<()> {
    use std::io::Read;
    let path = status_socket(dev);
    let mut s = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        anyhow::anyhow!(
            "no cloudpc connect runs for {dev} ({}: {e}); start it with `cloudpc connect CONFIG`",
            path.display()
        )
    })?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    if json {
        print!("{text}");
        return Ok(());
    }
    let st: Status = serde_json::from_str(&text)?;
    println!(
        "interface:      {}{}",
        st.interface,
        if st.relay { " (relay)" } else { "" }
    );
    println!("transport:      {}", st.transport);
    println!("endpoint:       {}", st.endpoint);
    println!("doing:          {}", st.doing);
    match st.last_handshake_secs_ago {
        Some(s) => println!("last handshake: {s}s ago"),
        None => println!("last handshake: never"),
    }
    println!("received:       {} bytes", st.rx_bytes);
    println!("sent:           {} bytes", st.tx_bytes);
    println!("switches:       {}", st.switches);
    Ok(())
}
