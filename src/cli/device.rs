//! `cloudpc init` and `cloudpc device ...`: parse, call the API (or the store when no hub
//! runs), print. A refused `device add` leaves no half-registered device (and no lost private
//! key) behind.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::{Globals, Manager};
use crate::api::{DeviceDns, FirewallView, NewDevice};
use crate::config::Config;
use crate::enroll::{keys, qr, wgconfig};
use crate::firewall::FirewallPatch;
use crate::store::{Device, DevicePatch, Store};

/// The example config shipped in `config/`, the template `cloudpc init` writes.
pub const EXAMPLE_CONFIG: &str = include_str!("../../config/cloudpc.example.toml");

/// Where `cloudpc init` writes without `--config`.
pub const DEFAULT_CONFIG_PATH: &str = "cloudpc.toml";

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// HOST[:PORT] that device configs dial: this machine's public name or address
    /// (without a port, wireguard.listen_port is used).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub endpoint: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum DeviceCmd {
    /// Register a device and print its WireGuard config (or a QR code of it).
    Add(AddArgs),
    /// List registered devices.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one device.
    Show {
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Print the device's DNS addresses off the tunnel: its DoH URL and DoT host name.
        #[arg(long)]
        dns: bool,
        /// Write an Apple DNS settings profile (.mobileconfig) with the device's DoH URL.
        #[arg(long, value_name = "FILE")]
        dns_profile: Option<PathBuf>,
    },
    /// Remove a device; a running hub cuts it off at once.
    #[command(alias = "rm")]
    Remove { name: String },
    /// Rename a device (its key and addresses stay).
    Rename { old: String, new: String },
    /// Change a device's policy group, owner or query-log flags.
    Set(SetArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Device name: a DNS label (letters, digits, '-'); it becomes NAME.<zone>.
    pub name: String,
    /// The device's own WireGuard public key (`wg pubkey`); the private key then never exists
    /// on the hub. Without it the hub makes a key pair, prints the private key once and keeps
    /// only the public key.
    #[arg(long, value_name = "KEY")]
    pub pubkey: Option<String>,
    /// Split tunnel: route only the private network through the hub, not all internet traffic.
    #[arg(long)]
    pub split: bool,
    /// Print the config as a QR code in the terminal (for the phone app's "scan from QR code").
    #[arg(long)]
    pub qr: bool,
    /// Also write the config to FILE: a QR image (.png, .svg) or the config text (.conf).
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Policy group (a [groups.NAME] in the config).
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// Mark the device as the owner's: it may pull the encrypted query log (and is an admin).
    #[arg(long)]
    pub owner: bool,
    /// May use the management API over the private network.
    #[arg(long)]
    pub admin: bool,
    /// Never log this device's queries, even with the query log on.
    #[arg(long)]
    pub no_log: bool,
    /// Also write an Apple DNS settings profile (.mobileconfig) with the device's DoH URL.
    #[arg(long, value_name = "FILE")]
    pub dns_profile: Option<PathBuf>,
    /// The person the device belongs to (`cloudpc person add`); without it, the owner.
    #[arg(long, value_name = "P")]
    pub person: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    pub name: String,
    /// Put the device in policy group G.
    #[arg(long, value_name = "G", conflicts_with = "no_group")]
    pub group: Option<String>,
    /// Back to the default policy.
    #[arg(long)]
    pub no_group: bool,
    /// May pull the encrypted query log.
    #[arg(long, conflicts_with = "no_owner")]
    pub owner: bool,
    #[arg(long)]
    pub no_owner: bool,
    /// May use the management API over the private network.
    #[arg(long, conflicts_with = "no_admin")]
    pub admin: bool,
    #[arg(long)]
    pub no_admin: bool,
    /// Log this device's queries when the query log is on (the default).
    #[arg(long, conflicts_with = "no_log")]
    pub log: bool,
    /// Never log this device's queries.
    #[arg(long)]
    pub no_log: bool,
    /// Firewall: on, off, allowlist, or default (follow the group).
    #[arg(long, value_name = "MODE")]
    pub internet: Option<String>,
    /// With --internet: only for this long (30s, 10m, 1h, 1h30m), then back by itself.
    #[arg(long = "for", value_name = "DURATION", requires = "internet")]
    pub for_: Option<String>,
    /// Firewall: sites an allowlist device reaches, comma-separated ("" clears).
    #[arg(long, value_name = "SITES")]
    pub allow_sites: Option<String>,
    /// Firewall: sites refused in DNS and dropped by address, comma-separated ("" clears).
    #[arg(long, value_name = "SITES")]
    pub deny_sites: Option<String>,
    /// Firewall: packet rules allowed, comma-separated (198.51.100.0/24, tcp/25, udp/443).
    #[arg(long, value_name = "RULES")]
    pub allow: Option<String>,
    /// Firewall: packet rules dropped, comma-separated.
    #[arg(long, value_name = "RULES")]
    pub deny: Option<String>,
    /// Firewall: devices it may open connections to (nas, printer:631, group:family), or all.
    #[arg(long, value_name = "DEVICES")]
    pub reach: Option<String>,
    /// Firewall: daily windows with the internet off, comma-separated (21:00-07:00).
    #[arg(long, value_name = "WINDOWS")]
    pub internet_off: Option<String>,
    /// A new DNS token: the device's old DoH URL and DoT name stop working at once.
    #[arg(long)]
    pub new_dns_token: bool,
    /// Egress: hub (the Cloud PC's address), temporary (an address of its own that changes),
    /// or default (follow the group).
    #[arg(long, value_name = "MODE")]
    pub egress: Option<String>,
    /// DNS46/NAT46 (IPv4 to IPv6-only sites through the Cloud PC): on, off, or default
    /// (follow the group).
    #[arg(long, value_name = "on|off|default")]
    pub dns46: Option<String>,
    /// A new temporary egress address at once: new connections use it, open ones keep the
    /// old one until they end or `egress.drain` is over.
    #[arg(long)]
    pub new_address: bool,
}

