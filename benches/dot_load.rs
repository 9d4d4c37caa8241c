//! A DoT load generator that sets the TLS server name, for `benches/dns`' per-device runs
//! (dnsperf 2.10 has no SNI option). It measures plain DoT (no server name) and DoT with a
//! device's `<token>.<domain>` name the same way, so the two rates compare.
//!
//! `cargo bench --bench dot_load -- ADDR QUERIES SECS [SNI]`
//!
//! Opens `CONNS` (env, default 4) TLS connections to ADDR, each sending `DEPTH` (env, default
//! 100) queries from QUERIES (dnsperf format: `name TYPE` per line) at a time and reading their
//! answers, for SECS seconds on one thread. Prints `qps=N answered=N errors=N`. The server's
//! certificate is not checked (a load generator, loopback only).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, IpAddr as PkiIp, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The queries of a dnsperf file, each framed for a stream (2-byte length first).
fn load_queries(path: &str) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = Name::from_ascii(it.next()?).ok()?;
            let qtype: RecordType = it.next().unwrap_or("A").parse().ok()?;
            let mut m = Message::new(0, MessageType::Query, OpCode::Query);
            m.metadata.recursion_desired = true;
            m.add_query(Query::query(name, qtype));
            let wire = m.to_vec().ok()?;
            let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&wire);
            Some(framed)
        })
        .collect()
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One connection: batches of `depth` queries, each batch's answers read before the next.
async fn run_conn(
    tls: tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    name: ServerName<'static>,
    queries: Arc<Vec<Vec<u8>>>,
    start: usize,
    depth: usize,
    until: Instant,
) -> (u64, u64) {
    let (mut answered, mut errors) = (0u64, 0u64);
    let tcp = match tokio::net::TcpStream::connect(addr).await {
        Ok(t) => t,
        Err(_) => return (0, 1),
    };
    let _ = tcp.set_nodelay(true);
    let mut s = match tls.connect(name, tcp).await {
        Ok(s) => s,
        Err(_) => return (0, 1),
    };
    let mut i = start;
    let mut batch = Vec::new();
    let mut buf = vec![0u8; 65535];
    while Instant::now() < until {
        batch.clear();
        for k in 0..depth {
            let q = &queries[i % queries.len()];
            let id = (k as u16).to_be_bytes();
            batch.extend_from_slice(&q[..2]);
            batch.extend_from_slice(&id);
            batch.extend_from_slice(&q[4..]);
            i += 1;
        }
        if s.write_all(&batch).await.is_err() {
            return (answered, errors + 1);
        }
        for _ in 0..depth {
            let mut len = [0u8; 2];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                s.read_exact(&mut len).await?;
                let n = u16::from_be_bytes(len) as usize;
                s.read_exact(&mut buf[..n]).await?;
                Ok::<_, std::io::Error>(n)
            })
            .await;
            match read {
                Ok(Ok(n)) if n >= 4 && buf[2] & 0x80 != 0 => answered += 1,
                Ok(Ok(_)) => errors += 1,
                _ => return (answered, errors + 1),
            }
        }
    }
    (answered, errors)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.len() < 3 {
        eprintln!("usage: dot_load ADDR QUERIES SECS [SNI]");
        std::process::exit(2);
    }
    let addr: std::net::SocketAddr = args[0].parse().expect("ADDR is ip:port");
    let queries = Arc::new(load_queries(&args[1]));
    assert!(!queries.is_empty(), "no queries in {}", args[1]);
    let secs: u64 = args[2].parse().expect("SECS is a number");
    let name: ServerName<'static> = match args.get(3) {
        Some(sni) => ServerName::try_from(sni.clone()).expect("SNI is a DNS name"),
        // An IP address as the name: rustls sends no server name.
        None => ServerName::IpAddress(PkiIp::from(addr.ip())),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let (conns, depth) = (env_or("CONNS", 4), env_or("DEPTH", 100));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (answered, errors, took) = rt.block_on(async {
        let t = Instant::now();
        let until = t + Duration::from_secs(secs);
        let tasks: Vec<_> = (0..conns)
            .map(|c| {
                tokio::spawn(run_conn(
                    tls.clone(),
                    addr,
                    name.clone(),
                    queries.clone(),
                    c * queries.len() / conns,
                    depth,
                    until,
                ))
            })
            .collect();
        let (mut a, mut e) = (0, 0);
        for t in tasks {
            let (x, y) = t.await.unwrap_or((0, 1));
            a += x;
            e += y;
        }
        (a, e, t.elapsed().as_secs_f64())
    });
    println!(
        "qps={:.0} answered={answered} errors={errors}",
        answered as f64 / took
    );
}
