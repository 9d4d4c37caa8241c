//! Turning the stored and configured firewall settings into the firewalls in force: one pure
//! step ([`plan`]) from the devices, their stored settings, the groups and the clock to each
//! device's [`DeviceFw`], the egress filter's address sets, and when the plan next changes by
//! itself (a timer ending, a schedule window opening or closing).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use jiff::tz::TimeZone;
use jiff::ZonedDateTime;
use rustc_hash::FxHashMap;

use crate::config::Config;
use crate::egress::temporary::Want;
use crate::egress::EgressMode;
use crate::firewall::{
    self, Compiled, DeviceFw, Effective, FirewallSpec, InternetMode, PacketRule, Reach, ReachAddr,
    ReachTarget, Sites,
};
use crate::store::{Device, DeviceFirewall, Person, Share, ShareWith};

/// A group's firewall, with its site sets built once (a million names take a moment).
pub struct GroupFw {
    pub spec: FirewallSpec,
    /// Takes part in discovery (multicast between devices).
    pub discovery: bool,
    /// DNS46/NAT46 on (unless a device's own setting says otherwise).
    pub dns46: bool,
    allow_sites: Arc<Sites>,
    deny_sites: Arc<Sites>,
}

/// The firewall settings read from the config.
pub struct FwSettings {
    pub settings: firewall::Settings,
    pub tz: TimeZone,
    pub groups: BTreeMap<String, GroupFw>,
}

impl FwSettings {
    /// Reads `[firewall]` and the groups' firewall settings (the config was validated).
    pub fn from_config(cfg: &Config) -> FwSettings {
        let groups = cfg
            .groups
            .iter()
            .map(|(name, g)| {
                let spec = g.firewall();
                let fw = GroupFw {
                    discovery: g.discovery.unwrap_or(true),
                    dns46: g.dns46.unwrap_or(true),
                    allow_sites: Arc::new(Sites::build(&spec.allow_sites)),
                    deny_sites: Arc::new(Sites::build(&spec.deny_sites)),
                    spec,
                };
                (name.clone(), fw)
            })
            .collect();
        FwSettings {
            settings: firewall::Settings {
                site_ttl_floor: std::time::Duration::from_secs(cfg.firewall.site_ttl_floor),
                max_sites: cfg.firewall.max_sites,
            },
            tz: cfg.firewall.time_zone().unwrap_or(TimeZone::UTC),
            groups,
        }
    }

    /// The clock in the schedules' time zone.
    pub fn now(&self) -> ZonedDateTime {
        jiff::Timestamp::now().to_zoned_datetime(self.tz.clone())
    }

    /// The effective mode of a device.
    pub fn effective(
        &self,
        d: &Device,
        stored: Option<&DeviceFirewall>,
        now: &ZonedDateTime,
    ) -> Effective {
        let group = d
            .group
            .as_deref()
            .and_then(|g| self.groups.get(g))
            .map(|g| &g.spec);
        let empty = DeviceFirewall::default();
        let own = stored.unwrap_or(&empty);
        firewall::spec::effective(group, &own.spec, own.timer, now)
    }
}

/// What [`plan`] makes.
#[derive(Default)]
pub struct Plan {
    pub devices: FxHashMap<IpAddr, Arc<DeviceFw>>,
    /// Devices whose internet is off (the egress filter drops them too).
    pub no_internet: Vec<IpAddr>,
    /// Devices whose DNS to any address goes to the hub.
    pub dns_redirect: Vec<IpAddr>,
    /// Unix seconds of the next change by itself.
    pub next_change: Option<i64>,
    /// Each device's effective mode, by public key.
    pub effective: HashMap<String, Effective>,
    /// Devices in `temporary` egress mode (their own setting, else their group's).
    pub temporary: Vec<Want>,
    /// Who takes part in discovery: the owner's and members' devices whose group has it on;
    /// each reaches the others, or those its `reach` names.
    pub discovery: crate::hub::discovery::Policy,
    /// The devices DNS46/NAT46 is on for: their own setting, else their group's, else on.
    pub dns46: Vec<(std::net::Ipv4Addr, std::net::Ipv6Addr)>,
}

/// A device's egress mode: its own setting, else its group's, else `hub`.
pub fn egress_mode(s: &FwSettings, d: &Device, own: Option<&DeviceFirewall>) -> EgressMode {
    own.and_then(|o| o.spec.egress)
        .or_else(|| {
            d.group
                .as_deref()
                .and_then(|g| s.groups.get(g))
                .and_then(|g| g.spec.egress)
        })
        .unwrap_or_default()
}

