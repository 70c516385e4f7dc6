//! Part 1: syscall overhead of the sensor, read against the floor.
//!
//! Four modes of the same loop, in alternating rounds with a rotating order so drift
//! in machine load (other builds on this 2-core box) falls on every mode alike:
//! base (no sensor), floor (empty programs at the sensor's attach points), sensor with
//! the loop untracked, sensor with the loop a declared agent. Ratios are taken within
//! a round, then summarised across rounds.
//!
//! Each loop has three phases: openat+close of one file again and again, loopback
//! connects, and openat+close of as many *distinct* files once each. The sensor folds
//! repeated read-only opens in the kernel, so the first phase is where folding pays;
//! the distinct phase is the one no de-duplication can help, and the tracked budget
//! is read on it (DESIGN.md).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::daemon::{self, Daemon, Kind};
use super::stats::{Summary, ratios, summarize};
use super::{AGENT_ID, Env, budget_mark};

/// A loop that hangs (e.g. a lost SYN) must not hang the benchmark.
const LOOP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a round waits for someone else's custodyd (a test run) to exit, and how
/// long all rounds together may wait.
const QUIET_WAIT: Duration = Duration::from_secs(60);
const QUIET_WAIT_TOTAL: Duration = Duration::from_secs(300);
/// Budgets from DESIGN.md, read against the floor.
pub const UNTRACKED_BUDGET: f64 = 1.03;
pub const TRACKED_BUDGET: f64 = 1.10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Base,
    Floor,
    Untracked,
    Tracked,
}

const MODES: [Mode; 4] = [Mode::Base, Mode::Floor, Mode::Untracked, Mode::Tracked];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Base => "base",
            Mode::Floor => "floor",
            Mode::Untracked => "untracked",
            Mode::Tracked => "tracked",
        }
    }
}

/// Iterations of one loop.
#[derive(Clone, Copy)]
pub struct Size {
    pub opens: u64,
    pub connects: u64,
    /// Distinct files opened once each (half the repeated opens).
    pub distinct: u64,
}

/// Timings printed by one `syscall-loop run`, in nanoseconds.
#[derive(Clone, Copy, Default)]
struct Times {
    open: f64,
    connect: f64,
    total: f64,
    /// CPU time of the loop process (the first two phases, all threads).
    cpu: f64,
    /// The distinct-file phase, timed apart.
    distinct: f64,
    distinct_cpu: f64,
}

#[derive(Clone, Copy, Default)]
struct Sample {
    times: Times,
    /// CPU the daemon spent while the loop ran (0 for base).
    daemon_cpu_ms: f64,
    /// Another custodyd was running on the host before or after this loop.
    foreign_sensor: bool,
}

type Round = [Sample; 4];

/// What the final summary needs.
pub struct Outcome {
    pub floor_vs_base: Summary,
    pub untracked: Summary,
    /// Repeated-file opens and connects.
    pub tracked: Summary,
    /// The distinct-file phase: the tracked budget's loop.
    pub tracked_distinct: Summary,
}

pub fn run(env: &Env, rounds: usize, target: Duration) -> Result<Outcome> {
    let size = calibrate(env, target)?;
    make_distinct(env, size.distinct)?;
    println!(
        "\n== 1. syscall overhead: {rounds} rounds; one loop = {} × openat+close of one file + {} × loopback connect/accept/close, then {} × openat+close of distinct files",
        size.opens, size.connects, size.distinct
    );
    let mut samples: Vec<Round> = Vec::with_capacity(rounds);
    let mut quiet_budget = QUIET_WAIT_TOTAL;
    for r in 0..rounds {
        wait_quiet(&mut quiet_budget);
        let mut round = [Sample::default(); 4];
        for k in 0..MODES.len() {
            let mode = MODES[(r + k) % MODES.len()];
            round[mode as usize] = measure(env, mode, size, r == 0)?;
        }
        let shown =
            MODES.map(|m| format!("{} {:.0} ms", m.name(), round[m as usize].times.total / 1e6));
        let flag = if tainted(&round) {
            "  (another custodyd was running)"
        } else {
            ""
        };
        eprintln!(
            "bench: round {:>2}/{rounds}: {}{flag}",
            r + 1,
            shown.join(", ")
        );
        samples.push(round);
    }
    Ok(report(&samples))
}

/// Size the loop so a base run takes about `target`, half in each phase. Sized on the
/// fastest of three probes: a probe slowed by a burst of other work would otherwise
/// make every loop of the run too short.
fn calibrate(env: &Env, target: Duration) -> Result<Size> {
    let probe = Size {
        opens: 100_000,
        connects: 5_000,
        distinct: 0,
    };
    run_loop(env, probe, false)?; // warm caches and the page cache of the binary
    let mut fastest = run_loop(env, probe, false)?;
    for _ in 0..2 {
        let t = run_loop(env, probe, false)?;
        fastest.open = fastest.open.min(t.open);
        fastest.connect = fastest.connect.min(t.connect);
    }
    let half = target.as_nanos() as f64 / 2.0;
    let scale = |n: u64, ns: f64| ((n as f64 * half / ns / 1000.0).round() as u64).max(1) * 1000;
    let opens = scale(probe.opens, fastest.open);
    Ok(Size {
        opens,
        connects: scale(probe.connects, fastest.connect),
        distinct: opens / 2,
    })
}

