//! The engine's in-memory state: the chain index, the fleet inventory, the store's
//! counters, and the block directory with, for each process and host, the blocks
//! holding its events (rebuilt from the block summaries when a store opens).

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;

use crate::chain::ChainIndex;
use crate::event_key::EventKey;
use crate::fleet::Fleet;
use crate::store::block::{BlockBuilder, BlockMeta, BlockSummary, Part};
use crate::store::{BlockCache, Commit};

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

pub(super) fn set_parts(map: &mut HashMap<String, Placement>, block_id: u64, parts: Vec<Part>) {
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
    pub(super) next_event_id: u64,
    pub stored_bytes: u64,
    pub stored_events: u64,
    /// Every stored block by id (the id of its first event).
    pub(super) blocks: BTreeMap<u64, BlockMeta>,
    /// The block new events are appended to.
    pub(super) open: BlockBuilder,
    /// Blocks holding each process's events, by exec id.
    pub(super) execs: HashMap<String, Placement>,
    /// Blocks holding each host's events.
    pub(super) hosts: HashMap<String, Placement>,
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

    /// Time of the oldest stored event (0 when the store is empty).
    pub fn oldest_event_ns(&self) -> u64 {
        self.blocks
            .values()
            .map(|b| crate::event_key::event_key_time(&b.min))
            .min()
            .unwrap_or(0)
    }

    /// Starts a new open block (the current one stays as stored).
    pub(super) fn reset_open_block(&mut self) {
        self.open = BlockBuilder::new(self.next_event_id);
    }

    /// Records a block (re)write in `commit` and in the in-memory indexes. `old` is
    /// the block's previous summary when parts of it may have gone.
    pub(super) fn put_block(
        &mut self,
        commit: &mut Commit,
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
                commit.put_block(id, value, &new);
                self.blocks.insert(id, new.meta);
                set_parts(&mut self.execs, id, new.execs);
                set_parts(&mut self.hosts, id, new.hosts);
            }
            _ => {
                commit.remove_block(id);
                self.blocks.remove(&id);
            }
        }
    }

    /// The first `n` keys of one process's events in key order: its blocks are
    /// read in order of the earliest of its events there, until the next block
    /// cannot hold anything earlier than the n-th key found.
    pub(super) fn first_exec_keys(
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
