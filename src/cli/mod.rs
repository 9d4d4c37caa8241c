//! The `cloudpc` command line (clap). Parses, dispatches, prints; the work is done by the modules.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod admin;
mod api;
mod connect;
mod device;
mod drop;
mod lists;
mod misc;
mod people;
mod querylog;
mod run;

use crate::api::Manage;

/// Global options shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Globals {
    /// Config file (TOML). Without one, built-in defaults are used.
    #[arg(long, global = true, env = "CLOUDPC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory (SQLite database, keys, certificates, list cache).
    #[arg(long, global = true, env = "CLOUDPC_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl Globals {
    /// The state dir to use.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(crate::paths::default_state_dir)
    }

    /// The config in force: the file when given, else the defaults.
    pub fn config(&self) -> anyhow::Result<crate::config::Config> {
        match &self.config {
            Some(p) => Ok(crate::config::Config::load(p)?),
            None => Ok(crate::config::Config::default()),
        }
    }

    /// Directory that relative paths in the config are taken from.
    pub fn base_dir(&self) -> PathBuf {
        self.config
            .as_ref()
            .and_then(|p| p.parent().map(|d| d.to_path_buf()))
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

/// What the CLI changes state through: the running hub's API, or the store directly (same
/// checks) when no hub runs with this state dir.
pub enum Manager {
    Remote(crate::api::Client),
    Local {
        control: Box<crate::daemon::Control>,
        // Keeps a hub from starting while this command writes the store.
        _lock: crate::paths::RunLock,
        // Keeps the runtime the local control downloads lists with.
        _rt: tokio::runtime::Runtime,
    },
}

impl Manager {
    /// Connects to the running hub, or opens the store when none runs.
    pub fn open(g: &Globals) -> anyhow::Result<Manager> {
        let state_dir = g.state_dir();
        // A hub that is starting (or stopping) holds the lock but does not answer yet (any
        // more): wait for it to answer, or to be gone.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let lock = loop {
            if let Some(c) = crate::api::Client::connect(&state_dir)? {
                return Ok(Manager::Remote(c));
            }
            if let Some(l) = crate::paths::RunLock::try_take(&state_dir, false)
                .map_err(|e| anyhow::anyhow!("cannot lock {}: {e}", state_dir.display()))?
            {
                break l;
            }
            if std::time::Instant::now() > end {
                anyhow::bail!(
                    "a cloudpc run holds {} but its API does not answer; nothing was changed",
                    crate::paths::run_lock(&state_dir).display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let cfg = g.config()?;
        let store = crate::store::Store::open(&state_dir)?;
        let overlay = store.overlay(&cfg.wireguard)?;
        let settings = crate::daemon::control_settings(&cfg, &state_dir, overlay)?;
        let lists = std::sync::Arc::new(crate::filter::ListManager::open(
            crate::daemon::list_settings(&cfg, &state_dir, &g.base_dir()),
        )?);
        let _ = rustls::crypto::ring::default_provider().install_default();
        // A worker thread drives the sockets: `Control` waits for downloads with
        // `Handle::block_on`, which cannot drive a current-thread runtime's I/O.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let upstreams = rt
            .block_on(crate::dns::upstream::Upstreams::from_config(&cfg.dns))
            .ok()
            .map(std::sync::Arc::new);
        let control = crate::daemon::Control::offline(
            store,
            settings,
            overlay,
            lists,
            upstreams,
            rt.handle().clone(),
        );
        Ok(Manager::Local {
            _lock: lock,
            control: Box::new(control),
            _rt: rt,
        })
    }

    /// True when a running hub applies the changes.
    pub fn is_running(&self) -> bool {
        matches!(self, Manager::Remote(_))
    }

    /// The API, whichever way it is reached.
    pub fn api(&self) -> &dyn Manage {
        match self {
            Manager::Remote(c) => c,
            Manager::Local { control, .. } => &**control,
        }
    }
}

/// cloudpc — your Cloud PC as private DNS resolver and WireGuard hub for all your devices.
#[derive(Debug, Parser)]
#[command(name = "cloudpc", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub globals: Globals,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub: the resolver and the WireGuard hub (built-in defaults without a config).
    Run,
    /// Write a commented config file and make the hub's keys.
    Init(device::InitArgs),
    /// Register, list, remove and rename devices.
    #[command(subcommand)]
    Device(device::DeviceCmd),
    /// People (members and guests) whose devices join the network.
    #[command(subcommand)]
    Person(people::PersonCmd),
    /// Share a device (or some of its ports) with a person or a group.
    #[command(subcommand)]
    Share(people::ShareCmd),
    /// Invites: a link or code with which a device joins for a person.
    #[command(subcommand)]
    Invite(people::InviteCmd),
    /// Links to other Cloud PCs: each side exports chosen devices to the other.
    #[command(subcommand)]
    Link(people::LinkCmd),
    /// The Cloud PC's inbox: files devices dropped on it with LocalSend.
    #[command(subcommand)]
    Drop(drop::DropCmd),
    /// Show live counters from the running hub.
    Status(misc::StatusArgs),
    /// On a Linux device: join the network with the config `device add` printed (UDP, or
    /// TLS on port 443 where UDP is blocked).
    Connect(connect::ConnectArgs),
    /// The hub's TLS certificate: which one is served, and renewing it from the ACME CA.
    #[command(subcommand)]
    Tls(misc::TlsCmd),
    /// Block a domain (and its subdomains) for every device.
    #[command(subcommand)]
    Block(misc::RuleCmd),
    /// Never block a domain (beats every block list).
    #[command(subcommand)]
    Allow(misc::RuleCmd),
    /// Switch the personal VPN (internet through the hub) on or off at run time.
    Internet(misc::InternetArgs),
    /// Show and manage block list subscriptions.
    Lists(lists::ListsArgs),
    /// The encrypted query log (off by default).
    #[command(subcommand)]
    Querylog(querylog::QuerylogCmd),
    /// The management API: tokens for its TCP listener.
    #[command(subcommand)]
    Api(api::ApiCmd),
    /// The admin page's login: password and sessions.
    #[command(subcommand)]
    Admin(admin::AdminCmd),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let g = cli.globals.clone();
    let result = match cli.command {
        Command::Run => run::run(&g),
        Command::Init(a) => device::init(&g, a),
        Command::Device(c) => device::device(&g, c),
        Command::Person(c) => people::person(&g, c),
        Command::Share(c) => people::share(&g, c),
        Command::Invite(c) => people::invite(&g, c),
        Command::Link(c) => people::link(&g, c),
        Command::Drop(c) => drop::drop_cmd(&g, c),
        Command::Status(a) => misc::status(&g, a),
        Command::Connect(a) => connect::connect(a),
        Command::Tls(c) => misc::tls(&g, c),
        Command::Block(c) => misc::rule(&g, crate::store::RuleAction::Block, c),
        Command::Allow(c) => misc::rule(&g, crate::store::RuleAction::Allow, c),
        Command::Internet(a) => misc::internet(&g, a),
        Command::Lists(a) => lists::lists(&g, a),
        Command::Querylog(c) => querylog::querylog(&g, c),
        Command::Api(c) => api::api(&g, c),
        Command::Admin(c) => admin::admin(&g, c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    // boringtun reports a device going quiet (session expiry, rekey timeouts) at error and
    // warn level; for a hub that is routine, and `cloudpc status` shows it, so it stays quiet
    // unless CLOUDPC_LOG asks for it.
    let filter = EnvFilter::try_from_env("CLOUDPC_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,boringtun=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
