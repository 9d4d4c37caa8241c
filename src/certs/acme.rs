//! Certificates from an ACME CA (RFC 8555; Let's Encrypt by default) with the TLS-ALPN-01
//! challenge (RFC 8737), answered by the hub's own HTTPS listeners on port 443.
//!
//! One task owns it ([`spawn`]). It asks for a certificate for `[tls] domain` and, when the CA
//! can validate them, for every device's DoT name `<token>.domain` (this needs a wildcard DNS
//! record `*.domain` pointing at the Cloud PC; without it the certificate covers `domain`
//! only, and devices use DoH, whose token is in the path). It keeps the account, certificate
//! and key in `tls/acme/` of the state dir, renews a third of the certificate's life before it
//! ends, asks again when the devices' names change, and on failure keeps serving what it has,
//! tries again with back-off (1 min doubling to 6 h) and says so in `status` and the log. A
//! certificate that expires without a renewal gives way to the self-signed one, loudly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, oneshot, watch};

use super::{CertInfo, CertSource, Certs};

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Most names in one certificate (Let's Encrypt's limit).
pub const MAX_NAMES: usize = 100;
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// Time allowed for validation and for issuance, each.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);
/// Device names that change in a burst (several `device add`s) make one order.
const SETTLE: Duration = Duration::from_secs(2);

/// `[tls]` as the ACME task needs it.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub directory: String,
    /// Contact address (optional).
    pub email: String,
    /// Extra root the CA's own HTTPS is trusted with (a private CA such as Pebble).
    pub ca: Option<PathBuf>,
    /// The Cloud PC's public host name.
    pub domain: String,
    /// Where the account, certificate and key are kept.
    pub dir: PathBuf,
}

/// Why an order failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("the ACME server: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("{0}")]
    Other(String),
}

fn other(e: impl std::fmt::Display) -> AcmeError {
    AcmeError::Other(e.to_string())
}

/// Talks to the ACME task.
#[derive(Clone)]
pub struct AcmeHandle {
    names: watch::Sender<Vec<String>>,
    renew: mpsc::Sender<oneshot::Sender<Result<CertInfo, String>>>,
}

impl AcmeHandle {
    /// The devices' DoT names (`<token>.domain`) the certificate should cover.
    pub fn set_device_names(&self, mut names: Vec<String>) {
        names.sort();
        self.names.send_if_modified(|n| {
            let changed = *n != names;
            *n = names;
            changed
        });
    }

    /// Asks the CA for a new certificate now; returns it once in force.
    pub async fn renew(&self) -> Result<CertInfo, String> {
        let (tx, rx) = oneshot::channel();
        self.renew
            .send(tx)
            .await
            .map_err(|_| "the certificate task has stopped".to_string())?;
        rx.await
            .map_err(|_| "the certificate task has stopped".to_string())?
    }
}

/// Starts the ACME task for `certs`.
pub fn spawn(certs: Arc<Certs>, s: AcmeSettings) -> AcmeHandle {
    let (names, names_rx) = watch::channel(Vec::new());
    let (renew, renew_rx) = mpsc::channel(4);
    certs.set_acme_status(|a| {
        a.directory = s.directory.clone();
        a.domain = s.domain.clone();
        a.device_names = true;
    });
    tokio::spawn(run(certs, s, names_rx, renew_rx));
    AcmeHandle { names, renew }
}

fn unix_now() -> i64 {
    crate::store::unix_now()
}

/// The names to ask for: the domain, then the device names (while the CA can validate them).
fn wanted(domain: &str, devices: &[String], with_devices: bool) -> Vec<String> {
    let mut v = vec![domain.to_string()];
    if with_devices {
        v.extend(devices.iter().take(MAX_NAMES - 1).cloned());
    }
    v
}

fn same_names(a: &[String], b: &[String]) -> bool {
    let mut a: Vec<_> = a.iter().map(|s| s.to_ascii_lowercase()).collect();
    let mut b: Vec<_> = b.iter().map(|s| s.to_ascii_lowercase()).collect();
    a.sort();
    b.sort();
    a == b
}

