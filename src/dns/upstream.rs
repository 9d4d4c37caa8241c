//! Upstream resolvers (hickory-resolver): `udp://`, `tcp://`, `tls://`, `https://`.

use std::net::{IpAddr, SocketAddr};

/// A parsed `dns.upstreams` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamSpec {
    /// Plain DNS over UDP (falls back to TCP on truncation).
    Udp(SocketAddr),
    /// Plain DNS over TCP.
    Tcp(SocketAddr),
    /// DNS-over-TLS with the name the certificate must carry.
    Tls { addr: SocketAddr, name: String },
    /// DNS-over-HTTPS: host (name or IP), port, path; `ip` when given as `#IP` or host is an IP.
    Https {
        host: String,
        port: u16,
        path: String,
        ip: Option<IpAddr>,
    },
}

/// An upstream URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{url:?}: {why}; expected udp://IP[:port], tcp://IP[:port], tls://IP[:port]#name or https://host[:port]/path")]
pub struct SpecError {
    url: String,
    why: &'static str,
}

fn sock(s: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

impl UpstreamSpec {
    /// Parses one upstream URL.
    pub fn parse(url: &str) -> Result<UpstreamSpec, SpecError> {
        let err = |why| SpecError {
            url: url.to_string(),
            why,
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| err("no scheme"))?;
        match scheme {
            "udp" | "tcp" => {
                let a = sock(rest, 53).ok_or_else(|| err("not an IP address"))?;
                Ok(if scheme == "udp" {
                    UpstreamSpec::Udp(a)
                } else {
                    UpstreamSpec::Tcp(a)
                })
            }
            "tls" => {
                let (addr, name) = rest
                    .split_once('#')
                    .ok_or_else(|| err("DoT needs the certificate name after '#'"))?;
                let addr = sock(addr, 853).ok_or_else(|| err("not an IP address"))?;
                if !super::name::is_valid_zone(name) {
                    return Err(err("the name after '#' is not a DNS name"));
                }
                Ok(UpstreamSpec::Tls {
                    addr,
                    name: name.to_string(),
                })
            }
            "https" => {
                let (rest, ip) = match rest.split_once('#') {
                    Some((r, ip)) => (
                        r,
                        Some(
                            ip.parse::<IpAddr>()
                                .map_err(|_| err("'#' must be followed by an IP"))?,
                        ),
                    ),
                    None => (rest, None),
                };
                let (hostport, path) = match rest.find('/') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, "/dns-query"),
                };
                let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
                    let (h, p) = h.split_once(']').ok_or_else(|| err("unclosed '['"))?;
                    let port = match p.strip_prefix(':') {
                        Some(p) => p.parse().map_err(|_| err("bad port"))?,
                        None => 443,
                    };
                    (h.to_string(), port)
                } else {
                    match hostport.rsplit_once(':') {
                        Some((h, p)) => (h.to_string(), p.parse().map_err(|_| err("bad port"))?),
                        None => (hostport.to_string(), 443),
                    }
                };
                if host.is_empty() {
                    return Err(err("no host"));
                }
                let ip = ip.or_else(|| host.parse().ok());
                if ip.is_none() && !super::name::is_valid_zone(&host) {
                    return Err(err("host is neither an IP nor a DNS name"));
                }
                Ok(UpstreamSpec::Https {
                    host,
                    port,
                    path: path.to_string(),
                    ip,
                })
            }
            _ => Err(err("unknown scheme")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        assert_eq!(
            UpstreamSpec::parse("udp://127.0.0.1:5353").unwrap(),
            UpstreamSpec::Udp("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            UpstreamSpec::parse("tcp://::1").unwrap(),
            UpstreamSpec::Tcp("[::1]:53".parse().unwrap())
        );
        assert_eq!(
            UpstreamSpec::parse("tls://9.9.9.9:853#dns.quad9.net").unwrap(),
            UpstreamSpec::Tls {
                addr: "9.9.9.9:853".parse().unwrap(),
                name: "dns.quad9.net".into()
            }
        );
        assert_eq!(
            UpstreamSpec::parse("https://dns.example/q").unwrap(),
            UpstreamSpec::Https {
                host: "dns.example".into(),
                port: 443,
                path: "/q".into(),
                ip: None
            }
        );
        assert!(UpstreamSpec::parse("tls://9.9.9.9").is_err());
        assert!(UpstreamSpec::parse("ftp://x").is_err());
    }
}
