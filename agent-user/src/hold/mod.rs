//! Revocation hold: while at least one credential revocation is cached on the host,
//! the kernel stops (SIGSTOP) every process it holds — tracked ones by default — and
//! records it in the pinned `HELD` map, at two points:
//!
//! * at exec, before the new image runs: the daemon vets the environment against the
//!   revoked fingerprints. So a process started with a revoked credential in its
//!   environment cannot connect anywhere.
//! * at the entry of SSL_write(_ex) when the plaintext starts like an HTTP/1 request:
//!   the daemon vets the request's header fields (the same header scan and fleet-key
//!   HMAC as every sighting). So an HTTPS request carrying a revoked credential in a
//!   header is stopped before it is encrypted, let alone sent.
//!
//! Then the daemon continues the process (SIGCONT), or kills or quarantines it per the
//! revocation (a quarantined process's send then fails: its sockets are shut down).
//!
//! The held record (exec, or the TLS write taken at entry) wakes the daemon at once; a
//! periodic sweep settles any hold the record path missed (record lost, or still
//! queued) — from `/proc/PID/environ` for an exec, from the process's memory for a
//! write (the kernel's `TLS_CALLS` map names every in-flight write's buffer) — and a
//! restarted daemon settles what a previous one left. Only processes in `HELD` (stopped
//! by our program, same start time) are ever continued: a job-control stop by a user
//! is left alone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agent_ebpf::{Held, TlsCall, hold};
use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData},
};

mod exec;
mod process;
mod settle;
mod stats;
#[cfg(test)]
mod test_support;
mod tls;

pub use process::{pidfd_open, pidfd_signal, proc_state};
pub use stats::{HoldStats, LATENCY_BUCKETS_S, TlsHoldStats};
pub use tls::HeldWrite;

/// A hold whose environment cannot be read is retried by the sweep for this long,
/// then the process is continued unvetted (counted, logged): never stopped forever.
const UNREADABLE_GIVE_UP: Duration = Duration::from_secs(5);

/// A revoked credential found in a held process's environment or request headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    /// Empty for the fail-closed quarantine of a write that could not be vetted.
    pub fingerprint: String,
    /// "kill" or "quarantine".
    pub action: String,
    pub command_id: String,
    /// "env" or "header".
    pub seen_in: String,
    /// The kernel policy forbidding the credential to the process's agent ("" for a
    /// revocation).
    pub policy: String,
}

/// What settling needs from the daemon: the revocation checks and the enforcement.
pub trait Judge {
    /// The first revoked credential in the environment block of `tgid` (or one a
    /// kernel policy forbids to its agent).
    fn revoked(&self, tgid: u32, env: &[u8]) -> Option<Hit>;
    /// The first revoked (or forbidden) credential in request header fields.
    fn revoked_headers(&self, tgid: u32, headers: &[(String, String)]) -> Option<Hit>;
    /// Apply the revocation to the stopped process (kill mark + SIGKILL, or
    /// quarantine) and report it.
    fn enforce(&mut self, tgid: u32, start_ticks: u64, start_boottime: u64, hit: &Hit);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No such hold (already settled, or the process exited).
    NotPending,
    Gone,
    Resumed,
    Killed,
    Quarantined,
    /// Could not be vetted yet: left for the sweep.
    Deferred,
    /// Exec: continued unvetted. TLS: quarantined fail-closed, then continued.
    Unvetted,
}

/// What a held record brings to its hold's settling.
#[derive(Clone, Copy, Debug)]
pub enum Evidence<'a> {
    /// Nothing (the sweep): vetted from /proc.
    None,
    /// The exec record's environment, when the kernel captured all of it.
    Env(&'a [u8]),
    /// The held TLS record's write.
    Write(&'a HeldWrite),
}

pub struct Holds {
    held: BpfHashMap<MapData, u32, Held>,
    mode: Array<MapData, u32>,
    /// In-flight SSL calls (key pid_tgid): the writes of a held process.
    calls: BpfHashMap<MapData, u64, TlsCall>,
    /// Connections whose next write the kernel holds whatever its shape.
    hold_conn: BpfHashMap<MapData, u64, u32>,
    /// Unfinished request heads of held writes, per (tgid, SSL *).
    partial: HashMap<(u32, u64), (Vec<u8>, Instant)>,
    /// TLS holds left for a moment because a thread of the process still ran.
    deferred: HashMap<u32, Held>,
    scope: u32,
    armed: bool,
    tick_ns: u64,
    pub stats: HoldStats,
}

pub fn scope_name(scope: u32) -> &'static str {
    match scope {
        hold::TRACKED => "tracked",
        hold::ALL => "all",
        _ => "off",
    }
}

