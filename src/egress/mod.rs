//! Egress: the hub's way to the internet. Forwarding on, and one nftables table of our own,
//! `inet cloudpc`, that masquerades overlay sources out of the egress interface and filters
//! what the overlay may forward.
//!
//! The table is always replaced as a whole in one `nft` transaction (so a stale table from a
//! crashed run is replaced on start, and `internet on|off` swaps rules atomically) and deleted
//! on exit. The ruleset is built by [`ruleset`], a pure function, and applied through the
//! `nftables` crate (`nft -j -f -`).
//!
//! Forward chain, in order: overlay→overlay through the kernel is allowed; link-local
//! destinations (the cloud metadata service) are dropped; with the internet off everything
//! else from the overlay is dropped (the hub's own services are `input`, not
//! `forward`, so DNS keeps working); replies to the overlay are allowed and unsolicited
//! connections into it are dropped.
//!
//! Temporary egress addresses ([`temporary`], [`host`]): a device in `temporary` mode gets a
//! source NAT of its own in `postrouting`, before the masquerade (new connections only: the
//! kernel's conntrack keeps an open connection's address), and the connections of an address
//! whose drain ended are reset at the top of `forward`, matched by their conntrack tuple.

pub mod host;
pub mod live;
pub mod temporary;

use std::net::IpAddr;
use std::path::PathBuf;

pub use temporary::EgressMode;

use ipnet::{IpAdd, Ipv4Net, Ipv6Net};
use serde_json::{json, Value};

/// Name of the nftables table (family `inet`).
pub const TABLE: &str = "cloudpc";

/// Why egress could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// `nft` failed or is missing.
    #[error("nftables: {0} (is the `nft` command installed? Debian/Ubuntu: apt install nftables)")]
    Nft(String),
    /// What temporary addresses need on the host (neighbour proxy entries, a blackhole route)
    /// could not be installed.
    #[error("temporary egress addresses: {0}")]
    Host(String),
    /// A forwarding sysctl could not be written.
    #[error("cannot enable forwarding ({path}: {source}); run as root or set it yourself: sysctl -w {sysctl}=1")]
    Sysctl {
        path: PathBuf,
        sysctl: &'static str,
        source: std::io::Error,
    },
}

/// What the egress ruleset depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressSpec {
    /// The hub's TUN.
    pub tun: String,
    /// Interface towards the internet; `None` = any interface but the TUN.
    pub out: Option<String>,
    pub v4: Ipv4Net,
    pub v6: Ipv6Net,
    /// The personal VPN is on.
    pub internet: bool,
    /// Overlay addresses of devices whose internet is off (their own switch).
    pub no_internet: Vec<std::net::IpAddr>,
    /// Overlay addresses of devices whose DNS (TCP/UDP 53) to any address is answered by the
    /// hub's resolver (the firewall's no-bypass rule).
    pub dns_redirect: Vec<std::net::IpAddr>,
    /// Temporary addresses: (overlay address, public address) for new connections.
    pub snat: Vec<(IpAddr, IpAddr)>,
    /// (overlay address, old public address) pairs whose connections are cut.
    pub cut: Vec<(IpAddr, IpAddr)>,
    /// The prefix temporary addresses come from: what arrives for it from outside and is not
    /// a reply (un-NATed by conntrack before this chain) is dropped.
    pub temp_prefix: Option<Ipv6Net>,
    /// `egress.ipv4_pool` as found on the host: reserved for egress, so new connections to
    /// them are dropped (a site that saw one must not find the hub's services behind it).
    pub temp_pool4: Vec<std::net::Ipv4Addr>,
}

fn meta_eq(key: &str, v: &str) -> Value {
    json!({"match": {"op": "==", "left": {"meta": {"key": key}}, "right": v}})
}

fn meta_ne(key: &str, v: &str) -> Value {
    json!({"match": {"op": "!=", "left": {"meta": {"key": key}}, "right": v}})
}

