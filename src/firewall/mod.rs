//! The firewall for every device: what each device may reach, enforced in the hub's data path
//! and tied to the resolver's answers.
//!
//! The daemon compiles each device's policy ([`Compiled`]: its group's and its own settings,
//! with the mode a timer or schedule puts in force) and publishes one [`DeviceFw`] per device
//! that has any, keyed by its overlay addresses, in the shared [`Firewall`]. Two parts read it:
//!
//! - **The resolver** asks [`DeviceFw::dns_check`] before answering a device (denied sites,
//!   names outside an allowlist, known public DoH servers and the browsers' DoH canary are
//!   refused) and hands every answer to [`DeviceFw::record_answer`] before it is sent, which
//!   records the addresses it carries (for the TTL, at least `site_ttl_floor`) with the names
//!   of its CNAME chain. So an allowlist entry exists before the answer reaches the device.
//! - **The hub** asks [`Firewall::admit`] for every packet a device sends, after routing.
//!
//! Order of the checks for a packet to the internet (first match decides):
//! 1. the hub's own addresses: always allowed (DNS, the admin page);
//! 2. no bypass (mode not plain `on`, or any `deny_sites`): DNS (TCP/UDP 53) passes to the
//!    kernel, which redirects it to the hub's resolver (`egress`), and is dropped on the NAT64
//!    path; DNS-over-TLS/QUIC (853) is dropped;
//! 3. mode `off`: dropped;
//! 4. an address the resolver handed this device only for denied sites: dropped;
//! 5. an address it handed for an allowed site, entry alive: allowed, and the connection is
//!    remembered (it keeps working after the entry expires);
//! 6. `deny` rules: dropped (a deny beats an allow that also matches);
//! 7. a connection opened earlier under 5: allowed;
//! 8. `allow` rules: allowed;
//! 9. mode `on`: allowed; `allowlist`: dropped.
//!
//! Between devices: with `reach` unset a device reaches every other; with `reach` set it may
//! open connections only to the devices (and ports) named, and its replies on connections the
//! other side opened are always allowed (each device's firewall remembers who opened a
//! connection to it). Counters count dropped connection attempts (a TCP SYN, or any other
//! dropped packet), never destinations.

pub mod spec;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::filter::names::{label_count, name_hash, NameSet, NameSetBuilder, Suffixes};
pub use spec::{
    Effective, FirewallPatch, FirewallSpec, InternetMode, ModeSource, PacketRule, Ports, Reach,
    ReachTarget, Timer, Window,
};

/// Settings of the whole firewall (`[firewall]`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// An allowlisted address stays usable at least this long after the answer that named it.
    pub site_ttl_floor: Duration,
    /// Addresses remembered per device; the oldest go first.
    pub max_sites: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            site_ttl_floor: Duration::from_secs(300),
            max_sites: 65_536,
        }
    }
}

/// Connections remembered per device (for 5/7 above and replies between devices).
const MAX_FLOWS: usize = 16_384;

/// A remembered connection is forgotten after this long without a packet.
fn flow_idle(proto: u8) -> Duration {
    match proto {
        6 => Duration::from_secs(2 * 3600),
        17 => Duration::from_secs(180),
        _ => Duration::from_secs(60),
    }
}

/// How long a packet's decision is reused for the packets of the same connection after it.
const FAST_PATH: Duration = Duration::from_secs(1);

/// A set of site names (suffix match).
pub struct Sites(NameSet);

