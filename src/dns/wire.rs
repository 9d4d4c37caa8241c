//! A checked view over DNS query bytes for the fast path, and helpers that write answers
//! straight into an output buffer without building a `Message`.
//!
//! Never panics on input from the network: every read is bounds-checked and name walks are
//! bounded (RFC 1035 §4.1.4 compression loops end in [`WireError::Malformed`]).

/// DNS header length (RFC 1035 §4.1.1).
pub const HEADER_LEN: usize = 12;
/// UDP payload size we advertise and cap answers at when the client uses EDNS (DNS flag day 2020).
pub const EDNS_PAYLOAD: u16 = 1232;
/// Classic UDP limit without EDNS (RFC 1035 §4.2.1).
pub const CLASSIC_UDP: usize = 512;

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

/// Why a message could not be taken as a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than a header, or a response: nothing to answer, drop it.
    Drop,
    /// Header readable but the rest is not: answer FORMERR with this id.
    Malformed { id: u16, flags: u16 },
    /// Opcode other than QUERY: answer NOTIMP.
    NotImplemented { id: u16, flags: u16 },
}

/// EDNS(0) facts from the query's OPT record (RFC 6891).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub dnssec_ok: bool,
    pub version: u8,
}

/// A parsed query: one question, optional EDNS.
#[derive(Debug, Clone, Copy)]
pub struct QueryView<'a> {
    pub id: u16,
    pub flags: u16,
    /// The question name exactly as sent (labels, terminated by the root label).
    pub qname: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    /// Offset just past the question.
    pub question_end: usize,
    pub edns: Option<Edns>,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Skips a possibly compressed name starting at `at`; returns the offset after it.
pub fn skip_name(b: &[u8], mut at: usize) -> Option<usize> {
    // A name is at most 255 bytes, so at most 128 labels; more hops means a loop.
    for _ in 0..128 {
        let len = *b.get(at)? as usize;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(at + 1),
            0x00 => at += 1 + len,
            0xC0 => {
                // RFC 1035 §4.1.4: a pointer refers to a *prior* occurrence; a pointer to
                // itself or forward is how compression loops are built, so refuse it.
                let target = ((len & 0x3F) << 8) | *b.get(at + 1)? as usize;
                if target >= at || target < HEADER_LEN {
                    return None;
                }
                return Some(at + 2);
            }
            _ => return None,
        }
    }
    None
}

impl<'a> QueryView<'a> {
    /// Parses a query message.
    pub fn parse(b: &'a [u8]) -> Result<QueryView<'a>, WireError> {
        if b.len() < HEADER_LEN {
            return Err(WireError::Drop);
        }
        let id = u16::from_be_bytes([b[0], b[1]]);
        let flags = u16::from_be_bytes([b[2], b[3]]);
        if flags & 0x8000 != 0 {
            return Err(WireError::Drop);
        }
        let bad = WireError::Malformed { id, flags };
        if (flags >> 11) & 0xF != 0 {
            return Err(WireError::NotImplemented { id, flags });
        }
        let qd = u16::from_be_bytes([b[4], b[5]]);
        let an = u16::from_be_bytes([b[6], b[7]]);
        let ns = u16::from_be_bytes([b[8], b[9]]);
        let ar = u16::from_be_bytes([b[10], b[11]]);
        if qd != 1 || an != 0 || ns != 0 {
            return Err(bad);
        }
        // Question name: plain labels only (a pointer here could only point into the header).
        let mut at = HEADER_LEN;
        loop {
            let len = *b.get(at).ok_or(bad)? as usize;
            if len == 0 {
                at += 1;
                break;
            }
            if len > 63 {
                return Err(bad);
            }
            at += 1 + len;
            if at - HEADER_LEN > 255 {
                return Err(bad);
            }
        }
        let qname = &b[HEADER_LEN..at];
        let qtype = be16(b, at).ok_or(bad)?;
        let qclass = be16(b, at + 2).ok_or(bad)?;
        let question_end = at + 4;
        let mut edns = None;
        let mut pos = question_end;
        for _ in 0..ar {
            let name_end = skip_name(b, pos).ok_or(bad)?;
            let rtype = be16(b, name_end).ok_or(bad)?;
            let class = be16(b, name_end + 2).ok_or(bad)?;
            let ttl_hi = be16(b, name_end + 4).ok_or(bad)?;
            let ttl_lo = be16(b, name_end + 6).ok_or(bad)?;
            let rdlen = be16(b, name_end + 8).ok_or(bad)? as usize;
            let end = name_end + 10 + rdlen;
            if end > b.len() {
                return Err(bad);
            }
            if rtype == TYPE_OPT {
                // RFC 6891 §6.1.1: OPT owner is root, and only one OPT per message.
                if edns.is_some() || name_end != pos + 1 {
                    return Err(bad);
                }
                edns = Some(Edns {
                    udp_size: class.max(CLASSIC_UDP as u16),
                    dnssec_ok: ttl_lo & 0x8000 != 0,
                    version: (ttl_hi & 0xFF) as u8,
                });
            }
            pos = end;
        }
        Ok(QueryView {
            id,
            flags,
            qname,
            qtype,
            qclass,
            question_end,
            edns,
        })
    }

    /// Recursion desired bit.
    pub fn rd(&self) -> bool {
        self.flags & 0x0100 != 0
    }

    /// Checking disabled bit.
    pub fn cd(&self) -> bool {
        self.flags & 0x0010 != 0
    }

    /// The largest answer this client takes over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => (e.udp_size.min(EDNS_PAYLOAD) as usize).max(CLASSIC_UDP),
            None => CLASSIC_UDP,
        }
    }

    /// Writes the question name as lower-case dotted text (no trailing dot; "" for the root)
    /// into `out`. Returns false when a label holds a byte that is not a letter, digit, '-' or
    /// '_' (such names take the general path).
    pub fn qname_text(&self, out: &mut String) -> bool {
        name_text(self.qname, out)
    }
}

