//! Who is asking for the admin page, logins, and the checks every write passes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hyper::header::{self, HeaderMap};
use hyper::StatusCode;
use parking_lot::Mutex;

use super::{text, Form, Resp};
use crate::api::ApiError;
use crate::daemon::Control;

/// The session cookie's name.
pub const COOKIE: &str = "cloudpc_session";
/// A session unused for this long is over.
pub const IDLE_SECS: i64 = 30 * 86_400;
/// Wrong passwords from one address before it must wait.
const MAX_FAILURES: u32 = 5;
/// How long an address waits after [`MAX_FAILURES`], and the window they are counted in.
const LOCKOUT: Duration = Duration::from_secs(300);
/// Most addresses tracked for failed logins (the oldest go first).
const MAX_TRACKED: usize = 4096;
/// Shortest admin password.
pub const MIN_PASSWORD: usize = 10;

/// Who a request is from.
#[derive(Debug, Clone)]
pub enum Who {
    /// An admin device on the overlay (by its WireGuard identity).
    Device { name: String, public_key: String },
    /// A browser with a valid session cookie.
    Session { id: i64, hash: [u8; 32] },
    /// Anyone else: may only log in.
    Anonymous,
}

/// Why a login or a password change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no admin password is set: run `cloudpc admin password` on the Cloud PC")]
    NoPassword,
    #[error("wrong password")]
    Wrong,
    #[error("too many wrong passwords from this address; wait 5 minutes")]
    RateLimited,
    #[error("the password must be at least {MIN_PASSWORD} characters")]
    TooShort,
    #[error("{0}")]
    Store(String),
}

/// Hashes `password` for the store (argon2id, a random salt, the crate's default cost).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    if password.chars().count() < MIN_PASSWORD {
        return Err(AuthError::TooShort);
    }
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| AuthError::Store(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Store(e.to_string()))
}

