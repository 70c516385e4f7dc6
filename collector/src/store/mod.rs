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
//! - `U` time_ns:8 id:8             -> AuditEntry (protobuf)
//! - `M` name                       -> u64 counters (`layout`: this layout's version)
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

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Serialize, de::DeserializeOwned};

use crate::event_key::{EventKey, event_key_id, event_key_time};

pub mod block;

use block::{Block, BlockMeta, BlockSummary};

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

pub struct Store {
    db: sled::Db,
    dir: PathBuf,
}

impl Store {
    /// Opens (or creates) the store. A second collector on the same directory, or
    /// a damaged one, is a startup error that names the directory.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create store directory {}", dir.display()))?;
        let cfg = sled::Config::new().path(dir).flush_every_ms(Some(1000));
        // sled can panic on some on-disk damage instead of returning an error. A store
        // dropped a moment ago in this process (or a collector that just exited) may
        // still hold the lock while sled's flusher winds down: retry briefly.
        let mut tries = 0;
        let opened = loop {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cfg.open()));
            let locked = matches!(&r, Ok(Err(sled::Error::Io(io))) if io.kind() == std::io::ErrorKind::WouldBlock);
            tries += 1;
            if !locked || tries >= 40 {
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
        Ok(Store {
            db,
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn apply(&self, batch: sled::Batch) -> Result<()> {
        self.db
            .apply_batch(batch)
            .with_context(|| format!("write to store {} failed", self.dir.display()))
    }

    pub fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .with_context(|| format!("flush of store {} failed", self.dir.display()))?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    pub fn get_block(&self, block_id: u64) -> Result<Option<Block>> {
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

    /// Every block's summary, by block id.
    pub fn load_summaries(&self) -> Result<Vec<(u64, BlockSummary)>> {
        let mut out = vec![];
        for r in self.db.scan_prefix([BLOCK_SUMMARY]) {
            let (k, v) = r?;
            if k.len() != 9 {
                continue;
            }
            let id = be_u64(&k[1..]);
            let s = BlockSummary::decode(&v).with_context(|| {
                format!(
                    "summary of block {id} in store {} is corrupt",
                    self.dir.display()
                )
            })?;
            out.push((id, s));
        }
        Ok(out)
    }

    /// Whether the store holds events in layout 1.
    pub fn has_legacy_events(&self) -> Result<bool> {
        Ok(self
            .db
            .scan_prefix([LEGACY_EVENT])
            .next()
            .transpose()?
            .is_some())
    }

    pub fn put_json<T: Serialize>(batch: &mut sled::Batch, prefix: u8, key: &[u8], v: &T) {
        let mut k = vec![prefix];
        k.extend_from_slice(key);
        batch.insert(k, serde_json::to_vec(v).expect("records serialize"));
    }

    /// Every record of one type, keyed by the rest of its key.
    pub fn load_json<T: DeserializeOwned>(&self, prefix: u8) -> Result<Vec<(Vec<u8>, T)>> {
        let mut out = vec![];
        for r in self.db.scan_prefix([prefix]) {
            let (k, v) = r?;
            let rec = serde_json::from_slice(&v).with_context(|| {
                format!(
                    "corrupt record {:?} in store {}",
                    String::from_utf8_lossy(&k),
                    self.dir.display()
                )
            })?;
            out.push((k[1..].to_vec(), rec));
        }
        Ok(out)
    }

    pub fn meta(&self, name: &str) -> Result<u64> {
        Ok(self
            .db
            .get(prefixed(META, &[name.as_bytes()]))?
            .map(|v| u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8])))
            .unwrap_or(0))
    }

    pub fn put_meta(batch: &mut sled::Batch, name: &str, v: u64) {
        batch.insert(prefixed(META, &[name.as_bytes()]), &v.to_be_bytes());
    }

    pub fn insert(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.db.insert(key, value)?;
        Ok(())
    }

    pub fn remove(&self, key: &[u8]) -> Result<()> {
        self.db.remove(key)?;
        Ok(())
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>> {
        Ok(self.db.get(key)?)
    }

    /// Raw prefix scan (audit log and the like).
    pub fn scan(
        &self,
        prefix: u8,
        reverse: bool,
    ) -> Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + '_> {
        let it = self.db.scan_prefix([prefix]);
        if reverse {
            Box::new(it.rev())
        } else {
            Box::new(it)
        }
    }
}

