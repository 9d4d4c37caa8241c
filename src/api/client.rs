//! The CLI's side of the API: [`Manage`] over the Unix socket of a running hub.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::net::UnixStream;

use super::{
    ApiError, DeviceAdded, DeviceDns, EgressView, FirewallView, Manage, NewDevice, NewToken,
    QueryLogChange, QueryLogState, StatusReport,
};
use crate::filter::ListStatus;
use crate::store::{ApiToken, Device, DevicePatch, RuleAction};

/// A connection point to a running hub's API socket.
pub struct Client {
    path: PathBuf,
    rt: tokio::runtime::Runtime,
}

/// Percent-encodes everything but unreserved characters (RFC 3986 §2.3).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// The hub serving `state_dir`, or `None` when none runs (no socket, or nobody answers).
    pub fn connect(state_dir: &Path) -> Result<Option<Client>, ApiError> {
        let path = crate::paths::api_socket(state_dir);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ApiError::Internal(format!("cannot start the async runtime: {e}")))?;
        let up = rt.block_on(async { UnixStream::connect(&path).await.is_ok() });
        Ok(up.then_some(Client { path, rt }))
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, ApiError> {
        let gone = |e: &dyn std::fmt::Display| {
            ApiError::Unreachable(format!(
                "the hub stopped answering ({e}); the change may or may not have been made: check with `cloudpc device list` or `cloudpc status`"
            ))
        };
        self.rt.block_on(async {
            let stream = UnixStream::connect(&self.path).await.map_err(|e| {
                ApiError::Unreachable(format!(
                    "cannot reach the running hub at {}: {e}; nothing was changed",
                    self.path.display()
                ))
            })?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| gone(&e))?;
            tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(format!("http://cloudpc{path}"))
                .header(hyper::header::HOST, "cloudpc");
            let bytes = match body {
                Some(v) => {
                    req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                    Bytes::from(v.to_string())
                }
                None => Bytes::new(),
            };
            let req = req
                .body(Full::new(bytes))
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let resp = send.send_request(req).await.map_err(|e| gone(&e))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| gone(&e))?
                .to_bytes();
            if (200..300).contains(&status) {
                serde_json::from_slice(&body).map_err(|e| {
                    ApiError::Unreachable(format!("the hub answered something unreadable: {e}"))
                })
            } else {
                let msg = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                Err(ApiError::from_status(status, msg))
            }
        })
    }
}

fn field<T: DeserializeOwned>(v: Value, key: &str) -> Result<T, ApiError> {
    v.get(key)
        .cloned()
        .and_then(|x| serde_json::from_value(x).ok())
        .ok_or_else(|| ApiError::Unreachable(format!("the hub's answer has no {key:?}")))
}

