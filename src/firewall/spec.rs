//! The firewall's settings as the owner writes them (`[groups.NAME]`, `cloudpc device set`,
//! the API), their checks, and the pure function that turns a group's and a device's settings,
//! a timer and the clock into the policy in force ([`effective`]).
//!
//! Syntax:
//! - a packet rule (`allow` / `deny`) is an address or CIDR, a protocol with a port or port
//!   range, or both separated by a space: `"198.51.100.0/24"`, `"2001:db8::1"`, `"tcp/25"`,
//!   `"udp/443"`, `"tcp/8000-8100"`, `"icmp"`, `"198.51.100.0/24 tcp/443"`;
//! - a `reach` entry is a device name, a device name with a port or range (`"printer:631"`,
//!   TCP and UDP), or `"group:NAME"` (every device of that group, optionally `:PORTS`);
//!   `["all"]` is the default (every device) and `[]` reaches no device;
//! - a schedule window (`internet_off`) is `"HH:MM-HH:MM"` in the hub's local time; a window
//!   whose end is not after its start runs over midnight (`"21:00-07:00"`).

use std::net::IpAddr;

use ipnet::IpNet;
use jiff::{Timestamp, ZonedDateTime};
use serde::{Deserialize, Serialize};

/// What a device may reach on the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InternetMode {
    /// Everything but what `deny` rules and `deny_sites` take away.
    #[default]
    On,
    /// Nothing beyond the hub's own services (DNS, admin page) and other devices.
    Off,
    /// Only the addresses of `allow_sites` (as the resolver handed them) and `allow` rules.
    Allowlist,
}

impl InternetMode {
    /// `on`, `off` or `allowlist`.
    pub fn as_str(self) -> &'static str {
        match self {
            InternetMode::On => "on",
            InternetMode::Off => "off",
            InternetMode::Allowlist => "allowlist",
        }
    }

    /// Reads `on`, `off` or `allowlist`.
    pub fn parse(s: &str) -> Result<InternetMode, String> {
        match s {
            "on" => Ok(InternetMode::On),
            "off" => Ok(InternetMode::Off),
            "allowlist" => Ok(InternetMode::Allowlist),
            _ => Err(format!(
                "{s:?} is not an internet mode: use on, off or allowlist"
            )),
        }
    }
}

/// The firewall settings of a group or of one device. Unset fields follow the group (for a
/// device) or the default (everything open).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internet: Option<InternetMode>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_sites: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny_sites: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reach: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub internet_off: Vec<String>,
    /// How the device's internet traffic leaves the Cloud PC (`hub` or `temporary`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::egress::EgressMode>,
    /// DNS46/NAT46 for the device (unset: its group's, else on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns46: Option<bool>,
}

impl FirewallSpec {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == FirewallSpec::default()
    }
}

/// A change to a device's firewall settings (API and CLI): each field given replaces the
/// device's own value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallPatch {
    /// `on`, `off`, `allowlist`, or `default` (follow the group).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internet: Option<String>,
    /// With `internet`: only for this long (`30s`, `10m`, `1h`), then back to what was before.
    #[serde(skip_serializing_if = "Option::is_none", rename = "for")]
    pub for_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_sites: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_sites: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<String>>,
    /// `["all"]` = every device (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reach: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internet_off: Option<Vec<String>>,
    /// `hub`, `temporary`, or `default` (follow the group).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    /// DNS46/NAT46: `on`, `off`, or `default` (follow the group).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns46: Option<String>,
}

impl FirewallPatch {
    /// True when it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == FirewallPatch::default()
    }
}

/// A transport protocol a rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    /// The IP protocol numbers it stands for (ICMP covers ICMPv6).
    pub fn matches(self, ip_proto: u8) -> bool {
        match self {
            Proto::Tcp => ip_proto == 6,
            Proto::Udp => ip_proto == 17,
            Proto::Icmp => ip_proto == 1 || ip_proto == 58,
        }
    }
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports(pub u16, pub u16);

