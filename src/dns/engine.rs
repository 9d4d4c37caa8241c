//! The resolver's decisions: a query in, an answer out.
//!
//! Order (DESIGN.md): access control → rate limit → local names → filter → cache → upstream
//! (with CNAME uncloaking) → DNS64. [`Resolver::handle_fast`] answers refusals, blocked names
//! and cache hits synchronously into a reused buffer; everything else returns
//! [`Fast::Slow`] and goes through [`Resolver::handle`].

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::AAAA;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use ipnet::{IpNet, Ipv6Net};

use super::cache::{self, Cache, Entry, MAX_NEGATIVE_TTL, MAX_TTL};
use super::local::LocalData;
use super::ratelimit::RateLimiter;
use super::stats::Stats;
use super::upstream::{UpstreamAnswer, Upstreams};
use super::wire::{self, QueryView, WireError};
use crate::config::BlockedAnswer;
use crate::filter::{Groups, Policy, Verdict};
use crate::querylog::{QueryEvent, QueryLog, Verdict as LogVerdict};

/// How the query arrived: UDP answers are size-limited (TC bit), streams are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Stream,
}

/// Outcome of the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fast {
    /// `out` holds the answer.
    Answered,
    /// Send nothing.
    Drop,
    /// Needs the general path ([`Resolver::handle`]).
    Slow,
    /// Not local, not blocked, not cached: needs an upstream. The general path handles it,
    /// or a UDP listener forwards it itself and finishes it with
    /// [`Resolver::complete_forward`].
    Miss,
}

/// Settings the resolver runs with (fixed for the process lifetime, but for the overlay).
#[derive(Debug, Clone)]
pub struct Settings {
    pub dns64: Option<Ipv6Net>,
    pub blocked_ttl: u32,
    pub allow_from: Vec<IpNet>,
    pub overlay: Vec<IpNet>,
    pub rate_limit: u32,
    pub cache_size: usize,
}

/// The resolver.
pub struct Resolver {
    settings: Settings,
    pub policy: Policy,
    groups: ArcSwap<Groups>,
    local: ArcSwap<LocalData>,
    cache: Cache,
    upstreams: Arc<Upstreams>,
    pub stats: Arc<Stats>,
    limiter: RateLimiter,
    querylog: QueryLog,
}

thread_local! {
    static NAME_BUF: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(256));
}

impl Resolver {
    /// A resolver over the given parts.
    pub fn new(
        settings: Settings,
        policy: Policy,
        local: LocalData,
        upstreams: Arc<Upstreams>,
        stats: Arc<Stats>,
    ) -> Resolver {
        Resolver {
            limiter: RateLimiter::new(settings.rate_limit),
            cache: Cache::new(settings.cache_size),
            settings,
            policy,
            groups: ArcSwap::from_pointee(Groups::default()),
            local: ArcSwap::from_pointee(local),
            upstreams,
            stats,
            querylog: QueryLog::disabled(),
        }
    }

    /// Records queries to `log` (which does nothing while the owner has not turned it on).
    pub fn with_querylog(mut self, log: QueryLog) -> Resolver {
        self.querylog = log;
        self
    }

    /// Hands a finished query to the query log when it is on (names never reach the log
    /// otherwise).
    fn log_query(
        &self,
        client: IpAddr,
        name: &str,
        qtype: u16,
        verdict: LogVerdict,
        out: &[u8],
        upstream_ms: Option<u32>,
    ) {
        if !self.querylog.is_enabled() {
            return;
        }
        self.querylog.record(QueryEvent {
            time: std::time::SystemTime::now(),
            client,
            name: name.to_string(),
            qtype,
            verdict,
            rcode: out.get(3).map(|f| (f & 0x0F) as u16).unwrap_or(0),
            upstream_ms,
        });
    }

    /// Replaces the group policies (devices, groups or rules changed).
    pub fn set_groups(&self, groups: Groups) {
        self.groups.store(Arc::new(groups));
    }

    /// The group policy of `client` (a canonical address), if its device is in a group.
    fn group_of(&self, client: IpAddr) -> Option<(u8, Arc<Policy>)> {
        let g = self.groups.load();
        if g.by_ip.is_empty() {
            return None;
        }
        g.by_ip.get(&client).cloned()
    }

