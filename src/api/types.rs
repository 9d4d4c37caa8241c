//! The requests and answers of the management API (docs/API.md), shared by the server, the
//! CLI's client and the in-process [`super::Manage`] implementation.

use serde::{Deserialize, Serialize};

use crate::store::Device;

/// `POST /v1/devices`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    pub name: String,
    /// The device's own public key; without it the hub makes a key pair.
    #[serde(default)]
    pub public_key: Option<String>,
    #[serde(default)]
    pub split: bool,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub owner: bool,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub no_log: bool,
    /// Also return an SVG QR code of the config.
    #[serde(default)]
    pub qr: bool,
    /// The person it belongs to (`cloudpc person add`); none = the owner.
    #[serde(default)]
    pub person: Option<String>,
}

/// The answer to `POST /v1/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAdded {
    pub device: Device,
    /// wg-quick config for the stock WireGuard apps.
    pub config: String,
    /// True when `config` carries a private key the hub made (shown only now).
    pub private_key_included: bool,
    pub qr_svg: Option<String>,
}

/// `GET|PUT /v1/querylog`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryLogState {
    pub enabled: bool,
    pub recipients: Vec<String>,
    pub entries: u64,
    /// Unix seconds of the oldest and newest stored entry.
    pub oldest: Option<i64>,
    pub newest: Option<i64>,
    pub retention_days: u32,
    /// Entries deleted by this change (a disable).
    #[serde(default)]
    pub deleted: u64,
}

/// `PUT /v1/querylog`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryLogChange {
    pub enabled: bool,
    #[serde(default)]
    pub recipients: Vec<String>,
}

/// The answer to `POST /v1/tokens`: the token is shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    pub id: i64,
    pub name: String,
    pub token: String,
}

/// What `cloudpc status` shows (`GET /v1/status`). Only counts and device facts; never a
/// queried name.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StatusReport {
    pub pid: u32,
    pub uptime_secs: u64,
    pub dns: crate::dns::stats::StatsSnapshot,
    pub cache_entries: usize,
    pub filter_rules: usize,
    pub list_errors: usize,
    pub listen: Vec<String>,
    /// One JSON object per device (hub status plus per-device query and block counts).
    pub devices: Vec<serde_json::Value>,
    /// The certificate served and, with ACME, how getting it goes.
    #[serde(default)]
    pub tls: Option<crate::certs::TlsStatus>,
    /// Where temporary egress addresses come from, and how many are in use.
    #[serde(default)]
    pub egress: Option<crate::egress::live::EgressReport>,
    /// DNS46/NAT46's counters (`None`: off).
    #[serde(default)]
    pub nat46: Option<crate::hub::nat46::Nat46Stats>,
}

/// A device's DNS addresses off the tunnel (`GET /v1/devices/{name}/dns`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDns {
    pub device: String,
    /// The device's DNS token (in the DoH path and the DoT name).
    pub token: String,
    /// `https://HOST/dns-query/<token>` (`None` without a host name: set `tls.domain`).
    pub doh_url: Option<String>,
    /// `<token>.HOST`, for Android's Private DNS and other DoT clients.
    pub dot_host: Option<String>,
    /// Whether the public DoT/DoH listeners are on (`dns.public`).
    pub public: bool,
}

/// A device's firewall (`GET/PATCH /v1/devices/{name}/firewall`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallView {
    pub device: String,
    pub group: Option<String>,
    /// The device's own settings (the group's come from the config).
    pub settings: crate::firewall::FirewallSpec,
    /// A running `--for` timer.
    pub timer: Option<crate::firewall::Timer>,
    /// The mode in force, why, and when it next changes by itself.
    pub effective: crate::firewall::Effective,
    /// Connection attempts the firewall dropped since the hub started.
    pub dropped: u64,
    /// The egress mode in force (the device's own, else its group's).
    #[serde(default)]
    pub egress: crate::egress::EgressMode,
}

/// A device's egress (`GET /v1/devices/{name}/egress`, `POST /v1/devices/{name}/egress/address`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressView {
    pub device: String,
    /// The mode in force (the device's own, else its group's).
    pub mode: crate::egress::EgressMode,
    /// The temporary addresses its new connections use now (while the hub runs, in
    /// `temporary` mode; kept in memory only).
    pub lease: Option<crate::egress::temporary::Lease>,
}

