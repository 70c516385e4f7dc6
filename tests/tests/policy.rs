//! Policy on the real kernel, through the collector (issue 5): the finance example —
//! a human's supervisor agent (scope: the finance data) delegates over HTTP to a
//! worker on another host, whose stdio MCP tool server reads HR data. A policy
//! forbidding reads outside the root's scope raises one alert naming the chain and
//! kills the chain automatically; reads inside the scope raise nothing; an invalid
//! policy set is refused with its position and the old one keeps enforcing; a dry run
//! over the stored events reports what live evaluation decided.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use custody_tests::netns::{
    Collector, Fleet, NsHost, NsSensor, Proc, WorkDir, poll, sensor_config_scoped, set_login_uid,
};
use custody_tests::{agents_dir, bpf_available, python};
use custody_tests::{exec_id, pid_alive};
use serde_json::Value;

fn finance(host: &NsHost, agent: &str, args: &[&str]) -> Command {
    let mut c = host.command(python());
    c.arg(agents_dir().join("finance_chain.py"))
        .args(args)
        .env("CUSTODY_AGENT", agent)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    c
}

/// The finance policy, over this test's data directory.
fn finance_policy(data: &Path) -> String {
    format!(
        r#"@id("finance-reads-outside-root-scope")
@response("kill_chain")
@severity("critical")
forbid (principal, action == Action::"open_read", resource in Dir::"{data}")
when {{ context.depth >= 2 && context.root_scope_declared && !context.in_root_scope }};
"#,
        data = data.display()
    )
}

