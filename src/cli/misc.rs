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

#[derive(Debug, clap::Subcommand)]
pub enum TlsCmd {
    /// Which certificate is served, until when, and how getting one from the CA goes.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the ACME CA for a new certificate now (open connections keep working).
    Renew,
}

/// One line per fact of the TLS status.
fn tls_lines(t: &crate::certs::TlsStatus) -> Vec<String> {
    let when = |s: i64| {
        jiff::Timestamp::from_second(s)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| s.to_string())
    };
    let c = &t.served;
    let source = match c.source {
        crate::certs::CertSource::Acme => "from the ACME CA",
        crate::certs::CertSource::Configured => "configured (dns.tls_cert)",
        crate::certs::CertSource::SelfSigned => "self-signed",
    };
    let mut v = vec![format!(
        "tls: {source} certificate for {} name(s) ({}), valid until {}, sha256 {}",
        c.names.len(),
        c.names.first().map(String::as_str).unwrap_or("-"),
        when(c.not_after),
        &c.sha256[..16.min(c.sha256.len())]
    )];
    if let Some(a) = &t.acme {
        let mut line = format!("acme: {} for {}", a.directory, a.domain);
        if let Some(e) = &a.last_error {
            line.push_str(&format!("; the last attempt FAILED: {e}"));
        }
        if let Some(n) = a.next_attempt {
            line.push_str(&format!("; next attempt {}", when(n)));
        }
        if !a.device_names {
            line.push_str("; the devices' DoT names are not covered (no wildcard DNS record?)");
        }
        v.push(line);
    }
    v
}

pub fn tls(g: &Globals, c: TlsCmd) -> anyhow::Result<()> {
    let m = Manager::open(g)?;
    let (t, json) = match c {
        TlsCmd::Status { json } => (m.api().tls()?, json),
        TlsCmd::Renew => {
            let t = m.api().renew_certificate()?;
            eprintln!("A new certificate is in force.");
            (t, false)
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&t)?);
    } else {
        for l in tls_lines(&t) {
            println!("{l}");
        }
    }
    Ok(())
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
    if let Some(t) = &r.tls {
        for l in tls_lines(t) {
            println!("{l}");
        }
    }
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
        let mut endpoint = s("endpoint");
        if s("transport") == "tls" {
            endpoint = format!("tls/{endpoint}");
        }
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
            endpoint,
            hs,
            s("rx_bytes"),
            s("tx_bytes"),
            s("queries"),
            s("blocked")
        );
    }
    for l in egress_lines(&r) {
        println!("{l}");
    }
    match &r.nat46 {
        Some(n) => println!(
            "nat46: {} mappings; {} packets out, {} in; {} to no mapping, {} untranslatable; {} names left unmapped (a device full)",
            n.mappings, n.translated_out, n.translated_in, n.no_mapping, n.dropped, n.device_full
        ),
        None => println!("nat46: off"),
    }
    Ok(())
}

/// `status` lines about temporary egress addresses: where they come from, what is missing,
/// and each `temporary` device's addresses now (live; kept in memory only).
fn egress_lines(r: &crate::api::StatusReport) -> Vec<String> {
    let mut out = Vec::new();
    let temp: Vec<&serde_json::Value> = r
        .devices
        .iter()
        .filter(|d| d["egress"]["mode"] == "temporary")
        .collect();
    let Some(e) = &r.egress else { return out };
    let h = &e.host;
    if temp.is_empty() {
        return out;
    }
    let v6 = match (h.ipv6_prefix, h.ipv6_kind) {
        (Some(p), Some(k)) => format!(
            "IPv6 from {p} ({})",
            serde_json::to_value(k)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        ),
        _ => "IPv6 via the hub's address".into(),
    };
    let v4 = if h.ipv4_pool.is_empty() {
        "IPv4 via the hub's address".to_string()
    } else {
        let pool: Vec<String> = h.ipv4_pool.iter().map(|a| a.to_string()).collect();
        format!("IPv4 pool {}", pool.join(", "))
    };
    let rotate = h
        .rotate_secs
        .map_or("on demand".to_string(), |s| format!("every {s}s"));
    out.push(format!(
        "egress: temporary addresses: {v6}; {v4}; rotate {rotate}, drain {}s; {} devices, {} old addresses draining",
        h.drain_secs, e.devices, e.draining
    ));
    for p in &h.problems {
        out.push(format!("  problem: {p}"));
    }
    let ts = |v: &serde_json::Value| {
        v.as_i64()
            .and_then(|t| jiff::Timestamp::from_second(t).ok())
            .map_or("-".to_string(), |t| t.to_string())
    };
    for d in temp {
        let g = &d["egress"];
        let addr = |k: &str| g[k].as_str().unwrap_or("hub address").to_string();
        out.push(format!(
            "  {:<16} {:<40} {:<15} since {}, next {}{}",
            d["name"].as_str().unwrap_or("-"),
            addr("ipv6"),
            addr("ipv4"),
            ts(&g["since"]),
            ts(&g["next_rotation"]),
            g["note"]
                .as_str()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ));
    }
    out
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
