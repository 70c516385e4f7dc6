//! Pipeline behaviour on synthetic kernel records (no kernel needed): discovery,
//! MCP over stdio, credentials only as fingerprints, lossless escaping.

use std::io::Write;

use agent_ebpf::{
    EventHeader, ExecEvent, FileEvent, PipeEvent, TlsEvent, Tracked, direction, flag, kind, track,
};
use agent_user::credential::FleetKey;
use custody_proto::sensor::v1::{Event, event::Kind};

use super::{Output, Pipeline, Sighting, Tracker};
use crate::config::Config;
use crate::identity::Identity;
use crate::kernel::decode::Raw;

#[derive(Default)]
pub(crate) struct Recorder(Vec<(u32, Tracked)>);
impl Tracker for Recorder {
    fn track(&mut self, tgid: u32, t: Tracked) {
        self.0.push((tgid, t));
    }
}

/// A pid that does not exist, so the pipeline builds the entry from headers alone.
pub(crate) const PID: u32 = 3_999_001;

pub(crate) fn hdr(k: u32, tracked: bool, agent: u32) -> EventHeader {
    EventHeader {
        kind: k,
        flags: if tracked { flag::TRACKED } else { 0 },
        ktime_ns: 5_000_000_000,
        tgid: PID,
        pid: PID,
        ppid: 1,
        uid: 1000,
        gid: 1000,
        auid: 1000,
        netns: 4026531840,
        agent,
        cgroup_id: 1,
        start_boottime: 4_000_000_000,
        parent_start_boottime: 0,
        comm: *b"python3\0\0\0\0\0\0\0\0\0",
    }
}

pub(crate) fn pipeline(cfg: &str) -> Pipeline {
    Pipeline::new(
        "t-host".into(),
        Identity::new(Config::parse(cfg, "t").unwrap().agents),
        FleetKey::from_bytes([1; 32]),
        false,
    )
}

pub(crate) fn zeroed<T>() -> Box<T> {
    // SAFETY: the kernel record types are plain integers and byte arrays.
    Box::new(unsafe { std::mem::zeroed() })
}

/// Run one record through the pipeline: its events land in `out` (what most tests
/// look at), its credential sightings are returned.
pub(crate) fn handle(
    p: &mut Pipeline,
    raw: Raw,
    rec: &mut dyn Tracker,
    out: &mut Vec<Event>,
) -> Vec<Sighting> {
    let mut outputs = Vec::new();
    p.handle(raw, rec, &mut outputs);
    let mut sightings = Vec::new();
    for o in outputs {
        match o {
            Output::Event(ev) => out.push(ev),
            Output::Sighting(s) => sightings.push(s),
            Output::PolicyRecord(_) => {}
        }
    }
    sightings
}

fn tls(dir: u32, tracked: bool, data: &[u8]) -> Raw {
    let mut e = zeroed::<TlsEvent>();
    e.hdr = hdr(kind::TLS_DATA, tracked, 0);
    e.conn = 0xabc;
    e.direction = dir;
    e.len = data.len() as u32;
    e.captured = data.len() as u32;
    e.data[..data.len()].copy_from_slice(data);
    Raw::Tls(e)
}

fn kinds(evs: &[Event]) -> Vec<&'static str> {
    evs.iter()
        .map(|e| match e.kind.as_ref().unwrap() {
            Kind::AgentDiscovered(_) => "agent_discovered",
            Kind::HttpRequest(_) => "http_request",
            Kind::HttpResponse(_) => "http_response",
            Kind::LlmRequest(_) => "llm_request",
            Kind::LlmResponse(_) => "llm_response",
            Kind::Mcp(_) => "mcp",
            Kind::Exec(_) => "exec",
            Kind::FileOpen(_) => "file_open",
            Kind::Credential(_) => "credential",
            _ => "other",
        })
        .collect()
}

