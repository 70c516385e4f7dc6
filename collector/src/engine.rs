//! The collector's core without the network: validates and stores event batches
//! (dedupe by host and sequence number), maintains the chain index and the fleet
//! inventory, and answers queries. The gRPC services and the benchmark both drive
//! it through this API.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Result;
use custody_proto::admin::v1::AuditEntry;
use custody_proto::sensor::v1::{Event, EventBatch, EventKind, Heartbeat, Hello};
use prost::Message;
use tokio::sync::broadcast;

use crate::audit::AuditLog;
use crate::auth::now_ns;
use crate::block::{BlockBuilder, BlockMeta, BlockSummary, Part};
use crate::chain::{ChainIndex, Edge, Half, Node};
use crate::fleet::{AgentRecord, CredentialRecord, Fleet, HostRecord};
use crate::store::{self, BlockCache, EventKey, Store};

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
    /// Batches stored (rejected ones are in `batches_rejected`).
    pub batches: AtomicU64,
    /// Stored events by kind, indexed as [`EventKind::ALL`].
    pub events_by_kind: [AtomicU64; EventKind::ALL.len()],
    /// Events handed to policy evaluation (its queue depth is this minus what the
    /// evaluator took).
    pub policy_enqueued: AtomicU64,
    pub retention_runs: AtomicU64,
    pub retention_deleted_events: AtomicU64,
    pub retention_deleted_bytes: AtomicU64,
    /// Unix ns of the end of the last retention pass.
    pub retention_last_ns: AtomicU64,
}

/// Where the stored events of one process (or host) are.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Stored events.
    pub total: u64,
    /// (block id, earliest key of these events in the block, how many), by block id.
    pub blocks: Vec<(u64, EventKey, u32)>,
}

impl Placement {
    fn set(&mut self, block_id: u64, min: EventKey, count: u32) {
        // Nearly always the newest block.
        let at = match self.blocks.last() {
            Some(l) if l.0 < block_id => Err(self.blocks.len()),
            _ => self.blocks.binary_search_by_key(&block_id, |b| b.0),
        };
        match at {
            Ok(i) => {
                self.total = self.total - self.blocks[i].2 as u64 + count as u64;
                self.blocks[i] = (block_id, min, count);
            }
            Err(i) => {
                self.total += count as u64;
                self.blocks.insert(i, (block_id, min, count));
            }
        }
    }

    fn remove(&mut self, block_id: u64) {
        if let Ok(i) = self.blocks.binary_search_by_key(&block_id, |b| b.0) {
            self.total -= self.blocks[i].2 as u64;
            self.blocks.remove(i);
        }
    }
}

fn set_parts(map: &mut HashMap<String, Placement>, block_id: u64, parts: Vec<Part>) {
    for p in parts {
        match map.get_mut(p.name.as_str()) {
            Some(pl) => pl.set(block_id, p.min, p.count),
            None => {
                let mut pl = Placement::default();
                pl.set(block_id, p.min, p.count);
                map.insert(p.name, pl);
            }
        }
    }
}

fn remove_parts(map: &mut HashMap<String, Placement>, block_id: u64, parts: &[Part]) {
    for p in parts {
        if let Some(pl) = map.get_mut(p.name.as_str()) {
            pl.remove(block_id);
            if pl.blocks.is_empty() {
                map.remove(p.name.as_str());
            }
        }
    }
}

pub struct State {
    pub chains: ChainIndex,
    pub fleet: Fleet,
    next_event_id: u64,
    pub stored_bytes: u64,
    pub stored_events: u64,
    /// Every stored block by id (the id of its first event).
    pub(crate) blocks: BTreeMap<u64, BlockMeta>,
    /// The block new events are appended to.
    pub(crate) open: BlockBuilder,
    /// Blocks holding each process's events, by exec id.
    pub(crate) execs: HashMap<String, Placement>,
    /// Blocks holding each host's events.
    pub(crate) hosts: HashMap<String, Placement>,
}

impl State {
    /// Stored events of one process.
    pub fn exec_event_count(&self, exec_id: &str) -> u64 {
        self.execs.get(exec_id).map(|p| p.total).unwrap_or(0)
    }

    /// Where one process's events are stored.
    pub fn exec_placement(&self, exec_id: &str) -> Option<&Placement> {
        self.execs.get(exec_id)
    }

