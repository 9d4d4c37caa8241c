//! The invite page, served to anyone on the hub's HTTPS listeners (the invited device is not
//! on the network yet): `/invite` with its script and style, and `POST /invite/redeem`. The
//! script makes the device's key pair in the browser and sends only the public key; the code
//! in the link's fragment never reaches a server log.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use maud::{html as m, DOCTYPE};

use super::{html, text, Resp};
use crate::daemon::Control;

const INVITE_JS: &str = include_str!("invite.js");
const STYLE: &str = include_str!("style.css");
/// Largest redeem body (a code, a key, a name).
const MAX_REDEEM: usize = 4096;
/// Largest call of a linked hub (its facts, or the list of what it exports).
const MAX_LINK_CALL: usize = 64 * 1024;

/// True for the paths this page serves (and the linked hubs' calls, `/link/...`).
pub fn is_invite_path(path: &str) -> bool {
    path == "/invite" || path.starts_with("/invite/") || path.starts_with("/link/")
}

fn page() -> String {
    m! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Join the private network · cloudpc" }
                link rel="stylesheet" href="/invite/style.css";
            }
            body {
                main {
                    h1 { "Join the private network" }
                    form #join {
                        p { "This device makes its own WireGuard key here; only its public key is sent." }
                        label { "Invite code " input #code name="code" required autocomplete="off" maxlength="40"; }
                        label { "Name of this device (optional) " input #name name="name" maxlength="63" placeholder="phone"; }
                        button type="submit" { "Join" }
                    }
                    p #status role="status" {}
                    div #done hidden {
                        p { b #device {} " has joined. Scan this code with the WireGuard app, or import the config file." }
                        p.warn { "The private key is in this code and file, and only here: keep them to yourself." }
                        img #qr alt="WireGuard config as a QR code";
                        p { a #download.button { "Download the config" } }
                        details { summary { "Show the config" } pre #config {} }
                    }
                    script src="/invite/invite.js" {}
                }
            }
        }
    }
    .into_string()
}

fn typed(body: &'static str, ct: &'static str) -> Resp {
    let mut r = text(StatusCode::OK, body);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut r = hyper::Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Answers a request for one of [`is_invite_path`]'s paths.
pub async fn handle(control: &Arc<Control>, req: Request<hyper::body::Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    match (&parts.method, parts.uri.path()) {
        (&Method::GET | &Method::HEAD, "/invite") => html(StatusCode::OK, page()),
        (&Method::GET | &Method::HEAD, "/invite/invite.js") => {
            typed(INVITE_JS, "text/javascript; charset=utf-8")
        }
        (&Method::GET | &Method::HEAD, "/invite/style.css") => {
            typed(STYLE, "text/css; charset=utf-8")
        }
        (&Method::POST, "/invite/redeem") => {
            let bytes = match Limited::new(body, MAX_REDEEM).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return json(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &serde_json::json!({ "error": "the request is too large" }),
                    )
                }
            };
            match crate::api::redeem(control.clone(), &bytes).await {
                Ok(r) => json(
                    StatusCode::CREATED,
                    &serde_json::to_value(r).unwrap_or_default(),
                ),
                Err(e) => {
                    let status = StatusCode::from_u16(e.status())
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    json(status, &serde_json::json!({ "error": e.to_string() }))
                }
            }
        }
        (&Method::POST, p) if p.starts_with("/link/") => {
            let what = p.trim_start_matches("/link/").to_string();
            let bytes = match Limited::new(body, MAX_LINK_CALL).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return json(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &serde_json::json!({ "error": "the request is too large" }),
                    )
                }
            };
            match crate::api::link_call(control.clone(), what, &bytes).await {
                Ok(v) => json(StatusCode::OK, &v),
                Err(e) => {
                    let status = StatusCode::from_u16(e.status())
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    json(status, &serde_json::json!({ "error": e.to_string() }))
                }
            }
        }
        _ => {
            let _ = Limited::new(body, MAX_REDEEM).collect().await;
            text(StatusCode::NOT_FOUND, "not found\n")
        }
    }
}
