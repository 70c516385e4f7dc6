//! `cargo xtask demo`: the README's main job. Brings up a collector and an enrolled
//! custodyd on this machine, runs the sample agents every 30 s, prints how to look at
//! what Custody saw with custodyctl, and tears everything down on Ctrl-C.
//!
//! Everything lives in `.custody/demo/` (recreated on every run) and listens on
//! 127.0.0.1 only.

mod preflight;
mod procs;
mod scenario;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::util::{exec, root};
use procs::{Proc, StopWith, Watch, run_output, stopping};
use scenario::{DnsStub, Secrets, World};

const HOST_ID: &str = "demo-host";
const SUPERVISOR: &str = "finance-supervisor";
const ROUND_EVERY: Duration = Duration::from_secs(30);
/// custodyd pins its enforcement maps and hooks here so they outlive a daemon
/// restart; the demo owns this directory and removes it when it stops.
const PIN_DIR: &str = "/sys/fs/bpf/custody-demo";

pub fn run(no_scenario: bool, port: u16) -> Result<()> {
    preflight::root()?;
    let root = root();
    let custody = root.join(".custody");
    let _lock = preflight::lock(&custody.join("demo.lock"))?;
    let dir = custody.join("demo");
    procs::install_signal_handlers();

    crate::setup::run()?;
    preflight::bpf()?;
    preflight::stop_leftovers(&dir);
    remove_pins();
    preflight::port_free(port)?;
    eprintln!("demo: building custodyd, custody-collector and custodyctl (release)");
    exec(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "agent-user",
        "-p",
        "collector",
    ]))?;
    if stopping() {
        return Err(procs::interrupted());
    }

    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the previous demo's {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let mut demo = Demo {
        root: root.clone(),
        bin: target_dir(&root).join("release"),
        dir,
        addr: format!("127.0.0.1:{port}"),
        token: String::new(),
        ui: String::new(),
        procs: Vec::new(),
        dns: None,
    };
    let result = demo.run(no_scenario);
    let interrupted = stopping();
    demo.teardown();
    procs::reap_orphans();
    match result {
        Err(_) if interrupted => {
            eprintln!("demo: interrupted; everything it started has been stopped");
            Ok(())
        }
        Err(e) => {
            eprintln!(
                "demo: failed; everything it started has been stopped (logs in {})",
                demo.dir.display()
            );
            Err(e)
        }
        Ok(()) => {
            eprintln!(
                "demo: stopped; everything it started has exited. Its data and logs stay in {} until the next run.",
                demo.dir.display()
            );
            Ok(())
        }
    }
}

fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}

struct Demo {
    root: PathBuf,
    bin: PathBuf,
    dir: PathBuf,
    addr: String,
    token: String,
    /// The web UI's address, as the collector printed it.
    ui: String,
    /// Long-running processes, in start order (stopped in reverse).
    procs: Vec<Proc>,
    dns: Option<DnsStub>,
}

impl Demo {
    fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    fn collector_dir(&self) -> PathBuf {
        self.dir.join("collector")
    }

    fn ca(&self) -> PathBuf {
        self.collector_dir().join("ca.pem")
    }

    fn status_file(&self) -> PathBuf {
        self.dir.join("sensor/status.json")
    }

