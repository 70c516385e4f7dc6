//! Real kernel: rules written to the policy maps act on a tracked process — its
//! connect to a denied endpoint fails with EPERM, an open of a forbidden path kills
//! it before it gets a descriptor — and on nothing else; a new rule set replaces the
//! previous one as a whole.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use agent_ebpf::{Tracked, track};

use super::compile::Plan;
use super::maps::PolicyMaps;
use super::rules::{AgentRules, EndpointRule, HostRules, PathMatch, PathRule};
use crate::enforce::Enforcer;
use crate::kernel::loader;
use crate::kernel::pins::PIN_LAYOUT;
use crate::kernel::test_support::{Attached, PinCleanup, root_or_skip};

/// A python child running one command per stdin line.
struct Agent {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl Agent {
    fn start() -> Agent {
        let code = r#"
import os, socket, sys
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    try:
        if cmd == "connect":
            s = socket.create_connection(("127.0.0.1", int(arg)), timeout=2); s.close()
        elif cmd == "read":
            open(arg).read()
        elif cmd == "append":
            fd = os.open(arg, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(fd, b"marker"); os.close(fd)
        elif cmd == "cat":
            print(open(arg).read(), flush=True)
        elif cmd == "relative":
            d, _, f = arg.partition(" ")
            os.chdir(d); open(f).read()
        print("ok", flush=True)
    except OSError as e:
        print("err", e.errno, flush=True)
"#;
        let mut child = Command::new("python3")
            .args(["-c", code])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Agent { child, stdin, out }
    }

    /// The answer line ("" when the process died on the command).
    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut l = String::new();
        let _ = self.out.read_line(&mut l);
        l.trim().to_string()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rules(port: u16, secret: &Path) -> HostRules {
    let mut r = HostRules::default();
    r.agents.insert(
        "x".into(),
        AgentRules {
            deny_endpoints: vec![EndpointRule {
                policy: "no-exfil".into(),
                cidr: Some("127.0.0.1/32".into()),
                port: Some(port.into()),
                ..Default::default()
            }],
            forbidden_paths: vec![PathRule {
                policy: "no-secrets".into(),
                path: secret.display().to_string(),
                r#match: PathMatch::Dir.into(),
                read: true,
                write: true,
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    r
}

#[test]
fn kernel_rules_deny_connects_and_kill_at_open_for_the_agent_only() {
    if !root_or_skip("kernel_rules_deny_connects_and_kill_at_open_for_the_agent_only") {
        return;
    }
    let base = PathBuf::from(format!(
        "/sys/fs/bpf/custody-test-policy-{}",
        std::process::id()
    ));
    let _cleanup = PinCleanup(base.clone());
    let l = loader::load(&loader::Options {
        observe_all: false,
        floor: false,
        tls_binaries: Vec::new(),
        netns: 0,
        pin_dir: Some(base.clone()),
    })
    .expect("load programs");
    // Every program loads (a verifier rejection would only degrade a feature).
    for f in l.features.iter().filter(|f| !f.name.starts_with("tls:")) {
        let d = &f.detail;
        assert!(
            f.active,
            "feature {} degraded: {} … {}",
            f.name,
            &d[..d.len().min(2000)],
            &d[d.len().saturating_sub(2000)..]
        );
    }
    let _links = Attached(l.links);
    let mut ebpf = l.ebpf;
    let mut tracked = l.tracked;
    let counters = l.counters;
    let _enforcer = Enforcer::attach(&mut ebpf, &base.join(PIN_LAYOUT)).expect("enforcement");
    let mut maps = PolicyMaps::take(&mut ebpf).expect("policy maps");

    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("key"), "k").unwrap();
    std::fs::write(dir.path().join("notes"), "n").unwrap();
    let denied = TcpListener::bind("127.0.0.1:0").unwrap();
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let (dport, aport) = (
        denied.local_addr().unwrap().port(),
        allowed.local_addr().unwrap().port(),
    );

    let plan = Plan::new(&rules(dport, &secret), &BTreeMap::new());
    let slot = |id: &str| (id == "x").then_some(5);
    maps.install(&plan.entries(&slot)).unwrap();
    assert_eq!(maps.counts(), (1, 1));

    let mut x = Agent::start();
    let mut other = Agent::start();
    tracked
        .insert(x.child.id(), Tracked::new(5, track::DECLARED), 0)
        .unwrap();
    tracked
        .insert(other.child.id(), Tracked::new(6, track::DECLARED), 0)
        .unwrap();

    assert_eq!(
        x.ask(&format!("connect {dport}")),
        format!("err {}", libc::EPERM)
    );
    assert_eq!(x.ask(&format!("connect {aport}")), "ok");
    assert_eq!(
        other.ask(&format!("connect {dport}")),
        "ok",
        "another agent"
    );
    assert_eq!(x.ask(&format!("read {}/notes", dir.path().display())), "ok");
    assert_eq!(
        other.ask(&format!("read {}/key", secret.display())),
        "ok",
        "another agent reads it"
    );
    // Relative: not matched in the kernel (the daemon checks it after the fact).
    assert_eq!(x.ask(&format!("relative {} key", secret.display())), "ok");

    // A new set replaces the old one: only the path rule is left.
    let mut r = rules(dport, &secret);
    r.agents.get_mut("x").unwrap().deny_endpoints.clear();
    maps.install(&Plan::new(&r, &BTreeMap::new()).entries(&slot))
        .unwrap();
    assert_eq!(maps.counts(), (0, 1));
    assert_eq!(x.ask(&format!("connect {dport}")), "ok", "rule replaced");

    // Appending to a file in the forbidden directory: killed at the open, so
    // nothing is ever written through it.
    let log = secret.join("log");
    std::fs::write(&log, "orig").unwrap();
    assert_eq!(x.ask(&format!("append {}", log.display())), "");
    let st = x.child.wait().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "killed at the open");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "orig");
    // Reading it: killed before the contents reach the process.
    let mut x2 = Agent::start();
    tracked
        .insert(x2.child.id(), Tracked::new(5, track::INHERITED), 0)
        .unwrap();
    assert_eq!(x2.ask(&format!("cat {}/key", secret.display())), "");
    assert_eq!(x2.child.wait().unwrap().signal(), Some(libc::SIGKILL));
    // The open itself ran in the kernel before the signal was delivered: a file it
    // created stays (empty) — a documented limit (no LSM on these kernels).
    let mut x3 = Agent::start();
    tracked
        .insert(x3.child.id(), Tracked::new(5, track::INHERITED), 0)
        .unwrap();
    let created = secret.join("new-file");
    assert_eq!(x3.ask(&format!("append {}", created.display())), "");
    assert_eq!(x3.child.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert_eq!(
        std::fs::read(&created).map(|b| b.len()).unwrap_or(0),
        0,
        "nothing written through the descriptor"
    );
    let killed: u64 = counters
        .get(&agent_ebpf::counter::POLICY_OPEN_KILLED, 0)
        .map(|v| v.iter().sum())
        .unwrap();
    let denied: u64 = counters
        .get(&agent_ebpf::counter::POLICY_NET_DENIED, 0)
        .map(|v| v.iter().sum())
        .unwrap();
    assert_eq!((killed, denied), (3, 1));
}