async fn run(
    certs: Arc<Certs>,
    s: AcmeSettings,
    mut names_rx: watch::Receiver<Vec<String>>,
    mut renew_rx: mpsc::Receiver<oneshot::Sender<Result<CertInfo, String>>>,
) {
    match load_stored(&s.dir) {
        Ok(Some((chain, key))) => match certs.install(CertSource::Acme, chain, &key) {
            Ok(info) if info.not_after > unix_now() => {
                tracing::info!(not_after = info.not_after, "serving the CA's certificate");
            }
            Ok(_) => {
                certs.fall_back();
                tracing::warn!("the stored certificate from the CA has expired; asking again");
            }
            Err(e) => tracing::warn!(error = %e, "the stored certificate does not load"),
        },
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "the stored certificate does not read"),
    }
    let mut account: Option<Account> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut with_devices = true;
    // When to ask next (Unix seconds); `failing` = the last attempt failed.
    let mut failing = false;
    let mut next = plan(&certs, &s, &names_rx.borrow(), with_devices);
    loop {
        certs.set_acme_status(|a| a.next_attempt = Some(next));
        let wait = Duration::from_secs((next - unix_now()).max(0) as u64);
        let mut forced: Option<oneshot::Sender<Result<CertInfo, String>>> = None;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = names_rx.changed() => {
                if r.is_err() {
                    return;
                }
                tokio::time::sleep(SETTLE).await;
                if !failing {
                    next = plan(&certs, &s, &names_rx.borrow_and_update(), with_devices);
                }
                continue;
            }
            Some(reply) = renew_rx.recv() => forced = Some(reply),
        }
        let devices = names_rx.borrow().clone();
        if forced.is_some() {
            // The owner asked: try the device names again too.
            with_devices = true;
        } else if !failing && next > unix_now() {
            continue;
        }
        let result = attempt(&certs, &s, &mut account, &devices, &mut with_devices).await;
        let now = unix_now();
        certs.set_acme_status(|a| {
            a.last_attempt = Some(now);
            a.device_names = with_devices;
        });
        match result {
            Ok(info) => {
                tracing::info!(
                    names = info.names.len(),
                    not_after = info.not_after,
                    "new certificate from the CA in force"
                );
                certs.set_acme_status(|a| a.last_error = None);
                failing = false;
                backoff = FIRST_BACKOFF;
                next = plan(&certs, &s, &devices, with_devices);
                certs.set_acme_status(|a| a.next_attempt = Some(next));
                if let Some(r) = forced {
                    let _ = r.send(Ok(info));
                }
            }
            Err(e) => {
                let why = e.to_string();
                tracing::warn!(error = %why, retry_in_s = backoff.as_secs(), "could not get a certificate from the CA; serving the current one");
                certs.set_acme_status(|a| a.last_error = Some(why.clone()));
                let cur = certs.current();
                if cur.source == CertSource::Acme && cur.not_after <= now {
                    certs.fall_back();
                    tracing::error!("the CA's certificate has expired and could not be renewed: serving the self-signed certificate, which phones and browsers refuse");
                }
                failing = true;
                next = now + backoff.as_secs() as i64;
                if cur.source == CertSource::Acme && cur.not_after > now {
                    // Wake at the expiry to fall back, if that comes before the retry.
                    next = next.min(cur.not_after);
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                certs.set_acme_status(|a| a.next_attempt = Some(next));
                if let Some(r) = forced {
                    let _ = r.send(Err(why));
                }
            }
        }
    }
}

/// When to ask the CA next (Unix seconds): now when the certificate in force is not the CA's,
/// does not cover the names wanted, or is due for renewal; else at its renewal time.
fn plan(certs: &Certs, s: &AcmeSettings, devices: &[String], with_devices: bool) -> i64 {
    let cur = certs.current();
    let now = unix_now();
    if cur.source != CertSource::Acme || cur.not_after <= now {
        return now;
    }
    if with_devices && !same_names(&cur.names, &wanted(&s.domain, devices, true)) {
        return now;
    }
    cur.renew_at().max(now)
}

/// One try: every wanted name, then (when the CA could not validate the device names) the
/// domain alone.
async fn attempt(
    certs: &Certs,
    s: &AcmeSettings,
    account: &mut Option<Account>,
    devices: &[String],
    with_devices: &mut bool,
) -> Result<CertInfo, AcmeError> {
    if account.is_none() {
        *account = Some(load_or_create_account(s).await?);
    }
    let acct = account.as_ref().expect("set above");
    let names = wanted(&s.domain, devices, *with_devices);
    let issued = match order(certs, acct, &names).await {
        Err(e) if names.len() > 1 => {
            tracing::warn!(error = %e, "the CA did not issue the devices' DoT names (is there a wildcard DNS record for them?); asking for the host name alone");
            *with_devices = false;
            order(certs, acct, &names[..1]).await
        }
        r => r,
    };
    certs.clear_challenges();
    let (chain_pem, key_pem) = issued?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(other)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(other)?
        .ok_or_else(|| other("no key"))?;
    let info = certs
        .install(CertSource::Acme, chain, &key)
        .map_err(other)?;
    store_files(&s.dir, &chain_pem, &key_pem).map_err(other)?;
    Ok(info)
}

