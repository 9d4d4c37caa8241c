//! Links to other Cloud PCs (`cloudpc link`): what each side told the other when they were
//! linked, and the one-time codes that start a link (only a SHA-256 of each is kept).

use rusqlite::{params, OptionalExtension};

use super::{begin_write, unix_now, Store, StoreError};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS links (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    data TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS link_codes (
    hash BLOB PRIMARY KEY,
    name TEXT NOT NULL COLLATE NOCASE,
    expires_at INTEGER NOT NULL
);
";

/// A device the other Cloud PC exports to this one: its name and address there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Export {
    pub name: String,
    pub ipv4: std::net::Ipv4Addr,
}

/// One link, as this side keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Link {
    /// This side's name for the link (its devices are `DEVICE.NAME.<zone>` here).
    pub name: String,
    /// The other hub: where its HTTPS listener is (`https://HOST[:PORT]`) and the SHA-256 of
    /// its certificate when no public CA signed it.
    pub peer_https: String,
    #[serde(default)]
    pub peer_pin: Option<String>,
    /// Its WireGuard endpoint and public key (the hub's own).
    pub peer_endpoint: String,
    pub peer_hub_key: String,
    /// Its overlay (IPv4).
    pub peer_overlay: ipnet::Ipv4Net,
    /// The key pair this side dials the other with (the other side registered the public
    /// key as a device of the link) and the address it has there.
    pub dial_private: String,
    pub dial_address: std::net::Ipv4Addr,
    /// Where the other side's devices appear here (same size as `peer_overlay`).
    pub import_prefix: ipnet::Ipv4Net,
    /// The secret both sides authenticate their calls to each other with.
    pub secret: String,
    /// What the other side exports to this one.
    #[serde(default)]
    pub exports: Vec<Export>,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: i64,
}

impl Store {
    /// Every link, by name.
    pub fn links(&self) -> Result<Vec<Link>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT data FROM links ORDER BY name")
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        for r in rows {
            let text = r.map_err(|e| self.db(e))?;
            match serde_json::from_str(&text) {
                Ok(l) => out.push(l),
                Err(e) => tracing::warn!(error = %e, "a stored link does not read; skipped"),
            }
        }
        Ok(out)
    }

    /// Writes a link (new or changed).
    pub fn put_link(&self, l: &Link) -> Result<(), StoreError> {
        let data = serde_json::to_string(l).unwrap_or_default();
        self.conn
            .execute(
                "INSERT INTO links(name, data, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET data = excluded.data",
                params![l.name, data, unix_now()],
            )
            .map(|_| ())
            .map_err(|e| self.db(e))
    }

    /// Removes a link; false when there was none.
    pub fn remove_link(&self, name: &str) -> Result<bool, StoreError> {
        self.conn
            .execute("DELETE FROM links WHERE name = ?1", [name])
            .map(|n| n > 0)
            .map_err(|e| self.db(e))
    }

    /// Stores a one-time link code by its hash.
    pub fn add_link_code(
        &self,
        hash: &[u8; 32],
        name: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO link_codes(hash, name, expires_at) VALUES (?1, ?2, ?3)",
                params![&hash[..], name, expires_at],
            )
            .map(|_| ())
            .map_err(|e| self.db(e))
    }

    /// Takes a link code (once): the name it was made for, or `None` when it is unknown,
    /// used or expired.
    pub fn take_link_code(&self, hash: &[u8; 32], now: i64) -> Result<Option<String>, StoreError> {
        let path = self.path.clone();
        let db = |cause| StoreError::Db {
            path: path.clone(),
            cause,
        };
        let tx = begin_write(&self.conn).map_err(db)?;
        let row: Option<(String, i64)> = tx
            .query_row(
                "SELECT name, expires_at FROM link_codes WHERE hash = ?1",
                [&hash[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db)?;
        tx.execute("DELETE FROM link_codes WHERE hash = ?1", [&hash[..]])
            .map_err(db)?;
        tx.execute("DELETE FROM link_codes WHERE expires_at <= ?1", [now])
            .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(row.filter(|(_, exp)| now < *exp).map(|(n, _)| n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_code_is_taken_once_and_not_after_it_expired() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.add_link_code(&[1; 32], "bob", 100).unwrap();
        assert_eq!(
            s.take_link_code(&[1; 32], 10).unwrap().as_deref(),
            Some("bob")
        );
        assert_eq!(s.take_link_code(&[1; 32], 10).unwrap(), None);
        s.add_link_code(&[2; 32], "carol", 100).unwrap();
        assert_eq!(s.take_link_code(&[2; 32], 100).unwrap(), None);
    }
}
