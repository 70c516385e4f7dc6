//! The collector's core without the network: validates and stores event batches
//! (dedupe by host and sequence number), maintains the chain index and the fleet
//! inventory, and answers queries. The gRPC services and the benchmark both drive
//! it through this API.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Result;
use custody_proto::admin::v1::AuditEntry;
use custody_proto::sensor::v1::{Event, EventBatch, Heartbeat, Hello};
use prost::Message;
use tokio::sync::broadcast;

use crate::auth::now_ns;
use crate::chain::{ChainIndex, Edge, Half, Node};
use crate::fleet::{AgentRecord, CredentialRecord, Fleet, HostRecord};
use crate::store::{self, EventKey, Store};

/// Events further in the future than this are stored under their arrival time (the
/// event keeps the sensor's timestamp): a skewed clock must not park events beyond
/// retention or ahead of everything else in time-ordered scans.
pub const MAX_FUTURE_SKEW_NS: u64 = 5 * 60 * 1_000_000_000;
/// Bounds on one batch; the transport bounds the message size too.
pub const MAX_BATCH_EVENTS: usize = 10_000;
const MAX_STRING_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// "host_mismatch", "malformed" or "too_large".
    pub code: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    pub stored: u32,
    pub duplicates: u32,
    /// What the sensor may now drop from its spool.
    pub up_to_seq: u64,
    pub rejected: Option<Rejection>,
}

/// A stored event as the tail and queries see it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub key: EventKey,
    pub chain_id: String,
    pub event: Event,
}

/// Collector-wide counters (also exported per host in the admin API).
#[derive(Default, Debug)]
pub struct Metrics {
    pub events_stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub batches_rejected: AtomicU64,
    pub clock_skewed: AtomicU64,
    pub stream_errors: AtomicU64,
}

pub struct State {
    pub chains: ChainIndex,
    pub fleet: Fleet,
    next_event_id: u64,
    pub stored_bytes: u64,
    pub stored_events: u64,
}

pub struct Engine {
    pub(crate) store: Store,
    pub(crate) state: RwLock<State>,
    tail: broadcast::Sender<Arc<StoredEvent>>,
    connected: Mutex<HashMap<String, usize>>,
    pub metrics: Metrics,
    audit_seq: AtomicU64,
}

