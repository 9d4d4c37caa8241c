use super::*;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};

fn compiled(mode: InternetMode) -> Compiled {
    Compiled {
        mode,
        allow_sites: vec![],
        deny_sites: vec![],
        allow: vec![],
        deny: vec![],
        reach: None,
        quarantined: Arc::default(),
        local_names: None,
        outsider: false,
    }
}

fn sites(names: &[&str]) -> Vec<Arc<Sites>> {
    vec![Arc::new(Sites::build(names.iter().copied()))]
}

/// An IPv4 TCP (proto 6) or UDP (17) packet from 100.96.0.2 to `dst:dport`.
fn pkt(dst: [u8; 4], proto: u8, sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[9] = proto;
    p[12..16].copy_from_slice(&[100, 96, 0, 2]);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    if syn {
        p[33] = 0x02;
    }
    p
}

fn answer(qname: &str, chain: &[&str], addr: [u8; 4], ttl: u32) -> Vec<u8> {
    let mut m = Message::new(1, MessageType::Response, OpCode::Query);
    let q = Name::from_ascii(format!("{qname}.")).unwrap();
    m.add_query(Query::query(q.clone(), RecordType::A));
    let mut owner = q;
    for c in chain {
        let t = Name::from_ascii(format!("{c}.")).unwrap();
        m.add_answer(Record::from_rdata(
            owner.clone(),
            ttl,
            RData::CNAME(CNAME(t.clone())),
        ));
        owner = t;
    }
    m.add_answer(Record::from_rdata(owner, ttl, RData::A(A(addr.into()))));
    m.to_vec().unwrap()
}

fn firewall(fw: DeviceFw) -> (Firewall, Arc<DeviceFw>) {
    let fw = Arc::new(fw);
    let all = Firewall::default();
    let mut m = FxHashMap::default();
    m.insert(IpAddr::from([100, 96, 0, 2]), fw.clone());
    all.publish(m);
    (all, fw)
}

const ME: Ipv4Addr = Ipv4Addr::new(100, 96, 0, 2);

#[test]
fn an_allowlist_reaches_only_what_was_looked_up_and_open_connections_outlive_the_entry() {
    let mut c = compiled(InternetMode::Allowlist);
    c.allow_sites = sites(&["wiki.test"]);
    let settings = Settings {
        site_ttl_floor: Duration::from_secs(10),
        max_sites: 100,
    };
    let (all, fw) = firewall(DeviceFw::new(c, settings));
    let t0 = Instant::now();
    let web = [192, 0, 2, 80];
    // Not looked up yet: dropped (and counted).
    assert!(!all.admit(ME, Target::Internet, &pkt(web, 6, 40000, 80, true), t0));
    assert_eq!(fw.dropped(), 1);
    assert_eq!(fw.dns_check("other.test"), DnsCheck::Refuse);
    assert_eq!(fw.dns_check("www.wiki.test"), DnsCheck::Pass);
    // A CNAME chain to another zone: the addresses at its end are the allowed site's.
    assert!(fw.record_answer(
        "www.wiki.test",
        &answer("www.wiki.test", &["edge.cdn.test"], web, 1),
        t0
    ));
    assert!(all.admit(ME, Target::Internet, &pkt(web, 6, 40000, 80, true), t0));
    // After the floor: a new connection fails, the open one goes on.
    let later = t0 + Duration::from_secs(11);
    assert!(!all.admit(ME, Target::Internet, &pkt(web, 6, 40001, 80, true), later));
    assert!(all.admit(ME, Target::Internet, &pkt(web, 6, 40000, 80, false), later));
    // Other addresses never.
    assert!(!all.admit(
        ME,
        Target::Internet,
        &pkt([192, 0, 2, 81], 6, 40002, 80, true),
        t0
    ));
    // The hub itself always.
    assert!(all.admit(
        ME,
        Target::Hub,
        &pkt([100, 96, 0, 1], 6, 40003, 443, true),
        t0
    ));
}

#[test]
fn no_bypass_dns_and_dot() {
    let mut c = compiled(InternetMode::On);
    c.deny_sites = sites(&["denied.test"]);
    let (all, fw) = firewall(DeviceFw::new(c, Settings::default()));
    let t = Instant::now();
    let outside = [8, 8, 8, 8];
    // Plain DNS goes to the kernel (redirected there), never through NAT64; DoT is dropped.
    assert!(all.admit(ME, Target::Internet, &pkt(outside, 17, 5000, 53, false), t));
    assert!(!all.admit(ME, Target::Nat64, &pkt(outside, 17, 5000, 53, false), t));
    assert!(!all.admit(ME, Target::Internet, &pkt(outside, 6, 5001, 853, true), t));
    assert!(all.admit(ME, Target::Internet, &pkt(outside, 6, 5002, 443, true), t));
    assert_eq!(fw.dns_check(DOH_CANARY), DnsCheck::NxDomain);
    assert_eq!(fw.dns_check("dns.google"), DnsCheck::Refuse);
    assert_eq!(fw.dns_check("x.denied.test"), DnsCheck::Refuse);
    assert_eq!(fw.dns_check("fine.test"), DnsCheck::Pass);
    // A chain through a denied name is refused, and nothing is learned from it.
    assert!(!fw.record_answer(
        "alias.test",
        &answer("alias.test", &["denied.test"], [192, 0, 2, 9], 60),
        t
    ));
    assert_eq!(fw.sites_len(), 0);
}

