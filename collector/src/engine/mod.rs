//! The collector's core without the network: validates and stores event batches
//! (dedupe by host and sequence number), maintains the chain index and the fleet
//! inventory, and answers queries. The gRPC services and the benchmark both drive
//! it through this API.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Result;
use custody_proto::admin::v1::AuditEntry;
use custody_proto::sensor::v1::{Event, Heartbeat, Hello};
use tokio::sync::broadcast;

use crate::audit::AuditLog;
use crate::chain::ChainIndex;
use crate::clock::now_ns;
use crate::event_key::EventKey;
use crate::fleet::Fleet;
use crate::store::block::BlockBuilder;
use crate::store::{BlockCache, Commit, SledStore, Store};

mod by_id;
pub mod field_caps;
pub mod group_commit;
mod identity;
mod ingest;
pub mod own_processes;
pub mod query;
pub mod retention;
mod state;

pub use by_id::Numbered;
pub use identity::{CertRefusal, RetireError};
pub use ingest::{IngestOutcome, MAX_BATCH_EVENTS, MAX_FUTURE_SKEW_NS, MAX_SEQ_JUMP, Rejection};
use state::set_parts;
pub use state::{Placement, State};

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
    /// Single events refused (another host's process named); their batches are kept.
    pub events_refused: AtomicU64,
    /// Fields of stored events, hellos and heartbeats cut to their caps.
    pub fields_truncated: AtomicU64,
    pub clock_skewed: AtomicU64,
    pub stream_errors: AtomicU64,
    /// Sensor streams refused for their certificate, by reason
    /// ([`CertRefusal::REASONS`]).
    pub certs_refused: [AtomicU64; CertRefusal::REASONS.len()],
    /// Enrollments refused because the host id is enrolled and the token was not
    /// bound to it.
    pub enrollments_refused: AtomicU64,
    /// Enrollments refused for their token (malformed, unknown, used, expired, pinned
    /// to another CA or host).
    pub enroll_tokens_refused: AtomicU64,
    /// Refused enrollments not written to the audit log: refusals are recorded at most
    /// once per interval and kind, with the count held back (see `SensorSvc`).
    pub enroll_refusals_unaudited: AtomicU64,
    /// Batches stored (rejected ones are in `batches_rejected`).
    pub batches: AtomicU64,
    /// Stored events by kind, indexed as [`EventKind::ALL`].
    pub events_by_kind: [AtomicU64; custody_proto::sensor::v1::EventKind::ALL.len()],
    /// Events handed to policy evaluation (its queue depth is this minus what the
    /// evaluator took).
    pub policy_enqueued: AtomicU64,
    pub retention_runs: AtomicU64,
    pub retention_deleted_events: AtomicU64,
    pub retention_deleted_bytes: AtomicU64,
    /// Unix ns of the end of the last retention pass.
    pub retention_last_ns: AtomicU64,
}

pub struct Engine {
    store: Arc<dyn Store>,
    state: RwLock<State>,
    /// Held by whatever writes to the store, from building its batch until the
    /// batch is applied: the open block is rewritten by every ingest group, and two
    /// writers applying out of order would lose events.
    write_gate: Mutex<()>,
    tail: broadcast::Sender<Arc<StoredEvent>>,
    connected: Mutex<HashMap<String, usize>>,
    pub metrics: Metrics,
    audit: AuditLog,
    /// Every stored event also goes here (policy evaluation); a full channel holds
    /// ingest back rather than skip an event.
    policy_sink: Mutex<Option<std::sync::mpsc::SyncSender<Arc<StoredEvent>>>>,
    /// Warnings about refused events, rate-limited.
    refusal_log: crate::log_throttle::LogThrottle,
}

impl Engine {
    /// Opens the sled store in `dir` and rebuilds the in-memory indexes from it.
    pub fn open(dir: &Path) -> Result<Engine> {
        Engine::with_store(Arc::new(SledStore::open(dir)?))
    }

