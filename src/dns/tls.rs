//! TLS material for DoT and DoH: the configured certificate, or a self-signed one made on first
//! start and kept in the state dir (`tls/cert.pem`, `tls/key.pem` mode 0600).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The PEM holds no usable certificate or key.
    #[error(
        "{path}: {why}; expected PEM (`tls_cert` = certificate chain, `tls_key` = private key)"
    )]
    Pem { path: PathBuf, why: String },
    /// rustls or rcgen refused.
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// The certificate chain and key in force.
pub struct TlsMaterial {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Where the certificate is (clients may pin or trust it).
    pub cert_path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |cause| TlsError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Loads `cert`/`key` when set, else the self-signed pair in `state_dir/tls`, made if missing
/// with `names` (DNS names or IPs) as subject alternative names.
pub fn load_or_create(
    cert: &str,
    key: &str,
    state_dir: &Path,
    names: &[String],
) -> Result<TlsMaterial, TlsError> {
    let (cert_path, key_path) = if cert.is_empty() {
        let dir = state_dir.join("tls");
        let c = dir.join("cert.pem");
        let k = dir.join("key.pem");
        if !c.exists() || !k.exists() {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let ck = rcgen::generate_simple_self_signed(names.to_vec())
                .map_err(|e| TlsError::Setup(e.to_string()))?;
            write_file(&k, ck.signing_key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&c, ck.cert.pem().as_bytes(), 0o644)?;
            tracing::info!(path = %c.display(), "made a self-signed certificate for DoT/DoH");
        }
        (c, k)
    } else {
        (PathBuf::from(cert), PathBuf::from(key))
    };
    let pem = std::fs::read(&cert_path).map_err(io(&cert_path))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert_path.clone(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: cert_path,
            why: "no certificate".into(),
        });
    }
    let kpem = std::fs::read(&key_path).map_err(io(&key_path))?;
    let key = rustls_pemfile::private_key(&mut kpem.as_slice())
        .map_err(|e| TlsError::Pem {
            path: key_path.clone(),
            why: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: key_path.clone(),
            why: "no private key".into(),
        })?;
    Ok(TlsMaterial {
        certs,
        key,
        cert_path,
    })
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(data).map_err(io(path))
}

/// A rustls server config with the given ALPN protocols, serving the certificate `certs`
/// has in force at each handshake.
pub fn server_config(
    certs: &Arc<crate::certs::Certs>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pair_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create("", "", dir.path(), &["cloudpc".into()]).unwrap();
        let b = load_or_create("", "", dir.path(), &["other".into()]).unwrap();
        assert_eq!(a.certs[0], b.certs[0]);
        let certs = crate::certs::Certs::new(&a, false).unwrap();
        assert!(server_config(&certs, &[b"dot"]).is_ok());
    }

    #[test]
    fn garbage_pem_gives_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("c.pem");
        std::fs::write(&c, "junk").unwrap();
        let e = load_or_create(c.to_str().unwrap(), c.to_str().unwrap(), dir.path(), &[])
            .err()
            .unwrap();
        assert!(e.to_string().contains("c.pem"), "{e}");
    }
}
