//! Per-field caps on what sensors send, applied at ingest before anything is
//! stored or indexed. A compromised host decides the size of every string, list and
//! map in its messages; the transport bounds only the message (16 MiB by default),
//! and the chain index keeps each process's fields in memory, so without caps a few
//! messages of `cwd` or `cgroup_path` grow the collector by hundreds of MiB, and
//! every consumer downstream (Cedar requests, the UI, exports) pays for the size
//! again.
//!
//! Fields are truncated, not refused: an event with an absurd `cwd` still says
//! what the process did. A cut string ends with a visible mark saying how long it
//! was ([`cap_str`]) and stays within its cap; a cut list or map keeps its first
//! entries, with a mark where the field can carry one (an entry, a counter, the
//! event's own `*_truncated` flag). Every cut is counted.
//!
//! The caps are far above what an honest sensor sends (its own captures are
//! smaller): they only bound the damage.

use std::borrow::Cow;
use std::collections::HashMap;

use custody_proto::sensor::v1::{
    Connection, Credential, Event, Heartbeat, Hello, Principal, Process, event::Kind,
};

/// A file path (exe, cwd, opened files, TLS binaries): Linux's PATH_MAX.
pub const PATH: usize = 4096;
/// A cgroup path (also a path in cgroupfs).
pub const CGROUP_PATH: usize = 4096;
/// Names: comm, user, agent id/name/kind/owner, models, tools, MCP methods.
pub const NAME: usize = 256;
/// Identity claims: delegated subject and issuer, actors of an `act` chain.
pub const IDENTITY: usize = 1024;
/// Ids and fingerprints: conn ids, traceparents, build ids, credential fingerprints.
pub const ID: usize = 256;
/// Short words from a closed set on the sensor's side ("tcp", "connect", "sent").
pub const WORD: usize = 64;
/// Addresses, host names, DNS names, SNI.
pub const HOST: usize = 1024;
/// An HTTP request target (path and query; the sensor redacts secrets in it).
pub const URL_PATH: usize = 8192;
/// Redacted excerpts of bodies and prompts, evidence, warning and error texts.
pub const EXCERPT: usize = 16 * 1024;
/// All of a process's argv together, and its entry count.
pub const ARGV_BYTES: usize = 256 * 1024;
pub const ARGV_ENTRIES: usize = 4096;
/// Entries of lists and maps that are shown or indexed one by one.
pub const LIST: usize = 256;
/// Credentials on one event and metadata entries on one credential.
pub const CREDENTIALS: usize = 256;
pub const METADATA: usize = 32;
/// Actors of one RFC 8693 `act` chain.
pub const ACTORS: usize = 32;
/// The counter a cut counters map gets: how many entries were dropped.
pub const DROPPED_COUNTERS: &str = "collector_dropped_counters";

/// A short form of `s` for log lines and refusal reasons.
pub fn shorten(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut t = s.to_owned();
    cap_str(&mut t, max);
    Cow::Owned(t)
}

/// Cuts `s` to at most `max` bytes (on a character boundary), ending it with a mark
/// that says how long it was. Returns whether it cut.
pub fn cap_str(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mark = format!("…[truncated from {} bytes]", s.len());
    let mut keep = max.saturating_sub(mark.len());
    while !s.is_char_boundary(keep) {
        keep -= 1;
    }
    s.truncate(keep);
    if s.len() + mark.len() <= max {
        s.push_str(&mark);
    }
    // The decoded message's buffer would otherwise stay as large as it came in.
    s.shrink_to_fit();
    true
}

/// Counts cuts while one message is capped.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cuts(pub u32);

impl Cuts {
    fn s(&mut self, s: &mut String, max: usize) -> bool {
        let cut = cap_str(s, max);
        self.0 += u32::from(cut);
        cut
    }

    /// A list shown entry by entry: at most `n` entries of at most `each` bytes; a
    /// cut list ends with an entry saying how many were dropped.
    fn list(&mut self, v: &mut Vec<String>, n: usize, each: usize) {
        if v.len() > n {
            let dropped = v.len() - (n - 1);
            v.truncate(n - 1);
            v.push(format!("…[{dropped} more]"));
            self.0 += 1;
        }
        for s in v.iter_mut() {
            self.s(s, each);
        }
    }