fn verify_password(phc: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// SHA-256 of a session token (what the store keeps).
fn token_hash(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut h = [0u8; 32];
    h.copy_from_slice(d.as_ref());
    h
}

/// The login bookkeeping.
pub struct Auth {
    csrf: ring::hmac::Key,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

fn forbidden() -> Resp {
    text(
        StatusCode::FORBIDDEN,
        "403: this device is not an admin of this Cloud PC\n",
    )
}

impl Auth {
    /// Reads (or makes) the CSRF secret.
    pub fn new(control: &Control) -> Result<Auth, ApiError> {
        let key = control.with_store(|s| s.admin_csrf_key())?;
        Ok(Auth {
            csrf: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Who sent a request from `ip` with `headers`; non-admin devices get their 403 here.
    pub async fn who(
        &self,
        control: &Control,
        ip: IpAddr,
        headers: &HeaderMap,
    ) -> Result<Who, Box<Resp>> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if control.overlay().nets().iter().any(|n| n.contains(&ip)) {
            return match control.device_at(ip) {
                Some(d) if d.is_admin() => Ok(Who::Device {
                    name: d.name,
                    public_key: d.public_key,
                }),
                _ => Err(Box::new(forbidden())),
            };
        }
        let Some(token) = cookie(headers, COOKIE) else {
            return Ok(Who::Anonymous);
        };
        let hash = token_hash(&token);
        match control.with_store(|s| s.use_admin_session(&hash, IDLE_SECS)) {
            Ok(Some(s)) => Ok(Who::Session { id: s.id, hash }),
            Ok(None) => Ok(Who::Anonymous),
            Err(_) => Err(Box::new(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the state database cannot be read\n",
            ))),
        }
    }

    /// The CSRF token of `who`'s pages (empty for [`Who::Anonymous`]).
    pub fn csrf(&self, who: &Who) -> String {
        let tag = match who {
            Who::Device { public_key, .. } => format!("device:{public_key}"),
            Who::Session { hash, .. } => format!("session:{}", URL_SAFE_NO_PAD.encode(hash)),
            Who::Anonymous => return String::new(),
        };
        URL_SAFE_NO_PAD.encode(ring::hmac::sign(&self.csrf, tag.as_bytes()))
    }

    /// A write must come from a page of this very host (`Origin`), and, but for the login
    /// itself, from someone let in with that someone's CSRF token.
    pub fn check_write(
        &self,
        who: &Who,
        host: &str,
        headers: &HeaderMap,
        path: &str,
        form: &Form,
    ) -> Result<(), Box<Resp>> {
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if host.is_empty() || origin != format!("https://{host}") {
            tracing::info!("admin page: a write from another origin was refused");
            return Err(Box::new(text(
                StatusCode::FORBIDDEN,
                "403: this form was not sent from this admin page (Origin)\n",
            )));
        }
        if path == "/login" {
            return Ok(());
        }
        if matches!(who, Who::Anonymous) {
            return Err(Box::new(text(StatusCode::FORBIDDEN, "403: log in first\n")));
        }
        let expected = self.csrf(who);
        let given = form.get("csrf").unwrap_or("");
        let ok = URL_SAFE_NO_PAD
            .decode(given)
            .ok()
            .zip(URL_SAFE_NO_PAD.decode(&expected).ok())
            .is_some_and(|(g, e)| {
                #[allow(deprecated)]
                ring::constant_time::verify_slices_are_equal(&g, &e).is_ok()
            });
        if !ok {
            tracing::info!("admin page: a write without a valid CSRF token was refused");
            return Err(Box::new(text(
                StatusCode::FORBIDDEN,
                "403: the form's CSRF token is missing or wrong; reload the page\n",
            )));
        }
        Ok(())
    }

    /// Checks `password` for a login from `ip`; on success a new session's token.
    pub async fn login(
        &self,
        control: &std::sync::Arc<Control>,
        ip: IpAddr,
        password: String,
        agent: String,
    ) -> Result<String, AuthError> {
        let now = Instant::now();
        {
            let mut f = self.failures.lock();
            f.retain(|_, (_, since)| now.duration_since(*since) < LOCKOUT);
            if f.get(&ip).is_some_and(|(n, _)| *n >= MAX_FAILURES) {
                return Err(AuthError::RateLimited);
            }
        }
        let phc = control
            .with_store(|s| s.admin_password())
            .map_err(|e| AuthError::Store(e.to_string()))?
            .ok_or(AuthError::NoPassword)?;
        let ok = tokio::task::spawn_blocking(move || verify_password(&phc, &password))
            .await
            .unwrap_or(false);
        if !ok {
            let mut f = self.failures.lock();
            if f.len() >= MAX_TRACKED && !f.contains_key(&ip) {
                if let Some(oldest) = f.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                    f.remove(&oldest);
                }
            }
            let e = f.entry(ip).or_insert((0, now));
            e.0 += 1;
            tracing::info!("admin page: a wrong password was refused");
            return Err(AuthError::Wrong);
        }
        self.failures.lock().remove(&ip);
        let raw: [u8; 32] = rand::random();
        let token = URL_SAFE_NO_PAD.encode(raw);
        control
            .with_store(|s| s.add_admin_session(&token_hash(&token), &agent))
            .map_err(|e| AuthError::Store(e.to_string()))?;
        Ok(token)
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name && !v.is_empty()).then(|| v.to_string())
        })
}

/// The `Set-Cookie` value of a new session.
pub fn session_cookie(token: &str) -> String {
    format!("{COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={IDLE_SECS}")
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn cleared_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_a_salt_and_verify() {
        let a = hash_password("correct horse battery").unwrap();
        let b = hash_password("correct horse battery").unwrap();
        assert_ne!(a, b, "salted");
        assert!(a.starts_with("$argon2id$"));
        assert!(verify_password(&a, "correct horse battery"));
        assert!(!verify_password(&a, "correct horse batterY"));
        assert!(!verify_password("not a hash", "x"));
        assert!(matches!(hash_password("short"), Err(AuthError::TooShort)));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; cloudpc_session=tok".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("tok"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "xcloudpc_session=no".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), None);
        assert!(session_cookie("t").contains("HttpOnly; Secure; SameSite=Strict"));
    }
}
