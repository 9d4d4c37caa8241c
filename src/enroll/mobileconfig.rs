//! Apple DNS settings profiles (`.mobileconfig`): a device's DoH URL as one
//! `com.apple.dnsSettings.managed` payload, which iOS, iPadOS and macOS install from Settings
//! (Files → the profile → Install). The identifiers derive from the device name and token, so
//! installing a newer profile of the same device replaces the old one.

use serde::Serialize;

/// Apple's payload type of DNS settings.
pub const DNS_PAYLOAD: &str = "com.apple.dnsSettings.managed";

#[derive(Serialize)]
struct DnsSettings<'a> {
    #[serde(rename = "DNSProtocol")]
    protocol: &'static str,
    #[serde(rename = "ServerURL")]
    server_url: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DnsPayload<'a> {
    #[serde(rename = "DNSSettings")]
    dns_settings: DnsSettings<'a>,
    payload_display_name: String,
    payload_identifier: String,
    payload_type: &'static str,
    #[serde(rename = "PayloadUUID")]
    payload_uuid: String,
    payload_version: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Profile<'a> {
    payload_content: Vec<DnsPayload<'a>>,
    payload_description: String,
    payload_display_name: String,
    payload_identifier: String,
    payload_removal_disallowed: bool,
    payload_type: &'static str,
    #[serde(rename = "PayloadUUID")]
    payload_uuid: String,
    payload_version: u32,
}

/// A UUID (version 4 form) made from `seed`.
fn uuid_of(seed: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    uuid::Builder::from_random_bytes(b)
        .into_uuid()
        .hyphenated()
        .to_string()
        .to_uppercase()
}

/// The profile (XML property list) that sets `doh_url` as the DNS server of the device
/// `device` of the Cloud PC at `host`.
pub fn dns_profile(device: &str, host: &str, doh_url: &str) -> Result<Vec<u8>, plist::Error> {
    let id = format!("cloudpc.{host}.{device}.dns");
    let profile = Profile {
        payload_content: vec![DnsPayload {
            dns_settings: DnsSettings {
                protocol: "HTTPS",
                server_url: doh_url,
            },
            payload_display_name: format!("Cloud PC DNS ({host})"),
            payload_identifier: format!("{id}.settings"),
            payload_type: DNS_PAYLOAD,
            payload_uuid: uuid_of(&format!("{doh_url} settings")),
            payload_version: 1,
        }],
        payload_description: format!(
            "Filtered DNS from your Cloud PC {host} for {device}, encrypted (DNS-over-HTTPS), also when the VPN is off."
        ),
        payload_display_name: format!("Cloud PC DNS for {device}"),
        payload_identifier: id,
        payload_removal_disallowed: false,
        payload_type: "Configuration",
        payload_uuid: uuid_of(doh_url),
        payload_version: 1,
    };
    let mut out = Vec::new();
    plist::to_writer_xml(&mut out, &profile)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_is_a_plist_with_the_doh_url() {
        let url = "https://hub.example/dns-query/abcdefghijklmnopqrst";
        let xml = dns_profile("phone", "hub.example", url).unwrap();
        let v: plist::Value = plist::from_bytes(&xml).unwrap();
        let d = v.as_dictionary().unwrap();
        assert_eq!(d["PayloadType"].as_string(), Some("Configuration"));
        let content = d["PayloadContent"].as_array().unwrap();
        let p = content[0].as_dictionary().unwrap();
        assert_eq!(p["PayloadType"].as_string(), Some(DNS_PAYLOAD));
        let dns = p["DNSSettings"].as_dictionary().unwrap();
        assert_eq!(dns["DNSProtocol"].as_string(), Some("HTTPS"));
        assert_eq!(dns["ServerURL"].as_string(), Some(url));
        assert_ne!(d["PayloadUUID"], p["PayloadUUID"]);
        assert_eq!(
            xml,
            dns_profile("phone", "hub.example", url).unwrap(),
            "stable"
        );
    }
}
