//! The hub's WireGuard key pair, kept in the state dir (`hub.key`, mode 0600), and device keys.
//!
//! Keys are base64 of the 32 raw bytes, as `wg genkey` / `wg pubkey` print them.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use boringtun::x25519::{PublicKey, StaticSecret};

/// File name of the hub's private key inside the state dir.
pub const HUB_KEY_FILE: &str = "hub.key";

/// Why a key could not be read, made or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("hub key file {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The key file or a `--pubkey` is not 32 bytes of base64.
    #[error("{what} is not a WireGuard key (44 characters of base64, as `wg genkey | wg pubkey` prints)")]
    Malformed { what: String },
}

/// A key pair.
#[derive(Clone)]
pub struct KeyPair {
    pub private: StaticSecret,
    pub public: PublicKey,
}

impl KeyPair {
    /// A fresh random key pair.
    pub fn generate() -> KeyPair {
        let bytes: [u8; 32] = rand::random();
        let private = StaticSecret::from(bytes);
        let public = PublicKey::from(&private);
        KeyPair { private, public }
    }

    /// Base64 of the private key.
    pub fn private_b64(&self) -> String {
        B64.encode(self.private.to_bytes())
    }

    /// Base64 of the public key.
    pub fn public_b64(&self) -> String {
        B64.encode(self.public.as_bytes())
    }
}

/// Decodes a base64 WireGuard key; `what` names it in the error.
pub fn decode_key(s: &str, what: &str) -> Result<[u8; 32], KeyError> {
    let v = B64.decode(s.trim()).map_err(|_| KeyError::Malformed {
        what: what.to_string(),
    })?;
    v.try_into().map_err(|_| KeyError::Malformed {
        what: what.to_string(),
    })
}

/// Loads the hub key from `state_dir`, creating it (mode 0600) on first use.
pub fn load_or_create_hub_key(state_dir: &Path) -> Result<KeyPair, KeyError> {
    let path = state_dir.join(HUB_KEY_FILE);
    let io = |cause| KeyError::Io {
        path: path.clone(),
        cause,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let b = decode_key(&s, &path.display().to_string())?;
            let private = StaticSecret::from(b);
            let public = PublicKey::from(&private);
            Ok(KeyPair { private, public })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(state_dir).map_err(io)?;
            let kp = KeyPair::generate();
            write_private(&path, &kp.private_b64()).map_err(io)?;
            Ok(kp)
        }
        Err(e) => Err(io(e)),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn hub_key_is_made_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_hub_key(dir.path()).unwrap();
        let b = load_or_create_hub_key(dir.path()).unwrap();
        assert_eq!(a.public_b64(), b.public_b64());
        let mode = std::fs::metadata(dir.path().join(HUB_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn malformed_key_is_refused() {
        assert!(decode_key("not a key", "--pubkey").is_err());
        let kp = KeyPair::generate();
        assert_eq!(
            decode_key(&kp.public_b64(), "x").unwrap(),
            *kp.public.as_bytes()
        );
    }
}
