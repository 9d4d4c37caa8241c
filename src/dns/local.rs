//! Local names: the `mesh` zone (devices from the registry, A/AAAA and PTR) plus the owner's
//! RFC 1035 zone files. These names are answered here and never forwarded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use ipnet::IpNet;

use crate::store::{Device, Overlay};

/// TTL of device records: short, so renames and removals show quickly.
const DEVICE_TTL: u32 = 60;
/// Longest CNAME chain followed inside local data.
const MAX_CHAIN: usize = 8;

/// An answer from local data.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalAnswer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
}

/// Everything answered locally.
#[derive(Debug, Default)]
pub struct LocalData {
    /// Zones served (lower-case, fully qualified): the `zone` setting and zone-file origins.
    zones: Vec<Name>,
    records: HashMap<Name, Vec<Record>>,
    overlay: Vec<IpNet>,
    soa: Option<Record>,
    zone_text: Vec<String>,
}

fn lower(n: &Name) -> Name {
    let mut n = n.to_lowercase();
    n.set_fqdn(true);
    n
}

impl LocalData {
    /// Builds local data for `zone` from devices, the overlay (for PTR) and zone files
    /// (`(file name, text)`); errors name the file and are returned, the rest still loads.
    pub fn build(
        zone: &str,
        devices: &[Device],
        overlay: Option<&Overlay>,
        zone_files: &[(String, String)],
    ) -> (LocalData, Vec<String>) {
        let mut errors = Vec::new();
        let mut d = LocalData::default();
        let Ok(zone) = Name::from_ascii(format!("{}.", zone.trim_end_matches('.'))) else {
            errors.push(format!("zone {zone:?} is not a DNS name"));
            return (d, errors);
        };
        let zone = lower(&zone);
        if let Ok(hub) = Name::from_ascii("hub").and_then(|h| h.append_domain(&zone)) {
            let soa = SOA::new(
                hub,
                Name::from_ascii("hostmaster")
                    .and_then(|h| h.append_domain(&zone))
                    .unwrap_or_else(|_| zone.clone()),
                1,
                3600,
                600,
                86400,
                DEVICE_TTL,
            );
            d.soa = Some(Record::from_rdata(
                zone.clone(),
                DEVICE_TTL,
                RData::SOA(soa),
            ));
        }
        d.zones.push(zone.clone());
        if let Some(o) = overlay {
            d.overlay = o.nets().to_vec();
            // The hub itself: `hub.mesh` is where the admin page is.
            if let Ok(hub) = Name::from_ascii("hub").and_then(|h| h.append_domain(&zone)) {
                let hub = lower(&hub);
                d.add(Record::from_rdata(
                    hub.clone(),
                    DEVICE_TTL,
                    RData::A(A(o.hub_v4())),
                ));
                d.add(Record::from_rdata(
                    hub,
                    DEVICE_TTL,
                    RData::AAAA(AAAA(o.hub_v6())),
                ));
            }
        }
        for dev in devices {
            let Ok(name) = Name::from_ascii(&dev.name).and_then(|n| n.append_domain(&zone)) else {
                continue;
            };
            let name = lower(&name);
            d.add(Record::from_rdata(
                name.clone(),
                DEVICE_TTL,
                RData::A(A(dev.ipv4)),
            ));
            d.add(Record::from_rdata(
                name.clone(),
                DEVICE_TTL,
                RData::AAAA(AAAA(dev.ipv6)),
            ));
            for ip in [IpAddr::V4(dev.ipv4), IpAddr::V6(dev.ipv6)] {
                let rev = lower(&Name::from(ip));
                d.add(Record::from_rdata(
                    rev,
                    DEVICE_TTL,
                    RData::PTR(PTR(name.clone())),
                ));
            }
        }
        for (file, text) in zone_files {
            let parser = hickory_proto::serialize::txt::Parser::new(
                text.as_str(),
                Some(Path::new(file).to_path_buf()),
                Some(zone.clone()),
            );
            match parser.parse() {
                Ok((origin, sets)) => {
                    let origin = lower(&origin);
                    if !d.zones.contains(&origin) {
                        d.zones.push(origin);
                    }
                    for set in sets.values() {
                        for r in set.records_without_rrsigs() {
                            let mut r = r.clone();
                            r.name = lower(&r.name);
                            d.add(r);
                        }
                    }
                }
                Err(e) => errors.push(format!("zone file {file}: {e}")),
            }
        }
        d.zone_text = d
            .zones
            .iter()
            .map(|z| {
                let t = z.to_ascii().to_ascii_lowercase();
                t.trim_end_matches('.').to_string()
            })
            .collect();
        (d, errors)
    }

