//! `cloudpc run`: starts the WireGuard hub and the resolver and serves until SIGINT/SIGTERM.
//! SIGHUP reloads lists and zone files; device and rule changes made with the CLI are picked
//! up within a second by watching the state database.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Globals;
use crate::config::Config;
use crate::control::{Reporter, StatusReport};
use crate::dns::engine::{Groups, Policy, Resolver, Settings};
use crate::dns::local::{read_zone_files, LocalData};
use crate::dns::stats::Stats;
use crate::dns::upstream::Upstreams;
use crate::filter::{Filter, FilterSet, ListManager, ListSettings};
use crate::store::{Overlay, RuleAction, Store};

pub fn run(g: &Globals) -> anyhow::Result<()> {
    let cfg = g.config()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(g.state_dir(), g.base_dir(), cfg))
}

fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Builds a set from list entries (files and URLs) with the manager's current copies; the
/// bundled list stands in for a missing `blocklists/default.txt`. Takes about a second for a
/// million names: call it off the query path.
fn load_lists(entries: &[String], lists: &ListManager) -> (FilterSet, usize) {
    let started = Instant::now();
    let (sources, mut errors) = lists.sources(entries);
    let (set, errs) = FilterSet::build(&sources, &[], &[]);
    errors.extend(errs);
    for e in &errors {
        // The message may quote a rule (a domain): keep it at debug, the place at warn.
        tracing::warn!(list = %e.origin, line = e.line, "list entry skipped");
        tracing::debug!(error = %e, "list entry skipped");
    }
    tracing::info!(
        rules = set.len(),
        lists = sources.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "filter lists loaded"
    );
    (set, errors.len())
}

/// Rebuilds the default and group list sets in the background and swaps them in (SIGHUP, or
/// a list download changed a copy).
async fn reload_lists(
    resolver: &Arc<Resolver>,
    cfg: &Config,
    state_dir: &Path,
    lists: &Arc<ListManager>,
    glists: &parking_lot::Mutex<GroupLists>,
) {
    let started = Instant::now();
    let (r, c, l) = (resolver.clone(), cfg.clone(), lists.clone());
    let Ok(fresh) = tokio::task::spawn_blocking(move || {
        let (set, _) = load_lists(&l.default_entries(), &l);
        r.policy.lists.store(set);
        group_lists(&c, &l)
    })
    .await
    else {
        return;
    };
    *glists.lock() = fresh.clone();
    if let Ok(store) = Store::open(state_dir) {
        if let Ok(g) = groups(cfg, &store, &resolver.policy.lists, &fresh) {
            resolver.set_groups(g);
        }
    }
    resolver.clear_cache();
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "filter lists rebuilt"
    );
    // The old sets, the list texts and the download buffers were freed in several malloc
    // arenas (one per thread that touched them); hand the free pages back so the resident
    // size after a swap is the new set's, not the high-water mark of every swap so far.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let _ = tokio::task::spawn_blocking(|| {
        // SAFETY: malloc_trim only releases free memory; it has no preconditions.
        unsafe { libc::malloc_trim(0) }
    })
    .await;
}

/// Lists of groups that have their own, by group name (built at start and on SIGHUP).
type GroupLists = HashMap<String, Arc<Filter>>;

fn group_lists(cfg: &Config, manager: &ListManager) -> GroupLists {
    let mut out = HashMap::new();
    for (name, g) in &cfg.groups {
        if let Some(lists) = &g.lists {
            let (set, _) = load_lists(lists, manager);
            out.insert(name.clone(), Arc::new(Filter::new(set)));
        }
    }
    out
}