/// Who the devices belong to and what is shared with guests, for [`plan`].
#[derive(Default)]
pub struct Sharing<'a> {
    pub people: &'a [Person],
    pub shares: &'a [Share],
    /// The local zone (`dns.zone`), for the names a guest may resolve.
    pub zone: &'a str,
}

impl Sharing<'_> {
    /// The person of a device (`None`: the owner's). A person that is not (or no longer)
    /// known counts as a guest with nothing shared: unknown means closed.
    fn person_of(&self, d: &Device) -> Option<Person> {
        let p = d.person.as_deref()?;
        Some(
            self.people
                .iter()
                .find(|x| x.name.eq_ignore_ascii_case(p))
                .cloned()
                .unwrap_or(Person {
                    name: p.to_string(),
                    role: crate::store::Role::Guest,
                    internet: Some(false),
                    created_at: 0,
                }),
        )
    }

    /// The person of a guest's (or a link's) device.
    fn guest_of(&self, d: &Device) -> Option<Person> {
        self.person_of(d).filter(|p| p.role.is_outsider())
    }

    /// The shares that reach guest device `d` (of person `p`).
    fn shares_for<'s>(&'s self, d: &'s Device, p: &'s Person) -> impl Iterator<Item = &'s Share> {
        self.shares.iter().filter(move |s| match &s.with {
            ShareWith::Person(n) => n.eq_ignore_ascii_case(&p.name),
            ShareWith::Group(g) => d.group.as_deref() == Some(g.as_str()),
        })
    }
}

/// Builds every device's firewall; `current` keeps what a device's firewall learned (sites,
/// open connections) across the change. A guest's device reaches only what is shared with it
/// (and what its own `reach` names), resolves only the names of those devices in the local
/// zone, uses the internet only when its person may, and no other device may open a
/// connection to it unless that device's `reach` names it.
pub fn plan(
    s: &FwSettings,
    devices: &[Device],
    stored: &HashMap<String, DeviceFirewall>,
    sharing: &Sharing<'_>,
    current: &FxHashMap<IpAddr, Arc<DeviceFw>>,
    now: &ZonedDateTime,
) -> Plan {
    let mut out = Plan::default();
    let quarantined: Arc<rustc_hash::FxHashSet<IpAddr>> = Arc::new(
        devices
            .iter()
            .filter(|d| sharing.guest_of(d).is_some())
            .flat_map(|d| [IpAddr::V4(d.ipv4), IpAddr::V6(d.ipv6)])
            .collect(),
    );
    for d in devices {
        let own = stored.get(&d.public_key);
        let eff = s.effective(d, own, now);
        if let Some(t) = eff.next_change {
            out.next_change = Some(out.next_change.map_or(t, |n| n.min(t)));
        }
        out.effective.insert(d.public_key.clone(), eff);
        if egress_mode(s, d, own) == EgressMode::Temporary {
            out.temporary.push(Want {
                key: d.public_key.clone(),
                overlay4: d.ipv4,
                overlay6: d.ipv6,
            });
        }
        let group = d.group.as_deref().and_then(|g| s.groups.get(g));
        let empty = FirewallSpec::default();
        let spec = own.map_or(&empty, |o| &o.spec);
        // Guests' devices reach no private range, the pool among them: no DNS46 for them.
        if spec.dns46.unwrap_or(group.is_none_or(|g| g.dns46)) && sharing.guest_of(d).is_none() {
            out.dns46.push((d.ipv4, d.ipv6));
        }
        let mut c = compile(group, spec, eff.internet, devices);
        c.quarantined = quarantined.clone();
        let person = sharing.person_of(d);
        if person.as_ref().is_some_and(|p| !p.internet_allowed()) {
            c.mode = InternetMode::Off;
        }
        if let Some(p) = person.as_ref().filter(|p| p.role.is_outsider()) {
            c.outsider = true;
            let mut entries: Vec<String> = sharing.shares_for(d, p).map(Share::target).collect();
            entries.extend(spec.reach.iter().flatten().cloned());
            c.reach = Some(resolve_reach(&entries, devices));
            let zone = sharing.zone.trim_end_matches('.').to_ascii_lowercase();
            let names = sharing
                .shares_for(d, p)
                .map(|s| s.device.as_str())
                .chain([d.name.as_str()])
                .map(|n| format!("{}.{zone}", n.to_ascii_lowercase()))
                .collect();
            c.local_names = Some(Arc::new(names));
        }
        if person.as_ref().is_none_or(|p| !p.role.is_outsider())
            && group.is_none_or(|g| g.discovery)
        {
            let reach = c
                .reach
                .as_ref()
                .map(|r| Arc::new(r.iter().map(|a| a.v4).collect::<rustc_hash::FxHashSet<_>>()));
            out.discovery.add(d.ipv4, reach);
        }
        if c.is_open() {
            continue;
        }
        let addrs = [IpAddr::V4(d.ipv4), IpAddr::V6(d.ipv6)];
        if c.mode == InternetMode::Off {
            out.no_internet.extend(addrs);
        }
        if c.restricted() {
            out.dns_redirect.extend(addrs);
        }
        let fw = match current.get(&addrs[0]) {
            Some(fw) => {
                fw.set_rules(c);
                fw.clone()
            }
            None => Arc::new(DeviceFw::new(c, s.settings)),
        };
        for a in addrs {
            out.devices.insert(a, fw.clone());
        }
    }
    out
}