impl Ports {
    pub fn contains(self, p: u16) -> bool {
        self.0 <= p && p <= self.1
    }

    /// `25` or `8000-8100`.
    pub fn parse(s: &str) -> Result<Ports, String> {
        let one = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
        };
        match s.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (one(a)?, one(b)?);
                if a > b {
                    return Err(format!("port range {s:?} ends before it starts"));
                }
                Ok(Ports(a, b))
            }
            None => one(s).map(|p| Ports(p, p)),
        }
    }
}

/// A parsed `allow` / `deny` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketRule {
    pub net: Option<IpNet>,
    pub proto: Option<Proto>,
    /// Only with TCP or UDP.
    pub ports: Option<Ports>,
}

impl PacketRule {
    /// Reads a rule (see the module docs).
    pub fn parse(s: &str) -> Result<PacketRule, String> {
        let mut rule = PacketRule {
            net: None,
            proto: None,
            ports: None,
        };
        let parts: Vec<&str> = s.split_whitespace().collect();
        if parts.is_empty() || parts.len() > 2 {
            return Err(format!(
                "{s:?} is not a rule: use an address or CIDR (198.51.100.0/24), a protocol and port (tcp/25, udp/443) or both (\"198.51.100.0/24 tcp/443\")"
            ));
        }
        for p in parts {
            if let Some(proto) = proto_part(p)? {
                if rule.proto.is_some() {
                    return Err(format!("{s:?} names two protocols"));
                }
                rule.proto = Some(proto.0);
                rule.ports = proto.1;
            } else {
                if rule.net.is_some() {
                    return Err(format!("{s:?} names two addresses"));
                }
                rule.net = Some(parse_net(p).map_err(|e| format!("{s:?}: {e}"))?);
            }
        }
        Ok(rule)
    }

    /// True when a packet to `dst` (`ip_proto`, destination port `port`) matches.
    pub fn matches(&self, dst: IpAddr, ip_proto: u8, port: Option<u16>) -> bool {
        self.net.is_none_or(|n| n.contains(&dst))
            && self.proto.is_none_or(|p| p.matches(ip_proto))
            && self
                .ports
                .is_none_or(|r| port.is_some_and(|p| r.contains(p)))
    }
}

/// True when a string is written as a packet rule rather than a domain name (group `allow`
/// holds both: DNS allow names and packet rules).
pub fn looks_like_packet_rule(s: &str) -> bool {
    let s = s.trim();
    s.contains('/') || s.contains(' ') || s.contains(':') || s.parse::<IpAddr>().is_ok() || {
        let l = s.to_ascii_lowercase();
        l == "tcp" || l == "udp" || l == "icmp"
    }
}

/// `tcp`, `tcp/25`, `udp/8000-8100`, `icmp` → the protocol and ports; `None` when `p` is not
/// a protocol part.
fn proto_part(p: &str) -> Result<Option<(Proto, Option<Ports>)>, String> {
    let (name, ports) = match p.split_once('/') {
        Some((n, rest)) => (n, Some(rest)),
        None => (p, None),
    };
    let proto = match name.to_ascii_lowercase().as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "icmp" => Proto::Icmp,
        _ => return Ok(None),
    };
    let ports = match ports {
        None => None,
        Some(_) if proto == Proto::Icmp => return Err(format!("{p:?}: ICMP has no ports")),
        Some(r) => Some(Ports::parse(r)?),
    };
    Ok(Some((proto, ports)))
}

fn parse_net(p: &str) -> Result<IpNet, String> {
    if let Ok(ip) = p.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let n: IpNet = p
        .parse()
        .map_err(|_| format!("{p:?} is not an address or CIDR, e.g. 198.51.100.0/24"))?;
    if n.trunc() != n {
        return Err(format!(
            "{p:?} has host bits set; did you mean {}?",
            n.trunc()
        ));
    }
    Ok(n)
}

