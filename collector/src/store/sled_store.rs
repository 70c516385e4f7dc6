//! The sled store: one tree, keys prefixed by record type, so that everything one
//! ingest group changes (event blocks, indexes, processes, edges, host high-water
//! marks) is written by one atomic `apply_batch` and made durable by one flush
//! before any sensor is acked.
//!
//! Layout (all integers big-endian, so byte order is numeric order):
//! - `B` block_id:8                 -> event block (see block.rs)   events
//! - `D` block_id:8                 -> block summary                what is in a block
//! - `P` exec_id                    -> chain::Node (JSON)           process table
//! - `G` to 0x00 from 0x00 kind     -> chain::Edge (JSON)           net/http edges
//! - `N` pending key                -> Vec<chain::Half> (JSON)      half-matched edges
//! - `H` host / `A` agent / `K` fingerprint -> fleet records (JSON)
//! - `U` seq:8                      -> AuditEntry (protobuf)        audit log
//! - `R` action id / `L` alert id   -> admin Action / Alert (JSON)  records
//! - `M` name                       -> u64 counters (`layout`: this layout's
//!   version) and settings (`policy_sources`, `export` 0x00 name)
//!
//! Events live in blocks, one sled value per up to `block::BLOCK_MAX_EVENTS` events:
//! sled's cost is per key (~10 µs per insert whatever the size), so a key per event
//! and per index entry (layout 1: `E`, `S`, `X` keys) cannot reach the ingest
//! budget. An event is named by its key, time_ns:8 ++ id:8; ids are assigned in
//! arrival order and a block holds a contiguous range of them, so the block
//! directory finds an event's block from its id.
//!
//! The indexes (blocks by id, and for each process and host the blocks that hold
//! its events) are kept in memory by the engine and rebuilt from the `D` summaries
//! when a store is opened. Events of a chain are found through its processes, since
//! chain membership of a process can change when late events arrive; see chain.rs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::block::Block;
use super::{AuditRecord, BlockChange, Commit, Counters, RawSnapshot, RecordKind, Store};

pub const BLOCK: u8 = b'B';
pub const BLOCK_SUMMARY: u8 = b'D';
pub const PROCESS: u8 = b'P';
pub const EDGE: u8 = b'G';
pub const PENDING: u8 = b'N';
pub const HOST: u8 = b'H';
pub const AGENT: u8 = b'A';
pub const CREDENTIAL: u8 = b'K';
pub const AUDIT: u8 = b'U';
/// Response actions (JSON), by id.
pub const ACTION: u8 = b'R';
/// Policy alerts (JSON), by id.
pub const ALERT: u8 = b'L';
pub const META: u8 = b'M';
/// Layout 1 stored one `E` key per event (and `S`, `X` index keys).
pub const LEGACY_EVENT: u8 = b'E';
/// Version of the layout above.
pub const LAYOUT: u64 = 2;

pub fn prefixed(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 1).sum::<usize>());
    v.push(prefix);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            v.push(0);
        }
        v.extend_from_slice(p);
    }
    v
}

pub fn b_key(block_id: u64) -> [u8; 9] {
    let mut k = [BLOCK; 9];
    k[1..].copy_from_slice(&block_id.to_be_bytes());
    k
}

pub fn d_key(block_id: u64) -> [u8; 9] {
    let mut k = [BLOCK_SUMMARY; 9];
    k[1..].copy_from_slice(&block_id.to_be_bytes());
    k
}

pub fn edge_key(e: &crate::chain::Edge) -> Vec<u8> {
    prefixed(
        EDGE,
        &[e.to.as_bytes(), e.from.as_bytes(), e.kind.as_bytes()],
    )
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().expect("8 bytes"))
}

fn record_prefix(kind: RecordKind) -> u8 {
    match kind {
        RecordKind::Action => ACTION,
        RecordKind::Alert => ALERT,
    }
}

fn audit_key(seq: u64) -> Vec<u8> {
    prefixed(AUDIT, &[&seq.to_be_bytes()])
}

pub struct SledStore {
    db: sled::Db,
    dir: PathBuf,
}

impl SledStore {
    /// Opens (or creates) the store. A second collector on the same directory, a
    /// damaged one, or one in a layout this build does not write, is a startup
    /// error that names the directory.
    pub fn open(dir: &Path) -> Result<SledStore> {
        let store = SledStore::open_tree(dir)?;
        match store.meta("layout")? {
            0 if store.has_legacy_events()? => anyhow::bail!(
                "store {} was written by an earlier development build of the collector \
                 (one key per event, layout 1); move it aside to start empty",
                dir.display()
            ),
            0 => {
                store
                    .db
                    .insert(prefixed(META, &[b"layout"]), &LAYOUT.to_be_bytes())?;
            }
            LAYOUT => {}
            v => anyhow::bail!(
                "store {} has layout {v}, which this collector does not know (it writes \
                 layout {}); use a newer collector",
                dir.display(),
                LAYOUT
            ),
        }
        Ok(store)
    }

