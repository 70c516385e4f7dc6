//! Settling holds: vet, then continue, kill or quarantine the process — from the held
//! record as it arrives, on the daemon's short poll for holds deferred a moment, or
//! by the periodic sweep for holds the record path missed.

use std::time::Duration;

use agent_ebpf::Held;

use super::process::{boot_ns, pidfd_open, pidfd_signal, proc_state};
use super::{Evidence, Holds, Judge, Outcome, Verdict};

impl Holds {
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
