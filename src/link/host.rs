//! The kernel's part of the links: the nftables table (mark, destination prefix translation,
//! source NAT into each tunnel) and one policy-routing rule and table per link. Replaced whole
//! at each change; removed at shutdown.

use std::io::Write;
use std::process::{Command, Stdio};

use super::{ruleset, LinkNet, FIRST_TABLE, MAX_LINKS};

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn nft(text: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(text.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft refused the links' table: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes every rule and table this module may have made.
pub fn clear() {
    // Declaring the table first makes the delete succeed when there is none.
    let _ = nft("table ip cloudpc_links\ndelete table ip cloudpc_links\n");
    for i in 0..MAX_LINKS as u32 {
        let t = (FIRST_TABLE + i).to_string();
        let _ = Command::new("ip")
            .args(["-4", "rule", "del", "priority", &t])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["-4", "route", "flush", "table", &t])
            .stderr(Stdio::null())
            .status();
    }
}

/// Puts `nets` in force (their tunnels' interfaces must exist); `hub_tun` is the hub's TUN.
pub fn apply(nets: &[LinkNet], hub_tun: &str) -> Result<(), String> {
    clear();
    if nets.is_empty() {
        return Ok(());
    }
    // Packets between the hub's TUN and the links' are forwarded by the kernel.
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
    nft(&format!(
        "table ip cloudpc_links\ndelete table ip cloudpc_links\n{}",
        ruleset(nets, hub_tun)
    ))?;
    for n in nets {
        let t = n.table.to_string();
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{}/rp_filter", n.interface),
            "0",
        );
        run(
            Command::new("ip").args([
                "-4",
                "route",
                "replace",
                "default",
                "dev",
                &n.interface,
                "table",
                &t,
            ]),
            "the link's route",
        )?;
        run(
            Command::new("ip").args([
                "-4",
                "rule",
                "add",
                "fwmark",
                &format!("{:#x}", n.mark),
                "lookup",
                &t,
                "priority",
                &t,
            ]),
            "the link's routing rule",
        )?;
    }
    Ok(())
}
