//! The resolver core on plain values: queries in, steps out, upstream answers handed back by
//! hand, `now` moved by the test.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use hickory_proto::op::{Edns as HickoryEdns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
use hickory_proto::rr::Record;

use super::*;
use crate::config::BlockedAnswer;
use crate::dns::cache::Entry;
use crate::filter::{Filter, FilterSet};
use crate::store::Device;

/// An allowed client outside the overlay.
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
/// A device on the overlay.
const DEVICE: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 100, 0, 2));
/// Neither loopback, overlay nor allowed.
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));

fn policy(block: &[&str], allow: &[&str], mode: BlockedAnswer) -> Policy {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (rules, errs) = FilterSet::build(&[], &s(block), &s(allow));
    assert!(errs.is_empty());
    Policy {
        rules: Filter::new(rules),
        lists: Arc::new(Filter::new(FilterSet::build(&[], &[], &[]).0)),
        blocked_answer: mode,
    }
}

fn settings() -> Settings {
    Settings {
        dns64: None,
        blocked_ttl: 10,
        allow_from: vec!["192.0.2.0/24".parse().unwrap()],
        overlay: vec!["100.100.0.0/16".parse().unwrap()],
        rate_limit: 0,
        cache_size: 1000,
    }
}

fn resolver_with(settings: Settings, policy: Policy) -> Resolver {
    let laptop = Device {
        name: "laptop".into(),
        public_key: "k".into(),
        ipv4: Ipv4Addr::new(100, 100, 0, 2),
        ipv6: "fd00::2".parse().unwrap(),
        split: false,
        group: None,
        owner: false,
        no_log: false,
        admin: false,
        person: None,
        created_at: 0,
    };
    let zone = (
        "home.zone".to_string(),
        "$TTL 300\nprinter IN A 192.168.1.20\n".to_string(),
    );
    let overlay = crate::store::Overlay {
        v4: "100.100.0.0/16".parse().unwrap(),
        v6: "fd00::/64".parse().unwrap(),
    };
    let (local, errs) = LocalData::build("mesh", &[laptop], Some(&overlay), &[zone]);
    assert!(errs.is_empty(), "{errs:?}");
    Resolver::new(settings, policy, local, Arc::new(Stats::default()))
}

fn resolver(block: &[&str], allow: &[&str]) -> Resolver {
    resolver_with(settings(), policy(block, allow, BlockedAnswer::Null))
}

fn query_bytes(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        let mut e = HickoryEdns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    query_bytes(name, qtype, false)
}

/// Runs a query that must be answered at once; returns the answer.
fn answered(r: &Resolver, q: &[u8], client: IpAddr, t: Transport, now: Instant) -> Message {
    let mut out = Vec::new();
    match r.handle_query(q, client, t, now, &mut out) {
        Step::Answered => Message::from_vec(&out).expect("a readable answer"),
        other => panic!("expected an answer, got {other:?}"),
    }
}

/// Runs a query that must go upstream; returns its token.
fn asks(r: &Resolver, q: &[u8], client: IpAddr, now: Instant) -> Box<Pending> {
    let mut out = Vec::new();
    match r.handle_query(q, client, Transport::Udp, now, &mut out) {
        Step::Ask(p) => p,
        other => panic!("expected an upstream question, got {other:?}"),
    }
}

/// Hands `answer` back for `p`; the step must be an answer.
fn finish(r: &Resolver, p: Box<Pending>, answer: UpstreamAnswer, now: Instant) -> Message {
    let mut out = Vec::new();
    match r.handle_upstream(p, Ok(answer), now, &mut out) {
        Step::Answered => Message::from_vec(&out).unwrap(),
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn a_record(owner: &str, ip: [u8; 4], ttl: u32) -> Record {
    Record::from_rdata(
        name(owner),
        ttl,
        RData::A(A::new(ip[0], ip[1], ip[2], ip[3])),
    )
}

fn positive(records: Vec<Record>) -> UpstreamAnswer {
    UpstreamAnswer {
        rcode: ResponseCode::NoError,
        answers: records,
        authorities: vec![],
    }
}

fn ttl_of(m: &Message) -> u32 {
    m.answers[0].ttl
}

fn addr_of(m: &Message) -> Option<IpAddr> {
    m.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    })
}

