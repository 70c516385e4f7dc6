//! TLS chunk records → pipeline → emitted events, for whole requests and for secrets
//! in request targets: the raw secret must appear nowhere in what is emitted.

use agent_ebpf::{EventHeader, TLS_MAX, TlsEvent, Tracked, direction, flag, kind};
use agent_user::credential::FleetKey;
use custody_proto::sensor::v1::{Event, event::Kind};

use super::super::{Pipeline, Tracker};
use crate::config::Config;
use crate::identity::Identity;
use crate::kernel::decode::Raw;

#[derive(Default)]
struct Recorder;
impl Tracker for Recorder {
    fn track(&mut self, _: u32, _: Tracked) {}
}

const PID: u32 = 3_999_201;
const KEY: [u8; 32] = [1; 32];
const GEMINI_KEY: &str = "AIzaSyFakeGeminiKeyForCustodyTests01234";

fn hdr(tracked: bool) -> EventHeader {
    EventHeader {
        kind: kind::TLS_DATA,
        flags: if tracked { flag::TRACKED } else { 0 },
        ktime_ns: 5_000_000_000,
        tgid: PID,
        pid: PID,
        ppid: 1,
        uid: 1000,
        gid: 1000,
        auid: 1000,
        netns: 4026531840,
        agent: 0,
        cgroup_id: 1,
        start_boottime: 4_000_000_000,
        parent_start_boottime: 0,
        comm: *b"node\0\0\0\0\0\0\0\0\0\0\0\0",
    }
}

/// The records the kernel emits for one call: `TLS_MAX` chunks up to `cap`.
fn call(dir: u32, tracked: bool, id: u64, data: &[u8], cap: usize) -> Vec<Raw> {
    let kept = &data[..data.len().min(cap)];
    let n = kept.len().div_ceil(TLS_MAX).max(1);
    (0..n)
        .map(|i| {
            // SAFETY: the record is plain integers and byte arrays.
            let mut e: Box<TlsEvent> = Box::new(unsafe { std::mem::zeroed() });
            e.hdr = hdr(tracked);
            let part = &kept[i * TLS_MAX..((i + 1) * TLS_MAX).min(kept.len())];
            if i == n - 1 && data.len() > cap {
                e.hdr.flags |= flag::DATA_TRUNCATED;
            }
            e.conn = 0xfeed;
            e.direction = dir;
            e.len = data.len() as u32;
            e.offset = (i * TLS_MAX) as u32;
            e.call_id = id;
            e.captured = part.len() as u32;
            e.data[..part.len()].copy_from_slice(part);
            Raw::Tls(e)
        })
        .collect()
}

fn run(p: &mut Pipeline, records: Vec<Raw>) -> Vec<Event> {
    let mut out = Vec::new();
    for r in records {
        crate::pipeline::tests::handle(p, r, &mut Recorder, &mut out);
    }
    out
}

fn pipeline() -> Pipeline {
    Pipeline::new(
        "t-host".into(),
        Identity::new(Config::parse("", "t").unwrap().agents),
        FleetKey::from_bytes(KEY),
        false,
    )
}

