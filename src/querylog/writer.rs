//! [`QueryLog`]: the handle the DNS path records into, and the writer thread behind it.
//!
//! The DNS path pays one atomic load when the log is off and one `try_send` into a bounded
//! channel when it is on. A dedicated OS thread (SQLite and age are blocking, CPU-bound work)
//! drains the channel in batches: it maps the client address to a device, skips devices with
//! `no_log`, encrypts each entry to the recipients and appends the ciphertexts in one
//! transaction that re-checks, under the write lock, that the log is still on.
//!
//! The writer learns of changes only when told: [`QueryLog::reload`] (switch and recipients,
//! re-read from the store) and [`QueryLog::set_devices`] (the address → device map) go
//! through the same channel as the events and return once the writer applied them, so
//! everything recorded afterwards is handled with the new state.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::entry::{self, LogEntry};
use super::settings::{self, LogSettings};
use super::{QueryEvent, QueryLogError, Verdict};
use crate::config::QueryLogConfig;
use crate::store::{Device, QueryLogAppend, QueryLogMeta, Store};

/// Events waiting for the writer; beyond this `record` drops and counts. Encrypting one entry to
/// two X25519 recipients measured ~150 µs (release build, this machine), so the writer keeps up
/// with ~6,000 logged queries a second and this is about half a second of backlog.
pub const CHANNEL_CAPACITY: usize = 4096;

/// Most entries written in one transaction.
const MAX_BATCH: usize = 256;

/// How often old entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Counters for `cloudpc status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueryLogStats {
    /// Entries stored.
    pub written: u64,
    /// Events lost: channel full, writer gone, or a database error.
    pub dropped: u64,
}

enum Msg {
    Event(QueryEvent),
    /// Reply once everything sent before has been handled (tests, shutdown).
    Flush(SyncSender<()>),
    /// Re-read the switch and recipients; reply whether the log is on.
    Reload(SyncSender<Result<bool, QueryLogError>>),
    /// Replace the address → device map; reply when done.
    Devices(HashMap<IpAddr, DeviceTag>, SyncSender<()>),
}

struct Shared {
    enabled: AtomicBool,
    retention_days: AtomicU32,
    written: AtomicU64,
    dropped: AtomicU64,
}

/// Handle to the query log. Cheap to clone; the writer thread ends when the last clone drops.
#[derive(Clone)]
pub struct QueryLog {
    shared: Arc<Shared>,
    tx: Option<SyncSender<Msg>>,
}

impl std::fmt::Debug for QueryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryLog")
            .field("enabled", &self.is_enabled())
            .field("stats", &self.stats())
            .finish()
    }
}

