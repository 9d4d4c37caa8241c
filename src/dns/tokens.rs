//! Per-device DNS tokens (AdGuard Home's "ClientID"): a random, revocable secret that names a
//! device on the DoH and DoT listeners when its queries do not come through the tunnel.
//!
//! - DoH: `https://HOST/dns-query/<token>` (or the DoT name below as the host).
//! - DoT: the server name (SNI) `<token>.HOST`, which Android's "Private DNS" takes.
//!
//! A query with a valid token is answered, counted and logged as that device, under its
//! policy. A query with an unknown token is refused, and so is a query without a token from an
//! address the resolver does not serve (not loopback, the overlay or `dns.allow_from`). So a
//! public listener is never an open resolver.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;

/// Characters in a token (base32, lower case: a DNS label that survives case folding).
pub const TOKEN_LEN: usize = 20;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A new random token (100 bits).
pub fn new_token() -> String {
    let raw: [u8; TOKEN_LEN] = rand::random();
    raw.iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect()
}

/// True when `s` has the shape of a token.
pub fn is_token(s: &str) -> bool {
    s.len() == TOKEN_LEN && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// The DoH path (`/dns-query` or `/dns-query/<token>`): `None` = not a DoH path;
/// `Some(None)` = no token; `Some(Some(t))` = the token part as sent (it may be malformed).
pub fn doh_path(path: &str) -> Option<Option<&str>> {
    let rest = path.strip_prefix(super::doh::PATH)?;
    if rest.is_empty() || rest == "/" {
        return Some(None);
    }
    let t = rest.strip_prefix('/')?;
    Some(Some(t.strip_suffix('/').unwrap_or(t)))
}

/// The token label of a TLS server name `<token>.<domain>` (case-insensitive); `None` when the
/// name is not one label under `domain`.
pub fn sni_token<'a>(sni: &'a str, domain: &str) -> Option<&'a str> {
    if domain.is_empty() {
        return None;
    }
    let sni = sni.strip_suffix('.').unwrap_or(sni);
    let (label, rest) = sni.split_once('.')?;
    (rest.eq_ignore_ascii_case(domain.trim_end_matches('.')) && !label.is_empty()).then_some(label)
}

/// Who a query on a TLS listener speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    /// Judged by the address it came from (the tunnel, loopback, `dns.allow_from`).
    Address(IpAddr),
    /// The device (its overlay address) named by a valid token, asking from `source`.
    Device { device: IpAddr, source: IpAddr },
    /// A token that names no device: refused.
    UnknownToken { source: IpAddr },
}

impl Asker {
    /// The address the query came from.
    pub fn source(&self) -> IpAddr {
        match *self {
            Asker::Address(a) => a,
            Asker::Device { source, .. } | Asker::UnknownToken { source } => source,
        }
    }
}

/// The tokens in force (token → the device's overlay IPv4 address), replaced as a whole when
/// devices or tokens change; readers never wait.
pub struct DnsTokens {
    /// The public host name the DoT names are under (`[tls] domain`; empty = none).
    domain: String,
    map: ArcSwap<HashMap<String, IpAddr>>,
    /// Sources served without a token (the overlay, loopback and `dns.allow_from`).
    trusted: Vec<IpNet>,
}

impl DnsTokens {
    /// Tokens for names under `domain`; `trusted` are the networks answered without one.
    pub fn new(domain: &str, trusted: Vec<IpNet>) -> DnsTokens {
        DnsTokens {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            map: ArcSwap::from_pointee(HashMap::new()),
            trusted,
        }
    }

    /// The public host name (empty when none is set).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Puts `map` (token → device address) in force.
    pub fn publish(&self, map: HashMap<String, IpAddr>) {
        self.map.store(Arc::new(map));
    }

    /// The device a token names.
    pub fn device(&self, token: &str) -> Option<IpAddr> {
        self.map.load().get(&token.to_ascii_lowercase()).copied()
    }

