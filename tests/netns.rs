//! Several "hosts" on one kernel for fleet tests: network namespaces on a private
//! bridge, a collector in the root namespace, and one enrolled custodyd per namespace.
//!
//! Every name carries the test process's pid and a counter, so parallel tests (and
//! parallel test runs) never collide; everything is torn down by `Drop`, and leftovers
//! of runs that were killed (whose pid is gone) are removed by the next run.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bin;

static NEXT: AtomicU32 = AtomicU32::new(0);
/// Serialises subnet choice and creation inside this process.
static SETUP: Mutex<()> = Mutex::new(());

/// Runs `ip ARGS`, panicking with its stderr when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs `ip ARGS` ignoring failure (cleanup paths).
fn ip_quiet(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid embedded in one of our names: namespaces "cst-<pid>-<n>-<i>", bridges
/// "cb<pid>-<n>", veths "cv<pid>-<n>-<i>".
fn owner_pid(name: &str) -> Option<u32> {
    let (rest, parts) = if let Some(r) = name.strip_prefix("cst-") {
        (r, 3)
    } else if let Some(r) = name.strip_prefix("cb") {
        (r, 2)
    } else if let Some(r) = name.strip_prefix("cv") {
        (r, 3)
    } else {
        return None;
    };
    let nums: Vec<&str> = rest.split('-').collect();
    if nums.len() != parts
        || nums
            .iter()
            .any(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    nums[0].parse().ok()
}

/// Removes namespaces and links left by test processes that no longer exist.
pub fn cleanup_stale() {
    for line in ip_quiet(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with("cst-") && owner_pid(name).is_some_and(|p| !pid_alive(p)) {
            kill_netns_pids(name);
            ip_quiet(&["netns", "del", name]);
        }
    }
    for line in ip_quiet(&["-o", "link", "show"]).lines() {
        // "12: cb123-0: <...>" or "13: cv123-0-0@if12: <...>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or("");
        if (name.starts_with("cb") || name.starts_with("cv"))
            && owner_pid(name).is_some_and(|p| !pid_alive(p))
        {
            ip_quiet(&["link", "del", name]);
        }
    }
}

/// SIGKILLs what is left running in one of our namespaces (processes this test
/// started there: scenario agents and sensors).
fn kill_netns_pids(ns: &str) {
    for p in ip_quiet(&["netns", "pids", ns]).split_whitespace() {
        if let Ok(pid) = p.parse::<i32>() {
            // SAFETY: plain kill(2) on a pid inside our own namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// One "host": a network namespace with an address on the fleet bridge.
#[derive(Debug, Clone)]
pub struct NsHost {
    /// Namespace name (under /run/netns).
    pub ns: String,
    /// Host id its sensor enrolls as.
    pub host_id: String,
    /// Its address on the bridge.
    pub addr: String,
}

impl NsHost {
    /// A command that runs `program` inside this host's network namespace. Only the
    /// network namespace changes (unlike `ip netns exec`, which remounts /sys and so
    /// hides tracefs, bpffs and cgroup2 from the sensor).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        enter_netns(&mut cmd, &self.ns);
        cmd
    }
}

/// Makes `cmd` join network namespace `ns` between fork and exec.
pub fn enter_netns(cmd: &mut Command, ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("open /run/netns/{ns}: {e}"));
    // SAFETY: the closure only calls setns(2), which is async-signal-safe; the file
    // is owned by the closure and stays open until the command is dropped.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes the process started by `cmd` belong to audit login uid `uid` (what login
/// and sshd do for a user's session) before it execs.
pub fn set_login_uid(cmd: &mut Command, uid: u32) {
    let value = uid.to_string().into_bytes();
    // SAFETY: open/write/close are async-signal-safe; the path and buffer are
    // prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(c"/proc/self/loginuid".as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, value.as_ptr().cast(), value.len());
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != value.len() as isize {
                return Err(err);
            }
            Ok(())
        });
    }
}

/// Namespaces on a bridge in the root namespace, in a private /24 that no
/// interface of this machine uses: the bridge is .1, host i is .(i+2).
pub struct Fleet {
    pub hosts: Vec<NsHost>,
    /// Root-namespace address of the bridge (where the collector listens).
    pub bridge_addr: String,
    bridge: Option<String>,
    veths: Vec<String>,
    namespaces: Vec<String>,
}

/// The names one fleet uses: its bridge, and per host (namespace, host-side veth,
/// namespace-side veth before it is renamed eth0).
struct FleetNames {
    bridge: String,
    octet: u32,
    hosts: Vec<(String, String, String)>,
}

impl FleetNames {
    fn fixed(prefix: &str, host_ids: &[&str]) -> FleetNames {
        FleetNames {
            bridge: format!("{prefix}0"),
            octet: free_subnet(0, 0),
            hosts: host_ids
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    (
                        format!("{prefix}-{h}"),
                        format!("{prefix}v{i}"),
                        format!("{prefix}p{i}"),
                    )
                })
                .collect(),
        }
    }

    fn check_free(&self) -> Result<(), String> {
        let netns = ip_quiet(&["netns", "list"]);
        let links = ip_quiet(&["-o", "link", "show"]);
        let link_taken = |name: &str| {
            links.lines().any(|l| {
                l.split(": ")
                    .nth(1)
                    .is_some_and(|n| n.split('@').next() == Some(name))
            })
        };
        for (ns, vh, vp) in &self.hosts {
            if netns
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns))
            {
                return Err(format!(
                    "network namespace {ns} already exists (another demo is running, or one was \
                     killed before it could clean up): if nothing uses it, remove it with \
                     `ip netns del {ns}`"
                ));
            }
            for l in [vh, vp, &self.bridge] {
                if link_taken(l) {
                    return Err(format!(
                        "network interface {l} already exists: if nothing uses it, remove it \
                         with `ip link del {l}`"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Fleet {
    pub fn new(host_ids: &[&str]) -> Fleet {
        let _guard = SETUP.lock().unwrap_or_else(|e| e.into_inner());
        cleanup_stale();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{pid}-{n}");
        let names = FleetNames {
            bridge: format!("cb{tag}"),
            octet: free_subnet(pid, n),
            hosts: (0..host_ids.len())
                .map(|i| {
                    (
                        format!("cst-{tag}-{i}"),
                        format!("cv{tag}-{i}"),
                        format!("cp{tag}-{i}"),
                    )
                })
                .collect(),
        };
        Fleet::build(names, host_ids).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A fleet with fixed names for a long-lived setup (the demo): namespaces
    /// `PREFIX-HOST`, bridge `PREFIX0`. Refuses, saying which, when a name is taken;
    /// removes nothing it did not create.
    pub fn named(prefix: &str, host_ids: &[&str]) -> Result<Fleet, String> {
        let _guard = SETUP.lock().unwrap_or_else(|e| e.into_inner());
        let names = FleetNames::fixed(prefix, host_ids);
        names.check_free()?;
        Fleet::build(names, host_ids)
    }

    /// [`Fleet::named`]'s check alone: fails, saying what to do, if a name it would
    /// use is taken.
    pub fn check_names_free(prefix: &str, host_ids: &[&str]) -> Result<(), String> {
        FleetNames::fixed(prefix, host_ids).check_free()
    }

    fn build(names: FleetNames, host_ids: &[&str]) -> Result<Fleet, String> {
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("running ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let octet = names.octet;
        // Dropped on error: whatever was made so far is removed.
        let mut fleet = Fleet {
            hosts: vec![],
            bridge_addr: format!("10.231.{octet}.1"),
            bridge: None,
            veths: vec![],
            namespaces: vec![],
        };
        let br = names.bridge;
        if br.len() > 15 {
            return Err(format!("interface name {br} too long"));
        }
        run(&["link", "add", &br, "type", "bridge"])?;
        fleet.bridge = Some(br.clone());
        run(&[
            "addr",
            "add",
            &format!("{}/24", fleet.bridge_addr),
            "dev",
            &br,
        ])?;
        run(&["link", "set", &br, "up"])?;
        for (i, ((ns, vh, vp), host_id)) in names.hosts.into_iter().zip(host_ids).enumerate() {
            if vh.len() > 15 || vp.len() > 15 {
                return Err(format!("interface name {vh} or {vp} too long"));
            }
            run(&["netns", "add", &ns])?;
            fleet.namespaces.push(ns.clone());
            run(&["link", "add", &vh, "type", "veth", "peer", "name", &vp])?;
            fleet.veths.push(vh.clone());
            run(&["link", "set", &vh, "master", &br])?;
            run(&["link", "set", &vh, "up"])?;
            run(&["link", "set", &vp, "netns", &ns])?;
            run(&["-n", &ns, "link", "set", &vp, "name", "eth0"])?;
            let addr = format!("10.231.{octet}.{}", i + 2);
            run(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            run(&["-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["-n", &ns, "link", "set", "lo", "up"])?;
            fleet.hosts.push(NsHost {
                ns,
                host_id: host_id.to_string(),
                addr,
            });
        }
        Ok(fleet)
    }

    pub fn host(&self, host_id: &str) -> &NsHost {
        self.hosts
            .iter()
            .find(|h| h.host_id == host_id)
            .unwrap_or_else(|| panic!("no host {host_id}"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            kill_netns_pids(ns);
        }
        for ns in &self.namespaces {
            ip_quiet(&["netns", "del", ns]);
        }
        for v in &self.veths {
            ip_quiet(&["link", "del", v]);
        }
        if let Some(br) = &self.bridge {
            ip_quiet(&["link", "del", br]);
        }
    }
}

/// A third octet for 10.231.X.0/24 that no address or route of this machine uses.
fn free_subnet(pid: u32, n: u32) -> u32 {
    let used = format!(
        "{}\n{}",
        ip_quiet(&["-4", "-o", "addr", "show"]),
        ip_quiet(&["-4", "route", "show"])
    );
    let start = (pid + n * 37) % 200 + 20;
    (0..200)
        .map(|k| (start + k) % 200 + 20)
        .find(|o| !used.contains(&format!("10.231.{o}.")))
        .expect("no free 10.231.X.0/24 subnet")
}

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
