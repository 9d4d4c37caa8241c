//! Discovery across the private network: the multicast groups that apps find each other by
//! (mDNS, SSDP, LocalSend's announcements) are delivered by the hub to the other devices that
//! may see them, since multicast does not cross a routed VPN by itself. No I/O here: a packet
//! in, whether it is one of these; who may see whose; a per-device rate limit.
//!
//! IPv4 only for now (IPv6 mDNS comes from link-local addresses, which a device's tunnel does
//! not carry).

use std::net::Ipv4Addr;
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

/// Packets per second a device may send to these groups (and the burst above it).
pub const RATE_PER_SEC: f32 = 20.0;
pub const BURST: f32 = 40.0;

/// Whether `pkt` is an IPv4 UDP datagram to one of [`GROUPS`] on its port (first fragment).
pub fn classify(pkt: &[u8]) -> Option<Ipv4Addr> {
    if pkt.len() < 28 || pkt[0] >> 4 != 4 || pkt[9] != 17 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let frag_offset = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff;
    if ihl < 20 || frag_offset != 0 || pkt.len() < ihl + 8 {
        return None;
    }
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    let dport = u16::from_be_bytes([pkt[ihl + 2], pkt[ihl + 3]]);
    GROUPS
        .iter()
        .any(|(g, p)| *g == dst && *p == dport)
        .then_some(dst)
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
    if classify(pkt) != Some(LOCALSEND.0) {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let v: serde_json::Value = serde_json::from_slice(pkt.get(ihl + 8..)?).ok()?;
    (v.get("announce") == Some(&serde_json::Value::Bool(true)))
        .then(|| udp_from_hub(hub, LOCALSEND, info))
}

/// An IPv4 UDP packet from `hub` to `to` (same port both sides) carrying `payload`, with
/// both checksums.
fn udp_from_hub(hub: Ipv4Addr, to: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    use super::nat64::wire::{finish, sum};
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut out = vec![0u8; total];
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[8] = 255;
    out[9] = 17;
    out[12..16].copy_from_slice(&hub.octets());
    out[16..20].copy_from_slice(&to.0.octets());
    let ip_sum = finish(sum(0, &out[..20]));
    out[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    out[20..22].copy_from_slice(&to.1.to_be_bytes());
    out[22..24].copy_from_slice(&to.1.to_be_bytes());
    out[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
    out[28..].copy_from_slice(payload);
    let mut acc = sum(0, &out[12..20]);
    acc += 17 + udp_len as u64;
    acc = sum(acc, &out[20..]);
    let c = match finish(acc) {
        0 => 0xffff,
        c => c,
    };
    out[26..28].copy_from_slice(&c.to_be_bytes());
    out
}

/// The hub's answer to an mDNS question in `pkt` for `NAME.local` (type A or ANY): an IPv4
/// packet from `hub` to the mDNS group carrying the addresses `lookup` gives for the names it
/// knows, or `None` (not a question, or for no name it knows).
pub fn answer_local(
    pkt: &[u8],
    hub: Ipv4Addr,
    lookup: impl Fn(&str) -> Option<Ipv4Addr>,
) -> Option<Vec<u8>> {
    use hickory_proto::op::{Message, MessageType, OpCode};
    use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
    if classify(pkt) != Some(MDNS.0) {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let q = Message::from_vec(pkt.get(ihl + 8..)?).ok()?;
    if q.message_type != MessageType::Query || q.op_code != OpCode::Query {
        return None;
    }
    let mut answers = Vec::new();
    for query in q.queries.iter() {
        if !matches!(query.query_type(), RecordType::A | RecordType::ANY) {
            continue;
        }
        let name = query.name().to_ascii().to_ascii_lowercase();
        let Some(label) = name.strip_suffix(".local.") else {
            continue;
        };
        if label.contains('.') {
            continue;
        }
        if let Some(a) = lookup(label) {
            answers.push(Record::from_rdata(
                query.name().clone(),
                120,
                RData::A(A(a)),
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
    Some(udp_from_hub(hub, MDNS, &m.to_vec().ok()?))
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

    fn question(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(0, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        let dns = m.to_vec().unwrap();
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
        let hub = Ipv4Addr::new(100, 96, 0, 1);
        let tv = Ipv4Addr::new(100, 96, 0, 3);
        let lookup = |n: &str| (n == "tv").then_some(tv);
        let out = answer_local(&question("TV.local.", RecordType::A), hub, lookup).unwrap();
        assert_eq!(
            super::super::nat64::wire::finish(super::super::nat64::wire::sum(0, &out[..20])),
            0
        );
        let mut acc = super::super::nat64::wire::sum(0, &out[12..20]);
        acc += 17 + (out.len() - 20) as u64;
        assert_eq!(
            super::super::nat64::wire::finish(super::super::nat64::wire::sum(acc, &out[20..])),
            0
        );
        let m = Message::from_vec(&out[28..]).unwrap();
        assert_eq!(m.message_type, MessageType::Response);
        assert!(matches!(&m.answers[0].data, RData::A(a) if a.0 == tv));
        assert!(answer_local(&question("laptop.local.", RecordType::A), hub, lookup).is_none());
        assert!(answer_local(&question("tv.mesh.", RecordType::A), hub, lookup).is_none());
        assert!(answer_local(&question("tv.local.", RecordType::AAAA), hub, lookup).is_none());
        assert!(answer_local(&question("a.tv.local.", RecordType::A), hub, lookup).is_none());
        assert!(answer_local(&[0x45, 0, 0], hub, lookup).is_none());
    }

    #[test]
    fn the_hub_answers_a_localsend_announcement_with_its_info() {
        let hub = Ipv4Addr::new(100, 96, 0, 1);
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
