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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use agent_ebpf::{Held, TlsCall, direction, hold};
use agent_user::intent::request_head;
use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData},
};
use serde::{Deserialize, Serialize};

/// Upper bounds (seconds) of the hold-latency histogram buckets (+Inf is implied).
pub const LATENCY_BUCKETS_S: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A hold whose environment cannot be read is retried by the sweep for this long,
/// then the process is continued unvetted (counted, logged): never stopped forever.
const UNREADABLE_GIVE_UP: Duration = Duration::from_secs(5);

/// Bytes of a held write vetted (read from the process when the record has less): a
/// request head longer than this is vetted as far as this goes.
const VET_MAX: u64 = 64 << 10;

/// A held process with a thread still running after this long is vetted anyway.
const QUIET_GIVE_UP: Duration = Duration::from_secs(1);

/// A head left unfinished by a held write is kept this long for the write that
/// continues it.
const PARTIAL_TTL: Duration = Duration::from_secs(30);

/// Hold counters, for `custodyd status` and the metrics. The top-level outcome and
/// latency fields are holds at exec; `tls` has the same for holds before a TLS send.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HoldStats {
    /// Processes are being held (revocations cached and enforcement up).
    pub armed: bool,
    /// "tracked", "all" or "off".
    pub scope: String,
    /// Holds not settled yet (both kinds).
    pub held_now: usize,
    /// Settled holds, by outcome.
    pub resumed: u64,
    pub killed: u64,
    pub quarantined: u64,
    /// The process was gone (killed by someone else, pid reused) before its verdict.
    pub gone: u64,
    /// Continued without a verdict: the environment stayed unreadable.
    pub unvetted: u64,
    /// Vetted from /proc/PID/environ (record lost or its environment cut short).
    pub vetted_from_proc: u64,
    /// Settled by the periodic sweep rather than by the exec record.
    pub by_sweep: u64,
    /// Stop-to-verdict time of resumed, killed and quarantined holds.
    pub latency_sum_ns: u64,
    pub latency_max_ns: u64,
    /// Per [`LATENCY_BUCKETS_S`] bound, then +Inf; not cumulative.
    pub latency_buckets: Vec<u64>,
    /// Holds before a TLS send.
    #[serde(default)]
    pub tls: TlsHoldStats,
}

/// Holds at the entry of SSL_write(_ex), by outcome.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TlsHoldStats {
    pub resumed: u64,
    pub killed: u64,
    pub quarantined: u64,
    pub gone: u64,
    /// `hold_unvetted_tls`: a held write could be vetted neither from its record nor
    /// from the process's memory; the process was quarantined (fail-closed: its send
    /// fails) and continued, never continued unvetted.
    pub unvetted: u64,
    /// Vetted from the process's memory (record lost, or the write longer than the
    /// record's capture).
    pub vetted_from_memory: u64,
    /// A held write ended inside the request head: the connection's next write was
    /// held too, to vet the rest of the head.
    pub continued_heads: u64,
    /// Settled by the periodic sweep rather than by the held record.
    pub by_sweep: u64,
    /// Stop-to-verdict time of resumed, killed, quarantined and unvetted holds: the
    /// latency a held request gains.
    pub latency_sum_ns: u64,
    pub latency_max_ns: u64,
    pub latency_buckets: Vec<u64>,
}

impl TlsHoldStats {
    pub fn settled(&self) -> u64 {
        self.resumed + self.killed + self.quarantined + self.unvetted
    }
}

fn observe(sum: &mut u64, max: &mut u64, buckets: &mut Vec<u64>, ns: u64) {
    *sum += ns;
    *max = (*max).max(ns);
    if buckets.len() != LATENCY_BUCKETS_S.len() + 1 {
        *buckets = vec![0; LATENCY_BUCKETS_S.len() + 1];
    }
    let s = ns as f64 / 1e9;
    let i = LATENCY_BUCKETS_S
        .iter()
        .position(|&b| s <= b)
        .unwrap_or(LATENCY_BUCKETS_S.len());
    buckets[i] += 1;
}

impl HoldStats {
    pub fn settled(&self) -> u64 {
        self.resumed + self.killed + self.quarantined
    }

