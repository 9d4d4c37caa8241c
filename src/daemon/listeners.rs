//! The resolver's and the admin page's listeners, and the one certificate they all serve.
//!
//! - Plain DNS on `dns.listen` and, with the hub, port 53 of its overlay addresses.
//! - DoT on `dns.tls_listen`, DoH on `dns.https_listen` (with the admin page).
//! - The admin page (and DoH) on `admin.listen` and port 443 of the overlay addresses.
//! - With `dns.public`: DoT on `dns.public_tls_listen` and DoH on `dns.public_https_listen`,
//!   for devices off the tunnel that name themselves by DNS token; outsiders get nothing else
//!   there. A wildcard public listener also serves the specific addresses of the same port
//!   (Linux will not bind both), so those are skipped.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::DaemonError;
use crate::certs::Certs;
use crate::config::Config;
use crate::dns::doh::{AdminSlot, Listener, ACME_TLS_ALPN};
use crate::dns::service::DnsService;
use crate::dns::slots::ConnSlots;
use crate::hub::tls::WgTls;
use crate::store::Overlay;

/// Plain DNS addresses: the configured ones plus, with the hub, its overlay addresses.
pub fn listen_addrs(cfg: &Config, with_hub: bool, overlay: &Overlay) -> Vec<SocketAddr> {
    let mut listen: Vec<SocketAddr> = cfg.dns.listen.clone();
    if with_hub {
        listen.push(SocketAddr::from((overlay.hub_v4(), 53)));
        listen.push(SocketAddr::from((overlay.hub_v6(), 53)));
    }
    listen.dedup();
    listen
}

/// The certificate every TLS listener serves: the configured one, or the self-signed one in
/// the state dir (made on first use); ACME replaces it at run time.
pub fn certificates(
    cfg: &Config,
    state_dir: &Path,
    with_hub: bool,
    overlay: &Overlay,
) -> Result<Arc<Certs>, DaemonError> {
    let names = tls_names(cfg, &listen_addrs(cfg, with_hub, overlay));
    let m =
        crate::dns::tls::load_or_create(&cfg.dns.tls_cert, &cfg.dns.tls_key, state_dir, &names)?;
    Ok(Certs::new(&m, !cfg.dns.tls_cert.is_empty())?)
}

/// Names the self-signed certificate covers.
fn tls_names(cfg: &Config, listen: &[SocketAddr]) -> Vec<String> {
    let mut names = vec![
        "cloudpc".to_string(),
        "localhost".to_string(),
        format!("hub.{}", cfg.dns.zone.trim_end_matches('.')),
    ];
    if let Some((host, _)) = cfg.wireguard.endpoint.rsplit_once(':') {
        names.push(host.trim_matches(['[', ']']).to_string());
    }
    let domain = cfg.public_domain();
    if !domain.is_empty() {
        names.push(domain);
    }
    names.extend(
        listen
            .iter()
            .chain(&cfg.dns.tls_listen)
            .chain(&cfg.dns.https_listen)
            .chain(&cfg.api.listen)
            .filter(|a| !a.ip().is_unspecified())
            .map(|a| a.ip().to_string()),
    );
    names.sort();
    names.dedup();
    names
}

/// ALPN of the HTTPS listeners (port 443 answers the CA's TLS-ALPN-01 validation too, and
/// carries the hub's TLS transport).
const HTTPS_ALPN: &[&[u8]] = &[b"h2", b"http/1.1", ACME_TLS_ALPN, crate::hub::tls::ALPN];

/// The public listeners in force (`dns.public`): DoT, DoH.
fn public(cfg: &Config) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    if cfg.dns.public {
        (
            cfg.dns.public_tls_listen.clone(),
            cfg.dns.public_https_listen.clone(),
        )
    } else {
        (vec![], vec![])
    }
}

/// True when a wildcard address of `public` of the same family and port covers `a` (or `a`
/// is one of them).
fn covered(a: &SocketAddr, public: &[SocketAddr]) -> bool {
    public.iter().any(|p| {
        p == a || (p.port() == a.port() && p.ip().is_unspecified() && p.is_ipv4() == a.is_ipv4())
    })
}

/// What every DoH (+ admin page) listener shares.
struct Https<'a> {
    service: &'a Arc<DnsService>,
    acc: tokio_rustls::TlsAcceptor,
    idle: Duration,
    slots: &'a Arc<ConnSlots>,
    admin: &'a AdminSlot,
}

