//! Retention: events older than the configured age, and the oldest events while the
//! store holds more than the configured size, are deleted (with their index
//! entries); processes idle for longer than the age leave the chain index. The
//! audit log is not subject to retention.
//!
//! Size is the encoded size of stored events, tracked exactly by the engine; sled's
//! on-disk footprint follows it with a lag, as sled reclaims space in the
//! background.

use std::time::Duration;

use anyhow::Result;
use custody_proto::sensor::v1::Event;
use prost::Message;

use crate::engine::Engine;
use crate::store::{self, EventKey};

/// Deletions per write-lock hold, so ingest keeps flowing during a large cleanup.
const CHUNK: usize = 10_000;

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
        loop {
            let mut st = self.write();
            let mut batch = sled::Batch::default();
            let mut n = 0;
            let mut more = false;
            for item in self.store.events_from(None, true) {
                let (k, v): (EventKey, Vec<u8>) = item?;
                let too_old = store::event_key_time(&k) < cutoff;
                let too_big = r.max_bytes.is_some_and(|m| st.stored_bytes > m);
                if !too_old && !too_big {
                    break;
                }
                if n == CHUNK {
                    more = true;
                    break;
                }
                batch.remove(store::e_key(&k));
                if let Ok(ev) = Event::decode(&*v) {
                    batch.remove(store::s_key(&ev.host, ev.seq));
                    if let Some(p) = &ev.process {
                        batch.remove(store::x_key(&p.exec_id, &k));
                    }
                }
                st.stored_bytes = st.stored_bytes.saturating_sub(v.len() as u64);
                st.stored_events = st.stored_events.saturating_sub(1);
                n += 1;
            }
            report.events_deleted += n as u64;
            if !more {
                if cutoff > 0 {
                    report.processes_removed = st.chains.remove_idle(cutoff);
                }
                report.pending_expired = st.chains.expire_pending(now_ns);
            }
            Engine::persist_changes(&mut st, &mut batch);
            self.store.apply(batch)?;
            drop(st);
            if !more {
                break;
            }
        }
        self.store.flush()?;
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