    fn observe(&mut self, tls: bool, ns: u64) {
        if tls {
            let t = &mut self.tls;
            observe(
                &mut t.latency_sum_ns,
                &mut t.latency_max_ns,
                &mut t.latency_buckets,
                ns,
            );
        } else {
            observe(
                &mut self.latency_sum_ns,
                &mut self.latency_max_ns,
                &mut self.latency_buckets,
                ns,
            );
        }
    }
}

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

/// The write a held TLS record carries (the kernel emits it at SSL_write's entry).
#[derive(Clone, Debug)]
pub struct HeldWrite {
    /// Thread that called SSL_write.
    pub tid: u32,
    /// The `SSL *`.
    pub conn: u64,
    /// The buffer in the process and its length.
    pub buf: u64,
    pub len: u64,
    /// What the kernel captured of it (at most `TLS_MAX`).
    pub data: Vec<u8>,
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

/// `CLOCK_BOOTTIME` in ns: the clock of `bpf_ktime_get_boot_ns`.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) } as i32;
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Signal the process behind `pidfd` (immune to pid reuse).
fn pidfd_signal(pidfd: &OwnedFd, sig: i32) -> bool {
    // SAFETY: plain syscall on a valid pidfd; null siginfo means a kill(2)-like signal.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        ) == 0
    }
}

/// Process state letter from /proc/PID/stat (None when gone).
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    stat[close + 2..].chars().next()
}

/// Whether no thread of `tgid` is still running. Once a held process's threads have
/// all stopped, no uprobe handler of it is in flight: its writes are all in
/// `TLS_CALLS`, its records submitted, its `HELD` entry final. A single-threaded
/// process is quiet as soon as its record exists.
fn threads_quiet(tgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{tgid}/task")) else {
        return true; // gone: nothing runs
    };
    let tasks: Vec<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if tasks.len() <= 1 {
        return true;
    }
    tasks.iter().all(|t| {
        let s = std::fs::read_to_string(format!("/proc/{tgid}/task/{t}/stat")).unwrap_or_default();
        s.rfind(')')
            .and_then(|i| s.get(i + 2..))
            .and_then(|r| r.chars().next())
            .is_none_or(|c| c != 'R')
    })
}

/// `len` bytes at `addr` in the memory of `pid` (a stopped process: the buffer of its
/// pending SSL_write is mapped and unchanging).
fn read_mem(pid: u32, addr: u64, len: usize) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut out = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut out[got..], addr + got as u64) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got += n,
        }
    }
    Some(out)
}

/// One write of a held process, with what could be read of it.
struct Write {
    tid: u32,
    call: TlsCall,
    /// The bytes to vet; None when unreadable.
    bytes: Option<Vec<u8>>,
    from_memory: bool,
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

