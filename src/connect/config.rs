//! The wg-quick config `cloudpc device add` prints, read back by the client: one
//! `[Interface]` and one `[Peer]` (the hub). Keys the client does not use (`PostUp`, `Table`,
//! ...) are refused by name, so a config meant for something else is not half-applied.

use std::net::IpAddr;

use ipnet::IpNet;

/// What the client needs from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    pub private_key: [u8; 32],
    pub addresses: Vec<IpNet>,
    pub dns: Vec<IpAddr>,
    /// Search domains (the non-address entries of `DNS`).
    pub search: Vec<String>,
    pub mtu: u16,
    pub hub_key: [u8; 32],
    pub preshared_key: Option<[u8; 32]>,
    /// `HOST:PORT` as written.
    pub endpoint: String,
    pub allowed_ips: Vec<IpNet>,
    pub keepalive: Option<u16>,
}

impl ClientConfig {
    /// True when `AllowedIPs` covers the whole of IPv4 or IPv6 (the personal VPN).
    pub fn full_tunnel(&self) -> bool {
        self.allowed_ips.iter().any(|n| n.prefix_len() == 0)
    }

    /// The host part of the endpoint (brackets removed).
    pub fn endpoint_host(&self) -> &str {
        self.endpoint
            .rsplit_once(':')
            .map_or(self.endpoint.as_str(), |(h, _)| h)
            .trim_matches(['[', ']'])
    }
}

/// Why a config cannot be used; the line number is 1-based.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("line {0}: expected `[Interface]`, `[Peer]` or `Key = value`")]
    Syntax(usize),
    #[error(
        "line {line}: `{key}` is not something `cloudpc connect` does (remove it, or use wg-quick)"
    )]
    Unsupported { line: usize, key: String },
    #[error("line {line}: {what}")]
    Value { line: usize, what: String },
    #[error("the config has {0} [Peer] sections; `cloudpc connect` takes the one of the hub")]
    Peers(usize),
    #[error("the config lacks `{0}` (use the config `cloudpc device add` printed)")]
    Missing(&'static str),
}

fn key32(v: &str, line: usize, what: &str) -> Result<[u8; 32], ConfigError> {
    crate::enroll::keys::decode_key(v, what).map_err(|e| ConfigError::Value {
        line,
        what: e.to_string(),
    })
}

