//! HTTP routes onto a [`Manage`]: JSON in, JSON out, every refusal a 4xx with a message.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{ApiError, Manage, NewDevice, QueryLogChange, MAX_BODY};
use crate::daemon::Control;
use crate::store::{DevicePatch, RuleAction};

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "API call failed");
        }
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

type Answer = Result<Response, ApiError>;

fn ok<T: serde::Serialize>(status: StatusCode, v: T) -> Answer {
    Ok((status, Json(v)).into_response())
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes.
async fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(ApiError::TooLarge(format!(
                "the request body is over {} KiB",
                MAX_BODY / 1024
            )))
        }
    };
    if !ct.is_empty() && !ct.starts_with("application/json") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body must be JSON (Content-Type: application/json), not {ct:?}"
        )));
    }
    parse_json(&bytes)
}

/// Reads a call's JSON object (an empty body is `{}`).
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = if bytes.is_empty() { &b"{}"[..] } else { bytes };
    let bad = |e: serde_json::Error| {
        ApiError::BadRequest(format!("the body is not the JSON this call takes: {e}"))
    };
    // serde would also read a struct from a JSON array, by position: only objects are taken.
    let v: serde_json::Value = serde_json::from_slice(text).map_err(bad)?;
    if !v.is_object() {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object, e.g. {\"name\": \"phone\"}".into(),
        ));
    }
    serde_json::from_value(v).map_err(bad)
}

/// Runs a blocking [`Manage`] call off the async workers.
async fn call<T: Send + 'static>(
    c: &Arc<Control>,
    f: impl FnOnce(&Control) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let c = c.clone();
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .map_err(|e| {
            if e.is_cancelled() {
                // A blocking task is only cancelled before it starts: nothing ran.
                ApiError::NotRunning(
                    "the hub is stopping; nothing was changed. Run the command again".into(),
                )
            } else {
                ApiError::Internal(format!("the API call failed: {e}"))
            }
        })?
}

