//! rustls-client: a small HTTPS client over rustls (ring provider, no OpenSSL), for tests
//! of what Custody sees from Rust agents such as Codex, whose model traffic goes through
//! rustls in a stripped binary. It POSTs a JSON body to `https://HOST:PORT/PATH` over
//! HTTP/1.1 and prints the status line. The CA to trust is read from CUSTODY_TEST_CA (PEM);
//! CUSTODY_TEST_BEARER, when set, is sent as an `Authorization: Bearer` header.
//!
//! Usage: rustls-client URL [BODY]. Build it stripped (`strip` the binary, or
//! `-C strip=symbols`) to test the uncovered-TLS report.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

fn main() {
    if let Err(e) = run() {
        eprintln!("rustls-client: {e}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: rustls-client URL [BODY]"))?;
    let body = args.next().unwrap_or_else(|| {
        r#"{"model":"rustls-test-model","messages":[{"role":"user","content":"hello from rustls"}]}"#
            .to_string()
    });
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow::anyhow!("{url}: only https:// URLs"))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:443")
    };

    let mut roots = rustls::RootCertStore::empty();
    if let Ok(ca) = std::env::var("CUSTODY_TEST_CA") {
        for cert in CertificateDer::pem_file_iter(&ca)? {
            roots.add(cert?)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(&addr)?);
    let auth = std::env::var("CUSTODY_TEST_BEARER")
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        tls,
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    tls.flush()?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // Servers that close without close_notify: what arrived is still the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.into()),
    }
    let text = String::from_utf8_lossy(&response);
    println!("{}", text.lines().next().unwrap_or(""));
    Ok(())
}
