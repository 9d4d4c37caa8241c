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

/// The lock `cloudpc run` holds (exclusive) for as long as it runs, and a CLI command that
/// writes the store directly holds shared; see [`RunLock`].
pub fn run_lock(state_dir: &Path) -> PathBuf {
    state_dir.join("run.lock")
}

/// An `flock` on [`run_lock`], released on drop. It closes the gap between a hub's start
/// (which reads the store) and its API socket answering: a CLI command in that gap would
/// otherwise write the store behind the starting hub's back, and the change would not be in
/// force until the next start.
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock without waiting: exclusive for the hub, shared for CLI commands.
    /// `Ok(None)` when it is held the other way.
    pub fn try_take(state_dir: &Path, exclusive: bool) -> std::io::Result<Option<RunLock>> {
        use std::os::fd::AsRawFd;
        std::fs::create_dir_all(state_dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(run_lock(state_dir))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(Some(RunLock { _file: file }));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        Err(e)
    }
}
