//! The admin page's login: the password's argon2 hash (in `meta`) and the sessions, of which
//! only a SHA-256 of each random token is kept (a stolen database gives no session back).

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS admin_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    agent TEXT NOT NULL
);
";

/// The `meta` key of the admin password's PHC string (argon2id).
const PASSWORD_KEY: &str = "admin_password";
/// The `meta` key of the secret that CSRF tokens are derived from.
const CSRF_KEY: &str = "admin_csrf_key";

/// One login session as listed (never its token).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AdminSession {
    pub id: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last request seen with it.
    pub last_seen: i64,
    /// The browser's User-Agent at login (cut to 120 characters), to tell sessions apart.
    pub agent: String,
}

impl Store {
    /// The admin password's PHC string, when one is set.
    pub fn admin_password(&self) -> Result<Option<String>, StoreError> {
        self.meta(PASSWORD_KEY)
    }

    /// Sets the admin password's PHC string and ends every session (a new password locks out
    /// whoever knew the old one).
    pub fn set_admin_password(&self, phc: &str) -> Result<(), StoreError> {
        let tx = super::begin_write(&self.conn).map_err(|e| self.db(e))?;
        tx.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![PASSWORD_KEY, phc],
        )
        .map_err(|e| self.db(e))?;
        tx.execute("DELETE FROM admin_sessions", [])
            .map_err(|e| self.db(e))?;
        tx.commit().map_err(|e| self.db(e))
    }

    /// The secret CSRF tokens are derived from, made on first use.
    pub fn admin_csrf_key(&self) -> Result<[u8; 32], StoreError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        if let Some(k) = self.meta(CSRF_KEY)? {
            if let Ok(v) = b64.decode(k) {
                if let Ok(k) = <[u8; 32]>::try_from(v.as_slice()) {
                    return Ok(k);
                }
            }
        }
        let k: [u8; 32] = rand::random();
        self.set_meta(CSRF_KEY, &b64.encode(k))?;
        Ok(k)
    }

    /// Stores a new session by the hash of its token.
    pub fn add_admin_session(&self, hash: &[u8; 32], agent: &str) -> Result<i64, StoreError> {
        let now = super::unix_now();
        let agent: String = agent.chars().take(120).collect();
        self.conn
            .execute(
                "INSERT INTO admin_sessions(hash, created_at, last_seen, agent)
                 VALUES (?1, ?2, ?2, ?3)",
                params![&hash[..], now, agent],
            )
            .map_err(|e| self.db(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The session whose token hashes to `hash`, if it exists and was used within
    /// `idle_secs`; marks it used now.
    pub fn use_admin_session(
        &self,
        hash: &[u8; 32],
        idle_secs: i64,
    ) -> Result<Option<AdminSession>, StoreError> {
        let now = super::unix_now();
        let s = self
            .conn
            .query_row(
                "SELECT id, created_at, last_seen, agent FROM admin_sessions WHERE hash = ?1",
                [&hash[..]],
                |r| {
                    Ok(AdminSession {
                        id: r.get(0)?,
                        created_at: r.get(1)?,
                        last_seen: r.get(2)?,
                        agent: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.db(e))?;
        let Some(mut s) = s else { return Ok(None) };
        if now - s.last_seen > idle_secs {
            self.revoke_admin_session(s.id)?;
            return Ok(None);
        }
        // Written at most once a minute: a page load is not a database write.
        if now - s.last_seen >= 60 {
            self.conn
                .execute(
                    "UPDATE admin_sessions SET last_seen = ?2 WHERE id = ?1",
                    params![s.id, now],
                )
                .map_err(|e| self.db(e))?;
            s.last_seen = now;
        }
        Ok(Some(s))
    }

    /// Every session, oldest first.
    pub fn admin_sessions(&self) -> Result<Vec<AdminSession>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT id, created_at, last_seen, agent FROM admin_sessions ORDER BY id")
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(AdminSession {
                    id: r.get(0)?,
                    created_at: r.get(1)?,
                    last_seen: r.get(2)?,
                    agent: r.get(3)?,
                })
            })
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db(e))
    }

    /// Ends session `id`; false when there is none.
    pub fn revoke_admin_session(&self, id: i64) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM admin_sessions WHERE id = ?1", [id])
            .map_err(|e| self.db(e))?;
        Ok(n > 0)
    }
}
