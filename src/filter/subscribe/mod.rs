//! List subscriptions: `filter.lists` entries that are URLs, lists added with `cloudpc lists
//! add`, their cached copies and the background updates.
//!
//! # How to drive it
//!
//! 1. [`ListManager::open`] reads the metadata (SQLite, `list_cache` table) and finds the cached
//!    copies (`STATE/lists/<hash>.txt`). No network: a restart without network filters with the
//!    cached copies at once.
//! 2. [`ListManager::sources`] gives the texts for a set of entries (the default policy's from
//!    [`ListManager::default_entries`], or a group's own `lists`): files are read now (with their
//!    last good copy standing in for a broken file), URL lists come from the cache. Build the
//!    [`super::FilterSet`]s from them off the query path (`spawn_blocking`).
//! 3. [`ListManager::spawn_updater`] downloads in the background with the resolver it is
//!    given: every `update_interval` (±10% jitter), a list never downloaded at once, failures
//!    again after a back-off. [`ListManager::add`] and [`ListManager::remove`] wake it
//!    in-process; [`ListManager::update_now`] downloads at once and returns the outcomes.
//!    After each change of a cached copy or of the set of entries, the value of
//!    [`ListManager::changes`] goes up: rebuild every set then.
//!
//! A download that fails, is not a list ([`super::check_list`]) or exceeds `max_list_bytes`
//! keeps the previous copy; the error is recorded and shown by `cloudpc lists`.
//!
//! URL lists are named `list N` (their row id) in logs above debug: the URL is the owner's own
//! setting, but it names a host.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

mod updater;
use serde::Serialize;
pub use updater::next_attempt;

use super::fetch::{fetch, FetchError, FetchLimits, Fetched, HostResolver, ListUrl, Validators};
use super::{check_list, ListError, ListLoader, ListSource, DEFAULT_LIST_TEXT};
use crate::config::{FilterConfig, DEFAULT_LIST};
use crate::store::{ListAttempt, ListCopy, Store};
use updater::ListResolver;

/// The longest wait between retries of a failed download (before the jitter), unless
/// `update_interval` is shorter.
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// The first retry after a failure; doubled per failure up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(300);

/// Why the list state could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The state database refused.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The cache directory could not be used.
    #[error("list cache {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A download setting (the CA bundle) cannot be used.
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// The settings the manager needs (from the config).
#[derive(Debug, Clone)]
pub struct ListSettings {
    /// `filter.lists`.
    pub config_lists: Vec<String>,
    /// Each group with lists of its own: (group name, its `lists`).
    pub group_lists: Vec<(String, Vec<String>)>,
    /// Relative list paths are taken from here (the config file's directory).
    pub base_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Between scheduled downloads; zero = only on demand.
    pub update_interval: Duration,
    pub max_bytes: u64,
    pub timeout: Duration,
    /// Extra CA bundle (`dns.upstream_ca`), also trusted for list downloads.
    pub extra_ca: String,
}

impl ListSettings {
    /// The settings from `[filter]`, the groups' own lists (`Config::group_lists`) and the
    /// extra CA bundle (`dns.upstream_ca`).
    pub fn from_config(
        filter: &FilterConfig,
        group_lists: Vec<(String, Vec<String>)>,
        extra_ca: &str,
        state_dir: &Path,
        base_dir: &Path,
    ) -> ListSettings {
        ListSettings {
            config_lists: filter.lists.clone(),
            group_lists,
            base_dir: base_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            update_interval: Duration::from_secs(filter.update_interval),
            max_bytes: filter.max_list_bytes,
            timeout: Duration::from_secs(filter.download_timeout.max(1)),
            extra_ca: extra_ca.to_string(),
        }
    }
}

/// What one list looks like to `cloudpc lists`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ListStatus {
    /// `list N` id of a URL list (None for files).
    pub id: Option<i64>,
    /// The entry as configured (path or URL).
    pub list: String,
    /// `config`, `added` (with `cloudpc lists add`) or `group NAME`.
    pub from: String,
    /// Rules in the copy in use (None = no usable copy).
    pub entries: Option<usize>,
    /// Unix ms of the last download that gave a good list or a 304 (URL lists).
    pub last_success: Option<i64>,
    /// Unix ms of the last time the cached copy changed.
    pub last_change: Option<i64>,
    /// Unix ms of the start of the last download attempt.
    pub last_attempt: Option<i64>,
    /// `updated`, `unchanged` or `failed`: how the last attempt ended.
    pub last_result: Option<String>,
    /// Why the last attempt (or reading the file) failed.
    pub last_error: Option<String>,
}