    /// Settle one hold: vet the environment (exec) or the pending writes (TLS), then
    /// continue, kill or quarantine the process.
    pub fn settle(
        &mut self,
        tgid: u32,
        held: Held,
        evidence: Evidence<'_>,
        judge: &mut dyn Judge,
        by_sweep: bool,
    ) -> Outcome {
        if self.held.get(&tgid, 0).ok() != Some(held) {
            return Outcome::NotPending;
        }
        let tls = held.is_tls();
        let ticks = held.start_boottime / self.tick_ns;
        // The pidfd is taken before the start-time check: if the check passes, the
        // fd names this very process, and every signal below goes through it.
        let pidfd = pidfd_open(tgid);
        let alive = pidfd.is_some()
            && crate::enforce::same_process(tgid, ticks)
            && proc_state(tgid).is_some_and(|s| s != 'Z' && s != 'X');
        let Some(pidfd) = pidfd.filter(|_| alive) else {
            self.forget(tgid, &held);
            if tls {
                self.stats.tls.gone += 1;
            } else {
                self.stats.gone += 1;
            }
            return Outcome::Gone;
        };
        let verdict = if tls {
            let write = match evidence {
                Evidence::Write(w) => Some(w),
                _ => None,
            };
            match self.vet_writes(tgid, held, write, judge) {
                Ok(v) => v,
                Err(o) => return o,
            }
        } else {
            let env = match evidence {
                Evidence::Env(e) => Some(e),
                _ => None,
            };
            match self.vet_env(tgid, held, env, judge, &pidfd) {
                Ok(v) => v,
                Err(o) => return o,
            }
        };
        let outcome = match verdict {
            Verdict::Clean => {
                // Entry first: once continued, the process may be held again.
                self.forget(tgid, &held);
                pidfd_signal(&pidfd, libc::SIGCONT);
                Outcome::Resumed
            }
            Verdict::Revoked(hit) | Verdict::Unvettable(hit) => {
                let unvetted = hit.fingerprint.is_empty();
                judge.enforce(tgid, ticks, held.start_boottime, &hit);
                self.forget(tgid, &held);
                if hit.action == "quarantine" {
                    // Quarantine, then continue: its sockets are shut down and new
                    // connections refused, so a held send fails.
                    pidfd_signal(&pidfd, libc::SIGCONT);
                    if unvetted {
                        Outcome::Unvetted
                    } else {
                        Outcome::Quarantined
                    }
                } else {
                    // Backstop: a stopped process never reaches the kernel kill hook's
                    // next syscall before this lands, but SIGKILL ends it where it is.
                    pidfd_signal(&pidfd, libc::SIGKILL);
                    Outcome::Killed
                }
            }
        };
        let (resumed, killed, quarantined, unvetted, swept) = if tls {
            let t = &mut self.stats.tls;
            (
                &mut t.resumed,
                &mut t.killed,
                &mut t.quarantined,
                &mut t.unvetted,
                &mut t.by_sweep,
            )
        } else {
            let s = &mut self.stats;
            (
                &mut s.resumed,
                &mut s.killed,
                &mut s.quarantined,
                &mut s.unvetted,
                &mut s.by_sweep,
            )
        };
        match outcome {
            Outcome::Resumed => *resumed += 1,
            Outcome::Killed => *killed += 1,
            Outcome::Quarantined => *quarantined += 1,
            Outcome::Unvetted => *unvetted += 1,
            _ => {}
        }
        if by_sweep {
            *swept += 1;
        }
        let stopped_at = held.held_ns & !Held::TLS;
        self.stats
            .observe(tls, boot_ns().saturating_sub(stopped_at));
        outcome
    }

    /// Exec hold: the record's environment when complete, else /proc/PID/environ.
    fn vet_env(
        &mut self,
        tgid: u32,
        held: Held,
        env: Option<&[u8]>,
        judge: &mut dyn Judge,
        pidfd: &OwnedFd,
    ) -> Result<Verdict, Outcome> {
        let from_proc;
        let env = match env {
            Some(e) => e,
            None => match std::fs::read(format!("/proc/{tgid}/environ")) {
                Ok(e) => {
                    from_proc = e;
                    self.stats.vetted_from_proc += 1;
                    &from_proc
                }
                Err(e) => {
                    let age = Duration::from_nanos(boot_ns().saturating_sub(held.held_ns));
                    if age < UNREADABLE_GIVE_UP {
                        tracing::debug!(pid = tgid, "held process environment unreadable: {e}");
                        return Err(Outcome::Deferred);
                    }
                    tracing::warn!(
                        pid = tgid,
                        "continuing a held process whose environment stayed unreadable: {e}"
                    );
                    self.forget(tgid, &held);
                    pidfd_signal(pidfd, libc::SIGCONT);
                    self.stats.unvetted += 1;
                    return Err(Outcome::Unvetted);
                }
            },
        };
        Ok(match judge.revoked(tgid, env) {
            None => Verdict::Clean,
            Some(hit) => Verdict::Revoked(hit),
        })
    }