impl QueryLog {
    /// Opens the state database in `state_dir` and starts the writer thread.
    ///
    /// Returns the handle for the DNS path and the thread's handle; the thread ends after every
    /// clone of the [`QueryLog`] is dropped and the queued events are written.
    pub fn start(
        state_dir: &Path,
        cfg: &QueryLogConfig,
    ) -> Result<(QueryLog, JoinHandle<()>), QueryLogError> {
        let store = Store::open(state_dir)?;
        let shared = Arc::new(Shared {
            enabled: AtomicBool::new(false),
            retention_days: AtomicU32::new(cfg.retention_days),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::sync_channel(CHANNEL_CAPACITY);
        let mut writer = Writer {
            store,
            shared: shared.clone(),
            settings: None,
            devices: device_map(&[]),
        };
        writer.reload()?;
        writer.devices = device_map(&writer.store.devices()?);
        let handle = std::thread::Builder::new()
            .name("cloudpc-querylog".into())
            .spawn(move || writer.run(rx))
            .map_err(QueryLogError::Spawn)?;
        Ok((
            QueryLog {
                shared,
                tx: Some(tx),
            },
            handle,
        ))
    }

    /// A log that is off and has no writer: `record` does nothing. For tests and for running
    /// without a state dir.
    pub fn disabled() -> QueryLog {
        QueryLog {
            shared: Arc::new(Shared {
                enabled: AtomicBool::new(false),
                retention_days: AtomicU32::new(0),
                written: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
            tx: None,
        }
    }

    /// True when queries are being logged. Check this before building a [`QueryEvent`] to skip
    /// the allocation of the name when the log is off.
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.shared.enabled.load(Ordering::Relaxed)
    }

    /// Hands one answered query to the writer. Never blocks; does nothing when the log is off;
    /// drops and counts the event when the writer is behind.
    #[inline]
    pub fn record(&self, ev: QueryEvent) {
        if !self.is_enabled() {
            return;
        }
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Msg::Event(ev)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records one answered query, stamped with the wall-clock time now (the resolver's
    /// decisions take no clock; the log is the one output that needs a calendar time).
    #[inline]
    pub fn record_query(
        &self,
        client: IpAddr,
        name: &str,
        qtype: u16,
        verdict: Verdict,
        rcode: u16,
        upstream_ms: Option<u32>,
    ) {
        if !self.is_enabled() {
            return;
        }
        self.record(QueryEvent {
            time: SystemTime::now(),
            client,
            name: name.to_string(),
            qtype,
            verdict,
            rcode,
            upstream_ms,
        });
    }

    /// Makes the writer re-read the on/off switch and the recipients from the store, and
    /// returns whether the log is on. Call it after `enable`/`disable` changed them. Blocks until
    /// the writer applied it (events recorded before are handled first): the next
    /// [`QueryLog::record`] is logged or not accordingly. Not for the DNS path.
    pub fn reload(&self) -> Result<bool, QueryLogError> {
        let Some(tx) = &self.tx else { return Ok(false) };
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let stopped = || {
            self.shared.enabled.store(false, Ordering::Relaxed);
            QueryLogError::WriterStopped
        };
        tx.send(Msg::Reload(done_tx)).map_err(|_| stopped())?;
        done_rx.recv().map_err(|_| stopped())?
    }

    /// Gives the writer the registered devices: which device an overlay address belongs to
    /// (its name goes into the entry) and which ones are never logged (`no_log`). Call it
    /// whenever devices change. Blocks until the writer applied it. Not for the DNS path.
    pub fn set_devices(&self, devices: &[Device]) {
        let Some(tx) = &self.tx else { return };
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if tx.send(Msg::Devices(device_map(devices), done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
    }

    /// Changes `retention_days` (on config reload). 0 keeps entries until `disable`.
    pub fn set_retention_days(&self, days: u32) {
        self.shared.retention_days.store(days, Ordering::Relaxed);
    }

    /// Counters since start.
    pub fn stats(&self) -> QueryLogStats {
        QueryLogStats {
            written: self.shared.written.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }

    /// Waits until everything recorded before has been written. Blocks: not for the DNS path.
    pub fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if tx.send(Msg::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
    }
}

/// A device as the writer needs it.
#[derive(Debug, Clone)]
struct DeviceTag {
    name: String,
    no_log: bool,
}

/// Overlay address (both families) → device.
fn device_map(devices: &[Device]) -> HashMap<IpAddr, DeviceTag> {
    devices
        .iter()
        .flat_map(|d| {
            let tag = DeviceTag {
                name: d.name.clone(),
                no_log: d.no_log,
            };
            [(IpAddr::V4(d.ipv4), tag.clone()), (IpAddr::V6(d.ipv6), tag)]
        })
        .collect()
}

struct Writer {
    store: Store,
    shared: Arc<Shared>,
    settings: Option<LogSettings>,
    /// Overlay address → device.
    devices: HashMap<IpAddr, DeviceTag>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut last_prune: Option<Instant> = None;
        loop {
            if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(Instant::now());
                self.prune(SystemTime::now());
            }
            let wait = last_prune.map_or(PRUNE_EVERY, |t| PRUNE_EVERY.saturating_sub(t.elapsed()));
            let first = match rx.recv_timeout(wait) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                }
            }
            self.handle_batch(batch);
        }
        tracing::debug!("query log writer stopped");
    }

    /// Re-reads the switch and recipients from the store. Returns whether the log is on.
    fn reload(&mut self) -> Result<bool, QueryLogError> {
        let s = settings::load(&self.store)?;
        let on = s.enabled;
        self.shared.enabled.store(on, Ordering::Relaxed);
        self.settings = Some(s);
        Ok(on)
    }

    /// Handles messages in order: events are written in runs, and a control message applies
    /// after every event sent before it.
    fn handle_batch(&mut self, batch: Vec<Msg>) {
        let mut events = Vec::with_capacity(batch.len());
        for m in batch {
            match m {
                Msg::Event(e) => events.push(e),
                Msg::Flush(done) => {
                    self.write_counted(std::mem::take(&mut events));
                    let _ = done.try_send(());
                }
                Msg::Reload(done) => {
                    self.write_counted(std::mem::take(&mut events));
                    let r = self.reload();
                    if let Err(e) = &r {
                        tracing::warn!(error = %e, "query log: cannot read settings");
                    }
                    let _ = done.try_send(r);
                }
                Msg::Devices(map, done) => {
                    self.write_counted(std::mem::take(&mut events));
                    self.devices = map;
                    let _ = done.try_send(());
                }
            }
        }
        self.write_counted(events);
    }

    /// [`Writer::write`], with the outcome added to the counters.
    fn write_counted(&mut self, events: Vec<QueryEvent>) {
        if events.is_empty() {
            return;
        }
        let n = events.len() as u64;
        match self.write(events) {
            Ok(w) => {
                self.shared.written.fetch_add(w, Ordering::Relaxed);
            }
            Err(e) => {
                self.shared.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(error = %e, entries = n, "query log: entries lost");
            }
        }
    }

    /// Turns events into ciphertexts and appends them. Returns how many were stored.
    fn write(&mut self, events: Vec<QueryEvent>) -> Result<u64, QueryLogError> {
        let Some(s) = self.settings.clone().filter(|s| s.enabled) else {
            return Ok(0);
        };
        let entries: Vec<(i64, LogEntry)> = events
            .into_iter()
            .filter_map(|ev| self.to_entry(ev))
            .collect();
        if entries.is_empty() {
            return Ok(0);
        }
        let rows = encrypt_all(&s, &entries)?;
        // The store re-checks under the write lock: a `disable` committed since the last
        // look wins, and a change of recipients means encrypting again.
        let outcome = self.store.append_querylog(|now: &QueryLogMeta| {
            let now = LogSettings::from_meta(now);
            if now.recipients_text == s.recipients_text {
                Ok(rows)
            } else {
                encrypt_all(&now, &entries)
            }
        })?;
        let (count, meta) = match outcome {
            QueryLogAppend::Appended { count, meta } => (count, meta),
            QueryLogAppend::Off { meta } => (0, meta),
        };
        let now = LogSettings::from_meta(&meta);
        self.shared.enabled.store(now.enabled, Ordering::Relaxed);
        self.settings = Some(now);
        Ok(count)
    }

    /// The entry for one event (`None` for devices that opted out), with its time in seconds.
    fn to_entry(&self, ev: QueryEvent) -> Option<(i64, LogEntry)> {
        let client = ev.client.to_canonical();
        let device = match self.devices.get(&client) {
            Some(d) if d.no_log => return None,
            Some(d) => Some(d.name.clone()),
            None => None,
        };
        let ms = ev
            .time
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Some((
            ms / 1000,
            LogEntry {
                time_ms: ms,
                device,
                client,
                name: ev.name,
                qtype: ev.qtype,
                verdict: ev.verdict,
                rcode: ev.rcode,
                upstream_ms: ev.upstream_ms,
            },
        ))
    }

    fn prune(&mut self, now: SystemTime) {
        let days = self.shared.retention_days.load(Ordering::Relaxed);
        let Some(cutoff) = prune_cutoff(now, days) else {
            return;
        };
        match prune_before(&self.store, cutoff) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(entries = n, "query log: pruned old entries"),
            Err(e) => tracing::warn!(error = %e, "query log: pruning failed"),
        }
    }
}

fn encrypt_all(
    s: &LogSettings,
    entries: &[(i64, LogEntry)],
) -> Result<Vec<(i64, Vec<u8>)>, QueryLogError> {
    let r = s
        .recipients
        .as_ref()
        .ok_or(QueryLogError::BadStoredRecipients)?;
    entries
        .iter()
        .map(|(t, e)| {
            entry::encrypt(r.keys(), &e.encode())
                .map(|c| (*t, c))
                .map_err(QueryLogError::Encrypt)
        })
        .collect()
}

/// Unix second before which entries are deleted; `None` when `retention_days` is 0 (keep).
pub(crate) fn prune_cutoff(now: SystemTime, retention_days: u32) -> Option<i64> {
    if retention_days == 0 {
        return None;
    }
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    let keep = u64::from(retention_days) * 86_400;
    i64::try_from(now.saturating_sub(keep)).ok()
}

/// Deletes entries older than `cutoff` (Unix seconds). Returns how many.
pub(crate) fn prune_before(store: &Store, cutoff: i64) -> Result<u64, QueryLogError> {
    Ok(store.prune_querylog_before(cutoff)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::querylog::entry::{decrypt, DecryptFailure};
    use crate::querylog::settings::{disable, enable, Recipients};
    use crate::querylog::Verdict;
    use crate::store::Overlay;
    use age::x25519;

    fn overlay() -> Overlay {
        Overlay {
            v4: "100.96.0.0/16".parse().unwrap(),
            v6: "fd00:1:2::/48".parse().unwrap(),
        }
    }

    fn ev(client: &str, name: &str) -> QueryEvent {
        QueryEvent {
            time: SystemTime::now(),
            client: client.parse().unwrap(),
            name: name.into(),
            qtype: 1,
            verdict: Verdict::Forwarded,
            rcode: 0,
            upstream_ms: Some(12),
        }
    }

    fn rows(store: &Store) -> Vec<(i64, i64, Vec<u8>)> {
        store
            .querylog_page(0, 1000)
            .unwrap()
            .rows
            .into_iter()
            .map(|r| (r.seq, r.time, r.data))
            .collect()
    }

    fn ids(i: &x25519::Identity) -> Vec<Box<dyn age::Identity + Send + Sync>> {
        vec![Box::new(i.clone())]
    }

    fn cfg() -> QueryLogConfig {
        QueryLogConfig { retention_days: 7 }
    }

    #[test]
    fn handle_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<QueryLog>();
    }

    #[test]
    fn nothing_is_written_while_off() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _h) = QueryLog::start(dir.path(), &cfg()).unwrap();
        assert!(!log.is_enabled());

        log.record(ev("100.96.0.2", "off.example"));
        log.flush();

        let store = Store::open(dir.path()).unwrap();
        assert!(rows(&store).is_empty());
        assert_eq!(log.stats(), QueryLogStats::default());
    }

    #[test]
    fn entries_are_stored_encrypted_for_every_recipient_and_mapped_to_devices() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let laptop = store.add_device("laptop", "k1", false, &overlay()).unwrap();
        let (a, b) = (x25519::Identity::generate(), x25519::Identity::generate());
        enable(
            &store,
            &Recipients::parse(&[a.to_public().to_string(), b.to_public().to_string()]).unwrap(),
        )
        .unwrap();
        let (log, _h) = QueryLog::start(dir.path(), &cfg()).unwrap();
        assert!(log.is_enabled());

        log.record(ev(&laptop.ipv6.to_string(), "secret-name.example"));
        log.record(ev("127.0.0.1", "other.example"));
        log.flush();

        let rows = rows(&store);
        assert_eq!(rows.len(), 2);
        for key in [&a, &b] {
            let e = decrypt(&ids(key), &rows[0].2).unwrap();
            assert_eq!(e.device.as_deref(), Some("laptop"));
            assert_eq!(e.name, "secret-name.example");
            assert_eq!(e.upstream_ms, Some(12));
            assert_eq!(rows[0].1, e.time_ms / 1000);
            let e = decrypt(&ids(key), &rows[1].2).unwrap();
            assert_eq!(e.device, None);
        }
        assert_eq!(log.stats().written, 2);
    }