    /// The policy id (0 = default, part of cache keys) and policy for a client's group.
    fn policy_of<'a>(&'a self, group: &'a Option<(u8, Arc<Policy>)>) -> (u8, &'a Policy) {
        match group {
            Some((id, p)) => (*id, &**p),
            None => (0, &self.policy),
        }
    }

    /// Replaces the local data (devices or zone files changed).
    pub fn set_local(&self, local: LocalData) {
        self.local.store(Arc::new(local));
    }

    /// The upstream pool (one per process: list downloads resolve their hosts with it too).
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// Number of cached answers.
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Forgets every cached answer (after a filter change).
    pub fn clear_cache(&self) {
        self.cache.clear();
    }

    fn client_allowed(&self, ip: IpAddr) -> bool {
        ip.is_loopback()
            || self.settings.overlay.iter().any(|n| n.contains(&ip))
            || self.settings.allow_from.iter().any(|n| n.contains(&ip))
    }

    fn is_overlay(&self, ip: IpAddr) -> bool {
        self.settings.overlay.iter().any(|n| n.contains(&ip))
    }

    /// Answers what can be answered without waiting: errors, refusals, blocked names, cache hits.
    pub fn handle_fast(
        &self,
        query: &[u8],
        client: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Fast {
        // Every decision below uses the canonical form (IPv4-mapped IPv6 → IPv4), made once.
        let client = canonical(client);
        Stats::bump(&self.stats.queries);
        let q = match QueryView::parse(query) {
            Ok(q) => q,
            Err(WireError::Drop) => {
                Stats::bump(&self.stats.malformed);
                return Fast::Drop;
            }
            Err(WireError::Malformed { id, flags }) => {
                Stats::bump(&self.stats.malformed);
                wire::header_only_answer(id, flags, wire::RCODE_FORMERR, out);
                return Fast::Answered;
            }
            Err(WireError::NotImplemented { id, flags }) => {
                Stats::bump(&self.stats.malformed);
                wire::notimp_answer(id, flags, out);
                return Fast::Answered;
            }
        };
        if !self.client_allowed(client) {
            Stats::bump(&self.stats.refused);
            wire::error_answer(&q, query, wire::RCODE_REFUSED, false, out);
            return Fast::Answered;
        }
        let now = Instant::now();
        if !self.limiter.allow(client, now) {
            Stats::bump(&self.stats.rate_limited);
            if transport == Transport::Udp {
                return Fast::Drop;
            }
            wire::error_answer(&q, query, wire::RCODE_REFUSED, false, out);
            return Fast::Answered;
        }
        if q.qclass != wire::CLASS_IN {
            Stats::bump(&self.stats.refused);
            wire::error_answer(&q, query, wire::RCODE_REFUSED, false, out);
            return Fast::Answered;
        }
        if q.edns.is_some_and(|e| e.version > 0) {
            // RFC 6891 §6.1.3: BADVERS is extended rcode 16 = upper bits 1, lower 0.
            wire::error_answer(&q, query, 0, false, out);
            let n = out.len();
            out[n - 6] = 1;
            return Fast::Answered;
        }
        NAME_BUF.with(|buf| {
            let mut name = buf.borrow_mut();
            if !q.qname_text(&mut name) || self.maybe_local(&name) {
                return Fast::Slow;
            }
            let group = self.group_of(client);
            let (pid, policy) = self.policy_of(&group);
            if policy.check(&name) == Verdict::Block {
                self.write_blocked(&q, query, policy.blocked_answer, out);
                self.count(client, true);
                self.log_query(client, &name, q.qtype, LogVerdict::Blocked, out, None);
                return Fast::Answered;
            }
            let mut kb = [0u8; 263];
            let key = cache::key(&q, pid, &mut kb);
            if let Some(e) = self.cache.get(key, now) {
                e.write_answer(&q, now, out);
                Stats::bump(&self.stats.cache_hits);
                self.finish(&q, query, transport, out);
                self.count(client, false);
                self.log_query(client, &name, q.qtype, LogVerdict::Cached, out, None);
                return Fast::Answered;
            }
            Fast::Miss
        })
    }

    /// A cheap over-approximation of "answered from local data"; the slow path decides exactly.
    fn maybe_local(&self, name: &str) -> bool {
        name.ends_with(".arpa") || {
            let local = self.local.load();
            local.zone_suffixes().iter().any(|z| {
                name == z.as_str()
                    || (name.len() > z.len()
                        && name.ends_with(z.as_str())
                        && name.as_bytes()[name.len() - z.len() - 1] == b'.')
            })
        }
    }

    fn count(&self, client: IpAddr, blocked: bool) {
        Stats::bump(&self.stats.answered);
        if blocked {
            Stats::bump(&self.stats.blocked);
        }
        if self.is_overlay(client) {
            self.stats.count_client(client, blocked);
        }
    }

    /// Applies the UDP size limit (TC bit) to a finished answer.
    fn finish(&self, q: &QueryView<'_>, query: &[u8], transport: Transport, out: &mut Vec<u8>) {
        if transport == Transport::Udp && out.len() > q.udp_limit() {
            let rcode = out.get(3).map(|f| f & 0x0F).unwrap_or(0);
            wire::error_answer(q, query, rcode, true, out);
        }
    }

    fn write_blocked(
        &self,
        q: &QueryView<'_>,
        query: &[u8],
        mode: BlockedAnswer,
        out: &mut Vec<u8>,
    ) {
        match mode {
            BlockedAnswer::Nxdomain => {
                wire::error_answer(q, query, wire::RCODE_NXDOMAIN, false, out)
            }
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
                    out.extend_from_slice(&self.settings.blocked_ttl.to_be_bytes());
                    out.extend_from_slice(&(rdlen as u16).to_be_bytes());
                    out.extend(std::iter::repeat_n(0u8, rdlen));
                }
                if let Some(e) = q.edns {
                    wire::put_opt(out, e.dnssec_ok);
                }
            }
        }
    }

    /// Answers a query: the fast path, then local data or the upstreams. `None` = send nothing.
    pub async fn handle(
        &self,
        query: &[u8],
        client: IpAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        match self.handle_fast(query, client, transport, &mut out) {
            Fast::Answered => Some(out),
            Fast::Drop => None,
            Fast::Slow | Fast::Miss => {
                self.handle_slow(query, client, transport, &mut out).await;
                Some(out)
            }
        }
    }

    /// The general path, for queries [`handle_fast`](Self::handle_fast) returned `Slow` for.
    pub async fn handle_slow(
        &self,
        query: &[u8],
        client: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) {
        let client = canonical(client);
        let Ok(q) = QueryView::parse(query) else {
            return;
        };
        let Ok(name) = Name::read(&mut BinDecoder::new(q.qname)) else {
            Stats::bump(&self.stats.malformed);
            wire::error_answer(&q, query, wire::RCODE_FORMERR, false, out);
            return;
        };
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        let qtype = RecordType::from(q.qtype);
        let now = Instant::now();

        let local = self.local.load_full();
        if local.is_local(&name) {
            let a = local.answer(&name, qtype);
            Stats::bump(&self.stats.local);
            self.template(
                &q,
                &name,
                qtype,
                a.rcode,
                a.answers,
                a.authorities,
                true,
                0,
                now,
            )
            .write_answer(&q, now, out);
            self.finish(&q, query, transport, out);
            self.count(client, false);
            self.log_query(
                client,
                &name_text(&name),
                q.qtype,
                LogVerdict::Local,
                out,
                None,
            );
            return;
        }

        let text = name_text(&name);
        let group = self.group_of(client);
        let (pid, policy) = self.policy_of(&group);
        let verdict = policy.check(&text);
        if verdict == Verdict::Block {
            self.write_blocked(&q, query, policy.blocked_answer, out);
            self.count(client, true);
            self.log_query(client, &text, q.qtype, LogVerdict::Blocked, out, None);
            return;
        }

        let asked = Instant::now();
        let answer = match self.upstreams.query(name.clone(), qtype).await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "upstream failed");
                Stats::bump(&self.stats.upstream_failures);
                wire::error_answer(&q, query, wire::RCODE_SERVFAIL, false, out);
                self.count(client, false);
                self.log_query(client, &text, q.qtype, LogVerdict::Forwarded, out, None);
                return;
            }
        };
        let upstream_ms = Some(asked.elapsed().as_millis().min(u32::MAX as u128) as u32);
        Stats::bump(&self.stats.forwarded);

        // CNAME uncloaking: a blocked name anywhere in the chain blocks the answer, unless the
        // owner allowed the name asked for.
        if verdict != Verdict::Allow && chain_blocked(policy, &answer) {
            self.write_blocked(&q, query, policy.blocked_answer, out);
            self.count(client, true);
            self.log_query(
                client,
                &text,
                q.qtype,
                LogVerdict::Blocked,
                out,
                upstream_ms,
            );
            return;
        }

        let answer = match self.settings.dns64 {
            Some(prefix) if qtype == RecordType::AAAA => {
                self.dns64(&name, prefix, policy, answer).await
            }
            _ => answer,
        };

        let f = Forwarded {
            q: &q,
            query,
            transport,
            client,
            pid,
            text: &text,
            name: &name,
            qtype,
        };
        self.answer_forwarded(&f, answer, upstream_ms, now, out);
    }

    /// The upstream a UDP listener may forward misses to itself, when the upstream asked
    /// first is a `udp://` one.
    pub fn forward_udp_to(&self) -> Option<std::net::SocketAddr> {
        self.upstreams.preferred_udp()
    }

    /// Finishes a query that [`handle_fast`](Self::handle_fast) called a [`Fast::Miss`], from
    /// the upstream's `answer` bytes (a UDP listener forwarded it): the same steps as the
    /// general path after its upstream answered. False when this answer needs the general
    /// path (truncated, an upstream error, an AAAA to synthesise, unreadable): nothing was
    /// written or counted then.
    pub fn complete_forward(
        &self,
        query: &[u8],
        client: IpAddr,
        answer: &[u8],
        asked: Instant,
        out: &mut Vec<u8>,
    ) -> bool {
        let client = canonical(client);
        let Ok(q) = QueryView::parse(query) else {
            return false;
        };
        let truncated = answer.get(2).is_some_and(|f| f & 0x02 != 0);
        if truncated {
            return false;
        }
        let Ok(msg) = Message::from_vec(answer) else {
            return false;
        };
        let rcode = msg.metadata.response_code;
        if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
            return false;
        }
        // DNS64 has work to do only when a name has no AAAA of its own (RFC 6147 §5.1.1):
        // that needs a second question, which the general path asks.
        let synthesise = self.settings.dns64.is_some()
            && q.qtype == wire::TYPE_AAAA
            && rcode == ResponseCode::NoError
            && !msg
                .answers
                .iter()
                .any(|r| r.record_type() == RecordType::AAAA);
        if synthesise {
            return false;
        }
        let Ok(name) = Name::read(&mut BinDecoder::new(q.qname)) else {
            return false;
        };
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        let text = name_text(&name);
        let group = self.group_of(client);
        let (pid, policy) = self.policy_of(&group);
        let verdict = policy.check(&text);
        let upstream_ms = Some(asked.elapsed().as_millis().min(u32::MAX as u128) as u32);
        Stats::bump(&self.stats.forwarded);
        let answer = UpstreamAnswer {
            rcode,
            answers: msg.answers,
            authorities: msg.authorities,
        };
        if verdict != Verdict::Allow && chain_blocked(policy, &answer) {
            self.write_blocked(&q, query, policy.blocked_answer, out);
            self.count(client, true);
            let v = LogVerdict::Blocked;
            self.log_query(client, &text, q.qtype, v, out, upstream_ms);
            return true;
        }
        let f = Forwarded {
            q: &q,
            query,
            transport: Transport::Udp,
            client,
            pid,
            text: &text,
            name: &name,
            qtype: RecordType::from(q.qtype),
        };
        self.answer_forwarded(&f, answer, upstream_ms, Instant::now(), out);
        true
    }

    /// Answers from an upstream's (uncloaked) answer and caches it.
    fn answer_forwarded(
        &self,
        f: &Forwarded<'_>,
        answer: UpstreamAnswer,
        upstream_ms: Option<u32>,
        now: Instant,
        out: &mut Vec<u8>,
    ) {
        let q = f.q;
        let ttl = cache_ttl(&answer);
        // Built once: it answers this query and, when cacheable, the ones after it.
        let entry = Arc::new(self.template(
            q,
            f.name,
            f.qtype,
            answer.rcode,
            answer.answers,
            answer.authorities,
            false,
            ttl,
            now,
        ));
        entry.write_answer(q, now, out);
        self.finish(q, f.query, f.transport, out);
        self.count(f.client, false);
        let v = LogVerdict::Forwarded;
        self.log_query(f.client, f.text, q.qtype, v, out, upstream_ms);
        if ttl > 0 && entry.rcode() != wire::RCODE_SERVFAIL {
            let mut kb = [0u8; 263];
            self.cache.insert(cache::key(q, f.pid, &mut kb), entry);
        }
    }

    /// RFC 6147 §5.1: synthesise AAAA from A when the name has no AAAA of its own.
    async fn dns64(
        &self,
        name: &Name,
        prefix: Ipv6Net,
        policy: &Policy,
        answer: UpstreamAnswer,
    ) -> UpstreamAnswer {
        let has_aaaa = answer
            .answers
            .iter()
            .any(|r| r.record_type() == RecordType::AAAA);
        if answer.rcode != ResponseCode::NoError || has_aaaa {
            return answer;
        }
        let Ok(a) = self.upstreams.query(name.clone(), RecordType::A).await else {
            return answer;
        };
        if chain_blocked(policy, &a) {
            return answer;
        }
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
        if !synth.iter().any(|r| r.record_type() == RecordType::AAAA) {
            return answer;
        }
        UpstreamAnswer {
            rcode: ResponseCode::NoError,
            answers: synth,
            authorities: vec![],
        }
    }

    /// Builds the reusable answer (id 0, lower-case question, no OPT), living `ttl` seconds
    /// from `now`. A message that cannot be emitted becomes a bare SERVFAIL.
    #[allow(clippy::too_many_arguments)]
    fn template(
        &self,
        q: &QueryView<'_>,
        name: &Name,
        qtype: RecordType,
        rcode: ResponseCode,
        answers: Vec<Record>,
        authorities: Vec<Record>,
        authoritative: bool,
        ttl: u32,
        now: Instant,
    ) -> Entry {
        let mut m = Message::new(0, MessageType::Response, OpCode::Query);
        m.metadata.recursion_available = true;
        m.metadata.authoritative = authoritative;
        m.metadata.response_code = rcode;
        m.metadata.recursion_desired = q.rd();
        let mut query = Query::query(name.clone(), qtype);
        query.set_query_class(DNSClass::IN);
        m.add_query(query);
        m.insert_answers(answers);
        m.insert_authorities(authorities);
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
}

/// A forwarded query on its way to its answer.
struct Forwarded<'a> {
    q: &'a QueryView<'a>,
    query: &'a [u8],
    transport: Transport,
    client: IpAddr,
    /// Policy id (0 = the default policy), part of the cache key.
    pid: u8,
    text: &'a str,
    name: &'a Name,
    qtype: RecordType,
}

/// CNAME uncloaking: true when a CNAME target in the answer is blocked by `policy`.
fn chain_blocked(policy: &Policy, a: &UpstreamAnswer) -> bool {
    policy.blocks_any(a.answers.iter().filter_map(|r| match &r.data {
        RData::CNAME(c) => Some(name_text(&c.0)),
        _ => None,
    }))
}

/// Lower-case dotted text of a name without the trailing dot.
fn name_text(n: &Name) -> String {
    let s = n.to_ascii().to_ascii_lowercase();
    s.strip_suffix('.').map(str::to_string).unwrap_or(s)
}

/// IPv4-mapped IPv6 client addresses count as their IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// How long an answer may be cached: the smallest TTL in it, or for a negative answer the
/// SOA's TTL and MINIMUM (RFC 2308 §5); 0 = do not cache.
fn cache_ttl(a: &UpstreamAnswer) -> u32 {
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
