//! What the engines are built from, read off the store: the internet switch in force, the
//! resolver's local names (devices, zone files, linked Cloud PCs' devices) and the devices'
//! DNS tokens and DoT names.

use crate::api::ApiError;
use crate::dns::local::{read_zone_files, LocalData};
use crate::store::{Device, Overlay, Store};

/// `cloudpc internet on|off` (stored) overrides `egress.internet` (config).
pub fn internet_setting(store: &Store, config: bool) -> Result<bool, ApiError> {
    Ok(match store.meta("internet")?.as_deref() {
        Some("on") => true,
        Some("off") => false,
        _ => config,
    })
}

/// The resolver's local names: the devices under the zone, plus the zone files.
pub fn local_data(
    zone: &str,
    zones_dir: &std::path::Path,
    devices: &[Device],
    overlay: &Overlay,
    links: &[crate::store::Link],
) -> LocalData {
    let (mut files, mut errors) = read_zone_files(zones_dir);
    files.extend(crate::link::zone_texts(links));
    let (data, errs) = LocalData::build(zone, devices, Some(overlay), &files);
    errors.extend(errs);
    for e in errors {
        // The parse error may quote a name from the owner's zone: details at debug only.
        tracing::warn!("zone data skipped (CLOUDPC_LOG=debug shows where and why)");
        tracing::debug!(error = %e, "zone data skipped");
    }
    data
}

/// Token → device address, for the TLS listeners (`tokens` by public key, from the store).
pub fn dns_token_map(
    tokens: &std::collections::HashMap<String, String>,
    devices: &[Device],
) -> std::collections::HashMap<String, std::net::IpAddr> {
    devices
        .iter()
        .filter_map(|d| Some((tokens.get(&d.public_key)?.clone(), d.ipv4.into())))
        .collect()
}

/// The devices' DoT names (`<token>.domain`), in registration order.
pub fn dns_names(
    domain: &str,
    tokens: &std::collections::HashMap<String, String>,
    devices: &[Device],
) -> Vec<String> {
    if domain.is_empty() {
        return vec![];
    }
    let mut ds: Vec<&Device> = devices.iter().collect();
    ds.sort_by_key(|d| d.created_at);
    ds.iter()
        .filter_map(|d| Some(format!("{}.{domain}", tokens.get(&d.public_key)?)))
        .collect()
}
