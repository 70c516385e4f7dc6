//! `cargo xtask bench collector`: ingest events/s on one core into sled with chain
//! indexing, and chain-query latency for one event, against DESIGN.md's budgets.
//! Drives `collector-bench` (collector/src/bin), one process per run, pinned to one
//! CPU when `taskset` is available.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use super::run_to_end;
use super::stats::summarize;
use crate::binaries::{self, Profile};
use crate::util::output;

const INGEST_BUDGET: f64 = 200_000.0;
const P99_BUDGET_MS: f64 = 10.0;

#[derive(clap::Args, Clone)]
pub struct CollectorArgs {
    /// Events per ingest run (repeated --runs times; the median is the figure).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Size of the store for the chain-query latency run (the budget is stated at 10 M).
    #[arg(long, default_value_t = 10_000_000)]
    query_store_events: u64,
    /// Use the binary already in target/release.
    #[arg(long)]
    no_build: bool,
}

fn one(events: u64, dir: &std::path::Path) -> Result<Value> {
    let bin = Profile::RELEASE.bin_dir().join("collector-bench");
    let pin = output(Command::new("sh").args(["-c", "command -v taskset"])).is_some();
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "1"]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    cmd.args(["--events", &events.to_string(), "--dir"])
        .arg(dir);
    let out = run_to_end(&mut cmd, "collector-bench", Duration::from_secs(1800))?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("collector-bench printed no JSON")?;
    serde_json::from_str(line).context("parsing collector-bench JSON")
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "OVER" }
}

pub fn run(args: &CollectorArgs) -> Result<()> {
    if !args.no_build {
        binaries::build(Profile::RELEASE)?;
    }
    let scratch = tempfile_dir()?;
    let mut rates = Vec::new();
    for i in 0..args.runs {
        let dir = scratch.join(format!("ingest-{i}"));
        let v = one(args.events, &dir)?;
        let r = v["ingest_events_per_sec"]
            .as_f64()
            .context("no ingest_events_per_sec")?;
        eprintln!(
            "bench: ingest run {}/{}: {:.0} events/s",
            i + 1,
            args.runs,
            r
        );
        rates.push(r);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let dir = scratch.join("query");
    let q = one(args.query_store_events, &dir)?;
    let _ = std::fs::remove_dir_all(&scratch);
    let s = summarize(&rates);
    let p50 = q["query_p50_ms"].as_f64().unwrap_or(f64::NAN);
    let p99 = q["query_p99_ms"].as_f64().unwrap_or(f64::NAN);
    println!(
        "== collector (one core{})",
        if output(Command::new("sh").args(["-c", "command -v taskset"])).is_some() {
            ", taskset -c 1"
        } else {
            ""
        }
    );
    println!(
        "ingest into sled with chain indexing: median {:.0} events/s (min–max {:.0}–{:.0}, {} runs of {} events)   ≥ {:.0}/s {}",
        s.median,
        s.min,
        s.max,
        args.runs,
        args.events,
        INGEST_BUDGET,
        verdict(s.median >= INGEST_BUDGET)
    );
    println!(
        "chain query for one event on a {}-event store: p50 {p50:.2} ms, p99 {p99:.2} ms   p99 ≤ {P99_BUDGET_MS} ms {}",
        args.query_store_events,
        verdict(p99 <= P99_BUDGET_MS)
    );
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("custody-bench-collector-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
