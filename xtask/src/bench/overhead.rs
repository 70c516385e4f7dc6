//! Part 1: syscall overhead of the sensor, read against the floor.
//!
//! Four modes of the same loop, in alternating rounds with a rotating order so drift
//! in machine load (other builds on this 2-core box) falls on every mode alike:
//! base (no sensor), floor (empty programs at the sensor's attach points), sensor with
//! the loop untracked, sensor with the loop a declared agent. Ratios are taken within
//! a round, then summarised across rounds.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::daemon::{self, Daemon, Kind};
use super::stats::{Summary, ratios, summarize};
use super::{AGENT_ID, Env, budget_mark};

/// A loop that hangs (e.g. a lost SYN) must not hang the benchmark.
const LOOP_TIMEOUT: Duration = Duration::from_secs(120);
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
}

/// Timings printed by one `syscall-loop run`, in nanoseconds.
#[derive(Clone, Copy, Default)]
struct Times {
    open: f64,
    connect: f64,
    total: f64,
}

#[derive(Clone, Copy, Default)]
struct Sample {
    times: Times,
    /// CPU the daemon spent while the loop ran (0 for base).
    daemon_cpu_ms: f64,
    /// Another custodyd was running on the host during this sample.
    foreign_sensor: bool,
}

/// What the final summary needs.
pub struct Outcome {
    pub floor_vs_base: Summary,
    pub untracked: Summary,
    pub tracked: Summary,
}

pub fn run(env: &Env, rounds: usize, target: Duration) -> Result<Outcome> {
    let size = calibrate(env, target)?;
    println!(
        "\n== 1. syscall overhead: {rounds} rounds; one loop = {} × openat+close + {} × loopback connect/accept/close",
        size.opens, size.connects
    );
    let mut samples: Vec<[Sample; 4]> = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let mut round = [Sample::default(); 4];
        for k in 0..MODES.len() {
            let mode = MODES[(r + k) % MODES.len()];
            round[mode as usize] = measure(env, mode, size, r == 0)?;
        }
        eprintln!(
            "bench: round {:>2}/{rounds}: {}",
            r + 1,
            MODES
                .map(|m| format!("{} {:.0} ms", m.name(), round[m as usize].times.total / 1e6))
                .join(", ")
        );
        samples.push(round);
    }
    Ok(report(&samples))
}

/// Size the loop so a base run takes about `target`, half in each phase.
fn calibrate(env: &Env, target: Duration) -> Result<Size> {
    let probe = Size {
        opens: 100_000,
        connects: 5_000,
    };
    run_loop(env, probe, false)?; // warm caches and the page cache of the binary
    let t = run_loop(env, probe, false)?;
    let half = target.as_nanos() as f64 / 2.0;
    let scale = |n: u64, ns: f64| ((n as f64 * half / ns / 1000.0).round() as u64).max(1) * 1000;
    Ok(Size {
        opens: scale(probe.opens, t.open),
        connects: scale(probe.connects, t.connect),
    })
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
    let foreign_sensor = foreign_sensor(own);
    let cpu_before = own.map(daemon::cpu_ms).transpose()?.unwrap_or(0.0);
    let times = run_loop(env, size, mode == Mode::Tracked)?;
    let cpu_after = own.map(daemon::cpu_ms).transpose()?.unwrap_or(0.0);
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
        Mode::Tracked if s.records < size.opens => {
            bail!(
                "the tracked loop was not tracked: custodyd saw {} records for {} opens",
                s.records,
                size.opens
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
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
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
    })
}

/// Is a custodyd other than ours running (someone's test)? Its programs would tax
/// every mode, the base included, and shrink the ratios.
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

fn column(samples: &[[Sample; 4]], mode: Mode, f: impl Fn(&Times) -> f64) -> Vec<f64> {
    samples.iter().map(|r| f(&r[mode as usize].times)).collect()
}

fn report(samples: &[[Sample; 4]]) -> Outcome {
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>14}",
        "mode", "median ms", "openat ms", "connect ms", "daemon CPU ms"
    );
    for mode in MODES {
        let med = |f: fn(&Times) -> f64| summarize(&column(samples, mode, f)).median / 1e6;
        let cpu: Vec<f64> = samples
            .iter()
            .map(|r| r[mode as usize].daemon_cpu_ms)
            .collect();
        println!(
            "{:<10} {:>12.1} {:>12.1} {:>12.1} {:>14.0}",
            mode.name(),
            med(|t| t.total),
            med(|t| t.open),
            med(|t| t.connect),
            summarize(&cpu).median
        );
    }
    let ratio = |a: Mode, b: Mode, f: fn(&Times) -> f64| {
        summarize(&ratios(&column(samples, a, f), &column(samples, b, f)))
    };
    let total = |t: &Times| t.total;
    let outcome = Outcome {
        floor_vs_base: ratio(Mode::Floor, Mode::Base, total),
        untracked: ratio(Mode::Untracked, Mode::Floor, total),
        tracked: ratio(Mode::Tracked, Mode::Floor, total),
    };
    println!(
        "\n{:<16} {:>8} {:>15}   {:<10} {:>12} {:>12}",
        "ratio (per round)", "median", "min–max", "budget", "openat only", "connect only"
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
            Some(TRACKED_BUDGET),
        ),
    ];
    for (name, a, b, s, budget) in rows {
        let verdict = budget.map_or("(reported)".to_string(), |limit| {
            format!("≤ {limit:.2} {}", budget_mark(s.median <= limit))
        });
        println!(
            "{name:<16} {:>7.3}× {:>7.3}–{:<7.3}   {verdict:<10} {:>11.3}× {:>11.3}×",
            s.median,
            s.min,
            s.max,
            ratio(a, b, |t| t.open).median,
            ratio(a, b, |t| t.connect).median,
        );
    }
    let foreign = samples
        .iter()
        .flatten()
        .filter(|s| s.foreign_sensor)
        .count();
    if foreign > 0 {
        println!(
            "warning: another custodyd was running during {foreign} of {} loops",
            samples.len() * 4
        );
    }
    outcome
}
