//! Response on the real kernel, through the collector (issue 4): one command kills a
//! chain across three network-namespace hosts — including a host that was offline
//! when the command was issued and children forked after it; a quarantined agent
//! cannot send a byte until released, even while its daemon is dead; a revoked
//! credential stops the processes that hold it, a new process that starts with it,
//! and a request that carries it.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use custody_tests::netns::{Collector, Fleet, NsSensor, Proc, WorkDir, poll, set_login_uid};
use custody_tests::{agents_dir, bpf_available, python, write_tls_files};
use custody_tests::{alive_with, response_agent};
use custody_tests::{exec_id, pid_alive};
use serde_json::Value;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn start_fleet(
    work: &Path,
    hosts: &[&str],
    agents: &[(&str, &str)],
) -> (Fleet, Collector, Vec<NsSensor>, String) {
    let fleet = Fleet::new(hosts);
    let collector = Collector::start(&work.join("collector"), &format!("{}:0", fleet.bridge_addr));
    let mut sensors: Vec<NsSensor> = fleet
        .hosts
        .iter()
        .map(|h| {
            let token = collector.enroll_token();
            NsSensor::enroll_and_start(h, &work.join(&h.host_id), &collector.addr, &token, agents)
        })
        .collect();
    for s in &mut sensors {
        s.wait_ready(Duration::from_secs(60));
    }
    let responder = collector.operator_token("responder", "oncall");
    wait_connected(&collector, &responder, hosts, true);
    (fleet, collector, sensors, responder)
}

fn wait_connected(collector: &Collector, token: &str, hosts: &[&str], up: bool) {
    poll(Duration::from_secs(30), || {
        let hs = collector.ctl(token, &["hosts"]);
        let ok = hosts.iter().all(|h| {
            hs.as_array()
                .unwrap()
                .iter()
                .any(|x| x["host_id"] == *h && x["connected"] == up)
        });
        ok.then_some(())
    })
    .unwrap_or_else(|| panic!("hosts {hosts:?} never connected={up}"));
}

fn action(collector: &Collector, token: &str, id: &str) -> Value {
    collector.ctl(token, &["action", id])
}

