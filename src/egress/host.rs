//! The host's side of temporary egress addresses: where they come from (the egress
//! interface's global /64, or a configured prefix), whether the IPv4 pool's addresses are this
//! machine's, and making replies to the addresses reach the hub: neighbour-discovery proxy
//! entries for an on-link prefix (as if each address were configured on the interface), or
//! one `blackhole` route for a routed prefix (replies are un-NATed by conntrack before the
//! route is looked up; anything else sent to the prefix is dropped instead of going back to
//! the provider's router, and never reaches the hub's own services, which a `local` route
//! would expose on every temporary address). Everything installed is removed by
//! [`HostEgress::remove`] (on exit) and the sysctls it changed are put back.
//!
//! Changes go through `ip -batch` (iproute2) in one process per change.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ipnet::Ipv6Net;

use super::temporary::Pool;

/// `[egress]`'s temporary-address settings, as read from the config.
#[derive(Debug, Clone, Default)]
pub struct TempSettings {
    /// `auto` (the egress interface's global /64), `off`, or a prefix.
    pub ipv6_prefix: String,
    /// The prefix is routed to the VM rather than on-link.
    pub ipv6_routed: bool,
    pub ipv4_pool: Vec<Ipv4Addr>,
    /// Seconds; `None` = only on demand.
    pub rotate: Option<u64>,
    pub drain: u64,
}

/// A duration setting: `"0"`, or a duration as everywhere in the config (`"90s"`, `"10m"`,
/// `"1h30m"`, `"7d"`).
fn duration_secs(key: &'static str, v: &str) -> Result<u64, (&'static str, String)> {
    if v.trim() == "0" {
        return Ok(0);
    }
    crate::querylog::timefmt::parse_duration_ms(v)
        .map(|ms| (ms / 1000) as u64)
        .ok_or_else(|| {
            (
                key,
                format!("{v:?} is not a duration: use e.g. \"90s\", \"10m\", \"1h\" or \"0\""),
            )
        })
}

/// The shortest rotation interval accepted: below it, addresses would change under every
/// page load.
pub const MIN_ROTATE_SECS: u64 = 60;

impl TempSettings {
    /// Reads and checks `[egress]`'s temporary-address keys; the error names the key.
    pub fn parse(c: &crate::config::EgressConfig) -> Result<TempSettings, (&'static str, String)> {
        let rotate = duration_secs("egress.rotate", &c.rotate)?;
        if rotate != 0 && rotate < MIN_ROTATE_SECS {
            return Err((
                "egress.rotate",
                format!(
                    "{:?} is too short: at least \"1m\" (or \"0\" to change addresses only on demand)",
                    c.rotate
                ),
            ));
        }
        let drain = duration_secs("egress.drain", &c.drain)?;
        match c.ipv6_prefix.as_str() {
            "auto" | "off" | "" => {}
            p => match p.parse::<Ipv6Net>() {
                Ok(n) if n.prefix_len() <= 96 => {}
                Ok(n) => {
                    return Err((
                        "egress.ipv6_prefix",
                        format!("{n} is too small: a prefix of /96 or shorter (at least 2^32 addresses) keeps addresses from coming back"),
                    ))
                }
                Err(_) => {
                    return Err((
                        "egress.ipv6_prefix",
                        format!("{p:?} is not an IPv6 prefix: use \"auto\", \"off\" or e.g. \"2001:db8:1::/64\""),
                    ))
                }
            },
        }
        let mut seen = BTreeSet::new();
        for a in &c.ipv4_pool {
            if !seen.insert(*a) {
                return Err(("egress.ipv4_pool", format!("{a} is listed twice")));
            }
            if a.is_loopback() || a.is_unspecified() || a.is_multicast() || a.is_broadcast() {
                return Err((
                    "egress.ipv4_pool",
                    format!("{a} is not an address the internet can answer"),
                ));
            }
        }
        Ok(TempSettings {
            ipv6_prefix: c.ipv6_prefix.clone(),
            ipv6_routed: c.ipv6_routed,
            ipv4_pool: c.ipv4_pool.clone(),
            rotate: (rotate != 0).then_some(rotate),
            drain,
        })
    }
}

/// How replies to the prefix reach the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrefixKind {
    /// On the egress interface's link: the hub answers neighbour discovery for each address.
    OnLink,
    /// Routed to the VM: one `blackhole` route for the whole prefix.
    Routed,
}

