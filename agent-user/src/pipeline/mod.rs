//! Kernel records → Custody events, the observing step between the kernel and
//! enforcement: keeps the process table, agent identities and per-connection
//! parsers, decides what is reported (tracked processes, or all in observe-all
//! mode), and returns what it saw as [`Output`]s — events, credential sightings and
//! kernel policy records. It judges nothing: which sightings are violations is the
//! credential watch's business (`watch.rs`), acting on them the daemon's.

mod egress;
mod intent;
mod resources;

pub use egress::HelloStats;

use std::collections::HashMap;

use agent_ebpf::{EventHeader, ExecEvent, PolicyEvent, Tracked, flag, track};
use agent_user::credential::{self, Credential, FleetKey};
use agent_user::intent::TlsStream;
use custody_proto::sensor::v1::{
    self as pb, Event, ProcessExec, ProcessExit, ProcessFork, SensorWarning, event::Kind,
};

use crate::identity::{ExecFacts, Identity, env_agent};
use crate::kernel::decode::Raw;
use crate::proctable::{ProcTable, split_nul};
use crate::users::Users;

/// Where tracking decisions made in user space go (the kernel's tracked map).
pub trait Tracker {
    fn track(&mut self, tgid: u32, t: Tracked);
    /// Correct the entry of a process that is tracked already (and only then).
    fn retag(&mut self, tgid: u32, t: Tracked) {
        self.track(tgid, t);
    }
}

#[derive(Default, Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub records: u64,
    pub decode_errors: u64,
    pub emitted: u64,
    pub discovered_agents: u64,
    /// ClientHellos and opaque egress (`egress.rs`).
    pub hello: egress::HelloStats,
}

pub struct Pipeline {
    pub table: ProcTable,
    pub identity: Identity,
    pub users: Users,
    pub stats: Stats,
    key: FleetKey,
    observe_all: bool,
    /// HTTP/1 and HTTP/2 parsers per (tgid, SSL*, direction).
    streams: HashMap<(u32, u64, u32), TlsStream>,
    /// LLM provider of the last request on (tgid, SSL*), to parse its response.
    conn_llm: HashMap<(u32, u64), String>,
    /// Tracked processes' TLS connections by `struct sock *`, hello to close.
    conns: HashMap<u64, egress::Conn>,
    /// Configured LLM API hosts (besides the built-in ones) for SNI discovery.
    llm_hosts: Vec<String>,
}

/// What the pipeline makes of a kernel record, in the order it saw them.
// Events are nearly every output and travel by value through a reused buffer;
// boxing them would add an allocation per event on the hot path, for the sake of
// the rare sightings and policy records.
#[allow(clippy::large_enum_variant)]
pub enum Output {
    /// An event to report.
    Event(Event),
    /// A credential seen on a process, for the credential watch to judge.
    Sighting(Sighting),
    /// A kernel policy record (a connect refused, a process killed at an open), for
    /// enforcement to report with its rule.
    PolicyRecord(Box<PolicyEvent>),
}

/// A credential (by its keyed fingerprint) seen on a live process: in its
/// environment at exec, a credential file it opened, or a request header it sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    pub tgid: u32,
    pub start_ticks: u64,
    pub start_boottime: u64,
    pub fingerprint: String,
    /// Where it was seen: the credential source ("env", "header", "file", …).
    pub seen_in: String,
    /// The agent the process belongs to, if any.
    pub agent: Option<String>,
}

fn is_tracked(h: &EventHeader) -> bool {
    h.flags & flag::TRACKED != 0
}

impl Pipeline {
    pub fn new(host: String, identity: Identity, key: FleetKey, observe_all: bool) -> Self {
        Pipeline {
            table: ProcTable::new(host),
            identity,
            users: Users::new(),
            stats: Stats::default(),
            key,
            observe_all,
            streams: HashMap::new(),
            conn_llm: HashMap::new(),
            conns: HashMap::new(),
            llm_hosts: Vec::new(),
        }
    }