impl Sites {
    /// Builds the set from normalized names.
    pub fn build<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Sites {
        let mut b = NameSetBuilder::default();
        for n in names {
            let n = n.as_ref();
            b.push(name_hash(n), label_count(n));
        }
        Sites(b.build())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    fn matches(&self, s: &Suffixes) -> bool {
        self.0.matches(s)
    }
}

/// Known public encrypted-DNS services, refused for restricted devices.
static DOH_SERVERS: LazyLock<Sites> = LazyLock::new(|| {
    Sites::build(
        include_str!("../../blocklists/doh-servers.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#')),
    )
});

/// Browsers (Firefox) turn their own DoH off when this name does not resolve.
pub const DOH_CANARY: &str = "use-application-dns.net";

/// A device another device may reach, with its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReachAddr {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub ports: Option<Ports>,
}

/// One device's policy in force.
pub struct Compiled {
    pub mode: InternetMode,
    pub allow_sites: Vec<Arc<Sites>>,
    pub deny_sites: Vec<Arc<Sites>>,
    pub allow: Vec<PacketRule>,
    pub deny: Vec<PacketRule>,
    /// `None`: every device.
    pub reach: Option<Vec<ReachAddr>>,
    /// Devices (guests') this one may open connections to only when `reach` names them;
    /// replies on connections they opened always pass.
    pub quarantined: Arc<rustc_hash::FxHashSet<IpAddr>>,
    /// A guest's view of the local zones: only these names (lower case, no trailing dot)
    /// resolve, the rest are NXDOMAIN. `None`: every local name.
    pub local_names: Option<Arc<rustc_hash::FxHashSet<String>>>,
    /// A guest's (or a linked Cloud PC's) device: of the hub it reaches only DNS (53, 853)
    /// and HTTPS (443), and through it no private address (the hub's LAN, other links).
    pub outsider: bool,
}

impl Compiled {
    /// No bypass applies: the mode is not plain `on`, or some sites are denied.
    pub fn restricted(&self) -> bool {
        self.mode != InternetMode::On || self.deny_sites.iter().any(|s| !s.is_empty())
    }

    /// True when it restricts nothing (such a device needs no firewall).
    pub fn is_open(&self) -> bool {
        self.mode == InternetMode::On
            && self.allow_sites.iter().all(|s| s.is_empty())
            && self.deny_sites.iter().all(|s| s.is_empty())
            && self.deny.is_empty()
            && self.reach.is_none()
            && self.quarantined.is_empty()
            && self.local_names.is_none()
            && !self.outsider
    }

    fn allows_site(&self, s: &Suffixes) -> bool {
        self.allow_sites.iter().any(|set| set.matches(s))
    }

    fn denies_site(&self, s: &Suffixes) -> bool {
        self.deny_sites.iter().any(|set| set.matches(s))
    }
}

/// Where a routed packet goes, for [`Firewall::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The hub's own addresses.
    Hub,
    /// The internet through the kernel.
    Internet,
    /// The internet through NAT64.
    Nat64,
    /// Another device (by its IPv4 overlay address).
    Device(Ipv4Addr),
}

/// What the resolver does with a device's question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsCheck {
    Pass,
    Refuse,
    NxDomain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    /// The far end (the device is the near end).
    peer: IpAddr,
    proto: u8,
    /// The device's port.
    near: u16,
    /// The far end's port.
    far: u16,
}

struct Site {
    expires: Instant,
    /// The names of each answer chain that handed this address (question name first).
    chains: Vec<Box<[Box<str>]>>,
    allowed: bool,
    denied_only: bool,
    seq: u64,
}

#[derive(Default)]
struct State {
    sites: FxHashMap<IpAddr, Site>,
    /// Insertion order for eviction: (address, seq); stale pairs are skipped.
    order: VecDeque<(IpAddr, u64)>,
    seq: u64,
    flows: FxHashMap<FlowKey, Instant>,
}

/// One device's firewall: its policy and what it learned (sites and open connections).
pub struct DeviceFw {
    rules: ArcSwap<Compiled>,
    state: Mutex<State>,
    dropped: AtomicU64,
    settings: Settings,
}

impl DeviceFw {
    pub fn new(rules: Compiled, settings: Settings) -> DeviceFw {
        DeviceFw {
            rules: ArcSwap::from_pointee(rules),
            state: Mutex::new(State::default()),
            dropped: AtomicU64::new(0),
            settings,
        }
    }