/// What the host offers for temporary addresses, and what it does not (and why).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct HostReport {
    pub ipv6_prefix: Option<Ipv6Net>,
    pub ipv6_kind: Option<PrefixKind>,
    pub ipv4_pool: Vec<Ipv4Addr>,
    pub rotate_secs: Option<u64>,
    pub drain_secs: u64,
    /// Problems found at start (a prefix or pool address that is not the VM's).
    pub problems: Vec<String>,
}

/// A global (scope 0) address of an interface, from `/proc/net/if_inet6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr6 {
    pub addr: Ipv6Addr,
    pub prefix_len: u8,
    pub interface: String,
}

/// Parses `/proc/net/if_inet6` for global addresses (skipping temporary, deprecated and
/// tentative ones).
pub fn parse_if_inet6(text: &str) -> Vec<IfAddr6> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[0].len() != 32 {
            continue;
        }
        let (Ok(a), Ok(plen), Ok(scope), Ok(flags)) = (
            u128::from_str_radix(f[0], 16),
            u8::from_str_radix(f[2], 16),
            u8::from_str_radix(f[3], 16),
            u8::from_str_radix(f[4], 16),
        ) else {
            continue;
        };
        // IFA_F_TEMPORARY 0x01, IFA_F_DEPRECATED 0x20, IFA_F_TENTATIVE 0x40.
        if scope != 0 || flags & 0x61 != 0 || plen > 128 {
            continue;
        }
        out.push(IfAddr6 {
            addr: Ipv6Addr::from(a),
            prefix_len: plen,
            interface: f[5].to_string(),
        });
    }
    out
}

/// Where temporary IPv6 addresses come from, from the settings and the interface's global
/// addresses (pure): the prefix and its kind, or why there is none.
pub fn choose_prefix(
    s: &TempSettings,
    iface: Option<&str>,
    addrs: &[IfAddr6],
) -> Result<Option<(Ipv6Net, PrefixKind)>, String> {
    let ours: Vec<&IfAddr6> = addrs
        .iter()
        .filter(|a| Some(a.interface.as_str()) == iface)
        // Unique local addresses (fc00::/7) do not reach the internet.
        .filter(|a| a.addr.segments()[0] & 0xfe00 != 0xfc00)
        .collect();
    match s.ipv6_prefix.as_str() {
        "off" | "" => Ok(None),
        "auto" => {
            let Some(a) = ours.iter().find(|a| a.prefix_len <= 64) else {
                return Err(format!(
                    "the egress interface {} has no global IPv6 /64: temporary addresses use the hub's IPv6 address (set egress.ipv6_prefix to a prefix routed to this VM)",
                    iface.unwrap_or("(none)")
                ));
            };
            let net = Ipv6Net::new(a.addr, 64).map_err(|e| e.to_string())?.trunc();
            Ok(Some((net, PrefixKind::OnLink)))
        }
        p => {
            let net: Ipv6Net = p
                .parse()
                .map_err(|_| format!("egress.ipv6_prefix {p:?} is not an IPv6 prefix"))?;
            let net = net.trunc();
            let on_link = ours.iter().any(|a| {
                Ipv6Net::new(a.addr, a.prefix_len)
                    .map(|l| l.trunc())
                    .is_ok_and(|l| l.contains(&net) || net.contains(&l.network()))
            });
            if on_link {
                Ok(Some((net, PrefixKind::OnLink)))
            } else if s.ipv6_routed {
                Ok(Some((net, PrefixKind::Routed)))
            } else {
                Err(format!(
                    "egress.ipv6_prefix {net} is not on the egress interface {}: temporary addresses use the hub's IPv6 address (if your provider routes this prefix to the VM, set egress.ipv6_routed = true)",
                    iface.unwrap_or("(none)")
                ))
            }
        }
    }
}

/// True when `a` is an address of this machine (binding to it works without `IP_FREEBIND`).
fn is_local(a: IpAddr) -> bool {
    std::net::UdpSocket::bind((a, 0)).is_ok()
}

