//! `cargo xtask demo`: the README's main job. Three hosts as network namespaces on a
//! private bridge, a collector, an enrolled custodyd per host, and the finance story
//! (tests/story.rs) on the real openai and mcp SDKs: a human's supervisor on host A
//! delegates to a worker on host B, whose MCP tool server reads HR data; Custody shows
//! the chain, raises the drift alert and kills the chain on every host. Prints the UI
//! address, an operator token and what to look at; Ctrl-C tears everything down.
//!
//! Everything lives in `.custody/demo/` (recreated on every run).

mod fleet;
mod preflight;
mod procs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use custody_tests::netns::{Fleet, NsHost, enter_netns};
use custody_tests::story::{self, Hosts, Story};
use serde_json::Value;

use crate::binaries::{self, Profile};
use crate::setup;
use crate::util::root;
use procs::{Proc, StopWith, Watch, run_output, stopping};

const HOSTS: [&str; 3] = ["finance-a", "finance-b", "finance-c"];
/// The OpenAI-compatible stand-in's port, on the bridge address.
const LLM_PORT: u16 = 8443;
/// A new run of the story this often, so the UI keeps getting chains.
const ROUND_EVERY: Duration = Duration::from_secs(180);
/// How long the supervisor stays in its session after its answer.
const LINGER_S: u32 = 60;