    #[test]
    fn hub_without_identity_cannot_decrypt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let owner = x25519::Identity::generate();
        enable(
            &store,
            &Recipients::parse(&[owner.to_public().to_string()]).unwrap(),
        )
        .unwrap();
        let (log, _h) = QueryLog::start(dir.path(), &cfg()).unwrap();
        log.record(ev("100.96.0.9", "hidden.example"));
        log.flush();

        // Whatever key the hub might make up, it is not the owner's.
        let hub_guess = x25519::Identity::generate();
        let rows = rows(&store);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            decrypt(&ids(&hub_guess), &rows[0].2),
            Err(DecryptFailure::NotForThisKey)
        );
        let all = std::fs::read_dir(dir.path()).unwrap();
        for f in all {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            assert!(!bytes.windows(14).any(|w| w == b"hidden.example"));
        }
    }

    #[test]
    fn no_log_device_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let quiet = store.add_device("quiet", "k1", false, &overlay()).unwrap();
        store.set_device("quiet", None, None, Some(true)).unwrap();
        let owner = x25519::Identity::generate();
        enable(
            &store,
            &Recipients::parse(&[owner.to_public().to_string()]).unwrap(),
        )
        .unwrap();
        let (log, _h) = QueryLog::start(dir.path(), &cfg()).unwrap();

        log.record(ev(&quiet.ipv4.to_string(), "x.example"));
        log.flush();

        assert!(rows(&store).is_empty());
    }

    #[test]
    fn disable_from_another_connection_stops_writing_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let owner = x25519::Identity::generate();
        enable(
            &store,
            &Recipients::parse(&[owner.to_public().to_string()]).unwrap(),
        )
        .unwrap();
        let (log, _h) = QueryLog::start(dir.path(), &cfg()).unwrap();
        log.record(ev("100.96.0.9", "before.example"));
        log.flush();
        assert_eq!(rows(&store).len(), 1);

        assert_eq!(disable(&store).unwrap(), 1);
        // The handle still believes it is on; the writer re-checks under the write lock.
        log.record(ev("100.96.0.9", "after.example"));
        log.flush();

        assert!(rows(&store).is_empty());
        assert!(!log.is_enabled());
        assert!(!log.reload().unwrap());
    }

    #[test]
    fn reload_applies_an_enable_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _h) = QueryLog::start(dir.path(), &cfg()).unwrap();
        assert!(!log.is_enabled());
        let cli = Store::open(dir.path()).unwrap();
        let owner = x25519::Identity::generate();
        enable(
            &cli,
            &Recipients::parse(&[owner.to_public().to_string()]).unwrap(),
        )
        .unwrap();

        let on = log.reload().unwrap();

        assert!(on);
        assert!(log.is_enabled());
        log.record(ev("100.96.0.9", "now-on.example"));
        log.flush();
        assert_eq!(rows(&cli).len(), 1);
    }

    #[test]
    fn set_devices_names_new_devices_and_skips_no_log_ones_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let owner = x25519::Identity::generate();
        enable(
            &store,
            &Recipients::parse(&[owner.to_public().to_string()]).unwrap(),
        )
        .unwrap();
        let (log, _h) = QueryLog::start(dir.path(), &cfg()).unwrap();
        let phone = store.add_device("phone", "k1", false, &overlay()).unwrap();
        let quiet = store.add_device("quiet", "k2", false, &overlay()).unwrap();
        store.set_device("quiet", None, None, Some(true)).unwrap();

        log.set_devices(&store.devices().unwrap());
        log.record(ev(&phone.ipv4.to_string(), "phone.example"));
        log.record(ev(&quiet.ipv4.to_string(), "quiet.example"));
        log.flush();

        let rows = rows(&store);
        assert_eq!(rows.len(), 1);
        let e = decrypt(&ids(&owner), &rows[0].2).unwrap();
        assert_eq!(e.device.as_deref(), Some("phone"));
        assert_eq!(e.name, "phone.example");
    }

    #[test]
    fn reload_and_set_devices_on_a_log_without_writer_do_nothing() {
        let log = QueryLog::disabled();

        log.set_devices(&[]);

        assert!(!log.reload().unwrap());
        assert!(!log.is_enabled());
    }

    #[test]
    fn retention_prunes_only_old_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let owner = x25519::Identity::generate();
        enable(
            &store,
            &Recipients::parse(&[owner.to_public().to_string()]).unwrap(),
        )
        .unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let day = 86_400;
        let times = [
            1_800_000_000 - 8 * day,
            1_800_000_000 - 6 * day,
            1_800_000_000,
        ];
        store
            .append_querylog(|_| {
                Ok::<_, QueryLogError>(times.iter().map(|t| (*t, vec![0])).collect())
            })
            .unwrap();

        let cutoff = prune_cutoff(now, 7).unwrap();
        let n = prune_before(&store, cutoff).unwrap();

        assert_eq!(n, 1);
        assert_eq!(rows(&store).len(), 2);
        assert_eq!(prune_cutoff(now, 0), None);
    }

    #[test]
    fn full_channel_drops_and_counts_without_blocking() {
        let shared = Arc::new(Shared {
            enabled: AtomicBool::new(true),
            retention_days: AtomicU32::new(7),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let (tx, _rx) = mpsc::sync_channel(2);
        let log = QueryLog {
            shared,
            tx: Some(tx),
        };
        for _ in 0..5 {
            log.record(ev("100.96.0.2", "x.example"));
        }
        assert_eq!(log.stats().dropped, 3);
    }
}
