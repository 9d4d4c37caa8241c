//! The admin page: the private network managed from a browser, served on the TLS listener
//! that DNS-over-HTTPS uses (`/dns-query` stays DoH; everything else is this page).
//!
//! Who gets in (`auth`):
//! - an admin device (owners are admins), known by the WireGuard identity behind its overlay
//!   source address: no password;
//! - any other device on the overlay: 403 and nothing else;
//! - anyone else (e.g. `https://127.0.0.1/` through an SSH tunnel): the password set with
//!   `cloudpc admin password`, then a session cookie (`HttpOnly; Secure; SameSite=Strict`),
//!   stored hashed, listed and revocable; logins are rate limited per address.
//!
//! Every write is a form POST that must carry the page's CSRF token and an `Origin` of this
//! very host. Pages are rendered on the server (maud), with one embedded stylesheet; the only
//! script is the history page's, which decrypts the query log in the browser. Nothing is
//! fetched from anywhere else.

mod auth;
mod invite;
mod pages;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

pub use auth::{hash_password, AuthError};
pub use invite::is_invite_path;

use crate::daemon::Control;

type Resp = Response<Full<Bytes>>;

/// Largest form body taken (a device name, a list URL, a password).
const MAX_FORM: usize = 16 * 1024;
/// Longest value of one form field.
const MAX_FIELD: usize = 2048;

/// The admin page's state: the owner of state, and the login bookkeeping.
pub struct Admin {
    control: Arc<Control>,
    auth: auth::Auth,
}

impl Admin {
    /// The admin page over `control`.
    pub fn new(control: Arc<Control>) -> Result<Admin, crate::api::ApiError> {
        let auth = auth::Auth::new(&control)?;
        Ok(Admin { control, auth })
    }

    /// Answers a request for the invite page (anyone may: see [`is_invite_path`]).
    pub async fn handle_invite(self: &Arc<Self>, req: Request<hyper::body::Incoming>) -> Resp {
        invite::handle(&self.control, req).await
    }

    /// Answers one request from `peer`.
    pub async fn handle(
        self: &Arc<Self>,
        peer: SocketAddr,
        req: Request<hyper::body::Incoming>,
    ) -> Resp {
        let (parts, body) = req.into_parts();
        let who = match self
            .auth
            .who(&self.control, peer.ip(), &parts.headers)
            .await
        {
            Ok(w) => w,
            Err(resp) => {
                // Read what the refused request sent (bounded) before answering: a connection
                // closed with unread data goes out as a TCP reset, which can reach the client
                // before the 403 does.
                let _ = Limited::new(body, MAX_FORM).collect().await;
                return *resp;
            }
        };
        let path = parts.uri.path().to_string();
        if parts.method == Method::POST {
            let form = match read_form(body).await {
                Ok(f) => f,
                Err(r) => return *r,
            };
            // HTTP/1.1 names the host in `Host`, HTTP/2 in the `:authority` of the URI.
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| parts.uri.authority().map(|a| a.to_string()))
                .unwrap_or_default();
            if let Err(r) = self
                .auth
                .check_write(&who, &host, &parts.headers, &path, &form)
            {
                return *r;
            }
            return pages::post(self, &who, peer, &parts.headers, &path, &form).await;
        }
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST\n");
        }
        let query = parts.uri.query().unwrap_or("").to_string();
        pages::get(self, &who, &path, &query).await
    }
}

/// A plain-text answer.
fn text(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// An HTML page with the headers every page carries: no caching (pages show private keys
/// and live state), no framing, no content from anywhere but here.
fn html(status: StatusCode, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: under `no-referrer` a browser sends `Origin: null`
    // with a form POST, and the Origin check could not tell this page's forms from others.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// A redirect after a POST (the browser then GETs `to`).
fn see_other(to: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A submitted form: `application/x-www-form-urlencoded` fields, in order.
pub struct Form(Vec<(String, String)>);

impl Form {
    /// The first value of field `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when checkbox `name` was ticked.
    pub fn checked(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| !v.is_empty())
    }

    /// Parses a form body; refuses over-long fields.
    pub fn parse(body: &[u8]) -> Result<Form, &'static str> {
        let mut out = Vec::new();
        for (k, v) in form_urlencoded(body) {
            if k.len() > 64 || v.len() > MAX_FIELD {
                return Err("a form field is too long\n");
            }
            out.push((k, v));
        }
        Ok(Form(out))
    }
}

/// `k=v&k2=v2` with `+` as space and `%XX` escapes (invalid UTF-8 replaced).
fn form_urlencoded(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &[u8]) -> String {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => {
                    let hex = std::str::from_utf8(&s[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match hex {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|b| *b == b'=') {
            Some(i) => (decode(&p[..i]), decode(&p[i + 1..])),
            None => (decode(p), String::new()),
        })
        .collect()
}

async fn read_form(body: hyper::body::Incoming) -> Result<Form, Box<Resp>> {
    let bytes = match Limited::new(body, MAX_FORM).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(Box::new(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the form is too large\n",
            )))
        }
    };
    Form::parse(&bytes).map_err(|why| Box::new(text(StatusCode::PAYLOAD_TOO_LARGE, why)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_escapes_and_refuse_long_fields() {
        let f = Form::parse(b"name=my+phone&url=https%3A%2F%2Fx.test%2Fl.txt&bad=%zz&e").unwrap();
        assert_eq!(f.get("name"), Some("my phone"));
        assert_eq!(f.get("url"), Some("https://x.test/l.txt"));
        assert_eq!(f.get("bad"), Some("%zz"));
        assert_eq!(f.get("e"), Some(""));
        assert!(!f.checked("e") && !f.checked("missing"));
        assert_eq!(Form::parse(b"x=%4").unwrap().get("x"), Some("%4"));
        let long = format!("name={}", "a".repeat(MAX_FIELD + 1));
        assert!(Form::parse(long.as_bytes()).is_err());
    }

    #[test]
    fn fuzz_admin_forms() {
        let seeds = vec![b"a=b&c=%41%4".to_vec(), b"csrf=x&name=%E2%82%AC+".to_vec()];
        crate::fuzz::run("admin_forms", crate::fuzz::bytes(seeds, 400), |b| {
            if let Ok(f) = Form::parse(b) {
                for (k, v) in &f.0 {
                    assert!(k.len() <= 64 && v.len() <= MAX_FIELD);
                }
            }
        });
    }
}