/// `PROTO FIELD == RIGHT` (an address, a `{"set": …}` or a `{"prefix": …}`).
fn payload_eq(proto: &str, field: &str, right: Value) -> Value {
    json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": field}},
        "right": right}})
}

fn saddr(proto: &str, addr: String, len: u8) -> Value {
    payload_eq(
        proto,
        "saddr",
        json!({"prefix": {"addr": addr, "len": len}}),
    )
}

/// The nftables family of an address: `ip` or `ip6`.
fn family_of(a: &IpAddr) -> &'static str {
    if a.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

/// The links' tunnels (`crate::link::interface`), as an interface-name wildcard.
const LINK_INTERFACES: &str = "cpl*";

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": "inet", "table": TABLE, "chain": chain, "expr": expr}}})
}

fn table_obj() -> Value {
    json!({"table": {"family": "inet", "name": TABLE}})
}

/// The whole `inet cloudpc` table as one nft JSON transaction replacing any previous one.
pub fn ruleset(s: &EgressSpec) -> Value {
    let accept = json!({"accept": null});
    let drop = json!({"drop": null});
    let out_match = |negate_tun: bool| match &s.out {
        Some(i) => meta_eq("oifname", i),
        None if negate_tun => meta_ne("oifname", &s.tun),
        None => meta_ne("oifname", &s.tun),
    };
    let mut cmds = vec![
        // `add` then `delete` makes the delete succeed whether or not a table existed.
        json!({"add": table_obj()}),
        json!({"delete": table_obj()}),
        json!({"add": table_obj()}),
        json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "forward",
            "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}}),
        json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "postrouting",
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}}),
        rule(
            "forward",
            vec![
                meta_eq("iifname", &s.tun),
                meta_eq("oifname", &s.tun),
                accept.clone(),
            ],
        ),
        // Into the links to other Cloud PCs (`crate::link`): the private network, not the
        // internet (the hub's firewall already judged each device's packet).
        rule(
            "forward",
            vec![
                meta_eq("iifname", &s.tun),
                meta_eq("oifname", LINK_INTERFACES),
                accept.clone(),
            ],
        ),
    ];
    if !s.temp_pool4.is_empty() {
        cmds.push(
            json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "input",
            "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}}),
        );
        let pool: Vec<String> = s.temp_pool4.iter().map(|a| a.to_string()).collect();
        cmds.push(rule(
            "input",
            vec![
                payload_eq("ip", "daddr", json!({ "set": pool })),
                json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["new", "invalid"]}}),
                drop.clone(),
            ],
        ));
    }
    // Nothing but replies reaches a temporary address from outside: a connection opened to
    // one, or a packet after its connection ended, is dropped rather than forwarded.
    if let Some(p) = s.temp_prefix {
        cmds.push(rule(
            "forward",
            vec![
                meta_ne("iifname", &s.tun),
                payload_eq(
                    "ip6",
                    "daddr",
                    json!({"prefix": {"addr": p.network().to_string(), "len": p.prefix_len()}}),
                ),
                drop.clone(),
            ],
        ));
    }
    // Connections on a temporary address whose drain ended: reset (TCP) or dropped, in both
    // directions, by the conntrack tuple (the device's address, the old public address).
    for family in ["ip", "ip6"] {
        let pairs: Vec<Value> = s
            .cut
            .iter()
            .filter(|(o, _)| family_of(o) == family)
            .map(|(o, p)| json!({"concat": [o.to_string(), p.to_string()]}))
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let tuple = json!({"match": {"op": "==", "left": {"concat": [
            {"ct": {"key": format!("{family} saddr"), "dir": "original"}},
            {"ct": {"key": format!("{family} daddr"), "dir": "reply"}}]},
            "right": {"set": pairs}}});
        cmds.push(rule(
            "forward",
            vec![
                tuple.clone(),
                json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}),
                json!({"reject": {"type": "tcp reset"}}),
            ],
        ));
        cmds.push(rule("forward", vec![tuple, drop.clone()]));
    }
    // Link-local destinations are never forwarded: on a cloud VM that is the metadata
    // service (169.254.169.254), which holds the VM's credentials.
    cmds.push(rule(
        "forward",
        vec![
            meta_eq("iifname", &s.tun),
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                "right": {"prefix": {"addr": "169.254.0.0", "len": 16}}}}),
            drop.clone(),
        ],
    ));
    // No bypass: these devices' DNS to any address goes to the hub's resolver (the reply's
    // source is put back by conntrack).
    let hub4 = s.v4.network().saturating_add(1).to_string();
    let hub6 = s.v6.network().saturating_add(1).to_string();
    for (family, proto, hub) in [("ip", "ip", &hub4), ("ip6", "ip6", &hub6)] {
        let addrs: Vec<String> = s
            .dns_redirect
            .iter()
            .filter(|a| a.is_ipv4() == (family == "ip"))
            .map(|a| a.to_string())
            .collect();
        if addrs.is_empty() {
            continue;
        }
        if !cmds
            .iter()
            .any(|c| c.to_string().contains("\"prerouting\""))
        {
            cmds.push(
                json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "prerouting",
                "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}}),
            );
        }
        for l4 in ["udp", "tcp"] {
            cmds.push(rule(
                "prerouting",
                vec![
                    meta_eq("iifname", &s.tun),
                    json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "saddr"}},
                        "right": {"set": addrs.clone()}}}),
                    json!({"match": {"op": "!=", "left": {"payload": {"protocol": proto, "field": "daddr"}},
                        "right": hub}}),
                    json!({"match": {"op": "==", "left": {"payload": {"protocol": l4, "field": "dport"}},
                        "right": 53}}),
                    json!({"dnat": {"family": family, "addr": hub}}),
                ],
            ));
        }
    }
    // Devices with their internet switched off: nothing of theirs leaves the overlay.
    for (proto, addrs) in [
        (
            "ip",
            s.no_internet
                .iter()
                .filter(|a| a.is_ipv4())
                .map(|a| a.to_string())
                .collect::<Vec<_>>(),
        ),
        (
            "ip6",
            s.no_internet
                .iter()
                .filter(|a| a.is_ipv6())
                .map(|a| a.to_string())
                .collect(),
        ),
    ] {
        if addrs.is_empty() {
            continue;
        }
        cmds.push(rule(
            "forward",
            vec![
                meta_eq("iifname", &s.tun),
                json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "saddr"}},
                    "right": {"set": addrs}}}),
                drop.clone(),
            ],
        ));
    }
    if s.internet {
        cmds.push(rule(
            "forward",
            vec![meta_eq("iifname", &s.tun), out_match(true), accept.clone()],
        ));
    }
    cmds.push(rule(
        "forward",
        vec![meta_eq("iifname", &s.tun), drop.clone()],
    ));
    cmds.push(rule(
        "forward",
        vec![
            meta_eq("oifname", &s.tun),
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}},
                "right": ["established", "related"]}}),
            accept,
        ],
    ));
    cmds.push(rule("forward", vec![meta_eq("oifname", &s.tun), drop]));
    // Temporary addresses before the masquerade (the nat chain sees only a connection's first
    // packet, so an open connection keeps the address it started with).
    for (overlay, public) in &s.snat {
        let family = family_of(overlay);
        if family != family_of(public) {
            continue;
        }
        cmds.push(rule(
            "postrouting",
            vec![
                payload_eq(family, "saddr", json!(overlay.to_string())),
                out_match(true),
                json!({"snat": {"family": family, "addr": public.to_string()}}),
            ],
        ));
    }
    cmds.push(rule(
        "postrouting",
        vec![
            saddr("ip", s.v4.network().to_string(), s.v4.prefix_len()),
            out_match(true),
            json!({"masquerade": null}),
        ],
    ));
    cmds.push(rule(
        "postrouting",
        vec![
            saddr("ip6", s.v6.network().to_string(), s.v6.prefix_len()),
            out_match(true),
            json!({"masquerade": null}),
        ],
    ));
    json!({ "nftables": cmds })
}

