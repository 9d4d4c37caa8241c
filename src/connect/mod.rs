//! `cloudpc connect`: the client for Linux devices.
//!
//! It reads the wg-quick config `cloudpc device add` printed, brings up a TUN (with the
//! kernel's offloads where it has them) and one boringtun session to the hub, installs the
//! addresses, routes and DNS the config asks for, and keeps the device online over whichever
//! transport works ([`path`]): UDP to the hub's WireGuard port first, the TLS stream to its
//! port 443 (`hub::tls`) when UDP does not answer, and back to UDP as soon as it does. The
//! WireGuard session is the same on both, so inner connections survive a switch.
//!
//! I/O is batched as on the hub: the TUN is read with offloads (one read, a 64 KiB TCP
//! super-packet split into MTU packets) and written with GRO coalescing; UDP is read with
//! `recvmmsg` + GRO and written with GSO. Buffers are reused; the steady state allocates
//! nothing per packet.
//!
//! `--relay ADDR` runs no TUN: a stock WireGuard on the same machine points its `Endpoint` at
//! ADDR and the client carries its datagrams to the hub, over UDP or TLS the same way (it
//! cannot start handshakes of its own there, so a UDP probe is the next datagram sent on UDP
//! as well).
//!
//! `--status` asks a running client (over its Unix socket) what it is doing.

pub mod config;
pub mod invite;
pub mod path;
pub mod status;
pub mod system;
pub(crate) mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use parking_lot::Mutex;
use tokio::net::UdpSocket;

use crate::hub::batch::{gso_runs, GsoRun, Queued, TunQueue};
use crate::hub::tls::Outbox;
use config::ClientConfig;
use path::{Action, Mode, Path};
use status::status_server;
pub use status::{print_status, status_socket, Status};
use tls::{connector, tls_session};

/// The firewall mark wg-quick gives its own socket (its first table number).
const WG_QUICK_MARK: u32 = 51820;

/// What `cloudpc connect` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// Name of the TUN interface.
    pub interface: String,
    /// TCP port of the hub's TLS transport.
    pub tls_port: u16,
    /// Relay only: the local UDP address a stock WireGuard dials.
    pub relay: Option<SocketAddr>,
}

/// The transports to the hub, shared by every task.
struct Link {
    hub_udp: SocketAddr,
    hub_tls: SocketAddr,
    server_name: rustls::pki_types::ServerName<'static>,
    mark: Option<u32>,
    udp: UdpSocket,
    udp_state: quinn_udp::UdpSocketState,
    tls: Mutex<Option<(Arc<Outbox>, tokio::task::AbortHandle)>>,
    path: Mutex<Path>,
    connector: tokio_rustls::TlsConnector,
    switches: AtomicU64,
    /// Relay mode: the next datagram also goes on UDP (the probe).
    probe_next: std::sync::atomic::AtomicBool,
    /// Why the TLS stream last failed or closed (for `--status`); cleared when one opens.
    tls_problem: Mutex<Option<String>>,
    /// The task of the current TLS stream (aborted when the stream is closed on purpose).
    tls_task: Mutex<Option<tokio::task::AbortHandle>>,
    /// Relay mode: bytes each way.
    relay_rx: AtomicU64,
    relay_tx: AtomicU64,
}

impl Link {
    fn mode(&self) -> Mode {
        self.path.lock().mode()
    }

    /// Sends one datagram on UDP now (dropped when the socket buffer is full).
    fn send_udp(&self, d: &[u8]) {
        let _ = crate::udp::try_send(
            &self.udp_state,
            (&self.udp).into(),
            self.hub_udp,
            None,
            d,
            None,
        );
    }

    /// Sends one datagram on TLS (dropped while the stream is down).
    fn send_tls(&self, d: &[u8]) {
        if let Some((o, _)) = self.tls.lock().as_ref() {
            o.push(d);
        }
    }

