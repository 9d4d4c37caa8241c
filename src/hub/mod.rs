//! The WireGuard hub: boringtun sessions per device, routing device↔device, TUN for the hub's
//! own services and egress, NAT64, roaming. (Data plane being built: see the hub work item.)

pub mod keys;
pub mod nat64;
pub mod qr;
pub mod wgconfig;
