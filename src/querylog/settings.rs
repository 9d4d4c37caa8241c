//! The query log's state in the database: on/off, the recipients, the entries table.
//!
//! On/off and the recipients live in `meta` (`querylog.enabled`, `querylog.recipients`, one
//! recipient a line); the ciphertexts live in `querylog_entries`. Every change is one
//! transaction, so a running writer that checks `querylog.enabled` inside its own write
//! transaction can never add an entry after `disable` committed.

use std::str::FromStr;

use age::x25519;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::QueryLogError;
use crate::store::Store;

/// The entries table. `seq` is AUTOINCREMENT so a sequence number is never reused, not even
/// after `disable` or pruning: a puller's cursor stays valid.
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS querylog_entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS querylog_entries_time ON querylog_entries(time);
";

pub(crate) const KEY_ENABLED: &str = "querylog.enabled";
pub(crate) const KEY_RECIPIENTS: &str = "querylog.recipients";
pub(crate) const KEY_LOG_ID: &str = "querylog.log_id";

/// A validated, de-duplicated set of age X25519 recipients (at least one).
#[derive(Clone, PartialEq, Eq)]
pub struct Recipients(Vec<x25519::Recipient>);

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|r| r.to_string()))
            .finish()
    }
}

impl Recipients {
    /// Parses every string; the first one that is not an age X25519 public key is named in the error.
    pub fn parse<S: AsRef<str>>(inputs: &[S]) -> Result<Recipients, QueryLogError> {
        let mut out: Vec<x25519::Recipient> = Vec::new();
        for s in inputs {
            let r = parse_recipient(s.as_ref())?;
            if !out.contains(&r) {
                out.push(r);
            }
        }
        if out.is_empty() {
            return Err(QueryLogError::NoRecipients);
        }
        Ok(Recipients(out))
    }

    /// The recipients, for [`age::Encryptor::with_recipients`].
    pub fn keys(&self) -> &[x25519::Recipient] {
        &self.0
    }

    /// Canonical `age1...` strings.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|r| r.to_string()).collect()
    }

    /// The form kept in `meta`: one recipient a line.
    fn to_stored(&self) -> String {
        self.to_strings().join("\n")
    }

    /// Reads the stored form back (`None` when empty or damaged).
    pub(crate) fn from_stored(s: &str) -> Option<Recipients> {
        let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
        Recipients::parse(&lines).ok()
    }
}

/// Length of an X25519 recipient: `age1` + 58 Bech32 characters.
const X25519_RECIPIENT_LEN: usize = 62;

/// Parses one recipient, with an error that says what is wrong without echoing a secret key.
fn parse_recipient(input: &str) -> Result<x25519::Recipient, QueryLogError> {
    let s = input.trim();
    let err = |reason: &str| QueryLogError::InvalidRecipient {
        shown: shown(s),
        reason: reason.to_string(),
    };
    if s.is_empty() {
        return Err(err("empty string"));
    }
    if s.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
        return Err(err(
            "this is a secret key; give the hub only the public key and keep the secret key on the device",
        ));
    }
    if s.starts_with("ssh-") || s.starts_with("ecdsa-") {
        return Err(err("SSH keys are not supported"));
    }
    x25519::Recipient::from_str(s).map_err(|e| {
        if s.starts_with("age1") && s.len() > X25519_RECIPIENT_LEN {
            // age1pq..., age1tag1..., plugin recipients: real age keys, but not X25519 ones.
            err("only X25519 recipients are supported, not plugin or post-quantum ones")
        } else {
            err(&format!("not an age X25519 public key ({e})"))
        }
    })
}

/// The string as it may appear in an error: quoted, shortened, secrets hidden.
fn shown(s: &str) -> String {
    if s.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
        return "\"AGE-SECRET-KEY-…\" (hidden)".to_string();
    }
    let short: String = s.chars().take(80).collect();
    if short.len() < s.len() {
        format!("{short:?}…")
    } else {
        format!("{short:?}")
    }
}

/// What `cloudpc querylog status` shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogStatus {
    pub enabled: bool,
    /// Canonical `age1...` strings.
    pub recipients: Vec<String>,
    /// Stored entries.
    pub entries: u64,
    /// Unix seconds of the oldest and newest stored entry.
    pub oldest: Option<i64>,
    pub newest: Option<i64>,
    /// Highest sequence number ever handed out (0 = none).
    pub last_seq: i64,
}

/// Creates the query log tables when missing.
pub(crate) fn ensure_schema(conn: &Connection) -> Result<(), QueryLogError> {
    conn.execute_batch(SCHEMA)?;
    Ok(())
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

/// Begins a write transaction (IMMEDIATE: takes the write lock up front, so a read-then-write
/// cannot fail with a stale snapshot; `busy_timeout` covers waiting for it).
pub(crate) fn begin_write(conn: &Connection) -> Result<Transaction<'_>, rusqlite::Error> {
    Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
}

/// The on/off switch and recipients as the writer needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogSettings {
    pub enabled: bool,
    /// The stored text, to notice changes cheaply.
    pub recipients_text: String,
    /// `None` when the log is off (or the stored list is damaged).
    pub recipients: Option<Recipients>,
}

/// Reads the settings (inside the caller's transaction, if any).
pub(crate) fn load(conn: &Connection) -> Result<LogSettings, rusqlite::Error> {
    let on = meta(conn, KEY_ENABLED)?.as_deref() == Some("1");
    let text = meta(conn, KEY_RECIPIENTS)?.unwrap_or_default();
    let recipients = if on {
        Recipients::from_stored(&text)
    } else {
        None
    };
    Ok(LogSettings {
        enabled: on && recipients.is_some(),
        recipients_text: text,
        recipients,
    })
}