/// The group policies and which device addresses they apply to.
fn groups(
    cfg: &Config,
    store: &Store,
    default_lists: &Arc<Filter>,
    lists: &GroupLists,
) -> anyhow::Result<Groups> {
    let mut policies: HashMap<&str, (u8, Arc<Policy>)> = HashMap::new();
    for (i, (name, g)) in cfg.groups.iter().enumerate() {
        let rules = rules_set(cfg, store, &g.block, &g.allow)?;
        let policy = Policy {
            rules: Filter::new(rules),
            lists: lists
                .get(name)
                .cloned()
                .unwrap_or_else(|| default_lists.clone()),
            blocked_answer: g.blocked_answer.unwrap_or(cfg.dns.blocked_answer),
        };
        let id = u8::try_from(i + 1).unwrap_or(u8::MAX);
        policies.insert(name.as_str(), (id, Arc::new(policy)));
    }
    let mut out = Groups::default();
    for d in store.devices()? {
        let Some(g) = d.group.as_deref() else {
            continue;
        };
        match policies.get(g) {
            Some(p) => {
                out.by_ip.insert(d.ipv4.into(), p.clone());
                out.by_ip.insert(d.ipv6.into(), p.clone());
            }
            None => tracing::warn!(
                group = g,
                "a device's group is not in the config; it gets the default policy"
            ),
        }
    }
    Ok(out)
}

/// The owner's own rules: config `block`/`allow` plus `cloudpc block|allow add`, plus a
/// group's own `extra_block`/`extra_allow`.
fn rules_set(
    cfg: &Config,
    store: &Store,
    extra_block: &[String],
    extra_allow: &[String],
) -> anyhow::Result<FilterSet> {
    let mut block = cfg.filter.block.clone();
    let mut allow = cfg.filter.allow.clone();
    block.extend_from_slice(extra_block);
    allow.extend_from_slice(extra_allow);
    for (d, a) in store.rules()? {
        match a {
            RuleAction::Block => block.push(d),
            RuleAction::Allow => allow.push(d),
        }
    }
    let (set, errs) = FilterSet::build(&[], &block, &allow);
    for e in errs {
        tracing::warn!(line = e.line, "a block/allow setting was skipped");
        tracing::debug!(error = %e, "rule skipped");
    }
    Ok(set)
}

fn local_data(cfg: &Config, base: &Path, store: &Store, overlay: &Overlay) -> LocalData {
    let devices = store.devices().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read devices");
        vec![]
    });
    let (files, mut errors) = read_zone_files(&resolve_path(base, &cfg.dns.zones_dir));
    let (data, errs) = LocalData::build(&cfg.dns.zone, &devices, Some(overlay), &files);
    errors.extend(errs);
    for e in errors {
        // The parse error may quote a name from the owner's zone: details at debug only.
        tracing::warn!("zone data skipped (CLOUDPC_LOG=debug shows where and why)");
        tracing::debug!(error = %e, "zone data skipped");
    }
    data
}

