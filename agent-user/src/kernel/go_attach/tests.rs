//! `attach_go` on the real kernel: a stripped Go HTTPS client (built from
//! `tests/agents/tls_clients/go`, Go's own crypto/tls) POSTs a ~100 KB chat-completions
//! body with a bearer key to a loopback TLS server; the records the Go programs emit must
//! reassemble into that request and the server's response, in the right directions, while
//! the hooked client still gets its answer and exits 0. An untracked run of the same binary
//! costs only the sampled request head. Plus the decoy rule, without a kernel: a `RET`
//! byte that is not a `RET` instruction of the function is refused before any attach.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_ebpf::{TLS_MAX, TlsEvent, Tracked, counter, direction, flag};
use agent_user::credential::{FleetKey, scan_headers};
use agent_user::intent::{Chunk, HttpMessage, TlsStream, parse_llm_request, parse_llm_response};
use agent_user::tls_stack::{self, HookSite, TlsStack};

use super::{attach_go, check_rets, verify};
use crate::kernel::decode::{Raw, decode};
use crate::kernel::loader;
use crate::kernel::test_support::{Attached, PinCleanup, root_or_skip};

/// A secret for the test only: it must reach the daemon's parsers as a fingerprint.
const KEY: &str = "sk-proj-GoTlsTestKey0123456789abcdefABCDEF";

fn required() -> bool {
    std::env::var("CUSTODY_REQUIRE_BPF").as_deref() == Ok("1")
}

fn skip(name: &str, why: &str) {
    assert!(
        !required(),
        "{name} {why}, and CUSTODY_REQUIRE_BPF=1 forbids skipping"
    );
    eprintln!("skipping {name}: {why}");
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Go client built with `-s -w` and then `strip`ped (no symbol table at all: only
/// `.gopclntab` says where crypto/tls is). None when Go or strip is missing.
fn stripped_go_client(name: &str, dir: &Path) -> Option<PathBuf> {
    let out = dir.join("go_client");
    let built = Command::new("go")
        .args(["build", "-trimpath", "-ldflags=-s -w", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(repo().join("tests/agents/tls_clients/go"))
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0")
        .output();
    match built {
        Err(e) => {
            skip(name, &format!("cannot run `go` ({e}); install golang-go"));
            return None;
        }
        Ok(o) => assert!(
            o.status.success(),
            "go build: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
    }
    match Command::new("strip").arg(&out).status() {
        Ok(s) => assert!(s.success(), "strip failed"),
        Err(e) => {
            skip(name, &format!("cannot run `strip` ({e})"));
            return None;
        }
    }
    Some(out)
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The repo's Python TLS test server with a certificate Go accepts (a SAN for
/// 127.0.0.1). Returns it, its port and the certificate (the client's CA).
fn server(dir: &Path) -> (Proc, u16, PathBuf) {
    let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl req");
    let mut child = Command::new("python3")
        .arg(repo().join("tests/agents/tls_server.py"))
        .args([&cert, &key])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut l = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut l)
        .unwrap();
    (Proc(child), l.trim().parse().unwrap(), cert)
}

/// The request body: ~100 KB, the user's codeword and the tools well past the first
/// 16 KB (one TLS record, the old capture limit).
fn body() -> String {
    serde_json::json!({
        "model": "gpt-4o-go",
        "messages": [
            {"role": "system", "content": "You are careful. ".repeat(6000)},
            {"role": "user", "content": "FINDME-GOTLS list the ledger files"}
        ],
        "tools": [{"type": "function", "function": {"name": "read_ledger", "parameters": {}}}]
    })
    .to_string()
}

/// Starts the client under a shell that waits for one line on stdin and then `exec`s it:
/// the pid stays the same, so the test can track it before the first byte is sent.
fn client(bin: &Path, port: u16, ca: &Path, body: &str, h2: bool) -> Proc {
    Proc(
        Command::new("/bin/sh")
            .args(["-c", "read go; exec \"$0\" \"$@\""])
            .arg(bin)
            .arg(format!("https://127.0.0.1:{port}/v1/chat/completions"))
            .arg(body)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CUSTODY_TEST_CA", ca)
            .env("CUSTODY_TEST_AUTH", format!("Bearer {KEY}"))
            .env("CUSTODY_TEST_H2", if h2 { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Releases the client, waits for it to exit, returns (exit status, stdout, stderr).
fn run(c: &mut Proc) -> (std::process::ExitStatus, String, String) {
    let stdin = c.0.stdin.as_mut().unwrap();
    writeln!(stdin, "go").unwrap();
    stdin.flush().unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    c.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    c.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (c.0.wait().unwrap(), out, err)
}

/// Feeds one direction's records (in arrival order) to a stream parser.
fn messages(records: &[&TlsEvent]) -> Vec<HttpMessage> {
    let mut s = TlsStream::new();
    let mut out = Vec::new();
    for e in records {
        let data = &e.data[..e.captured as usize];
        out.extend(s.feed_chunk(Chunk {
            call_id: e.call_id,
            offset: u64::from(e.offset),
            call_len: u64::from(e.len),
            data,
            last: u64::from(e.offset) + data.len() as u64 >= u64::from(e.len),
        }));
    }
    out
}

/// The HTTP/2 stand-in: rustls offering only `h2` by ALPN, answering every request
/// (after reading its whole body) with the chat-completions tool call the Python server
/// gives. Runs until the test's process ends. Returns its port and CA file.
fn h2_server(dir: &Path) -> (u16, PathBuf) {
    use bytes::Bytes;
    use std::sync::Arc;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let ca = dir.join("h2-ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((sock, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let Ok(mut conn) = h2::server::handshake(tls).await else {
                        return;
                    };
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        tokio::spawn(async move {
                            let mut body = req.into_body();
                            let mut got = Vec::new();
                            while let Some(Ok(d)) = body.data().await {
                                let _ = body.flow_control().release_capacity(d.len());
                                got.extend_from_slice(&d);
                            }
                            let model = serde_json::from_slice::<serde_json::Value>(&got)
                                .ok()
                                .and_then(|v| v["model"].as_str().map(String::from))
                                .unwrap_or_default();
                            let answer = serde_json::json!({
                                "id": "chatcmpl-test", "object": "chat.completion", "model": model,
                                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                                    "role": "assistant", "content": null,
                                    "tool_calls": [{"id": "call_1", "type": "function", "function": {
                                        "name": "read_ledger", "arguments": "{\"month\": \"2026-10\"}"}}]}}]
                            })
                            .to_string();
                            let head = http::Response::builder()
                                .status(200)
                                .header("content-type", "application/json")
                                .header("content-length", answer.len())
                                .body(())
                                .unwrap();
                            if let Ok(mut send) = respond.send_response(head, false) {
                                let _ = send.send_data(Bytes::from(answer), true);
                            }
                        });
                    }
                });
            }
        });
    });
    (port, ca)
}