pub fn run(no_scenario: bool, port: u16, dev: bool) -> Result<()> {
    preflight::root()?;
    let root = root();
    let custody = root.join(".custody");
    let _lock = preflight::lock(&custody.join("demo.lock"))?;
    let dir = custody.join("demo");
    procs::install_signal_handlers();

    setup::once()?;
    preflight::bpf()?;
    preflight::stop_leftovers(&dir);
    fleet::remove_leftovers(&custody);
    fleet::check_free()?;
    preflight::port_free(port)?;
    if std::net::TcpListener::bind(("0.0.0.0", LLM_PORT)).is_err() {
        bail!(
            "port {LLM_PORT} is taken: the demo's LLM stand-in listens there (on the demo \
             bridge); stop what holds it (`ss -ltnp 'sport = :{LLM_PORT}'`)"
        );
    }
    // --dev (tests): the debug binaries `cargo xtask test` built, as they are.
    let bin = if dev {
        Profile::DEV.bin_dir()
    } else {
        eprintln!(
            "demo: building the release binaries (the build the benchmarks and packages share)"
        );
        binaries::build(Profile::RELEASE)?
    };
    if stopping() {
        return Err(procs::interrupted());
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the previous demo's {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let fleet = fleet::create(&custody)?;
    let mut demo = Demo {
        bin,
        addr: format!("{}:{port}", fleet.bridge_addr),
        dir,
        token: String::new(),
        ui: String::new(),
        procs: Vec::new(),
        agents: Vec::new(),
        story: None,
        fleet: Some(fleet),
        custody,
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

/// Where a host's custodyd pins its enforcement maps and hooks (removed at the end).
fn pin_dir(host: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/custody-demo-{host}"))
}

struct Demo {
    bin: PathBuf,
    dir: PathBuf,
    custody: PathBuf,
    addr: String,
    token: String,
    ui: String,
    /// Collector and sensors, in start order (stopped in reverse).
    procs: Vec<Proc>,
    /// The story's services and the current supervisor.
    agents: Vec<Proc>,
    story: Option<Story>,
    fleet: Option<Fleet>,
}

/// What one run of the story led to.
struct Round {
    chain: Option<String>,
    alert: Option<Value>,
    action: Option<Value>,
}

impl Demo {
    fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    fn fleet(&self) -> &Fleet {
        self.fleet.as_ref().expect("fleet up")
    }

    fn host(&self, i: usize) -> NsHost {
        self.fleet().hosts[i].clone()
    }

    fn collector_dir(&self) -> PathBuf {
        self.dir.join("collector")
    }

    fn ca(&self) -> PathBuf {
        self.collector_dir().join("ca.pem")
    }

    fn run(&mut self, no_scenario: bool) -> Result<()> {
        // The story's world first: the sensors' configs declare its agents.
        let python = story::venv_python().map_err(anyhow::Error::msg)?;
        let llm: SocketAddr = format!("{}:{LLM_PORT}", self.fleet().bridge_addr).parse()?;
        let hosts = Hosts {
            a: self.host(0),
            b: self.host(1),
            c: self.host(2),
            llm,
        };
        self.story = Some(
            Story::prepare(&self.dir.join("story"), hosts, python).map_err(anyhow::Error::msg)?,
        );
        self.start_collector()?;
        for i in 0..HOSTS.len() {
            self.start_sensor(i)?;
        }
        self.wait_connected()?;
        if no_scenario {
            self.guide(None, true);
            while procs::sleep(Duration::from_secs(1)) {
                self.check_health()?;
            }
            return Ok(());
        }

        let human_uid = story::ensure_human().map_err(anyhow::Error::msg)?;
        let story = self.story();
        let policies = self.dir.join("policies");
        std::fs::create_dir_all(&policies)?;
        std::fs::write(policies.join("finance.cedar"), story.policy())?;
        self.ctl(&["policy", "apply", &policies.display().to_string()])
            .context("applying the finance policy")?;
        self.start_services()?;

        eprintln!("demo: the finance story, round 1");
        let first = self.round(human_uid, 1)?;
        self.guide(Some(&first), false);
        let mut n = 1;
        let mut next = Instant::now() + ROUND_EVERY;
        while procs::sleep(Duration::from_secs(1)) {
            self.check_health()?;
            if Instant::now() >= next {
                n += 1;
                eprintln!("demo: the finance story, round {n}");
                let r = self.round(human_uid, n)?;
                self.summary(n, &r);
                next = Instant::now() + ROUND_EVERY;
            }
        }
        Ok(())
    }

    fn start_collector(&mut self) -> Result<()> {
        let data = self.collector_dir();
        eprintln!("demo: starting custody-collector on {}", self.addr);
        let bridge = self.fleet().bridge_addr.clone();
        let mut p = Proc::spawn(
            "custody-collector",
            Command::new(self.bin("custody-collector"))
                .arg("--data-dir")
                .arg(&data)
                .args(["serve", "--listen", &self.addr, "--san", &bridge]),
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
        line?;
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

    fn start_sensor(&mut self, i: usize) -> Result<()> {
        let host = self.host(i);
        let id = host.host_id.clone();
        let enroll = run_output(
            Command::new(self.bin("custody-collector"))
                .arg("--data-dir")
                .arg(self.collector_dir())
                .args(["enroll-token", "--ttl", "10m", "--host", &id]),
            "minting an enrollment token",
        )?;
        let dir = self.dir.join("hosts").join(&id);
        let state = dir.join("state");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("custodyd.toml");
        std::fs::write(
            &config,
            self.story().sensor_config(&host, &state, &pin_dir(&id)),
        )?;
        let _ = std::fs::remove_dir_all(pin_dir(&id));
        let mut cmd = Command::new(self.bin("custodyd"));
        cmd.args(["enroll", "--collector", &self.addr, "--config"])
            .arg(&config)
            .env("CUSTODY_ENROLL_TOKEN", enroll.trim());
        enter_netns(&mut cmd, &host.ns);
        run_output(&mut cmd, &format!("custodyd enroll on {id}"))?;
        eprintln!("demo: starting custodyd on {id} (loading the eBPF programs)");
        let mut cmd = Command::new(self.bin("custodyd"));
        cmd.arg("--config")
            .arg(&config)
            .arg("--status-file")
            .arg(dir.join("status.json"));
        enter_netns(&mut cmd, &host.ns);
        let mut p = Proc::spawn(
            &format!("custodyd {id}"),
            &mut cmd,
            StopWith::Term,
            &dir.join("custodyd.log"),
            Watch::Stderr,
        )?;
        let ready = p.wait_line("ready", Duration::from_secs(120), |l| {
            l.starts_with("custodyd: ready")
        });
        self.procs.push(p);
        ready.map_err(|e| {
            e.context(
                "custodyd could not start: if it says eBPF programs failed to load, this \
                 kernel or container does not allow what the sensor needs",
            )
        })?;
        Ok(())
    }

    /// The guide's commands must work before it is printed: ask the collector.
    fn wait_connected(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let hosts = self.ctl(&["hosts"]);
            if let Ok(Value::Array(hs)) = &hosts {
                if HOSTS.iter().all(|id| {
                    hs.iter()
                        .any(|h| h["host_id"] == *id && h["connected"] == true)
                }) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the sensors started but the collector does not list all of {HOSTS:?} as \
                     connected after 30 s (custodyctl hosts: {}); see the logs in {}",
                    match hosts {
                        Ok(v) => v.to_string(),
                        Err(e) => format!("{e:#}"),
                    },
                    self.dir.display()
                );
            }
            if !procs::sleep(Duration::from_millis(300)) {
                return Err(procs::interrupted());
            }
        }
    }

    fn story(&self) -> &Story {
        self.story.as_ref().expect("story prepared")
    }

    /// The LLM stand-in, the reporter on C and the worker on B (again, if a chain
    /// kill took them down: a service manager would restart them).
    fn start_services(&mut self) -> Result<()> {
        self.agents.retain_mut(|p| p.exited().is_none());
        let running: Vec<String> = self.agents.iter().map(|p| p.name.clone()).collect();
        let logs = self.dir.join("story");
        let wanted = [
            ("llm-standin", self.story().llm()),
            ("finance-reporter", self.story().reporter()),
            ("finance-worker", self.story().worker()),
        ];
        for (name, mut cmd) in wanted {
            if running.iter().any(|r| r == name) {
                continue;
            }
            let mut p = Proc::spawn(
                name,
                &mut cmd,
                StopWith::Term,
                &logs.join(format!("{name}.log")),
                Watch::Stdout,
            )?;
            p.wait_line("listening", Duration::from_secs(60), |l| {
                l.contains("\"listening\"")
            })?;
            self.agents.push(p);
        }
        Ok(())
    }

    /// One run of the story: the supervisor starts, and the policy's alert and the
    /// chain kill follow.
    fn round(&mut self, human_uid: u32, n: u32) -> Result<Round> {
        self.start_services()?;
        self.agents.retain(|p| p.name != "finance-supervisor");
        let mut sup = Proc::spawn(
            "finance-supervisor",
            &mut self.story().supervisor(human_uid, LINGER_S),
            StopWith::Term,
            &self.dir.join(format!("story/finance-supervisor-{n}.log")),
            Watch::Stdout,
        )?;
        let start: Value =
            serde_json::from_str(&sup.wait_line("its start", Duration::from_secs(30), |l| {
                l.contains("\"start\"")
            })?)?;
        let root = format!("{}:{}:{}", HOSTS[0], start["pid"], start["start_ticks"]);
        self.agents.push(sup);
        eprintln!(
            "demo: {} started {} (pid {}) for {:?}",
            story::HUMAN,
            story::SUPERVISOR,
            start["pid"],
            story::TASK
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut round = Round {
            chain: None,
            alert: None,
            action: None,
        };
        while Instant::now() < deadline {
            if !procs::sleep(Duration::from_millis(500)) {
                return Err(procs::interrupted());
            }
            if round.alert.is_none() {
                round.alert = self.ctl(&["alerts"]).ok().and_then(|v| {
                    v.as_array()?
                        .iter()
                        .find(|a| a["chain_id"] == root.as_str())
                        .cloned()
                });
            }
            if let Some(id) = round
                .alert
                .as_ref()
                .and_then(|a| a["response_action_id"].as_str())
                .filter(|s| s.starts_with("act-"))
            {
                let act = self.ctl(&["action", id]).ok();
                let done = act.as_ref().is_some_and(|a| a["status"] == "done");
                round.action = act;
                if done {
                    break;
                }
            }
        }
        if self.ctl(&["chain", &root]).is_ok() {
            round.chain = Some(root);
        }
        Ok(round)
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
        serde_json::from_str(&out)
            .or_else(|_| {
                out.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(serde_json::from_str)
                    .collect::<Result<Vec<Value>, _>>()
                    .map(Value::Array)
            })
            .with_context(|| format!("custodyctl output {out:?}"))
    }

    fn teardown(&mut self) {
        while let Some(mut p) = self.agents.pop() {
            p.shutdown();
        }
        while let Some(mut p) = self.procs.pop() {
            eprintln!("demo: stopping {} (pid {})", p.name, p.pid());
            p.shutdown();
        }
        for h in HOSTS {
            let d = pin_dir(h);
            if d.exists() {
                if let Err(e) = std::fs::remove_dir_all(&d) {
                    eprintln!(
                        "demo: could not remove {}: {e}; remove it by hand (rm -r {})",
                        d.display(),
                        d.display()
                    );
                }
            }
        }
        if let Some(f) = self.fleet.take() {
            drop(f); // its processes, namespaces and links
            fleet::forget(&self.custody);
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.teardown();
    }
}

impl Demo {
    /// The worker's database credential, by its non-secret metadata.
    fn db_credential(&self) -> Option<String> {
        let creds = self.ctl(&["credentials"]).ok()?;
        creds
            .as_array()?
            .iter()
            .find(|c| c["metadata"]["username"] == "finance_svc")?["fingerprint"]
            .as_str()
            .map(str::to_owned)
    }

    fn guide(&self, round: Option<&Round>, no_scenario: bool) {
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
            "  web UI          {}\n  operator token  {}  (role admin; sign in with it)\n  CA certificate  {}  (import it, or accept the warning)\n",
            self.ui,
            self.token,
            self.ca().display()
        ));
        s.push_str(&format!(
            "  hosts           {} (network namespaces {}), each with custodyd\n  collector       {}  (logs and data in {})\n\n",
            HOSTS.join(", "),
            self.fleet().hosts.iter().map(|h| h.ns.as_str()).collect::<Vec<_>>().join(", "),
            self.addr,
            self.dir.display()
        ));
        match (no_scenario, round) {
            (true, _) | (_, None) => s.push_str(
                "  No agents run (--no-scenario). Start a declared agent yourself, e.g.\n\
                 \x20   nsenter --net=/run/netns/cdemo-finance-a env CUSTODY_AGENT=finance-supervisor bash\n\
                 \x20 and everything run in that shell is traced.\n",
            ),
            (false, Some(r)) => {
                s.push_str(&format!(
                    "  What happened: {human} started the finance supervisor on {a} to \"{task}\".\n\
                     \x20 It asked the model (the openai SDK, over HTTPS to a local stand-in) and\n\
                     \x20 delegated to the worker on {b} with a delegation token; the worker started\n\
                     \x20 its MCP tool server over stdio (the mcp SDK), read the ledger, had the\n\
                     \x20 reporter on {c} draft the report, then — following a note in the ledger —\n\
                     \x20 read HR salaries with its database credential. That read is outside the\n\
                     \x20 supervisor's declared scope: the policy raised an alert and killed the\n\
                     \x20 chain on every host. In the UI open Chains, then the chain: the hops across\n\
                     \x20 the three hosts, the credentials on each edge, the LLM prompts and tool\n\
                     \x20 calls, the denied read in red; Alerts has the alert, Actions the kill with\n\
                     \x20 each host's confirmation. Then play the responder: revoke the worker's\n\
                     \x20 database credential (Credentials page, or the command below) and watch\n\
                     \x20 every host confirm; the next run of the story (every {every} s) finds the\n\
                     \x20 credential refused.\n\n",
                    human = story::HUMAN,
                    task = story::TASK,
                    a = HOSTS[0],
                    b = HOSTS[1],
                    c = HOSTS[2],
                    every = ROUND_EVERY.as_secs(),
                ));
                if let Some(chain) = &r.chain {
                    s.push_str(&format!("  the chain       {}chains/{chain}\n", self.ui));
                }
                match &r.alert {
                    Some(a) => s.push_str(&format!(
                        "  the alert       {} — {} {} by {}\n",
                        a["policy_id"].as_str().unwrap_or(""),
                        a["action"].as_str().unwrap_or(""),
                        a["resource"].as_str().unwrap_or(""),
                        a["agent_id"].as_str().unwrap_or(a["exec_id"].as_str().unwrap_or("")),
                    )),
                    None => s.push_str(
                        "  the alert       not raised within 60 s: see `custodyctl alerts` and the logs\n",
                    ),
                }
                if let Some(act) = &r.action {
                    s.push_str(&format!(
                        "  containment     {} {} — {}\n",
                        act["kind"].as_str().unwrap_or(""),
                        act["status"].as_str().unwrap_or(""),
                        confirmations(act)
                    ));
                }
            }
        }
        s.push_str("\nIn another terminal, as root:\n\n");
        for l in exports.lines() {
            s.push_str(&format!("  {l}\n"));
        }
        if wrote {
            s.push_str(&format!("  # (or: . {})\n", env_file.display()));
        }
        let revoke = format!(
            "custodyctl revoke --credential {} --reason \"used to read HR data\"",
            self.db_credential().unwrap_or_else(|| "FINGERPRINT".into())
        );
        let chain_cmd = match round.and_then(|r| r.chain.as_deref()) {
            Some(id) => format!("custodyctl chain {id}"),
            None => "custodyctl chain CHAIN_ID".into(),
        };
        s.push('\n');
        for (c, what) in [
            ("custodyctl hosts", "the three sensors and their health"),
            ("custodyctl chains", "chains of custody, newest first"),
            (chain_cmd.as_str(), "one chain as a tree"),
            ("custodyctl alerts", "what the policy denied"),
            (
                "custodyctl actions",
                "the automatic kill and per-host confirmations",
            ),
            (revoke.as_str(), "the responder's move"),
            (
                "custodyctl events --kind llm_request",
                "LLM calls read from TLS plaintext",
            ),
            (
                "custodyctl audit --verify",
                "the hash-chained audit log, checked",
            ),
        ] {
            s.push_str(&format!("  {c:<44} # {what}\n"));
        }
        s.push_str("\nCtrl-C here stops the demo and removes everything it started.\n");
        s.push_str("==========================================================\n");
        println!("{s}");
    }

    fn summary(&self, n: u32, r: &Round) {
        let contained = r.action.as_ref().map(confirmations).unwrap_or_else(|| {
            "no automatic kill (after the revocation the worker is stopped on sight)".into()
        });
        eprintln!(
            "demo: round {n}: chain {} — alert: {} — {}",
            r.chain.as_deref().unwrap_or("?"),
            r.alert
                .as_ref()
                .and_then(|a| a["policy_id"].as_str())
                .unwrap_or("none"),
            contained
        );
    }
}

/// "finance-a ok (3 ms), …" from an action's per-host parts.
fn confirmations(act: &Value) -> String {
    act["hosts"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .filter(|h| h["follow_up"] != true)
                .map(|h| {
                    format!(
                        "{} {}",
                        h["host"].as_str().unwrap_or("?"),
                        h["state"].as_str().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
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
