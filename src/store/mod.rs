//! The SQLite state: devices (`devices.rs`), hub settings (`meta`), block/allow rules added at run time,
//! each device's last endpoint, API tokens (`tokens.rs`), the query log's tables
//! (`querylog.rs`) and the list subscription tables (`lists.rs`).
//!
//! Every SQL statement of the program lives in this module, behind typed methods; nothing
//! else gets a connection.
//!
//! Every write is one transaction. While `cloudpc run` runs, the daemon is the only writer
//! (the CLI goes through its API); without a hub the CLI writes here directly.

mod admin;
mod devices;
mod dns_tokens;
mod endpoints;
mod firewall;
mod history;
mod links;
mod people;
mod tokens;

pub use admin::AdminSession;
pub use devices::{some_nullable_bool, Device, DevicePatch};
pub use endpoints::LastEndpoint;
pub use firewall::DeviceFirewall;
pub use history::Traffic;
pub use links::{Export, Link};
pub use people::{Invite, InviteRefusal, Person, Role, Share, ShareWith};
pub use tokens::ApiToken;

mod lists;
mod querylog;

pub use lists::{ListAttempt, ListCopy, ListRecord};
pub use querylog::{QueryLogAppend, QueryLogCounts, QueryLogMeta, QueryLogPage, QueryLogRow};

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use rusqlite::{params, Connection, OptionalExtension};

/// File name of the database inside the state dir.
pub const DB_FILE: &str = "state.db";

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory could not be created or used.
    #[error("cannot use state directory {path}: {cause}")]
    Dir {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// SQLite refused: corrupt file, full disk, locked database.
    #[error("state database {path}: {cause}{hint}", hint = db_hint(cause))]
    Db {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    /// The database file exists but is empty: truncated (a failed copy, `> state.db`), or its
    /// creation was cut short. Opening it would silently start a new, empty store.
    #[error(
        "state database {path} is empty (0 bytes): it was truncated or never finished. Restore it \
         from a backup, or move it away (`mv {path} {path}.empty`) to start a new store; devices \
         registered in it must then be added again"
    )]
    Empty { path: PathBuf },
    /// A device with that name already exists.
    #[error("a device named {0:?} already exists; pick another name or remove it first")]
    DuplicateName(String),
    /// The public key is already registered to another device.
    #[error("that public key is already registered to device {0:?}")]
    DuplicateKey(String),
    /// No such device.
    #[error("no device named {0:?}; `cloudpc device list` shows the registered ones")]
    NoDevice(String),
    /// The overlay range has no free address left.
    #[error("the overlay range {0} has no free address left; widen `wireguard.ipv4`")]
    Full(Ipv4Net),
    /// No API token with that id.
    #[error("no API token with id {0}; `cloudpc api token list` shows them")]
    NoToken(i64),
}

/// What to do about a SQLite error, for the message.
fn db_hint(cause: &rusqlite::Error) -> &'static str {
    use rusqlite::ErrorCode as C;
    match cause {
        rusqlite::Error::SqliteFailure(e, _) => match e.code {
            C::DiskFull => "",
            C::DatabaseBusy | C::DatabaseLocked => {
                " (another cloudpc command is writing it; try again)"
            }
            C::DatabaseCorrupt | C::NotADatabase => {
                " (the file is damaged: restore it from a backup, or move it away to start a new store; devices must then be added again)"
            }
            _ => "",
        },
        _ => "",
    }
}

impl StoreError {
    /// True when SQLite gave up because the disk (or its quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            StoreError::Db {
                cause: rusqlite::Error::SqliteFailure(e, _),
                ..
            } if e.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

/// A run-time block or allow rule (`cloudpc block|allow add`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum RuleAction {
    Block,
    Allow,
}

/// The overlay networks, hub addresses first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlay {
    pub v4: Ipv4Net,
    pub v6: Ipv6Net,
}

impl Overlay {
    /// The hub's own IPv4 overlay address: the first host of the range.
    pub fn hub_v4(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.v4.network()) + 1)
    }
    /// The hub's own IPv6 overlay address: `prefix::1`.
    pub fn hub_v6(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.v6.network()) + 1)
    }
    /// Address `index` of each family (index 1 = hub).
    pub fn addrs(&self, index: u32) -> (Ipv4Addr, Ipv6Addr) {
        (
            Ipv4Addr::from(u32::from(self.v4.network()) + index),
            Ipv6Addr::from(u128::from(self.v6.network()) + index as u128),
        )
    }
    /// Both networks as `IpNet`s.
    pub fn nets(&self) -> [ipnet::IpNet; 2] {
        [self.v4.into(), self.v6.into()]
    }
}