/// How one download ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// A new copy was stored.
    Updated { entries: usize },
    /// 304, or the same content again.
    Unchanged,
    /// Failed; the previous copy (if any) stays.
    Failed(String),
}

/// Every list the config and the CLI name, their cached copies and their metadata.
pub struct ListManager {
    settings: ListSettings,
    store: Mutex<Store>,
    files: Mutex<HashMap<PathBuf, ListLoader>>,
    limits: FetchLimits,
    changed: tokio::sync::watch::Sender<u64>,
    /// Wakes the background updater to look at the entries and the schedule again.
    wake: tokio::sync::Notify,
    /// Looks up list hosts; set by [`ListManager::set_resolver`].
    resolver: Mutex<Option<ListResolver>>,
    /// One lock per URL: two downloads of one list never write its copy at the same time.
    downloading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Makes every allocation of 1 MiB or more its own mapping, returned to the system when freed.
///
/// A list swap allocates and frees tens of MiB (download buffer, list text, name-set
/// builders). With glibc's default, the mmap threshold rises after the first such free and
/// later buffers land in per-thread arenas that keep their pages: measured with a 1M-name
/// list, the resident size after each swap climbed to 98-123 MiB (peak 156 MiB); with a fixed
/// 1 MiB threshold it stays at 26 MiB after every swap and peaks at 77 MiB during one.
/// Call once at start of `cloudpc run`; a no-op where the C library is not glibc.
pub fn return_large_allocations_promptly() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; M_MMAP_THRESHOLD accepts any value up to
    // 32 MiB on 64-bit systems.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// FNV-1a 64: a stable file name for a URL's cached copy (not a security boundary: the URL
/// is also in the table).
fn fnv64(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl ListManager {
    /// Opens the list state in `settings.state_dir` (no network).
    pub fn open(settings: ListSettings) -> Result<ListManager, SubscribeError> {
        let store = Store::open(&settings.state_dir)?;
        let dir = settings.state_dir.join("lists");
        std::fs::create_dir_all(&dir).map_err(|cause| SubscribeError::Io {
            path: dir.clone(),
            cause,
        })?;
        let limits = FetchLimits::new(settings.max_bytes, settings.timeout, &settings.extra_ca)?;
        Ok(ListManager {
            settings,
            store: Mutex::new(store),
            files: Mutex::new(HashMap::new()),
            limits,
            changed: tokio::sync::watch::channel(0).0,
            wake: tokio::sync::Notify::new(),
            resolver: Mutex::new(None),
            downloading: Mutex::new(HashMap::new()),
        })
    }

    /// A receiver whose value goes up after each change of a cached copy or of the entries:
    /// rebuild every filter set from [`ListManager::sources`] then.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// The default policy's entries: `filter.lists` plus the URLs added with `cloudpc lists
    /// add` (which join the default lists; a group with `lists` of its own does not get them).
    pub fn default_entries(&self) -> Vec<String> {
        let mut out = self.settings.config_lists.clone();
        for url in self.added().unwrap_or_default() {
            if !out.contains(&url) {
                out.push(url);
            }
        }
        out
    }

    /// URLs added with `cloudpc lists add`, oldest first.
    pub fn added(&self) -> Result<Vec<String>, SubscribeError> {
        Ok(self.store.lock().list_subscriptions()?)
    }

    /// Every URL that some entry names (default lists, groups, CLI), without duplicates.
    pub fn urls(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.default_entries()
            .into_iter()
            .chain(
                self.settings
                    .group_lists
                    .iter()
                    .flat_map(|(_, l)| l.clone()),
            )
            .filter(|e| ListUrl::is_url(e))
            .filter(|e| seen.insert(e.clone()))
            .collect()
    }

    fn resolve_path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.settings.base_dir.join(p)
        }
    }

    fn cache_path(&self, url: &str) -> PathBuf {
        self.settings
            .state_dir
            .join("lists")
            .join(format!("{:016x}.txt", fnv64(url.as_bytes())))
    }