impl Holds {
    /// Take the hold maps from the loaded programs (`HELD` is pinned with the other
    /// enforcement maps). Starts disarmed.
    pub fn attach(ebpf: &mut Ebpf, scope: u32) -> Result<Holds> {
        let held = BpfHashMap::try_from(ebpf.take_map("HELD").context("HELD map missing")?)?;
        let mode = Array::try_from(ebpf.take_map("HOLD").context("HOLD map missing")?)?;
        let calls = BpfHashMap::try_from(
            ebpf.take_map("TLS_CALLS")
                .context("TLS_CALLS map missing")?,
        )?;
        let hold_conn = BpfHashMap::try_from(
            ebpf.take_map("HOLD_CONN")
                .context("HOLD_CONN map missing")?,
        )?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let mut h = Holds {
            held,
            mode,
            calls,
            hold_conn,
            partial: HashMap::new(),
            deferred: HashMap::new(),
            scope,
            armed: false,
            tick_ns: 1_000_000_000 / hz,
            stats: HoldStats {
                scope: scope_name(scope).into(),
                latency_buckets: vec![0; LATENCY_BUCKETS_S.len() + 1],
                tls: TlsHoldStats {
                    latency_buckets: vec![0; LATENCY_BUCKETS_S.len() + 1],
                    ..Default::default()
                },
                ..Default::default()
            },
        };
        h.arm(false)?;
        Ok(h)
    }

    /// Arm (while revocations are cached) or disarm the hold in the kernel.
    pub fn arm(&mut self, on: bool) -> Result<()> {
        let want = on && self.scope != hold::OFF;
        let v = if want { self.scope } else { hold::OFF };
        self.mode.set(0, v, 0).context("setting the hold mode")?;
        if want != self.armed {
            tracing::info!(
                scope = scope_name(self.scope),
                "revocation hold {}",
                if want { "armed" } else { "disarmed" }
            );
        }
        self.armed = want;
        self.stats.armed = want;
        Ok(())
    }

    /// Unsettled holds.
    pub fn entries(&self) -> Vec<(u32, Held)> {
        self.held.iter().filter_map(Result::ok).collect()
    }

    /// The hold recorded for `tgid`, if it is the one `held_ns` names.
    pub fn pending(&self, tgid: u32, held_ns: u64) -> Option<Held> {
        self.held
            .get(&tgid, 0)
            .ok()
            .filter(|h| h.held_ns == held_ns)
    }

    /// The TLS hold of this process (tgid and leader start time), whichever of its
    /// threads' writes it was last stamped by: settling it vets all of them.
    pub fn pending_tls(&self, tgid: u32, start_boottime: u64) -> Option<Held> {
        self.held
            .get(&tgid, 0)
            .ok()
            .filter(|h| h.is_tls() && h.start_boottime == start_boottime)
    }

    /// Remove the entry if it is still this hold (a later exec may have replaced it).
    fn forget(&mut self, tgid: u32, held: &Held) {
        if self.held.get(&tgid, 0).ok().as_ref() == Some(held) {
            let _ = self.held.remove(&tgid);
        }
    }
}

/// The vetting result of a hold.
enum Verdict {
    Clean,
    Revoked(Hit),
    /// Fail-closed enforcement of a hold that could not be vetted.
    Unvettable(Hit),
}

/// `[sensor] revocation_hold`: "tracked" (default), "all" or "off".
pub fn parse_scope(s: &str) -> Result<u32> {
    Ok(match s {
        "tracked" => hold::TRACKED,
        "all" => hold::ALL,
        "off" => hold::OFF,
        other => bail!("revocation_hold = {other:?}: expected \"tracked\", \"all\" or \"off\""),
    })
}