fn host_part<'a>(a: &'a Value, host: &str) -> &'a Value {
    a["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host && h["follow_up"] != true)
        .unwrap_or_else(|| panic!("no delivery for {host}: {a:#}"))
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn chain_kill_across_three_hosts_including_offline_host_and_late_children() {
    if !bpf_available("chain_kill_across_three_hosts_including_offline_host_and_late_children") {
        return;
    }
    let dir = WorkDir::new();
    let work = dir.path();
    let agents = [
        ("agent-a", "agent-a"),
        ("agent-b", "agent-b"),
        ("agent-c", "agent-c"),
    ];
    let (fleet, collector, mut sensors, responder) =
        start_fleet(work, &["host-a", "host-b", "host-c"], &agents);
    let tag = std::process::id();
    let (ma, mb, mc) = (format!("a{tag}"), format!("b{tag}"), format!("c{tag}"));
    let (a, b, c) = (
        fleet.host("host-a"),
        fleet.host("host-b"),
        fleet.host("host-c"),
    );

    // C forks a child every 200 ms once it has a task; B relays to C; A, in a login
    // session, sends the task and forks a child every 50 ms.
    let log_c = work.join("children-c.log");
    let mut hop_c = Proc::spawn(&mut response_agent(
        c,
        "agent-c",
        &mc,
        &["hop", "-", log_c.to_str().unwrap(), "0.2"],
    ));
    let c_info: Value = serde_json::from_str(&hop_c.first_line(Duration::from_secs(15))).unwrap();
    let c_addr = format!("{}:{}", c.addr, c_info["port"]);
    let mut hop_b = Proc::spawn(&mut response_agent(
        b,
        "agent-b",
        &mb,
        &["hop", &c_addr, "/dev/null", "0"],
    ));
    let b_info: Value = serde_json::from_str(&hop_b.first_line(Duration::from_secs(15))).unwrap();
    let b_addr = format!("{}:{}", b.addr, b_info["port"]);
    let mut cmd = response_agent(
        a,
        "agent-a",
        &ma,
        &[
            "root",
            &b_addr,
            work.join("children-a.log").to_str().unwrap(),
            "0.05",
        ],
    );
    set_login_uid(&mut cmd, 4242);
    let mut root = Proc::spawn(&mut cmd);
    let a_info: Value = serde_json::from_str(&root.first_line(Duration::from_secs(15))).unwrap();
    let (a_id, b_id, c_id) = (
        exec_id("host-a", &a_info),
        exec_id("host-b", &b_info),
        exec_id("host-c", &c_info),
    );

    // The collector joins the three hosts into A's chain.
    poll(Duration::from_secs(30), || {
        let out = collector.ctl_raw(&responder, &["chain", &a_id]);
        let ch: Value = serde_json::from_slice(&out.stdout).ok()?;
        let nodes: Vec<&str> = ch["nodes"]
            .as_array()?
            .iter()
            .filter_map(|n| n["exec_id"].as_str())
            .collect();
        (nodes.contains(&b_id.as_str()) && nodes.contains(&c_id.as_str())).then_some(())
    })
    .unwrap_or_else(|| panic!("chain {a_id} never reached {b_id} and {c_id}"));
    let chain_id = a_id.clone();

    // Host C goes offline; its processes keep running and forking.
    let c_idx = 2;
    assert_eq!(sensors[c_idx].stop().code(), Some(0));
    wait_connected(&collector, &responder, &["host-c"], false);

    let issued = now_ns();
    let act = collector.ctl(
        &responder,
        &[
            "kill",
            "--chain",
            &chain_id,
            "--reason",
            "exfiltration in progress",
        ],
    );
    let id = act["id"].as_str().unwrap().to_owned();
    assert_eq!(act["kind"], "kill_chain");
    for h in ["host-a", "host-b"] {
        let p = host_part(&act, h);
        assert_eq!(p["state"], "ok", "{h}: {act:#}");
        assert!(u64_of(&p["effect_ns"]) > 0, "{h}: {act:#}");
    }
    assert_eq!(host_part(&act, "host-c")["state"], "pending", "{act:#}");
    // Every process of the chain on A and B is gone, A's fork loop included.
    for m in [&ma, &mb] {
        poll(Duration::from_secs(10), || {
            alive_with(m).is_empty().then_some(())
        })
        .unwrap_or_else(|| panic!("still alive with {m}: {:?}", alive_with(m)));
    }
    assert!(!pid_alive(a_info["pid"].as_u64().unwrap() as u32));

    // C keeps forking while its sensor is away: children born after the command.
    let late: Vec<u32> = poll(Duration::from_secs(15), || {
        let text = std::fs::read_to_string(&log_c).unwrap_or_default();
        let late: Vec<u32> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace().skip(1);
                let pid: u32 = f.next()?.parse().ok()?;
                let t: u64 = f.next()?.parse().ok()?;
                (t > issued).then_some(pid)
            })
            .collect();
        (late.len() >= 3).then_some(late)
    })
    .expect("host C forks children after the command");
    assert!(
        late.iter().any(|p| pid_alive(*p)),
        "late children are alive before C's sensor returns"
    );

    // C's sensor comes back, receives the pending command, and the rest of the chain
    // dies — the late children too.
    sensors[c_idx] = NsSensor::start(c, &work.join("host-c"));
    sensors[c_idx].wait_ready(Duration::from_secs(60));
    let done = poll(Duration::from_secs(30), || {
        let a = action(&collector, &responder, &id);
        (a["status"] == "done").then_some(a)
    })
    .unwrap_or_else(|| {
        panic!(
            "action never done: {:#}",
            action(&collector, &responder, &id)
        )
    });
    let pc = host_part(&done, "host-c");
    assert!(
        pc["affected_exec_ids"].as_array().unwrap().len() > late.len(),
        "{pc:#}"
    );
    poll(Duration::from_secs(10), || {
        alive_with(&mc).is_empty().then_some(())
    })
    .unwrap_or_else(|| panic!("still alive on C: {:?}", alive_with(&mc)));
    for p in &late {
        assert!(
            !pid_alive(*p),
            "child {p} forked after the command survived"
        );
    }

    // The audit log holds the action and a confirmation per host, intact.
    let audit = collector.ctl(&responder, &["audit", "--limit", "200"]);
    let mine: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action_id"] == id.as_str())
        .collect();
    assert!(mine.iter().any(|e| e["result"] == "issued"
        && e["actor"] == "oncall"
        && e["reason"] == "exfiltration in progress"));
    for h in ["host-a", "host-b", "host-c"] {
        let conf = mine
            .iter()
            .find(|e| e["action"] == "confirm" && e["actor"] == format!("host:{h}"))
            .unwrap_or_else(|| panic!("no confirmation from {h}: {mine:#?}"));
        assert_eq!(conf["result"], "ok");
    }
    let v = collector.ctl(&responder, &["audit", "--verify"]);
    assert_eq!(v["intact"], true, "{v}");
    eprintln!(
        "kill_chain: A {:.1} ms, B {:.1} ms (command to effect)",
        u64_of(&host_part(&done, "host-a")["effect_ns"]) as f64 / 1e6,
        u64_of(&host_part(&done, "host-b")["effect_ns"]) as f64 / 1e6
    );
    drop((hop_b, hop_c, root));
}