/// Who a `reach` entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReachTarget {
    Device(String),
    Group(String),
}

/// A parsed `reach` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub target: ReachTarget,
    pub ports: Option<Ports>,
}

impl Reach {
    /// Reads `nas`, `printer:631`, `group:family` or `group:family:22`.
    pub fn parse(s: &str) -> Result<Reach, String> {
        let (target, rest) = match s.strip_prefix("group:") {
            Some(g) => {
                let (name, ports) = split_ports(g);
                (ReachTarget::Group(name.to_string()), ports)
            }
            None => {
                let (name, ports) = split_ports(s);
                (ReachTarget::Device(name.to_string()), ports)
            }
        };
        let name = match &target {
            ReachTarget::Device(n) | ReachTarget::Group(n) => n,
        };
        if !crate::dns::name::is_valid_label(name) {
            return Err(format!(
                "{s:?} is not a reach entry: use a device name, NAME:PORT or group:NAME"
            ));
        }
        let ports = rest
            .map(Ports::parse)
            .transpose()
            .map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Reach { target, ports })
    }
}

fn split_ports(s: &str) -> (&str, Option<&str>) {
    match s.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (s, None),
    }
}

/// A daily window `HH:MM-HH:MM` (minutes after midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: (i8, i8),
    pub end: (i8, i8),
}

impl Window {
    pub fn parse(s: &str) -> Result<Window, String> {
        let bad = || {
            format!("{s:?} is not a time window: use HH:MM-HH:MM in 24-hour time, e.g. 21:00-07:00")
        };
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let hm = |t: &str| -> Result<(i8, i8), String> {
            let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
            let h: i8 = h.parse().map_err(|_| bad())?;
            let m: i8 = m.parse().map_err(|_| bad())?;
            if !(0..=23).contains(&h) || !(0..=59).contains(&m) {
                return Err(bad());
            }
            Ok((h, m))
        };
        let w = Window {
            start: hm(a)?,
            end: hm(b)?,
        };
        if w.start == w.end {
            return Err(format!("{s:?} starts and ends at the same time"));
        }
        Ok(w)
    }

    /// Whether `now` is inside the window, and the next time that changes.
    pub fn state(&self, now: &ZonedDateTime) -> (bool, Option<Timestamp>) {
        let tz = now.time_zone().clone();
        let at = |d: jiff::civil::Date, (h, m): (i8, i8)| {
            d.at(h, m, 0, 0)
                .to_zoned_datetime(tz.clone())
                .ok()
                .map(|z| z.timestamp())
        };
        let today = now.date();
        let overnight = self.end <= self.start;
        let mut next: Option<Timestamp> = None;
        let t = now.timestamp();
        for offset in -1i64..=2 {
            let Ok(d) = today.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            let end_day = if overnight {
                d.checked_add(jiff::Span::new().days(1)).ok()
            } else {
                Some(d)
            };
            let (Some(s), Some(e)) = (at(d, self.start), end_day.and_then(|e| at(e, self.end)))
            else {
                continue;
            };
            if s <= t && t < e {
                return (true, Some(e));
            }
            if s > t {
                next = Some(next.map_or(s, |n| n.min(s)));
            }
        }
        (false, next)
    }
}

/// Everything in a spec that can be wrong, checked: returns the first problem.
pub fn check(spec: &FirewallSpec) -> Result<(), String> {
    for s in spec.allow_sites.iter().chain(&spec.deny_sites) {
        if crate::dns::name::normalize_domain(s).is_none() {
            return Err(format!("{s:?} is not a domain name, e.g. wikipedia.org"));
        }
    }
    for r in spec.allow.iter().chain(&spec.deny) {
        PacketRule::parse(r)?;
    }
    if let Some(reach) = &spec.reach {
        for r in reach {
            if r != "all" {
                Reach::parse(r)?;
            }
        }
    }
    for w in &spec.internet_off {
        Window::parse(w)?;
    }
    Ok(())
}

