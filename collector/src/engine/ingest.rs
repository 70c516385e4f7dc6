//! Ingest: checking an event batch (its size and sequence numbers: all or
//! nothing), deduplicating it against the host's high-water mark, admitting each
//! event (it speaks only about the sender's own processes — host identity from the
//! certificate — or it alone is refused; its fields are capped), adding it to the
//! open block and the chain and fleet indexes, and writing everything one group of
//! batches changed with one atomic write and one flush (group commit).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use custody_proto::sensor::v1::EventBatch;
use prost::Message;

use super::{Engine, State, StoredEvent, field_caps, own_processes};
use crate::clock::now_ns;
use crate::store::block::BlockBuilder;
use crate::store::{Commit, Counters, HostAppend};

/// Events further in the future than this are stored under their arrival time (the
/// event keeps the sensor's timestamp): a skewed clock must not park events beyond
/// retention or ahead of everything else in time-ordered scans.
pub const MAX_FUTURE_SKEW_NS: u64 = 5 * 60 * 1_000_000_000;
/// Bounds on one batch; the transport bounds the message size too.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// How far above a host's high-water mark a batch may reach. Everything at or
/// below the mark is a duplicate, so one event numbered 2^63 would make every later
/// real event of the host a "duplicate". A sensor numbers its events one by one
/// and only skips what its spool dropped; losing 2^40 (about 10^12) events and
/// still reporting is not plausible, so a batch beyond it is refused instead.
pub const MAX_SEQ_JUMP: u64 = 1 << 40;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// "host_mismatch", "malformed", "too_large" or "seq_out_of_range" (a batch);
    /// "host_mismatch" or "malformed" (one event).
    pub code: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    pub stored: u32,
    pub duplicates: u32,
    /// What the sensor may now drop from its spool.
    pub up_to_seq: u64,
    /// The whole batch was refused (nothing of it is stored).
    pub rejected: Option<Rejection>,
    /// Single events refused (by seq); the rest of their batch is stored.
    pub refused: Vec<(u64, Rejection)>,
    /// Fields cut to their caps in the stored events.
    pub fields_truncated: u32,
}

impl Engine {
    /// Checks a batch before anything of it is stored: all or nothing. What each
    /// event says is checked by [`own_processes::check`] as it is stored.
    pub fn validate(batch: &EventBatch) -> Result<(), Rejection> {
        let malformed = |reason: String| Rejection {
            code: "malformed",
            reason,
        };
        if batch.events.len() > MAX_BATCH_EVENTS {
            return Err(Rejection {
                code: "too_large",
                reason: format!(
                    "batch has {} events, the limit is {MAX_BATCH_EVENTS}",
                    batch.events.len()
                ),
            });
        }
        let mut prev = 0u64;
        for ev in &batch.events {
            if ev.seq == 0 || ev.seq <= prev {
                return Err(malformed(format!(
                    "sequence numbers must be positive and increasing (got {} after {prev})",
                    ev.seq
                )));
            }
            prev = ev.seq;
        }
        if batch.first_seq != 0
            && batch
                .events
                .first()
                .is_some_and(|e| e.seq != batch.first_seq)
        {
            return Err(malformed(format!(
                "first_seq {} does not match the first event's seq",
                batch.first_seq
            )));
        }
        Ok(())
    }

    /// Refuses a batch that would move the high-water mark `hwm` implausibly far.
    fn check_seq_jump(hwm: u64, batch: &EventBatch) -> Result<(), Rejection> {
        let Some(last) = batch.events.last().map(|e| e.seq) else {
            return Ok(());
        };
        if last - hwm.min(last) > MAX_SEQ_JUMP {
            return Err(Rejection {
                code: "seq_out_of_range",
                reason: format!(
                    "event seq {last} is more than {MAX_SEQ_JUMP} above the last stored seq \
                     {hwm}: sequence numbers count events one by one; the batch is refused \
                     so that it cannot turn later events into duplicates"
                ),
            });
        }
        Ok(())
    }

