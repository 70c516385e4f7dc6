//! Revocation hold end to end, on the real kernel: with a credential revocation cached
//! on the host, a process started by an agent with the revoked secret in its
//! environment is stopped at exec and killed (or quarantined) before it can connect
//! anywhere; a clean one is held, continued and connects; a process stopped by
//! someone else stays stopped; with no revocation nothing is held.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use custody_tests::{Daemon, bpf_available, kind};
use serde_json::Value;

/// A loopback listener owned by the test that counts the connections it accepts.
struct Listener {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    fn start() -> Listener {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok(_) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Listener {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A declared agent (python) that starts children on request: `connect PORT SECRET
/// [pad]` runs bash, whose first act is a TCP connect to PORT (SECRET, unless "-", is
/// put in its environment as OPENAI_API_KEY, after 6 KiB of padding with "pad", so
/// beyond what the kernel captures), and reports its pid and exit status; `sleep`
/// starts `sleep 60` and reports its pid.
const AGENT: &str = r#"
import os, subprocess, sys
for line in sys.stdin:
    parts = line.split()
    if parts[0] == "connect":
        env = dict(os.environ)
        if len(parts) > 3:
            env["CUSTODY_TEST_PADDING"] = "p" * 6144
        if parts[2] != "-":
            env["OPENAI_API_KEY"] = parts[2]
        p = subprocess.Popen(["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/" + parts[1] + " && echo connected >&2"], env=env)
        print("pid", p.pid, flush=True)
        print("rc", p.wait(), flush=True)
    elif parts[0] == "sleep":
        p = subprocess.Popen(["sleep", "60"])
        print("pid", p.pid, flush=True)
"#;

struct Agent {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
    pids: Vec<u32>,
}

impl Agent {
    fn start(agent_id: &str) -> Agent {
        let mut child = Command::new("python3")
            .args(["-c", AGENT])
            .env("CUSTODY_AGENT", agent_id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Agent {
            child,
            stdin,
            out,
            pids: Vec::new(),
        }
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The value of the next "`what` VALUE" line.
    fn read(&mut self, what: &str) -> i64 {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        let v = l
            .trim()
            .strip_prefix(what)
            .unwrap_or_else(|| panic!("agent said {l:?}, expected {what} …"))
            .trim()
            .parse()
            .unwrap();
        if what == "pid" {
            self.pids.push(v as u32);
        }
        v
    }

    /// Start a connecting child; returns (pid, exit status as Python reports it:
    /// negative for a signal).
    fn connect(&mut self, port: u16, secret: &str) -> (u32, i64) {
        self.connect_cmd(&format!("connect {port} {secret}"))
    }

    fn connect_cmd(&mut self, cmd: &str) -> (u32, i64) {
        self.send(cmd);
        let pid = self.read("pid") as u32;
        (pid, self.read("rc"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for &p in &self.pids {
            // SAFETY: signalling processes this test started (they may be gone).
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes the test's bpffs pins however the test ends.
struct PinCleanup(PathBuf);

impl Drop for PinCleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    stat[close + 2..].chars().next()
}

fn wait_state(pid: u32, want: char, limit: Duration) -> Option<char> {
    let t = Instant::now();
    loop {
        let s = state(pid);
        if s == Some(want) || t.elapsed() > limit {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Taken by the tests whose daemon is armed. Every daemon treats a process labelled
/// CUSTODY_AGENT as an agent, so two armed daemons on one kernel would both hold each
/// other's test processes, and one's SIGCONT would end the other's hold early (one
/// daemon per kernel, or per network namespace, is the deployment).
static ARMED_DAEMON: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn armed_daemon_turn() -> std::sync::MutexGuard<'static, ()> {
    ARMED_DAEMON.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fixed fleet key for the daemon (so the test can compute fingerprints).
const KEY_HEX: &str = "4c9f1a0e7b3d5c2a8e6f0d1b3a5c7e9f2b4d6f8a0c1e3a5b7d9f1c3e5a7b9d0f";

fn write_fleet_key(dir: &Path) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(dir.join("fleet.key"))
        .unwrap();
    writeln!(f, "{KEY_HEX}").unwrap();
}

/// The daemon's fingerprint of a secret: HMAC-SHA256 with the fleet key, first 16
/// bytes in hex (computed with Python's hmac, independently of the daemon's code).
fn fingerprint(secret: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hmac, hashlib, sys; print(hmac.new(bytes.fromhex(sys.argv[1]), sys.argv[2].encode(), hashlib.sha256).hexdigest()[:32])",
            KEY_HEX,
            secret,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    format!(
        "hmac-sha256:{}",
        String::from_utf8(out.stdout).unwrap().trim()
    )
}

/// A fake but correctly shaped OpenAI key, built at run time.
fn fake_key(salt: u64) -> String {
    let seed = (std::process::id() as u64 ^ salt).wrapping_mul(2_654_435_761);
    let alphabet = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let body: String = (0..48)
        .map(|i| alphabet[((seed >> (i % 17)) as usize + i * 11) % alphabet.len()] as char)
        .collect();
    format!("sk-proj-{body}")
}

fn config(work: &Path, host: &str, agent_id: &str, pins: &Path) -> String {
    format!(
        "[sensor]\nhost_id = \"{host}\"\nstate_dir = \"{}\"\npin_dir = \"{}\"\n\n[[agent]]\nid = \"{agent_id}\"\n[agent.match]\nenv = \"{agent_id}\"\n",
        work.display(),
        pins.display()
    )
}

fn status(work: &Path) -> Value {
    std::fs::read_to_string(work.join("status.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

/// Wait (bounded) for a status snapshot satisfying `pred`.
fn wait_status(work: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(work);
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for status: {what}; last: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Start the agent and wait until the daemon has recognised (and so tracks) it.
fn tracked_agent(daemon: &Daemon, agent_id: &str) -> Agent {
    let agent = Agent::start(agent_id);
    let pid = agent.child.id();
    daemon.wait_for("the agent's exec", Duration::from_secs(30), |e| {
        kind(e) == "exec" && e["process"]["pid"] == pid
    });
    agent
}

#[test]
fn revoked_credential_in_env_is_stopped_at_exec_before_it_connects() {
    let name = "revoked_credential_in_env_is_stopped_at_exec_before_it_connects";
    if !bpf_available(name) {
        return;
    }
    let _turn = armed_daemon_turn();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let pins = PathBuf::from(format!(
        "/sys/fs/bpf/custody-test-hold-{}",
        std::process::id()
    ));
    let _pins = PinCleanup(pins.clone());
    write_fleet_key(work);
    let killed_secret = fake_key(1);
    let quarantined_secret = fake_key(2);
    let (fp_kill, fp_quarantine) = (
        fingerprint(&killed_secret),
        fingerprint(&quarantined_secret),
    );
    // The revocations, as a revoke_credential command leaves them cached on the host.
    std::fs::write(
        work.join("revoked.json"),
        serde_json::json!({
            fp_kill.clone(): {"action": "kill", "command_id": "cmd-hold-kill", "reason": "leaked"},
            fp_quarantine.clone(): {"action": "quarantine", "command_id": "cmd-hold-q", "reason": "leaked"},
        })
        .to_string(),
    )
    .unwrap();
    let agent_id = format!("hold-agent-{}", std::process::id());
    let daemon = Daemon::start(work, &config(work, "hold-host", &agent_id, &pins), &[]);
    wait_status(work, "hold armed", |s| s["holds"]["armed"] == true);
    let mut agent = tracked_agent(&daemon, &agent_id);

    // (a) The revoked secret: killed before its first instruction, no connection.
    let target = Listener::start();
    let (bad_pid, rc) = agent.connect(target.port, &killed_secret);
    assert_eq!(rc, -libc::SIGKILL as i64, "the holder must be killed");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        target.accepted(),
        0,
        "a process with a revoked credential connected"
    );
    let evs = daemon.wait_for("enforcement event", Duration::from_secs(30), |e| {
        kind(e) == "enforcement" && e["process"]["pid"] == bad_pid
    });
    let enf = evs
        .iter()
        .find(|e| kind(e) == "enforcement" && e["process"]["pid"] == bad_pid)
        .unwrap();
    let k = &enf["kind"]["enforcement"];
    assert_eq!(k["credential_fingerprint"], fp_kill.as_str());
    assert_eq!(k["action"], "kill");
    assert_eq!(k["command_id"], "cmd-hold-kill");
    assert_eq!(k["seen_in"], "env");
    assert_eq!(k["applied"], true);
    assert!(
        k["reason"].as_str().unwrap().contains("held at exec"),
        "{k}"
    );
    assert_eq!(
        evs.iter()
            .filter(|e| kind(e) == "enforcement" && e["process"]["pid"] == bad_pid)
            .count(),
        1,
        "reported once"
    );

    // The same secret past the 4 KiB of environment the kernel captures: vetted from
    // /proc/PID/environ while held.
    let far = Listener::start();
    let (far_pid, rc) = agent.connect_cmd(&format!("connect {} {killed_secret} pad", far.port));
    assert_eq!(
        rc,
        -libc::SIGKILL as i64,
        "a holder with a long environment must be killed"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        far.accepted(),
        0,
        "a process with a revoked credential connected"
    );
    daemon.wait_for(
        "enforcement event (long environment)",
        Duration::from_secs(30),
        |e| kind(e) == "enforcement" && e["process"]["pid"] == far_pid,
    );

    // Quarantine-then-continue: it runs, but cannot connect.
    let q_target = Listener::start();
    let (q_pid, rc) = agent.connect(q_target.port, &quarantined_secret);
    assert_eq!(rc, 1, "the quarantined process runs and its connect fails");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(q_target.accepted(), 0, "a quarantined process connected");
    daemon.wait_for("quarantine enforcement", Duration::from_secs(30), |e| {
        kind(e) == "enforcement"
            && e["process"]["pid"] == q_pid
            && e["kind"]["enforcement"]["action"] == "quarantine"
    });

    // (b) No revoked secret: held, continued, connects.
    let ok_target = Listener::start();
    let (_, rc) = agent.connect(ok_target.port, "-");
    assert_eq!(rc, 0, "a clean process must run normally");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ok_target.accepted() == 0 {
        assert!(
            Instant::now() < deadline,
            "the clean process never connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // (c) A process stopped by someone else (here: the test) is left stopped.
    agent.send("sleep");
    let sleeper = agent.read("pid") as u32;
    assert_eq!(
        wait_state(sleeper, 'S', Duration::from_secs(30)),
        Some('S'),
        "held then continued"
    );
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(sleeper as i32, libc::SIGSTOP) };
    assert_eq!(wait_state(sleeper, 'T', Duration::from_secs(10)), Some('T'));
    std::thread::sleep(Duration::from_millis(1500)); // several sweeps
    assert_eq!(
        state(sleeper),
        Some('T'),
        "the daemon continued a process it did not hold"
    );

    let st = wait_status(work, "holds settled", |s| {
        let h = &s["holds"];
        h["killed"].as_u64() >= Some(2)
            && h["vetted_from_proc"].as_u64() >= Some(1)
            && h["quarantined"].as_u64() >= Some(1)
            && h["resumed"].as_u64() >= Some(2)
    });
    let h = &st["holds"];
    let settled = h["resumed"].as_u64().unwrap()
        + h["killed"].as_u64().unwrap()
        + h["quarantined"].as_u64().unwrap();
    eprintln!(
        "hold latency: {settled} holds, avg {:.3} ms, max {:.3} ms, by sweep {}, from /proc {}; kernel holds {}",
        h["latency_sum_ns"].as_f64().unwrap() / settled as f64 / 1e6,
        h["latency_max_ns"].as_f64().unwrap() / 1e6,
        h["by_sweep"],
        h["vetted_from_proc"],
        st["kernel_counters"]["held"]
    );
    assert!(st["kernel_counters"]["held"].as_u64() >= Some(5));
    assert_eq!(st["kernel_counters"]["hold_failed"].as_u64(), Some(0));
    assert_eq!(h["held_now"].as_u64(), Some(0), "nothing left stopped");

    drop(agent);
    let evs = daemon.stop();
    // The raw secrets never appear in the output.
    let raw = serde_json::to_string(&evs).unwrap();
    assert!(!raw.contains(&killed_secret) && !raw.contains(&quarantined_secret));
}

#[test]
fn nothing_is_held_without_revocations() {
    let name = "nothing_is_held_without_revocations";
    if !bpf_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let pins = PathBuf::from(format!(
        "/sys/fs/bpf/custody-test-nohold-{}",
        std::process::id()
    ));
    let _pins = PinCleanup(pins.clone());
    write_fleet_key(work);
    let agent_id = format!("nohold-agent-{}", std::process::id());
    let daemon = Daemon::start(work, &config(work, "nohold-host", &agent_id, &pins), &[]);
    let mut agent = tracked_agent(&daemon, &agent_id);
    let target = Listener::start();
    let (pid, rc) = agent.connect(target.port, &fake_key(3));
    assert_eq!(rc, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while target.accepted() == 0 {
        assert!(Instant::now() < deadline, "the child never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The child's exec was seen (so the hold had its chance), then a fresh snapshot.
    daemon.wait_for("the child's exec", Duration::from_secs(30), |e| {
        kind(e) == "exec" && e["process"]["pid"] == pid
    });
    let after =
        wait_status(work, "a snapshot", |s| s["updated_unix"].is_u64()).clone()["updated_unix"]
            .as_u64()
            .unwrap();
    let st = wait_status(work, "a later snapshot", |s| {
        s["updated_unix"].as_u64() > Some(after)
    });
    assert_eq!(st["holds"]["armed"], false);
    assert_eq!(
        st["kernel_counters"]["held"].as_u64(),
        Some(0),
        "no SIGSTOP without a cached revocation"
    );
    let h = &st["holds"];
    assert_eq!(
        (
            h["resumed"].as_u64(),
            h["killed"].as_u64(),
            h["gone"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    drop(agent);
    daemon.stop();
}

/// A declared agent (python) that starts HTTPS clients on request: `py URL` runs a
/// Python client (urllib, the system libssl), `node URL` node's https (its own
/// OpenSSL); either sends `Authorization: Bearer TOKEN` with the token it is given on
/// stdin (so the token is in neither argv nor environment), and the agent reports
/// the client's pid, exit status and output.
const TLS_AGENT: &str = r#"
import os, subprocess, sys
ca, node_js = sys.argv[1], sys.argv[2]
client = """
import ssl, sys, urllib.request
token = sys.stdin.readline().strip()
ctx = ssl.create_default_context(cafile=sys.argv[2])
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + token})
print(urllib.request.urlopen(req, context=ctx, timeout=10).read().decode())
"""
node_client = """
const fs = require('fs');
const [node, url, js] = process.argv;
process.argv = [node, js, url, fs.readFileSync(0, 'utf8').trim()];
require(js);
"""
for line in sys.stdin:
    what, url, token = line.split()
    if what == "py":
        cmd = ["python3", "-c", client, url, ca]
    else:
        cmd = ["node", "-e", node_client, "--", url, node_js]
    env = dict(os.environ, NODE_EXTRA_CA_CERTS=ca)
    p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    print("pid", p.pid, flush=True)
    out, _ = p.communicate((token + "\n").encode())
    print("rc", p.returncode, flush=True)
    print("out", out.decode().strip().replace("\n", " ") or "-", flush=True)
"#;

/// A fake, correctly shaped JWT (built at run time) naming `sub`.
fn fake_jwt(sub: &str) -> String {
    let b64 = |s: &str| -> String {
        let out = Command::new("python3")
            .args([
                "-c",
                "import base64, sys; print(base64.urlsafe_b64encode(sys.argv[1].encode()).decode().rstrip('='))",
                s,
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    format!(
        "{}.{}.{}",
        b64(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64(&format!(
            r#"{{"iss":"https://idp.example.com","sub":"{sub}","jti":"{}-{sub}"}}"#,
            std::process::id()
        )),
        b64(&format!("not-a-real-signature-{sub}"))
    )
}

struct Request {
    pid: u32,
    rc: i64,
    out: String,
}

impl Agent {
    /// Have the agent run an HTTPS client (`py` or `node`) for `url` with `token`.
    fn https(&mut self, client: &str, url: &str, token: &str) -> Request {
        self.send(&format!("{client} {url} {token}"));
        let pid = self.read("pid") as u32;
        let rc = self.read("rc");
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        Request {
            pid,
            rc,
            out: l
                .trim()
                .strip_prefix("out")
                .unwrap_or("")
                .trim()
                .to_string(),
        }
    }
}

fn received(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn https_request_with_revoked_bearer_is_stopped_before_it_is_sent() {
    let name = "https_request_with_revoked_bearer_is_stopped_before_it_is_sent";
    if !bpf_available(name) {
        return;
    }
    let _turn = armed_daemon_turn();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let pins = PathBuf::from(format!(
        "/sys/fs/bpf/custody-test-tlshold-{}",
        std::process::id()
    ));
    let _pins = PinCleanup(pins.clone());
    write_fleet_key(work);
    custody_tests::write_tls_files(work);
    let (kill_token, q_token, clean_token) = (
        fake_jwt("revoked-kill"),
        fake_jwt("revoked-quarantine"),
        fake_jwt("still-valid"),
    );
    let (fp_kill, fp_q) = (fingerprint(&kill_token), fingerprint(&q_token));
    std::fs::write(
        work.join("revoked.json"),
        serde_json::json!({
            fp_kill.clone(): {"action": "kill", "command_id": "cmd-tls-kill", "reason": "leaked"},
            fp_q.clone(): {"action": "quarantine", "command_id": "cmd-tls-q", "reason": "leaked"},
        })
        .to_string(),
    )
    .unwrap();
    let log = work.join("requests.log");
    let server = custody_tests::Server::start(
        Command::new("python3")
            .arg(custody_tests::agents_dir().join("tls_server.py"))
            .arg(work.join("server.pem"))
            .arg(work.join("server.key"))
            .arg(&log),
    );
    let base = format!("https://127.0.0.1:{}", server.first_line);

    let agent_id = format!("tlshold-agent-{}", std::process::id());
    let daemon = Daemon::start(work, &config(work, "tlshold-host", &agent_id, &pins), &[]);
    let st = wait_status(work, "hold armed", |s| s["holds"]["armed"] == true);
    let node_hooked = st["features"].as_array().is_some_and(|fs| {
        fs.iter()
            .any(|f| f["name"].as_str().is_some_and(|n| n.contains("node")) && f["active"] == true)
    });
    let mut child = Command::new("python3")
        .args(["-c", TLS_AGENT])
        .arg(work.join("ca.pem"))
        .arg(custody_tests::agents_dir().join("https_get.js"))
        .env("CUSTODY_AGENT", &agent_id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let mut agent = Agent {
        stdin: child.stdin.take().unwrap(),
        out: BufReader::new(child.stdout.take().unwrap()),
        child,
        pids: Vec::new(),
    };
    let agent_pid = agent.child.id();
    daemon.wait_for("the agent's exec", Duration::from_secs(30), |e| {
        kind(e) == "exec" && e["process"]["pid"] == agent_pid
    });

    // (a) The revoked bearer: killed at SSL_write's entry, the server never hears it.
    let r = agent.https("py", &format!("{base}/v1/held-kill"), &kill_token);
    assert_eq!(r.rc, -libc::SIGKILL as i64, "the sender must be killed");
    let enf = |pid: u32| {
        let evs = daemon.wait_for("enforcement event", Duration::from_secs(30), |e| {
            kind(e) == "enforcement" && e["process"]["pid"] == pid
        });
        evs.into_iter()
            .find(|e| kind(e) == "enforcement" && e["process"]["pid"] == pid)
            .unwrap()["kind"]["enforcement"]
            .clone()
    };
    let k = enf(r.pid);
    assert_eq!(k["credential_fingerprint"], fp_kill.as_str());
    assert_eq!(k["action"], "kill");
    assert_eq!(k["command_id"], "cmd-tls-kill");
    assert_eq!(k["seen_in"], "header");
    assert_eq!(k["applied"], true);
    assert!(
        k["reason"].as_str().unwrap().contains("held before send"),
        "{k}"
    );

    // (b) Quarantine-then-continue: the process goes on, its send fails.
    let r = agent.https("py", &format!("{base}/v1/held-quarantine"), &q_token);
    assert!(
        r.rc != 0 && r.rc != -libc::SIGKILL as i64,
        "the quarantined sender runs on and its request fails (rc {})",
        r.rc
    );
    let k = enf(r.pid);
    assert_eq!(
        (k["action"].as_str(), k["seen_in"].as_str()),
        (Some("quarantine"), Some("header"))
    );

    // (c) Another token: held, vetted, continued; the response comes back.
    let r = agent.https("py", &format!("{base}/v1/held-clean"), &clean_token);
    assert_eq!(r.rc, 0, "a clean request must go through");
    assert!(r.out.contains("\"ok\": true"), "response: {}", r.out);

    // (d) node (OpenSSL linked into the binary): the same both ways.
    if node_hooked {
        let r = agent.https("node", &format!("{base}/node/held-kill"), &kill_token);
        assert_eq!(
            r.rc,
            -libc::SIGKILL as i64,
            "the node sender must be killed"
        );
        assert_eq!(enf(r.pid)["seen_in"], "header");
        let r = agent.https("node", &format!("{base}/node/held-clean"), &clean_token);
        assert_eq!(r.rc, 0, "a clean node request must go through");
        assert!(r.out.starts_with("200"), "node said {}", r.out);
    } else {
        eprintln!("{name}: node's OpenSSL is not hooked on this host: node part skipped");
    }

    std::thread::sleep(Duration::from_secs(1));
    let seen = received(&log);
    assert!(
        seen.contains("GET /v1/held-clean"),
        "the clean request arrived: {seen:?}"
    );
    for never in ["/v1/held-kill", "/v1/held-quarantine", "/node/held-kill"] {
        assert!(
            !seen.contains(never),
            "a request with a revoked bearer reached the server ({never}): {seen:?}"
        );
    }
    if node_hooked {
        assert!(seen.contains("GET /node/held-clean"), "{seen:?}");
    }

    let (killed, resumed) = if node_hooked { (2, 2) } else { (1, 1) };
    let st = wait_status(work, "TLS holds settled", |s| {
        let t = &s["holds"]["tls"];
        t["killed"].as_u64() >= Some(killed)
            && t["quarantined"].as_u64() >= Some(1)
            && t["resumed"].as_u64() >= Some(resumed)
    });
    let t = &st["holds"]["tls"];
    let settled = t["resumed"].as_u64().unwrap()
        + t["killed"].as_u64().unwrap()
        + t["quarantined"].as_u64().unwrap()
        + t["unvetted"].as_u64().unwrap();
    eprintln!(
        "hold before TLS send: {t}\nhold before TLS send: {settled} holds, added latency avg {:.3} ms, max {:.3} ms, buckets {} (bounds {:?} s), by sweep {}, from memory {}, unvetted {}; kernel holds {}",
        t["latency_sum_ns"].as_f64().unwrap() / settled as f64 / 1e6,
        t["latency_max_ns"].as_f64().unwrap() / 1e6,
        t["latency_buckets"],
        [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0
        ],
        t["by_sweep"],
        t["vetted_from_memory"],
        t["unvetted"],
        st["kernel_counters"]["held_tls"]
    );
    assert_eq!(t["unvetted"].as_u64(), Some(0));
    assert!(st["kernel_counters"]["held_tls"].as_u64() >= Some(settled));
    assert_eq!(st["kernel_counters"]["hold_tls_failed"].as_u64(), Some(0));
    assert_eq!(
        st["holds"]["held_now"].as_u64(),
        Some(0),
        "nothing left stopped"
    );

    drop(agent);
    let evs = daemon.stop();
    let raw = serde_json::to_string(&evs).unwrap();
    assert!(!raw.contains(&kill_token) && !raw.contains(&q_token));
    drop(server);
}
