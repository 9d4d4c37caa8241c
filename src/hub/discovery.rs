//! Discovery across the private network: the multicast groups that apps find each other by
//! (mDNS, SSDP, LocalSend's announcements) are delivered by the hub to the other devices that
//! may see them, since multicast does not cross a routed VPN by itself. No I/O here: a packet
//! in, whether it is one of these; who may see whose; a per-device rate limit.
//!
//! IPv4 and IPv6 (`ff02::fb`, `ff02::c`): a device's tunnel has no link-local address, so its
//! IPv6 multicast comes from its overlay address, which the hub can tell devices by.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::{FxHashMap, FxHashSet};

/// The groups relayed, with their UDP ports.
pub const GROUPS: [(Ipv4Addr, u16); 3] = [
    // mDNS (RFC 6762)
    (Ipv4Addr::new(224, 0, 0, 251), 5353),
    // SSDP (UPnP)
    (Ipv4Addr::new(239, 255, 255, 250), 1900),
    // LocalSend's multicast announcements
    (Ipv4Addr::new(224, 0, 0, 167), 53317),
];

/// The IPv6 groups relayed (link-local scope), with their UDP ports (LocalSend announces
/// over IPv4 only).
pub const GROUPS6: [(Ipv6Addr, u16); 2] = [
    (Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb), 5353),
    (Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xc), 1900),
];

/// Packets per second a device may send to these groups (and the burst above it).
pub const RATE_PER_SEC: f32 = 20.0;
pub const BURST: f32 = 40.0;

/// Where a UDP datagram's payload starts: after the IPv4 header (first fragment) or the fixed
/// IPv6 header (no extension headers), `None` for anything else.
fn udp_start(pkt: &[u8]) -> Option<usize> {
    match pkt.first()? >> 4 {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let frag_offset = u16::from_be_bytes([*pkt.get(6)?, *pkt.get(7)?]) & 0x1fff;
            (pkt.len() >= 28 && pkt[9] == 17 && ihl >= 20 && frag_offset == 0)
                .then_some(ihl)
                .filter(|i| pkt.len() >= i + 8)
        }
        6 => (pkt.len() >= 48 && pkt[6] == 17).then_some(40),
        _ => None,
    }
}

/// Whether `pkt` is a UDP datagram to one of [`GROUPS`] or [`GROUPS6`] on its port: the group.
pub fn classify(pkt: &[u8]) -> Option<IpAddr> {
    let at = udp_start(pkt)?;
    let dport = u16::from_be_bytes([pkt[at + 2], pkt[at + 3]]);
    if at == 40 {
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[24..40]).ok()?);
        return GROUPS6
            .iter()
            .any(|(g, p)| *g == dst && *p == dport)
            .then_some(IpAddr::V6(dst));
    }
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    GROUPS
        .iter()
        .any(|(g, p)| *g == dst && *p == dport)
        .then_some(IpAddr::V4(dst))
}

/// `pkt` (a discovery packet, see [`classify`]) with `own` as its IPv6 source when it came
/// from another one (a device's link-local address): the UDP checksum made anew. `None` when
/// it already has it, or is IPv4.
pub fn own_source(pkt: &[u8], own: Ipv6Addr) -> Option<Vec<u8>> {
    if udp_start(pkt)? != 40 || pkt[8..24] == own.octets() {
        return None;
    }
    let mut out = pkt.to_vec();
    out[8..24].copy_from_slice(&own.octets());
    set_udp_checksum(&mut out);
    Some(out)
}

/// Who takes part in discovery, and whom each one's packets reach.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    /// The devices that take part (by IPv4 overlay address); for each, the devices its
    /// announcements and questions may reach (`None`: every other member).
    members: FxHashMap<Ipv4Addr, Option<Arc<FxHashSet<Ipv4Addr>>>>,
}

impl Policy {
    /// Adds a member whose packets reach `reach` (`None`: every other member).
    pub fn add(&mut self, device: Ipv4Addr, reach: Option<Arc<FxHashSet<Ipv4Addr>>>) {
        self.members.insert(device, reach);
    }

    /// Whether `from`'s discovery packets go to `to`.
    pub fn may(&self, from: Ipv4Addr, to: Ipv4Addr) -> bool {
        if from == to || !self.members.contains_key(&to) {
            return false;
        }
        match self.members.get(&from) {
            Some(None) => true,
            Some(Some(reach)) => reach.contains(&to),
            None => false,
        }
    }

