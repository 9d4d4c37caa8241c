//! What the admin page and `/metrics` read off the running state: metrics text, the hourly
//! traffic history, upstream health, groups, settings and "test a domain". Nothing here
//! changes what is in force.

use super::{bad, internal, Control};
use crate::api::ApiError;
use crate::store::RuleAction;

/// Config settings the admin page shows (they change only with the config file).
#[derive(Debug, Clone, Default)]
pub struct SettingsSummary {
    /// `dns.upstreams` as configured.
    pub upstreams: Vec<String>,
    /// The DNS64 prefix when DNS64 is on.
    pub dns64: Option<String>,
}

/// One upstream's health for the admin page.
#[derive(Debug, Clone)]
pub struct UpstreamHealth {
    pub transport: &'static str,
    pub answers: u64,
    pub latency_sum_secs: f64,
    pub failures: u64,
}

/// One group's verdict for a tested domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainTest {
    /// `default`, or the group's name.
    pub group: String,
    /// `blocked`, `allowed` or `passes`.
    pub verdict: &'static str,
    pub why: String,
}

/// Counters at the last history sample (what is not in the store yet is what moved since).
#[derive(Debug, Default)]
pub(super) struct HistoryMark {
    traffic: std::collections::HashMap<String, crate::store::Traffic>,
    queries: u64,
    blocked: u64,
}

/// A device's bytes over the last 24 hours and 7 days, with what has not been written yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficSummary {
    pub day: crate::store::Traffic,
    pub week: crate::store::Traffic,
}

impl Control {
    /// The text of `/metrics` (the running hub's counters; see `crate::metrics`).
    pub fn metrics(&self) -> Result<String, ApiError> {
        let Some(e) = &self.engines else {
            return Err(ApiError::NotRunning("cloudpc is not running".into()));
        };
        let devices = self.store.lock().devices()?;
        let lists = self.lists.status().map_err(internal)?;
        let hub_status = e.hub.as_ref().map(|h| h.status());
        let hub = match (&e.hub, &hub_status) {
            (Some(h), Some(st)) => Some((st.as_slice(), h.counters())),
            _ => None,
        };
        Ok(crate::metrics::render(&crate::metrics::Sources {
            dns: &e.resolver.stats,
            cache_entries: e.resolver.cache_len(),
            upstreams: e.upstreams.health(),
            lists: &lists,
            devices: &devices,
            hub,
            querylog: e.querylog.stats(),
            now_unix: jiff::Timestamp::now().as_second(),
            firewall: Some(&e.firewall),
            nat46: e.hub.as_ref().and_then(|h| h.nat46()).map(|n| n.stats()),
        }))
    }

    /// What moved since the last sample: per device (by key) and DNS counts; advances the
    /// mark when `advance`.
    fn history_delta(&self, advance: bool) -> (Vec<(String, crate::store::Traffic)>, u64, u64) {
        let mut mark = self.history.lock();
        self.history_delta_at(&mut mark, advance)
    }

