//! `cargo xtask bench collector`: see bench/collector.rs.
//! `cargo xtask bench response`: see bench/response.rs.
//!
//! `cargo xtask bench sensor`: the sensor's budgets from DESIGN.md, measured side by
//! side in one run (method and results: BENCHMARKS.md).
//!
//! 1. syscall overhead of the sensor against the floor (empty programs, same hooks),
//! 2. the daemon's events/s on one core and what the kernel path delivers,
//! 3. the daemon's RSS with 10 k tracked processes.

mod collector;
mod daemon;
mod overhead;
mod policy;
mod proc;
mod response;
mod rss;
mod stats;
mod throughput;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};

use crate::binaries::{self, Profile};
use crate::util::{is_root, output};
use proc::{Guard, Stop};

/// The declared agent of the benchmark config; a process is tracked when started
/// with `CUSTODY_AGENT=bench-agent`.
pub const AGENT_ID: &str = "bench-agent";
/// AYA.md: fewer alternating rounds than this say nothing at this noise level.
const MIN_ROUNDS: usize = 15;

#[derive(Subcommand, Clone)]
pub enum Which {
    /// Syscall overhead (untracked / tracked vs floor), daemon events/s and RSS.
    Sensor(SensorArgs),
    /// Collector ingest events/s on one core and chain-query latency on a large store.
    Collector(collector::CollectorArgs),
    /// Policy decisions/s on one core and the cost of evaluation in the ingest path.
    Policy(policy::PolicyArgs),
    /// Containment time: kill a 50-process chain on three netns hosts, quarantine.
    Response(response::ResponseArgs),
}

#[derive(clap::Args, Clone)]
pub struct SensorArgs {
    /// Alternating rounds of the syscall loop (each: base, floor, untracked, tracked).
    #[arg(long, default_value_t = MIN_ROUNDS)]
    rounds: usize,
    /// Target duration of one loop without the sensor, in milliseconds.
    #[arg(long, default_value_t = 800)]
    loop_ms: u64,
    /// Tracked processes held for the memory measurement.
    #[arg(long, default_value_t = 10_000)]
    processes: u32,
    /// Run only these parts (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Use the binaries already in target/release instead of building them.
    #[arg(long)]
    no_build: bool,
    /// Nice value for everything the benchmark starts (loop and daemons alike), e.g.
    /// -10 on a machine shared with builds; 0 leaves scheduling as it is.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    nice: i32,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Overhead,
    Throughput,
    Rss,
}

/// Paths every part uses.
pub struct Env {
    custodyd: PathBuf,
    syscall_loop: PathBuf,
    config: PathBuf,
    /// The file the loops open (an ordinary file, not one the sensor treats specially).
    data_file: PathBuf,
    /// Where the distinct-file phase's files are made (one per open, so folding
    /// repeated opens cannot help; see `overhead.rs`).
    distinct_dir: PathBuf,
    /// Scratch directory: config, fleet key, status files.
    dir: PathBuf,
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Sensor(args) => sensor(&args),
        Which::Collector(args) => collector::run(&args),
        Which::Response(args) => response::run(&args),
        Which::Policy(args) => policy::run(&args),
    }
}

fn sensor(args: &SensorArgs) -> Result<()> {
    if !is_root() {
        bail!(
            "bench sensor loads eBPF programs and must run as root (e.g. `sudo -E cargo xtask bench sensor`)"
        );
    }
    if args.rounds < MIN_ROUNDS {
        eprintln!(
            "bench: warning: {} rounds; AYA.md asks for at least {MIN_ROUNDS} at this noise level",
            args.rounds
        );
    }
    if !args.no_build {
        build()?;
    }
    set_nice(args.nice)?;
    let scratch = Scratch::create()?;
    let env = Env::prepare(&scratch.0)?;
    print_machine(args.nice);
    let wants = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let o1 = wants(Part::Overhead)
        .then(|| {
            overhead::run(
                &env,
                args.rounds.max(1),
                Duration::from_millis(args.loop_ms),
            )
        })
        .transpose()?;
    let o2 = wants(Part::Throughput)
        .then(|| throughput::run(&env))
        .transpose()?;
    let o3 = wants(Part::Rss)
        .then(|| rss::run(&env, args.processes))
        .transpose()?;
    summary(o1.as_ref(), o2.as_ref(), o3.as_ref());
    Ok(())
}

/// The release build every task shares (custodyd with its kernel programs, and the
/// syscall-loop workload among the rest).
fn build() -> Result<()> {
    binaries::build(Profile::RELEASE).map(drop)
}