    /// Rebuilds the in-memory indexes from `store` and runs on it.
    pub fn with_store(store: Arc<dyn Store>) -> Result<Engine> {
        let snap = store.load()?;
        let mut fleet = Fleet::default();
        fleet.hosts.extend(snap.hosts);
        fleet.agents.extend(snap.agents);
        fleet.creds.extend(snap.credentials);
        let next_event_id = snap.counters.next_event_id.max(1);
        let (mut blocks, mut execs, mut hosts) = (BTreeMap::new(), HashMap::new(), HashMap::new());
        for (id, s) in snap.summaries {
            blocks.insert(id, s.meta);
            set_parts(&mut execs, id, s.execs);
            set_parts(&mut hosts, id, s.hosts);
        }
        let state = State {
            chains: ChainIndex::restore(snap.processes, snap.edges, snap.pending),
            fleet,
            next_event_id,
            stored_bytes: snap.counters.stored_bytes,
            stored_events: snap.counters.stored_events,
            blocks,
            // A fresh block: the last one stored stays as it is.
            open: BlockBuilder::new(next_event_id),
            execs,
            hosts,
        };
        let (tail, _) = broadcast::channel(4096);
        let audit = AuditLog::open(&*store)?;
        Ok(Engine {
            store,
            state: RwLock::new(state),
            write_gate: Mutex::new(()),
            tail,
            connected: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            audit,
            policy_sink: Mutex::new(None),
            refusal_log: crate::log_throttle::LogThrottle::default(),
        })
    }

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// The store, shared (for parts that keep their own records in it: alerts).
    pub fn store_handle(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Sends every event stored from now on to `tx`, after it is durable.
    pub fn set_policy_sink(&self, tx: std::sync::mpsc::SyncSender<Arc<StoredEvent>>) {
        *self.policy_sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }

    /// Stops sending to the policy sink (its receiver then ends).
    pub fn clear_policy_sink(&self) {
        self.policy_sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.tail.subscribe()
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One stored event by key.
    pub fn get_event(&self, k: &EventKey) -> Result<Option<Event>> {
        let st = self.read();
        BlockCache::new(&*self.store, &st.blocks).event(k)
    }

    /// The first `n` keys of one process's events, in key order.
    pub fn first_exec_keys(&self, exec_id: &str, n: usize) -> Result<Vec<EventKey>> {
        let st = self.read();
        let mut cache = BlockCache::new(&*self.store, &st.blocks);
        st.first_exec_keys(&mut cache, exec_id, n)
    }

    /// Writes what changed outside ingest (hello, heartbeat). The caller holds the
    /// write gate (taken before the state lock).
    fn persist_now(&self, st: &mut State) -> Result<()> {
        let mut commit = Commit::default();
        Self::persist_changes(st, &mut commit);
        self.store.commit(commit)
    }

    /// A sensor said hello: records what it reported and returns the sequence
    /// number to resume from.
    pub fn hello(&self, host: &str, h: &Hello) -> Result<u64> {
        let mut h = h.clone();
        let cuts = field_caps::cap_hello(&mut h).0;
        let _gate = self.gate();
        let mut st = self.write();
        let r = st.fleet.host_mut(host);
        r.boot_id = h.boot_id.clone();
        r.sensor_version = h.sensor_version.clone();
        r.kernel_release = h.kernel_release.clone();
        r.features = h.features.clone();
        r.fields_truncated += u64::from(cuts);
        self.metrics
            .fields_truncated
            .fetch_add(u64::from(cuts), std::sync::atomic::Ordering::Relaxed);
        r.last_seen_ns = now_ns();
        let resume = r.last_seq + 1;
        self.persist_now(&mut st)?;
        Ok(resume)
    }

    pub fn heartbeat(&self, host: &str, hb: &Heartbeat) -> Result<()> {
        let mut hb = hb.clone();
        let cuts = field_caps::cap_heartbeat(&mut hb).0;
        let _gate = self.gate();
        let mut st = self.write();
        let r = st.fleet.host_mut(host);
        let now = now_ns();
        r.last_seen_ns = now;
        r.spool_dropped = hb.spool_dropped;
        r.spool_depth = hb.spool_depth;
        // A sensor older than the lag fields says only its spool depth.
        let sensor_seq = if hb.newest_seq == 0 {
            r.last_seq + hb.spool_depth
        } else {
            hb.newest_seq
        };
        r.lag = r
            .lag
            .next(now, sensor_seq, r.last_seq, hb.oldest_unacked_ns);
        r.counters = hb.counters.into_iter().collect();
        r.fields_truncated += u64::from(cuts);
        self.metrics
            .fields_truncated
            .fetch_add(u64::from(cuts), std::sync::atomic::Ordering::Relaxed);
        self.persist_now(&mut st)
    }

    pub fn set_connected(&self, host: &str, up: bool) {
        let mut c = self.connected.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.entry(host.to_owned()).or_default();
        if up {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
        // Readers (list_hosts) take the state lock before this one: never hold both
        // the other way round.
        drop(c);
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

    /// Appends to the hash-chained audit log (durably); returns the stored record.
    pub fn audit(&self, entry: AuditEntry) -> Result<AuditEntry> {
        self.audit.append(&*self.store, entry)
    }

    /// Newest first, down to `since_ns`.
    pub fn audit_log(&self, since_ns: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        AuditLog::list(&*self.store, since_ns, limit)
    }
}
