//! The web UI is served by the collector itself, on its gRPC port: HTTPS with the
//! collector's certificate (h2 for browsers, HTTP/1.1 without ALPN), next to the
//! gRPC services, which keep working.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use common::*;
use custody_collector::auth::Role;
use custody_proto::admin::v1::WhoAmIRequest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection verified against the collector CA.
fn connect(addr: &str, ca_pem: &str, alpn: &[&[u8]]) -> Tls {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let ip: std::net::IpAddr = addr.rsplit_once(':').unwrap().0.parse().unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::new(cfg), ServerName::IpAddress(ip.into())).unwrap();
    rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap())
}

/// One HTTPS exchange; returns (negotiated ALPN, raw response).
fn https(addr: &str, ca_pem: &str, alpn: &[&[u8]], request: &str) -> (Option<Vec<u8>>, String) {
    let mut tls = connect(addr, ca_pem, alpn);
    if alpn.contains(&&b"h2"[..]) {
        // Complete the handshake only: a browser would speak h2 from here.
        tls.conn.complete_io(&mut tls.sock).unwrap();
        return (tls.conn.alpn_protocol().map(<[u8]>::to_vec), String::new());
    }
    tls.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    (
        tls.conn.alpn_protocol().map(<[u8]>::to_vec),
        String::from_utf8_lossy(&out).into_owned(),
    )
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_is_served_on_the_collector_port_next_to_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    assert_eq!(
        custody_collector::ui::url(c.addr),
        format!("https://{addr}/")
    );
    let token = operator(dir.path(), Role::Responder);
    let ca = c.ca_pem.clone();

    let (a, ca2) = (addr.clone(), ca.clone());
    let t2 = token.clone();
    let (alpn, login_page, signed_in, fleet, cookie) = tokio::task::spawn_blocking(move || {
        let (alpn, _) = https(&a, &ca2, &[b"h2", b"http/1.1"], "");
        let (_, page) = https(
            &a,
            &ca2,
            &[],
            &format!("GET /login HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n"),
        );
        let body = format!("token={t2}");
        let (_, signed_in) = https(
            &a,
            &ca2,
            &[],
            &format!(
                "POST /login HTTP/1.1\r\nHost: {a}\r\nOrigin: https://{a}\r\nContent-Type: \
                 application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        let cookie = header(&signed_in, "set-cookie")
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let (_, fleet) = https(
            &a,
            &ca2,
            &[],
            &format!("GET /fleet HTTP/1.1\r\nHost: {a}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"),
        );
        (alpn, page, signed_in, fleet, cookie)
    })
    .await
    .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "browsers get h2");
    assert!(login_page.starts_with("HTTP/1.1 200"), "{login_page}");
    assert!(login_page.contains("Operator token"));
    assert!(
        header(&login_page, "content-security-policy").is_some_and(|v| v.contains("'self'")),
        "{login_page}"
    );
    assert!(signed_in.starts_with("HTTP/1.1 303"), "{signed_in}");
    let set = header(&signed_in, "set-cookie").unwrap();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(fleet.starts_with("HTTP/1.1 200"), "{fleet}");
    assert!(fleet.contains("<h1>Fleet</h1>"));

    // gRPC on the same port is unchanged.
    let mut adm = admin(&addr, &c.ca_pem).await;
    let me = adm
        .who_am_i(authed(WhoAmIRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.role, "responder");

    // A browser's live stream does not hold the collector up when it stops.
    let (a, ca2) = (addr.clone(), ca.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut tls = connect(&a, &ca2, &[]);
        tls.write_all(
            format!("GET /live/fleet HTTP/1.1\r\nHost: {a}\r\nCookie: {cookie}\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut buf = [0u8; 4096];
        let n = tls.read(&mut buf).unwrap();
        tx.send(String::from_utf8_lossy(&buf[..n]).into_owned())
            .unwrap();
        // Until the server ends the stream.
        while matches!(tls.read(&mut buf), Ok(n) if n > 0) {}
    });
    let head = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    let t = std::time::Instant::now();
    c.shutdown().await.unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "shutdown took {:?} with a live stream open",
        t.elapsed()
    );
    reader.join().unwrap();
}
