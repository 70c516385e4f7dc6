//! The collector's web UI in a real browser (issue 6): a collector fed by three
//! real sensors in network-namespace hosts, a three-hop chain across them, and
//! headless Chromium (Debian's package, driven by playwright-core from tests/ui/)
//! signing in, seeing the fleet and the chain graph (with the read a policy denied,
//! and its alert, which the responder acknowledges), killing the chain with a reason
//! and watching every host confirm — the processes die (checked in /proc); a viewer
//! gets no buttons and a 403 for a forged POST; a POST without the CSRF token is
//! refused; sign-out ends the session. Screenshots of the fleet, chain, action and
//! actions pages are kept (paths printed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use custody_tests::bpf_available;
use custody_tests::exec_id;
use custody_tests::netns::{Collector, Fleet, NsSensor, Proc, WorkDir, poll, set_login_uid};
use custody_tests::{alive_with, response_agent};
use serde_json::Value;

/// What the browser test needs: node, Chromium and tests/ui/node_modules (`cargo
/// xtask setup` installs them). None (with the reason) when something is missing.
fn browser_tools() -> Result<(PathBuf, PathBuf), String> {
    let ui = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ui");
    if !ui
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return Err(format!(
            "{}/node_modules is missing (run `cargo xtask setup`, which runs `npm ci` there)",
            ui.display()
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Err("node is not installed (`cargo xtask setup`)".into());
    }
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
        })
        .ok_or("Debian's chromium is not installed (`cargo xtask setup`)")?;
    Ok((ui.join("ui-test.js"), chromium))
}

/// Where screenshots are kept: $CUSTODY_UI_SCREENSHOTS, else target/ui-screenshots.
fn screenshot_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CUSTODY_UI_SCREENSHOTS") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .map(|t| t.join("ui-screenshots"))
        .unwrap_or_else(|| std::env::temp_dir().join("custody-ui-screenshots"))
}

fn ui_url(collector: &Collector) -> String {
    poll(Duration::from_secs(10), || {
        collector
            .log
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.strip_prefix("ui on ").map(|u| u.trim().to_string()))
    })
    .expect("collector prints its UI address (\"ui on https://…\")")
}

/// Runs the browser script with a deadline; returns its parsed last stdout line, or
/// why it failed.
fn run_browser(script: &Path, chromium: &Path, args: &[&str]) -> Result<Value, String> {
    let mut child = Command::new("node")
        .arg(script)
        .args(args)
        .env("CHROMIUM", chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node");
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut { out }, &mut s).unwrap();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("browser test still running after 300 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = reader.join().unwrap();
    if !status.success() {
        return Err(format!("browser test failed ({status}): {stdout}"));
    }
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).map_err(|e| format!("bad result line {last:?}: {e}"))
}