#[test]
fn a_site_denied_after_it_was_handed_out_is_cut_but_a_shared_address_is_not() {
    let (all, fw) = firewall(DeviceFw::new(
        compiled(InternetMode::On),
        Settings::default(),
    ));
    let t = Instant::now();
    assert!(fw.record_answer(
        "games.test",
        &answer("games.test", &[], [192, 0, 2, 81], 60),
        t
    ));
    assert!(fw.record_answer(
        "games.test",
        &answer("games.test", &[], [192, 0, 2, 82], 60),
        t
    ));
    assert!(fw.record_answer(
        "news.test",
        &answer("news.test", &[], [192, 0, 2, 82], 60),
        t
    ));
    let open = pkt([192, 0, 2, 81], 6, 41000, 443, false);
    assert!(all.admit(ME, Target::Internet, &open, t));
    let mut c = compiled(InternetMode::On);
    c.deny_sites = sites(&["games.test"]);
    fw.set_rules(c);
    assert!(!all.admit(ME, Target::Internet, &open, t));
    assert!(all.admit(
        ME,
        Target::Internet,
        &pkt([192, 0, 2, 82], 6, 41001, 443, true),
        t
    ));
}

#[test]
fn rules_in_their_documented_order() {
    let mut c = compiled(InternetMode::On);
    c.deny = vec![
        PacketRule::parse("tcp/25").unwrap(),
        PacketRule::parse("198.51.100.0/24").unwrap(),
    ];
    c.allow = vec![PacketRule::parse("198.51.100.7").unwrap()];
    let (all, _) = firewall(DeviceFw::new(c, Settings::default()));
    let t = Instant::now();
    assert!(!all.admit(
        ME,
        Target::Internet,
        &pkt([203, 0, 113, 9], 6, 1, 25, true),
        t
    ));
    assert!(all.admit(
        ME,
        Target::Internet,
        &pkt([203, 0, 113, 9], 6, 2, 587, true),
        t
    ));
    // A deny beats an allow that also matches.
    assert!(!all.admit(
        ME,
        Target::Internet,
        &pkt([198, 51, 100, 7], 17, 3, 443, false),
        t
    ));
    let mut c = compiled(InternetMode::Allowlist);
    c.allow = vec![PacketRule::parse("udp/443").unwrap()];
    let (all, _) = firewall(DeviceFw::new(c, Settings::default()));
    assert!(all.admit(
        ME,
        Target::Internet,
        &pkt([203, 0, 113, 9], 17, 4, 443, false),
        t
    ));
    assert!(!all.admit(
        ME,
        Target::Internet,
        &pkt([203, 0, 113, 9], 6, 5, 443, true),
        t
    ));
    let (all, _) = firewall(DeviceFw::new(
        compiled(InternetMode::Off),
        Settings::default(),
    ));
    assert!(!all.admit(
        ME,
        Target::Internet,
        &pkt([203, 0, 113, 9], 17, 4, 443, false),
        t
    ));
    assert!(all.admit(
        ME,
        Target::Device(Ipv4Addr::new(100, 96, 0, 3)),
        &pkt([100, 96, 0, 3], 6, 6, 22, true),
        t
    ));
}

#[test]
fn reach_lets_replies_through_but_not_new_connections() {
    // The camera (100.96.0.2) reaches only the printer's port 631.
    let mut c = compiled(InternetMode::On);
    c.reach = Some(vec![ReachAddr {
        v4: Ipv4Addr::new(100, 96, 0, 9),
        v6: Ipv6Addr::LOCALHOST,
        ports: Some(Ports(631, 631)),
    }]);
    let (all, fw) = firewall(DeviceFw::new(c, Settings::default()));
    let t = Instant::now();
    let laptop = Ipv4Addr::new(100, 96, 0, 3);
    assert!(!all.admit(
        ME,
        Target::Device(laptop),
        &pkt(laptop.octets(), 6, 50000, 22, true),
        t
    ));
    assert!(all.admit(
        ME,
        Target::Device(Ipv4Addr::new(100, 96, 0, 9)),
        &pkt([100, 96, 0, 9], 6, 50001, 631, true),
        t
    ));
    assert!(!all.admit(
        ME,
        Target::Device(Ipv4Addr::new(100, 96, 0, 9)),
        &pkt([100, 96, 0, 9], 6, 50002, 22, true),
        t
    ));
    // The laptop opens a connection to the camera's port 80: the camera's replies pass.
    let mut to_cam = pkt(ME.octets(), 6, 40000, 80, true);
    to_cam[12..16].copy_from_slice(&laptop.octets());
    assert!(all.admit(laptop, Target::Device(ME), &to_cam, t));
    assert!(all.admit(
        ME,
        Target::Device(laptop),
        &pkt(laptop.octets(), 6, 80, 40000, false),
        t
    ));
    assert_eq!(fw.dropped(), 2);
}