/// A gemini-cli `streamGenerateContent` request of ~47 KB whose tools sit past 24 KB.
fn gemini_request(key_in_query: bool) -> Vec<u8> {
    let history: Vec<String> = (0..40)
        .map(|i| {
            format!(
                r#"{{"role":"user","parts":[{{"text":"earlier turn {i} {}"}}]}}"#,
                "y".repeat(560)
            )
        })
        .collect();
    let body = format!(
        r#"{{"contents":[{},{{"role":"user","parts":[{{"text":"FINDME-GEMINI list the files"}}]}}],"tools":[{{"functionDeclarations":[{{"name":"run_shell_command","parameters":{{"type":"object"}}}},{{"name":"read_file"}}]}}],"generationConfig":{{"temperature":0}},"padding":"{}"}}"#,
        history.join(","),
        "z".repeat(20_000)
    );
    let target = if key_in_query {
        format!("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key={GEMINI_KEY}")
    } else {
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse".to_string()
    };
    let mut r = format!(
        "POST {target} HTTP/1.1\r\nhost: generativelanguage.googleapis.com\r\nx-goog-api-key: {GEMINI_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

fn fingerprint(s: &str) -> String {
    FleetKey::from_bytes(KEY).fingerprint(s.as_bytes())
}

#[test]
fn a_key_in_the_url_never_leaves_and_is_fingerprinted_as_used() {
    let mut p = pipeline();
    // Untracked: the kernel keeps only the first record of the call.
    let out = run(
        &mut p,
        call(direction::WRITE, false, 1, &gemini_request(true), TLS_MAX),
    );
    let json = serde_json::to_string(&out).unwrap();
    assert!(!json.contains(GEMINI_KEY), "key leaked: {json}");
    assert!(!json.contains("AIzaSyFake"), "part of the key leaked");
    let discovered = out
        .iter()
        .find_map(|e| match e.kind.as_ref()? {
            Kind::AgentDiscovered(d) => Some(d.clone()),
            _ => None,
        })
        .expect("discovered from the request head");
    assert!(
        discovered
            .evidence
            .contains("key=[REDACTED:google_api_key]"),
        "{}",
        discovered.evidence
    );
    let http = out
        .iter()
        .find_map(|e| match e.kind.as_ref()? {
            Kind::HttpRequest(r) => Some(r.clone()),
            _ => None,
        })
        .expect("http_request");
    assert_eq!(
        http.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=[REDACTED:google_api_key]"
    );
    // The same key in the header and the query: one credential, used.
    assert_eq!(http.credential_fingerprints, vec![fingerprint(GEMINI_KEY)]);
    let llm = out
        .iter()
        .find_map(|e| match e.kind.as_ref()? {
            Kind::LlmRequest(l) => Some(l.clone()),
            _ => None,
        })
        .expect("llm_request");
    assert!(
        llm.path.contains("key=[REDACTED:google_api_key]"),
        "{}",
        llm.path
    );
    assert_eq!(llm.model, "gemini-2.5-flash");
}

#[test]
fn a_tracked_47_kb_request_yields_the_tools_beyond_24_kb() {
    let mut p = pipeline();
    let req = gemini_request(false);
    assert!(req.len() > 45_000);
    let tools_at = req
        .windows(17)
        .position(|w| w == b"run_shell_command")
        .unwrap();
    assert!(tools_at > 24_000, "{tools_at}");
    let out = run(
        &mut p,
        call(
            direction::WRITE,
            true,
            7,
            &req,
            agent_ebpf::TLS_CAPTURE_DEFAULT as usize,
        ),
    );
    let llm = out
        .iter()
        .find_map(|e| match e.kind.as_ref()? {
            Kind::LlmRequest(l) => Some(l.clone()),
            _ => None,
        })
        .expect("llm_request");
    assert_eq!(llm.tools, vec!["run_shell_command", "read_file"]);
    assert!(
        llm.user_excerpt.contains("FINDME-GEMINI"),
        "{}",
        llm.user_excerpt
    );
    assert!(!serde_json::to_string(&out).unwrap().contains(GEMINI_KEY));
}

#[test]
fn webhook_and_bot_paths_and_query_tokens_are_redacted_in_every_event() {
    let mut p = pipeline();
    let secrets = [
        (
            "/services/T0ABCDEF12/B0ABCDEF34/abcdefABCDEF0123456789xy",
            "abcdefABCDEF0123456789xy",
        ),
        (
            "/bot123456789:AAHfakeTelegramTokenForTests_0123456789/sendMessage",
            "AAHfakeTelegramTokenForTests_0123456789",
        ),
        (
            "/graph/me?access_token=EAABsecretAccessToken0123&fields=id",
            "EAABsecretAccessToken0123",
        ),
        ("/data?api_key=plainSecretValue42&x=1", "plainSecretValue42"),
    ];
    for (i, (target, secret)) in secrets.iter().enumerate() {
        let body = r#"{"text":"deploy done"}"#;
        let req = format!(
            "POST {target} HTTP/1.1\r\nHost: hooks.example\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let out = run(
            &mut p,
            call(
                direction::WRITE,
                true,
                100 + i as u64,
                req.as_bytes(),
                1 << 18,
            ),
        );
        let json = serde_json::to_string(&out).unwrap();
        assert!(!json.contains(secret), "{target}: secret leaked in {json}");
        let http = out
            .iter()
            .find_map(|e| match e.kind.as_ref()? {
                Kind::HttpRequest(r) => Some(r.clone()),
                _ => None,
            })
            .expect("http_request");
        assert!(http.path.contains("[REDACTED:"), "{}", http.path);
        assert!(!http.credential_fingerprints.is_empty(), "{target}");
        assert!(
            out.iter()
                .any(|e| matches!(e.kind.as_ref(), Some(Kind::Credential(_)))),
            "{target}: credential event"
        );
    }
}

#[test]
fn a_zstd_compressed_request_is_decoded_before_parsing() {
    let mut p = pipeline();
    let body = format!(
        r#"{{"model":"gpt-5-codex","instructions":"{}","input":[{{"type":"message","role":"user","content":[{{"type":"input_text","text":"FINDME-ZSTD run the tests"}}]}}],"tools":[{{"type":"function","name":"exec_command"}}],"stream":true}}"#,
        "Be brief. ".repeat(2500)
    );
    let z = ruzstd::encoding::compress_to_vec(
        body.as_bytes(),
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    let mut req = format!(
        "POST /v1/responses HTTP/1.1\r\nHost: localhost:9443\r\nAuthorization: Bearer sk-proj-zstdTestKeyAbcdefghijkl0123456789\r\nContent-Encoding: zstd\r\nContent-Length: {}\r\n\r\n",
        z.len()
    )
    .into_bytes();
    req.extend_from_slice(&z);
    let out = run(&mut p, call(direction::WRITE, true, 9, &req, 1 << 18));
    let llm = out
        .iter()
        .find_map(|e| match e.kind.as_ref()? {
            Kind::LlmRequest(l) => Some(l.clone()),
            _ => None,
        })
        .expect("llm_request");
    assert_eq!(llm.model, "gpt-5-codex");
    assert_eq!(llm.tools, vec!["exec_command"]);
    assert!(
        llm.user_excerpt.contains("FINDME-ZSTD"),
        "{}",
        llm.user_excerpt
    );
    assert!(!serde_json::to_string(&out).unwrap().contains("zstdTestKey"));
}

/// A client that drops its connection once the SSE body says the response is complete
/// (Codex over HTTP/2 never decrypts the END_STREAM frame): the response, tool call and
/// all, is emitted when the process exits instead of being dropped with its streams.
#[test]
fn a_response_whose_end_was_never_read_is_emitted_at_the_process_exit() {
    let mut p = pipeline();
    let body = r#"{"model":"gpt-5","input":[{"role":"user","content":"cat the notes"}],"tools":[{"type":"function","name":"exec_command"}],"stream":true}"#;
    let req = format!(
        "POST /v1/responses HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let events = concat!(
        "event: response.output_item.done\n",
        r#"data: {"type":"response.output_item.done","item":{"type":"function_call","name":"exec_command","arguments":"{\"cmd\":\"cat notes.txt\"}","call_id":"call_1"}}"#,
        "\n\n",
        "event: response.completed\n",
        r#"data: {"type":"response.completed","response":{"model":"gpt-5","status":"completed"}}"#,
        "\n\n",
    );
    // Chunked, and the terminating zero-length chunk never arrives.
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{events}\r\n",
        events.len()
    );
    let mut records = call(direction::WRITE, true, 1, req.as_bytes(), 1 << 20);
    records.extend(call(direction::READ, true, 2, resp.as_bytes(), 1 << 20));
    let before = run(&mut p, records);
    let tool_calls = |out: &[Event]| -> Vec<String> {
        out.iter()
            .filter_map(|e| match e.kind.as_ref()? {
                Kind::LlmResponse(r) => Some(r.tool_calls.iter().map(|t| t.name.clone())),
                _ => None,
            })
            .flatten()
            .collect()
    };
    assert!(
        tool_calls(&before).is_empty(),
        "the message is not over yet"
    );
    // SAFETY: the record is plain integers.
    let mut exit: agent_ebpf::ExitEvent = unsafe { std::mem::zeroed() };
    exit.hdr = hdr(true);
    exit.hdr.kind = kind::EXIT;
    let after = run(&mut p, vec![Raw::Exit(exit)]);
    assert_eq!(tool_calls(&after), vec!["exec_command"]);
    let exit_at = after
        .iter()
        .position(|e| matches!(e.kind, Some(Kind::Exit(_))))
        .expect("the exit itself");
    assert_eq!(
        exit_at,
        after.len() - 1,
        "the flushed messages come before the exit"
    );
}