    /// The `list N` id of a URL (created on first use).
    fn id_of(&self, url: &str) -> Result<i64, SubscribeError> {
        Ok(self.store.lock().list_id(url)?)
    }

    /// The texts to build from for `entries` (paths or URLs, as in `filter.lists`), and one
    /// line-0 error per entry that has no usable copy or fell back to a previous one. The
    /// bundled list stands in for a missing `blocklists/default.txt`. Reads files and the
    /// cache: call it off the query path.
    pub fn sources(&self, entries: &[String]) -> (Vec<ListSource>, Vec<ListError>) {
        let mut sources = Vec::with_capacity(entries.len());
        let mut errors = Vec::new();
        for entry in entries {
            if ListUrl::is_url(entry) {
                match self.cached_source(entry) {
                    Ok(s) => sources.push(s),
                    Err(e) => errors.push(e),
                }
                continue;
            }
            let path = self.resolve_path(entry);
            if entry == DEFAULT_LIST && !path.exists() {
                sources.push(ListSource {
                    origin: format!("{DEFAULT_LIST} (built in)"),
                    text: DEFAULT_LIST_TEXT.to_string(),
                });
                continue;
            }
            let mut files = self.files.lock();
            let loader = files
                .entry(path.clone())
                .or_insert_with(|| ListLoader::new().with_max_bytes(self.settings.max_bytes));
            let (s, e) = loader.load(std::slice::from_ref(&path));
            sources.extend(s);
            errors.extend(e);
        }
        (sources, errors)
    }

