//! `cargo xtask bench response`: containment time, end to end, on three network-
//! namespace hosts with real sensors and a collector (release builds).
//!
//! 1. Kill: a chain of 50 processes across the three hosts (A's root with children,
//!    B's relay with children, C's leaf with children). The clock starts before
//!    `custodyctl kill --chain` is spawned and stops when the last process of the
//!    chain is gone (pidfds, so a reused pid cannot fool it). Repeated on a fresh
//!    chain each run; p50/p99 against the 50 ms budget.
//! 2. Quarantine: a declared agent connecting every millisecond; from before
//!    `custodyctl quarantine --agent` is spawned to the first connect that fails
//!    with EPERM (the agent's own clock); released between runs.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use custody_tests::netns::{Collector, Fleet, NsHost, NsSensor, Proc, poll};
use serde_json::Value;

use super::stats::summarize;
use crate::binaries::{self, Profile};
use crate::util::{is_root, root};
use custody_tests::exec_id;

const KILL_P99_BUDGET_MS: f64 = 50.0;
const CHAIN_PROCESSES: usize = 50;

#[derive(clap::Args, Clone)]
pub struct ResponseArgs {
    /// Chains killed (one per run).
    #[arg(long, default_value_t = 20)]
    kill_runs: usize,
    /// Quarantine/release cycles.
    #[arg(long, default_value_t = 10)]
    quarantine_runs: usize,
    /// Use the binaries already in target/release.
    #[arg(long)]
    no_build: bool,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

fn python() -> Result<String> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("python3")?;
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn script() -> PathBuf {
    root().join("tests/agents/response_agent.py")
}

fn agent(py: &str, host: &NsHost, agent: &str, marker: &str, args: &[&str]) -> Command {
    let mut c = host.command(py);
    c.arg(script())
        .args(args)
        .env("CUSTODY_AGENT", agent)
        .env("CUSTODY_TEST_MARK", marker)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    c
}

fn pids_with(marker: &str) -> Vec<u32> {
    let needle = format!("CUSTODY_TEST_MARK={marker}\0");
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            out.push(pid);
        }
    }
    out
}

fn pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    // SAFETY: a fresh fd we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Blocks until every pidfd reports its process gone, or the timeout.
fn wait_all_gone(fds: &[OwnedFd], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut left: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !left.is_empty() {
        let ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as i32;
        if ms == 0 {
            return false;
        }
        // SAFETY: a valid array of pollfds.
        let n = unsafe { libc::poll(left.as_mut_ptr(), left.len() as libc::nfds_t, ms) };
        if n < 0 {
            return false;
        }
        left.retain(|p| p.revents == 0);
        for p in &mut left {
            p.revents = 0;
        }
    }
    true
}

struct Bench {
    fleet: Fleet,
    collector: Collector,
    _sensors: Vec<NsSensor>,
    token: String,
    py: String,
    work: PathBuf,
}

impl Bench {
    fn ctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(custody_tests::bin("custodyctl"));
        c.args([
            "--collector",
            &self.collector.addr,
            "--token",
            &self.token,
            "--ca",
        ])
        .arg(self.collector.data_dir.join("ca.pem"))
        .args(args)
        .env_remove("CUSTODY_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c
    }