impl Manage for Client {
    fn devices(&self) -> Result<Vec<Device>, ApiError> {
        self.call(Method::GET, "/v1/devices", None)
    }
    fn device(&self, name: &str) -> Result<Device, ApiError> {
        self.call(Method::GET, &format!("/v1/devices/{}", enc(name)), None)
    }
    fn add_device(&self, req: &NewDevice) -> Result<DeviceAdded, ApiError> {
        let body = serde_json::to_value(req).map_err(|e| ApiError::Internal(e.to_string()))?;
        self.call(Method::POST, "/v1/devices", Some(body))
    }
    fn update_device(&self, name: &str, patch: &DevicePatch) -> Result<Device, ApiError> {
        let mut body = serde_json::Map::new();
        if let Some(n) = &patch.name {
            body.insert("name".into(), json!(n));
        }
        if let Some(g) = &patch.group {
            body.insert("group".into(), json!(g));
        }
        for (k, v) in [
            ("owner", patch.owner),
            ("admin", patch.admin),
            ("no_log", patch.no_log),
        ] {
            if let Some(v) = v {
                body.insert(k.into(), json!(v));
            }
        }
        self.call(
            Method::PATCH,
            &format!("/v1/devices/{}", enc(name)),
            Some(Value::Object(body)),
        )
    }
    fn remove_device(&self, name: &str) -> Result<String, ApiError> {
        let v: Value = self.call(Method::DELETE, &format!("/v1/devices/{}", enc(name)), None)?;
        field(v, "removed")
    }
    fn rules(&self, kind: RuleAction) -> Result<Vec<String>, ApiError> {
        self.call(Method::GET, &format!("/v1/rules/{}", kind.as_str()), None)
    }
    fn add_rule(&self, kind: RuleAction, domain: &str) -> Result<String, ApiError> {
        let v: Value = self.call(
            Method::POST,
            &format!("/v1/rules/{}", kind.as_str()),
            Some(json!({ "domain": domain })),
        )?;
        field(v, "added")
    }
    fn remove_rule(&self, kind: RuleAction, domain: &str) -> Result<String, ApiError> {
        let v: Value = self.call(
            Method::DELETE,
            &format!("/v1/rules/{}/{}", kind.as_str(), enc(domain)),
            None,
        )?;
        field(v, "removed")
    }
    fn internet(&self) -> Result<bool, ApiError> {
        let v: Value = self.call(Method::GET, "/v1/internet", None)?;
        field(v, "internet")
    }
    fn set_internet(&self, on: bool) -> Result<bool, ApiError> {
        let v: Value = self.call(Method::PUT, "/v1/internet", Some(json!({ "internet": on })))?;
        field(v, "internet")
    }
    fn set_device_internet(&self, name: &str, on: bool) -> Result<bool, ApiError> {
        let path = format!("/v1/devices/{}/internet", enc(name));
        let v: Value = self.call(Method::PUT, &path, Some(json!({ "internet": on })))?;
        field(v, "internet")
    }
    fn device_firewall(&self, name: &str) -> Result<FirewallView, ApiError> {
        let path = format!("/v1/devices/{}/firewall", enc(name));
        self.call(Method::GET, &path, None)
    }
    fn set_device_firewall(
        &self,
        name: &str,
        patch: &crate::firewall::FirewallPatch,
    ) -> Result<FirewallView, ApiError> {
        let path = format!("/v1/devices/{}/firewall", enc(name));
        let body = serde_json::to_value(patch).map_err(|e| ApiError::Internal(e.to_string()))?;
        self.call(Method::PATCH, &path, Some(body))
    }
    fn querylog(&self) -> Result<QueryLogState, ApiError> {
        self.call(Method::GET, "/v1/querylog", None)
    }
    fn set_querylog(&self, change: &QueryLogChange) -> Result<QueryLogState, ApiError> {
        let body = serde_json::to_value(change).map_err(|e| ApiError::Internal(e.to_string()))?;
        self.call(Method::PUT, "/v1/querylog", Some(body))
    }
    fn lists(&self) -> Result<Vec<ListStatus>, ApiError> {
        self.call(Method::GET, "/v1/lists", None)
    }
    fn add_list(&self, url: &str) -> Result<ListStatus, ApiError> {
        let v: Value = self.call(Method::POST, "/v1/lists", Some(json!({ "url": url })))?;
        field(v, "outcome")
    }
    fn remove_list(&self, url: &str) -> Result<String, ApiError> {
        let v: Value = self.call(Method::DELETE, &format!("/v1/lists?url={}", enc(url)), None)?;
        field(v, "removed")
    }
    fn update_lists(&self, url: Option<&str>) -> Result<Vec<ListStatus>, ApiError> {
        let v: Vec<Value> = self.call(
            Method::POST,
            "/v1/lists/update",
            Some(json!({ "url": url })),
        )?;
        v.into_iter().map(|e| field(e, "outcome")).collect()
    }
    fn status(&self) -> Result<StatusReport, ApiError> {
        self.call(Method::GET, "/v1/status", None)
    }
    fn tokens(&self) -> Result<Vec<ApiToken>, ApiError> {
        self.call(Method::GET, "/v1/tokens", None)
    }
    fn create_token(&self, name: &str) -> Result<NewToken, ApiError> {
        self.call(Method::POST, "/v1/tokens", Some(json!({ "name": name })))
    }
    fn people(&self) -> Result<Vec<crate::store::Person>, ApiError> {
        self.call(Method::GET, "/v1/people", None)
    }
    fn add_person(&self, req: &crate::api::NewPerson) -> Result<crate::store::Person, ApiError> {
        self.call(Method::POST, "/v1/people", Some(json!(req)))
    }
    fn update_person(
        &self,
        name: &str,
        patch: &crate::api::PersonPatch,
    ) -> Result<crate::store::Person, ApiError> {
        let path = format!("/v1/people/{}", enc(name));
        self.call(Method::PATCH, &path, Some(json!(patch)))
    }
    fn remove_person(&self, name: &str) -> Result<Vec<String>, ApiError> {
        let v = self.call(Method::DELETE, &format!("/v1/people/{}", enc(name)), None)?;
        field(v, "removed_devices")
    }
    fn shares(&self) -> Result<Vec<crate::store::Share>, ApiError> {
        self.call(Method::GET, "/v1/shares", None)
    }
    fn add_share(&self, req: &crate::api::ShareReq) -> Result<crate::store::Share, ApiError> {
        self.call(Method::POST, "/v1/shares", Some(json!(req)))
    }
    fn remove_share(&self, req: &crate::api::ShareReq) -> Result<usize, ApiError> {
        let v = self.call(Method::DELETE, "/v1/shares", Some(json!(req)))?;
        field(v, "removed")
    }
    fn invites(&self) -> Result<Vec<crate::store::Invite>, ApiError> {
        self.call(Method::GET, "/v1/invites", None)
    }
    fn create_invite(
        &self,
        req: &crate::api::NewInvite,
    ) -> Result<crate::api::InviteCreated, ApiError> {
        self.call(Method::POST, "/v1/invites", Some(json!(req)))
    }
    fn revoke_invite(&self, id: i64) -> Result<(), ApiError> {
        let _: Value = self.call(Method::DELETE, &format!("/v1/invites/{id}"), None)?;
        Ok(())
    }
    fn drops(&self) -> Result<Vec<crate::drop::DropItem>, ApiError> {
        self.call(Method::GET, "/v1/drop", None)
    }
    fn send_drop(&self, id: &str, to: &str) -> Result<String, ApiError> {
        let path = format!("/v1/drop/{}/send", enc(id));
        let v = self.call(Method::POST, &path, Some(json!({ "to": to })))?;
        field(v, "state")
    }
    fn remove_drop(&self, id: &str) -> Result<(), ApiError> {
        let _: Value = self.call(Method::DELETE, &format!("/v1/drop/{}", enc(id)), None)?;
        Ok(())
    }
    fn links(&self) -> Result<Vec<crate::api::LinkView>, ApiError> {
        self.call(Method::GET, "/v1/links", None)
    }
    fn create_link(&self, name: Option<&str>) -> Result<crate::api::LinkCode, ApiError> {
        self.call(Method::POST, "/v1/links", Some(json!({ "name": name })))
    }
    fn accept_link(
        &self,
        code: &str,
        name: Option<&str>,
    ) -> Result<crate::api::LinkView, ApiError> {
        let body = json!({ "name": name, "code": code });
        self.call(Method::POST, "/v1/links", Some(body))
    }
    fn remove_link(&self, name: &str) -> Result<(), ApiError> {
        let _: Value = self.call(Method::DELETE, &format!("/v1/links/{}", enc(name)), None)?;
        Ok(())
    }
    fn revoke_token(&self, id: i64) -> Result<(), ApiError> {
        let _: Value = self.call(Method::DELETE, &format!("/v1/tokens/{id}"), None)?;
        Ok(())
    }
    fn device_dns(&self, name: &str) -> Result<DeviceDns, ApiError> {
        self.call(Method::GET, &format!("/v1/devices/{}/dns", enc(name)), None)
    }
    fn new_dns_token(&self, name: &str) -> Result<DeviceDns, ApiError> {
        let path = format!("/v1/devices/{}/dns/token", enc(name));
        self.call(Method::POST, &path, None)
    }
    fn device_egress(&self, name: &str) -> Result<EgressView, ApiError> {
        self.call(
            Method::GET,
            &format!("/v1/devices/{}/egress", enc(name)),
            None,
        )
    }
    fn new_egress_address(&self, name: &str) -> Result<EgressView, ApiError> {
        let path = format!("/v1/devices/{}/egress/address", enc(name));
        self.call(Method::POST, &path, None)
    }
    fn tls(&self) -> Result<crate::certs::TlsStatus, ApiError> {
        self.call(Method::GET, "/v1/tls", None)
    }
    fn renew_certificate(&self) -> Result<crate::certs::TlsStatus, ApiError> {
        self.call(Method::POST, "/v1/tls/renew", None)
    }
}
