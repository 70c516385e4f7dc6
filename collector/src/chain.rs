//! Chains: the fleet-wide process graph and the human each part of it acts for.
//!
//! Nodes are processes keyed by exec id ("host:pid:start_ticks"). Edges:
//! - fork/exec: `process.parent_exec_id` (every event carries it) and fork events;
//!   labelled "stdio" when the child speaks MCP over stdio (it is an MCP server its
//!   parent spawned);
//! - net: a `connect` on host A matched to the `accept` on host B whose 4-tuple is
//!   the mirror image, within ±120 s;
//! - http: two `http_request` sightings of the same `traceparent` in different
//!   processes (the sender's SSL_write and the receiver's SSL_read).
//!
//! Each node hangs from at most one *upstream* node (see [`ChainIndex::upstream_of`]);
//! following upstream links ends at the chain root, whose exec id is the chain id.
//! Chain membership is kept per process (events are indexed by exec id in the store),
//! so when a late event links two parts (the accept arrived before the connect, a
//! child before its parent) only the affected processes move, never stored events.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use custody_proto::sensor::v1::{Event, Principal, Process, event::Kind};
use serde::{Deserialize, Serialize};

/// Connect/accept pairs further apart than this are not the same connection.
pub const NET_MATCH_WINDOW_NS: u64 = 120 * 1_000_000_000;
/// Unmatched halves are forgotten after this long (relative to the newest event).
pub const PENDING_TTL_NS: u64 = 10 * 60 * 1_000_000_000;
/// Bound on the processes one re-link may touch, so a pathological graph cannot
/// stall ingest.
const RELINK_LIMIT: usize = 100_000;
const MAX_CREDS_PER_NODE: usize = 64;
const LOGIN_UID_UNSET: u32 = u32::MAX;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Upstream {
    pub exec_id: String,
    /// "fork", "stdio", "net" or "http".
    pub kind: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CredUse {
    pub fingerprint: String,
    pub kind: String,
    /// "held" or "used".
    pub usage: String,
    pub source: String,
    pub location: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Node {
    pub process: Process,
    pub host: String,
    pub chain: String,
    pub upstream: Option<Upstream>,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub event_count: u64,
    pub creds: Vec<CredUse>,
    pub stdio_mcp: bool,
    /// Delegated identity seen in this process's requests (JWT sub / act).
    pub delegation: Option<Principal>,
    /// When the process exited (0 while it is alive or its exit was not seen).
    #[serde(default)]
    pub exited_ns: u64,
    /// The task it was given, when known: the user prompt excerpt of its first LLM
    /// request (already redacted by the sensor).
    #[serde(default)]
    pub task: String,
    /// What its TlsUncovered report says ([`crate::signal::uncovered_note`]); empty
    /// when its TLS is readable or unknown.
    #[serde(default)]
    pub tls_uncovered: String,
    /// Its OpaqueEgress records: TLS connections Custody did not read.
    #[serde(default)]
    pub opaque_egress: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// "net" or "http" (fork/stdio edges are the parent links of nodes).
    pub kind: String,
    pub detail: String,
    pub time_ns: u64,
}

/// One side of a connection or request waiting for the other.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Half {
    pub exec_id: String,
    /// The sensor's time of this half, never later than its arrival (pairs halves
    /// within [`NET_MATCH_WINDOW_NS`], also when a host catches up from its spool).
    pub time_ns: u64,
    pub detail: String,
    /// When the collector received this half (0: stored before arrival times were
    /// kept; its `time_ns` stands in). A cross-host edge is timed by arrivals.
    #[serde(default)]
    pub arrival_ns: u64,
}

/// What changed since the last [`ChainIndex::take_changes`], for persistence.
#[derive(Default, Debug)]
pub struct Changes {
    pub nodes: HashSet<String>,
    pub removed_nodes: HashSet<String>,
    pub new_edges: Vec<Edge>,
    pub removed_edges: Vec<Edge>,
    pub pending: HashSet<String>,
}

#[derive(Default)]
pub struct ChainIndex {
    nodes: HashMap<String, Node>,
    /// parent exec id -> children, including parents not (yet) seen.
    children: HashMap<String, BTreeSet<String>>,
    inbound: HashMap<String, Vec<Edge>>,
    outbound: HashMap<String, Vec<Edge>>,
    members: HashMap<String, BTreeSet<String>>,
    /// "c|<4-tuple>", "a|<4-tuple>" or "t|<traceparent>" -> waiting halves.
    pending: HashMap<String, Vec<Half>>,
    changes: Changes,
    /// Bumped whenever something other than a new process's own first links
    /// changes (a re-link, an identity or principal learned late, a credential
    /// added): what was derived from the index before may be stale.
    generation: u64,
}

pub fn is_human(p: &Principal) -> Option<(String, &'static str)> {
    if p.login_uid != LOGIN_UID_UNSET && !p.login_user.is_empty() {
        Some((p.login_user.clone(), "login"))
    } else if !p.delegated_sub.is_empty() {
        Some((p.delegated_sub.clone(), "delegation"))
    } else {
        None
    }
}

/// Shells and session managers: a chain does not climb above one of these when it
/// is the top of a login session (see `is_login_session`).
fn is_session_program(p: &Process) -> bool {
    let base = p.exe.rsplit('/').next().unwrap_or("");
    let name = if base.is_empty() {
        p.comm.as_str()
    } else {
        base
    };
    matches!(
        name,
        "bash"
            | "sh"
            | "zsh"
            | "fish"
            | "dash"
            | "ksh"
            | "tcsh"
            | "csh"
            | "login"
            | "sshd"
            | "sshd-session"
            | "su"
            | "sudo"
            | "tmux"
            | "screen"
            | "systemd"
    )
}

impl ChainIndex {
    pub fn node(&self, exec_id: &str) -> Option<&Node> {
        self.nodes.get(exec_id)
    }
    pub fn nodes(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }
    pub fn chain_of(&self, exec_id: &str) -> Option<&str> {
        self.nodes.get(exec_id).map(|n| n.chain.as_str())
    }
    pub fn members(&self, chain_id: &str) -> Option<&BTreeSet<String>> {
        self.members.get(chain_id)
    }
    pub fn chain_ids(&self) -> impl Iterator<Item = &String> {
        self.members.keys()
    }
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    pub fn pending(&self, key: &str) -> Option<&Vec<Half>> {
        self.pending.get(key)
    }
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// The net/http edges into one process, from any chain.
    pub fn inbound(&self, exec_id: &str) -> &[Edge] {
        self.inbound.get(exec_id).map_or(&[], Vec::as_slice)
    }

    /// Edges between members of a chain: each member's upstream link plus every
    /// net/http edge both ends of which are in the chain.
    pub fn chain_edges(&self, chain_id: &str) -> Vec<Edge> {
        let Some(members) = self.members.get(chain_id) else {
            return vec![];
        };
        let mut out = Vec::new();
        for id in members {
            let n = &self.nodes[id];
            let p = &n.process.parent_exec_id;
            if !p.is_empty() && members.contains(p) {
                out.push(Edge {
                    from: p.clone(),
                    to: id.clone(),
                    kind: if n.stdio_mcp { "stdio" } else { "fork" }.into(),
                    detail: String::new(),
                    time_ns: n.process.start_time_ns,
                });
            }
            for e in self.inbound.get(id).into_iter().flatten() {
                if members.contains(&e.from) {
                    out.push(e.clone());
                }
            }
        }
        out
    }

    /// Exec ids from the chain root down to `exec_id`.
    pub fn path_from_root(&self, exec_id: &str) -> Vec<String> {
        let mut path = vec![];
        let mut seen = HashSet::new();
        let mut cur = Some(exec_id.to_owned());
        while let Some(id) = cur {
            if !seen.insert(id.clone()) || !self.nodes.contains_key(&id) {
                break;
            }
            cur = self.nodes[&id].upstream.as_ref().map(|u| u.exec_id.clone());
            path.push(id);
        }
        path.reverse();
        path
    }

    /// Hops from the chain root to `exec_id`: `path_from_root(exec_id).len() - 1`
    /// without building the path.
    pub fn depth(&self, exec_id: &str) -> usize {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut cur = Some(exec_id);
        let mut len = 0usize;
        while let Some(id) = cur {
            let Some(n) = self.nodes.get(id) else { break };
            if !seen.insert(id) {
                break;
            }
            len += 1;
            cur = n.upstream.as_ref().map(|u| u.exec_id.as_str());
        }
        len.saturating_sub(1)
    }

    /// The human a chain acts for: the root's login or delegated identity, else the
    /// first delegated identity seen anywhere in the chain.
    pub fn human_of(&self, chain_id: &str) -> Option<(String, &'static str)> {
        let root = self.nodes.get(chain_id)?;
        if let Some(h) = root.process.principal.as_ref().and_then(is_human) {
            return Some(h);
        }
        if let Some(h) = root.delegation.as_ref().and_then(is_human) {
            return Some(h);
        }
        self.members
            .get(chain_id)?
            .iter()
            .filter_map(|m| self.nodes[m].delegation.as_ref())
            .find_map(|d| {
                (!d.delegated_sub.is_empty()).then(|| (d.delegated_sub.clone(), "delegation"))
            })
    }

    fn root_is_human(&self, chain_id: &str) -> bool {
        self.nodes.get(chain_id).is_some_and(|r| {
            r.process.principal.as_ref().and_then(is_human).is_some()
                || r.delegation.as_ref().and_then(is_human).is_some()
        })
    }

    /// A non-agent shell or session manager at the top of what we know: the login
    /// session itself. Chains start below it, so two tasks alice starts from one
    /// shell are two chains, both rooted at alice.
    fn is_login_session(&self, exec_id: &str) -> bool {
        let Some(n) = self.nodes.get(exec_id) else {
            return false;
        };
        n.process.agent_id.is_empty()
            && is_session_program(&n.process)
            && !self.nodes.contains_key(&n.process.parent_exec_id)
            && self.inbound.get(exec_id).is_none_or(|v| v.is_empty())
    }

    /// Which node `exec_id` hangs from:
    /// 1. its fork parent, if known, not a login session, and in a chain that already
    ///    has a human root;
    /// 2. otherwise the earliest inbound net/http edge (a request from elsewhere is
    ///    what put this process to work — e.g. an agent service started by systemd);
    /// 3. otherwise its fork parent if known; otherwise nothing: it is a root.
    fn upstream_of(&self, exec_id: &str) -> Option<Upstream> {
        let n = self.nodes.get(exec_id)?;
        let parent = &n.process.parent_exec_id;
        let parent_ok = (!parent.is_empty()
            && parent != exec_id
            && self.nodes.contains_key(parent)
            && !self.is_login_session(parent))
        .then(|| Upstream {
            exec_id: parent.clone(),
            kind: if n.stdio_mcp { "stdio" } else { "fork" }.into(),
        });
        if let Some(p) = &parent_ok
            && self.root_is_human(&self.nodes[&p.exec_id].chain)
        {
            return parent_ok;
        }
        let inbound = self.inbound.get(exec_id).and_then(|v| {
            v.iter()
                .filter(|e| e.from != exec_id && self.nodes.contains_key(&e.from))
                .min_by(|a, b| (a.time_ns, &a.from).cmp(&(b.time_ns, &b.from)))
        });
        if let Some(e) = inbound {
            return Some(Upstream {
                exec_id: e.from.clone(),
                kind: e.kind.clone(),
            });
        }
        parent_ok
    }

    /// Recomputes upstream and chain for `start` and, where they change, for
    /// everything hanging below.
    fn relink(&mut self, start: Vec<String>) {
        let starts: HashSet<String> = start.iter().cloned().collect();
        let mut queue: VecDeque<String> = start.into();
        let mut visited = HashSet::new();
        while let Some(id) = queue.pop_front() {
            if visited.len() >= RELINK_LIMIT || !visited.insert(id.clone()) {
                continue;
            }
            if !self.nodes.contains_key(&id) {
                continue;
            }
            let up = self.upstream_of(&id);
            let chain = match &up {
                Some(u) => self.nodes[&u.exec_id].chain.clone(),
                None => id.clone(),
            };
            let n = self.nodes.get_mut(&id).expect("checked above");
            let old_chain = std::mem::replace(&mut n.chain, chain.clone());
            let up_changed = n.upstream != up;
            n.upstream = up;
            let chain_changed = old_chain != chain;
            if chain_changed {
                if let Some(m) = self.members.get_mut(&old_chain) {
                    m.remove(&id);
                    if m.is_empty() {
                        self.members.remove(&old_chain);
                    }
                }
                self.members
                    .entry(chain.clone())
                    .or_default()
                    .insert(id.clone());
            }
            if up_changed || chain_changed {
                self.changes.nodes.insert(id.clone());
                if !starts.contains(&id) {
                    self.generation += 1;
                }
            }
            // Anything that may hang from this node is re-examined when its links
            // changed, and always for the nodes the caller named (they are new, or
            // their principal changed, which changes their children's choice too).
            if chain_changed || up_changed || starts.contains(&id) {
                queue.extend(self.children.get(&id).into_iter().flatten().cloned());
                queue.extend(
                    self.outbound
                        .get(&id)
                        .into_iter()
                        .flatten()
                        .map(|e| e.to.clone()),
                );
            }
        }
    }

    /// Folds one event into the graph as if it arrived at its own time (replays,
    /// tests, benchmarks); ingest uses [`ChainIndex::observe_arrived`].
    pub fn observe(&mut self, ev: &Event) {
        self.observe_arrived(ev, ev.time_ns);
    }

    /// Folds one stored event, received by the collector at `arrival_ns`, into the
    /// graph. A link between two hosts is timed by the collector's clock, not by
    /// what the hosts claim: the earliest inbound link decides which chain a process
    /// joins, so a host that could backdate its half would take another host's
    /// process into its own chain.
    pub fn observe_arrived(&mut self, ev: &Event, arrival_ns: u64) {
        let Some(p) = ev.process.as_ref() else { return };
        if p.exec_id.is_empty() {
            return;
        }
        let id = p.exec_id.clone();
        let t = ev.time_ns;
        // A half is never later than the collector saw it.
        let link_t = t.min(arrival_ns);
        let mut relink = vec![];
        match self.nodes.get_mut(&id) {
            None => {
                let node = Node {
                    process: p.clone(),
                    host: ev.host.clone(),
                    chain: id.clone(),
                    first_seen_ns: t,
                    last_seen_ns: t,
                    ..Default::default()
                };
                self.nodes.insert(id.clone(), node);
                self.members
                    .entry(id.clone())
                    .or_default()
                    .insert(id.clone());
                if !p.parent_exec_id.is_empty() {
                    self.children
                        .entry(p.parent_exec_id.clone())
                        .or_default()
                        .insert(id.clone());
                }
                self.changes.nodes.insert(id.clone());
                relink.push(id.clone());
            }
            Some(n) => {
                n.last_seen_ns = n.last_seen_ns.max(t);
                // Exec replaces the image; agent identity and principal may be
                // learned after the first event, and an identity may change (an MCP
                // server spawned by an agent becomes a hop of its own); a parent may
                // become known.
                let refresh = matches!(ev.kind, Some(Kind::Exec(_)))
                    || (!p.agent_id.is_empty() && n.process.agent_id != p.agent_id)
                    || (n.process.principal.is_none() && p.principal.is_some())
                    || (n.process.parent_exec_id.is_empty() && !p.parent_exec_id.is_empty());
                if refresh {
                    let parent_new =
                        n.process.parent_exec_id.is_empty() && !p.parent_exec_id.is_empty();
                    let principal_new = n.process.principal.is_none() && p.principal.is_some();
                    n.process = p.clone();
                    self.changes.nodes.insert(id.clone());
                    self.generation += 1;
                    if parent_new {
                        self.children
                            .entry(p.parent_exec_id.clone())
                            .or_default()
                            .insert(id.clone());
                    }
                    if parent_new || principal_new {
                        relink.push(id.clone());
                    }
                }
            }
        }
        let n = self.nodes.get_mut(&id).expect("inserted above");
        n.event_count += 1;

        match &ev.kind {
            Some(Kind::Exit(_)) => {
                n.exited_ns = t;
                self.changes.nodes.insert(id.clone());
            }
            Some(Kind::TlsUncovered(u)) if n.tls_uncovered.is_empty() => {
                n.tls_uncovered = crate::signal::uncovered_note(u);
                self.changes.nodes.insert(id.clone());
            }
            Some(Kind::OpaqueEgress(_)) => {
                n.opaque_egress += 1;
                self.changes.nodes.insert(id.clone());
            }
            Some(Kind::LlmRequest(r)) if n.task.is_empty() && !r.user_excerpt.is_empty() => {
                n.task = r.user_excerpt.chars().take(512).collect();
                self.changes.nodes.insert(id.clone());
                // Contexts derived for its descendants now have a task.
                self.generation += 1;
            }
            Some(Kind::Fork(f)) if !f.child_exec_id.is_empty() => {
                self.children
                    .entry(id.clone())
                    .or_default()
                    .insert(f.child_exec_id.clone());
                // Only a host's own process can be its fork child (ingest refuses
                // the event otherwise; this keeps the index sound on its own).
                if let Some(c) = self.nodes.get_mut(&f.child_exec_id)
                    && c.process.parent_exec_id.is_empty()
                    && c.host == ev.host
                {
                    c.process.parent_exec_id = id.clone();
                    self.changes.nodes.insert(f.child_exec_id.clone());
                    relink.push(f.child_exec_id.clone());
                }
            }
            Some(Kind::Exec(x)) => {
                for c in &x.env_credentials {
                    self.add_cred(&id, c, "held");
                }
            }
            Some(Kind::Credential(c)) => {
                if let Some(c) = &c.credential {
                    let usage = if c.source == "header" { "used" } else { "held" };
                    self.add_cred(&id, c, usage);
                }
            }
            Some(Kind::HttpRequest(h)) => {
                for fp in &h.credential_fingerprints {
                    let c = custody_proto::sensor::v1::Credential {
                        fingerprint: fp.clone(),
                        source: "header".into(),
                        ..Default::default()
                    };
                    self.add_cred(&id, &c, "used");
                }
                if let Some(d) = &h.delegation
                    && (!d.delegated_sub.is_empty() || !d.act.is_empty())
                {
                    let n = self.nodes.get_mut(&id).expect("present");
                    if n.delegation.as_ref() != Some(d) {
                        n.delegation = Some(d.clone());
                        self.changes.nodes.insert(id.clone());
                        relink.push(id.clone());
                    }
                }
                // A request sent by one process and received by another is an edge
                // from the sender, identified by its traceparent or, failing that, by a
                // delegation token (RFC 8693 `act`) seen on both sides; two senders of
                // the same trace are not related.
                let received = h.direction == "received";
                let mut links: Vec<(String, String, String)> = Vec::new();
                if !h.traceparent.is_empty() {
                    let (mine, theirs) = request_keys("t", &h.traceparent, received);
                    links.push((mine, theirs, format!("traceparent {}", h.traceparent)));
                } else if let Some(d) = h.delegation.as_ref().filter(|d| !d.act.is_empty()) {
                    for fp in &h.credential_fingerprints {
                        let (mine, theirs) = request_keys("d", fp, received);
                        let detail =
                            format!("delegation {} act {}", d.delegated_sub, d.act.join(">"));
                        links.push((mine, theirs, detail));
                    }
                }
                for (mine, theirs, detail) in &links {
                    let l = Link {
                        kind: "http",
                        mine,
                        theirs,
                        origin: !received,
                        id: &id,
                        t: link_t,
                        arrival_ns,
                        detail,
                    };
                    self.pair(l, &mut relink);
                }
            }
            Some(Kind::Net(s)) if s.op == "connect" || s.op == "accept" => {
                // A failed connect made no connection (EINPROGRESS is a connect
                // still under way on a non-blocking socket).
                let ok = s.result >= 0 || s.result == -115;
                if let Some(c) = s
                    .conn
                    .as_ref()
                    .filter(|c| c.local_port != 0 && c.remote_port != 0)
                    && ok
                {
                    let (la, ra) = (
                        normalize_addr(&c.local_addr),
                        normalize_addr(&c.remote_addr),
                    );
                    // Client -> server 4-tuple, the same string on both hosts.
                    let (client, server) = if s.op == "connect" {
                        (
                            format!("{la}:{}", c.local_port),
                            format!("{ra}:{}", c.remote_port),
                        )
                    } else {
                        (
                            format!("{ra}:{}", c.remote_port),
                            format!("{la}:{}", c.local_port),
                        )
                    };
                    // Loopback connections only pair up within one host.
                    let scope = if is_loopback(la) || is_loopback(ra) {
                        format!("{}|", ev.host)
                    } else {
                        String::new()
                    };
                    let tuple = format!("{scope}{client}>{server}");
                    let detail = format!("{client} -> {server} ({})", c.protocol);
                    let (mine, theirs) = if s.op == "connect" {
                        (format!("c|{tuple}"), format!("a|{tuple}"))
                    } else {
                        (format!("a|{tuple}"), format!("c|{tuple}"))
                    };
                    let l = Link {
                        kind: "net",
                        mine: &mine,
                        theirs: &theirs,
                        origin: s.op == "connect",
                        id: &id,
                        t: link_t,
                        arrival_ns,
                        detail: &detail,
                    };
                    self.pair(l, &mut relink);
                }
            }
            // Only the server side of a stdio MCP session (it answers requests on its
            // stdout) is a stdio edge from its parent; the client's requests are not.
            Some(Kind::Mcp(m)) if m.transport == "stdio" && m.message_type == "response" => {
                let n = self.nodes.get_mut(&id).expect("present");
                if !n.stdio_mcp {
                    n.stdio_mcp = true;
                    self.changes.nodes.insert(id.clone());
                    relink.push(id.clone());
                }
            }
            _ => {}
        }
        if !relink.is_empty() {
            self.relink(relink);
        }
    }

    fn add_cred(&mut self, id: &str, c: &custody_proto::sensor::v1::Credential, usage: &str) {
        if c.fingerprint.is_empty() {
            return;
        }
        let n = self.nodes.get_mut(id).expect("present");
        if let Some(existing) = n
            .creds
            .iter_mut()
            .find(|u| u.fingerprint == c.fingerprint && u.usage == usage)
        {
            if existing.kind.is_empty() && !c.kind.is_empty() {
                existing.kind = c.kind.clone();
                self.changes.nodes.insert(id.to_owned());
            }
            return;
        }
        if n.creds.len() < MAX_CREDS_PER_NODE {
            self.generation += 1;
            n.creds.push(CredUse {
                fingerprint: c.fingerprint.clone(),
                kind: c.kind.clone(),
                usage: usage.into(),
                source: c.source.clone(),
                location: c.location.clone(),
            });
            self.changes.nodes.insert(id.to_owned());
        }
    }

    /// Removes processes not seen since `cutoff_ns` (retention); what hung from them
    /// is re-linked (and may become roots).
    pub fn remove_idle(&mut self, cutoff_ns: u64) -> usize {
        let idle: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.last_seen_ns < cutoff_ns)
            .map(|(k, _)| k.clone())
            .collect();
        let mut relink = vec![];
        for id in &idle {
            let n = self.nodes.remove(id).expect("listed");
            if let Some(m) = self.members.get_mut(&n.chain) {
                m.remove(id);
                if m.is_empty() {
                    self.members.remove(&n.chain);
                }
            }
            if let Some(s) = self.children.get_mut(&n.process.parent_exec_id) {
                s.remove(id);
            }
            if let Some(kids) = self.children.remove(id) {
                relink.extend(kids);
            }
            for e in self.inbound.remove(id).unwrap_or_default() {
                if let Some(v) = self.outbound.get_mut(&e.from) {
                    v.retain(|x| x.to != *id);
                }
                self.changes.removed_edges.push(e);
            }
            for e in self.outbound.remove(id).unwrap_or_default() {
                if let Some(v) = self.inbound.get_mut(&e.to) {
                    v.retain(|x| x.from != *id);
                }
                relink.push(e.to.clone());
                self.changes.removed_edges.push(e);
            }
            self.changes.nodes.remove(id);
            self.changes.removed_nodes.insert(id.clone());
        }
        relink.retain(|r| self.nodes.contains_key(r));
        if !relink.is_empty() {
            self.relink(relink);
        }
        idle.len()
    }

    /// Rebuilds the index from persisted nodes, edges and pending halves.
    pub fn restore(
        nodes: Vec<(String, Node)>,
        edges: Vec<Edge>,
        pending: Vec<(String, Vec<Half>)>,
    ) -> ChainIndex {
        let mut ix = ChainIndex::default();
        for (id, n) in nodes {
            if !n.process.parent_exec_id.is_empty() {
                ix.children
                    .entry(n.process.parent_exec_id.clone())
                    .or_default()
                    .insert(id.clone());
            }
            ix.members
                .entry(n.chain.clone())
                .or_default()
                .insert(id.clone());
            ix.nodes.insert(id, n);
        }
        for e in edges {
            ix.inbound.entry(e.to.clone()).or_default().push(e.clone());
            ix.outbound.entry(e.from.clone()).or_default().push(e);
        }
        ix.pending = pending.into_iter().collect();
        ix
    }
}

mod links;

use links::{Link, is_loopback, normalize_addr, request_keys};

#[cfg(test)]
mod tests;
