//! TLS towards the collector. Before enrollment the host knows only the CA
//! fingerprint its token carries: [`fetch_pinned_ca`] does a TLS handshake that
//! accepts the collector only if its presented chain contains a CA with that
//! SHA-256 and the server certificate verifies against it. Afterwards ordinary
//! tonic TLS with that CA (and the client certificate) is used.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

pub fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

/// "host:port", "https://host:port" -> ("https://host:port", "host", "host:port").
pub fn normalize_addr(addr: &str) -> Result<(String, String, String)> {
    let hp = addr
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let (host, port) = hp.rsplit_once(':').ok_or_else(|| {
        anyhow!("collector address {addr:?} needs a port, e.g. collector.example:7443")
    })?;
    port.parse::<u16>()
        .map_err(|_| anyhow!("bad port in collector address {addr:?}"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((format!("https://{hp}"), host, hp.to_owned()))
}

#[derive(Debug)]
struct PinVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
    presented: Mutex<Vec<String>>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fps: Vec<String> = intermediates.iter().map(|c| sha256_hex(c)).collect();
        *self.presented.lock().unwrap_or_else(|e| e.into_inner()) = fps.clone();
        let Some(i) = fps
            .iter()
            .position(|f| f.eq_ignore_ascii_case(&self.fingerprint))
        else {
            return Err(rustls::Error::General(format!(
                "collector CA does not match the token: token pins {}, collector presented {}",
                self.fingerprint,
                if fps.is_empty() {
                    "no CA".into()
                } else {
                    fps.join(", ")
                }
            )));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(intermediates[i].clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("pinned CA unusable: {e}")))?;
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        v.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Connects to the collector and returns its CA certificate (PEM) if, and only if,
/// the CA in the presented chain has SHA-256 `fingerprint` and vouches for the
/// server certificate. Blocking; call from `spawn_blocking`.
pub fn fetch_pinned_ca(addr: &str, fingerprint: &str) -> Result<String> {
    let (_, host, hp) = normalize_addr(addr)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinVerifier {
        fingerprint: fingerprint.to_ascii_lowercase(),
        provider: provider.clone(),
        presented: Mutex::new(vec![]),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(host.clone())
        .map_err(|_| anyhow!("collector host {host:?} is not a valid DNS name or IP address"))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let sa = hp
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve collector address {hp}"))?
        .next()
        .ok_or_else(|| anyhow!("collector address {hp} resolves to nothing"))?;
    let mut sock = TcpStream::connect_timeout(&sa, Duration::from_secs(10))
        .with_context(|| format!("cannot connect to collector at {hp}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    sock.set_write_timeout(Some(Duration::from_secs(10)))?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut sock) {
            bail!("TLS handshake with collector {hp} failed: {e}");
        }
    }
    // Be polite: close the session before dropping the socket.
    conn.send_close_notify();
    let _ = conn.write_tls(&mut sock);
    let _ = sock.flush();
    let ca_der = conn
        .peer_certificates()
        .and_then(|chain| {
            chain
                .iter()
                .find(|c| sha256_hex(c).eq_ignore_ascii_case(fingerprint))
                .cloned()
        })
        .ok_or_else(|| anyhow!("collector did not present the pinned CA"))?;
    Ok(der_to_pem(&ca_der))
}

/// A tonic channel to the collector over TLS verified by `ca_pem`, optionally
/// authenticating with a client certificate.
pub async fn channel(addr: &str, ca_pem: &str, identity: Option<(&str, &str)>) -> Result<Channel> {
    let (uri, host, _) = normalize_addr(addr)?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(host);
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let ch = Endpoint::from_shared(uri)?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect()
        .await
        .with_context(|| format!("cannot connect to collector at {addr}"))?;
    Ok(ch)
}
