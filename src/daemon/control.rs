//! [`Control`]: the one place where a change is checked, written to the store and put in
//! force.
//!
//! With a running hub the daemon owns one `Control` with [`Engines`]; every API call lands
//! here, is written in one store transaction and then applied to the engines it concerns
//! (the hub's device table, the resolver's local names, rules and groups, the query-log
//! writer), all before the call returns. Without a hub the CLI makes a `Control` over the
//! store alone ([`Control::offline`]): the same checks and writes, nothing to apply.
//!
//! The store lock is held from the write to the end of the apply, so two changes are applied
//! in the order they were written.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::firewall::FwSettings;
use super::status;
use crate::api::{
    ApiError, DeviceAdded, DeviceDns, EgressView, FirewallView, Manage, NewDevice, NewToken,
    QueryLogChange, QueryLogState, StatusReport,
};
use crate::dns::engine::Resolver;
use crate::dns::upstream::Upstreams;
use crate::enroll::EnrollSettings;
use crate::filter::policy::{load_lists, GroupLists};
use crate::filter::{ListManager, ListStatus, ListUrl, PolicySettings};
use crate::firewall::FirewallPatch;
use crate::hub::HubHandle;
use crate::querylog::{QueryLog, Recipients};
use crate::store::{ApiToken, Device, DevicePatch, Overlay, RuleAction, Store};

/// What the daemon applies changes to.
pub struct Engines {
    pub resolver: Arc<Resolver>,
    pub upstreams: Arc<Upstreams>,
    /// Settings shown read-only on the admin page.
    pub summary: SettingsSummary,
    pub hub: Option<Arc<HubHandle>>,
    pub querylog: QueryLog,
    /// Group lists as last built (rebuilt with the default lists).
    pub group_lists: Mutex<GroupLists>,
    /// Where zone files are read from.
    pub zones_dir: PathBuf,
    pub started: Instant,
    pub listen: Vec<String>,
    pub list_errors: std::sync::atomic::AtomicUsize,
    /// The devices' firewalls (shared with the resolver and the hub).
    pub firewall: Arc<crate::firewall::Firewall>,
    /// The certificate every TLS listener serves.
    pub certs: Arc<crate::certs::Certs>,
    /// The ACME task, with `tls.acme`.
    pub acme: Option<crate::certs::acme::AcmeHandle>,
    /// The devices' DNS tokens in force (shared with the TLS listeners).
    pub dns_tokens: Arc<crate::dns::tokens::DnsTokens>,
    /// The links' tunnels that run, by link name.
    pub links: Mutex<std::collections::HashMap<String, crate::link::tunnel::Tunnel>>,
    /// The inbox of files dropped with LocalSend (once served).
    pub inbox: std::sync::OnceLock<Arc<crate::drop::Inbox>>,
    /// The hub's LocalSend device info (it sends files to devices as this).
    pub localsend_info: std::sync::OnceLock<serde_json::Value>,
    /// One forwarding pass at a time.
    pub forwarding: Mutex<()>,
}

mod devices;
mod drop;
mod firewall;
mod inputs;
mod links;
mod people;
mod views;

pub use inputs::{dns_names, dns_token_map, internet_setting, local_data};

pub use people::{normalize_code, InviteSettings};

use views::HistoryMark;
pub use views::{DomainTest, SettingsSummary, TrafficSummary, UpstreamHealth};

/// The owner of the state: the store, and the engines while the hub runs.
pub struct Control {
    store: Mutex<Store>,
    enroll: EnrollSettings,
    policy: PolicySettings,
    overlay: Overlay,
    /// `egress.internet` from the config (`internet on|off` in the store overrides it).
    internet_default: bool,
    retention_days: u32,
    lists: Arc<ListManager>,
    /// The list-change version the filter in force was built from.
    built_version: std::sync::atomic::AtomicU64,
    engines: Option<Engines>,
    /// For list downloads from synchronous callers.
    rt: tokio::runtime::Handle,
    /// The live counters as last written to the hourly history.
    history: Mutex<HistoryMark>,
    /// Firewall settings of the config (groups, time zone).
    fw: Arc<FwSettings>,
    /// When the firewall next changes by itself (Unix seconds), and the task that waits for it.
    fw_next: Mutex<Option<i64>>,
    pub fw_wake: Arc<tokio::sync::Notify>,
    /// The public host name (`tls.domain`), and whether the public listeners are on.
    dns_domain: String,
    dns_public: bool,
    /// Where invite links point.
    invites: InviteSettings,
    /// The hub's TUN (`wireguard.interface`): the only way into a link.
    hub_tun: String,
}

