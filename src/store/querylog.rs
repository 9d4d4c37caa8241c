//! The query log's tables: its switch and recipients in `meta`, the ciphertexts in
//! `querylog_entries`.
//!
//! The store keeps bytes and text only; what a recipient is and how an entry is encrypted is
//! the `querylog` module's business. Every change is one transaction, and
//! [`Store::append_querylog`] re-reads the switch under the write lock, so no entry is ever
//! added after [`Store::disable_querylog`] committed.

use rusqlite::{params, Connection, OptionalExtension};

use super::{begin_write, Store, StoreError};

/// The entries table. `seq` is AUTOINCREMENT so a sequence number is never reused, not even
/// after `disable` or pruning: a puller's cursor stays valid.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS querylog_entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS querylog_entries_time ON querylog_entries(time);
";

const KEY_ENABLED: &str = "querylog.enabled";
const KEY_RECIPIENTS: &str = "querylog.recipients";
const KEY_LOG_ID: &str = "querylog.log_id";

/// The query log switch as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryLogMeta {
    /// `querylog.enabled` is `1`.
    pub enabled: bool,
    /// `querylog.recipients`: one age recipient a line (empty when unset).
    pub recipients: String,
}

/// One stored ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryLogRow {
    pub seq: i64,
    /// Unix seconds.
    pub time: i64,
    pub data: Vec<u8>,
}

/// What is stored, for `cloudpc querylog status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLogCounts {
    pub entries: u64,
    /// Unix seconds of the oldest and newest entry.
    pub oldest: Option<i64>,
    pub newest: Option<i64>,
    /// Highest sequence number ever handed out (0 = none).
    pub last_seq: i64,
}

/// One page of entries, read in one transaction so its fields agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryLogPage {
    pub meta: QueryLogMeta,
    /// The random id of this hub's log (empty before the first `enable`).
    pub log_id: String,
    pub last_seq: i64,
    /// Entries after the `since` asked for, at most the `limit`.
    pub rows: Vec<QueryLogRow>,
    /// More entries follow the last one in `rows`.
    pub more: bool,
}

/// How [`Store::append_querylog`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryLogAppend {
    /// The log was on; this many entries were appended.
    Appended { count: u64, meta: QueryLogMeta },
    /// The log was off under the write lock; nothing was written.
    Off { meta: QueryLogMeta },
}

fn meta(conn: &Connection, key: &str) -> Result<Option<String>, rusqlite::Error> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO meta(key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, value],
    )
    .map(|_| ())
}

fn load_meta(conn: &Connection) -> Result<QueryLogMeta, rusqlite::Error> {
    Ok(QueryLogMeta {
        enabled: meta(conn, KEY_ENABLED)?.as_deref() == Some("1"),
        recipients: meta(conn, KEY_RECIPIENTS)?.unwrap_or_default(),
    })
}

fn last_seq(conn: &Connection) -> Result<i64, rusqlite::Error> {
    let seq: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'querylog_entries'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(seq.unwrap_or(0))
}