/// Reads the host and decides the pool; `problems` says what was left out and why.
pub fn resolve(s: &TempSettings, iface: Option<&str>) -> (Pool, HostReport) {
    let addrs = parse_if_inet6(&std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default());
    let mut report = HostReport {
        rotate_secs: s.rotate,
        drain_secs: s.drain,
        ..HostReport::default()
    };
    let v6 = match choose_prefix(s, iface, &addrs) {
        Ok(p) => p,
        Err(e) => {
            report.problems.push(e);
            None
        }
    };
    report.ipv6_prefix = v6.map(|p| p.0);
    report.ipv6_kind = v6.map(|p| p.1);
    let mut v4 = Vec::new();
    for a in &s.ipv4_pool {
        if is_local((*a).into()) {
            v4.push(*a);
        } else {
            report.problems.push(format!(
                "egress.ipv4_pool: {a} is not an address of this machine; left out (add it to the VM's interface first)"
            ));
        }
    }
    report.ipv4_pool = v4.clone();
    let pool = Pool {
        v6: v6.map(|p| p.0),
        v4,
        avoid: addrs.iter().map(|a| IpAddr::V6(a.addr)).collect(),
        rotate: s.rotate,
        drain: s.drain,
    };
    (pool, report)
}

/// What the hub installed on the host for temporary addresses.
pub struct HostEgress {
    iface: String,
    prefix: Option<(Ipv6Net, PrefixKind)>,
    route_installed: bool,
    proxied: BTreeSet<Ipv6Addr>,
    /// Sysctls changed, with their values before.
    saved: Vec<(PathBuf, String)>,
}