    /// A list whose entries cannot carry a mark: its first `n` entries.
    fn keep<T>(&mut self, v: &mut Vec<T>, n: usize) -> bool {
        if v.len() <= n {
            return false;
        }
        v.truncate(n);
        self.0 += 1;
        true
    }

    /// A map of counters: at most `n` entries (the first by name) with names of at
    /// most `key` bytes; a cut map gets a counter of the entries it dropped.
    fn counters(&mut self, m: &mut HashMap<String, u64>, n: usize, key: usize) {
        if m.len() <= n && m.keys().all(|k| k.len() <= key) {
            return;
        }
        let mut entries: Vec<(String, u64)> = m.drain().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if entries.len() > n {
            let dropped = entries.len() - (n - 1);
            entries.truncate(n - 1);
            self.0 += 1;
            m.insert(DROPPED_COUNTERS.into(), dropped as u64);
        }
        for (mut k, v) in entries {
            self.s(&mut k, key);
            *m.entry(k).or_default() += v;
        }
    }

    fn principal(&mut self, p: &mut Principal) {
        self.s(&mut p.login_user, NAME);
        self.s(&mut p.delegated_sub, IDENTITY);
        self.s(&mut p.delegated_iss, IDENTITY);
        self.list(&mut p.act, ACTORS, IDENTITY);
    }

    fn process(&mut self, p: &mut Process) {
        // Exec ids are keys, not text: an oversized one is refused (see
        // `own_processes::check`), never cut into another id.
        self.s(&mut p.user, NAME);
        self.s(&mut p.comm, NAME);
        self.s(&mut p.exe, PATH);
        self.s(&mut p.cwd, PATH);
        self.s(&mut p.cgroup_path, CGROUP_PATH);
        for f in [
            &mut p.agent_id,
            &mut p.agent_name,
            &mut p.agent_kind,
            &mut p.agent_owner,
        ] {
            self.s(f, NAME);
        }
        self.s(&mut p.agent_scope, PATH);
        if let Some(pr) = p.principal.as_mut() {
            self.principal(pr);
        }
        // argv: the event's own flag is the mark.
        let before = self.0;
        self.keep(&mut p.argv, ARGV_ENTRIES);
        let mut budget = ARGV_BYTES;
        let mut keep = p.argv.len();
        for (i, a) in p.argv.iter_mut().enumerate() {
            // No room left for an argument worth keeping.
            if budget < 64 {
                keep = i;
                break;
            }
            self.s(a, budget);
            budget -= a.len();
        }
        if keep < p.argv.len() {
            p.argv.truncate(keep);
            self.0 += 1;
        }
        if self.0 != before {
            p.argv_truncated = true;
        }
    }

    fn conn(&mut self, c: &mut Connection) {
        self.s(&mut c.protocol, WORD);
        self.s(&mut c.family, WORD);
        self.s(&mut c.local_addr, HOST);
        self.s(&mut c.remote_addr, HOST);
    }

    fn credential(&mut self, c: &mut Credential) {
        self.s(&mut c.kind, NAME);
        self.s(&mut c.fingerprint, ID);
        self.s(&mut c.source, WORD);
        self.s(&mut c.location, PATH);
        let oversized = c
            .metadata
            .iter()
            .any(|(k, v)| k.len() > NAME || v.len() > IDENTITY);
        if c.metadata.len() > METADATA || oversized {
            let mut entries: Vec<(String, String)> = c.metadata.drain().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let dropped = entries.len().saturating_sub(METADATA);
            entries.truncate(METADATA);
            for (mut k, mut v) in entries {
                self.s(&mut k, NAME);
                self.s(&mut v, IDENTITY);
                c.metadata.insert(k, v);
            }
            if dropped > 0 {
                self.0 += 1;
                c.metadata
                    .insert("collector_truncated".into(), format!("{dropped} more"));
            }
        }
    }