    /// Where one host's events are stored.
    pub fn host_placement(&self, host: &str) -> Option<&Placement> {
        self.hosts.get(host)
    }

    /// Blocks in the store.
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// Starts a new open block (the current one stays as stored).
    pub(crate) fn reset_open_block(&mut self) {
        self.open = BlockBuilder::new(self.next_event_id);
    }

    /// Records a block (re)write in `batch` and in the in-memory indexes. `old` is
    /// the block's previous summary when parts of it may have gone.
    pub(crate) fn put_block(
        &mut self,
        batch: &mut sled::Batch,
        id: u64,
        value: Option<Vec<u8>>,
        old: Option<&BlockSummary>,
        new: Option<BlockSummary>,
    ) {
        if let Some(old) = old {
            remove_parts(&mut self.execs, id, &old.execs);
            remove_parts(&mut self.hosts, id, &old.hosts);
        }
        match (value, new) {
            (Some(value), Some(new)) => {
                batch.insert(&store::b_key(id), value);
                batch.insert(&store::d_key(id), new.encode());
                self.blocks.insert(id, new.meta);
                set_parts(&mut self.execs, id, new.execs);
                set_parts(&mut self.hosts, id, new.hosts);
            }
            _ => {
                batch.remove(&store::b_key(id));
                batch.remove(&store::d_key(id));
                self.blocks.remove(&id);
            }
        }
    }

    /// The first `n` keys of one process's events in key order: its blocks are
    /// read in order of the earliest of its events there, until the next block
    /// cannot hold anything earlier than the n-th key found.
    pub(crate) fn first_exec_keys(
        &self,
        cache: &mut BlockCache<'_>,
        exec_id: &str,
        n: usize,
    ) -> Result<Vec<EventKey>> {
        let mut keys: Vec<EventKey> = vec![];
        let Some(pl) = self.execs.get(exec_id) else {
            return Ok(keys);
        };
        if n == 0 {
            return Ok(keys);
        }
        let mut order: Vec<&(u64, EventKey, u32)> = pl.blocks.iter().collect();
        order.sort_by_key(|b| b.1);
        for &&(block_id, min, _) in &order {
            if keys.len() >= n {
                keys.sort_unstable();
                keys.truncate(n);
                if min > keys[n - 1] {
                    break;
                }
            }
            if let Some(b) = cache.block(block_id)? {
                keys.extend(b.keys_of(exec_id));
            }
        }
        keys.sort_unstable();
        keys.truncate(n);
        Ok(keys)
    }
}

pub struct Engine {
    pub(crate) store: Store,
    pub(crate) state: RwLock<State>,
    /// Held by whatever writes to the store, from building its batch until the
    /// batch is applied: the open block is rewritten by every ingest group, and two
    /// writers applying out of order would lose events.
    pub(crate) write_gate: Mutex<()>,
    tail: broadcast::Sender<Arc<StoredEvent>>,
    connected: Mutex<HashMap<String, usize>>,
    pub metrics: Metrics,
    audit: AuditLog,
    /// Every stored event also goes here (policy evaluation); a full channel holds
    /// ingest back rather than skip an event.
    policy_sink: Mutex<Option<std::sync::mpsc::SyncSender<Arc<StoredEvent>>>>,
}