    fn run(&mut self, no_scenario: bool) -> Result<()> {
        self.start_collector()?;
        self.start_sensor()?;
        if no_scenario {
            self.guide(None, true);
            while procs::sleep(Duration::from_secs(1)) {
                self.check_health()?;
            }
            return Ok(());
        }

        let work = self.dir.join("agents");
        std::fs::create_dir_all(&work)?;
        scenario::write_certs(&work)?;
        let python = scenario::python()?;
        let (tls, tls_port) = scenario::start_tls_server(
            &python,
            &self.root,
            &work,
            &self.dir.join("tls_server.log"),
        )?;
        self.procs.push(tls);
        let dns = scenario::dns_stub()?;
        let dns_ip = dns.ip.clone();
        self.dns = Some(dns);
        let world = World {
            root: self.root.clone(),
            python,
            work,
            tls_port,
            dns_ip,
            secrets: Secrets::generate(),
        };

        eprintln!("demo: round 1 of the scenario");
        let first = world.round(1);
        let chain = match &first {
            Ok(r) => {
                eprintln!(
                    "demo: round 1 done: {SUPERVISOR} (pid {}) ran {} tool steps and its sub-agent; llm_client.py ran on its own",
                    r.supervisor_pid
                        .map(|p| p.to_string())
                        .unwrap_or("?".into()),
                    r.steps
                );
                self.find_chain(r.supervisor_pid)
            }
            Err(_) if stopping() => return Err(procs::interrupted()),
            Err(e) => {
                eprintln!("demo: round 1 FAILED: {e:#}");
                None
            }
        };
        self.guide(chain.as_deref(), false);

        let mut n = 1;
        while procs::sleep(ROUND_EVERY) {
            self.check_health()?;
            n += 1;
            match world.round(n) {
                Ok(r) => {
                    let events = self.events_stored().unwrap_or_default();
                    eprintln!(
                        "demo: round {n} done: {SUPERVISOR} ran {} tool steps and its sub-agent, llm_client.py ran on its own; the collector holds {events} events from {HOST_ID}",
                        r.steps
                    );
                }
                Err(_) if stopping() => break,
                Err(e) => eprintln!("demo: round {n} FAILED: {e:#}"),
            }
        }
        Ok(())
    }

    fn start_collector(&mut self) -> Result<()> {
        let data = self.collector_dir();
        eprintln!("demo: starting custody-collector on {}", self.addr);
        let mut p = Proc::spawn(
            "custody-collector",
            Command::new(self.bin("custody-collector"))
                .arg("--data-dir")
                .arg(&data)
                .args(["serve", "--listen", &self.addr]),
            StopWith::Int,
            &self.dir.join("collector.log"),
            Watch::Stdout,
        )?;
        let line = p.wait_line("listening on", Duration::from_secs(60), |l| {
            l.starts_with("listening on")
        });
        let ui = line.is_ok().then(|| {
            p.wait_line("ui on", Duration::from_secs(10), |l| {
                l.starts_with("ui on ")
            })
        });
        self.procs.push(p);
        let line = line?;
        eprintln!("demo: custody-collector {line}");
        if let Some(ui) = ui {
            self.ui = ui?.trim_start_matches("ui on ").trim().to_string();
        }

        let token = run_output(
            Command::new(self.bin("custody-collector"))
                .arg("--data-dir")
                .arg(&data)
                .args(["operator-token", "--role", "admin", "--name", "demo"]),
            "minting the operator token",
        )?;
        self.token = token.trim().to_string();
        if self.token.is_empty() || self.token.contains(char::is_whitespace) {
            bail!("custody-collector operator-token printed {token:?}, not a token");
        }
        Ok(())
    }

