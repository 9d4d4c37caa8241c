//! Downloading one list over HTTP/1.1 (hyper), with TLS for `https://` (rustls, webpki roots
//! plus an optional extra CA bundle), conditional requests, redirects, a size limit and a
//! total time limit.
//!
//! Host names are resolved through a [`HostResolver`] (the resolver's upstreams in `cloudpc
//! run`), never through the system resolver and never through the filter: a list host that a
//! list blocks still downloads. IP-literal hosts need no resolution.
//!
//! ```no_run
//! # async fn f(r: &cloudpc::dns::upstream::Upstreams) -> Result<(), cloudpc::filter::FetchError> {
//! use cloudpc::filter::{fetch, FetchLimits, ListUrl, Validators};
//! let url = ListUrl::parse("https://lists.example/ads.txt").expect("a URL");
//! let limits = FetchLimits::new(64 << 20, std::time::Duration::from_secs(60), "")?;
//! let fetched = fetch(&url, &Validators::default(), &limits, r).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Redirects followed before giving up (as browsers and curl's `--max-redirs` default do).
pub const MAX_REDIRECTS: usize = 5;

/// Why a download failed. Messages name no host or address (they are shown by `cloudpc lists`
/// and may be logged at debug only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The URL is not `http://` or `https://` with a host.
    #[error("not a list URL ({0}); expected http://HOST/PATH or https://HOST/PATH")]
    BadUrl(String),
    /// The host name did not resolve through the upstreams.
    #[error("cannot resolve the list host: {0}")]
    Resolve(String),
    /// No TCP connection to any address of the host.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The TLS handshake failed (certificate, protocol).
    #[error("TLS: {0}")]
    Tls(String),
    /// The HTTP exchange failed (bad response, connection closed).
    #[error("HTTP: {0}")]
    Http(String),
    /// The server answered with a status that is not a list.
    #[error("the server answered HTTP {0}")]
    Status(u16),
    /// Redirect problems: too many, no `Location`, or https → http.
    #[error("redirect: {0}")]
    Redirect(String),
    /// The body is larger than `max_list_bytes`.
    #[error("larger than max_list_bytes ({0} bytes); download stopped")]
    TooBig(u64),
    /// The whole download took longer than the limit.
    #[error("timed out after {0} s")]
    Timeout(u64),
    /// The extra CA bundle could not be used.
    #[error("upstream_ca: {0}")]
    Ca(String),
}

/// A parsed `http://` or `https://` list URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListUrl {
    text: String,
    https: bool,
    /// Host without brackets (an IPv6 literal is bare here).
    host: String,
    port: u16,
    /// `host[:port]` as written, for the `Host` header.
    authority: String,
    path: String,
}

impl ListUrl {
    /// True when `entry` (a `filter.lists` value) is meant as a URL rather than a file.
    pub fn is_url(entry: &str) -> bool {
        entry.contains("://")
    }

    /// Parses a list URL. A fragment is dropped; user names and passwords are refused.
    pub fn parse(s: &str) -> Result<ListUrl, FetchError> {
        let bad = |why: &str| FetchError::BadUrl(why.to_string());
        let s = s.trim();
        let without_fragment = s.split('#').next().unwrap_or(s);
        let uri: Uri = without_fragment
            .parse()
            .map_err(|_| bad("not a valid URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "user names and passwords in list URLs are not supported",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if host.parse::<IpAddr>().is_err() && !crate::dns::name::is_valid_zone(&host) {
            return Err(bad("the host is neither an IP address nor a DNS name"));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        Ok(ListUrl {
            text: without_fragment.to_string(),
            https,
            host,
            port,
            authority: authority.as_str().to_string(),
            path,
        })
    }

    /// The URL as given (without fragment).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The URL a redirect's `Location` points to, relative to this one.
    fn join(&self, location: &str) -> Result<ListUrl, FetchError> {
        let scheme = if self.https { "https" } else { "http" };
        let absolute = if ListUrl::is_url(location) {
            location.to_string()
        } else if let Some(rest) = location.strip_prefix("//") {
            format!("{scheme}://{rest}")
        } else if location.starts_with('/') {
            format!("{scheme}://{}{location}", self.authority)
        } else {
            let path = self.path.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            format!("{scheme}://{}{dir}{location}", self.authority)
        };
        ListUrl::parse(&absolute)
    }
}

impl std::fmt::Display for ListUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The validators of the cached copy, sent as `If-None-Match` / `If-Modified-Since`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// What a download brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// HTTP 304: the cached copy is current.
    NotModified,
    /// A new body (not yet checked to be a list) and its validators.
    Body {
        bytes: Vec<u8>,
        validators: Validators,
    },
}

/// Resolves a list host to addresses.
pub trait HostResolver {
    /// The A and AAAA addresses of `host` (no trailing dot), IPv4 first.
    fn resolve(&self, host: &str) -> impl Future<Output = Result<Vec<IpAddr>, String>> + Send;
}

impl HostResolver for crate::dns::upstream::Upstreams {
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        use hickory_proto::rr::{Name, RData, RecordType};
        let mut name = Name::from_ascii(host).map_err(|e| e.to_string())?;
        name.set_fqdn(true);
        let (a, aaaa) = tokio::join!(
            self.query(name.clone(), RecordType::A),
            self.query(name, RecordType::AAAA)
        );
        let mut out = Vec::new();
        let mut last_error = None;
        for answer in [a, aaaa] {
            match answer {
                Ok(answer) => out.extend(answer.answers.iter().filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })),
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        if out.is_empty() {
            return Err(last_error.unwrap_or_else(|| "the name has no address".into()));
        }
        Ok(out)
    }
}

