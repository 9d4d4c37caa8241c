//! `cloudpc status`, `block|allow`, `internet`, `lists`.

use super::{Globals, Manager};
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
    /// Switch only this device's internet (the hub-wide switch still applies).
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,
}

pub fn status(g: &Globals, a: StatusArgs) -> anyhow::Result<()> {
    let r = Manager::open(g)?.api().status()?;
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
        "{:<16} {:<15} {:<24} {:<22} {:>10} {:>10} {:>10} {:>8} {:>8}  INTERNET",
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
        let mut internet = s("internet");
        if let Some(src) = dev.get("internet_source").and_then(|v| v.as_str()) {
            if src != "default" {
                internet.push_str(&format!(" ({src})"));
            }
        }
        if let Some(t) = dev
            .get("internet_next_change")
            .and_then(|v| v.as_i64())
            .and_then(|t| jiff::Timestamp::from_second(t).ok())
        {
            internet.push_str(&format!(" until {t}"));
        }
        println!(
            "{:<16} {:<15} {:<24} {:<22} {:>10} {:>10} {:>10} {:>8} {:>8}  {internet}",
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
    let m = Manager::open(g)?;
    match c {
        RuleCmd::Add { domain } => {
            let d = m.api().add_rule(action, &domain)?;
            println!("added {d}");
        }
        RuleCmd::Remove { domain } => {
            let d = m.api().remove_rule(action, &domain)?;
            println!("removed {d}");
        }
        RuleCmd::List => {
            for d in m.api().rules(action)? {
                println!("{d}");
            }
        }
    }
    Ok(())
}

pub fn internet(g: &Globals, a: InternetArgs) -> anyhow::Result<()> {
    let m = Manager::open(g)?;
    if let Some(name) = &a.device {
        let on = m.api().set_device_internet(name, a.state == "on")?;
        println!(
            "internet of {name}: {}{}",
            if on { "on" } else { "off" },
            if m.is_running() {
                ""
            } else {
                " (from the next start)"
            }
        );
        return Ok(());
    }
    let on = m.api().set_internet(a.state == "on")?;
    println!(
        "internet through the hub: {}{}",
        if on { "on" } else { "off" },
        if m.is_running() {
            ""
        } else {
            " (from the next start)"
        }
    );
    Ok(())
}
