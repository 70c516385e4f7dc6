//! The running sensor as one type: [`Daemon`] owns what the sensor holds while it
//! runs (the loaded programs, the pipeline, the credential watch, enforcement,
//! holds, policy, the reporter and the collector's command stream), and
//! [`Daemon::run`] is its event loop, one method per source, until SIGTERM/SIGINT.
//!
//! A record's way through a turn: the kernel's ring buffer (`kernel/`) → `drain.rs`
//! → the pipeline (`pipeline/`: events, credential sightings, kernel policy
//! records) → the credential watch (`watch/`: which sightings are violations) and
//! the policy → the enforcer and holds (`enforce.rs`, `sighting.rs`, `hold/`) → the
//! reporter (`report/`: JSON lines, the collector shipper, counters). Besides
//! `drain.rs`: `start.rs` builds the daemon, `holds.rs` settles held processes,
//! `commands.rs` applies what the collector asks, `tick.rs` writes the status and
//! metrics once a second, `tls.rs` analyses and attaches the TLS of the binaries
//! tracked processes run (off the loop), `stop.rs` settles and releases at the end.

mod args;
mod commands;
mod declared;
mod drain;
mod holds;
mod orders;
mod start;
mod stop;
mod tick;
mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_ebpf::Tracked;
use anyhow::Result;
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use custody_proto::sensor::v1::Command as SensorCommand;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::enrollment::Enrollment;
use crate::kernel::loader::Links;
use crate::pipeline::{Output, Pipeline, Tracker};
use crate::report::Reporter;
use crate::report::status::Status;
use crate::watch::CredentialWatch;
use crate::{enforce, hold, policy, revocation};

pub(crate) use args::RunArgs;
use commands::{PolicyResolved, next_command};

/// Records handled per turn of the event loop before timers and signals get a look.
const DRAIN_MAX: usize = 4096;

/// How long the exec record path has to settle a hold before the sweep does it.
const HOLD_SWEEP_AGE: Duration = Duration::from_millis(100);

/// The kernel's tracked map, where the pipeline's tracking decisions go.
struct MapTracker(BpfHashMap<MapData, u32, Tracked>);

impl Tracker for MapTracker {
    fn track(&mut self, tgid: u32, t: Tracked) {
        if let Err(e) = self.0.insert(tgid, t, 0) {
            tracing::warn!("could not track pid {tgid}: {e}");
        }
    }

    fn retag(&mut self, tgid: u32, t: Tracked) {
        // BPF_EXIST: only a process still tracked; one that exited since must not
        // come back (its pid could be reused).
        let _ = self.0.insert(tgid, t, 2);
    }
}

pub(crate) struct Daemon {
    args: RunArgs,
    host_id: String,
    pin_dir: std::path::PathBuf,
    enrolled: Option<Enrollment>,
    /// Held while running: `custodyd detach` refuses to pull pins from a live sensor.
    _run_lock: Option<crate::detach::RunLock>,
    ebpf: aya::Ebpf,
    /// Every attachment, released together at the end.
    links: Links,
    /// The kernel's per-CPU counters (lost events, truncations, policy hits).
    kernel_counters: PerCpuArray<MapData, u64>,
    tracker: MapTracker,
    pipe: Pipeline,
    /// Revoked and policy-forbidden credentials, checked against what the pipeline saw.
    watch: CredentialWatch,
    revocations: revocation::Revocations,
    enforcer: Option<enforce::Enforcer>,
    holds: Option<hold::Holds>,
    policy: policy::Policy,
    report: Reporter,
    /// Commands from the collector (None when standalone).
    commands: Option<mpsc::Receiver<SensorCommand>>,
    /// Policy updates whose names were resolved off the loop.
    policy_tx: mpsc::Sender<PolicyResolved>,
    policy_rx: mpsc::Receiver<PolicyResolved>,
    /// The last metrics rendering, served by the metrics endpoint.
    metrics_text: Arc<Mutex<String>>,
    status: Status,
    /// What the pipeline made of the record being handled (reused to spare an
    /// allocation per record).
    batch: Vec<Output>,
    /// Routine reads summarised per process and directory (`routine.rs`), and the
    /// reused buffer of what passes it.
    routine: crate::routine::Routine,
    routine_out: Vec<custody_proto::sensor::v1::Event>,
    /// Kernel loss counters as last reported, to warn once per increase.
    reported_lost: HashMap<&'static str, u64>,
    /// TLS coverage: binaries analysed off the loop, attached by offset, uncovered
    /// ones reported.
    tls: tls::TlsCoverage,
}

/// `custodyd` without a subcommand: start the sensor and run it until stopped.
pub(crate) async fn run(args: RunArgs) -> Result<()> {
    let (daemon, events) = Daemon::start(args).await?;
    daemon.run(events).await
}

impl Daemon {
    /// The event loop: each arm is one source and one method.
    async fn run(mut self, events: RingBuf<MapData>) -> Result<()> {
        // SAFETY: the ring buffer owns its fd and lives as long as the AsyncFd, which is
        // dropped (deregistered) before the programs are released in `stop`.
        let mut ring = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut poll = tokio::time::interval(Duration::from_millis(5));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Known agent programs installed here: analysed and attached before they run.
        self.tls.prewarm(tls::installed_agent_binaries());
        // Processes a previous daemon held (and never settled) are still stopped.
        self.sweep_holds(Duration::ZERO)?;
        let mut hold_sweep = tokio::time::interval(Duration::from_millis(250));
        hold_sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    // A full batch leaves the readiness set: the next turn drains on
                    // (after timers and signals had their look).
                    if self.drain(guard.get_inner_mut())? < DRAIN_MAX {
                        guard.clear_ready();
                    }
                }
                // High-rate records do not wake us (see the kernel's lazy_wakeup): drain
                // on a short timer too, so they are never more than a few ms late.
                _ = poll.tick() => self.on_poll(ring.get_mut())?,
                _ = hold_sweep.tick(), if self.holds.is_some() => self.sweep_holds(HOLD_SWEEP_AGE)?,
                _ = tick.tick() => self.on_tick()?,
                Some(cmd) = next_command(&mut self.commands) => self.on_command(cmd),
                Some(resolved) = self.policy_rx.recv() => self.on_policy_resolved(resolved)?,
                Some(analysed) = self.tls.rx.recv() => self.on_tls_analysed(analysed)?,
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        self.stop(ring).await
    }
}
