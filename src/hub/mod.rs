//! The WireGuard hub: boringtun sessions per device, routing device↔device inside the hub, a
//! TUN for the hub's own services and egress, NAT64 (seam), roaming.
//!
//! Drive it with [`start`], which checks privileges first and, when it returns `Ok`, has the
//! TUN up with the overlay addresses (so the resolver can bind to them), both UDP sockets
//! bound, the devices loaded, the egress table installed and handshakes sent to the devices
//! seen shortly before (so they do not wait for their dead sessions to time out). The daemon
//! owns the handle and applies changes with [`HubHandle::set_devices`] and
//! [`HubHandle::set_internet`], both in force when they return; [`HubHandle::status`] reads
//! live counters, [`HubHandle::endpoints`] what to keep for the next start;
//! [`HubHandle::shutdown`] removes the nftables table (and the temporary egress addresses'
//! neighbour proxy entries or route), the UAPI socket and the TUN.
//!
//! Parts: `packet` (checked IP header view), `route` (where a packet goes), `peers` (device
//! table), `engine` (WireGuard messages in, packets out, no I/O), `io` (sockets, TUN, tasks),
//! `batch` (GSO/GRO output batching), `uapi` (`wg show`).

pub mod batch;
pub mod discovery;
pub mod engine;
pub mod gro;
pub mod io;
pub mod nat46;
pub mod nat64;
pub mod packet;
pub mod peers;
pub mod route;
pub mod tls;
pub mod uapi;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use crate::enroll::keys;
use engine::{Engine, Nat64};
use route::RouteCtx;

pub use engine::Counters;

/// What the hub needs to start: its own settings, read once by the daemon.
pub struct HubParams {
    pub wireguard: crate::config::WireguardConfig,
    /// Interface towards the internet (`auto` = the default route's).
    pub egress_interface: String,
    /// Whether devices reach the internet through the hub at start.
    pub internet: bool,
    /// The DNS64 prefix NAT64 serves (`None` = NAT64 off).
    pub dns64_prefix: Option<ipnet::Ipv6Net>,
    /// Where the hub's key is kept.
    pub state_dir: PathBuf,
    pub overlay: crate::store::Overlay,
    pub devices: Vec<crate::store::Device>,
    /// Where devices were last heard from, by public key (base64).
    pub endpoints: Vec<(String, crate::store::LastEndpoint)>,
    /// Overlay addresses of devices whose own internet switch is off.
    pub no_internet: Vec<std::net::IpAddr>,
    /// Overlay addresses of devices whose DNS is redirected to the hub (firewall).
    pub dns_redirect: Vec<std::net::IpAddr>,
    /// Where temporary egress addresses come from, and how often they change.
    pub temp_egress: crate::egress::host::TempSettings,
    /// The devices in `temporary` egress mode at start.
    pub temporary: Vec<crate::egress::temporary::Want>,
    /// The devices' firewalls (shared with the resolver).
    pub firewall: Arc<crate::firewall::Firewall>,
    /// NAT46, when on (shared with the resolver's DNS46).
    pub nat46: Option<Arc<nat46::Nat46>>,
}