    /// True when `ip` is served without a token.
    pub fn trusted(&self, ip: IpAddr) -> bool {
        let ip = super::engine::canonical(ip);
        ip.is_loopback() || self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Judges a query from `source` that carried `token` (from the DoH path, else from the
    /// TLS server name).
    pub fn judge(&self, token: Option<&str>, source: IpAddr) -> Asker {
        match token {
            None => Asker::Address(source),
            Some(t) => match self.device(t) {
                Some(device) => Asker::Device { device, source },
                None => Asker::UnknownToken { source },
            },
        }
    }

    /// The token carried by a TLS server name, if it is `<label>.<domain>` and the label has
    /// the shape of a token.
    pub fn token_of_sni<'a>(&self, sni: Option<&'a str>) -> Option<&'a str> {
        sni.and_then(|s| sni_token(s, &self.domain))
            .filter(|t| is_token(&t.to_ascii_lowercase()))
    }
}

impl Default for DnsTokens {
    fn default() -> Self {
        DnsTokens::new("", vec![])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_dns_labels_and_differ() {
        let a = new_token();
        assert!(is_token(&a), "{a}");
        assert!(crate::dns::name::is_valid_label(&a));
        assert_ne!(a, new_token());
        assert!(!is_token("short"));
        assert!(!is_token(&"A".repeat(TOKEN_LEN)));
    }

    #[test]
    fn paths_and_server_names_carry_tokens() {
        assert_eq!(doh_path("/dns-query"), Some(None));
        assert_eq!(doh_path("/dns-query/"), Some(None));
        assert_eq!(doh_path("/dns-query/abc"), Some(Some("abc")));
        assert_eq!(doh_path("/dns-query/abc/"), Some(Some("abc")));
        assert_eq!(doh_path("/dns-queryx"), None);
        assert_eq!(doh_path("/admin"), None);
        assert_eq!(sni_token("tok.Hub.Example", "hub.example"), Some("tok"));
        assert_eq!(sni_token("tok.hub.example.", "hub.example"), Some("tok"));
        assert_eq!(sni_token("hub.example", "hub.example"), None);
        assert_eq!(sni_token("a.b.hub.example", "hub.example"), None);
        assert_eq!(sni_token("tok.other.example", "hub.example"), None);
        assert_eq!(sni_token("tok.hub.example", ""), None);
    }

    #[test]
    fn judging_a_query() {
        let t = DnsTokens::new("hub.example", vec!["10.7.0.0/24".parse().unwrap()]);
        let tok = new_token();
        let dev: IpAddr = "10.7.0.2".parse().unwrap();
        t.publish(HashMap::from([(tok.clone(), dev)]));
        let src: IpAddr = "198.51.100.9".parse().unwrap();
        assert_eq!(
            t.judge(Some(&tok.to_uppercase()), src),
            Asker::Device {
                device: dev,
                source: src
            }
        );
        assert_eq!(
            t.judge(Some("nope"), src),
            Asker::UnknownToken { source: src }
        );
        assert_eq!(t.judge(None, src), Asker::Address(src));
        let sni = format!("{tok}.hub.example");
        assert_eq!(t.token_of_sni(Some(&sni)), Some(tok.as_str()));
        assert_eq!(t.token_of_sni(Some("www.hub.example")), None);
        assert!(t.trusted(dev) && t.trusted("127.0.0.1".parse().unwrap()));
        assert!(!t.trusted(src));
        t.publish(HashMap::new());
        assert_eq!(
            t.judge(Some(&tok), src),
            Asker::UnknownToken { source: src }
        );
    }

    #[test]
    fn fuzz_dns_token_carriers() {
        let seeds = vec![
            b"/dns-query/abcdefghijklmnopqrst".to_vec(),
            b"abcdefghijklmnopqrst.hub.example".to_vec(),
            b"/dns-query//x/".to_vec(),
        ];
        crate::fuzz::run("dns_token_carriers", crate::fuzz::bytes(seeds, 200), |b| {
            let s = String::from_utf8_lossy(b);
            if let Some(Some(t)) = doh_path(&s) {
                assert!(s.ends_with(t) || s.ends_with(&format!("{t}/")));
            }
            if let Some(l) = sni_token(&s, "hub.example") {
                assert!(!l.contains('.') && !l.is_empty());
            }
            let t = DnsTokens::new("hub.example", vec![]);
            let _ = t.token_of_sni(Some(&s));
        });
    }
}