    fn event(&mut self, ev: &mut Event) {
        if let Some(p) = ev.process.as_mut() {
            self.process(p);
        }
        match ev.kind.as_mut() {
            Some(Kind::Exec(x)) => {
                if self.keep(&mut x.env_credentials, CREDENTIALS) {
                    x.env_truncated = true;
                }
                for c in &mut x.env_credentials {
                    self.credential(c);
                }
            }
            Some(Kind::Fork(_)) | Some(Kind::Exit(_)) | None => {}
            Some(Kind::FileOpen(f)) => {
                if self.s(&mut f.path, PATH) {
                    f.path_truncated = true;
                }
                self.s(&mut f.error, EXCERPT);
            }
            Some(Kind::FileUnlink(f)) => {
                self.s(&mut f.path, PATH);
                self.s(&mut f.error, EXCERPT);
            }
            Some(Kind::FileRename(f)) => {
                self.s(&mut f.from, PATH);
                self.s(&mut f.to, PATH);
                self.s(&mut f.error, EXCERPT);
            }
            Some(Kind::Net(n)) => {
                self.s(&mut n.op, WORD);
                self.s(&mut n.error, EXCERPT);
                if let Some(c) = n.conn.as_mut() {
                    self.conn(c);
                }
            }
            Some(Kind::Dns(d)) => {
                self.s(&mut d.name, HOST);
                self.s(&mut d.qtype, WORD);
                self.s(&mut d.server, HOST);
            }
            Some(Kind::Credential(c)) => {
                if let Some(c) = c.credential.as_mut() {
                    self.credential(c);
                }
            }
            Some(Kind::HttpRequest(h)) => {
                self.s(&mut h.conn_id, ID);
                self.s(&mut h.method, WORD);
                self.s(&mut h.host, HOST);
                self.s(&mut h.path, URL_PATH);
                self.s(&mut h.traceparent, ID);
                self.s(&mut h.excerpt, EXCERPT);
                self.s(&mut h.transport, WORD);
                self.s(&mut h.direction, WORD);
                if let Some(d) = h.delegation.as_mut() {
                    self.principal(d);
                }
                self.keep(&mut h.credential_fingerprints, LIST);
                for f in &mut h.credential_fingerprints {
                    self.s(f, ID);
                }
            }
            Some(Kind::HttpResponse(h)) => {
                self.s(&mut h.conn_id, ID);
                self.s(&mut h.excerpt, EXCERPT);
                self.s(&mut h.direction, WORD);
            }
            Some(Kind::LlmRequest(r)) => {
                self.s(&mut r.conn_id, ID);
                self.s(&mut r.provider, NAME);
                self.s(&mut r.model, NAME);
                self.s(&mut r.system_excerpt, EXCERPT);
                self.s(&mut r.user_excerpt, EXCERPT);
                self.list(&mut r.tools, LIST, NAME);
                self.s(&mut r.host, HOST);
                self.s(&mut r.path, URL_PATH);
            }
            Some(Kind::LlmResponse(r)) => {
                self.s(&mut r.conn_id, ID);
                self.s(&mut r.provider, NAME);
                self.s(&mut r.model, NAME);
                self.keep(&mut r.tool_calls, LIST);
                for t in &mut r.tool_calls {
                    self.s(&mut t.name, NAME);
                    self.s(&mut t.arguments_excerpt, EXCERPT);
                    self.s(&mut t.id, ID);
                }
                self.s(&mut r.content_excerpt, EXCERPT);
                self.s(&mut r.finish_reason, WORD);
            }
            Some(Kind::Mcp(m)) => {
                self.s(&mut m.transport, WORD);
                self.s(&mut m.message_type, WORD);
                self.s(&mut m.method, NAME);
                self.s(&mut m.id, ID);
                self.s(&mut m.tool_name, NAME);
                self.s(&mut m.arguments_excerpt, EXCERPT);
                self.s(&mut m.peer_name, NAME);
                self.s(&mut m.result_excerpt, EXCERPT);
            }
            Some(Kind::AgentDiscovered(a)) => {
                self.s(&mut a.reason, WORD);
                self.s(&mut a.evidence, EXCERPT);
            }
            Some(Kind::Warning(w)) => {
                self.s(&mut w.message, EXCERPT);
                self.counters(&mut w.counters, LIST, NAME);
            }
            Some(Kind::Enforcement(e)) => {
                self.s(&mut e.reason, EXCERPT);
                self.s(&mut e.command_id, ID);
                self.s(&mut e.credential_fingerprint, ID);
                self.s(&mut e.seen_in, WORD);
                self.s(&mut e.error, EXCERPT);
            }
            Some(Kind::TlsUncovered(u)) => {
                self.s(&mut u.path, PATH);
                self.s(&mut u.build_id, ID);
                self.keep(&mut u.stacks, 16);
                for s in &mut u.stacks {
                    self.list(&mut s.versions, 64, NAME);
                    self.list(&mut s.tried, 64, IDENTITY);
                }
                self.list(&mut u.anomalies, 64, IDENTITY);
            }
            Some(Kind::OpaqueEgress(o)) => {
                if let Some(c) = o.conn.as_mut() {
                    self.conn(c);
                }
                self.s(&mut o.sni, HOST);
                self.list(&mut o.alpn, 16, WORD);
            }
            Some(Kind::RoutineReads(r)) => {
                self.s(&mut r.dir, PATH);
            }
        }
    }
}

