//! Draining the ring buffer: each kernel record is decoded, turned into events by
//! the pipeline and reported; what the record shows that enforcement must act on —
//! an open a policy forbids, a kernel policy record, a revoked or forbidden
//! credential, a held process — is acted on before the next record.

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use custody_proto::sensor::v1::{EnforcementApplied, event::Kind};

use super::{DRAIN_MAX, Daemon};
use crate::kernel::decode;
use crate::pipeline::Output;
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
            if self.policy.active() {
                if let Some(pid) = ev.process.as_ref().map(|p| p.pid) {
                    let boot = self.pipe.table.get(pid).map_or(0, |p| p.start_boottime);
                    if let Some(k) = self.policy.open_violation(&ev, boot) {
                        open_kills.push((k, boot));
                    }
                }
            }
            self.report.emit(ev)?;
        }
        self.batch = batch;
        for hit in policy_records {
            let e = self.policy.enforcement(&hit);
            tracing::warn!(pid = hit.hdr.tgid, reason = %e.reason, "kernel policy rule applied");
            let ev = self.pipe.event_for(&hit.hdr, Kind::Enforcement(e));
            self.report.emit(ev)?;
        }
        for ((pid, ticks, reason), boot) in open_kills {
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
                    action: "kill".into(),
                    reason,
                    command_id: self.policy.status.command_id.clone(),
                    seen_in: "open".into(),
                    applied,
                    error,
                    ..Default::default()
                },
            );
            self.report.emit(ev)?;
        }
        let mut violations: Vec<_> = sightings
            .iter()
            .filter_map(|s| self.watch.judge(s))
            .collect();
        // A held exec is vetted (and enforced) by its hold, with the whole
        // environment: the pipeline's own sighting of it would be a duplicate.
        let pending = held.and_then(|h| Some((self.pending_hold(&h)?, h)));
        if let Some((_, HeldRecord::Exec(h))) = &pending {
            violations.retain(|v| !(v.tgid == h.tgid && v.seen_in == "env"));
        }
        if !violations.is_empty() {
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
            self.report.emit_all(out)?;
        }
        if let Some((entry, h)) = pending {
            self.settle_held(h, entry)?;
        }
        Ok(())
    }
}
