//! Writing answers, free of I/O like the engine that calls them: the answer to a blocked name,
//! the reusable answer built from records (local data or an upstream's, cached as it is), the
//! UDP size limit, DNS64's synthesised AAAA records and how long an answer may be cached.

use std::net::Ipv6Addr;
use std::time::Instant;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::AAAA;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnet::Ipv6Net;

use super::cache::{Entry, MAX_NEGATIVE_TTL, MAX_TTL};
use super::engine::Transport;
use super::upstream::UpstreamAnswer;
use super::wire::{self, QueryView};
use crate::config::BlockedAnswer;

/// The records an answer is built from (local data or an upstream).
pub(super) struct Found {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
}

/// Applies the UDP size limit (TC bit) to a finished answer.
pub(super) fn finish(q: &QueryView<'_>, query: &[u8], transport: Transport, out: &mut Vec<u8>) {
    if transport == Transport::Udp && out.len() > q.udp_limit() {
        let rcode = out.get(3).map(|f| f & 0x0F).unwrap_or(0);
        wire::error_answer(q, query, rcode, true, out);
    }
}

/// Writes the answer to a blocked name as `mode` says (a null address lives `ttl` seconds).
pub(super) fn write_blocked(
    q: &QueryView<'_>,
    query: &[u8],
    mode: BlockedAnswer,
    ttl: u32,
    out: &mut Vec<u8>,
) {
    match mode {
        BlockedAnswer::Nxdomain => wire::error_answer(q, query, wire::RCODE_NXDOMAIN, false, out),
        BlockedAnswer::Refused => wire::error_answer(q, query, wire::RCODE_REFUSED, false, out),
        BlockedAnswer::Null => {
            let rdlen = match q.qtype {
                wire::TYPE_A => 4,
                wire::TYPE_AAAA => 16,
                _ => 0,
            };
            out.clear();
            let flags = wire::response_flags(q.flags, wire::RCODE_NOERROR, false);
            wire::put_header(
                out,
                q.id,
                flags,
                [1, (rdlen > 0) as u16, 0, q.edns.is_some() as u16],
            );
            out.extend_from_slice(&query[wire::HEADER_LEN..q.question_end]);
            if rdlen > 0 {
                out.extend_from_slice(&[0xC0, 12]);
                out.extend_from_slice(&q.qtype.to_be_bytes());
                out.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
                out.extend_from_slice(&ttl.to_be_bytes());
                out.extend_from_slice(&(rdlen as u16).to_be_bytes());
                out.extend(std::iter::repeat_n(0u8, rdlen));
            }
            if let Some(e) = q.edns {
                wire::put_opt(out, e.dnssec_ok);
            }
        }
    }
}

/// Builds the reusable answer (id 0, lower-case question, no OPT), living `ttl` seconds
/// from `now`. A message that cannot be emitted becomes a bare SERVFAIL.
pub(super) fn template(
    q: &QueryView<'_>,
    name: &Name,
    found: Found,
    authoritative: bool,
    ttl: u32,
    now: Instant,
) -> Entry {
    let mut m = Message::new(0, MessageType::Response, OpCode::Query);
    m.metadata.recursion_available = true;
    m.metadata.authoritative = authoritative;
    m.metadata.response_code = found.rcode;
    m.metadata.recursion_desired = q.rd();
    let mut query = Query::query(name.clone(), RecordType::from(q.qtype));
    query.set_query_class(DNSClass::IN);
    m.add_query(query);
    m.insert_answers(found.answers);
    m.insert_authorities(found.authorities);
    m.to_vec()
        .ok()
        .and_then(|bytes| Entry::new(bytes, ttl, now))
        .unwrap_or_else(|| {
            let mut b = Vec::new();
            let flags = wire::response_flags(q.flags, wire::RCODE_SERVFAIL, false);
            wire::put_header(&mut b, 0, flags, [0; 4]);
            Entry::new(b, 0, now).expect("a bare header always walks")
        })
}

/// RFC 6147 §5.1: AAAA records under `prefix` from an A answer (CNAMEs kept); `None` when
/// the A answer has no address.
pub(super) fn synthesise(prefix: Ipv6Net, a: &UpstreamAnswer) -> Option<UpstreamAnswer> {
    let mut synth = Vec::new();
    for r in &a.answers {
        match &r.data {
            RData::A(v4) => {
                let mut b = prefix.network().octets();
                b[12..].copy_from_slice(&v4.0.octets());
                synth.push(Record::from_rdata(
                    r.name.clone(),
                    r.ttl,
                    RData::AAAA(AAAA(Ipv6Addr::from(b))),
                ));
            }
            RData::CNAME(_) => synth.push(r.clone()),
            _ => {}
        }
    }
    synth
        .iter()
        .any(|r| r.record_type() == RecordType::AAAA)
        .then_some(UpstreamAnswer {
            rcode: ResponseCode::NoError,
            answers: synth,
            authorities: vec![],
        })
}

/// How long an answer may be cached: the smallest TTL in it, or for a negative answer the
/// SOA's TTL and MINIMUM (RFC 2308 §5); 0 = do not cache.
pub(super) fn cache_ttl(a: &UpstreamAnswer) -> u32 {
    match a.rcode {
        ResponseCode::NoError if !a.answers.is_empty() => a
            .answers
            .iter()
            .map(|r| r.ttl)
            .min()
            .unwrap_or(0)
            .min(MAX_TTL),
        ResponseCode::NoError | ResponseCode::NXDomain => a
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .unwrap_or(30)
            .min(MAX_NEGATIVE_TTL),
        _ => 0,
    }
}
