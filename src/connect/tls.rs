//! The client's TLS stream to the hub's port 443: opened with the `cloudpc-wg/1` ALPN, read
//! frame by frame into the data plane until it breaks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::path::Mode;
use super::{system, Inbound, Link, Scratch};
use crate::hub::tls::{next_frame, write_loop, Outbox};

/// Opens the TLS stream and reads it until it breaks.
pub(super) async fn tls_session(
    link: Arc<Link>,
    inbound: Arc<dyn Inbound>,
    on_open: Arc<dyn Fn() + Send + Sync>,
) {
    match open_tls(&link).await {
        Ok(stream) => {
            let (mut r, w) = tokio::io::split(stream);
            let out = Outbox::new();
            let writer = tokio::spawn(write_loop(out.clone(), w));
            {
                let mut slot = link.tls.lock();
                if let Some((old, _)) = slot.take() {
                    old.close();
                }
                *slot = Some((out.clone(), writer.abort_handle()));
            }
            link.path.lock().tls_opened();
            *link.tls_problem.lock() = None;
            tracing::info!("TLS stream to port {} open", link.hub_tls.port());
            on_open();
            let mut buf = vec![0u8; 4 * 65_537];
            let mut filled = 0;
            let mut scratch = Scratch::new();
            loop {
                let n = match r.read(&mut buf[filled..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                filled += n;
                let mut frames = Vec::new();
                let mut pos = 0;
                let mut bad = false;
                loop {
                    match next_frame(&buf[pos..filled]) {
                        Ok(Some(len)) => {
                            frames.push((pos + 2, len));
                            pos += 2 + len;
                        }
                        Ok(None) => break,
                        Err(_) => {
                            bad = true;
                            break;
                        }
                    }
                }
                let mut it = frames.iter().map(|&(s, l)| &buf[s..s + l]);
                inbound.handle(Mode::Tls, &mut it, &mut scratch).await;
                if bad {
                    // Not our hub (a captive portal answering 443?).
                    tracing::info!("the TLS stream carried something else than WireGuard");
                    *link.tls_problem.lock() =
                        Some("the stream carried something else than WireGuard".into());
                    break;
                }
                buf.copy_within(pos..filled, 0);
                filled -= pos;
            }
            out.close();
            let mut slot = link.tls.lock();
            if slot.as_ref().is_some_and(|(o, _)| Arc::ptr_eq(o, &out)) {
                *slot = None;
            }
            drop(slot);
            tracing::info!("TLS stream closed");
            link.tls_problem
                .lock()
                .get_or_insert_with(|| "the stream was closed".into());
        }
        Err(e) => {
            tracing::info!(error = %e, "cannot open TLS to the hub");
            *link.tls_problem.lock() = Some(e.to_string());
        }
    }
    link.path.lock().tls_failed(Instant::now());
}

async fn open_tls(
    link: &Link,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let sock = if link.hub_tls.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(m) = link.mark {
        system::set_mark(&sock, m)?;
    }
    sock.set_nodelay(true)?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), sock.connect(link.hub_tls))
        .await
        .map_err(|_| anyhow::anyhow!("TCP connect timed out"))??;
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        link.connector.connect(link.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| anyhow::anyhow!("TLS handshake timed out"))??;
    if tls.get_ref().1.alpn_protocol() != Some(crate::hub::tls::ALPN) {
        anyhow::bail!(
            "port {} is not a cloudpc hub's TLS transport",
            link.hub_tls.port()
        );
    }
    Ok(tls)
}

/// The server-certificate check of the client's own connections: with `pin`, the certificate
/// whose SHA-256 (hex) it names, and no other (an invite or link to a self-signed hub);
/// without, any certificate, where the WireGuard handshake inside (or the tunnel the
/// connection runs in) authenticates the peer and TLS only makes the stream look like HTTPS.
#[derive(Debug)]
pub(crate) struct PeerCert {
    pub(crate) pin: Option<String>,
    pub(crate) provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PeerCert {
    fn verify_server_cert(
        &self,
        end: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let Some(pin) = &self.pin else {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        };
        let got = ring::digest::digest(&ring::digest::SHA256, end.as_ref());
        let hex: String = got.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        if &hex == pin {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the hub's certificate is not the one the link names".into(),
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(m, c, d, algs)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(m, c, d, algs)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub(super) fn connector() -> anyhow::Result<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerCert {
            pin: None,
            provider,
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![crate::hub::tls::ALPN.to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}
