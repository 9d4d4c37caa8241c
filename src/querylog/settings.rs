//! The query log's settings: on/off and the recipients, validated.
//!
//! The store keeps them in `meta` (`querylog.enabled`, `querylog.recipients`, one recipient a
//! line) next to the ciphertexts (see [`crate::store::Store::append_querylog`]); this module
//! parses and checks them. Every change is one transaction, so a running writer that checks
//! the switch inside its own write transaction can never add an entry after `disable`
//! committed. The functions here work on a [`Store`] with or without a running writer.

use std::str::FromStr;

use age::x25519;

use super::QueryLogError;
use crate::store::{QueryLogMeta, Store};

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

/// The on/off switch and recipients as the writer needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogSettings {
    pub enabled: bool,
    /// The stored text, to notice changes cheaply.
    pub recipients_text: String,
    /// `None` when the log is off (or the stored list is damaged).
    pub recipients: Option<Recipients>,
}

impl LogSettings {
    /// The settings as stored: on only with a usable recipient list.
    pub(crate) fn from_meta(m: &QueryLogMeta) -> LogSettings {
        let recipients = if m.enabled {
            Recipients::from_stored(&m.recipients)
        } else {
            None
        };
        LogSettings {
            enabled: m.enabled && recipients.is_some(),
            recipients_text: m.recipients.clone(),
            recipients,
        }
    }
}

/// Reads the settings from `store`.
pub(crate) fn load(store: &Store) -> Result<LogSettings, QueryLogError> {
    Ok(LogSettings::from_meta(&store.querylog_meta()?))
}

/// Whether the log is on, as stored.
pub fn is_enabled(store: &Store) -> Result<bool, QueryLogError> {
    Ok(load(store)?.enabled)
}

/// Turns the log on with exactly these recipients (replacing any earlier set).
///
/// Entries already stored stay encrypted to the recipients of their time. A running writer
/// applies the change at its next [`super::QueryLog::reload`].
pub fn enable(store: &Store, recipients: &Recipients) -> Result<LogStatus, QueryLogError> {
    store.enable_querylog(&recipients.to_stored())?;
    status(store)
}

/// Turns the log off and deletes every stored entry, in one transaction, overwriting the
/// freed pages. Returns how many entries were deleted. A running writer stops writing at once
/// (it re-checks the switch inside each write transaction).
pub fn disable(store: &Store) -> Result<u64, QueryLogError> {
    Ok(store.disable_querylog()?)
}

/// On/off, recipients and what is stored.
pub fn status(store: &Store) -> Result<LogStatus, QueryLogError> {
    let s = load(store)?;
    let c = store.querylog_counts()?;
    Ok(LogStatus {
        enabled: s.enabled,
        recipients: s.recipients.map(|r| r.to_strings()).unwrap_or_default(),
        entries: c.entries,
        oldest: c.oldest,
        newest: c.newest,
        last_seq: c.last_seq,
    })
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
        store
            .append_querylog(|_| Ok::<_, QueryLogError>((0..3).map(|t| (t, vec![0])).collect()))
            .unwrap();
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