    /// Dropped connection attempts so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Addresses remembered from answers (alive or not yet swept).
    pub fn sites_len(&self) -> usize {
        self.state.lock().sites.len()
    }

    /// The policy in force.
    pub fn rules(&self) -> Arc<Compiled> {
        self.rules.load_full()
    }

    /// Puts a new policy in force: what was learned is judged again under it.
    pub fn set_rules(&self, rules: Compiled) {
        let mut st = self.state.lock();
        for site in st.sites.values_mut() {
            judge(site, &rules);
        }
        self.rules.store(Arc::new(rules));
    }

    /// The resolver's check of a question `name` (lower case, no trailing dot).
    pub fn dns_check(&self, name: &str) -> DnsCheck {
        let r = self.rules.load();
        let s = Suffixes::of(name);
        if r.restricted() {
            if name == DOH_CANARY {
                return DnsCheck::NxDomain;
            }
            if DOH_SERVERS.matches(&s) {
                return DnsCheck::Refuse;
            }
        }
        if r.denies_site(&s) {
            return DnsCheck::Refuse;
        }
        if r.mode == InternetMode::Allowlist && !r.allows_site(&s) {
            return DnsCheck::Refuse;
        }
        DnsCheck::Pass
    }

    /// Whether a local name (devices, zone files, reverse names) resolves for this device.
    pub fn local_name_allowed(&self, name: &str) -> bool {
        let r = self.rules.load();
        r.local_names
            .as_ref()
            .is_none_or(|set| set.contains(name.trim_end_matches('.')))
    }

    /// Records the addresses of a finished answer to question `qname` before it is sent.
    /// Returns false when a name in its CNAME chain is denied (the caller answers REFUSED).
    pub fn record_answer(&self, qname: &str, answer: &[u8], now: Instant) -> bool {
        let Some((chain, addrs)) = read_answer(qname, answer) else {
            return true;
        };
        let r = self.rules.load();
        if chain
            .iter()
            .skip(1)
            .any(|n| r.denies_site(&Suffixes::of(n)))
        {
            return false;
        }
        if addrs.is_empty() {
            return true;
        }
        let chain: Box<[Box<str>]> = chain.into_iter().map(String::into_boxed_str).collect();
        let mut st = self.state.lock();
        for (ip, ttl) in addrs {
            if ip.is_unspecified() {
                continue;
            }
            let life = Duration::from_secs(ttl.into()).max(self.settings.site_ttl_floor);
            let expires = now + life;
            st.seq += 1;
            let seq = st.seq;
            let site = st.sites.entry(ip).or_insert_with(|| Site {
                expires,
                chains: Vec::new(),
                allowed: false,
                denied_only: false,
                seq,
            });
            site.expires = site.expires.max(expires);
            site.seq = seq;
            if !site.chains.contains(&chain) {
                if site.chains.len() >= 4 {
                    site.chains.remove(0);
                }
                site.chains.push(chain.clone());
            }
            judge(site, &r);
            st.order.push_back((ip, seq));
        }
        let max = self.settings.max_sites.max(1);
        while st.sites.len() > max {
            let Some((ip, seq)) = st.order.pop_front() else {
                break;
            };
            if st.sites.get(&ip).is_some_and(|s| s.seq == seq) {
                st.sites.remove(&ip);
            }
        }
        if st.order.len() > 2 * max + 64 {
            let State { sites, order, .. } = &mut *st;
            order.retain(|(ip, seq)| sites.get(ip).is_some_and(|s| s.seq == *seq));
        }
        true
    }