    /// Seed from /proc and track already-running declared agents and their descendants.
    pub fn seed(&mut self, tracker: &mut dyn Tracker, netns: u32) -> usize {
        let n = self.table.seed_from_proc(netns);
        for tgid in self.table.tgids() {
            let Some(p) = self.table.get(tgid) else {
                continue;
            };
            let (exe, argv, uid) = (p.exe.clone(), p.argv.clone(), p.uid);
            let environ = std::fs::read(format!("/proc/{tgid}/environ")).unwrap_or_default();
            let facts = ExecFacts {
                tgid,
                exe: &exe,
                argv: &argv,
                uid,
                env_agent: env_agent(&environ),
            };
            if let Some(a) = self.identity.match_exec(&facts) {
                tracker.track(tgid, Tracked::new(a.slot, track::DECLARED));
                for d in self.table.descendants(tgid) {
                    tracker.track(d, Tracked::new(a.slot, track::INHERITED));
                    if let Some(c) = self.table.get_mut(d) {
                        c.agent.get_or_insert_with(|| a.clone());
                    }
                }
                if let Some(p) = self.table.get_mut(tgid) {
                    p.agent = Some(a);
                }
            }
        }
        n
    }

    /// Update the process entry from a record header and return its tgid.
    fn touch(&mut self, h: &EventHeader) -> u32 {
        let start = self.table.ticks(h.start_boottime);
        let pstart = self.table.ticks(h.parent_start_boottime);
        let parent_id = if h.ppid != 0 {
            self.table.exec_id(h.ppid, pstart)
        } else {
            String::new()
        };
        let fresh = self
            .table
            .get(h.tgid)
            .is_none_or(|p| p.start_ticks != start);
        if fresh
            && self
                .table
                .scan_one(h.tgid)
                .is_none_or(|p| p.start_ticks != start)
        {
            self.table.entry(h.tgid, start);
        }
        let agent = (h.agent != 0)
            .then(|| self.identity.by_slot(h.agent))
            .flatten();
        let comm_bytes = &h.comm[..h.comm.iter().position(|&b| b == 0).unwrap_or(16)];
        let p = self.table.get_mut_quiet(h.tgid).expect("entry exists");
        p.start_boottime = h.start_boottime;
        let mut changed = p.ppid != h.ppid
            || p.parent_exec_id != parent_id
            || p.uid != h.uid
            || p.gid != h.gid
            || p.auid != h.auid
            || p.cgroup_id != h.cgroup_id
            || p.netns != h.netns
            || p.comm.as_bytes() != comm_bytes;
        if changed {
            p.ppid = h.ppid;
            p.parent_exec_id = parent_id;
            p.uid = h.uid;
            p.gid = h.gid;
            p.auid = h.auid;
            p.cgroup_id = h.cgroup_id;
            p.netns = h.netns;
            p.comm = credential::escape_bytes(comm_bytes);
        }
        if let Some(a) = agent {
            if p.agent.as_ref().is_none_or(|cur| cur.slot != a.slot) && !p.own_identity {
                p.agent = Some(a);
                changed = true;
            }
        }
        if changed {
            self.table.invalidate();
        }
        h.tgid
    }

    /// Build an event for the process of `h`.
    fn event(&mut self, h: &EventHeader, kind: Kind) -> Event {
        self.stats.emitted += 1;
        let process = self.table.process_proto(h.tgid, h.pid, &mut self.users);
        Event {
            host: self.table.host.clone(),
            time_ns: self.table.wall(h.ktime_ns),
            seq: 0,
            process,
            kind: Some(kind),
        }
    }

    fn wanted(&self, h: &EventHeader) -> bool {
        is_tracked(h) || self.observe_all
    }