/// Size and time limits, and the TLS roots, for downloads.
#[derive(Clone)]
pub struct FetchLimits {
    /// Largest body accepted.
    pub max_bytes: u64,
    /// The whole download, redirects included.
    pub timeout: Duration,
    /// One TCP connection attempt.
    pub connect_timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
}

impl FetchLimits {
    /// Limits with webpki roots plus the PEM bundle at `extra_ca` (empty = none).
    pub fn new(
        max_bytes: u64,
        timeout: Duration,
        extra_ca: &str,
    ) -> Result<FetchLimits, FetchError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if !extra_ca.is_empty() {
            let pem = std::fs::read(extra_ca).map_err(|e| FetchError::Ca(e.to_string()))?;
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                let c = c.map_err(|e| FetchError::Ca(e.to_string()))?;
                roots.add(c).map_err(|e| FetchError::Ca(e.to_string()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FetchError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(FetchLimits {
            max_bytes,
            timeout,
            connect_timeout: timeout.min(Duration::from_secs(10)),
            tls: Arc::new(tls),
        })
    }
}

/// Downloads `url`, following redirects, within `limits`. With validators the request is
/// conditional and a 304 gives [`Fetched::NotModified`].
pub async fn fetch(
    url: &ListUrl,
    validators: &Validators,
    limits: &FetchLimits,
    resolver: &impl HostResolver,
) -> Result<Fetched, FetchError> {
    let work = async {
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            match fetch_once(&url, validators, limits, resolver).await? {
                Step::Done(f) => return Ok(f),
                Step::Redirect(location) => {
                    let next = url.join(&location)?;
                    if url.https && !next.https {
                        return Err(FetchError::Redirect(
                            "refused a redirect from https to http".into(),
                        ));
                    }
                    url = next;
                }
            }
        }
        Err(FetchError::Redirect(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    };
    tokio::time::timeout(limits.timeout, work)
        .await
        .map_err(|_| FetchError::Timeout(limits.timeout.as_secs()))?
}

enum Step {
    Done(Fetched),
    Redirect(String),
}

async fn fetch_once(
    url: &ListUrl,
    validators: &Validators,
    limits: &FetchLimits,
    resolver: &impl HostResolver,
) -> Result<Step, FetchError> {
    let addrs = match url.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => resolver
            .resolve(&url.host)
            .await
            .map_err(FetchError::Resolve)?,
    };
    let mut last = FetchError::Connect("no address".into());
    let mut tcp = None;
    for ip in addrs {
        match tokio::time::timeout(limits.connect_timeout, TcpStream::connect((ip, url.port))).await
        {
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(e)) => last = FetchError::Connect(e.kind().to_string()),
            Err(_) => last = FetchError::Connect("timed out".into()),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let _ = tcp.set_nodelay(true);
    if url.https {
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| FetchError::Tls(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(limits.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| FetchError::Tls(e.to_string()))?;
        exchange(tls, url, validators, limits.max_bytes).await
    } else {
        exchange(tcp, url, validators, limits.max_bytes).await
    }
}

/// Aborts the connection task when the download ends or is dropped (timeout).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn exchange<S>(
    io: S,
    url: &ListUrl,
    validators: &Validators,
    max_bytes: u64,
) -> Result<Step, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| FetchError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http)?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let mut req = Request::get(url.path.as_str())
        .header(header::HOST, url.authority.as_str())
        .header(
            header::USER_AGENT,
            concat!("cloudpc/", env!("CARGO_PKG_VERSION")),
        )
        .header(header::ACCEPT, "text/plain, */*")
        .header(header::ACCEPT_ENCODING, "identity");
    for (name, value) in [
        (header::IF_NONE_MATCH, &validators.etag),
        (header::IF_MODIFIED_SINCE, &validators.last_modified),
    ] {
        if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            req = req.header(name, v);
        }
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status();
    let text_header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    if status == StatusCode::NOT_MODIFIED {
        if validators == &Validators::default() {
            return Err(FetchError::Http(
                "304 to a request that was not conditional".into(),
            ));
        }
        return Ok(Step::Done(Fetched::NotModified));
    }
    if status.is_redirection() {
        return match text_header(header::LOCATION) {
            Some(l) => Ok(Step::Redirect(l)),
            None => Err(FetchError::Redirect(format!(
                "HTTP {} without a Location",
                status.as_u16()
            ))),
        };
    }
    if status != StatusCode::OK {
        return Err(FetchError::Status(status.as_u16()));
    }
    let new_validators = Validators {
        etag: text_header(header::ETAG),
        last_modified: text_header(header::LAST_MODIFIED),
    };
    let declared = text_header(header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_bytes) {
        return Err(FetchError::TooBig(max_bytes));
    }
    // Read as it comes and stop past the limit: a server that lies about (or omits) the
    // length cannot make us buffer more than `max_bytes`.
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(max_bytes) as usize);
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(http)?;
        if let Ok(data) = frame.into_data() {
            if (bytes.len() + data.len()) as u64 > max_bytes {
                return Err(FetchError::TooBig(max_bytes));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Step::Done(Fetched::Body {
        bytes,
        validators: new_validators,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    struct NoDns;
    impl HostResolver for NoDns {
        async fn resolve(&self, _host: &str) -> Result<Vec<IpAddr>, String> {
            Err("no resolver in this test".into())
        }
    }

    /// Serves one canned response per connection; returns the URL base and the request heads.
    fn server(responses: Vec<String>) -> (String, std::sync::mpsc::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for resp in responses {
                let (mut s, _) = l.accept().unwrap();
                let mut head = String::new();
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let _ = tx.send(head);
                let _ = s.write_all(resp.as_bytes());
            }
        });
        (base, rx)
    }

    fn limits(max: u64) -> FetchLimits {
        FetchLimits::new(max, Duration::from_secs(5), "").unwrap()
    }

    fn ok(body: &str, extra: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn parses_urls_and_refuses_others() {
        let u = ListUrl::parse("https://Lists.Example:8443/a/b.txt?x=1#frag").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.https),
            ("lists.example", 8443, true)
        );
        assert_eq!(u.path, "/a/b.txt?x=1");
        assert_eq!(ListUrl::parse("http://[::1]/l").unwrap().host, "::1");
        assert_eq!(ListUrl::parse("http://10.0.0.1").unwrap().path, "/");
        for bad in [
            "ftp://x/y",
            "https://",
            "https://u:p@h/x",
            "lists.txt",
            "http://bad host/",
        ] {
            assert!(ListUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_redirects_resolve_against_the_url() {
        let u = ListUrl::parse("http://h:81/dir/list.txt").unwrap();
        assert_eq!(
            u.join("other.txt").unwrap().as_str(),
            "http://h:81/dir/other.txt"
        );
        assert_eq!(u.join("/top.txt").unwrap().as_str(), "http://h:81/top.txt");
        assert_eq!(u.join("//g/x").unwrap().as_str(), "http://g/x");
        assert_eq!(u.join("https://s/y").unwrap().as_str(), "https://s/y");
    }

    #[tokio::test]
    async fn body_validators_redirect_and_conditional_request() {
        let (base, heads) = server(vec![
            "HTTP/1.1 302 Found\r\nLocation: /real.txt\r\nContent-Length: 0\r\n\r\n".into(),
            ok("||ads.example^\n", "ETag: \"v1\"\r\n"),
            "HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n".into(),
        ]);
        let url = ListUrl::parse(&format!("{base}/list.txt")).unwrap();

        let got = fetch(&url, &Validators::default(), &limits(1000), &NoDns)
            .await
            .unwrap();
        let Fetched::Body { bytes, validators } = got else {
            panic!("expected a body")
        };
        assert_eq!(bytes, b"||ads.example^\n");
        assert_eq!(validators.etag.as_deref(), Some("\"v1\""));
        let again = fetch(&url, &validators, &limits(1000), &NoDns)
            .await
            .unwrap();

        assert_eq!(again, Fetched::NotModified);
        let h: Vec<String> = heads.try_iter().collect();
        assert!(h[1].starts_with("GET /real.txt HTTP/1.1"), "{}", h[1]);
        assert!(
            h[2].to_ascii_lowercase().contains("if-none-match: \"v1\""),
            "{}",
            h[2]
        );
    }

    #[tokio::test]
    async fn oversized_bodies_and_error_statuses_are_errors() {
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\naaaaaaaaaaaaaaaa\r\n10\r\naaaaaaaaaaaaaaaa\r\n0\r\n\r\n";
        let (base, _h) = server(vec![
            ok(&"a".repeat(50), ""),
            chunked.into(),
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
        ]);
        let url = ListUrl::parse(&format!("{base}/l")).unwrap();
        let none = Validators::default();
        assert_eq!(
            fetch(&url, &none, &limits(20), &NoDns).await,
            Err(FetchError::TooBig(20))
        );
        assert_eq!(
            fetch(&url, &none, &limits(20), &NoDns).await,
            Err(FetchError::TooBig(20))
        );
        assert_eq!(
            fetch(&url, &none, &limits(20), &NoDns).await,
            Err(FetchError::Status(404))
        );
    }

    #[tokio::test]
    async fn a_stalled_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = ListUrl::parse(&format!("http://{}/l", l.local_addr().unwrap())).unwrap();
        let mut lim = limits(100);
        lim.timeout = Duration::from_millis(300);
        let r = fetch(&url, &Validators::default(), &lim, &NoDns).await;
        assert_eq!(r, Err(FetchError::Timeout(0)));
        drop(l);
    }
}
