//! Event blocks: the unit in which events are stored.
//!
//! sled costs about the same per key whatever the value size (~10 µs per insert on
//! the reference machine), so one key per event (plus index keys) caps ingest far
//! below the budget. Events are therefore stored in blocks of up to
//! [`BLOCK_MAX_EVENTS`] events (or [`BLOCK_MAX_BYTES`] of encoded data): one sled
//! value per block, plus one summary value (which processes and hosts have events
//! in it, how many, from when), from which the engine keeps its indexes in memory.
//!
//! Inside a block every distinct process record is stored once (with `tid` zeroed;
//! the thread id is kept per event) and each event is stored without its `process`
//! and `host` fields, which refer to the block's tables instead. Decoding puts them
//! back, so the event read is exactly the event stored.
//!
//! Blocks cover contiguous ranges of event ids: a block's id is the id of its first
//! event, and it holds ids up to the next block's id. Entries are sorted by event
//! key (time, id). The newest block stays open (see [`BlockBuilder`]): later ingest
//! groups append to it and rewrite it until it is full, so a trickle of small
//! groups does not produce a trickle of tiny blocks.
//!
//! Layout of a block value (integers are LEB128 varints unless noted):
//! ```text
//! u8 format (1)
//! n_hosts, n_hosts × (len, bytes)
//! n_procs, n_procs × (len, exec_id bytes, len, Process protobuf)
//! n_entries, n_entries × (time delta from the previous entry, id - block id, seq,
//!     size, host index, process index + 1 (0: none), tid, body len, body protobuf)
//! ```
//!
//! Layout of a summary value: min key (16 bytes), max key (16), count, bytes, then
//! the processes and the hosts, each as n × (len, name, min key (16), count).

use std::sync::OnceLock;

use anyhow::{Context, Result, bail, ensure};
use custody_proto::sensor::v1::{Event, Process};
use prost::Message;
use prost::encoding::{decode_varint, encode_varint};

use crate::event_key::{EventKey, event_key, event_key_id, event_key_time};

/// A block is sealed (never appended to again) at this many events...
pub const BLOCK_MAX_EVENTS: usize = 512;
/// ...or at this many bytes of event and process data.
pub const BLOCK_MAX_BYTES: usize = 48 * 1024;
const FORMAT: u8 = 1;
/// Versions of a process a new event's record is compared with.
const MAX_VERSIONS_COMPARED: usize = 4;

/// Per-event header inside a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHead {
    pub time: u64,
    pub id: u64,
    pub seq: u64,
    /// Encoded size of the whole event as the sensor sent it (what retention by
    /// size counts).
    pub size: u32,
    pub host: u32,
    /// Index into the process table plus one; 0 when the event has no process.
    pub proc_ref: u32,
    pub tid: u32,
}

impl EntryHead {
    pub fn key(&self) -> EventKey {
        event_key(self.time, self.id)
    }
}

