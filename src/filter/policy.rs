//! Block policies: the owner's rules over the lists, per group, and which device uses which.
//!
//! A [`Policy`] is the owner's rules (config `block`/`allow` plus `cloudpc block|allow`) over a
//! set of lists; [`Groups`] maps device overlay addresses to their group's policy. The daemon
//! builds them with [`PolicySettings`] from the store's rules and devices and swaps them into
//! the resolver; CNAME uncloaking asks [`Policy::blocks_any`] about the targets of an answer.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::{Filter, FilterSet, ListManager, Verdict};
use crate::config::{BlockedAnswer, GroupConfig};
use crate::store::{Device, RuleAction};

/// Block policy: the owner's own rules over the lists.
pub struct Policy {
    /// Config `block`/`allow` and run-time rules; allow here beats everything.
    pub rules: Filter,
    /// Subscribed and bundled lists (shared between policies that use the same lists).
    pub lists: Arc<Filter>,
    /// How blocked names are answered.
    pub blocked_answer: BlockedAnswer,
}

impl Policy {
    /// The verdict for a lower-case name without trailing dot.
    pub fn check(&self, name: &str) -> Verdict {
        match self.rules.load().check(name) {
            Verdict::Pass => self.lists.load().check(name),
            v => v,
        }
    }

    /// CNAME uncloaking: true when any of `names` (the CNAME targets of an answer) is blocked.
    pub fn blocks_any<S: AsRef<str>>(&self, names: impl IntoIterator<Item = S>) -> bool {
        names
            .into_iter()
            .any(|n| self.check(n.as_ref()) == Verdict::Block)
    }
}

/// Group policies by device overlay address (a query's device is known by its overlay source
/// address, which WireGuard ties to the device's key).
#[derive(Default)]
pub struct Groups {
    /// Address → (policy id ≥ 1, policy). The id keeps cached answers apart per policy.
    pub by_ip: HashMap<IpAddr, (u8, Arc<Policy>)>,
}

/// What policies are built from, out of the config.
#[derive(Debug, Clone, Default)]
pub struct PolicySettings {
    /// `filter.block` / `filter.allow`.
    pub block: Vec<String>,
    pub allow: Vec<String>,
    /// `dns.blocked_answer`.
    pub blocked_answer: BlockedAnswer,
    /// `[groups.NAME]`.
    pub groups: BTreeMap<String, GroupConfig>,
}

/// Lists of groups that have their own, by group name.
pub type GroupLists = HashMap<String, Arc<Filter>>;

/// Builds a set from list entries (files and URLs) with the manager's current copies; the
/// bundled list stands in for a missing `blocklists/default.txt`. Takes about a second for a
/// million names: call it off the query path. Returns the set and how many entries failed.
pub fn load_lists(entries: &[String], lists: &ListManager) -> (FilterSet, usize) {
    let started = Instant::now();
    let (sources, mut errors) = lists.sources(entries);
    let (set, errs) = FilterSet::build(&sources, &[], &[]);
    errors.extend(errs);
    for e in &errors {
        // The message may quote a rule (a domain): keep it at debug, the place at warn.
        tracing::warn!(list = %e.origin, line = e.line, "list entry skipped");
        tracing::debug!(error = %e, "list entry skipped");
    }
    tracing::info!(
        rules = set.len(),
        lists = sources.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "filter lists loaded"
    );
    (set, errors.len())
}

impl PolicySettings {
    /// The group names, for checking `--group`.
    pub fn has_group(&self, name: &str) -> bool {
        self.groups.contains_key(name)
    }

    /// The lists of every group that has its own.
    pub fn group_lists(&self, manager: &ListManager) -> GroupLists {
        let mut out = HashMap::new();
        for (name, g) in &self.groups {
            if let Some(lists) = &g.lists {
                let (set, _) = load_lists(lists, manager);
                out.insert(name.clone(), Arc::new(Filter::new(set)));
            }
        }
        out
    }

    /// The owner's own rules: config `block`/`allow` plus the run-time `rules`, plus a
    /// group's own `extra_block`/`extra_allow`.
    pub fn rules_set(
        &self,
        rules: &[(String, RuleAction)],
        extra_block: &[String],
        extra_allow: &[String],
    ) -> FilterSet {
        let mut block = self.block.clone();
        let mut allow = self.allow.clone();
        block.extend_from_slice(extra_block);
        allow.extend_from_slice(extra_allow);
        for (d, a) in rules {
            match a {
                RuleAction::Block => block.push(d.clone()),
                RuleAction::Allow => allow.push(d.clone()),
            }
        }
        let (set, errs) = FilterSet::build(&[], &block, &allow);
        for e in errs {
            tracing::warn!(line = e.line, "a block/allow setting was skipped");
            tracing::debug!(error = %e, "rule skipped");
        }
        set
    }

