//! `cloudpc connect --invite LINK`: a Linux device joins with an invite. The key pair is made
//! here and only the public key is sent; the hub's certificate is checked against the pin in
//! the link (a certificate no public CA signed) or against the public CAs.

use std::sync::Arc;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};

use super::tls::PeerCert;
use crate::enroll::keys::KeyPair;

/// An invite link, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteLink {
    /// `host:port` of the hub's HTTPS listener.
    pub authority: String,
    /// The host alone (the TLS server name).
    pub host: String,
    pub code: String,
    /// SHA-256 of the hub's certificate (DER), hex.
    pub pin: Option<String>,
}

/// Reads `https://HOST[:PORT]/invite#code=CODE[&pin=HEX]`.
pub fn parse_link(link: &str) -> anyhow::Result<InviteLink> {
    parse_hub_link(link, "invite")
}

/// Reads `https://HOST[:PORT]/PATH#code=CODE[&pin=HEX]` (invite and link codes).
pub fn parse_hub_link(link: &str, want: &str) -> anyhow::Result<InviteLink> {
    let bad = || {
        anyhow::anyhow!(
            "{link:?} is not a {want} link: use the https://…/{want}#code=… link `cloudpc {want} create` printed"
        )
    };
    let rest = link.trim().strip_prefix("https://").ok_or_else(bad)?;
    let (authority, after) = rest.split_once('/').ok_or_else(bad)?;
    let (path, fragment) = after.split_once('#').ok_or_else(bad)?;
    if path != want || authority.is_empty() {
        return Err(bad());
    }
    let mut code = None;
    let mut pin = None;
    for kv in fragment.split('&') {
        match kv.split_once('=') {
            Some(("code", v)) => code = Some(v.to_string()),
            Some(("pin", v)) if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
                pin = Some(v.to_ascii_lowercase())
            }
            _ => {}
        }
    }
    let code = code.filter(|c| !c.is_empty()).ok_or_else(bad)?;
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or_else(bad)?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        (h.to_string(), after)
    } else {
        let (h, after) = match authority.find(':') {
            Some(i) => authority.split_at(i),
            None => (authority, ""),
        };
        if h.parse::<std::net::Ipv4Addr>().is_err() && !crate::dns::name::is_valid_zone(h) {
            return Err(bad());
        }
        (h.to_string(), after)
    };
    let port: u16 = match port {
        "" => 443,
        p => p
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .ok_or_else(bad)?,
    };
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(InviteLink {
        authority,
        host,
        code,
        pin,
    })
}

/// Redeems the invite and returns the device's name and its complete config (with the
/// private key made here).
pub fn redeem(link: &InviteLink, name: Option<&str>) -> anyhow::Result<(String, String)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let keys = KeyPair::generate();
    let body = serde_json::json!({
        "code": link.code,
        "public_key": keys.public_b64(),
        "name": name,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, answer) = rt.block_on(post_json(link, "/invite/redeem", body.to_string()))?;
    let v: serde_json::Value = serde_json::from_slice(&answer)
        .with_context(|| format!("the hub's answer (HTTP {status}) is not JSON"))?;
    if !(200..300).contains(&status) {
        bail!(
            "the hub refused the invite: {}",
            v["error"].as_str().unwrap_or("no reason given")
        );
    }
    let r: crate::api::Redeemed = serde_json::from_value(v)?;
    let config = fill_private_key(&r.config, &keys.private_b64());
    Ok((r.device.name, config))
}

