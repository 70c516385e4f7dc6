//! Part 2: how many events per second the daemon sustains.
//!
//! Two views: `custodyd bench-pipeline` isolates the user-space cost (decode →
//! pipeline → JSON) on one pinned core; the kernel flood shows what actually gets
//! through the ring buffer from a tracked process opening files as fast as it can,
//! and how much is lost.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use super::daemon::{self, Daemon, Kind, Status};
use super::stats::{Summary, summarize};
use super::{AGENT_ID, Env, budget_mark};

pub const EVENTS_BUDGET: f64 = 500_000.0;
const PIPELINE_RUNS: usize = 5;
const PIPELINE_EVENTS: u64 = 2_000_000;
const FLOOD_SECS: f64 = 2.0;

pub struct Outcome {
    pub pipeline: Summary,
    pub flood: Flood,
}

pub struct Flood {
    pub ops_per_sec: f64,
    pub records_per_sec: f64,
    pub records: u64,
    pub lost: u64,
    /// Records per second of daemon CPU time: its capacity on one core with the
    /// real kernel path, whether or not the loop could saturate it.
    pub records_per_cpu_sec: f64,
}

pub fn run(env: &Env) -> Result<Outcome> {
    println!("\n== 2. daemon throughput");
    let pipeline = pipeline(env)?;
    let flood = flood(env)?;
    Ok(Outcome { pipeline, flood })
}

fn pipeline(env: &Env) -> Result<Summary> {
    let pinned = which("taskset");
    let mut rates = Vec::with_capacity(PIPELINE_RUNS);
    for _ in 0..PIPELINE_RUNS {
        let mut cmd = if pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(&env.custodyd);
            c
        } else {
            Command::new(&env.custodyd)
        };
        cmd.args(["bench-pipeline", "--events", &PIPELINE_EVENTS.to_string()])
            .stdout(Stdio::piped());
        let out = super::run_to_end(
            &mut cmd,
            "custodyd bench-pipeline",
            Duration::from_secs(300),
        )?;
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .with_context(|| format!("bench-pipeline printed {out:?}"))?;
        rates.push(
            v["events_per_sec"]
                .as_f64()
                .with_context(|| format!("no events_per_sec in {out:?}"))?,
        );
    }
    let s = summarize(&rates);
    println!(
        "pipeline (bench-pipeline, {PIPELINE_EVENTS} events, {PIPELINE_RUNS} runs{}): median {:.0} k events/s (min–max {:.0}–{:.0} k)   ≥ {:.0} k {}",
        if pinned {
            ", taskset -c 0"
        } else {
            ", not pinned: no taskset"
        },
        s.median / 1e3,
        s.min / 1e3,
        s.max / 1e3,
        EVENTS_BUDGET / 1e3,
        budget_mark(s.median >= EVENTS_BUDGET)
    );
    Ok(s)
}

/// A tracked process floods openat+close; compare what it issued with what the daemon
/// received and what the kernel counted as lost.
fn flood(env: &Env) -> Result<Flood> {
    let d = Daemon::start(&env.custodyd, &env.config, &env.dir, Kind::Sensor)?;
    let before = d.status_after(SystemTime::UNIX_EPOCH)?;
    let cpu_before = daemon::cpu_ms(d.pid())?;
    let wakes_before = daemon::status_field(d.pid(), "voluntary_ctxt_switches")?;
    let mut cmd = Command::new(&env.syscall_loop);
    cmd.arg("flood")
        .arg("--file")
        .arg(&env.data_file)
        .args(["--secs", &FLOOD_SECS.to_string()])
        .env("CUSTODY_AGENT", AGENT_ID)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let out = super::run_to_end(&mut cmd, "syscall-loop flood", Duration::from_secs(60))?;
    let after = d.settled_status(Duration::from_secs(60))?;
    let cpu_secs = (daemon::cpu_ms(d.pid())? - cpu_before) / 1e3;
    let wakes = daemon::status_field(d.pid(), "voluntary_ctxt_switches")? - wakes_before;
    d.stop()?;
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .with_context(|| format!("syscall-loop printed {out:?}"))?;
    let ops = v["ops"].as_f64().context("no ops")?;
    let secs = v["ns"].as_f64().context("no ns")? / 1e9;
    let f = flood_figures(&before, &after, ops, secs, cpu_secs)?;
    println!(
        "kernel flood (tracked openat+close, {secs:.1} s): loop {:.0} k opens/s; daemon received {} records = {:.0} k/s; lost (ringbuf_full) {}{}",
        f.ops_per_sec / 1e3,
        f.records,
        f.records_per_sec / 1e3,
        f.lost,
        if f.lost == 0 {
            " — no loss".to_string()
        } else {
            format!(" = {:.1} %", 100.0 * f.lost as f64 / ops)
        }
    );
    // A voluntary context switch is the daemon going back to sleep on the ring
    // buffer's epoll: ~1 per record means it is woken for every single event.
    println!(
        "  daemon CPU {:.0} ms for them = {:.0} k records per CPU-second; {wakes} wake-ups = {:.2} per record",
        cpu_secs * 1e3,
        f.records_per_cpu_sec / 1e3,
        wakes as f64 / f.records.max(1) as f64
    );
    Ok(f)
}

fn flood_figures(
    before: &Status,
    after: &Status,
    ops: f64,
    secs: f64,
    cpu_secs: f64,
) -> Result<Flood> {
    let records = after.records.saturating_sub(before.records);
    if (records as f64) < ops / 2.0 && after.ringbuf_full == before.ringbuf_full {
        bail!("the flood loop was not tracked: {records} records for {ops} opens, none lost");
    }
    Ok(Flood {
        ops_per_sec: ops / secs,
        records_per_sec: records as f64 / secs,
        records,
        lost: after.ringbuf_full.saturating_sub(before.ringbuf_full),
        records_per_cpu_sec: records as f64 / cpu_secs.max(1e-3),
    })
}

fn which(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}
