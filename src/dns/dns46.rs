//! DNS46: an A question from a device for a name with no A records of its own is answered with
//! an address of the NAT46 pool bound to the name's first AAAA address that may be mapped
//! ([`crate::hub::nat46`]). The answer is the device's own (never cached for others).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

use super::upstream::UpstreamAnswer;
use crate::hub::nat46::Nat46;

/// Whether an answer to an A question calls for DNS46: no error, and no A records.
pub fn wanted(a: &UpstreamAnswer) -> bool {
    a.rcode == ResponseCode::NoError && !a.answers.iter().any(|r| r.record_type() == RecordType::A)
}

/// The device (its IPv4 address) DNS46 answers `client` for, if on for it.
pub fn device(nat: Option<&Nat46>, client: IpAddr) -> Option<Ipv4Addr> {
    nat?.device_of(client)
}

/// The A answer for `device` from the AAAA answer `a6`: its CNAMEs, and a pool address for
/// the first AAAA address that may be mapped. `None`: nothing to map (the name is answered as
/// it was).
pub fn synthesise(
    nat: &Nat46,
    device: Ipv4Addr,
    a6: &UpstreamAnswer,
    now: Instant,
) -> Option<UpstreamAnswer> {
    let mut answers: Vec<Record> = a6
        .answers
        .iter()
        .filter(|r| r.record_type() == RecordType::CNAME)
        .cloned()
        .collect();
    let mapped = a6.answers.iter().find_map(|r| match &r.data {
        RData::AAAA(v6) => {
            let p = nat.map(device, v6.0, nat.answer_ttl(r.ttl), now)?;
            Some(Record::from_rdata(
                r.name.clone(),
                nat.answer_ttl(r.ttl),
                RData::A(A(p)),
            ))
        }
        _ => None,
    })?;
    answers.push(mapped);
    Some(UpstreamAnswer {
        rcode: ResponseCode::NoError,
        answers,
        authorities: vec![],
    })
}
