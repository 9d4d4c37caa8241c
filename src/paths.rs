//! Where state lives: the state dir (SQLite, keys, TLS material, list cache, control socket).

use std::path::{Path, PathBuf};

/// The default state dir: `/var/lib/cloudpc` for root, else `$XDG_STATE_HOME/cloudpc`
/// (or `~/.local/state/cloudpc`).
pub fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/cloudpc");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME") {
        return Path::new(&x).join("cloudpc");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return Path::new(&h).join(".local/state/cloudpc");
    }
    PathBuf::from(".cloudpc-state")
}

/// The management API socket (docs/API.md) that the CLI talks to while the hub runs.
pub fn api_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("api.sock")
}
