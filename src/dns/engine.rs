//! The resolver's decisions, free of I/O: a query in, an answer or a question for an upstream
//! out.
//!
//! Order (DESIGN.md): access control → rate limit → local names → filter → cache → upstream
//! (with CNAME uncloaking) → DNS64. Drive it like the hub's engine:
//!
//! 1. [`Resolver::handle_query`] takes the query's bytes, the client, the transport and `now`,
//!    and returns a [`Step`]: [`Step::Answered`] (the answer is in `out`), [`Step::Drop`], or
//!    [`Step::Ask`] with a [`Pending`] token that carries what was already decided (the parsed
//!    question, the client's policy and its verdict).
//! 2. The caller asks an upstream what [`Pending::ask`] names, and hands the answer (or the
//!    failure) back with the token and `now` to [`Resolver::handle_upstream`], which returns the
//!    next [`Step`]: DNS64 is a second [`Step::Ask`] (for the A records of a name without AAAA).
//!
//! Nothing here reads a clock, opens a socket or awaits: `dns::service` (TCP, DoT, DoH and the
//! UDP fallback) and `dns::udp_batch` (in-thread UDP forwarding) move the bytes. Cache hits and
//! blocked names are answered without allocating beyond the reused output buffer.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use ipnet::{IpNet, Ipv6Net};

use super::answer;
use super::cache::{self, Cache};
use super::local::LocalData;
use super::ratelimit::RateLimiter;
use super::stats::Stats;
use super::upstream::{UpstreamAnswer, UpstreamError};
use super::wire::{self, Edns, QueryView, WireError};
use crate::filter::{Groups, Policy, Verdict};
use crate::querylog::{QueryLog, Verdict as LogVerdict};

/// How the query arrived: UDP answers are size-limited (TC bit), streams are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Stream,
}

/// What the caller does next with a query.
#[derive(Debug)]
pub enum Step {
    /// `out` holds the answer.
    Answered,
    /// Send nothing (not a query, or a UDP client over its rate).
    Drop,
    /// Ask an upstream [`Pending::ask`], then hand its answer to
    /// [`Resolver::handle_upstream`] with this token.
    Ask(Box<Pending>),
}

/// A query waiting for an upstream, with everything already decided about it.
pub struct Pending {
    /// The client's query up to the end of its question (header and question as sent).
    head: Vec<u8>,
    id: u16,
    flags: u16,
    qname_len: usize,
    qtype: u16,
    qclass: u16,
    edns: Option<Edns>,
    client: IpAddr,
    transport: Transport,
    /// Lower-case, fully qualified.
    name: Name,
    /// Lower-case dotted text without the trailing dot (filter and query log).
    text: String,
    /// The client's group policy (None = the default policy).
    group: Option<(u8, Arc<Policy>)>,
    verdict: Verdict,
    /// When the first upstream question was decided (for the query log's upstream time).
    asked: Instant,
    stage: Stage,
}

/// Which upstream answer a [`Pending`] waits for.
enum Stage {
    /// The answer to the client's own question.
    First,
    /// DNS64: the A records of a name whose AAAA answer (kept here) had none.
    Dns64 { own: UpstreamAnswer },
    /// DNS46: the AAAA records of a name whose A answer (kept here) had none, for a device.
    Dns46 {
        own: UpstreamAnswer,
        device: std::net::Ipv4Addr,
    },
}

impl std::fmt::Debug for Pending {
    /// Names and addresses stay out (they may reach a log).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("qtype", &self.qtype)
            .field("transport", &self.transport)
            .field("dns64", &matches!(self.stage, Stage::Dns64 { .. }))
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// The client's query as a view (no parsing: the fields were kept).
    pub fn query(&self) -> QueryView<'_> {
        QueryView {
            id: self.id,
            flags: self.flags,
            qname: &self.head[wire::HEADER_LEN..wire::HEADER_LEN + self.qname_len],
            qtype: self.qtype,
            qclass: self.qclass,
            question_end: self.head.len(),
            edns: self.edns,
        }
    }

    /// The question to ask the upstream: name and type.
    pub fn ask(&self) -> (&Name, RecordType) {
        let t = match self.stage {
            Stage::First => RecordType::from(self.qtype),
            Stage::Dns64 { .. } => RecordType::A,
            Stage::Dns46 { .. } => RecordType::AAAA,
        };
        (&self.name, t)
    }

    /// The question to ask in wire form (lower-case labels, type, class IN), for a UDP
    /// upstream.
    pub fn put_question(&self, out: &mut Vec<u8>) {
        let qname = &self.head[wire::HEADER_LEN..wire::HEADER_LEN + self.qname_len];
        super::udp_client::put_question(out, qname, u16::from(self.ask().1));
    }

    /// The client that asked.
    pub fn client(&self) -> IpAddr {
        self.client
    }

    /// How the query arrived.
    pub fn transport(&self) -> Transport {
        self.transport
    }
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