    /// Sends one datagram the current way.
    fn send(&self, d: &[u8]) {
        let mode = {
            let mut p = self.path.lock();
            p.sent(Instant::now());
            p.mode()
        };
        match mode {
            Mode::Udp => self.send_udp(d),
            Mode::Tls => self.send_tls(d),
        }
    }

    /// Sends a batch laid out back to back in `arena` the current way: GSO runs on UDP.
    async fn send_batch(&self, arena: &[u8], queued: &[Queued], runs: &mut Vec<GsoRun>) {
        if queued.is_empty() {
            return;
        }
        let mode = {
            let mut p = self.path.lock();
            p.sent(Instant::now());
            p.mode()
        };
        if mode == Mode::Tls {
            for q in queued {
                self.send_tls(&arena[q.start..q.start + q.len]);
            }
            return;
        }
        gso_runs(queued, self.udp_state.max_gso_segments(), runs);
        for r in runs.iter() {
            let data = &arena[r.start..r.end];
            let seg = (r.count > 1).then_some(r.segment);
            let sent = self
                .udp
                .async_io(tokio::io::Interest::WRITABLE, || {
                    crate::udp::try_send(
                        &self.udp_state,
                        (&self.udp).into(),
                        self.hub_udp,
                        None,
                        data,
                        seg,
                    )
                })
                .await;
            if sent.is_err() && seg.is_some() {
                for c in data.chunks(r.segment) {
                    self.send_udp(c);
                }
            }
        }
    }

    fn received(&self, via: Mode) {
        let mut p = self.path.lock();
        let before = p.mode();
        p.received(via, Instant::now());
        if p.mode() != before {
            self.switches.fetch_add(1, Ordering::Relaxed);
            tracing::info!(transport = ?p.mode(), "UDP answers again: back on UDP");
        }
    }
}

/// The data plane's side of a received datagram: the client decrypts it, the relay passes
/// it on.
trait Inbound: Send + Sync + 'static {
    /// Handles datagrams that arrived on `via`, then flushes.
    fn handle<'a>(
        &'a self,
        via: Mode,
        datagrams: &'a mut (dyn Iterator<Item = &'a [u8]> + Send),
        out: &'a mut Scratch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
}

/// A receive task's buffers.
struct Scratch {
    plain: Vec<u8>,
    tun: TunQueue,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            plain: vec![0u8; crate::hub::engine::MAX_PACKET + 64],
            tun: TunQueue::default(),
        }
    }
}

/// The full client: one session, a TUN.
struct Client {
    link: Arc<Link>,
    tunn: Mutex<Tunn>,
    tun: Arc<tun_rs::AsyncDevice>,
}

impl Client {
    /// Decrypts one datagram; packets go to `out.tun`, handshake traffic back where it came
    /// from. True when it was authentic.
    fn decrypt(&self, via: Mode, d: &[u8], out: &mut Scratch) -> bool {
        let mut t = self.tunn.lock();
        let ip = match via {
            Mode::Udp => Some(self.link.hub_udp.ip()),
            Mode::Tls => Some(self.link.hub_tls.ip()),
        };
        let reply = |link: &Link, d: &[u8]| match via {
            Mode::Udp => link.send_udp(d),
            Mode::Tls => link.send_tls(d),
        };
        match t.decapsulate(ip, d, &mut out.plain) {
            TunnResult::Done => true,
            TunnResult::Err(_) => false,
            TunnResult::WriteToNetwork(w) => {
                reply(&self.link, w);
                let mut buf = [0u8; 2048];
                while let TunnResult::WriteToNetwork(w) = t.decapsulate(None, &[], &mut buf) {
                    reply(&self.link, w);
                }
                true
            }
            TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                out.tun.push(p);
                true
            }
        }
    }

    /// A fresh handshake initiation, sent on `via`.
    fn handshake_on(&self, via: Mode) {
        let mut buf = [0u8; 256];
        let mut t = self.tunn.lock();
        if let TunnResult::WriteToNetwork(d) = t.format_handshake_initiation(&mut buf, true) {
            match via {
                Mode::Udp => self.link.send_udp(d),
                Mode::Tls => self.link.send_tls(d),
            }
        }
    }
}