/// The settings a `Control` needs, read once from the config.
pub struct ControlSettings {
    pub enroll: EnrollSettings,
    pub policy: PolicySettings,
    pub internet_default: bool,
    pub retention_days: u32,
    pub firewall: Arc<FwSettings>,
    /// The public host name the devices' DoH URLs and DoT names are under.
    pub dns_domain: String,
    /// `dns.public`.
    pub dns_public: bool,
    pub invites: InviteSettings,
    pub hub_tun: String,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// Refuses a name that is not a DNS label.
pub fn check_device_name(name: &str) -> Result<(), ApiError> {
    if !crate::dns::name::is_valid_label(name) {
        return Err(bad(format!(
            "{name:?} is not a valid device name: use 1 to 63 letters, digits or '-', not starting or ending with '-' (it becomes a DNS name, e.g. my-phone)"
        )));
    }
    Ok(())
}

fn normalize(domain: &str) -> Result<String, ApiError> {
    crate::dns::name::normalize_domain(domain).ok_or_else(|| {
        bad(format!(
            "{domain:?} is not a domain name, e.g. ads.example.com"
        ))
    })
}

fn sha256(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether two secrets are equal (compared by their hashes, so the time taken does not tell
/// how much of one matched).
pub(crate) fn same(a: &str, b: &str) -> bool {
    sha256(a) == sha256(b)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

impl Control {
    /// A `Control` over the store alone (no hub runs): changes are checked and written only.
    pub fn offline(
        store: Store,
        settings: ControlSettings,
        overlay: Overlay,
        lists: Arc<ListManager>,
        upstreams: Option<Arc<Upstreams>>,
        rt: tokio::runtime::Handle,
    ) -> Control {
        if let Some(u) = &upstreams {
            lists.set_resolver(u.clone());
        }
        Control {
            store: Mutex::new(store),
            enroll: settings.enroll,
            policy: settings.policy,
            overlay,
            internet_default: settings.internet_default,
            retention_days: settings.retention_days,
            lists,
            built_version: 0.into(),
            engines: None,
            rt,
            history: Mutex::new(HistoryMark::default()),
            fw: settings.firewall,
            fw_next: Mutex::new(None),
            fw_wake: Arc::new(tokio::sync::Notify::new()),
            dns_domain: settings.dns_domain,
            dns_public: settings.dns_public,
            invites: settings.invites,
            hub_tun: settings.hub_tun,
        }
    }

    /// The daemon's `Control`: every change is also applied to `engines`.
    pub fn running(mut self, engines: Engines) -> Control {
        self.engines = Some(engines);
        self
    }

    /// Runs `f` on the store (for the daemon's own bookkeeping, e.g. endpoints).
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        f(&mut self.store.lock())
    }

    /// Puts the store's devices in force: hub table, local names, groups, query-log map.
    fn apply_devices(&self, store: &Store) -> Result<(), ApiError> {
        let Some(e) = &self.engines else {
            return Ok(());
        };
        let devices = store.devices()?;
        // A new device's firewall is in force before the hub takes its packets.
        self.apply_firewall(store, &devices)?;
        if let Some(hub) = &e.hub {
            hub.set_devices(&devices);
        }
        e.resolver.set_local(local_data(
            &self.enroll.zone,
            &e.zones_dir,
            &devices,
            &self.overlay,
            &store.links()?,
        ));
        let rules = store.rules()?;
        self.apply_groups(e, &rules, &devices);
        e.querylog.set_devices(&devices);
        let tokens = store.dns_tokens()?;
        e.dns_tokens.publish(dns_token_map(&tokens, &devices));
        if let Some(a) = &e.acme {
            a.set_device_names(dns_names(&self.dns_domain, &tokens, &devices));
        }
        Ok(())
    }

    /// Rebuilds the group policies from `rules` and `devices` over the lists in force.
    fn apply_groups(&self, e: &Engines, rules: &[(String, RuleAction)], devices: &[Device]) {
        let glists = e.group_lists.lock().clone();
        e.resolver.set_groups(self.policy.groups(
            rules,
            devices,
            &e.resolver.policy.lists,
            &glists,
        ));
    }

    /// Puts the store's rules in force (default and group policies) and drops the cached
    /// answers they may change: rules apply to every policy.
    fn apply_rules(&self, store: &Store) -> Result<(), ApiError> {
        let Some(e) = &self.engines else {
            return Ok(());
        };
        let rules = store.rules()?;
        e.resolver
            .policy
            .rules
            .store(self.policy.rules_set(&rules, &[], &[]));
        let devices = store.devices()?;
        self.apply_groups(e, &rules, &devices);
        e.resolver.clear_cache();
        Ok(())
    }

    /// Rebuilds the default and group lists from the manager's copies and swaps them in
    /// (a list was added, removed or downloaded, or SIGHUP). Blocking: about a second for a
    /// million names.
    pub fn rebuild_lists(&self) {
        let Some(e) = &self.engines else { return };
        let started = Instant::now();
        // Copies changed up to this version are in what is built now.
        let version = *self.lists.changes().borrow();
        let (set, errors) = load_lists(&self.lists.default_entries(), &self.lists);
        e.resolver.policy.lists.store(set);
        let fresh = self.policy.group_lists(&self.lists);
        *e.group_lists.lock() = fresh.clone();
        e.list_errors
            .store(errors, std::sync::atomic::Ordering::Relaxed);
        let store = self.store.lock();
        if let (Ok(rules), Ok(devices)) = (store.rules(), store.devices()) {
            e.resolver.set_groups(self.policy.groups(
                &rules,
                &devices,
                &e.resolver.policy.lists,
                &fresh,
            ));
        }
        drop(store);
        e.resolver.clear_cache();
        self.built_version
            .fetch_max(version, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "filter lists rebuilt"
        );
        // The old sets and download buffers were freed in several malloc arenas; hand the
        // free pages back so the resident size after a swap is the new set's.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory; it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// True when the filter in force already has the list copies of change `version`.
    pub fn lists_built(&self, version: u64) -> bool {
        self.built_version
            .load(std::sync::atomic::Ordering::Relaxed)
            >= version
    }

    /// Re-reads the zone files (SIGHUP).
    pub fn reload_zones(&self) {
        let Some(e) = &self.engines else { return };
        let store = self.store.lock();
        if let (Ok(devices), Ok(links)) = (store.devices(), store.links()) {
            e.resolver.set_local(local_data(
                &self.enroll.zone,
                &e.zones_dir,
                &devices,
                &self.overlay,
                &links,
            ));
        }
    }

    fn list_status(&self, url: &str) -> Result<ListStatus, ApiError> {
        self.lists
            .status()
            .map_err(internal)?
            .into_iter()
            .find(|s| s.list == url)
            .ok_or_else(|| ApiError::NotFound(format!("{url} is not a list")))
    }

    /// Downloads `targets` now and, when a copy changed, rebuilds the filter.
    fn download(&self, targets: &[String]) -> Result<Vec<ListStatus>, ApiError> {
        let lists = self.lists.clone();
        let t = targets.to_vec();
        let changed = self.rt.block_on(async move {
            let mut changed = false;
            for url in &t {
                for (_, o) in lists.update_now(Some(url)).await {
                    changed |= matches!(o, crate::filter::UpdateOutcome::Updated { .. });
                }
            }
            changed
        });
        if changed {
            self.rebuild_lists();
        }
        targets.iter().map(|t| self.list_status(t)).collect()
    }
}

impl Manage for Control {
    fn devices(&self) -> Result<Vec<Device>, ApiError> {
        Ok(self.store.lock().devices()?)
    }

    fn device(&self, name: &str) -> Result<Device, ApiError> {
        Ok(self.store.lock().device(name)?)
    }

    fn add_device(&self, req: &NewDevice) -> Result<DeviceAdded, ApiError> {
        self.device_add(req)
    }

    fn update_device(&self, name: &str, patch: &DevicePatch) -> Result<Device, ApiError> {
        self.device_update(name, patch)
    }

    fn remove_device(&self, name: &str) -> Result<String, ApiError> {
        self.device_remove(name)
    }

    fn rules(&self, kind: RuleAction) -> Result<Vec<String>, ApiError> {
        Ok(self
            .store
            .lock()
            .rules()?
            .into_iter()
            .filter(|(_, a)| *a == kind)
            .map(|(d, _)| d)
            .collect())
    }

    fn add_rule(&self, kind: RuleAction, domain: &str) -> Result<String, ApiError> {
        let d = normalize(domain)?;
        let store = self.store.lock();
        store.add_rule(&d, kind)?;
        self.apply_rules(&store)?;
        Ok(d)
    }

    fn remove_rule(&self, kind: RuleAction, domain: &str) -> Result<String, ApiError> {
        let d = normalize(domain)?;
        let store = self.store.lock();
        if !store.remove_rule(&d, kind)? {
            return Err(ApiError::NotFound(format!(
                "{d} is not in the {} list; `cloudpc {} list` shows what is",
                kind.as_str(),
                kind.as_str()
            )));
        }
        self.apply_rules(&store)?;
        Ok(d)
    }

    fn internet(&self) -> Result<bool, ApiError> {
        internet_setting(&self.store.lock(), self.internet_default)
    }

    fn set_device_internet(&self, name: &str, on: bool) -> Result<bool, ApiError> {
        let patch = FirewallPatch {
            internet: Some(if on { "on" } else { "off" }.into()),
            ..FirewallPatch::default()
        };
        self.change_device_firewall(name, &patch)?;
        Ok(on)
    }

    fn device_firewall(&self, name: &str) -> Result<FirewallView, ApiError> {
        let store = self.store.lock();
        let d = store.device(name)?;
        let stored = store.device_firewalls()?.remove(&d.public_key);
        Ok(self.firewall_view(&d, stored.as_ref()))
    }

    fn set_device_firewall(
        &self,
        name: &str,
        patch: &FirewallPatch,
    ) -> Result<FirewallView, ApiError> {
        self.change_device_firewall(name, patch)
    }

    fn set_internet(&self, on: bool) -> Result<bool, ApiError> {
        let store = self.store.lock();
        let before = store.meta("internet")?;
        store.set_meta("internet", if on { "on" } else { "off" })?;
        if let Some(hub) = self.engines.as_ref().and_then(|e| e.hub.as_ref()) {
            if let Err(e) = hub.set_internet(on) {
                // Not applied: the stored switch goes back to what is in force.
                let _ = store.set_meta("internet", before.as_deref().unwrap_or(""));
                return Err(internal(format!("cannot switch internet egress: {e}")));
            }
        }
        Ok(on)
    }

    fn querylog(&self) -> Result<QueryLogState, ApiError> {
        let st = crate::querylog::settings::status(&self.store.lock()).map_err(internal)?;
        Ok(QueryLogState {
            enabled: st.enabled,
            recipients: st.recipients,
            entries: st.entries,
            oldest: st.oldest,
            newest: st.newest,
            retention_days: self.retention_days,
            deleted: 0,
        })
    }

    fn set_querylog(&self, change: &QueryLogChange) -> Result<QueryLogState, ApiError> {
        let mut deleted = 0;
        {
            let store = self.store.lock();
            if change.enabled {
                let r = Recipients::parse(&change.recipients).map_err(|e| bad(e.to_string()))?;
                crate::querylog::settings::enable(&store, &r).map_err(querylog_error)?;
            } else {
                if !change.recipients.is_empty() {
                    return Err(bad("recipients are only given with enabled = true"));
                }
                deleted = crate::querylog::settings::disable(&store).map_err(querylog_error)?;
            }
            if let Some(e) = &self.engines {
                e.querylog.reload().map_err(internal)?;
            }
        }
        Ok(QueryLogState {
            deleted,
            ..self.querylog()?
        })
    }

    fn lists(&self) -> Result<Vec<ListStatus>, ApiError> {
        self.lists.status().map_err(internal)
    }

    fn add_list(&self, url: &str) -> Result<ListStatus, ApiError> {
        let parsed = ListUrl::parse(url).map_err(|e| bad(e.to_string()))?;
        if self.lists.in_config(parsed.as_str()) {
            return Err(ApiError::Conflict(format!(
                "{parsed} is already in the config file"
            )));
        }
        self.lists.add(&parsed).map_err(internal)?;
        let mut st = self.download(&[parsed.as_str().to_string()])?;
        st.pop()
            .ok_or_else(|| internal("the list vanished while it was downloaded"))
    }

    fn remove_list(&self, url: &str) -> Result<String, ApiError> {
        let url = ListUrl::parse(url)
            .map(|u| u.as_str().to_string())
            .unwrap_or_else(|_| url.to_string());
        if self.lists.remove(&url).map_err(internal)? {
            self.rebuild_lists();
            Ok(url)
        } else if self.lists.in_config(&url) {
            Err(ApiError::NotFound(format!(
                "{url} is in the config file (filter.lists); remove it there and restart cloudpc"
            )))
        } else {
            Err(ApiError::NotFound(format!(
                "{url} is not a list added with `cloudpc lists add`; `cloudpc lists` shows them"
            )))
        }
    }

    fn update_lists(&self, url: Option<&str>) -> Result<Vec<ListStatus>, ApiError> {
        let all = self.lists.urls();
        let targets = match url {
            None => all,
            Some(u) => {
                let u = ListUrl::parse(u)
                    .map_err(|e| bad(e.to_string()))?
                    .as_str()
                    .to_string();
                if !all.contains(&u) {
                    return Err(ApiError::NotFound(format!(
                        "{u} is not a list; add it with `cloudpc lists add {u}`"
                    )));
                }
                vec![u]
            }
        };
        self.download(&targets)
    }

    fn status(&self) -> Result<StatusReport, ApiError> {
        let e = self.engines()?;
        let (devices, stored) = {
            let store = self.store.lock();
            (store.devices()?, store.device_firewalls()?)
        };
        let mut r = status::report(e, &devices);
        for (d, v) in devices.iter().zip(r.devices.iter_mut()) {
            let fw = self.firewall_view(d, stored.get(&d.public_key));
            if let Some(o) = v.as_object_mut() {
                o.insert("internet".into(), fw.effective.internet.as_str().into());
                o.insert(
                    "internet_source".into(),
                    serde_json::to_value(fw.effective.source).unwrap_or_default(),
                );
                o.insert(
                    "internet_next_change".into(),
                    fw.effective.next_change.into(),
                );
                o.insert("firewall_dropped".into(), fw.dropped.into());
            }
        }
        Ok(r)
    }

    fn tokens(&self) -> Result<Vec<ApiToken>, ApiError> {
        Ok(self.store.lock().tokens()?)
    }

    fn create_token(&self, name: &str) -> Result<NewToken, ApiError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(bad(
                "a token needs a name of 1 to 64 printable characters, e.g. \"backup-script\"",
            ));
        }
        use base64::Engine;
        let raw: [u8; 32] = rand::random();
        let token = format!(
            "cpc_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        let t = self.store.lock().add_token(name, &sha256(&token))?;
        Ok(NewToken {
            id: t.id,
            name: t.name,
            token,
        })
    }

    fn revoke_token(&self, id: i64) -> Result<(), ApiError> {
        Ok(self.store.lock().revoke_token(id)?)
    }

    fn device_dns(&self, name: &str) -> Result<DeviceDns, ApiError> {
        let store = self.store.lock();
        let d = store.device(name)?;
        let tokens = store.dns_tokens()?;
        let token = tokens
            .get(&d.public_key)
            .cloned()
            .ok_or_else(|| internal("the device has no DNS token"))?;
        Ok(self.dns_view(&d.name, token))
    }

    fn new_dns_token(&self, name: &str) -> Result<DeviceDns, ApiError> {
        let store = self.store.lock();
        let d = store.device(name)?;
        let token = store.new_dns_token(&d.public_key)?;
        self.apply_devices(&store)?;
        Ok(self.dns_view(&d.name, token))
    }

    fn device_egress(&self, name: &str) -> Result<EgressView, ApiError> {
        let store = self.store.lock();
        let d = store.device(name)?;
        self.egress_view(&store, &d)
    }

    fn new_egress_address(&self, name: &str) -> Result<EgressView, ApiError> {
        self.renew_egress_address(name)
    }

    fn tls(&self) -> Result<crate::certs::TlsStatus, ApiError> {
        Ok(self.engines()?.certs.status())
    }

    fn renew_certificate(&self) -> Result<crate::certs::TlsStatus, ApiError> {
        let e = self.engines()?;
        let Some(a) = e.acme.clone() else {
            return Err(bad(
                "certificates come from a CA only with `acme = true` in [tls] of the config",
            ));
        };
        self.rt
            .block_on(a.renew())
            .map_err(|why| ApiError::BadGateway(format!("the CA gave no certificate: {why}")))?;
        Ok(e.certs.status())
    }

    fn people(&self) -> Result<Vec<crate::store::Person>, ApiError> {
        self.people_list()
    }

    fn add_person(&self, req: &crate::api::NewPerson) -> Result<crate::store::Person, ApiError> {
        self.person_add(req)
    }

    fn update_person(
        &self,
        name: &str,
        patch: &crate::api::PersonPatch,
    ) -> Result<crate::store::Person, ApiError> {
        self.person_update(name, patch)
    }

    fn remove_person(&self, name: &str) -> Result<Vec<String>, ApiError> {
        self.person_remove(name)
    }

    fn shares(&self) -> Result<Vec<crate::store::Share>, ApiError> {
        self.shares_list()
    }

    fn add_share(&self, req: &crate::api::ShareReq) -> Result<crate::store::Share, ApiError> {
        self.share_add(req)
    }

    fn remove_share(&self, req: &crate::api::ShareReq) -> Result<usize, ApiError> {
        self.share_remove(req)
    }

    fn invites(&self) -> Result<Vec<crate::store::Invite>, ApiError> {
        self.invites_list()
    }

    fn create_invite(
        &self,
        req: &crate::api::NewInvite,
    ) -> Result<crate::api::InviteCreated, ApiError> {
        self.invite_create(req)
    }

    fn revoke_invite(&self, id: i64) -> Result<(), ApiError> {
        self.invite_revoke(id)
    }

    fn drops(&self) -> Result<Vec<crate::drop::DropItem>, ApiError> {
        Ok(self.inbox()?.list())
    }

    fn send_drop(&self, id: &str, to: &str) -> Result<String, ApiError> {
        self.drop_send(id, to)
    }

    fn remove_drop(&self, id: &str) -> Result<(), ApiError> {
        if !self.inbox()?.remove(id) {
            return Err(ApiError::NotFound(format!(
                "no file {id:?} in the inbox; GET /v1/drop lists them"
            )));
        }
        Ok(())
    }

    fn links(&self) -> Result<Vec<crate::api::LinkView>, ApiError> {
        self.link_list()
    }

    fn create_link(&self, name: Option<&str>) -> Result<crate::api::LinkCode, ApiError> {
        self.link_create(name)
    }

    fn accept_link(
        &self,
        code: &str,
        name: Option<&str>,
    ) -> Result<crate::api::LinkView, ApiError> {
        self.link_accept(code, name)
    }

    fn remove_link(&self, name: &str) -> Result<(), ApiError> {
        self.link_remove(name)
    }
}

impl Control {
    /// The engines, or the error that says the hub is not running.
    fn engines(&self) -> Result<&Engines, ApiError> {
        self.engines.as_ref().ok_or_else(|| {
            ApiError::NotRunning(
                "cloudpc is not running with this state dir; start it with `cloudpc run`".into(),
            )
        })
    }

    fn dns_view(&self, device: &str, token: String) -> DeviceDns {
        let d = &self.dns_domain;
        let named = !d.is_empty();
        DeviceDns {
            device: device.to_string(),
            doh_url: named.then(|| format!("https://{d}{}/{token}", crate::dns::doh::PATH)),
            dot_host: named.then(|| format!("{token}.{d}")),
            token,
            public: self.dns_public,
        }
    }

    fn check_group(&self, group: &str) -> Result<(), ApiError> {
        if !self.policy.has_group(group) {
            return Err(bad(format!(
                "there is no group {group:?} in the config; add a [groups.{group}] section (see config/cloudpc.example.toml)"
            )));
        }
        Ok(())
    }

    /// True when `token` is a current API token.
    pub fn token_valid(&self, token: &str) -> bool {
        matches!(self.store.lock().token_by_hash(&sha256(token)), Ok(Some(_)))
    }

    /// The private network's address ranges.
    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    /// The device behind an overlay source address, if any.
    pub fn device_at(&self, ip: std::net::IpAddr) -> Option<Device> {
        let devices = self.store.lock().devices().ok()?;
        devices
            .into_iter()
            .find(|d| std::net::IpAddr::from(d.ipv4) == ip || std::net::IpAddr::from(d.ipv6) == ip)
    }
}

fn querylog_error(e: crate::querylog::QueryLogError) -> ApiError {
    use crate::querylog::QueryLogError as E;
    match e {
        E::InvalidRecipient { .. } | E::NoRecipients => bad(e.to_string()),
        E::Store(s) => s.into(),
        other => internal(other),
    }
}