async fn serve(state_dir: PathBuf, base: PathBuf, cfg: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    let store = Store::open(&state_dir)?;
    let overlay = store.overlay(&cfg.wireguard)?;

    let hub = if cfg.wireguard.enabled {
        Some(
            crate::hub::start(crate::hub::HubParams {
                cfg: cfg.clone(),
                state_dir: state_dir.clone(),
                overlay,
            })
            .await?,
        )
    } else {
        None
    };

    crate::filter::subscribe::return_large_allocations_promptly();
    let manager = Arc::new(ListManager::open(ListSettings::from_config(
        &cfg.filter,
        cfg.group_lists(),
        &cfg.dns.upstream_ca,
        &state_dir,
        &base,
    ))?);
    let (lists, list_errors) = load_lists(&manager.default_entries(), &manager);
    let policy = Policy {
        rules: Filter::new(rules_set(&cfg, &store, &[], &[])?),
        lists: Arc::new(Filter::new(lists)),
        blocked_answer: cfg.dns.blocked_answer,
    };
    let mut glists = group_lists(&cfg, &manager);
    let upstreams = Upstreams::from_config(&cfg.dns).await?;
    let stats = Arc::new(Stats::default());
    let settings = Settings {
        dns64: cfg.dns.dns64.then_some(cfg.dns.dns64_prefix),
        blocked_ttl: cfg.dns.blocked_ttl,
        allow_from: cfg.dns.allow_from.clone(),
        overlay: overlay.nets().to_vec(),
        rate_limit: cfg.dns.rate_limit,
        cache_size: cfg.dns.cache_size,
    };
    let (querylog, _querylog_writer) = crate::querylog::QueryLog::start(&state_dir, &cfg.querylog)?;
    let resolver = Arc::new(
        Resolver::new(
            settings,
            policy,
            local_data(&cfg, &base, &store, &overlay),
            upstreams,
            stats.clone(),
        )
        .with_querylog(querylog),
    );
    resolver.set_groups(groups(&cfg, &store, &resolver.policy.lists, &glists)?);

    // Plain DNS on the configured addresses and, with the hub, on its overlay addresses.
    let mut listen: Vec<SocketAddr> = cfg.dns.listen.clone();
    if hub.is_some() {
        listen.push(SocketAddr::from((overlay.hub_v4(), 53)));
        listen.push(SocketAddr::from((overlay.hub_v6(), 53)));
    }
    listen.dedup();
    let idle = Duration::from_secs(cfg.dns.tcp_idle_timeout.max(1));
    let slots = Arc::new(tokio::sync::Semaphore::new(
        crate::dns::server::MAX_CONNECTIONS,
    ));
    for a in &listen {
        crate::dns::server::serve_udp(resolver.clone(), *a, tokio::runtime::Handle::current())?;
        let l = crate::dns::server::bind_tcp(*a).await?;
        crate::dns::server::serve_stream(resolver.clone(), l, None, idle, slots.clone());
    }
    if !cfg.dns.tls_listen.is_empty() || !cfg.dns.https_listen.is_empty() {
        let mut names = vec!["cloudpc".to_string(), "localhost".to_string()];
        if let Some((host, _)) = cfg.wireguard.endpoint.rsplit_once(':') {
            names.push(host.trim_matches(['[', ']']).to_string());
        }
        names.extend(
            listen
                .iter()
                .chain(&cfg.dns.tls_listen)
                .chain(&cfg.dns.https_listen)
                .filter(|a| !a.ip().is_unspecified())
                .map(|a| a.ip().to_string()),
        );
        names.sort();
        names.dedup();
        let m = crate::dns::tls::load_or_create(
            &cfg.dns.tls_cert,
            &cfg.dns.tls_key,
            &state_dir,
            &names,
        )?;
        for a in &cfg.dns.tls_listen {
            let acc =
                tokio_rustls::TlsAcceptor::from(crate::dns::tls::server_config(&m, &[b"dot"])?);
            let l = crate::dns::server::bind_tcp(*a).await?;
            crate::dns::server::serve_stream(resolver.clone(), l, Some(acc), idle, slots.clone());
        }
        for a in &cfg.dns.https_listen {
            let acc = tokio_rustls::TlsAcceptor::from(crate::dns::tls::server_config(
                &m,
                &[b"h2", b"http/1.1"],
            )?);
            let l = crate::dns::server::bind_tcp(*a).await?;
            crate::dns::doh::serve(resolver.clone(), l, acc, idle, slots.clone());
        }
    }
    let all_listen: Vec<String> = listen
        .iter()
        .map(|a| format!("dns://{a}"))
        .chain(cfg.dns.tls_listen.iter().map(|a| format!("tls://{a}")))
        .chain(
            cfg.dns
                .https_listen
                .iter()
                .map(|a| format!("https://{a}/dns-query")),
        )
        .collect();

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

    let hub = Arc::new(tokio::sync::Mutex::new(hub));
    let reporter: Reporter = {
        let (resolver, hub, sd) = (resolver.clone(), hub.clone(), state_dir.clone());
        let all_listen = all_listen.clone();
        Arc::new(move || {
            let hub_status = hub
                .try_lock()
                .ok()
                .and_then(|h| h.as_ref().map(|h| h.status()))
                .unwrap_or_default();
            let devices = device_report(&sd, &resolver.stats, hub_status);
            StatusReport {
                pid: std::process::id(),
                uptime_secs: started.elapsed().as_secs(),
                dns: resolver.stats.snapshot(),
                cache_entries: resolver.cache_len(),
                filter_rules: resolver.policy.lists.load().len()
                    + resolver.policy.rules.load().len(),
                list_errors,
                listen: all_listen.clone(),
                devices,
            }
        })
    };
    let sock = crate::control::serve(&state_dir, reporter)?;
    // URL lists download in the background; queries never wait for them.
    manager.spawn_updater(Arc::new(Upstreams::from_config(&cfg.dns).await?));
    tracing::info!(listen = ?all_listen, "cloudpc is serving");

    // Watch the database for CLI changes (devices, rules) and apply them within a second.
    let glists_shared = Arc::new(parking_lot::Mutex::new(std::mem::take(&mut glists)));
    {
        let glists_watch = glists_shared.clone();
        let (resolver, cfg, base, sd) = (
            resolver.clone(),
            cfg.clone(),
            base.clone(),
            state_dir.clone(),
        );
        tokio::spawn(async move {
            let Ok(watch) = Store::open(&sd) else { return };
            let mut last = watch.data_version().unwrap_or(0);
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let v = watch.data_version().unwrap_or(last);
                if v == last {
                    continue;
                }
                last = v;
                resolver.set_local(local_data(&cfg, &base, &watch, &overlay));
                match rules_set(&cfg, &watch, &[], &[]) {
                    Ok(set) => {
                        resolver.policy.rules.store(set);
                        resolver.clear_cache();
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read rules"),
                }
                let glists = glists_watch.lock().clone();
                match groups(&cfg, &watch, &resolver.policy.lists, &glists) {
                    Ok(g) => resolver.set_groups(g),
                    Err(e) => tracing::warn!(error = %e, "cannot read devices for groups"),
                }
                tracing::info!("state changed; devices and rules reloaded");
            }
        });
    }

    wait_for_exit(
        &resolver,
        &cfg,
        &base,
        &state_dir,
        &overlay,
        &manager,
        &glists_shared,
    )
    .await;
    tracing::info!("shutting down");
    if let Some(h) = hub.lock().await.take() {
        h.shutdown().await;
    }
    let _ = std::fs::remove_file(sock);
    Ok(())
}