    /// The group policies and which device addresses they apply to.
    pub fn groups(
        &self,
        rules: &[(String, RuleAction)],
        devices: &[Device],
        default_lists: &Arc<Filter>,
        lists: &GroupLists,
    ) -> Groups {
        let mut policies: HashMap<&str, (u8, Arc<Policy>)> = HashMap::new();
        for (i, (name, g)) in self.groups.iter().enumerate() {
            let policy = Policy {
                rules: Filter::new(self.rules_set(rules, &g.block, &g.dns_allow())),
                lists: lists
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| default_lists.clone()),
                blocked_answer: g.blocked_answer.unwrap_or(self.blocked_answer),
            };
            let id = u8::try_from(i + 1).unwrap_or(u8::MAX);
            policies.insert(name.as_str(), (id, Arc::new(policy)));
        }
        let mut out = Groups::default();
        for d in devices {
            let Some(g) = d.group.as_deref() else {
                continue;
            };
            match policies.get(g) {
                Some(p) => {
                    out.by_ip.insert(d.ipv4.into(), p.clone());
                    out.by_ip.insert(d.ipv6.into(), p.clone());
                }
                None => tracing::warn!(
                    group = g,
                    "a device's group is not in the config; it gets the default policy"
                ),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PolicySettings {
        let mut groups = BTreeMap::new();
        groups.insert(
            "kids".to_string(),
            GroupConfig {
                block: vec!["games.example".into()],
                ..GroupConfig::default()
            },
        );
        PolicySettings {
            block: vec!["ads.example".into()],
            groups,
            ..PolicySettings::default()
        }
    }

    fn device(name: &str, n: u8, group: Option<&str>) -> Device {
        Device {
            name: name.into(),
            public_key: format!("k{n}"),
            ipv4: std::net::Ipv4Addr::new(100, 96, 0, n),
            ipv6: std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n.into()),
            split: false,
            group: group.map(str::to_string),
            owner: false,
            no_log: false,
            admin: false,
            person: None,
            created_at: 0,
        }
    }

    #[test]
    fn run_time_rules_join_config_rules_and_allow_wins() {
        let s = settings();
        let rules = vec![
            ("tracker.example".to_string(), RuleAction::Block),
            ("ok.ads.example".to_string(), RuleAction::Allow),
        ];
        let set = s.rules_set(&rules, &[], &[]);
        assert_eq!(set.check("x.ads.example"), Verdict::Block);
        assert_eq!(set.check("tracker.example"), Verdict::Block);
        assert_eq!(set.check("ok.ads.example"), Verdict::Allow);
        assert_eq!(set.check("news.example"), Verdict::Pass);
    }

    #[test]
    fn a_group_device_gets_its_group_policy_on_both_addresses() {
        let s = settings();
        let lists = Arc::new(Filter::new(FilterSet::build(&[], &[], &[]).0));
        let devices = [device("tablet", 2, Some("kids")), device("laptop", 3, None)];
        let g = s.groups(&[], &devices, &lists, &GroupLists::new());
        let (id, p) = g.by_ip.get(&IpAddr::from(devices[0].ipv4)).unwrap();
        assert_eq!(*id, 1);
        assert_eq!(p.check("games.example"), Verdict::Block);
        assert!(g.by_ip.contains_key(&IpAddr::from(devices[0].ipv6)));
        assert!(!g.by_ip.contains_key(&IpAddr::from(devices[1].ipv4)));
    }

    #[test]
    fn uncloaking_blocks_when_any_target_is_blocked() {
        let s = settings();
        let p = Policy {
            rules: Filter::new(s.rules_set(&[], &[], &[])),
            lists: Arc::new(Filter::new(FilterSet::build(&[], &[], &[]).0)),
            blocked_answer: BlockedAnswer::Null,
        };
        assert!(p.blocks_any(["cdn.example", "track.ads.example"]));
        assert!(!p.blocks_any(["cdn.example"]));
    }
}
