//! The management API (docs/API.md): every operation the CLI has, as HTTP/JSON.
//!
//! [`Manage`] is the API's shape as a trait. The daemon's [`crate::daemon::Control`]
//! implements it in-process (and so does a `Control` over the store alone, when no hub runs);
//! [`Client`] implements it over the Unix socket of a running hub. The CLI takes whichever
//! applies, so both paths run the same checks and give the same results.
//!
//! `routes` maps HTTP requests onto a [`Manage`]; `serve` runs the listeners (the Unix socket,
//! the overlay for admin devices, TLS with a bearer token) and decides who may call.

mod client;
mod routes;
mod serve;
pub mod types;

pub use client::Client;
pub use routes::{link_call, redeem};
pub use serve::{serve, ApiListeners, ServeError, OVERLAY_PORT};
pub use types::{
    DeviceAdded, DeviceDns, EgressView, FirewallView, HubFacts, InviteCreated, LinkCall, LinkCode,
    LinkJoin, LinkJoined, LinkReq, LinkView, NewDevice, NewInvite, NewPerson, NewToken,
    PersonPatch, QueryLogChange, QueryLogState, Redeem, Redeemed, ShareReq, StatusReport,
};

use crate::filter::ListStatus;
use crate::store::{ApiToken, Device, DevicePatch, Invite, Person, RuleAction, Share, StoreError};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Why an API call was refused or failed; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400: a bad value or body; the message says what to fix.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token or a bad one (TCP listener).
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the caller is not an admin device.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such device, rule, list, token or route.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: the name or key is taken, or the overlay is full.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is over [`MAX_BODY`].
    #[error("{0}")]
    TooLarge(String),
    /// 415: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 502: a server the hub asked on the caller's behalf failed (the ACME CA).
    #[error("{0}")]
    BadGateway(String),
    /// 503: the operation needs a running hub (status).
    #[error("{0}")]
    NotRunning(String),
    /// 507: the state dir is full; nothing changed.
    #[error("{0}")]
    DiskFull(String),
    /// 500: the state database or an engine failed.
    #[error("{0}")]
    Internal(String),
    /// The CLI could not talk to the hub (it stopped, or answered something unreadable).
    #[error("{0}")]
    Unreachable(String),
}

impl ApiError {
    /// The HTTP status code of this error.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Conflict(_) => 409,
            ApiError::TooLarge(_) => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::BadGateway(_) => 502,
            ApiError::NotRunning(_) => 503,
            ApiError::DiskFull(_) => 507,
            ApiError::Internal(_) | ApiError::Unreachable(_) => 500,
        }
    }

    /// The error an answer with `status` and `message` stands for (the client's side).
    pub fn from_status(status: u16, message: String) -> ApiError {
        match status {
            400 => ApiError::BadRequest(message),
            401 => ApiError::Unauthorized(message),
            403 => ApiError::Forbidden(message),
            404 => ApiError::NotFound(message),
            405 => ApiError::MethodNotAllowed(message),
            409 => ApiError::Conflict(message),
            413 => ApiError::TooLarge(message),
            415 => ApiError::UnsupportedMediaType(message),
            502 => ApiError::BadGateway(message),
            503 => ApiError::NotRunning(message),
            507 => ApiError::DiskFull(message),
            _ => ApiError::Internal(message),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let msg = e.to_string();
        match e {
            StoreError::DuplicateName(_) | StoreError::DuplicateKey(_) | StoreError::Full(_) => {
                ApiError::Conflict(msg)
            }
            StoreError::NoDevice(_) | StoreError::NoToken(_) => ApiError::NotFound(msg),
            ref e if e.is_disk_full() => ApiError::DiskFull(format!(
                "{msg}; nothing was changed. Free space in the state dir and try again"
            )),
            _ => ApiError::Internal(msg),
        }
    }
}

