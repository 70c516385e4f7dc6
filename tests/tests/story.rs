//! The demo's finance story end to end on the real kernel (issue 7), driven without
//! the UI: three netns hosts with real sensors, a collector, and agents on the real
//! `openai` and `mcp` Python SDKs talking to the OpenAI-compatible stand-in over HTTPS.
//!
//! Asserts: the chain is rebuilt hop for hop across the hosts with the right human,
//! agents, hosts and credential fingerprints; the SDKs' LLM requests were read from TLS
//! plaintext and their model, prompt excerpt and tool calls sit on the right hop; the
//! MCP tool server is identified with its tool calls; the out-of-scope read raises
//! exactly one alert and the chain is killed on every host; after the worker's
//! database credential is revoked it is refused on every host; and no raw secret is in
//! any stored byte, log line or API response.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use custody_tests::bpf_available;
use custody_tests::netns::{Collector, Fleet, NsSensor, Proc, WorkDir, pin_dir_for, poll};
use custody_tests::story::{self, Hosts, Story};
use custody_tests::{exec_id, pid_alive};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// The sensors' fingerprint of a secret (HMAC-SHA256 with the fleet key, 16 bytes).
fn fingerprint(key: &[u8], secret: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(secret.as_bytes());
    format!(
        "hmac-sha256:{}",
        hex::encode(&mac.finalize().into_bytes()[..16])
    )
}

/// A port on `ip` nothing listens on now.
fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn node<'a>(chain: &'a Value, agent: &str) -> &'a Value {
    chain["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["agent_id"] == agent)
        .unwrap_or_else(|| panic!("no {agent} hop in the chain: {:#}", chain["nodes"]))
}

