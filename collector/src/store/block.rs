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

use std::collections::HashMap;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail, ensure};
use custody_proto::sensor::v1::{Event, Principal, Process};
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

/// `a == b`, for strings, without calling `memcmp` on empty ones.
///
/// An empty `String` points at a dangling address; glibc's AVX-512 `memcmp`
/// handles short lengths with a masked load, which on an address that is not
/// mapped needs a microcode assist on AMD CPUs (hundreds of cycles, even for zero
/// bytes). Process records are mostly empty fields, so the derived `PartialEq`
/// spent ~1.5 µs per event there (a third of ingest).
fn same_str(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

fn same_strs(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_str(x, y))
}

fn same_principal(a: &Principal, b: &Principal) -> bool {
    // No `..`: a field added to the message must be compared here too.
    let Principal {
        login_uid,
        login_user,
        delegated_sub,
        act,
        delegated_iss,
    } = a;
    *login_uid == b.login_uid
        && same_str(login_user, &b.login_user)
        && same_str(delegated_sub, &b.delegated_sub)
        && same_strs(act, &b.act)
        && same_str(delegated_iss, &b.delegated_iss)
}

/// `a == b` for process records (see [`same_str`]).
pub fn same_process(a: &Process, b: &Process) -> bool {
    // No `..`: a field added to the message must be compared here too.
    let Process {
        exec_id,
        parent_exec_id,
        pid,
        ppid,
        tid,
        uid,
        gid,
        auid,
        user,
        cgroup_id,
        netns,
        comm,
        exe,
        argv,
        argv_truncated,
        start_time_ns,
        start_ticks,
        agent_id,
        agent_name,
        agent_kind,
        cwd,
        principal,
        cgroup_path,
        agent_owner,
        agent_scope,
    } = a;
    *pid == b.pid
        && *ppid == b.ppid
        && *tid == b.tid
        && *uid == b.uid
        && *gid == b.gid
        && *auid == b.auid
        && *cgroup_id == b.cgroup_id
        && *netns == b.netns
        && *argv_truncated == b.argv_truncated
        && *start_time_ns == b.start_time_ns
        && *start_ticks == b.start_ticks
        && same_str(exec_id, &b.exec_id)
        && same_str(parent_exec_id, &b.parent_exec_id)
        && same_str(user, &b.user)
        && same_str(comm, &b.comm)
        && same_str(exe, &b.exe)
        && same_strs(argv, &b.argv)
        && same_str(agent_id, &b.agent_id)
        && same_str(agent_name, &b.agent_name)
        && same_str(agent_kind, &b.agent_kind)
        && same_str(cwd, &b.cwd)
        && same_str(cgroup_path, &b.cgroup_path)
        && same_str(agent_owner, &b.agent_owner)
        && same_str(agent_scope, &b.agent_scope)
        && match (principal, &b.principal) {
            (None, None) => true,
            (Some(x), Some(y)) => same_principal(x, y),
            _ => false,
        }
}

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

/// What the engine must persist about one block: written by
/// [`BlockBuilder::take_writes`].
pub struct BlockWrite {
    pub id: u64,
    pub value: Vec<u8>,
    pub summary: BlockSummary,
}

#[derive(Clone, Copy)]
struct PartState {
    min: EventKey,
    count: u32,
}

impl PartState {
    fn add(&mut self, k: EventKey) {
        self.min = self.min.min(k);
        self.count += 1;
    }
}

struct ExecState {
    /// Versions of this process in the block's process table.
    versions: Vec<u32>,
    part: Option<PartState>,
}

/// The open block: events are appended until it is full; every ingest group
/// writes it (and its summary) again.
pub struct BlockBuilder {
    pub id: u64,
    hosts: Vec<String>,
    host_ix: HashMap<String, u32>,
    host_parts: Vec<Option<PartState>>,
    procs: Vec<(Process, Vec<u8>)>,
    execs: HashMap<String, ExecState>,
    heads: Vec<EntryHead>,
    /// Body of each entry (parallel to `heads`) as a range of `arena`.
    body_ranges: Vec<(u32, u32)>,
    arena: Vec<u8>,
    data_bytes: usize,
    event_bytes: u64,
    dirty: bool,
}

impl BlockBuilder {
    pub fn new(id: u64) -> BlockBuilder {
        BlockBuilder {
            id,
            hosts: vec![],
            host_ix: HashMap::new(),
            host_parts: vec![],
            procs: vec![],
            execs: HashMap::new(),
            heads: Vec::with_capacity(BLOCK_MAX_EVENTS),
            body_ranges: Vec::with_capacity(BLOCK_MAX_EVENTS),
            arena: Vec::with_capacity(BLOCK_MAX_BYTES),
            data_bytes: 0,
            event_bytes: 0,
            dirty: false,
        }
    }

    pub fn len(&self) -> usize {
        self.heads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.heads.len() >= BLOCK_MAX_EVENTS || self.data_bytes >= BLOCK_MAX_BYTES
    }

