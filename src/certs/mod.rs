//! The hub's TLS certificate, shared by every TLS listener (DoT, DoH, the admin page, the
//! API): the configured or self-signed one, or one from an ACME CA ([`acme`]).
//!
//! [`Certs`] is the listeners' certificate resolver. A new certificate is put in force by
//! swapping one pointer: handshakes from then on get it, and connections already open keep
//! theirs, so a renewal needs no restart and drops nothing. It also answers the CA's
//! TLS-ALPN-01 validation handshakes (RFC 8737) with the challenge certificate of the name
//! asked for.

pub mod acme;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

use crate::dns::doh::ACME_TLS_ALPN;
use crate::dns::tls::{TlsError, TlsMaterial};

/// Where the certificate in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertSource {
    /// Made by cloudpc on first start (`tls/cert.pem` in the state dir).
    SelfSigned,
    /// `dns.tls_cert` / `dns.tls_key` from the config.
    Configured,
    /// Issued by the ACME CA.
    Acme,
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    pub source: CertSource,
    /// Subject alternative names (DNS names and addresses).
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Serial number, hex.
    pub serial: String,
    /// SHA-256 of the certificate (DER), hex.
    pub sha256: String,
}

impl CertInfo {
    /// Reads a leaf certificate.
    pub fn of(source: CertSource, der: &[u8]) -> Result<CertInfo, TlsError> {
        let (_, c) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| TlsError::Setup(format!("the certificate does not parse: {e}")))?;
        let names = c
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                            4 => Some(
                                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).ok()?).to_string(),
                            ),
                            16 => Some(
                                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).ok()?)
                                    .to_string(),
                            ),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        Ok(CertInfo {
            source,
            names,
            not_before: c.validity().not_before.timestamp(),
            not_after: c.validity().not_after.timestamp(),
            serial: c.raw_serial_as_string().replace(':', ""),
            sha256: hex(digest.as_ref()),
        })
    }

    /// When a certificate from the CA is renewed: a third of its life before it ends (30 days
    /// for Let's Encrypt's 90).
    pub fn renew_at(&self) -> i64 {
        self.not_after - (self.not_after - self.not_before).max(0) / 3
    }
}

/// Lower-case hex of `b`.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Served {
    key: Arc<CertifiedKey>,
    info: CertInfo,
}

/// How getting a certificate from the CA goes (for `status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeStatus {
    /// The ACME directory asked.
    pub directory: String,
    /// The host name certificates are asked for.
    pub domain: String,
    /// Unix seconds of the last attempt and of the next one planned.
    pub last_attempt: Option<i64>,
    pub next_attempt: Option<i64>,
    /// Why the last attempt failed (`None`: it worked, or none was made yet).
    pub last_error: Option<String>,
    /// Whether the certificate covers the devices' DoT names (`<token>.HOST`): the CA could
    /// validate them (a wildcard DNS record `*.HOST` points at the Cloud PC).
    pub device_names: bool,
}

/// What `status` shows about TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsStatus {
    /// The certificate in force.
    pub served: CertInfo,
    /// With `[tls] acme = true`: how getting one from the CA goes.
    pub acme: Option<AcmeStatus>,
}

