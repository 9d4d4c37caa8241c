//! What the client changes on the device, and puts back on exit: the TUN's addresses, the
//! routes (full tunnel with policy routing as wg-quick does it, split tunnel with plain
//! routes), the DNS (systemd-resolved, resolvconf, or `/etc/resolv.conf` itself), and a
//! watcher of network changes (netlink route and address events).
//!
//! Addresses, routes and rules are set with iproute2's `ip`, like wg-quick.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::config::ClientConfig;

/// The routing table and firewall mark of the full tunnel: the client's own sockets carry
/// the mark, so they keep using the main table while everything else goes to the TUN.
pub const TABLE: u32 = 51830;

/// What to undo on exit, in order.
#[derive(Debug, Default)]
pub struct Undo {
    commands: Vec<Vec<String>>,
    resolv_conf: Option<(PathBuf, Vec<u8>)>,
}

impl Undo {
    /// Puts everything back (best effort: each step is tried).
    pub fn run(&mut self) {
        for c in self.commands.drain(..).rev() {
            let _ = quiet(&c);
        }
        if let Some((path, before)) = self.resolv_conf.take() {
            if let Err(e) = std::fs::write(&path, before) {
                tracing::warn!(error = %e, "could not restore {}", path.display());
            }
        }
    }
}

fn quiet(args: &[String]) -> std::io::Result<std::process::ExitStatus> {
    Command::new(&args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Runs a command; its error output becomes the error.
fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", args[0]))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Gives the TUN its addresses and routes. Full tunnel: a default route in [`TABLE`] and
/// the rules `not fwmark TABLE → TABLE`, `main suppress_prefixlength 0`, for each family
/// the config covers whole; other networks of `AllowedIPs` get routes in the main table.
pub fn install_routes(cfg: &ClientConfig, dev: &str, undo: &mut Undo) -> anyhow::Result<()> {
    for a in &cfg.addresses {
        let fam = if a.addr().is_ipv4() { "-4" } else { "-6" };
        run(&["ip", fam, "address", "add", &a.to_string(), "dev", dev])?;
    }
    run(&["ip", "link", "set", "dev", dev, "up"])?;
    let table = TABLE.to_string();
    for net in &cfg.allowed_ips {
        let fam = if net.addr().is_ipv4() { "-4" } else { "-6" };
        if net.prefix_len() == 0 {
            if fam == "-4" {
                // The mark of the client's own sockets must count in reverse-path checks.
                let _ = std::fs::write("/proc/sys/net/ipv4/conf/all/src_valid_mark", "1");
            }
            run(&[
                "ip",
                fam,
                "route",
                "add",
                &net.to_string(),
                "dev",
                dev,
                "table",
                &table,
            ])?;
            let not_marked = [
                "ip", fam, "rule", "add", "not", "fwmark", &table, "table", &table,
            ];
            run(&not_marked)?;
            undo.commands.push(strings(&[
                "ip", fam, "rule", "del", "not", "fwmark", &table, "table", &table,
            ]));
            run(&[
                "ip",
                fam,
                "rule",
                "add",
                "table",
                "main",
                "suppress_prefixlength",
                "0",
            ])?;
            undo.commands.push(strings(&[
                "ip",
                fam,
                "rule",
                "del",
                "table",
                "main",
                "suppress_prefixlength",
                "0",
            ]));
        } else {
            run(&["ip", fam, "route", "replace", &net.to_string(), "dev", dev])?;
        }
    }
    Ok(())
}

fn have(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// Points the system's DNS at the config's servers: systemd-resolved (when it runs),
/// resolvconf (when installed), or `/etc/resolv.conf` itself (kept and put back on exit).
/// Returns which way it took.
pub fn install_dns(cfg: &ClientConfig, dev: &str, undo: &mut Undo) -> anyhow::Result<&'static str> {
    if cfg.dns.is_empty() {
        return Ok("none");
    }
    let servers: Vec<String> = cfg.dns.iter().map(IpAddr::to_string).collect();
    if have("resolvectl") && Path::new("/run/systemd/resolve/io.systemd.Resolve").exists() {
        let mut args = vec!["resolvectl", "dns", dev];
        args.extend(servers.iter().map(String::as_str));
        run(&args)?;
        let mut domains: Vec<String> = cfg.search.clone();
        if cfg.full_tunnel() {
            domains.push("~.".into());
        }
        if !domains.is_empty() {
            let mut args = vec!["resolvectl", "domain", dev];
            args.extend(domains.iter().map(String::as_str));
            run(&args)?;
        }
        undo.commands.push(strings(&["resolvectl", "revert", dev]));
        return Ok("systemd-resolved");
    }
    let text = resolv_conf_text(cfg);
    if have("resolvconf") {
        let mut child = Command::new("resolvconf")
            .args(["-a", &format!("tun.{dev}"), "-m", "0", "-x"])
            .stdin(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(text.as_bytes())?;
        }
        if child.wait()?.success() {
            undo.commands
                .push(strings(&["resolvconf", "-d", &format!("tun.{dev}"), "-f"]));
            return Ok("resolvconf");
        }
    }
    let path = PathBuf::from("/etc/resolv.conf");
    let before = std::fs::read(&path).unwrap_or_default();
    std::fs::write(&path, text)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    undo.resolv_conf = Some((path, before));
    Ok("/etc/resolv.conf")
}

/// The resolv.conf lines for the config's DNS.
pub fn resolv_conf_text(cfg: &ClientConfig) -> String {
    let mut s = String::from("# written by cloudpc connect; put back when it exits\n");
    for ip in &cfg.dns {
        s.push_str(&format!("nameserver {ip}\n"));
    }
    if !cfg.search.is_empty() {
        s.push_str(&format!("search {}\n", cfg.search.join(" ")));
    }
    s
}

/// Sets the firewall mark of a socket (full tunnel: the client's own traffic stays out of
/// the TUN).
pub fn set_mark(fd: &impl AsRawFd, mark: u32) -> std::io::Result<()> {
    let v = mark as libc::c_int;
    // SAFETY: a valid socket and a c_int option of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A netlink socket subscribed to address and route changes of every interface.
pub struct NetWatch {
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
}

impl NetWatch {
    pub fn new() -> std::io::Result<NetWatch> {
        // SAFETY: plain socket(2)/bind(2) calls; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh socket nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = (libc::RTMGRP_IPV4_IFADDR
            | libc::RTMGRP_IPV6_IFADDR
            | libc::RTMGRP_IPV4_ROUTE
            | libc::RTMGRP_IPV6_ROUTE) as u32;
        // SAFETY: `sa` is a valid sockaddr_nl of the given size.
        let r = unsafe {
            libc::bind(
                owned.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the AsyncFd owns the fd and it is not closed elsewhere while registered.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        Ok(NetWatch { fd })
    }

    /// Waits for the next change (the messages themselves are not needed: any change is a
    /// reason to check the path).
    pub async fn changed(&self) {
        let mut buf = [0u8; 8192];
        loop {
            let Ok(mut g) = self.fd.readable().await else {
                return std::future::pending().await;
            };
            let mut got = false;
            loop {
                // SAFETY: reading into a buffer of the given length.
                let n = unsafe {
                    libc::recv(
                        self.fd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                    )
                };
                if n > 0 {
                    got = true;
                    continue;
                }
                break;
            }
            g.clear_ready();
            if got {
                return;
            }
        }
    }
}
