//! The background updater of [`ListManager`]: when each list is due (interval, jitter,
//! back-off after failures), downloads on demand ([`ListManager::update_now`]), and the loop
//! that runs the schedule.
//!
//! The loop sleeps until the next list is due. It learns of changes in-process only: `add`
//! and `remove` wake it (a [`tokio::sync::Notify`]) to look at the entries again, and so does
//! `update_now`, whose downloads move the schedule. Nothing polls the database.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use super::*;

/// The longest the loop sleeps without looking at the clock again (the wall clock may jump).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// When to try a list again after an attempt at `now_ms`. `failures` counts the failed
/// attempts in a row (0 = the last one succeeded); `jitter` in [-1, 1] spreads the time by
/// ±10% so lists (and hubs) do not all ask at the same moment. `None` = not scheduled.
pub fn next_attempt(now_ms: i64, failures: u32, interval: Duration, jitter: f64) -> Option<i64> {
    if interval.is_zero() {
        return None;
    }
    let wait = if failures == 0 {
        interval
    } else {
        let backoff = FIRST_RETRY.saturating_mul(1u32 << (failures - 1).min(16));
        backoff.min(MAX_RETRY).min(interval)
    };
    let ms = wait.as_millis() as f64 * (1.0 + 0.1 * jitter.clamp(-1.0, 1.0));
    Some(now_ms.saturating_add(ms as i64))
}

fn jitter() -> f64 {
    rand::random::<f64>() * 2.0 - 1.0
}

type ResolveFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, String>> + Send + 'a>>;

/// A [`HostResolver`] the manager can keep: that trait returns `impl Future` and so cannot be
/// a trait object itself.
trait KeptResolver: Send + Sync {
    fn resolve_boxed<'a>(&'a self, host: &'a str) -> ResolveFuture<'a>;
}

impl<R: HostResolver + Send + Sync> KeptResolver for R {
    fn resolve_boxed<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        Box::pin(self.resolve(host))
    }
}

/// The resolver list hosts are looked up with (see [`ListManager::set_resolver`]).
#[derive(Clone)]
pub(super) struct ListResolver(Arc<dyn KeptResolver>);

impl HostResolver for ListResolver {
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        self.0.resolve_boxed(host).await
    }
}

