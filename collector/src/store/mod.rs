//! Durable storage behind one trait, [`Store`], so that the engine does not know
//! which database holds its data. [`sled_store::SledStore`] (one embedded database per
//! collector) is the implementation today; a shared PostgreSQL store for several
//! collector instances is meant to plug in here.
//!
//! What a store keeps, and how the engine uses it:
//! - **Event blocks** ([`block`]): events are stored in blocks of up to
//!   `block::BLOCK_MAX_EVENTS`, each with a summary (time range, and which
//!   processes and hosts have events in it). The engine keeps the block directory
//!   and per-process/per-host placements in memory (rebuilt from the summaries at
//!   [`Store::load`]); time-ordered scans, filtered by process or host, read blocks
//!   through [`Store::block`] ([`scan`]).
//! - **A commit per ingest group** ([`Commit`]): the blocks written, the process
//!   table, edges and half-matched edges the chain index changed, the fleet
//!   records, the engine's counters, and for each host whose batch is in it the
//!   new high-water mark (last sequence number). All of it is applied atomically:
//!   a host's mark never moves without its events and the other way round, which
//!   is what makes re-sent batches harmless.
//! - **Records** by id ([`RecordKind`]: response actions, alerts), **settings** by
//!   name (the policy set in force, export cursors), and the **audit log**, whose
//!   appends are serialised by the caller (a hash chain) and durable on return.
//!
//! Durability: [`Store::commit`] is atomic; [`Store::flush`] makes everything
//! before it durable, and the engine flushes before any sensor is acked.

use anyhow::{Context, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::chain::{Edge, Half, Node};
use crate::fleet::{AgentRecord, CredentialRecord, HostRecord};

pub mod block;
mod scan;
pub mod sled_store;

use block::{Block, BlockMeta, BlockSummary};
pub use scan::{BlockCache, EntryFilter, TimeScan};
pub use sled_store::SledStore;

/// The engine's durable counters, written with every commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// The id the next stored event gets (ids are assigned in arrival order).
    pub next_event_id: u64,
    pub stored_bytes: u64,
    pub stored_events: u64,
}

/// A host's batch as one commit appends it: sequence numbers `first_seq..=last_seq`
/// (as far as they were new), after which `last_seq` is the host's high-water mark.
/// A store shared by several collectors applies the commit only if the mark it
/// holds is below `first_seq`; with sled, one process holds the store (its lock)
/// and the engine's mark in memory is the authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAppend {
    pub host: String,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// One block written or removed.
#[derive(Debug, Clone)]
pub enum BlockChange {
    /// A block (re)written: its encoded value, its encoded summary, and the
    /// summary's time range and size (for a store that indexes blocks by time).
    Put {
        id: u64,
        value: Vec<u8>,
        summary: Vec<u8>,
        meta: BlockMeta,
    },
    Remove {
        id: u64,
    },
}

/// Everything one ingest group (or one change outside ingest, or one retention
/// step) changed, applied atomically by [`Store::commit`]. Records travel as
/// JSON, encoded here and decoded by [`Snapshot`]'s loader: the store's
/// implementations move bytes and need not know the engine's types.
#[derive(Debug, Default)]
pub struct Commit {
    pub blocks: Vec<BlockChange>,
    /// Hosts whose events this commit appends, with their new high-water marks.
    pub appends: Vec<HostAppend>,
    /// Process table (JSON `chain::Node`), by exec id; None removes.
    pub processes: Vec<(String, Option<Vec<u8>>)>,
    pub edges_added: Vec<Edge>,
    pub edges_removed: Vec<Edge>,
    /// Half-matched edges (JSON `Vec<chain::Half>`), by pending key; None removes.
    pub pending: Vec<(String, Option<Vec<u8>>)>,
    /// Fleet records (JSON), by host id, agent id and credential fingerprint.
    pub hosts: Vec<(String, Vec<u8>)>,
    pub agents: Vec<(String, Vec<u8>)>,
    pub credentials: Vec<(String, Vec<u8>)>,
    pub counters: Option<Counters>,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
            && self.processes.is_empty()
            && self.edges_added.is_empty()
            && self.edges_removed.is_empty()
            && self.pending.is_empty()
            && self.hosts.is_empty()
            && self.agents.is_empty()
            && self.credentials.is_empty()
            && self.counters.is_none()
    }

    pub fn put_block(&mut self, id: u64, value: Vec<u8>, summary: &BlockSummary) {
        self.blocks.push(BlockChange::Put {
            id,
            value,
            summary: summary.encode(),
            meta: summary.meta,
        });
    }

    pub fn remove_block(&mut self, id: u64) {
        self.blocks.push(BlockChange::Remove { id });
    }

    pub fn put_process(&mut self, exec_id: &str, n: &Node) {
        self.processes.push((exec_id.to_owned(), Some(json(n))));
    }

    pub fn remove_process(&mut self, exec_id: &str) {
        self.processes.push((exec_id.to_owned(), None));
    }

    pub fn set_pending(&mut self, key: &str, halves: Option<&Vec<Half>>) {
        self.pending.push((key.to_owned(), halves.map(json)));
    }

    pub fn put_host(&mut self, host: &str, r: &HostRecord) {
        self.hosts.push((host.to_owned(), json(r)));
    }

    pub fn put_agent(&mut self, agent: &str, r: &AgentRecord) {
        self.agents.push((agent.to_owned(), json(r)));
    }

    pub fn put_credential(&mut self, fingerprint: &str, r: &CredentialRecord) {
        self.credentials.push((fingerprint.to_owned(), json(r)));
    }
}