/// Where a verdict comes from ([`Resolver::explain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// No rule matches.
    Nothing,
    /// `filter.block`/`filter.allow`, `[groups]` rules, or rules added at run time.
    Rules,
    /// A subscribed, bundled or file list.
    Lists,
}

/// The resolver.
pub struct Resolver {
    settings: Settings,
    pub policy: Policy,
    groups: ArcSwap<Groups>,
    local: ArcSwap<LocalData>,
    cache: Cache,
    pub stats: Arc<Stats>,
    limiter: RateLimiter,
    querylog: QueryLog,
    /// The devices' firewalls: denied and allowlisted sites, and the addresses answers hand out.
    firewall: Arc<crate::firewall::Firewall>,
    /// NAT46's mappings, when DNS46 is on (shared with the hub).
    nat46: Option<Arc<crate::hub::nat46::Nat46>>,
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
        stats: Arc<Stats>,
    ) -> Resolver {
        Resolver {
            limiter: RateLimiter::new(settings.rate_limit),
            cache: Cache::new(settings.cache_size),
            settings,
            policy,
            groups: ArcSwap::from_pointee(Groups::default()),
            local: ArcSwap::from_pointee(local),
            stats,
            querylog: QueryLog::disabled(),
            firewall: Arc::default(),
            nat46: None,
        }
    }

    /// Answers devices' A questions for IPv6-only names from NAT46's pool (shared with the
    /// hub).
    pub fn with_nat46(mut self, n: Option<Arc<crate::hub::nat46::Nat46>>) -> Resolver {
        self.nat46 = n;
        self
    }

    /// Checks and records devices' queries with their firewalls in `fw` (shared with the hub).
    pub fn with_firewall(mut self, fw: Arc<crate::firewall::Firewall>) -> Resolver {
        self.firewall = fw;
        self
    }

    /// Records queries to `log` (which does nothing while the owner has not turned it on).
    pub fn with_querylog(mut self, log: QueryLog) -> Resolver {
        self.querylog = log;
        self
    }

    /// Hands a finished query to the query log when it is on (names never reach the log
    /// otherwise). The log stamps the wall-clock time itself.
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
        let rcode = out.get(3).map(|f| (f & 0x0F) as u16).unwrap_or(0);
        self.querylog
            .record_query(client, name, qtype, verdict, rcode, upstream_ms);
    }

    /// Replaces the group policies (devices, groups or rules changed).
    pub fn set_groups(&self, groups: Groups) {
        self.groups.store(Arc::new(groups));
    }

    /// The filter's verdict for `name` (lower case, no trailing dot) under the policy of a
    /// device at `client` (`None`: the default policy), and where it comes from: the
    /// config's and run-time rules, or the lists.
    pub fn explain(&self, client: Option<IpAddr>, name: &str) -> (Verdict, Source) {
        let group = client.and_then(|c| self.group_of(c));
        let (_, policy) = self.policy_of(&group);
        match policy.rules.load().check(name) {
            Verdict::Pass => match policy.lists.load().check(name) {
                Verdict::Pass => (Verdict::Pass, Source::Nothing),
                v => (v, Source::Lists),
            },
            v => (v, Source::Rules),
        }
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

    /// Takes a query as [`handle_query`](Self::handle_query) does, for the asker a TLS
    /// listener judged: a device named by its DNS token is answered as that device (its
    /// policy, counters and log), with the rate limit applied to the source address as well;
    /// an unknown token is refused.
    pub fn handle_query_as(
        &self,
        query: &[u8],
        asker: super::tokens::Asker,
        transport: Transport,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Step {
        use super::tokens::Asker;
        let refuse = |out: &mut Vec<u8>, counter: &std::sync::atomic::AtomicU64| {
            Stats::bump(&self.stats.queries);
            match QueryView::parse(query) {
                Ok(q) => {
                    Stats::bump(counter);
                    wire::error_answer(&q, query, wire::RCODE_REFUSED, false, out);
                    Step::Answered
                }
                Err(_) => {
                    Stats::bump(&self.stats.malformed);
                    Step::Drop
                }
            }
        };
        match asker {
            Asker::Address(ip) => self.handle_query(query, ip, transport, now, out),
            Asker::UnknownToken { .. } => refuse(out, &self.stats.refused),
            Asker::Device { device, source } => {
                let source = canonical(source);
                if source != device && !self.limiter.allow(source, now) {
                    return refuse(out, &self.stats.rate_limited);
                }
                self.handle_query(query, device, transport, now, out)
            }
        }
    }

    /// Takes a query from `client` at `now`: answers it into `out` when no upstream is
    /// needed (errors, refusals, local names, blocked names, cache hits), or returns the
    /// upstream question to ask.
    pub fn handle_query(
        &self,
        query: &[u8],
        client: IpAddr,
        transport: Transport,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Step {
        // Every decision below uses the canonical form (IPv4-mapped IPv6 → IPv4), made once.
        let client = canonical(client);
        Stats::bump(&self.stats.queries);
        let q = match QueryView::parse(query) {
            Ok(q) => q,
            Err(WireError::Drop) => {
                Stats::bump(&self.stats.malformed);
                return Step::Drop;
            }
            Err(WireError::Malformed { id, flags }) => {
                Stats::bump(&self.stats.malformed);
                wire::header_only_answer(id, flags, wire::RCODE_FORMERR, out);
                return Step::Answered;
            }
            Err(WireError::NotImplemented { id, flags }) => {
                Stats::bump(&self.stats.malformed);
                wire::notimp_answer(id, flags, out);
                return Step::Answered;
            }
        };
        if !self.client_allowed(client) {
            Stats::bump(&self.stats.refused);
            wire::error_answer(&q, query, wire::RCODE_REFUSED, false, out);
            return Step::Answered;
        }
        if !self.limiter.allow(client, now) {
            Stats::bump(&self.stats.rate_limited);
            if transport == Transport::Udp {
                return Step::Drop;
            }
            wire::error_answer(&q, query, wire::RCODE_REFUSED, false, out);
            return Step::Answered;
        }
        if q.qclass != wire::CLASS_IN {
            Stats::bump(&self.stats.refused);
            wire::error_answer(&q, query, wire::RCODE_REFUSED, false, out);
            return Step::Answered;
        }
        if q.edns.is_some_and(|e| e.version > 0) {
            // RFC 6891 §6.1.3: BADVERS is extended rcode 16 = upper bits 1, lower 0.
            wire::error_answer(&q, query, 0, false, out);
            let n = out.len();
            out[n - 6] = 1;
            return Step::Answered;
        }
        NAME_BUF.with(|buf| {
            let mut text = buf.borrow_mut();
            // Common names are read straight off the wire; unusual bytes, and names that may
            // be local, take the general name parser.
            let mut name = None;
            if !q.qname_text(&mut text) || self.maybe_local(&text) {
                let Some(n) = read_name(&q) else {
                    Stats::bump(&self.stats.malformed);
                    wire::error_answer(&q, query, wire::RCODE_FORMERR, false, out);
                    return Step::Answered;
                };
                if self.answer_local(&q, query, client, transport, &n, now, out) {
                    return Step::Answered;
                }
                *text = name_text(&n);
                name = Some(n);
            }
            let fw = self.firewall.device(client);
            if let Some(fw) = &fw {
                let rcode = match fw.dns_check(&text) {
                    crate::firewall::DnsCheck::Pass => None,
                    crate::firewall::DnsCheck::Refuse => Some(wire::RCODE_REFUSED),
                    crate::firewall::DnsCheck::NxDomain => Some(wire::RCODE_NXDOMAIN),
                };
                if let Some(rcode) = rcode {
                    wire::error_answer(&q, query, rcode, false, out);
                    self.count(client, true);
                    self.log_query(client, &text, q.qtype, LogVerdict::Blocked, out, None);
                    return Step::Answered;
                }
            }
            let group = self.group_of(client);
            let (pid, policy) = self.policy_of(&group);
            let verdict = policy.check(&text);
            if verdict == Verdict::Block {
                answer::write_blocked(
                    &q,
                    query,
                    policy.blocked_answer,
                    self.settings.blocked_ttl,
                    out,
                );
                self.count(client, true);
                self.log_query(client, &text, q.qtype, LogVerdict::Blocked, out, None);
                return Step::Answered;
            }
            let mut kb = [0u8; 263];
            let key = cache::key(&q, pid, &mut kb);
            // An A answer without A records is DNS46's to make, for a device it is on for.
            let cached = self.cache.get(key, now).filter(|e| {
                q.qtype != wire::TYPE_A
                    || e.rcode() != wire::RCODE_NOERROR
                    || e.has_record(wire::TYPE_A)
                    || super::dns46::device(self.nat46.as_deref(), client).is_none()
            });
            if let Some(e) = cached {
                e.write_answer(&q, now, out);
                Stats::bump(&self.stats.cache_hits);
                answer::finish(&q, query, transport, out);
                if fw.is_some_and(|fw| !fw.record_answer(&text, out, now)) {
                    wire::error_answer(&q, query, wire::RCODE_REFUSED, false, out);
                    self.count(client, true);
                    self.log_query(client, &text, q.qtype, LogVerdict::Blocked, out, None);
                    return Step::Answered;
                }
                self.count(client, false);
                self.log_query(client, &text, q.qtype, LogVerdict::Cached, out, None);
                return Step::Answered;
            }
            let Some(name) = name.or_else(|| read_name(&q)) else {
                Stats::bump(&self.stats.malformed);
                wire::error_answer(&q, query, wire::RCODE_FORMERR, false, out);
                return Step::Answered;
            };
            Step::Ask(Box::new(Pending {
                head: query[..q.question_end].to_vec(),
                id: q.id,
                flags: q.flags,
                qname_len: q.qname.len(),
                qtype: q.qtype,
                qclass: q.qclass,
                edns: q.edns,
                client,
                transport,
                name,
                text: text.clone(),
                group,
                verdict,
                asked: now,
                stage: Stage::First,
            }))
        })
    }

    /// A cheap over-approximation of "answered from local data"; [`Self::answer_local`]
    /// decides exactly.
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

    /// Answers `name` from local data (devices, zone files, reverse names) when it is local.
    #[allow(clippy::too_many_arguments)]
    fn answer_local(
        &self,
        q: &QueryView<'_>,
        query: &[u8],
        client: IpAddr,
        transport: Transport,
        name: &Name,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> bool {
        let local = self.local.load();
        if !local.is_local(name) {
            return false;
        }
        let qtype = RecordType::from(q.qtype);
        let mut a = local.answer(name, qtype);
        // A guest sees only the local names shared with it.
        if let Some(fw) = self.firewall.device(client) {
            if !fw.local_name_allowed(&name_text(name)) {
                a.rcode = ResponseCode::NXDomain;
                a.answers.clear();
            }
        }
        Stats::bump(&self.stats.local);
        let found = answer::Found {
            rcode: a.rcode,
            answers: a.answers,
            authorities: a.authorities,
        };
        answer::template(q, name, found, true, 0, now).write_answer(q, now, out);
        answer::finish(q, query, transport, out);
        self.count(client, false);
        self.log_query(
            client,
            &name_text(name),
            q.qtype,
            LogVerdict::Local,
            out,
            None,
        );
        true
    }

    /// Takes the upstream's `answer` to `pending` at `now`: answers into `out`, or returns
    /// the next question (DNS64 asks for the A records of a name without AAAA).
    pub fn handle_upstream(
        &self,
        mut pending: Box<Pending>,
        answer: Result<UpstreamAnswer, UpstreamError>,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Step {
        let answer = match std::mem::replace(&mut pending.stage, Stage::First) {
            Stage::First => {
                let a = match answer {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "upstream failed");
                        Stats::bump(&self.stats.upstream_failures);
                        let q = pending.query();
                        wire::error_answer(&q, &pending.head, wire::RCODE_SERVFAIL, false, out);
                        self.count(pending.client, false);
                        let v = LogVerdict::Forwarded;
                        self.log_query(pending.client, &pending.text, q.qtype, v, out, None);
                        return Step::Answered;
                    }
                };
                Stats::bump(&self.stats.forwarded);
                let policy = self.policy_of(&pending.group).1;
                // CNAME uncloaking: a blocked name anywhere in the chain blocks the answer,
                // unless the owner allowed the name asked for.
                if pending.verdict != Verdict::Allow && chain_blocked(policy, &a) {
                    let q = pending.query();
                    answer::write_blocked(
                        &q,
                        &pending.head,
                        policy.blocked_answer,
                        self.settings.blocked_ttl,
                        out,
                    );
                    self.count(pending.client, true);
                    let ms = Some(millis(pending.asked, now));
                    let v = LogVerdict::Blocked;
                    self.log_query(pending.client, &pending.text, q.qtype, v, out, ms);
                    return Step::Answered;
                }
                // RFC 6147 §5.1.1: synthesise only for a name without AAAA of its own.
                let synthesise = self.settings.dns64.is_some()
                    && pending.qtype == wire::TYPE_AAAA
                    && a.rcode == ResponseCode::NoError
                    && !a
                        .answers
                        .iter()
                        .any(|r| r.record_type() == RecordType::AAAA);
                if synthesise {
                    pending.stage = Stage::Dns64 { own: a };
                    return Step::Ask(pending);
                }
                if pending.qtype == wire::TYPE_A && super::dns46::wanted(&a) {
                    if let Some(device) =
                        super::dns46::device(self.nat46.as_deref(), pending.client)
                    {
                        pending.stage = Stage::Dns46 { own: a, device };
                        return Step::Ask(pending);
                    }
                }
                a
            }
            Stage::Dns46 { own, device } => {
                let policy = self.policy_of(&pending.group).1;
                let mine = match (answer, &self.nat46) {
                    (Ok(a6), Some(n)) if !chain_blocked(policy, &a6) => {
                        super::dns46::synthesise(n, device, &a6, now)
                    }
                    _ => None,
                };
                // The device's own answer: not cached (the empty A answer was, for others).
                let a = mine.unwrap_or(own);
                self.answer_forwarded(&pending, a, now, out, false);
                return Step::Answered;
            }
            Stage::Dns64 { own } => match (answer, self.settings.dns64) {
                (Ok(a4), Some(prefix)) if !chain_blocked(self.policy_of(&pending.group).1, &a4) => {
                    answer::synthesise(prefix, &a4).unwrap_or(own)
                }
                _ => own,
            },
        };
        self.answer_forwarded(&pending, answer, now, out, true);
        Step::Answered
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

    /// Answers from an upstream's (uncloaked, synthesised) answer and caches it.
    fn answer_forwarded(
        &self,
        p: &Pending,
        upstream: UpstreamAnswer,
        now: Instant,
        out: &mut Vec<u8>,
        cache: bool,
    ) {
        let q = p.query();
        let ttl = answer::cache_ttl(&upstream);
        let found = answer::Found {
            rcode: upstream.rcode,
            answers: upstream.answers,
            authorities: upstream.authorities,
        };
        // Built once: it answers this query and, when cacheable, the ones after it.
        let entry = Arc::new(answer::template(&q, &p.name, found, false, ttl, now));
        entry.write_answer(&q, now, out);
        answer::finish(&q, &p.head, p.transport, out);
        let ms = Some(millis(p.asked, now));
        let fw = self.firewall.device(p.client);
        if fw.is_some_and(|fw| !fw.record_answer(&p.text, out, now)) {
            // A denied site in the chain (the answer is still cached for the others).
            wire::error_answer(&q, &p.head, wire::RCODE_REFUSED, false, out);
            self.count(p.client, true);
            self.log_query(p.client, &p.text, q.qtype, LogVerdict::Blocked, out, ms);
        } else {
            self.count(p.client, false);
            self.log_query(p.client, &p.text, q.qtype, LogVerdict::Forwarded, out, ms);
        }
        if cache && ttl > 0 && entry.rcode() != wire::RCODE_SERVFAIL {
            let pid = p.group.as_ref().map(|g| g.0).unwrap_or(0);
            let mut kb = [0u8; 263];
            self.cache.insert(cache::key(&q, pid, &mut kb), entry, now);
        }
    }
}

/// The question name, lower-case and fully qualified; `None` when it does not read.
fn read_name(q: &QueryView<'_>) -> Option<Name> {
    let mut name = Name::read(&mut BinDecoder::new(q.qname))
        .ok()?
        .to_lowercase();
    name.set_fqdn(true);
    Some(name)
}

/// Milliseconds from `from` to `to`, for the query log.
fn millis(from: Instant, to: Instant) -> u32 {
    to.saturating_duration_since(from)
        .as_millis()
        .min(u32::MAX as u128) as u32
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

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