impl ListManager {
    /// Sets the resolver list hosts are looked up with, for [`ListManager::update_now`] and
    /// the background updater. Give it upstreams of its own, so list hosts resolve through the
    /// upstreams directly, never through the filter.
    pub fn set_resolver<R: HostResolver + Send + Sync + 'static>(&self, resolver: Arc<R>) {
        *self.resolver.lock() = Some(ListResolver(resolver));
    }

    /// Downloads now: every URL list with `None`, or the one given. Records each outcome and
    /// notifies [`ListManager::changes`] for each copy that changed; returns when every
    /// download ended, in the order asked. Without a resolver ([`ListManager::set_resolver`])
    /// every download fails at once.
    pub async fn update_now(self: &Arc<Self>, url: Option<&str>) -> Vec<(String, UpdateOutcome)> {
        let known = self.urls();
        let targets = match url {
            None => known,
            Some(u) if known.iter().any(|k| k == u) => vec![u.to_string()],
            Some(u) => {
                let why = "not a list; add it with `cloudpc lists add` first".to_string();
                return vec![(u.to_string(), UpdateOutcome::Failed(why))];
            }
        };
        let Some(resolver) = self.resolver.lock().clone() else {
            let why = "no resolver for list hosts is set up".to_string();
            return targets
                .into_iter()
                .map(|t| (t, UpdateOutcome::Failed(why.clone())))
                .collect();
        };
        let mut running = tokio::task::JoinSet::new();
        for (i, url) in targets.iter().cloned().enumerate() {
            let (this, resolver) = (self.clone(), resolver.clone());
            running.spawn(async move { (i, this.update(&url, &resolver).await) });
        }
        let mut outcomes: Vec<Option<UpdateOutcome>> = vec![None; targets.len()];
        while let Some(done) = running.join_next().await {
            if let Ok((i, outcome)) = done {
                outcomes[i] = Some(outcome);
            }
        }
        // The downloads moved the schedule.
        self.wake.notify_one();
        targets
            .into_iter()
            .zip(outcomes)
            .map(|(t, o)| {
                let o =
                    o.unwrap_or_else(|| UpdateOutcome::Failed("the download task failed".into()));
                (t, o)
            })
            .collect()
    }

    /// When a URL list is next due, from its recorded history (never tried = now).
    fn due_from_record(&self, url: &str) -> Option<i64> {
        let row = self.store.lock().list_record(url).ok().flatten();
        match row.map(|r| (r.last_attempt, r.failures)) {
            Some((Some(at), failures)) => {
                next_attempt(at, failures, self.settings.update_interval, jitter())
            }
            _ => Some(0),
        }
    }

    /// When a URL list is first due: now without a cached copy, else from its history.
    fn initial_due(&self, url: &str) -> Option<i64> {
        if self.cache_path(url).exists() {
            self.due_from_record(url)
        } else {
            Some(0)
        }
    }

    /// Sets the resolver ([`ListManager::set_resolver`]) and starts the background updater on
    /// the current tokio runtime.
    pub fn spawn_updater<R: HostResolver + Send + Sync + 'static>(
        self: &Arc<Self>,
        resolver: Arc<R>,
    ) {
        self.set_resolver(resolver);
        let this = self.clone();
        tokio::spawn(async move { this.run_updater().await });
    }

    /// The updater loop: the schedule, and the entries when woken.
    async fn run_updater(self: Arc<Self>) {
        let Some(resolver) = self.resolver.lock().clone() else {
            tracing::warn!("list updater has no resolver; lists are not updated");
            return;
        };
        let mut urls = self.urls();
        let mut defaults = self.default_entries();
        if let Err(e) = self.forget_unused() {
            tracing::warn!(error = %e, "cannot clean the list cache");
        }
        let mut due: HashMap<String, Option<i64>> = urls
            .iter()
            .map(|u| (u.clone(), self.initial_due(u)))
            .collect();
        let mut running: tokio::task::JoinSet<(String, UpdateOutcome)> =
            tokio::task::JoinSet::new();
        let mut in_flight: HashSet<String> = HashSet::new();
        loop {
            let now = now_ms();
            let mut start: Vec<String> = due
                .iter()
                .filter(|(u, at)| at.is_some_and(|t| t <= now) && !in_flight.contains(*u))
                .map(|(u, _)| u.clone())
                .collect();
            start.sort();
            for url in start {
                due.insert(url.clone(), None);
                in_flight.insert(url.clone());
                let (this, resolver) = (self.clone(), resolver.clone());
                running.spawn(async move {
                    let outcome = this.update(&url, &resolver).await;
                    (url, outcome)
                });
            }
            let wait = match due.values().flatten().min() {
                Some(t) => Duration::from_millis(
                    u64::try_from(t.saturating_sub(now))
                        .unwrap_or(0)
                        .min(MAX_SLEEP.as_millis() as u64),
                ),
                None => MAX_SLEEP,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {
                    let now_urls = self.urls();
                    let now_defaults = self.default_entries();
                    if now_urls != urls || now_defaults != defaults {
                        defaults = now_defaults;
                        due.retain(|u, _| now_urls.contains(u));
                        for u in &now_urls {
                            if !due.contains_key(u) && !in_flight.contains(u) {
                                due.insert(u.clone(), self.initial_due(u));
                            }
                        }
                        urls = now_urls;
                        if let Err(e) = self.forget_unused() {
                            tracing::warn!(error = %e, "cannot clean the list cache");
                        }
                        self.notify();
                    }
                    // Downloads made meanwhile (`update_now`) moved the schedule.
                    for (u, at) in due.iter_mut() {
                        if at.is_some() && !in_flight.contains(u) {
                            *at = self.due_from_record(u);
                        }
                    }
                }
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok((url, outcome)) = done {
                        in_flight.remove(&url);
                        if urls.contains(&url) {
                            let failures = match outcome {
                                UpdateOutcome::Failed(_) => self.failures(&url),
                                _ => 0,
                            };
                            due.insert(
                                url,
                                next_attempt(now_ms(), failures, self.settings.update_interval, jitter()),
                            );
                        }
                    }
                }
            }
        }
    }

    fn failures(&self, url: &str) -> u32 {
        match self.store.lock().list_record(url) {
            Ok(Some(r)) => r.failures,
            _ => 1,
        }
    }
}
