//! Kernel records → Custody events: keeps the process table, agent identities and
//! per-connection parsers, and decides what is reported (tracked processes, or all
//! in observe-all mode).

mod intent;
mod resources;

use std::collections::HashMap;

use agent_ebpf::{EventHeader, ExecEvent, Tracked, flag, track};
use agent_user::credential::{self, Credential, FleetKey};
use agent_user::intent::HttpStream;
use custody_proto::sensor::v1::{
    self as pb, Event, ProcessExec, ProcessExit, ProcessFork, SensorWarning, event::Kind,
};

use crate::decode::Raw;
use crate::identity::{ExecFacts, Identity, env_agent};
use crate::proctable::{ProcTable, split_nul};
use crate::users::Users;

/// Where tracking decisions made in user space go (the kernel's tracked map).
pub trait Tracker {
    fn track(&mut self, tgid: u32, t: Tracked);
}

#[derive(Default, Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub records: u64,
    pub decode_errors: u64,
    pub emitted: u64,
    pub discovered_agents: u64,
    /// Processes stopped for a credential a kernel policy forbids to their agent.
    pub policy_credential_stops: u64,
}

pub struct Pipeline {
    pub table: ProcTable,
    pub identity: Identity,
    pub users: Users,
    pub stats: Stats,
    key: FleetKey,
    observe_all: bool,
    /// HTTP parsers per (tgid, SSL*, direction).
    streams: HashMap<(u32, u64, u32), HttpStream>,
    /// LLM provider of the last request on (tgid, SSL*), to parse its response.
    conn_llm: HashMap<(u32, u64), String>,
    /// Revoked credential fingerprints → (action, command id): stopped on sight.
    pub revoked: HashMap<String, (String, String)>,
    /// Sightings of revoked credentials, for the daemon to enforce.
    pub violations: Vec<Violation>,
    /// Credentials the kernel policy forbids to some agents (stopped on sight like
    /// revocations, for processes of those agents only), and the policy_update
    /// command that brought them.
    pub policy_creds: Vec<crate::policy::compile::CredEntry>,
    pub policy_command: String,
    /// Kernel policy records (a connect refused, a process killed at an open), for
    /// the daemon to report.
    pub policy_hits: Vec<agent_ebpf::PolicyEvent>,
}

/// A process seen holding or using a revoked credential.
#[derive(Clone, Debug)]
pub struct Violation {
    pub tgid: u32,
    pub tid: u32,
    pub start_ticks: u64,
    pub start_boottime: u64,
    pub fingerprint: String,
    pub seen_in: String,
    pub action: String,
    pub command_id: String,
    /// Seen while the process was held (at exec: stopped before it ran; before a TLS
    /// send: stopped before the request left).
    pub held: bool,
    /// The policy that forbids the credential to this agent ("" for a revocation).
    pub policy: String,
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
            revoked: HashMap::new(),
            violations: Vec::new(),
            policy_creds: Vec::new(),
            policy_command: String::new(),
            policy_hits: Vec::new(),
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