fn apply(v: &Value) -> Result<(), EgressError> {
    nftables::helper::apply_ruleset_raw(
        &v.to_string(),
        nftables::helper::DEFAULT_NFT,
        nftables::helper::DEFAULT_ARGS,
    )
    .map(|_| ())
    .map_err(|e| EgressError::Nft(e.to_string()))
}

/// Installs (or replaces) the table for `spec`.
pub fn install(spec: &EgressSpec) -> Result<(), EgressError> {
    apply(&ruleset(spec))
}

/// Deletes the table (nothing to do when it is not there).
pub fn remove() -> Result<(), EgressError> {
    apply(&json!({"nftables": [{"add": table_obj()}, {"delete": table_obj()}]}))
}

/// Turns on IPv4 and IPv6 forwarding. On the egress interface, router advertisements stay
/// accepted (`accept_ra = 2`), so a host that learns its IPv6 route by SLAAC keeps it.
pub fn enable_forwarding(out: Option<&str>) -> Result<(), EgressError> {
    if let Some(i) = out {
        let ra = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{i}/accept_ra"));
        if std::fs::read_to_string(&ra).is_ok_and(|v| v.trim() == "1") {
            let _ = std::fs::write(&ra, "2");
        }
    }
    for (path, sysctl) in [
        ("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"),
        (
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "net.ipv6.conf.all.forwarding",
        ),
    ] {
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            continue;
        }
        if let Err(source) = std::fs::write(path, "1") {
            // A host without IPv6 has no such file; IPv4 egress still works.
            if source.kind() == std::io::ErrorKind::NotFound && sysctl.contains("ipv6") {
                continue;
            }
            return Err(EgressError::Sysctl {
                path: path.into(),
                sysctl,
                source,
            });
        }
    }
    Ok(())
}

