//! Draining the ring buffer: each kernel record is decoded, turned into events by
//! the pipeline and reported; what the record shows that enforcement must act on —
//! an open a policy forbids, a kernel policy record, a revoked or forbidden
//! credential, a held process — is acted on before the next record.

use agent_ebpf::PolicyEvent;
use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use custody_proto::sensor::v1::{EnforcementAction, EnforcementApplied, event::Kind};

use super::{DRAIN_MAX, Daemon};
use crate::kernel::decode;
use crate::pipeline::{Output, Sighting};
use crate::sighting::{DaemonJudge, HeldRecord, held_record};

impl Daemon {
    /// Read up to [`DRAIN_MAX`] records, turn them into events and hand them out;
    /// returns how many were read (a full batch yields to timers and signals under a
    /// flood).
    pub(super) fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<usize> {
        let mut n = 0usize;
        while let Some(item) = ring.next() {
            n += 1;
            let held = self.observe(&item);
            drop(item);
            self.act_on_record(held)?;
            if n == DRAIN_MAX {
                break;
            }
        }
        if n > 0 {
            self.report.flush()?;
        }
        Ok(n)
    }

    /// The short poll: records that did not wake us, then holds deferred a moment.
    pub(super) fn on_poll(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        self.drain(ring)?;
        self.retry_deferred_holds()
    }

    /// Decode one record and run it through the pipeline (its events land in
    /// `batch`); returns the record a held process waits for, if it is one.
    fn observe(&mut self, record: &[u8]) -> Option<HeldRecord> {
        match decode::decode(record) {
            Ok(raw) if !self.args.floor => {
                let held = held_record(&raw);
                if matches!(held, Some(HeldRecord::Tls { .. })) {
                    // Vetting only: the call's own record follows at return.
                    self.pipe.stats.records += 1;
                } else {
                    self.pipe.handle(raw, &mut self.tracker, &mut self.batch);
                    // A new agent named by the rules gets them at once.
                    self.policy.sync(&self.pipe.identity);
                }
                held
            }
            Ok(_) => None,
            Err(e) => {
                self.pipe.stats.decode_errors += 1;
                tracing::debug!("skipping record: {e}");
                None
            }
        }
    }

    /// Report the record's events and act on what they show.
    fn act_on_record(&mut self, held: Option<HeldRecord>) -> Result<()> {
        let mut open_kills = Vec::new();
        let mut sightings = Vec::new();
        let mut policy_records = Vec::new();
        let mut execs = Vec::new();
        let mut batch = std::mem::take(&mut self.batch);
        for out in batch.drain(..) {
            let ev = match out {
                Output::Event(ev) => ev,
                Output::Sighting(s) => {
                    sightings.push(s);
                    continue;
                }
                Output::PolicyRecord(r) => {
                    policy_records.push(r);
                    continue;
                }
            };
            // Opens the kernel could not match (relative paths, `..`,
            // symlinks): killed after the fact.
            let mut forbidden = false;
            if self.policy.active() {
                if let Some(pid) = ev.process.as_ref().map(|p| p.pid) {
                    let boot = self.pipe.table.get(pid).map_or(0, |p| p.start_boottime);
                    if let Some(k) = self.policy.open_violation(&ev, boot) {
                        open_kills.push((k, boot));
                        forbidden = true;
                    }
                }
            }
            if matches!(ev.kind, Some(Kind::Exec(_))) {
                if let Some(p) = &ev.process {
                    execs.push(p.pid);
                }
            }
            // A forbidden open is reported in full, never summarised.
            if forbidden {
                self.report.emit(ev)?;
                continue;
            }
            let mut passed = std::mem::take(&mut self.routine_out);
            self.routine.absorb(ev, &mut passed);
            for ev in passed.drain(..) {
                self.report.emit(ev)?;
            }
            self.routine_out = passed;
        }
        self.batch = batch;
        // The binary a tracked process now runs: its TLS analysed off the loop.
        for tgid in execs {
            self.tls_on_exec(tgid)?;
        }
        for r in policy_records {
            self.report_policy_record(&r)?;
        }
        for ((pid, ticks, reason), boot) in open_kills {
            self.kill_forbidden_open(pid, ticks, boot, reason)?;
        }
        // A held exec is vetted (and enforced) by its hold, with the whole
        // environment: the pipeline's own sighting of it would be a duplicate.
        let pending = held.and_then(|h| Some((self.pending_hold(&h)?, h)));
        let vetted_exec = match &pending {
            Some((_, HeldRecord::Exec(h))) => Some(h.tgid),
            _ => None,
        };
        self.stop_violations(&sightings, vetted_exec)?;
        if let Some((entry, h)) = pending {
            self.settle_held(h, entry)?;
        }
        Ok(())
    }

    /// A kernel policy record (a connect refused, a process killed at an open),
    /// reported with the rule that applied.
    fn report_policy_record(&mut self, r: &PolicyEvent) -> Result<()> {
        let e = self.policy.enforcement(r);
        tracing::warn!(pid = r.hdr.tgid, reason = %e.reason, "kernel policy rule applied");
        let ev = self.pipe.event_for(&r.hdr, Kind::Enforcement(e));
        self.report.emit(ev)
    }

    /// Kill a process after the fact for an open a policy forbids it, and report it.
    fn kill_forbidden_open(
        &mut self,
        pid: u32,
        ticks: u64,
        boot: u64,
        reason: String,
    ) -> Result<()> {
        let (applied, error) = match self.enforcer.as_mut() {
            None => (false, "enforcement is degraded on this host".to_string()),
            Some(en) => match en.kill(&mut self.ebpf, pid, boot, ticks, 0) {
                Ok(true) => (true, String::new()),
                Ok(false) => (false, "process already gone".to_string()),
                Err(e) => (false, format!("{e:#}")),
            },
        };
        self.policy.status.killed_after_open += u64::from(applied);
        tracing::warn!(pid, applied, %reason, "policy: forbidden open");
        let ev = self.pipe.enforcement_for(
            pid,
            EnforcementApplied {
                action: EnforcementAction::Kill.into(),
                reason,
                command_id: self.policy.status.command_id.clone(),
                seen_in: "open".into(),
                applied,
                error,
                ..Default::default()
            },
        );
        self.report.emit(ev)
    }

    /// Stop the processes whose sightings the credential watch finds violations
    /// (but not a held exec's own environment: its hold vets that), and report them.
    fn stop_violations(&mut self, sightings: &[Sighting], vetted_exec: Option<u32>) -> Result<()> {
        let violations: Vec<_> = sightings
            .iter()
            .filter_map(|s| self.watch.judge(s))
            .filter(|v| !(Some(v.tgid) == vetted_exec && v.seen_in == "env"))
            .collect();
        if violations.is_empty() {
            return Ok(());
        }
        let mut judge = DaemonJudge {
            pipe: &mut self.pipe,
            watch: &mut self.watch,
            enforcer: self.enforcer.as_mut(),
            ebpf: &mut self.ebpf,
            out: Vec::new(),
        };
        for v in &violations {
            judge.stop(v);
        }
        let out = judge.out;
        self.report.emit_all(out)
    }
}