    /// Whether `device` takes part.
    pub fn is_member(&self, device: Ipv4Addr) -> bool {
        self.members.contains_key(&device)
    }

    /// True when nobody takes part.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// A device's allowance of discovery packets (a token bucket).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f32,
    last: Option<Instant>,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            tokens: BURST,
            last: None,
        }
    }
}

impl Bucket {
    /// Takes one packet's token; false when the device is over its rate.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f32();
            self.tokens = (self.tokens + dt * RATE_PER_SEC).min(BURST);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The group (and port) of mDNS.
pub const MDNS: (Ipv4Addr, u16) = GROUPS[0];
/// The group (and port) of LocalSend's announcements.
pub const LOCALSEND: (Ipv4Addr, u16) = GROUPS[2];

/// The hub's answer to a LocalSend announcement in `pkt` (`"announce": true`): its own
/// device info `info` (JSON, `"announce": false`) from `hub` to the group, so the hub shows up
/// in the sender's LocalSend app.
pub fn answer_localsend(pkt: &[u8], hub: Ipv4Addr, info: &[u8]) -> Option<Vec<u8>> {
    if classify(pkt) != Some(IpAddr::V4(LOCALSEND.0)) {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let v: serde_json::Value = serde_json::from_slice(pkt.get(ihl + 8..)?).ok()?;
    (v.get("announce") == Some(&serde_json::Value::Bool(true)))
        .then(|| udp_from_hub(hub.into(), (LOCALSEND.0.into(), LOCALSEND.1), info))
}

/// A UDP packet from `from` to `to` (the same port both sides, one IP family) carrying
/// `payload`, with its checksums.
fn udp_from_hub(from: IpAddr, to: (IpAddr, u16), payload: &[u8]) -> Vec<u8> {
    use super::nat64::wire::{emit_ipv4, emit_ipv6};
    let udp_len = (8 + payload.len()) as u16;
    let mut out = Vec::with_capacity(48 + payload.len());
    match (from, to.0) {
        (IpAddr::V6(s), IpAddr::V6(d)) => emit_ipv6(&mut out, 0, udp_len, 17, 255, s, d),
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            emit_ipv4(&mut out, 0, 20 + udp_len, 0, false, 255, 17, s, d)
        }
        _ => return out,
    }
    for v in [to.1, to.1, udp_len, 0] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(payload);
    set_udp_checksum(&mut out);
    out
}

/// Writes the UDP checksum of `pkt` (IPv4, or IPv6 without extension headers).
fn set_udp_checksum(pkt: &mut [u8]) {
    use super::nat64::wire::{finish, sum};
    let (at, addrs) = if pkt[0] >> 4 == 6 {
        (40, 8..40)
    } else {
        (20, 12..20)
    };
    pkt[at + 6..at + 8].copy_from_slice(&[0, 0]);
    let acc = sum(0, &pkt[addrs]) + 17 + (pkt.len() - at) as u64;
    let c = match finish(sum(acc, &pkt[at..])) {
        0 => 0xffff,
        c => c,
    };
    pkt[at + 6..at + 8].copy_from_slice(&c.to_be_bytes());
}

/// The hub's answer to an mDNS question in `pkt` for `NAME.local` (A, AAAA or ANY): a packet
/// from the hub (`hub`, in the question's IP family) to the mDNS group carrying the addresses
/// `lookup` gives for the names it knows, or `None` (not a question, or for no name it knows).
pub fn answer_local(
    pkt: &[u8],
    hub: (Ipv4Addr, Ipv6Addr),
    lookup: impl Fn(&str) -> Option<(Ipv4Addr, Ipv6Addr)>,
) -> Option<Vec<u8>> {
    use hickory_proto::op::{Message, MessageType, OpCode};
    use hickory_proto::rr::{rdata::A, rdata::AAAA, RData, Record, RecordType};
    let group = classify(pkt)?;
    if group != IpAddr::V4(MDNS.0) && group != IpAddr::V6(GROUPS6[0].0) {
        return None;
    }
    let q = Message::from_vec(pkt.get(udp_start(pkt)? + 8..)?).ok()?;
    if q.message_type != MessageType::Query || q.op_code != OpCode::Query {
        return None;
    }
    let mut answers = Vec::new();
    for query in q.queries.iter() {
        let t = query.query_type();
        if !matches!(t, RecordType::A | RecordType::AAAA | RecordType::ANY) {
            continue;
        }
        let name = query.name().to_ascii().to_ascii_lowercase();
        let Some(label) = name.strip_suffix(".local.") else {
            continue;
        };
        if label.contains('.') {
            continue;
        }
        let Some((v4, v6)) = lookup(label) else {
            continue;
        };
        if t != RecordType::AAAA {
            answers.push(Record::from_rdata(
                query.name().clone(),
                120,
                RData::A(A(v4)),
            ));
        }
        if t != RecordType::A {
            answers.push(Record::from_rdata(
                query.name().clone(),
                120,
                RData::AAAA(AAAA(v6)),
            ));
        }
    }
    if answers.is_empty() {
        return None;
    }
    let mut m = Message::new(0, MessageType::Response, OpCode::Query);
    m.metadata.authoritative = true;
    for a in answers {
        m.add_answer(a);
    }
    let wire = m.to_vec().ok()?;
    let from = match group {
        IpAddr::V4(_) => IpAddr::V4(hub.0),
        IpAddr::V6(_) => IpAddr::V6(hub.1),
    };
    Some(udp_from_hub(from, (group, 5353), &wire))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn udp(dst: [u8; 4], dport: u16) -> Vec<u8> {
        let src = Ipv4Addr::new(100, 96, 0, 2);
        let mut p = crate::hub::packet::tests::ipv4(src, dst.into(), 20);
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn only_the_groups_on_their_ports_are_discovery() {
        assert!(classify(&udp([224, 0, 0, 251], 5353)).is_some());
        assert!(classify(&udp([239, 255, 255, 250], 1900)).is_some());
        assert!(classify(&udp([224, 0, 0, 167], 53317)).is_some());
        assert!(classify(&udp([224, 0, 0, 251], 53)).is_none());
        assert!(classify(&udp([224, 0, 0, 1], 5353)).is_none());
        assert!(classify(&udp([100, 96, 0, 3], 5353)).is_none());
        let mut tcp = udp([224, 0, 0, 251], 5353);
        tcp[9] = 6;
        assert!(classify(&tcp).is_none());
        let mut frag = udp([224, 0, 0, 251], 5353);
        frag[7] = 1;
        assert!(classify(&frag).is_none());
        assert!(classify(&[0x45; 10]).is_none());
        // IPv6: the mDNS and SSDP groups of link-local scope, UDP right after the header.
        let v6 = |dst: &str, dport: u16, next: u8| {
            let mut p = vec![0u8; 48];
            p[0] = 0x60;
            p[6] = next;
            p[8..24].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
            p[24..40].copy_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
            p[42..44].copy_from_slice(&dport.to_be_bytes());
            p
        };
        assert!(classify(&v6("ff02::fb", 5353, 17)).is_some());
        assert!(classify(&v6("ff02::c", 1900, 17)).is_some());
        assert!(classify(&v6("ff02::fb", 5353, 6)).is_none());
        assert!(classify(&v6("ff02::fb", 53, 17)).is_none());
        assert!(classify(&v6("ff05::fb", 5353, 17)).is_none());
        assert!(classify(&v6("fd00::3", 5353, 17)).is_none());
        assert!(classify(&v6("ff02::fb", 5353, 17)[..47]).is_none());
    }

    #[test]
    fn members_reach_each_other_or_whom_their_reach_names() {
        let (a, b, c, g) = (
            Ipv4Addr::new(100, 96, 0, 2),
            Ipv4Addr::new(100, 96, 0, 3),
            Ipv4Addr::new(100, 96, 0, 4),
            Ipv4Addr::new(100, 96, 0, 9),
        );
        let mut p = Policy::default();
        p.add(a, None);
        p.add(b, None);
        p.add(c, Some(Arc::new([a].into_iter().collect())));
        assert!(p.may(a, b) && p.may(b, a) && p.may(a, c));
        assert!(p.may(c, a) && !p.may(c, b));
        assert!(!p.may(a, a), "never back to the sender");
        assert!(
            !p.may(a, g) && !p.may(g, a),
            "a non-member neither sends nor hears"
        );
    }

    #[test]
    fn a_flood_is_cut_to_the_rate() {
        let mut b = Bucket::default();
        let t = Instant::now();
        let sent = (0..1000).filter(|_| b.take(t)).count();
        assert_eq!(sent, BURST as usize);
        // 20 per second: two are back after 100 ms.
        let t2 = t + Duration::from_millis(100);
        assert_eq!(
            (0..10).filter(|_| b.take(t2)).count(),
            2,
            "tokens come back over time"
        );
    }
}

#[cfg(test)]
mod answer_tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};