#[test]
fn finance_chain_read_outside_scope_alerts_once_and_kills_the_chain() {
    if !bpf_available("finance_chain_read_outside_scope_alerts_once_and_kills_the_chain") {
        return;
    }
    let dir = WorkDir::new();
    let work = dir.path();
    let data = work.join("data");
    std::fs::create_dir_all(data.join("finance")).unwrap();
    std::fs::create_dir_all(data.join("hr")).unwrap();
    let q3 = data.join("finance/q3.csv");
    let salaries = data.join("hr/salaries.csv");
    std::fs::write(&q3, "quarter,revenue\nq3,42\n").unwrap();
    std::fs::write(&salaries, "name,salary\nbob,1\n").unwrap();

    let fleet = Fleet::new(&["fin-a", "fin-b"]);
    let collector = Collector::start(&work.join("collector"), &format!("{}:0", fleet.bridge_addr));
    let admin = collector.operator_token("admin", "secops");
    let scope = data.join("finance").display().to_string();
    let mut sensors = vec![];
    for (h, agent, env, sc) in [
        (
            "fin-a",
            "finance-supervisor",
            "finance-supervisor",
            scope.as_str(),
        ),
        ("fin-b", "finance-worker", "finance-worker", "/srv"),
    ] {
        let host = fleet.host(h);
        let d = work.join(h);
        let cfg = sensor_config_scoped(h, &d.join("state"), &[(agent, env, sc)]);
        sensors.push(NsSensor::enroll_and_start_with(
            host,
            &d,
            &collector.addr,
            &collector.enroll_token(),
            &cfg,
        ));
    }
    for s in &mut sensors {
        s.wait_ready(Duration::from_secs(60));
    }

    // Policies: the finance rule. First an invalid set is refused with its position.
    let pdir = work.join("policies");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(pdir.join("finance.cedar"), finance_policy(&data)).unwrap();
    let bad = work.join("bad-policies");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("finance.cedar"), finance_policy(&data)).unwrap();
    std::fs::write(
        bad.join("broken.cedar"),
        "@id(\"broken\")\nforbid (principal, action == Action::\"open_read\", resource)\nwhen { context.depht >= 2 };\n",
    )
    .unwrap();
    let applied = collector.ctl(&admin, &["policy", "apply", pdir.to_str().unwrap()]);
    let version = applied["version"].as_u64().unwrap();
    let out = collector.ctl_raw(&admin, &["policy", "apply", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.cedar:3:"),
        "error names file and line: {err}"
    );
    assert!(err.contains("previous set stays"), "{err}");
    let listed = collector.ctl(&admin, &["policy", "list"]);
    assert_eq!(
        listed["version"].as_u64(),
        Some(version),
        "old set still in force"
    );
    // The same check runs locally.
    let out = collector.ctl_raw(&admin, &["policy", "validate", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.cedar:3:"));

    // B: the worker service; A: the supervisor in human 4242's session.
    let (a, b) = (fleet.host("fin-a"), fleet.host("fin-b"));
    let mut worker = Proc::spawn(&mut finance(b, "finance-worker", &["worker"]));
    let w: Value = serde_json::from_str(&worker.first_line(Duration::from_secs(15))).unwrap();
    let url = format!("http://{}:{}/task", b.addr, w["port"]);
    let mut cmd = finance(
        a,
        "finance-supervisor",
        &[
            "supervisor",
            &url,
            q3.to_str().unwrap(),
            salaries.to_str().unwrap(),
        ],
    );
    set_login_uid(&mut cmd, 4242);
    let mut sup = Proc::spawn(&mut cmd);
    let s: Value = serde_json::from_str(&sup.first_line(Duration::from_secs(15))).unwrap();
    let sup_id = exec_id("fin-a", &s);
    let worker_id = exec_id("fin-b", &w);

    // One alert, for the HR read, naming the chain and its human.
    let alerts = poll(Duration::from_secs(40), || {
        let v = collector.ctl(&admin, &["alerts"]);
        let v = v.as_array()?.clone();
        v.iter()
            .any(|x| x["policy_id"] == "finance-reads-outside-root-scope")
            .then_some(v)
    })
    .unwrap_or_else(|| panic!("no alert: {:#}", collector.ctl(&admin, &["alerts"])));
    let mine: Vec<&Value> = alerts
        .iter()
        .filter(|x| x["policy_id"] == "finance-reads-outside-root-scope")
        .collect();
    assert_eq!(mine.len(), 1, "exactly one alert: {mine:#?}");
    let al = mine[0];
    assert_eq!(al["chain_id"], sup_id.as_str(), "{al:#}");
    assert_eq!(al["human"], "4242");
    assert_eq!(al["action"], "open_read");
    assert!(
        al["resource"].as_str().unwrap().contains("hr/salaries.csv"),
        "{al:#}"
    );
    assert_eq!(al["response"], "kill_chain");
    assert!(
        !alerts
            .iter()
            .any(|x| x["resource"].as_str().is_some_and(|r| r.contains("q3.csv"))),
        "the read inside the scope raised nothing"
    );

    // The chain names the human, the three hops and the tool.
    let chain = collector.ctl(&admin, &["chain", &sup_id]);
    let nodes = chain["nodes"].as_array().unwrap();
    let agents: Vec<&str> = nodes
        .iter()
        .filter_map(|n| n["agent_id"].as_str())
        .filter(|a| !a.is_empty())
        .collect();
    assert!(
        agents.contains(&"finance-supervisor") && agents.contains(&"finance-worker"),
        "{agents:?}"
    );
    let tool_node = nodes
        .iter()
        .find(|n| n["agent_id"] == "mcp:finance-files")
        .unwrap_or_else(|| panic!("no MCP tool server hop: {chain:#}"));
    let calls = collector.ctl(
        &admin,
        &[
            "events", "--chain", &sup_id, "--kind", "mcp", "--limit", "50",
        ],
    );
    assert!(
        calls
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"]["kind"]["mcp"]["tool_name"] == "read_file"),
        "the chain records the read_file tool call: {calls:#}"
    );
    assert!(nodes.iter().any(|n| n["exec_id"] == worker_id.as_str()));
    assert_ne!(tool_node["exec_id"], worker_id.as_str());
    assert_eq!(chain["summary"]["human"], "4242");

    // Killed automatically: the supervisor, the worker and its tool server are gone.
    let action_id = poll(Duration::from_secs(20), || {
        let v = collector.ctl(&admin, &["alerts"]);
        v.as_array()?
            .iter()
            .find(|x| x["policy_id"] == "finance-reads-outside-root-scope")?["response_action_id"]
            .as_str()
            .filter(|s| s.starts_with("act-"))
            .map(str::to_owned)
    })
    .expect("the alert points at its response action");
    let act = collector.ctl(&admin, &["action", &action_id]);
    assert_eq!(act["kind"], "kill_chain");
    assert_eq!(act["operator"], "policy:finance-reads-outside-root-scope");
    for pid in [s["pid"].as_u64().unwrap(), w["pid"].as_u64().unwrap()] {
        poll(Duration::from_secs(15), || (!pid_alive(pid)).then_some(()))
            .unwrap_or_else(|| panic!("process {pid} of the chain survived"));
    }
    let audit = collector.ctl(&admin, &["audit", "--limit", "200"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action_id"] == action_id.as_str()
                && e["actor"] == "policy:finance-reads-outside-root-scope"
                && e["result"] == "issued")
    );

    // A dry run of the same policies over the stored events decides the same.
    let report = collector.ctl(
        &admin,
        &["policy", "test", pdir.to_str().unwrap(), "--since", "1h"],
    );
    assert_eq!(report["denied"].as_u64(), Some(1), "{report:#}");
    let d = &report["decisions"][0];
    assert_eq!(d["event_id"], al["event_id"], "{d:#}");
    assert_eq!(d["denied_by"][0], "finance-reads-outside-root-scope");
    assert_eq!(d["response"], "kill_chain");
    drop((worker, sup));
}