/// Records the probe logged, from its JSON lines.
fn probe_log(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn quarantine_holds_without_the_daemon_and_revocation_stops_holders_and_newcomers() {
    if !bpf_available(
        "quarantine_holds_without_the_daemon_and_revocation_stops_holders_and_newcomers",
    ) {
        return;
    }
    let dir = WorkDir::new();
    let work = dir.path();
    let agents = [
        ("prober", "prober"),
        ("holder", "holder"),
        ("launcher", "launcher"),
    ];
    let (fleet, collector, mut sensors, responder) =
        start_fleet(work, &["host-a", "host-b"], &agents);
    let (a, b) = (fleet.host("host-a"), fleet.host("host-b"));
    let tag = std::process::id();

    // B: a sink that logs every connection, byte and datagram it receives.
    let sink_log = work.join("sink.log");
    let mut sink = Proc::spawn(
        b.command(python())
            .arg(agents_dir().join("response_agent.py"))
            .args(["sink", sink_log.to_str().unwrap()])
            .stdout(Stdio::piped()),
    );
    let port = sink.first_line(Duration::from_secs(15));
    let target = format!("{}:{port}", b.addr);
    let received_after = |t: u64| -> Vec<Value> {
        probe_log(&sink_log)
            .into_iter()
            .filter(|r| {
                u64_of(&r["t"]) > t
                    && (r.get("tcp").is_some() || r.get("udp").is_some() || r.get("conn").is_some())
            })
            .collect()
    };

    // A: the probe, sending every 100 ms on an old connection, new connections and UDP.
    let plog = work.join("probe.log");
    let mark = format!("q{tag}");
    let mut probe = Proc::spawn(&mut response_agent(
        a,
        "prober",
        &mark,
        &["probe", &target, plog.to_str().unwrap()],
    ));
    let p_info: Value = serde_json::from_str(&probe.first_line(Duration::from_secs(15))).unwrap();
    let probe_pid = p_info["pid"].as_u64().unwrap();
    poll(Duration::from_secs(20), || {
        (received_after(0).len() > 5).then_some(())
    })
    .expect("the probe reaches the sink before quarantine");
    // The collector knows the agent once the sensor has reported it.
    poll(Duration::from_secs(20), || {
        let ag = collector.ctl(&responder, &["agents"]);
        ag.as_array()?
            .iter()
            .any(|x| x["agent_id"] == "prober")
            .then_some(())
    })
    .expect("collector knows agent prober");

    let q = collector.ctl(
        &responder,
        &["quarantine", "--agent", "prober", "--reason", "beaconing"],
    );
    let qid = q["id"].as_str().unwrap().to_owned();
    let qa = host_part(&q, "host-a");
    assert_eq!(qa["state"], "ok", "{q:#}");
    let effective = u64_of(&qa["completed_ns"]);
    assert!(effective > 0);
    // Give the probe time to try everything many times.
    std::thread::sleep(Duration::from_secs(2));
    let after: Vec<Value> = probe_log(&plog)
        .into_iter()
        .filter(|r| u64_of(&r["t"]) > effective + 200_000_000)
        .collect();
    assert!(after.len() >= 5, "probe kept running: {after:?}");
    for r in &after {
        assert_eq!(
            r["connect"],
            libc::EPERM,
            "connect must fail with EPERM: {r}"
        );
        assert_eq!(r["udp"], libc::EPERM, "UDP send must fail with EPERM: {r}");
        assert_ne!(
            r["persist"], "ok",
            "the old connection must stop carrying data: {r}"
        );
    }
    let leaked = received_after(effective + 200_000_000);
    assert!(
        leaked.is_empty(),
        "bytes left the quarantined agent: {leaked:?}"
    );

    // The daemon dies hard; the quarantine stays in the kernel.
    sensors[0].kill9();
    let killed_at = now_ns();
    std::thread::sleep(Duration::from_secs(1));
    let during: Vec<Value> = probe_log(&plog)
        .into_iter()
        .filter(|r| u64_of(&r["t"]) > killed_at)
        .collect();
    assert!(
        during.len() >= 3,
        "probe kept trying while the daemon was dead"
    );
    assert!(
        during.iter().all(|r| r["connect"] == libc::EPERM),
        "{during:?}"
    );
    assert!(received_after(killed_at).is_empty());

    // Restarted, the daemon reports the quarantine it found.
    sensors[0] = NsSensor::start(a, &work.join("host-a"));
    sensors[0].wait_ready(Duration::from_secs(60));
    assert!(
        sensors[0]
            .log_lines()
            .iter()
            .any(|l| l.contains("quarantine still in force")),
        "{:?}",
        sensors[0].log_lines()
    );
    let st = poll(Duration::from_secs(10), || {
        let s = sensors[0].status()?;
        s["quarantined_pids"]
            .as_array()?
            .iter()
            .any(|p| p.as_u64() == Some(probe_pid))
            .then_some(s)
    });
    assert!(
        st.is_some(),
        "status lists the quarantined probe: {:?}",
        sensors[0].status()
    );
    wait_connected(&collector, &responder, &["host-a"], true);

    // Release restores connectivity.
    let r = collector.ctl(
        &responder,
        &["release", "--action", &qid, "--reason", "false positive"],
    );
    assert_eq!(host_part(&r, "host-a")["state"], "ok", "{r:#}");
    let released = u64_of(&host_part(&r, "host-a")["completed_ns"]);
    poll(Duration::from_secs(10), || {
        probe_log(&plog)
            .iter()
            .any(|x| u64_of(&x["t"]) > released && x["connect"] == "ok")
            .then_some(())
    })
    .expect("connect works again after release");
    assert!(
        !received_after(released).is_empty(),
        "the sink hears from the probe again"
    );
    let q = action(&collector, &responder, &qid);
    assert_eq!(q["active"], false);
    drop(probe);

    // Revocation. A holder of the key (in its environment) is running.
    let key = format!("sk-proj-{}", "Zq7".repeat(16));
    let hmark = format!("h{tag}");
    let mut holder =
        Proc::spawn(response_agent(a, "holder", &hmark, &["idle"]).env("OPENAI_API_KEY", &key));
    let h_info: Value = serde_json::from_str(&holder.first_line(Duration::from_secs(15))).unwrap();
    let h_id = exec_id("host-a", &h_info);
    let fp = poll(Duration::from_secs(20), || {
        let creds = collector.ctl(&responder, &["credentials"]);
        creds
            .as_array()?
            .iter()
            .find(|c| {
                c["held_by"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|x| x == h_id.as_str()))
            })
            .map(|c| c["fingerprint"].as_str().unwrap().to_owned())
    })
    .expect("the collector knows the holder's credential");
    let rv = collector.ctl(
        &responder,
        &[
            "revoke",
            "--credential",
            &fp,
            "--reason",
            "key leaked to a paste site",
        ],
    );
    let ra = host_part(&rv, "host-a");
    assert_eq!(ra["state"], "ok", "{rv:#}");
    assert!(
        ra["affected_exec_ids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == h_id.as_str()),
        "{rv:#}"
    );
    let (st, _) = holder.wait_output(Duration::from_secs(10));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL), "holder stopped");

    // A new process started with the revoked key by a running agent never reaches
    // the sink: the kernel holds it at exec until the daemon has vetted it.
    let before = now_ns();
    let launcher_script = format!(
        "import json,os,subprocess,sys\nenv=dict(os.environ, OPENAI_API_KEY={key:?})\np=subprocess.Popen([sys.executable,{agent:?},'connect',{target:?}],env=env)\nrc=p.wait()\nprint(json.dumps({{'pid':p.pid,'rc':rc}}),flush=True)\n",
        agent = agents_dir().join("response_agent.py").display().to_string(),
    );
    let mut launcher = Proc::spawn(
        a.command(python())
            .args(["-c", &launcher_script])
            .env("CUSTODY_AGENT", "launcher")
            .env("CUSTODY_TEST_MARK", &hmark)
            .stdout(Stdio::piped()),
    );
    let (st, out) = launcher.wait_output(Duration::from_secs(20));
    assert!(st.success(), "launcher failed ({st}): {out}");
    let child: Value = serde_json::from_str(out.lines().last().unwrap_or("")).unwrap();
    assert_eq!(child["rc"], -libc::SIGKILL, "newcomer stopped: {child}");
    let pid = child["pid"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let heard: Vec<Value> = received_after(before)
        .into_iter()
        .filter(|r| {
            r["tcp"]
                .as_str()
                .is_some_and(|t| t.contains(&format!("pid {pid}")))
        })
        .collect();
    assert!(
        heard.is_empty(),
        "the newcomer connected before it was stopped: {heard:?}"
    );
    let held_kill = sensors[0].events().into_iter().any(|e| {
        e["process"]["pid"].as_u64() == Some(pid)
            && e["kind"]["enforcement"]["seen_in"] == "env"
            && e["kind"]["enforcement"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("held at exec"))
    });
    assert!(held_kill, "the newcomer was stopped while held at exec");

    // An HTTPS request carrying the key in a header stops its sender.
    write_tls_files(work);
    let mut tls = Proc::spawn(
        a.command(python())
            .arg(agents_dir().join("tls_server.py"))
            .arg(work.join("server.pem"))
            .arg(work.join("server.key"))
            .stdout(Stdio::piped()),
    );
    let tls_port = tls.first_line(Duration::from_secs(15));
    let script = format!(
        "import ssl,urllib.request,time\nctx=ssl.create_default_context(cafile={ca:?})\nctx.check_hostname=False\nreq=urllib.request.Request('https://{host}:{tls_port}/v1/models',headers={{'Authorization':'Bearer {key}'}})\nurllib.request.urlopen(req,context=ctx,timeout=5).read()\ntime.sleep(5)\n",
        ca = work.join("ca.pem").display().to_string(),
        host = "127.0.0.1",
    );
    let mut sender = Proc::spawn(
        a.command(python())
            .args(["-c", &script])
            .env("CUSTODY_AGENT", "holder")
            .env("CUSTODY_TEST_MARK", &hmark)
            .stdout(Stdio::piped()),
    );
    let (st, _) = sender.wait_output(Duration::from_secs(20));
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "the sender of the revoked header was stopped ({st})"
    );
    let evs = sensors[0].events();
    assert!(
        evs.iter()
            .any(|e| e["kind"]["enforcement"]["seen_in"] == "header"
                && e["kind"]["enforcement"]["credential_fingerprint"] == fp.as_str()),
        "an enforcement event names the header sighting"
    );
    assert!(alive_with(&hmark).is_empty(), "{:?}", alive_with(&hmark));
    drop((sink, tls));
}