/// The whole exchange of the hooked Go client over HTTP/1.1 (against the Python server,
/// plus an untracked run of the same binary) or HTTP/2 (against [`h2_server`]).
fn exchange(name: &str, h2: bool) {
    if !root_or_skip(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = stripped_go_client(name, dir.path()) else {
        return;
    };
    let inspection = tls_stack::inspect(&bin).expect("inspect the Go client");
    let go = inspection
        .finding(TlsStack::GoCryptoTls)
        .expect("Go crypto/tls found");
    assert!(go.covered(), "{go:#?}");

    let pins = PathBuf::from(format!(
        "/sys/fs/bpf/custody-test-gotls-{}-{}",
        std::process::id(),
        u8::from(h2)
    ));
    let _cleanup = PinCleanup(pins.clone());
    let mut l = loader::load(&loader::Options {
        observe_all: false,
        floor: false,
        tls_binaries: Vec::new(),
        netns: 0,
        pin_dir: Some(pins),
    })
    .expect("load programs");
    let go_links = attach_go(&mut l.ebpf, &bin, &inspection, false).expect("attach_go");
    assert_eq!(go_links.len(), go.hooks.len(), "one link per hook point");
    for p in [
        "custody_go_write",
        "custody_go_write_ret",
        "custody_go_read_entry",
        "custody_go_read_ret",
        "custody_ssl_ret",
    ] {
        let info = l.ebpf.program(p).and_then(|p| p.info().ok());
        let verified = info.and_then(|i| i.verified_instruction_count());
        eprintln!("{p}: {verified:?} instructions verified");
    }
    let _go_links = Attached(go_links);
    let _links = Attached(l.links);
    let mut tracked = l.tracked;
    let mut events = l.events;

    let (_server, port, ca) = if h2 {
        let (port, ca) = h2_server(dir.path());
        (None, port, ca)
    } else {
        let (p, port, ca) = server(dir.path());
        (Some(p), port, ca)
    };
    let body = body();
    let mut agent = client(&bin, port, &ca, &body, h2);
    let mut other = (!h2).then(|| client(&bin, port, &ca, &body, h2));
    let agent_pid = agent.0.id();
    let other_pid = other.as_ref().map(|o| o.0.id());
    tracked.insert(agent_pid, Tracked::new(1, 0), 0).unwrap();
    let (status, out, err) = run(&mut agent);
    assert!(status.success(), "hooked Go client failed: {status} {err}");
    if let Some(other) = other.as_mut() {
        let (ostatus, oout, oerr) = run(other);
        assert!(
            ostatus.success(),
            "untracked Go client failed: {ostatus} {oerr}"
        );
        assert_eq!(out, oout, "both runs got the same answer");
    }
    let (code, answer) = out.trim_end().split_once(' ').expect("status and body");
    assert_eq!(code, "200", "{out}");

    let mut mine: Vec<Box<TlsEvent>> = Vec::new();
    let mut theirs: Vec<Box<TlsEvent>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_millis(500) {
        let mut any = false;
        while let Some(item) = events.next() {
            any = true;
            let Ok(Raw::Tls(e)) = decode(&item) else {
                continue;
            };
            if e.hdr.tgid == agent_pid {
                mine.push(e);
            } else if Some(e.hdr.tgid) == other_pid {
                theirs.push(e);
            }
        }
        if any {
            quiet_since = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // The tracked client: one connection, both directions, whole.
    assert!(mine.iter().all(|e| e.hdr.flags & flag::HELD == 0));
    assert!(mine.iter().all(|e| e.hdr.flags & flag::TRACKED != 0));
    let conns: BTreeMap<u64, usize> = mine.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.conn).or_default() += 1;
        m
    });
    assert_eq!(conns.len(), 1, "one *tls.Conn: {conns:?}");
    let writes: Vec<&TlsEvent> = mine
        .iter()
        .filter(|e| e.direction == direction::WRITE)
        .map(|e| &**e)
        .collect();
    let reads: Vec<&TlsEvent> = mine
        .iter()
        .filter(|e| e.direction == direction::READ)
        .map(|e| &**e)
        .collect();
    assert!(
        writes
            .iter()
            .all(|e| e.hdr.flags & flag::DATA_TRUNCATED == 0),
        "no write over the cap"
    );
    let written: usize = writes.iter().map(|e| e.captured as usize).sum();
    assert!(
        written > body.len(),
        "{written} bytes written for a {}-byte body",
        body.len()
    );
    if h2 {
        assert!(
            writes[0].data.starts_with(b"PRI * HTTP/2.0\r\n"),
            "the client preface comes first"
        );
    } else {
        assert!(
            writes.iter().any(|e| e.offset > 0),
            "a write longer than one record arrives as chunks of one call"
        );
    }

    let sent = messages(&writes);
    let req = sent
        .iter()
        .find_map(|m| match m {
            HttpMessage::Request(r) => Some(r),
            _ => None,
        })
        .expect("the request, from the write direction");
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/chat/completions");
    assert!(req.body_complete, "the whole body");
    assert!(req.body == body.as_bytes(), "the body byte for byte");
    let llm = parse_llm_request(req).expect("a chat-completions request");
    assert_eq!(llm.model, "gpt-4o-go");
    assert!(
        llm.user_excerpt.contains("FINDME-GOTLS"),
        "{}",
        llm.user_excerpt
    );
    assert_eq!(llm.tools, vec!["read_ledger".to_string()]);

    // The header credential: the same fingerprint as the key itself gives, never the key.
    let key = FleetKey::from_bytes([7; 32]);
    let creds = scan_headers(&req.headers, &key);
    let want = scan_headers(
        &[("Authorization".to_string(), format!("Bearer {KEY}"))],
        &key,
    );
    assert_eq!(want.len(), 1);
    assert_eq!(creds.len(), 1, "{creds:?}");
    assert_eq!(creds[0].fingerprint, want[0].fingerprint);
    assert!(!creds[0].fingerprint.contains(KEY));
    assert!(!format!("{:?}", creds[0].metadata).contains(KEY));

    let got = messages(&reads);
    let resp = got
        .iter()
        .find_map(|m| match m {
            HttpMessage::Response(r) => Some(r),
            _ => None,
        })
        .expect("the response, from the read direction");
    assert_eq!(resp.status, 200);
    assert!(resp.body_complete);
    assert_eq!(resp.body, answer.as_bytes(), "what the client printed");
    let llm_resp = parse_llm_response("openai", resp).expect("a chat-completions response");
    assert_eq!(llm_resp.tool_calls.len(), 1);
    assert_eq!(llm_resp.tool_calls[0].name, "read_ledger");
    assert!(
        !sent.iter().any(|m| matches!(m, HttpMessage::Response(_)))
            && !got.iter().any(|m| matches!(m, HttpMessage::Request(_))),
        "directions not swapped"
    );

    if other_pid.is_some() {
        // The untracked run: the request head only (one record per write).
        let other_writes: Vec<_> = theirs
            .iter()
            .filter(|e| e.direction == direction::WRITE)
            .collect();
        assert!(!other_writes.is_empty(), "the request head is sampled");
        assert!(
            other_writes
                .iter()
                .all(|e| e.offset == 0 && e.captured as usize <= TLS_MAX),
            "one record per call"
        );
        assert!(
            other_writes.iter().all(|e| e.data[..4] == *b"POST"),
            "only the request-shaped write"
        );
    }
    let missed: u64 = l
        .counters
        .get(&counter::GO_TLS_MISSED, 0)
        .map(|v| v.iter().sum())
        .unwrap_or(0);
    assert_eq!(missed, 0, "every RET found its entry");
}