    /// Index of `host` in the host table (added if new).
    pub fn host_index(&mut self, host: &str) -> u32 {
        if let Some(i) = self.host_ix.get(host) {
            return *i;
        }
        let i = self.hosts.len() as u32;
        self.hosts.push(host.to_owned());
        self.host_ix.insert(host.to_owned(), i);
        self.host_parts.push(None);
        self.data_bytes += host.len() + 1;
        i
    }

    /// Appends an event stored under `key`, whose full encoded size is `size`.
    /// `host` comes from [`Self::host_index`]; the event's own `host` field is
    /// dropped (it names the same host, see `Engine::validate`).
    pub fn push(&mut self, host: u32, key: EventKey, size: u32, mut ev: Event) {
        let (time, id) = (event_key_time(&key), event_key_id(&key));
        debug_assert!(id >= self.id);
        debug_assert_eq!(ev.host, self.hosts[host as usize]);
        let mut proc_ref = 0;
        let mut tid = 0;
        if let Some(mut p) = ev.process.take() {
            tid = std::mem::take(&mut p.tid);
            if !self.execs.contains_key(p.exec_id.as_str()) {
                self.execs.insert(
                    p.exec_id.clone(),
                    ExecState {
                        versions: vec![],
                        part: None,
                    },
                );
            }
            let st = self
                .execs
                .get_mut(p.exec_id.as_str())
                .expect("inserted above");
            // The newest versions only: a record that changed on every event would
            // otherwise make this quadratic (a missed match only costs space).
            let found = st
                .versions
                .iter()
                .rev()
                .take(MAX_VERSIONS_COMPARED)
                .find(|&&v| same_process(&self.procs[v as usize].0, &p))
                .copied();
            let v = match found {
                Some(v) => v,
                None => {
                    let v = self.procs.len() as u32;
                    let bytes = p.encode_to_vec();
                    self.data_bytes += bytes.len() + p.exec_id.len() + 4;
                    self.procs.push((p, bytes));
                    st.versions.push(v);
                    v
                }
            };
            proc_ref = v + 1;
            match &mut st.part {
                Some(part) => part.add(key),
                None => st.part = Some(PartState { min: key, count: 1 }),
            }
        }
        ev.host = String::new();
        let start = self.arena.len();
        ev.encode(&mut self.arena).expect("Vec grows as needed");
        let len = self.arena.len() - start;
        self.data_bytes += len + 12;
        self.event_bytes += size as u64;
        let head = EntryHead {
            time,
            id,
            seq: ev.seq,
            size,
            host,
            proc_ref,
            tid,
        };
        let range = (start as u32, len as u32);
        if self
            .heads
            .last()
            .is_none_or(|l| (l.time, l.id) < (time, id))
        {
            self.heads.push(head);
            self.body_ranges.push(range);
        } else {
            let at = self.heads.partition_point(|l| (l.time, l.id) < (time, id));
            self.heads.insert(at, head);
            self.body_ranges.insert(at, range);
        }
        match &mut self.host_parts[host as usize] {
            Some(part) => part.add(key),
            part @ None => *part = Some(PartState { min: key, count: 1 }),
        }
        self.dirty = true;
    }

    /// What must be written for this block since the last call (None if nothing
    /// changed).
    pub fn take_writes(&mut self) -> Option<BlockWrite> {
        if !self.dirty || self.heads.is_empty() {
            return None;
        }
        self.dirty = false;
        let hosts: Vec<&str> = self.hosts.iter().map(String::as_str).collect();
        let procs: Vec<(&[u8], &[u8])> = self
            .procs
            .iter()
            .map(|(p, b)| (p.exec_id.as_bytes(), b.as_slice()))
            .collect();
        let arena = &self.arena;
        let entries = self
            .heads
            .iter()
            .zip(&self.body_ranges)
            .map(|(h, &(s, l))| (*h, &arena[s as usize..(s + l) as usize]));
        let value = encode_block(self.id, &hosts, &procs, entries, self.data_bytes);
        let meta = BlockMeta {
            min: self.heads[0].key(),
            max: self.heads[self.heads.len() - 1].key(),
            count: self.heads.len() as u32,
            bytes: self.event_bytes,
        };
        let part = |name: &str, p: &PartState| Part {
            name: name.to_owned(),
            min: p.min,
            count: p.count,
        };
        let execs = self
            .execs
            .iter()
            .filter(|(id, _)| !id.is_empty())
            .filter_map(|(id, st)| st.part.as_ref().map(|p| part(id, p)))
            .collect();
        let hosts = self
            .host_parts
            .iter()
            .zip(&self.hosts)
            .filter_map(|(p, h)| p.as_ref().map(|p| part(h, p)))
            .collect();
        Some(BlockWrite {
            id: self.id,
            value,
            summary: BlockSummary { meta, execs, hosts },
        })
    }
}

#[cfg(test)]
mod tests;