/// The distinct phase's files: `0`, `1`, … in their own directory.
fn make_distinct(env: &Env, n: u64) -> Result<()> {
    for i in 0..n {
        let p = env.distinct_dir.join(i.to_string());
        std::fs::write(&p, b"d").with_context(|| format!("create {}", p.display()))?;
    }
    Ok(())
}

fn measure(env: &Env, mode: Mode, size: Size, verify: bool) -> Result<Sample> {
    let kind = match mode {
        Mode::Base => None,
        Mode::Floor => Some(Kind::Floor),
        Mode::Untracked | Mode::Tracked => Some(Kind::Sensor),
    };
    let daemon = kind
        .map(|k| Daemon::start(&env.custodyd, &env.config, &env.dir, k))
        .transpose()?;
    let own = daemon.as_ref().map(Daemon::pid);
    let foreign_before = foreign_sensor(own);
    let cpu_before = own.map(daemon::cpu_ms).transpose()?.unwrap_or(0.0);
    let times = run_loop(env, size, mode == Mode::Tracked)?;
    let cpu_after = own.map(daemon::cpu_ms).transpose()?.unwrap_or(0.0);
    let foreign_sensor = foreign_before || foreign_sensor(own);
    if let Some(d) = daemon {
        if verify {
            verify_tracking(&d, mode, size)?;
        }
        d.stop()?;
    }
    Ok(Sample {
        times,
        daemon_cpu_ms: cpu_after - cpu_before,
        foreign_sensor,
    })
}

/// Once per run: check the tracked loop really was tracked and the untracked one
/// really was filtered in the kernel, or the ratios would compare the wrong things.
fn verify_tracking(d: &Daemon, mode: Mode, size: Size) -> Result<()> {
    let s = d.settled_status(Duration::from_secs(30))?;
    match mode {
        // Repeated opens are folded; the distinct ones cannot be.
        Mode::Tracked if s.records < size.distinct => {
            bail!(
                "the tracked loop was not tracked: custodyd saw {} records for {} distinct opens",
                s.records,
                size.distinct
            )
        }
        Mode::Untracked if s.records > size.opens / 10 => {
            bail!(
                "the untracked loop reached user space: custodyd saw {} records",
                s.records
            )
        }
        _ => Ok(()),
    }
}

fn run_loop(env: &Env, size: Size, tracked: bool) -> Result<Times> {
    let mut cmd = Command::new(&env.syscall_loop);
    cmd.arg("run")
        .arg("--file")
        .arg(&env.data_file)
        .args([
            "--opens",
            &size.opens.to_string(),
            "--connects",
            &size.connects.to_string(),
            "--distinct",
            &size.distinct.to_string(),
        ])
        .arg("--distinct-dir")
        .arg(&env.distinct_dir)
        .stdin(Stdio::null());
    if tracked {
        cmd.env("CUSTODY_AGENT", AGENT_ID);
    } else {
        cmd.env_remove("CUSTODY_AGENT");
    }
    let out = super::run_to_end(&mut cmd, "syscall-loop run", LOOP_TIMEOUT)?;
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .with_context(|| format!("syscall-loop printed {out:?}"))?;
    let ns = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {out:?}"));
    Ok(Times {
        open: ns("open_ns")?,
        connect: ns("connect_ns")?,
        total: ns("total_ns")?,
        cpu: ns("cpu_ns")?,
        distinct: ns("distinct_ns")?,
        distinct_cpu: ns("distinct_cpu_ns")?,
    })
}

/// Is a custodyd other than ours running (someone's test)? Its programs tax every
/// syscall on the host, the base mode's included, and shrink the ratios.
pub fn foreign_sensor(own: Option<u32>) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| Some(*pid) != own)
        .any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "custodyd")
        })
}

/// Before a round, give another custodyd (a test run) a bounded time to finish.
fn wait_quiet(budget: &mut Duration) {
    if !foreign_sensor(None) {
        return;
    }
    let limit = QUIET_WAIT.min(*budget);
    eprintln!("bench: another custodyd is running; waiting up to {limit:?} for it to exit");
    let t = Instant::now();
    while foreign_sensor(None) && t.elapsed() < limit {
        std::thread::sleep(Duration::from_secs(1));
    }
    *budget = budget.saturating_sub(t.elapsed());
    if foreign_sensor(None) {
        eprintln!("bench: it is still running; measuring anyway (the round is flagged)");
    }
}

fn tainted(round: &Round) -> bool {
    round.iter().any(|s| s.foreign_sensor)
}