    /// TLS hold: every in-flight write of the process (all its threads are stopped,
    /// and all of them go on when it is continued), from the held record when it
    /// has the whole write, else from the process's memory.
    fn vet_writes(
        &mut self,
        tgid: u32,
        held: Held,
        record: Option<&HeldWrite>,
        judge: &mut dyn Judge,
    ) -> Result<Verdict, Outcome> {
        // A thread still running may be inside a uprobe handler of this hold (its
        // write not yet in TLS_CALLS, its SIGSTOP not yet sent, which a SIGCONT now
        // would cancel): wait briefly until the group stop has reached every thread,
        // else retry on the daemon's next poll (a thread waiting for a CPU on a
        // loaded host). Past QUIET_GIVE_UP it is vetted as it stands.
        let t = Instant::now();
        let age = Duration::from_nanos(boot_ns().saturating_sub(held.held_ns));
        while !threads_quiet(tgid) {
            if age > QUIET_GIVE_UP {
                tracing::debug!(
                    pid = tgid,
                    "held process still not quiet: vetting it as it stands"
                );
                break;
            }
            if t.elapsed() > Duration::from_millis(2) {
                tracing::debug!(pid = tgid, "held process not quiet yet: retried shortly");
                self.deferred.insert(tgid, held);
                return Err(Outcome::Deferred);
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        let mut writes: Vec<Write> = self
            .calls
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, c)| (k >> 32) as u32 == tgid && c.direction == direction::WRITE)
            .map(|(k, call)| Write {
                tid: k as u32,
                call,
                bytes: None,
                from_memory: false,
            })
            .collect();
        if let Some(r) = record {
            if !writes.iter().any(|w| w.tid == r.tid && w.call.buf == r.buf) {
                // Not in TLS_CALLS (insert failed or evicted): the record still has it.
                writes.push(Write {
                    tid: r.tid,
                    call: TlsCall {
                        ssl: r.conn,
                        buf: r.buf,
                        len: r.len,
                        direction: direction::WRITE,
                        ..Default::default()
                    },
                    bytes: None,
                    from_memory: false,
                });
            }
        }
        // Whether `data` (after what a previous write left of its head) holds all
        // of the head there is to vet: then the record's capture is enough.
        let head_in = |tgid: u32, ssl: u64, data: &[u8]| {
            let mut joined = self
                .partial
                .get(&(tgid, ssl))
                .map(|(p, _)| p.clone())
                .unwrap_or_default();
            joined.extend_from_slice(data);
            request_head(&joined).is_none_or(|h| h.complete)
        };
        for w in &mut writes {
            let want = w.call.len.min(VET_MAX);
            let rec = record.filter(|r| r.tid == w.tid && r.buf == w.call.buf);
            if let Some(r) =
                rec.filter(|r| r.data.len() as u64 >= want || head_in(tgid, w.call.ssl, &r.data))
            {
                w.bytes = Some(r.data[..(want as usize).min(r.data.len())].to_vec());
            } else if let Some(b) = read_mem(tgid, w.call.buf, want as usize) {
                w.bytes = Some(b);
                w.from_memory = true;
            } else if let Some(r) = rec {
                // Memory unreadable: the record's capture is what can be vetted.
                w.bytes = Some(r.data.clone());
            } else if !std::path::Path::new(&format!("/proc/{tgid}/task/{}", w.tid)).exists() {
                // A thread that died inside SSL_write: nothing of it will be sent.
                w.bytes = Some(Vec::new());
            }
        }
        if writes.iter().any(|w| w.from_memory) {
            self.stats.tls.vetted_from_memory += 1;
        }
        let now = Instant::now();
        self.partial
            .retain(|_, (_, since)| now.duration_since(*since) < PARTIAL_TTL);
        let mut unvettable = writes.is_empty();
        let mut heads_to_follow = Vec::new();
        for w in &writes {
            let Some(bytes) = &w.bytes else {
                unvettable = true;
                continue;
            };
            let key = (tgid, w.call.ssl);
            let mut joined = match self.partial.get(&key) {
                Some((p, _)) => p.clone(),
                None => Vec::new(),
            };
            joined.extend_from_slice(bytes);
            let Some(head) = request_head(&joined) else {
                continue; // not a request head (a body, or not HTTP/1): nothing to vet
            };
            if let Some(hit) = judge.revoked_headers(tgid, &head.headers) {
                self.partial.remove(&key);
                return Ok(Verdict::Revoked(hit));
            }
            let whole = bytes.len() as u64 == w.call.len;
            if !head.complete && whole && (joined.len() as u64) < VET_MAX {
                heads_to_follow.push((key, joined));
            } else {
                self.partial.remove(&key);
            }
        }
        if unvettable {
            let age = Duration::from_nanos(boot_ns().saturating_sub(held.held_ns));
            if record.is_none() && age < UNREADABLE_GIVE_UP {
                return Err(Outcome::Deferred);
            }
            tracing::warn!(
                pid = tgid,
                "a write held before send could not be vetted (record lost, buffer unreadable): quarantining the process (fail-closed)"
            );
            return Ok(Verdict::Unvettable(Hit {
                fingerprint: String::new(),
                action: "quarantine".into(),
                command_id: String::new(),
                seen_in: "header".into(),
                policy: String::new(),
            }));
        }
        for ((t, ssl), joined) in heads_to_follow {
            // The rest of the head comes in the connection's next write: hold it too.
            if self.hold_conn.insert(ssl, t, 0).is_ok() {
                self.partial.insert((t, ssl), (joined, now));
                self.stats.tls.continued_heads += 1;
            }
        }
        Ok(Verdict::Clean)
    }