    /// The zones as lower-case text without trailing dot (for the fast path's suffix test).
    pub fn zone_suffixes(&self) -> &[String] {
        &self.zone_text
    }

    fn add(&mut self, r: Record) {
        self.records.entry(r.name.clone()).or_default().push(r);
    }

    /// True when `name` is ours to answer: inside a local zone, or a reverse name of the overlay.
    pub fn is_local(&self, name: &Name) -> bool {
        if self.zones.iter().any(|z| z.zone_of(name)) {
            return true;
        }
        match name.parse_arpa_name() {
            Ok(net) => self.overlay.iter().any(|o| o.contains(&net.addr())),
            Err(_) => false,
        }
    }

    /// Answers `name`/`qtype` from local data (call only when [`is_local`](Self::is_local)).
    pub fn answer(&self, name: &Name, qtype: RecordType) -> LocalAnswer {
        let mut answers = Vec::new();
        let mut current = lower(name);
        for _ in 0..MAX_CHAIN {
            let Some(rs) = self.records.get(&current) else {
                break;
            };
            let matching: Vec<&Record> = rs
                .iter()
                .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                .collect();
            if !matching.is_empty() {
                answers.extend(matching.into_iter().cloned());
                break;
            }
            let cname = rs.iter().find_map(|r| match &r.data {
                RData::CNAME(c) => Some((r.clone(), c.0.clone())),
                _ => None,
            });
            match cname {
                Some((r, target)) if qtype != RecordType::CNAME => {
                    answers.push(r);
                    current = lower(&target);
                    if !self.is_local(&current) {
                        break;
                    }
                }
                _ => break,
            }
        }
        if !answers.is_empty() {
            return LocalAnswer {
                rcode: ResponseCode::NoError,
                answers,
                authorities: vec![],
            };
        }
        let q = lower(name);
        // NODATA when the name exists (or has names below it), NXDOMAIN otherwise.
        let exists = self.records.contains_key(&q)
            || self.records.keys().any(|k| q.zone_of(k))
            || self.zones.contains(&q);
        LocalAnswer {
            rcode: if exists {
                ResponseCode::NoError
            } else {
                ResponseCode::NXDomain
            },
            answers: vec![],
            authorities: self.soa.iter().cloned().collect(),
        }
    }
}