fn rule_kind(kind: &str) -> Result<RuleAction, ApiError> {
    match kind {
        "block" => Ok(RuleAction::Block),
        "allow" => Ok(RuleAction::Allow),
        _ => Err(ApiError::NotFound(format!(
            "no rule list {kind:?}; use /v1/rules/block or /v1/rules/allow"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainBody {
    domain: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InternetBody {
    internet: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UrlBody {
    #[serde(default)]
    url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
}

/// The API's routes over `control`.
pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/v1/devices", get(list_devices).post(add_device))
        .route(
            "/v1/devices/{name}",
            get(show_device).patch(update_device).delete(remove_device),
        )
        .route("/v1/devices/{name}/internet", put(set_device_internet))
        .route(
            "/v1/devices/{name}/firewall",
            get(device_firewall).patch(set_device_firewall),
        )
        .route("/v1/devices/{name}/dns", get(device_dns))
        .route("/v1/devices/{name}/dns/token", post(new_dns_token))
        .route("/v1/devices/{name}/egress", get(device_egress))
        .route(
            "/v1/devices/{name}/egress/address",
            post(new_egress_address),
        )
        .route("/v1/tls", get(tls))
        .route("/v1/tls/renew", post(renew_certificate))
        .route("/v1/rules/{kind}", get(list_rules).post(add_rule))
        .route("/v1/rules/{kind}/{domain}", delete(remove_rule))
        .route("/v1/internet", get(internet).put(set_internet))
        .route("/v1/lists", get(lists).post(add_list).delete(remove_list))
        .route("/v1/lists/update", post(update_lists))
        .route("/v1/querylog", get(querylog).put(set_querylog))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/tokens", get(tokens).post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/people", get(people).post(add_person))
        .route(
            "/v1/people/{name}",
            axum::routing::patch(update_person).delete(remove_person),
        )
        .route(
            "/v1/shares",
            get(shares).post(add_share).delete(remove_share),
        )
        .route("/v1/invites", get(invites).post(create_invite))
        .route("/v1/invites/{id}", delete(revoke_invite))
        .route("/v1/drop", get(drops))
        .route("/v1/drop/{id}", delete(remove_drop))
        .route("/v1/drop/{id}/send", post(send_drop))
        .route("/v1/links", get(links).post(create_or_accept_link))
        .route("/v1/links/{name}", delete(remove_link))
        .fallback(|| async {
            ApiError::NotFound(
                "no such API route; docs/API.md lists them (e.g. GET /v1/devices)".into(),
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed(
                "this route does not take that method; docs/API.md lists what it takes".into(),
            )
        })
        .with_state(control)
}

async fn list_devices(State(c): State<Arc<Control>>) -> Answer {
    ok(StatusCode::OK, call(&c, |c| c.devices()).await?)
}

async fn add_device(State(c): State<Arc<Control>>, headers: HeaderMap, body: Body) -> Answer {
    let req: NewDevice = json_body(&headers, body).await?;
    ok(
        StatusCode::CREATED,
        call(&c, move |c| c.add_device(&req)).await?,
    )
}

async fn show_device(State(c): State<Arc<Control>>, Path(name): Path<String>) -> Answer {
    ok(StatusCode::OK, call(&c, move |c| c.device(&name)).await?)
}

async fn update_device(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let patch: DevicePatch = json_body(&headers, body).await?;
    ok(
        StatusCode::OK,
        call(&c, move |c| c.update_device(&name, &patch)).await?,
    )
}

async fn remove_device(State(c): State<Arc<Control>>, Path(name): Path<String>) -> Answer {
    let removed = call(&c, move |c| c.remove_device(&name)).await?;
    ok(StatusCode::OK, serde_json::json!({ "removed": removed }))
}

async fn list_rules(State(c): State<Arc<Control>>, Path(kind): Path<String>) -> Answer {
    let kind = rule_kind(&kind)?;
    ok(StatusCode::OK, call(&c, move |c| c.rules(kind)).await?)
}

async fn add_rule(
    State(c): State<Arc<Control>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let kind = rule_kind(&kind)?;
    let b: DomainBody = json_body(&headers, body).await?;
    let added = call(&c, move |c| c.add_rule(kind, &b.domain)).await?;
    ok(StatusCode::OK, serde_json::json!({ "added": added }))
}

async fn remove_rule(
    State(c): State<Arc<Control>>,
    Path((kind, domain)): Path<(String, String)>,
) -> Answer {
    let kind = rule_kind(&kind)?;
    let removed = call(&c, move |c| c.remove_rule(kind, &domain)).await?;
    ok(StatusCode::OK, serde_json::json!({ "removed": removed }))
}

async fn internet(State(c): State<Arc<Control>>) -> Answer {
    let on = call(&c, |c| c.internet()).await?;
    ok(StatusCode::OK, serde_json::json!({ "internet": on }))
}

async fn set_internet(State(c): State<Arc<Control>>, headers: HeaderMap, body: Body) -> Answer {
    let b: InternetBody = json_body(&headers, body).await?;
    let on = call(&c, move |c| c.set_internet(b.internet)).await?;
    ok(StatusCode::OK, serde_json::json!({ "internet": on }))
}

async fn set_device_internet(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let b: InternetBody = json_body(&headers, body).await?;
    let on = call(&c, move |c| c.set_device_internet(&name, b.internet)).await?;
    ok(StatusCode::OK, serde_json::json!({ "internet": on }))
}

async fn device_firewall(State(c): State<Arc<Control>>, Path(name): Path<String>) -> Answer {
    ok(
        StatusCode::OK,
        call(&c, move |c| c.device_firewall(&name)).await?,
    )
}

async fn set_device_firewall(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let patch: crate::firewall::FirewallPatch = json_body(&headers, body).await?;
    ok(
        StatusCode::OK,
        call(&c, move |c| c.set_device_firewall(&name, &patch)).await?,
    )
}

async fn device_dns(State(c): State<Arc<Control>>, Path(name): Path<String>) -> Answer {
    ok(
        StatusCode::OK,
        call(&c, move |c| c.device_dns(&name)).await?,
    )
}

async fn new_dns_token(State(c): State<Arc<Control>>, Path(name): Path<String>) -> Answer {
    ok(
        StatusCode::OK,
        call(&c, move |c| c.new_dns_token(&name)).await?,
    )
}

async fn device_egress(State(c): State<Arc<Control>>, Path(name): Path<String>) -> Answer {
    ok(
        StatusCode::OK,
        call(&c, move |c| c.device_egress(&name)).await?,
    )
}

async fn new_egress_address(State(c): State<Arc<Control>>, Path(name): Path<String>) -> Answer {
    ok(
        StatusCode::OK,
        call(&c, move |c| c.new_egress_address(&name)).await?,
    )
}

async fn tls(State(c): State<Arc<Control>>) -> Answer {
    ok(StatusCode::OK, call(&c, |c| c.tls()).await?)
}

async fn renew_certificate(State(c): State<Arc<Control>>) -> Answer {
    ok(StatusCode::OK, call(&c, |c| c.renew_certificate()).await?)
}

async fn lists(State(c): State<Arc<Control>>) -> Answer {
    ok(StatusCode::OK, call(&c, |c| c.lists()).await?)
}

async fn add_list(State(c): State<Arc<Control>>, headers: HeaderMap, body: Body) -> Answer {
    let b: UrlBody = json_body(&headers, body).await?;
    let url = b
        .url
        .ok_or_else(|| ApiError::BadRequest("give the list's \"url\"".into()))?;
    let st = call(&c, move |c| c.add_list(&url)).await?;
    ok(
        StatusCode::CREATED,
        serde_json::json!({ "added": st.list, "outcome": st }),
    )
}

async fn remove_list(State(c): State<Arc<Control>>, Query(q): Query<UrlBody>) -> Answer {
    let url = q
        .url
        .ok_or_else(|| ApiError::BadRequest("give the list as ?url=...".into()))?;
    let removed = call(&c, move |c| c.remove_list(&url)).await?;
    ok(StatusCode::OK, serde_json::json!({ "removed": removed }))
}

async fn update_lists(State(c): State<Arc<Control>>, headers: HeaderMap, body: Body) -> Answer {
    let b: UrlBody = json_body(&headers, body).await?;
    let st = call(&c, move |c| c.update_lists(b.url.as_deref())).await?;
    let out: Vec<_> = st
        .into_iter()
        .map(|s| serde_json::json!({ "url": s.list, "outcome": s }))
        .collect();
    ok(StatusCode::OK, out)
}

async fn querylog(State(c): State<Arc<Control>>) -> Answer {
    ok(StatusCode::OK, call(&c, |c| c.querylog()).await?)
}

async fn set_querylog(State(c): State<Arc<Control>>, headers: HeaderMap, body: Body) -> Answer {
    let b: QueryLogChange = json_body(&headers, body).await.map_err(|e| match e {
        // serde quotes the offending value; a secret key must never be echoed.
        ApiError::BadRequest(_) => ApiError::BadRequest(
            "the body must be {\"enabled\": true, \"recipients\": [\"age1...\"]} or {\"enabled\": false}".into(),
        ),
        e => e,
    })?;
    ok(StatusCode::OK, call(&c, move |c| c.set_querylog(&b)).await?)
}

async fn status(State(c): State<Arc<Control>>) -> Answer {
    ok(StatusCode::OK, call(&c, |c| c.status()).await?)
}

async fn metrics(State(c): State<Arc<Control>>, headers: HeaderMap) -> Answer {
    let text = call(&c, |c| c.metrics()).await?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (text, ct) = crate::metrics::negotiate(text, accept);
    Ok(([(header::CONTENT_TYPE, ct)], text).into_response())
}

async fn tokens(State(c): State<Arc<Control>>) -> Answer {
    ok(StatusCode::OK, call(&c, |c| c.tokens()).await?)
}

async fn create_token(State(c): State<Arc<Control>>, headers: HeaderMap, body: Body) -> Answer {
    let b: NameBody = json_body(&headers, body).await?;
    ok(
        StatusCode::CREATED,
        call(&c, move |c| c.create_token(&b.name)).await?,
    )
}

async fn revoke_token(State(c): State<Arc<Control>>, Path(id): Path<String>) -> Answer {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a token id (a number)")))?;
    call(&c, move |c| c.revoke_token(id)).await?;
    ok(StatusCode::OK, serde_json::json!({ "revoked": id }))
}

async fn people(State(c): State<Arc<Control>>) -> Answer {
    ok(StatusCode::OK, call(&c, |c| c.people()).await?)
}

async fn add_person(State(c): State<Arc<Control>>, headers: HeaderMap, body: Body) -> Answer {
    let b: crate::api::NewPerson = json_body(&headers, body).await?;
    ok(
        StatusCode::CREATED,
        call(&c, move |c| c.add_person(&b)).await?,
    )
}

async fn update_person(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let b: crate::api::PersonPatch = json_body(&headers, body).await?;
    ok(
        StatusCode::OK,
        call(&c, move |c| c.update_person(&name, &b)).await?,
    )
}

async fn remove_person(State(c): State<Arc<Control>>, Path(name): Path<String>) -> Answer {
    let gone = call(&c, move |c| c.remove_person(&name)).await?;
    ok(
        StatusCode::OK,
        serde_json::json!({ "removed_devices": gone }),
    )
}

async fn shares(State(c): State<Arc<Control>>) -> Answer {
    ok(StatusCode::OK, call(&c, |c| c.shares()).await?)
}

async fn add_share(State(c): State<Arc<Control>>, headers: HeaderMap, body: Body) -> Answer {
    let b: crate::api::ShareReq = json_body(&headers, body).await?;
    ok(
        StatusCode::CREATED,
        call(&c, move |c| c.add_share(&b)).await?,
    )
}

async fn remove_share(State(c): State<Arc<Control>>, headers: HeaderMap, body: Body) -> Answer {
    let b: crate::api::ShareReq = json_body(&headers, body).await?;
    let n = call(&c, move |c| c.remove_share(&b)).await?;
    ok(StatusCode::OK, serde_json::json!({ "removed": n }))
}

async fn invites(State(c): State<Arc<Control>>) -> Answer {
    ok(StatusCode::OK, call(&c, |c| c.invites()).await?)
}

async fn create_invite(State(c): State<Arc<Control>>, headers: HeaderMap, body: Body) -> Answer {
    let b: crate::api::NewInvite = json_body(&headers, body).await?;
    ok(
        StatusCode::CREATED,
        call(&c, move |c| c.create_invite(&b)).await?,
    )
}

async fn revoke_invite(State(c): State<Arc<Control>>, Path(id): Path<String>) -> Answer {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not an invite id (a number)")))?;
    call(&c, move |c| c.revoke_invite(id)).await?;
    ok(StatusCode::OK, serde_json::json!({ "revoked": id }))
}

async fn drops(State(c): State<Arc<Control>>) -> Answer {
    ok(StatusCode::OK, call(&c, |c| c.drops()).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToBody {
    to: String,
}

async fn send_drop(
    State(c): State<Arc<Control>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let b: ToBody = json_body(&headers, body).await?;
    let state = call(&c, move |c| c.send_drop(&id, &b.to)).await?;
    ok(StatusCode::OK, serde_json::json!({ "state": state }))
}

async fn remove_drop(State(c): State<Arc<Control>>, Path(id): Path<String>) -> Answer {
    call(&c, move |c| c.remove_drop(&id)).await?;
    ok(StatusCode::OK, serde_json::json!({ "removed": true }))
}

async fn links(State(c): State<Arc<Control>>) -> Answer {
    ok(StatusCode::OK, call(&c, |c| c.links()).await?)
}

async fn create_or_accept_link(
    State(c): State<Arc<Control>>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let b: crate::api::LinkReq = json_body(&headers, body).await?;
    match b.code {
        Some(code) => ok(
            StatusCode::CREATED,
            call(&c, move |c| c.accept_link(&code, b.name.as_deref())).await?,
        ),
        None => ok(
            StatusCode::CREATED,
            call(&c, move |c| c.create_link(b.name.as_deref())).await?,
        ),
    }
}

async fn remove_link(State(c): State<Arc<Control>>, Path(name): Path<String>) -> Answer {
    call(&c, move |c| c.remove_link(&name)).await?;
    ok(StatusCode::OK, serde_json::json!({ "removed": true }))
}

/// A linked hub's call on the HTTPS listeners (`/link/join` with a one-time code; `confirm`,
/// `exports`, `remove` with the link's secret): the answer's JSON.
pub async fn link_call(
    c: Arc<Control>,
    what: String,
    body: &[u8],
) -> Result<serde_json::Value, ApiError> {
    if what == "join" {
        let b: crate::api::LinkJoin = parse_json(body)?;
        let j = call(&c, move |c| c.link_join(&b)).await?;
        return serde_json::to_value(j).map_err(|e| ApiError::Internal(e.to_string()));
    }
    let b: crate::api::LinkCall = parse_json(body)?;
    call(&c, move |c| c.link_call(&what, &b)).await?;
    Ok(serde_json::json!({ "ok": true }))
}

/// `POST /invite/redeem` on the HTTPS listeners (public: the device is not on the network
/// yet; the invite code is its credential).
pub async fn redeem(c: Arc<Control>, body: &[u8]) -> Result<crate::api::Redeemed, ApiError> {
    let b: crate::api::Redeem = parse_json(body)?;
    call(&c, move |c| c.redeem_invite(&b)).await
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::api::types::{NewDevice, NewToken, QueryLogChange};
    use crate::store::DevicePatch;

    #[test]
    fn fuzz_api_json_bodies() {
        let seeds = vec![
            br#"{"name":"phone","split":true,"group":"kids","admin":false}"#.to_vec(),
            br#"{"name":null,"group":null,"owner":true}"#.to_vec(),
            br#"{"enabled":true,"recipients":["age1x"]}"#.to_vec(),
            br#"{"code":"ABCD-EFGH-JKLM-NPQR","public_key":"x","name":null}"#.to_vec(),
            br#"{"role":"guest","internet":null}"#.to_vec(),
            br#"{"secret":"s","your_address":"100.96.0.4","exports":[{"name":"nas","ipv4":"100.96.0.5"}]}"#.to_vec(),
        ];
        crate::fuzz::run("api_json", crate::fuzz::bytes(seeds, 400), |b| {
            let results = [
                parse_json::<NewDevice>(b).err(),
                parse_json::<DevicePatch>(b).err(),
                parse_json::<QueryLogChange>(b).err(),
                parse_json::<NewToken>(b).err(),
                parse_json::<crate::api::Redeem>(b).err(),
                parse_json::<crate::api::NewPerson>(b).err(),
                parse_json::<crate::api::PersonPatch>(b).err(),
                parse_json::<crate::api::ShareReq>(b).err(),
                parse_json::<crate::api::NewInvite>(b).err(),
                parse_json::<crate::api::LinkJoin>(b).err(),
                parse_json::<crate::api::LinkCall>(b).err(),
                parse_json::<crate::api::LinkReq>(b).err(),
            ];
            for e in results.into_iter().flatten() {
                assert!(matches!(e, ApiError::BadRequest(_)), "bad bodies are 400s");
            }
        });
    }
}