/// Parses wg-quick text.
pub fn parse(text: &str) -> Result<ClientConfig, ConfigError> {
    #[derive(PartialEq)]
    enum Sec {
        None,
        Interface,
        Peer,
    }
    let mut sec = Sec::None;
    let mut peers = 0;
    let (mut private, mut hub, mut psk, mut endpoint, mut keepalive) =
        (None, None, None, None, None);
    let (mut addresses, mut dns, mut search, mut allowed) = (vec![], vec![], vec![], vec![]);
    let mut mtu = 1420u16;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        if l.eq_ignore_ascii_case("[interface]") {
            sec = Sec::Interface;
            continue;
        }
        if l.eq_ignore_ascii_case("[peer]") {
            sec = Sec::Peer;
            peers += 1;
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            return Err(ConfigError::Syntax(line));
        };
        let (k, v) = (k.trim(), v.trim());
        let bad = |what: String| ConfigError::Value { line, what };
        let list = || v.split(',').map(str::trim).filter(|s| !s.is_empty());
        match (&sec, k.to_ascii_lowercase().as_str()) {
            (Sec::Interface, "privatekey") => private = Some(key32(v, line, "PrivateKey")?),
            (Sec::Interface, "address") => {
                for a in list() {
                    let n = a
                        .parse::<IpNet>()
                        .or_else(|_| a.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| bad(format!("{a:?} is not an address")))?;
                    addresses.push(n);
                }
            }
            (Sec::Interface, "dns") => {
                for a in list() {
                    match a.parse::<IpAddr>() {
                        Ok(ip) => dns.push(ip),
                        Err(_) => search.push(a.to_string()),
                    }
                }
            }
            (Sec::Interface, "mtu") => {
                mtu = v
                    .parse()
                    .ok()
                    .filter(|m| (1280..=9000).contains(m))
                    .ok_or_else(|| bad(format!("MTU {v:?} is not 1280 to 9000")))?;
            }
            (Sec::Interface, "listenport") => {}
            (Sec::Peer, "publickey") if peers == 1 => hub = Some(key32(v, line, "PublicKey")?),
            (Sec::Peer, "presharedkey") if peers == 1 => {
                psk = Some(key32(v, line, "PresharedKey")?)
            }
            (Sec::Peer, "endpoint") if peers == 1 => {
                if !v.contains(':') || v.ends_with(':') {
                    return Err(bad(format!("Endpoint {v:?} is not HOST:PORT")));
                }
                endpoint = Some(v.to_string());
            }
            (Sec::Peer, "allowedips") if peers == 1 => {
                for a in list() {
                    allowed.push(
                        a.parse::<IpNet>()
                            .map_err(|_| bad(format!("{a:?} is not a network")))?,
                    );
                }
            }
            (Sec::Peer, "persistentkeepalive") if peers == 1 => {
                keepalive = match v {
                    "off" => None,
                    _ => Some(
                        v.parse::<u16>()
                            .map_err(|_| bad(format!("PersistentKeepalive {v:?}")))?,
                    ),
                }
                .filter(|k| *k > 0);
            }
            (Sec::Peer, _) if peers > 1 => {}
            (Sec::None, _) => return Err(ConfigError::Syntax(line)),
            _ => {
                return Err(ConfigError::Unsupported {
                    line,
                    key: k.to_string(),
                })
            }
        }
    }
    if peers != 1 {
        return Err(ConfigError::Peers(peers));
    }
    if addresses.is_empty() {
        return Err(ConfigError::Missing("Address"));
    }
    Ok(ClientConfig {
        private_key: private.ok_or(ConfigError::Missing("PrivateKey"))?,
        addresses,
        dns,
        search,
        mtu,
        hub_key: hub.ok_or(ConfigError::Missing("PublicKey"))?,
        preshared_key: psk,
        endpoint: endpoint.ok_or(ConfigError::Missing("Endpoint"))?,
        allowed_ips: allowed,
        keepalive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "YE7Rm0O2bdqkxSpHW1HDlgbQ/fIv9OmYpPw8hH0kHUY=";

    fn sample() -> String {
        format!(
            "[Interface]\nPrivateKey = {K}\nAddress = 100.96.0.2/32, fd00::2/128\n\
             DNS = 100.96.0.1, fd00::1, mesh\nMTU = 1420\n\n[Peer]\nPublicKey = {K}\n\
             Endpoint = vpn.example.com:51820\nAllowedIPs = 0.0.0.0/0, ::/0\n\
             PersistentKeepalive = 25\n"
        )
    }

    #[test]
    fn the_config_device_add_prints_is_read_back() {
        let c = parse(&sample()).unwrap();
        assert_eq!(c.addresses.len(), 2);
        assert_eq!(c.dns.len(), 2);
        assert_eq!(c.search, ["mesh"]);
        assert_eq!(c.endpoint_host(), "vpn.example.com");
        assert!(c.full_tunnel());
        assert_eq!(c.keepalive, Some(25));
        let split = sample().replace("0.0.0.0/0, ::/0", "100.96.0.0/16, fd00::/48");
        assert!(!parse(&split).unwrap().full_tunnel());
    }

    #[test]
    fn what_the_client_cannot_do_is_refused_with_the_line() {
        let e = parse(&sample().replace("MTU = 1420", "PostUp = iptables -F")).unwrap_err();
        assert_eq!(
            e,
            ConfigError::Unsupported {
                line: 5,
                key: "PostUp".into()
            }
        );
        let e = parse(&sample().replace("vpn.example.com:51820", "vpn")).unwrap_err();
        assert!(e.to_string().contains("HOST:PORT"), "{e}");
        let no_peer = sample().split("[Peer]").next().unwrap().to_string();
        assert_eq!(parse(&no_peer).unwrap_err(), ConfigError::Peers(0));
        let no_key = sample().replace(&format!("PrivateKey = {K}\n"), "");
        assert_eq!(
            parse(&no_key).unwrap_err(),
            ConfigError::Missing("PrivateKey")
        );
    }

    #[test]
    fn fuzz_client_config() {
        crate::fuzz::run(
            "client_config",
            crate::fuzz::bytes(vec![sample().into_bytes()], 600),
            |b| {
                if let Ok(c) = parse(&String::from_utf8_lossy(b)) {
                    assert!(!c.addresses.is_empty());
                    assert!(c.endpoint.contains(':'));
                }
            },
        );
    }
}