    fn start_sensor(&mut self) -> Result<()> {
        let data = self.collector_dir();
        let enroll = run_output(
            Command::new(self.bin("custody-collector"))
                .arg("--data-dir")
                .arg(&data)
                .args(["enroll-token", "--ttl", "10m", "--host", HOST_ID]),
            "minting the enrollment token",
        )?;
        let enroll = enroll.trim();
        let state = self.dir.join("sensor");
        let config = self.dir.join("custodyd.toml");
        std::fs::write(
            &config,
            format!(
                "# Written by `cargo xtask demo`.\n\
                 [sensor]\n\
                 host_id = \"{HOST_ID}\"\n\
                 state_dir = \"{}\"\n\
                 pin_dir = \"{PIN_DIR}\"\n\n\
                 # Started with CUSTODY_AGENT=finance-supervisor in its environment.\n\
                 [[agent]]\n\
                 id = \"{SUPERVISOR}\"\n\
                 name = \"Finance supervisor\"\n\
                 owner = \"alice@example.com\"\n\
                 scope = \"/data/finance\"\n\
                 [agent.match]\n\
                 env = \"{SUPERVISOR}\"\n",
                state.display()
            ),
        )?;
        eprintln!("demo: enrolling custodyd as host {HOST_ID:?}");
        run_output(
            Command::new(self.bin("custodyd"))
                .args(["enroll", "--collector", &self.addr, "--config"])
                .arg(&config)
                // The same as --token, without showing it in process listings.
                .env("CUSTODY_ENROLL_TOKEN", enroll),
            "custodyd enroll",
        )?;

        eprintln!("demo: starting custodyd (loading the eBPF programs)");
        let p = Proc::spawn(
            "custodyd",
            Command::new(self.bin("custodyd"))
                .arg("--config")
                .arg(&config)
                .arg("--status-file")
                .arg(self.status_file()),
            StopWith::Term,
            &self.dir.join("custodyd.log"),
            Watch::Stderr,
        )?;
        self.procs.push(p);
        let p = self.procs.last_mut().expect("just pushed");
        let ready = p
            .wait_line("ready", Duration::from_secs(120), |l| {
                l.starts_with("custodyd: ready")
            })
            .map_err(|e| {
                e.context(
                    "custodyd could not start: if it says eBPF programs failed to load, \
                     this kernel or container does not allow what the sensor needs",
                )
            })?;
        eprintln!("demo: {ready}");

        // The guide's commands must work before it is printed: ask the collector.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let hosts = self.ctl(&["hosts"]);
            if let Ok(Value::Array(hs)) = &hosts {
                if hs
                    .iter()
                    .any(|h| h["host_id"] == HOST_ID && h["connected"] == true)
                {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "custodyd started but the collector does not list {HOST_ID} as connected after 30 s \
                     (custodyctl hosts: {}); see {} and {}",
                    match hosts {
                        Ok(v) => v.to_string(),
                        Err(e) => format!("{e:#}"),
                    },
                    self.dir.join("custodyd.log").display(),
                    self.dir.join("collector.log").display()
                );
            }
            if !procs::sleep(Duration::from_millis(300)) {
                return Err(procs::interrupted());
            }
        }
        Ok(())
    }

    fn check_health(&mut self) -> Result<()> {
        for p in &mut self.procs {
            if let Some(st) = p.exited() {
                bail!(
                    "{} (pid {}) exited unexpectedly ({st}); its last output:\n{}",
                    p.name,
                    p.pid(),
                    p.tail()
                );
            }
        }
        Ok(())
    }

    /// `custodyctl --json ARGS` against the demo collector.
    fn ctl(&self, args: &[&str]) -> Result<Value> {
        let out = run_output(
            Command::new(self.bin("custodyctl"))
                .arg("--json")
                .args(args)
                .env("CUSTODY_COLLECTOR", &self.addr)
                .env("CUSTODY_TOKEN", &self.token)
                .env("CUSTODY_CA", self.ca()),
            &format!("custodyctl {}", args.join(" ")),
        )?;
        serde_json::from_str(&out).with_context(|| format!("custodyctl output {out:?}"))
    }

    fn events_stored(&self) -> Option<u64> {
        let hosts = self.ctl(&["hosts"]).ok()?;
        hosts.as_array()?.iter().find(|h| h["host_id"] == HOST_ID)?["events_stored"].as_u64()
    }

    /// The chain of the supervisor that just ran, else the most recent one the finance
    /// supervisor is part of (events reach the collector within a second or two).
    fn find_chain(&self, pid: Option<u32>) -> Option<String> {
        let root = pid.map(|p| format!("{HOST_ID}:{p}:"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let late = Instant::now() > deadline;
            if let Ok(Value::Array(chains)) = self.ctl(&["chains"]) {
                let mut with_supervisor = chains.iter().filter(|c| {
                    c["agents"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == SUPERVISOR))
                });
                let hit = match &root {
                    Some(r) if !late => with_supervisor.find(|c| {
                        c["root_exec_id"]
                            .as_str()
                            .is_some_and(|id| id.starts_with(r))
                    }),
                    _ => with_supervisor.next(),
                };
                if let Some(id) = hit.and_then(|c| c["chain_id"].as_str()) {
                    return Some(id.to_string());
                }
            }
            if late || !procs::sleep(Duration::from_millis(500)) {
                eprintln!(
                    "demo: the collector has no chain with {SUPERVISOR} yet; see `custodyctl chains`"
                );
                return None;
            }
        }
    }

    fn guide(&self, chain: Option<&str>, no_scenario: bool) {
        let env_file = self.dir.join("env");
        let exports = format!(
            "export PATH=\"{}:$PATH\"\n\
             export CUSTODY_COLLECTOR={}\n\
             export CUSTODY_CA={}\n\
             export CUSTODY_TOKEN={}\n",
            self.bin.display(),
            self.addr,
            self.ca().display(),
            self.token
        );
        let wrote = write_private(&env_file, &exports).is_ok();
        let mut s = String::new();
        s.push_str("\n================ Custody demo is running ================\n\n");
        s.push_str(&format!(
            "  collector       {}  (data {}, log {})\n",
            self.addr,
            self.collector_dir().display(),
            self.dir.join("collector.log").display()
        ));
        s.push_str(&format!(
            "  sensor          custodyd, enrolled as host {HOST_ID}  (log {})\n",
            self.dir.join("custodyd.log").display()
        ));
        s.push_str(&format!(
            "  web UI          {}  (sign in with the operator token; the collector's CA is {})\n",
            self.ui,
            self.ca().display()
        ));
        s.push_str(&format!(
            "  operator token  {}  (role admin, name \"demo\")\n",
            self.token
        ));
        if no_scenario {
            s.push_str(
                "  scenario        none (--no-scenario). Start a declared agent yourself:\n\
                 \x20                 CUSTODY_AGENT=finance-supervisor bash   # everything run in that shell is traced\n",
            );
        } else {
            s.push_str(&format!(
                "  scenario        every {} s: {SUPERVISOR} (declared; CUSTODY_AGENT={SUPERVISOR}) uses its tools\n\
                 \x20                 (files, TCP, DNS, HTTPS with a delegation token, node, an MCP server over stdio)\n\
                 \x20                 and delegates to llm_client.py, a sub-agent nobody declared that custodyd\n\
                 \x20                 discovers from its LLM API call; llm_client.py also runs on its own (a shadow agent).\n\
                 \x20                 Credentials are fake, generated for this run, and appear only as fingerprints.\n",
                ROUND_EVERY.as_secs()
            ));
        }
        s.push_str("\nIn another terminal, as root:\n\n");
        for l in exports.lines() {
            s.push_str(&format!("  {l}\n"));
        }
        if wrote {
            s.push_str(&format!("  # (or: . {})\n", env_file.display()));
        }
        s.push('\n');
        let (chain_cmd, chain_what) = match chain {
            Some(id) => (
                format!("custodyctl chain {id}"),
                "the finance supervisor's chain as a tree",
            ),
            None => (
                "custodyctl chain CHAIN_ID".to_string(),
                "one chain as a tree (ids from `custodyctl chains`)",
            ),
        };
        let cmds: Vec<(&str, &str)> = vec![
            ("custodyctl hosts", "the sensor and its health"),
            (
                "custodyctl chains",
                "chains of custody, most recently active first",
            ),
            (&chain_cmd, chain_what),
            ("custodyctl events --follow", "live events (Ctrl-C to stop)"),
            (
                "custodyctl events --kind llm_request",
                "LLM calls seen in TLS plaintext",
            ),
            ("custodyctl agents", "declared and discovered agents"),
            (
                "custodyctl credentials",
                "credentials seen, by fingerprint only",
            ),
            (
                "custodyctl policy list",
                "policies in force (built-in intent drift) and where each is enforced",
            ),
            ("custodyctl alerts", "what the policies denied"),
            (
                "custodyctl kill --chain ID --reason TEXT",
                "stop a chain everywhere; confirmed per host with timings",
            ),
            (
                "custodyctl actions",
                "response actions and their confirmations",
            ),
            (
                "custodyctl audit --verify",
                "the hash-chained audit log, checked",
            ),
        ];
        let status = format!(
            "custodyd status --status-file {}",
            self.status_file().display()
        );
        for (c, what) in cmds {
            s.push_str(&format!("  {c:<44} # {what}\n"));
        }
        s.push_str(&format!("  {status}\n"));
        s.push_str("\nCtrl-C here stops the demo and everything it started.\n");
        s.push_str("==========================================================\n");
        println!("{s}");
    }

    fn teardown(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            eprintln!("demo: stopping {} (pid {})", p.name, p.pid());
            p.shutdown();
        }
        self.dns = None;
        remove_pins();
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Unpinning the enforcement hooks detaches them: nothing of the demo stays in the
/// kernel.
fn remove_pins() {
    let dir = Path::new(PIN_DIR);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            eprintln!("demo: could not remove {PIN_DIR}: {e}; remove it by hand (rm -r {PIN_DIR})");
        }
    }
}

/// A file only root can read (it holds the operator token).
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
