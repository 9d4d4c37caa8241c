//! Keeps the running hub in step with the state database: devices added, removed or renamed
//! and `cloudpc internet on|off` take effect within [`POLL`], without a restart.
//!
//! A plain thread (SQLite is blocking) polls `PRAGMA data_version`, which changes whenever
//! another process commits; only then does it read the devices and the internet switch.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::engine::Engine;
use crate::egress::EgressSpec;
use crate::store::{Store, StoreError};

/// How often the database is checked for changes.
pub const POLL: Duration = Duration::from_millis(250);

/// Reads the devices and publishes a new table.
pub fn load_devices(
    store: &Store,
    engine: &Engine,
    next_index: &mut u32,
) -> Result<(), StoreError> {
    let devices = store.devices()?;
    let (t, skipped) = engine.table.load().rebuilt(&devices, next_index);
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "devices with an unusable public key are not served"
        );
    }
    tracing::debug!(devices = t.len(), "device table loaded");
    engine.set_table(t);
    Ok(())
}

/// `cloudpc internet on|off` (stored) overrides `egress.internet` (config).
pub fn internet_setting(store: &Store, config: bool) -> Result<bool, StoreError> {
    Ok(match store.meta("internet")?.as_deref() {
        Some("on") => true,
        Some("off") => false,
        _ => config,
    })
}

/// The polling thread; stopped by [`SyncThread::stop`].
#[derive(Default)]
pub struct SyncThread(Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>);

impl SyncThread {
    /// Starts polling `state_dir`'s database.
    pub fn spawn(
        state_dir: PathBuf,
        engine: Arc<Engine>,
        mut next_index: u32,
        mut spec: EgressSpec,
    ) -> SyncThread {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let h = std::thread::Builder::new()
            .name("hub-sync".into())
            .spawn(move || {
                let mut store = None;
                let mut seen = None;
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(POLL);
                    if store.is_none() {
                        store = Store::open(&state_dir)
                            .map_err(|e| tracing::warn!(error = %e, "state database"))
                            .ok();
                    }
                    let Some(s) = &store else { continue };
                    let Ok(v) = s.data_version() else {
                        store = None;
                        continue;
                    };
                    if seen == Some(v) {
                        continue;
                    }
                    seen = Some(v);
                    if let Err(e) = load_devices(s, &engine, &mut next_index) {
                        // The last good table keeps serving.
                        tracing::warn!(error = %e, "could not reload devices");
                    }
                    match internet_setting(s, spec.internet) {
                        Ok(on) if on != spec.internet => {
                            spec.internet = on;
                            match crate::egress::install(&spec) {
                                Ok(()) => tracing::info!(internet = on, "internet switched"),
                                Err(e) => tracing::error!(error = %e, "internet switch failed"),
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "could not read the internet switch"),
                    }
                }
            })
            .ok();
        SyncThread(h.map(|h| (stop, h)))
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        if let Some((flag, h)) = self.0.take() {
            flag.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
    }
}
