//! The wg-quick config a device imports: a pure function from the device's registry entry and the
//! hub's settings to the text the stock WireGuard apps (Android, iOS, macOS, Windows, `wg-quick`)
//! read.
//!
//! Drive it with [`DeviceConfig::render`]; [`endpoint_with_port`] normalises the
//! `wireguard.endpoint` setting first. The output uses only keys every stock app knows
//! (`PrivateKey Address DNS MTU` / `PublicKey Endpoint AllowedIPs PersistentKeepalive`), one per
//! line, so it also survives `wg-quick strip`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::store::Overlay;

/// Keepalive interval sent to devices, seconds: keeps NAT mappings of home routers and mobile
/// networks open (25 s is what `wg` documentation and wg-easy use).
pub const PERSISTENT_KEEPALIVE: u16 = 25;

/// Why `wireguard.endpoint` cannot be used in a device config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The setting is empty.
    #[error("`wireguard.endpoint` is not set: devices need the public name or address of this machine to dial. Set it in the config file (e.g. endpoint = \"vpn.example.com\") or run `cloudpc init --endpoint vpn.example.com`")]
    Missing,
    /// The setting is not `HOST`, `HOST:PORT`, `IPV6` or `[IPV6]:PORT`.
    #[error("`wireguard.endpoint` = {0:?} is not HOST, HOST:PORT or [IPV6]:PORT, e.g. \"vpn.example.com:51820\"")]
    Malformed(String),
}

/// Returns `endpoint` as `HOST:PORT`, adding `listen_port` when it has no port.
///
/// Accepts `host`, `host:port`, `1.2.3.4`, `2001:db8::1` (bracketed on output) and
/// `[2001:db8::1]:port`.
pub fn endpoint_with_port(endpoint: &str, listen_port: u16) -> Result<String, EndpointError> {
    let e = endpoint.trim();
    let bad = || EndpointError::Malformed(endpoint.to_string());
    if e.is_empty() {
        return Err(EndpointError::Missing);
    }
    if e.chars()
        .any(|c| c.is_whitespace() || c == ',' || c == '#' || c == '/')
    {
        return Err(bad());
    }
    if let Some(rest) = e.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(bad)?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| bad())?;
        return match after {
            "" => Ok(format!("[{addr}]:{listen_port}")),
            p => {
                let port = p.strip_prefix(':').ok_or_else(bad)?;
                let port: u16 = port.parse().map_err(|_| bad())?;
                Ok(format!("[{addr}]:{port}"))
            }
        };
    }
    if let Ok(v6) = e.parse::<Ipv6Addr>() {
        return Ok(format!("[{v6}]:{listen_port}"));
    }
    let (host, port) = match e.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
        None => (e, listen_port),
    };
    let host_ok = host.parse::<Ipv4Addr>().is_ok() || crate::dns::name::is_valid_zone(host);
    if !host_ok || port == 0 {
        return Err(bad());
    }
    Ok(format!("{host}:{port}"))
}

/// Everything a device's config is made of.
#[derive(Debug, Clone)]
pub struct DeviceConfig<'a> {
    /// The device's private key (base64), or `None` when the device brought its own key
    /// (`--pubkey`): then the line is left as a comment for the owner to fill in on the device.
    pub private_key: Option<&'a str>,
    /// The device's overlay addresses.
    pub device_v4: Ipv4Addr,
    pub device_v6: Ipv6Addr,
    /// The overlay ranges; the hub's addresses (DNS servers) are their first hosts.
    pub overlay: Overlay,
    /// Search domain appended to the `DNS` line (the `dns.zone` setting, e.g. `mesh`).
    pub search_domain: &'a str,
    /// Tunnel MTU (`wireguard.mtu`).
    pub mtu: u16,
    /// The hub's public key (base64).
    pub hub_public_key: &'a str,
    /// `HOST:PORT` the device dials; see [`endpoint_with_port`].
    pub endpoint: &'a str,
    /// Split tunnel: route only the overlay through the hub instead of everything.
    pub split: bool,
}