    fn cached_source(&self, url: &str) -> Result<ListSource, ListError> {
        let id = self.id_of(url).unwrap_or(0);
        let origin = format!("list {id}");
        let whole = |message: String| ListError {
            origin: origin.clone(),
            line: 0,
            message,
        };
        let path = self.cache_path(url);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let last = self
                    .status_row(url)
                    .ok()
                    .flatten()
                    .and_then(|s| s.last_error);
                return Err(whole(match last {
                    Some(err) => format!("not downloaded yet: {err}"),
                    None => "not downloaded yet".into(),
                }));
            }
            Err(e) => return Err(whole(format!("cannot read the cached copy: {e}"))),
        };
        Ok(ListSource { origin, text })
    }

    fn status_row(&self, url: &str) -> Result<Option<ListStatus>, SubscribeError> {
        let row = self.store.lock().list_record(url)?;
        Ok(row.map(|r| ListStatus {
            id: Some(r.id),
            list: url.to_string(),
            from: String::new(),
            entries: r.entries.map(|n| n as usize),
            last_success: r.last_success,
            last_change: r.last_change,
            last_attempt: r.last_attempt,
            last_result: r.last_result,
            last_error: r.last_error,
        }))
    }

    /// Every list with its state, for `cloudpc lists`: the default lists, then each group's.
    pub fn status(&self) -> Result<Vec<ListStatus>, SubscribeError> {
        let added: HashSet<String> = self.added()?.into_iter().collect();
        let mut rows: Vec<(String, String)> = Vec::new();
        for e in self.default_entries() {
            let from = if self.settings.config_lists.contains(&e) {
                "config"
            } else if added.contains(&e) {
                "added"
            } else {
                "config"
            };
            rows.push((e, from.into()));
        }
        for (g, lists) in &self.settings.group_lists {
            rows.extend(lists.iter().map(|l| (l.clone(), format!("group {g}"))));
        }
        let mut out = Vec::new();
        for (entry, from) in rows {
            if ListUrl::is_url(&entry) {
                self.id_of(&entry)?;
                let mut s = self.status_row(&entry)?.unwrap_or_else(|| ListStatus {
                    id: None,
                    list: entry.clone(),
                    from: String::new(),
                    entries: None,
                    last_success: None,
                    last_change: None,
                    last_attempt: None,
                    last_result: None,
                    last_error: None,
                });
                s.from = from;
                if !self.cache_path(&entry).exists() {
                    s.entries = None;
                }
                out.push(s);
                continue;
            }
            let (sources, errors) = self.sources(std::slice::from_ref(&entry));
            let path = self.resolve_path(&entry);
            let mtime = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64);
            out.push(ListStatus {
                id: None,
                list: entry,
                from,
                entries: sources
                    .first()
                    .and_then(|s| check_list(s).ok())
                    .map(|s| s.rules),
                last_success: None,
                last_change: mtime,
                last_attempt: None,
                last_result: None,
                last_error: errors.first().map(|e| e.message.clone()),
            });
        }
        Ok(out)
    }

    /// Adds a URL list (`cloudpc lists add`). Returns false when it was already there. A
    /// running updater schedules it at once (download it now with [`ListManager::update_now`]).
    pub fn add(&self, url: &ListUrl) -> Result<bool, SubscribeError> {
        let added = self
            .store
            .lock()
            .add_list_subscription(url.as_str(), now_ms())?;
        if added {
            self.wake.notify_one();
        }
        Ok(added)
    }

    /// Removes a URL added with [`ListManager::add`]. Returns false when it was not added.
    /// Its cached copy is deleted unless the config names the URL too. (Other unused copies
    /// are cleaned up by the hub, whose config is the one that counts.) A running updater
    /// drops it and notifies [`ListManager::changes`].
    pub fn remove(&self, url: &str) -> Result<bool, SubscribeError> {
        let store = self.store.lock();
        let removed = store.remove_list_subscription(url)?;
        if removed && !self.in_config(url) {
            store.forget_list(url)?;
            let _ = std::fs::remove_file(self.cache_path(url));
        }
        drop(store);
        if removed {
            self.wake.notify_one();
        }
        Ok(removed)
    }

    /// True when `entry` is in `filter.lists` or a group's `lists`.
    pub fn in_config(&self, entry: &str) -> bool {
        self.settings.config_lists.iter().any(|e| e == entry)
            || self
                .settings
                .group_lists
                .iter()
                .any(|(_, l)| l.iter().any(|e| e == entry))
    }

    /// Deletes metadata and cached copies of URLs no entry names.
    fn forget_unused(&self) -> Result<(), SubscribeError> {
        let wanted: HashSet<String> = self.urls().into_iter().collect();
        let known = self.store.lock().list_record_urls()?;
        for url in known.iter().filter(|u| !wanted.contains(*u)) {
            let _ = std::fs::remove_file(self.cache_path(url));
            self.store.lock().forget_list(url)?;
        }
        Ok(())
    }

    /// Downloads one URL list now and records the outcome (the cached copy is replaced only by
    /// a good list). Notifies [`ListManager::changes`] when the copy changed.
    pub async fn update(&self, url: &str, resolver: &impl HostResolver) -> UpdateOutcome {
        let lock = self
            .downloading
            .lock()
            .entry(url.to_string())
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        let started = now_ms();
        let id = self.id_of(url).unwrap_or(0);
        let outcome = match ListUrl::parse(url) {
            Err(e) => UpdateOutcome::Failed(e.to_string()),
            Ok(parsed) => {
                let validators = self.validators(url);
                match fetch(&parsed, &validators, &self.limits, resolver).await {
                    Err(e) => UpdateOutcome::Failed(e.to_string()),
                    Ok(Fetched::NotModified) => UpdateOutcome::Unchanged,
                    Ok(Fetched::Body { bytes, validators }) => {
                        let this = (self.cache_path(url), format!("list {id}"));
                        match tokio::task::spawn_blocking(move || store_copy(this, bytes)).await {
                            Ok(Ok(stored)) => {
                                self.save_validators(url, &validators, &stored);
                                if stored.changed {
                                    UpdateOutcome::Updated {
                                        entries: stored.entries,
                                    }
                                } else {
                                    UpdateOutcome::Unchanged
                                }
                            }
                            Ok(Err(e)) => UpdateOutcome::Failed(e),
                            Err(e) => UpdateOutcome::Failed(e.to_string()),
                        }
                    }
                }
            }
        };
        match &outcome {
            UpdateOutcome::Updated { entries } => {
                tracing::info!(list = id, entries, "list updated");
            }
            UpdateOutcome::Unchanged => tracing::info!(list = id, "list unchanged"),
            UpdateOutcome::Failed(e) => {
                let kept = self.cache_path(url).exists();
                tracing::warn!(list = id, kept_previous_copy = kept, "list download failed");
                tracing::debug!(list = id, url, error = %e, "list download failed");
            }
        }
        if let Err(e) = self.record(url, started, &outcome) {
            tracing::warn!(error = %e, "cannot record a list download");
        }
        if matches!(outcome, UpdateOutcome::Updated { .. }) {
            self.notify();
        }
        outcome
    }

    fn validators(&self, url: &str) -> Validators {
        if !self.cache_path(url).exists() {
            return Validators::default();
        }
        match self.store.lock().list_record(url) {
            Ok(Some(r)) => Validators {
                etag: r.etag,
                last_modified: r.last_modified,
            },
            _ => Validators::default(),
        }
    }

    fn save_validators(&self, url: &str, v: &Validators, stored: &Stored) {
        let hash = format!("{:016x}", stored.hash);
        let r = self.store.lock().save_list_copy(
            url,
            &ListCopy {
                etag: v.etag.as_deref(),
                last_modified: v.last_modified.as_deref(),
                content_hash: &hash,
                entries: stored.entries as i64,
                bytes: stored.bytes as i64,
            },
        );
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot record list validators");
        }
    }

    fn record(&self, url: &str, started: i64, o: &UpdateOutcome) -> Result<(), SubscribeError> {
        let attempt = match o {
            UpdateOutcome::Updated { .. } => ListAttempt::Updated,
            UpdateOutcome::Unchanged => ListAttempt::Unchanged,
            UpdateOutcome::Failed(e) => ListAttempt::Failed(e),
        };
        self.store
            .lock()
            .record_list_attempt(url, started, now_ms(), attempt)?;
        Ok(())
    }
}