/// `POST /v1/people`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPerson {
    pub name: String,
    pub role: crate::store::Role,
    /// May use the Cloud PC's internet; none = the role's default (members yes, guests no).
    #[serde(default)]
    pub internet: Option<bool>,
}

/// `PATCH /v1/people/{name}`: each field given replaces the person's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::store::Role>,
    /// `Some(None)` = back to the role's default.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::store::some_nullable_bool"
    )]
    pub internet: Option<Option<bool>>,
}

/// `POST /v1/shares` and `DELETE /v1/shares`: `nas` or `nas:445` with `alice` or
/// `group:team`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareReq {
    pub target: String,
    pub with: String,
}

/// `POST /v1/invites`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInvite {
    pub person: String,
    /// `7d`, `12h`; none = 7 days.
    #[serde(default)]
    pub expires: Option<String>,
    /// How many devices may join with it; none = 1.
    #[serde(default)]
    pub uses: Option<u32>,
}

/// The answer to `POST /v1/invites`: the code is shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteCreated {
    pub invite: crate::store::Invite,
    /// The short code (`XXXX-XXXX-XXXX-XXXX`).
    pub code: String,
    /// The page that redeems it; its fragment carries the code (and, for a certificate no
    /// public CA signed, the certificate's SHA-256 for `cloudpc connect --invite`).
    pub link: String,
}

/// `POST /invite/redeem` (public, on the hub's HTTPS listeners): a device joins with an
/// invite code and the public key it made itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redeem {
    pub code: String,
    pub public_key: String,
    /// The device's name; none = `<person>-<n>`.
    #[serde(default)]
    pub name: Option<String>,
}

/// The answer to a redeemed invite: the device and its config without a private key (the
/// device fills in its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redeemed {
    pub device: Device,
    pub config: String,
}

/// A link as `cloudpc link list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkView {
    pub name: String,
    /// The other hub's HTTPS address.
    pub peer: String,
    /// Where the other side's devices appear here.
    pub import_prefix: String,
    /// The devices the other side exports here, as `NAME.LINK.<zone>` with their address.
    pub imported: Vec<(String, std::net::Ipv4Addr)>,
    /// False until the other side confirmed.
    pub up: bool,
    /// Seconds since the last handshake with the other hub (`None`: none since this hub
    /// started, e.g. the other hub is away or has other keys now).
    #[serde(default)]
    pub handshake_secs_ago: Option<u64>,
}

/// The answer to `POST /v1/links`: the one-time code (a link) for the other owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCode {
    pub name: String,
    pub code: String,
}

/// `POST /v1/links` (`code` absent: make a code; present: accept the other side's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkReq {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
}

/// What one hub tells the other about itself when they link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubFacts {
    /// Its host name (the other side's default name for the link).
    pub hostname: String,
    /// Its HTTPS listener (`https://HOST[:PORT]`) and certificate pin.
    pub https: String,
    #[serde(default)]
    pub pin: Option<String>,
    /// Its WireGuard endpoint and public key.
    pub endpoint: String,
    pub hub_key: String,
    /// Its overlay (IPv4).
    pub overlay: ipnet::Ipv4Net,
    /// The public key it dials the other hub with.
    pub dial_key: String,
}

/// `POST /link/join` (hub to hub, with the one-time code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkJoin {
    pub code: String,
    pub facts: HubFacts,
}

/// The answer to `/link/join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkJoined {
    pub facts: HubFacts,
    /// The secret the two hubs authenticate their later calls with.
    pub secret: String,
    /// The address the joining side's dial key has here.
    pub your_address: std::net::Ipv4Addr,
}

/// `POST /link/confirm`, `/link/exports` and `/link/remove` (hub to hub, with the secret).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkCall {
    pub secret: String,
    /// `/link/confirm`: the address the other side's dial key has here.
    #[serde(default)]
    pub your_address: Option<std::net::Ipv4Addr>,
    /// `/link/confirm` and `/link/exports`: what the sender exports.
    #[serde(default)]
    pub exports: Option<Vec<crate::store::Export>>,
}