impl Inbound for Client {
    fn handle<'a>(
        &'a self,
        via: Mode,
        datagrams: &'a mut (dyn Iterator<Item = &'a [u8]> + Send),
        out: &'a mut Scratch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let mut authentic = false;
            for d in datagrams {
                authentic |= self.decrypt(via, d, out);
            }
            if authentic {
                self.link.received(via);
            }
            out.tun.flush(&self.tun).await;
        })
    }
}

/// The relay: datagrams go to the local WireGuard.
struct Relay {
    link: Arc<Link>,
    local: UdpSocket,
    /// Where the local WireGuard sends from.
    peer: Mutex<Option<SocketAddr>>,
}

impl Inbound for Relay {
    fn handle<'a>(
        &'a self,
        via: Mode,
        datagrams: &'a mut (dyn Iterator<Item = &'a [u8]> + Send),
        _out: &'a mut Scratch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let Some(to) = *self.peer.lock() else { return };
            let mut any = false;
            for d in datagrams {
                any = true;
                self.link
                    .relay_rx
                    .fetch_add(d.len() as u64, Ordering::Relaxed);
                let _ = self.local.try_send_to(d, to);
            }
            if any {
                self.link.received(via);
            }
        })
    }
}

/// Reads datagram batches from the hub on UDP.
async fn udp_reader(link: Arc<Link>, inbound: Arc<dyn Inbound>) {
    let mut batch = crate::udp::RecvBatch::new(crate::hub::engine::MAX_PACKET);
    let mut out = Scratch::new();
    loop {
        let r = link
            .udp
            .async_io(tokio::io::Interest::READABLE, || {
                batch.recv_from(&link.udp_state, (&link.udp).into())
            })
            .await;
        if r.is_err() {
            continue;
        }
        let hub = link.hub_udp;
        let mut it = batch.datagrams().filter(|d| d.from == hub).map(|d| d.data);
        inbound.handle(Mode::Udp, &mut it, &mut out).await;
    }
}

/// Resolves the config's endpoint (once, before the tunnel's DNS is in place).
async fn resolve(endpoint: &str) -> anyhow::Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host(endpoint)
        .await
        .map_err(|e| anyhow::anyhow!("cannot resolve the endpoint {endpoint}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| anyhow::anyhow!("the endpoint {endpoint} has no address"))
}

fn make_link(
    cfg: &ClientConfig,
    hub_udp: SocketAddr,
    tls_port: u16,
    mark: Option<u32>,
) -> anyhow::Result<Link> {
    let any: SocketAddr = if hub_udp.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let port = crate::udp::bind(
        any,
        crate::udp::Options {
            buffer: 4 << 20,
            force_buffers: true,
            reuse_port: false,
            gro: true,
        },
    )?;
    if let Some(m) = mark {
        system::set_mark(&port.sock, m)?;
    }
    let host = cfg.endpoint_host();
    let server_name = match host.parse::<IpAddr>() {
        Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
        Err(_) => rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|_| anyhow::anyhow!("the endpoint host {host:?} is not a name"))?,
    };
    Ok(Link {
        hub_udp,
        hub_tls: SocketAddr::new(hub_udp.ip(), tls_port),
        server_name,
        mark,
        udp: UdpSocket::from_std(port.sock)?,
        udp_state: port.state,
        tls: Mutex::new(None),
        path: Mutex::new(Path::new(Instant::now())),
        connector: connector()?,
        switches: AtomicU64::new(0),
        probe_next: Default::default(),
        tls_problem: Mutex::new(None),
        tls_task: Mutex::new(None),
        relay_rx: AtomicU64::new(0),
        relay_tx: AtomicU64::new(0),
    })
}

/// Runs `cloudpc connect` until SIGINT/SIGTERM.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&opts.config)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", opts.config.display()))?;
    let cfg =
        config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", opts.config.display()))?;
    if !crate::hub::has_net_admin() && opts.relay.is_none() {
        anyhow::bail!("cloudpc connect needs CAP_NET_ADMIN to create its TUN: run it as root");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(opts, cfg))
}