    pub fn handle(&mut self, raw: Raw, tracker: &mut dyn Tracker, out: &mut Vec<Event>) {
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
                let child_exec_id = child.exec_id.clone();
                if self.wanted(&e.hdr) {
                    let ev = self.event(
                        &e.hdr,
                        Kind::Fork(ProcessFork {
                            child_exec_id,
                            child_pid: e.child_tgid,
                        }),
                    );
                    out.push(ev);
                }
            }
            Raw::Exit(e) => {
                self.touch(&e.hdr);
                if self.wanted(&e.hdr) {
                    let code = e.exit_code as i32;
                    let ev = self.event(
                        &e.hdr,
                        Kind::Exit(ProcessExit {
                            exit_code: (code >> 8) & 0xff,
                            signal: code & 0x7f,
                        }),
                    );
                    out.push(ev);
                }
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
                    out.push(self.event(&e.hdr, kind));
                }
            }
            Raw::Dns(e) => {
                if self.wanted(&e.hdr) {
                    self.touch(&e.hdr);
                    if let Some(kind) = resources::dns(&e) {
                        out.push(self.event(&e.hdr, kind));
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
                self.policy_hits.push(*e);
            }
        }
    }

    fn exec(&mut self, e: &ExecEvent, tracker: &mut dyn Tracker, out: &mut Vec<Event>) {
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
        let env_credentials = self.note_credentials(tgid, creds);
        let env_truncated = e.hdr.flags & flag::ENV_TRUNCATED != 0;
        out.push(self.event(
            &e.hdr,
            Kind::Exec(ProcessExec {
                env_credentials,
                env_truncated,
            }),
        ));
        if let Some(k) = known {
            let ev = self.known_program_event(&e.hdr, &k);
            out.push(ev);
        }
    }

    /// Record credential sightings on the process; return the ones not reported yet.
    fn note_credentials(&mut self, tgid: u32, creds: Vec<Credential>) -> Vec<pb::Credential> {
        for c in &creds {
            if let Some((action, command_id)) = self.revoked.get(&c.fingerprint) {
                if let Some(p) = self.table.get(tgid) {
                    self.violations.push(Violation {
                        tgid,
                        tid: tgid,
                        start_ticks: p.start_ticks,
                        start_boottime: p.start_boottime,
                        fingerprint: c.fingerprint.clone(),
                        seen_in: c.source.as_str().to_string(),
                        action: action.clone(),
                        command_id: command_id.clone(),
                        held: false,
                        policy: String::new(),
                    });
                }
            } else if let Some(r) = self.forbidden_credential(tgid, None, &c.fingerprint) {
                if let Some(p) = self.table.get(tgid) {
                    self.violations.push(Violation {
                        tgid,
                        tid: tgid,
                        start_ticks: p.start_ticks,
                        start_boottime: p.start_boottime,
                        fingerprint: c.fingerprint.clone(),
                        seen_in: c.source.as_str().to_string(),
                        action: r.action,
                        command_id: self.policy_command.clone(),
                        held: false,
                        policy: r.policy,
                    });
                }
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

    /// The first revoked credential in an environment block (NUL-separated
    /// `KEY=VALUE`), fingerprinted with the fleet key like every sighting.
    pub fn revoked_in_env(&self, env: &[u8]) -> Option<crate::hold::Hit> {
        if self.revoked.is_empty() {
            return None;
        }
        credential::scan_env(env, &self.key)
            .into_iter()
            .find_map(|c| {
                self.revoked
                    .get(&c.fingerprint)
                    .map(|(action, command_id)| crate::hold::Hit {
                        fingerprint: c.fingerprint,
                        action: action.clone(),
                        command_id: command_id.clone(),
                        seen_in: "env".into(),
                        policy: String::new(),
                    })
            })
    }

    /// The first revoked credential in a request's header fields (the header scan of
    /// every sighting, fingerprinted with the fleet key).
    pub fn revoked_in_headers(&self, headers: &[(String, String)]) -> Option<crate::hold::Hit> {
        if self.revoked.is_empty() {
            return None;
        }
        credential::scan_headers(headers, &self.key)
            .into_iter()
            .find_map(|c| {
                self.revoked
                    .get(&c.fingerprint)
                    .map(|(action, command_id)| crate::hold::Hit {
                        fingerprint: c.fingerprint,
                        action: action.clone(),
                        command_id: command_id.clone(),
                        seen_in: "header".into(),
                        policy: String::new(),
                    })
            })
    }

    /// The agent id of a process: its entry in the table, else the `CUSTODY_AGENT`
    /// marker of `env` (a held process whose exec record was lost).
    fn agent_of(&self, tgid: u32, env: Option<&[u8]>) -> Option<String> {
        if let Some(a) = self.table.get(tgid).and_then(|p| p.agent.as_ref()) {
            return Some(a.id.clone());
        }
        env.and_then(env_agent).map(str::to_string)
    }

    /// The kernel policy rule forbidding `fingerprint` to the agent of `tgid`.
    fn forbidden_credential(
        &self,
        tgid: u32,
        env: Option<&[u8]>,
        fingerprint: &str,
    ) -> Option<crate::policy::compile::CredEntry> {
        if self.policy_creds.is_empty() {
            return None;
        }
        let agent = self.agent_of(tgid, env);
        // Rules for every agent apply to tracked processes, i.e. those of an agent.
        agent.as_ref()?;
        self.policy_creds
            .iter()
            .find(|c| c.fingerprint == fingerprint && (c.agent.is_none() || c.agent == agent))
            .cloned()
    }

    fn policy_hit(
        &self,
        c: crate::policy::compile::CredEntry,
        fp: String,
        seen_in: &str,
    ) -> crate::hold::Hit {
        crate::hold::Hit {
            fingerprint: fp,
            action: c.action,
            command_id: self.policy_command.clone(),
            seen_in: seen_in.into(),
            policy: c.policy,
        }
    }

    /// The first credential in an environment block that a kernel policy forbids
    /// to the agent of `tgid`.
    pub fn forbidden_in_env(&self, tgid: u32, env: &[u8]) -> Option<crate::hold::Hit> {
        if self.policy_creds.is_empty() {
            return None;
        }
        credential::scan_env(env, &self.key)
            .into_iter()
            .find_map(|c| {
                let r = self.forbidden_credential(tgid, Some(env), &c.fingerprint)?;
                Some(self.policy_hit(r, c.fingerprint, "env"))
            })
    }

    /// As [`Pipeline::forbidden_in_env`], for a request's header fields.
    pub fn forbidden_in_headers(
        &self,
        tgid: u32,
        headers: &[(String, String)],
    ) -> Option<crate::hold::Hit> {
        if self.policy_creds.is_empty() {
            return None;
        }
        credential::scan_headers(headers, &self.key)
            .into_iter()
            .find_map(|c| {
                let r = self.forbidden_credential(tgid, None, &c.fingerprint)?;
                Some(self.policy_hit(r, c.fingerprint, "header"))
            })
    }

    /// Live processes of the credential rules' agents that have shown a credential
    /// a rule forbids them (stopped when the rules arrive).
    pub fn policy_holders(&self) -> Vec<(u32, crate::policy::compile::CredEntry, String)> {
        let mut out = Vec::new();
        for t in self.table.tgids() {
            let Some(p) = self.table.get(t) else { continue };
            for seen in &p.seen_credentials {
                let mut parts = seen.split('|');
                let fp = parts.next().unwrap_or("");
                let source = parts.next().unwrap_or("").to_string();
                if let Some(r) = self.forbidden_credential(t, None, fp) {
                    out.push((t, r, source));
                    break;
                }
            }
        }
        out
    }

    /// An event for the process of a kernel record (policy enforcement).
    pub fn event_for(&mut self, h: &EventHeader, kind: Kind) -> Event {
        self.event(h, kind)
    }

    /// An enforcement event for process `tgid` (by the daemon's own authority).
    pub fn enforcement_for(&mut self, tgid: u32, e: pb::EnforcementApplied) -> Event {
        self.stats.emitted += 1;
        let process = self.table.process_proto(tgid, tgid, &mut self.users);
        Event {
            host: self.table.host.clone(),
            time_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            seq: 0,
            process,
            kind: Some(Kind::Enforcement(e)),
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

    /// An event for an enforcement the sensor applied on its own authority.
    pub fn enforcement_event(&mut self, v: &Violation, applied: bool, error: String) -> Event {
        self.stats.emitted += 1;
        let process = self.table.process_proto(v.tgid, v.tid, &mut self.users);
        Event {
            host: self.table.host.clone(),
            time_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            seq: 0,
            process,
            kind: Some(Kind::Enforcement(pb::EnforcementApplied {
                action: v.action.clone(),
                reason: match (v.held, v.seen_in.as_str()) {
                    _ if !v.policy.is_empty() => format!(
                        "policy {}: credential forbidden to this agent seen in {}{}",
                        v.policy,
                        v.seen_in,
                        match (v.held, v.seen_in.as_str()) {
                            (true, "env") => "; held at exec, stopped before it ran",
                            (true, _) => "; held before send, stopped before the request left",
                            _ => "",
                        }
                    ),
                    (true, "env") => format!(
                        "revoked credential seen in {}; held at exec, stopped before it ran",
                        v.seen_in
                    ),
                    (true, _) if v.fingerprint.is_empty() => "request held before send could not be vetted (record lost, buffer unreadable): quarantined fail-closed".to_string(),
                    (true, _) => format!(
                        "revoked credential seen in {}; held before send, stopped before the request left",
                        v.seen_in
                    ),
                    (false, _) => format!("revoked credential seen in {}", v.seen_in),
                },
                command_id: v.command_id.clone(),
                credential_fingerprint: v.fingerprint.clone(),
                seen_in: v.seen_in.clone(),
                applied,
                error,
            })),
        }
    }

    /// Periodic warning when the kernel lost events (ring buffer or map full).
    pub fn warning(&mut self, message: String, counters: HashMap<String, u64>) -> Event {
        self.stats.emitted += 1;
        Event {
            host: self.table.host.clone(),
            time_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            seq: 0,
            process: None,
            kind: Some(Kind::Warning(SensorWarning { message, counters })),
        }
    }

    /// Drop per-connection parser state of processes that are gone (bounded memory
    /// even if exit events were lost).
    pub fn prune(&mut self) {
        let table = &self.table;
        self.streams.retain(|k, _| table.get(k.0).is_some());
        self.conn_llm.retain(|k, _| table.get(k.0).is_some());
        if self.streams.len() > 8192 {
            self.streams.clear();
        }
    }
}

/// The event kind's name, as in the JSON output.
pub fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Exec(_) => "exec",
        Kind::Fork(_) => "fork",
        Kind::Exit(_) => "exit",
        Kind::FileOpen(_) => "file_open",
        Kind::FileUnlink(_) => "file_unlink",
        Kind::FileRename(_) => "file_rename",
        Kind::Net(_) => "net",
        Kind::Dns(_) => "dns",
        Kind::Credential(_) => "credential",
        Kind::HttpRequest(_) => "http_request",
        Kind::HttpResponse(_) => "http_response",
        Kind::LlmRequest(_) => "llm_request",
        Kind::LlmResponse(_) => "llm_response",
        Kind::Mcp(_) => "mcp",
        Kind::AgentDiscovered(_) => "agent_discovered",
        Kind::Warning(_) => "warning",
        Kind::Enforcement(_) => "enforcement",
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
mod tests;
