//! The control socket a running `cloudpc run` serves for `cloudpc status`: a Unix socket in
//! the state dir (mode 0600), one JSON request line in, one JSON answer line out.
//!
//! Only counts and device facts cross it; never a queried name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::dns::stats::StatsSnapshot;

/// What `cloudpc status` shows.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StatusReport {
    pub pid: u32,
    pub uptime_secs: u64,
    pub dns: StatsSnapshot,
    pub cache_entries: usize,
    pub filter_rules: usize,
    pub list_errors: usize,
    pub listen: Vec<String>,
    /// One JSON object per device (hub status plus per-device query and block counts).
    pub devices: Vec<serde_json::Value>,
}

/// Produces a fresh report on demand.
pub type Reporter = Arc<dyn Fn() -> StatusReport + Send + Sync>;

/// Why the control socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens: the hub is not running with this state dir.
    #[error("cloudpc is not running with state dir {dir} (no control socket at {sock}); start it with `cloudpc run`")]
    NotRunning { dir: PathBuf, sock: PathBuf },
    /// The socket could not be bound or talked to.
    #[error("control socket {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The answer was not understood.
    #[error("control socket answered something unreadable: {0}")]
    Protocol(String),
}

/// Serves the control socket until the process ends.
pub fn serve(state_dir: &Path, reporter: Reporter) -> Result<PathBuf, ControlError> {
    let path = crate::paths::control_socket(state_dir);
    let _ = std::fs::remove_file(&path);
    let io = |cause| ControlError::Io {
        path: path.clone(),
        cause,
    };
    let listener = UnixListener::bind(&path).map_err(io)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let rep = reporter.clone();
            tokio::spawn(async move {
                let (rd, mut wr) = conn.into_split();
                let mut line = String::new();
                let mut rd = BufReader::new(rd).take_bytes(4096);
                if rd.read_line(&mut line).await.is_err() {
                    return;
                }
                let answer = match line.trim() {
                    "status" => serde_json::to_string(&rep()).unwrap_or_default(),
                    _ => r#"{"error":"unknown request"}"#.to_string(),
                };
                let _ = wr.write_all(answer.as_bytes()).await;
                let _ = wr.write_all(b"\n").await;
            });
        }
    });
    Ok(path)
}

trait TakeBytes: Sized {
    fn take_bytes(self, n: u64) -> tokio::io::Take<Self>;
}
impl<R: tokio::io::AsyncRead> TakeBytes for BufReader<R> {
    fn take_bytes(self, n: u64) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, n)
    }
}

/// Asks a running hub for its status.
pub async fn request_status(state_dir: &Path) -> Result<StatusReport, ControlError> {
    let path = crate::paths::control_socket(state_dir);
    let conn = UnixStream::connect(&path)
        .await
        .map_err(|_| ControlError::NotRunning {
            dir: state_dir.to_path_buf(),
            sock: path.clone(),
        })?;
    let (rd, mut wr) = conn.into_split();
    let io = |cause| ControlError::Io {
        path: path.clone(),
        cause,
    };
    wr.write_all(b"status\n").await.map_err(io)?;
    let mut line = String::new();
    BufReader::new(rd).read_line(&mut line).await.map_err(io)?;
    serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string()))
}
