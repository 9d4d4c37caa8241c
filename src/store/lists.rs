//! The list subscription tables: URLs added with `cloudpc lists add` (`list_subscriptions`)
//! and what is known of each URL list's cached copy (`list_cache`: its `list N` id, HTTP
//! validators, last attempt and outcome, failures in a row).
//!
//! The cached copies themselves are files next to the database, written by
//! `filter::subscribe`; these tables hold only their metadata.

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};

/// The list tables. Databases written by older versions may also hold an unused
/// `list_update_requests` table; nothing reads it any more.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS list_cache (
    id INTEGER PRIMARY KEY,
    url TEXT NOT NULL UNIQUE,
    entries INTEGER,
    bytes INTEGER,
    content_hash TEXT,
    etag TEXT,
    last_modified TEXT,
    last_success INTEGER,
    last_change INTEGER,
    last_attempt INTEGER,
    last_result TEXT,
    last_error TEXT,
    failures INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS list_subscriptions (
    url TEXT PRIMARY KEY,
    added_at INTEGER NOT NULL
);
";

/// What is recorded about one URL list (times in Unix milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListRecord {
    /// The `list N` id.
    pub id: i64,
    /// Rules in the cached copy.
    pub entries: Option<i64>,
    /// HTTP validators of the cached copy.
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The last download that gave a good list or a 304.
    pub last_success: Option<i64>,
    /// The last time the cached copy changed.
    pub last_change: Option<i64>,
    /// The start of the last download attempt.
    pub last_attempt: Option<i64>,
    /// `updated`, `unchanged` or `failed`.
    pub last_result: Option<String>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Failed attempts in a row.
    pub failures: u32,
}

/// A good copy just stored in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCopy<'a> {
    pub etag: Option<&'a str>,
    pub last_modified: Option<&'a str>,
    /// Hash of the text, hex.
    pub content_hash: &'a str,
    /// Rules in it.
    pub entries: i64,
    pub bytes: i64,
}

/// How one download attempt ended, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListAttempt<'a> {
    /// A new copy was stored.
    Updated,
    /// 304, or the same content again.
    Unchanged,
    /// Failed, for this reason; the previous copy stays.
    Failed(&'a str),
}

impl Store {
    /// URLs added with `cloudpc lists add`, oldest first.
    pub fn list_subscriptions(&self) -> Result<Vec<String>, StoreError> {
        let run = || {
            let mut st = self
                .conn
                .prepare("SELECT url FROM list_subscriptions ORDER BY added_at, url")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<Vec<_>, _>>()
        };
        run().map_err(|e| self.db(e))
    }

