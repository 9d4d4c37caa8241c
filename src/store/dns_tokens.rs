//! Each device's DNS token: the secret that names the device on the public DoH and DoT
//! listeners (`/dns-query/<token>`, SNI `<token>.HOST`), by public key so it follows a rename.
//! Every device has one; [`Store::dns_tokens`] makes the missing ones.

use std::collections::HashMap;

use rusqlite::params;

use super::{Store, StoreError};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS dns_tokens (
    public_key TEXT PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
";

impl Store {
    /// Every device's DNS token, by public key; a device without one gets one now, and the
    /// tokens of removed devices are deleted.
    pub fn dns_tokens(&self) -> Result<HashMap<String, String>, StoreError> {
        let tx = super::begin_write(&self.conn).map_err(|e| self.db(e))?;
        tx.execute(
            "DELETE FROM dns_tokens WHERE public_key NOT IN (SELECT public_key FROM devices)",
            [],
        )
        .map_err(|e| self.db(e))?;
        let missing: Vec<String> = {
            let mut st = tx
                .prepare(
                    "SELECT public_key FROM devices
                     WHERE public_key NOT IN (SELECT public_key FROM dns_tokens)",
                )
                .map_err(|e| self.db(e))?;
            let rows = st.query_map([], |r| r.get(0)).map_err(|e| self.db(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.db(e))?
        };
        for key in &missing {
            tx.execute(
                "INSERT INTO dns_tokens(public_key, token, created_at) VALUES (?1, ?2, ?3)",
                params![key, crate::dns::tokens::new_token(), super::unix_now()],
            )
            .map_err(|e| self.db(e))?;
        }
        let out = {
            let mut st = tx
                .prepare("SELECT public_key, token FROM dns_tokens")
                .map_err(|e| self.db(e))?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| self.db(e))?;
            rows.collect::<Result<HashMap<_, _>, _>>()
                .map_err(|e| self.db(e))?
        };
        tx.commit().map_err(|e| self.db(e))?;
        Ok(out)
    }

    /// Gives the device with `public_key` a new DNS token (the old one stops naming it) and
    /// returns it.
    pub fn new_dns_token(&self, public_key: &str) -> Result<String, StoreError> {
        let token = crate::dns::tokens::new_token();
        self.conn
            .execute(
                "INSERT INTO dns_tokens(public_key, token, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(public_key) DO UPDATE SET token = excluded.token,
                 created_at = excluded.created_at",
                params![public_key, token, super::unix_now()],
            )
            .map_err(|e| self.db(e))?;
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{Overlay, Store};

    #[test]
    fn every_device_gets_a_token_that_survives_a_reopen_and_can_be_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let overlay = Overlay {
            v4: "10.77.0.0/24".parse().unwrap(),
            v6: "fd00:77::/64".parse().unwrap(),
        };
        let key_a = "a".repeat(43) + "=";
        let key_b = "b".repeat(43) + "=";
        let first = {
            let mut s = Store::open(dir.path()).unwrap();
            s.add_device("a", &key_a, false, &overlay).unwrap();
            s.add_device("b", &key_b, false, &overlay).unwrap();
            let t = s.dns_tokens().unwrap();
            assert_eq!(t.len(), 2);
            assert_ne!(t[&key_a], t[&key_b]);
            assert!(crate::dns::tokens::is_token(&t[&key_a]), "{}", t[&key_a]);
            t
        };
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.dns_tokens().unwrap(), first, "tokens are kept");
        let new = s.new_dns_token(&key_a).unwrap();
        assert_ne!(new, first[&key_a]);
        assert_eq!(s.dns_tokens().unwrap()[&key_a], new);
        s.remove_device("b").unwrap();
        assert_eq!(
            s.dns_tokens().unwrap().len(),
            1,
            "a removed device's token goes"
        );
    }
}