fn fingerprints(node: &Value) -> String {
    node["credentials"].to_string()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn finance_story_across_three_hosts() {
    if !bpf_available("finance_story_across_three_hosts") {
        return;
    }
    let python = story::venv_python().unwrap_or_else(|e| panic!("{e}"));
    let human_uid = story::ensure_human().unwrap_or_else(|e| panic!("{e}"));
    let dir = WorkDir::new();
    let work = dir.path();
    let fleet = Fleet::new(&["fin-a", "fin-b", "fin-c"]);
    let (a, b, c) = (
        fleet.host("fin-a"),
        fleet.host("fin-b"),
        fleet.host("fin-c"),
    );
    let llm: SocketAddr = format!("{}:{}", fleet.bridge_addr, free_port(&fleet.bridge_addr))
        .parse()
        .unwrap();
    let hosts = Hosts {
        a: a.clone(),
        b: b.clone(),
        c: c.clone(),
        llm,
    };
    let story = Story::prepare(&work.join("story"), hosts, python).unwrap();

    let collector = Collector::start(&work.join("collector"), &format!("{}:0", fleet.bridge_addr));
    let admin = collector.operator_token("admin", "secops");
    let responder = collector.operator_token("responder", "irene");
    // Every API response, searched for secrets at the end.
    let api = std::cell::RefCell::new(String::new());
    let ctl = |token: &str, args: &[&str]| -> Value {
        let v = collector.ctl(token, args);
        api.borrow_mut().push_str(&v.to_string());
        v
    };
    let pdir = work.join("policies");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(pdir.join("finance.cedar"), story.policy()).unwrap();
    ctl(&admin, &["policy", "apply", pdir.to_str().unwrap()]);

    let mut sensors = vec![];
    for h in [a, b, c] {
        let d = work.join(&h.host_id);
        let state = d.join("state");
        let cfg = story.sensor_config(h, &state, &pin_dir_for(&state));
        sensors.push(NsSensor::enroll_and_start_with(
            h,
            &d,
            &collector.addr,
            &collector.enroll_token(),
            &cfg,
        ));
    }
    for s in &mut sensors {
        s.wait_ready(Duration::from_secs(60));
    }

    let first = |p: &mut Proc| -> Value {
        serde_json::from_str(&p.first_line(Duration::from_secs(30))).unwrap()
    };
    let mut llm_proc = Proc::spawn(story.llm().stdout(Stdio::piped()));
    first(&mut llm_proc);
    let mut reporter = Proc::spawn(story.reporter().stdout(Stdio::piped()));
    let r = first(&mut reporter);
    let mut worker = Proc::spawn(story.worker().stdout(Stdio::piped()));
    let w = first(&mut worker);
    let mut sup = Proc::spawn(story.supervisor(human_uid, 120).stdout(Stdio::piped()));
    let s = first(&mut sup);
    assert_eq!(s["human"], story::HUMAN);
    let sup_id = exec_id("fin-a", &s);
    let worker_id = exec_id("fin-b", &w);
    let reporter_id = exec_id("fin-c", &r);

    // Exactly one alert: the tool server's read of HR salaries, for alice's chain.
    let alerts = poll(Duration::from_secs(60), || {
        let v = collector.ctl(&admin, &["alerts"]);
        let mine: Vec<Value> = v
            .as_array()?
            .iter()
            .filter(|x| x["policy_id"] == story::POLICY_ID)
            .cloned()
            .collect();
        (!mine.is_empty()).then_some(mine)
    })
    .unwrap_or_else(|| panic!("no alert: {:#}", collector.ctl(&admin, &["alerts"])));
    std::thread::sleep(Duration::from_secs(2)); // a second alert would show by now
    let all = ctl(&admin, &["alerts"]);
    let mine: Vec<&Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["policy_id"] == story::POLICY_ID)
        .collect();
    assert_eq!(mine.len(), 1, "exactly one alert: {all:#}");
    let al = &alerts[0];
    assert_eq!(al["chain_id"], sup_id.as_str(), "{al:#}");
    assert_eq!(al["human"], story::HUMAN);
    assert_eq!(al["action"], "open_read");
    assert!(
        al["resource"].as_str().unwrap().contains("hr/salaries.csv"),
        "{al:#}"
    );
    assert_eq!(al["response"], "kill_chain");

    // The chain is killed on every host: supervisor, worker (and its tool server),
    // reporter.
    let action_id = poll(Duration::from_secs(20), || {
        let v = collector.ctl(&admin, &["alerts"]);
        v.as_array()?
            .iter()
            .find(|x| x["policy_id"] == story::POLICY_ID)?["response_action_id"]
            .as_str()
            .filter(|s| s.starts_with("act-"))
            .map(str::to_owned)
    })
    .expect("the alert points at its response action");
    for (name, pid) in [("supervisor", &s), ("worker", &w), ("reporter", &r)] {
        let pid = pid["pid"].as_u64().unwrap();
        poll(Duration::from_secs(20), || (!pid_alive(pid)).then_some(()))
            .unwrap_or_else(|| panic!("the {name} (pid {pid}) survived the chain kill"));
    }
    let act = ctl(&admin, &["action", &action_id]);
    assert_eq!(act["kind"], "kill_chain", "{act:#}");
    assert_eq!(act["operator"], format!("policy:{}", story::POLICY_ID));
    for h in ["fin-a", "fin-b", "fin-c"] {
        assert!(
            act["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["host"] == h && x["state"] == "ok"),
            "host {h} confirmed the kill: {act:#}"
        );
    }

    // The chain, hop for hop.
    let fleet_key = std::fs::read(work.join("collector/fleet.key")).unwrap();
    let fp = |secret: &str| fingerprint(&fleet_key, secret);
    let chain = ctl(&admin, &["chain", &sup_id]);
    assert_eq!(
        chain["summary"]["human"],
        story::HUMAN,
        "{:#}",
        chain["summary"]
    );
    let hosts_seen = chain["summary"]["hosts"].to_string();
    for h in ["fin-a", "fin-b", "fin-c"] {
        assert!(hosts_seen.contains(h), "{hosts_seen}");
    }
    let sup_node = node(&chain, story::SUPERVISOR);
    let worker_node = node(&chain, story::WORKER);
    let tools_node = node(&chain, story::TOOL_SERVER);
    let reporter_node = node(&chain, story::REPORTER);
    assert_eq!(sup_node["exec_id"], sup_id.as_str());
    assert_eq!(sup_node["host"], "fin-a");
    assert_eq!(worker_node["exec_id"], worker_id.as_str());
    assert_eq!(worker_node["host"], "fin-b");
    assert_eq!(worker_node["upstream"], sup_id.as_str());
    assert_eq!(tools_node["host"], "fin-b");
    assert_eq!(tools_node["upstream"], worker_id.as_str());
    assert_eq!(reporter_node["exec_id"], reporter_id.as_str());
    assert_eq!(reporter_node["host"], "fin-c");
    assert_eq!(reporter_node["upstream"], worker_id.as_str());
    let sec = &story.secrets;
    // The delegation signing key in the supervisor's environment is a secret too.
    assert!(
        fingerprints(sup_node).contains(&fp(&sec.delegation_key)),
        "{sup_node:#}"
    );
    assert!(
        fingerprints(sup_node).contains(&fp(&sec.supervisor_openai)),
        "{sup_node:#}"
    );
    for want in [&sec.worker_openai, &sec.db_password] {
        assert!(
            fingerprints(worker_node).contains(&fp(want)),
            "{worker_node:#}"
        );
    }
    assert!(
        fingerprints(tools_node).contains(&fp(&sec.db_password)),
        "{tools_node:#}"
    );
    assert!(
        fingerprints(reporter_node).contains(&fp(&sec.reporter_openai)),
        "{reporter_node:#}"
    );
    // The SDKs' LLM calls, from TLS plaintext, on the right hops.
    let events = ctl(&admin, &["events", "--chain", &sup_id, "--limit", "20000"]);
    let evs = events.as_array().unwrap();
    let of = |exec: &str, kind: &str| -> Vec<&Value> {
        evs.iter()
            .filter(|e| {
                e["event"]["process"]["exec_id"] == exec && !e["event"]["kind"][kind].is_null()
            })
            .map(|e| &e["event"]["kind"][kind])
            .collect()
    };
    // The delegation tokens: the worker acts for alice on behalf of the supervisor,
    // the reporter for alice on behalf of the worker, itself on behalf of the
    // supervisor (the `act` chain, RFC 8693).
    let delegations = |exec: &str| -> String {
        of(exec, "http_request")
            .iter()
            .filter(|r| {
                r["direction"] == "received" && r["delegation"]["delegated_sub"] == story::HUMAN
            })
            .map(|r| r["delegation"]["act"].to_string())
            .collect()
    };
    let to_worker = delegations(&worker_id);
    assert!(to_worker.contains(story::SUPERVISOR), "{to_worker}");
    let to_reporter = delegations(&reporter_id);
    assert!(
        to_reporter.contains(story::WORKER) && to_reporter.contains(story::SUPERVISOR),
        "{to_reporter}"
    );
    let sup_llm = of(&sup_id, "llm_request");
    assert!(
        sup_llm.iter().any(|l| l["model"] == "gpt-4o"
            && l["user_excerpt"]
                .as_str()
                .unwrap_or("")
                .contains(story::TASK)
            && l["tools"].to_string().contains("delegate_to_worker")),
        "the supervisor's LLM request: {sup_llm:#?}"
    );
    let sup_resp = of(&sup_id, "llm_response");
    assert!(
        sup_resp
            .iter()
            .any(|l| l["tool_calls"].to_string().contains("delegate_to_worker")),
        "{sup_resp:#?}"
    );
    let worker_llm = of(&worker_id, "llm_request");
    assert!(
        worker_llm
            .iter()
            .any(|l| l["model"] == "gpt-4o-mini" && l["tools"].to_string().contains("read_file")),
        "the worker's LLM requests: {worker_llm:#?}"
    );
    let worker_resp = of(&worker_id, "llm_response")
        .iter()
        .map(|l| l["tool_calls"].to_string())
        .collect::<String>();
    for t in ["read_ledger", "draft_report", "read_file"] {
        assert!(
            worker_resp.contains(t),
            "worker's model asked for {t}: {worker_resp}"
        );
    }
    assert!(
        of(&reporter_id, "llm_request")
            .iter()
            .any(|l| l["model"] == "gpt-4o"),
        "the reporter's LLM request"
    );
    // The MCP server over stdio, and its tool calls.
    let tools_id = tools_node["exec_id"].as_str().unwrap();
    let mcp: Vec<&Value> = evs
        .iter()
        .filter(|e| {
            let x = &e["event"]["process"]["exec_id"];
            (x == worker_id.as_str() || x == tools_id) && !e["event"]["kind"]["mcp"].is_null()
        })
        .map(|e| &e["event"]["kind"]["mcp"])
        .collect();
    for t in ["read_ledger", "read_file"] {
        assert!(
            mcp.iter()
                .any(|m| m["tool_name"] == t && m["transport"] == "stdio"),
            "MCP tools/call {t}: {mcp:#?}"
        );
    }
    assert!(
        mcp.iter().any(|m| m["peer_name"] == "finance-tools"),
        "the server named itself: {mcp:#?}"
    );

    // The responder revokes the worker's database credential: every host confirms,
    // and the credential is refused everywhere afterwards.
    let db_fp = fp(&sec.db_password);
    let rv = ctl(
        &responder,
        &[
            "revoke",
            "--credential",
            &db_fp,
            "--reason",
            "finance worker's database credential used to read HR data",
        ],
    );
    for h in ["fin-a", "fin-b", "fin-c"] {
        assert!(
            rv["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["host"] == h && x["state"] == "ok"),
            "host {h} confirmed the revocation: {rv:#}"
        );
    }
    for (h, agent) in [
        (a, story::SUPERVISOR),
        (b, story::WORKER),
        (c, story::REPORTER),
    ] {
        let marker = work.join(format!("ran-{}", h.host_id));
        let mut p = Proc::spawn(&mut story.credential_holder(h, agent, &marker));
        {
            let mut stdin = p.child.stdin.take().unwrap();
            writeln!(stdin, "{}", story.database_url()).unwrap();
        }
        let (st, out) = p.wait_output(Duration::from_secs(30));
        assert!(st.success(), "holder parent on {}: {st:?} {out}", h.host_id);
        let code: i32 = out.trim().parse().unwrap_or_else(|_| panic!("{out:?}"));
        assert_eq!(
            code, -9,
            "on {} the child with the revoked credential was killed",
            h.host_id
        );
        assert!(!marker.exists(), "on {} the child never ran", h.host_id);
    }
    let enforced = poll(Duration::from_secs(20), || {
        let v = collector.ctl(
            &admin,
            &["events", "--kind", "enforcement", "--limit", "500"],
        );
        let hosts: Vec<String> = v
            .as_array()?
            .iter()
            .filter(|e| {
                e["event"]["kind"]["enforcement"]["credential_fingerprint"] == db_fp.as_str()
            })
            .filter_map(|e| e["event"]["host"].as_str().map(str::to_owned))
            .collect();
        ["fin-a", "fin-b", "fin-c"]
            .iter()
            .all(|h| hosts.iter().any(|x| x == h))
            .then_some(v)
    })
    .expect("an enforcement event from every host");
    api.borrow_mut().push_str(&enforced.to_string());

    // No raw secret anywhere: the collector's store and logs, the sensors' state,
    // spools, local outputs and logs, and every API response.
    for args in [
        vec!["events", "--limit", "100000"],
        vec!["credentials"],
        vec!["agents"],
        vec!["hosts"],
        vec!["chains"],
        vec!["actions"],
        vec!["audit", "--limit", "10000"],
    ] {
        ctl(&admin, &args);
    }
    let mut blobs: Vec<(String, Vec<u8>)> = vec![("API responses".into(), api.take().into_bytes())];
    blobs.push((
        "collector log".into(),
        collector.log.lock().unwrap().join("\n").into_bytes(),
    ));
    for s in &sensors {
        blobs.push((
            format!("custodyd {} log", s.host_id),
            s.log_lines().join("\n").into_bytes(),
        ));
    }
    let mut paths = vec![];
    files(&work.join("collector"), &mut paths);
    for h in ["fin-a", "fin-b", "fin-c"] {
        files(&work.join(h), &mut paths);
    }
    assert!(paths.len() > 10, "{paths:?}");
    for p in paths {
        if let Ok(b) = std::fs::read(&p) {
            blobs.push((p.display().to_string(), b));
        }
    }
    for secret in sec.all() {
        // The whole secret, and a piece of its random part (a partial leak).
        let piece = &secret[secret.len() - 16..];
        for (what, bytes) in &blobs {
            assert!(
                !contains(bytes, secret.as_bytes()),
                "a raw secret is in {what}"
            );
            assert!(
                !contains(bytes, piece.as_bytes()),
                "part of a raw secret is in {what}"
            );
        }
    }
    drop((sup, worker, reporter, llm_proc));
}