/// Orders a certificate for `names`; returns the chain and the key, PEM.
async fn order(
    certs: &Certs,
    acct: &Account,
    names: &[String],
) -> Result<(String, String), AcmeError> {
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = acct.new_order(&NewOrder::new(&ids)).await?;
    let mut auths = order.authorizations();
    while let Some(a) = auths.next().await {
        let mut a = a?;
        match a.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => {
                return Err(AcmeError::Other(format!(
                    "an authorization is {other:?}, not pending"
                )))
            }
        }
        let mut ch = a
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or_else(|| other("the CA offers no tls-alpn-01 challenge"))?;
        let name = ch.identifier().to_string();
        let digest = ch.key_authorization().digest();
        certs.set_challenge(
            &name,
            super::challenge_cert(&name, digest.as_ref()).map_err(other)?,
        );
        ch.set_ready().await?;
    }
    let retry = RetryPolicy::new().timeout(ORDER_TIMEOUT);
    let status = order.poll_ready(&retry).await?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::Other(format!(
            "the order is {status:?} after validation"
        )));
    }
    let key = rcgen::KeyPair::generate().map_err(other)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(other)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(other)?;
    order.finalize_csr(csr.der()).await?;
    let chain = order.poll_certificate(&retry).await?;
    Ok((chain, key.serialize_pem()))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

async fn load_or_create_account(s: &AcmeSettings) -> Result<Account, AcmeError> {
    let builder = || match &s.ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let path = s.dir.join("account.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        match serde_json::from_str::<StoredAccount>(&text) {
            Ok(st) if st.directory == s.directory => {
                return Ok(builder()?.from_credentials(st.credentials).await?);
            }
            Ok(_) => tracing::info!("the ACME directory changed: making a new account"),
            Err(e) => {
                tracing::warn!(error = %e, "the stored ACME account does not read: making a new one")
            }
        }
    }
    let contact = format!("mailto:{}", s.email);
    let contacts: Vec<&str> = if s.email.is_empty() {
        vec![]
    } else {
        vec![contact.as_str()]
    };
    let (acct, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            s.directory.clone(),
            None,
        )
        .await?;
    let stored = StoredAccount {
        directory: s.directory.clone(),
        credentials,
    };
    let json = serde_json::to_vec_pretty(&stored).map_err(other)?;
    write_private(&path, &json).map_err(other)?;
    Ok(acct)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Keeps the certificate and key (each written whole, then renamed into place).
fn store_files(dir: &Path, chain: &str, key: &str) -> std::io::Result<()> {
    write_private(&dir.join("key.pem"), key.as_bytes())?;
    write_private(&dir.join("cert.pem"), chain.as_bytes())
}

type Stored = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn load_stored(dir: &Path) -> Result<Option<Stored>, String> {
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !c.exists() || !k.exists() {
        return Ok(None);
    }
    let m = crate::dns::tls::load_or_create(
        c.to_str().unwrap_or_default(),
        k.to_str().unwrap_or_default(),
        dir,
        &[],
    )
    .map_err(|e| e.to_string())?;
    Ok(Some((m.certs, m.key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_asked_for() {
        let devs: Vec<String> = (0..150).map(|i| format!("t{i}.hub.test")).collect();
        let w = wanted("hub.test", &devs, true);
        assert_eq!(w.len(), MAX_NAMES);
        assert_eq!(w[0], "hub.test");
        assert_eq!(
            wanted("hub.test", &devs, false),
            vec!["hub.test".to_string()]
        );
        assert!(same_names(
            &["B.test".into(), "a.test".into()],
            &["a.test".into(), "b.test".into()]
        ));
        assert!(!same_names(&["a.test".into()], &["b.test".into()]));
    }

    #[tokio::test]
    async fn an_unreachable_ca_keeps_the_certificate_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let m = crate::dns::tls::load_or_create("", "", dir.path(), &["hub.test".into()]).unwrap();
        let certs = Certs::new(&m, false).unwrap();
        let before = certs.current();
        // A port nothing listens on: the directory cannot be fetched.
        let h = spawn(
            certs.clone(),
            AcmeSettings {
                directory: "https://127.0.0.1:9/dir".into(),
                email: String::new(),
                ca: None,
                domain: "hub.test".into(),
                dir: dir.path().join("acme"),
            },
        );
        let e = h.renew().await.unwrap_err();
        assert!(!e.is_empty());
        let st = certs.status();
        assert_eq!(st.served, before, "the current certificate stays");
        let a = st.acme.unwrap();
        assert_eq!(a.last_error.as_deref(), Some(e.as_str()));
        assert!(a.next_attempt.unwrap() >= a.last_attempt.unwrap() + 30);
    }
}