/// Every operation of the API. Each call that returns `Ok` has its change in force.
pub trait Manage {
    /// Every device, by name.
    fn devices(&self) -> Result<Vec<Device>, ApiError>;
    /// One device.
    fn device(&self, name: &str) -> Result<Device, ApiError>;
    /// Registers a device and renders its config.
    fn add_device(&self, req: &NewDevice) -> Result<DeviceAdded, ApiError>;
    /// Renames a device or changes its flags; returns it as it is now.
    fn update_device(&self, name: &str, patch: &DevicePatch) -> Result<Device, ApiError>;
    /// Removes a device; returns its name as it was stored.
    fn remove_device(&self, name: &str) -> Result<String, ApiError>;
    /// The run-time rules of one kind.
    fn rules(&self, kind: RuleAction) -> Result<Vec<String>, ApiError>;
    /// Adds a rule; returns the normalised name.
    fn add_rule(&self, kind: RuleAction, domain: &str) -> Result<String, ApiError>;
    /// Removes a rule; returns the normalised name.
    fn remove_rule(&self, kind: RuleAction, domain: &str) -> Result<String, ApiError>;
    /// Whether devices reach the internet through the hub.
    fn internet(&self) -> Result<bool, ApiError>;
    /// Switches internet through the hub.
    fn set_internet(&self, on: bool) -> Result<bool, ApiError>;
    /// Switches one device's own internet (the hub-wide switch still applies).
    fn set_device_internet(&self, name: &str, on: bool) -> Result<bool, ApiError>;
    /// A device's firewall: its own settings, the mode in force and when it next changes.
    fn device_firewall(&self, name: &str) -> Result<FirewallView, ApiError>;
    /// Changes a device's own firewall settings (each field given replaces its value).
    fn set_device_firewall(
        &self,
        name: &str,
        patch: &crate::firewall::FirewallPatch,
    ) -> Result<FirewallView, ApiError>;
    /// The query log's state.
    fn querylog(&self) -> Result<QueryLogState, ApiError>;
    /// Turns the query log on (with recipients) or off (deleting every entry).
    fn set_querylog(&self, change: &QueryLogChange) -> Result<QueryLogState, ApiError>;
    /// Every list and its state.
    fn lists(&self) -> Result<Vec<ListStatus>, ApiError>;
    /// Subscribes to a URL list and downloads it; returns its state.
    fn add_list(&self, url: &str) -> Result<ListStatus, ApiError>;
    /// Unsubscribes from a URL list added with the API; returns the URL.
    fn remove_list(&self, url: &str) -> Result<String, ApiError>;
    /// Downloads URL lists now (all, or one); returns their states afterwards.
    fn update_lists(&self, url: Option<&str>) -> Result<Vec<ListStatus>, ApiError>;
    /// Live counters (needs a running hub).
    fn status(&self) -> Result<StatusReport, ApiError>;
    /// API tokens (never the tokens themselves).
    fn tokens(&self) -> Result<Vec<ApiToken>, ApiError>;
    /// Makes a token; the answer is the only time it is shown.
    fn create_token(&self, name: &str) -> Result<NewToken, ApiError>;
    /// Revokes a token.
    fn revoke_token(&self, id: i64) -> Result<(), ApiError>;
    /// A device's DNS token and its DoH URL and DoT name.
    fn device_dns(&self, name: &str) -> Result<DeviceDns, ApiError>;
    /// Gives a device a new DNS token (the old one stops working at once).
    fn new_dns_token(&self, name: &str) -> Result<DeviceDns, ApiError>;
    /// A device's egress mode and, while the hub runs, its temporary addresses.
    fn device_egress(&self, name: &str) -> Result<EgressView, ApiError>;
    /// New temporary addresses for a device at once (the old ones drain).
    fn new_egress_address(&self, name: &str) -> Result<EgressView, ApiError>;
    /// The certificate served (needs a running hub).
    fn tls(&self) -> Result<crate::certs::TlsStatus, ApiError>;
    /// Asks the ACME CA for a new certificate now; returns once it is served.
    fn renew_certificate(&self) -> Result<crate::certs::TlsStatus, ApiError>;
    /// Every person (the owner is implicit).
    fn people(&self) -> Result<Vec<Person>, ApiError>;
    /// Adds a person.
    fn add_person(&self, req: &NewPerson) -> Result<Person, ApiError>;
    /// Changes a person's role or internet; their devices' firewalls follow at once.
    fn update_person(&self, name: &str, patch: &PersonPatch) -> Result<Person, ApiError>;
    /// Removes a person and cuts all their devices at once; returns the devices removed.
    fn remove_person(&self, name: &str) -> Result<Vec<String>, ApiError>;
    /// Every share.
    fn shares(&self) -> Result<Vec<Share>, ApiError>;
    /// Shares a device (or some ports of it) with a person or a group.
    fn add_share(&self, req: &ShareReq) -> Result<Share, ApiError>;
    /// Stops sharing; returns how many shares went.
    fn remove_share(&self, req: &ShareReq) -> Result<usize, ApiError>;
    /// Every invite (never a code).
    fn invites(&self) -> Result<Vec<Invite>, ApiError>;
    /// Makes an invite; the answer is the only time its code is shown.
    fn create_invite(&self, req: &NewInvite) -> Result<InviteCreated, ApiError>;
    /// Revokes an invite.
    fn revoke_invite(&self, id: i64) -> Result<(), ApiError>;
    /// The files in the inbox (dropped with LocalSend; needs a running hub).
    fn drops(&self) -> Result<Vec<crate::drop::DropItem>, ApiError>;
    /// Sends a file of the inbox to a device's LocalSend app: at once when it is online, else
    /// as soon as it comes online (`delivered` or `queued`).
    fn send_drop(&self, id: &str, to: &str) -> Result<String, ApiError>;
    /// Removes a file from the inbox.
    fn remove_drop(&self, id: &str) -> Result<(), ApiError>;
    /// Every link to another Cloud PC.
    fn links(&self) -> Result<Vec<LinkView>, ApiError>;
    /// Makes a one-time code for another owner to link their Cloud PC with this one.
    fn create_link(&self, name: Option<&str>) -> Result<LinkCode, ApiError>;
    /// Links this Cloud PC with the one whose code this is; in force on return.
    fn accept_link(&self, code: &str, name: Option<&str>) -> Result<LinkView, ApiError>;
    /// Cuts a link at once (and tells the other side).
    fn remove_link(&self, name: &str) -> Result<(), ApiError>;
}