/// Handle to the state database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    public_key TEXT NOT NULL UNIQUE,
    ipv4 TEXT NOT NULL UNIQUE,
    ipv6 TEXT NOT NULL UNIQUE,
    addr_index INTEGER NOT NULL UNIQUE,
    split INTEGER NOT NULL DEFAULT 0,
    grp TEXT,
    owner INTEGER NOT NULL DEFAULT 0,
    no_log INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS device_endpoints (
    public_key TEXT PRIMARY KEY,
    addr TEXT NOT NULL,
    local TEXT,
    seen_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rules (
    domain TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('block', 'allow')),
    PRIMARY KEY (domain, action)
);
";

impl Store {
    /// Opens (creating if needed) the database in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|cause| StoreError::Dir {
            path: state_dir.to_path_buf(),
            cause,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700));
        }
        let path = state_dir.join(DB_FILE);
        let db = |cause| StoreError::Db {
            path: path.clone(),
            cause,
        };
        // SQLite takes an empty file for a new database and would write a fresh schema over
        // it: a truncated store would lose every device without a word.
        let existed = match std::fs::metadata(&path) {
            Ok(m) if m.len() == 0 => return Err(StoreError::Empty { path }),
            Ok(_) => true,
            Err(_) => false,
        };
        let conn = Connection::open(&path).map_err(db)?;
        let init = || -> rusqlite::Result<()> {
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")?;
            // One write transaction for the whole schema: CLI commands started together each
            // open the store, and a move between tables (create, copy, drop) run by two of
            // them at once would otherwise see the other's half-done steps.
            let tx = begin_write(&conn)?;
            conn.execute_batch(SCHEMA)?;
            conn.execute_batch(tokens::SCHEMA)?;
            conn.execute_batch(admin::SCHEMA)?;
            conn.execute_batch(firewall::SCHEMA)?;
            conn.execute_batch(dns_tokens::SCHEMA)?;
            conn.execute_batch(history::SCHEMA)?;
            conn.execute_batch(querylog::SCHEMA)?;
            conn.execute_batch(lists::SCHEMA)?;
            conn.execute_batch(people::SCHEMA)?;
            conn.execute_batch(links::SCHEMA)?;
            migrate(&conn)?;
            tx.commit()
        };
        if let Err(e) = init() {
            if !existed {
                // A first open that failed (full disk): leave no empty file to be refused
                // next time.
                drop(conn);
                remove_new_db(&path);
            }
            return Err(db(e));
        }
        Ok(Store { conn, path })
    }

    fn db(&self, cause: rusqlite::Error) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            cause,
        }
    }

    /// Reads a `meta` value.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.db(e))
    }

    /// Writes a `meta` value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(|e| self.db(e))
    }

    /// The overlay: IPv4 from config, IPv6 from config or the ULA /48 generated on first use.
    pub fn overlay(&self, cfg: &crate::config::WireguardConfig) -> Result<Overlay, StoreError> {
        let v6 = if let Ok(n) = cfg.ipv6.parse::<Ipv6Net>() {
            n
        } else if let Some(s) = self.meta("ula_prefix")? {
            s.parse().unwrap_or_else(|_| random_ula())
        } else {
            let n = random_ula();
            self.set_meta("ula_prefix", &n.to_string())?;
            n
        };
        Ok(Overlay {
            v4: cfg.ipv4.trunc(),
            v6: v6.trunc(),
        })
    }

    /// Adds a run-time rule (idempotent).
    pub fn add_rule(&self, domain: &str, action: RuleAction) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO rules(domain, action) VALUES (?1, ?2)",
                params![domain, action.as_str()],
            )
            .map(|_| ())
            .map_err(|e| self.db(e))
    }

    /// Removes a run-time rule; returns whether it existed.
    pub fn remove_rule(&self, domain: &str, action: RuleAction) -> Result<bool, StoreError> {
        self.conn
            .execute(
                "DELETE FROM rules WHERE domain = ?1 AND action = ?2",
                params![domain, action.as_str()],
            )
            .map(|n| n > 0)
            .map_err(|e| self.db(e))
    }

    /// All run-time rules.
    pub fn rules(&self) -> Result<Vec<(String, RuleAction)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT domain, action FROM rules ORDER BY domain")
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([], |r| {
                let a: String = r.get(1)?;
                Ok((
                    r.get::<_, String>(0)?,
                    if a == "allow" {
                        RuleAction::Allow
                    } else {
                        RuleAction::Block
                    },
                ))
            })
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db(e))
    }
}

