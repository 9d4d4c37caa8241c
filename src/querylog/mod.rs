//! The opt-in query log, encrypted to the owner's age keys.
//!
//! Off by default. `cloudpc querylog enable --recipient age1...` stores the owner's X25519
//! recipients in the state database and turns it on; from then on every DNS query is turned into
//! a [`LogEntry`], serialised as JSON, padded, and encrypted with age to all recipients *before*
//! it reaches SQLite. The hub holds no identity that can decrypt: it can append to the history
//! but never read it back. `disable` deletes every stored entry in one transaction.
//!
//! How to drive it from the hub:
//! 1. [`QueryLog::start`] opens the state dir and spawns the writer thread. Keep the
//!    [`QueryLog`] (cheap to clone) in the DNS path and call [`QueryLog::record`] once per
//!    answered query. `record` never blocks: when the log is off it is one atomic load; when on,
//!    the event goes into a bounded channel and is dropped (and counted) if the channel is full.
//! 2. The writer reads the switch, recipients and devices at start and then only when told:
//!    after `enable`/`disable` ([`settings`], which work on the store with or without a
//!    writer) call [`QueryLog::reload`]; after a device change call [`QueryLog::set_devices`].
//!    Both return once the writer applied them. A `disable` stops writing even before the
//!    reload: every write transaction re-checks the switch under the write lock.
//! 3. [`serve_sync`] serves `GET /querylog?since=SEQ` on the hub's overlay addresses, port
//!    [`SYNC_PORT`], to devices marked owner; everyone else gets 403.
//! 4. `cloudpc querylog pull` ([`pull`]) fetches the new ciphertexts on an owner device, keeps a
//!    local copy and decrypts them with the device's age identity.
//!
//! ```no_run
//! # async fn hub(state_dir: &std::path::Path, cfg: &cloudpc::config::Config,
//! #              overlay: cloudpc::store::Overlay) -> anyhow::Result<()> {
//! use cloudpc::querylog::{serve_sync, QueryEvent, QueryLog, Verdict, SYNC_PORT};
//! let (log, _writer) = QueryLog::start(state_dir, &cfg.querylog)?;
//! let sync = serve_sync(
//!     vec![(overlay.hub_v4(), SYNC_PORT).into(), (overlay.hub_v6(), SYNC_PORT).into()],
//!     state_dir,
//!     overlay,
//! )
//! .await?;
//! // In the query path, per answered query:
//! if log.is_enabled() {
//!     log.record(QueryEvent {
//!         time: std::time::SystemTime::now(),
//!         client: "100.96.0.2".parse()?,
//!         name: "example.com".into(),
//!         qtype: 1,
//!         verdict: Verdict::Forwarded,
//!         rcode: 0,
//!         upstream_ms: Some(12),
//!     });
//! }
//! # drop(sync); Ok(()) }
//! ```
//!
//! What is stored in plaintext next to each ciphertext: a sequence number and the time in Unix
//! seconds (needed for retention pruning and paging). Device, client address, name, type,
//! verdict, answer code and latency are only inside the ciphertext, whose plaintext is padded to
//! a multiple of [`entry::PAD_TO`] bytes so its length says little about the name.

pub mod entry;
pub mod pull;
pub mod settings;
pub mod sync;
pub mod timefmt;
mod writer;

use std::net::IpAddr;
use std::time::SystemTime;

pub use entry::LogEntry;
pub use settings::{LogStatus, Recipients};
pub use sync::{serve_sync, SyncError, SyncServer, PAGE_MAX, SYNC_PORT};
pub use writer::{QueryLog, QueryLogStats, CHANNEL_CAPACITY};

use crate::store::StoreError;

/// What the resolver did with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Answered by an upstream resolver.
    Forwarded,
    /// Answered from the cache.
    Cached,
    /// Blocked by a list or rule.
    Blocked,
    /// Answered from local data (the `.mesh` zone, zone files).
    Local,
    /// Refused (rate limit, not allowed, malformed).
    Refused,
}

impl Verdict {
    /// Lowercase name, as in the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Forwarded => "forwarded",
            Verdict::Cached => "cached",
            Verdict::Blocked => "blocked",
            Verdict::Local => "local",
            Verdict::Refused => "refused",
        }
    }
}

/// One answered query, as the resolver hands it to [`QueryLog::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryEvent {
    /// When the query arrived.
    pub time: SystemTime,
    /// Source address of the query (an overlay address identifies the device).
    pub client: IpAddr,
    /// The query name, as asked.
    pub name: String,
    /// Query type (1 = A, 28 = AAAA, ...).
    pub qtype: u16,
    pub verdict: Verdict,
    /// Response code of the answer (0 = NOERROR, 3 = NXDOMAIN, ...).
    pub rcode: u16,
    /// Time the upstream took, when one was asked.
    pub upstream_ms: Option<u32>,
}

/// Why a query log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryLogError {
    /// The state database could not be opened or used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A `--recipient` is not an age X25519 public key.
    #[error("recipient {shown}: {reason}; expected an age public key like age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p (`age-keygen -y KEYFILE` prints it)")]
    InvalidRecipient {
        /// The offending string, shortened and with secrets hidden.
        shown: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `enable` was given no recipient.
    #[error(
        "at least one --recipient is needed: the log is only stored encrypted to the owner's keys"
    )]
    NoRecipients,
    /// The log is on but the stored recipient list is empty or unreadable.
    #[error("the query log is on but has no usable recipient; run `cloudpc querylog enable --recipient ...` again")]
    BadStoredRecipients,
    /// age refused to encrypt (should not happen with X25519 recipients).
    #[error("cannot encrypt a log entry: {0}")]
    Encrypt(String),
    /// The writer thread could not be started.
    #[error("cannot start the query log writer: {0}")]
    Spawn(std::io::Error),
    /// The writer thread has stopped, so the query log is off until the hub restarts.
    #[error("the query log writer has stopped; restart cloudpc to log again")]
    WriterStopped,
}
