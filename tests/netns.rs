//! Several "hosts" on one kernel for fleet tests: network namespaces on a private
//! bridge, a collector in the root namespace, and one enrolled custodyd per namespace.
//!
//! Every name carries the test process's pid and a counter, so parallel tests (and
//! parallel test runs) never collide; everything is torn down by `Drop`, and leftovers
//! of runs that were killed (whose pid is gone) are removed by the next run.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bin;

mod hosts;
pub use hosts::{Fleet, NsHost, cleanup_stale, enter_netns, ip, ip_quiet, set_login_uid};

/// Reads a child's stdout/stderr lines into a shared buffer (echoed with a prefix),
/// and returns a channel of the stdout lines.
fn capture(child: &mut Child, label: &str) -> (Arc<Mutex<Vec<String>>>, mpsc::Receiver<String>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        let (log, label) = (log.clone(), label.to_string());
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("[{label}] {l}");
                log.lock().unwrap().push(l.clone());
                let _ = tx.send(l);
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let (log, label) = (log.clone(), label.to_string());
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[{label}] {l}");
                log.lock().unwrap().push(l);
            }
        });
    }
    (log, rx)
}

/// A `custody-collector serve` process.
pub struct Collector {
    child: Option<Child>,
    pub data_dir: PathBuf,
    /// "ip:port" it listens on.
    pub addr: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    /// Starts a collector on `listen` ("ip:port", port 0 for any) and waits (bounded)
    /// for its "listening on" line.
    pub fn start(data_dir: &Path, listen: &str) -> Collector {
        let mut c = Collector {
            child: None,
            data_dir: data_dir.to_owned(),
            addr: listen.to_owned(),
            log: Arc::default(),
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let mut child = Command::new(bin("custody-collector"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["serve", "--listen", &self.addr, "--retention-age", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn custody-collector");
        let (log, lines) = capture(&mut child, "collector");
        self.log = log;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(l) => {
                    if let Some(a) = l.strip_prefix("listening on ") {
                        self.addr = a.trim().to_owned();
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = child.wait();
                    panic!(
                        "collector exited before listening ({st:?}): {:?}",
                        self.log.lock().unwrap()
                    );
                }
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "collector exited before listening ({st}): {:?}",
                    self.log.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "collector not listening after 30 s: {:?}",
                self.log.lock().unwrap()
            );
        }
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same data dir and address.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(bin("custody-collector"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .output()
            .expect("run custody-collector");
        assert!(
            out.status.success(),
            "custody-collector {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub fn enroll_token(&self) -> String {
        self.admin(&["enroll-token", "--ttl", "10m"])
    }

    pub fn operator_token(&self, role: &str, name: &str) -> String {
        self.admin(&["operator-token", "--role", role, "--name", name])
    }

    /// Runs `custodyctl --json ARGS` against this collector.
    pub fn ctl_raw(&self, token: &str, args: &[&str]) -> Output {
        Command::new(bin("custodyctl"))
            .args(["--collector", &self.addr, "--token", token, "--ca"])
            .arg(self.data_dir.join("ca.pem"))
            .arg("--json")
            .args(args)
            .env_remove("CUSTODY_CONFIG")
            .output()
            .expect("run custodyctl")
    }

    /// `custodyctl --json ARGS` parsed; JSON-lines output becomes an array.
    pub fn ctl(&self, token: &str, args: &[&str]) -> Value {
        let out = self.ctl_raw(token, args);
        assert!(
            out.status.success(),
            "custodyctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8(out.stdout).unwrap();
        serde_json::from_str(&s).unwrap_or_else(|_| {
            Value::Array(
                s.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| serde_json::from_str(l).expect("custodyctl JSON line"))
                    .collect(),
            )
        })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The TOML config of a sensor in a namespace: netns scope, its own state dir, and
/// `agents` as (agent id, CUSTODY_AGENT value). Its pins go to a directory of their
/// own (derived from the state dir): tests running side by side use the same host
/// ids, and must not share enforcement maps.
pub fn sensor_config(host_id: &str, state_dir: &Path, agents: &[(&str, &str)]) -> String {
    let scoped: Vec<(&str, &str, &str)> =
        agents.iter().map(|(i, e)| (*i, *e, "fleet-test")).collect();
    sensor_config_scoped(host_id, state_dir, &scoped)
}

/// [`sensor_config`] with each agent's declared scope: (agent id, CUSTODY_AGENT
/// value, scope).
pub fn sensor_config_scoped(
    host_id: &str,
    state_dir: &Path,
    agents: &[(&str, &str, &str)],
) -> String {
    let mut s = format!(
        "[sensor]\nhost_id = \"{host_id}\"\nstate_dir = \"{}\"\nscope = \"netns\"\npin_dir = \"{}\"\n",
        state_dir.display(),
        pin_dir_for(state_dir).display()
    );
    for (id, env, scope) in agents {
        s.push_str(&format!(
            "\n[[agent]]\nid = \"{id}\"\nowner = \"fleet-test@example.com\"\nscope = \"{scope}\"\n[agent.match]\nenv = \"{env}\"\n"
        ));
    }
    s
}

/// bpffs directory for the pins of the sensor whose state lives in `state_dir`.
pub fn pin_dir_for(state_dir: &Path) -> PathBuf {
    let h = state_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
    PathBuf::from(format!("/sys/fs/bpf/custody-test-{h:016x}"))
}

/// `custodyd enroll` run inside `host`'s namespace, with `dir/custodyd.toml`.
pub fn enroll(host: &NsHost, dir: &Path, collector: &str, token: &str) -> Output {
    host.command(bin("custodyd"))
        .args([
            "enroll",
            "--collector",
            collector,
            "--token",
            token,
            "--config",
        ])
        .arg(dir.join("custodyd.toml"))
        .env_remove("CUSTODY_ENROLL_TOKEN")
        .output()
        .expect("run custodyd enroll")
}

/// An enrolled custodyd shipping to a collector from inside a namespace, also
/// writing its events as JSON lines.
pub struct NsSensor {
    child: Option<Child>,
    state_dir: PathBuf,
    pub host_id: String,
    pub output: PathBuf,
    pub status_file: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl NsSensor {
    /// Writes `dir/custodyd.toml`, enrolls with `token`, and starts the daemon
    /// (without waiting for it: see [`NsSensor::wait_ready`]).
    pub fn enroll_and_start(
        host: &NsHost,
        dir: &Path,
        collector: &str,
        token: &str,
        agents: &[(&str, &str)],
    ) -> NsSensor {
        let config = sensor_config(&host.host_id, &dir.join("state"), agents);
        NsSensor::enroll_and_start_with(host, dir, collector, token, &config)
    }

    /// [`NsSensor::enroll_and_start`] with a config of the caller's (its state dir
    /// must be `dir/state`, see [`sensor_config_scoped`]).
    pub fn enroll_and_start_with(
        host: &NsHost,
        dir: &Path,
        collector: &str,
        token: &str,
        config: &str,
    ) -> NsSensor {
        std::fs::create_dir_all(dir).unwrap();
        let cfg = dir.join("custodyd.toml");
        std::fs::write(&cfg, config).unwrap();
        let out = enroll(host, dir, collector, token);
        assert!(
            out.status.success(),
            "custodyd enroll on {} failed: {}{}",
            host.host_id,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        NsSensor::start(host, dir)
    }

    /// Starts the daemon of an already enrolled `dir` (a restart keeps the events
    /// file, appending).
    pub fn start(host: &NsHost, dir: &Path) -> NsSensor {
        let cfg = dir.join("custodyd.toml");
        let output = dir.join("events.jsonl");
        let status_file = dir.join("status.json");
        let mut child = host
            .command(bin("custodyd"))
            .arg("--config")
            .arg(&cfg)
            .arg("--status-file")
            .arg(&status_file)
            .arg("--output")
            .arg(&output)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn custodyd");
        let (log, _) = capture(&mut child, &format!("custodyd {}", host.host_id));
        NsSensor {
            child: Some(child),
            state_dir: dir.join("state"),
            host_id: host.host_id.clone(),
            output,
            status_file,
            log,
        }
    }

    /// Waits (bounded) for "custodyd: ready".
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with("custodyd: ready"))
            {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "custodyd {} exited early ({st}): {:?}",
                    self.host_id,
                    self.log.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "custodyd {} not ready in {timeout:?}: {:?}",
                self.host_id,
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The status file (written every second while running).
    pub fn status(&self) -> Option<Value> {
        let s = std::fs::read_to_string(&self.status_file).ok()?;
        serde_json::from_str(&s).ok()
    }

    /// Events written to the local JSON-lines output so far.
    pub fn events(&self) -> Vec<Value> {
        crate::read_jsonl(&self.output)
    }

    /// SIGKILL: no shutdown path runs (pinned enforcement stays in the kernel).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Daemon log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM (see [`NsSensor::stop`]); lets several sensors stop at once.
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }

    /// SIGTERM and a bounded wait for the exit (custodyd takes a few seconds to
    /// detach its programs after it prints "stopped").
    pub fn stop(&mut self) -> ExitStatus {
        self.terminate();
        let mut c = self.child.take().expect("sensor running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("custodyd {} ignored SIGTERM for 30 s", self.host_id);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NsSensor {
    fn drop(&mut self) {
        // Dropped while running: the test is over, and whatever it left in force goes
        // with it. (A sensor stopped or killed on purpose keeps its pins for the next
        // start, as a real restart would.)
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = std::fs::remove_dir_all(pin_dir_for(&self.state_dir));
        }
    }
}

/// A child process killed (and reaped) when dropped.
pub struct Proc {
    pub child: Child,
    /// stdout after the first line, once [`Proc::first_line`] has taken the pipe.
    rest: Option<std::thread::JoinHandle<String>>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        Proc {
            child: cmd.spawn().expect("spawn"),
            rest: None,
        }
    }

    /// Reads the first stdout line (bounded wait), e.g. the port a service listens
    /// on; the rest of stdout keeps being drained (see [`Proc::wait_output`]).
    pub fn first_line(&mut self, timeout: Duration) -> String {
        let out = self.child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        self.rest = Some(std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            let mut rest = String::new();
            let _ = r.read_to_string(&mut rest);
            rest
        }));
        rx.recv_timeout(timeout)
            .unwrap_or_else(|_| panic!("no output line within {timeout:?}"))
            .trim()
            .to_owned()
    }

    /// Waits (bounded) for the exit; returns the status and stdout (what
    /// [`Proc::first_line`] did not take).
    pub fn wait_output(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let rest = self.rest.take().unwrap_or_else(|| {
            let out = self.child.stdout.take();
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut o) = out {
                    let _ = o.read_to_string(&mut s);
                }
                s
            })
        });
        let deadline = Instant::now() + timeout;
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "process {} still running after {timeout:?}",
                self.child.id()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        (st, rest.join().unwrap())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory that is kept (and its path printed) when the test panics, so
/// the sensors' JSON lines and the collector's data can be inspected.
pub struct WorkDir(Option<tempfile::TempDir>);

impl WorkDir {
    pub fn new() -> WorkDir {
        WorkDir(Some(tempfile::tempdir().unwrap()))
    }
    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("present").path()
    }
}

impl Default for WorkDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.0.take()
        {
            eprintln!("test failed: keeping {}", d.keep().display());
        }
    }
}

/// Polls `f` every 200 ms until it returns Some or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
