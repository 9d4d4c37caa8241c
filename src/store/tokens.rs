//! API tokens for the management API's TCP listener: only a SHA-256 of each token is kept.
//!
//! A token is 32 random bytes, so a plain hash is enough (no password stretching needed): it
//! cannot be guessed, and the stored hash does not give it back.

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
";

/// One token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiToken {
    pub id: i64,
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
}

impl Store {
    /// Stores the hash of a new token; returns its listing.
    pub fn add_token(&self, name: &str, hash: &[u8; 32]) -> Result<ApiToken, StoreError> {
        let now = super::unix_now();
        self.conn
            .execute(
                "INSERT INTO api_tokens(name, hash, created_at) VALUES (?1, ?2, ?3)",
                params![name, &hash[..], now],
            )
            .map_err(|e| self.db(e))?;
        Ok(ApiToken {
            id: self.conn.last_insert_rowid(),
            name: name.to_string(),
            created_at: now,
        })
    }

    /// Every token, oldest first.
    pub fn tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT id, name, created_at FROM api_tokens ORDER BY id")
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(ApiToken {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_at: r.get(2)?,
                })
            })
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db(e))
    }

    /// The token whose hash this is, if any.
    pub fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiToken>, StoreError> {
        self.conn
            .query_row(
                "SELECT id, name, created_at FROM api_tokens WHERE hash = ?1",
                [&hash[..]],
                |r| {
                    Ok(ApiToken {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        created_at: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.db(e))
    }

    /// Deletes a token; it is refused from then on.
    pub fn revoke_token(&self, id: i64) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM api_tokens WHERE id = ?1", [id])
            .map_err(|e| self.db(e))?;
        if n == 0 {
            return Err(StoreError::NoToken(id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_by_hash_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let t = s.add_token("ci", &[7; 32]).unwrap();
        assert_eq!(s.token_by_hash(&[7; 32]).unwrap(), Some(t.clone()));
        assert_eq!(s.token_by_hash(&[8; 32]).unwrap(), None);
        assert_eq!(s.tokens().unwrap(), vec![t.clone()]);
        s.revoke_token(t.id).unwrap();
        assert_eq!(s.token_by_hash(&[7; 32]).unwrap(), None);
        assert!(matches!(s.revoke_token(t.id), Err(StoreError::NoToken(_))));
    }
}
