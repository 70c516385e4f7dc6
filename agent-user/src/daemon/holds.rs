//! Settling held processes from the loop: the hold-arming rule, the held record
//! as it arrives, holds deferred a moment (retried on the short poll) and those
//! the record path missed (the periodic sweep).

use std::time::Duration;

use anyhow::Result;

use super::Daemon;
use crate::hold;
use crate::sighting::{DaemonJudge, HeldRecord};
use crate::watch::CredentialWatch;

/// The hold-arming rule: new processes (and TLS sends) are held for vetting while
/// there is something to vet them against — cached revocations or credential rules
/// of a policy — and enforcement works to act on what is found.
pub(super) fn hold_wanted(enforcing: bool, watch: &CredentialWatch) -> bool {
    enforcing && watch.is_watching()
}

impl Daemon {
    /// Arm or disarm the hold by [`hold_wanted`] (after the revocations or the
    /// credential rules changed).
    pub(super) fn arm_holds(&mut self) {
        let on = hold_wanted(self.enforcer.is_some(), &self.watch);
        if let Some(hs) = self.holds.as_mut() {
            if let Err(e) = hs.arm(on) {
                tracing::warn!("revocation hold: {e:#}");
            }
        }
    }

    /// Run `f` with the holds and a judge over the pipeline and enforcement, then
    /// report what the judge enforced. Nothing happens when holds are unavailable.
    fn with_judge<T>(
        &mut self,
        f: impl FnOnce(&mut hold::Holds, &mut DaemonJudge<'_>) -> T,
    ) -> Result<Option<T>> {
        let Some(hs) = self.holds.as_mut() else {
            return Ok(None);
        };
        let mut judge = DaemonJudge {
            pipe: &mut self.pipe,
            watch: &mut self.watch,
            enforcer: self.enforcer.as_mut(),
            ebpf: &mut self.ebpf,
            out: Vec::new(),
        };
        let r = f(hs, &mut judge);
        let out = judge.out;
        self.report.emit_all(out)?;
        Ok(Some(r))
    }

    /// Settle holds older than `age` (the exec record path missed them).
    pub(super) fn sweep_holds(&mut self, age: Duration) -> Result<()> {
        if let Some(n) = self.with_judge(|hs, judge| hs.sweep(age, judge))? {
            if n > 0 {
                tracing::info!(settled = n, "revocation hold: settled by the sweep");
            }
        }
        Ok(())
    }

    /// Retry holds deferred a moment (their process was not stopped yet).
    pub(super) fn retry_deferred_holds(&mut self) -> Result<()> {
        if self.holds.as_ref().is_some_and(|h| h.has_deferred()) {
            self.with_judge(|hs, judge| hs.retry_deferred(judge))?;
        }
        Ok(())
    }

    /// Settle the hold a held record belongs to, if it is still pending.
    pub(super) fn settle_held(&mut self, h: HeldRecord, entry: agent_ebpf::Held) -> Result<()> {
        self.with_judge(|hs, judge| match &h {
            HeldRecord::Exec(e) => {
                let ev = e
                    .env
                    .as_deref()
                    .map_or(hold::Evidence::None, hold::Evidence::Env);
                hs.settle(e.tgid, entry, ev, judge, false);
            }
            HeldRecord::Tls { tgid, write, .. } => {
                let ev = hold::Evidence::Write(write);
                let o = hs.settle(*tgid, entry, ev, judge, false);
                tracing::debug!(
                    pid = tgid,
                    tid = write.tid,
                    len = write.len,
                    outcome = ?o,
                    "held before send"
                );
            }
        })?;
        Ok(())
    }

    /// The pending hold a held record belongs to (None once it is settled).
    pub(super) fn pending_hold(&self, h: &HeldRecord) -> Option<agent_ebpf::Held> {
        let hs = self.holds.as_ref()?;
        match h {
            HeldRecord::Exec(e) => hs.pending(e.tgid, e.held_ns),
            HeldRecord::Tls {
                tgid,
                start_boottime,
                ..
            } => hs.pending_tls(*tgid, *start_boottime),
        }
    }
}