    /// Opens the sled tree without looking at what is in it.
    fn open_tree(dir: &Path) -> Result<SledStore> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create store directory {}", dir.display()))?;
        let cfg = sled::Config::new().path(dir).flush_every_ms(Some(1000));
        // sled can panic on some on-disk damage instead of returning an error. A store
        // dropped a moment ago in this process (or a collector that just exited) may
        // still hold the lock while sled's flusher winds down (it flushes every second,
        // and on a loaded machine 2 s of retries were seen to fall short): retry for
        // up to 10 s before calling the store locked.
        let mut tries = 0;
        let opened = loop {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cfg.open()));
            let locked = matches!(&r, Ok(Err(sled::Error::Io(io))) if io.kind() == std::io::ErrorKind::WouldBlock);
            tries += 1;
            if !locked || tries >= 200 {
                break r;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => {
                let hint = match &e {
                    sled::Error::Io(io)
                        if io.kind() == std::io::ErrorKind::WouldBlock
                            || io.to_string().contains("lock") =>
                    {
                        "it is locked: is another custody-collector running with this data dir?"
                    }
                    sled::Error::Corruption { .. } => {
                        "it is corrupted: restore it from a backup or move it aside to start empty \
                         (the CA and tokens live outside it)"
                    }
                    _ => "check that it is a custody store and that its files are readable",
                };
                anyhow::bail!("cannot open store {}: {e}; {hint}", dir.display());
            }
            Err(_) => anyhow::bail!(
                "cannot open store {}: sled failed while reading it (corrupted?); restore it \
                 from a backup or move it aside to start empty",
                dir.display()
            ),
        };
        Ok(SledStore {
            db,
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the store holds events in layout 1.
    fn has_legacy_events(&self) -> Result<bool> {
        Ok(self
            .db
            .scan_prefix([LEGACY_EVENT])
            .next()
            .transpose()?
            .is_some())
    }

    fn meta(&self, name: &str) -> Result<u64> {
        Ok(self
            .db
            .get(prefixed(META, &[name.as_bytes()]))?
            .map(|v| u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8])))
            .unwrap_or(0))
    }

    /// Every value under one prefix, keyed by the rest of its key.
    fn load_prefix(&self, prefix: u8) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = vec![];
        for r in self.db.scan_prefix([prefix]) {
            let (k, v) = r?;
            out.push((String::from_utf8_lossy(&k[1..]).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// Raw access to the tree, by key (tests that damage a store on purpose).
    pub fn insert(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.db.insert(key, value)?;
        Ok(())
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }

    pub fn remove(&self, key: &[u8]) -> Result<()> {
        self.db.remove(key)?;
        Ok(())
    }
}

impl Store for SledStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn load_raw(&self) -> Result<RawSnapshot> {
        let mut summaries = vec![];
        for r in self.db.scan_prefix([BLOCK_SUMMARY]) {
            let (k, v) = r?;
            if k.len() != 9 {
                continue;
            }
            summaries.push((be_u64(&k[1..]), v.to_vec()));
        }
        Ok(RawSnapshot {
            processes: self.load_prefix(PROCESS)?,
            edges: self
                .load_prefix(EDGE)?
                .into_iter()
                .map(|(_, v)| v)
                .collect(),
            pending: self.load_prefix(PENDING)?,
            hosts: self.load_prefix(HOST)?,
            agents: self.load_prefix(AGENT)?,
            credentials: self.load_prefix(CREDENTIAL)?,
            counters: Counters {
                next_event_id: self.meta("next_event_id")?,
                stored_bytes: self.meta("stored_bytes")?,
                stored_events: self.meta("stored_events")?,
            },
            summaries,
        })
    }

    fn commit(&self, c: Commit) -> Result<()> {
        let mut b = sled::Batch::default();
        for ch in c.blocks {
            match ch {
                BlockChange::Put {
                    id, value, summary, ..
                } => {
                    b.insert(&b_key(id), value);
                    b.insert(&d_key(id), summary);
                }
                BlockChange::Remove { id } => {
                    b.remove(&b_key(id));
                    b.remove(&d_key(id));
                }
            }
        }
        // The host records carry each host's high-water mark (`last_seq`), written
        // in this same batch as its events; `c.appends` needs no check here, as this
        // process is the store's only writer (sled's lock).
        for (id, v) in c.processes {
            let k = prefixed(PROCESS, &[id.as_bytes()]);
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        for e in &c.edges_added {
            b.insert(edge_key(e), serde_json::to_vec(e).expect("edge serializes"));
        }
        for e in &c.edges_removed {
            b.remove(edge_key(e));
        }
        for (k, v) in c.pending {
            let k = prefixed(PENDING, &[k.as_bytes()]);
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        for (prefix, list) in [
            (HOST, c.hosts),
            (AGENT, c.agents),
            (CREDENTIAL, c.credentials),
        ] {
            for (id, v) in list {
                let mut k = vec![prefix];
                k.extend_from_slice(id.as_bytes());
                b.insert(k, v);
            }
        }
        if let Some(n) = c.counters {
            for (name, v) in [
                ("next_event_id", n.next_event_id),
                ("stored_bytes", n.stored_bytes),
                ("stored_events", n.stored_events),
            ] {
                b.insert(prefixed(META, &[name.as_bytes()]), &v.to_be_bytes());
            }
        }
        self.db
            .apply_batch(b)
            .with_context(|| format!("write to store {} failed", self.dir.display()))
    }

    fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .with_context(|| format!("flush of store {} failed", self.dir.display()))?;
        Ok(())
    }

    fn block(&self, block_id: u64) -> Result<Option<Block>> {
        match self.db.get(b_key(block_id))? {
            Some(v) => Ok(Some(Block::decode(block_id, v).with_context(|| {
                format!(
                    "block {block_id} in store {} is corrupt",
                    self.dir.display()
                )
            })?)),
            None => Ok(None),
        }
    }

    fn put_record(&self, kind: RecordKind, id: &str, value: Vec<u8>) -> Result<()> {
        self.db
            .insert(prefixed(record_prefix(kind), &[id.as_bytes()]), value)?;
        Ok(())
    }

    fn remove_record(&self, kind: RecordKind, id: &str) -> Result<()> {
        self.db
            .remove(prefixed(record_prefix(kind), &[id.as_bytes()]))?;
        Ok(())
    }

    fn records(
        &self,
        kind: RecordKind,
    ) -> Box<dyn Iterator<Item = Result<(String, Vec<u8>)>> + '_> {
        Box::new(self.db.scan_prefix([record_prefix(kind)]).map(|r| {
            let (k, v) = r?;
            Ok((String::from_utf8_lossy(&k[1..]).into_owned(), v.to_vec()))
        }))
    }

    fn setting(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .db
            .get(prefixed(META, &[name.as_bytes()]))?
            .map(|v| v.to_vec()))
    }

    fn put_setting(&self, name: &str, value: Vec<u8>) -> Result<()> {
        self.db.insert(prefixed(META, &[name.as_bytes()]), value)?;
        Ok(())
    }

    fn audit_append(&self, seq: u64, bytes: Vec<u8>) -> Result<()> {
        self.db.insert(audit_key(seq), bytes)?;
        self.flush()
    }

    fn audit_records(
        &self,
        newest_first: bool,
    ) -> Box<dyn Iterator<Item = Result<AuditRecord>> + '_> {
        let it = self.db.scan_prefix([AUDIT]);
        let it: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if newest_first {
            Box::new(it.rev())
        } else {
            Box::new(it)
        };
        Box::new(it.map(|r| {
            let (k, v) = r?;
            // Records of the chain are keyed by their sequence number; anything else
            // under the prefix is outside it.
            let seq = if k.len() == 9 { be_u64(&k[1..]) } else { 0 };
            Ok(AuditRecord {
                seq,
                bytes: v.to_vec(),
            })
        }))
    }

    fn remove_unchained_audit(&self) -> Result<()> {
        let mut b = sled::Batch::default();
        for r in self.db.scan_prefix([AUDIT]) {
            let (k, _) = r?;
            if k.len() != 9 {
                b.remove(k);
            }
        }
        self.db.apply_batch(b)?;
        self.flush()
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_store_names_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _a = SledStore::open(dir.path()).unwrap();
        let err = SledStore::open(dir.path())
            .err()
            .expect("second open must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(msg.contains("locked") || msg.contains("lock"), "{msg}");
    }

    #[test]
    fn corrupt_store_names_directory() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.insert(vec![b'Z'; 4], vec![1; 100]).unwrap();
            s.flush().unwrap();
        }
        // Overwrite sled's files with garbage.
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::write(&p, vec![0xAB; 4096]).unwrap();
            }
        }
        let err = SledStore::open(dir.path())
            .err()
            .expect("corrupt store must not open");
        let msg = format!("{err:#}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }
}
