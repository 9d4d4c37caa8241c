//! The API's listeners and who may call on each: the Unix socket (whoever can open it), the
//! hub's overlay addresses (admin devices, by the WireGuard identity behind the source
//! address) and TLS listeners (a bearer token).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tower_service::Service;

use super::ApiError;
use crate::daemon::Control;

/// HTTP port of the API on the hub's overlay addresses.
pub const OVERLAY_PORT: u16 = 80;

/// Most API connections open at once on the TCP listeners (of them at most
/// [`PER_ADDRESS`](crate::dns::slots::PER_ADDRESS) from one address).
const MAX_CONNECTIONS: usize = 256;

/// A connection that sends nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(30);

/// Where the API is served.
pub struct ApiListeners {
    /// The Unix socket (mode 0600).
    pub unix: PathBuf,
    /// Plain HTTP for admin devices (the tunnel is the encryption).
    pub overlay: Vec<SocketAddr>,
    /// TLS with a bearer token.
    pub tls: Vec<SocketAddr>,
    pub tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
}

/// Why the API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The Unix socket could not be made.
    #[error("cannot serve the API socket {path}: {cause}")]
    Socket {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A TCP listener could not be bound.
    #[error(transparent)]
    Bind(#[from] crate::dns::server::ServeError),
}

/// Who is calling, as the listener knows it.
#[derive(Debug, Clone, Copy)]
enum Caller {
    /// The Unix socket: the file mode already decided.
    Local,
    /// A device on the overlay.
    Overlay(IpAddr),
    /// A TLS listener: needs a bearer token.
    Token,
}

/// Serves the API on every listener; returns the Unix socket's path (remove it at exit).
pub async fn serve(control: Arc<Control>, l: ApiListeners) -> Result<PathBuf, ServeError> {
    let router = super::routes::router(control.clone());
    let path = l.unix.clone();
    let _ = std::fs::remove_file(&path);
    let io = |cause| ServeError::Socket {
        path: path.clone(),
        cause,
    };
    let unix = UnixListener::bind(&path).map_err(io)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    {
        let (router, control) = (router.clone(), control.clone());
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = unix.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                tokio::spawn(serve_conn(
                    conn,
                    Caller::Local,
                    router.clone(),
                    control.clone(),
                ));
            }
        });
    }
    let slots = crate::dns::slots::ConnSlots::new(MAX_CONNECTIONS, crate::dns::slots::PER_ADDRESS);
    for a in &l.overlay {
        // Port 80 may be taken by a web server of the owner's on the wildcard address: the
        // API then stays on the socket (and `api.listen`) rather than the hub not starting.
        let listener = match crate::dns::server::bind_tcp(*a).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(
                    port = OVERLAY_PORT,
                    "management API not served on an overlay address (port in use?)"
                );
                tracing::debug!(error = %e, "overlay API bind failed");
                continue;
            }
        };
        let (router, control) = (router.clone(), control.clone());
        crate::dns::server::accept_loop(listener, slots.clone(), move |tcp, peer| {
            serve_conn(
                tcp,
                Caller::Overlay(peer.ip()),
                router.clone(),
                control.clone(),
            )
        });
    }
    if let Some(acc) = &l.tls_acceptor {
        for a in &l.tls {
            let listener = crate::dns::server::bind_tcp(*a).await?;
            let (router, control, acc) = (router.clone(), control.clone(), acc.clone());
            crate::dns::server::accept_loop(listener, slots.clone(), move |tcp, _| {
                let (router, control, acc) = (router.clone(), control.clone(), acc.clone());
                async move {
                    if let Some(tls) = crate::dns::server::tls_handshake(&acc, tcp).await {
                        serve_conn(tls, Caller::Token, router, control).await;
                    }
                }
            });
        }
    }
    tracing::info!(
        overlay = l.overlay.len(),
        tls = l.tls.len(),
        "management API serving"
    );
    Ok(path)
}

/// Serves HTTP/1.1 on one connection, letting through only requests `caller` may make.
async fn serve_conn<S>(stream: S, caller: Caller, router: Router, control: Arc<Control>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (mut router, control) = (router.clone(), control.clone());
        async move {
            let bearer = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| t.trim().to_string());
            let refused = tokio::task::spawn_blocking(move || authorize(caller, bearer, &control))
                .await
                .unwrap_or_else(|_| Some(ApiError::Internal("authorisation failed".into())));
            let resp: Response = match refused {
                Some(e) => e.into_response(),
                None => match router.call(req.map(Body::new)).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                },
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(IDLE);
    let conn = b.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(IDLE * 10, conn).await;
}

/// Why `caller` may not call (`None` = it may).
fn authorize(caller: Caller, bearer: Option<String>, control: &Control) -> Option<ApiError> {
    match caller {
        Caller::Local => None,
        Caller::Overlay(ip) => match control.device_at(crate::dns::engine::canonical(ip)) {
            Some(d) if d.is_admin() => None,
            Some(_) => Some(ApiError::Forbidden(
                "this device is not an admin; on the hub run `cloudpc device set NAME --admin`"
                    .into(),
            )),
            None => Some(ApiError::Forbidden(
                "the management API is for admin devices only".into(),
            )),
        },
        Caller::Token => match bearer {
            Some(t) if control.token_valid(&t) => None,
            Some(_) => Some(ApiError::Unauthorized(
                "the bearer token is not valid (revoked or mistyped); `cloudpc api token create NAME` makes one".into(),
            )),
            None => Some(ApiError::Unauthorized(
                "send `Authorization: Bearer TOKEN` (`cloudpc api token create NAME` makes one)"
                    .into(),
            )),
        },
    }
}
