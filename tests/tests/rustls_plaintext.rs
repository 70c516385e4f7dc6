//! Codex's TLS stack read on the real kernel (issue 14): custodyd runs a declared agent
//! that is a *stripped* Rust binary on rustls with the ring provider (the stack of Codex)
//! against a loopback HTTPS server. Its request — whose prompt word sits beyond the first
//! TLS record (16 KiB) — the response's tool call, and the bearer token's fingerprint are
//! read from ring's AEAD seal/open, and request and response carry one connection id.

use std::process::{Command, Stdio};
use std::time::Duration;

use custody_tests::{Daemon, Server, agents_dir, bpf_available, kind, write_tls_files};
use serde_json::Value;

const DEEP_WORD: &str = "quokkazephyr";
const TOKEN: &str = "sk-rustlsTestToken0123456789abcdefXYZ";

#[test]
fn a_stripped_rustls_client_s_request_response_and_credential_are_read() {
    let name = "a_stripped_rustls_client_s_request_response_and_credential_are_read";
    if !bpf_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    write_tls_files(work);
    let client = work.join("rustls-client");
    std::fs::copy(env!("CARGO_BIN_EXE_rustls-client"), &client).unwrap();
    assert!(
        Command::new("strip")
            .arg(&client)
            .status()
            .unwrap()
            .success()
    );
    let agent_id = format!("rustls-agent-{}", std::process::id());
    let config = format!(
        "[sensor]\nhost_id = \"rustls-host\"\nstate_dir = \"{}\"\n\n[[agent]]\nid = \"{agent_id}\"\nowner = \"alice@example.com\"\n[agent.match]\nenv = \"{agent_id}\"\n",
        work.join("state").display()
    );
    let daemon = Daemon::start(work, &config, &[]);
    let tls = Server::start(
        Command::new("python3")
            .arg(agents_dir().join("tls_server.py"))
            .arg(work.join("server.pem"))
            .arg(work.join("server.key")),
    );
    let port: u64 = tls.first_line.trim().parse().unwrap();
    let url = format!("https://localhost:{port}/v1/chat/completions");
    // ~30 KB of system prompt before the user's message: the word is in the second record.
    let body = serde_json::json!({
        "model": "rustls-test-model",
        "messages": [
            {"role": "system", "content": "policy ".repeat(4300)},
            {"role": "user", "content": format!("summarise the {DEEP_WORD} ledger")},
        ],
        "tools": [{"type": "function", "function": {"name": "read_ledger", "parameters": {}}}],
    })
    .to_string();
    assert!(body.find(DEEP_WORD).unwrap() > 16 * 1024);
    // A loop of runs: the first may start before its binary is analysed and attached;
    // later runs of the same file are hooked from their first instruction.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looper = {
        let (stop, client, url, agent_id, body) = (
            stop.clone(),
            client.clone(),
            url.clone(),
            agent_id.clone(),
            body.clone(),
        );
        let ca = work.join("ca.pem");
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = Command::new(&client)
                    .arg(&url)
                    .arg(&body)
                    .env("CUSTODY_AGENT", &agent_id)
                    .env("CUSTODY_TEST_CA", &ca)
                    .env("CUSTODY_TEST_BEARER", TOKEN)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let exe = client.display().to_string();
    let of_client = |e: &Value| e["process"]["exe"] == exe.as_str();
    let response = |e: &Value| kind(e) == "llm_response" && of_client(e);
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        daemon.wait_for(
            "the rustls client's LLM response",
            Duration::from_secs(60),
            response,
        )
    }));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = looper.join();
    let evs = waited.unwrap_or_else(|e| std::panic::resume_unwind(e));
    std::thread::sleep(Duration::from_millis(1200)); // one status refresh
    let status: Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("status.json")).unwrap()).unwrap();
    let all = daemon.stop();

    let resp = evs.iter().find(|e| response(e)).unwrap();
    let r = &resp["kind"]["llm_response"];
    eprintln!("{resp}");
    assert_eq!(r["tool_calls"][0]["name"], "read_ledger", "{r}");
    let conn = r["conn_id"].as_str().unwrap();
    // The request of that response: same process, same connection id.
    let req = evs
        .iter()
        .find(|e| {
            kind(e) == "llm_request"
                && of_client(e)
                && e["kind"]["llm_request"]["conn_id"] == conn
                && e["process"]["pid"] == resp["process"]["pid"]
        })
        .unwrap_or_else(|| panic!("no llm_request on {conn}: {resp}"));
    let q = &req["kind"]["llm_request"];
    assert_eq!(req["process"]["agent_id"], agent_id.as_str());
    assert_eq!(q["model"], "rustls-test-model", "{q}");
    assert!(
        q["user_excerpt"].as_str().unwrap_or("").contains(DEEP_WORD),
        "the prompt word beyond the first record: {q}"
    );
    assert!(
        q["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "read_ledger")),
        "{q}"
    );
    // The bearer token: a fingerprint in the request, never the token.
    let http = evs
        .iter()
        .find(|e| {
            kind(e) == "http_request"
                && of_client(e)
                && e["kind"]["http_request"]["conn_id"] == conn
        })
        .unwrap_or_else(|| panic!("no http_request on {conn}"));
    let fps = http["kind"]["http_request"]["credential_fingerprints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!fps.is_empty(), "{http}");
    let raw = std::fs::read_to_string(work.join("events.jsonl")).unwrap();
    assert!(!raw.contains(TOKEN), "the raw token reached the output");
    assert!(!all.is_empty());
    // Covered: no opaque egress or uncovered report for this binary.
    assert!(
        !evs.iter()
            .any(|e| kind(e) == "opaque_egress" && of_client(e)),
        "a covered client's connections are not opaque"
    );
    let attached = status.to_string();
    assert!(
        attached.contains("rustls"),
        "status names the stack: {status}"
    );
}