/// A comma-separated CLI list ("" = empty).
fn list_arg(v: &Option<String>) -> Option<Vec<String>> {
    v.as_ref().map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    })
}

/// `cloudpc init`.
pub fn init(g: &Globals, a: InitArgs) -> anyhow::Result<()> {
    let path = g
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    if path.exists() {
        bail!(
            "{} already exists; cloudpc init does not overwrite a config. Edit it, or move it away and run init again",
            path.display()
        );
    }
    let endpoint = a.endpoint.as_deref().map(str::trim).unwrap_or("");
    if !endpoint.is_empty() {
        // The listen port is only a stand-in here; the file keeps what was typed.
        wgconfig::endpoint_with_port(endpoint, 51820)?;
    }
    let text = config_with_endpoint(EXAMPLE_CONFIG, endpoint);
    let cfg = Config::parse(&text, &path).context("the built-in config template is broken")?;

    let state_dir = g.state_dir();
    let store = Store::open(&state_dir)?;
    let hub = keys::load_or_create_hub_key(&state_dir)?;
    let overlay = store.overlay(&cfg.wireguard)?;

    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // create_new: never clobber a file that appeared since the check above.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }

    let mut cfg_arg = shell_quote(&std::path::absolute(&path).unwrap_or(path.clone()));
    if let Some(dir) = &g.state_dir {
        let dir = std::path::absolute(dir).unwrap_or(dir.clone());
        cfg_arg.push_str(&format!(" --state-dir {}", shell_quote(&dir)));
    }
    println!("Wrote {}", path.display());
    println!("State dir:       {}", state_dir.display());
    println!("Hub public key:  {}", hub.public_b64());
    println!(
        "Overlay:         {} (hub {}), {} (hub {})",
        overlay.v4,
        overlay.hub_v4(),
        overlay.v6,
        overlay.hub_v6()
    );
    if endpoint.is_empty() {
        println!("Endpoint:        not set");
    } else {
        println!("Endpoint:        {endpoint}");
    }
    println!();
    println!("Next steps:");
    let mut n = 1;
    if endpoint.is_empty() {
        println!(
            "  {n}. Set wireguard.endpoint in {} to this machine's public name or address",
            path.display()
        );
        n += 1;
    }
    println!(
        "  {n}. Open UDP port {} in the firewall of this machine / cloud provider",
        cfg.wireguard.listen_port
    );
    println!(
        "  {}. Start the hub:   cloudpc --config {cfg_arg} run",
        n + 1
    );
    println!(
        "  {}. Add a device:    cloudpc --config {cfg_arg} device add phone --qr",
        n + 2
    );
    Ok(())
}