    pub fn handle(&mut self, raw: Raw, tracker: &mut dyn Tracker, out: &mut Vec<Output>) {
        self.stats.records += 1;
        match raw {
            Raw::Exec(e) => self.exec(&e, tracker, out),
            Raw::Fork(e) => {
                self.touch(&e.hdr);
                let child_start = self.table.ticks(e.child_start_boottime);
                let parent = self.table.get(e.hdr.tgid).cloned().unwrap_or_default();
                let child = self.table.entry(e.child_tgid, child_start);
                child.ppid = e.hdr.tgid;
                child.parent_exec_id = parent.exec_id.clone();
                child.exe = parent.exe.clone();
                child.argv = parent.argv.clone();
                child.comm = parent.comm.clone();
                child.uid = parent.uid;
                child.gid = parent.gid;
                child.auid = parent.auid;
                child.cgroup_id = parent.cgroup_id;
                child.netns = parent.netns;
                child.agent = parent.agent.clone();
                child.tls_uncovered = parent.tls_uncovered;
                let child_exec_id = child.exec_id.clone();
                // A child forked by an agent the kernel tracked at its exec, before
                // this daemon had named it (slot 0 of a `CUSTODY_AGENT` value the
                // kernel does not know): give the kernel's entry the agent's slot.
                if is_tracked(&e.hdr) && e.hdr.agent == 0 {
                    if let Some(a) = &parent.agent {
                        tracker.retag(e.child_tgid, Tracked::new(a.slot, track::INHERITED));
                    }
                }
                if self.wanted(&e.hdr) {
                    let ev = self.event(
                        &e.hdr,
                        Kind::Fork(ProcessFork {
                            child_exec_id,
                            child_pid: e.child_tgid,
                        }),
                    );
                    out.push(Output::Event(ev));
                }
            }
            Raw::Exit(e) => {
                self.touch(&e.hdr);
                self.flush_streams(&e.hdr, tracker, out);
                if self.wanted(&e.hdr) {
                    let code = e.exit_code as i32;
                    let ev = self.event(
                        &e.hdr,
                        Kind::Exit(ProcessExit {
                            exit_code: (code >> 8) & 0xff,
                            signal: code & 0x7f,
                        }),
                    );
                    out.push(Output::Event(ev));
                }
                self.hello_exit(&e.hdr);
                self.table.remove(e.hdr.tgid);
                self.streams.retain(|k, _| k.0 != e.hdr.tgid);
                self.conn_llm.retain(|k, _| k.0 != e.hdr.tgid);
            }
            Raw::File(e) => {
                if self.wanted(&e.hdr) {
                    self.touch(&e.hdr);
                    self.file(&e, out);
                }
            }
            Raw::Net(e) => {
                if self.wanted(&e.hdr) {
                    self.touch(&e.hdr);
                    let kind = resources::net(&e);
                    out.push(Output::Event(self.event(&e.hdr, kind)));
                }
            }
            Raw::Dns(e) => {
                if self.wanted(&e.hdr) {
                    self.touch(&e.hdr);
                    if let Some(kind) = resources::dns(&e) {
                        out.push(Output::Event(self.event(&e.hdr, kind)));
                    }
                }
            }
            Raw::Tls(e) => {
                self.touch(&e.hdr);
                self.tls(&e, tracker, out);
            }
            Raw::Pipe(e) => {
                if self.wanted(&e.hdr) {
                    self.touch(&e.hdr);
                    self.pipe(&e, tracker, out);
                }
            }
            Raw::Policy(e) => {
                self.touch(&e.hdr);
                out.push(Output::PolicyRecord(e));
            }
            Raw::Hello(e) => self.hello(&e, tracker, out),
            // Not the current task's header (see `CloseEvent`): no touch.
            Raw::Close(e) => self.close(&e, out),
        }
    }

