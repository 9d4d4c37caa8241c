//! `cloudpc init` and `cloudpc device ...`

use super::Globals;

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// HOST[:PORT] that device configs dial.
    #[arg(long)]
    pub endpoint: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum DeviceCmd {
    /// Register a device and print its WireGuard config.
    Add {
        /// Device name (a DNS label: letters, digits, '-').
        name: String,
    },
    /// List registered devices.
    List,
}

pub fn init(_g: &Globals, _a: InitArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}

pub fn device(g: &Globals, c: DeviceCmd) -> anyhow::Result<()> {
    let cfg = g.config()?;
    let mut store = crate::store::Store::open(&g.state_dir())?;
    let overlay = store.overlay(&cfg.wireguard)?;
    match c {
        DeviceCmd::Add { name } => {
            let d = store.add_device(&name, &format!("placeholder-{name}"), false, &overlay)?;
            println!("{} {} {}", d.name, d.ipv4, d.ipv6);
        }
        DeviceCmd::List => {
            for d in store.devices()? {
                println!("{} {} {}", d.name, d.ipv4, d.ipv6);
            }
        }
    }
    Ok(())
}
