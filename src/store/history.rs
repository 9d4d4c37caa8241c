//! Traffic and DNS counts by the hour, kept across restarts for the admin page's 24-hour and
//! 7-day figures: bytes per device (by public key) and the number of queries and blocked
//! queries, never a name. Rows older than `KEEP_HOURS` are deleted as new ones come.

use rusqlite::params;

use super::{Store, StoreError};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS traffic_hourly (
    public_key TEXT NOT NULL,
    hour INTEGER NOT NULL,
    rx INTEGER NOT NULL,
    tx INTEGER NOT NULL,
    PRIMARY KEY (public_key, hour)
);
CREATE TABLE IF NOT EXISTS dns_hourly (
    hour INTEGER PRIMARY KEY,
    queries INTEGER NOT NULL,
    blocked INTEGER NOT NULL
);
";

/// How long hourly rows are kept (8 days: a full 7-day window at any hour).
pub const KEEP_HOURS: i64 = 8 * 24;

/// Bytes one device moved since some hour: received from it and sent to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub rx: u64,
    pub tx: u64,
}

impl Store {
    /// Adds what moved since the last call to the rows of `hour` (hours since the Unix
    /// epoch), in one transaction, and drops rows older than `KEEP_HOURS`.
    pub fn add_history(
        &self,
        hour: i64,
        traffic: &[(String, Traffic)],
        queries: u64,
        blocked: u64,
    ) -> Result<(), StoreError> {
        let tx = super::begin_write(&self.conn).map_err(|e| self.db(e))?;
        for (key, t) in traffic.iter().filter(|(_, t)| t.rx > 0 || t.tx > 0) {
            tx.execute(
                "INSERT INTO traffic_hourly(public_key, hour, rx, tx) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(public_key, hour) DO UPDATE SET rx = rx + excluded.rx, tx = tx + excluded.tx",
                params![key, hour, t.rx as i64, t.tx as i64],
            )
            .map_err(|e| self.db(e))?;
        }
        if queries > 0 || blocked > 0 {
            tx.execute(
                "INSERT INTO dns_hourly(hour, queries, blocked) VALUES (?1, ?2, ?3)
                 ON CONFLICT(hour) DO UPDATE SET queries = queries + excluded.queries,
                     blocked = blocked + excluded.blocked",
                params![hour, queries as i64, blocked as i64],
            )
            .map_err(|e| self.db(e))?;
        }
        let old = hour - KEEP_HOURS;
        tx.execute("DELETE FROM traffic_hourly WHERE hour < ?1", [old])
            .map_err(|e| self.db(e))?;
        tx.execute("DELETE FROM dns_hourly WHERE hour < ?1", [old])
            .map_err(|e| self.db(e))?;
        tx.commit().map_err(|e| self.db(e))
    }

    /// Each device's bytes from `since_hour` on, by public key.
    pub fn traffic_since(&self, since_hour: i64) -> Result<Vec<(String, Traffic)>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT public_key, SUM(rx), SUM(tx) FROM traffic_hourly WHERE hour >= ?1
                 GROUP BY public_key",
            )
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([since_hour], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Traffic {
                        rx: r.get::<_, i64>(1)? as u64,
                        tx: r.get::<_, i64>(2)? as u64,
                    },
                ))
            })
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db(e))
    }

    /// Queries and blocked queries per hour from `since_hour` on (hours without any are
    /// left out).
    pub fn dns_hours(&self, since_hour: i64) -> Result<Vec<(i64, u64, u64)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT hour, queries, blocked FROM dns_hourly WHERE hour >= ?1 ORDER BY hour")
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([since_hour], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_add_up_and_old_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let t = |rx, tx| Traffic { rx, tx };
        s.add_history(1000, &[("k1".into(), t(10, 20))], 5, 1)
            .unwrap();
        s.add_history(
            1000,
            &[("k1".into(), t(1, 2)), ("k2".into(), t(0, 0))],
            2,
            0,
        )
        .unwrap();
        s.add_history(1010, &[("k1".into(), t(100, 200))], 1, 1)
            .unwrap();
        let mut all = s.traffic_since(0).unwrap();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(all, vec![("k1".to_string(), t(111, 222))]);
        assert_eq!(
            s.traffic_since(1005).unwrap(),
            vec![("k1".to_string(), t(100, 200))]
        );
        assert_eq!(s.dns_hours(0).unwrap(), vec![(1000, 7, 1), (1010, 1, 1)]);
        // KEEP_HOURS later, hour 1000 is gone.
        s.add_history(1000 + KEEP_HOURS + 1, &[], 1, 0).unwrap();
        assert_eq!(
            s.traffic_since(0).unwrap(),
            vec![("k1".to_string(), t(100, 200))]
        );
        assert_eq!(s.dns_hours(0).unwrap().len(), 2);
    }
}