/// One device's policy: its own settings over its group's (lists are joined; the device's
/// `reach` replaces the group's), in the mode in force.
fn compile(
    group: Option<&GroupFw>,
    own: &FirewallSpec,
    mode: InternetMode,
    devices: &[Device],
) -> Compiled {
    let mut allow_sites = Vec::new();
    let mut deny_sites = Vec::new();
    if let Some(g) = group {
        if !g.allow_sites.is_empty() {
            allow_sites.push(g.allow_sites.clone());
        }
        if !g.deny_sites.is_empty() {
            deny_sites.push(g.deny_sites.clone());
        }
    }
    if !own.allow_sites.is_empty() {
        allow_sites.push(Arc::new(Sites::build(&own.allow_sites)));
    }
    if !own.deny_sites.is_empty() {
        deny_sites.push(Arc::new(Sites::build(&own.deny_sites)));
    }
    let rules = |pick: fn(&FirewallSpec) -> &Vec<String>| -> Vec<PacketRule> {
        group
            .map(|g| pick(&g.spec))
            .into_iter()
            .flatten()
            .chain(pick(own))
            .filter_map(|r| PacketRule::parse(r).ok())
            .collect()
    };
    let reach = own
        .reach
        .as_ref()
        .or(group.and_then(|g| g.spec.reach.as_ref()))
        .map(|entries| resolve_reach(entries, devices));
    Compiled {
        mode,
        allow_sites,
        deny_sites,
        allow: rules(|s| &s.allow),
        deny: rules(|s| &s.deny),
        reach,
        quarantined: Arc::default(),
        local_names: None,
        outsider: false,
    }
}

/// The addresses a `reach` list names (names no device has match nothing).
fn resolve_reach(entries: &[String], devices: &[Device]) -> Vec<ReachAddr> {
    let mut out = Vec::new();
    for e in entries {
        let Ok(r) = Reach::parse(e) else { continue };
        for d in devices {
            let hit = match &r.target {
                ReachTarget::Device(n) => &d.name == n,
                ReachTarget::Group(g) => d.group.as_deref() == Some(g.as_str()),
            };
            if hit {
                out.push(ReachAddr {
                    v4: d.ipv4,
                    v6: d.ipv6,
                    ports: r.ports,
                });
            }
        }
    }
    out
}

