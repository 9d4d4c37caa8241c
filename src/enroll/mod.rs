//! Device enrolment: device keys, the wg-quick text the stock WireGuard apps import, and its
//! QR code.
//!
//! Drive it with [`EnrollSettings`] (read once from the config and the hub's key) and
//! [`new_device_key`] / [`EnrollSettings::device_config`]. The hub never stores a device's
//! private key: when it makes one, the key lives only in the returned text.

pub mod keys;
pub mod mobileconfig;
pub mod qr;
pub mod wgconfig;

use crate::store::{Device, Overlay};
use keys::KeyPair;

/// Why a device could not be enrolled.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// `wireguard.endpoint` is not usable.
    #[error(transparent)]
    Endpoint(#[from] wgconfig::EndpointError),
    /// A given public key is not a WireGuard key.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
}

/// What every device config carries about the hub.
#[derive(Debug, Clone)]
pub struct EnrollSettings {
    /// `wireguard.endpoint` as written: `HOST[:PORT]`, checked when a config is made.
    pub endpoint: String,
    /// The port an endpoint without one gets.
    pub listen_port: u16,
    pub hub_public_key: String,
    pub overlay: Overlay,
    /// The local zone, the DNS search domain of every device.
    pub zone: String,
    pub mtu: u16,
}

/// A device's key: the one it brought (`Some(pubkey)`), or a pair made here.
pub struct DeviceKey {
    /// Public key, canonical base64.
    pub public: String,
    /// The private key when the hub made the pair; shown once and never stored.
    pub made: Option<KeyPair>,
}

/// Checks `pubkey` or makes a fresh key pair.
pub fn new_device_key(pubkey: Option<&str>) -> Result<DeviceKey, EnrollError> {
    match pubkey {
        Some(k) => {
            use base64::Engine;
            let raw = keys::decode_key(k, "the public key")?;
            Ok(DeviceKey {
                public: base64::engine::general_purpose::STANDARD.encode(raw),
                made: None,
            })
        }
        None => {
            let kp = KeyPair::generate();
            Ok(DeviceKey {
                public: kp.public_b64(),
                made: Some(kp),
            })
        }
    }
}

impl EnrollSettings {
    /// The settings for a hub with `endpoint` (`HOST[:PORT]`, port defaulting to
    /// `listen_port`).
    pub fn new(
        endpoint: &str,
        listen_port: u16,
        hub_public_key: String,
        overlay: Overlay,
        zone: &str,
        mtu: u16,
    ) -> EnrollSettings {
        EnrollSettings {
            endpoint: endpoint.to_string(),
            listen_port,
            hub_public_key,
            overlay,
            zone: zone.to_string(),
            mtu,
        }
    }

    /// Refuses an endpoint that device configs cannot dial (run before registering).
    pub fn check(&self) -> Result<String, EnrollError> {
        Ok(wgconfig::endpoint_with_port(
            &self.endpoint,
            self.listen_port,
        )?)
    }

    /// The wg-quick text for `d` (with `PrivateKey` when the hub made the key).
    pub fn device_config(
        &self,
        d: &Device,
        private: Option<&KeyPair>,
    ) -> Result<String, EnrollError> {
        let endpoint = self.check()?;
        let private = private.map(KeyPair::private_b64);
        Ok(wgconfig::DeviceConfig {
            private_key: private.as_deref(),
            device_v4: d.ipv4,
            device_v6: d.ipv6,
            overlay: self.overlay,
            search_domain: &self.zone,
            mtu: self.mtu,
            hub_public_key: &self.hub_public_key,
            endpoint: &endpoint,
            split: d.split,
        }
        .render())
    }
}
