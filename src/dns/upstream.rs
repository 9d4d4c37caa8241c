//! Upstream resolvers (hickory-resolver): `udp://`, `tcp://`, `tls://`, `https://`.

use std::net::{IpAddr, SocketAddr};

/// A parsed `dns.upstreams` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamSpec {
    /// Plain DNS over UDP (falls back to TCP on truncation).
    Udp(SocketAddr),
    /// Plain DNS over TCP.
    Tcp(SocketAddr),
    /// DNS-over-TLS with the name the certificate must carry.
    Tls { addr: SocketAddr, name: String },
    /// DNS-over-HTTPS: host (name or IP), port, path; `ip` when given as `#IP` or host is an IP.
    Https {
        host: String,
        port: u16,
        path: String,
        ip: Option<IpAddr>,
    },
}

/// An upstream URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{url:?}: {why}; expected udp://IP[:port], tcp://IP[:port], tls://IP[:port]#name or https://host[:port]/path")]
pub struct SpecError {
    url: String,
    why: &'static str,
}

fn sock(s: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

impl UpstreamSpec {
    /// Parses one upstream URL.
    pub fn parse(url: &str) -> Result<UpstreamSpec, SpecError> {
        let err = |why| SpecError {
            url: url.to_string(),
            why,
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| err("no scheme"))?;
        match scheme {
            "udp" | "tcp" => {
                let a = sock(rest, 53).ok_or_else(|| err("not an IP address"))?;
                Ok(if scheme == "udp" {
                    UpstreamSpec::Udp(a)
                } else {
                    UpstreamSpec::Tcp(a)
                })
            }
            "tls" => {
                let (addr, name) = rest
                    .split_once('#')
                    .ok_or_else(|| err("DoT needs the certificate name after '#'"))?;
                let addr = sock(addr, 853).ok_or_else(|| err("not an IP address"))?;
                if !super::name::is_valid_zone(name) {
                    return Err(err("the name after '#' is not a DNS name"));
                }
                Ok(UpstreamSpec::Tls {
                    addr,
                    name: name.to_string(),
                })
            }
            "https" => {
                let (rest, ip) = match rest.split_once('#') {
                    Some((r, ip)) => (
                        r,
                        Some(
                            ip.parse::<IpAddr>()
                                .map_err(|_| err("'#' must be followed by an IP"))?,
                        ),
                    ),
                    None => (rest, None),
                };
                let (hostport, path) = match rest.find('/') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, "/dns-query"),
                };
                let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
                    let (h, p) = h.split_once(']').ok_or_else(|| err("unclosed '['"))?;
                    let port = match p.strip_prefix(':') {
                        Some(p) => p.parse().map_err(|_| err("bad port"))?,
                        None => 443,
                    };
                    (h.to_string(), port)
                } else {
                    match hostport.rsplit_once(':') {
                        Some((h, p)) => (h.to_string(), p.parse().map_err(|_| err("bad port"))?),
                        None => (hostport.to_string(), 443),
                    }
                };
                if host.is_empty() {
                    return Err(err("no host"));
                }
                let ip = ip.or_else(|| host.parse().ok());
                if ip.is_none() && !super::name::is_valid_zone(&host) {
                    return Err(err("host is neither an IP nor a DNS name"));
                }
                Ok(UpstreamSpec::Https {
                    host,
                    port,
                    path: path.to_string(),
                    ip,
                })
            }
            _ => Err(err("unknown scheme")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        assert_eq!(
            UpstreamSpec::parse("udp://127.0.0.1:5353").unwrap(),
            UpstreamSpec::Udp("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            UpstreamSpec::parse("tcp://::1").unwrap(),
            UpstreamSpec::Tcp("[::1]:53".parse().unwrap())
        );
        assert_eq!(
            UpstreamSpec::parse("tls://9.9.9.9:853#dns.quad9.net").unwrap(),
            UpstreamSpec::Tls {
                addr: "9.9.9.9:853".parse().unwrap(),
                name: "dns.quad9.net".into()
            }
        );
        assert_eq!(
            UpstreamSpec::parse("https://dns.example/q").unwrap(),
            UpstreamSpec::Https {
                host: "dns.example".into(),
                port: 443,
                path: "/q".into(),
                ip: None
            }
        );
        assert!(UpstreamSpec::parse("tls://9.9.9.9").is_err());
        assert!(UpstreamSpec::parse("ftp://x").is_err());
    }
}

mod pool {
    //! The running upstream pool (hickory-resolver's name server pool: fail-over, connection
    //! reuse, TLS and HTTPS transports).
    use super::UpstreamSpec;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::StreamExt;
    use hickory_proto::op::{DnsRequestOptions, Query, ResponseCode};
    use hickory_proto::rr::{Name, Record, RecordType};
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverOpts};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::net::{DnsError, DnsHandle, NetError};
    use hickory_resolver::{NameServerPool, PoolContext, TlsConfig};

    /// Why upstreams could not be set up or did not answer.
    #[derive(Debug, thiserror::Error)]
    pub enum UpstreamError {
        /// `upstream_ca` could not be read or holds no certificate.
        #[error("upstream_ca {path}: {why}")]
        Ca { path: String, why: String },
        /// The host of an `https://` upstream could not be resolved at start.
        #[error("cannot resolve the DoH upstream host {host:?} at start: {why}; give its address as https://{host}/path#IP")]
        Bootstrap { host: String, why: String },
        /// A `dns.upstreams` entry is not a usable URL.
        #[error(transparent)]
        Spec(#[from] super::SpecError),
        /// Every upstream failed or timed out.
        #[error("no upstream answered: {0}")]
        Failed(String),
    }

    /// An upstream's answer, negative answers included.
    #[derive(Debug, Clone)]
    pub struct UpstreamAnswer {
        pub rcode: ResponseCode,
        pub answers: Vec<Record>,
        pub authorities: Vec<Record>,
    }

    impl UpstreamAnswer {
        /// Reads an upstream's answer from its bytes. One that does not parse, or answers
        /// other than NOERROR or NXDOMAIN, is an error: the caller fails over.
        pub fn from_wire(bytes: &[u8]) -> Result<UpstreamAnswer, UpstreamError> {
            let msg = hickory_proto::op::Message::from_vec(bytes)
                .map_err(|e| UpstreamError::Failed(e.to_string()))?;
            let rcode = msg.metadata.response_code;
            if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
                return Err(UpstreamError::Failed(format!("upstream answered {rcode}")));
            }
            Ok(UpstreamAnswer {
                rcode,
                answers: msg.answers,
                authorities: msg.authorities,
            })
        }
    }

    /// One configured upstream: hickory-resolver's pool for its transport, plus the
    /// long-lived-socket client for `udp://` (the pool then only serves TCP after truncation).
    struct Server {
        pool: NameServerPool<TokioRuntimeProvider>,
        fast: Option<crate::dns::udp_client::UdpClient>,
    }

    /// The configured upstreams, tried in order from the last one that answered.
    pub struct Upstreams {
        servers: Vec<Server>,
        preferred: AtomicUsize,
        timeout: Duration,
        health: Vec<Health>,
    }

    /// How one upstream has been doing (for metrics; no names, no addresses).
    pub struct Health {
        /// `udp`, `tcp`, `tls` or `https`.
        pub transport: &'static str,
        /// Seconds from asking to a usable answer.
        pub latency: prometheus_client::metrics::histogram::Histogram,
        /// Timeouts, errors, garbage and SERVFAIL/REFUSED answers.
        pub failures: std::sync::atomic::AtomicU64,
        /// Usable answers, and the microseconds they took in all (for a mean).
        pub answers: std::sync::atomic::AtomicU64,
        pub latency_micros: std::sync::atomic::AtomicU64,
    }

    impl Health {
        fn record(&self, outcome: Result<Duration, ()>) {
            match outcome {
                Ok(d) => {
                    use std::sync::atomic::Ordering::Relaxed;
                    self.latency.observe(d.as_secs_f64());
                    self.answers.fetch_add(1, Relaxed);
                    self.latency_micros.fetch_add(d.as_micros() as u64, Relaxed);
                }
                Err(()) => {
                    self.failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }

        fn new(transport: &'static str) -> Health {
            Health {
                transport,
                latency: prometheus_client::metrics::histogram::Histogram::new(
                    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 14),
                ),
                failures: Default::default(),
                answers: Default::default(),
                latency_micros: Default::default(),
            }
        }
    }

    fn tls_config(upstream_ca: &str) -> Result<rustls::ClientConfig, UpstreamError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if !upstream_ca.is_empty() {
            let ca = |why: String| UpstreamError::Ca {
                path: upstream_ca.to_string(),
                why,
            };
            let pem = std::fs::read(upstream_ca).map_err(|e| ca(e.to_string()))?;
            let mut n = 0;
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                let c = c.map_err(|e| ca(e.to_string()))?;
                roots.add(c).map_err(|e| ca(e.to_string()))?;
                n += 1;
            }
            if n == 0 {
                return Err(ca("no PEM certificate in the file".into()));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamError::Failed(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    fn server(ip: std::net::IpAddr, port: u16, mut conn: ConnectionConfig) -> NameServerConfig {
        conn.port = port;
        let mut s = NameServerConfig::new(ip, true, vec![conn]);
        s.trust_negative_responses = true;
        s
    }

    impl Upstreams {
        /// Builds the upstreams of `[dns]` (`upstreams`, `upstream_ca`, `upstream_timeout`).
        pub async fn from_config(
            dns: &crate::config::DnsConfig,
        ) -> Result<Upstreams, UpstreamError> {
            let specs = dns
                .upstreams
                .iter()
                .map(|u| UpstreamSpec::parse(u))
                .collect::<Result<Vec<_>, _>>()?;
            Upstreams::new(
                &specs,
                &dns.upstream_ca,
                Duration::from_secs(dns.upstream_timeout.max(1)),
            )
            .await
        }

        /// Builds the pool; resolves `https://name/` hosts once through the system resolver.
        pub async fn new(
            specs: &[UpstreamSpec],
            upstream_ca: &str,
            timeout: Duration,
        ) -> Result<Upstreams, UpstreamError> {
            let mut servers = Vec::new();
            let mut fast = Vec::new();
            let mut health = Vec::new();
            for s in specs {
                fast.push(None);
                health.push(Health::new(match s {
                    UpstreamSpec::Udp(_) => "udp",
                    UpstreamSpec::Tcp(_) => "tcp",
                    UpstreamSpec::Tls { .. } => "tls",
                    UpstreamSpec::Https { .. } => "https",
                }));
                match s {
                    UpstreamSpec::Udp(a) => {
                        // Queries go over the long-lived UDP sockets; the pool is the TCP
                        // fall-back for truncated answers.
                        servers.push(server(a.ip(), a.port(), ConnectionConfig::tcp()));
                        *fast.last_mut().expect("just pushed") = Some(
                            crate::dns::udp_client::UdpClient::new(*a)
                                .await
                                .map_err(|e| UpstreamError::Failed(e.to_string()))?,
                        );
                    }
                    UpstreamSpec::Tcp(a) => {
                        servers.push(server(a.ip(), a.port(), ConnectionConfig::tcp()))
                    }
                    UpstreamSpec::Tls { addr, name } => servers.push(server(
                        addr.ip(),
                        addr.port(),
                        ConnectionConfig::tls(Arc::from(name.as_str())),
                    )),
                    UpstreamSpec::Https {
                        host,
                        port,
                        path,
                        ip,
                    } => {
                        let ip = match ip {
                            Some(ip) => *ip,
                            None => {
                                let mut it = tokio::net::lookup_host((host.as_str(), *port))
                                    .await
                                    .map_err(|e| UpstreamError::Bootstrap {
                                        host: host.clone(),
                                        why: e.to_string(),
                                    })?;
                                it.next().map(|a: SocketAddr| a.ip()).ok_or_else(|| {
                                    UpstreamError::Bootstrap {
                                        host: host.clone(),
                                        why: "no address".into(),
                                    }
                                })?
                            }
                        };
                        servers.push(server(
                            ip,
                            *port,
                            ConnectionConfig::https(
                                Arc::from(host.as_str()),
                                Some(Arc::from(path.as_str())),
                            ),
                        ))
                    }
                }
            }
            let mut opts = ResolverOpts::default();
            opts.timeout = timeout;
            opts.attempts = 1;
            opts.cache_size = 0;
            opts.num_concurrent_reqs = 1;
            opts.edns_payload_len = 1232;
            opts.case_randomization = false;
            let tls = TlsConfig {
                config: tls_config(upstream_ca)?,
            };
            let cx = Arc::new(PoolContext::new(opts, tls));
            let servers = servers
                .into_iter()
                .zip(fast)
                .map(|(s, fast)| Server {
                    pool: NameServerPool::from_config([s], cx.clone(), TokioRuntimeProvider::new()),
                    fast,
                })
                .collect();
            Ok(Upstreams {
                servers,
                preferred: AtomicUsize::new(0),
                timeout,
                health,
            })
        }

        /// The address of the upstream asked first, when it is a `udp://` one: the UDP
        /// listeners may then forward to it themselves (`dns::udp_batch`).
        pub fn preferred_udp(&self) -> Option<SocketAddr> {
            let n = self.servers.len();
            let i = self.preferred.load(Ordering::Relaxed) % n.max(1);
            self.servers.get(i)?.fast.as_ref().map(|f| f.upstream())
        }

        /// The client of the upstream asked first, when it is a `udp://` one.
        pub fn preferred_udp_client(&self) -> Option<&crate::dns::udp_client::UdpClient> {
            let n = self.servers.len();
            let i = self.preferred.load(Ordering::Relaxed) % n.max(1);
            self.servers.get(i)?.fast.as_ref()
        }

        /// How each upstream has been doing, in config order.
        pub fn health(&self) -> &[Health] {
            &self.health
        }

        /// Records how a question to the `udp://` upstream at `upstream` went, when a caller
        /// asked it directly (the UDP listeners' own forwarding): `Ok(latency)` or a failure.
        pub fn record_udp(&self, upstream: SocketAddr, outcome: Result<Duration, ()>) {
            let i = self
                .servers
                .iter()
                .position(|s| s.fast.as_ref().map(|f| f.upstream()) == Some(upstream));
            if let Some(h) = i.and_then(|i| self.health.get(i)) {
                h.record(outcome);
            }
        }

        /// How long one upstream is waited for.
        pub fn timeout(&self) -> Duration {
            self.timeout
        }

        /// Asks the upstreams for `name`/`qtype`: the last one that answered first, then the
        /// others in order (fail-over).
        pub async fn query(
            &self,
            name: Name,
            qtype: RecordType,
        ) -> Result<UpstreamAnswer, UpstreamError> {
            self.query_skipping(name, qtype, None).await
        }

        /// Like [`query`](Self::query), but not asking the `udp://` upstream at `skip` (it
        /// already failed this question).
        pub async fn query_skipping(
            &self,
            name: Name,
            qtype: RecordType,
            skip: Option<SocketAddr>,
        ) -> Result<UpstreamAnswer, UpstreamError> {
            let n = self.servers.len();
            let start = self.preferred.load(Ordering::Relaxed) % n.max(1);
            let mut last = match skip {
                Some(_) => UpstreamError::Failed("the upstream did not answer".into()),
                None => UpstreamError::Failed("no upstream configured".into()),
            };
            for k in 0..n {
                let i = (start + k) % n;
                let upstream = self.servers[i].fast.as_ref().map(|f| f.upstream());
                if skip.is_some() && upstream == skip {
                    continue;
                }
                let asked = std::time::Instant::now();
                let health = &self.health[i];
                match self.query_one(&self.servers[i], &name, qtype).await {
                    Ok(a) if !matches!(a.rcode, ResponseCode::NoError | ResponseCode::NXDomain) => {
                        health.record(Err(()));
                        last = UpstreamError::Failed(format!("upstream answered {}", a.rcode));
                    }
                    Ok(a) => {
                        health.record(Ok(asked.elapsed()));
                        if i != start {
                            self.preferred.store(i, Ordering::Relaxed);
                        }
                        return Ok(a);
                    }
                    Err(e) => {
                        health.record(Err(()));
                        last = e
                    }
                }
            }
            Err(last)
        }

        async fn query_one(
            &self,
            server: &Server,
            name: &Name,
            qtype: RecordType,
        ) -> Result<UpstreamAnswer, UpstreamError> {
            if let Some(fast) = &server.fast {
                use hickory_proto::serialize::binary::BinEncodable;
                let wire = name
                    .to_bytes()
                    .map_err(|e| UpstreamError::Failed(e.to_string()))?;
                match fast.query(&wire, u16::from(qtype), self.timeout).await {
                    Ok(bytes) => return UpstreamAnswer::from_wire(&bytes),
                    Err(crate::dns::udp_client::UdpClientError::Truncated) => {}
                    Err(e) => return Err(UpstreamError::Failed(e.to_string())),
                }
            }
            self.query_pool(&server.pool, name.clone(), qtype).await
        }

        async fn query_pool(
            &self,
            pool: &NameServerPool<TokioRuntimeProvider>,
            name: Name,
            qtype: RecordType,
        ) -> Result<UpstreamAnswer, UpstreamError> {
            let mut q = Query::query(name, qtype);
            q.set_query_class(hickory_proto::rr::DNSClass::IN);
            let opts = DnsRequestOptions::default();
            let mut stream = pool.lookup(q, opts);
            let limit = self.timeout + Duration::from_millis(500);
            let first = tokio::time::timeout(limit, stream.next())
                .await
                .map_err(|_| UpstreamError::Failed("timed out".into()))?;
            match first {
                Some(Ok(resp)) => {
                    let msg = resp.into_message();
                    Ok(UpstreamAnswer {
                        rcode: msg.metadata.response_code,
                        answers: msg.answers,
                        authorities: msg.authorities,
                    })
                }
                Some(Err(NetError::Dns(DnsError::NoRecordsFound(nr)))) => Ok(UpstreamAnswer {
                    rcode: nr.response_code,
                    answers: vec![],
                    authorities: nr
                        .soa
                        .map(|s| vec![s.into_record_of_rdata()])
                        .unwrap_or_default(),
                }),
                Some(Err(NetError::Dns(DnsError::ResponseCode(rc))))
                    if rc == ResponseCode::NXDomain =>
                {
                    Ok(UpstreamAnswer {
                        rcode: rc,
                        answers: vec![],
                        authorities: vec![],
                    })
                }
                Some(Err(e)) => Err(UpstreamError::Failed(e.to_string())),
                None => Err(UpstreamError::Failed("no response".into())),
            }
        }
    }
}

pub use pool::{Health, UpstreamAnswer, UpstreamError, Upstreams};