/// Serializes a block from its parts. `entries` must be sorted by (time, id) and
/// refer to `hosts` and `procs` by index.
pub fn encode_block<'a>(
    block_id: u64,
    hosts: &[&str],
    procs: &[(&[u8], &[u8])],
    entries: impl ExactSizeIterator<Item = (EntryHead, &'a [u8])>,
    size_hint: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(size_hint + 64);
    out.push(FORMAT);
    encode_varint(hosts.len() as u64, &mut out);
    for h in hosts {
        put_bytes(&mut out, h.as_bytes());
    }
    encode_varint(procs.len() as u64, &mut out);
    for (exec, p) in procs {
        put_bytes(&mut out, exec);
        put_bytes(&mut out, p);
    }
    encode_varint(entries.len() as u64, &mut out);
    let mut prev = 0u64;
    for (h, body) in entries {
        debug_assert!(h.time >= prev, "entries must be sorted");
        debug_assert!(h.id >= block_id, "ids start at the block id");
        encode_varint(h.time - prev, &mut out);
        prev = h.time;
        encode_varint(h.id - block_id, &mut out);
        encode_varint(h.seq, &mut out);
        encode_varint(h.size as u64, &mut out);
        encode_varint(h.host as u64, &mut out);
        encode_varint(h.proc_ref as u64, &mut out);
        encode_varint(h.tid as u64, &mut out);
        put_bytes(&mut out, body);
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    encode_varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// Reads a varint and a byte range of that length from `raw` at `*pos`.
fn take_range(raw: &[u8], pos: &mut usize) -> Result<(usize, usize)> {
    let len = take_varint(raw, pos)? as usize;
    let start = *pos;
    ensure!(raw.len() - start >= len, "block truncated");
    *pos += len;
    Ok((start, len))
}

fn take_varint(raw: &[u8], pos: &mut usize) -> Result<u64> {
    let mut s = &raw[*pos..];
    let before = s.len();
    let v = decode_varint(&mut s).context("bad varint in block")?;
    *pos += before - s.len();
    Ok(v)
}

fn to_u32(v: u64) -> Result<u32> {
    u32::try_from(v).context("block field out of range")
}

struct ProcSlot {
    exec: (usize, usize),
    bytes: (usize, usize),
    decoded: OnceLock<Process>,
}

/// A stored block, decoded down to its entry table; event bodies and process
/// records are decoded on demand.
pub struct Block {
    pub id: u64,
    raw: sled::IVec,
    hosts: Vec<String>,
    procs: Vec<ProcSlot>,
    /// Sorted by (time, id).
    pub entries: Vec<EntryHead>,
    bodies: Vec<(u32, u32)>,
}

impl Block {
    pub fn decode(id: u64, raw: sled::IVec) -> Result<Block> {
        let r: &[u8] = &raw;
        ensure!(!r.is_empty(), "empty block");
        if r[0] != FORMAT {
            bail!("unknown block format {}", r[0]);
        }
        let mut pos = 1;
        let n_hosts = take_varint(r, &mut pos)? as usize;
        let mut hosts = Vec::with_capacity(n_hosts.min(1024));
        for _ in 0..n_hosts {
            let (s, l) = take_range(r, &mut pos)?;
            hosts.push(
                std::str::from_utf8(&r[s..s + l])
                    .context("host name is not UTF-8")?
                    .to_owned(),
            );
        }
        let n_procs = take_varint(r, &mut pos)? as usize;
        let mut procs = Vec::with_capacity(n_procs.min(BLOCK_MAX_EVENTS));
        for _ in 0..n_procs {
            let exec = take_range(r, &mut pos)?;
            let bytes = take_range(r, &mut pos)?;
            procs.push(ProcSlot {
                exec,
                bytes,
                decoded: OnceLock::new(),
            });
        }
        let n = take_varint(r, &mut pos)? as usize;
        let mut entries = Vec::with_capacity(n.min(BLOCK_MAX_EVENTS * 4));
        let mut bodies = Vec::with_capacity(n.min(BLOCK_MAX_EVENTS * 4));
        let mut time = 0u64;
        for _ in 0..n {
            time = time
                .checked_add(take_varint(r, &mut pos)?)
                .context("block time overflows")?;
            let id = id
                .checked_add(take_varint(r, &mut pos)?)
                .context("block id overflows")?;
            let seq = take_varint(r, &mut pos)?;
            let size = to_u32(take_varint(r, &mut pos)?)?;
            let host = to_u32(take_varint(r, &mut pos)?)?;
            let proc_ref = to_u32(take_varint(r, &mut pos)?)?;
            let tid = to_u32(take_varint(r, &mut pos)?)?;
            ensure!((host as usize) < hosts.len(), "bad host index in block");
            ensure!(
                proc_ref as usize <= procs.len(),
                "bad process index in block"
            );
            let (s, l) = take_range(r, &mut pos)?;
            entries.push(EntryHead {
                time,
                id,
                seq,
                size,
                host,
                proc_ref,
                tid,
            });
            bodies.push((s as u32, l as u32));
        }
        Ok(Block {
            id,
            raw,
            hosts,
            procs,
            entries,
            bodies,
        })
    }

    /// Index of the entry with this key.
    pub fn find(&self, k: &EventKey) -> Option<usize> {
        let want = (event_key_time(k), event_key_id(k));
        self.entries
            .binary_search_by(|e| (e.time, e.id).cmp(&want))
            .ok()
    }

    /// Index of the first entry with a key at or after `k`.
    pub fn lower_bound(&self, k: &EventKey) -> usize {
        let want = (event_key_time(k), event_key_id(k));
        self.entries.partition_point(|e| (e.time, e.id) < want)
    }

    pub fn host(&self, i: usize) -> &str {
        &self.hosts[self.entries[i].host as usize]
    }

    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Exec id of entry `i` ("" when the event has no process).
    pub fn exec_id(&self, i: usize) -> &str {
        match self.entries[i].proc_ref {
            0 => "",
            p => self.proc_exec(p as usize - 1),
        }
    }

    pub fn proc_count(&self) -> usize {
        self.procs.len()
    }

    pub fn proc_exec(&self, p: usize) -> &str {
        let (s, l) = self.procs[p].exec;
        // Exec ids were UTF-8 strings when stored; the block is CRC-checked by sled.
        std::str::from_utf8(&self.raw[s..s + l]).unwrap_or("")
    }

    pub fn proc_bytes(&self, p: usize) -> &[u8] {
        let (s, l) = self.procs[p].bytes;
        &self.raw[s..s + l]
    }

    pub fn body(&self, i: usize) -> &[u8] {
        let (s, l) = self.bodies[i];
        &self.raw[s as usize..(s + l) as usize]
    }

    fn process(&self, p: usize) -> Result<&Process> {
        let slot = &self.procs[p];
        if let Some(p) = slot.decoded.get() {
            return Ok(p);
        }
        let decoded = Process::decode(self.proc_bytes(p)).context("stored process is corrupt")?;
        Ok(slot.decoded.get_or_init(|| decoded))
    }

    /// The event of entry `i`, exactly as it was ingested.
    pub fn event(&self, i: usize) -> Result<Event> {
        let e = &self.entries[i];
        let mut ev = Event::decode(self.body(i)).context("stored event is corrupt")?;
        ev.host = self.hosts[e.host as usize].clone();
        if e.proc_ref > 0 {
            let mut p = self.process(e.proc_ref as usize - 1)?.clone();
            p.tid = e.tid;
            ev.process = Some(p);
        }
        Ok(ev)
    }

    /// Which process table slots belong to `exec_id`.
    pub fn procs_of(&self, exec_id: &str) -> Vec<bool> {
        (0..self.procs.len())
            .map(|p| self.proc_exec(p) == exec_id)
            .collect()
    }

    /// Keys of the entries of one process, in key order.
    pub fn keys_of(&self, exec_id: &str) -> Vec<EventKey> {
        let mine = self.procs_of(exec_id);
        self.entries
            .iter()
            .filter(|e| e.proc_ref > 0 && mine[e.proc_ref as usize - 1])
            .map(EntryHead::key)
            .collect()
    }

    /// Re-encodes the block without the entries for which `drop` is true.
    pub fn without(&self, drop: impl Fn(usize) -> bool) -> Vec<u8> {
        let hosts: Vec<&str> = self.hosts.iter().map(String::as_str).collect();
        let procs: Vec<(&[u8], &[u8])> = (0..self.procs.len())
            .map(|p| (self.proc_exec(p).as_bytes(), self.proc_bytes(p)))
            .collect();
        let kept: Vec<(EntryHead, &[u8])> = (0..self.entries.len())
            .filter(|&i| !drop(i))
            .map(|i| (self.entries[i], self.body(i)))
            .collect();
        encode_block(self.id, &hosts, &procs, kept.into_iter(), self.raw.len())
    }
}

mod builder;
mod summary;

pub use builder::{BlockBuilder, BlockWrite, same_process};
pub use summary::{BlockMeta, BlockSummary, Part};

#[cfg(test)]
mod tests;