/// Which entries a scan yields.
#[derive(Clone, Copy)]
pub enum EntryFilter<'a> {
    All,
    /// Events of these processes.
    Execs(&'a HashSet<&'a str>),
    /// Events of this host.
    Host(&'a str),
}

/// An [`EntryFilter`] resolved against one block's tables.
enum Mask {
    All,
    Procs(Vec<bool>),
    Host(u32),
}

impl Mask {
    fn of(f: EntryFilter<'_>, b: &Block) -> Option<Mask> {
        match f {
            EntryFilter::All => Some(Mask::All),
            EntryFilter::Host(h) => b
                .hosts()
                .iter()
                .position(|x| x == h)
                .map(|i| Mask::Host(i as u32)),
            EntryFilter::Execs(set) => {
                let m: Vec<bool> = (0..b.proc_count())
                    .map(|p| set.contains(b.proc_exec(p)))
                    .collect();
                m.contains(&true).then_some(Mask::Procs(m))
            }
        }
    }

    fn ok(&self, e: &block::EntryHead) -> bool {
        match self {
            Mask::All => true,
            Mask::Host(h) => e.host == *h,
            Mask::Procs(m) => e.proc_ref > 0 && m[e.proc_ref as usize - 1],
        }
    }
}

struct Cursor {
    block: Arc<Block>,
    mask: Mask,
    /// Index of the entry to yield next.
    next: usize,
}

/// Stored events in key order, merged from the blocks that can hold them: a
/// block is read only once the scan reaches its earliest (latest) key.
pub struct TimeScan<'a> {
    store: &'a Store,
    ascending: bool,
    start: Option<EventKey>,
    filter: EntryFilter<'a>,
    /// Blocks not read yet; the next to read is last.
    pending: Vec<(u128, u64)>,
    /// Open cursors by the ordinal of their next key (max-heap; ascending scans
    /// store the complement so that the smallest key comes first).
    heap: BinaryHeap<(u128, usize)>,
    /// None once exhausted (so that the block is released).
    cursors: Vec<Option<Cursor>>,
    failed: bool,
}

fn ord(k: &EventKey) -> u128 {
    u128::from_be_bytes(*k)
}

impl<'a> TimeScan<'a> {
    /// From `start` (inclusive) or from the beginning (end) when None, over the
    /// `candidates` blocks, yielding the entries `filter` accepts.
    pub fn new<'m>(
        store: &'a Store,
        candidates: impl Iterator<Item = (u64, &'m BlockMeta)>,
        start: Option<EventKey>,
        ascending: bool,
        filter: EntryFilter<'a>,
    ) -> TimeScan<'a> {
        let s = start.as_ref().map(ord);
        let mut pending: Vec<(u128, u64)> = if ascending {
            candidates
                .filter(|(_, m)| s.is_none_or(|s| ord(&m.max) >= s))
                .map(|(id, m)| (!ord(&m.min), id))
                .collect()
        } else {
            candidates
                .filter(|(_, m)| s.is_none_or(|s| ord(&m.min) <= s))
                .map(|(id, m)| (ord(&m.max), id))
                .collect()
        };
        // Ascending: smallest min last; descending: largest max last.
        pending.sort_unstable();
        TimeScan {
            store,
            ascending,
            start,
            filter,
            pending,
            heap: BinaryHeap::new(),
            cursors: vec![],
            failed: false,
        }
    }

    /// The next entry at or after (ascending; before, descending) `from` that
    /// the mask accepts. Descending, `from` is exclusive.
    fn seek(&self, b: &Block, mask: &Mask, from: usize) -> Option<usize> {
        if self.ascending {
            (from..b.entries.len()).find(|&i| mask.ok(&b.entries[i]))
        } else {
            (0..from).rev().find(|&i| mask.ok(&b.entries[i]))
        }
    }

    fn push_cursor(&mut self, c: usize) {
        let cur = self.cursors[c].as_ref().expect("open cursor");
        let k = ord(&cur.block.entries[cur.next].key());
        self.heap.push((if self.ascending { !k } else { k }, c));
    }

    fn open(&mut self, block_id: u64) -> Result<()> {
        let Some(b) = self.store.get_block(block_id)? else {
            return Ok(());
        };
        let Some(mask) = Mask::of(self.filter, &b) else {
            return Ok(());
        };
        let from = match (&self.start, self.ascending) {
            (Some(s), true) => b.lower_bound(s),
            (None, true) => 0,
            (Some(s), false) => {
                let (t, id) = (event_key_time(s), event_key_id(s));
                b.entries.partition_point(|e| (e.time, e.id) <= (t, id))
            }
            (None, false) => b.entries.len(),
        };
        if let Some(next) = self.seek(&b, &mask, from) {
            self.cursors.push(Some(Cursor {
                block: Arc::new(b),
                mask,
                next,
            }));
            self.push_cursor(self.cursors.len() - 1);
        }
        Ok(())
    }
}