#[test]
fn untracked_llm_client_is_discovered_with_request_and_gzip_response() {
    let mut p = pipeline("");
    let mut rec = Recorder::default();
    let mut out = Vec::new();
    let body = r#"{"messages":[{"role":"user","content":"close the books"}],"model":"gpt-4o","tools":[{"type":"function","function":{"name":"read_ledger"}}]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: llm.internal:8443\r\nAuthorization: Bearer sk-proj-AAAAbbbbCCCCddddEEEEffff0000\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    handle(
        &mut p,
        tls(direction::WRITE, false, req.as_bytes()),
        &mut rec,
        &mut out,
    );
    assert_eq!(
        kinds(&out),
        [
            "agent_discovered",
            "credential",
            "http_request",
            "llm_request"
        ]
    );
    assert_eq!(rec.0.len(), 1);
    assert_eq!(rec.0[0].0, PID);
    assert_eq!(rec.0[0].1.flags, track::DISCOVERED);
    let json = serde_json::to_string(&out).unwrap();
    assert!(!json.contains("sk-proj-AAAAbbbb"), "bearer token leaked");
    let proc_ = out[0].process.as_ref().unwrap();
    assert_eq!(proc_.agent_kind, "discovered");
    assert_eq!(
        proc_.exec_id,
        format!("t-host:{PID}:{}", 4_000_000_000u64 / (1_000_000_000 / 100))
    );

    let reply = r#"{"model":"gpt-4o","choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","tool_calls":[{"id":"c1","type":"function","function":{"name":"read_ledger","arguments":"{\"month\":\"10\"}"}}]}}]}"#;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(reply.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n", gz.len()).into_bytes();
    resp.extend_from_slice(&gz);
    out.clear();
    // Still flagged untracked by the kernel: the reply raced the tracking update.
    handle(
        &mut p,
        tls(direction::READ, false, &resp),
        &mut rec,
        &mut out,
    );
    assert_eq!(kinds(&out), ["http_response", "llm_response"]);
    match out[1].kind.as_ref().unwrap() {
        Kind::LlmResponse(l) => assert_eq!(l.tool_calls[0].name, "read_ledger"),
        _ => unreachable!(),
    }
}

