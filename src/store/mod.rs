//! The SQLite state: devices, hub settings (`meta`), block/allow rules added at run time, the
//! query log's tables (`querylog.rs`) and the list subscription tables (`lists.rs`).
//!
//! Every SQL statement of the program lives in this module, behind typed methods; nothing
//! else gets a connection.
//!
//! Every write is one transaction. A running `cloudpc run` notices commits made by other
//! processes (the CLI) through `PRAGMA data_version` (see [`Store::data_version`]).

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
    #[error("state database {path}: {cause} (if the file is corrupt, move it away and run `cloudpc init` again)")]
    Db {
        path: PathBuf,
        cause: rusqlite::Error,
    },
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
}

/// One registered device. The hub never stores a device private key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Device {
    pub name: String,
    /// WireGuard public key, base64.
    pub public_key: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// Split tunnel: only the overlay is routed through the hub.
    pub split: bool,
    /// Policy group (issue 4); `None` = default policy.
    pub group: Option<String>,
    /// May pull the encrypted query log.
    pub owner: bool,
    /// Never logged, even with the query log on.
    pub no_log: bool,
    /// Unix seconds.
    pub created_at: i64,
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
        let conn = Connection::open(&path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        conn.execute_batch(querylog::SCHEMA).map_err(db)?;
        conn.execute_batch(lists::SCHEMA).map_err(db)?;
        Ok(Store { conn, path })
    }

    fn db(&self, cause: rusqlite::Error) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            cause,
        }
    }

    /// Changes whenever another connection commits (cheap; poll it).
    pub fn data_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| self.db(e))
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

    /// Registers a device at the next free overlay addresses.
    pub fn add_device(
        &mut self,
        name: &str,
        public_key: &str,
        split: bool,
        overlay: &Overlay,
    ) -> Result<Device, StoreError> {
        let path = self.path.clone();
        let db = |cause| StoreError::Db {
            path: path.clone(),
            cause,
        };
        let tx = self.conn.transaction().map_err(db)?;
        let dup: Option<String> = tx
            .query_row("SELECT name FROM devices WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db)?;
        if dup.is_some() {
            return Err(StoreError::DuplicateName(name.to_string()));
        }
        let dup_key: Option<String> = tx
            .query_row(
                "SELECT name FROM devices WHERE public_key = ?1",
                [public_key],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        if let Some(other) = dup_key {
            return Err(StoreError::DuplicateKey(other));
        }
        let used: Vec<u32> = {
            let mut st = tx
                .prepare("SELECT addr_index FROM devices ORDER BY addr_index")
                .map_err(db)?;
            let rows = st.query_map([], |r| r.get::<_, u32>(0)).map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)?
        };
        // Index 0 is the network, 1 the hub; the last index of the IPv4 range is broadcast and
        // the one before it is the NAT64 pool address (`hub::nat64_pool_v4`).
        let max = (1u64 << (32 - overlay.v4.prefix_len())) - 3;
        let mut index = 2u32;
        for u in used {
            if u == index {
                index += 1;
            } else if u > index {
                break;
            }
        }
        if u64::from(index) > max {
            return Err(StoreError::Full(overlay.v4));
        }
        let (v4, v6) = overlay.addrs(index);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        tx.execute(
            "INSERT INTO devices(name, public_key, ipv4, ipv6, addr_index, split, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                name,
                public_key,
                v4.to_string(),
                v6.to_string(),
                index,
                split,
                now
            ],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(Device {
            name: name.to_string(),
            public_key: public_key.to_string(),
            ipv4: v4,
            ipv6: v6,
            split,
            group: None,
            owner: false,
            no_log: false,
            created_at: now,
        })
    }

    /// All devices, by name.
    pub fn devices(&self) -> Result<Vec<Device>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT name, public_key, ipv4, ipv6, split, grp, owner, no_log, created_at
                 FROM devices ORDER BY name",
            )
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([], |r| {
                let v4: String = r.get(2)?;
                let v6: String = r.get(3)?;
                Ok(Device {
                    name: r.get(0)?,
                    public_key: r.get(1)?,
                    ipv4: v4.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
                    ipv6: v6.parse().unwrap_or(Ipv6Addr::UNSPECIFIED),
                    split: r.get(4)?,
                    group: r.get(5)?,
                    owner: r.get(6)?,
                    no_log: r.get(7)?,
                    created_at: r.get(8)?,
                })
            })
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db(e))
    }

    /// One device by name.
    pub fn device(&self, name: &str) -> Result<Device, StoreError> {
        self.devices()?
            .into_iter()
            .find(|d| d.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| StoreError::NoDevice(name.to_string()))
    }

    /// Removes a device; its key is refused from then on.
    pub fn remove_device(&self, name: &str) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM devices WHERE name = ?1", [name])
            .map_err(|e| self.db(e))?;
        if n == 0 {
            return Err(StoreError::NoDevice(name.to_string()));
        }
        Ok(())
    }

    /// Renames a device, keeping its key and addresses.
    pub fn rename_device(&self, old: &str, new: &str) -> Result<(), StoreError> {
        if !old.eq_ignore_ascii_case(new) && self.device(new).is_ok() {
            return Err(StoreError::DuplicateName(new.to_string()));
        }
        let n = self
            .conn
            .execute(
                "UPDATE devices SET name = ?2 WHERE name = ?1",
                params![old, new],
            )
            .map_err(|e| self.db(e))?;
        if n == 0 {
            return Err(StoreError::NoDevice(old.to_string()));
        }
        Ok(())
    }

    /// Sets a device's group, owner and no-log flags (`None` leaves a field as it is).
    pub fn set_device(
        &self,
        name: &str,
        group: Option<Option<&str>>,
        owner: Option<bool>,
        no_log: Option<bool>,
    ) -> Result<(), StoreError> {
        let d = self.device(name)?;
        let grp = match group {
            Some(g) => g.map(str::to_string),
            None => d.group,
        };
        self.conn
            .execute(
                "UPDATE devices SET grp = ?2, owner = ?3, no_log = ?4 WHERE name = ?1",
                params![
                    d.name,
                    grp,
                    owner.unwrap_or(d.owner),
                    no_log.unwrap_or(d.no_log)
                ],
            )
            .map(|_| ())
            .map_err(|e| self.db(e))
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

impl RuleAction {
    fn as_str(self) -> &'static str {
        match self {
            RuleAction::Block => "block",
            RuleAction::Allow => "allow",
        }
    }
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
