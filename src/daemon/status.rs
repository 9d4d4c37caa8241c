//! `GET /v1/status`: live counters of the resolver and the hub, per device. Counts only; never
//! a queried name.

use crate::api::StatusReport;
use crate::dns::stats::Stats;
use crate::store::Device;

use super::control::Engines;

/// The report for `devices` as the engines see them now.
pub fn report(e: &Engines, devices: &[Device]) -> StatusReport {
    let hub = e.hub.as_ref().map(|h| h.status()).unwrap_or_default();
    StatusReport {
        pid: std::process::id(),
        uptime_secs: e.started.elapsed().as_secs(),
        dns: e.resolver.stats.snapshot(),
        cache_entries: e.resolver.cache_len(),
        filter_rules: e.resolver.policy.lists.load().len() + e.resolver.policy.rules.load().len(),
        list_errors: e.list_errors.load(std::sync::atomic::Ordering::Relaxed),
        listen: e.listen.clone(),
        devices: device_report(devices, &e.resolver.stats, &hub, e.hub.as_deref()),
        tls: Some(e.certs.status()),
        egress: e.hub.as_ref().map(|h| h.egress().report()),
        nat46: e.hub.as_ref().and_then(|h| h.nat46()).map(|n| n.stats()),
    }
}

fn device_report(
    devices: &[Device],
    stats: &Stats,
    hub: &[crate::hub::DeviceStatus],
    handle: Option<&crate::hub::HubHandle>,
) -> Vec<serde_json::Value> {
    devices
        .iter()
        .map(|d| {
            let c4 = stats.client(d.ipv4.into());
            let c6 = stats.client(d.ipv6.into());
            let mut v = hub
                .iter()
                .find(|h| h.name == d.name)
                .and_then(|h| serde_json::to_value(h).ok())
                .unwrap_or_else(|| serde_json::json!({}));
            if let Some(o) = v.as_object_mut() {
                o.insert("name".into(), d.name.clone().into());
                o.insert("ipv4".into(), d.ipv4.to_string().into());
                o.insert("ipv6".into(), d.ipv6.to_string().into());
                o.insert("queries".into(), (c4.queries + c6.queries).into());
                o.insert("blocked".into(), (c4.blocked + c6.blocked).into());
                // The live temporary addresses (memory only); a device holds a lease exactly
                // when it is in `temporary` mode.
                let lease = handle.and_then(|h| h.egress().lease(&d.public_key));
                let mut eg =
                    serde_json::json!({"mode": if lease.is_some() { "temporary" } else { "hub" }});
                if let (Some(l), Some(m)) = (lease, eg.as_object_mut()) {
                    if let Ok(serde_json::Value::Object(lo)) = serde_json::to_value(l) {
                        m.extend(lo);
                    }
                }
                o.insert("egress".into(), eg);
            }
            v
        })
        .collect()
}