    fn exec(&mut self, e: &ExecEvent, tracker: &mut dyn Tracker, out: &mut Vec<Output>) {
        let tgid = self.touch(&e.hdr);
        let path = credential::escape_bytes(&e.path[..(e.path_len as usize).min(e.path.len())]);
        let argv = split_nul(&e.args[..(e.args_len as usize).min(e.args.len())]);
        let env = &e.env[..(e.env_len as usize).min(e.env.len())];
        // The kernel's filename is race-free (the process may exec again before we
        // look); /proc only helps when the program was started by a relative path.
        let exe = if path.starts_with('/') {
            path
        } else {
            std::fs::read_link(format!("/proc/{tgid}/exe"))
                .map_or(path, |p| p.to_string_lossy().into_owned())
        };
        let facts = ExecFacts {
            tgid,
            exe: &exe,
            argv: &argv,
            uid: e.hdr.uid,
            env_agent: env_agent(env),
        };
        let mut matched = self.identity.match_exec(&facts);
        // Descendants inherit their ancestors' environment, CUSTODY_AGENT included: a
        // match on the same agent as the parent is inheritance, not a new identity
        // (so an MCP server spawned by the agent can still become a hop of its own).
        let parent_slot = self
            .table
            .get(e.hdr.ppid)
            .and_then(|p| p.agent.as_ref())
            .map(|a| a.slot);
        if matched
            .as_ref()
            .is_some_and(|a| Some(a.slot) == parent_slot)
        {
            matched = None;
        }
        let mut tracked = is_tracked(&e.hdr);
        {
            let p = self.table.get_mut(tgid).expect("touched");
            p.exe = exe;
            p.argv = argv;
            p.argv_truncated = e.hdr.flags & flag::ARGS_TRUNCATED != 0;
            p.discovered_reported = false;
            // A new program: its TLS is judged afresh by the analysis of its binary.
            p.tls_uncovered = None;
            if let Some(a) = &matched {
                p.agent = Some(a.clone());
                p.own_identity = true;
            }
        }
        let declared = matched.is_some();
        if let Some(a) = matched {
            tracker.track(tgid, Tracked::new(a.slot, track::DECLARED));
            tracked = true;
        }
        let known = self.adopt_known_program(&e.hdr, declared, tracker);
        tracked |= known.is_some();
        if !(tracked || self.observe_all) {
            return;
        }
        if let Some(p) = self.table.get_mut(tgid) {
            p.cwd = std::fs::read_link(format!("/proc/{tgid}/cwd"))
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            p.cgroup_path = crate::identity::cgroup_of(tgid);
        }
        let creds = credential::scan_env(env, &self.key);
        let env_credentials = self.note_credentials(tgid, creds, out);
        let env_truncated = e.hdr.flags & flag::ENV_TRUNCATED != 0;
        out.push(Output::Event(self.event(
            &e.hdr,
            Kind::Exec(ProcessExec {
                env_credentials,
                env_truncated,
            }),
        )));
        if let Some(k) = known {
            let ev = self.known_program_event(&e.hdr, &k);
            out.push(Output::Event(ev));
        }
    }

    /// Record credential sightings on the process (each one is an output for the
    /// credential watch); return the ones not reported yet.
    fn note_credentials(
        &mut self,
        tgid: u32,
        creds: Vec<Credential>,
        out: &mut Vec<Output>,
    ) -> Vec<pb::Credential> {
        if let Some(p) = self.table.get(tgid) {
            let agent = p.agent.as_ref().map(|a| a.id.clone());
            for c in &creds {
                out.push(Output::Sighting(Sighting {
                    tgid,
                    start_ticks: p.start_ticks,
                    start_boottime: p.start_boottime,
                    fingerprint: c.fingerprint.clone(),
                    seen_in: c.source.as_str().to_string(),
                    agent: agent.clone(),
                }));
            }
        }
        let Some(p) = self.table.get_mut(tgid) else {
            return Vec::new();
        };
        creds
            .into_iter()
            .filter(|c| {
                p.seen_credentials.insert(format!(
                    "{}|{}|{}",
                    c.fingerprint,
                    c.source.as_str(),
                    c.location
                ))
            })
            .map(to_pb)
            .collect()
    }

    /// The credentials in an environment block (NUL-separated `KEY=VALUE`),
    /// fingerprinted with the fleet key like every sighting (a held exec's vetting).
    pub fn credentials_in_env(&self, env: &[u8]) -> Vec<Credential> {
        credential::scan_env(env, &self.key)
    }