/// Reads every zone file (`*.zone`, `*.db`, `*.txt`) in `dir`; a missing dir is no error.
pub fn read_zone_files(dir: &Path) -> (Vec<(String, String)>, Vec<String>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (files, errors);
    };
    let mut paths: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "zone" | "db" | "txt") || !p.is_file() {
            continue;
        }
        match std::fs::read_to_string(&p) {
            Ok(t) => files.push((p.display().to_string(), t)),
            Err(e) => errors.push(format!("zone file {}: {e}", p.display())),
        }
    }
    (files, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn dev(name: &str, last: u8) -> Device {
        Device {
            name: name.into(),
            public_key: format!("k{name}"),
            ipv4: Ipv4Addr::new(100, 96, 0, last),
            ipv6: format!("fd00::{last}").parse::<Ipv6Addr>().unwrap(),
            split: false,
            group: None,
            owner: false,
            no_log: false,
            admin: false,
            person: None,
            created_at: 0,
        }
    }

    fn overlay() -> Overlay {
        Overlay {
            v4: "100.96.0.0/16".parse().unwrap(),
            v6: "fd00::/48".parse().unwrap(),
        }
    }

    #[test]
    fn device_names_and_ptr_answer_locally() {
        let (d, e) = LocalData::build("mesh", &[dev("laptop", 2)], Some(&overlay()), &[]);
        assert!(e.is_empty());
        let n = Name::from_ascii("LapTop.mesh.").unwrap();
        assert!(d.is_local(&n));
        let a = d.answer(&n, RecordType::A);
        assert_eq!(a.answers.len(), 1);
        let rev = Name::from(IpAddr::V4(Ipv4Addr::new(100, 96, 0, 2)));
        assert!(d.is_local(&rev));
        let p = d.answer(&rev, RecordType::PTR);
        assert_eq!(p.answers.len(), 1);
        let missing = d.answer(&Name::from_ascii("nope.mesh.").unwrap(), RecordType::A);
        assert_eq!(missing.rcode, ResponseCode::NXDomain);
        assert!(!d.is_local(&Name::from_ascii("example.org.").unwrap()));
    }

    #[test]
    fn zone_suffixes_name_every_zone_for_the_fast_path() {
        let zf = "$ORIGIN Home.Arpa.Test.\n$TTL 300\nnas IN A 100.96.9.9\n".to_string();
        let (d, e) = LocalData::build("Mesh", &[], None, &[("h.zone".into(), zf)]);
        assert!(e.is_empty(), "{e:?}");
        let mut z = d.zone_suffixes().to_vec();
        z.sort();
        assert_eq!(z, ["home.arpa.test", "mesh"]);
    }

    #[test]
    fn zone_file_cname_follows_to_device() {
        let zf = "$TTL 300\nnas IN CNAME laptop\n".to_string();
        let (d, e) = LocalData::build(
            "mesh",
            &[dev("laptop", 2)],
            Some(&overlay()),
            &[("x.zone".into(), zf)],
        );
        assert!(e.is_empty(), "{e:?}");
        let a = d.answer(&Name::from_ascii("nas.mesh.").unwrap(), RecordType::A);
        assert_eq!(a.answers.len(), 2);
        assert_eq!(a.answers[1].record_type(), RecordType::A);
    }

    #[test]
    fn the_example_zone_in_zones_loads_and_answers() {
        let text = include_str!("../../zones/example.zone.sample").to_string();
        let (d, e) = LocalData::build(
            "mesh",
            &[dev("laptop", 2)],
            Some(&overlay()),
            &[("example.zone.sample".into(), text)],
        );
        assert!(e.is_empty(), "{e:?}");
        let q = |n: &str, t| d.answer(&Name::from_ascii(n).unwrap(), t).answers;
        assert_eq!(q("printer.mesh.", RecordType::A).len(), 1);
        assert_eq!(q("media.mesh.", RecordType::AAAA).len(), 1);
        assert_eq!(q("_xmpp-client._tcp.mesh.", RecordType::SRV).len(), 1);
        assert_eq!(q("media.mesh.", RecordType::TXT).len(), 1);
        let nas = q("nas.mesh.", RecordType::A);
        assert_eq!(nas.len(), 2, "CNAME then the device's address: {nas:?}");
        assert_eq!(nas[1].record_type(), RecordType::A);
    }

    #[test]
    fn broken_zone_file_is_reported_and_others_load() {
        let (d, e) = LocalData::build(
            "mesh",
            &[dev("laptop", 2)],
            None,
            &[("bad.zone".into(), "nas IN CNAME\n\"unterminated".into())],
        );
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("bad.zone"));
        let a = d.answer(&Name::from_ascii("laptop.mesh.").unwrap(), RecordType::AAAA);
        assert_eq!(a.answers.len(), 1);
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;

    #[test]
    fn fuzz_zone_files() {
        let example = include_str!("../../zones/example.zone.sample").to_string();
        let seeds = vec![
            example,
            "$TTL 60\n$ORIGIN home.\nnas IN A 10.0.0.2\n".into(),
        ];
        crate::fuzz::run("zone_files", crate::fuzz::text(seeds), |text| {
            let files = [("f.zone".to_string(), text.clone())];
            let (d, _errors) = LocalData::build("mesh", &[], None, &files);
            let _ = d.answer(&Name::from_ascii("nas.mesh.").unwrap(), RecordType::A);
        });
    }
}