/// Waits for SIGINT/SIGTERM; reloads lists and zone files on SIGHUP.
async fn wait_for_exit(
    resolver: &Arc<Resolver>,
    cfg: &Config,
    base: &Path,
    state_dir: &Path,
    overlay: &Overlay,
    lists: &Arc<ListManager>,
    glists: &parking_lot::Mutex<GroupLists>,
) {
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
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                if let Ok(store) = Store::open(state_dir) {
                    resolver.set_local(local_data(cfg, base, &store, overlay));
                }
                reload_lists(resolver, cfg, state_dir, lists, glists).await;
                tracing::info!("lists and zone files reloaded");
            }
            Ok(()) = changes.changed() => {
                reload_lists(resolver, cfg, state_dir, lists, glists).await;
            }
        }
    }
}

fn device_report(
    state_dir: &Path,
    stats: &Stats,
    hub: Vec<crate::hub::DeviceStatus>,
) -> Vec<serde_json::Value> {
    let devices = Store::open(state_dir)
        .and_then(|s| s.devices())
        .unwrap_or_default();
    devices
        .into_iter()
        .map(|d| {
            let c4 = stats.client(d.ipv4.into());
            let c6 = stats.client(d.ipv6.into());
            let mut v = hub
                .iter()
                .find(|h| h.name == d.name)
                .and_then(|h| serde_json::to_value(h).ok())
                .unwrap_or_else(|| serde_json::json!({}));
            if let Some(o) = v.as_object_mut() {
                o.insert("name".into(), d.name.clone().into());
                o.insert("ipv4".into(), d.ipv4.to_string().into());
                o.insert("ipv6".into(), d.ipv6.to_string().into());
                o.insert("queries".into(), (c4.queries + c6.queries).into());
                o.insert("blocked".into(), (c4.blocked + c6.blocked).into());
            }
            v
        })
        .collect()
}
