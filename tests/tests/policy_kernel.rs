//! Kernel enforcement of the collector's policies (issue 5), on the real kernel: a
//! collector and a sensor in a network namespace; `custodyctl policy apply` sends the
//! chain-independent rules to the sensor, which puts them in its kernel maps.
//! Agent x's connect to the denied endpoint fails with EPERM while other endpoints
//! and another agent are unaffected; agent x is killed at the open of a file in a
//! forbidden directory (nothing reaches the file through it) while its other reads
//! work; names in endpoint rules are resolved by the sensor (an unresolvable one is
//! reported as collector-enforced); a restarted sensor puts the rules back in force
//! from its state dir while the collector is down; an open by a relative path (which
//! the kernel cannot match) gets the process killed by the daemon after the fact. A
//! credential forbidden to agent x stops x's holders when the rule arrives and x's
//! new processes on sight (held at exec when a tracked parent starts them), not y's.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use custody_tests::bpf_available;
use custody_tests::netns::{
    Collector, Fleet, NsHost, NsSensor, WorkDir, poll, sensor_config_scoped,
};
use custody_tests::python;
use serde_json::Value;

/// A scenario agent: a python process in `host`'s namespace labelled
/// `CUSTODY_AGENT=<agent>`, running one command per stdin line and answering one
/// line ("ok", "err <errno>", or the file's contents for `cat`).
struct Agent {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

const AGENT: &str = r#"
import os, socket, subprocess, sys
print("ready", os.getpid(), flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    try:
        if cmd == "connect":
            host, _, port = arg.rpartition(":")
            s = socket.create_connection((host, int(port)), timeout=3); s.close()
            print("ok", flush=True)
        elif cmd == "spawn":
            r = subprocess.run([sys.executable, "-c", "print('ran')"], capture_output=True,
                               env=dict(os.environ, CUSTODY_AGENT=arg))
            print("exit", r.returncode, r.stdout.decode().strip(), flush=True)
        elif cmd == "cd":
            os.chdir(arg)
            print("ok", flush=True)
        elif cmd == "cat":
            with open(arg) as f:
                print("read:" + f.read(), flush=True)
        elif cmd == "append":
            fd = os.open(arg, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(fd, b"+exfil"); os.close(fd)
            print("ok", flush=True)
    except OSError as e:
        print("err", e.errno, flush=True)
"#;

impl Agent {
    fn start(host: &NsHost, agent: &str) -> Agent {
        Agent::start_with(host, agent, &[])
    }

    fn start_with(host: &NsHost, agent: &str, env: &[(&str, &str)]) -> Agent {
        let mut a = Agent::spawn(host, agent, env);
        let first = a.line();
        assert!(first.starts_with("ready"), "agent {agent}: {first:?}");
        a
    }

    /// Started, without waiting for it to be ready.
    fn spawn(host: &NsHost, agent: &str, env: &[(&str, &str)]) -> Agent {
        let mut cmd = host.command(python());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .args(["-c", AGENT])
            .env("CUSTODY_AGENT", agent)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn agent");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Agent {
            child,
            stdin,
            lines,
        }
    }

    /// The next line; "" when the process ended without one.
    fn line(&mut self) -> String {
        match self.lines.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Disconnected) => String::new(),
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("agent did not answer in 20 s"),
        }
    }