    const HUB: (Ipv4Addr, Ipv6Addr) = (
        Ipv4Addr::new(100, 96, 0, 1),
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
    );
    const TV: (Ipv4Addr, Ipv6Addr) = (
        Ipv4Addr::new(100, 96, 0, 3),
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3),
    );

    fn dns(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(0, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn question6(name: &str, t: RecordType) -> Vec<u8> {
        let dns = dns(name, t);
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((8 + dns.len()) as u16).to_be_bytes());
        p[6] = 17;
        p[8..24].copy_from_slice(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets());
        p[24..40].copy_from_slice(&GROUPS6[0].0.octets());
        p[42..44].copy_from_slice(&5353u16.to_be_bytes());
        p.extend(dns);
        p
    }

    fn question(name: &str, t: RecordType) -> Vec<u8> {
        let dns = dns(name, t);
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[9] = 17;
        p[12..16].copy_from_slice(&[100, 96, 0, 2]);
        p[16..20].copy_from_slice(&MDNS.0.octets());
        p[22..24].copy_from_slice(&MDNS.1.to_be_bytes());
        p.extend(dns);
        p
    }

    #[test]
    fn the_hub_answers_device_names_under_local_with_valid_checksums() {
        use super::super::nat64::wire::{finish, sum};
        let lookup = |n: &str| (n == "tv").then_some(TV);
        let out = answer_local(&question("TV.local.", RecordType::A), HUB, lookup).unwrap();
        assert_eq!(finish(sum(0, &out[..20])), 0);
        let mut acc = sum(0, &out[12..20]);
        acc += 17 + (out.len() - 20) as u64;
        assert_eq!(finish(sum(acc, &out[20..])), 0);
        let m = Message::from_vec(&out[28..]).unwrap();
        assert_eq!(m.message_type, MessageType::Response);
        assert_eq!(m.answers.len(), 1);
        assert!(matches!(&m.answers[0].data, RData::A(a) if a.0 == TV.0));
        assert!(answer_local(&question("laptop.local.", RecordType::A), HUB, lookup).is_none());
        assert!(answer_local(&question("tv.mesh.", RecordType::A), HUB, lookup).is_none());
        assert!(answer_local(&question("tv.local.", RecordType::MX), HUB, lookup).is_none());
        assert!(answer_local(&question("a.tv.local.", RecordType::A), HUB, lookup).is_none());
        assert!(answer_local(&[0x45, 0, 0], HUB, lookup).is_none());
        // Asked over IPv6: the answer goes from the hub's IPv6 address to ff02::fb.
        let out = answer_local(&question6("tv.local.", RecordType::AAAA), HUB, lookup).unwrap();
        assert_eq!(&out[8..24], &HUB.1.octets());
        assert_eq!(&out[24..40], &GROUPS6[0].0.octets());
        let mut acc = sum(0, &out[8..40]);
        acc += 17 + (out.len() - 40) as u64;
        assert_eq!(finish(sum(acc, &out[40..])), 0);
        let m = Message::from_vec(&out[48..]).unwrap();
        assert_eq!(m.answers.len(), 1);
        assert!(matches!(&m.answers[0].data, RData::AAAA(a) if a.0 == TV.1));
        let any = answer_local(&question6("tv.local.", RecordType::ANY), HUB, lookup).unwrap();
        assert_eq!(Message::from_vec(&any[48..]).unwrap().answers.len(), 2);
    }

    #[test]
    fn the_hub_answers_a_localsend_announcement_with_its_info() {
        let hub = HUB.0;
        let announce = |body: &str| {
            let mut p = vec![0u8; 28];
            p[0] = 0x45;
            p[9] = 17;
            p[16..20].copy_from_slice(&LOCALSEND.0.octets());
            p[22..24].copy_from_slice(&LOCALSEND.1.to_be_bytes());
            p.extend(body.as_bytes());
            p
        };
        let info = br#"{"alias":"Cloud PC","announce":false}"#;
        let out =
            answer_localsend(&announce(r#"{"alias":"x","announce":true}"#), hub, info).unwrap();
        assert_eq!(&out[28..], info);
        assert_eq!(&out[12..16], &hub.octets());
        assert!(
            answer_localsend(&announce(r#"{"alias":"x","announce":false}"#), hub, info).is_none()
        );
        assert!(answer_localsend(&announce("not json"), hub, info).is_none());
    }
}
