//! The WireGuard hub: boringtun sessions per device, routing device↔device, TUN for the hub's
//! own services and egress, NAT64, roaming. (Data plane being built: see the hub work item.)

pub mod keys;
pub mod nat64;
pub mod qr;
pub mod wgconfig;

/// What the hub needs to start.
pub struct HubParams {
    pub cfg: crate::config::Config,
    pub state_dir: std::path::PathBuf,
    pub overlay: crate::store::Overlay,
}

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The data plane is not part of this build.
    #[error("the WireGuard hub is not available in this build; set `[wireguard] enabled = false` to run the resolver alone")]
    Unavailable,
}

/// Per-device live status.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceStatus {
    pub name: String,
}

/// A running hub.
pub struct HubHandle;

impl HubHandle {
    /// Live per-device status.
    pub fn status(&self) -> Vec<DeviceStatus> {
        vec![]
    }
    /// Stops the hub and removes what it installed.
    pub async fn shutdown(self) {}
}

/// Starts the hub.
pub async fn start(_p: HubParams) -> Result<HubHandle, HubError> {
    Err(HubError::Unavailable)
}