fn column(samples: &[Round], mode: Mode, f: impl Fn(&Times) -> f64) -> Vec<f64> {
    samples.iter().map(|r| f(&r[mode as usize].times)).collect()
}

fn ratio(samples: &[Round], a: Mode, b: Mode, f: fn(&Times) -> f64) -> Summary {
    summarize(&ratios(&column(samples, a, f), &column(samples, b, f)))
}

fn report(samples: &[Round]) -> Outcome {
    print_modes(samples);
    let outcome = print_ratios(samples);
    let clean: Vec<Round> = samples.iter().filter(|r| !tainted(r)).copied().collect();
    if clean.len() < samples.len() {
        println!(
            "warning: another custodyd (someone's test) was running in {} of {} rounds",
            samples.len() - clean.len(),
            samples.len()
        );
        if clean.len() >= 5 {
            println!(
                "\nthe same over the {} rounds without another custodyd:",
                clean.len()
            );
            print_ratios(&clean);
        }
    }
    // The distinct-file phase on its own: no folding can help here.
    let distinct = |t: &Times| t.distinct;
    let d = outcome.tracked_distinct;
    let u = ratio(samples, Mode::Untracked, Mode::Floor, distinct);
    println!("\ndistinct-file phase (one open per file)  median  min–max   budget       loop CPU");
    for (name, s, a, budget) in [
        ("untracked/floor", u, Mode::Untracked, None),
        ("tracked/floor", d, Mode::Tracked, Some(TRACKED_BUDGET)),
    ] {
        let verdict = budget.map_or("(reported)".to_string(), |limit| {
            format!("≤ {limit:.2} {}", budget_mark(s.median <= limit))
        });
        println!(
            "{name:<40} {:>6.3}× {:>6.3}–{:<6.3} {verdict:<12} {:>7.3}×",
            s.median,
            s.min,
            s.max,
            ratio(samples, a, Mode::Floor, |t| t.distinct_cpu).median,
        );
    }
    outcome
}

fn print_modes(samples: &[Round]) {
    println!(
        "{:<10} {:>10} {:>10} {:>11} {:>12} {:>14} {:>12}",
        "mode",
        "median ms",
        "openat ms",
        "connect ms",
        "loop CPU ms",
        "daemon CPU ms",
        "distinct ms"
    );
    for mode in MODES {
        let med = |f: fn(&Times) -> f64| summarize(&column(samples, mode, f)).median / 1e6;
        let cpu: Vec<f64> = samples
            .iter()
            .map(|r| r[mode as usize].daemon_cpu_ms)
            .collect();
        println!(
            "{:<10} {:>10.1} {:>10.1} {:>11.1} {:>12.1} {:>14.0} {:>12.1}",
            mode.name(),
            med(|t| t.total),
            med(|t| t.open),
            med(|t| t.connect),
            med(|t| t.cpu),
            summarize(&cpu).median,
            med(|t| t.distinct)
        );
    }
}

/// Ratios of wall time per round (the budgets), with the phases and the loop's own
/// CPU time beside them to show where a difference comes from.
fn print_ratios(samples: &[Round]) -> Outcome {
    let total = |t: &Times| t.total;
    let distinct = |t: &Times| t.distinct;
    let outcome = Outcome {
        floor_vs_base: ratio(samples, Mode::Floor, Mode::Base, total),
        untracked: ratio(samples, Mode::Untracked, Mode::Floor, total),
        tracked: ratio(samples, Mode::Tracked, Mode::Floor, total),
        tracked_distinct: ratio(samples, Mode::Tracked, Mode::Floor, distinct),
    };
    println!(
        "\n{:<16} {:>7} {:>15}   {:<11} {:>8} {:>8} {:>9}",
        "ratio per round", "median", "min–max", "budget", "openat", "connect", "loop CPU"
    );
    let rows = [
        (
            "floor/base",
            Mode::Floor,
            Mode::Base,
            outcome.floor_vs_base,
            None,
        ),
        (
            "untracked/floor",
            Mode::Untracked,
            Mode::Floor,
            outcome.untracked,
            Some(UNTRACKED_BUDGET),
        ),
        (
            "tracked/floor",
            Mode::Tracked,
            Mode::Floor,
            outcome.tracked,
            None,
        ),
    ];
    for (name, a, b, s, budget) in rows {
        let verdict = budget.map_or("(reported)".to_string(), |limit| {
            format!("≤ {limit:.2} {}", budget_mark(s.median <= limit))
        });
        println!(
            "{name:<16} {:>6.3}× {:>7.3}–{:<7.3}   {verdict:<11} {:>7.3}× {:>7.3}× {:>8.3}×",
            s.median,
            s.min,
            s.max,
            ratio(samples, a, b, |t| t.open).median,
            ratio(samples, a, b, |t| t.connect).median,
            ratio(samples, a, b, |t| t.cpu).median,
        );
    }
    outcome
}