#[test]
fn a_stripped_go_clients_100_kb_http1_post_and_its_response_arrive_whole() {
    exchange(
        "a_stripped_go_clients_100_kb_http1_post_and_its_response_arrive_whole",
        false,
    );
}

#[test]
fn a_stripped_go_clients_100_kb_http2_post_and_its_response_arrive_whole() {
    exchange(
        "a_stripped_go_clients_100_kb_http2_post_and_its_response_arrive_whole",
        true,
    );
}

#[test]
fn a_ret_byte_that_is_not_a_ret_instruction_is_refused() {
    // mov rax, 0xc3 ; ret: byte 3 is 0xc3 inside the mov, byte 7 is the RET.
    let code = [0x48, 0xc7, 0xc0, 0xc3, 0x00, 0x00, 0x00, 0xc3];
    assert!(check_rets(&code, 0x1000, &[7]).is_ok());
    let e = check_rets(&code, 0x1000, &[3]).unwrap_err().to_string();
    assert!(e.contains("inside an instruction"), "{e}");
    // A RET site past the bytes given is not reached.
    assert!(check_rets(&code[..7], 0x1000, &[3, 7]).is_err());
}

#[test]
fn attach_go_checks_the_file_against_its_inspection() {
    let name = "attach_go_checks_the_file_against_its_inspection";
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = stripped_go_client(name, dir.path()) else {
        return;
    };
    let inspection = tls_stack::inspect(&bin).unwrap();
    let go = inspection.finding(TlsStack::GoCryptoTls).unwrap();
    let bytes = std::fs::read(&bin).unwrap();
    verify(&bytes, &inspection.identity, &go.hooks).expect("the inspected file verifies");

    // A RET site moved by one byte (off the instruction boundary): refused.
    let mut moved = go.hooks.clone();
    let r = moved
        .iter_mut()
        .find(|h| h.site == HookSite::Return)
        .unwrap();
    r.file_offset -= 1;
    r.vaddr -= 1;
    assert!(verify(&bytes, &inspection.identity, &moved).is_err());

    // The file changed under the inspection (a RET overwritten): refused.
    let r = go
        .hooks
        .iter()
        .find(|h| h.site == HookSite::Return)
        .unwrap();
    let mut patched = bytes.clone();
    patched[r.file_offset as usize] = 0x90;
    assert!(verify(&patched, &inspection.identity, &go.hooks).is_err());

    // Another length than inspected: refused.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(verify(&longer, &inspection.identity, &go.hooks).is_err());
}