    /// Stores one batch durably (flushed before returning).
    pub fn ingest(&self, host: &str, batch: EventBatch) -> Result<IngestOutcome> {
        Ok(self
            .ingest_group(vec![(host.to_owned(), batch)])?
            .pop()
            .expect("one outcome per batch"))
    }

    /// Stores several batches (possibly from several hosts) with one atomic write
    /// and one flush — group commit. Outcomes are in input order.
    pub fn ingest_group(&self, items: Vec<(String, EventBatch)>) -> Result<Vec<IngestOutcome>> {
        let mut outcomes = Vec::with_capacity(items.len());
        let mut commit = Commit::default();
        let mut published = vec![];
        let sink = self
            .policy_sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let want_tail = self.tail.receiver_count() > 0 || sink.is_some();
        let now = now_ns();
        let gate = self.gate();
        {
            let mut guard = self.write();
            let st = &mut *guard;
            let mut writes = vec![];
            for (host, eb) in items {
                let last = eb.events.last().map(|e| e.seq).unwrap_or(0);
                // Sequence numbers increase within a batch (validated), so the
                // high-water mark only matters for the first events.
                let hwm = st.fleet.hosts.get(&host).map(|h| h.last_seq).unwrap_or(0);
                if let Err(r) = Self::validate(&eb).and_then(|()| Self::check_seq_jump(hwm, &eb)) {
                    let h = st.fleet.host_mut(&host);
                    h.batches_rejected += 1;
                    self.metrics
                        .batches_rejected
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(host, code = r.code, reason = %r.reason, "rejected event batch");
                    let up_to = last.max(eb.first_seq);
                    outcomes.push(IngestOutcome {
                        up_to_seq: up_to,
                        rejected: Some(r),
                        ..Default::default()
                    });
                    continue;
                }
                let mut out = IngestOutcome {
                    up_to_seq: last,
                    ..Default::default()
                };
                let (mut first_seq, mut last_seq, mut newest, mut skewed) = (0, 0, 0, 0);
                let mut host_ix: Option<(u64, u32)> = None;
                let mut kinds = [0u64; custody_proto::sensor::v1::EventKind::ALL.len()];
                for mut ev in eb.events {
                    if ev.seq <= hwm {
                        out.duplicates += 1;
                        continue;
                    }
                    if let Err(r) = own_processes::check(&host, &mut ev) {
                        self.refused(&host, ev.seq, &r);
                        st.fleet.host_mut(&host).events_refused += 1;
                        out.refused.push((ev.seq, r));
                        continue;
                    }
                    out.fields_truncated += field_caps::cap_event(&mut ev).0;
                    let mut t = ev.time_ns;
                    if t == 0 || t > now + MAX_FUTURE_SKEW_NS {
                        t = now;
                        skewed += 1;
                    }
                    let id = st.next_event_id;
                    st.next_event_id += 1;
                    let key = crate::event_key::event_key(t, id);
                    let size = u32::try_from(ev.encoded_len()).unwrap_or(u32::MAX);
                    st.stored_bytes += size as u64;
                    st.stored_events += 1;
                    let exec_id = ev
                        .process
                        .as_ref()
                        .map(|p| p.exec_id.as_str())
                        .unwrap_or("");
                    let new_process = !exec_id.is_empty() && st.chains.node(exec_id).is_none();
                    st.chains.observe_arrived(&ev, now);
                    st.fleet.observe(&ev, new_process);
                    if first_seq == 0 {
                        first_seq = ev.seq;
                    }
                    last_seq = ev.seq;
                    newest = newest.max(ev.time_ns.min(now));
                    out.stored += 1;
                    kinds[ev.event_kind().index()] += 1;
                    if want_tail {
                        published.push(StoredEvent {
                            key,
                            chain_id: String::new(),
                            event: ev.clone(),
                        });
                    }
                    if st.open.is_full() {
                        writes.extend(st.open.take_writes());
                        st.open = BlockBuilder::new(id);
                    }
                    let hi = match host_ix {
                        Some((b, i)) if b == st.open.id => i,
                        _ => {
                            let i = st.open.host_index(&host);
                            host_ix = Some((st.open.id, i));
                            i
                        }
                    };
                    st.open.push(hi, key, size, ev);
                }
                if out.fields_truncated > 0 {
                    st.fleet.host_mut(&host).fields_truncated += u64::from(out.fields_truncated);
                    self.metrics
                        .fields_truncated
                        .fetch_add(u64::from(out.fields_truncated), Ordering::Relaxed);
                }
                if out.stored > 0 || out.duplicates > 0 {
                    let h = st.fleet.host_mut(&host);
                    if out.stored > 0 {
                        h.last_seq = last_seq;
                        commit.appends.push(HostAppend {
                            host: host.clone(),
                            first_seq,
                            last_seq,
                        });
                        h.events_stored += out.stored as u64;
                        h.newest_event_ns = h.newest_event_ns.max(newest);
                    }
                    h.clock_skewed += skewed;
                    h.duplicates += out.duplicates as u64;
                }
                self.metrics
                    .clock_skewed
                    .fetch_add(skewed, Ordering::Relaxed);
                self.metrics
                    .events_stored
                    .fetch_add(out.stored as u64, Ordering::Relaxed);
                self.metrics
                    .duplicates
                    .fetch_add(out.duplicates as u64, Ordering::Relaxed);
                self.metrics.batches.fetch_add(1, Ordering::Relaxed);
                for (i, n) in kinds.into_iter().enumerate().filter(|(_, n)| *n > 0) {
                    self.metrics.events_by_kind[i].fetch_add(n, Ordering::Relaxed);
                }
                outcomes.push(out);
            }
            writes.extend(st.open.take_writes());
            for w in writes {
                st.put_block(&mut commit, w.id, Some(w.value), None, Some(w.summary));
            }
            Self::persist_changes(st, &mut commit);
            for se in &mut published {
                let exec_id = se
                    .event
                    .process
                    .as_ref()
                    .map(|p| p.exec_id.as_str())
                    .unwrap_or("");
                se.chain_id = st.chains.chain_of(exec_id).unwrap_or("").to_owned();
            }
        }
        self.store.commit(commit)?;
        self.store.flush()?;
        drop(gate);
        for se in published {
            let se = Arc::new(se);
            if let Some(tx) = &sink {
                self.metrics.policy_enqueued.fetch_add(1, Ordering::Relaxed);
                if tx.send(se.clone()).is_err() {
                    tracing::error!("policy evaluation stopped; events are no longer evaluated");
                }
            }
            let _ = self.tail.send(se);
        }
        Ok(outcomes)
    }

