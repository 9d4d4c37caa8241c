//! `cloudpc connect`: the Linux client (see `crate::connect`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The wg-quick config `cloudpc device add` printed for this device.
    #[arg(required_unless_present = "status")]
    pub config: Option<PathBuf>,
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
    let Some(config) = a.config else {
        anyhow::bail!("give the device's config file: cloudpc connect CONFIG");
    };
    crate::connect::run(crate::connect::Options {
        config,
        interface: a.interface,
        tls_port: a.tls_port,
        relay: a.relay,
    })
}
