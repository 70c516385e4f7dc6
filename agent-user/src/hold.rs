//! Revocation hold: while at least one credential revocation is cached on the host,
//! the kernel stops (SIGSTOP) every process it holds at exec — tracked ones by
//! default — before the new image runs, and records it in the pinned `HELD` map. The
//! daemon vets the environment against the revoked fingerprints and then continues
//! the process (SIGCONT), or kills or quarantines it per the revocation. So a process
//! started with a revoked credential in its environment cannot connect anywhere.
//!
//! The exec record of a held process wakes the daemon at once; a periodic sweep
//! settles any hold the record path missed (record lost, or still queued), from
//! `/proc/PID/environ`, and a restarted daemon settles what a previous one left. Only
//! processes in `HELD` (stopped by our program, same start time) are ever continued:
//! a job-control stop by a user is left alone.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use agent_ebpf::{Held, hold};
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

/// Hold counters, for `custodyd status` and the metrics.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HoldStats {
    /// Processes are being held at exec (revocations cached and enforcement up).
    pub armed: bool,
    /// "tracked", "all" or "off".
    pub scope: String,
    /// Holds not settled yet.
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
}

impl HoldStats {
    pub fn settled(&self) -> u64 {
        self.resumed + self.killed + self.quarantined
    }

    fn observe(&mut self, ns: u64) {
        self.latency_sum_ns += ns;
        self.latency_max_ns = self.latency_max_ns.max(ns);
        if self.latency_buckets.len() != LATENCY_BUCKETS_S.len() + 1 {
            self.latency_buckets = vec![0; LATENCY_BUCKETS_S.len() + 1];
        }
        let s = ns as f64 / 1e9;
        let i = LATENCY_BUCKETS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.latency_buckets[i] += 1;
    }
}

/// A revoked credential found in a held process's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub fingerprint: String,
    /// "kill" or "quarantine".
    pub action: String,
    pub command_id: String,
}

/// What settling needs from the daemon: the revocation check and the enforcement.
pub trait Judge {
    fn revoked(&self, env: &[u8]) -> Option<Hit>;
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
    /// The environment could not be read yet: left for the sweep.
    Deferred,
    Unvetted,
}

pub struct Holds {
    held: BpfHashMap<MapData, u32, Held>,
    mode: Array<MapData, u32>,
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

impl Holds {
    /// Take the hold maps from the loaded programs (`HELD` is pinned with the other
    /// enforcement maps). Starts disarmed.
    pub fn attach(ebpf: &mut Ebpf, scope: u32) -> Result<Holds> {
        let held = BpfHashMap::try_from(ebpf.take_map("HELD").context("HELD map missing")?)?;
        let mode = Array::try_from(ebpf.take_map("HOLD").context("HOLD map missing")?)?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let mut h = Holds {
            held,
            mode,
            scope,
            armed: false,
            tick_ns: 1_000_000_000 / hz,
            stats: HoldStats {
                scope: scope_name(scope).into(),
                latency_buckets: vec![0; LATENCY_BUCKETS_S.len() + 1],
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

    /// Remove the entry if it is still this hold (a later exec may have replaced it).
    fn forget(&mut self, tgid: u32, held: &Held) {
        if self.held.get(&tgid, 0).ok().as_ref() == Some(held) {
            let _ = self.held.remove(&tgid);
        }
    }

    /// Settle one hold: vet the environment (the exec record's when complete, else
    /// /proc), then continue, kill or quarantine the process.
    pub fn settle(
        &mut self,
        tgid: u32,
        held: Held,
        env: Option<&[u8]>,
        judge: &mut dyn Judge,
        by_sweep: bool,
    ) -> Outcome {
        if self.held.get(&tgid, 0).ok() != Some(held) {
            return Outcome::NotPending;
        }
        let ticks = held.start_boottime / self.tick_ns;
        // The pidfd is taken before the start-time check: if the check passes, the
        // fd names this very process, and every signal below goes through it.
        let pidfd = pidfd_open(tgid);
        let alive = pidfd.is_some()
            && crate::enforce::same_process(tgid, ticks)
            && proc_state(tgid).is_some_and(|s| s != 'Z' && s != 'X');
        let Some(pidfd) = pidfd.filter(|_| alive) else {
            self.forget(tgid, &held);
            self.stats.gone += 1;
            return Outcome::Gone;
        };
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
                        return Outcome::Deferred;
                    }
                    tracing::warn!(
                        pid = tgid,
                        "continuing a held process whose environment stayed unreadable: {e}"
                    );
                    self.forget(tgid, &held);
                    pidfd_signal(&pidfd, libc::SIGCONT);
                    self.stats.unvetted += 1;
                    return Outcome::Unvetted;
                }
            },
        };
        let outcome = match judge.revoked(env) {
            None => {
                // Entry first: once continued, the process may exec (and be held) again.
                self.forget(tgid, &held);
                pidfd_signal(&pidfd, libc::SIGCONT);
                self.stats.resumed += 1;
                Outcome::Resumed
            }
            Some(hit) => {
                judge.enforce(tgid, ticks, held.start_boottime, &hit);
                self.forget(tgid, &held);
                if hit.action == "quarantine" {
                    pidfd_signal(&pidfd, libc::SIGCONT);
                    self.stats.quarantined += 1;
                    Outcome::Quarantined
                } else {
                    // Backstop: a stopped process never reaches the kernel kill hook's
                    // next syscall before this lands, but SIGKILL ends it where it is.
                    pidfd_signal(&pidfd, libc::SIGKILL);
                    self.stats.killed += 1;
                    Outcome::Killed
                }
            }
        };
        if by_sweep {
            self.stats.by_sweep += 1;
        }
        self.stats.observe(boot_ns().saturating_sub(held.held_ns));
        outcome
    }

    /// Settle every hold older than `min_age` (the exec record path had its chance).
    pub fn sweep(&mut self, min_age: Duration, judge: &mut dyn Judge) -> usize {
        let now = boot_ns();
        let mut n = 0;
        for (tgid, held) in self.entries() {
            if now.saturating_sub(held.held_ns) < min_age.as_nanos() as u64 {
                continue;
            }
            if !matches!(
                self.settle(tgid, held, None, judge, true),
                Outcome::NotPending | Outcome::Deferred
            ) {
                n += 1;
            }
        }
        self.stats.held_now = self.entries().len();
        n
    }
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
    use agent_user::credential::{FleetKey, scan_env};

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
        fn revoked(&self, env: &[u8]) -> Option<Hit> {
            scan_env(env, &self.key)
                .into_iter()
                .find(|c| c.fingerprint == self.revoked)
                .map(|c| Hit {
                    fingerprint: c.fingerprint,
                    action: "kill".into(),
                    command_id: "t".into(),
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
}