/// Caps every field of `ev` (the host and sequence number are checked elsewhere).
pub fn cap_event(ev: &mut Event) -> Cuts {
    let mut c = Cuts::default();
    c.event(ev);
    c
}

/// Caps what a hello records on the host.
pub fn cap_hello(h: &mut Hello) -> Cuts {
    let mut c = Cuts::default();
    c.s(&mut h.boot_id, ID);
    c.s(&mut h.sensor_version, NAME);
    c.s(&mut h.kernel_release, NAME);
    c.list(&mut h.features, LIST, NAME);
    c
}

/// Caps a heartbeat's counters map (kept on the host record and shown in the UI).
pub fn cap_heartbeat(hb: &mut Heartbeat) -> Cuts {
    let mut c = Cuts::default();
    c.counters(&mut hb.counters, LIST, NAME);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_proto::sensor::v1::{FileOpen, LlmRequest};

    #[test]
    fn a_cut_string_stays_within_its_cap_and_says_so() {
        let mut s = "é".repeat(10_000);
        assert!(cap_str(&mut s, 4096));
        assert!(s.len() <= 4096, "{}", s.len());
        assert!(s.ends_with("…[truncated from 20000 bytes]"), "{s}");
        let mut short = "/tmp".to_string();
        assert!(!cap_str(&mut short, 4096));
        assert_eq!(short, "/tmp");
        let mut tiny = "x".repeat(100);
        assert!(cap_str(&mut tiny, 8));
        assert!(tiny.len() <= 8);
    }

    #[test]
    fn every_oversized_field_is_cut_and_counted() {
        let big = "a".repeat(1 << 20);
        let mut ev = Event {
            process: Some(Process {
                exec_id: "h:1:1".into(),
                cwd: big.clone(),
                cgroup_path: big.clone(),
                argv: vec![big.clone(); 3],
                principal: Some(Principal {
                    delegated_sub: big.clone(),
                    act: vec!["x".into(); 100],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            kind: Some(Kind::FileOpen(FileOpen {
                path: big.clone(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let cuts = cap_event(&mut ev);
        let p = ev.process.as_ref().unwrap();
        assert!(p.cwd.len() <= PATH && p.cgroup_path.len() <= CGROUP_PATH);
        assert!(p.argv_truncated);
        assert!(p.argv.iter().map(String::len).sum::<usize>() <= ARGV_BYTES);
        let pr = p.principal.as_ref().unwrap();
        assert!(pr.delegated_sub.len() <= IDENTITY);
        assert_eq!(pr.act.len(), ACTORS);
        assert_eq!(pr.act.last().unwrap(), "…[69 more]");
        let Some(Kind::FileOpen(f)) = &ev.kind else {
            unreachable!()
        };
        assert!(f.path_truncated && f.path.len() <= PATH);
        assert_eq!(p.exec_id, "h:1:1");
        assert!(cuts.0 >= 6, "{cuts:?}");

        let mut fine = Event {
            kind: Some(Kind::LlmRequest(LlmRequest {
                tools: vec!["read_file".into()],
                ..Default::default()
            })),
            ..Default::default()
        };
        let before = fine.clone();
        assert_eq!(cap_event(&mut fine), Cuts(0));
        assert_eq!(fine, before);
    }

    #[test]
    fn heartbeat_counters_are_bounded() {
        let mut hb = Heartbeat::default();
        for i in 0..10_000 {
            hb.counters.insert(format!("c{i:05}"), 1);
        }
        hb.counters.insert("k".repeat(100_000), 2);
        let cuts = cap_heartbeat(&mut hb);
        assert!(cuts.0 > 0);
        assert!(hb.counters.len() <= LIST);
        assert!(hb.counters.keys().all(|k| k.len() <= NAME));
        assert!(hb.counters[DROPPED_COUNTERS] > 9000);
    }
}