/// Devices heard from this recently before a start are sent a handshake by the hub.
pub const RECONNECT_WITHIN_SECS: i64 = 600;

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The process may not create interfaces or firewall rules.
    #[error("{0}")]
    Privileges(String),
    /// The hub key could not be read or made.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// The WireGuard port could not be bound.
    #[error("cannot listen for WireGuard on UDP {addr}: {source} (is another WireGuard or cloudpc using `wireguard.listen_port`?)")]
    Udp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The TUN could not be created or configured.
    #[error("cannot create the TUN interface {name:?}: {source} (does /dev/net/tun exist? is `wireguard.interface` already in use?)")]
    Tun {
        name: String,
        source: std::io::Error,
    },
    /// Egress could not be set up.
    #[error(transparent)]
    Egress(#[from] crate::egress::EgressError),
    /// The UAPI socket could not be served.
    #[error("cannot serve the WireGuard UAPI socket {path}: {source}")]
    Uapi {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One device as `cloudpc status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceStatus {
    pub name: String,
    pub public_key: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// Where the device's latest authenticated packet came from.
    pub endpoint: Option<SocketAddr>,
    /// How: `udp`, or `tls` (the TLS transport on port 443).
    pub transport: Option<&'static str>,
    pub last_handshake_secs_ago: Option<u64>,
    /// Bytes of inner packets received from the device.
    pub rx_bytes: u64,
    /// Bytes of inner packets sent to the device.
    pub tx_bytes: u64,
}

/// The running hub.
pub struct HubHandle {
    engine: Arc<Engine>,
    sink: Arc<io::NetSink>,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Session indexes for new devices (kept so a rebuilt table never reuses a live one).
    next_index: parking_lot::Mutex<u32>,
    /// The egress table and the temporary addresses in force.
    egress: Arc<crate::egress::live::Egress>,
    uapi_path: parking_lot::Mutex<Option<PathBuf>>,
}

// The resolver keeps the handle in its own tasks.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<HubHandle>();
};

/// The message for a process without CAP_NET_ADMIN.
pub const PRIVILEGES_MESSAGE: &str =
    "cloudpc run needs the CAP_NET_ADMIN capability to create its \
TUN interface and nftables rules (and CAP_NET_BIND_SERVICE for DNS on port 53). Run it as root \
(e.g. `sudo cloudpc run`), or grant the binary the capabilities once: \
sudo setcap cap_net_admin,cap_net_bind_service+ep $(which cloudpc)";

/// True when the effective capability set has CAP_NET_ADMIN.
pub fn has_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// The NAT64 translator to plug in.
///
/// NAT64 SEAM: returns `None` until `crate::hub::nat64` (the pure RFC 6146/7915 translator)
/// is merged. To plug it in, add the adapter shown on [`engine::Nat64`] and return
/// `nat64::Nat64::new(p.cfg.dns.dns64_prefix, nat64_pool_v4(&p.overlay)).ok()` wrapped in
/// `Arc::new(parking_lot::Mutex::new(..))` (when `p.cfg.dns.dns64` is on). The engine then
/// sends IPv6 packets from devices to the DNS64 prefix through `translate_6to4` and writes
/// the result to the TUN (the kernel masquerades the pool address like any overlay source),
/// passes IPv4 packets from the TUN addressed to `pool_v4` through `translate_4to6` before
/// routing them to the device, and calls `expire` on each timer tick. Until then those
/// packets are dropped and counted (`nat64_dropped`).
fn nat64_translator(p: &HubParams) -> Option<Arc<dyn Nat64>> {
    let prefix = p.dns64_prefix?;
    match nat64::Nat64::new(prefix, nat64_pool_v4(&p.overlay)) {
        Ok(t) => Some(Arc::new(parking_lot::Mutex::new(t))),
        Err(e) => {
            tracing::warn!(error = %e, "NAT64 is off");
            None
        }
    }
}

/// The translator behind the engine's seam; the engine calls from several tasks.
impl Nat64 for parking_lot::Mutex<nat64::Nat64> {
    fn pool_v4(&self) -> Ipv4Addr {
        self.lock().pool()
    }
    fn translate_6to4(&self, pkt: &[u8], now: std::time::Instant, out: &mut Vec<u8>) -> bool {
        self.lock().translate_6to4(pkt, now, out).is_ok()
    }
    fn translate_4to6(&self, pkt: &[u8], now: std::time::Instant, out: &mut Vec<u8>) -> bool {
        self.lock().translate_4to6(pkt, now, out).is_ok()
    }
    fn expire(&self, now: std::time::Instant) {
        self.lock().expire(now)
    }
}

/// The IPv4 address NAT64 translates to: the last host of the overlay range, the one the
/// device allocator (lowest free first) reaches last.
pub fn nat64_pool_v4(overlay: &crate::store::Overlay) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(overlay.v4.broadcast()).saturating_sub(1))
}

/// Starts the hub. See the module docs for what holds when this returns `Ok`.
pub async fn start(p: HubParams) -> Result<HubHandle, HubError> {
    if !has_net_admin() {
        return Err(HubError::Privileges(PRIVILEGES_MESSAGE.into()));
    }
    let key = keys::load_or_create_hub_key(&p.state_dir)?;
    let wg = &p.wireguard;
    let ctx = RouteCtx {
        overlay: p.overlay,
        dns64_prefix: p.dns64_prefix,
    };
    let engine = Arc::new(
        Engine::new(key.private.clone(), ctx, nat64_translator(&p))
            .with_firewall(p.firewall.clone())
            .with_nat46(p.nat46.clone()),
    );
    let mut next_index: u32 = rand::random::<u32>();
    publish_devices(&engine, &p.devices, &mut next_index);

    let n = io::udp_sockets();
    let v4_addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, wg.listen_port));
    let mut more = io::bind_udp(v4_addr, n).map_err(|source| HubError::Udp {
        addr: v4_addr,
        source,
    })?;
    let v4 = more.remove(0);
    let v6_addr = SocketAddr::from((io::V6_ANY, wg.listen_port));
    let v6 = match io::bind_udp(v6_addr, n) {
        Ok(mut s) => {
            let first = s.remove(0);
            more.extend(s);
            Some(first)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no IPv6 WireGuard socket; serving IPv4 only");
            None
        }
    };
    let (tun, offload) = io::create_tun(&wg.interface, &p.overlay, wg.mtu, io::tun_queues())
        .map_err(|source| HubError::Tun {
            name: wg.interface.clone(),
            source,
        })?;

    let egress_out = crate::egress::resolve_interface(&p.egress_interface);
    let spec = crate::egress::EgressSpec {
        tun: wg.interface.clone(),
        out: egress_out.clone(),
        v4: p.overlay.v4,
        v6: p.overlay.v6,
        internet: p.internet,
        no_internet: p.no_internet.clone(),
        dns_redirect: p.dns_redirect.clone(),
        snat: vec![],
        cut: vec![],
        temp_prefix: None,
        temp_pool4: vec![],
    };
    crate::egress::enable_forwarding(egress_out.as_deref())?;
    let egress = Arc::new(crate::egress::live::Egress::install(
        spec,
        &p.temp_egress,
        &p.temporary,
    )?);
    if egress_out.is_none() {
        tracing::warn!("no default route found; masquerading out of every interface but the TUN");
    }

    let uapi = match uapi::bind(&wg.interface) {
        Ok(u) => u,
        Err(source) => {
            let _ = egress.remove();
            return Err(HubError::Uapi {
                path: uapi::socket_path(&wg.interface),
                source,
            });
        }
    };

    let sink = Arc::new(io::NetSink {
        v4,
        v6,
        more,
        tun,
        offload,
        send_drops: Default::default(),
        tls: Default::default(),
    });
    let mut tasks = vec![
        tokio::spawn(io::udp_task(io::Reads::V4, 0, sink.clone(), engine.clone())),
        tokio::spawn(io::timer_task(engine.clone(), sink.clone())),
        tokio::spawn(uapi::serve(uapi.0, engine.clone(), wg.listen_port)),
        tokio::spawn(egress.clone().run_clock()),
    ];
    if sink.v6.is_some() {
        tasks.push(tokio::spawn(io::udp_task(
            io::Reads::V6,
            0,
            sink.clone(),
            engine.clone(),
        )));
    }
    for q in 0..sink.tun.len() {
        tasks.push(tokio::spawn(io::tun_task(
            sink.clone(),
            q,
            engine.clone(),
            wg.mtu,
        )));
    }
    // `more` holds each family's sockets after its first (v4's, then v6's): the k-th socket of
    // a family writes to TUN queue k, so a family's sockets never share a queue.
    for i in 0..sink.more.len() {
        tasks.push(tokio::spawn(io::udp_task(
            io::Reads::More(i),
            i % (n - 1) + 1,
            sink.clone(),
            engine.clone(),
        )));
    }
    let reconnected = reconnect(&engine, &*sink, &p.endpoints, crate::store::unix_now());
    tracing::info!(
        port = wg.listen_port,
        interface = %wg.interface,
        devices = engine.table.load().len(),
        reconnected,
        internet = p.internet,
        offload,
        tun_queues = sink.tun.len(),
        gso_segments = sink.max_gso_segments(),
        "hub up"
    );
    Ok(HubHandle {
        engine,
        sink,
        tasks: parking_lot::Mutex::new(tasks),
        next_index: parking_lot::Mutex::new(next_index),
        egress,
        uapi_path: parking_lot::Mutex::new(Some(uapi.1)),
    })
}

/// Builds and publishes the device table for `devices`.
fn publish_devices(engine: &Engine, devices: &[crate::store::Device], next_index: &mut u32) {
    let (t, skipped) = engine.table.load().rebuilt(devices, next_index);
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "devices with an unusable public key are not served"
        );
    }
    tracing::debug!(devices = t.len(), "device table published");
    engine.set_table(t);
}

/// Sends a handshake initiation to every device heard from within
/// [`RECONNECT_WITHIN_SECS`] before `now` (Unix seconds); returns how many were sent.
fn reconnect(
    engine: &Engine,
    sink: &impl engine::Sink,
    endpoints: &[(String, crate::store::LastEndpoint)],
    now: i64,
) -> usize {
    let mut bufs = engine::Bufs::default();
    let mut sent = 0;
    for (key, ep) in endpoints {
        if now - ep.seen_at > RECONNECT_WITHIN_SECS {
            continue;
        }
        let Ok(key) = keys::decode_key(key, "device key") else {
            continue;
        };
        let to = peers::Endpoint {
            addr: ep.addr,
            local: ep.local,
            via: peers::Via::Udp,
        };
        if engine.initiate(&key, to, std::time::Instant::now(), &mut bufs, sink) {
            sent += 1;
        }
    }
    sent
}

impl HubHandle {
    /// Every registered device, by name.
    pub fn status(&self) -> Vec<DeviceStatus> {
        use base64::Engine as _;
        let table = self.engine.table.load();
        let now = std::time::Instant::now();
        let mut v: Vec<DeviceStatus> = table
            .peers()
            .map(|p| {
                let st = p.stats(now);
                DeviceStatus {
                    name: p.name.read().clone(),
                    public_key: base64::engine::general_purpose::STANDARD.encode(p.public_key),
                    ipv4: p.addrs.v4,
                    ipv6: p.addrs.v6,
                    endpoint: p.endpoint().map(|e| e.addr),
                    transport: p.endpoint().map(|e| e.via.name()),
                    last_handshake_secs_ago: st.since_handshake.map(|d| d.as_secs()),
                    rx_bytes: st.rx_bytes,
                    tx_bytes: st.tx_bytes,
                }
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The hub's LocalSend device info (JSON): its answer to devices' announcements.
    pub fn set_localsend_info(&self, info: Vec<u8>) {
        self.engine.set_localsend_info(info);
    }

    /// Puts the discovery policy in force (who hears whose multicast announcements).
    pub fn set_discovery(&self, p: discovery::Policy) {
        self.engine.set_discovery(p);
    }

    /// NAT46, when on.
    pub fn nat46(&self) -> Option<&Arc<nat46::Nat46>> {
        self.engine.nat46()
    }

    /// Replaces the device table: a new device can handshake, and a removed one is cut off,
    /// when this returns. Unchanged devices keep their sessions.
    pub fn set_devices(&self, devices: &[crate::store::Device]) {
        publish_devices(&self.engine, devices, &mut self.next_index.lock());
    }

    /// Switches internet egress through the hub on or off (in force when this returns).
    pub fn set_internet(&self, on: bool) -> Result<(), crate::egress::EgressError> {
        if self.egress.set_internet(on)? {
            tracing::info!(internet = on, "internet switched");
        }
        Ok(())
    }

    /// Cuts the internet of the devices at `no_internet`, and sends the DNS of those at
    /// `dns_redirect` to the hub (every other device gets both back); in force when this
    /// returns.
    pub fn set_device_egress(
        &self,
        mut no_internet: Vec<std::net::IpAddr>,
        mut dns_redirect: Vec<std::net::IpAddr>,
    ) -> Result<(), crate::egress::EgressError> {
        no_internet.sort();
        dns_redirect.sort();
        self.egress.set_device_filters(no_internet, dns_redirect)
    }

    /// The egress table and temporary addresses (`set_temporary`, `renew`, leases, report).
    pub fn egress(&self) -> &crate::egress::live::Egress {
        &self.egress
    }

    /// Where each device that has been heard from was last seen, by public key (base64),
    /// for the next start (see [`RECONNECT_WITHIN_SECS`]).
    pub fn endpoints(&self) -> Vec<(String, crate::store::LastEndpoint)> {
        use base64::Engine as _;
        let table = self.engine.table.load();
        let now = std::time::Instant::now();
        let unix = crate::store::unix_now();
        table
            .peers()
            .filter_map(|p| {
                // A TLS stream cannot be dialled back after a restart; the device reconnects.
                let ep = p.endpoint().filter(|e| e.via == peers::Via::Udp)?;
                let since = p.stats(now).since_handshake?;
                Some((
                    base64::engine::general_purpose::STANDARD.encode(p.public_key),
                    crate::store::LastEndpoint {
                        addr: ep.addr,
                        local: ep.local,
                        seen_at: unix - since.as_secs() as i64,
                    },
                ))
            })
            .collect()
    }

    /// The TLS transport's side of the hub, for the HTTPS listeners on port 443.
    pub fn tls_transport(&self) -> tls::WgTls {
        tls::WgTls {
            engine: self.engine.clone(),
            net: self.sink.clone(),
        }
    }

    /// The TLS transport's open streams and counters.
    pub fn tls_streams(&self) -> &tls::TlsStreams {
        &self.sink.tls
    }

    /// Counters of dropped and refused input.
    pub fn counters(&self) -> &Counters {
        &self.engine.counters
    }

    /// Packets dropped because a socket or the TUN queue was full.
    pub fn send_drops(&self) -> u64 {
        self.sink
            .send_drops
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops every task and removes the nftables table and the UAPI socket; the TUN goes
    /// with the last handle (at the latest when the process exits).
    pub async fn shutdown(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        if let Err(e) = self.egress.remove() {
            tracing::warn!(error = %e, "could not remove the nftables table");
        }
        if let Some(p) = self.uapi_path.lock().take() {
            let _ = std::fs::remove_file(p);
        }
        tracing::info!("hub stopped");
    }
}