/// The certificate in force for every TLS listener, and the ACME challenge certificates.
pub struct Certs {
    served: ArcSwap<Served>,
    /// The configured or self-signed certificate: served until the CA gives one, and again
    /// when the CA's one expired without a renewal.
    fallback: Arc<Served>,
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    acme: Mutex<Option<AcmeStatus>>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("served", &self.served.load().info)
            .finish_non_exhaustive()
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let signer = rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|e| TlsError::Setup(format!("the private key is not usable: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

fn served(
    source: CertSource,
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> Result<Served, TlsError> {
    let leaf = chain
        .first()
        .ok_or_else(|| TlsError::Setup("an empty certificate chain".into()))?;
    let info = CertInfo::of(source, leaf)?;
    let key = certified(chain, key)?;
    key.keys_match()
        .map_err(|e| TlsError::Setup(format!("the key does not match the certificate: {e}")))?;
    Ok(Served { key, info })
}

impl Certs {
    /// Serves `fallback` (the configured or self-signed material) to begin with.
    pub fn new(fallback: &TlsMaterial, configured: bool) -> Result<Arc<Certs>, TlsError> {
        let source = if configured {
            CertSource::Configured
        } else {
            CertSource::SelfSigned
        };
        let fb = Arc::new(served(source, fallback.certs.clone(), &fallback.key)?);
        Ok(Arc::new(Certs {
            served: ArcSwap::new(fb.clone()),
            fallback: fb,
            challenges: Mutex::new(HashMap::new()),
            acme: Mutex::new(None),
        }))
    }

    /// Puts a certificate chain and its key in force (checked first: a bad pair changes
    /// nothing).
    pub fn install(
        &self,
        source: CertSource,
        chain: Vec<CertificateDer<'static>>,
        key: &PrivateKeyDer<'_>,
    ) -> Result<CertInfo, TlsError> {
        let s = served(source, chain, key)?;
        let info = s.info.clone();
        self.served.store(Arc::new(s));
        Ok(info)
    }

    /// Serves the configured or self-signed certificate again.
    pub fn fall_back(&self) {
        self.served.store(self.fallback.clone());
    }

    /// The certificate in force.
    pub fn current(&self) -> CertInfo {
        self.served.load().info.clone()
    }

    /// What `status` shows.
    pub fn status(&self) -> TlsStatus {
        TlsStatus {
            served: self.current(),
            acme: self.acme.lock().clone(),
        }
    }

    /// Updates the ACME part of the status.
    pub fn set_acme_status(&self, f: impl FnOnce(&mut AcmeStatus)) {
        let mut a = self.acme.lock();
        f(a.get_or_insert_with(AcmeStatus::default));
    }

    /// Answers TLS-ALPN-01 validation handshakes for `name` with `key` until cleared.
    pub fn set_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        self.challenges
            .lock()
            .insert(name.to_ascii_lowercase(), key);
    }

    /// Drops every challenge certificate.
    pub fn clear_challenges(&self) {
        self.challenges.lock().clear();
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == ACME_TLS_ALPN));
        if acme {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.challenges.lock().get(&name).cloned();
        }
        Some(self.served.load().key.clone())
    }
}

/// The TLS-ALPN-01 challenge certificate for `name` (RFC 8737 §3): self-signed, for `name`
/// only, with the acmeIdentifier extension holding the SHA-256 of the key authorization.
pub fn challenge_cert(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let setup = |e: rcgen::Error| TlsError::Setup(e.to_string());
    let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(setup)?;
    p.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let kp = rcgen::KeyPair::generate().map_err(setup)?;
    let cert = p.self_signed(&kp).map_err(setup)?;
    let key = PrivateKeyDer::Pkcs8(kp.serialize_der().into());
    certified(vec![cert.der().clone()], &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material(names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (
            vec![ck.cert.der().clone()],
            PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
        )
    }

    #[test]
    fn a_new_certificate_is_served_at_once_and_a_bad_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let m = crate::dns::tls::load_or_create("", "", dir.path(), &["a.test".into()]).unwrap();
        let c = Certs::new(&m, false).unwrap();
        let first = c.current();
        assert_eq!(first.source, CertSource::SelfSigned);
        assert_eq!(first.names, vec!["a.test".to_string()]);
        let (chain, key) = material(&["hub.test", "10.0.0.1"]);
        let info = c.install(CertSource::Acme, chain.clone(), &key).unwrap();
        assert_eq!(c.current(), info);
        assert_eq!(
            info.names,
            vec!["hub.test".to_string(), "10.0.0.1".to_string()]
        );
        assert!(info.renew_at() > info.not_before && info.renew_at() < info.not_after);
        let (_, other_key) = material(&["x.test"]);
        assert!(c.install(CertSource::Acme, chain, &other_key).is_err());
        assert_eq!(c.current(), info, "a mismatched pair is refused");
        c.fall_back();
        assert_eq!(c.current(), first);
    }

    #[test]
    fn challenge_certificates_carry_the_acme_identifier() {
        let ck = challenge_cert("hub.test", &[7u8; 32]).unwrap();
        let der = ck.cert[0].as_ref();
        let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
        // id-pe-acmeIdentifier 1.3.6.1.5.5.7.1.31, critical, OCTET STRING of the digest.
        let ext = c
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        assert!(ext.value.ends_with(&[7u8; 32]));
    }
}