/// What [`Store::load`] returns: what the engine rebuilds its indexes from.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub processes: Vec<(String, Node)>,
    pub edges: Vec<Edge>,
    pub pending: Vec<(String, Vec<Half>)>,
    pub hosts: Vec<(String, HostRecord)>,
    pub agents: Vec<(String, AgentRecord)>,
    pub credentials: Vec<(String, CredentialRecord)>,
    pub counters: Counters,
    /// Every block's summary, by block id.
    pub summaries: Vec<(u64, BlockSummary)>,
}

/// Raw records of one type as a store holds them, before decoding.
#[derive(Debug, Default)]
pub struct RawSnapshot {
    pub processes: Vec<(String, Vec<u8>)>,
    pub edges: Vec<Vec<u8>>,
    pub pending: Vec<(String, Vec<u8>)>,
    pub hosts: Vec<(String, Vec<u8>)>,
    pub agents: Vec<(String, Vec<u8>)>,
    pub credentials: Vec<(String, Vec<u8>)>,
    pub counters: Counters,
    pub summaries: Vec<(u64, Vec<u8>)>,
}

fn decode_all<T: DeserializeOwned>(
    what: &str,
    where_: &str,
    raw: Vec<(String, Vec<u8>)>,
) -> Result<Vec<(String, T)>> {
    raw.into_iter()
        .map(|(k, v)| {
            let rec = serde_json::from_slice(&v)
                .with_context(|| format!("corrupt {what} record {k:?} in store {where_}"))?;
            Ok((k, rec))
        })
        .collect()
}

impl RawSnapshot {
    /// Decodes every record; a corrupt one is an error naming it and the store.
    pub fn decode(self, where_: &str) -> Result<Snapshot> {
        let edges = self
            .edges
            .into_iter()
            .map(|v| {
                serde_json::from_slice(&v).with_context(|| {
                    format!(
                        "corrupt edge record {:?} in store {where_}",
                        String::from_utf8_lossy(&v)
                    )
                })
            })
            .collect::<Result<_>>()?;
        let summaries = self
            .summaries
            .into_iter()
            .map(|(id, v)| {
                let s = BlockSummary::decode(&v).with_context(|| {
                    format!("summary of block {id} in store {where_} is corrupt")
                })?;
                Ok((id, s))
            })
            .collect::<Result<_>>()?;
        Ok(Snapshot {
            processes: decode_all("process", where_, self.processes)?,
            edges,
            pending: decode_all("pending edge", where_, self.pending)?,
            hosts: decode_all("host", where_, self.hosts)?,
            agents: decode_all("agent", where_, self.agents)?,
            credentials: decode_all("credential", where_, self.credentials)?,
            counters: self.counters,
            summaries,
        })
    }
}

/// Records kept by id, outside the event path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Response actions (JSON `admin::v1::Action`).
    Action,
    /// Policy alerts (JSON `admin::v1::Alert`).
    Alert,
}

/// One stored audit record. `seq` is its place in the hash chain, 0 for a record
/// stored outside it (by early development builds, before the chain existed).
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub seq: u64,
    /// The protobuf `AuditEntry`, as stored (decoding is the reader's: a record
    /// that does not decode is evidence for `verify`).
    pub bytes: Vec<u8>,
}

/// Durable storage for one collector (or, later, a fleet of them).
pub trait Store: Send + Sync {
    /// Where the data lives, for messages ("store /var/lib/custody/store").
    fn location(&self) -> String;

    /// Everything the engine rebuilds its in-memory indexes from, as stored.
    fn load_raw(&self) -> Result<RawSnapshot>;

    /// [`Store::load_raw`], decoded; a corrupt record is an error naming it.
    fn load(&self) -> Result<Snapshot> {
        self.load_raw()?.decode(&self.location())
    }

    /// Applies a commit atomically (all of it or none). Durable after [`Store::flush`].
    fn commit(&self, c: Commit) -> Result<()>;

    /// Makes every commit and record write before it durable.
    fn flush(&self) -> Result<()>;

    /// One event block by id (None if it was removed meanwhile).
    fn block(&self, id: u64) -> Result<Option<Block>>;

    /// Writes (or replaces) a record; durable after [`Store::flush`].
    fn put_record(&self, kind: RecordKind, id: &str, value: Vec<u8>) -> Result<()>;

    fn remove_record(&self, kind: RecordKind, id: &str) -> Result<()>;

    /// Every record of a kind, in id order (byte order of the id).
    fn records(&self, kind: RecordKind)
    -> Box<dyn Iterator<Item = Result<(String, Vec<u8>)>> + '_>;

    /// A named setting (bytes as written), None if never written.
    fn setting(&self, name: &str) -> Result<Option<Vec<u8>>>;

    /// Writes a setting; durable after [`Store::flush`].
    fn put_setting(&self, name: &str, value: Vec<u8>) -> Result<()>;

    /// Appends record `seq` to the audit log, durably. The caller serialises
    /// appends (each record carries the hash of the one before it).
    fn audit_append(&self, seq: u64, bytes: Vec<u8>) -> Result<()>;

    /// The audit log in sequence order (newest first when `newest_first`), records
    /// outside the hash chain included (seq 0).
    fn audit_records(
        &self,
        newest_first: bool,
    ) -> Box<dyn Iterator<Item = Result<AuditRecord>> + '_>;

    /// Removes the audit records outside the hash chain (after the log has
    /// re-appended them into it).
    fn remove_unchained_audit(&self) -> Result<()>;

    /// Bytes the store takes on disk (0 if unknown).
    fn size_on_disk(&self) -> u64;
}
