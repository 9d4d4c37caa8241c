//! `cloudpc querylog enable|disable|status|pull`.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;

use super::{Globals, Manager};
use crate::api::QueryLogChange;
use crate::querylog::pull::{self, HubAddr, PullReport, PullRequest};
use crate::querylog::{timefmt, SYNC_PORT};

#[derive(Debug, clap::Subcommand)]
pub enum QuerylogCmd {
    /// Turn the query log on, encrypted to these age public keys (replaces the earlier set).
    ///
    /// Each entry (time, device, name, type, verdict, answer code, upstream latency) is encrypted
    /// with age to every recipient before it is stored; the hub itself cannot read it back.
    /// Make a key on each owner device with `age-keygen -o key.txt` and pass its public key.
    Enable {
        /// An age X25519 public key (age1...); repeat for each owner device.
        #[arg(long = "recipient", value_name = "AGE_PUBKEY", required = true)]
        recipients: Vec<String>,
    },
    /// Turn the query log off and delete every stored entry.
    Disable,
    /// Show whether the query log is on, its recipients, entry count and retention.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// On an owner device: fetch new entries from the hub, keep a local copy, print them decrypted.
    ///
    /// Without --since it prints the entries this pull fetched; with --since it prints every
    /// entry of the local copy from that time on. Local copies live in STATE_DIR/pulled/.
    Pull(PullArgs),
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The hub's overlay address, ADDR[:PORT] (port 8053 by default), e.g. 100.96.0.1.
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub hub: String,
    /// This device's age identity file (AGE-SECRET-KEY-1... as `age-keygen -o FILE` writes it).
    #[arg(long, value_name = "FILE")]
    pub identity: PathBuf,
    /// Show entries from this time on: a duration back from now (30m, 1h, 7d, 2w) or an
    /// RFC 3339 time (2026-11-26T10:00:00Z).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Connect from this local address (default: chosen by the system, which is the overlay
    /// address when the tunnel is up).
    #[arg(long, value_name = "IP")]
    pub source: Option<IpAddr>,
}

pub fn querylog(g: &Globals, c: QuerylogCmd) -> anyhow::Result<()> {
    match c {
        QuerylogCmd::Enable { recipients } => {
            let st = Manager::open(g)?.api().set_querylog(&QueryLogChange {
                enabled: true,
                recipients,
            })?;
            println!(
                "query log on, encrypted to {} recipient{}",
                st.recipients.len(),
                if st.recipients.len() == 1 { "" } else { "s" }
            );
            println!("owner devices fetch it with `cloudpc querylog pull --hub HUB_OVERLAY_ADDR --identity KEYFILE` (port {SYNC_PORT})");
            Ok(())
        }
        QuerylogCmd::Disable => {
            let st = Manager::open(g)?.api().set_querylog(&QueryLogChange {
                enabled: false,
                recipients: vec![],
            })?;
            let n = st.deleted;
            println!(
                "query log off; deleted {n} stored entr{}",
                if n == 1 { "y" } else { "ies" }
            );
            Ok(())
        }
        QuerylogCmd::Status { json } => status(g, json),
        QuerylogCmd::Pull(a) => pull_cmd(g, a),
    }
}

fn status(g: &Globals, json: bool) -> anyhow::Result<()> {
    let st = Manager::open(g)?.api().querylog()?;
    let retention = st.retention_days;
    if json {
        // The API's own answer (GET /v1/querylog), so scripts see one shape.
        println!("{}", serde_json::to_string(&st)?);
        return Ok(());
    }
    println!("query log: {}", if st.enabled { "on" } else { "off" });
    if st.recipients.is_empty() {
        println!("recipients: none");
    } else {
        println!("recipients:");
        for r in &st.recipients {
            println!("  {r}");
        }
    }
    println!("entries: {}", st.entries);
    if let (Some(o), Some(n)) = (st.oldest, st.newest) {
        println!(
            "stored from {} to {}",
            timefmt::format_rfc3339(o * 1000, false),
            timefmt::format_rfc3339(n * 1000, false)
        );
    }
    if retention == 0 {
        println!("retention: kept until `cloudpc querylog disable` (retention_days = 0)");
    } else {
        println!("retention: {retention} days");
    }
    println!("sync API: port {SYNC_PORT} on the hub's overlay addresses, owner devices only");
    Ok(())
}

fn pull_cmd(g: &Globals, a: PullArgs) -> anyhow::Result<()> {
    let hub = HubAddr::parse(&a.hub)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let since_ms = a
        .since
        .as_deref()
        .map(|s| timefmt::parse_since(s, now_ms))
        .transpose()?;
    let identities = pull::load_identities(&a.identity)?;
    let req = PullRequest {
        hub,
        source: a.source,
        dir: g.state_dir().join("pulled"),
        since_ms,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = rt.block_on(pull::pull(&req, &identities))?;
    print_report(&report, a.json)?;
    if report.entries.is_empty() && report.not_for_this_key > 0 {
        anyhow::bail!(
            "none of {} entries could be decrypted with {}: is its public key one of the hub's recipients (`cloudpc querylog status` on the hub)?",
            report.not_for_this_key,
            a.identity.display()
        );
    }
    Ok(())
}

fn print_report(r: &PullReport, json: bool) -> anyhow::Result<()> {
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    if json {
        for p in &r.entries {
            let e = &p.entry;
            let v = serde_json::json!({
                "seq": p.seq,
                "time": timefmt::format_rfc3339(e.time_ms, true),
                "time_ms": e.time_ms,
                "device": e.device,
                "client": e.client,
                "name": e.name,
                "qtype": e.qtype,
                "type": qtype_name(e.qtype),
                "verdict": e.verdict,
                "rcode": e.rcode,
                "rcode_name": rcode_name(e.rcode),
                "upstream_ms": e.upstream_ms,
            });
            writeln!(out, "{v}")?;
        }
    } else {
        if !r.entries.is_empty() {
            writeln!(
                out,
                "{:<24} {:<16} {:<6} {:<9} {:<8} {:>6}  NAME",
                "TIME (UTC)", "DEVICE", "TYPE", "VERDICT", "RCODE", "MS"
            )?;
        }
        for p in &r.entries {
            let e = &p.entry;
            let who = e.device.clone().unwrap_or_else(|| e.client.to_string());
            let ms = e.upstream_ms.map(|m| m.to_string()).unwrap_or("-".into());
            writeln!(
                out,
                "{:<24} {:<16} {:<6} {:<9} {:<8} {:>6}  {}",
                timefmt::format_rfc3339(e.time_ms, true),
                who,
                qtype_name(e.qtype),
                e.verdict.as_str(),
                rcode_name(e.rcode),
                ms,
                e.name
            )?;
        }
    }
    out.flush()?;
    eprintln!(
        "fetched {} new entr{}; local copy holds {}",
        r.fetched,
        if r.fetched == 1 { "y" } else { "ies" },
        r.local_total
    );
    if !r.hub_enabled {
        eprintln!(
            "note: the query log is off on the hub (`cloudpc querylog enable` there turns it on)"
        );
    }
    if r.damaged > 0 {
        eprintln!(
            "skipped {} damaged entr{}",
            r.damaged,
            if r.damaged == 1 { "y" } else { "ies" }
        );
    }
    if r.not_for_this_key > 0 {
        eprintln!(
            "skipped {} entr{} encrypted to other keys",
            r.not_for_this_key,
            if r.not_for_this_key == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}

fn qtype_name(t: u16) -> String {
    hickory_proto::rr::RecordType::from(t).to_string()
}

fn rcode_name(c: u16) -> String {
    match c {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => n.to_string(),
    }
}