#[test]
fn ordinary_untracked_https_reports_nothing() {
    let mut p = pipeline("");
    let mut rec = Recorder::default();
    let mut out = Vec::new();
    handle(
        &mut p,
        tls(
            direction::WRITE,
            false,
            b"GET /index.html HTTP/1.1\r\nHost: example.org\r\n\r\n",
        ),
        &mut rec,
        &mut out,
    );
    handle(
        &mut p,
        tls(
            direction::READ,
            false,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        ),
        &mut rec,
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    assert!(rec.0.is_empty());
}

#[test]
fn mcp_server_over_stdio_becomes_its_own_hop() {
    let mut p = pipeline("");
    let mut rec = Recorder::default();
    let mut out = Vec::new();
    let line = br#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"ledger-tools","version":"1.0"}}}
"#;
    let mut e = zeroed::<PipeEvent>();
    e.hdr = hdr(kind::PIPE_WRITE, true, 0);
    e.fd = 1;
    e.len = line.len() as u32;
    e.captured = line.len() as u32;
    e.data[..line.len()].copy_from_slice(line);
    handle(&mut p, Raw::Pipe(e), &mut rec, &mut out);
    assert_eq!(kinds(&out), ["agent_discovered", "mcp"]);
    let pr = out[1].process.as_ref().unwrap();
    assert_eq!(pr.agent_id, "mcp:ledger-tools");
    match out[0].kind.as_ref().unwrap() {
        Kind::AgentDiscovered(d) => assert_eq!(d.reason, "mcp_server"),
        _ => unreachable!(),
    }
    match out[1].kind.as_ref().unwrap() {
        Kind::Mcp(m) => assert_eq!(
            (m.transport.as_str(), m.peer_name.as_str()),
            ("stdio", "ledger-tools")
        ),
        _ => unreachable!(),
    }
}

#[test]
fn exec_reports_env_secrets_as_fingerprints_and_redacts_argv() {
    let mut p = pipeline("[[agent]]\nid = \"fin\"\n[agent.match]\nenv = \"fin\"\n");
    let mut rec = Recorder::default();
    let mut out = Vec::new();
    let mut e = zeroed::<ExecEvent>();
    e.hdr = hdr(kind::EXEC, false, 0);
    let path = b"/usr/bin/python3";
    e.path[..path.len()].copy_from_slice(path);
    e.path_len = path.len() as u32;
    let secret = "sk-proj-QQQQwwwwEEEErrrrTTTTyyyy1234";
    let args = format!("python3\0agent.py\0--api-key={secret}\0");
    e.args[..args.len()].copy_from_slice(args.as_bytes());
    e.args_len = args.len() as u32;
    let env = format!("PATH=/usr/bin\0CUSTODY_AGENT=fin\0OPENAI_API_KEY={secret}\0");
    e.env[..env.len()].copy_from_slice(env.as_bytes());
    e.env_len = env.len() as u32;
    handle(&mut p, Raw::Exec(e), &mut rec, &mut out);
    assert_eq!(rec.0, vec![(PID, Tracked::new(1, track::DECLARED))]);
    assert_eq!(kinds(&out), ["exec"]);
    let json = serde_json::to_string(&out[0]).unwrap();
    assert!(!json.contains(secret), "secret leaked: {json}");
    let pr = out[0].process.as_ref().unwrap();
    assert_eq!(pr.agent_id, "fin");
    assert_eq!(
        pr.argv[..2],
        ["python3".to_string(), "agent.py".to_string()]
    );
    match out[0].kind.as_ref().unwrap() {
        Kind::Exec(x) => {
            assert_eq!(x.env_credentials.len(), 1);
            assert_eq!(x.env_credentials[0].kind, "openai_api_key");
            assert!(x.env_credentials[0].fingerprint.starts_with("hmac-sha256:"));
        }
        _ => unreachable!(),
    }
}

fn open_event(path: &[u8], ret: i64) -> Raw {
    let mut e = zeroed::<FileEvent>();
    e.hdr = hdr(kind::FILE_OPEN, true, 0);
    e.path[..path.len()].copy_from_slice(path);
    e.path_len = path.len() as u32;
    e.ret = ret;
    e.dirfd = -100;
    Raw::File(e)
}

#[test]
fn non_utf8_paths_are_escaped_losslessly() {
    let mut p = pipeline("");
    let mut out = Vec::new();
    handle(
        &mut p,
        open_event(b"/tmp/caf\xe9/\xff.txt", -13),
        &mut Recorder::default(),
        &mut out,
    );
    match out[0].kind.as_ref().unwrap() {
        Kind::FileOpen(f) => {
            assert_eq!(f.path, "/tmp/caf\\xe9/\\xff.txt");
            assert_eq!(f.result, -13);
            assert!(f.error.contains("Permission denied"));
        }
        _ => unreachable!(),
    }
}

#[test]
fn opened_credential_file_is_fingerprinted_not_copied() {
    let dir = tempfile::tempdir().unwrap();
    let aws = dir.path().join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzzzSECRET";
    let file = aws.join("credentials");
    std::fs::write(&file, format!("[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = {secret}\n")).unwrap();
    let mut p = pipeline("");
    let mut out = Vec::new();
    handle(
        &mut p,
        open_event(file.to_str().unwrap().as_bytes(), 3),
        &mut Recorder::default(),
        &mut out,
    );
    assert_eq!(kinds(&out)[0], "file_open");
    assert!(
        kinds(&out)[1..].iter().all(|k| *k == "credential") && out.len() >= 2,
        "{:?}",
        kinds(&out)
    );
    let json = serde_json::to_string(&out).unwrap();
    assert!(!json.contains(secret));
    assert!(
        json.contains("AKIAIOSFODNN7EXAMPLE"),
        "the key id is non-secret metadata"
    );
    // Seen once per process: opening it again adds no credential event.
    out.clear();
    handle(
        &mut p,
        open_event(file.to_str().unwrap().as_bytes(), 3),
        &mut Recorder::default(),
        &mut out,
    );
    assert_eq!(kinds(&out), ["file_open"]);
}

fn exec_of(tgid: u32, ppid: u32, path: &str, args: &[&str], env: &str) -> Raw {
    let mut e = zeroed::<ExecEvent>();
    e.hdr = hdr(kind::EXEC, false, 0);
    e.hdr.tgid = tgid;
    e.hdr.pid = tgid;
    e.hdr.ppid = ppid;
    e.path[..path.len()].copy_from_slice(path.as_bytes());
    e.path_len = path.len() as u32;
    let args: String = args.iter().map(|a| format!("{a}\0")).collect();
    e.args[..args.len()].copy_from_slice(args.as_bytes());
    e.args_len = args.len() as u32;
    e.env[..env.len()].copy_from_slice(env.as_bytes());
    e.env_len = env.len() as u32;
    Raw::Exec(e)
}

#[test]
fn known_agent_program_is_discovered_at_exec_under_its_own_name() {
    // An npm install of Gemini CLI: `.bin/gemini` links to the bundle node runs.
    let t = tempfile::tempdir().unwrap();
    let pkg = t.path().join("node_modules/@google/gemini-cli");
    std::fs::create_dir_all(pkg.join("bundle")).unwrap();
    std::fs::write(
        pkg.join("package.json"),
        r#"{"name":"@google/gemini-cli","version":"0.61.0","bin":{"gemini":"bundle/gemini.js"}}"#,
    )
    .unwrap();
    std::fs::write(pkg.join("bundle/gemini.js"), "").unwrap();
    std::fs::create_dir_all(t.path().join("node_modules/.bin")).unwrap();
    let link = t.path().join("node_modules/.bin/gemini");
    std::os::unix::fs::symlink("../@google/gemini-cli/bundle/gemini.js", &link).unwrap();
    let link = link.to_string_lossy().into_owned();

    let mut p = pipeline("");
    let mut rec = Recorder::default();
    let mut out = Vec::new();
    let env = "GEMINI_API_KEY=AIzaSyAAAAbbbbCCCCddddEEEEffffGGGGhhhh123\0";
    handle(
        &mut p,
        exec_of(PID, 1, "/usr/bin/node", &["node", &link, "-p", "hi"], env),
        &mut rec,
        &mut out,
    );
    assert_eq!(kinds(&out), ["exec", "agent_discovered"]);
    assert_eq!(rec.0, vec![(PID, Tracked::new(1, track::DISCOVERED))]);
    let pr = out[0].process.as_ref().unwrap();
    assert_eq!(
        (pr.agent_id.as_str(), pr.agent_kind.as_str()),
        ("undeclared:gemini-cli", "discovered")
    );
    match out[1].kind.as_ref().unwrap() {
        Kind::AgentDiscovered(d) => {
            assert_eq!(d.reason, "known_agent");
            assert!(
                d.evidence.contains("@google/gemini-cli")
                    && d.evidence.contains("0.61.0")
                    && d.evidence.contains("bundle/gemini.js"),
                "{}",
                d.evidence
            );
        }
        _ => unreachable!(),
    }
    // The key it holds is reported as a fingerprint on the exec, never raw.
    let json = serde_json::to_string(&out).unwrap();
    assert!(!json.contains("AIzaSyAAAAbbbb"), "key leaked");
    match out[0].kind.as_ref().unwrap() {
        Kind::Exec(x) => assert_eq!(x.env_credentials.len(), 1),
        _ => unreachable!(),
    }

    // Its relaunch (node → node with a V8 flag) is the same agent, not a new one.
    out.clear();
    let child = PID + 1;
    let mut fork = zeroed::<agent_ebpf::ForkEvent>();
    fork.hdr = hdr(kind::FORK, true, 1);
    fork.child_tgid = child;
    fork.child_start_boottime = 4_100_000_000;
    handle(&mut p, Raw::Fork(*fork), &mut rec, &mut out);
    let mut relaunch = exec_of(
        child,
        PID,
        "/usr/bin/node",
        &["node", "--max-old-space-size=8192", &link, "-p", "hi"],
        env,
    );
    if let Raw::Exec(e) = &mut relaunch {
        e.hdr.flags = flag::TRACKED;
        e.hdr.agent = 1;
        e.hdr.start_boottime = 4_100_000_000;
        e.hdr.parent_start_boottime = 4_000_000_000;
    }
    out.clear();
    handle(&mut p, relaunch, &mut rec, &mut out);
    assert_eq!(kinds(&out), ["exec"]);
    assert_eq!(
        rec.0.len(),
        1,
        "the relaunch is tracked by inheritance only"
    );
    assert_eq!(
        out[0].process.as_ref().unwrap().agent_id,
        "undeclared:gemini-cli"
    );

    // An ordinary program is not discovered at exec.
    out.clear();
    let mut plain = Recorder::default();
    handle(
        &mut p,
        exec_of(PID + 2, 1, "/usr/bin/node", &["node", "/srv/app.js"], ""),
        &mut plain,
        &mut out,
    );
    assert!(out.is_empty() && plain.0.is_empty());
}
