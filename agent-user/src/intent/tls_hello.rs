//! TLS ClientHello → server name (SNI) and offered ALPN protocols, from the first bytes
//! a process wrote on a TCP connection. The ClientHello is plaintext whatever TLS
//! library the process uses (stripped BoringSSL, rustls, Go), so this names the host an
//! agent talks to even when its requests cannot be read.
//!
//! Input is whatever the process wrote and may be cut by the capture bound: the parser
//! is total (never panics, no allocation beyond the names it returns), reads only the
//! first handshake record, and answers `None` for anything that is not a ClientHello.
//! A ClientHello cut before its extensions yields what was complete.

/// What a ClientHello says about where the connection goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The server_name extension's host name (lower-cased), if sent.
    pub sni: Option<String>,
    /// The application_layer_protocol_negotiation extension's protocols, in order.
    pub alpn: Vec<String>,
    /// The record was cut before the end of the ClientHello.
    pub truncated: bool,
}

/// At most this many ALPN protocols are kept (clients offer two or three).
const MAX_ALPN: usize = 8;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// Whether these bytes start like a TLS handshake record (cheap pre-check).
pub fn looks_like_tls(data: &[u8]) -> bool {
    data.len() >= 3 && data[0] == CONTENT_HANDSHAKE && data[1] == 3 && data[2] <= 4
}

/// Parse the ClientHello at the start of `data`.
pub fn parse_client_hello(data: &[u8]) -> Option<ClientHello> {
    if !looks_like_tls(data) || data.len() < 9 {
        return None;
    }
    let rec_len = usize::from(u16::from_be_bytes([data[3], data[4]]));
    // Record payloads are at most 2^14 bytes (+ slack the RFC allows for expansion).
    if rec_len == 0 || rec_len > (1 << 14) + 2048 {
        return None;
    }
    let avail = &data[5..];
    let rec = &avail[..avail.len().min(rec_len)];
    let mut truncated = avail.len() < rec_len;
    if rec.len() < 4 || rec[0] != HANDSHAKE_CLIENT_HELLO {
        return None;
    }
    let hs_len = (usize::from(rec[1]) << 16) | (usize::from(rec[2]) << 8) | usize::from(rec[3]);
    let body = &rec[4..];
    // A ClientHello may span records; we read the first one only.
    if body.len() < hs_len {
        truncated = true;
    }
    let body = &body[..body.len().min(hs_len)];
    let mut r = Reader(body);
    let mut out = ClientHello {
        truncated,
        ..Default::default()
    };
    // legacy_version, random, session_id, cipher_suites, compression_methods
    let parsed = (|| {
        let v = r.take(2)?;
        if v[0] != 3 {
            return None;
        }
        r.take(32)?;
        r.vec8()?;
        r.vec16()?;
        r.vec8()?;
        Some(())
    })();
    if parsed.is_none() {
        // Not even the fixed part: garbage unless cut, and then nothing to say.
        return out.truncated.then_some(out);
    }
    let Some(exts) = r.vec16_partial() else {
        return Some(out); // no extensions (or cut right there)
    };
    if exts.1 {
        out.truncated = true;
    }
    let mut e = Reader(exts.0);
    while let (Some(kind), Some(data)) = (e.u16(), e.vec16()) {
        match kind {
            EXT_SERVER_NAME => out.sni = server_name(data),
            EXT_ALPN => out.alpn = alpn(data),
            _ => {}
        }
    }
    Some(out)
}

/// server_name_list: the first host_name entry, if it is a plausible DNS name.
fn server_name(data: &[u8]) -> Option<String> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16()?);
    while let Some(t) = list.u8() {
        let name = list.vec16()?;
        if t == 0 {
            let ok = !name.is_empty()
                && name.len() <= 253
                && name
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            return ok.then(|| String::from_utf8_lossy(name).to_ascii_lowercase());
        }
    }
    None
}

fn alpn(data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(list) = Reader(data).vec16() else {
        return out;
    };
    let mut list = Reader(list);
    while let Some(p) = list.vec8() {
        if out.len() == MAX_ALPN {
            break;
        }
        if !p.is_empty() && p.iter().all(|b| b.is_ascii_graphic()) {
            out.push(String::from_utf8_lossy(p).into_owned());
        }
    }
    out
}