async fn serve(opts: Options, cfg: ClientConfig) -> anyhow::Result<()> {
    let hub_udp = resolve(&cfg.endpoint).await?;
    let mut undo = system::Undo::default();
    let result = serve_inner(&opts, &cfg, hub_udp, &mut undo).await;
    undo.run();
    let _ = std::fs::remove_file(status_socket(&opts.interface));
    result
}

async fn serve_inner(
    opts: &Options,
    cfg: &ClientConfig,
    hub_udp: SocketAddr,
    undo: &mut system::Undo,
) -> anyhow::Result<()> {
    let relay = opts.relay.is_some();
    // A relay's sockets carry wg-quick's default mark, so a full-tunnel stock WireGuard
    // beside it does not route them into itself.
    let mark = match relay {
        true => Some(WG_QUICK_MARK).filter(|_| crate::hub::has_net_admin()),
        false => cfg.full_tunnel().then_some(system::TABLE),
    };
    let link = Arc::new(make_link(cfg, hub_udp, opts.tls_port, mark)?);
    let mut tasks = Vec::new();
    let (inbound, client): (Arc<dyn Inbound>, Option<Arc<Client>>) = match opts.relay {
        Some(addr) => {
            let local = UdpSocket::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on UDP {addr}: {e}"))?;
            let r = Arc::new(Relay {
                link: link.clone(),
                local,
                peer: Mutex::new(None),
            });
            tasks.push(tokio::spawn(relay_local(r.clone())));
            (r, None)
        }
        None => {
            let tun = tun_rs::DeviceBuilder::new()
                .name(&opts.interface)
                .mtu(cfg.mtu)
                .offload(std::env::var("CLOUDPC_CONNECT_OFFLOAD").map_or(true, |v| v != "0"))
                .build_async()
                .or_else(|_| {
                    tun_rs::DeviceBuilder::new()
                        .name(&opts.interface)
                        .mtu(cfg.mtu)
                        .build_async()
                })
                .map_err(|e| anyhow::anyhow!("cannot create the TUN {}: {e}", opts.interface))?;
            let tunn = Tunn::new(
                StaticSecret::from(cfg.private_key),
                PublicKey::from(cfg.hub_key),
                cfg.preshared_key,
                cfg.keepalive,
                rand::random::<u32>() >> 8,
                None,
            );
            let c = Arc::new(Client {
                link: link.clone(),
                tunn: Mutex::new(tunn),
                tun: Arc::new(tun),
            });
            system::install_routes(cfg, &opts.interface, undo)?;
            let how = system::install_dns(cfg, &opts.interface, undo)?;
            tracing::info!(dns = how, "DNS set");
            tasks.push(tokio::spawn(tun_reader(c.clone())));
            (c.clone(), Some(c))
        }
    };
    tasks.push(tokio::spawn(udp_reader(link.clone(), inbound.clone())));
    if let Some(c) = &client {
        c.handshake_on(Mode::Udp);
    }
    tasks.push(tokio::spawn(status_server(
        opts.interface.clone(),
        relay,
        link.clone(),
        client.clone(),
    )?));
    tracing::info!(interface = %opts.interface, relay, "cloudpc connect up; trying UDP");

    let watch = system::NetWatch::new().ok();
    let mut tick = tokio::time::interval(crate::hub::io::TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Our own TUN's addresses and routes were just announced: not a network change.
    let quiet_until = Instant::now() + Duration::from_secs(1);
    let mut buf = vec![0u8; 2048];
    loop {
        let changed = async {
            match &watch {
                Some(w) => w.changed().await,
                None => std::future::pending().await,
            }
        };
        let mut actions = Vec::new();
        tokio::select! {
            _ = tick.tick() => {
                if let Some(c) = &client {
                    let mut t = c.tunn.lock();
                    if let TunnResult::WriteToNetwork(d) = t.update_timers(&mut buf) {
                        link.send(d);
                    }
                }
                actions = link.path.lock().tick(Instant::now());
            }
            _ = changed => {
                if Instant::now() > quiet_until {
                    tracing::info!("network changed: checking UDP");
                    actions = link.path.lock().network_changed(Instant::now());
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        for a in actions {
            match a {
                Action::ProbeUdp => match &client {
                    Some(c) => c.handshake_on(Mode::Udp),
                    None => link.probe_next.store(true, Ordering::Relaxed),
                },
                Action::OpenTls => {
                    if link.mode() == Mode::Tls {
                        link.switches.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::info!("no answer on UDP: opening TLS to port {}", opts.tls_port);
                    let c2 = client.clone();
                    let on_open: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                        if let Some(c) = &c2 {
                            c.handshake_on(Mode::Tls);
                        }
                    });
                    let task = tokio::spawn(tls_session(link.clone(), inbound.clone(), on_open));
                    if let Some(old) = link.tls_task.lock().replace(task.abort_handle()) {
                        old.abort();
                    }
                }
                Action::CloseTls => {
                    if let Some((o, h)) = link.tls.lock().take() {
                        o.close();
                        h.abort();
                    }
                    if let Some(t) = link.tls_task.lock().take() {
                        t.abort();
                    }
                }
                Action::ProbeTls => {
                    if let Some(c) = &client {
                        c.handshake_on(Mode::Tls);
                    }
                }
            }
        }
    }
    tracing::info!("cloudpc connect stopping");
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// Reads the TUN in batches, encrypts, and sends the current way.
async fn tun_reader(c: Arc<Client>) {
    let seg = (usize::from(1500u16) + 128).max(2048);
    let mut original = vec![0u8; tun_rs::VIRTIO_NET_HDR_LEN + crate::hub::engine::MAX_PACKET];
    let mut segs: Vec<Vec<u8>> = (0..tun_rs::IDEAL_BATCH_SIZE)
        .map(|_| vec![0u8; seg])
        .collect();
    let mut sizes = vec![0usize; tun_rs::IDEAL_BATCH_SIZE];
    let mut arena: Vec<u8> = Vec::new();
    let mut queued: Vec<Queued> = Vec::new();
    let mut runs = Vec::new();
    let mut out = vec![0u8; crate::hub::engine::MAX_PACKET + 64];
    let to = crate::hub::peers::Endpoint::from(c.link.hub_udp);
    let mut errors = 0u32;
    loop {
        let n = match c
            .tun
            .recv_multiple(&mut original, &mut segs, &mut sizes, 0)
            .await
        {
            Ok(n) => {
                errors = 0;
                n
            }
            Err(_) => {
                errors += 1;
                if errors > 1000 {
                    tracing::error!("TUN read keeps failing; stopping");
                    return;
                }
                continue;
            }
        };
        arena.clear();
        queued.clear();
        {
            let mut t = c.tunn.lock();
            for (s, &len) in segs.iter().zip(&sizes).take(n) {
                if let TunnResult::WriteToNetwork(d) =
                    t.encapsulate(&s[..len.min(s.len())], &mut out)
                {
                    let start = arena.len();
                    arena.extend_from_slice(d);
                    queued.push(Queued {
                        to,
                        start,
                        len: d.len(),
                    });
                }
            }
        }
        c.link.send_batch(&arena, &queued, &mut runs).await;
    }
}

/// Relay: datagrams from the local WireGuard go to the hub.
async fn relay_local(r: Arc<Relay>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = r.local.recv_from(&mut buf).await else {
            continue;
        };
        *r.peer.lock() = Some(from);
        let d = &buf[..n];
        r.link.relay_tx.fetch_add(n as u64, Ordering::Relaxed);
        let mode = r.link.mode();
        if mode == Mode::Tls && r.link.probe_next.swap(false, Ordering::Relaxed) {
            r.link.send_udp(d);
        }
        r.link.send(d);
    }
}