/// A device's internet mode set for a while (`--for`), stored with when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    pub internet: InternetMode,
    /// Unix seconds.
    pub until: i64,
}

/// Why a device has the internet mode it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeSource {
    Default,
    Group,
    Device,
    Schedule,
    Timer,
}

/// The mode in force for a device now, and when it next changes by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effective {
    pub internet: InternetMode,
    pub source: ModeSource,
    /// Unix seconds of the next change (a timer ending, a schedule window opening or closing).
    pub next_change: Option<i64>,
}

/// The mode in force: a running timer beats a schedule window, which beats the device's own
/// setting, which beats its group's. Windows of the group and of the device both apply.
pub fn effective(
    group: Option<&FirewallSpec>,
    device: &FirewallSpec,
    timer: Option<Timer>,
    now: &ZonedDateTime,
) -> Effective {
    let t = now.timestamp().as_second();
    let mut next: Option<i64> = None;
    let mut soonest = |ts: Option<Timestamp>| {
        if let Some(ts) = ts {
            let s = ts.as_second();
            next = Some(next.map_or(s, |n: i64| n.min(s)));
        }
    };
    let mut in_window = false;
    for w in group
        .into_iter()
        .flat_map(|g| &g.internet_off)
        .chain(&device.internet_off)
    {
        if let Ok(w) = Window::parse(w) {
            let (inside, change) = w.state(now);
            in_window |= inside;
            soonest(change);
        }
    }
    let (internet, source) = match timer.filter(|tm| tm.until > t) {
        Some(tm) => {
            soonest(Timestamp::from_second(tm.until).ok());
            (tm.internet, ModeSource::Timer)
        }
        None if in_window => (InternetMode::Off, ModeSource::Schedule),
        None => match (device.internet, group.and_then(|g| g.internet)) {
            (Some(m), _) => (m, ModeSource::Device),
            (None, Some(m)) => (m, ModeSource::Group),
            (None, None) => (InternetMode::On, ModeSource::Default),
        },
    };
    Effective {
        internet,
        source,
        next_change: next,
    }
}

