//! Shared harness of the end-to-end tests: root/BPF gating, locating the built
//! binaries, running custodyd and reading its JSON lines, test TLS certificates and a
//! DNS stub.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod clis;
pub mod netns;
pub mod story;

/// True when the test may load eBPF. Otherwise prints why it skips, or panics when
/// `CUSTODY_REQUIRE_BPF=1` (CI) so a skip can never pass silently.
pub fn bpf_available(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let required = std::env::var("CUSTODY_REQUIRE_BPF").is_ok_and(|v| v == "1");
    if root {
        return true;
    }
    if required {
        panic!("{test}: needs root to load eBPF, and CUSTODY_REQUIRE_BPF=1 forbids skipping");
    }
    eprintln!(
        "skipping {test}: needs root to load eBPF (CUSTODY_REQUIRE_BPF=1 turns this into a failure)"
    );
    false
}

/// A workspace binary built next to this test executable (target/<profile>/NAME),
/// or in CUSTODY_BIN_DIR when set (the benchmarks use release builds).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("CUSTODY_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .to_path_buf()
        }
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo xtask build` first (cargo xtask test does)",
        p.display()
    );
    p
}

pub fn agents_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("agents")
}

/// A running custodyd writing JSON lines to a file.
pub struct Daemon {
    child: Child,
    pub output: PathBuf,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn start(dir: &Path, config: &str, extra: &[&str]) -> Daemon {
        let cfg = dir.join("custodyd.toml");
        std::fs::write(&cfg, config).unwrap();
        let output = dir.join("events.jsonl");
        let mut child = Command::new(bin("custodyd"))
            .arg("--standalone")
            .arg("--output")
            .arg(&output)
            .arg("--config")
            .arg(&cfg)
            .arg("--status-file")
            .arg(dir.join("status.json"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn custodyd");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[custodyd] {l}");
                lines.lock().unwrap().push(l);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with("custodyd: ready"))
            {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("custodyd exited early ({st}): {:?}", stderr.lock().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "custodyd not ready in 60 s: {:?}",
                stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Daemon {
            child,
            output,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Events written so far.
    pub fn events(&self) -> Vec<Value> {
        read_jsonl(&self.output)
    }

    /// Wait until `pred` holds for some event (bounded), returning all events.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let evs = self.events();
            if evs.iter().any(&pred) {
                return evs;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; {} events so far",
                evs.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(mut self) -> Vec<Value> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = self.child.wait().unwrap();
        assert!(
            st.success(),
            "custodyd exited with {st}: {:?}",
            self.stderr.lock().unwrap()
        );
        read_jsonl(&self.output)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Complete JSON lines of a file being written (an unterminated last line is the
/// writer's work in progress and is left for the next read).
pub fn read_jsonl(p: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The event's kind name (the key inside "kind").
/// `s` in unpadded base64url, as a JWT's parts are written.
pub fn b64url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

pub fn kind(ev: &Value) -> &str {
    ev["kind"]
        .as_object()
        .and_then(|o| o.keys().next())
        .map_or("", String::as_str)
}

/// Writes ca.pem, server.pem and server.key for "localhost"/127.0.0.1 into `dir`.
pub fn write_tls_files(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "custody test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

/// A child process that prints one line (e.g. a port) before serving.
pub struct Server {
    pub child: Child,
    pub first_line: String,
}

impl Server {
    pub fn start(cmd: &mut Command) -> Server {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Server {
            child,
            first_line: line.trim().to_string(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DNS stub on `ip`:53 answering every A query with 192.0.2.1.
pub struct DnsStub {
    pub ip: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsStub {
    pub fn start(ip: &str) -> DnsStub {
        Self::bind(ip).expect("bind DNS stub (needs root)")
    }

    /// Bind `ip`:53 and serve until dropped.
    pub fn bind(ip: &str) -> std::io::Result<DnsStub> {
        let sock = UdpSocket::bind((ip, 53))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if n < 12 {
                    continue;
                }
                let mut r = buf[..n].to_vec();
                r[2] = 0x81;
                r[3] = 0x80;
                r[7] = 1; // one answer
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
                let _ = sock.send_to(&r, from);
            }
        });
        Ok(DnsStub {
            ip: ip.to_string(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for DnsStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The real Python interpreter (not a pyenv shim, whose helper processes would be
/// traced as the scenario's children).
pub fn python() -> &'static str {
    static PY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PY.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// The exec id (host:pid:start_ticks) of a process that printed its identity as JSON
/// (`{"pid": .., "start_ticks": ..}`, what every scenario agent prints first).
pub fn exec_id(host: &str, who: &Value) -> String {
    format!(
        "{host}:{}:{}",
        who["pid"].as_u64().expect("pid"),
        who["start_ticks"].as_u64().expect("start_ticks")
    )
}

/// Whether `pid` is running (a zombie has exited; it only waits to be reaped).
pub fn pid_alive(pid: impl Into<u64>) -> bool {
    let pid = pid.into();
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
        .unwrap_or(false)
}

/// A `tests/agents/response_agent.py` process in `host`'s namespace: a declared agent
/// (CUSTODY_AGENT) whose processes all carry `marker` in their environment, so a test
/// finds every one of them without the sensor's help (see [`alive_with`]).
pub fn response_agent(host: &netns::NsHost, agent: &str, marker: &str, args: &[&str]) -> Command {
    let mut c = host.command(python());
    c.arg(agents_dir().join("response_agent.py"))
        .args(args)
        .env("CUSTODY_AGENT", agent)
        .env("CUSTODY_TEST_MARK", marker)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    c
}

/// Live (non-zombie) processes whose environment holds CUSTODY_TEST_MARK=`marker`
/// (every netns host shares this machine's pid namespace).
pub fn alive_with(marker: &str) -> Vec<u32> {
    let needle = format!("CUSTODY_TEST_MARK={marker}\0");
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if pid_alive(pid) && env.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            out.push(pid);
        }
    }
    out
}