/// Puts the device's private key into a config the hub rendered without one.
pub fn fill_private_key(config: &str, private_b64: &str) -> String {
    config
        .lines()
        .map(|l| {
            if l.starts_with("# PrivateKey =") {
                format!("PrivateKey = {private_b64}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// How the server's certificate is checked.
pub enum Trust {
    /// Its SHA-256 (hex) must be this.
    Pin(String),
    /// A public CA must vouch for it.
    PublicCas,
    /// Any certificate: the WireGuard tunnel the connection runs in authenticates the peer
    /// (a device's LocalSend app, reached at its overlay address).
    Tunnel,
}

/// POSTs JSON `body` to `path` on the hub `link` names, checking its certificate against the
/// link's pin (or the public CAs); returns the status and the body of the answer.
pub async fn post_json(
    link: &InviteLink,
    path: &str,
    body: String,
) -> anyhow::Result<(u16, bytes::Bytes)> {
    let trust = match &link.pin {
        Some(p) => Trust::Pin(p.clone()),
        None => Trust::PublicCas,
    };
    let body = Full::new(bytes::Bytes::from(body));
    let call = https_post(
        &link.authority,
        &link.host,
        &trust,
        path,
        "application/json",
        body,
    );
    tokio::time::timeout(std::time::Duration::from_secs(20), call)
        .await
        .map_err(|_| anyhow::anyhow!("{} did not answer in time", link.authority))?
}

/// POSTs `body` over HTTPS (HTTP/1.1) to `path` at `authority`; returns the status and the
/// answer's body (up to 64 KiB).
pub async fn https_post<B>(
    authority: &str,
    host: &str,
    trust: &Trust,
    path: &str,
    content_type: &str,
    body: B,
) -> anyhow::Result<(u16, bytes::Bytes)>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut cfg = match trust {
        Trust::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerCert {
                pin: Some(pin.clone()),
                provider,
            }))
            .with_no_client_auth(),
        Trust::PublicCas => {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Tunnel => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerCert {
                pin: None,
                provider,
            }))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect(authority),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{authority} did not answer"))?
    .with_context(|| format!("cannot reach {authority}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| anyhow::anyhow!("{host:?} is not a host name"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .context("the TLS handshake failed (is the pin still the certificate?)")?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(body)?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_read_with_and_without_port_and_pin() {
        let pin = "ab".repeat(32);
        let l = parse_link(&format!(
            "https://hub.example.test/invite#code=ABCD-EFGH-JKLM-NPQR&pin={pin}"
        ))
        .unwrap();
        assert_eq!(l.authority, "hub.example.test:443");
        assert_eq!(l.host, "hub.example.test");
        assert_eq!(l.code, "ABCD-EFGH-JKLM-NPQR");
        assert_eq!(l.pin.as_deref(), Some(pin.as_str()));
        let l = parse_link("https://[2001:db8::1]:8443/invite#code=X").unwrap();
        assert_eq!(l.authority, "[2001:db8::1]:8443");
        assert_eq!(l.host, "2001:db8::1");
        assert_eq!(l.pin, None);
        let l = parse_link("https://203.0.113.1/invite#code=X").unwrap();
        assert_eq!(l.authority, "203.0.113.1:443");
        for bad in [
            "http://h/invite#code=X",
            "https://h/other#code=X",
            "https://h/invite",
            "https://h/invite#pin=00",
            "ABCD-EFGH",
        ] {
            assert!(parse_link(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fuzz_invite_links_and_codes() {
        let seeds = vec![
            "https://h.test:8443/invite#code=ABCD-EFGH-JKLM-NPQR&pin=00".to_string(),
            "https://[::1]/invite#code=a&code=b".to_string(),
            "abcd efgh-jklm npqr".to_string(),
        ];
        crate::fuzz::run("invite_links", crate::fuzz::text(seeds), |s| {
            if let Ok(l) = parse_link(s) {
                assert!(l.authority.contains(':') && !l.code.is_empty());
            }
            if let Some(c) = crate::daemon::normalize_code(s) {
                assert_eq!(c.len(), 16);
                assert_eq!(crate::daemon::normalize_code(&c), Some(c.clone()));
            }
        });
    }

    #[test]
    fn the_private_key_goes_where_the_hub_left_its_place() {
        let c = "[Interface]\n# PrivateKey = <this device's own private key>\nAddress = 100.96.0.5/32\n";
        let f = fill_private_key(c, "KEY=");
        assert!(f.contains("\nPrivateKey = KEY=\n") && !f.contains("# PrivateKey"));
    }
}