#[test]
fn a_quarantined_guest_gets_replies_but_no_new_connections_and_sees_only_shared_names() {
    // The NAS (100.96.0.2, no reach of its own) and a guest's phone (100.96.0.7) that may
    // reach the NAS's port 445 only.
    let guest = Ipv4Addr::new(100, 96, 0, 7);
    let quarantined: Arc<rustc_hash::FxHashSet<IpAddr>> =
        Arc::new([IpAddr::V4(guest)].into_iter().collect());
    let mut nas = compiled(InternetMode::On);
    nas.quarantined = quarantined.clone();
    let mut phone = compiled(InternetMode::Off);
    phone.reach = Some(vec![ReachAddr {
        v4: ME,
        v6: Ipv6Addr::LOCALHOST,
        ports: Some(Ports(445, 445)),
    }]);
    phone.quarantined = quarantined;
    phone.local_names = Some(Arc::new(["nas.mesh".to_string()].into_iter().collect()));
    let nas = Arc::new(DeviceFw::new(nas, Settings::default()));
    let phone = Arc::new(DeviceFw::new(phone, Settings::default()));
    let all = Firewall::default();
    let mut m = FxHashMap::default();
    m.insert(IpAddr::V4(ME), nas.clone());
    m.insert(IpAddr::V4(guest), phone.clone());
    all.publish(m);
    let t = Instant::now();
    // The NAS cannot open a connection to the guest...
    assert!(!all.admit(
        ME,
        Target::Device(guest),
        &pkt(guest.octets(), 6, 50000, 22, true),
        t
    ));
    // ... but answers the one the guest opened to its shared port.
    let mut to_nas = pkt(ME.octets(), 6, 40000, 445, true);
    to_nas[12..16].copy_from_slice(&guest.octets());
    assert!(all.admit(guest, Target::Device(ME), &to_nas, t));
    assert!(all.admit(
        ME,
        Target::Device(guest),
        &pkt(guest.octets(), 6, 445, 40000, false),
        t
    ));
    // Another port of the NAS is not shared.
    let mut other = pkt(ME.octets(), 6, 40001, 22, true);
    other[12..16].copy_from_slice(&guest.octets());
    assert!(!all.admit(guest, Target::Device(ME), &other, t));
    // Of the hub, a guest reaches DNS and HTTPS only; through it, no private address.
    let hub = [100, 96, 0, 1];
    let mut g = compiled(InternetMode::On);
    g.outsider = true;
    let (gall, _) = firewall(DeviceFw::new(g, Settings::default()));
    assert!(gall.admit(ME, Target::Hub, &pkt(hub, 17, 5353, 53, false), t));
    assert!(gall.admit(ME, Target::Hub, &pkt(hub, 6, 40000, 443, true), t));
    assert!(!gall.admit(ME, Target::Hub, &pkt(hub, 6, 40000, 22, true), t));
    assert!(gall.admit(
        ME,
        Target::Internet,
        &pkt([192, 0, 2, 80], 6, 40000, 80, true),
        t
    ));
    for lan in [
        [192, 168, 1, 1],
        [10, 0, 0, 1],
        [100, 64, 0, 5],
        [172, 16, 0, 1],
    ] {
        assert!(!gall.admit(ME, Target::Internet, &pkt(lan, 6, 40000, 80, true), t));
    }
    assert!(phone.local_name_allowed("nas.mesh"));
    assert!(phone.local_name_allowed("nas.mesh."));
    assert!(!phone.local_name_allowed("laptop.mesh"));
    assert!(nas.local_name_allowed("laptop.mesh"));
}

#[test]
fn a_flood_of_names_is_bounded_oldest_first() {
    let mut c = compiled(InternetMode::Allowlist);
    c.allow_sites = sites(&["flood.test"]);
    let fw = DeviceFw::new(
        c,
        Settings {
            site_ttl_floor: Duration::from_secs(300),
            max_sites: 1000,
        },
    );
    let t = Instant::now();
    for i in 0..100_000u32 {
        let b = i.to_be_bytes();
        let name = format!("n{i}.flood.test");
        assert!(fw.record_answer(&name, &answer(&name, &[], [10, b[1], b[2], b[3]], 60), t));
    }
    assert_eq!(fw.sites_len(), 1000);
    let st = fw.state.lock();
    assert!(st.order.len() <= 2 * 1000 + 64);
    assert!(st.sites.contains_key(&IpAddr::from([10, 1, 0x86, 0x9f])));
    assert!(!st.sites.contains_key(&IpAddr::from([10, 0, 0, 0])));
}