    fn history_delta_at(
        &self,
        mark: &mut HistoryMark,
        advance: bool,
    ) -> (Vec<(String, crate::store::Traffic)>, u64, u64) {
        let Some(e) = &self.engines else {
            return (vec![], 0, 0);
        };
        let live: Vec<(String, crate::store::Traffic)> = e
            .hub
            .as_ref()
            .map(|h| {
                h.status()
                    .into_iter()
                    .map(|d| {
                        let t = crate::store::Traffic {
                            rx: d.rx_bytes,
                            tx: d.tx_bytes,
                        };
                        (d.public_key, t)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let snap = e.resolver.stats.snapshot();
        // A counter that went down was reset (a device re-registered): count it from zero.
        let since = |now: u64, before: u64| if now >= before { now - before } else { now };
        let delta = live
            .iter()
            .map(|(k, t)| {
                let b = mark.traffic.get(k).copied().unwrap_or_default();
                let d = crate::store::Traffic {
                    rx: since(t.rx, b.rx),
                    tx: since(t.tx, b.tx),
                };
                (k.clone(), d)
            })
            .collect();
        let q = since(snap.queries, mark.queries);
        let b = since(snap.blocked, mark.blocked);
        if advance {
            mark.traffic = live.into_iter().collect();
            mark.queries = snap.queries;
            mark.blocked = snap.blocked;
        }
        (delta, q, b)
    }

    /// Writes what moved since the last call into the hourly history (a minute's task of the
    /// daemon, and once more at exit).
    pub fn sample_history(&self) -> Result<(), ApiError> {
        let hour = crate::store::unix_now() / 3600;
        // The mark moves only once the counts are stored: a failed write loses nothing.
        let mut mark = self.history.lock();
        let before = std::mem::take(&mut *mark);
        let (delta, q, b) = {
            *mark = HistoryMark {
                traffic: before.traffic.clone(),
                ..before
            };
            self.history_delta_at(&mut mark, true)
        };
        if let Err(e) = self.store.lock().add_history(hour, &delta, q, b) {
            // Back to the mark before: the next sample counts these bytes again.
            *mark = HistoryMark {
                traffic: before.traffic,
                queries: before.queries,
                blocked: before.blocked,
            };
            return Err(e.into());
        }
        Ok(())
    }

    /// Each device's (by public key) bytes over the last 24 hours and 7 days, kept across
    /// restarts.
    pub fn traffic_summary(
        &self,
    ) -> Result<std::collections::HashMap<String, TrafficSummary>, ApiError> {
        let hour = crate::store::unix_now() / 3600;
        let (pending, _, _) = self.history_delta(false);
        let (day, week) = {
            let s = self.store.lock();
            (
                s.traffic_since(hour - 23)?,
                s.traffic_since(hour - 24 * 7 + 1)?,
            )
        };
        let mut out: std::collections::HashMap<String, TrafficSummary> = Default::default();
        let add = |a: &mut crate::store::Traffic, b: crate::store::Traffic| {
            a.rx += b.rx;
            a.tx += b.tx;
        };
        for (k, t) in day {
            add(&mut out.entry(k).or_default().day, t);
        }
        for (k, t) in week {
            add(&mut out.entry(k).or_default().week, t);
        }
        for (k, t) in pending {
            let e = out.entry(k).or_default();
            add(&mut e.day, t);
            add(&mut e.week, t);
        }
        Ok(out)
    }

    /// Queries and blocked queries in each of the last 24 hours, oldest first (this hour
    /// includes what has not been written yet).
    pub fn dns_last_day(&self) -> Result<Vec<(u64, u64)>, ApiError> {
        let hour = crate::store::unix_now() / 3600;
        let rows = self.store.lock().dns_hours(hour - 23)?;
        let (_, q, b) = self.history_delta(false);
        let mut out = vec![(0u64, 0u64); 24];
        for (h, rq, rb) in rows {
            if let Some(slot) = out.get_mut((h - (hour - 23)) as usize) {
                *slot = (rq, rb);
            }
        }
        out[23].0 += q;
        out[23].1 += b;
        Ok(out)
    }

    /// The policy groups of the config with their devices: (name, its own lists or `None` for
    /// the default ones, block and allow rules, device names).
    #[allow(clippy::type_complexity)]
    pub fn groups_summary(
        &self,
    ) -> Result<Vec<(String, Option<Vec<String>>, usize, usize, Vec<String>)>, ApiError> {
        let devices = self.store.lock().devices()?;
        Ok(self
            .policy
            .groups
            .iter()
            .map(|(name, g)| {
                let members = devices
                    .iter()
                    .filter(|d| d.group.as_deref() == Some(name.as_str()))
                    .map(|d| d.name.clone())
                    .collect();
                (
                    name.clone(),
                    g.lists.clone(),
                    g.block.len(),
                    g.allow.len(),
                    members,
                )
            })
            .collect())
    }

    /// How each upstream has been doing, in config order.
    pub fn upstream_health(&self) -> Vec<UpstreamHealth> {
        let Some(e) = &self.engines else {
            return vec![];
        };
        e.upstreams
            .health()
            .iter()
            .map(|h| UpstreamHealth {
                transport: h.transport,
                answers: h.answers.load(std::sync::atomic::Ordering::Relaxed),
                latency_sum_secs: h.latency_micros.load(std::sync::atomic::Ordering::Relaxed)
                    as f64
                    / 1e6,
                failures: h.failures.load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect()
    }

    /// The config settings the admin page shows.
    pub fn settings_summary(&self) -> SettingsSummary {
        self.engines
            .as_ref()
            .map(|e| e.summary.clone())
            .unwrap_or_default()
    }

    /// Whether `domain` is blocked for the default policy and for each group that has
    /// devices, and why.
    pub fn test_domain(&self, domain: &str) -> Result<Vec<DomainTest>, ApiError> {
        let Some(e) = &self.engines else {
            return Err(ApiError::NotRunning("cloudpc is not running".into()));
        };
        let name = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if !crate::dns::name::is_valid_zone(&name) {
            return Err(bad(format!(
                "{domain:?} is not a domain name, e.g. ads.example.com"
            )));
        }
        let default_lists = self.lists.default_entries();
        let lists_of = |group: &str| -> Vec<String> {
            self.policy
                .groups
                .get(group)
                .and_then(|g| g.lists.clone())
                .unwrap_or_else(|| default_lists.clone())
        };
        // Which list and which of its rules: read the lists' copies (off the query path).
        // A URL list's copy is named `list N`: show its URL, as the Filtering page does.
        let status = self.lists.status().unwrap_or_default();
        let list_name = |origin: &str| -> String {
            let url = origin
                .strip_prefix("list ")
                .and_then(|n| n.parse::<i64>().ok())
                .and_then(|id| status.iter().find(|l| l.id == Some(id)));
            match url {
                Some(l) => format!("{origin} ({})", l.list),
                None => origin.to_string(),
            }
        };
        let name_rule = |group: &str, allow: bool| -> Option<String> {
            let (sources, _) = self.lists.sources(&lists_of(group));
            sources.iter().find_map(|src| {
                crate::filter::rule_naming(&src.text, &name, allow)
                    .map(|rule| format!("the list {}, rule `{rule}`", list_name(&src.origin)))
            })
        };
        // And which of the config's and run-time rules.
        let stored = self.store.lock().rules()?;
        let rule_of = |group: &str, action: RuleAction| -> Option<String> {
            let g = self.policy.groups.get(group);
            let (cfg, grp): (&[String], &[String]) = match action {
                RuleAction::Block => (&self.policy.block, g.map_or(&[][..], |g| &g.block[..])),
                RuleAction::Allow => (&self.policy.allow, g.map_or(&[][..], |g| &g.allow[..])),
            };
            let text: String = cfg
                .iter()
                .chain(grp)
                .cloned()
                .chain(stored.iter().filter(|r| r.1 == action).map(|r| r.0.clone()))
                .collect::<Vec<_>>()
                .join("\n");
            crate::filter::rule_naming(&text, &name, false).map(str::to_string)
        };
        let mut groups: Vec<(String, Option<std::net::IpAddr>)> = vec![("default".into(), None)];
        for d in self.store.lock().devices()? {
            if let Some(g) = d.group {
                if !groups.iter().any(|(n, _)| *n == g) {
                    groups.push((g, Some(d.ipv4.into())));
                }
            }
        }
        use crate::dns::engine::Source;
        use crate::filter::Verdict;
        Ok(groups
            .into_iter()
            .map(|(group, ip)| {
                let (v, src) = e.resolver.explain(ip, &name);
                let (verdict, why) = match (v, src) {
                    (Verdict::Block, Source::Rules) => (
                        "blocked",
                        match rule_of(&group, RuleAction::Block) {
                            Some(r) => format!("the block rule `{r}` (yours or the config's)"),
                            None => "a block rule of yours or of the config".to_string(),
                        },
                    ),
                    (Verdict::Block, _) => (
                        "blocked",
                        name_rule(&group, false)
                            .unwrap_or_else(|| "a block list (by a pattern rule)".into()),
                    ),
                    (Verdict::Allow, Source::Rules) => (
                        "allowed",
                        match rule_of(&group, RuleAction::Allow) {
                            Some(r) => format!("the allow rule `{r}` (beats every block)"),
                            None => "an allow rule of yours or of the config".to_string(),
                        },
                    ),
                    (Verdict::Allow, _) => (
                        "allowed",
                        name_rule(&group, true).map_or_else(
                            || "an exception (@@) in a list".into(),
                            |r| format!("an exception: {r}"),
                        ),
                    ),
                    (Verdict::Pass, _) => ("passes", "no rule matches it".to_string()),
                };
                DomainTest {
                    group,
                    verdict,
                    why,
                }
            })
            .collect())
    }
}
