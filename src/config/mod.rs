//! The TOML settings: defaults, loading and validation with errors that name the key.
//!
//! Every setting has a built-in default so `cloudpc run` works with no file at all.
//! `config/cloudpc.example.toml` documents each one; keep the two in step. Loading and the
//! checks of what parses but cannot work are in `load.rs`.

mod load;

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A setting has the wrong type or an unknown key is present.
    #[error("config file {path}: setting `{key}`: {message}")]
    Parse {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A setting parsed but its value cannot work.
    #[error("config: setting `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// How a blocked name is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BlockedAnswer {
    /// `0.0.0.0` for A, `::` for AAAA, NOERROR/NODATA for other types.
    #[default]
    Null,
    /// NXDOMAIN.
    Nxdomain,
    /// REFUSED.
    Refused,
}

/// All settings.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub dns: DnsConfig,
    pub filter: FilterConfig,
    pub wireguard: WireguardConfig,
    pub egress: EgressConfig,
    pub querylog: QueryLogConfig,
    pub api: ApiConfig,
    pub admin: AdminConfig,
    pub firewall: FirewallConfig,
    pub tls: TlsConfig,
    /// Per-device policy groups: `[groups.NAME]`.
    pub groups: std::collections::BTreeMap<String, GroupConfig>,
    /// The Cloud PC's inbox (files dropped on it with LocalSend).
    pub drop: DropConfig,
}

/// `[drop]`: the inbox of files dropped on the Cloud PC.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DropConfig {
    /// The inbox holds at most this many bytes.
    pub max_bytes: u64,
    /// Files older than this are removed (seconds, or e.g. `"7d"`).
    #[serde(deserialize_with = "seconds_or_duration")]
    pub keep: u64,
}

impl Default for DropConfig {
    fn default() -> Self {
        DropConfig {
            max_bytes: 2 << 30,
            keep: 7 * 86_400,
        }
    }
}

impl DropConfig {
    /// The inbox's settings.
    pub fn settings(&self) -> crate::drop::DropSettings {
        crate::drop::DropSettings {
            max_bytes: self.max_bytes,
            keep_secs: self.keep as i64,
        }
    }
}

/// `[groups.NAME]`: a policy for the devices put in the group (`cloudpc device set NAME
/// --group G`). Unset fields follow the default policy.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GroupConfig {
    /// Lists for this group instead of `filter.lists` (unset = the default lists).
    pub lists: Option<Vec<String>>,
    /// Names blocked for this group, besides `filter.block`.
    pub block: Vec<String>,
    /// Names allowed for this group, besides `filter.allow` (beats every block).
    pub allow: Vec<String>,
    /// How this group's blocked names are answered (unset = `dns.blocked_answer`).
    pub blocked_answer: Option<BlockedAnswer>,
    /// Firewall: `on` (default), `off` or `allowlist`.
    pub internet: Option<crate::firewall::InternetMode>,
    /// Firewall: with `allowlist`, the sites these devices may reach (with subdomains).
    pub allow_sites: Vec<String>,
    /// Firewall: sites refused in DNS and dropped by address.
    pub deny_sites: Vec<String>,
    /// Firewall: packet rules dropped (`"tcp/25"`, `"198.51.100.0/24"`). Packet rules in
    /// `allow` (anything written as an address, CIDR or protocol) are firewall allows.
    pub deny: Vec<String>,
    /// Firewall: the devices these may open connections to (unset = all).
    pub reach: Option<Vec<String>>,
    /// Firewall: daily windows with the internet off, `"21:00-07:00"` (hub's local time).
    pub internet_off: Vec<String>,
    /// How these devices' internet traffic leaves: `hub` (default) or `temporary`.
    pub egress: Option<crate::egress::EgressMode>,
    /// Discovery (mDNS, SSDP, LocalSend announcements) with the other devices (default on).
    pub discovery: Option<bool>,
    /// DNS46 and NAT46 for these devices (default on).
    pub dns46: Option<bool>,
}

impl GroupConfig {
    /// The DNS allow names of `allow` (packet rules left out).
    pub fn dns_allow(&self) -> Vec<String> {
        self.allow
            .iter()
            .filter(|a| !crate::firewall::spec::looks_like_packet_rule(a))
            .cloned()
            .collect()
    }