    /// A fresh chain of CHAIN_PROCESSES processes; returns (chain id, marker).
    fn chain(&self, run: usize) -> Result<(String, String, Vec<Proc>)> {
        let marker = format!("bench-{}-{run}", std::process::id());
        let (a, b, c) = (
            self.fleet.host("host-a"),
            self.fleet.host("host-b"),
            self.fleet.host("host-c"),
        );
        let log = self.work.join("children.log");
        let log = log.to_str().unwrap_or("/dev/null");
        // 3 hops + 47 children = 50.
        let per = (CHAIN_PROCESSES - 3) / 3;
        let rest = CHAIN_PROCESSES - 3 - 2 * per;
        let (pa, pb, pc) = (rest.to_string(), per.to_string(), per.to_string());
        let mut hc = Proc::spawn(&mut agent(
            &self.py,
            c,
            "agent-c",
            &marker,
            &["hop", "-", log, "0", &pc],
        ));
        let ci: Value = serde_json::from_str(&hc.first_line(Duration::from_secs(20)))?;
        let ca = format!("{}:{}", c.addr, ci["port"]);
        let mut hb = Proc::spawn(&mut agent(
            &self.py,
            b,
            "agent-b",
            &marker,
            &["hop", &ca, log, "0", &pb],
        ));
        let bi: Value = serde_json::from_str(&hb.first_line(Duration::from_secs(20)))?;
        let ba = format!("{}:{}", b.addr, bi["port"]);
        let mut ra = Proc::spawn(&mut agent(
            &self.py,
            a,
            "agent-a",
            &marker,
            &["root", &ba, log, "0", &pa],
        ));
        let ai: Value = serde_json::from_str(&ra.first_line(Duration::from_secs(20)))?;
        let chain = exec_id("host-a", &ai);
        // Every process is running and known to the collector as part of the chain.
        poll(Duration::from_secs(30), || {
            (pids_with(&marker).len() >= CHAIN_PROCESSES).then_some(())
        })
        .with_context(|| format!("chain processes never reached {CHAIN_PROCESSES}"))?;
        poll(Duration::from_secs(30), || {
            let out = self.ctl(&["--json", "chain", &chain]).output().ok()?;
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["nodes"].as_array()?.len() >= CHAIN_PROCESSES).then_some(())
        })
        .with_context(|| {
            format!("the collector never saw {CHAIN_PROCESSES} processes in {chain}")
        })?;
        Ok((chain, marker, vec![hc, hb, ra]))
    }
}

