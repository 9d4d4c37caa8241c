//! `cloudpc drop`: the Cloud PC's inbox of files dropped on it with LocalSend (read from the
//! state dir, so it works whether or not the hub runs).

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum DropCmd {
    /// List the files in the inbox.
    List,
    /// Write a file's contents out (decrypted).
    Get {
        id: String,
        /// Where to write it (default: its own name, in this directory; `-` = standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// The owner's age identity file, for files encrypted to the owner's keys.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Send a file to a device's LocalSend app: at once when it is online, else as soon as it
    /// comes online. FILE is an inbox id, or a file on this machine (put in the inbox first).
    /// On a device (no hub runs here, or with --hub) the file goes through the tunnel to the
    /// Cloud PC, which forwards it; a transfer that broke off goes on where it stopped when
    /// the same command runs again.
    Send {
        file: String,
        /// The device to send it to.
        #[arg(long)]
        to: String,
        /// The Cloud PC to send through, from a device (default: hub.mesh when no hub runs on
        /// this machine).
        #[arg(long, value_name = "ADDRESS")]
        hub: Option<String>,
    },
    /// Remove a file from the inbox.
    Remove { id: String },
}

fn read_identity(p: &PathBuf) -> anyhow::Result<age::x25519::Identity> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{} holds no age identity (AGE-SECRET-KEY-1…)", p.display()))
}

/// `drop send FILE` from a device: through the tunnel to the Cloud PC at `hub`.
fn send_from_device(hub: &str, file: &str, to: &str) -> anyhow::Result<()> {
    let path = std::path::Path::new(file);
    if !path.is_file() {
        anyhow::bail!("{file} is not a file here (inbox ids are sent on the Cloud PC itself)");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sent = rt.block_on(crate::drop::resume::send(hub, path, Some(to)))?;
    if sent.resumed_at > 0 {
        eprintln!(
            "Went on from byte {} of the broken transfer.",
            sent.resumed_at
        );
    }
    match sent.status.as_str() {
        "delivered" => eprintln!(
            "Sent {file} to {to} (through the Cloud PC, as {}).",
            sent.id
        ),
        _ => eprintln!(
            "The Cloud PC has {file} ({}); {to} is not online: it goes to it as soon as it is.",
            sent.id
        ),
    }
    Ok(())
}

pub fn drop_cmd(g: &Globals, c: DropCmd) -> anyhow::Result<()> {
    if let DropCmd::Send { file, to, hub } = &c {
        let here = crate::api::Client::connect(&g.state_dir())?.is_some();
        match hub {
            Some(h) => return send_from_device(h, file, to),
            None if !here && !g.state_dir().exists() => {
                return send_from_device("hub.mesh", file, to)
            }
            None => {}
        }
    }
    let cfg = g.config()?;
    let inbox = crate::drop::Inbox::open(&g.state_dir(), cfg.drop.settings())?;
    match c {
        DropCmd::List => {
            println!(
                "{:<17} {:>12} {:<16} {:<22} NAME",
                "ID", "BYTES", "FROM", "RECEIVED"
            );
            for i in inbox.list() {
                let when = jiff::Timestamp::from_second(i.received_at)
                    .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
                    .unwrap_or_default();
                println!(
                    "{:<17} {:>12} {:<16} {:<22} {}",
                    i.id, i.size, i.from, when, i.name
                );
            }
        }
        DropCmd::Get {
            id,
            output,
            identity,
        } => {
            let item = inbox
                .list()
                .into_iter()
                .find(|i| i.id == id)
                .ok_or_else(|| {
                    anyhow::anyhow!("no file {id} in the inbox; `cloudpc drop list` shows them")
                })?;
            let ident = identity.as_ref().map(read_identity).transpose()?;
            let mut r = inbox
                .open_plain(&id, ident.as_ref().map(|i| i as &dyn age::Identity))
                .map_err(anyhow::Error::msg)?;
            let out = output.unwrap_or_else(|| PathBuf::from(&item.name));
            if out.as_os_str() == "-" {
                std::io::copy(&mut r, &mut std::io::stdout().lock())?;
            } else {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&out)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
                std::io::copy(&mut r, &mut f)?;
                f.flush()?;
                eprintln!("Wrote {} ({} bytes).", out.display(), item.size);
            }
        }
        DropCmd::Send { file, to, .. } => {
            let id = if std::path::Path::new(&file).is_file() {
                inbox.add_file(std::path::Path::new(&file), "hub")?.id
            } else {
                file
            };
            let m = super::Manager::open(g)?;
            if !m.is_running() {
                anyhow::bail!("files are sent by the running hub: start `cloudpc run` first (the file {id} stays in the inbox)");
            }
            match m.api().send_drop(&id, &to)?.as_str() {
                "delivered" => eprintln!("Sent {id} to {to}."),
                _ => eprintln!("{to} is not online: {id} goes to it as soon as it is."),
            }
        }
        DropCmd::Remove { id } => {
            if !inbox.remove(&id) {
                anyhow::bail!("no file {id} in the inbox; `cloudpc drop list` shows them");
            }
            eprintln!("Removed {id}.");
        }
    }
    Ok(())
}