/// A good list written to the cache.
struct Stored {
    changed: bool,
    entries: usize,
    hash: u64,
    bytes: usize,
}

/// Checks a downloaded body and, when it is a list that differs from the cached copy, writes
/// it atomically (temporary file, fsync, rename, fsync of the directory).
fn store_copy((path, origin): (PathBuf, String), bytes: Vec<u8>) -> Result<Stored, String> {
    if bytes.contains(&0) {
        return Err("contains binary data (NUL bytes); not a filter list".into());
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))?;
    let source = ListSource { origin, text };
    let summary = check_list(&source).map_err(|e| e.message)?;
    let hash = fnv64(source.text.as_bytes());
    let same = std::fs::read(&path)
        .map(|old| old.len() == source.text.len() && fnv64(&old) == hash)
        .unwrap_or(false);
    let stored = Stored {
        changed: !same,
        entries: summary.rules,
        hash,
        bytes: source.text.len(),
    };
    if same {
        return Ok(stored);
    }
    write_atomically(&path, source.text.as_bytes())
        .map_err(|e| format!("cannot write the cached copy: {e}"))?;
    Ok(stored)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_spreads_by_ten_percent_and_backs_off_after_failures() {
        let day = Duration::from_secs(86_400);
        assert_eq!(next_attempt(0, 0, day, 0.0), Some(86_400_000));
        assert_eq!(next_attempt(0, 0, day, 1.0), Some(95_040_000));
        assert_eq!(next_attempt(0, 0, day, -1.0), Some(77_760_000));
        assert_eq!(next_attempt(0, 1, day, 0.0), Some(300_000));
        assert_eq!(next_attempt(0, 2, day, 0.0), Some(600_000));
        assert_eq!(next_attempt(0, 30, day, 0.0), Some(3_600_000));
        assert_eq!(
            next_attempt(0, 3, Duration::from_secs(60), 0.0),
            Some(60_000)
        );
        assert_eq!(next_attempt(0, 0, Duration::ZERO, 0.0), None);
    }

    #[test]
    fn stored_copy_is_checked_and_replaced_only_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        let at = || (path.clone(), "list 1".to_string());

        let first = store_copy(at(), b"||ads.example^\nads2.example\n".to_vec()).unwrap();
        let again = store_copy(at(), b"||ads.example^\nads2.example\n".to_vec()).unwrap();
        let html = store_copy(at(), b"<html><body>404</body></html>".to_vec());
        let binary = store_copy(at(), b"\x00\x01\x02".to_vec());

        assert!(first.changed && first.entries == 2);
        assert!(!again.changed);
        assert!(html.is_err() && binary.is_err());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "||ads.example^\nads2.example\n"
        );
    }

    fn settings(dir: &Path, config_lists: Vec<String>) -> ListSettings {
        ListSettings {
            config_lists,
            group_lists: vec![],
            base_dir: dir.into(),
            state_dir: dir.join("state"),
            update_interval: Duration::from_secs(86_400),
            max_bytes: 1 << 20,
            timeout: Duration::from_secs(5),
            extra_ca: String::new(),
        }
    }

    /// Answers every request with `body` (a list host on 127.0.0.1, so no name lookup).
    fn list_server(body: &'static str) -> String {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        base
    }

    struct NoDns;
    impl HostResolver for NoDns {
        async fn resolve(&self, _host: &str) -> Result<Vec<std::net::IpAddr>, String> {
            Err("no resolver in this test".into())
        }
    }

    #[tokio::test]
    async fn update_now_downloads_every_list_records_it_and_notifies() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("{}/a.txt", list_server("||ads.example^\nads2.example\n"));
        let m = Arc::new(ListManager::open(settings(dir.path(), vec![url.clone()])).unwrap());
        m.set_resolver(Arc::new(NoDns));
        let mut changes = m.changes();

        let out = m.update_now(None).await;

        assert_eq!(out, [(url.clone(), UpdateOutcome::Updated { entries: 2 })]);
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        let st = m.status().unwrap();
        assert_eq!(st[0].last_result.as_deref(), Some("updated"));
        assert_eq!(st[0].entries, Some(2));
        let again = m.update_now(Some(&url)).await;
        assert_eq!(again, [(url, UpdateOutcome::Unchanged)]);
        assert!(
            !changes.has_changed().unwrap(),
            "the same copy again is no change"
        );
    }

    #[tokio::test]
    async fn update_now_refuses_unknown_urls_and_needs_a_resolver() {
        let dir = tempfile::tempdir().unwrap();
        let url = "http://127.0.0.1:1/c.txt".to_string();
        let m = Arc::new(ListManager::open(settings(dir.path(), vec![url.clone()])).unwrap());

        let unset = m.update_now(None).await;
        m.set_resolver(Arc::new(NoDns));
        let unknown = m.update_now(Some("http://127.0.0.1:1/other.txt")).await;

        assert!(
            matches!(&unset[..], [(u, UpdateOutcome::Failed(e))] if *u == url && e.contains("resolver"))
        );
        assert!(
            matches!(&unknown[..], [(_, UpdateOutcome::Failed(e))] if e.contains("not a list"))
        );
    }

    #[tokio::test]
    async fn a_url_added_while_the_updater_runs_is_downloaded_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("{}/added.txt", list_server("added.example\n"));
        let m = Arc::new(ListManager::open(settings(dir.path(), vec![])).unwrap());
        m.spawn_updater(Arc::new(NoDns));
        let mut changes = m.changes();

        m.add(&ListUrl::parse(&url).unwrap()).unwrap();

        let downloaded = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                changes.changed().await.unwrap();
                let (sources, _) = m.sources(&m.default_entries());
                if !sources.is_empty() {
                    return sources;
                }
            }
        })
        .await
        .expect("the updater did not download the added list");
        assert_eq!(downloaded[0].text, "added.example\n");
    }

    #[test]
    fn urls_join_the_default_lists_and_are_forgotten_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let m = ListManager::open(ListSettings {
            group_lists: vec![("kids".into(), vec!["http://127.0.0.1:1/k.txt".into()])],
            ..settings(dir.path(), vec!["http://127.0.0.1:1/c.txt".into()])
        })
        .unwrap();
        let added = ListUrl::parse("http://127.0.0.1:1/a.txt").unwrap();

        assert!(m.add(&added).unwrap());
        assert!(!m.add(&added).unwrap());
        assert_eq!(m.default_entries().len(), 2);
        assert_eq!(m.urls().len(), 3);
        let (sources, errors) = m.sources(&m.default_entries());
        assert!(sources.is_empty());
        assert!(
            errors[0].message.contains("not downloaded yet"),
            "{errors:?}"
        );
        assert!(errors[0].origin.starts_with("list "));

        assert!(m.remove(added.as_str()).unwrap());
        assert!(!m.remove(added.as_str()).unwrap());
        assert_eq!(m.default_entries().len(), 1);
    }
}
