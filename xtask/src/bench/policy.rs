//! `cargo xtask bench policy`: authorisation decisions per second on one core with
//! 200 policies and chain context (`policy-bench`, pinned to CPU 0 when `taskset`
//! exists; budget ≥ 100 k/s), and what evaluation adds to the ingest path:
//! `collector-bench` alternately without and with `--policy` (every stored action
//! event evaluated against the built-in set on its own thread, with back-pressure),
//! medians side by side, and the evaluation thread's time per event.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use super::run_to_end;
use super::stats::summarize;
use crate::binaries::{self, Profile};
use crate::util::output;

const DECISIONS_BUDGET: f64 = 100_000.0;

#[derive(clap::Args, Clone)]
pub struct PolicyArgs {
    /// Generated policies for the decision-rate run.
    #[arg(long, default_value_t = 200)]
    policies: usize,
    /// Events per ingest run.
    #[arg(long, default_value_t = 300_000)]
    events: u64,
    /// Alternating pairs of ingest runs (without / with evaluation).
    #[arg(long, default_value_t = 3)]
    pairs: usize,
    /// Use the binaries already in target/release.
    #[arg(long)]
    no_build: bool,
}

fn json_line(out: &str, what: &str) -> Result<Value> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{what} printed no JSON"))?;
    serde_json::from_str(line).with_context(|| format!("parsing {what} JSON"))
}

pub fn run(args: &PolicyArgs) -> Result<()> {
    if !args.no_build {
        binaries::build(Profile::RELEASE)?;
    }
    let bin = Profile::RELEASE.bin_dir();
    let pin = output(Command::new("sh").args(["-c", "command -v taskset"])).is_some();
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(bin.join("policy-bench"));
        c
    } else {
        Command::new(bin.join("policy-bench"))
    };
    cmd.args(["--json", "--policies", &args.policies.to_string()]);
    let pb = json_line(
        &run_to_end(&mut cmd, "policy-bench", Duration::from_secs(600))?,
        "policy-bench",
    )?;
    let hot = pb["decisions_per_sec_prepared_chain"]
        .as_f64()
        .unwrap_or(0.0);
    let cold = pb["decisions_per_sec_chain_per_event"]
        .as_f64()
        .unwrap_or(0.0);

    let mut off = vec![];
    let mut on = vec![];
    let mut per_event_us = vec![];
    for _ in 0..args.pairs {
        for with in [false, true] {
            let mut c = Command::new(bin.join("collector-bench"));
            c.args(["--events", &args.events.to_string(), "--queries", "10"]);
            if with {
                c.arg("--policy");
            }
            let v = json_line(
                &run_to_end(&mut c, "collector-bench", Duration::from_secs(1800))?,
                "collector-bench",
            )?;
            let rate = v["ingest_events_per_sec"].as_f64().unwrap_or(0.0);
            if with {
                on.push(rate);
                per_event_us.push(v["policy"]["eval_ns_per_event"].as_f64().unwrap_or(0.0) / 1e3);
            } else {
                off.push(rate);
            }
        }
    }
    let (off_s, on_s, us) = (summarize(&off), summarize(&on), summarize(&per_event_us));
    println!();
    println!(
        "policy decisions, {} policies, chain context, one core{}:",
        pb["policies"],
        if pin { " (taskset -c 0)" } else { "" }
    );
    println!(
        "  {hot:.0} decisions/s with the chain prepared once (budget >= {DECISIONS_BUDGET:.0}: {}); {cold:.0}/s rebuilding the chain per event",
        if hot >= DECISIONS_BUDGET {
            "PASS"
        } else {
            "OVER"
        }
    );
    println!(
        "ingest with evaluation of every action event (built-in set), {} pairs of {} events:",
        args.pairs, args.events
    );
    println!(
        "  without {:.0} ev/s, with {:.0} ev/s (medians): ratio {:.2}; evaluation {:.1} µs per action event (context + decisions)",
        off_s.median,
        on_s.median,
        on_s.median / off_s.median.max(1.0),
        us.median
    );
    Ok(())
}