#[test]
fn device_name_is_answered_locally_and_authoritatively() {
    let r = resolver(&[], &[]);
    let m = answered(
        &r,
        &query("laptop.mesh.", RecordType::A),
        DEVICE,
        Transport::Udp,
        Instant::now(),
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(addr_of(&m), Some("100.100.0.2".parse().unwrap()));
    assert_eq!(m.metadata.id, 0x1234);
}

#[test]
fn zone_file_name_is_answered_locally() {
    let r = resolver(&[], &[]);
    let m = answered(
        &r,
        &query("Printer.mesh.", RecordType::A),
        CLIENT,
        Transport::Udp,
        Instant::now(),
    );
    assert_eq!(addr_of(&m), Some("192.168.1.20".parse().unwrap()));
}

#[test]
fn unknown_local_name_is_nxdomain_and_not_forwarded() {
    let r = resolver(&[], &[]);
    let m = answered(
        &r,
        &query("nobody.mesh.", RecordType::A),
        CLIENT,
        Transport::Udp,
        Instant::now(),
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn reverse_name_of_a_device_is_answered_locally() {
    let r = resolver(&[], &[]);
    let q = query("2.0.100.100.in-addr.arpa.", RecordType::PTR);
    let m = answered(&r, &q, DEVICE, Transport::Udp, Instant::now());
    assert!(matches!(&m.answers[0].data, RData::PTR(p) if p.0 == name("laptop.mesh.")));
}

#[test]
fn blocked_name_and_its_subdomains_get_the_null_answer() {
    let r = resolver(&["ads.example"], &[]);
    let now = Instant::now();
    for n in ["ads.example.", "x.ADS.example."] {
        let m = answered(&r, &query(n, RecordType::A), CLIENT, Transport::Udp, now);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addr_of(&m), Some("0.0.0.0".parse().unwrap()));
        assert_eq!(ttl_of(&m), 10, "blocked_ttl");
    }
    assert_eq!(
        r.stats.blocked.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[test]
fn blocked_answer_modes_nxdomain_and_refused() {
    for (mode, rcode) in [
        (BlockedAnswer::Nxdomain, ResponseCode::NXDomain),
        (BlockedAnswer::Refused, ResponseCode::Refused),
    ] {
        let r = resolver_with(settings(), policy(&["ads.example"], &[], mode));
        let m = answered(
            &r,
            &query("ads.example.", RecordType::A),
            CLIENT,
            Transport::Udp,
            Instant::now(),
        );
        assert_eq!(m.metadata.response_code, rcode);
        assert!(m.answers.is_empty());
    }
}

#[test]
fn allow_rule_beats_a_block_rule() {
    let r = resolver(&["example.com"], &["ok.example.com"]);
    let p = asks(
        &r,
        &query("ok.example.com.", RecordType::A),
        CLIENT,
        Instant::now(),
    );
    assert_eq!(p.ask(), (&name("ok.example.com."), RecordType::A));
}

#[test]
fn a_miss_asks_upstream_for_the_lower_case_question() {
    let r = resolver(&[], &[]);
    let p = asks(
        &r,
        &query("WWW.Example.COM.", RecordType::AAAA),
        CLIENT,
        Instant::now(),
    );
    assert_eq!(p.ask(), (&name("www.example.com."), RecordType::AAAA));
    let mut wire = Vec::new();
    p.put_question(&mut wire);
    assert_eq!(wire, b"\x03www\x07example\x03com\x00\x00\x1c\x00\x01");
    assert_eq!(p.client(), CLIENT);
}

#[test]
fn upstream_answer_is_served_then_cached_with_its_ttl_counting_down() {
    let r = resolver(&[], &[]);
    let now = Instant::now();
    let q = query("www.example.com.", RecordType::A);
    let p = asks(&r, &q, CLIENT, now);
    let m = finish(
        &r,
        p,
        positive(vec![a_record("www.example.com.", [192, 0, 2, 1], 100)]),
        now,
    );
    assert_eq!(m.metadata.id, 0x1234);
    assert!(m.metadata.recursion_available);
    assert_eq!(ttl_of(&m), 100);

    let later = answered(
        &r,
        &q,
        CLIENT,
        Transport::Udp,
        now + Duration::from_secs(30),
    );
    assert_eq!(ttl_of(&later), 70);
    assert_eq!(addr_of(&later), Some("192.0.2.1".parse().unwrap()));

    // Past its TTL the answer is asked for again.
    asks(&r, &q, CLIENT, now + Duration::from_secs(101));
}

#[test]
fn negative_answer_is_cached_for_the_soa_minimum() {
    let r = resolver(&[], &[]);
    let now = Instant::now();
    let q = query("gone.example.com.", RecordType::A);
    let soa = SOA::new(
        name("ns.example.com."),
        name("h.example.com."),
        1,
        1,
        1,
        1,
        60,
    );
    let nx = UpstreamAnswer {
        rcode: ResponseCode::NXDomain,
        answers: vec![],
        authorities: vec![Record::from_rdata(
            name("example.com."),
            300,
            RData::SOA(soa),
        )],
    };
    let m = finish(&r, asks(&r, &q, CLIENT, now), nx, now);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let hit = answered(
        &r,
        &q,
        CLIENT,
        Transport::Udp,
        now + Duration::from_secs(59),
    );
    assert_eq!(hit.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        hit.authorities[0].ttl,
        300 - 59,
        "the SOA's TTL counts down"
    );
    asks(&r, &q, CLIENT, now + Duration::from_secs(61));
}

#[test]
fn failed_upstream_gives_servfail_that_is_not_cached() {
    let r = resolver(&[], &[]);
    let now = Instant::now();
    let q = query("www.example.com.", RecordType::A);
    let mut out = Vec::new();
    let err = UpstreamError::Failed("timed out".into());
    let step = r.handle_upstream(asks(&r, &q, CLIENT, now), Err(err), now, &mut out);
    assert!(matches!(step, Step::Answered));
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.metadata.id, 0x1234);
    asks(&r, &q, CLIENT, now);
}

#[test]
fn cname_to_a_blocked_name_blocks_the_answer() {
    let r = resolver(&["tracker.example"], &[]);
    let now = Instant::now();
    let q = query("shop.example.com.", RecordType::A);
    let cloaked = positive(vec![
        Record::from_rdata(
            name("shop.example.com."),
            60,
            RData::CNAME(CNAME(name("x.tracker.example."))),
        ),
        a_record("x.tracker.example.", [192, 0, 2, 9], 60),
    ]);
    let m = finish(&r, asks(&r, &q, CLIENT, now), cloaked.clone(), now);
    assert_eq!(addr_of(&m), Some("0.0.0.0".parse().unwrap()));
    // Not cached as a pass: the next query asks (and is uncloaked) again.
    asks(&r, &q, CLIENT, now);

    // Allowing the name asked for lets its chain through.
    let r = resolver(&["tracker.example"], &["shop.example.com"]);
    let m = finish(&r, asks(&r, &q, CLIENT, now), cloaked, now);
    assert_eq!(addr_of(&m), Some("192.0.2.9".parse().unwrap()));
}

fn dns64_resolver(block: &[&str]) -> Resolver {
    let mut s = settings();
    s.dns64 = Some("64:ff9b::/96".parse().unwrap());
    resolver_with(s, policy(block, &[], BlockedAnswer::Null))
}

#[test]
fn dns64_synthesises_aaaa_from_a_with_a_second_question() {
    let r = dns64_resolver(&[]);
    let now = Instant::now();
    let q = query("v4only.example.", RecordType::AAAA);
    let p = asks(&r, &q, CLIENT, now);
    let mut out = Vec::new();
    let Step::Ask(p) = r.handle_upstream(p, Ok(positive(vec![])), now, &mut out) else {
        panic!("DNS64 asks for the A records");
    };
    assert_eq!(p.ask(), (&name("v4only.example."), RecordType::A));
    let mut wire = Vec::new();
    p.put_question(&mut wire);
    assert_eq!(&wire[wire.len() - 4..], &[0, 1, 0, 1], "type A, class IN");
    let m = finish(
        &r,
        p,
        positive(vec![a_record("v4only.example.", [192, 0, 2, 1], 300)]),
        now,
    );
    assert_eq!(addr_of(&m), Some("64:ff9b::c000:201".parse().unwrap()));
    assert_eq!(m.queries[0].query_type(), RecordType::AAAA);
    // The synthesised answer is cached for the AAAA question.
    let hit = answered(&r, &q, CLIENT, Transport::Udp, now + Duration::from_secs(1));
    assert_eq!(addr_of(&hit), Some("64:ff9b::c000:201".parse().unwrap()));
}

#[test]
fn dns64_keeps_a_names_own_aaaa() {
    let r = dns64_resolver(&[]);
    let now = Instant::now();
    let p = asks(&r, &query("dual.example.", RecordType::AAAA), CLIENT, now);
    let own = Record::from_rdata(
        name("dual.example."),
        60,
        RData::AAAA(AAAA("2001:db8::1".parse().unwrap())),
    );
    let m = finish(&r, p, positive(vec![own]), now);
    assert_eq!(addr_of(&m), Some("2001:db8::1".parse().unwrap()));
}

#[test]
fn dns64_does_not_synthesise_through_a_blocked_cname() {
    let r = dns64_resolver(&["tracker.example"]);
    let now = Instant::now();
    let p = asks(&r, &query("v4only.example.", RecordType::AAAA), CLIENT, now);
    let mut out = Vec::new();
    let Step::Ask(p) = r.handle_upstream(p, Ok(positive(vec![])), now, &mut out) else {
        panic!("DNS64 asks for the A records");
    };
    let a = positive(vec![
        Record::from_rdata(
            name("v4only.example."),
            60,
            RData::CNAME(CNAME(name("t.tracker.example."))),
        ),
        a_record("t.tracker.example.", [192, 0, 2, 1], 60),
    ]);
    let m = finish(&r, p, a, now);
    assert!(m.answers.is_empty(), "the name's own (empty) AAAA answer");
}

#[test]
fn group_policy_applies_to_its_devices_and_caches_apart() {
    let r = resolver(&[], &[]);
    let kids = Arc::new(policy(&["games.example"], &[], BlockedAnswer::Nxdomain));
    r.set_groups(Groups {
        by_ip: HashMap::from([(DEVICE, (1, kids))]),
    });
    let now = Instant::now();
    let q = query("games.example.", RecordType::A);
    let m = answered(&r, &q, DEVICE, Transport::Udp, now);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // Another client passes, and its cached answer is not served to the group.
    let p = asks(&r, &q, CLIENT, now);
    finish(
        &r,
        p,
        positive(vec![a_record("games.example.", [192, 0, 2, 5], 60)]),
        now,
    );
    answered(&r, &q, CLIENT, Transport::Udp, now);
    let other = query("news.example.", RecordType::A);
    let p = asks(&r, &other, CLIENT, now);
    finish(
        &r,
        p,
        positive(vec![a_record("news.example.", [192, 0, 2, 6], 60)]),
        now,
    );
    asks(&r, &other, DEVICE, now);
}

#[test]
fn client_over_its_rate_is_dropped_on_udp_and_refused_on_streams() {
    let mut s = settings();
    s.rate_limit = 1;
    let r = resolver_with(s, policy(&["ads.example"], &[], BlockedAnswer::Null));
    let now = Instant::now();
    let q = query("ads.example.", RecordType::A);
    let mut out = Vec::new();
    // A burst of twice the rate passes.
    for _ in 0..2 {
        assert!(matches!(
            r.handle_query(&q, CLIENT, Transport::Udp, now, &mut out),
            Step::Answered
        ));
    }
    assert!(matches!(
        r.handle_query(&q, CLIENT, Transport::Udp, now, &mut out),
        Step::Drop
    ));
    let m = answered(&r, &q, CLIENT, Transport::Stream, now);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    // Tokens come back with time.
    let m = answered(&r, &q, CLIENT, Transport::Udp, now + Duration::from_secs(2));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
}

#[test]
fn strangers_and_other_classes_are_refused() {
    let r = resolver(&[], &[]);
    let now = Instant::now();
    let m = answered(
        &r,
        &query("www.example.com.", RecordType::A),
        STRANGER,
        Transport::Udp,
        now,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let mut q = query("version.bind.", RecordType::TXT);
    let n = q.len();
    q[n - 1] = 3; // class CH
    let m = answered(&r, &q, CLIENT, Transport::Udp, now);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn mapped_ipv6_client_counts_as_its_ipv4_address() {
    let r = resolver(&[], &[]);
    let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
    let p = asks(
        &r,
        &query("www.example.com.", RecordType::A),
        mapped,
        Instant::now(),
    );
    assert_eq!(p.client(), CLIENT);
}

#[test]
fn malformed_queries_get_formerr_notimp_or_nothing() {
    let r = resolver(&[], &[]);
    let now = Instant::now();
    let mut out = Vec::new();
    // A header claiming one question, then a label running past the end.
    let bad = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 9, b'a'];
    assert!(matches!(
        r.handle_query(&bad, CLIENT, Transport::Udp, now, &mut out),
        Step::Answered
    ));
    assert_eq!(&out[0..2], &[0x12, 0x34]);
    assert_eq!(out[3] & 0x0F, wire::RCODE_FORMERR);
    // Opcode 2 (STATUS): NOTIMP without RA.
    let mut status = query("www.example.com.", RecordType::A);
    status[2] = (status[2] & 0x87) | (2 << 3);
    assert!(matches!(
        r.handle_query(&status, CLIENT, Transport::Udp, now, &mut out),
        Step::Answered
    ));
    assert_eq!(out[3] & 0x0F, wire::RCODE_NOTIMP);
    assert_eq!(out[3] & 0x80, 0, "no RA");
    // A response, or a runt: nothing is sent.
    let mut response = query("www.example.com.", RecordType::A);
    response[2] |= 0x80;
    assert!(matches!(
        r.handle_query(&response, CLIENT, Transport::Udp, now, &mut out),
        Step::Drop
    ));
    assert!(matches!(
        r.handle_query(&[1, 2, 3], CLIENT, Transport::Udp, now, &mut out),
        Step::Drop
    ));
}

#[test]
fn unknown_edns_version_gets_badvers() {
    let r = resolver(&[], &[]);
    let mut q = query_bytes("www.example.com.", RecordType::A, true);
    let n = q.len();
    q[n - 5] = 1; // OPT TTL: extended rcode 0, version 1
    let mut out = Vec::new();
    r.handle_query(&q, CLIENT, Transport::Udp, Instant::now(), &mut out);
    let m = Message::from_vec(&out).unwrap();
    // BADVERS is 16 (an extended rcode; hickory names 16 BADSIG as well).
    assert_eq!(u16::from(m.metadata.response_code), 16);
}

#[test]
fn answer_too_big_for_udp_is_truncated_but_whole_on_streams() {
    let r = resolver(&[], &[]);
    let now = Instant::now();
    let many: Vec<Record> = (0..60)
        .map(|i| a_record("big.example.", [192, 0, 2, i as u8], 60))
        .collect();
    let q = query("big.example.", RecordType::A);
    let m = finish(&r, asks(&r, &q, CLIENT, now), positive(many), now);
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    let m = answered(&r, &q, CLIENT, Transport::Stream, now);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
}

#[test]
fn unusual_name_bytes_take_the_general_parser_and_still_cache() {
    let r = resolver(&[], &[]);
    let now = Instant::now();
    // A label with a space (legal on the wire, not in hostnames).
    let mut q = query("axb.example.", RecordType::A);
    q[14] = b' ';
    let p = asks(&r, &q, CLIENT, now);
    assert_eq!(p.ask().0.to_ascii(), "a\\040b.example.");
    finish(
        &r,
        p,
        positive(vec![a_record("axb.example.", [192, 0, 2, 3], 60)]),
        now,
    );
    let m = answered(&r, &q, CLIENT, Transport::Udp, now);
    assert_eq!(addr_of(&m), Some("192.0.2.3".parse().unwrap()));
}

mod fuzz {
    use super::*;
    use crate::fuzz;

    fn seeds() -> Vec<Vec<u8>> {
        vec![
            query("www.example.com.", RecordType::A),
            query_bytes("www.example.com.", RecordType::AAAA, true),
            query("laptop.mesh.", RecordType::A),
            query("2.0.100.100.in-addr.arpa.", RecordType::PTR),
            query("x.ads.example.", RecordType::A),
        ]
    }

    #[test]
    fn fuzz_resolver_queries() {
        let r = resolver_with(
            Settings {
                dns64: Some("64:ff9b::/96".parse().unwrap()),
                ..settings()
            },
            policy(&["ads.example"], &[], BlockedAnswer::Null),
        );
        let now = Instant::now();
        let mut out = Vec::new();
        fuzz::run("resolver_queries", fuzz::bytes(seeds(), 600), |q| {
            for t in [Transport::Udp, Transport::Stream] {
                match r.handle_query(q, CLIENT, t, now, &mut out) {
                    Step::Answered => {
                        assert!(out.len() >= wire::HEADER_LEN);
                        assert_eq!(out[0..2], q[0..2], "the answer carries the query's id");
                        assert_ne!(out[2] & 0x80, 0, "QR is set");
                        if t == Transport::Udp {
                            assert!(out.len() <= wire::EDNS_PAYLOAD as usize);
                        }
                    }
                    Step::Drop => {}
                    Step::Ask(p) => {
                        let mut w = Vec::new();
                        p.put_question(&mut w);
                        assert!(w.len() >= 5);
                    }
                }
            }
        });
    }

    fn answer_seeds() -> Vec<Vec<u8>> {
        let mut m = Message::new(0, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(name("www.example.com."), RecordType::A));
        m.add_answer(Record::from_rdata(
            name("www.example.com."),
            60,
            RData::CNAME(CNAME(name("cdn.example.net."))),
        ));
        m.add_answer(a_record("cdn.example.net.", [192, 0, 2, 1], 30));
        let mut nx = Message::new(0, MessageType::Response, OpCode::Query);
        nx.metadata.response_code = ResponseCode::NXDomain;
        nx.add_query(Query::query(name("www.example.com."), RecordType::A));
        let soa = SOA::new(name("ns.example."), name("h.example."), 1, 1, 1, 1, 60);
        nx.add_authority(Record::from_rdata(
            name("example.com."),
            300,
            RData::SOA(soa),
        ));
        vec![m.to_vec().unwrap(), nx.to_vec().unwrap()]
    }

    #[test]
    fn fuzz_upstream_answers() {
        let r = dns64_resolver(&["tracker.example"]);
        let now = Instant::now();
        let q = query_bytes("www.example.com.", RecordType::AAAA, true);
        let qv = QueryView::parse(&q).unwrap();
        let mut out = Vec::new();
        fuzz::run("upstream_answers", fuzz::bytes(answer_seeds(), 1500), |b| {
            let _ = super::super::super::udp_client::answer_id(b);
            let _ = super::super::super::udp_client::answers_question(
                b,
                b"\x03www\x00\x00\x01\x00\x01",
            );
            if let Some(e) = Entry::new(b.clone(), 60, now) {
                e.write_answer(&qv, now + Duration::from_secs(5), &mut out);
            }
            let Ok(a) = UpstreamAnswer::from_wire(b) else {
                return;
            };
            let p = asks(&r, &q, CLIENT, now);
            let mut step = r.handle_upstream(p, Ok(a.clone()), now, &mut out);
            if let Step::Ask(p) = step {
                step = r.handle_upstream(p, Ok(a), now, &mut out);
            }
            assert!(matches!(step, Step::Answered));
            assert_eq!(out[0..2], [0x12, 0x34]);
            r.clear_cache();
        });
    }
}

/// The answer to a query from a TLS listener's asker (a device named by its DNS token, an
/// unknown token, or a plain address).
fn answered_as(
    r: &Resolver,
    q: &[u8],
    asker: super::super::tokens::Asker,
    now: Instant,
) -> Message {
    let mut out = Vec::new();
    match r.handle_query_as(q, asker, Transport::Stream, now, &mut out) {
        Step::Answered => Message::from_vec(&out).expect("a readable answer"),
        other => panic!("expected an answer, got {other:?}"),
    }
}

#[test]
fn a_token_asks_as_its_device_and_is_limited_per_token_and_per_source() {
    use super::super::tokens::Asker;
    let mut s = settings();
    s.rate_limit = 1;
    let r = resolver_with(s, policy(&["ads.example"], &[], BlockedAnswer::Null));
    let now = Instant::now();
    let laptop: IpAddr = "100.100.0.2".parse().unwrap();
    let (a, b): (IpAddr, IpAddr) = (
        "203.0.113.7".parse().unwrap(),
        "203.0.113.8".parse().unwrap(),
    );
    let q = query("laptop.mesh.", RecordType::A);
    let token_from = |source| Asker::Device {
        device: laptop,
        source,
    };
    let rcode = |asker, at| answered_as(&r, &q, asker, at).metadata.response_code;
    // A stranger's address with the laptop's token gets the laptop's local names.
    let m = answered_as(&r, &q, token_from(a), now);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    // The same address without a token is a stranger: refused.
    assert_eq!(rcode(Asker::Address(a), now), ResponseCode::Refused);
    // An unknown token is refused, whatever the source.
    let unknown = Asker::UnknownToken { source: laptop };
    assert_eq!(rcode(unknown, now), ResponseCode::Refused);
    // Rate 1/s, burst 2: source `a` has spent 1; one more passes, then `a` is refused even
    // with a valid token...
    assert_eq!(rcode(token_from(a), now), ResponseCode::NoError);
    assert_eq!(rcode(token_from(a), now), ResponseCode::Refused);
    // ...and the token itself has spent its burst, so a fresh source with it is refused too.
    assert_eq!(rcode(token_from(b), now), ResponseCode::Refused);
    // Both come back with time.
    let later = now + Duration::from_secs(3);
    assert_eq!(rcode(token_from(b), later), ResponseCode::NoError);
}