/// A bounds-checked cursor: every read is `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
    /// A 16-bit-length vector, or as much of it as there is (and whether it was cut).
    fn vec16_partial(&mut self) -> Option<(&'a [u8], bool)> {
        let n = usize::from(self.u16()?);
        let have = n.min(self.0.len());
        let cut = have < n;
        self.take(have).map(|v| (v, cut))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::process::{Command, Stdio};
    use std::sync::Arc;

    /// A real ClientHello from rustls (the TLS stack of Codex), made in memory.
    fn rustls_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let roots = rustls::RootCertStore::empty();
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    }

    /// The first bytes a client program writes to a loopback listener.
    fn first_write(client: impl FnOnce(u16) -> std::process::Child) -> Vec<u8> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut child = client(port);
        l.set_nonblocking(false).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut buf = vec![0u8; 16384];
        let mut got = Vec::new();
        // Read until the record announced in the header is complete.
        while got.len() < 5 || got.len() < 5 + usize::from(u16::from_be_bytes([got[3], got[4]])) {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        drop(s);
        let _ = child.kill();
        let _ = child.wait();
        got
    }

    fn check(hello: &[u8], sni: &str, alpn: &[&str], who: &str) {
        let h = parse_client_hello(hello).unwrap_or_else(|| panic!("{who}: not a ClientHello"));
        assert_eq!(h.sni.as_deref(), Some(sni), "{who}");
        assert_eq!(h.alpn, alpn, "{who}");
        assert!(!h.truncated, "{who}");
        // Every cut of it parses without a panic, and never names another host.
        for n in 0..hello.len() {
            if let Some(c) = parse_client_hello(&hello[..n]) {
                assert!(c.truncated, "{who}: cut at {n} not marked");
                assert!(
                    c.sni.is_none() || c.sni.as_deref() == Some(sni),
                    "{who}: cut at {n}"
                );
            }
        }
    }

    #[test]
    fn rustls_client_hello() {
        let h = rustls_hello("api.openai.com", &[b"h2", b"http/1.1"]);
        check(&h, "api.openai.com", &["h2", "http/1.1"], "rustls");
        let h = rustls_hello("Generativelanguage.GoogleAPIs.com", &[]);
        check(
            &h,
            "generativelanguage.googleapis.com",
            &[],
            "rustls no alpn",
        );
    }

    #[test]
    fn python_ssl_client_hello() {
        // Python's ssl (OpenSSL) writing its ClientHello into a memory BIO.
        let script = "import ssl,sys\n\
            c=ssl.create_default_context(); c.set_alpn_protocols(['http/1.1'])\n\
            i,o=ssl.MemoryBIO(),ssl.MemoryBIO()\n\
            s=c.wrap_bio(i,o,server_hostname='api.anthropic.com')\n\
            try: s.do_handshake()\n\
            except ssl.SSLWantReadError: pass\n\
            sys.stdout.buffer.write(o.read())\n";
        let out = Command::new("/usr/bin/python3")
            .args(["-c", script])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        check(
            &out.stdout,
            "api.anthropic.com",
            &["http/1.1"],
            "python ssl",
        );
    }

    #[test]
    fn openssl_and_node_client_hellos() {
        let h = first_write(|port| {
            Command::new("openssl")
                .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
                .args(["-servername", "llm.internal", "-alpn", "h2,http/1.1"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("openssl runs")
        });
        check(&h, "llm.internal", &["h2", "http/1.1"], "openssl s_client");
        let h = first_write(|port| {
            let js = format!(
                "require('tls').connect({{host:'127.0.0.1',port:{port},servername:\
                 'generativelanguage.googleapis.com',ALPNProtocols:['http/1.1']}}).on('error',()=>{{}})"
            );
            Command::new("node")
                .args(["-e", &js])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("node runs")
        });
        check(
            &h,
            "generativelanguage.googleapis.com",
            &["http/1.1"],
            "node",
        );
    }

    #[test]
    fn garbage_and_plaintext_are_not_client_hellos() {
        for d in [
            &b""[..],
            b"\x16",
            b"\x16\x03\x01",
            b"\x16\x03\x01\x00\x00",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", // a ServerHello
            b"\x16\x03\x01\xff\xff\x01\x00\x00\x01\x00",
            &[0x16, 3, 3, 0, 9, 1, 0, 0, 5, 3, 3, 0xff, 0xff, 0xff],
        ] {
            let h = parse_client_hello(d);
            assert!(h.as_ref().is_none_or(|h| h.sni.is_none()), "{d:?}: {h:?}");
        }
        // Random bytes after a valid header never panic.
        let mut x: u32 = 12345;
        for n in 0..2000 {
            let mut d = vec![0x16, 3, 1, 1, 0, 1, 0, 0, 0xfc];
            for _ in 0..(n % 300) {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                d.push((x >> 16) as u8);
            }
            let _ = parse_client_hello(&d);
        }
        // A forged server_name that is not a DNS name is not reported.
        let mut h = rustls_hello("api.openai.com", &[]);
        let at = h.windows(14).position(|w| w == b"api.openai.com").unwrap();
        h[at + 3] = b'/';
        assert_eq!(parse_client_hello(&h).unwrap().sni, None);
    }
}
