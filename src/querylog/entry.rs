//! One log entry: its plaintext form (JSON, padded) and its age encryption.
//!
//! Each entry is its own age file, so one damaged ciphertext costs one entry and entries can
//! be fetched and decrypted one by one.

use std::io::{Read, Write};
use std::net::IpAddr;

use age::x25519;

use super::Verdict;

/// Plaintext is padded with spaces (valid trailing JSON whitespace) to a multiple of this many
/// bytes, so the ciphertext length does not give away the length of the name.
pub const PAD_TO: usize = 128;

/// Largest plaintext accepted when decrypting: a DNS name is at most 253 bytes, so a real entry
/// is far below this; anything bigger is not one of ours.
pub const MAX_PLAINTEXT: u64 = 16 * 1024;

/// What one entry says, as encrypted and as printed by `cloudpc querylog pull --json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogEntry {
    /// Unix time of the query in milliseconds.
    pub time_ms: i64,
    /// Registered device the query came from; `None` for other clients (loopback, `allow_from`).
    pub device: Option<String>,
    /// Source address of the query.
    pub client: IpAddr,
    /// Query name.
    pub name: String,
    /// Query type number (1 = A, 28 = AAAA, ...).
    pub qtype: u16,
    pub verdict: Verdict,
    /// Response code (0 = NOERROR, 3 = NXDOMAIN, ...).
    pub rcode: u16,
    /// Upstream latency, when an upstream was asked.
    pub upstream_ms: Option<u32>,
}

impl LogEntry {
    /// Serialises and pads the entry.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising a struct of plain fields to a Vec cannot fail.
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        let padded = v.len().div_ceil(PAD_TO).max(1) * PAD_TO;
        v.resize(padded, b' ');
        v
    }

    /// Parses a decrypted plaintext.
    pub fn decode(plain: &[u8]) -> Result<LogEntry, serde_json::Error> {
        serde_json::from_slice(plain)
    }
}

/// Encrypts `plain` to every recipient (binary age format, no armor).
pub fn encrypt(recipients: &[x25519::Recipient], plain: &[u8]) -> Result<Vec<u8>, String> {
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(plain.len() + 128 + 96 * recipients.len());
    let mut w = enc.wrap_output(&mut out).map_err(|e| e.to_string())?;
    w.write_all(plain).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Why one ciphertext could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptFailure {
    /// The entry is intact but encrypted to other keys (e.g. written before this device's key
    /// was added as a recipient).
    #[error("not encrypted to this identity")]
    NotForThisKey,
    /// The ciphertext or its plaintext is damaged.
    #[error("damaged entry: {0}")]
    Corrupt(String),
}

/// Decrypts and parses one ciphertext with any of `identities`.
pub fn decrypt(
    identities: &[Box<dyn age::Identity + Send + Sync>],
    ciphertext: &[u8],
) -> Result<LogEntry, DecryptFailure> {
    let d = age::Decryptor::new_buffered(ciphertext)
        .map_err(|e| DecryptFailure::Corrupt(e.to_string()))?;
    let mut r = d
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => DecryptFailure::NotForThisKey,
            e => DecryptFailure::Corrupt(e.to_string()),
        })?;
    let mut plain = Vec::new();
    (&mut r)
        .take(MAX_PLAINTEXT + 1)
        .read_to_end(&mut plain)
        .map_err(|e| DecryptFailure::Corrupt(e.to_string()))?;
    if plain.len() as u64 > MAX_PLAINTEXT {
        return Err(DecryptFailure::Corrupt("entry too large".into()));
    }
    LogEntry::decode(&plain).map_err(|e| DecryptFailure::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> LogEntry {
        LogEntry {
            time_ms: 1_764_000_000_123,
            device: Some("laptop".into()),
            client: "100.96.0.2".parse().unwrap(),
            name: name.into(),
            qtype: 28,
            verdict: Verdict::Blocked,
            rcode: 0,
            upstream_ms: None,
        }
    }

    fn ids(i: &x25519::Identity) -> Vec<Box<dyn age::Identity + Send + Sync>> {
        vec![Box::new(i.clone())]
    }

    #[test]
    fn padding_hides_name_length_and_still_parses() {
        let short = entry("a.io").encode();
        let longer = entry("tracker.analytics.example.com").encode();
        assert_eq!(short.len() % PAD_TO, 0);
        assert_eq!(short.len(), longer.len());
        assert_eq!(LogEntry::decode(&short).unwrap(), entry("a.io"));
    }

    #[test]
    fn every_recipient_decrypts_and_others_cannot() {
        let (a, b, stranger) = (
            x25519::Identity::generate(),
            x25519::Identity::generate(),
            x25519::Identity::generate(),
        );
        let ct = encrypt(
            &[a.to_public(), b.to_public()],
            &entry("x.example").encode(),
        )
        .unwrap();

        assert_eq!(decrypt(&ids(&a), &ct).unwrap(), entry("x.example"));
        assert_eq!(decrypt(&ids(&b), &ct).unwrap(), entry("x.example"));
        assert_eq!(
            decrypt(&ids(&stranger), &ct),
            Err(DecryptFailure::NotForThisKey)
        );
        assert!(!ct.windows(9).any(|w| w == b"x.example"));
    }

    #[test]
    fn flipped_byte_is_reported_corrupt() {
        let a = x25519::Identity::generate();
        let mut ct = encrypt(&[a.to_public()], &entry("x.example").encode()).unwrap();
        let last = ct.len() - 1;
        ct[last] ^= 1;
        assert!(matches!(
            decrypt(&ids(&a), &ct),
            Err(DecryptFailure::Corrupt(_))
        ));
        assert!(matches!(
            decrypt(&ids(&a), b"garbage"),
            Err(DecryptFailure::Corrupt(_))
        ));
    }
}
