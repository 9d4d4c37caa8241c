//! The egress in force while the hub runs: the nftables table and the temporary addresses,
//! changed under one lock, so that every change (internet on/off, a device's filter, a device
//! switched to `temporary`, a new address) is installed when the call returns. A clock task
//! ([`Egress::run_clock`]) rotates addresses and ends drains at the times
//! [`TempEgress::next_change`] names; nothing polls.

use std::sync::Arc;

use parking_lot::Mutex;
use rand::SeedableRng;

use super::host::{HostEgress, HostReport, TempSettings};
use super::temporary::{Lease, NotTemporary, TempEgress, Want};
use super::{EgressError, EgressSpec};

struct Inner {
    spec: EgressSpec,
    temp: TempEgress,
    host: HostEgress,
    report: HostReport,
    rng: rand::rngs::StdRng,
}

/// The egress in force (see the module docs).
pub struct Egress {
    inner: Mutex<Inner>,
    wake: tokio::sync::Notify,
}

/// Live temporary-address state for `status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EgressReport {
    #[serde(flatten)]
    pub host: HostReport,
    /// Devices holding temporary addresses now.
    pub devices: usize,
    /// Old addresses whose open connections may still finish.
    pub draining: usize,
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// The prefix whose unsolicited packets the table drops: only while an address of it is in
/// use (others are never answered for, or are blackholed), so that a hub whose devices do not
/// use temporary addresses forwards every packet past one rule less.
fn in_use_prefix(t: &TempEgress, prefix: Option<ipnet::Ipv6Net>) -> Option<ipnet::Ipv6Net> {
    prefix.filter(|_| !t.in_use6().is_empty())
}

/// How long a clock task sleeps for a change at Unix second `at` (none planned: an hour, or
/// until woken).
pub fn wait_until(at: Option<i64>) -> std::time::Duration {
    match at {
        Some(at) => {
            let ms = at.saturating_mul(1000) - jiff::Timestamp::now().as_millisecond();
            std::time::Duration::from_millis(ms.max(0) as u64)
        }
        None => std::time::Duration::from_secs(3600),
    }
}