    /// The group's firewall settings.
    pub fn firewall(&self) -> crate::firewall::FirewallSpec {
        let norm = |v: &[String]| {
            v.iter()
                .map(|s| crate::dns::name::normalize_domain(s).unwrap_or_else(|| s.clone()))
                .collect()
        };
        crate::firewall::FirewallSpec {
            internet: self.internet,
            allow_sites: norm(&self.allow_sites),
            deny_sites: norm(&self.deny_sites),
            allow: self
                .allow
                .iter()
                .filter(|a| crate::firewall::spec::looks_like_packet_rule(a))
                .cloned()
                .collect(),
            deny: self.deny.clone(),
            reach: self.reach.clone(),
            internet_off: self.internet_off.clone(),
            egress: self.egress,
            dns46: None,
        }
    }
}

/// `[firewall]`: settings of the per-device firewall (the policies are in `[groups.NAME]`
/// and on each device).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallConfig {
    /// An address the resolver handed for an allowed site stays usable at least this long
    /// (seconds, or e.g. `"5m"`), even with a shorter TTL.
    #[serde(deserialize_with = "seconds_or_duration")]
    pub site_ttl_floor: u64,
    /// Addresses remembered per device from answers; the oldest go first.
    pub max_sites: usize,
    /// Time zone of schedules (`internet_off`), e.g. `"Europe/Berlin"`; empty = the system's.
    pub timezone: String,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            site_ttl_floor: 300,
            max_sites: 65_536,
            timezone: String::new(),
        }
    }
}

impl FirewallConfig {
    /// The time zone schedules are read in.
    pub fn time_zone(&self) -> Result<jiff::tz::TimeZone, String> {
        if self.timezone.is_empty() {
            return Ok(jiff::tz::TimeZone::system());
        }
        if self.timezone.eq_ignore_ascii_case("utc") {
            return Ok(jiff::tz::TimeZone::UTC);
        }
        jiff::tz::TimeZone::get(&self.timezone).map_err(|_| {
            format!(
                "{:?} is not a time zone name, e.g. \"Europe/Berlin\" or \"UTC\"",
                self.timezone
            )
        })
    }
}

/// `[dns]`: the resolver.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Plain DNS (UDP and TCP) listen addresses; the hub's overlay addresses are added when the hub runs.
    pub listen: Vec<SocketAddr>,
    /// DNS-over-TLS listen addresses.
    pub tls_listen: Vec<SocketAddr>,
    /// DNS-over-HTTPS listen addresses (path `/dns-query`).
    pub https_listen: Vec<SocketAddr>,
    /// Serve DoT and DoH on the public address for devices off the tunnel, each naming
    /// itself by its DNS token (queries without a valid token are refused).
    pub public: bool,
    /// With `public`: the DoT listeners (port 853).
    pub public_tls_listen: Vec<SocketAddr>,
    /// With `public`: the DoH listeners (port 443, shared with the admin page and the ACME
    /// validation).
    pub public_https_listen: Vec<SocketAddr>,
    /// Client networks answered besides loopback and the overlay.
    pub allow_from: Vec<IpNet>,
    /// Upstream resolvers, tried in order with fail-over.
    pub upstreams: Vec<String>,
    /// Extra PEM CA bundle trusted for DoT/DoH upstreams.
    pub upstream_ca: String,
    /// Local zone answered from the device registry and zone files.
    pub zone: String,
    /// Directory of RFC 1035 zone files.
    pub zones_dir: String,
    pub dns64: bool,
    pub dns64_prefix: Ipv6Net,
    /// DNS46: the IPv4 pool that A answers for IPv6-only names come from (`""` = off).
    pub dns46_pool: String,
    /// DNS46: a mapping unused this long (and past its answer's TTL) ends (seconds, or e.g.
    /// `"10m"`).
    #[serde(deserialize_with = "seconds_or_duration")]
    pub dns46_idle: u64,
    /// DNS46: mappings one device may hold at once.
    pub dns46_per_device: usize,
    pub blocked_answer: BlockedAnswer,
    /// TTL of synthesised blocked answers, seconds.
    pub blocked_ttl: u32,
    /// TLS certificate and key (PEM) for DoT and DoH; empty = self-signed, kept in the state dir.
    pub tls_cert: String,
    pub tls_key: String,
    /// Queries per second allowed per client address (0 = unlimited).
    pub rate_limit: u32,
    /// Number of answers kept in the cache.
    pub cache_size: usize,
    /// Seconds a TCP/DoT connection may stay idle.
    pub tcp_idle_timeout: u64,
    /// Seconds to wait for an upstream answer.
    pub upstream_timeout: u64,
    /// Threads answering plain DNS over UDP, each with its own socket (0 = one per core the
    /// process may run on).
    pub threads: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            tls_listen: vec![],
            https_listen: vec![],
            public: false,
            public_tls_listen: vec![
                "0.0.0.0:853".parse().expect("constant"),
                "[::]:853".parse().expect("constant"),
            ],
            public_https_listen: vec![
                "0.0.0.0:443".parse().expect("constant"),
                "[::]:443".parse().expect("constant"),
            ],
            allow_from: vec![],
            upstreams: vec!["tls://9.9.9.9:853#dns.quad9.net".into()],
            upstream_ca: String::new(),
            zone: "mesh".into(),
            zones_dir: "zones".into(),
            dns64: true,
            dns64_prefix: "64:ff9b::/96".parse().expect("constant"),
            dns46_pool: "100.127.0.0/16".into(),
            dns46_idle: 600,
            dns46_per_device: 1024,
            blocked_answer: BlockedAnswer::Null,
            blocked_ttl: 10,
            tls_cert: String::new(),
            tls_key: String::new(),
            rate_limit: 2000,
            cache_size: 100_000,
            tcp_idle_timeout: 10,
            upstream_timeout: 3,
            threads: 0,
        }
    }
}

