//! `cloudpc lists`: show every list; `add`, `remove`, `update` URL lists.
//!
//! With a hub running, `add` and `update` go through its API, which downloads and rebuilds the
//! filter before it answers; without one they download directly and fill the cache, so the
//! next start uses the new copy.

use super::{Globals, Manager};
use crate::filter::ListStatus;
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
    let m = Manager::open(g)?;
    let api = m.api();
    match a.cmd {
        None => show(&api.lists()?, a.json),
        Some(ListsCmd::Add { url }) => {
            let st = api.add_list(&url)?;
            println!("added {}", st.list);
            report(&m, &[st])
        }
        Some(ListsCmd::Remove { url }) => {
            let url = api.remove_list(&url)?;
            println!(
                "removed {url}{}",
                if m.is_running() {
                    "; the filter no longer uses it"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Some(ListsCmd::Update { url }) => {
            let st = api.update_lists(url.as_deref())?;
            if st.is_empty() {
                println!("no URL lists to update (add one with `cloudpc lists add URL`)");
                return Ok(());
            }
            report(&m, &st)
        }
    }
}

/// Prints how each download ended.
fn report(m: &Manager, status: &[ListStatus]) -> anyhow::Result<()> {
    if !m.is_running() {
        println!("(no hub running: the cache is updated for its next start)");
    }
    let mut failed = 0;
    for s in status {
        let t = &s.list;
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
        anyhow::bail!("{failed} of {} list downloads failed", status.len());
    }
    Ok(())
}

fn show(status: &[ListStatus], json: bool) -> anyhow::Result<()> {
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
    for s in status {
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