/// Binds and serves one DoH (+ admin page) listener; true when it is served. A port that
/// cannot be bound is skipped with a warning when `optional`.
async fn serve_https(
    h: &Https<'_>,
    a: SocketAddr,
    role: Listener,
    optional: bool,
) -> Result<bool, DaemonError> {
    match crate::dns::server::bind_tcp(a).await {
        Ok(l) => {
            crate::dns::doh::serve(
                h.service.clone(),
                l,
                h.acc.clone(),
                h.idle,
                h.slots.clone(),
                h.admin.clone(),
                role,
            );
            Ok(true)
        }
        Err(e) if optional => {
            tracing::warn!(
                port = a.port(),
                "HTTPS (admin page, TLS transport) not served on one address (port in use?)"
            );
            tracing::debug!(error = %e, "HTTPS bind failed");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Starts the admin page's own HTTPS listeners (DoH too): `admin.listen` and, with the hub
/// and `admin.overlay`, port 443 of the hub's overlay addresses. The HTTPS listeners
/// [`serve_dns`] bound (`bound`) already serve it. An address that cannot be bound (port 443
/// taken by a web server of the owner's) is skipped with a warning.
pub async fn serve_admin(
    cfg: &Config,
    service: &Arc<DnsService>,
    certs: &Arc<Certs>,
    with_hub: bool,
    overlay: &Overlay,
    admin: &AdminSlot,
    bound: &[SocketAddr],
) -> Result<(), DaemonError> {
    let mut addrs = cfg.admin.listen.clone();
    if with_hub && cfg.admin.overlay {
        addrs.push(SocketAddr::from((overlay.hub_v4(), 443)));
        addrs.push(SocketAddr::from((overlay.hub_v6(), 443)));
    }
    addrs.retain(|a| !covered(a, bound));
    addrs.dedup();
    if addrs.is_empty() {
        return Ok(());
    }
    let slots = ConnSlots::new(
        crate::dns::server::MAX_CONNECTIONS,
        crate::dns::slots::PER_ADDRESS,
    );
    let h = Https {
        service,
        acc: tokio_rustls::TlsAcceptor::from(crate::dns::tls::server_config(certs, HTTPS_ALPN)?),
        idle: Duration::from_secs(cfg.dns.tcp_idle_timeout.max(1)),
        slots: &slots,
        admin,
    };
    for a in addrs {
        serve_https(&h, a, Listener::default(), true).await?;
    }
    Ok(())
}

/// What [`serve_dns`] started.
pub struct Served {
    /// What the DNS listeners serve, as URLs.
    pub urls: Vec<String>,
    /// Every HTTPS listener bound (DoH, public, TLS transport).
    pub https: Vec<SocketAddr>,
}

/// The HTTPS listeners: `dns.https_listen`, the public ones (`dns.public`) and, with the hub
/// (`wg`), `wireguard.tls_listen` — an address a public or DoH listener covers gets the TLS
/// transport there; the others get a listener of their own that gives outsiders nothing
/// else. The bool says whether a failed bind is only a warning.
fn https_listeners(
    cfg: &Config,
    public_https: &[SocketAddr],
    wg: Option<&WgTls>,
) -> Vec<(SocketAddr, Listener, bool)> {
    let wg_addrs: &[SocketAddr] = if wg.is_some() {
        &cfg.wireguard.tls_listen
    } else {
        &[]
    };
    let with_wg = |a: &SocketAddr| {
        wg_addrs
            .iter()
            .any(|w| covered(w, std::slice::from_ref(a)))
            .then(|| wg.cloned())
            .flatten()
    };
    let mut v: Vec<(SocketAddr, Listener, bool)> = cfg
        .dns
        .https_listen
        .iter()
        .filter(|a| !covered(a, public_https))
        .map(|a| {
            let role = Listener {
                wg: with_wg(a),
                ..Listener::default()
            };
            (*a, role, false)
        })
        .chain(public_https.iter().map(|a| {
            let role = Listener {
                public: true,
                outsider_dns: true,
                wg: with_wg(a),
            };
            (*a, role, false)
        }))
        .collect();
    let taken: Vec<SocketAddr> = v.iter().map(|(a, _, _)| *a).collect();
    for w in wg_addrs.iter().filter(|w| !covered(w, &taken)) {
        let role = Listener {
            public: true,
            outsider_dns: false,
            wg: wg.cloned(),
        };
        v.push((*w, role, true));
    }
    v
}

/// Starts the DNS listeners (and the TLS transport's, with the hub: `wg`).
pub async fn serve_dns(
    cfg: &Config,
    service: &Arc<DnsService>,
    certs: &Arc<Certs>,
    with_hub: bool,
    overlay: &Overlay,
    admin: &AdminSlot,
    wg: Option<&WgTls>,
) -> Result<Served, DaemonError> {
    let (public_tls, public_https) = public(cfg);
    let listen = listen_addrs(cfg, with_hub, overlay);
    let idle = Duration::from_secs(cfg.dns.tcp_idle_timeout.max(1));
    let slots = ConnSlots::new(
        crate::dns::server::MAX_CONNECTIONS,
        crate::dns::slots::PER_ADDRESS,
    );
    for a in &listen {
        crate::dns::server::serve_udp(
            service.clone(),
            *a,
            cfg.dns.threads,
            tokio::runtime::Handle::current(),
        )?;
        let l = crate::dns::server::bind_tcp(*a).await?;
        crate::dns::server::serve_stream(service.clone(), l, None, idle, slots.clone());
    }
    let tls: Vec<SocketAddr> = cfg
        .dns
        .tls_listen
        .iter()
        .filter(|a| !covered(a, &public_tls))
        .chain(&public_tls)
        .copied()
        .collect();
    let https = https_listeners(cfg, &public_https, wg);
    if !tls.is_empty() {
        let acc =
            tokio_rustls::TlsAcceptor::from(crate::dns::tls::server_config(certs, &[b"dot"])?);
        for a in &tls {
            let l = crate::dns::server::bind_tcp(*a).await?;
            crate::dns::server::serve_stream(
                service.clone(),
                l,
                Some(acc.clone()),
                idle,
                slots.clone(),
            );
        }
    }
    let mut bound = Vec::new();
    if !https.is_empty() {
        let h = Https {
            service,
            acc: tokio_rustls::TlsAcceptor::from(crate::dns::tls::server_config(
                certs, HTTPS_ALPN,
            )?),
            idle,
            slots: &slots,
            admin,
        };
        for (a, role, optional) in &https {
            if serve_https(&h, *a, role.clone(), *optional).await? {
                bound.push(*a);
            }
        }
    }
    let urls = listen
        .iter()
        .map(|a| format!("dns://{a}"))
        .chain(tls.iter().map(|a| format!("tls://{a}")))
        .chain(
            https
                .iter()
                .filter(|(a, role, _)| bound.contains(a) && (!role.public || role.outsider_dns))
                .map(|(a, _, _)| format!("https://{a}/dns-query")),
        )
        .collect();
    Ok(Served { urls, https: bound })
}

/// Warns when ACME is on but nothing answers the CA's validation on port 443.
pub fn check_acme_reachable(cfg: &Config) {
    if !cfg.tls.acme {
        return;
    }
    let (_, public_https) = public(cfg);
    let wg = if cfg.wireguard.enabled {
        &cfg.wireguard.tls_listen[..]
    } else {
        &[]
    };
    let on_443 = public_https
        .iter()
        .chain(wg)
        .chain(&cfg.dns.https_listen)
        .chain(&cfg.admin.listen)
        .any(|a| a.port() == 443 && !a.ip().is_loopback());
    if !on_443 {
        tracing::warn!("tls.acme is on, but no HTTPS listener is on port 443 of a public address: the CA cannot validate (set dns.public = true, or keep wireguard.tls_listen on port 443)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_covers_its_family_and_port() {
        let public: Vec<SocketAddr> =
            vec!["0.0.0.0:443".parse().unwrap(), "[::]:443".parse().unwrap()];
        assert!(covered(&"127.0.0.1:443".parse().unwrap(), &public));
        assert!(covered(&"[fd00::1]:443".parse().unwrap(), &public));
        assert!(!covered(&"127.0.0.1:8443".parse().unwrap(), &public));
        let v4only: Vec<SocketAddr> = vec!["0.0.0.0:443".parse().unwrap()];
        assert!(!covered(&"[fd00::1]:443".parse().unwrap(), &v4only));
        assert!(!covered(&"127.0.0.1:443".parse().unwrap(), &[]));
    }
}
