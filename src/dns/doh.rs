//! DNS-over-HTTPS (RFC 8484): GET `?dns=` (base64url) and POST `application/dns-message` on
//! `/dns-query` and `/dns-query/<device token>` (see `dns::tokens`), over HTTP/1.1 and HTTP/2 (ALPN), with rustls.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use super::engine::Transport;
use super::service::DnsService;
use super::tokens::Asker;

/// The path DoH is served on.
pub const PATH: &str = "/dns-query";
const CONTENT_TYPE: &str = "application/dns-message";
/// Largest DNS message (RFC 1035 over TCP / RFC 8484 §6).
const MAX_BODY: usize = 65_535;

type Resp = Response<Full<Bytes>>;

fn plain(status: StatusCode, text: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r
}

/// The DNS message of a GET request's query string (`dns=` base64url, RFC 8484 §4.1), or
/// the reason it has none.
fn get_query(q: &str) -> Result<Vec<u8>, &'static str> {
    let Some(v) = q.split('&').find_map(|kv| kv.strip_prefix("dns=")) else {
        return Err("missing dns= parameter\n");
    };
    match URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')) {
        Ok(b) if b.len() <= MAX_BODY => Ok(b),
        _ => Err("dns= is not base64url\n"),
    }
}

/// The admin page, served beside DoH once the daemon has made it.
pub type AdminSlot = Arc<std::sync::OnceLock<Arc<crate::admin::Admin>>>;

/// Where a DoH request came from: the peer, the token its TLS server name carried, and
/// whether the listener is a public one (outsiders get DoH with a token and nothing else).
#[derive(Debug, Clone)]
pub struct Origin {
    pub peer: SocketAddr,
    pub sni_token: Option<String>,
    pub public: bool,
    /// On a public listener: whether outsiders get DoH (with a token) at all; a listener
    /// that is public only for the TLS transport gives them nothing.
    pub outsider_dns: bool,
}

/// What one HTTPS listener serves besides DoH for trusted askers and the admin page.
#[derive(Clone, Default)]
pub struct Listener {
    /// Outsiders get DoH with a token and nothing else (`dns.public`).
    pub public: bool,
    /// Outsiders get DoH at all (false: a listener opened for the TLS transport only).
    pub outsider_dns: bool,
    /// Streams with the TLS transport's ALPN go to the hub.
    pub wg: Option<crate::hub::tls::WgTls>,
}

/// Answers one HTTP request: `/dns-query[/<token>]` is DoH, anything else the admin page (when
/// served on this listener, and not to outsiders on a public listener).
pub async fn handle_request(
    service: Arc<DnsService>,
    origin: &Origin,
    req: Request<hyper::body::Incoming>,
    admin: &AdminSlot,
) -> Resp {
    let peer = origin.peer;
    let tokens = service.tokens();
    // The invite page is for devices not on the network yet: every HTTPS listener serves it.
    if crate::admin::is_invite_path(req.uri().path()) {
        return match admin.get() {
            Some(a) => a.handle_invite(req).await,
            None => plain(StatusCode::NOT_FOUND, "not found\n"),
        };
    }
    if origin.public && !origin.outsider_dns && !tokens.trusted(peer.ip()) {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    let Some(path_token) = super::tokens::doh_path(req.uri().path()) else {
        if origin.public && !tokens.trusted(peer.ip()) {
            return plain(
                StatusCode::NOT_FOUND,
                "not found; DNS-over-HTTPS is at /dns-query/<your device's token>\n",
            );
        }
        return match admin.get() {
            Some(a) => a.handle(peer, req).await,
            None => plain(
                StatusCode::NOT_FOUND,
                "not found; DNS-over-HTTPS is at /dns-query\n",
            ),
        };
    };
    let asker = tokens.judge(path_token.or(origin.sni_token.as_deref()), peer.ip());
    match asker {
        Asker::UnknownToken { .. } => {
            return plain(
                StatusCode::FORBIDDEN,
                "unknown DNS token; `cloudpc device show NAME --dns` prints a device's DoH URL\n",
            )
        }
        Asker::Address(ip) if origin.public && !tokens.trusted(ip) => {
            return plain(
                StatusCode::FORBIDDEN,
                "this resolver answers registered devices only: use your device's DoH URL, \
                 https://HOST/dns-query/<token>\n",
            )
        }
        _ => {}
    }
    let query: Vec<u8> = match *req.method() {
        Method::GET => match get_query(req.uri().query().unwrap_or("")) {
            Ok(b) => b,
            Err(why) => return plain(StatusCode::BAD_REQUEST, why),
        },
        Method::POST => {
            let ct = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !ct.starts_with(CONTENT_TYPE) {
                return plain(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "content-type must be application/dns-message\n",
                );
            }
            match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes().to_vec(),
                Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"),
            }
        }
        _ => return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST\n"),
    };
    service
        .resolver()
        .stats
        .count_protocol(super::stats::Protocol::Https);
    match service.answer_as(&query, asker, Transport::Stream).await {
        Some(ans) => {
            let ttl = super::wire::ttl_fields(&ans)
                .and_then(|t| t.iter().map(|x| x.1).min())
                .unwrap_or(0);
            Response::builder()
                .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
                .header(hyper::header::CACHE_CONTROL, format!("max-age={ttl}"))
                .body(Full::new(Bytes::from(ans)))
                .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "error\n"))
        }
        None => plain(StatusCode::BAD_REQUEST, "not a DNS query\n"),
    }
}