/// Removes a database file this process just created and could not initialise, when it holds
/// nothing (with its WAL and shared-memory files).
fn remove_new_db(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        let _ = std::fs::remove_file(path);
        for ext in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(ext);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}

/// Columns added after the first release; a database made by an older cloudpc gets them.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_admin: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('devices') WHERE name = 'admin'")?
        .exists([])?;
    if !has_admin {
        conn.execute_batch("ALTER TABLE devices ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;")?;
    }
    people::migrate(conn)?;
    firewall::migrate(conn)
}

impl RuleAction {
    /// `block` or `allow`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Block => "block",
            RuleAction::Allow => "allow",
        }
    }
}

/// Begins a write transaction (IMMEDIATE: takes the write lock up front, so a read-then-write
/// cannot fail with a stale snapshot when another process wrote meanwhile; `busy_timeout`
/// covers waiting for the lock).
pub(crate) fn begin_write(conn: &Connection) -> Result<rusqlite::Transaction<'_>, rusqlite::Error> {
    rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A random RFC 4193 ULA /48 (`fd` + 40 random bits).
pub fn random_ula() -> Ipv6Net {
    let mut b = [0u8; 16];
    b[0] = 0xfd;
    let r: [u8; 5] = rand::random();
    b[1..6].copy_from_slice(&r);
    Ipv6Net::new(Ipv6Addr::from(b), 48).expect("48 is a valid prefix length")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay() -> Overlay {
        Overlay {
            v4: "100.96.0.0/16".parse().unwrap(),
            v6: "fd00:1:2::/48".parse().unwrap(),
        }
    }

    #[test]
    fn stores_opened_at_the_same_time_all_open() {
        // CLI commands started together each open (and bring up to date) the same database.
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path()).unwrap();
        let errors: Vec<String> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..25)
                            .filter_map(|_| Store::open(dir.path()).err().map(|e| e.to_string()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn an_empty_database_file_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(DB_FILE);
        std::fs::write(&db, b"").unwrap();

        let err = Store::open(dir.path())
            .err()
            .expect("an empty file must be refused");

        let msg = err.to_string();
        assert!(matches!(err, StoreError::Empty { .. }), "{err:?}");
        assert!(
            msg.contains(&db.display().to_string()) && msg.contains("backup"),
            "{msg}"
        );
        assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
        assert!(!dir.path().join("state.db-wal").exists());
    }

    #[test]
    fn a_new_database_is_created_where_none_was() {
        let dir = tempfile::tempdir().unwrap();

        let s = Store::open(dir.path()).unwrap();

        assert!(s.devices().unwrap().is_empty());
        assert!(std::fs::metadata(dir.path().join(DB_FILE)).unwrap().len() > 0);
    }

    #[test]
    fn devices_get_consecutive_addresses_and_reuse_freed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let a = s.add_device("a", "ka", false, &overlay()).unwrap();
        let b = s.add_device("b", "kb", false, &overlay()).unwrap();
        assert_eq!(a.ipv4, Ipv4Addr::new(100, 96, 0, 2));
        assert_eq!(b.ipv6, "fd00:1:2::3".parse::<Ipv6Addr>().unwrap());
        s.remove_device("a").unwrap();
        let c = s.add_device("c", "kc", false, &overlay()).unwrap();
        assert_eq!(c.ipv4, Ipv4Addr::new(100, 96, 0, 2));
    }

    #[test]
    fn duplicate_name_or_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.add_device("a", "ka", false, &overlay()).unwrap();
        assert!(matches!(
            s.add_device("A", "kz", false, &overlay()),
            Err(StoreError::DuplicateName(_))
        ));
        assert!(matches!(
            s.add_device("z", "ka", false, &overlay()),
            Err(StoreError::DuplicateKey(_))
        ));
    }

    #[test]
    fn ula_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let cfg = crate::config::WireguardConfig::default();
        let a = s.overlay(&cfg).unwrap();
        let b = s.overlay(&cfg).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.v6.prefix_len(), 48);
        assert_eq!(a.v6.network().octets()[0], 0xfd);
    }
}