impl DeviceConfig<'_> {
    /// The `AllowedIPs` value: everything, or with `split` only the overlay ranges and the
    /// discovery groups the hub relays between devices (`hub::discovery`).
    pub fn allowed_ips(&self) -> String {
        if self.split {
            let mut s = format!("{}, {}", self.overlay.v4, self.overlay.v6);
            for (g, _) in crate::hub::discovery::GROUPS {
                s.push_str(&format!(", {g}/32"));
            }
            for (g, _) in crate::hub::discovery::GROUPS6 {
                s.push_str(&format!(", {g}/128"));
            }
            s
        } else {
            "0.0.0.0/0, ::/0".to_string()
        }
    }

    /// Renders the wg-quick config text (ends with a newline).
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(512);
        // `write!` into a String cannot fail.
        let _ = writeln!(s, "[Interface]");
        match self.private_key {
            Some(k) => {
                let _ = writeln!(s, "PrivateKey = {k}");
            }
            None => {
                let _ = writeln!(
                    s,
                    "# PrivateKey = <this device's own private key: the hub never had it; keep the one you made on the device>"
                );
            }
        }
        let _ = writeln!(s, "Address = {}/32, {}/128", self.device_v4, self.device_v6);
        let _ = writeln!(
            s,
            "DNS = {}, {}, {}",
            self.overlay.hub_v4(),
            self.overlay.hub_v6(),
            self.search_domain.trim_end_matches('.')
        );
        let _ = writeln!(s, "MTU = {}", self.mtu);
        let _ = writeln!(s);
        let _ = writeln!(s, "[Peer]");
        let _ = writeln!(s, "PublicKey = {}", self.hub_public_key);
        let _ = writeln!(s, "Endpoint = {}", self.endpoint);
        let _ = writeln!(s, "AllowedIPs = {}", self.allowed_ips());
        let _ = writeln!(s, "PersistentKeepalive = {PERSISTENT_KEEPALIVE}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enroll::keys::{decode_key, KeyPair};
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    fn overlay() -> Overlay {
        Overlay {
            v4: "100.96.0.0/16".parse().unwrap(),
            v6: "fd11:2233:4455::/48".parse().unwrap(),
        }
    }

    fn config<'a>(private: Option<&'a str>, hub: &'a str, split: bool) -> DeviceConfig<'a> {
        DeviceConfig {
            private_key: private,
            device_v4: Ipv4Addr::new(100, 96, 0, 2),
            device_v6: "fd11:2233:4455::2".parse().unwrap(),
            overlay: overlay(),
            search_domain: "mesh",
            mtu: 1420,
            hub_public_key: hub,
            endpoint: "vpn.example.com:51820",
            split,
        }
    }

    /// Parses wg-quick text the way wg-quick does: sections, `Key = Value`, `#` comments.
    /// Fails on any line that is not one of those.
    fn parse(text: &str) -> BTreeMap<(String, String), String> {
        let mut out = BTreeMap::new();
        let mut section = String::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap().trim();
            if line.is_empty() {
                continue;
            }
            if line.starts_with('[') {
                assert!(
                    line == "[Interface]" || line == "[Peer]",
                    "bad section {line}"
                );
                section = line.to_string();
                continue;
            }
            let (k, v) = line.split_once('=').expect("key = value");
            let k = k.trim().to_string();
            let allowed: &[&str] = if section == "[Interface]" {
                &["PrivateKey", "Address", "DNS", "MTU"]
            } else {
                &["PublicKey", "Endpoint", "AllowedIPs", "PersistentKeepalive"]
            };
            assert!(
                allowed.contains(&k.as_str()),
                "unexpected key {k} in {section}"
            );
            let old = out.insert((section.clone(), k), v.trim().to_string());
            assert!(old.is_none(), "duplicate key");
        }
        out
    }

    fn get<'m>(m: &'m BTreeMap<(String, String), String>, s: &str, k: &str) -> &'m str {
        m.get(&(s.to_string(), k.to_string()))
            .unwrap_or_else(|| panic!("missing {s} {k}"))
    }

    #[test]
    fn full_tunnel_config_has_every_line_a_stock_app_needs() {
        let dev = KeyPair::generate();
        let hub = KeyPair::generate();
        let (dk, hk) = (dev.private_b64(), hub.public_b64());
        let text = config(Some(&dk), &hk, false).render();
        let m = parse(&text);
        assert_eq!(
            decode_key(get(&m, "[Interface]", "PrivateKey"), "k").unwrap(),
            dev.private.to_bytes()
        );
        let addrs: Vec<ipnet::IpNet> = get(&m, "[Interface]", "Address")
            .split(',')
            .map(|a| a.trim().parse().unwrap())
            .collect();
        assert_eq!(
            addrs,
            vec![
                "100.96.0.2/32".parse::<ipnet::IpNet>().unwrap(),
                "fd11:2233:4455::2/128".parse().unwrap()
            ]
        );
        let dns: Vec<&str> = get(&m, "[Interface]", "DNS").split(", ").collect();
        assert_eq!(
            dns[0].parse::<IpAddr>().unwrap(),
            IpAddr::from([100, 96, 0, 1])
        );
        assert_eq!(
            dns[1].parse::<IpAddr>().unwrap(),
            "fd11:2233:4455::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(dns[2], "mesh");
        assert_eq!(get(&m, "[Interface]", "MTU").parse::<u16>().unwrap(), 1420);
        assert_eq!(
            decode_key(get(&m, "[Peer]", "PublicKey"), "k").unwrap(),
            *hub.public.as_bytes()
        );
        assert_eq!(get(&m, "[Peer]", "Endpoint"), "vpn.example.com:51820");
        assert_eq!(get(&m, "[Peer]", "AllowedIPs"), "0.0.0.0/0, ::/0");
        assert_eq!(get(&m, "[Peer]", "PersistentKeepalive"), "25");
        assert!(text.starts_with("[Interface]\n") && text.ends_with('\n'));
    }

    #[test]
    fn split_tunnel_routes_only_the_overlay() {
        let text = config(Some("x"), "y", true).render();
        let m = parse(&text);
        let nets: Vec<ipnet::IpNet> = get(&m, "[Peer]", "AllowedIPs")
            .split(',')
            .map(|a| a.trim().parse().unwrap())
            .collect();
        let mut want = overlay().nets().to_vec();
        for (g, _) in crate::hub::discovery::GROUPS {
            want.push(ipnet::IpNet::from(ipnet::Ipv4Net::new(g, 32).unwrap()));
        }
        for (g, _) in crate::hub::discovery::GROUPS6 {
            want.push(ipnet::IpNet::from(ipnet::Ipv6Net::new(g, 128).unwrap()));
        }
        assert_eq!(nets, want);
    }

    #[test]
    fn own_key_config_has_no_private_key_line_but_says_where_it_goes() {
        let text = config(None, "y", false).render();
        let m = parse(&text);
        assert!(!m.contains_key(&("[Interface]".into(), "PrivateKey".into())));
        assert!(text.contains("# PrivateKey = "));
        assert_eq!(get(&m, "[Peer]", "PublicKey"), "y");
    }

    #[test]
    fn endpoint_gets_the_listen_port_when_it_has_none() {
        assert_eq!(
            endpoint_with_port("vpn.example.com", 51820).unwrap(),
            "vpn.example.com:51820"
        );
        assert_eq!(
            endpoint_with_port("vpn.example.com:443", 51820).unwrap(),
            "vpn.example.com:443"
        );
        assert_eq!(
            endpoint_with_port("203.0.113.7", 1).unwrap(),
            "203.0.113.7:1"
        );
        assert_eq!(
            endpoint_with_port("2001:db8::1", 51820).unwrap(),
            "[2001:db8::1]:51820"
        );
        assert_eq!(
            endpoint_with_port("[2001:db8::1]:4000", 51820).unwrap(),
            "[2001:db8::1]:4000"
        );
        assert_eq!(
            endpoint_with_port("[2001:db8::1]", 7).unwrap(),
            "[2001:db8::1]:7"
        );
    }

    #[test]
    fn bad_or_missing_endpoint_is_refused() {
        assert_eq!(endpoint_with_port(" ", 1), Err(EndpointError::Missing));
        for bad in [
            "vpn.example.com:x",
            "a b",
            "vpn:0",
            "[::1",
            "[nope]:1",
            "h:70000",
            "x/y",
            "-a-:1",
        ] {
            assert!(
                matches!(
                    endpoint_with_port(bad, 51820),
                    Err(EndpointError::Malformed(_))
                ),
                "{bad}"
            );
        }
    }
}
