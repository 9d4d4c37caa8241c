//! Where each device was last heard from (the latest endpoint only, never a history), so a
//! restarted hub can reach its devices at once.

use rusqlite::params;

use super::{begin_write, Store, StoreError};

/// Where a device was last heard from, kept so a restarted hub can reach it at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastEndpoint {
    pub addr: std::net::SocketAddr,
    /// The hub's own address the device sent to (replies leave from it).
    pub local: Option<std::net::IpAddr>,
    /// Unix seconds of the latest authenticated packet seen from there.
    pub seen_at: i64,
}

impl Store {
    /// The last endpoint of every device that has one, by public key.
    pub fn endpoints(&self) -> Result<Vec<(String, LastEndpoint)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT public_key, addr, local, seen_at FROM device_endpoints")
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (key, addr, local, seen_at) = row.map_err(|e| self.db(e))?;
            if let Ok(addr) = addr.parse() {
                let local = local.and_then(|l| l.parse().ok());
                out.push((
                    key,
                    LastEndpoint {
                        addr,
                        local,
                        seen_at,
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Replaces the stored endpoints of these devices (the latest only, never a history),
    /// in one transaction. Keys of devices no longer registered are forgotten.
    pub fn save_endpoints(&self, eps: &[(String, LastEndpoint)]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let db = |cause| StoreError::Db {
            path: path.clone(),
            cause,
        };
        let tx = begin_write(&self.conn).map_err(db)?;
        for (key, ep) in eps {
            tx.execute(
                "INSERT INTO device_endpoints(public_key, addr, local, seen_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(public_key) DO UPDATE SET
                     addr = excluded.addr, local = excluded.local, seen_at = excluded.seen_at",
                params![key, ep.addr.to_string(), ep.local.map(|l| l.to_string()), ep.seen_at],
            )
            .map_err(db)?;
        }
        tx.execute(
            "DELETE FROM device_endpoints WHERE public_key NOT IN (SELECT public_key FROM devices)",
            [],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }
}
