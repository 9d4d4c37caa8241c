//! The background updater of [`ListManager`]: when each list is due (interval, jitter,
//! back-off after failures), on-demand requests, and the download loop.

use super::*;

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

impl ListManager {
    /// When each URL list is next due, from its recorded history (a list without a cached
    /// copy is due now).
    fn initial_schedule(&self, urls: &[String]) -> HashMap<String, Option<i64>> {
        let mut out = HashMap::new();
        for url in urls {
            let due = if !self.cache_path(url).exists() {
                Some(0)
            } else {
                let row = self.store.lock().list_record(url).ok().flatten();
                match row.map(|r| (r.last_attempt, r.failures)) {
                    Some((Some(at), failures)) => {
                        next_attempt(at, failures, self.settings.update_interval, jitter())
                    }
                    _ => Some(0),
                }
            };
            out.insert(url.clone(), due);
        }
        out
    }

    /// Starts the background updater with its own upstreams (built from `cfg.dns`), so list
    /// hosts resolve through the upstreams directly, never through the filter.
    pub async fn spawn_updater(self: &Arc<Self>, cfg: &Config) -> Result<(), SubscribeError> {
        let upstreams = crate::dns::upstream::Upstreams::from_config(&cfg.dns)
            .await
            .map_err(|e| SubscribeError::Upstreams(e.to_string()))?;
        let this = self.clone();
        tokio::spawn(async move { this.run_updater(Arc::new(upstreams)).await });
        Ok(())
    }

    /// The updater loop: schedule, on-demand requests and entry changes.
    pub async fn run_updater<R>(self: Arc<Self>, resolver: Arc<R>)
    where
        R: HostResolver + Send + Sync + 'static,
    {
        let Ok(watch) = Store::open(&self.settings.state_dir) else {
            tracing::warn!("list updater cannot open the state database; lists are not updated");
            return;
        };
        let mut version = watch.data_version().unwrap_or(0);
        let mut urls = self.urls();
        let mut defaults = self.default_entries();
        if let Err(e) = self.forget_unused() {
            tracing::warn!(error = %e, "cannot clean the list cache");
        }
        let mut due = self.initial_schedule(&urls);
        let mut requested: HashSet<String> = HashSet::new();
        let mut running: tokio::task::JoinSet<(String, UpdateOutcome)> =
            tokio::task::JoinSet::new();
        let mut in_flight: HashSet<String> = HashSet::new();
        // Requests made while the hub was down count too.
        let _ = self.take_requests();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok((url, outcome)) = done {
                        in_flight.remove(&url);
                        let failures = match outcome {
                            UpdateOutcome::Failed(_) => self.failures(&url),
                            _ => 0,
                        };
                        due.insert(
                            url,
                            next_attempt(now_ms(), failures, self.settings.update_interval, jitter()),
                        );
                    }
                    continue;
                }
            }
            let v = watch.data_version().unwrap_or(version);
            if v != version {
                version = v;
                let now_urls = self.urls();
                let now_defaults = self.default_entries();
                if now_urls != urls || now_defaults != defaults {
                    defaults = now_defaults;
                    for u in &now_urls {
                        if !due.contains_key(u) {
                            due.insert(u.clone(), Some(0));
                        }
                    }
                    due.retain(|u, _| now_urls.contains(u));
                    urls = now_urls;
                    if let Err(e) = self.forget_unused() {
                        tracing::warn!(error = %e, "cannot clean the list cache");
                    }
                    self.notify();
                }
                match self.take_requests() {
                    Ok(r) => {
                        for u in r {
                            if u == "*" {
                                requested.extend(urls.iter().cloned());
                            } else if urls.contains(&u) {
                                requested.insert(u);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read list update requests"),
                }
            }
            let now = now_ms();
            let mut start: Vec<String> = requested
                .iter()
                .filter(|u| !in_flight.contains(*u))
                .cloned()
                .collect();
            requested.retain(|u| in_flight.contains(u));
            start.extend(
                due.iter()
                    .filter(|(u, at)| at.is_some_and(|t| t <= now) && !in_flight.contains(*u))
                    .map(|(u, _)| u.clone()),
            );
            start.sort();
            start.dedup();
            for url in start {
                due.insert(url.clone(), None);
                in_flight.insert(url.clone());
                let (this, resolver) = (self.clone(), resolver.clone());
                running.spawn(async move {
                    let outcome = this.update(&url, &*resolver).await;
                    (url, outcome)
                });
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