#[test]
fn web_ui_in_a_browser_fleet_chain_kill_viewer_csrf_sign_out() {
    if !bpf_available("web_ui_in_a_browser_fleet_chain_kill_viewer_csrf_sign_out") {
        return;
    }
    let (script, chromium) = match browser_tools() {
        Ok(t) => t,
        Err(why) => {
            if std::env::var("CUSTODY_REQUIRE_BPF").is_ok_and(|v| v == "1") {
                panic!("web UI browser test cannot run: {why}");
            }
            eprintln!("skipping web_ui_in_a_browser: {why}");
            return;
        }
    };
    let dir = WorkDir::new();
    let work = dir.path();
    let hosts = ["host-a", "host-b", "host-c"];
    let agents = [
        ("agent-a", "agent-a"),
        ("agent-b", "agent-b"),
        ("agent-c", "agent-c"),
    ];
    let fleet = Fleet::new(&hosts);
    let collector = Collector::start(&work.join("collector"), &format!("{}:0", fleet.bridge_addr));
    let mut sensors: Vec<NsSensor> = fleet
        .hosts
        .iter()
        .map(|h| {
            let token = collector.enroll_token();
            NsSensor::enroll_and_start(h, &work.join(&h.host_id), &collector.addr, &token, &agents)
        })
        .collect();
    for s in &mut sensors {
        s.wait_ready(Duration::from_secs(60));
    }
    let responder = collector.operator_token("responder", "oncall");
    let viewer = collector.operator_token("viewer", "auditor");
    // The finance rule, enforced by the collector after the fact (it needs the
    // chain, so no sensor prevents it): an agent two hops or more from the human may
    // not read HR data. Host C's agent reads the salaries file every second once it
    // has its task: each read is denied and alerted.
    let admin = collector.operator_token("admin", "root");
    let hr = work.join("data/hr");
    std::fs::create_dir_all(&hr).unwrap();
    let salaries = hr.join("salaries.csv");
    std::fs::write(&salaries, "name,salary\nbob,1\n").unwrap();
    let pdir = work.join("policies");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(
        pdir.join("ui-test.cedar"),
        format!(
            "@id(\"ui-test-no-hr-reads\")\n@response(\"alert\")\n@severity(\"high\")\n\
             forbid (principal, action == Action::\"open_read\", resource in Dir::\"{}\")\n\
             when {{ context.depth >= 2 }};\n",
            hr.display()
        ),
    )
    .unwrap();
    collector.ctl(&admin, &["policy", "apply", pdir.to_str().unwrap()]);
    poll(Duration::from_secs(30), || {
        let hs = collector.ctl(&responder, &["hosts"]);
        hosts
            .iter()
            .all(|h| {
                hs.as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["host_id"] == *h && x["connected"] == true)
            })
            .then_some(())
    })
    .expect("every host connected");

    // A -> B -> C: the root in a login session; C keeps forking a child a second,
    // so the chain stays busy (and the chain page has live updates to show).
    let tag = std::process::id();
    let marks = [format!("ua{tag}"), format!("ub{tag}"), format!("uc{tag}")];
    let (a, b, c) = (
        fleet.host("host-a"),
        fleet.host("host-b"),
        fleet.host("host-c"),
    );
    let log_c = work.join("children-c.log");
    let mut hop_c = Proc::spawn(
        response_agent(
            c,
            "agent-c",
            &marks[2],
            &["hop", "-", log_c.to_str().unwrap(), "1"],
        )
        .env("CUSTODY_TEST_READ", &salaries),
    );
    let c_info: Value = serde_json::from_str(&hop_c.first_line(Duration::from_secs(15))).unwrap();
    let mut hop_b = Proc::spawn(&mut response_agent(
        b,
        "agent-b",
        &marks[1],
        &[
            "hop",
            &format!("{}:{}", c.addr, c_info["port"]),
            "/dev/null",
            "0",
        ],
    ));
    let b_info: Value = serde_json::from_str(&hop_b.first_line(Duration::from_secs(15))).unwrap();
    let mut cmd = response_agent(
        a,
        "agent-a",
        &marks[0],
        &[
            "root",
            &format!("{}:{}", b.addr, b_info["port"]),
            "/dev/null",
            "0",
        ],
    );
    set_login_uid(&mut cmd, 4242);
    // A token the root agent holds, which the browser revokes everywhere.
    let token = format!("ghp_{}", custody_tests::story::random_text(36));
    cmd.env("GITHUB_TOKEN", &token);
    let mut root = Proc::spawn(&mut cmd);
    let a_info: Value = serde_json::from_str(&root.first_line(Duration::from_secs(15))).unwrap();
    let (a_id, b_id, c_id) = (
        exec_id("host-a", &a_info),
        exec_id("host-b", &b_info),
        exec_id("host-c", &c_info),
    );
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
    for m in &marks {
        assert!(!alive_with(m).is_empty(), "scenario {m} running");
    }

    let url = ui_url(&collector);
    let shots = screenshot_dir();
    let ca = collector.data_dir.join("ca.pem");
    eprintln!("web UI at {url}; screenshots to {}", shots.display());
    let result = run_browser(
        &script,
        &chromium,
        &[
            &url,
            &responder,
            &viewer,
            &a_id,
            shots.to_str().unwrap(),
            &hosts.join(","),
            ca.to_str().unwrap(),
        ],
    )
    .unwrap_or_else(|e| {
        let actions = collector.ctl(&responder, &["actions"]);
        panic!("{e}\nactions on the collector: {actions:#}")
    });
    let action_id = result["action_id"].as_str().expect("action id").to_string();
    assert_eq!(
        result["node"],
        b_id.as_str(),
        "the node opened was agent-b's"
    );

    // The kill issued from the browser: done on every host, and every process of
    // the chain is gone (C's late children too).
    let act = collector.ctl(&responder, &["action", &action_id]);
    assert_eq!(act["kind"], "kill_chain", "{act:#}");
    assert_eq!(act["target"], a_id.as_str());
    assert_eq!(act["operator"], "oncall");
    assert_eq!(act["reason"], "ui test: exfiltration in progress");
    assert_eq!(act["status"], "done", "{act:#}");
    for m in &marks {
        poll(Duration::from_secs(15), || {
            alive_with(m).is_empty().then_some(())
        })
        .unwrap_or_else(|| panic!("still alive with {m}: {:?}", alive_with(m)));
    }
    // The revocation issued from the browser: done on every host, for the root's
    // token (its fingerprint never shows the token itself).
    let revoke_id = result["revoke_id"].as_str().expect("revoke action id");
    let rv = collector.ctl(&responder, &["action", revoke_id]);
    assert_eq!(rv["kind"], "revoke_credential", "{rv:#}");
    assert_eq!(rv["target"], result["fingerprint"], "{rv:#}");
    assert_eq!(rv["operator"], "oncall");
    assert_eq!(rv["reason"], "ui test: token pasted in a public issue");
    assert_eq!(rv["status"], "done", "{rv:#}");
    for h in &hosts {
        assert!(
            rv["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["host"] == *h && x["state"] == "ok"),
            "{h} confirmed the revocation: {rv:#}"
        );
    }
    assert!(!rv.to_string().contains(&token));
    // The viewer's forged kill was refused and audited; nothing but the one kill
    // was issued (the other action is the policy update sent to the sensors).
    let actions = collector.ctl(&responder, &["actions"]);
    let kills: Vec<&Value> = actions
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"].as_str().is_some_and(|k| k.starts_with("kill")))
        .collect();
    assert_eq!(kills.len(), 1, "{actions:#}");
    // The alert the browser acknowledged.
    let alerts = collector.ctl(&responder, &["alerts"]);
    let acked = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == result["alert_id"])
        .unwrap_or_else(|| panic!("alert {} not listed: {alerts:#}", result["alert_id"]));
    assert_eq!(acked["status"], "acknowledged", "{acked:#}");
    assert_eq!(acked["acknowledged_by"], "oncall");
    assert_eq!(acked["chain_id"], a_id.as_str());
    let audit = collector.ctl(&responder, &["audit", "--limit", "500"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "auditor"
                && e["action"] == "kill"
                && e["result"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("denied"))),
        "viewer's refused kill audited: {audit:#}"
    );
    for p in result["screenshots"].as_array().unwrap() {
        let p = p.as_str().unwrap();
        assert!(
            std::fs::metadata(p).is_ok_and(|m| m.len() > 10_000),
            "{p} written"
        );
        eprintln!("screenshot: {p}");
    }
    drop((hop_b, hop_c, root, sensors));
}
