//! The open block: later ingest groups append to it and it is rewritten until it is
//! full. Every distinct process record is stored once per block; a process that
//! changes (exec, new credentials) gets a new version, compared against its last
//! few versions without `memcmp` on empty strings (see [`same_process`]).

use std::collections::HashMap;

use custody_proto::sensor::v1::{Event, Principal, Process};
use prost::Message;

use super::summary::{BlockMeta, BlockSummary, Part};
use super::{BLOCK_MAX_BYTES, BLOCK_MAX_EVENTS, EntryHead, MAX_VERSIONS_COMPARED, encode_block};
use crate::event_key::{EventKey, event_key_id, event_key_time};

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