/// The ALPN protocol of ACME's TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Serves DoH on `listener` with TLS (`acceptor` must offer ALPN h2 and http/1.1; with
/// `acme-tls/1` too, a CA's validation handshake is answered and the connection closed).
/// `role`: what outsiders get (see [`Listener`]), and where TLS-transport streams go.
pub fn serve(
    service: Arc<DnsService>,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    idle: Duration,
    slots: Arc<super::slots::ConnSlots>,
    admin: AdminSlot,
    role: Listener,
) {
    super::server::accept_loop(listener, slots, move |tcp, peer| {
        let (r, acc, admin, role) = (
            service.clone(),
            acceptor.clone(),
            admin.clone(),
            role.clone(),
        );
        async move {
            let Some(tls) = super::server::tls_handshake(&acc, tcp).await else {
                return;
            };
            let conn = tls.get_ref().1;
            if conn.alpn_protocol() == Some(ACME_TLS_ALPN) {
                return;
            }
            if conn.alpn_protocol() == Some(crate::hub::tls::ALPN) {
                if let Some(wg) = &role.wg {
                    wg.serve(tls, peer).await;
                }
                return;
            }
            let origin = Arc::new(Origin {
                peer,
                sni_token: r
                    .tokens()
                    .token_of_sni(conn.server_name())
                    .map(str::to_string),
                public: role.public,
                outsider_dns: role.outsider_dns,
            });
            let svc = hyper::service::service_fn(move |req| {
                let (r, admin, origin) = (r.clone(), admin.clone(), origin.clone());
                async move { Ok::<_, Infallible>(handle_request(r, &origin, req, &admin).await) }
            });
            let mut b =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            b.http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(idle);
            b.http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Some(idle))
                .max_concurrent_streams(100);
            let io = hyper_util::rt::TokioIo::new(tls);
            let conn = b.serve_connection(io, svc);
            // Bound a connection's life when it goes quiet.
            let _ = tokio::time::timeout(idle * 30, conn).await;
        }
    });
}

#[cfg(test)]
mod fuzz {
    use super::*;

    #[test]
    fn fuzz_doh_get_query() {
        let seeds = vec![
            b"dns=q80BAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB".to_vec(),
            b"ct=x&dns=AAABAAABAAAAAAAAAAABAAE=&z".to_vec(),
        ];
        crate::fuzz::run("doh_get_query", crate::fuzz::bytes(seeds, 300), |b| {
            let q = String::from_utf8_lossy(b);
            if let Ok(m) = get_query(&q) {
                assert!(m.len() <= MAX_BODY);
                let again = URL_SAFE_NO_PAD.encode(&m);
                assert_eq!(
                    get_query(&format!("dns={again}")),
                    Ok(m),
                    "base64url round-trips"
                );
            }
        });
    }
}
