//! `cloudpc connect`: the Linux client (see `crate::connect`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The wg-quick config `cloudpc device add` printed for this device.
    #[arg(required_unless_present_any = ["status", "invite"], conflicts_with = "invite")]
    pub config: Option<PathBuf>,
    /// Join with an invite link (`cloudpc invite create`): this device makes its key pair,
    /// registers with the hub, writes its config (`--output`) and connects.
    #[arg(long, value_name = "LINK")]
    pub invite: Option<String>,
    /// With --invite: this device's name (default: the person's name and a number).
    #[arg(long, requires = "invite")]
    pub name: Option<String>,
    /// With --invite: where to write the config (default: NAME.conf in this directory).
    #[arg(long, requires = "invite", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Name of the TUN interface (also names the running client for `--status`).
    #[arg(long, default_value = "cloudpc")]
    pub interface: String,
    /// TCP port of the hub's TLS transport.
    #[arg(long, default_value_t = 443)]
    pub tls_port: u16,
    /// Only relay: a stock WireGuard on this machine sets its Endpoint to this address
    /// (e.g. 127.0.0.1:51820) and gets the TLS fallback too. No TUN, routes or DNS.
    #[arg(long, value_name = "ADDR")]
    pub relay: Option<SocketAddr>,
    /// Show what the running client of `--interface` is doing: transport, endpoint, last
    /// handshake, bytes.
    #[arg(long)]
    pub status: bool,
    /// With --status: print JSON.
    #[arg(long, requires = "status")]
    pub json: bool,
}

pub fn connect(a: ConnectArgs) -> anyhow::Result<()> {
    if a.status {
        return crate::connect::print_status(&a.interface, a.json);
    }
    let config = match (&a.invite, a.config) {
        (Some(link), _) => {
            let link = crate::connect::invite::parse_link(link)?;
            let (name, text) = crate::connect::invite::redeem(&link, a.name.as_deref())?;
            let path = a
                .output
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{name}.conf")));
            write_private(&path, &text)?;
            eprintln!(
                "Joined as {name:?}; the config (with this device's private key) is in {}.",
                path.display()
            );
            path
        }
        (None, Some(c)) => c,
        (None, None) => anyhow::bail!("give the device's config file: cloudpc connect CONFIG"),
    };
    crate::connect::run(crate::connect::Options {
        config,
        interface: a.interface,
        tls_port: a.tls_port,
        relay: a.relay,
    })
}

/// Writes `text` readable by its owner only (it holds a private key); never over a file.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
