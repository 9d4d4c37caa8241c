//! Each device's own firewall settings and its `--for` timer, by public key (so they follow a
//! rename). The settings are kept as the JSON of [`FirewallSpec`].

use std::collections::HashMap;

use rusqlite::params;

use super::{Store, StoreError};
use crate::firewall::{FirewallSpec, InternetMode, Timer};

/// The table.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS device_firewall (
    public_key TEXT PRIMARY KEY,
    spec TEXT NOT NULL DEFAULT '{}',
    timer_internet TEXT,
    timer_until INTEGER
);
"#;

/// Moves the earlier per-device internet switch, in a database that still has it, into the
/// firewall (`off` became `internet = "off"`).
pub(super) fn migrate(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let old = conn
        .prepare(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'device_internet_off'",
        )?
        .exists([])?;
    if old {
        conn.execute_batch(
            r#"INSERT OR IGNORE INTO device_firewall(public_key, spec)
                   SELECT public_key, '{"internet":"off"}' FROM device_internet_off;
               DROP TABLE device_internet_off;"#,
        )?;
    }
    Ok(())
}

/// A device's stored firewall: its own settings and a running timer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFirewall {
    pub spec: FirewallSpec,
    pub timer: Option<Timer>,
}

impl Store {
    /// Every registered device's stored firewall, by public key (devices with none are absent).
    pub fn device_firewalls(&self) -> Result<HashMap<String, DeviceFirewall>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT f.public_key, f.spec, f.timer_internet, f.timer_until FROM device_firewall f
                 JOIN devices d ON d.public_key = f.public_key",
            )
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })
            .map_err(|e| self.db(e))?;
        let mut out = HashMap::new();
        for row in rows {
            let (key, spec, mode, until) = row.map_err(|e| self.db(e))?;
            // A row this build cannot read counts as no settings (and is logged), rather than
            // stopping the hub.
            let spec = serde_json::from_str(&spec).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "a device's firewall settings do not read; ignored");
                FirewallSpec::default()
            });
            let timer = match (mode.as_deref().map(InternetMode::parse), until) {
                (Some(Ok(internet)), Some(until)) => Some(Timer { internet, until }),
                _ => None,
            };
            out.insert(key, DeviceFirewall { spec, timer });
        }
        Ok(out)
    }

    /// Stores a device's firewall (an empty one removes the row).
    pub fn set_device_firewall(
        &self,
        public_key: &str,
        fw: &DeviceFirewall,
    ) -> Result<(), StoreError> {
        if fw.spec.is_empty() && fw.timer.is_none() {
            self.conn
                .execute(
                    "DELETE FROM device_firewall WHERE public_key = ?1",
                    [public_key],
                )
                .map_err(|e| self.db(e))?;
            return Ok(());
        }
        let spec = serde_json::to_string(&fw.spec).expect("a spec serializes");
        self.conn
            .execute(
                "INSERT INTO device_firewall(public_key, spec, timer_internet, timer_until)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(public_key) DO UPDATE SET spec = ?2, timer_internet = ?3, timer_until = ?4",
                params![
                    public_key,
                    spec,
                    fw.timer.map(|t| t.internet.as_str()),
                    fw.timer.map(|t| t.until)
                ],
            )
            .map(|_| ())
            .map_err(|e| self.db(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_internet_switch_moves_into_the_firewall() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = rusqlite::Connection::open(dir.path().join(super::super::DB_FILE)).unwrap();
            c.execute_batch(
                "CREATE TABLE device_internet_off (public_key TEXT PRIMARY KEY);
                 INSERT INTO device_internet_off VALUES ('k1');",
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let n: i64 = store
            .conn
            .query_row(
                "SELECT count(*) FROM device_firewall WHERE public_key = 'k1' AND spec LIKE '%off%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
        drop(store);
        // Opening again changes nothing.
        let store = Store::open(dir.path()).unwrap();
        let fw = DeviceFirewall {
            spec: FirewallSpec::default(),
            timer: Some(Timer {
                internet: InternetMode::Off,
                until: 5,
            }),
        };
        store.set_device_firewall("k1", &fw).unwrap();
        store
            .set_device_firewall("k1", &DeviceFirewall::default())
            .unwrap();
        let n: i64 = store
            .conn
            .query_row("SELECT count(*) FROM device_firewall", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }
}