    fn ask(&mut self, cmd: &str) -> String {
        // A dead agent: the write fails, and so does the answer.
        let _ = writeln!(self.stdin, "{cmd}");
        let _ = self.stdin.flush();
        self.line()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn policies(addr: &str, port: u16, secret: &str) -> String {
    format!(
        r#"@id("no-exfil") @response("alert") @severity("high")
forbid (principal == Agent::"x", action == Action::"connect", resource)
when {{ resource has addr && resource.addr == ip("{addr}") && resource.port == {port} }};

@id("no-secrets") @response("alert") @severity("critical")
forbid (principal == Agent::"x", action in [Action::"open_read", Action::"open_write"], resource in Dir::"{secret}");

@id("deep-shells") @response("alert")
forbid (principal, action == Action::"exec", resource) when {{ context.depth >= 9 }};
"#
    )
}

fn enforcements(s: &NsSensor) -> Vec<Value> {
    s.events()
        .into_iter()
        .filter(|e| e["kind"].get("enforcement").is_some())
        .collect()
}

fn eperm() -> String {
    format!("err {}", libc::EPERM)
}

#[test]
fn policy_rules_are_enforced_in_the_kernel_and_survive_a_sensor_restart() {
    if !bpf_available("policy_rules_are_enforced_in_the_kernel_and_survive_a_sensor_restart") {
        return;
    }
    let dir = WorkDir::new();
    let work = dir.path();
    let fleet = Fleet::new(&["pk-a"]);
    let host = fleet.host("pk-a");
    let mut collector =
        Collector::start(&work.join("collector"), &format!("{}:0", fleet.bridge_addr));
    let admin = collector.operator_token("admin", "secops");
    let sdir = work.join("pk-a");
    let cfg = sensor_config_scoped(
        "pk-a",
        &sdir.join("state"),
        &[("x", "x", "/srv"), ("y", "y", "/srv")],
    );
    let mut sensor = NsSensor::enroll_and_start_with(
        host,
        &sdir,
        &collector.addr,
        &collector.enroll_token(),
        &cfg,
    );
    sensor.wait_ready(Duration::from_secs(60));

    // Endpoints in the root namespace, reachable from the host over the bridge.
    let denied = TcpListener::bind(format!("{}:0", fleet.bridge_addr)).unwrap();
    let allowed = TcpListener::bind(format!("{}:0", fleet.bridge_addr)).unwrap();
    let denied_ep = denied.local_addr().unwrap().to_string();
    let allowed_ep = allowed.local_addr().unwrap().to_string();
    let secret = work.join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("key"), "s3cr3t").unwrap();
    let log = secret.join("audit.log");
    std::fs::write(&log, "orig").unwrap();
    std::fs::write(work.join("notes"), "public").unwrap();

    let mut x = Agent::start(host, "x");
    let mut y = Agent::start(host, "y");
    assert_eq!(x.ask(&format!("connect {denied_ep}")), "ok", "no rule yet");

    // Apply: the sensor answers with what it enforces in the kernel.
    let pdir = work.join("policies");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(
        pdir.join("rules.cedar"),
        policies(
            &fleet.bridge_addr,
            denied.local_addr().unwrap().port(),
            secret.to_str().unwrap(),
        ),
    )
    .unwrap();
    let applied = collector.ctl(&admin, &["policy", "apply", pdir.to_str().unwrap()]);
    let action_id = applied["rules_action_id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("no host rules action: {applied:#}"))
        .to_owned();
    let delivery = poll(Duration::from_secs(30), || {
        let a = collector.ctl(&admin, &["action", &action_id]);
        let h = a["hosts"]
            .as_array()?
            .iter()
            .find(|h| h["host"] == "pk-a")?
            .clone();
        matches!(h["state"].as_str(), Some("ok" | "partial" | "failed")).then_some(h)
    })
    .unwrap_or_else(|| {
        panic!(
            "the sensor did not answer the policy update: {:#}",
            collector.ctl(&admin, &["action", &action_id])
        )
    });
    assert_eq!(delivery["state"], "ok", "{delivery:#}");
    let msg = delivery["message"].as_str().unwrap();
    assert!(
        msg.contains("1 endpoint deny rule(s) in the kernel") && msg.contains("no-exfil"),
        "{msg}"
    );
    assert!(
        msg.contains("1 forbidden path rule(s) in the kernel") && msg.contains("no-secrets"),
        "{msg}"
    );
    assert!(msg.contains("evaluated by the collector only"), "{msg}");

    // Endpoint rule: x is refused in the kernel, elsewhere and y are not.
    assert_eq!(x.ask(&format!("connect {denied_ep}")), eperm());
    assert_eq!(x.ask(&format!("connect {allowed_ep}")), "ok");
    assert_eq!(
        y.ask(&format!("connect {denied_ep}")),
        "ok",
        "another agent"
    );

    // Names: resolved by the sensor when the rules arrive (getaddrinfo in its own
    // namespace); a name that does not resolve stays with the collector, and the
    // sensor says so ("partial").
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert_eq!(
        x.ask(&format!("connect 127.0.0.1:{closed}")),
        format!("err {}", libc::ECONNREFUSED),
        "nothing listens there (in the host's namespace)"
    );
    std::fs::write(
        pdir.join("names.cedar"),
        format!(
            r#"@id("no-local-port") @response("alert")
forbid (principal == Agent::"x", action == Action::"connect", resource)
when {{ resource.host == "localhost" && resource.port == {closed} }};

@id("no-nowhere") @response("alert")
forbid (principal, action == Action::"connect", resource) when {{ resource.host == "nowhere.invalid" }};
"#
        ),
    )
    .unwrap();
    let applied = collector.ctl(&admin, &["policy", "apply", pdir.to_str().unwrap()]);
    let version = applied["version"].as_u64().unwrap();
    let action_id = applied["rules_action_id"].as_str().unwrap().to_owned();
    let delivery = poll(Duration::from_secs(30), || {
        let a = collector.ctl(&admin, &["action", &action_id]);
        let h = a["hosts"]
            .as_array()?
            .iter()
            .find(|h| h["host"] == "pk-a")?
            .clone();
        matches!(h["state"].as_str(), Some("ok" | "partial" | "failed")).then_some(h)
    })
    .expect("the sensor answers the second policy update");
    assert_eq!(delivery["state"], "partial", "{delivery:#}");
    let msg = delivery["message"].as_str().unwrap();
    assert!(msg.contains("localhost → 127.0.0.1"), "{msg}");
    assert!(
        msg.contains(
            "no-nowhere: nowhere.invalid did not resolve on this host: collector-enforced"
        ),
        "{msg}"
    );
    assert_eq!(x.ask(&format!("connect 127.0.0.1:{closed}")), eperm());
    assert_eq!(
        x.ask(&format!("connect {denied_ep}")),
        eperm(),
        "v2's rule stays"
    );

    // Path rule: other reads work, y may read the secret, x dies at the open.
    let notes = work.join("notes");
    assert_eq!(x.ask(&format!("cat {}", notes.display())), "read:public");
    assert_eq!(
        y.ask(&format!("cat {}", secret.join("key").display())),
        "read:s3cr3t"
    );
    let xpid = x.pid();
    assert_eq!(
        x.ask(&format!("append {}", log.display())),
        "",
        "x answered"
    );
    let st = x.child.wait().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "killed at the open");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "orig",
        "nothing was written through the open"
    );

    // Both are reported as enforcement events naming the policy.
    let ev = poll(Duration::from_secs(20), || {
        let e = enforcements(&sensor);
        let net = e.iter().find(|e| {
            e["kind"]["enforcement"]["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("policy no-exfil:") && r.contains("refused"))
        })?;
        let open = e.iter().find(|e| {
            e["kind"]["enforcement"]["reason"]
                .as_str()
                .is_some_and(|r| {
                    r.starts_with("policy no-secrets:") && r.contains("killed at the open")
                })
        })?;
        Some((net.clone(), open.clone()))
    })
    .unwrap_or_else(|| panic!("no enforcement events: {:#?}", enforcements(&sensor)));
    assert_eq!(ev.0["kind"]["enforcement"]["action"], "deny");
    assert_eq!(ev.0["process"]["agent_id"], "x");
    assert_eq!(ev.1["kind"]["enforcement"]["action"], "kill");
    assert_eq!(ev.1["process"]["pid"].as_u64(), Some(u64::from(xpid)));
    assert_eq!(
        ev.1["kind"]["enforcement"]["command_id"],
        action_id.as_str()
    );

    // Status and rule counts.
    let st = poll(Duration::from_secs(10), || {
        let s = sensor.status()?;
        (s["policy"]["opens_killed"].as_u64() == Some(1)).then_some(s)
    })
    .unwrap_or_else(|| panic!("status: {:#?}", sensor.status()));
    let p = &st["policy"];
    assert_eq!(p["version"], version.to_string().as_str());
    assert_eq!(p["source"], "collector");
    assert_eq!(
        (p["endpoint_rules"].as_u64(), p["path_rules"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(p["connects_denied"].as_u64(), Some(3));
    assert_eq!(p["status"], "partial");

    // Restart with the collector down: the rules come back from the state dir.
    drop(y);
    collector.kill();
    assert!(sensor.stop().success());
    let mut sensor = NsSensor::start(host, &sdir);
    sensor.wait_ready(Duration::from_secs(60));
    let s = sensor.status();
    let mut x2 = Agent::start(host, "x");
    assert_eq!(
        x2.ask(&format!("connect {denied_ep}")),
        eperm(),
        "still denied after the restart, without the collector (status {s:#?})"
    );
    assert_eq!(x2.ask(&format!("connect {allowed_ep}")), "ok");
    assert_eq!(
        x2.ask(&format!("connect 127.0.0.1:{closed}")),
        eperm(),
        "the resolved name too"
    );
    let st = poll(Duration::from_secs(10), || {
        let s = sensor.status()?;
        s.get("policy").filter(|p| !p.is_null()).cloned()
    })
    .expect("policy in the status");
    assert_eq!(st["source"], "state_dir");
    assert_eq!(st["version"], version.to_string().as_str());
    assert_eq!(
        x2.ask(&format!("cat {}", secret.join("key").display())),
        "",
        "the path rule is back too"
    );
    assert_eq!(x2.child.wait().unwrap().signal(), Some(libc::SIGKILL));

    // A relative path cannot be matched in the kernel: the daemon kills the process
    // when it sees the open (after the fact: this read went through).
    let mut x3 = Agent::start(host, "x");
    assert_eq!(x3.ask(&format!("cd {}", secret.display())), "ok");
    assert_eq!(x3.ask("cat key"), "read:s3cr3t");
    let st = poll(Duration::from_secs(15), || x3.child.try_wait().unwrap())
        .expect("killed after the open");
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    let after = poll(Duration::from_secs(15), || {
        enforcements(&sensor).into_iter().find(|e| {
            e["kind"]["enforcement"]["reason"]
                .as_str()
                .is_some_and(|r| {
                    r.starts_with("policy no-secrets:") && r.contains("after the open")
                })
        })
    })
    .expect("reported");
    assert_eq!(after["kind"]["enforcement"]["applied"], true);
    drop((denied, allowed));
}

/// Waits (bounded) for `a` to end; its termination signal.
fn killed(a: &mut Agent) -> Option<i32> {
    poll(Duration::from_secs(15), || a.child.try_wait().unwrap())
        .expect("the process ended")
        .signal()
}

#[test]
fn forbidden_credential_stops_the_agents_processes_on_sight() {
    if !bpf_available("forbidden_credential_stops_the_agents_processes_on_sight") {
        return;
    }
    let dir = WorkDir::new();
    let work = dir.path();
    let fleet = Fleet::new(&["pk-c"]);
    let host = fleet.host("pk-c");
    let collector = Collector::start(&work.join("collector"), &format!("{}:0", fleet.bridge_addr));
    let admin = collector.operator_token("admin", "secops");
    let sdir = work.join("pk-c");
    let cfg = sensor_config_scoped(
        "pk-c",
        &sdir.join("state"),
        &[("x", "x", "/srv"), ("y", "y", "/srv")],
    );
    let mut sensor = NsSensor::enroll_and_start_with(
        host,
        &sdir,
        &collector.addr,
        &collector.enroll_token(),
        &cfg,
    );
    sensor.wait_ready(Duration::from_secs(60));

    // Both agents hold the same key; its fingerprint comes from the sensor's report.
    let key = [("OPENAI_API_KEY", "sk-proj-PolicyKernelTest0123456789abcd")];
    let mut x = Agent::start_with(host, "x", &key);
    let mut y = Agent::start_with(host, "y", &key);
    let xpid = u64::from(x.pid());
    let fp = poll(Duration::from_secs(20), || {
        sensor.events().into_iter().find_map(|e| {
            (e["process"]["pid"].as_u64() == Some(xpid))
                .then(|| {
                    e["kind"]["exec"]["env_credentials"][0]["fingerprint"]
                        .as_str()
                        .map(str::to_owned)
                })
                .flatten()
        })
    })
    .expect("the key is reported as a fingerprint");

    let pdir = work.join("policies");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(
        pdir.join("keys.cedar"),
        format!(
            r#"@id("x-no-openai-key") @response("alert")
forbid (principal == Agent::"x", action == Action::"use_credential", resource == Credential::"{fp}");
"#
        ),
    )
    .unwrap();
    let applied = collector.ctl(&admin, &["policy", "apply", pdir.to_str().unwrap()]);
    let action_id = applied["rules_action_id"].as_str().unwrap().to_owned();
    let delivery = poll(Duration::from_secs(30), || {
        let a = collector.ctl(&admin, &["action", &action_id]);
        let h = a["hosts"]
            .as_array()?
            .iter()
            .find(|h| h["host"] == "pk-c")?
            .clone();
        matches!(h["state"].as_str(), Some("ok" | "partial" | "failed")).then_some(h)
    })
    .expect("the sensor answers the policy update");
    assert_eq!(delivery["state"], "ok", "{delivery:#}");
    assert!(
        delivery["message"]
            .as_str()
            .unwrap()
            .contains("1 forbidden credential rule(s) stopped on sight"),
        "{delivery:#}"
    );
    // The holder of agent x is stopped when the rule arrives; y is not affected.
    assert_eq!(killed(&mut x), Some(libc::SIGKILL));
    assert_eq!(
        delivery["affected_exec_ids"].as_array().map(Vec::len),
        Some(1),
        "{delivery:#}"
    );
    assert_eq!(y.ask("cd /"), "ok", "agent y keeps running");
    // A new process of x with the key: started by an untracked parent, it is
    // recognised at its exec and stopped on sight ...
    let mut x2 = Agent::spawn(host, "x", &key);
    assert_eq!(killed(&mut x2), Some(libc::SIGKILL));
    // ... started by a tracked one (here agent y), it is held at exec and killed
    // before it runs an instruction.
    assert_eq!(y.ask("spawn x").trim(), "exit -9");
    assert_eq!(y.ask("spawn y"), "exit 0 ran", "y's own child runs");
    let ev = poll(Duration::from_secs(20), || {
        enforcements(&sensor).into_iter().find(|e| {
            e["kind"]["enforcement"]["reason"]
                .as_str()
                .is_some_and(|r| {
                    r.starts_with("policy x-no-openai-key:") && r.contains("held at exec")
                })
        })
    })
    .unwrap_or_else(|| panic!("no held-at-exec enforcement: {:#?}", enforcements(&sensor)));
    assert_eq!(
        ev["kind"]["enforcement"]["credential_fingerprint"],
        fp.as_str()
    );
    assert_eq!(ev["process"]["agent_id"], "x");
    // y with the same key still starts.
    let mut y2 = Agent::start_with(host, "y", &key);
    assert_eq!(y2.ask("cd /"), "ok");
}
