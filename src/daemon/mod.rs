//! `cloudpc run`: starts the resolver and the WireGuard hub, owns the running state and serves
//! the management API until SIGINT/SIGTERM.
//!
//! The config is read once here and split into each module's own settings. The store is read
//! once at start; from then on every change arrives through the API and is applied by
//! [`Control`] to exactly the engines it concerns before the call returns; nothing polls the
//! database. The process's own writes (query-log entries, list metadata, endpoints) never
//! cause a reload. SIGHUP re-reads lists and zone files.

pub mod control;
pub mod firewall;
mod listeners;
mod status;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use control::{normalize_code, Control, ControlSettings, Engines};

use crate::config::Config;
use crate::dns::engine::{Resolver, Settings};
use crate::dns::service::DnsService;
use crate::dns::stats::Stats;
use crate::dns::tokens::DnsTokens;
use crate::dns::upstream::Upstreams;
use crate::enroll::EnrollSettings;
use crate::filter::policy::load_lists;
use crate::filter::{Filter, ListManager, ListSettings, Policy, PolicySettings};
use crate::store::{Overlay, Store};

/// Why `cloudpc run` could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    #[error(transparent)]
    Lists(#[from] crate::filter::SubscribeError),
    #[error(transparent)]
    Upstreams(#[from] crate::dns::upstream::UpstreamError),
    #[error(transparent)]
    QueryLog(#[from] crate::querylog::QueryLogError),
    #[error(transparent)]
    Dns(#[from] crate::dns::server::ServeError),
    #[error(transparent)]
    Tls(#[from] crate::dns::tls::TlsError),
    #[error(transparent)]
    Sync(#[from] crate::querylog::SyncError),
    #[error(transparent)]
    Api(#[from] crate::api::ServeError),
    #[error(transparent)]
    Key(#[from] crate::enroll::keys::KeyError),
    /// The config was validated when read; this is a second check of the same values.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Locked(String),
}

/// Takes the state dir's run lock for the hub's lifetime, waiting (bounded) for CLI commands
/// that write the store to finish.
fn take_run_lock(state_dir: &std::path::Path) -> Result<crate::paths::RunLock, DaemonError> {
    let lock_err = |e: std::io::Error| {
        DaemonError::Locked(format!("cannot lock {}: {e}", state_dir.display()))
    };
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = crate::paths::RunLock::try_take(state_dir, true).map_err(lock_err)? {
            return Ok(l);
        }
        if Instant::now() > end {
            return Err(DaemonError::Locked(format!(
                "{} is in use: another `cloudpc run` serves this state dir (or a CLI command \
                 has not finished); stop it first",
                crate::paths::run_lock(state_dir).display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How often the devices' endpoints are saved for the next start (only changed ones are
/// written; a hub killed between two saves loses at most this much roaming).
const SAVE_ENDPOINTS_EVERY: Duration = Duration::from_secs(2);

/// The policy settings out of the config.
pub fn policy_settings(cfg: &Config) -> PolicySettings {
    PolicySettings {
        block: cfg.filter.block.clone(),
        allow: cfg.filter.allow.clone(),
        blocked_answer: cfg.dns.blocked_answer,
        groups: cfg.groups.clone(),
    }
}

/// The list manager's settings out of the config.
pub fn list_settings(cfg: &Config, state_dir: &Path, base: &Path) -> ListSettings {
    ListSettings::from_config(
        &cfg.filter,
        cfg.group_lists(),
        &cfg.dns.upstream_ca,
        state_dir,
        base,
    )
}

/// The settings of a [`Control`] out of the config, the hub key and the overlay.
pub fn control_settings(
    cfg: &Config,
    state_dir: &Path,
    overlay: Overlay,
) -> Result<ControlSettings, DaemonError> {
    let hub = crate::enroll::keys::load_or_create_hub_key(state_dir)?;
    Ok(ControlSettings {
        enroll: EnrollSettings::new(
            &cfg.wireguard.endpoint,
            cfg.wireguard.listen_port,
            hub.public_b64(),
            overlay,
            &cfg.dns.zone,
            cfg.wireguard.mtu,
        ),
        policy: policy_settings(cfg),
        internet_default: cfg.egress.internet,
        retention_days: cfg.querylog.retention_days,
        firewall: Arc::new(firewall::FwSettings::from_config(cfg)),
        dns_domain: cfg.public_domain(),
        dns_public: cfg.dns.public,
        invites: invite_settings(cfg),
        hub_tun: cfg.wireguard.interface.clone(),
    })
}

/// The Cloud PC as a LocalSend peer on its overlay addresses (files go to its inbox).
/// NAT46 from the config, when on and the Cloud PC has a global IPv6 address to leave from
/// (without one it says so and stays off).
fn nat46_setup(
    cfg: &Config,
    overlay: &crate::store::Overlay,
) -> Option<Arc<crate::hub::nat46::Nat46>> {
    // The config was validated: an error here is a pool of "".
    let pool = cfg.dns46_pool().ok().flatten()?;
    let text = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    if !has_global_v6(&text, overlay.v6) {
        tracing::warn!(
            "DNS46/NAT46 is off: this machine has no global IPv6 address to reach IPv6-only sites from"
        );
        return None;
    }
    tracing::info!("DNS46/NAT46 on");
    Some(Arc::new(crate::hub::nat46::Nat46::new(
        crate::hub::nat46::Settings {
            pool,
            overlay_v6: overlay.v6,
            idle: std::time::Duration::from_secs(cfg.dns.dns46_idle.max(1)),
            per_device: cfg.dns.dns46_per_device.max(1),
        },
    )))
}

/// Whether `/proc/net/if_inet6` (`text`) lists a global unicast address outside the overlay.
fn has_global_v6(text: &str, overlay: ipnet::Ipv6Net) -> bool {
    crate::egress::host::parse_if_inet6(text)
        .into_iter()
        .any(|a| (a.addr.segments()[0] & 0xe000) == 0x2000 && !overlay.contains(&a.addr))
}

async fn serve_localsend(
    cfg: &Config,
    state_dir: &Path,
    certs: &Arc<crate::certs::Certs>,
    overlay: &Overlay,
    control: &Arc<Control>,
    hub: &crate::hub::HubHandle,
) {
    let inbox = match crate::drop::Inbox::open(state_dir, cfg.drop.settings()) {
        Ok(i) => Arc::new(i),
        Err(e) => {
            tracing::warn!(error = %e, "no inbox: LocalSend not served");
            return;
        }
    };
    let acc = match crate::dns::tls::server_config(certs, &[b"http/1.1"]) {
        Ok(c) => tokio_rustls::TlsAcceptor::from(c),
        Err(e) => {
            tracing::warn!(error = %e, "LocalSend not served");
            return;
        }
    };
    let senders: Arc<dyn crate::drop::localsend::Senders> = control.clone();
    let ls = Arc::new(crate::drop::localsend::LocalSend::new(
        inbox.clone(),
        senders,
        &certs.current().sha256,
    ));
    control.set_inbox(inbox, ls.info());
    // Queued files go out as soon as their device is online.
    let c = control.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            let c = c.clone();
            let _ = tokio::task::spawn_blocking(move || c.forward_now()).await;
        }
    });
    let port = crate::drop::localsend::PORT;
    let addrs = [
        SocketAddr::from((overlay.hub_v4(), port)),
        SocketAddr::from((overlay.hub_v6(), port)),
    ];
    // Devices' LocalSend apps that announce themselves get the hub's info back.
    let mut info = ls.info();
    info["announce"] = serde_json::Value::Bool(false);
    hub.set_localsend_info(info.to_string().into_bytes());
    let bound = crate::drop::localsend::serve(ls, &addrs, acc).await;
    tracing::info!(listeners = bound.len(), "LocalSend peer serving");
}

/// Invite links: `https://` the public name (`tls.domain`) or the endpoint's host, on the
/// port of the first public HTTPS listener (443 by default).
fn invite_settings(cfg: &Config) -> control::InviteSettings {
    let host = if cfg.tls.domain.is_empty() {
        crate::enroll::wgconfig::endpoint_with_port(&cfg.wireguard.endpoint, 1)
            .ok()
            .and_then(|e| e.rsplit_once(':').map(|(h, _)| h.to_string()))
            .unwrap_or_default()
    } else {
        cfg.tls.domain.clone()
    };
    let port = cfg
        .wireguard
        .tls_listen
        .iter()
        .chain(
            cfg.dns
                .public_https_listen
                .iter()
                .filter(|_| cfg.dns.public),
        )
        .map(|a| a.port())
        .next()
        .unwrap_or(443);
    let base = match (host.is_empty(), port) {
        (true, _) => String::new(),
        (false, 443) => format!("https://{host}"),
        (false, p) => format!("https://{host}:{p}"),
    };
    control::InviteSettings { base }
}

fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Puts the firewall's timers and schedules in force when they turn: sleeps until the next
/// change the last apply computed (or until a change asks it to look again).
async fn firewall_clock(control: Arc<Control>) {
    let wake = control.fw_wake.clone();
    let mut next = control.firewall_next_change();
    loop {
        let wait = crate::egress::live::wait_until(next);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                let c = control.clone();
                next = tokio::task::spawn_blocking(move || c.reapply_firewall())
                    .await
                    .unwrap_or(None);
            }
            _ = wake.notified() => next = control.firewall_next_change(),
        }
    }
}

/// Runs the hub until SIGINT/SIGTERM.
pub fn run(cfg: Config, state_dir: PathBuf, base: PathBuf) -> Result<(), DaemonError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    rt.block_on(serve(state_dir, base, cfg))
}

async fn serve(state_dir: PathBuf, base: PathBuf, cfg: Config) -> Result<(), DaemonError> {
    let started = Instant::now();
    let _run_lock = take_run_lock(&state_dir)?;
    let store = Store::open(&state_dir)?;
    let overlay = store.overlay(&cfg.wireguard)?;
    let devices = store.devices()?;
    let rules = store.rules()?;
    let settings = control_settings(&cfg, &state_dir, overlay)?;

    // The firewalls are in force before the first packet or query.
    let fw = Arc::new(crate::firewall::Firewall::default());
    let (people, shares) = (store.people()?, store.shares()?);
    let sharing = firewall::Sharing {
        people: &people,
        shares: &shares,
        zone: &cfg.dns.zone,
    };
    let plan = firewall::plan(
        &settings.firewall,
        &devices,
        &store.device_firewalls()?,
        &sharing,
        &Default::default(),
        &settings.firewall.now(),
    );
    fw.publish(plan.devices);

    let nat46 = if cfg.wireguard.enabled {
        nat46_setup(&cfg, &overlay)
    } else {
        None
    };
    if let Some(n) = &nat46 {
        n.set_devices(&plan.dns46);
    }
    let hub = if cfg.wireguard.enabled {
        let hub = crate::hub::start(crate::hub::HubParams {
            wireguard: cfg.wireguard.clone(),
            egress_interface: cfg.egress.interface.clone(),
            internet: control::internet_setting(&store, cfg.egress.internet)
                .unwrap_or(cfg.egress.internet),
            dns64_prefix: cfg.dns.dns64.then_some(cfg.dns.dns64_prefix),
            state_dir: state_dir.clone(),
            overlay,
            devices: devices.clone(),
            endpoints: store.endpoints()?,
            no_internet: plan.no_internet,
            dns_redirect: plan.dns_redirect,
            temp_egress: cfg.egress.temp_settings()?,
            temporary: plan.temporary,
            firewall: fw.clone(),
            nat46: nat46.clone(),
        })
        .await?;
        hub.set_discovery(plan.discovery);
        Some(Arc::new(hub))
    } else {
        None
    };

    crate::filter::subscribe::return_large_allocations_promptly();
    let lists = Arc::new(ListManager::open(list_settings(&cfg, &state_dir, &base))?);
    let (default_lists, list_errors) = load_lists(&lists.default_entries(), &lists);
    let policy = Policy {
        rules: Filter::new(settings.policy.rules_set(&rules, &[], &[])),
        lists: Arc::new(Filter::new(default_lists)),
        blocked_answer: cfg.dns.blocked_answer,
    };
    let group_lists = settings.policy.group_lists(&lists);
    let upstreams = Arc::new(Upstreams::from_config(&cfg.dns).await?);
    let stats = Arc::new(Stats::default());
    let resolver_settings = Settings {
        dns64: cfg.dns.dns64.then_some(cfg.dns.dns64_prefix),
        blocked_ttl: cfg.dns.blocked_ttl,
        allow_from: cfg.dns.allow_from.clone(),
        overlay: overlay.nets().to_vec(),
        rate_limit: cfg.dns.rate_limit,
        cache_size: cfg.dns.cache_size,
    };
    let (querylog, _querylog_writer) = crate::querylog::QueryLog::start(&state_dir, &cfg.querylog)?;
    let zones_dir = resolve_path(&base, &cfg.dns.zones_dir);
    let resolver = Arc::new(
        Resolver::new(
            resolver_settings,
            policy,
            control::local_data(
                &cfg.dns.zone,
                &zones_dir,
                &devices,
                &overlay,
                &store.links()?,
            ),
            stats,
        )
        .with_querylog(querylog.clone())
        .with_firewall(fw.clone())
        .with_nat46(nat46.clone()),
    );
    resolver.set_groups(settings.policy.groups(
        &rules,
        &devices,
        &resolver.policy.lists,
        &group_lists,
    ));
    querylog.set_devices(&devices);

    let mut trusted = overlay.nets().to_vec();
    trusted.extend(cfg.dns.allow_from.iter().copied());
    let dns_tokens = Arc::new(DnsTokens::new(&cfg.public_domain(), trusted));
    dns_tokens.publish(control::dns_token_map(&store.dns_tokens()?, &devices));
    let service = DnsService::with_tokens(resolver.clone(), upstreams.clone(), dns_tokens.clone());
    let admin_slot = crate::dns::doh::AdminSlot::default();
    let certs = listeners::certificates(&cfg, &state_dir, hub.is_some(), &overlay)?;
    let wg_tls = hub.as_ref().map(|h| h.tls_transport());
    let listeners::Served {
        urls: listen,
        https: https_bound,
    } = listeners::serve_dns(
        &cfg,
        &service,
        &certs,
        hub.is_some(),
        &overlay,
        &admin_slot,
        wg_tls.as_ref(),
    )
    .await?;
    listeners::check_acme_reachable(&cfg);
    let acme = cfg.tls.acme.then(|| {
        let h = crate::certs::acme::spawn(
            certs.clone(),
            crate::certs::acme::AcmeSettings {
                directory: cfg.tls.acme_directory.clone(),
                email: cfg.tls.acme_email.clone(),
                ca: (!cfg.tls.acme_ca.is_empty()).then(|| resolve_path(&base, &cfg.tls.acme_ca)),
                domain: cfg.public_domain(),
                dir: state_dir.join("tls").join("acme"),
            },
        );
        h.set_device_names(control::dns_names(
            dns_tokens.domain(),
            &store.dns_tokens().unwrap_or_default(),
            &devices,
        ));
        h
    });

    // Owner devices fetch the encrypted query log over the tunnel, on the overlay only.
    let _sync = if hub.is_some() {
        let addrs = vec![
            SocketAddr::from((overlay.hub_v4(), crate::querylog::SYNC_PORT)),
            SocketAddr::from((overlay.hub_v6(), crate::querylog::SYNC_PORT)),
        ];
        Some(crate::querylog::serve_sync(addrs, &state_dir, overlay).await?)
    } else {
        None
    };

    let engines = Engines {
        resolver: resolver.clone(),
        upstreams: upstreams.clone(),
        summary: control::SettingsSummary {
            upstreams: cfg.dns.upstreams.clone(),
            dns64: cfg.dns.dns64.then(|| cfg.dns.dns64_prefix.to_string()),
        },
        hub: hub.clone(),
        querylog,
        group_lists: parking_lot::Mutex::new(group_lists),
        zones_dir,
        started,
        listen: listen.clone(),
        list_errors: list_errors.into(),
        firewall: fw,
        certs: certs.clone(),
        acme,
        dns_tokens,
        links: Default::default(),
        inbox: Default::default(),
        localsend_info: Default::default(),
        forwarding: Default::default(),
    };
    let control = Arc::new(
        Control::offline(
            store,
            settings,
            overlay,
            lists.clone(),
            Some(upstreams.clone()),
            tokio::runtime::Handle::current(),
        )
        .running(engines),
    );

    let mut api = crate::api::ApiListeners {
        unix: crate::paths::api_socket(&state_dir),
        overlay: vec![],
        tls: cfg.api.listen.clone(),
        tls_acceptor: None,
    };
    if hub.is_some() && cfg.api.overlay {
        api.overlay = vec![
            SocketAddr::from((overlay.hub_v4(), crate::api::OVERLAY_PORT)),
            SocketAddr::from((overlay.hub_v6(), crate::api::OVERLAY_PORT)),
        ];
    }
    if !api.tls.is_empty() {
        api.tls_acceptor = Some(tokio_rustls::TlsAcceptor::from(
            crate::dns::tls::server_config(&certs, &[b"http/1.1"])?,
        ));
    }
    let api_sock = crate::api::serve(control.clone(), api).await?;
    if cfg.admin.enabled {
        listeners::serve_admin(
            &cfg,
            &service,
            &certs,
            hub.is_some(),
            &overlay,
            &admin_slot,
            &https_bound,
        )
        .await?;
        match crate::admin::Admin::new(control.clone()) {
            Ok(a) => {
                let _ = admin_slot.set(Arc::new(a));
            }
            Err(e) => tracing::warn!(error = %e, "admin page not served"),
        }
    }
    crate::metrics::serve(control.clone(), &cfg.api.metrics_listen).await;
    if let Some(h) = &hub {
        serve_localsend(&cfg, &state_dir, &certs, &overlay, &control, h).await;
    }

    // URL lists download in the background; queries never wait for them.
    lists.spawn_updater(upstreams.clone());
    if let Some(h) = &hub {
        tokio::spawn(save_endpoints(control.clone(), h.clone()));
    }
    tokio::spawn(save_history(control.clone()));
    tokio::spawn(firewall_clock(control.clone()));
    if hub.is_some() {
        // Links come back by themselves: their tunnels dial the other hubs at once.
        let c = control.clone();
        tokio::task::spawn_blocking(move || c.start_links());
    }
    tracing::info!(listen = ?listen, "cloudpc is serving");

    wait_for_exit(&control, &lists).await;
    tracing::info!("shutting down");
    if let Err(e) = control.sample_history() {
        tracing::warn!(error = %e, "could not save the traffic history");
    }
    if let Some(h) = hub {
        persist_endpoints(&control, &h.endpoints());
        crate::link::host::clear();
        h.shutdown().await;
    }
    let _ = std::fs::remove_file(api_sock);
    Ok(())
}

/// Writes the endpoints that changed since the last save.
fn persist_endpoints(control: &Control, eps: &[(String, crate::store::LastEndpoint)]) {
    if eps.is_empty() {
        return;
    }
    if let Err(e) = control.with_store(|s| s.save_endpoints(eps)) {
        tracing::warn!(error = %e, "could not save device endpoints");
    }
}

/// Saves endpoints every [`SAVE_ENDPOINTS_EVERY`] when one moved, or when the last-seen
/// times stored fell [`SEEN_AT_SLACK_SECS`] behind (in-memory check; the store is written only
/// then). Without the second rule a device that never roams would keep the time of its first
/// handshake, and after a crash more than `hub::RECONNECT_WITHIN_SECS` later the restarted hub
/// would not call it.
async fn save_endpoints(control: Arc<Control>, hub: Arc<crate::hub::HubHandle>) {
    let mut last: Vec<(String, crate::store::LastEndpoint)> = Vec::new();
    let mut tick = tokio::time::interval(SAVE_ENDPOINTS_EVERY);
    loop {
        tick.tick().await;
        let mut now = hub.endpoints();
        now.sort_by(|a, b| a.0.cmp(&b.0));
        let stale = now.len() != last.len()
            || now.iter().zip(&last).any(|((k, e), (lk, le))| {
                k != lk
                    || e.addr != le.addr
                    || e.local != le.local
                    || e.seen_at - le.seen_at >= SEEN_AT_SLACK_SECS
            });
        if stale {
            let c = control.clone();
            let eps = now.clone();
            let _ = tokio::task::spawn_blocking(move || persist_endpoints(&c, &eps)).await;
            last = now;
        }
    }
}

/// How often the hourly traffic and DNS counts are written.
const SAVE_HISTORY_EVERY: Duration = Duration::from_secs(60);

/// Writes the hourly history every [`SAVE_HISTORY_EVERY`].
async fn save_history(control: Arc<Control>) {
    let mut tick = tokio::time::interval(SAVE_HISTORY_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let c = control.clone();
        let r = tokio::task::spawn_blocking(move || c.sample_history()).await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "could not save the traffic history");
        }
    }
}

/// How far the stored last-seen time may lag the live one (a small fraction of
/// `hub::RECONNECT_WITHIN_SECS`).
const SEEN_AT_SLACK_SECS: i64 = 60;

/// Waits for SIGINT/SIGTERM; reloads lists and zone files on SIGHUP and rebuilds the filter
/// when the background updater changed a list copy.
async fn wait_for_exit(control: &Arc<Control>, lists: &Arc<ListManager>) {
    let mut changes = lists.changes();
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    let rebuild = |c: &Arc<Control>| {
        let c = c.clone();
        tokio::task::spawn_blocking(move || c.rebuild_lists())
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                control.reload_zones();
                let _ = rebuild(control).await;
                tracing::info!("lists and zone files reloaded");
            }
            Ok(()) = changes.changed() => {
                // An API call that downloaded has rebuilt the filter already.
                let version = *changes.borrow_and_update();
                if !control.lists_built(version) {
                    let _ = rebuild(control).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nat46_needs_a_global_ipv6_address_outside_the_overlay() {
        let overlay: ipnet::Ipv6Net = "2001:db8:aa::/48".parse().unwrap();
        // Loopback, link-local, a ULA, and the overlay's own (global) address: none will do.
        let none = "00000000000000000000000000000001 01 80 10 80       lo\n\
                    fe800000000000000000000000000001 02 40 20 80     eth0\n\
                    fd000000000000000000000000000001 02 40 00 80     eth0\n\
                    20010db800aa00000000000000000001 05 30 00 80 cloudpc0\n";
        assert!(!super::has_global_v6(none, overlay));
        let with = format!("{none}20010db8000100000000000000000001 02 40 00 80     eth0\n");
        assert!(super::has_global_v6(&with, overlay));
    }
}