impl Iterator for TimeScan<'_> {
    /// A block and the index of the entry in it.
    type Item = Result<(Arc<Block>, usize)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        // Read every block whose first key (in scan order) is not after the best
        // key seen so far: it may hold the next one.
        while let Some(&(bound, id)) = self.pending.last() {
            let need = match self.heap.peek() {
                None => true,
                Some(&(top, _)) => bound >= top,
            };
            if !need {
                break;
            }
            self.pending.pop();
            if let Err(e) = self.open(id) {
                self.failed = true;
                return Some(Err(e));
            }
        }
        let (_, c) = self.heap.pop()?;
        let cur = self.cursors[c].take().expect("open cursor");
        let i = cur.next;
        let item = (cur.block.clone(), i);
        let from = if self.ascending { i + 1 } else { i };
        if let Some(next) = self.seek(&cur.block, &cur.mask, from) {
            self.cursors[c] = Some(Cursor { next, ..cur });
            self.push_cursor(c);
        }
        Some(Ok(item))
    }
}

/// Blocks read during one query, and the events in them.
pub struct BlockCache<'a> {
    store: &'a Store,
    dir: &'a BTreeMap<u64, BlockMeta>,
    blocks: HashMap<u64, Option<Arc<Block>>>,
}

const CACHE_BLOCKS: usize = 256;

impl<'a> BlockCache<'a> {
    pub fn new(store: &'a Store, dir: &'a BTreeMap<u64, BlockMeta>) -> BlockCache<'a> {
        BlockCache {
            store,
            dir,
            blocks: HashMap::new(),
        }
    }

    pub fn block(&mut self, block_id: u64) -> Result<Option<Arc<Block>>> {
        if let Some(b) = self.blocks.get(&block_id) {
            return Ok(b.clone());
        }
        if self.blocks.len() >= CACHE_BLOCKS {
            self.blocks.clear();
        }
        let b = self.store.get_block(block_id)?.map(Arc::new);
        self.blocks.insert(block_id, b.clone());
        Ok(b)
    }

    /// The block holding the event with this key, and the entry's index.
    pub fn locate(&mut self, k: &EventKey) -> Result<Option<(Arc<Block>, usize)>> {
        let Some((&block_id, _)) = self.dir.range(..=event_key_id(k)).next_back() else {
            return Ok(None);
        };
        Ok(self
            .block(block_id)?
            .and_then(|b| b.find(k).map(|i| (b, i))))
    }

    pub fn event(&mut self, k: &EventKey) -> Result<Option<custody_proto::sensor::v1::Event>> {
        match self.locate(k)? {
            Some((b, i)) => Ok(Some(b.event(i)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_store_names_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _a = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path())
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
            let s = Store::open(dir.path()).unwrap();
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
        let err = Store::open(dir.path())
            .err()
            .expect("corrupt store must not open");
        let msg = format!("{err:#}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }
}
