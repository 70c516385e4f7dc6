//! Host sensor end to end, on the real kernel: custodyd in standalone JSON mode watches
//! a declared agent (exec, files, TCP both sides, DNS, HTTPS via Python and node), an
//! undeclared LLM client, and an untracked process.

use std::process::Command;
use std::time::Duration;

use custody_tests::{
    Daemon, DnsStub, Server, agents_dir, b64url, bpf_available, kind, write_tls_files,
};
use serde_json::Value;

/// Fake but correctly shaped secrets, built at run time so no fixture holds one.
fn fake(prefix: &str, len: usize) -> String {
    let seed = std::process::id() as u64 * 2_654_435_761;
    let alphabet = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let body: String = (0..len)
        .map(|i| alphabet[((seed >> (i % 13)) as usize + i * 7) % alphabet.len()] as char)
        .collect();
    format!("{prefix}{body}")
}

fn steps(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("STEP "))
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect()
}

fn step<'a>(s: &'a [(String, String)], name: &str) -> &'a str {
    s.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("scenario step {name} missing: {s:?}"))
}

fn of_kind<'a>(evs: &'a [Value], k: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| kind(e) == k).collect()
}

#[test]
fn sensor_reports_agent_activity_end_to_end() {
    if !bpf_available("sensor_reports_agent_activity_end_to_end") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    write_tls_files(work);
    let agent_id = format!("e2e-agent-{}", std::process::id());
    let config = format!(
        "[sensor]\nhost_id = \"e2e-host\"\nstate_dir = \"{}\"\n\n[[agent]]\nid = \"{agent_id}\"\nowner = \"alice@example.com\"\nscope = \"/data/finance\"\n[agent.match]\nenv = \"{agent_id}\"\n",
        work.display()
    );
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let daemon = Daemon::start(work, &config, &["--metrics-listen", &metrics_addr]);

    let tls = Server::start(
        Command::new("python3")
            .arg(agents_dir().join("tls_server.py"))
            .arg(work.join("server.pem"))
            .arg(work.join("server.key")),
    );
    let tls_port = tls.first_line.clone();
    let dns_ip = format!("127.77.{}.1", std::process::id() % 200 + 1);
    let _dns = DnsStub::start(&dns_ip);

    let openai_key = fake("sk-proj-", 48);
    let aws_secret = fake("", 40);
    let jwt = format!(
        "{}.{}.{}",
        b64url(r#"{"alg":"none","typ":"JWT"}"#),
        b64url(
            r#"{"iss":"https://idp.example.com","sub":"alice@example.com","scope":"reports:read","act":{"sub":"finance-supervisor"}}"#
        ),
        b64url("not-a-real-signature")
    );
    let marker = format!("custody-argv-marker-{}", std::process::id());

    // The declared agent.
    let out = Command::new("python3")
        .arg(agents_dir().join("sensor_scenario.py"))
        .args([work.to_str().unwrap(), &tls_port, &dns_ip, &marker, &jwt])
        .env("CUSTODY_AGENT", &agent_id)
        .env("OPENAI_API_KEY", &openai_key)
        .env("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", &aws_secret)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "scenario failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = steps(&stdout);

    // An undeclared agent: talks to an OpenAI-shaped API.
    let llm = Command::new("python3")
        .arg(agents_dir().join("llm_client.py"))
        .args([&tls_port, work.join("ca.pem").to_str().unwrap()])
        .env("OPENAI_API_KEY", &openai_key)
        .output()
        .unwrap();
    assert!(
        llm.status.success(),
        "llm client failed: {}",
        String::from_utf8_lossy(&llm.stderr)
    );

    // An untracked process doing ordinary work.
    let untracked_marker = work.join("untracked-marker-file");
    let untracked = Command::new("python3")
        .args(["-c", &format!("open({:?}, 'w').write('x'); import socket; socket.socket().connect_ex(('127.0.0.1', {tls_port}))", untracked_marker.display().to_string())])
        .spawn()
        .unwrap();
    let untracked_pid = untracked.id();
    untracked.wait_with_output().unwrap();

    let agent_pid: u32 = step(&s, "agent_pid").parse().unwrap();
    daemon.wait_for("node https request", Duration::from_secs(15), |e| {
        kind(e) == "http_request" && e["kind"]["http_request"]["path"] == "/node/ping"
    });
    daemon.wait_for("discovered agent", Duration::from_secs(15), |e| {
        kind(e) == "agent_discovered"
    });
    std::thread::sleep(Duration::from_millis(500));
    std::thread::sleep(Duration::from_millis(1100)); // one metrics refresh
    let metrics = http_get(&metrics_addr, "/metrics");
    let exec_count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("custody_sensor_events_total{kind=\"exec\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("exec counter in /metrics");
    assert!(exec_count >= 3, "{metrics}");
    assert!(metrics.contains("custody_sensor_feature_active{feature=\"process\"} 1"));
    let degraded: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("custody_sensor_feature_active") && l.ends_with(" 0"))
        .collect();
    assert!(
        degraded.is_empty(),
        "every sensor feature must attach on this kernel: {degraded:?}"
    );
    let raw = std::fs::read_to_string(&daemon.output).unwrap();
    let daemon_log = daemon.stderr.clone();
    let evs = daemon.stop();

    // -- exec ids and parents
    let by_pid =
        |pid: u32| -> Vec<&Value> { evs.iter().filter(|e| e["process"]["pid"] == pid).collect() };
    let agent_evs = by_pid(agent_pid);
    assert!(
        !agent_evs.is_empty(),
        "no events from the agent (pid {agent_pid})"
    );
    let agent_exec_id = agent_evs[0]["process"]["exec_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        agent_exec_id.starts_with(&format!("e2e-host:{agent_pid}:")),
        "{agent_exec_id}"
    );
    assert!(
        agent_evs
            .iter()
            .all(|e| e["process"]["agent_id"] == agent_id.as_str()),
        "agent id on every event of the agent"
    );
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", std::process::id())).unwrap();
    assert!(!stat.is_empty());

    // -- the short-lived child: complete argv, parent = agent
    let execs = of_kind(&evs, "exec");
    let t = execs
        .iter()
        .find(|e| {
            e["process"]["argv"][0] == "/bin/true"
                && e["process"]["argv"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == marker.as_str()))
        })
        .unwrap_or_else(|| panic!("no exec of /bin/true with {marker}"));
    assert_eq!(
        t["process"]["argv"],
        serde_json::json!(["/bin/true", marker, "second-arg", "third arg with spaces"])
    );
    assert_eq!(t["process"]["parent_exec_id"], agent_exec_id.as_str());
    assert_eq!(
        t["process"]["agent_id"],
        agent_id.as_str(),
        "children inherit the agent"
    );
    assert_eq!(
        t["process"]["principal"]["login_uid"].as_u64(),
        evs.iter()
            .find(|e| e["process"]["pid"] == agent_pid)
            .unwrap()["process"]["auid"]
            .as_u64()
    );

    // -- files
    let opens = of_kind(&evs, "file_open");
    let ok = step(&s, "opened");
    let o = opens
        .iter()
        .find(|e| e["kind"]["file_open"]["path"] == ok)
        .expect("open of agent-notes.txt");
    assert!(o["kind"]["file_open"]["result"].as_i64().unwrap() >= 0);
    assert_eq!(o["kind"]["file_open"]["access"], "write");
    assert_eq!(o["process"]["pid"], agent_pid);
    let renamed = step(&s, "renamed");
    let rn = of_kind(&evs, "file_rename")
        .into_iter()
        .find(|e| e["kind"]["file_rename"]["to"] == renamed)
        .expect("rename reported");
    assert_eq!(rn["kind"]["file_rename"]["from"], ok);
    assert_eq!(rn["kind"]["file_rename"]["result"], 0);
    let un = of_kind(&evs, "file_unlink")
        .into_iter()
        .find(|e| e["kind"]["file_unlink"]["path"] == step(&s, "unlinked"))
        .expect("unlink reported");
    assert_eq!(un["process"]["pid"], agent_pid);
    let bad = step(&s, "failed_open");
    let f = opens
        .iter()
        .find(|e| e["kind"]["file_open"]["path"] == bad)
        .expect("failed open reported");
    assert_eq!(f["kind"]["file_open"]["result"], -2);
    assert!(
        f["kind"]["file_open"]["error"]
            .as_str()
            .unwrap()
            .contains("No such file")
    );

    // -- TCP, both sides, mirrored 4-tuples
    let lport: u64 = step(&s, "tcp_local_port").parse().unwrap();
    let rport: u64 = step(&s, "tcp_remote_port").parse().unwrap();
    let listener_pid: u32 = step(&s, "listener_pid").parse().unwrap();
    let net = of_kind(&evs, "net");
    let conn = net
        .iter()
        .find(|e| {
            e["kind"]["net"]["op"] == "connect" && e["kind"]["net"]["conn"]["remote_port"] == rport
        })
        .expect("connect event");
    assert_eq!(conn["process"]["pid"], agent_pid);
    let c = &conn["kind"]["net"]["conn"];
    assert_eq!(
        (
            c["protocol"].as_str(),
            c["local_port"].as_u64(),
            c["local_addr"].as_str(),
            c["remote_addr"].as_str()
        ),
        (
            Some("tcp"),
            Some(lport),
            Some("127.0.0.1"),
            Some("127.0.0.1")
        )
    );
    let acc = net
        .iter()
        .find(|e| e["kind"]["net"]["op"] == "accept")
        .expect("accept event");
    assert_eq!(acc["process"]["pid"], listener_pid);
    let a = &acc["kind"]["net"]["conn"];
    assert_eq!(
        (a["local_port"].as_u64(), a["remote_port"].as_u64()),
        (Some(rport), Some(lport)),
        "accept mirrors connect"
    );
    assert!(
        net.iter()
            .any(|e| e["kind"]["net"]["op"] == "listen" && e["process"]["pid"] == listener_pid)
    );
    assert!(
        net.iter()
            .any(|e| e["kind"]["net"]["op"] == "bind" && e["process"]["pid"] == listener_pid)
    );

    // -- DNS
    let dns: Vec<&str> = of_kind(&evs, "dns")
        .iter()
        .filter_map(|e| e["kind"]["dns"]["name"].as_str())
        .collect();
    assert!(
        dns.contains(&"custody-e2e.example"),
        "sendto query: {dns:?}"
    );
    assert!(
        dns.contains(&"second.custody-e2e.example"),
        "connected-socket query: {dns:?}"
    );

    // -- HTTPS via Python (libssl) with a bearer JWT carrying a delegation
    let reqs = of_kind(&evs, "http_request");
    let py = reqs
        .iter()
        .find(|e| e["kind"]["http_request"]["path"] == "/v1/reports/close?month=2026-10")
        .expect("python https request");
    let r = &py["kind"]["http_request"];
    assert_eq!(
        (r["method"].as_str(), r["direction"].as_str()),
        (Some("GET"), Some("sent"))
    );
    assert!(r["host"].as_str().unwrap().starts_with("localhost"));
    assert_eq!(r["traceparent"], step(&s, "traceparent"));
    assert_eq!(r["delegation"]["delegated_sub"], "alice@example.com");
    assert_eq!(
        r["delegation"]["act"],
        serde_json::json!(["finance-supervisor"])
    );
    assert_eq!(r["credential_fingerprints"].as_array().unwrap().len(), 1);
    let jwt_fp = r["credential_fingerprints"][0].as_str().unwrap();
    assert!(jwt_fp.starts_with("hmac-sha256:"));
    let cred = of_kind(&evs, "credential")
        .into_iter()
        .find(|e| e["kind"]["credential"]["credential"]["fingerprint"] == jwt_fp)
        .expect("credential event for the bearer token");
    assert_eq!(cred["kind"]["credential"]["credential"]["source"], "header");
    assert_eq!(
        cred["kind"]["credential"]["credential"]["metadata"]["sub"],
        "alice@example.com"
    );

    // -- node (static OpenSSL)
    assert_eq!(step(&s, "node_rc"), "0");
    let n = reqs
        .iter()
        .find(|e| e["kind"]["http_request"]["path"] == "/node/ping")
        .expect("node https request");
    assert!(n["process"]["exe"].as_str().unwrap().ends_with("node"));
    let node_reqs = reqs
        .iter()
        .filter(|e| e["kind"]["http_request"]["path"] == "/node/ping")
        .count();
    assert_eq!(
        node_reqs, 1,
        "one request, reported once (failed SSL_write retries are not data)"
    );
    assert_eq!(n["process"]["agent_id"], agent_id.as_str());

    // -- env credentials at exec
    let agent_exec = execs
        .iter()
        .find(|e| e["process"]["pid"] == agent_pid)
        .expect("agent exec event");
    let env_creds = agent_exec["kind"]["exec"]["env_credentials"]
        .as_array()
        .unwrap();
    let kinds: Vec<&str> = env_creds
        .iter()
        .filter_map(|c| c["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"openai_api_key"), "{kinds:?}");
    assert!(
        env_creds
            .iter()
            .any(|c| c["metadata"]["key_id"] == "AKIAIOSFODNN7EXAMPLE"),
        "{env_creds:?}"
    );

    // -- the undeclared LLM client is discovered, with its request parsed
    let disc = of_kind(&evs, "agent_discovered");
    let d = disc
        .iter()
        .find(|e| e["process"]["argv"].to_string().contains("llm_client.py"))
        .expect("llm client discovered");
    assert_eq!(d["kind"]["agent_discovered"]["reason"], "llm_api");
    assert_eq!(d["process"]["agent_kind"], "discovered");
    let llm_req = of_kind(&evs, "llm_request")
        .into_iter()
        .find(|e| e["process"]["pid"] == d["process"]["pid"])
        .expect("llm_request");
    assert_eq!(llm_req["kind"]["llm_request"]["model"], "gpt-4o-mini");
    assert!(
        llm_req["kind"]["llm_request"]["user_excerpt"]
            .as_str()
            .unwrap()
            .contains("October ledger")
    );
    assert_eq!(
        llm_req["kind"]["llm_request"]["tools"],
        serde_json::json!(["read_ledger"])
    );
    let llm_resp = of_kind(&evs, "llm_response")
        .into_iter()
        .find(|e| e["process"]["pid"] == d["process"]["pid"])
        .expect("llm_response");
    assert_eq!(
        llm_resp["kind"]["llm_response"]["tool_calls"][0]["name"],
        "read_ledger"
    );

    // -- MCP over stdio: the agent's initialize and the server's reply
    let mcp_pid: u32 = step(&s, "mcp_server_pid").parse().unwrap();
    let mcp = of_kind(&evs, "mcp");
    let init = mcp
        .iter()
        .find(|e| e["kind"]["mcp"]["method"] == "initialize")
        .expect("initialize request seen on the pipe");
    assert_eq!(init["process"]["pid"], agent_pid);
    assert_eq!(init["kind"]["mcp"]["transport"], "stdio");
    let reply = mcp
        .iter()
        .find(|e| e["process"]["pid"] == mcp_pid)
        .expect("MCP server reply seen");
    assert_eq!(reply["kind"]["mcp"]["peer_name"], "e2e-ledger-tools");
    assert_eq!(reply["process"]["agent_id"], "mcp:e2e-ledger-tools");
    assert_eq!(reply["process"]["parent_exec_id"], agent_exec_id.as_str());
    assert!(disc.iter().any(|e| e["process"]["pid"] == mcp_pid
        && e["kind"]["agent_discovered"]["reason"] == "mcp_server"));

    // -- secrets appear only as fingerprints
    for secret in [&openai_key, &aws_secret, &jwt] {
        assert!(
            !raw.contains(secret.as_str()),
            "raw secret leaked into the output"
        );
    }
    let log = daemon_log.lock().unwrap().join("\n");
    for secret in [&openai_key, &aws_secret, &jwt] {
        assert!(
            !log.contains(secret.as_str()),
            "raw secret leaked into the daemon log"
        );
    }

    // -- untracked processes emit nothing
    assert!(
        by_pid(untracked_pid).is_empty(),
        "untracked process reported: {:?}",
        by_pid(untracked_pid)
    );
    assert!(!raw.contains("untracked-marker-file"));

    // -- what custodyd wrote is root's only, though this test runs it with umask 022
    use std::os::unix::fs::PermissionsExt;
    let mut checked = 0;
    for f in ["events.jsonl", "status.json", "fleet.key"] {
        let p = work.join(f);
        if let Ok(m) = std::fs::metadata(&p) {
            checked += 1;
            let mode = m.permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
        }
    }
    assert!(checked >= 2, "the output and the status file exist");
}

/// A minimal HTTP/1.0 GET (the metrics endpoint speaks plain HTTP on loopback).
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}
