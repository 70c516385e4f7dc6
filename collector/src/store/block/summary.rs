//! Block summaries: a block's time range, size, and which processes and hosts
//! have events in it (how many, from which key). Stored next to each block and
//! read at start to rebuild the engine's in-memory directory and placements.
//! Layout: see the block format in `mod.rs`.

use std::collections::HashMap;

use anyhow::{Context, Result, ensure};
use prost::encoding::encode_varint;

use super::{BLOCK_MAX_EVENTS, Block, put_bytes, take_range, take_varint, to_u32};
use crate::event_key::EventKey;

/// Where the events of one process (or host) in one block are: how many, and the
/// earliest key among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub min: EventKey,
    pub count: u32,
}

/// In-memory summary of a stored block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockMeta {
    pub min: EventKey,
    pub max: EventKey,
    pub count: u32,
    /// Sum of the events' sizes (see [`EntryHead::size`]).
    pub bytes: u64,
}

/// A block's summary as persisted (so that opening a store does not read every
/// block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSummary {
    pub meta: BlockMeta,
    pub execs: Vec<Part>,
    pub hosts: Vec<Part>,
}

impl BlockSummary {
    pub fn encode(&self) -> Vec<u8> {
        let parts = self.execs.iter().chain(&self.hosts);
        let mut v = Vec::with_capacity(48 + parts.map(|p| p.name.len() + 20).sum::<usize>());
        v.extend_from_slice(&self.meta.min);
        v.extend_from_slice(&self.meta.max);
        encode_varint(self.meta.count as u64, &mut v);
        encode_varint(self.meta.bytes, &mut v);
        for list in [&self.execs, &self.hosts] {
            encode_varint(list.len() as u64, &mut v);
            for p in list {
                put_bytes(&mut v, p.name.as_bytes());
                v.extend_from_slice(&p.min);
                encode_varint(p.count as u64, &mut v);
            }
        }
        v
    }

    pub fn decode(b: &[u8]) -> Result<BlockSummary> {
        ensure!(b.len() >= 34, "block summary too short");
        let key = |pos: &mut usize| -> Result<EventKey> {
            ensure!(b.len() - *pos >= 16, "block summary truncated");
            let k = b[*pos..*pos + 16].try_into().expect("16 bytes");
            *pos += 16;
            Ok(k)
        };
        let mut pos = 0;
        let min = key(&mut pos)?;
        let max = key(&mut pos)?;
        let meta = BlockMeta {
            min,
            max,
            count: to_u32(take_varint(b, &mut pos)?)?,
            bytes: take_varint(b, &mut pos)?,
        };
        let mut lists = [vec![], vec![]];
        for list in &mut lists {
            let n = take_varint(b, &mut pos)? as usize;
            list.reserve(n.min(BLOCK_MAX_EVENTS));
            for _ in 0..n {
                let (s, l) = take_range(b, &mut pos)?;
                let name = std::str::from_utf8(&b[s..s + l])
                    .context("name in block summary is not UTF-8")?
                    .to_owned();
                let min = key(&mut pos)?;
                let count = to_u32(take_varint(b, &mut pos)?)?;
                list.push(Part { name, min, count });
            }
        }
        let [execs, hosts] = lists;
        Ok(BlockSummary { meta, execs, hosts })
    }

    /// The summary of `b` restricted to the entries `keep` accepts (None if none).
    pub fn of(b: &Block, keep: impl Fn(usize) -> bool) -> Option<BlockSummary> {
        let mut meta: Option<BlockMeta> = None;
        let mut execs: Vec<Part> = vec![];
        let mut exec_ix: HashMap<&str, usize> = HashMap::new();
        let mut hosts: Vec<Option<Part>> = vec![None; b.hosts.len()];
        for (i, e) in b.entries.iter().enumerate() {
            if !keep(i) {
                continue;
            }
            let k = e.key();
            let m = meta.get_or_insert(BlockMeta {
                min: k,
                max: k,
                count: 0,
                bytes: 0,
            });
            m.max = k;
            m.count += 1;
            m.bytes += e.size as u64;
            // Entries are in key order: the first one seen is the earliest.
            let exec = b.exec_id(i);
            if !exec.is_empty() {
                match exec_ix.get(exec) {
                    Some(&x) => execs[x].count += 1,
                    None => {
                        exec_ix.insert(exec, execs.len());
                        execs.push(Part {
                            name: exec.to_owned(),
                            min: k,
                            count: 1,
                        });
                    }
                }
            }
            let h = hosts[e.host as usize].get_or_insert_with(|| Part {
                name: b.hosts[e.host as usize].clone(),
                min: k,
                count: 0,
            });
            h.count += 1;
        }
        Some(BlockSummary {
            meta: meta?,
            execs,
            hosts: hosts.into_iter().flatten().collect(),
        })
    }
}
