//! The collector with real sensors on the real kernel (issue 3): three "hosts" as
//! network namespaces joined into one chain, a collector killed mid-stream losing
//! nothing, and single-use enrollment tokens.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use custody_tests::exec_id;
use custody_tests::netns::{
    Collector, Fleet, NsHost, NsSensor, Proc, WorkDir, poll, sensor_config, set_login_uid,
};
use custody_tests::{agents_dir, bin, bpf_available, kind, python};
use serde_json::Value;

/// The audit login uid of the human who starts the work on host A (no passwd
/// entry, so it is reported as "4242").
const LOGIN_UID: u32 = 4242;

fn agent_script(name: &str) -> String {
    agents_dir().join(name).display().to_string()
}

/// Fake but correctly shaped secrets, built at run time so no fixture holds one.
fn fake(prefix: &str, len: usize) -> String {
    let seed = std::process::id() as u64 * 2_654_435_761;
    let alphabet = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let body: String = (0..len)
        .map(|i| alphabet[((seed >> (i % 13)) as usize + i * 7) % alphabet.len()] as char)
        .collect();
    format!("{prefix}{body}")
}

/// A scenario process in `host`'s namespace, a declared agent via CUSTODY_AGENT.
fn scenario(host: &NsHost, agent: &str, script: &str) -> Command {
    let mut c = host.command(python());
    c.arg(agent_script(script))
        .env("CUSTODY_AGENT", agent)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    c
}