/// Whether the log is on, as stored.
pub fn is_enabled(store: &Store) -> Result<bool, QueryLogError> {
    Ok(load(store.conn())?.enabled)
}

/// Turns the log on with exactly these recipients (replacing any earlier set).
///
/// Entries already stored stay encrypted to the recipients of their time.
pub fn enable(store: &Store, recipients: &Recipients) -> Result<LogStatus, QueryLogError> {
    let conn = store.conn();
    ensure_schema(conn)?;
    let tx = begin_write(conn)?;
    set_meta(&tx, KEY_RECIPIENTS, &recipients.to_stored())?;
    set_meta(&tx, KEY_ENABLED, "1")?;
    if meta(&tx, KEY_LOG_ID)?.is_none() {
        set_meta(&tx, KEY_LOG_ID, &new_log_id())?;
    }
    tx.commit()?;
    status(store)
}

/// Turns the log off and deletes every stored entry, in one transaction. Returns how many
/// entries were deleted.
///
/// `secure_delete` overwrites the freed pages and a WAL checkpoint moves the change into the
/// main file, so the ciphertexts do not linger on disk either.
pub fn disable(store: &Store) -> Result<u64, QueryLogError> {
    let conn = store.conn();
    ensure_schema(conn)?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    let tx = begin_write(conn)?;
    let n: i64 = tx.query_row("SELECT COUNT(*) FROM querylog_entries", [], |r| r.get(0))?;
    tx.execute("DELETE FROM querylog_entries", [])?;
    set_meta(&tx, KEY_ENABLED, "0")?;
    tx.execute("DELETE FROM meta WHERE key = ?1", [KEY_RECIPIENTS])?;
    tx.commit()?;
    // Best effort: a running hub holding a read snapshot can make the checkpoint partial; the
    // pages are overwritten at the next checkpoint then.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    Ok(u64::try_from(n).unwrap_or(0))
}

/// On/off, recipients and what is stored.
pub fn status(store: &Store) -> Result<LogStatus, QueryLogError> {
    let conn = store.conn();
    ensure_schema(conn)?;
    let s = load(conn)?;
    let (entries, oldest, newest): (i64, Option<i64>, Option<i64>) = conn.query_row(
        "SELECT COUNT(*), MIN(time), MAX(time) FROM querylog_entries",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(LogStatus {
        enabled: s.enabled,
        recipients: s.recipients.map(|r| r.to_strings()).unwrap_or_default(),
        entries: u64::try_from(entries).unwrap_or(0),
        oldest,
        newest,
        last_seq: last_seq(conn)?,
    })
}

/// Highest sequence number ever handed out (survives deletes).
pub(crate) fn last_seq(conn: &Connection) -> Result<i64, rusqlite::Error> {
    let from_seq: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'querylog_entries'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(from_seq.unwrap_or(0))
}

/// The random id of this hub's log; a puller starts over when it changes (a new state dir).
pub(crate) fn log_id(conn: &Connection) -> Result<String, rusqlite::Error> {
    Ok(meta(conn, KEY_LOG_ID)?.unwrap_or_default())
}

fn new_log_id() -> String {
    let b: [u8; 16] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        x25519::Identity::generate().to_public().to_string()
    }

    #[test]
    fn invalid_recipient_is_named_in_the_error() {
        let good = key();
        let e = Recipients::parse(&[good.as_str(), "age1notakey"]).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, QueryLogError::InvalidRecipient { .. }));
        assert!(msg.contains("\"age1notakey\""), "{msg}");
    }

    #[test]
    fn secret_key_is_refused_without_echoing_it() {
        let secret = x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let s = secret.to_string().expose_secret().to_string();
        let e = Recipients::parse(&[s.as_str()]).unwrap_err().to_string();
        assert!(!e.contains(&s[16..]), "{e}");
        assert!(e.contains("secret key"), "{e}");
    }

    #[test]
    fn empty_and_ssh_recipients_are_refused() {
        assert!(matches!(
            Recipients::parse::<&str>(&[]),
            Err(QueryLogError::NoRecipients)
        ));
        assert!(Recipients::parse(&[""]).is_err());
        let e = Recipients::parse(&["ssh-ed25519 AAAAC3Nza"]).unwrap_err();
        assert!(e.to_string().contains("SSH"), "{e}");
    }

    #[test]
    fn duplicates_collapse_and_stored_form_round_trips() {
        let a = key();
        let b = key();
        let r = Recipients::parse(&[a.as_str(), b.as_str(), a.as_str()]).unwrap();
        assert_eq!(r.keys().len(), 2);
        assert_eq!(Recipients::from_stored(&r.to_stored()), Some(r));
    }

    #[test]
    fn enable_then_disable_deletes_entries_and_keeps_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = Recipients::parse(&[key()]).unwrap();
        let st = enable(&store, &r).unwrap();
        assert!(st.enabled);
        assert_eq!(st.recipients, r.to_strings());
        for t in 0..3 {
            store
                .conn()
                .execute(
                    "INSERT INTO querylog_entries(time, data) VALUES (?1, x'00')",
                    [t],
                )
                .unwrap();
        }
        assert_eq!(status(&store).unwrap().entries, 3);

        let n = disable(&store).unwrap();

        assert_eq!(n, 3);
        let st = status(&store).unwrap();
        assert!(!st.enabled);
        assert_eq!(st.entries, 0);
        assert!(st.recipients.is_empty());
        assert_eq!(st.last_seq, 3, "sequence numbers are never reused");
    }
}