impl Env {
    fn prepare(dir: &Path) -> Result<Env> {
        let bin = Profile::RELEASE.bin_dir();
        let custodyd = bin.join("custodyd");
        let syscall_loop = bin.join("syscall-loop");
        for b in [&custodyd, &syscall_loop] {
            if !b.exists() {
                bail!("{} is missing; run without --no-build", b.display());
            }
        }
        let config = dir.join("custodyd.toml");
        // The fleet key goes to the scratch directory, not the host's /var/lib/custody.
        std::fs::write(
            &config,
            format!(
                "[sensor]\nstate_dir = \"{}\"\n\n[[agent]]\nid = \"{AGENT_ID}\"\n[agent.match]\nenv = \"{AGENT_ID}\"\n",
                dir.display()
            ),
        )?;
        let data_file = dir.join("bench-data.txt");
        std::fs::write(&data_file, "custody benchmark data\n")?;
        let distinct_dir = dir.join("distinct");
        std::fs::create_dir_all(&distinct_dir)?;
        Ok(Env {
            custodyd,
            syscall_loop,
            config,
            data_file,
            distinct_dir,
            dir: dir.to_path_buf(),
        })
    }
}

/// Scratch directory removed on every path.
struct Scratch(PathBuf);

impl Scratch {
    fn create() -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("custody-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run a command to completion within `limit` and return its stdout (stderr passes
/// through, so a failure explains itself).
pub fn run_to_end(cmd: &mut Command, name: &str, limit: Duration) -> Result<String> {
    cmd.stdout(Stdio::piped());
    let mut guard = Guard::spawn(cmd, name, Stop::Kill)?;
    let mut stdout = guard.child_mut().stdout.take().expect("stdout is piped");
    // Read on a thread so a chatty child cannot block on a full pipe while we wait.
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let status = guard.wait_timeout(limit)?;
    let out = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    if !status.success() {
        bail!("{name} failed with {status}");
    }
    Ok(out)
}

pub fn budget_mark(ok: bool) -> &'static str {
    if ok { "PASS" } else { "OVER" }
}

/// After the build, so only the measured processes (which inherit it) get the priority.
fn set_nice(nice: i32) -> Result<()> {
    if nice == 0 {
        return Ok(());
    }
    // SAFETY: setpriority has no memory preconditions. On Linux it sets this thread's
    // nice value, which every process spawned from it inherits.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        bail!("setpriority({nice}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn print_machine(nice: i32) {
    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    let kernel = output(Command::new("uname").arg("-r")).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("custody sensor benchmark — {} (nice {nice})", date.trim());
    println!(
        "machine: {cores} cores ({cpu}), kernel {}, load average {}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn summary(
    o1: Option<&overhead::Outcome>,
    o2: Option<&throughput::Outcome>,
    o3: Option<&rss::Outcome>,
) {
    println!("\n== summary (budgets: DESIGN.md)");
    let range =
        |s: &stats::Summary| format!("{:.3}× (min–max {:.3}–{:.3})", s.median, s.min, s.max);
    if let Some(o) = o1 {
        println!(
            "floor vs base        {:<36} reported",
            range(&o.floor_vs_base)
        );
        for (name, s, limit) in [
            (
                "untracked vs floor",
                &o.untracked,
                overhead::UNTRACKED_BUDGET,
            ),
            (
                "tracked vs floor",
                &o.tracked_distinct,
                overhead::TRACKED_BUDGET,
            ),
        ] {
            println!(
                "{name:<20} {:<36} ≤ {limit:.2}×   {}",
                range(s),
                budget_mark(s.median <= limit)
            );
        }
        println!(
            "  tracked, distinct-file opens (the budget's loop); the repeated-file loop and \
             connects: {} reported",
            range(&o.tracked)
        );
    }
    if let Some(o) = o2 {
        let p = &o.pipeline;
        let figure = format!(
            "{:.0} k/s (min–max {:.0}–{:.0} k)",
            p.median / 1e3,
            p.min / 1e3,
            p.max / 1e3
        );
        println!(
            "daemon events/s      {figure:<36} ≥ 500 k/s {}",
            budget_mark(p.median >= throughput::EVENTS_BUDGET)
        );
        let f = &o.flood;
        println!(
            "kernel flood         {:<36} lost {}",
            format!("{:.0} k records/s received", f.records_per_sec / 1e3),
            f.lost
        );
    }
    if let Some(o) = o3 {
        let m = &o.mem;
        let figure = format!(
            "{:.1} MiB (VmHWM {:.1}), {} known",
            rss::mib(m.rss),
            rss::mib(m.hwm),
            o.processes_known
        );
        println!(
            "RSS, tracked procs   {figure:<36} ≤ 64 MiB  {}",
            budget_mark(m.rss <= rss::RSS_BUDGET_KIB)
        );
        let without = rss::mib(m.rss.saturating_sub(m.bpf));
        println!(
            "  without mmapped BPF maps {without:.1} MiB (ring buffer {:.1} MiB)",
            rss::mib(m.bpf)
        );
    }
}