/// Runs `ip -6 -batch -` with `lines`.
fn ip_batch(lines: &[String]) -> Result<(), String> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("ip")
        .args(["-6", "-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(lines.join("\n").as_bytes())
            .map_err(|e| format!("ip -batch: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("ip -batch: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip -batch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl HostEgress {
    /// Nothing installed yet; `prefix` as [`resolve`] found it.
    pub fn new(iface: Option<&str>, prefix: Option<(Ipv6Net, PrefixKind)>) -> HostEgress {
        HostEgress {
            iface: iface.unwrap_or_default().to_string(),
            prefix,
            route_installed: false,
            proxied: BTreeSet::new(),
            saved: Vec::new(),
        }
    }

    fn set_sysctl(&mut self, path: String, value: &str) -> Result<(), String> {
        let path = PathBuf::from(path);
        let before = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .trim()
            .to_string();
        if before != value {
            std::fs::write(&path, value).map_err(|e| format!("{}: {e}", path.display()))?;
            self.saved.push((path, before));
        }
        Ok(())
    }

    /// Makes replies to exactly `in_use` (and, for a routed prefix, the whole prefix) reach
    /// the hub; in force when this returns.
    pub fn sync(&mut self, in_use: &[Ipv6Addr]) -> Result<(), String> {
        let Some((net, kind)) = self.prefix else {
            return Ok(());
        };
        match kind {
            PrefixKind::Routed => {
                if !self.route_installed {
                    ip_batch(&[format!("route replace blackhole {net}")])?;
                    self.route_installed = true;
                }
            }
            PrefixKind::OnLink => {
                if self.iface.is_empty() {
                    return Err("no egress interface for neighbour proxying".into());
                }
                if self.saved.is_empty() && !in_use.is_empty() {
                    let i = self.iface.clone();
                    self.set_sysctl(format!("/proc/sys/net/ipv6/conf/{i}/proxy_ndp"), "1")?;
                    // Answer at once: the default 0.8 s random delay would hold up the first
                    // packet of every new address.
                    self.set_sysctl(format!("/proc/sys/net/ipv6/neigh/{i}/proxy_delay"), "0")?;
                }
                let want: BTreeSet<Ipv6Addr> = in_use.iter().copied().collect();
                let add: Vec<String> = want
                    .difference(&self.proxied)
                    .map(|a| format!("neigh replace proxy {a} dev {}", self.iface))
                    .collect();
                ip_batch(&add)?;
                let del: Vec<String> = self
                    .proxied
                    .difference(&want)
                    .map(|a| format!("neigh del proxy {a} dev {}", self.iface))
                    .collect();
                // An entry someone else removed already is no reason to fail the change.
                if let Err(e) = ip_batch(&del) {
                    tracing::warn!(error = %e, "could not remove an old address's proxy entry");
                }
                self.proxied = want;
            }
        }
        Ok(())
    }

    /// Removes everything installed and puts the sysctls back.
    pub fn remove(&mut self) {
        let mut lines: Vec<String> = self
            .proxied
            .iter()
            .map(|a| format!("neigh del proxy {a} dev {}", self.iface))
            .collect();
        if self.route_installed {
            if let Some((net, _)) = self.prefix {
                lines.push(format!("route del blackhole {net}"));
            }
        }
        if let Err(e) = ip_batch(&lines) {
            tracing::warn!(error = %e, "could not remove the temporary addresses' entries");
        }
        self.proxied.clear();
        self.route_installed = false;
        for (path, before) in self.saved.drain(..).rev() {
            let _ = std::fs::write(&path, before);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IF_INET6: &str = "\
20010db8000100000000000000000001 03 40 00 80     eth0
fe80000000000000a8bbccfffe001122 03 40 20 80     eth0
fd000000000000000000000000000001 03 40 00 80     eth0
20010db8000900000000000000000005 04 40 00 80     eth1
20010db80001000011112222333344ff 03 40 00 01     eth0
00000000000000000000000000000001 01 80 10 80       lo
";

    fn settings(prefix: &str, routed: bool) -> TempSettings {
        TempSettings {
            ipv6_prefix: prefix.into(),
            ipv6_routed: routed,
            ..TempSettings::default()
        }
    }

    #[test]
    fn settings_refuse_short_rotations_small_prefixes_and_duplicates() {
        let ok = crate::config::EgressConfig::default();
        let t = TempSettings::parse(&ok).unwrap();
        assert_eq!((t.rotate, t.drain), (Some(3600), 600));
        let bad = |f: fn(&mut crate::config::EgressConfig)| {
            let mut c = crate::config::EgressConfig::default();
            f(&mut c);
            TempSettings::parse(&c).unwrap_err()
        };
        assert_eq!(bad(|c| c.rotate = "30s".into()).0, "egress.rotate");
        assert!(bad(|c| c.rotate = "30s".into()).1.contains("at least"));
        assert_eq!(bad(|c| c.rotate = "soon".into()).0, "egress.rotate");
        assert_eq!(bad(|c| c.drain = "-5m".into()).0, "egress.drain");
        assert!(bad(|c| c.ipv6_prefix = "2001:db8::/120".into())
            .1
            .contains("too small"));
        assert_eq!(
            bad(|c| c.ipv6_prefix = "10.0.0.0/8".into()).0,
            "egress.ipv6_prefix"
        );
        let dup = bad(|c| c.ipv4_pool = vec!["203.0.113.3".parse().unwrap(); 2]);
        assert!(dup.1.contains("twice"));
        let c = crate::config::EgressConfig {
            rotate: "0".into(),
            drain: "1h30m".into(),
            ..Default::default()
        };
        let t = TempSettings::parse(&c).unwrap();
        assert_eq!((t.rotate, t.drain), (None, 5400));
    }

    #[test]
    fn global_addresses_are_read_without_link_local_loopback_or_temporary_ones() {
        let a = parse_if_inet6(IF_INET6);
        let got: Vec<String> = a
            .iter()
            .map(|a| format!("{} {}", a.addr, a.interface))
            .collect();
        assert_eq!(
            got,
            vec!["2001:db8:1::1 eth0", "fd00::1 eth0", "2001:db8:9::5 eth1"]
        );
    }

    #[test]
    fn auto_takes_the_egress_interfaces_global_64_on_link() {
        let a = parse_if_inet6(IF_INET6);
        let p = choose_prefix(&settings("auto", false), Some("eth0"), &a).unwrap();
        assert_eq!(
            p,
            Some(("2001:db8:1::/64".parse().unwrap(), PrefixKind::OnLink))
        );
        let e = choose_prefix(&settings("auto", false), Some("eth7"), &a).unwrap_err();
        assert!(e.contains("no global IPv6"), "{e}");
        assert_eq!(
            choose_prefix(&settings("off", false), Some("eth0"), &a),
            Ok(None)
        );
    }

    #[test]
    fn a_configured_prefix_must_be_on_the_link_or_declared_routed() {
        let a = parse_if_inet6(IF_INET6);
        let on = choose_prefix(&settings("2001:db8:1::/64", false), Some("eth0"), &a).unwrap();
        assert_eq!(on.unwrap().1, PrefixKind::OnLink);
        // A smaller piece of the on-link /64 is on the link too.
        let part = choose_prefix(&settings("2001:db8:1:0:8000::/80", false), Some("eth0"), &a);
        assert_eq!(part.unwrap().unwrap().1, PrefixKind::OnLink);
        let other = choose_prefix(&settings("2001:db8:77::/64", false), Some("eth0"), &a);
        assert!(other.unwrap_err().contains("ipv6_routed"));
        let routed = choose_prefix(&settings("2001:db8:77::/64", true), Some("eth0"), &a);
        assert_eq!(routed.unwrap().unwrap().1, PrefixKind::Routed);
    }
}
