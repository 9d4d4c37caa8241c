//! `cloudpc lists`: show every list; `add`, `remove`, `update` URL lists.
//!
//! `add` and `update` download in this process ([`ListManager::update_now`]) and fill the
//! cache, so the next start (or the next reload of a running hub) uses the new copy.

use std::sync::Arc;

use anyhow::Context;

use super::Globals;
use crate::filter::{ListManager, ListSettings, ListStatus, ListUrl};
use crate::querylog::timefmt::format_rfc3339;

#[derive(Debug, clap::Args)]
pub struct ListsArgs {
    #[command(subcommand)]
    pub cmd: Option<ListsCmd>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum ListsCmd {
    /// Subscribe to a list URL (http:// or https://) for the default policy, and download it.
    Add { url: String },
    /// Unsubscribe from a list added with `add` (lists in the config file are removed there).
    Remove { url: String },
    /// Download URL lists now (all of them, or the one given) and show the result.
    Update { url: Option<String> },
}

pub fn lists(g: &Globals, a: ListsArgs) -> anyhow::Result<()> {
    let cfg = g.config()?;
    let manager = Arc::new(ListManager::open(ListSettings::from_config(
        &cfg.filter,
        cfg.group_lists(),
        &cfg.dns.upstream_ca,
        &g.state_dir(),
        &g.base_dir(),
    ))?);
    match a.cmd {
        None => show(&manager, a.json),
        Some(ListsCmd::Add { url }) => {
            let parsed = ListUrl::parse(&url)?;
            if manager.in_config(parsed.as_str()) {
                anyhow::bail!("{parsed} is already in the config file");
            }
            if !manager.add(&parsed)? {
                println!("{parsed} was already added");
            } else {
                println!("added {parsed}");
            }
            update(
                g,
                &cfg,
                &manager,
                &[parsed.as_str().to_string()],
                Some(parsed.as_str()),
            )
        }
        Some(ListsCmd::Remove { url }) => {
            let url = ListUrl::parse(&url)
                .map(|u| u.as_str().to_string())
                .unwrap_or(url);
            if manager.remove(&url)? {
                println!("removed {url}; a running hub stops using it at its next reload (SIGHUP) or restart");
                Ok(())
            } else if manager.in_config(&url) {
                anyhow::bail!(
                    "{url} is in the config file ({}); remove it there and restart cloudpc",
                    g.config
                        .as_ref()
                        .map_or("filter.lists".into(), |p| p.display().to_string())
                )
            } else {
                anyhow::bail!("{url} is not a list added with `cloudpc lists add`; `cloudpc lists` shows them")
            }
        }
        Some(ListsCmd::Update { url }) => {
            let all = manager.urls();
            let targets = match &url {
                None => all,
                Some(u) => {
                    let u = ListUrl::parse(u)?.as_str().to_string();
                    if !all.contains(&u) {
                        anyhow::bail!("{u} is not a list; add it with `cloudpc lists add {u}`");
                    }
                    vec![u]
                }
            };
            if targets.is_empty() {
                println!("no URL lists to update (add one with `cloudpc lists add URL`)");
                return Ok(());
            }
            update(
                g,
                &cfg,
                &manager,
                &targets,
                url.as_deref().map(|_| targets[0].as_str()),
            )
        }
    }
}

/// Downloads `targets` (all URL lists, or the `one` given) in this process and prints how
/// each attempt ended.
fn update(
    g: &Globals,
    cfg: &crate::config::Config,
    manager: &Arc<ListManager>,
    targets: &[String],
    one: Option<&str>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let running = rt
        .block_on(crate::control::request_status(&g.state_dir()))
        .is_ok();
    let _ = rustls::crypto::ring::default_provider().install_default();
    rt.block_on(async {
        let upstreams = crate::dns::upstream::Upstreams::from_config(&cfg.dns)
            .await
            .context("cannot set up the upstreams that resolve list hosts")?;
        manager.set_resolver(Arc::new(upstreams));
        manager.update_now(one).await;
        anyhow::Ok(())
    })?;
    if running {
        println!("(the running hub uses the new copies after `kill -HUP` or a restart)");
    } else {
        println!("(no hub running: the cache is updated for its next start)");
    }
    let status = manager.status()?;
    let mut failed = 0;
    for t in targets {
        let Some(s) = status.iter().find(|s| &s.list == t) else {
            continue;
        };
        let entries = s
            .entries
            .map_or("no copy".into(), |n| format!("{n} entries"));
        match s.last_result.as_deref() {
            Some("updated") => println!("{t}: updated, {entries}"),
            Some("unchanged") => println!("{t}: unchanged (not modified), {entries}"),
            _ => {
                failed += 1;
                let keeping = if s.entries.is_some() {
                    format!("keeping the previous copy ({entries})")
                } else {
                    "no copy yet".into()
                };
                println!(
                    "{t}: failed: {}; {keeping}",
                    s.last_error.as_deref().unwrap_or("unknown error")
                );
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} list downloads failed", targets.len());
    }
    Ok(())
}

fn show(manager: &ListManager, json: bool) -> anyhow::Result<()> {
    let status = manager.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    if status.is_empty() {
        println!("no lists (add one with `cloudpc lists add URL` or `filter.lists` in the config)");
        return Ok(());
    }
    println!(
        "{:<5} {:<10} {:>9} {:<21} {:<10} LIST / ERROR",
        "ID", "FROM", "ENTRIES", "LAST UPDATE", "RESULT"
    );
    for s in &status {
        println!("{}", row(s));
        if let Some(e) = &s.last_error {
            println!("{:<5} error: {e}", "");
        }
    }
    Ok(())
}

fn row(s: &ListStatus) -> String {
    let id = s.id.map_or("-".into(), |i| i.to_string());
    let entries = s.entries.map_or("-".into(), |n| n.to_string());
    let updated = match (s.id, s.last_success, s.last_change) {
        (Some(_), Some(t), _) => format_rfc3339(t, false),
        (Some(_), None, _) => "never".into(),
        (None, _, Some(t)) => format!("{} (file)", format_rfc3339(t, false)),
        (None, _, None) => "-".into(),
    };
    format!(
        "{id:<5} {:<10} {entries:>9} {updated:<21} {:<10} {}",
        s.from,
        s.last_result.as_deref().unwrap_or("-"),
        s.list
    )
}
