//! The WireGuard hub. (Being built: see the hub work item.)