    /// Adds a subscription (`added_at` in Unix ms). Returns false when it was already there.
    pub fn add_list_subscription(&self, url: &str, added_at: i64) -> Result<bool, StoreError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO list_subscriptions(url, added_at) VALUES (?1, ?2)",
                params![url, added_at],
            )
            .map(|n| n > 0)
            .map_err(|e| self.db(e))
    }

    /// Removes a subscription. Returns false when there was none.
    pub fn remove_list_subscription(&self, url: &str) -> Result<bool, StoreError> {
        self.conn
            .execute("DELETE FROM list_subscriptions WHERE url = ?1", [url])
            .map(|n| n > 0)
            .map_err(|e| self.db(e))
    }

    /// The `list N` id of a URL, created on first use.
    pub fn list_id(&self, url: &str) -> Result<i64, StoreError> {
        let run = || {
            self.conn
                .execute("INSERT OR IGNORE INTO list_cache(url) VALUES (?1)", [url])?;
            self.conn
                .query_row("SELECT id FROM list_cache WHERE url = ?1", [url], |r| {
                    r.get(0)
                })
        };
        run().map_err(|e| self.db(e))
    }

    /// What is recorded about `url` (`None` when nothing is).
    pub fn list_record(&self, url: &str) -> Result<Option<ListRecord>, StoreError> {
        self.conn
            .query_row(
                "SELECT id, entries, etag, last_modified, last_success, last_change,
                        last_attempt, last_result, last_error, failures
                 FROM list_cache WHERE url = ?1",
                [url],
                |r| {
                    Ok(ListRecord {
                        id: r.get(0)?,
                        entries: r.get(1)?,
                        etag: r.get(2)?,
                        last_modified: r.get(3)?,
                        last_success: r.get(4)?,
                        last_change: r.get(5)?,
                        last_attempt: r.get(6)?,
                        last_result: r.get(7)?,
                        last_error: r.get(8)?,
                        failures: r.get(9)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.db(e))
    }

    /// Every URL with a record.
    pub fn list_record_urls(&self) -> Result<Vec<String>, StoreError> {
        let run = || {
            let mut st = self.conn.prepare("SELECT url FROM list_cache")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<Vec<_>, _>>()
        };
        run().map_err(|e| self.db(e))
    }

    /// Forgets everything recorded about `url` (its id too).
    pub fn forget_list(&self, url: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM list_cache WHERE url = ?1", [url])
            .map(|_| ())
            .map_err(|e| self.db(e))
    }

    /// Records the validators and summary of a good copy just stored for `url`.
    pub fn save_list_copy(&self, url: &str, copy: &ListCopy<'_>) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE list_cache SET etag = ?2, last_modified = ?3, content_hash = ?4,
                     entries = ?5, bytes = ?6 WHERE url = ?1",
                params![
                    url,
                    copy.etag,
                    copy.last_modified,
                    copy.content_hash,
                    copy.entries,
                    copy.bytes
                ],
            )
            .map(|_| ())
            .map_err(|e| self.db(e))
    }

    /// Records how a download of `url` that began at `started` ended at `now` (Unix ms).
    pub fn record_list_attempt(
        &self,
        url: &str,
        started: i64,
        now: i64,
        attempt: ListAttempt<'_>,
    ) -> Result<(), StoreError> {
        let r = match attempt {
            ListAttempt::Updated => self.conn.execute(
                "UPDATE list_cache SET last_attempt = ?2, last_success = ?3, last_change = ?3,
                     last_result = 'updated', last_error = NULL, failures = 0 WHERE url = ?1",
                params![url, started, now],
            ),
            ListAttempt::Unchanged => self.conn.execute(
                "UPDATE list_cache SET last_attempt = ?2, last_success = ?3,
                     last_result = 'unchanged', last_error = NULL, failures = 0 WHERE url = ?1",
                params![url, started, now],
            ),
            ListAttempt::Failed(e) => self.conn.execute(
                "UPDATE list_cache SET last_attempt = ?2, last_result = 'failed',
                     last_error = ?3, failures = failures + 1 WHERE url = ?1",
                params![url, started, e],
            ),
        };
        r.map(|_| ()).map_err(|e| self.db(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:1/a.txt";

    #[test]
    fn a_url_keeps_its_id_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();

        let id = s.list_id(URL).unwrap();
        assert_eq!(s.list_id(URL).unwrap(), id);
        assert_eq!(s.list_id("http://127.0.0.1:1/b.txt").unwrap(), id + 1);
        s.forget_list(URL).unwrap();

        assert_eq!(s.list_record(URL).unwrap(), None);
        assert_eq!(s.list_record_urls().unwrap(), ["http://127.0.0.1:1/b.txt"]);
    }

    #[test]
    fn attempts_count_failures_in_a_row_and_success_resets_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.list_id(URL).unwrap();

        s.record_list_attempt(URL, 1, 2, ListAttempt::Failed("HTTP 404"))
            .unwrap();
        s.record_list_attempt(URL, 3, 4, ListAttempt::Failed("HTTP 404"))
            .unwrap();
        let failed = s.list_record(URL).unwrap().unwrap();
        s.save_list_copy(
            URL,
            &ListCopy {
                etag: Some("\"v1\""),
                last_modified: None,
                content_hash: "00ff",
                entries: 2,
                bytes: 30,
            },
        )
        .unwrap();
        s.record_list_attempt(URL, 5, 6, ListAttempt::Updated)
            .unwrap();
        let ok = s.list_record(URL).unwrap().unwrap();

        assert_eq!(failed.failures, 2);
        assert_eq!(failed.last_error.as_deref(), Some("HTTP 404"));
        assert_eq!(failed.last_success, None);
        assert_eq!(ok.failures, 0);
        assert_eq!(ok.last_error, None);
        assert_eq!((ok.last_attempt, ok.last_success), (Some(5), Some(6)));
        assert_eq!(ok.etag.as_deref(), Some("\"v1\""));
        assert_eq!(ok.entries, Some(2));
    }

    #[test]
    fn subscriptions_are_listed_oldest_first_and_added_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();

        assert!(s.add_list_subscription("http://b.test/l", 2).unwrap());
        assert!(s.add_list_subscription("http://a.test/l", 3).unwrap());
        assert!(!s.add_list_subscription("http://b.test/l", 4).unwrap());

        assert_eq!(
            s.list_subscriptions().unwrap(),
            ["http://b.test/l", "http://a.test/l"]
        );
        assert!(s.remove_list_subscription("http://b.test/l").unwrap());
        assert!(!s.remove_list_subscription("http://b.test/l").unwrap());
    }
}
