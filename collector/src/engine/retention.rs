//! Retention: events older than the configured age, and the oldest events while the
//! store holds more than the configured size, are deleted (with their index
//! entries); processes idle for longer than the age leave the chain index. The
//! audit log is not subject to retention.
//!
//! Size is the encoded size of stored events, tracked exactly by the engine; sled's
//! on-disk footprint follows it with a lag, as sled reclaims space in the
//! background.
//!
//! Events are deleted oldest first (in key order, across blocks): a block whose
//! events all go is removed, a block that keeps some is rewritten without the
//! others, and its summary (and the in-memory indexes) follow.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;

use crate::engine::{Engine, State};
use crate::store::block::{Block, BlockSummary};
use crate::store::{Commit, EntryFilter, TimeScan};

/// Deletions per write-lock hold, so ingest keeps flowing during a large cleanup.
const CHUNK: usize = 20_000;

#[derive(Debug, Clone, Default)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub events_deleted: u64,
    pub processes_removed: usize,
    pub pending_expired: usize,
}

impl Engine {
    pub fn enforce_retention(&self, r: &Retention, now_ns: u64) -> Result<RetentionReport> {
        let cutoff = r
            .max_age
            .map(|a| now_ns.saturating_sub(a.as_nanos() as u64))
            .unwrap_or(0);
        let mut report = RetentionReport::default();
        let mut deleted_bytes = 0u64;
        loop {
            let gate = self.gate();
            let mut guard = self.write();
            let st = &mut *guard;
            let mut commit = Commit::default();
            // Which entries of which blocks go: a prefix of all events in key order.
            let mut doomed: BTreeMap<u64, (std::sync::Arc<Block>, Vec<usize>)> = BTreeMap::new();
            let mut bytes = st.stored_bytes;
            let mut n = 0;
            let mut more = false;
            let all = st.blocks.iter().map(|(id, m)| (*id, m));
            for item in TimeScan::new(&*self.store, all, None, true, EntryFilter::All) {
                let (b, i) = item?;
                let e = b.entries[i];
                let too_old = e.time < cutoff;
                let too_big = r.max_bytes.is_some_and(|m| bytes > m);
                if !too_old && !too_big {
                    break;
                }
                if n == CHUNK {
                    more = true;
                    break;
                }
                bytes = bytes.saturating_sub(e.size as u64);
                n += 1;
                doomed
                    .entry(b.id)
                    .or_insert_with(|| (b.clone(), vec![]))
                    .1
                    .push(i);
            }
            deleted_bytes += st.stored_bytes.saturating_sub(bytes);
            for (_, (b, gone)) in doomed {
                drop_entries(st, &mut commit, &b, &gone);
            }
            report.events_deleted += n as u64;
            if !more {
                if cutoff > 0 {
                    report.processes_removed = st.chains.remove_idle(cutoff);
                }
                report.pending_expired = st.chains.expire_pending(now_ns);
            }
            Engine::persist_changes(st, &mut commit);
            drop(guard);
            self.store.commit(commit)?;
            drop(gate);
            if !more {
                break;
            }
        }
        self.store.flush()?;
        let m = &self.metrics;
        m.retention_runs.fetch_add(1, Ordering::Relaxed);
        m.retention_deleted_events
            .fetch_add(report.events_deleted, Ordering::Relaxed);
        m.retention_deleted_bytes
            .fetch_add(deleted_bytes, Ordering::Relaxed);
        m.retention_last_ns
            .store(crate::clock::now_ns(), Ordering::Relaxed);
        if report.events_deleted > 0 {
            tracing::info!(
                events = report.events_deleted,
                processes = report.processes_removed,
                "retention removed old data"
            );
        }
        Ok(report)
    }
}

/// Deletes entries `gone` of block `b`: rewrites or removes the block and its
/// summary, and updates the indexes and counters.
fn drop_entries(st: &mut State, commit: &mut Commit, b: &Block, gone: &[usize]) {
    let mut is_gone = vec![false; b.entries.len()];
    for &i in gone {
        is_gone[i] = true;
        st.stored_bytes = st.stored_bytes.saturating_sub(b.entries[i].size as u64);
        st.stored_events = st.stored_events.saturating_sub(1);
    }
    let old = BlockSummary::of(b, |_| true);
    let new = BlockSummary::of(b, |i| !is_gone[i]);
    let value = new.as_ref().map(|_| b.without(|i| is_gone[i]));
    st.put_block(commit, b.id, value, old.as_ref(), new);
    // The open block is rewritten by every ingest group from memory: after this it
    // must not be, or the deleted events would come back. Start a new one.
    if b.id == st.open.id {
        st.reset_open_block();
    }
}
