//! Loading a config file and checking what parses but cannot work: each error names its key.

use std::net::IpAddr;
use std::path::Path;

use ipnet::{IpNet, Ipv6Net};

use super::{Config, ConfigError};

impl Config {
    /// The DNS46 pool (`None`: DNS46 is off), checked: a range of at least 4 addresses that
    /// does not overlap the overlay.
    pub fn dns46_pool(&self) -> Result<Option<ipnet::Ipv4Net>, String> {
        let v = self.dns.dns46_pool.trim();
        if v.is_empty() {
            return Ok(None);
        }
        let net: ipnet::Ipv4Net = v.parse().map_err(|_| {
            format!("{v:?} is not an IPv4 range, e.g. \"100.127.0.0/16\" (\"\" = off)")
        })?;
        let net = net.trunc();
        if net.prefix_len() > 30 {
            return Err(format!("{v} is too small: use a /30 or larger"));
        }
        let o = self.wireguard.ipv4;
        if net.contains(&o.network()) || o.contains(&net.network()) {
            return Err(format!("{v} overlaps the overlay ({o})"));
        }
        if net.network().is_loopback()
            || net.network().is_multicast()
            || net.network().is_unspecified()
        {
            return Err(format!("{v} cannot be a pool"));
        }
        Ok(Some(net))
    }

    /// The public host name: `tls.domain`, else the host of `wireguard.endpoint` when it is a
    /// name (not an address); empty when there is none.
    pub fn public_domain(&self) -> String {
        let d = if self.tls.domain.is_empty() {
            let host = self
                .wireguard
                .endpoint
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(&self.wireguard.endpoint);
            let host = host.trim_matches(['[', ']']);
            if host.parse::<std::net::IpAddr>().is_ok() {
                ""
            } else {
                host
            }
        } else {
            &self.tls.domain
        };
        d.trim_end_matches('.').to_ascii_lowercase()
    }

    /// Each group with lists of its own: (group name, its `lists`).
    pub fn group_lists(&self) -> Vec<(String, Vec<String>)> {
        self.groups
            .iter()
            .filter_map(|(name, g)| g.lists.clone().map(|l| (name.clone(), l)))
            .collect()
    }

    /// Parses TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::Parse {
                path: path.to_path_buf(),
                key,
                message: inner.message().to_string(),
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        Config::parse(&text, path)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let inv = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.dns.upstreams.is_empty() {
            return inv("dns.upstreams", "at least one upstream is needed".into());
        }
        for u in &self.dns.upstreams {
            if let Err(e) = crate::dns::upstream::UpstreamSpec::parse(u) {
                return inv("dns.upstreams", e.to_string());
            }
        }
        if self.dns.dns64_prefix.prefix_len() != 96 {
            return inv(
                "dns.dns64_prefix",
                "only a /96 prefix is supported, e.g. \"64:ff9b::/96\"".into(),
            );
        }
        if let Err(e) = self.dns46_pool() {
            return inv("dns.dns46_pool", e);
        }
        if !crate::dns::name::is_valid_zone(&self.dns.zone) {
            return inv(
                "dns.zone",
                format!("{:?} is not a DNS name, e.g. \"mesh\"", self.dns.zone),
            );
        }
        let domain = self.public_domain();
        if !domain.is_empty() && !crate::dns::name::is_valid_zone(&domain) {
            return inv(
                "tls.domain",
                format!("{domain:?} is not a host name, e.g. \"vpn.example.com\""),
            );
        }
        if self.tls.acme {
            if domain.is_empty() {
                return inv(
                    "tls.acme",
                    "a certificate from a CA needs a host name: set tls.domain (or a name in wireguard.endpoint)".into(),
                );
            }
            if !self.tls.acme_directory.starts_with("https://") {
                return inv(
                    "tls.acme_directory",
                    format!(
                        "{:?} is not an https:// URL of an ACME directory",
                        self.tls.acme_directory
                    ),
                );
            }
            if !self.dns.tls_cert.is_empty() {
                return inv(
                    "tls.acme",
                    "acme = true and dns.tls_cert both choose the certificate: keep one".into(),
                );
            }
        }
        if self.dns.tls_cert.is_empty() != self.dns.tls_key.is_empty() {
            return inv(
                "dns.tls_cert",
                "tls_cert and tls_key must be set together".into(),
            );
        }
        if !self.wireguard.ipv6.is_empty() {
            match self.wireguard.ipv6.parse::<Ipv6Net>() {
                Ok(n) if n.prefix_len() <= 64 => {}
                _ => {
                    return inv(
                        "wireguard.ipv6",
                        format!(
                            "{:?} is not an IPv6 prefix of /64 or shorter, e.g. \"fd12:3456:789a::/48\"",
                            self.wireguard.ipv6
                        ),
                    )
                }
            }
        }
        self.egress.temp_settings()?;
        for (name, g) in &self.groups {
            if !crate::dns::name::is_valid_label(name) {
                return inv(
                    "groups",
                    format!("{name:?} is not a group name: use letters, digits or '-'"),
                );
            }
            let fw = g.firewall();
            if let Err(e) = crate::firewall::spec::check(&fw) {
                return inv("groups", format!("[groups.{name}]: {e}"));
            }
            for r in fw.reach.iter().flatten().filter(|r| *r != "all") {
                if let Ok(crate::firewall::Reach {
                    target: crate::firewall::ReachTarget::Group(other),
                    ..
                }) = crate::firewall::Reach::parse(r)
                {
                    if !self.groups.contains_key(&other) {
                        return inv(
                            "groups",
                            format!("[groups.{name}] reach: there is no group {other:?}"),
                        );
                    }
                }
            }
        }
        if let Err(e) = self.firewall.time_zone() {
            return inv("firewall.timezone", e);
        }
        if self.firewall.max_sites == 0 {
            return inv("firewall.max_sites", "at least 1".into());
        }
        let f = &self.filter;
        if f.update_interval != 0 && f.update_interval < 60 {
            return inv(
                "filter.update_interval",
                "at least 60 seconds (or 0 for updates only on demand)".into(),
            );
        }
        if f.max_list_bytes < 1024 {
            return inv("filter.max_list_bytes", "at least 1024 bytes".into());
        }
        if !(1..=3600).contains(&f.download_timeout) {
            return inv(
                "filter.download_timeout",
                "expected 1 to 3600 seconds".into(),
            );
        }
        let group_lists = self.groups.values().filter_map(|g| g.lists.as_ref());
        for entry in f.lists.iter().chain(group_lists.flatten()) {
            if crate::filter::ListUrl::is_url(entry) {
                if let Err(e) = crate::filter::ListUrl::parse(entry) {
                    return inv("filter.lists", format!("{entry:?}: {e}"));
                }
            }
        }
        if self.wireguard.ipv4.prefix_len() > 29 {
            return inv(
                "wireguard.ipv4",
                "the overlay needs a /29 or larger range".into(),
            );
        }
        if !(1280..=9000).contains(&self.wireguard.mtu) {
            return inv("wireguard.mtu", "expected a value from 1280 to 9000".into());
        }
        Ok(())
    }

    /// True when `ip` may use the resolver: loopback, the overlay, or `allow_from`.
    pub fn client_allowed(&self, ip: IpAddr, overlay: &[IpNet]) -> bool {
        ip.is_loopback()
            || overlay.iter().any(|n| n.contains(&ip))
            || self.dns.allow_from.iter().any(|n| n.contains(&ip))
    }
}