impl Engine {
    /// Opens the store in `dir` and rebuilds the in-memory indexes from it.
    pub fn open(dir: &Path) -> Result<Engine> {
        let store = Store::open(dir)?;
        match store.meta("layout")? {
            0 if store.has_legacy_events()? => anyhow::bail!(
                "store {} was written by an earlier development build of the collector \
                 (one key per event, layout 1); move it aside to start empty",
                dir.display()
            ),
            0 => {
                let mut b = sled::Batch::default();
                Store::put_meta(&mut b, "layout", store::LAYOUT);
                store.apply(b)?;
            }
            store::LAYOUT => {}
            v => anyhow::bail!(
                "store {} has layout {v}, which this collector does not know (it writes \
                 layout {}); use a newer collector",
                dir.display(),
                store::LAYOUT
            ),
        }
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
        let next_event_id = store.meta("next_event_id")?.max(1);
        let (mut blocks, mut execs, mut hosts) = (BTreeMap::new(), HashMap::new(), HashMap::new());
        for (id, s) in store.load_summaries()? {
            blocks.insert(id, s.meta);
            set_parts(&mut execs, id, s.execs);
            set_parts(&mut hosts, id, s.hosts);
        }
        let state = State {
            chains: ChainIndex::restore(nodes, edges, pending),
            fleet,
            next_event_id,
            stored_bytes: store.meta("stored_bytes")?,
            stored_events: store.meta("stored_events")?,
            blocks,
            // A fresh block: the last one stored stays as it is.
            open: BlockBuilder::new(next_event_id),
            execs,
            hosts,
        };
        let (tail, _) = broadcast::channel(4096);
        let audit = AuditLog::open(&store)?;
        Ok(Engine {
            store,
            state: RwLock::new(state),
            write_gate: Mutex::new(()),
            tail,
            connected: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            audit,
            policy_sink: Mutex::new(None),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
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
                // Sequence numbers increase within a batch (validated), so the
                // high-water mark only matters for the first events.
                let hwm = st.fleet.hosts.get(&host).map(|h| h.last_seq).unwrap_or(0);
                let (mut last_seq, mut newest, mut skewed) = (0, 0, 0);
                let mut host_ix: Option<(u64, u32)> = None;
                let mut kinds = [0u64; EventKind::ALL.len()];
                for ev in eb.events {
                    if ev.seq <= hwm {
                        out.duplicates += 1;
                        continue;
                    }
                    let mut t = ev.time_ns;
                    if t == 0 || t > now + MAX_FUTURE_SKEW_NS {
                        t = now;
                        skewed += 1;
                    }
                    let id = st.next_event_id;
                    st.next_event_id += 1;
                    let key = store::event_key(t, id);
                    let size = u32::try_from(ev.encoded_len()).unwrap_or(u32::MAX);
                    st.stored_bytes += size as u64;
                    st.stored_events += 1;
                    let exec_id = ev
                        .process
                        .as_ref()
                        .map(|p| p.exec_id.as_str())
                        .unwrap_or("");
                    let new_process = !exec_id.is_empty() && st.chains.node(exec_id).is_none();
                    st.chains.observe(&ev);
                    st.fleet.observe(&ev, new_process);
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
                if out.stored > 0 || out.duplicates > 0 {
                    let h = st.fleet.host_mut(&host);
                    if out.stored > 0 {
                        h.last_seq = last_seq;
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
                st.put_block(&mut batch, w.id, Some(w.value), None, Some(w.summary));
            }
            Self::persist_changes(st, &mut batch);
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

    pub(crate) fn gate(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One stored event by key.
    pub fn get_event(&self, k: &EventKey) -> Result<Option<Event>> {
        let st = self.read();
        BlockCache::new(&self.store, &st.blocks).event(k)
    }

    /// The first `n` keys of one process's events, in key order.
    pub fn first_exec_keys(&self, exec_id: &str, n: usize) -> Result<Vec<EventKey>> {
        let st = self.read();
        let mut cache = BlockCache::new(&self.store, &st.blocks);
        st.first_exec_keys(&mut cache, exec_id, n)
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

    /// Writes what changed outside ingest (hello, heartbeat). The caller holds the
    /// write gate (taken before the state lock).
    pub(crate) fn persist_now(&self, st: &mut State) -> Result<()> {
        let mut batch = sled::Batch::default();
        Self::persist_changes(st, &mut batch);
        self.store.apply(batch)
    }

    /// A sensor said hello: records what it reported and returns the sequence
    /// number to resume from.
    pub fn hello(&self, host: &str, h: &Hello) -> Result<u64> {
        let _gate = self.gate();
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
        let _gate = self.gate();
        let mut st = self.write();
        let r = st.fleet.host_mut(host);
        r.last_seen_ns = now_ns();
        r.spool_dropped = hb.spool_dropped;
        r.spool_depth = hb.spool_depth;
        r.counters = hb.counters.iter().map(|(k, v)| (k.clone(), *v)).collect();
        self.persist_now(&mut st)
    }

    pub fn enrolled(&self, host: &str) -> Result<()> {
        let _gate = self.gate();
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
        self.audit.append(&self.store, entry)
    }

    /// Newest first, down to `since_ns`.
    pub fn audit_log(&self, since_ns: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        AuditLog::list(&self.store, since_ns, limit)
    }
}
