//! Reading stored events through the block directory: time-ordered scans over the
//! blocks that can hold what is asked for (all events, a set of processes, one
//! host), merged in key order and reading a block only once the scan reaches it,
//! and a per-query block cache for point lookups. Works over any [`Store`].

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use anyhow::Result;

use super::Store;
use super::block::{Block, BlockMeta, EntryHead};
use crate::event_key::{EventKey, event_key_id, event_key_time};

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

    fn ok(&self, e: &EntryHead) -> bool {
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
    store: &'a dyn Store,
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
        store: &'a dyn Store,
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
        let Some(b) = self.store.block(block_id)? else {
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
    store: &'a dyn Store,
    dir: &'a BTreeMap<u64, BlockMeta>,
    blocks: HashMap<u64, Option<Arc<Block>>>,
}

const CACHE_BLOCKS: usize = 256;

impl<'a> BlockCache<'a> {
    pub fn new(store: &'a dyn Store, dir: &'a BTreeMap<u64, BlockMeta>) -> BlockCache<'a> {
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
        let b = self.store.block(block_id)?.map(Arc::new);
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