/// `[tls]`: the certificate of the hub's TLS listeners.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The Cloud PC's public host name; empty = the host of `wireguard.endpoint` when it is a
    /// name. The devices' DoT names are `<token>.DOMAIN`.
    pub domain: String,
    /// Get the certificate from an ACME CA (TLS-ALPN-01 on port 443 of the public address:
    /// needs `dns.public` or an `https_listen` there).
    pub acme: bool,
    /// The CA's ACME directory.
    pub acme_directory: String,
    /// Contact address given to the CA (optional).
    pub acme_email: String,
    /// PEM root the CA's own HTTPS is checked with (a private CA); empty = the system's.
    pub acme_ca: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            domain: String::new(),
            acme: false,
            acme_directory: crate::certs::acme::LETS_ENCRYPT.into(),
            acme_email: String::new(),
            acme_ca: String::new(),
        }
    }
}

/// `[filter]`: block lists and overrides.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// List files (ABP or hosts syntax).
    pub lists: Vec<String>,
    /// Names blocked with their subdomains.
    pub block: Vec<String>,
    /// Names never blocked (beats every block).
    pub allow: Vec<String>,
    /// Seconds between scheduled downloads of URL lists (±10% jitter); 0 = only on demand
    /// (`cloudpc lists update`). The file may say `"24h"`, `"90m"`, `"3600s"` or `"7d"`.
    #[serde(deserialize_with = "seconds_or_duration")]
    pub update_interval: u64,
    /// Largest list accepted, in bytes (downloads stop past it; larger files are not read).
    pub max_list_bytes: u64,
    /// Seconds a list download may take in total (connect, redirects, body).
    pub download_timeout: u64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            lists: vec![DEFAULT_LIST.into()],
            block: vec![],
            allow: vec![],
            update_interval: 24 * 3600,
            max_list_bytes: 64 * 1024 * 1024,
            download_timeout: 60,
        }
    }
}

/// Reads a number of seconds, or a string like `"24h"`, `"30m"`, `"90s"`, `"7d"`.
fn seconds_or_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Seconds(u64),
        Text(String),
    }
    match Value::deserialize(d)? {
        Value::Seconds(n) => Ok(n),
        Value::Text(t) => crate::querylog::timefmt::parse_duration_ms(&t)
            .filter(|ms| *ms >= 0)
            .map(|ms| (ms / 1000) as u64)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{t:?} is not a duration; expected seconds or e.g. \"24h\", \"90m\", \"7d\""
                ))
            }),
    }
}