/// Uncompressed wire labels → lower-case dotted text; false for unusual bytes.
pub fn name_text(labels: &[u8], out: &mut String) -> bool {
    out.clear();
    let mut at = 0;
    while let Some(&len) = labels.get(at) {
        let len = len as usize;
        if len == 0 {
            return true;
        }
        let Some(label) = labels.get(at + 1..at + 1 + len) else {
            return false;
        };
        if !out.is_empty() {
            out.push('.');
        }
        for &c in label {
            if !(c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
                return false;
            }
            out.push(c.to_ascii_lowercase() as char);
        }
        at += 1 + len;
    }
    false
}

/// Response flags for a query: QR, the query's opcode/RD/CD, RA, and `rcode`.
pub fn response_flags(query_flags: u16, rcode: u8, aa: bool) -> u16 {
    0x8000 | (query_flags & 0x7910) | 0x0080 | if aa { 0x0400 } else { 0 } | rcode as u16
}

/// A header-only NOTIMP answer to a query with an opcode we do not implement (RFC 1035
/// §4.1.1): the id, opcode and RD are echoed, and nothing else is claimed — no RA (no
/// recursion was offered for it) and no CD (a DNSSEC flag of a QUERY). ISC's compliance tester
/// (`genreport`) checks exactly this.
pub fn notimp_answer(id: u16, query_flags: u16, out: &mut Vec<u8>) {
    out.clear();
    let flags = 0x8000 | (query_flags & 0x7900) | RCODE_NOTIMP as u16;
    put_header(out, id, flags, [0; 4]);
}

/// Appends a header.
pub fn put_header(out: &mut Vec<u8>, id: u16, flags: u16, counts: [u16; 4]) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
}

/// Appends our OPT record (root owner, 1232-byte payload, DO echoed).
pub fn put_opt(out: &mut Vec<u8>, dnssec_ok: bool) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
}

/// Writes a header-and-question-only answer with `rcode` (used for errors and TC).
pub fn error_answer(q: &QueryView<'_>, query: &[u8], rcode: u8, tc: bool, out: &mut Vec<u8>) {
    out.clear();
    let mut flags = response_flags(q.flags, rcode, false);
    if tc {
        flags |= 0x0200;
    }
    put_header(out, q.id, flags, [1, 0, 0, q.edns.is_some() as u16]);
    out.extend_from_slice(&query[HEADER_LEN..q.question_end]);
    if let Some(e) = q.edns {
        put_opt(out, e.dnssec_ok);
    }
}

/// Writes a bare header answer (no question) for messages whose question could not be read.
pub fn header_only_answer(id: u16, query_flags: u16, rcode: u8, out: &mut Vec<u8>) {
    out.clear();
    put_header(out, id, response_flags(query_flags, rcode, false), [0; 4]);
}