    /// The decision for a packet of this device to `target`.
    fn admit(&self, l4: &L4, target: Target, now: Instant) -> bool {
        let key = l4.flow();
        let mut st = self.state.lock();
        let r = self.rules.load();
        let ok = match target {
            Target::Hub => {
                !r.outsider || !l4.ports || matches!(l4.dport, 53 | 443 | 853) || {
                    // Replies of the hub's own connections (none to outsiders today).
                    flow_alive(&mut st, &key, now)
                }
            }
            Target::Device(_) => match &r.reach {
                None => !r.quarantined.contains(&l4.dst) || flow_alive(&mut st, &key, now),
                Some(reach) => {
                    let named = reach.iter().any(|a| {
                        (IpAddr::V4(a.v4) == l4.dst || IpAddr::V6(a.v6) == l4.dst)
                            && a.ports.is_none_or(|p| l4.ports && p.contains(l4.dport))
                    });
                    named || flow_alive(&mut st, &key, now)
                }
            },
            Target::Internet | Target::Nat64 if r.outsider && is_private(l4.dst) => false,
            Target::Internet | Target::Nat64 => self.internet(&r, &mut st, l4, key, target, now),
        };
        if !ok && l4.opens() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    fn internet(
        &self,
        r: &Compiled,
        st: &mut State,
        l4: &L4,
        key: FlowKey,
        target: Target,
        now: Instant,
    ) -> bool {
        let tcp_or_udp = l4.proto == 6 || l4.proto == 17;
        if r.restricted() && tcp_or_udp && l4.ports {
            if l4.dport == 53 {
                return target == Target::Internet;
            }
            if l4.dport == 853 {
                return false;
            }
        }
        if r.mode == InternetMode::Off {
            return false;
        }
        if let Some(site) = st.sites.get(&l4.dst) {
            if site.expires > now {
                if site.denied_only {
                    return false;
                }
                if site.allowed {
                    remember(st, key, now);
                    return true;
                }
            }
        }
        let port = l4.ports.then_some(l4.dport);
        if r.deny.iter().any(|d| d.matches(l4.dst, l4.proto, port)) {
            return false;
        }
        if flow_alive(st, &key, now) {
            return true;
        }
        if r.allow.iter().any(|a| a.matches(l4.dst, l4.proto, port)) {
            return true;
        }
        r.mode == InternetMode::On
    }

    /// Another device opened (or continues) a connection to this one: its replies may pass.
    fn remember_inbound(&self, l4: &L4, now: Instant) {
        let key = FlowKey {
            peer: l4.src,
            proto: l4.proto,
            near: l4.dport,
            far: l4.sport,
        };
        let mut st = self.state.lock();
        remember(&mut st, key, now);
    }
}

/// Addresses that are not the internet: private, shared (the overlays and the links' ranges),
/// link-local, loopback.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(a) => {
            let s = a.segments()[0];
            (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80 || a.is_loopback()
        }
    }
}

/// Whether a remembered connection is still open (and refreshes it).
fn flow_alive(st: &mut State, key: &FlowKey, now: Instant) -> bool {
    match st.flows.get_mut(key) {
        Some(seen) if now.saturating_duration_since(*seen) < flow_idle(key.proto) => {
            *seen = now;
            true
        }
        _ => false,
    }
}

fn remember(st: &mut State, key: FlowKey, now: Instant) {
    if st.flows.len() >= MAX_FLOWS && !st.flows.contains_key(&key) {
        st.flows
            .retain(|k, seen| now.saturating_duration_since(*seen) < flow_idle(k.proto));
        if st.flows.len() >= MAX_FLOWS {
            return;
        }
    }
    st.flows.insert(key, now);
}

/// Judges a learned address under `r`: allowed when a chain names an allowed site, denied
/// only when every chain names a denied site.
fn judge(site: &mut Site, r: &Compiled) {
    site.allowed = site
        .chains
        .iter()
        .any(|c| c.iter().any(|n| r.allows_site(&Suffixes::of(n))));
    site.denied_only = !site.chains.is_empty()
        && site
            .chains
            .iter()
            .all(|c| c.iter().any(|n| r.denies_site(&Suffixes::of(n))));
}

/// Addresses of an answer with their TTLs.
type Addrs = Vec<(IpAddr, u32)>;