fn new_log_id() -> String {
    let b: [u8; 16] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Store {
    /// The query log switch and recipients.
    pub fn querylog_meta(&self) -> Result<QueryLogMeta, StoreError> {
        load_meta(&self.conn).map_err(|e| self.db(e))
    }

    /// Turns the log on with exactly these recipients (one a line), giving the log its random
    /// id on first use.
    pub fn enable_querylog(&self, recipients: &str) -> Result<(), StoreError> {
        let run = || {
            let tx = begin_write(&self.conn)?;
            set_meta(&tx, KEY_RECIPIENTS, recipients)?;
            set_meta(&tx, KEY_ENABLED, "1")?;
            if meta(&tx, KEY_LOG_ID)?.is_none() {
                set_meta(&tx, KEY_LOG_ID, &new_log_id())?;
            }
            tx.commit()
        };
        run().map_err(|e| self.db(e))
    }

    /// Turns the log off, forgets the recipients and deletes every entry, in one transaction.
    /// Returns how many entries were deleted.
    ///
    /// `secure_delete` overwrites the freed pages and a WAL checkpoint moves the change into the
    /// main file, so the ciphertexts do not linger on disk either.
    pub fn disable_querylog(&self) -> Result<u64, StoreError> {
        let run = || {
            self.conn.pragma_update(None, "secure_delete", "ON")?;
            let tx = begin_write(&self.conn)?;
            let n: i64 = tx.query_row("SELECT COUNT(*) FROM querylog_entries", [], |r| r.get(0))?;
            tx.execute("DELETE FROM querylog_entries", [])?;
            set_meta(&tx, KEY_ENABLED, "0")?;
            tx.execute("DELETE FROM meta WHERE key = ?1", [KEY_RECIPIENTS])?;
            tx.commit()?;
            Ok(n)
        };
        let n = run().map_err(|e| self.db(e))?;
        // Best effort: a running hub holding a read snapshot can make the checkpoint partial;
        // the pages are overwritten at the next checkpoint then.
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// How many entries are stored, their time span and the last sequence number.
    pub fn querylog_counts(&self) -> Result<QueryLogCounts, StoreError> {
        let run = || {
            let tx = self.conn.unchecked_transaction()?;
            let (entries, oldest, newest): (i64, Option<i64>, Option<i64>) = tx.query_row(
                "SELECT COUNT(*), MIN(time), MAX(time) FROM querylog_entries",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            Ok(QueryLogCounts {
                entries: u64::try_from(entries).unwrap_or(0),
                oldest,
                newest,
                last_seq: last_seq(&tx)?,
            })
        };
        run().map_err(|e| self.db(e))
    }

    /// Appends entries `(unix seconds, ciphertext)` in one write transaction, if the log is
    /// still on under the write lock.
    ///
    /// `rows` is called with the switch as stored at that moment (so the caller can encrypt
    /// again when the recipients changed since it last looked); it is not called when the log
    /// is off.
    pub fn append_querylog<E: From<StoreError>>(
        &self,
        rows: impl FnOnce(&QueryLogMeta) -> Result<Vec<(i64, Vec<u8>)>, E>,
    ) -> Result<QueryLogAppend, E> {
        let db = |e| E::from(self.db(e));
        let tx = begin_write(&self.conn).map_err(db)?;
        let meta = load_meta(&tx).map_err(db)?;
        if !meta.enabled {
            return Ok(QueryLogAppend::Off { meta });
        }
        let rows = rows(&meta)?;
        {
            let mut st = tx
                .prepare_cached("INSERT INTO querylog_entries(time, data) VALUES (?1, ?2)")
                .map_err(db)?;
            for (time, data) in &rows {
                st.execute(params![time, data]).map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(QueryLogAppend::Appended {
            count: rows.len() as u64,
            meta,
        })
    }

    /// The entries after sequence number `since`, at most `limit`, with the switch, the log id
    /// and the last sequence number as of the same snapshot.
    pub fn querylog_page(&self, since: i64, limit: usize) -> Result<QueryLogPage, StoreError> {
        let run = || {
            let tx = self.conn.unchecked_transaction()?;
            let mut rows = {
                let mut st = tx.prepare(
                    "SELECT seq, time, data FROM querylog_entries WHERE seq > ?1
                     ORDER BY seq LIMIT ?2",
                )?;
                let rows = st.query_map(
                    params![since, i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1],
                    |r| {
                        Ok(QueryLogRow {
                            seq: r.get(0)?,
                            time: r.get(1)?,
                            data: r.get(2)?,
                        })
                    },
                )?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            let more = rows.len() > limit;
            rows.truncate(limit);
            Ok(QueryLogPage {
                meta: load_meta(&tx)?,
                log_id: meta(&tx, KEY_LOG_ID)?.unwrap_or_default(),
                last_seq: last_seq(&tx)?,
                rows,
                more,
            })
        };
        run().map_err(|e| self.db(e))
    }

    /// Deletes the entries older than `cutoff` (Unix seconds), overwriting their pages.
    /// Returns how many.
    pub fn prune_querylog_before(&self, cutoff: i64) -> Result<u64, StoreError> {
        let run = || {
            self.conn.pragma_update(None, "secure_delete", "ON")?;
            self.conn
                .execute("DELETE FROM querylog_entries WHERE time < ?1", [cutoff])
        };
        run().map(|n| n as u64).map_err(|e| self.db(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(s: &Store, times: &[i64]) -> QueryLogAppend {
        s.append_querylog(|_| Ok::<_, StoreError>(times.iter().map(|t| (*t, vec![0u8])).collect()))
            .unwrap()
    }

    #[test]
    fn append_while_off_writes_nothing_and_does_not_ask_for_rows() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();

        let r = s
            .append_querylog(|_| -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
                panic!("rows asked for while off")
            })
            .unwrap();

        assert!(matches!(r, QueryLogAppend::Off { .. }));
        assert_eq!(s.querylog_counts().unwrap().entries, 0);
    }

    #[test]
    fn disable_deletes_everything_and_sequence_numbers_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.enable_querylog("age1a\nage1b").unwrap();
        let id = s.querylog_page(0, 10).unwrap().log_id;
        append(&s, &[1, 2, 3]);

        assert_eq!(s.disable_querylog().unwrap(), 3);
        s.enable_querylog("age1a").unwrap();
        append(&s, &[4]);

        let p = s.querylog_page(0, 10).unwrap();
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.rows[0].seq, 4);
        assert_eq!(p.log_id, id, "the log id survives disable");
        assert_eq!(p.meta.recipients, "age1a");
    }

    #[test]
    fn pages_are_bounded_and_say_whether_more_follow() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.enable_querylog("age1a").unwrap();
        append(&s, &[10, 20, 30, 40, 50]);

        let first = s.querylog_page(0, 3).unwrap();
        let rest = s.querylog_page(3, 3).unwrap();

        assert_eq!(first.rows.len(), 3);
        assert!(first.more);
        assert_eq!(
            rest.rows.iter().map(|r| r.time).collect::<Vec<_>>(),
            [40, 50]
        );
        assert!(!rest.more);
        assert_eq!(rest.last_seq, 5);
    }

    #[test]
    fn prune_deletes_only_entries_before_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.enable_querylog("age1a").unwrap();
        append(&s, &[100, 200, 300]);

        assert_eq!(s.prune_querylog_before(200).unwrap(), 1);

        let c = s.querylog_counts().unwrap();
        assert_eq!((c.entries, c.oldest, c.newest), (2, Some(200), Some(300)));
    }
}
