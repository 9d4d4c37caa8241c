//! `cloudpc status`, `block|allow`, `internet`, `lists`.

use super::Globals;
use crate::store::RuleAction;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum RuleCmd {
    /// Add a domain (applies to its subdomains too).
    Add { domain: String },
    /// Remove a domain added with `add`.
    Remove { domain: String },
    /// List the domains added with `add`.
    List,
}

#[derive(Debug, clap::Args)]
pub struct InternetArgs {
    /// `on` or `off`.
    #[arg(value_parser = ["on", "off"])]
    pub state: String,
}

pub fn status(g: &Globals, a: StatusArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(crate::control::request_status(&g.state_dir()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let d = &r.dns;
    println!("cloudpc is running (pid {}, up {}s)", r.pid, r.uptime_secs);
    println!("listening: {}", r.listen.join(", "));
    println!(
        "dns: {} queries, {} answered, {} blocked, {} cache hits, {} forwarded, {} local, {} upstream failures, {} refused, {} malformed, {} rate-limited",
        d.queries, d.answered, d.blocked, d.cache_hits, d.forwarded, d.local,
        d.upstream_failures, d.refused, d.malformed, d.rate_limited
    );
    println!(
        "filter: {} rules ({} list errors), cache: {} answers",
        r.filter_rules, r.list_errors, r.cache_entries
    );
    if r.devices.is_empty() {
        println!("devices: none (add one with `cloudpc device add NAME`)");
        return Ok(());
    }
    println!(
        "{:<16} {:<15} {:<24} {:<22} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "DEVICE", "IPV4", "IPV6", "ENDPOINT", "HANDSHAKE", "RX", "TX", "QUERIES", "BLOCKED"
    );
    for dev in &r.devices {
        let s = |k: &str| match dev.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => "-".into(),
            Some(v) => v.to_string(),
        };
        let hs = match dev.get("last_handshake_secs_ago").and_then(|v| v.as_u64()) {
            Some(n) => format!("{n}s ago"),
            None => "never".into(),
        };
        println!(
            "{:<16} {:<15} {:<24} {:<22} {:>10} {:>10} {:>10} {:>8} {:>8}",
            s("name"),
            s("ipv4"),
            s("ipv6"),
            s("endpoint"),
            hs,
            s("rx_bytes"),
            s("tx_bytes"),
            s("queries"),
            s("blocked")
        );
    }
    Ok(())
}

pub fn rule(g: &Globals, action: RuleAction, c: RuleCmd) -> anyhow::Result<()> {
    let store = crate::store::Store::open(&g.state_dir())?;
    let norm = |d: &str| {
        crate::dns::name::normalize_domain(d)
            .ok_or_else(|| anyhow::anyhow!("{d:?} is not a domain name, e.g. ads.example.com"))
    };
    match c {
        RuleCmd::Add { domain } => {
            let d = norm(&domain)?;
            store.add_rule(&d, action)?;
            println!("added {d}");
        }
        RuleCmd::Remove { domain } => {
            let d = norm(&domain)?;
            if !store.remove_rule(&d, action)? {
                anyhow::bail!("{d} was not in the list; `list` shows what is");
            }
            println!("removed {d}");
        }
        RuleCmd::List => {
            for (d, a) in store.rules()? {
                if a == action {
                    println!("{d}");
                }
            }
        }
    }
    Ok(())
}

pub fn internet(g: &Globals, a: InternetArgs) -> anyhow::Result<()> {
    let store = crate::store::Store::open(&g.state_dir())?;
    store.set_meta("internet", &a.state)?;
    println!("internet through the hub: {}", a.state);
    Ok(())
}