    /// Whether some TLS hold waits for its process's threads to stop.
    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Retry the TLS holds deferred because a thread still ran (called on the
    /// daemon's short poll, so such a hold waits milliseconds, not a sweep period).
    pub fn retry_deferred(&mut self, judge: &mut dyn Judge) -> usize {
        let mut n = 0;
        for (tgid, held) in std::mem::take(&mut self.deferred) {
            if !matches!(
                self.settle(tgid, held, Evidence::None, judge, false),
                Outcome::NotPending | Outcome::Deferred
            ) {
                n += 1;
            }
        }
        n
    }

    /// Settle every hold older than `min_age` (the record path had its chance).
    pub fn sweep(&mut self, min_age: Duration, judge: &mut dyn Judge) -> usize {
        let now = boot_ns();
        let mut n = 0;
        for (tgid, held) in self.entries() {
            if now.saturating_sub(held.held_ns) < min_age.as_nanos() as u64 {
                continue;
            }
            if !matches!(
                self.settle(tgid, held, Evidence::None, judge, true),
                Outcome::NotPending | Outcome::Deferred
            ) {
                n += 1;
            }
        }
        self.stats.held_now = self.entries().len();
        n
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

#[cfg(test)]
mod tests {
    //! Real kernel: the exec program stops a tracked process while the hold is armed,
    //! and settling from the pinned map (as a restarted daemon does) continues a clean
    //! process and kills a revoked one.
    use std::io::{BufRead, BufReader, Write};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use agent_ebpf::Tracked;
    use agent_user::credential::{FleetKey, scan_env, scan_headers};

    use super::*;
    use crate::loader;

    fn root_or_skip(name: &str) -> bool {
        let required = std::env::var("CUSTODY_REQUIRE_BPF").as_deref() == Ok("1");
        // SAFETY: no preconditions.
        let why = if unsafe { libc::geteuid() } != 0 {
            "needs root to load eBPF"
        } else if !loader::has_programs() {
            "was built with AYA_BUILD_SKIP=1 (no kernel programs)"
        } else {
            return true;
        };
        assert!(
            !required,
            "{name} {why}, and CUSTODY_REQUIRE_BPF=1 forbids skipping"
        );
        eprintln!("skipping {name}: {why}");
        false
    }

    struct PinCleanup(PathBuf);

    impl Drop for PinCleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Attached(loader::Links);

    impl Drop for Attached {
        fn drop(&mut self) {
            loader::release(std::mem::take(&mut self.0));
        }
    }

    /// A child that waits for one stdin line, then execs `sh -c CMD` with `env`.
    struct Waiting {
        child: Child,
    }

    impl Waiting {
        fn start(env: &[(&str, &str)], cmd: &str) -> Waiting {
            let mut c = Command::new("python3");
            c.args([
                "-c",
                "import os, sys; sys.stdin.readline(); os.execvp('sh', ['sh', '-c', sys.argv[1]])",
                cmd,
            ])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
            for (k, v) in env {
                c.env(k, v);
            }
            Waiting {
                child: c.spawn().unwrap(),
            }
        }

        fn go(&mut self) {
            let stdin = self.child.stdin.as_mut().unwrap();
            writeln!(stdin, "go").unwrap();
            stdin.flush().unwrap();
        }
    }

    impl Drop for Waiting {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    struct TestJudge {
        key: FleetKey,
        revoked: String,
        enforced: Vec<u32>,
    }

    impl Judge for TestJudge {
        fn revoked(&self, _tgid: u32, env: &[u8]) -> Option<Hit> {
            scan_env(env, &self.key)
                .into_iter()
                .find(|c| c.fingerprint == self.revoked)
                .map(|c| Hit {
                    fingerprint: c.fingerprint,
                    action: "kill".into(),
                    command_id: "t".into(),
                    seen_in: "env".into(),
                    policy: String::new(),
                })
        }

        fn revoked_headers(&self, _tgid: u32, headers: &[(String, String)]) -> Option<Hit> {
            scan_headers(headers, &self.key)
                .into_iter()
                .find(|c| c.fingerprint == self.revoked)
                .map(|c| Hit {
                    fingerprint: c.fingerprint,
                    action: "kill".into(),
                    command_id: "t".into(),
                    seen_in: "header".into(),
                    policy: String::new(),
                })
        }

        fn enforce(&mut self, tgid: u32, _: u64, _: u64, _: &Hit) {
            self.enforced.push(tgid);
        }
    }

    fn wait_state(pid: u32, want: char, limit: Duration) -> Option<char> {
        let t = Instant::now();
        loop {
            let s = proc_state(pid);
            if s == Some(want) || t.elapsed() > limit {
                return s;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn armed_hold_stops_tracked_exec_and_settling_from_the_pin_continues_or_kills() {
        if !root_or_skip(
            "armed_hold_stops_tracked_exec_and_settling_from_the_pin_continues_or_kills",
        ) {
            return;
        }
        let base = PathBuf::from(format!(
            "/sys/fs/bpf/custody-test-hold-{}",
            std::process::id()
        ));
        let _cleanup = PinCleanup(base.clone());
        let l = loader::load(&loader::Options {
            observe_all: false,
            floor: false,
            tls_binaries: Vec::new(),
            netns: 0,
            pin_dir: Some(base.clone()),
        })
        .expect("load programs");
        let mut ebpf = l.ebpf;
        let links = Attached(l.links);
        let mut tracked = l.tracked;
        let mut holds = Holds::attach(&mut ebpf, hold::TRACKED).unwrap();

        let secret = "sk-proj-HoLdTeStAbCdEfGhIjKlMnOpQrStUvWx0123456789";
        let key = FleetKey::from_bytes([7; 32]);
        let fp = key.fingerprint(secret.as_bytes());

        // Disarmed: a tracked exec runs through.
        let mut free = Waiting::start(&[], "echo ran");
        tracked
            .insert(free.child.id(), Tracked::new(1, 0), 0)
            .unwrap();
        free.go();
        let mut line = String::new();
        BufReader::new(free.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ran");
        assert!(holds.entries().is_empty());

        holds.arm(true).unwrap();
        // Untracked: not held in the "tracked" scope.
        let mut untracked = Waiting::start(&[], "echo ran");
        untracked.go();
        let mut line = String::new();
        BufReader::new(untracked.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ran", "an untracked exec is not held");

        // Tracked: stopped at exec, before it can print.
        let mut clean = Waiting::start(&[], "echo ran");
        let mut bad = Waiting::start(&[("OPENAI_API_KEY", secret)], "echo ran");
        for w in [&clean, &bad] {
            tracked.insert(w.child.id(), Tracked::new(1, 0), 0).unwrap();
        }
        clean.go();
        bad.go();
        for w in [&clean, &bad] {
            assert_eq!(
                wait_state(w.child.id(), 'T', Duration::from_secs(20)),
                Some('T'),
                "held at exec"
            );
        }
        let pids: Vec<u32> = {
            let mut p: Vec<u32> = holds.entries().iter().map(|e| e.0).collect();
            p.sort_unstable();
            p
        };
        let mut want = vec![clean.child.id(), bad.child.id()];
        want.sort_unstable();
        assert_eq!(pids, want);

        // The daemon goes away (programs unloaded), a new one starts on the same pins
        // and settles what it finds.
        holds.arm(false).unwrap();
        drop(holds);
        drop(links);
        drop(tracked);
        drop(ebpf);
        let l2 = loader::load(&loader::Options {
            observe_all: false,
            floor: false,
            tls_binaries: Vec::new(),
            netns: 0,
            pin_dir: Some(base.clone()),
        })
        .expect("reload programs");
        let mut ebpf2 = l2.ebpf;
        let _links2 = Attached(l2.links);
        let mut again = Holds::attach(&mut ebpf2, hold::TRACKED).unwrap();
        assert_eq!(again.entries().len(), 2, "holds survive in the pinned map");
        let mut judge = TestJudge {
            key,
            revoked: fp,
            enforced: Vec::new(),
        };
        assert_eq!(again.sweep(Duration::ZERO, &mut judge), 2);
        assert_eq!(judge.enforced, vec![bad.child.id()]);
        assert!(again.entries().is_empty());
        assert_eq!((again.stats.resumed, again.stats.killed), (1, 1));
        let mut line = String::new();
        BufReader::new(clean.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ran", "the clean process was continued");
        let st = bad.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            st.signal(),
            Some(libc::SIGKILL),
            "the revoked one was killed"
        );
        let mut rest = String::new();
        let _ = BufReader::new(bad.child.stdout.take().unwrap()).read_line(&mut rest);
        assert!(rest.is_empty(), "the revoked process never ran: {rest:?}");
    }

    /// A Python TLS client (system libssl) that waits for one stdin line, connects to
    /// 127.0.0.1:PORT and sends each further argument with its own `sendall` (one
    /// SSL_write_ex each), then prints the response's status line.
    struct TlsClient {
        child: Child,
    }

    impl TlsClient {
        fn start(port: u16, parts: &[&str]) -> TlsClient {
            let child = Command::new("python3")
                .args([
                    "-c",
                    "import socket, ssl, sys\nsys.stdin.readline()\nctx = ssl._create_unverified_context()\ns = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))))\nfor p in sys.argv[2:]:\n    s.sendall(p.encode())\nprint(s.recv(4096).decode().split('\\r\\n')[0], flush=True)",
                    &port.to_string(),
                ])
                .args(parts)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            TlsClient { child }
        }

        fn go(&mut self) {
            let stdin = self.child.stdin.as_mut().unwrap();
            writeln!(stdin, "go").unwrap();
            stdin.flush().unwrap();
        }

        fn line(&mut self) -> String {
            let mut l = String::new();
            let _ = BufReader::new(self.child.stdout.take().unwrap()).read_line(&mut l);
            l.trim().to_string()
        }
    }

    impl Drop for TlsClient {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The tests' HTTPS server (tests/agents/tls_server.py) on a throwaway certificate,
    /// logging the request lines it receives.
    struct TlsServer {
        child: Child,
        port: u16,
        log: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl TlsServer {
        fn start() -> TlsServer {
            let dir = tempfile::tempdir().unwrap();
            let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
            let st = Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ])
                .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "openssl req");
            let log = dir.path().join("requests.log");
            let mut child = Command::new("python3")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../tests/agents/tls_server.py"
                ))
                .args([&cert, &key, &log])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut l = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut l)
                .unwrap();
            TlsServer {
                child,
                port: l.trim().parse().unwrap(),
                log,
                _dir: dir,
            }
        }

        fn received(&self) -> String {
            std::fs::read_to_string(&self.log).unwrap_or_default()
        }
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The TLS hold with its record lost (the test never reads the ring buffer): the
    /// sweep vets every held write from the process's memory, a head written in two
    /// calls is followed into its second write, and only clean processes go on.
    #[test]
    fn held_before_send_and_vetted_from_memory_when_the_record_is_lost() {
        if !root_or_skip("held_before_send_and_vetted_from_memory_when_the_record_is_lost") {
            return;
        }
        let base = PathBuf::from(format!(
            "/sys/fs/bpf/custody-test-tlshold-{}",
            std::process::id()
        ));
        let _cleanup = PinCleanup(base.clone());
        let l = loader::load(&loader::Options {
            observe_all: false,
            floor: false,
            tls_binaries: Vec::new(),
            netns: 0,
            pin_dir: Some(base.clone()),
        })
        .expect("load programs");
        if !l
            .features
            .iter()
            .any(|f| f.name.starts_with("tls:") && f.active)
        {
            assert!(
                std::env::var("CUSTODY_REQUIRE_BPF").as_deref() != Ok("1"),
                "no libssl to hook"
            );
            eprintln!("skipping: no libssl hooked on this host");
            return;
        }
        let mut ebpf = l.ebpf;
        let _links = Attached(l.links);
        let mut tracked = l.tracked;
        let mut holds = Holds::attach(&mut ebpf, hold::TRACKED).unwrap();
        holds.arm(true).unwrap();
        let server = TlsServer::start();

        let revoked = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyZXZva2VkIn0.bm90LWEtcmVhbC1zaWduYXR1cmU";
        let fp = FleetKey::from_bytes([9; 32]).fingerprint(revoked.as_bytes());
        let head = |path: &str, token: &str| {
            format!(
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            )
        };
        let clean_req = head("/clean", "some-other-token-0123456789abcdef");
        let bad_req = head("/revoked", revoked);
        let split_first = "GET /split HTTP/1.1\r\nHost: localhost\r\n";
        let split_rest = format!("Authorization: Bearer {revoked}\r\nConnection: close\r\n\r\n");
        let mut clean = TlsClient::start(server.port, &[&clean_req]);
        let mut bad = TlsClient::start(server.port, &[&bad_req]);
        let mut split = TlsClient::start(server.port, &[split_first, &split_rest]);
        let mut untracked = TlsClient::start(server.port, &[&bad_req]);
        for c in [&clean, &bad, &split] {
            tracked.insert(c.child.id(), Tracked::new(1, 0), 0).unwrap();
        }
        untracked.go();
        assert!(
            untracked.line().starts_with("HTTP/1.1 200"),
            "an untracked process is not held in the tracked scope"
        );
        for c in [&mut clean, &mut bad, &mut split] {
            c.go();
        }
        for c in [&clean, &bad, &split] {
            assert_eq!(
                wait_state(c.child.id(), 'T', Duration::from_secs(20)),
                Some('T'),
                "held at SSL_write"
            );
        }
        let mut judge = TestJudge {
            key: FleetKey::from_bytes([9; 32]),
            revoked: fp,
            enforced: Vec::new(),
        };
        assert!(
            holds.entries().iter().all(|(_, h)| h.is_tls()),
            "TLS holds are marked as such"
        );
        assert_eq!(holds.sweep(Duration::ZERO, &mut judge), 3);
        assert_eq!(judge.enforced, vec![bad.child.id()]);
        assert!(clean.line().starts_with("HTTP/1.1 200"), "clean: continued");
        // The split head: its first write is clean but unfinished, so the
        // connection's next write is held too, and it carries the revoked token.
        assert_eq!(
            wait_state(split.child.id(), 'T', Duration::from_secs(20)),
            Some('T'),
            "the rest of the head is held"
        );
        assert_eq!(holds.sweep(Duration::ZERO, &mut judge), 1);
        assert_eq!(judge.enforced, vec![bad.child.id(), split.child.id()]);
        use std::os::unix::process::ExitStatusExt;
        for c in [&mut bad, &mut split] {
            assert_eq!(c.child.wait().unwrap().signal(), Some(libc::SIGKILL));
        }
        std::thread::sleep(Duration::from_millis(300));
        let seen = server.received();
        assert!(seen.contains("GET /clean"), "{seen:?}");
        assert_eq!(
            seen.matches("GET /revoked").count(),
            1,
            "only the untracked sender's request arrived: {seen:?}"
        );
        let t = &holds.stats.tls;
        assert_eq!((t.resumed, t.killed, t.unvetted), (2, 2, 0));
        assert_eq!(t.continued_heads, 1);
        assert!(t.vetted_from_memory >= 4, "{t:?}");
        assert!(holds.entries().is_empty());
    }
}