/// The config template with `wireguard.endpoint` set to `endpoint` (empty = unset).
fn config_with_endpoint(template: &str, endpoint: &str) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut section = "";
    for line in template.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            section = t;
        }
        if section == "[wireguard]" && t.starts_with("endpoint") && t.contains('=') {
            out.push_str(&format!("endpoint = {}\n", toml_string(endpoint)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn shell_quote(p: &Path) -> String {
    let s = p.display().to_string();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@".contains(&b))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `cloudpc device ...`.
pub fn device(g: &Globals, c: DeviceCmd) -> anyhow::Result<()> {
    let m = Manager::open(g)?;
    let api = m.api();
    match c {
        DeviceCmd::Add(a) => add(&m, a),
        DeviceCmd::List { json } => {
            let devices = api.devices()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
            } else if devices.is_empty() {
                eprintln!("No devices yet; add one with `cloudpc device add NAME`.");
            } else {
                print!("{}", device_table(&devices));
            }
            Ok(())
        }
        DeviceCmd::Show {
            name,
            json,
            dns,
            dns_profile,
        } => {
            if let Some(path) = &dns_profile {
                write_dns_profile(&api.device_dns(&name)?, path)?;
                if !dns && !json {
                    return Ok(());
                }
            }
            if dns {
                let v = api.device_dns(&name)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    print_dns(&m, &v);
                }
                return Ok(());
            }
            let d = api.device(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                let zone = g.config()?.dns.zone;
                println!("name:        {}.{zone}", d.name);
                println!("ipv4:        {}", d.ipv4);
                println!("ipv6:        {}", d.ipv6);
                println!("public key:  {}", d.public_key);
                println!("tunnel:      {}", if d.split { "split" } else { "full" });
                println!("group:       {}", d.group.as_deref().unwrap_or("(default)"));
                println!("owner:       {}", if d.owner { "yes" } else { "no" });
                println!("admin:       {}", if d.is_admin() { "yes" } else { "no" });
                println!(
                    "query log:   {}",
                    if d.no_log { "never" } else { "when on" }
                );
                let v = api.device_firewall(&name)?;
                println!("firewall:    {}", firewall_line(&v));
                println!("{}", egress_line(&api.device_egress(&name)?));
                let f = &v.settings;
                let join = |l: &[String]| l.join(", ");
                for (label, l) in [
                    ("allow sites", &f.allow_sites),
                    ("deny sites", &f.deny_sites),
                    ("allow", &f.allow),
                    ("deny", &f.deny),
                    ("internet off", &f.internet_off),
                ] {
                    if !l.is_empty() {
                        println!("  {label}: {}", join(l));
                    }
                }
                if let Some(r) = &f.reach {
                    println!(
                        "  reach: {}",
                        if r.is_empty() {
                            "(no device)".into()
                        } else {
                            join(r)
                        }
                    );
                }
                if m.is_running() {
                    println!("  dropped connections: {}", v.dropped);
                }
            }
            Ok(())
        }
        DeviceCmd::Remove { name } => {
            let removed = api.remove_device(&name)?;
            eprintln!(
                "Removed device {removed:?}{}. Its addresses may be given to a new device.",
                if m.is_running() {
                    "; it is cut off"
                } else {
                    ""
                }
            );
            Ok(())
        }
        DeviceCmd::Rename { old, new } => {
            let patch = DevicePatch {
                name: Some(new.clone()),
                ..DevicePatch::default()
            };
            let d = api.update_device(&old, &patch)?;
            eprintln!(
                "Renamed {old:?} to {:?}; its key and addresses are unchanged.",
                d.name
            );
            Ok(())
        }
        DeviceCmd::Set(s) => set(&m, s),
    }
}

/// What `--output` writes.
enum OutputKind {
    Image,
    ConfigText,
}

fn output_kind(path: &Path) -> anyhow::Result<OutputKind> {
    if qr::ImageFormat::from_path(path).is_some() {
        return Ok(OutputKind::Image);
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("conf") => Ok(OutputKind::ConfigText),
        _ => Err(qr::QrError::UnsupportedExtension(path.to_path_buf()).into()),
    }
}

fn add(m: &Manager, a: AddArgs) -> anyhow::Result<()> {
    // What the CLI alone can refuse runs before anything is registered.
    let output_kind = a.output.as_deref().map(output_kind).transpose()?;
    if a.pubkey.is_some() && (a.qr || matches!(output_kind, Some(OutputKind::Image))) {
        bail!(
            "--qr and image output are for importing a complete tunnel into a phone app, which needs the private key; \
             with --pubkey the key stays on your device. Leave out --qr/--output and add the printed [Peer] and \
             addresses to the tunnel you made on the device, or drop --pubkey to have the hub make the key"
        );
    }
    let req = NewDevice {
        name: a.name.clone(),
        public_key: a.pubkey.clone(),
        split: a.split,
        group: a.group.clone(),
        owner: a.owner,
        admin: a.admin,
        no_log: a.no_log,
        qr: false,
        person: a.person.clone(),
    };
    let added = m.api().add_device(&req)?;
    let (d, text) = (&added.device, &added.config);
    if let Some(path) = &a.dns_profile {
        let written = m
            .api()
            .device_dns(&d.name)
            .map_err(anyhow::Error::from)
            .and_then(|v| write_dns_profile(&v, path));
        if let Err(e) = written {
            // The config (and its private key) was not shown: take the registration back.
            let _ = m.api().remove_device(&d.name);
            return Err(e.context("the device was not registered"));
        }
    }

    if let (Some(path), Some(kind)) = (&a.output, &output_kind) {
        let written = match kind {
            OutputKind::Image => qr::write_image(text, path)
                .map(|_| ())
                .map_err(anyhow::Error::from),
            OutputKind::ConfigText => qr::write_private_file(path, text.as_bytes())
                .with_context(|| format!("cannot write {}", path.display())),
        };
        if let Err(e) = written {
            // The private key would be lost with the file: take the registration back.
            let _ = m.api().remove_device(&d.name);
            return Err(e.context("the device was not registered"));
        }
    }
    if a.qr {
        use std::io::IsTerminal;
        print!("{}", qr::terminal(text, std::io::stdout().is_terminal())?);
    } else {
        print!("{text}");
    }

    eprintln!();
    eprintln!(
        "Registered {:?} ({}, {}){}.",
        d.name,
        d.ipv4,
        d.ipv6,
        if m.is_running() {
            "; the hub accepts it now"
        } else {
            "; the hub accepts it when it starts"
        }
    );
    if let Some(path) = &a.output {
        eprintln!("Wrote {} (mode 0600).", path.display());
    }
    if added.private_key_included {
        eprintln!(
            "The private key is shown only now{}; the hub keeps only the public key. Keep it secret.",
            if a.qr { " (inside the QR code)" } else { "" }
        );
        if a.qr {
            eprintln!("Scan it in the WireGuard app: + → Scan from QR code.");
        }
    } else {
        eprintln!(
            "Your device keeps its own private key: add a line `PrivateKey = <its key>` under [Interface] \
             (in the phone apps: edit the tunnel you created and copy these addresses, DNS and [Peer] in)."
        );
    }
    Ok(())
}

fn set(m: &Manager, s: SetArgs) -> anyhow::Result<()> {
    let group = match (&s.group, s.no_group) {
        (Some(g), _) => Some(Some(g.clone())),
        (None, true) => Some(None),
        (None, false) => None,
    };
    let flag = |on: bool, off: bool| match (on, off) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let patch = DevicePatch {
        name: None,
        group,
        owner: flag(s.owner, s.no_owner),
        admin: flag(s.admin, s.no_admin),
        no_log: flag(s.no_log, s.log),
        person: None,
    };
    let fw = FirewallPatch {
        internet: s.internet.clone(),
        for_: s.for_.clone(),
        allow_sites: list_arg(&s.allow_sites),
        deny_sites: list_arg(&s.deny_sites),
        allow: list_arg(&s.allow),
        deny: list_arg(&s.deny),
        reach: list_arg(&s.reach),
        internet_off: list_arg(&s.internet_off),
        egress: s.egress.clone(),
        dns46: s.dns46.clone(),
    };
    if patch == DevicePatch::default() && fw.is_empty() && !s.new_dns_token && !s.new_address {
        bail!(
            "nothing to change: give --group G, --no-group, --owner, --no-owner, --admin, --no-admin, --log, --no-log, --new-dns-token, --egress MODE, --dns46 on|off|default, --new-address, or a firewall setting (--internet, --allow-sites, --deny-sites, --allow, --deny, --reach, --internet-off)"
        );
    }
    if s.new_dns_token {
        let v = m.api().new_dns_token(&s.name)?;
        eprintln!(
            "Device {:?} has a new DNS token; the old one is refused from now on.",
            v.device
        );
        print_dns(m, &v);
    }
    if patch != DevicePatch::default() {
        let d = m.api().update_device(&s.name, &patch)?;
        eprintln!("Device {:?}: {}", d.name, flags(&d));
    }
    if !fw.is_empty() {
        let v = m.api().set_device_firewall(&s.name, &fw)?;
        eprintln!("Device {:?}: {}", v.device, firewall_line(&v));
        if !m.is_running() {
            eprintln!("(in force from the next start)");
        }
    }
    if s.new_address || (s.egress.is_some() && m.is_running()) {
        let v = if s.new_address {
            m.api().new_egress_address(&s.name)?
        } else {
            m.api().device_egress(&s.name)?
        };
        println!("{}", egress_line(&v));
    }
    Ok(())
}

/// `egress: temporary, IPv6 …, IPv4 …` for a device.
fn egress_line(v: &crate::api::EgressView) -> String {
    let mut out = format!("egress:      {}", v.mode.as_str());
    if let Some(l) = &v.lease {
        let or_hub = |a: Option<String>| a.unwrap_or_else(|| "the hub's address".into());
        out.push_str(&format!(
            ", IPv6 {}, IPv4 {}",
            or_hub(l.ipv6.map(|a| a.to_string())),
            or_hub(l.ipv4.map(|a| a.to_string()))
        ));
        if let Some(t) = l
            .next_rotation
            .and_then(|t| jiff::Timestamp::from_second(t).ok())
        {
            out.push_str(&format!(", next change {t}"));
        }
        if let Some(n) = &l.note {
            out.push_str(&format!(" ({n})"));
        }
    }
    out
}

/// Prints a device's DNS addresses off the tunnel, and what they need.
fn print_dns(m: &Manager, v: &DeviceDns) {
    let (Some(doh), Some(dot)) = (&v.doh_url, &v.dot_host) else {
        println!("token: {}", v.token);
        eprintln!(
            "No public host name is set: set `domain` in [tls] of the config (or a name in wireguard.endpoint)."
        );
        return;
    };
    println!("DoH: {doh}");
    println!("DoT: {dot}");
    eprintln!("Android: Settings → Network → Private DNS → host name {dot}.");
    eprintln!(
        "iOS/macOS: `cloudpc device show {} --dns-profile {}.mobileconfig`; browsers: the DoH URL.",
        v.device, v.device
    );
    if !v.public {
        eprintln!("The public listeners are off: set `public = true` in [dns] of the config and restart, or these work only from the tunnel.");
    }
    if let Ok(t) = m.api().tls() {
        if let Some(a) = t.acme.filter(|a| !a.device_names) {
            eprintln!(
                "The certificate does not cover the DoT name (the CA could not validate *.{}: add a wildcard DNS record): use DoH.",
                a.domain
            );
        } else if t.served.source == crate::certs::CertSource::SelfSigned {
            eprintln!(
                "The certificate is self-signed: phones refuse it. Turn on `acme = true` in [tls]."
            );
        }
    }
}

/// Writes the Apple DNS settings profile of a device.
fn write_dns_profile(v: &DeviceDns, path: &Path) -> anyhow::Result<()> {
    let Some(doh) = &v.doh_url else {
        bail!("a DNS profile needs the Cloud PC's public host name: set `domain` in [tls] of the config");
    };
    let host = v
        .dot_host
        .as_deref()
        .and_then(|h| h.split_once('.'))
        .map(|(_, h)| h)
        .unwrap_or_default();
    let xml = crate::enroll::mobileconfig::dns_profile(&v.device, host, doh)?;
    qr::write_private_file(path, &xml)
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "Wrote {} (an Apple DNS settings profile; install it from Files or Settings).",
        path.display()
    );
    Ok(())
}

/// `internet=allowlist (group), until 2026-12-03T21:00:00Z`.
fn firewall_line(v: &FirewallView) -> String {
    let e = &v.effective;
    let mut out = format!(
        "internet={} ({})",
        e.internet.as_str(),
        serde_json::to_value(e.source)
            .ok()
            .and_then(|x| x.as_str().map(String::from))
            .unwrap_or_default()
    );
    if let Some(t) = e
        .next_change
        .and_then(|t| jiff::Timestamp::from_second(t).ok())
    {
        out.push_str(&format!(", changes at {t}"));
    }
    out
}

fn flags(d: &Device) -> String {
    let mut f = vec![if d.split { "split" } else { "full" }.to_string()];
    if let Some(g) = &d.group {
        f.push(format!("group={g}"));
    }
    if d.owner {
        f.push("owner".into());
    }
    if d.admin {
        f.push("admin".into());
    }
    if d.no_log {
        f.push("no-log".into());
    }
    f.join(",")
}

/// The `device list` table, one header line and one line per device.
fn device_table(devices: &[Device]) -> String {
    let rows: Vec<[String; 5]> = devices
        .iter()
        .map(|d| {
            [
                d.name.clone(),
                d.ipv4.to_string(),
                d.ipv6.to_string(),
                d.public_key.clone(),
                flags(d),
            ]
        })
        .collect();
    let header = ["NAME", "IPV4", "IPV6", "PUBLIC KEY", "FLAGS"].map(String::from);
    let mut widths = [0usize; 5];
    for r in std::iter::once(&header).chain(rows.iter()) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_template_sets_only_the_wireguard_endpoint() {
        let t = config_with_endpoint(EXAMPLE_CONFIG, "vpn.test:4000");
        let c = Config::parse(&t, Path::new("x")).unwrap();
        assert_eq!(c.wireguard.endpoint, "vpn.test:4000");
        let empty = config_with_endpoint(EXAMPLE_CONFIG, "");
        let c = Config::parse(&empty, Path::new("x")).unwrap();
        assert_eq!(c.wireguard.endpoint, "");
        assert_eq!(t.lines().count(), EXAMPLE_CONFIG.lines().count());
    }

    #[test]
    fn table_aligns_columns() {
        let d = Device {
            name: "phone".into(),
            public_key: "k".into(),
            ipv4: "100.96.0.2".parse().unwrap(),
            ipv6: "fd00::2".parse().unwrap(),
            split: true,
            group: Some("kids".into()),
            owner: true,
            no_log: false,
            admin: false,
            person: None,
            created_at: 0,
        };
        let t = device_table(&[d]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME "));
        assert_eq!(lines[0].find("IPV4"), lines[1].find("100.96.0.2"));
        assert!(lines[1].ends_with("split,group=kids,owner"));
    }
}