/// Applies `patch` to a device's own settings (checked); returns the new settings and the
/// timer the patch asks for (`Some(None)` clears a running one).
pub fn apply_patch(
    spec: &FirewallSpec,
    patch: &FirewallPatch,
    now_unix: i64,
) -> Result<(FirewallSpec, Option<Option<Timer>>), String> {
    let mut next = spec.clone();
    let mut timer = None;
    match (&patch.internet, &patch.for_) {
        (None, Some(_)) => return Err("--for goes with --internet on|off|allowlist".into()),
        (Some(m), Some(d)) => {
            if m == "default" {
                return Err("--for needs on, off or allowlist".into());
            }
            let mode = InternetMode::parse(m)?;
            let ms = crate::querylog::timefmt::parse_duration_ms(d)
                .filter(|&ms| ms >= 1000)
                .ok_or_else(|| {
                    format!("{d:?} is not a duration: use e.g. 30s, 10m, 1h or 1h30m")
                })?;
            timer = Some(Some(Timer {
                internet: mode,
                until: now_unix.saturating_add((ms + 999) / 1000),
            }));
        }
        (Some(m), None) => {
            next.internet = match m.as_str() {
                "default" => None,
                m => Some(InternetMode::parse(m)?),
            };
            timer = Some(None);
        }
        (None, None) => {}
    }
    let norm = |v: &Vec<String>| -> Result<Vec<String>, String> {
        v.iter()
            .map(|s| {
                crate::dns::name::normalize_domain(s)
                    .ok_or_else(|| format!("{s:?} is not a domain name, e.g. wikipedia.org"))
            })
            .collect()
    };
    if let Some(v) = &patch.allow_sites {
        next.allow_sites = norm(v)?;
    }
    if let Some(v) = &patch.deny_sites {
        next.deny_sites = norm(v)?;
    }
    if let Some(v) = &patch.allow {
        next.allow = v.iter().map(|s| s.trim().to_string()).collect();
    }
    if let Some(v) = &patch.deny {
        next.deny = v.iter().map(|s| s.trim().to_string()).collect();
    }
    if let Some(v) = &patch.reach {
        next.reach = if v.len() == 1 && v[0] == "all" {
            None
        } else if v.iter().any(|r| r == "all") {
            return Err("\"all\" stands alone in reach".into());
        } else {
            Some(v.clone())
        };
    }
    if let Some(v) = &patch.internet_off {
        next.internet_off = v.clone();
    }
    if let Some(m) = &patch.egress {
        next.egress = match m.as_str() {
            "default" => None,
            m => Some(crate::egress::EgressMode::parse(m)?),
        };
    }
    if let Some(m) = &patch.dns46 {
        next.dns46 = match m.as_str() {
            "default" => None,
            "on" => Some(true),
            "off" => Some(false),
            m => return Err(format!("dns46 is on, off or default, not {m:?}")),
        };
    }
    check(&next)?;
    Ok((next, timer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_match() {
        let r = PacketRule::parse("198.51.100.0/24 tcp/443").unwrap();
        let dst: IpAddr = "198.51.100.7".parse().unwrap();
        assert!(r.matches(dst, 6, Some(443)));
        assert!(!r.matches(dst, 17, Some(443)));
        assert!(!r.matches(dst, 6, Some(80)));
        assert!(!r.matches("198.51.101.7".parse().unwrap(), 6, Some(443)));
        let r = PacketRule::parse("tcp/8000-8100").unwrap();
        assert!(r.matches(dst, 6, Some(8050)) && !r.matches(dst, 6, Some(8101)));
        let r = PacketRule::parse("2001:db8::1").unwrap();
        assert!(r.matches("2001:db8::1".parse().unwrap(), 17, None));
        assert!(PacketRule::parse("icmp").unwrap().matches(dst, 58, None));
        for bad in [
            "",
            "tcp/0",
            "tcp/70000",
            "tcp/90-80",
            "198.51.100.1/24",
            "10.0.0.0/33",
            "icmp/3",
            "tcp/25 udp/53",
            "a b c",
            "wikipedia.org",
        ] {
            assert!(PacketRule::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(looks_like_packet_rule("tcp/25") && looks_like_packet_rule("10.0.0.0/8"));
        assert!(looks_like_packet_rule("2001:db8::1") && !looks_like_packet_rule("example.com"));
    }

    #[test]
    fn reach_entries_parse() {
        assert_eq!(
            Reach::parse("printer:631").unwrap(),
            Reach {
                target: ReachTarget::Device("printer".into()),
                ports: Some(Ports(631, 631))
            }
        );
        assert_eq!(
            Reach::parse("group:family").unwrap().target,
            ReachTarget::Group("family".into())
        );
        for bad in ["", "nas:", "nas:0", "group:", "bad name", "-x"] {
            assert!(Reach::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    fn zoned(s: &str) -> ZonedDateTime {
        format!("{s}[UTC]").parse().unwrap()
    }

    #[test]
    fn windows_over_midnight_and_within_a_day() {
        let w = Window::parse("21:00-07:00").unwrap();
        let (inside, next) = w.state(&zoned("2026-12-03T22:30:00+00:00"));
        assert!(inside);
        assert_eq!(next.unwrap().to_string(), "2026-12-04T07:00:00Z");
        let (inside, next) = w.state(&zoned("2026-12-04T06:59:00+00:00"));
        assert!(inside);
        assert_eq!(next.unwrap().to_string(), "2026-12-04T07:00:00Z");
        let (inside, next) = w.state(&zoned("2026-12-04T12:00:00+00:00"));
        assert!(!inside);
        assert_eq!(next.unwrap().to_string(), "2026-12-04T21:00:00Z");
        let day = Window::parse("09:00-17:30").unwrap();
        assert!(day.state(&zoned("2026-12-04T17:29:00+00:00")).0);
        assert!(!day.state(&zoned("2026-12-04T17:30:00+00:00")).0);
        for bad in ["21:00", "25:00-07:00", "21:00-21:00", "9-17", "21:60-07:00"] {
            assert!(Window::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn timer_beats_schedule_beats_device_beats_group() {
        let now = zoned("2026-12-03T22:00:00+00:00");
        let t = now.timestamp().as_second();
        let group = FirewallSpec {
            internet: Some(InternetMode::Allowlist),
            internet_off: vec!["21:00-07:00".into()],
            ..Default::default()
        };
        let device = FirewallSpec {
            internet: Some(InternetMode::On),
            ..Default::default()
        };
        let e = effective(Some(&group), &device, None, &now);
        assert_eq!(
            (e.internet, e.source),
            (InternetMode::Off, ModeSource::Schedule)
        );
        let timer = Timer {
            internet: InternetMode::On,
            until: t + 3600,
        };
        let e = effective(Some(&group), &device, Some(timer), &now);
        assert_eq!(
            (e.internet, e.source),
            (InternetMode::On, ModeSource::Timer)
        );
        assert_eq!(e.next_change, Some(t + 3600));
        let noon = zoned("2026-12-04T12:00:00+00:00");
        let e = effective(Some(&group), &device, None, &noon);
        assert_eq!(
            (e.internet, e.source),
            (InternetMode::On, ModeSource::Device)
        );
        let e = effective(Some(&group), &FirewallSpec::default(), None, &noon);
        assert_eq!(
            (e.internet, e.source),
            (InternetMode::Allowlist, ModeSource::Group)
        );
        // A timer that ran out is gone.
        let old = Timer {
            internet: InternetMode::Off,
            until: noon.timestamp().as_second() - 1,
        };
        let e = effective(None, &FirewallSpec::default(), Some(old), &noon);
        assert_eq!((e.internet, e.next_change), (InternetMode::On, None));
    }

    #[test]
    fn patches_replace_fields_and_check_them() {
        let p = FirewallPatch {
            internet: Some("off".into()),
            for_: Some("1h".into()),
            ..Default::default()
        };
        let (spec, timer) = apply_patch(&FirewallSpec::default(), &p, 1000).unwrap();
        assert_eq!(spec, FirewallSpec::default());
        assert_eq!(
            timer,
            Some(Some(Timer {
                internet: InternetMode::Off,
                until: 4600
            }))
        );
        let p = FirewallPatch {
            allow_sites: Some(vec!["Wikipedia.ORG.".into()]),
            reach: Some(vec!["nas".into(), "printer:631".into()]),
            ..Default::default()
        };
        let (spec, timer) = apply_patch(&FirewallSpec::default(), &p, 0).unwrap();
        assert_eq!(spec.allow_sites, vec!["wikipedia.org".to_string()]);
        assert_eq!(spec.reach.as_ref().unwrap().len(), 2);
        assert_eq!(timer, None);
        let back = FirewallPatch {
            reach: Some(vec!["all".into()]),
            ..Default::default()
        };
        assert_eq!(apply_patch(&spec, &back, 0).unwrap().0.reach, None);
        for bad in [
            FirewallPatch {
                internet: Some("maybe".into()),
                ..Default::default()
            },
            FirewallPatch {
                internet: Some("off".into()),
                for_: Some("soon".into()),
                ..Default::default()
            },
            FirewallPatch {
                for_: Some("1h".into()),
                ..Default::default()
            },
            FirewallPatch {
                deny: Some(vec!["10.0.0.0/40".into()]),
                ..Default::default()
            },
            FirewallPatch {
                internet_off: Some(vec!["bedtime".into()]),
                ..Default::default()
            },
        ] {
            assert!(apply_patch(&spec, &bad, 0).is_err(), "{bad:?}");
        }
    }
}