/// Checks that a device's `reach` names devices and groups that exist.
pub fn check_reach(
    spec: &FirewallSpec,
    devices: &[Device],
    groups: &BTreeMap<String, GroupFw>,
) -> Result<(), String> {
    for e in spec.reach.iter().flatten() {
        let r = Reach::parse(e)?;
        match &r.target {
            ReachTarget::Device(n) if !devices.iter().any(|d| &d.name == n) => {
                return Err(format!(
                    "reach {e:?}: there is no device {n:?}; see `cloudpc device list`"
                ))
            }
            ReachTarget::Group(g) if !groups.contains_key(g) => {
                return Err(format!(
                    "reach {e:?}: there is no group {g:?} in the config ([groups.NAME])"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u8, group: Option<&str>) -> Device {
        Device {
            name: format!("d{n}"),
            public_key: format!("key{n}"),
            ipv4: std::net::Ipv4Addr::new(100, 96, 0, n),
            ipv6: format!("fd00:1::{n}").parse().unwrap(),
            split: false,
            group: group.map(String::from),
            owner: false,
            no_log: false,
            admin: false,
            person: None,
            created_at: 0,
        }
    }

    #[test]
    fn a_guest_reaches_what_is_shared_with_its_person_or_its_group_and_is_quarantined() {
        let cfg = Config::parse("[groups.team]\n", std::path::Path::new("t.toml")).unwrap();
        let s = FwSettings::from_config(&cfg);
        let mut guest = device(7, Some("team"));
        guest.person = Some("alice".into());
        let mut ghost = device(8, None);
        ghost.person = Some("nobody".into());
        let devices = [
            device(2, None),
            device(3, None),
            device(4, None),
            guest,
            ghost,
        ];
        let people = [Person {
            name: "Alice".into(),
            role: crate::store::Role::Guest,
            internet: None,
            created_at: 0,
        }];
        let share = |id, device: &str, ports: &str, with| Share {
            id,
            device: device.into(),
            ports: ports.into(),
            with,
        };
        let shares = [
            share(1, "d2", "445", ShareWith::Person("alice".into())),
            share(2, "d3", "", ShareWith::Group("team".into())),
            share(3, "d4", "", ShareWith::Person("bob".into())),
        ];
        let sharing = Sharing {
            people: &people,
            shares: &shares,
            zone: "mesh",
        };
        let p = plan(
            &s,
            &devices,
            &HashMap::new(),
            &sharing,
            &Default::default(),
            &s.now(),
        );
        let g = p.devices[&IpAddr::V4(devices[3].ipv4)].rules();
        let reach: Vec<_> = g
            .reach
            .clone()
            .unwrap()
            .iter()
            .map(|r| (r.v4, r.ports))
            .collect();
        assert_eq!(
            reach,
            vec![
                (devices[0].ipv4, Some(crate::firewall::Ports(445, 445))),
                (devices[1].ipv4, None)
            ]
        );
        assert_eq!(g.mode, InternetMode::Off);
        assert!(g.outsider);
        let names = g.local_names.clone().unwrap();
        assert!(
            names.contains("d2.mesh") && names.contains("d3.mesh") && names.contains("d7.mesh")
        );
        assert!(!names.contains("d4.mesh"));
        // Every device knows both outsiders: the guest and the device of an unknown person,
        // which gets nothing at all.
        let owner = p.devices[&IpAddr::V4(devices[0].ipv4)].rules();
        assert!(owner.quarantined.contains(&IpAddr::V4(devices[3].ipv4)));
        assert!(owner.quarantined.contains(&IpAddr::V4(devices[4].ipv4)));
        assert!(!owner.outsider && owner.reach.is_none());
        let ghost = p.devices[&IpAddr::V4(devices[4].ipv4)].rules();
        assert_eq!(ghost.reach.as_deref().map(<[_]>::len), Some(0));
        assert_eq!(ghost.mode, InternetMode::Off);
    }

    /// The plan for devices 2 and 3 in group `a`, 4 in `b`, 5 in none (`config` defines the
    /// groups), with the devices' own settings `own` (by public key).
    fn plan_of_groups(
        config: &str,
        a: &str,
        b: &str,
        own: Vec<(&str, FirewallSpec)>,
    ) -> (Plan, Vec<Device>) {
        let cfg = Config::parse(config, std::path::Path::new("t.toml")).unwrap();
        let s = FwSettings::from_config(&cfg);
        let devices = vec![
            device(2, Some(a)),
            device(3, Some(a)),
            device(4, Some(b)),
            device(5, None),
        ];
        let stored: HashMap<String, DeviceFirewall> = own
            .into_iter()
            .map(|(k, spec)| (k.to_string(), DeviceFirewall { spec, timer: None }))
            .collect();
        let p = plan(
            &s,
            &devices,
            &stored,
            &Sharing::default(),
            &Default::default(),
            &s.now(),
        );
        (p, devices)
    }

    #[test]
    fn a_devices_own_egress_mode_beats_its_groups() {
        let own = |m| FirewallSpec {
            egress: Some(m),
            ..Default::default()
        };
        let (p, devices) = plan_of_groups(
            "[groups.kids]\negress = \"temporary\"\n[groups.home]\n",
            "kids",
            "home",
            vec![
                ("key3", own(EgressMode::Hub)),
                ("key5", own(EgressMode::Temporary)),
            ],
        );
        let keys: Vec<&str> = p.temporary.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, vec!["key2", "key5"]);
        assert_eq!(p.temporary[0].overlay4, devices[0].ipv4);
        // Egress alone gives no device a firewall of its own.
        assert!(p.devices.is_empty());
    }

    #[test]
    fn dns46_is_the_devices_own_switch_else_its_groups_else_on() {
        let own = |on| FirewallSpec {
            dns46: Some(on),
            ..Default::default()
        };
        let (p, _) = plan_of_groups(
            "[groups.consoles]\ndns46 = false\n[groups.home]\n",
            "consoles",
            "home",
            vec![("key3", own(true)), ("key5", own(false))],
        );
        let on: Vec<_> = p.dns46.iter().map(|(v4, _)| v4.octets()[3]).collect();
        assert_eq!(on, vec![3, 4]);
    }
}