impl Egress {
    /// Reads the host for temporary addresses, installs `spec` with `wanted` holding theirs.
    pub fn install(
        mut spec: EgressSpec,
        temp: &TempSettings,
        wanted: &[Want],
    ) -> Result<Egress, EgressError> {
        let (pool, report) = super::host::resolve(temp, spec.out.as_deref());
        // Said loudly only when a device wants a temporary address; `status` always has it.
        for p in &report.problems {
            if wanted.is_empty() {
                tracing::info!("temporary egress addresses: {p}");
            } else {
                tracing::warn!("temporary egress addresses: {p}");
            }
        }
        let prefix = report.ipv6_prefix.zip(report.ipv6_kind);
        let mut report = report;
        let mut host = HostEgress::new(spec.out.as_deref(), prefix);
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut t = TempEgress::new(pool.clone());
        t.set_wanted(wanted, now(), &mut rng);
        if let Err(e) = host.sync(&t.in_use6()) {
            // The host will not take the entries (no `ip`, read-only sysctls): IPv6 keeps the
            // hub's address, said at start and in `status`, rather than no hub at all.
            tracing::warn!("temporary egress addresses: {e}; IPv6 leaves with the hub's address");
            report
                .problems
                .push(format!("{e}: IPv6 leaves with the hub's address"));
            report.ipv6_prefix = None;
            report.ipv6_kind = None;
            host.remove();
            host = HostEgress::new(spec.out.as_deref(), None);
            t = TempEgress::new(super::temporary::Pool { v6: None, ..pool });
            t.set_wanted(wanted, now(), &mut rng);
        }
        spec.snat = t.snat_with_nat46();
        spec.cut = t.cut();
        spec.temp_prefix = in_use_prefix(&t, report.ipv6_prefix);
        spec.temp_pool4 = report.ipv4_pool.clone();
        if let Err(e) = super::install(&spec) {
            host.remove();
            return Err(e);
        }
        Ok(Egress {
            inner: Mutex::new(Inner {
                spec,
                temp: t,
                host,
                report,
                rng,
            }),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Changes the table with `f` and installs it when it differs.
    fn change(&self, f: impl FnOnce(&mut EgressSpec)) -> Result<bool, EgressError> {
        let mut i = self.inner.lock();
        let mut next = i.spec.clone();
        f(&mut next);
        if next == i.spec {
            return Ok(false);
        }
        super::install(&next)?;
        i.spec = next;
        Ok(true)
    }

    /// Switches internet egress through the hub on or off; returns whether it changed.
    pub fn set_internet(&self, on: bool) -> Result<bool, EgressError> {
        self.change(|s| s.internet = on)
    }

    /// The devices whose internet is off and those whose DNS goes to the hub.
    pub fn set_device_filters(
        &self,
        no_internet: Vec<std::net::IpAddr>,
        dns_redirect: Vec<std::net::IpAddr>,
    ) -> Result<(), EgressError> {
        self.change(|s| {
            s.no_internet = no_internet;
            s.dns_redirect = dns_redirect;
        })
        .map(|_| ())
    }

    /// Puts the temporary addresses in force after `f` changed them (`f` says whether it
    /// did): the host first (so that the first reply to a new address finds the hub), then
    /// the table. When either fails the addresses are put back as they were, so what `status`
    /// shows is what is installed.
    fn apply_temp<T>(&self, f: impl FnOnce(&mut Inner) -> (T, bool)) -> Result<T, EgressError> {
        let mut guard = self.inner.lock();
        let i = &mut *guard;
        let before = i.temp.clone();
        let (out, changed) = f(i);
        if !changed {
            return Ok(out);
        }
        let mut next = i.spec.clone();
        next.snat = i.temp.snat_with_nat46();
        next.cut = i.temp.cut();
        next.temp_prefix = in_use_prefix(&i.temp, i.report.ipv6_prefix);
        let installed = i
            .host
            .sync(&i.temp.in_use6())
            .map_err(EgressError::Host)
            .and_then(|()| {
                if next != i.spec {
                    super::install(&next)
                } else {
                    Ok(())
                }
            });
        if let Err(e) = installed {
            i.temp = before;
            let _ = i.host.sync(&i.temp.in_use6());
            return Err(e);
        }
        i.spec = next;
        drop(guard);
        self.wake.notify_one();
        Ok(out)
    }

    /// Makes exactly the devices of `wanted` hold temporary addresses (others drain theirs).
    pub fn set_temporary(&self, wanted: &[Want]) -> Result<(), EgressError> {
        self.apply_temp(|i| {
            let Inner { temp, rng, .. } = i;
            ((), temp.set_wanted(wanted, now(), rng))
        })
    }

    /// New addresses for the device with public key `key`, in force when this returns.
    pub fn renew(&self, key: &str) -> Result<Result<Lease, NotTemporary>, EgressError> {
        self.apply_temp(|i| {
            let Inner { temp, rng, .. } = i;
            let r = temp.renew(key, now(), rng);
            let changed = r.is_ok();
            (r, changed)
        })
    }

    /// Rotations and drains due now; returns whether anything changed.
    fn tick(&self) -> Result<bool, EgressError> {
        self.apply_temp(|i| {
            let Inner { temp, rng, .. } = i;
            let changed = temp.tick(now(), rng);
            (changed, changed)
        })
    }

    /// The lease of the device with public key `key`.
    pub fn lease(&self, key: &str) -> Option<Lease> {
        self.inner.lock().temp.lease(key).cloned()
    }

    /// What the host offers and how many addresses are held and draining.
    pub fn report(&self) -> EgressReport {
        let i = self.inner.lock();
        EgressReport {
            host: i.report.clone(),
            devices: i.temp.held(),
            draining: i.temp.draining(),
        }
    }

    /// Rotates addresses and ends drains when their time comes; runs until aborted. The
    /// change runs `ip` and `nft`, so off the async workers; a failed one is tried again after
    /// 30 s (the addresses stay as they were meanwhile).
    pub async fn run_clock(self: Arc<Self>) {
        loop {
            let wait = wait_until(self.inner.lock().temp.next_change());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    let me = self.clone();
                    match tokio::task::spawn_blocking(move || me.tick()).await {
                        Ok(Ok(true)) => tracing::debug!("temporary egress addresses rotated or drained"),
                        Ok(Ok(false)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "temporary egress addresses: the scheduled change failed; trying again in 30 s");
                            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                        }
                        Err(_) => return,
                    }
                }
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Removes the table and what was installed on the host (on exit).
    pub fn remove(&self) -> Result<(), EgressError> {
        self.inner.lock().host.remove();
        super::remove()
    }
}