fn hosts(collector: &Collector, token: &str) -> Vec<Value> {
    collector
        .ctl(token, &["hosts"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn host_entry(collector: &Collector, token: &str, host_id: &str) -> Option<Value> {
    hosts(collector, token)
        .into_iter()
        .find(|h| h["host_id"] == host_id)
}

/// `custodyctl chain ID`, or None while the collector does not know ID yet.
fn chain(collector: &Collector, token: &str, id: &str) -> Option<Value> {
    let out = collector.ctl_raw(token, &["chain", id]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn three_hosts_one_chain() {
    if !bpf_available("three_hosts_one_chain") {
        return;
    }
    let started = Instant::now();
    let dir = WorkDir::new();
    let work = dir.path();
    let fleet = Fleet::new(&["host-a", "host-b", "host-c"]);
    let collector = Collector::start(&work.join("collector"), &format!("{}:0", fleet.bridge_addr));
    let admin = collector.operator_token("admin", "fleet-test");

    // One enrolled sensor per host, each with its own token, identity and state.
    let mut sensors: Vec<NsSensor> = fleet
        .hosts
        .iter()
        .zip(["agent-a", "agent-b", "agent-c"])
        .map(|(h, agent)| {
            let token = collector.enroll_token();
            NsSensor::enroll_and_start(
                h,
                &work.join(&h.host_id),
                &collector.addr,
                &token,
                &[(agent, agent)],
            )
        })
        .collect();
    for s in &mut sensors {
        s.wait_ready(Duration::from_secs(60));
    }
    poll(Duration::from_secs(20), || {
        let hs = hosts(&collector, &admin);
        (hs.len() == 3 && hs.iter().all(|h| h["connected"] == true)).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "three connected hosts expected: {:?}",
            hosts(&collector, &admin)
        )
    });
    eprintln!("fleet up after {:?}", started.elapsed());

    // Host C: the records service (holds an AWS key in its environment).
    let records = work.join("records");
    std::fs::create_dir_all(&records).unwrap();
    let record = format!("ledger-{}.txt", std::process::id());
    std::fs::write(records.join(&record), "october close: balanced\n").unwrap();
    let (a, b, c) = (
        fleet.host("host-a"),
        fleet.host("host-b"),
        fleet.host("host-c"),
    );
    let aws_secret = fake("", 40);
    let mut svc_c = Proc::spawn(
        scenario(c, "agent-c", "fleet_service_c.py")
            .arg(&records)
            .env("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", &aws_secret),
    );
    let c_port = svc_c.first_line(Duration::from_secs(15));
    let c_url = format!("http://{}:{c_port}", c.addr);

    // Host B: the agent service, which spawns its MCP stdio child per task.
    let mut svc_b = Proc::spawn(
        scenario(b, "agent-b", "fleet_service_b.py")
            .arg(&c_url)
            .arg(agent_script("fleet_mcp_child.py")),
    );
    let b_port = svc_b.first_line(Duration::from_secs(15));
    let b_url = format!("http://{}:{b_port}", b.addr);

    // Host A: the agent, started in login uid 4242's session (holds an OpenAI key).
    let openai_key = fake("sk-proj-", 48);
    let mut cmd = scenario(a, "agent-a", "fleet_agent_a.py");
    cmd.args([&b_url, &record])
        .env("OPENAI_API_KEY", &openai_key);
    set_login_uid(&mut cmd, LOGIN_UID);
    let (st, out) = Proc::spawn(&mut cmd).wait_output(Duration::from_secs(40));
    assert!(st.success(), "agent A failed ({st}): {out}");
    let r: Value = serde_json::from_str(out.lines().last().expect("agent A output"))
        .unwrap_or_else(|e| panic!("agent A output {out:?}: {e}"));
    assert_eq!(r["data"], "october close: balanced\n", "{r}");
    let record_path = r["path"].as_str().unwrap().to_owned();
    let ids = [
        exec_id("host-a", &r["a"]),
        exec_id("host-b", &r["b"]),
        exec_id("host-b", &r["child"]),
        exec_id("host-c", &r["c"]),
    ];
    let [a_id, b_id, child_id, c_id] = ids.clone();
    eprintln!("scenario done after {:?}: {ids:?}", started.elapsed());

    // C's open of the record, as stored by the collector (the chain view lists at
    // most 1000 events, oldest first: Python start-up alone is ~250 per process).
    let record_open = || -> Option<Value> {
        let evs = collector.ctl(
            &admin,
            &[
                "events",
                "--exec",
                &c_id,
                "--kind",
                "file_open",
                "--limit",
                "10000",
            ],
        );
        evs.as_array()?
            .iter()
            .find(|e| e["event"]["kind"]["file_open"]["path"] == record_path.as_str())
            .cloned()
    };
    // Wait (bounded) until the collector has joined everything, then assert on
    // that snapshot; if it never does, the assertions below say what is missing.
    let complete = |ch: &Value| {
        let members: BTreeSet<&str> = ch["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["exec_id"].as_str())
            .collect();
        ids.iter().all(|i| members.contains(i.as_str()))
            && ch["summary"]["chain_id"] == a_id.as_str()
            && ch["edges"].as_array().is_some_and(|e| e.len() >= 3)
    };
    let ch = poll(Duration::from_secs(30), || {
        let ch = chain(&collector, &admin, &c_id).filter(complete)?;
        record_open()?;
        Some(ch)
    })
    .or_else(|| chain(&collector, &admin, &c_id))
    .unwrap_or_else(|| panic!("the collector has no chain for C's process {c_id}"));
    eprintln!("chain joined after {:?}", started.elapsed());

    let s = &ch["summary"];
    assert_eq!(
        s["chain_id"],
        a_id.as_str(),
        "the chain is rooted at A's process: {s}"
    );
    assert_eq!(s["root_exec_id"], a_id.as_str());
    assert_eq!(
        (s["human"].as_str(), s["human_source"].as_str()),
        (Some("4242"), Some("login")),
        "root human is login uid 4242: {s}"
    );
    assert_eq!(
        s["hosts"],
        serde_json::json!(["host-a", "host-b", "host-c"]),
        "{s}"
    );
    let agents: BTreeSet<&str> = s["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in ["agent-a", "agent-b", "agent-c"] {
        assert!(agents.contains(want), "agent {want} in the chain: {s}");
    }

    let nodes: BTreeMap<&str, &Value> = ch["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["exec_id"].as_str().unwrap(), n))
        .collect();
    let node = |id: &str| -> &Value {
        nodes
            .get(id)
            .unwrap_or_else(|| panic!("{id} missing from the chain; nodes: {:?}", nodes.keys()))
    };
    // (exec id, host, upstream, agent id, depth)
    let expect = [
        (&a_id, "host-a", "", "agent-a", 0),
        (&b_id, "host-b", a_id.as_str(), "agent-b", 1),
        (&child_id, "host-b", b_id.as_str(), "mcp:fleet-records", 2),
        (&c_id, "host-c", child_id.as_str(), "agent-c", 3),
    ];
    for (id, host, up, agent, depth) in expect {
        let n = node(id);
        assert_eq!(n["host"], host, "host of {id}: {n}");
        assert_eq!(n["upstream"], up, "upstream of {id}: {n}");
        assert_eq!(n["agent_id"], agent, "agent of {id}: {n}");
        assert_eq!(n["depth"], depth, "depth of {id}: {n}");
    }
    let na = node(&a_id);
    assert_eq!(na["principal"]["login_uid"], LOGIN_UID, "{na}");
    assert_eq!(na["principal"]["login_user"], "4242", "{na}");
    assert_eq!(na["pid"], r["a"]["pid"]);

    // Hops: A -net-> B -stdio-> B's child -net-> C.
    let edges = ch["edges"].as_array().unwrap();
    let edge = |from: &str, to: &str| -> &Value {
        edges
            .iter()
            .find(|e| e["from_exec_id"] == from && e["to_exec_id"] == to)
            .unwrap_or_else(|| panic!("no edge {from} -> {to} in {edges:?}"))
    };
    let ab = edge(&a_id, &b_id);
    assert_eq!(ab["kind"], "net", "{ab}");
    let d = ab["detail"].as_str().unwrap();
    assert!(
        d.contains(&format!("{}:", a.addr)) && d.contains(&format!("-> {}:{b_port}", b.addr)),
        "A -> B is A's connection to B's port: {d}"
    );
    assert_eq!(edge(&b_id, &child_id)["kind"], "stdio");
    let cc = edge(&child_id, &c_id);
    assert_eq!(cc["kind"], "net", "{cc}");
    let d = cc["detail"].as_str().unwrap();
    assert!(
        d.contains(&format!("{}:", b.addr)) && d.contains(&format!("-> {}:{c_port}", c.addr)),
        "child -> C is the child's connection to C's port: {d}"
    );

    // B called its child's tool over the stdio pipe.
    let mcp = collector.ctl(
        &admin,
        &["events", "--exec", &b_id, "--kind", "mcp", "--limit", "100"],
    );
    assert!(
        mcp.as_array().unwrap().iter().any(|e| {
            let m = &e["event"]["kind"]["mcp"];
            m["transport"] == "stdio"
                && m["method"] == "tools/call"
                && m["tool_name"] == "lookup_record"
        }),
        "B's tools/call to its stdio child is stored: {mcp}"
    );

    // Credentials held on A and C, as fingerprints only.
    let creds = |id: &str| {
        node(id)["credentials"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let a_creds = creds(&a_id);
    assert!(
        a_creds
            .iter()
            .any(|c| c["kind"] == "openai_api_key" && c["usage"] == "held"),
        "A holds its OpenAI key: {a_creds:?}"
    );
    let c_creds = creds(&c_id);
    assert!(
        c_creds
            .iter()
            .any(|c| c["kind"].as_str().unwrap_or("").starts_with("aws") && c["usage"] == "held"),
        "C holds its AWS key: {c_creds:?}"
    );
    let raw = ch.to_string();
    assert!(!raw.contains(&openai_key) && !raw.contains(&aws_secret));

    // The action at the end: C's open of the record, stored under host-c in this chain.
    let open = record_open().unwrap_or_else(|| panic!("C's open of {record_path} not stored"));
    assert_eq!(open["event"]["host"], "host-c");
    assert_eq!(open["event"]["process"]["exec_id"], c_id.as_str());
    assert_eq!(
        open["chain_id"],
        a_id.as_str(),
        "the open is in A's chain: {open}"
    );
    assert!(
        open["event"]["kind"]["file_open"]["result"]
            .as_i64()
            .unwrap()
            >= 0
    );

    // Walking back from that one event gives the whole path.
    let event_id = open["event_id"].as_str().unwrap();
    let back = chain(&collector, &admin, event_id).expect("chain by event id");
    assert_eq!(
        back["path_from_root"],
        serde_json::json!([a_id, b_id, child_id, c_id]),
        "path from the root human's process to the file open"
    );

    // Exactly one chain covers it: every process resolves to it, and it is the only
    // chain the collector knows.
    for id in &ids {
        let c = chain(&collector, &admin, id).expect("chain by exec id");
        assert_eq!(c["summary"]["chain_id"], a_id.as_str(), "chain of {id}");
    }
    let all = collector.ctl(&admin, &["chains"]);
    let chain_ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["chain_id"].as_str())
        .collect();
    assert_eq!(chain_ids, vec![a_id.as_str()], "one chain: {all}");
    let by_human = collector.ctl(&admin, &["chains", "--human", "4242"]);
    assert_eq!(by_human.as_array().map(Vec::len), Some(1), "{by_human}");

    drop(svc_b);
    drop(svc_c);
    for s in &sensors {
        s.terminate();
    }
    for s in &mut sensors {
        let st = s.stop();
        assert!(st.success(), "custodyd {} exited with {st}", s.host_id);
    }
    eprintln!("three_hosts_one_chain took {:?}", started.elapsed());
}

/// Polls the sensor status until every event it produced is acked and stored: the
/// shipper's last acked seq is next_seq - 1 and the collector's count matches,
/// unchanged over two status updates. Returns next_seq - 1.
fn wait_caught_up(sensor: &NsSensor, collector: &Collector, token: &str, host: &str) -> u64 {
    let mut last = None;
    let mut stable = 0;
    let got = poll(Duration::from_secs(30), || {
        let st = sensor.status()?;
        let col = &st["collector"];
        let next = u64_of(&col["next_seq"]);
        let acked = u64_of(&col["last_acked_seq"]);
        let stored = u64_of(&host_entry(collector, token, host)?["events_stored"]);
        let now = (next, acked, stored);
        if next > 1 && acked == next - 1 && stored == acked && last == Some(now) {
            stable += 1;
        } else {
            stable = 0;
        }
        last = Some(now);
        (stable >= 5).then_some(acked)
    });
    got.unwrap_or_else(|| {
        panic!(
            "sensor {host} did not catch up: status {:?}, collector {:?}",
            sensor.status(),
            host_entry(collector, token, host)
        )
    })
}

#[test]
fn collector_restart_loses_nothing() {
    if !bpf_available("collector_restart_loses_nothing") {
        return;
    }
    let started = Instant::now();
    let dir = WorkDir::new();
    let work = dir.path();
    let fleet = Fleet::new(&["host-r"]);
    let host = fleet.host("host-r");
    let mut collector =
        Collector::start(&work.join("collector"), &format!("{}:0", fleet.bridge_addr));
    let admin = collector.operator_token("admin", "fleet-test");
    let token = collector.enroll_token();
    let mut sensor = NsSensor::enroll_and_start(
        host,
        &work.join("host-r"),
        &collector.addr,
        &token,
        &[("activity", "activity")],
    );
    sensor.wait_ready(Duration::from_secs(60));
    poll(Duration::from_secs(20), || {
        (host_entry(&collector, &admin, "host-r")?["connected"] == true).then_some(())
    })
    .expect("host-r connected");

    // A steady stream of tracked activity until the stop file appears.
    let act_dir = work.join("activity");
    std::fs::create_dir_all(&act_dir).unwrap();
    let stop_file = work.join("stop");
    let mut activity = Proc::spawn(
        scenario(host, "activity", "fleet_activity.py")
            .arg(&act_dir)
            .arg(&stop_file),
    );
    assert_eq!(activity.first_line(Duration::from_secs(15)), "started");

    // Mid-stream: the collector has stored some of it.
    poll(Duration::from_secs(20), || {
        let stored = u64_of(&host_entry(&collector, &admin, "host-r")?["events_stored"]);
        (stored >= 50).then_some(())
    })
    .expect("collector stores the stream");
    collector.kill();
    let killed_at = Instant::now();
    let at_kill = sensor.status().expect("status");
    eprintln!(
        "collector SIGKILLed; sensor status {}",
        at_kill["collector"]
    );

    // The outage: a few seconds during which the sensor keeps producing into its spool.
    let spooled = poll(Duration::from_secs(20), || {
        let st = sensor.status()?;
        let col = &st["collector"];
        let (next, acked) = (u64_of(&col["next_seq"]), u64_of(&col["last_acked_seq"]));
        (killed_at.elapsed() >= Duration::from_secs(3)
            && col["connected"] == false
            && next.saturating_sub(1) > acked + 50)
            .then_some((next, acked))
    })
    .expect("sensor spools events while the collector is down");
    eprintln!("outage: next_seq {} last_acked {}", spooled.0, spooled.1);
    collector.restart();

    // After the restart the stream resumes: events produced during the outage and
    // after it reach the collector.
    poll(Duration::from_secs(30), || {
        let h = host_entry(&collector, &admin, "host-r")?;
        (u64_of(&h["last_seq"]) > spooled.0 + 20).then_some(())
    })
    .expect("the stream resumes after the restart");

    std::fs::write(&stop_file, "stop").unwrap();
    let (st, out) = activity.wait_output(Duration::from_secs(20));
    assert!(st.success(), "activity failed: {st} {out}");

    let produced = wait_caught_up(&sensor, &collector, &admin, "host-r");
    let st = sensor.stop();
    assert!(st.success(), "custodyd exited with {st}");
    let local = sensor.events();
    assert_eq!(
        local.len() as u64,
        produced,
        "the sensor's own record of what it produced (JSON lines) matches its spool's next_seq - 1"
    );
    assert!(produced > spooled.0, "activity continued after the restart");

    let h = host_entry(&collector, &admin, "host-r").expect("host-r");
    eprintln!("collector host entry after the run: {h}");
    assert_eq!(u64_of(&h["events_stored"]), produced, "stored count: {h}");
    assert_eq!(u64_of(&h["last_seq"]), produced, "{h}");
    assert_eq!(u64_of(&h["spool_dropped"]), 0, "{h}");
    assert!(produced < 10_000, "listing below covers every event");

    // Every sequence number exactly once, and the same events the sensor produced.
    let stored = collector.ctl(&admin, &["events", "--host", "host-r", "--limit", "10000"]);
    let stored = stored.as_array().unwrap();
    let mut seqs: Vec<u64> = stored.iter().map(|e| u64_of(&e["event"]["seq"])).collect();
    seqs.sort_unstable();
    let want: Vec<u64> = (1..=produced).collect();
    if seqs != want {
        let mut dups = seqs.clone();
        dups.dedup();
        let have: BTreeSet<u64> = seqs.iter().copied().collect();
        let missing: Vec<u64> = want.iter().filter(|s| !have.contains(s)).copied().collect();
        panic!(
            "stored seqs are not exactly 1..={produced}: {} stored, {} duplicates, missing {:?}",
            seqs.len(),
            seqs.len() - dups.len(),
            &missing[..missing.len().min(20)]
        );
    }
    let key = |e: &Value| {
        (
            u64_of(&e["time_ns"]),
            kind(e).to_owned(),
            e["process"]["exec_id"].as_str().unwrap_or("").to_owned(),
        )
    };
    let mut a: Vec<_> = local.iter().map(key).collect();
    let mut b: Vec<_> = stored.iter().map(|e| key(&e["event"])).collect();
    a.sort();
    b.sort();
    assert!(
        a == b,
        "the collector holds exactly the events the sensor produced"
    );
    eprintln!(
        "collector_restart_loses_nothing: {produced} events, took {:?}",
        started.elapsed()
    );
}

/// Enrollment does not need eBPF, so this one runs without root too.
#[test]
fn enrollment_with_used_token_fails() {
    let dir = WorkDir::new();
    let work = dir.path();
    let collector = Collector::start(&work.join("collector"), "127.0.0.1:0");
    let token = collector.enroll_token();
    let enroll = |host_id: &str, d: &Path| {
        std::fs::create_dir_all(d).unwrap();
        let cfg = d.join("custodyd.toml");
        std::fs::write(&cfg, sensor_config(host_id, &d.join("state"), &[])).unwrap();
        Command::new(bin("custodyd"))
            .args([
                "enroll",
                "--collector",
                &collector.addr,
                "--token",
                &token,
                "--config",
            ])
            .arg(&cfg)
            .env_remove("CUSTODY_ENROLL_TOKEN")
            .output()
            .unwrap()
    };
    let first = enroll("host-x", &work.join("x"));
    assert!(
        first.status.success(),
        "first use of the token enrolls: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    let key = work.join("x/state/client.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Again for the same host, and by someone else who got hold of the token.
    for (host_id, d) in [("host-x", "x2"), ("host-y", "y")] {
        let again = enroll(host_id, &work.join(d));
        let err = String::from_utf8_lossy(&again.stderr);
        assert!(!again.status.success(), "a used token enrolled {host_id}");
        assert!(
            err.contains("already used") && err.contains("mint a new one"),
            "the error says why: {err}"
        );
        assert!(
            !work.join(d).join("state/client.pem").exists(),
            "no certificate written for a refused enrollment"
        );
    }
    let log = collector.log.lock().unwrap().join("\n");
    assert!(
        log.contains("enrollment refused"),
        "the collector logs the refusal: {log}"
    );
}