#[test]
fn packets_that_do_not_read_pass_to_the_router_unchanged() {
    assert_eq!(L4::parse(&[]), None);
    let mut frag = pkt([1, 2, 3, 4], 6, 1, 2, true);
    frag[7] = 8; // a later fragment: no ports
    let l4 = L4::parse(&frag).unwrap();
    assert!(!l4.ports);
}

#[test]
fn fuzz_firewall_settings() {
    // Rules, reach entries and windows come from the config and the API: any text gives a
    // value or a clear error, never a panic, and what parses matches what it says.
    let seeds = vec![
        "198.51.100.0/24 tcp/443".to_string(),
        "tcp/8000-8100".to_string(),
        "2001:db8::/32 udp/53".to_string(),
        "group:family:22".to_string(),
        "21:00-07:00".to_string(),
        "printer:631".to_string(),
    ];
    crate::fuzz::run("firewall_settings", crate::fuzz::text(seeds), |text| {
        if let Ok(r) = PacketRule::parse(text) {
            if let Some(p) = r.ports {
                assert!(p.0 >= 1 && p.0 <= p.1);
            }
            let _ = r.matches(IpAddr::from([192, 0, 2, 1]), 6, Some(443));
        }
        let _ = Reach::parse(text);
        if let Ok(w) = Window::parse(text) {
            let now: jiff::ZonedDateTime = "2026-03-29T01:30:00+00:00[Europe/London]"
                .parse()
                .unwrap_or_else(|_| {
                    jiff::Timestamp::UNIX_EPOCH.to_zoned_datetime(jiff::tz::TimeZone::UTC)
                });
            let (_, next) = w.state(&now);
            assert!(next.is_none_or(|t| t > now.timestamp()));
        }
        let _ = spec::looks_like_packet_rule(text);
    });
}

#[test]
fn fuzz_firewall_packets_and_answers() {
    // Packets from devices and answers from upstreams reach the firewall: any bytes are
    // judged or passed over, never a panic, and the tables stay within their bounds.
    let mut c = compiled(InternetMode::Allowlist);
    c.allow_sites = sites(&["wiki.test"]);
    c.deny_sites = sites(&["bad.test"]);
    c.reach = Some(vec![]);
    let (all, fw) = firewall(DeviceFw::new(
        c,
        Settings {
            site_ttl_floor: Duration::from_secs(5),
            max_sites: 64,
        },
    ));
    let seeds = vec![
        pkt([192, 0, 2, 80], 6, 40000, 80, true),
        answer("www.wiki.test", &["edge.cdn.test"], [192, 0, 2, 80], 1),
        answer("a.test", &["bad.test"], [192, 0, 2, 9], 60),
    ];
    let t = Instant::now();
    crate::fuzz::run(
        "firewall_packets_and_answers",
        crate::fuzz::bytes(seeds, 600),
        |b| {
            let _ = fw.record_answer("www.wiki.test", b, t);
            for target in [
                Target::Internet,
                Target::Nat64,
                Target::Hub,
                Target::Device(Ipv4Addr::new(100, 96, 0, 3)),
            ] {
                let _ = all.admit(ME, target, b, t);
            }
            let _ = L4::parse(b);
            assert!(fw.sites_len() <= 64);
        },
    );
}

#[test]
fn the_fast_path_holds_only_until_the_next_publish() {
    let (all, fw) = firewall(DeviceFw::new(
        compiled(InternetMode::On),
        Settings::default(),
    ));
    let mut fast = FastPath::default();
    let t = Instant::now();
    let p = pkt([192, 0, 2, 80], 6, 42000, 443, false);
    assert!(all.admit_fast(&mut fast, ME, Target::Internet, &p, t));
    assert!(all.admit_fast(&mut fast, ME, Target::Internet, &p, t));
    // A new policy is published: the cached decision goes with the old one.
    let mut c = compiled(InternetMode::On);
    c.deny = vec![PacketRule::parse("tcp/443").unwrap()];
    fw.set_rules(c);
    let mut m = FxHashMap::default();
    m.insert(IpAddr::from([100, 96, 0, 2]), fw.clone());
    all.publish(m);
    assert!(!all.admit_fast(&mut fast, ME, Target::Internet, &p, t));
    assert!(all.is_active());
    all.publish(FxHashMap::default());
    assert!(!all.is_active());
}