    /// The credentials in a request's header fields (a held TLS send's vetting).
    pub fn credentials_in_headers(&self, headers: &[(String, String)]) -> Vec<Credential> {
        credential::scan_headers(headers, &self.key)
    }

    /// The agent id of a process: its entry in the table, else the `CUSTODY_AGENT`
    /// marker of `env` (a held process whose exec record was lost).
    pub fn agent_of(&self, tgid: u32, env: Option<&[u8]>) -> Option<String> {
        if let Some(a) = self.table.get(tgid).and_then(|p| p.agent.as_ref()) {
            return Some(a.id.clone());
        }
        env.and_then(env_agent).map(str::to_string)
    }

    /// An event for the process of a kernel record (policy enforcement).
    pub fn event_for(&mut self, h: &EventHeader, kind: Kind) -> Event {
        self.event(h, kind)
    }

    /// An enforcement event for process `tgid` (by the daemon's own authority).
    pub fn enforcement_for(&mut self, tgid: u32, e: pb::EnforcementApplied) -> Event {
        self.enforcement_event(tgid, tgid, e)
    }

    /// An enforcement event for thread `tid` of process `tgid`.
    pub fn enforcement_event(&mut self, tgid: u32, tid: u32, e: pb::EnforcementApplied) -> Event {
        let process = self.table.process_proto(tgid, tid, &mut self.users);
        self.own_event(process, Kind::Enforcement(e))
    }

    /// An event on process `tgid` (by the daemon's own findings, e.g. its TLS
    /// coverage); `None` when the process is not in the table.
    pub fn process_event(&mut self, tgid: u32, kind: Kind) -> Option<Event> {
        let process = self.process_proto(tgid)?;
        Some(self.event_on(process, kind))
    }

    /// The proto form of process `tgid` (to report on it after it is gone).
    pub fn process_proto(&mut self, tgid: u32) -> Option<pb::Process> {
        self.table.process_proto(tgid, tgid, &mut self.users)
    }

    /// An event on a process as it was (it may have exited since).
    pub fn event_on(&mut self, process: pb::Process, kind: Kind) -> Event {
        self.own_event(Some(process), kind)
    }

    /// An event the daemon makes itself (not decoded from a kernel record), stamped
    /// now and counted as emitted.
    fn own_event(&mut self, process: Option<pb::Process>, kind: Kind) -> Event {
        self.stats.emitted += 1;
        Event {
            host: self.table.host.clone(),
            time_ns: crate::clock::now_ns(),
            seq: 0,
            process,
            kind: Some(kind),
        }
    }

    /// Live processes that have shown any of these credential fingerprints.
    pub fn holders(&self, fps: &[String]) -> Vec<u32> {
        self.table
            .tgids()
            .into_iter()
            .filter(|&t| {
                self.table.get(t).is_some_and(|p| {
                    p.seen_credentials
                        .iter()
                        .any(|s| fps.iter().any(|fp| s.starts_with(&format!("{fp}|"))))
                })
            })
            .collect()
    }

    /// Periodic warning when the kernel lost events (ring buffer or map full).
    pub fn warning(&mut self, message: String, counters: HashMap<String, u64>) -> Event {
        self.own_event(None, Kind::Warning(SensorWarning { message, counters }))
    }

    /// Drop per-connection parser state of processes that are gone (bounded memory
    /// even if exit events were lost).
    pub fn prune(&mut self) {
        let table = &self.table;
        self.streams.retain(|k, _| table.get(k.0).is_some());
        self.conn_llm.retain(|k, _| table.get(k.0).is_some());
        self.hello_prune();
        if self.streams.len() > 8192 {
            self.streams.clear();
        }
    }
}

pub fn to_pb(c: Credential) -> pb::Credential {
    pb::Credential {
        kind: c.kind,
        fingerprint: c.fingerprint,
        metadata: c.metadata.into_iter().collect(),
        source: c.source.as_str().to_string(),
        location: c.location,
    }
}

#[cfg(test)]
pub(crate) mod tests;