    /// Counts a refused event and says so in the log, at most every few seconds: a
    /// host sending nothing but refused events must not become a flood of lines.
    fn refused(&self, host: &str, seq: u64, r: &Rejection) {
        self.metrics.events_refused.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.refusal_log.allow() {
            tracing::warn!(host, seq, code = r.code, reason = %r.reason, suppressed,
                "refused an event (the rest of its batch is kept)");
        }
    }

    /// Adds everything the in-memory indexes changed to `commit`.
    pub(super) fn persist_changes(st: &mut State, commit: &mut Commit) {
        let ch = st.chains.take_changes();
        for id in &ch.nodes {
            if let Some(n) = st.chains.node(id) {
                commit.put_process(id, n);
            }
        }
        for id in &ch.removed_nodes {
            commit.remove_process(id);
        }
        commit.edges_added.extend(ch.new_edges);
        commit.edges_removed.extend(ch.removed_edges);
        for k in &ch.pending {
            commit.set_pending(k, st.chains.pending(k));
        }
        let f = &mut st.fleet;
        for h in f.dirty_hosts.drain() {
            if let Some(r) = f.hosts.get(&h) {
                commit.put_host(&h, r);
            }
        }
        for a in f.dirty_agents.drain() {
            if let Some(r) = f.agents.get(&a) {
                commit.put_agent(&a, r);
            }
        }
        for c in f.dirty_creds.drain() {
            if let Some(r) = f.creds.get(&c) {
                commit.put_credential(&c, r);
            }
        }
        commit.counters = Some(Counters {
            next_event_id: st.next_event_id,
            stored_bytes: st.stored_bytes,
            stored_events: st.stored_events,
        });
    }
}