/// The names of an answer's chain (question first, then CNAME targets) and its addresses
/// with their TTLs; `None` when it does not read.
fn read_answer(qname: &str, answer: &[u8]) -> Option<(Vec<String>, Addrs)> {
    use hickory_proto::rr::RData;
    let m = hickory_proto::op::Message::from_vec(answer).ok()?;
    let mut chain = vec![qname.to_string()];
    let mut addrs = Vec::new();
    for r in m.answers.iter() {
        match &r.data {
            RData::CNAME(c) => {
                let mut n = c.0.to_lowercase().to_ascii();
                if n.ends_with('.') {
                    n.pop();
                }
                if !chain.contains(&n) && chain.len() < 16 {
                    chain.push(n);
                }
            }
            RData::A(a) => addrs.push((IpAddr::V4(a.0), r.ttl)),
            RData::AAAA(a) => addrs.push((IpAddr::V6(a.0), r.ttl)),
            _ => {}
        }
    }
    Some((chain, addrs))
}

/// What the firewall reads of a packet: protocol, ports, destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4 {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// Ports were read (TCP or UDP, first fragment).
    pub ports: bool,
    pub sport: u16,
    pub dport: u16,
    /// TCP SYN without ACK.
    pub syn: bool,
}

impl L4 {
    /// Reads a packet the router already parsed (so the IP header is known to be sound).
    pub fn parse(pkt: &[u8]) -> Option<L4> {
        let (src, dst, proto, off) = match pkt.first()? >> 4 {
            4 => {
                let ihl = usize::from(pkt.first()? & 0x0f) * 4;
                let s: [u8; 4] = pkt.get(12..16)?.try_into().ok()?;
                let d: [u8; 4] = pkt.get(16..20)?.try_into().ok()?;
                let frag = u16::from_be_bytes([*pkt.get(6)?, *pkt.get(7)?]) & 0x1fff;
                let off = (frag == 0).then_some(ihl);
                (IpAddr::from(s), IpAddr::from(d), *pkt.get(9)?, off)
            }
            6 => {
                let s: [u8; 16] = pkt.get(8..24)?.try_into().ok()?;
                let d: [u8; 16] = pkt.get(24..40)?.try_into().ok()?;
                let mut next = *pkt.get(6)?;
                let mut off = Some(40usize);
                for _ in 0..8 {
                    let Some(o) = off else { break };
                    match next {
                        0 | 43 | 60 => {
                            next = *pkt.get(o)?;
                            off = Some(o + (usize::from(*pkt.get(o + 1)?) + 1) * 8);
                        }
                        44 => {
                            next = *pkt.get(o)?;
                            let fo = u16::from_be_bytes([*pkt.get(o + 2)?, *pkt.get(o + 3)?]);
                            off = (fo & 0xfff8 == 0).then_some(o + 8);
                        }
                        _ => break,
                    }
                }
                (IpAddr::from(s), IpAddr::from(d), next, off)
            }
            _ => return None,
        };
        let mut l4 = L4 {
            src,
            dst,
            proto,
            ports: false,
            sport: 0,
            dport: 0,
            syn: false,
        };
        if let (Some(o), 6 | 17) = (off, proto) {
            if let Some(p) = pkt.get(o..o + 4) {
                l4.ports = true;
                l4.sport = u16::from_be_bytes([p[0], p[1]]);
                l4.dport = u16::from_be_bytes([p[2], p[3]]);
            }
            if proto == 6 {
                if let Some(&flags) = pkt.get(o + 13) {
                    l4.syn = flags & 0x12 == 0x02;
                }
            }
        }
        Some(l4)
    }

    /// The packet's connection, seen from its sender.
    fn flow(&self) -> FlowKey {
        FlowKey {
            peer: self.dst,
            proto: self.proto,
            near: self.sport,
            far: self.dport,
        }
    }

    /// A packet that starts a connection (what the drop counter counts).
    fn opens(&self) -> bool {
        self.proto != 6 || self.syn
    }
}