/// The bundled list's path; when it is not on disk the copy built into the binary is used.
pub const DEFAULT_LIST: &str = "blocklists/default.txt";

/// `[wireguard]`: the hub.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WireguardConfig {
    /// Run the WireGuard hub (false = resolver only).
    pub enabled: bool,
    pub listen_port: u16,
    /// `HOST:PORT` that device configs dial.
    pub endpoint: String,
    pub ipv4: Ipv4Net,
    /// ULA /48; empty = generated at first start and kept in the state database.
    pub ipv6: String,
    pub mtu: u16,
    /// Name of the hub's TUN interface.
    pub interface: String,
    /// Where devices may carry WireGuard over TLS (port 443, shared with DoH and the admin
    /// page; `[]` = off).
    pub tls_listen: Vec<SocketAddr>,
}

impl Default for WireguardConfig {
    fn default() -> Self {
        WireguardConfig {
            enabled: true,
            listen_port: 51820,
            endpoint: String::new(),
            ipv4: "100.96.0.0/16".parse().expect("constant"),
            ipv6: String::new(),
            mtu: 1420,
            interface: "cloudpc0".into(),
            tls_listen: vec![
                SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 443)),
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 443)),
            ],
        }
    }
}

/// `[egress]`: the personal VPN towards the internet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    pub internet: bool,
    /// Interface towards the internet; `auto` = the default route's.
    pub interface: String,
    /// Where `temporary` devices' IPv6 addresses come from: `auto` (the egress interface's
    /// global /64), `off`, or a prefix of at least 2^32 addresses (/96 or shorter).
    pub ipv6_prefix: String,
    /// `ipv6_prefix` is routed to the VM (a `blackhole` route) rather than on its link.
    pub ipv6_routed: bool,
    /// Extra IPv4 addresses of the VM for `temporary` devices (one device each at a time).
    pub ipv4_pool: Vec<std::net::Ipv4Addr>,
    /// How often a temporary address changes by itself (`"1h"`; `"0"` = only on demand;
    /// at least 1 min).
    pub rotate: String,
    /// How long an old address keeps its open connections before they are cut.
    pub drain: String,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            internet: true,
            interface: "auto".into(),
            ipv6_prefix: "auto".into(),
            ipv6_routed: false,
            ipv4_pool: vec![],
            rotate: "1h".into(),
            drain: "10m".into(),
        }
    }
}

impl EgressConfig {
    /// The temporary-address settings, checked (the error names the key).
    pub fn temp_settings(&self) -> Result<crate::egress::host::TempSettings, ConfigError> {
        crate::egress::host::TempSettings::parse(self)
            .map_err(|(key, message)| ConfigError::Invalid { key, message })
    }
}

/// `[querylog]`: off unless the owner turns it on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryLogConfig {
    pub retention_days: u32,
}

impl Default for QueryLogConfig {
    fn default() -> Self {
        QueryLogConfig { retention_days: 7 }
    }
}

/// `[admin]`: the admin page, on the TLS listener DoH uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin page at all (also on `dns.https_listen`).
    pub enabled: bool,
    /// Serve it (and DoH) on the hub's overlay addresses, port 443, for admin devices.
    pub overlay: bool,
    /// More HTTPS addresses (password login), e.g. for an SSH tunnel.
    pub listen: Vec<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            overlay: true,
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 443))],
        }
    }
}

/// `[api]`: the management API (docs/API.md). The Unix socket in the state dir is always on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the API to admin devices on the hub's overlay addresses (HTTP port 80).
    pub overlay: bool,
    /// TCP addresses for automation (TLS with the hub's certificate, bearer token required).
    pub listen: Vec<SocketAddr>,
    /// Plain-HTTP addresses of `/metrics` (Prometheus text format) for a Prometheus on the
    /// same machine; `[]` turns it off. Admin devices also find `/metrics` on the API.
    pub metrics_listen: Vec<SocketAddr>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            overlay: true,
            listen: vec![],
            metrics_listen: vec![SocketAddr::from(([127, 0, 0, 1], 9153))],
        }
    }
}

#[cfg(test)]
mod tests;