pub fn run(args: &ResponseArgs) -> Result<()> {
    if !is_root() {
        bail!("bench response runs sensors and network namespaces and must run as root");
    }
    if !args.no_build {
        binaries::build(Profile::RELEASE)?;
    }
    let bin_dir = Profile::RELEASE.bin_dir();
    // SAFETY: set before any thread that reads the environment is started.
    unsafe { std::env::set_var("CUSTODY_BIN_DIR", &bin_dir) };
    let work = std::env::temp_dir().join(format!("custody-bench-response-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let r = measure(args, &work);
    let _ = std::fs::remove_dir_all(&work);
    r
}

fn measure(args: &ResponseArgs, work: &Path) -> Result<()> {
    let fleet = Fleet::new(&["host-a", "host-b", "host-c"]);
    let collector = Collector::start(&work.join("collector"), &format!("{}:0", fleet.bridge_addr));
    let agents = [
        ("agent-a", "agent-a"),
        ("agent-b", "agent-b"),
        ("agent-c", "agent-c"),
        ("qbench", "qbench"),
    ];
    let mut sensors = vec![];
    for h in &fleet.hosts {
        let token = collector.enroll_token();
        sensors.push(NsSensor::enroll_and_start(
            h,
            &work.join(&h.host_id),
            &collector.addr,
            &token,
            &agents,
        ));
    }
    for s in &mut sensors {
        s.wait_ready(Duration::from_secs(90));
    }
    let token = collector.operator_token("responder", "bench");
    let bench = Bench {
        fleet,
        collector,
        _sensors: sensors,
        token,
        py: python()?,
        work: work.to_path_buf(),
    };
    println!(
        "response bench: 3 netns hosts, release builds, {} kill runs ({CHAIN_PROCESSES} processes each), {} quarantine runs",
        args.kill_runs, args.quarantine_runs
    );

    let mut kill_ms = vec![];
    let mut host_ms = vec![];
    for run in 0..args.kill_runs {
        let (chain, marker, procs) = bench.chain(run)?;
        let pids = pids_with(&marker);
        let fds: Vec<OwnedFd> = pids.iter().filter_map(|p| pidfd(*p)).collect();
        let t0 = Instant::now();
        let ctl = bench
            .ctl(&[
                "--json",
                "kill",
                "--chain",
                &chain,
                "--reason",
                "bench",
                "--no-wait",
            ])
            .spawn()?;
        let gone = wait_all_gone(&fds, Duration::from_secs(10));
        let dt = t0.elapsed().as_secs_f64() * 1e3;
        let out = ctl.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "custodyctl kill failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if !gone {
            bail!(
                "run {run}: chain {chain} not dead after 10 s: {:?}",
                pids_with(&marker)
            );
        }
        let id = serde_json::from_slice::<Value>(&out.stdout)?["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // The sensors' own command-to-effect figure, once all three have answered.
        let act = poll(Duration::from_secs(10), || {
            let o = bench.ctl(&["--json", "action", &id]).output().ok()?;
            let v: Value = serde_json::from_slice(&o.stdout).ok()?;
            (v["status"] == "done").then_some(v)
        });
        if let Some(a) = act {
            let worst = a["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|h| h["follow_up"] != true)
                .filter_map(|h| {
                    h["effect_ns"]
                        .as_u64()
                        .or_else(|| h["effect_ns"].as_str()?.parse().ok())
                })
                .max()
                .unwrap_or(0);
            host_ms.push(worst as f64 / 1e6);
        }
        kill_ms.push(dt);
        eprintln!("  kill run {run}: {dt:.1} ms ({} processes)", fds.len());
        drop(procs);
    }

    // Quarantine: one sink on B, a fresh probe on A per run.
    let b = bench.fleet.host("host-b");
    let mut sink = Proc::spawn(
        b.command(&bench.py)
            .arg(script())
            .args(["sink", "/dev/null"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let target = format!("{}:{}", b.addr, sink.first_line(Duration::from_secs(20)));
    let a = bench.fleet.host("host-a");
    let mut q_ms = vec![];
    for run in 0..args.quarantine_runs {
        let marker = format!("qbench-{}-{run}", std::process::id());
        let mut probe = Proc::spawn(&mut agent(
            &bench.py,
            a,
            "qbench",
            &marker,
            &["refused", &target],
        ));
        let _me = probe.first_line(Duration::from_secs(20));
        // The collector must know the agent on host A before it can quarantine it.
        poll(Duration::from_secs(30), || {
            let o = bench.ctl(&["--json", "agents"]).output().ok()?;
            let v: Value = serde_json::from_slice(&o.stdout).ok()?;
            v.as_array()?
                .iter()
                .any(|x| x["agent_id"] == "qbench")
                .then_some(())
        })
        .context("collector never saw agent qbench")?;
        std::thread::sleep(Duration::from_millis(200));
        let t0 = now_ns();
        let out = bench
            .ctl(&[
                "--json",
                "quarantine",
                "--agent",
                "qbench",
                "--reason",
                "bench",
                "--no-wait",
            ])
            .output()?;
        if !out.status.success() {
            bail!(
                "custodyctl quarantine failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let id = serde_json::from_slice::<Value>(&out.stdout)?["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (_, rest) = probe.wait_output(Duration::from_secs(10));
        let refused: u64 = rest
            .lines()
            .find_map(|l| l.trim().parse().ok())
            .context("probe never saw EPERM")?;
        let dt = refused.saturating_sub(t0) as f64 / 1e6;
        q_ms.push(dt);
        eprintln!("  quarantine run {run}: first refused connect after {dt:.1} ms");
        let rel = bench
            .ctl(&["--json", "release", "--action", &id, "--reason", "bench"])
            .output()?;
        if !rel.status.success() {
            bail!(
                "custodyctl release failed: {}",
                String::from_utf8_lossy(&rel.stderr)
            );
        }
    }
    drop(sink);

    let k = summarize(&kill_ms);
    let p99 = percentile(&kill_ms, 99.0);
    println!();
    println!(
        "kill --chain ({CHAIN_PROCESSES} processes, 3 hosts), custodyctl spawn -> last process gone:"
    );
    println!(
        "  p50 {:.1} ms  p99 {p99:.1} ms  min {:.1}  max {:.1}  (budget p99 <= {KILL_P99_BUDGET_MS} ms: {})",
        k.median,
        k.min,
        k.max,
        if p99 <= KILL_P99_BUDGET_MS {
            "PASS"
        } else {
            "OVER"
        }
    );
    if !host_ms.is_empty() {
        let h = summarize(&host_ms);
        println!(
            "  sensors' own figure (collector issue -> all targets dead, slowest host): p50 {:.1} ms  p99 {:.1} ms",
            h.median,
            percentile(&host_ms, 99.0)
        );
    }
    if !q_ms.is_empty() {
        let q = summarize(&q_ms);
        println!(
            "quarantine --agent, custodyctl spawn -> first EPERM connect: p50 {:.1} ms  p99 {:.1} ms  min {:.1}  max {:.1}",
            q.median,
            percentile(&q_ms, 99.0),
            q.min,
            q.max
        );
    }
    Ok(())
}