/// Offsets of every TTL field in a message's answer, authority and additional sections
/// (OPT excluded), with their values. `None` when the message does not walk cleanly.
pub fn ttl_fields(b: &[u8]) -> Option<Vec<(u16, u32)>> {
    let qd = be16(b, 4)?;
    let rr = be16(b, 6)? as usize + be16(b, 8)? as usize + be16(b, 10)? as usize;
    let mut at = HEADER_LEN;
    for _ in 0..qd {
        at = skip_name(b, at)? + 4;
    }
    let mut out = Vec::with_capacity(rr);
    for _ in 0..rr {
        let n = skip_name(b, at)?;
        let rtype = be16(b, n)?;
        let ttl = u32::from_be_bytes(b.get(n + 4..n + 8)?.try_into().ok()?);
        let rdlen = be16(b, n + 8)? as usize;
        if rtype != TYPE_OPT {
            out.push((u16::try_from(n + 4).ok()?, ttl));
        }
        at = n + 10 + rdlen;
        if at > b.len() {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[&str], qtype: u16, edns: bool) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, edns as u8];
        for l in name {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        if edns {
            q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0]);
        }
        q
    }

    #[test]
    fn parses_a_plain_query_with_edns() {
        let b = query(&["WWW", "Example", "com"], TYPE_AAAA, true);
        let q = QueryView::parse(&b).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.qtype, TYPE_AAAA);
        assert_eq!(q.edns.unwrap().udp_size, 4096);
        assert!(q.edns.unwrap().dnssec_ok);
        assert_eq!(q.udp_limit(), EDNS_PAYLOAD as usize);
        let mut s = String::new();
        assert!(q.qname_text(&mut s));
        assert_eq!(s, "www.example.com");
    }

    #[test]
    fn zero_or_two_questions_are_formerr() {
        let mut b = query(&["a"], TYPE_A, false);
        b[5] = 0;
        assert!(matches!(
            QueryView::parse(&b),
            Err(WireError::Malformed { .. })
        ));
        b[5] = 2;
        assert!(matches!(
            QueryView::parse(&b),
            Err(WireError::Malformed { .. })
        ));
    }

    #[test]
    fn other_opcodes_are_notimp_and_responses_dropped() {
        let mut b = query(&["a"], TYPE_A, false);
        b[2] |= 0x28; // opcode 5 (UPDATE)
        assert!(matches!(
            QueryView::parse(&b),
            Err(WireError::NotImplemented { .. })
        ));
        let Err(WireError::NotImplemented { id, flags }) = QueryView::parse(&b) else {
            unreachable!()
        };
        let mut out = Vec::new();
        // The query asked with CD set.
        notimp_answer(id, flags | 0x0010, &mut out);
        let f = u16::from_be_bytes([out[2], out[3]]);
        assert_eq!(f & 0x8000, 0x8000, "a response");
        assert_eq!((f >> 11) & 0xF, 5, "opcode echoed");
        assert_eq!(f & 0x0100, flags & 0x0100, "RD echoed");
        assert_eq!(f & 0x0080, 0, "no RA");
        assert_eq!(f & 0x0010, 0, "no CD");
        assert_eq!(f & 0xF, u16::from(RCODE_NOTIMP));
        assert_eq!(out.len(), HEADER_LEN);
        let mut r = query(&["a"], TYPE_A, false);
        r[2] |= 0x80;
        assert_eq!(QueryView::parse(&r).unwrap_err(), WireError::Drop);
        assert_eq!(QueryView::parse(&[1, 2, 3]).unwrap_err(), WireError::Drop);
    }

    #[test]
    fn compression_loop_in_additional_is_formerr() {
        let mut b = query(&["a"], TYPE_A, false);
        b[11] = 1;
        let at = b.len() as u8;
        b.extend_from_slice(&[0xC0, at]); // points at itself
        b.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            QueryView::parse(&b),
            Err(WireError::Malformed { .. })
        ));
    }

    #[test]
    fn two_opt_records_are_formerr() {
        let mut b = query(&["a"], TYPE_A, true);
        b[11] = 2;
        b.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            QueryView::parse(&b),
            Err(WireError::Malformed { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = QueryView::parse(&b);
            let _ = ttl_fields(&b);
            let _ = skip_name(&b, 0);
        }

        #[test]
        fn mutated_queries_never_panic(i in 0usize..40, v in proptest::prelude::any::<u8>()) {
            let mut b = query(&["www", "example", "com"], TYPE_A, true);
            if i < b.len() { b[i] = v; }
            if let Ok(q) = QueryView::parse(&b) {
                let mut s = String::new();
                let _ = q.qname_text(&mut s);
                let mut out = Vec::new();
                error_answer(&q, &b, RCODE_FORMERR, false, &mut out);
                assert!(out.len() >= HEADER_LEN);
            }
        }
    }
}
