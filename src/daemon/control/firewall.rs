//! Putting the devices' firewalls and egress modes in force, and reading them back: the plan
//! from `daemon::firewall` applied to the hub, the resolver and the egress table; a device's
//! firewall and egress views; its temporary addresses renewed on demand.

use super::{bad, internal, Control};
use crate::api::{ApiError, EgressView, FirewallView};
use crate::daemon::firewall as fwplan;
use crate::firewall::FirewallPatch;
use crate::store::{Device, Store};

impl Control {
    /// Puts every device's firewall in force (the hub's data path, the resolver's checks and
    /// the egress filter) as the store, the groups and the clock say now.
    pub(super) fn apply_firewall(&self, store: &Store, devices: &[Device]) -> Result<(), ApiError> {
        let Some(e) = &self.engines else {
            return Ok(());
        };
        let stored = store.device_firewalls()?;
        let now = self.fw.now();
        let (people, shares) = (store.people()?, store.shares()?);
        let sharing = fwplan::Sharing {
            people: &people,
            shares: &shares,
            zone: &self.enroll.zone,
        };
        let plan = fwplan::plan(
            &self.fw,
            devices,
            &stored,
            &sharing,
            &e.firewall.current(),
            &now,
        );
        if let Some(hub) = &e.hub {
            hub.set_device_egress(plan.no_internet.clone(), plan.dns_redirect.clone())
                .map_err(|e| internal(format!("cannot apply the device firewall: {e}")))?;
        }
        e.firewall.publish(plan.devices);
        if let Some(hub) = &e.hub {
            hub.set_discovery(plan.discovery);
            if let Some(n) = hub.nat46() {
                n.set_devices(&plan.dns46);
            }
        }
        *self.fw_next.lock() = plan.next_change;
        self.fw_wake.notify_one();
        // Last, so that a host that will not take temporary addresses holds up no other
        // change; it fails only when a device's egress changes (and then nothing of it).
        if let Some(hub) = &e.hub {
            hub.egress()
                .set_temporary(&plan.temporary)
                .map_err(|e| internal(format!("cannot apply the egress modes: {e}")))?;
        }
        Ok(())
    }

    /// Puts the firewall in force again (a timer ended or a schedule window turned); returns
    /// when it next changes by itself (Unix seconds).
    pub fn reapply_firewall(&self) -> Option<i64> {
        let store = self.store.lock();
        match store.devices() {
            Ok(devices) => {
                if let Err(e) = self.apply_firewall(&store, &devices) {
                    tracing::warn!(error = %e, "the firewall's scheduled change failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "the firewall's scheduled change failed"),
        }
        *self.fw_next.lock()
    }

    /// When the firewall next changes by itself (Unix seconds).
    pub fn firewall_next_change(&self) -> Option<i64> {
        *self.fw_next.lock()
    }

    /// A device's firewall as it stands.
    pub(super) fn firewall_view(
        &self,
        d: &Device,
        stored: Option<&crate::store::DeviceFirewall>,
    ) -> FirewallView {
        let now = self.fw.now();
        let eff = self.fw.effective(d, stored, &now);
        let dropped = self
            .engines
            .as_ref()
            .and_then(|e| e.firewall.device(d.ipv4.into()))
            .map_or(0, |fw| fw.dropped());
        FirewallView {
            device: d.name.clone(),
            group: d.group.clone(),
            settings: stored.map(|s| s.spec.clone()).unwrap_or_default(),
            timer: stored
                .and_then(|s| s.timer)
                .filter(|t| t.until > now.timestamp().as_second()),
            effective: eff,
            dropped,
            egress: fwplan::egress_mode(&self.fw, d, stored),
        }
    }

    /// A device's egress as it stands (`store` locked by the caller).
    pub(super) fn egress_view(&self, store: &Store, d: &Device) -> Result<EgressView, ApiError> {
        let stored = store.device_firewalls()?;
        let mode = fwplan::egress_mode(&self.fw, d, stored.get(&d.public_key));
        let lease = self
            .engines
            .as_ref()
            .and_then(|e| e.hub.as_ref())
            .and_then(|h| h.egress().lease(&d.public_key));
        Ok(EgressView {
            device: d.name.clone(),
            mode,
            lease,
        })
    }

    /// Changes a device's own firewall settings; in force when this returns.
    pub(super) fn change_device_firewall(
        &self,
        name: &str,
        patch: &FirewallPatch,
    ) -> Result<FirewallView, ApiError> {
        if patch.is_empty() {
            return Err(bad("nothing to change"));
        }
        let store = self.store.lock();
        let devices = store.devices()?;
        let Some(d) = devices.iter().find(|d| d.name == name) else {
            return Err(ApiError::NotFound(format!(
                "no device {name:?}; see `cloudpc device list`"
            )));
        };
        let before = store
            .device_firewalls()?
            .remove(&d.public_key)
            .unwrap_or_default();
        let now = jiff::Timestamp::now().as_second();
        let (spec, timer) =
            crate::firewall::spec::apply_patch(&before.spec, patch, now).map_err(bad)?;
        fwplan::check_reach(&spec, &devices, &self.fw.groups).map_err(bad)?;
        let next = crate::store::DeviceFirewall {
            spec,
            timer: timer.unwrap_or(before.timer.filter(|t| t.until > now)),
        };
        store.set_device_firewall(&d.public_key, &next)?;
        if let Err(e) = self.apply_firewall(&store, &devices) {
            let _ = store.set_device_firewall(&d.public_key, &before);
            let _ = self.apply_firewall(&store, &devices);
            return Err(e);
        }
        Ok(self.firewall_view(d, Some(&next)))
    }

    /// Names of the devices whose internet is off now (their own switch, a timer or a
    /// schedule).
    pub fn internet_off_devices(&self) -> Result<Vec<String>, ApiError> {
        let store = self.store.lock();
        let stored = store.device_firewalls()?;
        let now = self.fw.now();
        Ok(store
            .devices()?
            .into_iter()
            .filter(|d| {
                self.fw
                    .effective(d, stored.get(&d.public_key), &now)
                    .internet
                    == crate::firewall::InternetMode::Off
            })
            .map(|d| d.name)
            .collect())
    }

    /// New temporary addresses for a device now (the old ones drain); in force on return.
    pub(super) fn renew_egress_address(&self, name: &str) -> Result<EgressView, ApiError> {
        let store = self.store.lock();
        let d = store.device(name)?;
        let view = self.egress_view(&store, &d)?;
        if view.mode != crate::egress::EgressMode::Temporary {
            return Err(bad(format!(
                "{name:?} leaves with the hub's address (egress hub); give it its own first: cloudpc device set {name} --egress temporary"
            )));
        }
        let Some(hub) = self.engines.as_ref().and_then(|e| e.hub.as_ref()) else {
            return Err(ApiError::NotRunning(
                "no hub runs: a device gets fresh temporary addresses whenever the hub starts"
                    .into(),
            ));
        };
        let lease = hub
            .egress()
            .renew(&d.public_key)
            .map_err(|e| internal(format!("cannot apply the new address: {e}")))?
            .map_err(|_| internal("the device holds no temporary address"))?;
        tracing::debug!(device = %d.name, ipv6 = ?lease.ipv6, ipv4 = ?lease.ipv4, "new temporary egress address");
        Ok(EgressView {
            lease: Some(lease),
            ..view
        })
    }
}