impl Engine {
    /// Opens the store in `dir` and rebuilds the in-memory indexes from it.
    pub fn open(dir: &Path) -> Result<Engine> {
        let store = Store::open(dir)?;
        let nodes = store
            .load_json::<Node>(store::PROCESS)?
            .into_iter()
            .map(|(k, n)| (String::from_utf8_lossy(&k).into_owned(), n))
            .collect();
        let edges = store
            .load_json::<Edge>(store::EDGE)?
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        let pending = store
            .load_json::<Vec<Half>>(store::PENDING)?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect();
        let mut fleet = Fleet::default();
        for (k, h) in store.load_json::<HostRecord>(store::HOST)? {
            fleet
                .hosts
                .insert(String::from_utf8_lossy(&k).into_owned(), h);
        }
        for (k, a) in store.load_json::<AgentRecord>(store::AGENT)? {
            fleet
                .agents
                .insert(String::from_utf8_lossy(&k).into_owned(), a);
        }
        for (k, c) in store.load_json::<CredentialRecord>(store::CREDENTIAL)? {
            fleet
                .creds
                .insert(String::from_utf8_lossy(&k).into_owned(), c);
        }
        let state = State {
            chains: ChainIndex::restore(nodes, edges, pending),
            fleet,
            next_event_id: store.meta("next_event_id")?.max(1),
            stored_bytes: store.meta("stored_bytes")?,
            stored_events: store.meta("stored_events")?,
        };
        let (tail, _) = broadcast::channel(4096);
        Ok(Engine {
            store,
            state: RwLock::new(state),
            tail,
            connected: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            audit_seq: AtomicU64::new(0),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.tail.subscribe()
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks a batch before anything of it is stored: all or nothing.
    pub fn validate(host: &str, batch: &mut EventBatch) -> Result<(), Rejection> {
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
        let prefix = format!("{host}:");
        let mut prev = 0u64;
        for ev in &mut batch.events {
            if ev.host.is_empty() {
                ev.host = host.to_owned();
            }
            if ev.host != host {
                return Err(Rejection {
                    code: "host_mismatch",
                    reason: format!(
                        "event seq {} claims host {:?} but this sensor's certificate is for {host:?}",
                        ev.seq, ev.host
                    ),
                });
            }
            if ev.seq == 0 || ev.seq <= prev {
                return Err(malformed(format!(
                    "sequence numbers must be positive and increasing (got {} after {prev})",
                    ev.seq
                )));
            }
            prev = ev.seq;
            if let Some(p) = &ev.process {
                // Exec ids name their host; a sensor may only describe its own
                // processes, or it could graft itself into other hosts' chains.
                for id in [&p.exec_id, &p.parent_exec_id] {
                    if !id.is_empty() && !id.starts_with(&prefix) {
                        return Err(Rejection {
                            code: "host_mismatch",
                            reason: format!(
                                "event seq {} names process {id:?}, which is not on host {host:?}",
                                ev.seq
                            ),
                        });
                    }
                }
                if p.argv.iter().map(String::len).sum::<usize>() > MAX_STRING_BYTES * 4
                    || p.exe.len() > MAX_STRING_BYTES
                {
                    return Err(malformed(format!(
                        "event seq {} has oversized process fields",
                        ev.seq
                    )));
                }
            }
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
        let mut batch = sled::Batch::default();
        let mut published = vec![];
        let want_tail = self.tail.receiver_count() > 0;
        let now = now_ns();
        {
            let mut st = self.write();
            for (host, mut eb) in items {
                let last = eb.events.last().map(|e| e.seq).unwrap_or(0);
                if let Err(r) = Self::validate(&host, &mut eb) {
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
                for ev in eb.events {
                    let st = &mut *st;
                    let hwm = st.fleet.hosts.get(&host).map(|h| h.last_seq).unwrap_or(0);
                    if ev.seq <= hwm {
                        out.duplicates += 1;
                        continue;
                    }
                    let mut t = ev.time_ns;
                    if t == 0 || t > now + MAX_FUTURE_SKEW_NS {
                        t = now;
                        st.fleet.host_mut(&host).clock_skewed += 1;
                        self.metrics.clock_skewed.fetch_add(1, Ordering::Relaxed);
                    }
                    let key = store::event_key(t, st.next_event_id);
                    st.next_event_id += 1;
                    let bytes = ev.encode_to_vec();
                    st.stored_bytes += bytes.len() as u64;
                    st.stored_events += 1;
                    batch.insert(store::s_key(&host, ev.seq), &key[..]);
                    let exec_id = ev
                        .process
                        .as_ref()
                        .map(|p| p.exec_id.as_str())
                        .unwrap_or("");
                    let new_process = !exec_id.is_empty() && st.chains.node(exec_id).is_none();
                    if !exec_id.is_empty() {
                        batch.insert(store::x_key(exec_id, &key), &[][..]);
                    }
                    batch.insert(store::e_key(&key), bytes);
                    st.chains.observe(&ev);
                    st.fleet.observe(&ev, new_process);
                    let h = st.fleet.host_mut(&host);
                    h.last_seq = ev.seq;
                    h.events_stored += 1;
                    h.newest_event_ns = h.newest_event_ns.max(ev.time_ns.min(now));
                    out.stored += 1;
                    if want_tail {
                        published.push(StoredEvent {
                            key,
                            chain_id: String::new(),
                            event: ev,
                        });
                    }
                }
                if out.duplicates > 0 {
                    st.fleet.host_mut(&host).duplicates += out.duplicates as u64;
                }
                self.metrics
                    .events_stored
                    .fetch_add(out.stored as u64, Ordering::Relaxed);
                self.metrics
                    .duplicates
                    .fetch_add(out.duplicates as u64, Ordering::Relaxed);
                outcomes.push(out);
            }
            Self::persist_changes(&mut st, &mut batch);
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
        self.store.apply(batch)?;
        self.store.flush()?;
        for se in published {
            let _ = self.tail.send(Arc::new(se));
        }
        Ok(outcomes)
    }

    /// Adds everything the in-memory indexes changed to `batch`.
    pub(crate) fn persist_changes(st: &mut State, batch: &mut sled::Batch) {
        let ch = st.chains.take_changes();
        for id in &ch.nodes {
            if let Some(n) = st.chains.node(id) {
                Store::put_json(batch, store::PROCESS, id.as_bytes(), n);
            }
        }
        for id in &ch.removed_nodes {
            batch.remove(store::prefixed(store::PROCESS, &[id.as_bytes()]));
        }
        for e in &ch.new_edges {
            batch.insert(
                store::edge_key(e),
                serde_json::to_vec(e).expect("edge serializes"),
            );
        }
        for e in &ch.removed_edges {
            batch.remove(store::edge_key(e));
        }
        for k in &ch.pending {
            let key = store::prefixed(store::PENDING, &[k.as_bytes()]);
            match st.chains.pending(k) {
                Some(v) => batch.insert(key, serde_json::to_vec(v).expect("halves serialize")),
                None => batch.remove(key),
            }
        }
        let f = &mut st.fleet;
        for h in f.dirty_hosts.drain() {
            if let Some(r) = f.hosts.get(&h) {
                Store::put_json(batch, store::HOST, h.as_bytes(), r);
            }
        }
        for a in f.dirty_agents.drain() {
            if let Some(r) = f.agents.get(&a) {
                Store::put_json(batch, store::AGENT, a.as_bytes(), r);
            }
        }
        for c in f.dirty_creds.drain() {
            if let Some(r) = f.creds.get(&c) {
                Store::put_json(batch, store::CREDENTIAL, c.as_bytes(), r);
            }
        }
        Store::put_meta(batch, "next_event_id", st.next_event_id);
        Store::put_meta(batch, "stored_bytes", st.stored_bytes);
        Store::put_meta(batch, "stored_events", st.stored_events);
    }

    /// Writes what changed outside ingest (hello, heartbeat, retention).
    pub(crate) fn persist_now(&self, st: &mut State) -> Result<()> {
        let mut batch = sled::Batch::default();
        Self::persist_changes(st, &mut batch);
        self.store.apply(batch)
    }

    /// A sensor said hello: records what it reported and returns the sequence
    /// number to resume from.
    pub fn hello(&self, host: &str, h: &Hello) -> Result<u64> {
        let mut st = self.write();
        let r = st.fleet.host_mut(host);
        r.boot_id = h.boot_id.clone();
        r.sensor_version = h.sensor_version.clone();
        r.kernel_release = h.kernel_release.clone();
        r.features = h.features.clone();
        r.last_seen_ns = now_ns();
        let resume = r.last_seq + 1;
        self.persist_now(&mut st)?;
        Ok(resume)
    }

    pub fn heartbeat(&self, host: &str, hb: &Heartbeat) -> Result<()> {
        let mut st = self.write();
        let r = st.fleet.host_mut(host);
        r.last_seen_ns = now_ns();
        r.spool_dropped = hb.spool_dropped;
        r.spool_depth = hb.spool_depth;
        r.counters = hb.counters.iter().map(|(k, v)| (k.clone(), *v)).collect();
        self.persist_now(&mut st)
    }

    pub fn enrolled(&self, host: &str) -> Result<()> {
        let mut st = self.write();
        st.fleet.host_mut(host).enrolled_at_ns = now_ns();
        self.persist_now(&mut st)?;
        drop(st);
        self.store.flush()
    }

    pub fn set_connected(&self, host: &str, up: bool) {
        let mut c = self.connected.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.entry(host.to_owned()).or_default();
        if up {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
        if up {
            let mut st = self.write();
            st.fleet.host_mut(host).last_seen_ns = now_ns();
        }
    }

    pub fn is_connected(&self, host: &str) -> bool {
        self.connected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .is_some_and(|n| *n > 0)
    }

    /// Appends to the audit log (durably).
    pub fn audit(&self, mut entry: AuditEntry) -> Result<()> {
        if entry.time_ns == 0 {
            entry.time_ns = now_ns();
        }
        let id = self.audit_seq.fetch_add(1, Ordering::Relaxed);
        let key = store::prefixed(store::AUDIT, &[&store::event_key(entry.time_ns, id)]);
        self.store.insert(key, entry.encode_to_vec())?;
        self.store.flush()
    }

    pub fn audit_log(&self, since_ns: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut out = vec![];
        for r in self.store.scan(store::AUDIT, true) {
            let (_, v) = r?;
            let e = AuditEntry::decode(&*v)?;
            if e.time_ns < since_ns {
                break;
            }
            out.push(e);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}