/// An I/O task's last allowed packet: the same connection again, under the same published
/// firewalls, within a second, is allowed without the shared tables.
#[derive(Default)]
pub struct FastPath {
    last: Option<(Ipv4Addr, Target, FlowKey, u64, Instant)>,
}

/// Every device's firewall, shared by the resolver and the hub.
#[derive(Default)]
pub struct Firewall {
    devices: ArcSwap<FxHashMap<IpAddr, Arc<DeviceFw>>>,
    /// Some device has a firewall (the hub's per-packet check reads only this when none has).
    active: std::sync::atomic::AtomicBool,
    /// Bumped at every publish: decisions cached before it no longer hold.
    generation: AtomicU64,
}

impl Firewall {
    /// Publishes the firewalls in force, by each device's overlay addresses.
    pub fn publish(&self, devices: FxHashMap<IpAddr, Arc<DeviceFw>>) {
        let active = !devices.is_empty();
        self.devices.store(Arc::new(devices));
        self.generation.fetch_add(1, Ordering::Release);
        self.active.store(active, Ordering::Release);
    }

    /// True when some device has a firewall.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// [`Firewall::admit`] with the I/O task's cache of its last allowed packet.
    #[inline]
    pub fn admit_fast(
        &self,
        fast: &mut FastPath,
        from: Ipv4Addr,
        target: Target,
        pkt: &[u8],
        now: Instant,
    ) -> bool {
        let Some(l4) = L4::parse(pkt) else {
            return true;
        };
        let key = l4.flow();
        let generation = self.generation.load(Ordering::Acquire);
        if let Some((f, t, k, g, until)) = fast.last {
            if f == from && t == target && k == key && g == generation && now < until {
                return true;
            }
        }
        let ok = self.decide(from, target, &l4, now);
        fast.last = ok.then_some((from, target, key, generation, now + FAST_PATH));
        ok
    }

    /// The firewalls in force.
    pub fn current(&self) -> Arc<FxHashMap<IpAddr, Arc<DeviceFw>>> {
        self.devices.load_full()
    }

    /// True when no device has a firewall.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.devices.load().is_empty()
    }

    /// The firewall of the device at `ip`, if it has one.
    #[inline]
    pub fn device(&self, ip: IpAddr) -> Option<Arc<DeviceFw>> {
        let m = self.devices.load();
        if m.is_empty() {
            return None;
        }
        m.get(&ip).cloned()
    }

    /// Whether the hub forwards `pkt` from the device at `from` to `target`.
    #[inline]
    pub fn admit(&self, from: Ipv4Addr, target: Target, pkt: &[u8], now: Instant) -> bool {
        L4::parse(pkt).is_none_or(|l4| self.decide(from, target, &l4, now))
    }

    /// Whether the packet rules of the device at `from` deny `pkt`: a packet NAT46 made from
    /// one the firewall admitted to a pool address, now to its real (IPv6) destination.
    pub fn denies(&self, from: Ipv4Addr, pkt: &[u8]) -> bool {
        let m = self.devices.load();
        let (Some(fw), Some(l4)) = (m.get(&IpAddr::V4(from)), L4::parse(pkt)) else {
            return false;
        };
        let r = fw.rules.load();
        let port = l4.ports.then_some(l4.dport);
        r.deny.iter().any(|d| d.matches(l4.dst, l4.proto, port))
    }

    /// The decision on a read packet: the sender's firewall judges it, and the receiver's
    /// remembers a connection opened to it.
    fn decide(&self, from: Ipv4Addr, target: Target, l4: &L4, now: Instant) -> bool {
        let m = self.devices.load();
        if m.is_empty() {
            return true;
        }
        let src = m.get(&IpAddr::V4(from));
        let dst = match target {
            Target::Device(to) => m.get(&IpAddr::V4(to)),
            _ => None,
        };
        if let Some(fw) = src {
            if !fw.admit(l4, target, now) {
                return false;
            }
        }
        if let Some(fw) = dst {
            fw.remember_inbound(l4, now);
        }
        true
    }
}

#[cfg(test)]
mod tests;