/// The interface of the IPv4 default route (`/proc/net/route`), else of the IPv6 one.
pub fn default_route_interface() -> Option<String> {
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    default_interface_from(&v4, &v6)
}

/// Parses the kernel route tables' text for the default route's interface.
pub fn default_interface_from(route: &str, ipv6_route: &str) -> Option<String> {
    for line in route.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags ... Mask (field 7)
        if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
            return Some(f[0].to_string());
        }
    }
    for line in ipv6_route.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 10
            && f[0] == "00000000000000000000000000000000"
            && f[1] == "00"
            && f[9] != "lo"
        {
            return Some(f[9].to_string());
        }
    }
    None
}

/// Resolves the `egress.interface` setting.
pub fn resolve_interface(setting: &str) -> Option<String> {
    if setting == "auto" || setting.is_empty() {
        default_route_interface()
    } else {
        Some(setting.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(internet: bool) -> EgressSpec {
        EgressSpec {
            tun: "cloudpc0".into(),
            out: Some("eth0".into()),
            v4: "100.96.0.0/16".parse().unwrap(),
            v6: "fd00:1::/48".parse().unwrap(),
            internet,
            no_internet: vec![],
            dns_redirect: vec![],
            snat: vec![],
            cut: vec![],
            temp_prefix: None,
            temp_pool4: vec![],
        }
    }

    #[test]
    fn internet_off_has_no_accept_towards_the_egress_interface() {
        let on = ruleset(&spec(true)).to_string();
        let off = ruleset(&spec(false)).to_string();
        assert_eq!(on.matches("\"accept\":null").count(), 4, "{on}");
        // Off: between devices, into the links, and replies; none towards eth0.
        assert_eq!(off.matches("\"accept\":null").count(), 3, "{off}");
        assert!(off.contains("cpl*"));
        assert!(off.contains("masquerade"));
        assert!(on.contains("\"len\":16"));
    }

    #[test]
    fn a_device_with_its_internet_off_is_dropped_before_the_internet_accept() {
        let mut s = spec(true);
        s.no_internet = vec!["100.96.0.3".parse().unwrap(), "fd00:1::3".parse().unwrap()];
        let rules = ruleset(&s)["nftables"].as_array().unwrap().clone();
        let pos = |needle: &str| rules.iter().position(|r| r.to_string().contains(needle));
        let v4 = pos("\"set\":[\"100.96.0.3\"]").expect("an IPv4 drop");
        let v6 = pos("\"set\":[\"fd00:1::3\"]").expect("an IPv6 drop");
        let accept_out = pos("\"right\":\"eth0\"},\"accept\"")
            .or_else(|| pos("eth0"))
            .unwrap();
        assert!(v4 < accept_out && v6 < accept_out, "{rules:?}");
        assert!(rules[v4].to_string().contains("\"drop\""));
        // Device to device stays allowed: the overlay accept comes first.
        let overlay = pos("\"oifname\"").unwrap();
        assert!(overlay < v4);
        // Without such devices the ruleset is what it was.
        assert!(!ruleset(&spec(true)).to_string().contains("\"set\""));
    }

    #[test]
    fn restricted_devices_dns_is_redirected_to_the_hub() {
        let mut s = spec(true);
        assert!(!ruleset(&s).to_string().contains("dnat"));
        s.dns_redirect = vec!["100.96.0.3".parse().unwrap(), "fd00:1::3".parse().unwrap()];
        let text = ruleset(&s).to_string();
        assert_eq!(text.matches("\"dnat\"").count(), 4, "{text}");
        assert!(
            text.contains("\"addr\":\"100.96.0.1\"") && text.contains("\"addr\":\"fd00:1::1\"")
        );
    }

    #[test]
    fn temporary_addresses_are_source_nat_before_the_masquerade_and_cut_pairs_reset_first() {
        let mut s = spec(true);
        s.snat = vec![
            (
                "100.96.0.2".parse().unwrap(),
                "203.0.113.3".parse().unwrap(),
            ),
            (
                "fd00:1::2".parse().unwrap(),
                "2001:db8:1::abcd".parse().unwrap(),
            ),
        ];
        s.cut = vec![(
            "fd00:1::2".parse().unwrap(),
            "2001:db8:1::99".parse().unwrap(),
        )];
        s.temp_prefix = Some("2001:db8:1::/64".parse().unwrap());
        s.temp_pool4 = vec!["203.0.113.3".parse().unwrap()];
        let rules = ruleset(&s)["nftables"].as_array().unwrap().clone();
        let pos = |needle: &str| rules.iter().position(|r| r.to_string().contains(needle));
        let snat4 = rules
            .iter()
            .position(|r| {
                let t = r.to_string();
                t.contains("\"snat\"") && t.contains("\"203.0.113.3\"")
            })
            .expect("an IPv4 source NAT");
        let snat6 = pos("2001:db8:1::abcd").expect("an IPv6 source NAT");
        let masq = pos("masquerade").unwrap();
        assert!(snat4 < masq && snat6 < masq, "{rules:?}");
        assert!(rules[snat4].to_string().contains("100.96.0.2"));
        let cut = pos("2001:db8:1::99").expect("a cut rule");
        assert!(rules[cut].to_string().contains("tcp reset"));
        // The reset comes before the replies' accept, or an open connection would go on.
        let replies = pos("established").unwrap();
        assert!(cut < replies);
        assert!(!ruleset(&spec(true)).to_string().contains("snat"));
        // Unsolicited packets to the prefix are dropped before anything accepts them.
        let inbound = pos("\"2001:db8:1::\",\"len\":64").expect("a drop for the prefix");
        assert!(rules[inbound].to_string().contains("drop") && inbound < replies);
        // New connections to a pool address are dropped on the way in.
        let input = pos("\"hook\":\"input\"").expect("an input chain");
        let pool_drop = rules
            .iter()
            .rposition(|r| r.to_string().contains("\"chain\":\"input\""))
            .unwrap();
        assert!(input < pool_drop && rules[pool_drop].to_string().contains("\"new\""));
    }

    #[test]
    fn default_interface_is_read_from_proc() {
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     eth9\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
                     ens3\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\n";
        assert_eq!(default_interface_from(route, ""), Some("ens3".into()));
        assert_eq!(default_interface_from("Iface\n", ""), None);
    }
}
