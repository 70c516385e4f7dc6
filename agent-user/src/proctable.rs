//! The host's process table, keyed by tgid and identified by exec id.
//!
//! An exec id is `host:pid:start_ticks`, where start_ticks is the process start time
//! in clock ticks since boot (field 22 of /proc/PID/stat). The kernel reports
//! `start_boottime` in ns; dividing by the tick length gives the same number, so ids
//! from kernel events and from the /proc scan at start-up agree, and a reused pid gets
//! a new id.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use custody_proto::sensor::v1::{Principal, Process};

use crate::identity::AgentInfo;
use crate::users::Users;

#[derive(Clone, Debug, Default)]
pub struct Proc {
    pub tgid: u32,
    pub start_ticks: u64,
    /// Kernel start time in boot ns (0 when only known from /proc).
    pub start_boottime: u64,
    pub exec_id: String,
    pub parent_exec_id: String,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub auid: u32,
    pub comm: String,
    pub exe: String,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    pub cgroup_id: u64,
    pub netns: u32,
    pub start_time_ns: u64,
    pub agent: Option<Arc<AgentInfo>>,
    /// The agent identity was matched on this process itself (not inherited).
    pub own_identity: bool,
    /// Identity this process acts for, from a delegation token it sent or received.
    pub delegation: Option<Principal>,
    /// Credential sightings already reported (fingerprint/source/location).
    pub seen_credentials: HashSet<String>,
    pub discovered_reported: bool,
    pub cwd: String,
    pub cgroup_path: String,
    /// The TLS stack (a `custody_proto::sensor::v1::TlsStack` value) this process talks
    /// through that Custody cannot read: set when the analysis of its exe/libs found an
    /// uncovered stack and no covered one; inherited at fork, cleared at exec.
    pub tls_uncovered: Option<i32>,
    /// The proto form, valid while `cache_gen` equals the table's generation.
    cache: Option<Process>,
    cache_gen: u64,
}

pub struct ProcTable {
    pub host: String,
    procs: HashMap<u32, Proc>,
    tick_ns: u64,
    boot_wall_ns: u64,
    /// Bumped by every change that can alter a process's proto form (its own fields,
    /// or an ancestor's delegation or agent), so cached forms are rebuilt lazily.
    generation: u64,
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Fields of /proc/PID/stat after the comm (which may itself contain spaces and ')').
fn parse_stat(stat: &str) -> Option<(String, u32, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, starttime field 22.
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((comm, ppid, start))
}

fn status_ids(status: &str, key: &str) -> Option<u32> {
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// NUL-separated argv → strings: non-UTF-8 bytes escaped losslessly, and secrets
/// passed on a command line (tokens, `--password=…`) redacted like any payload.
pub fn split_nul(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|a| agent_user::credential::redact(&agent_user::credential::escape_bytes(a)))
        .collect()
}

impl ProcTable {
    pub fn new(host: String) -> Self {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let boot_wall_ns =
            clock_ns(libc::CLOCK_REALTIME).saturating_sub(clock_ns(libc::CLOCK_BOOTTIME));
        ProcTable {
            host,
            procs: HashMap::new(),
            tick_ns: 1_000_000_000 / hz,
            boot_wall_ns,
            generation: 1,
        }
    }

    pub fn ticks(&self, boot_ns: u64) -> u64 {
        boot_ns / self.tick_ns
    }

    /// Wall-clock Unix ns of a boot-time ns.
    pub fn wall(&self, boot_ns: u64) -> u64 {
        self.boot_wall_ns + boot_ns
    }

    pub fn exec_id(&self, pid: u32, start_ticks: u64) -> String {
        format!("{}:{}:{}", self.host, pid, start_ticks)
    }

    pub fn get(&self, tgid: u32) -> Option<&Proc> {
        self.procs.get(&tgid)
    }

    /// Mutable access: invalidates every cached proto form, since a change here can
    /// show in descendants (principal, agent).
    pub fn get_mut(&mut self, tgid: u32) -> Option<&mut Proc> {
        self.generation += 1;
        self.procs.get_mut(&tgid)
    }

    /// Mutable access for updates that usually change nothing (the per-event header
    /// refresh); the caller reports whether something changed.
    pub fn get_mut_quiet(&mut self, tgid: u32) -> Option<&mut Proc> {
        self.procs.get_mut(&tgid)
    }

    pub fn invalidate(&mut self) {
        self.generation += 1;
    }

    /// The proto form of a process, cached until something changes.
    pub fn process_proto(&mut self, tgid: u32, tid: u32, users: &mut Users) -> Option<Process> {
        let generation = self.generation;
        let p = self.procs.get(&tgid)?;
        if p.cache_gen == generation {
            if let Some(c) = &p.cache {
                let mut c = c.clone();
                c.tid = tid;
                return Some(c);
            }
        }
        let built = self.to_proto(p, tid, users);
        let p = self.procs.get_mut(&tgid)?;
        p.cache = Some(built.clone());
        p.cache_gen = generation;
        Some(built)
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Flags `tgid` as talking TLS Custody cannot read (`stack`: a
    /// `custody_proto::sensor::v1::TlsStack` value); no-op for an unknown process.
    pub fn mark_tls_uncovered(&mut self, tgid: u32, stack: i32) {
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.tls_uncovered = Some(stack);
        }
    }

    /// The uncovered TLS stack of `tgid`, if it was flagged.
    pub fn tls_uncovered(&self, tgid: u32) -> Option<i32> {
        self.procs.get(&tgid)?.tls_uncovered
    }

    pub fn remove(&mut self, tgid: u32) -> Option<Proc> {
        self.generation += 1;
        self.procs.remove(&tgid)
    }

    /// The entry for (tgid, start), created or replaced (pid reuse) as needed.
    pub fn entry(&mut self, tgid: u32, start_ticks: u64) -> &mut Proc {
        self.generation += 1;
        let exec_id = self.exec_id(tgid, start_ticks);
        let wall = self.boot_wall_ns + start_ticks * self.tick_ns;
        let p = self.procs.entry(tgid).or_default();
        if p.exec_id != exec_id {
            *p = Proc {
                tgid,
                start_ticks,
                exec_id,
                start_time_ns: wall,
                ..Default::default()
            };
        }
        p
    }

    /// Read one process from /proc (used at start-up and for processes first seen
    /// through a non-exec event).
    pub fn scan_one(&mut self, tgid: u32) -> Option<&mut Proc> {
        let base = format!("/proc/{tgid}");
        let stat = std::fs::read_to_string(format!("{base}/stat")).ok()?;
        let (comm, ppid, start) = parse_stat(&stat)?;
        let status = std::fs::read_to_string(format!("{base}/status")).unwrap_or_default();
        let auid = std::fs::read_to_string(format!("{base}/loginuid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(u32::MAX);
        let exe = std::fs::read_link(format!("{base}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cmdline = std::fs::read(format!("{base}/cmdline")).unwrap_or_default();
        let parent_start = std::fs::read_to_string(format!("/proc/{ppid}/stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
            .map(|(_, _, st)| st);
        let parent_exec_id = match parent_start {
            Some(st) if ppid != 0 => self.exec_id(ppid, st),
            _ => String::new(),
        };
        let p = self.entry(tgid, start);
        p.comm = comm;
        p.ppid = ppid;
        p.parent_exec_id = parent_exec_id;
        p.uid = status_ids(&status, "Uid:").unwrap_or(0);
        p.gid = status_ids(&status, "Gid:").unwrap_or(0);
        p.auid = auid;
        if p.exe.is_empty() {
            p.exe = exe;
        }
        if p.argv.is_empty() {
            p.argv = split_nul(&cmdline);
        }
        Some(p)
    }

    /// Seed the table with every process alive now (in network namespace `netns`
    /// when non-zero).
    pub fn seed_from_proc(&mut self, netns: u32) -> usize {
        use std::os::unix::fs::MetadataExt;
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return 0;
        };
        let in_ns = |pid: &u32| {
            netns == 0
                || std::fs::metadata(format!("/proc/{pid}/ns/net"))
                    .is_ok_and(|m| m.ino() as u32 == netns)
        };
        let pids: Vec<u32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(in_ns)
            .collect();
        pids.into_iter()
            .filter(|&pid| self.scan_one(pid).is_some())
            .count()
    }

    /// Every live tgid whose ancestry includes `root`.
    pub fn descendants(&self, root: u32) -> Vec<u32> {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for p in self.procs.values() {
            children.entry(p.ppid).or_default().push(p.tgid);
        }
        let mut out = Vec::new();
        let mut stack = vec![root];
        while let Some(t) = stack.pop() {
            if let Some(c) = children.get(&t) {
                for &c in c {
                    if c != root && !out.contains(&c) {
                        out.push(c);
                        stack.push(c);
                    }
                }
            }
        }
        out
    }

    pub fn tgids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
    }

    /// The principal of a process: its own delegation, else the nearest ancestor's,
    /// else its login session.
    pub fn principal(&self, tgid: u32, users: &mut Users) -> Principal {
        let mut cur = tgid;
        for _ in 0..64 {
            let Some(p) = self.procs.get(&cur) else { break };
            if let Some(d) = &p.delegation {
                let mut d = d.clone();
                d.login_uid = p.auid;
                d.login_user = users.name(p.auid);
                return d;
            }
            if p.ppid == 0 || p.ppid == cur {
                break;
            }
            cur = p.ppid;
        }
        let auid = self.procs.get(&tgid).map_or(u32::MAX, |p| p.auid);
        Principal {
            login_uid: auid,
            login_user: users.name(auid),
            ..Default::default()
        }
    }

    pub fn to_proto(&self, p: &Proc, tid: u32, users: &mut Users) -> Process {
        let agent = p.agent.as_deref();
        Process {
            exec_id: p.exec_id.clone(),
            parent_exec_id: p.parent_exec_id.clone(),
            pid: p.tgid,
            ppid: p.ppid,
            tid,
            uid: p.uid,
            gid: p.gid,
            auid: p.auid,
            user: users.name(p.uid),
            cgroup_id: p.cgroup_id,
            netns: p.netns,
            comm: p.comm.clone(),
            exe: p.exe.clone(),
            argv: p.argv.clone(),
            argv_truncated: p.argv_truncated,
            start_time_ns: p.start_time_ns,
            start_ticks: p.start_ticks,
            agent_id: agent.map(|a| a.id.clone()).unwrap_or_default(),
            agent_name: agent.map(|a| a.name.clone()).unwrap_or_default(),
            agent_kind: agent
                .map(|a| a.kind.as_str().to_string())
                .unwrap_or_default(),
            cwd: p.cwd.clone(),
            principal: Some(self.principal(p.tgid, users)),
            cgroup_path: p.cgroup_path.clone(),
            agent_owner: agent.map(|a| a.owner.clone()).unwrap_or_default(),
            agent_scope: agent.map(|a| a.scope.clone()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_handles_odd_comm() {
        let s = "42 (a b) c) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 1 1";
        let (comm, ppid, start) = parse_stat(s).unwrap();
        assert_eq!((comm.as_str(), ppid, start), ("a b) c", 7, 12345));
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_process_matches_proc_scan() {
        let mut t = ProcTable::new("h".into());
        let me = std::process::id();
        let p = t.scan_one(me).expect("own process");
        assert!(p.exec_id.starts_with(&format!("h:{me}:")));
        assert!(!p.parent_exec_id.is_empty());
        assert!(
            p.exe.ends_with(
                std::env::current_exe()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
            )
        );
        // pid reuse: a different start time replaces the entry.
        let old = t.get(me).unwrap().exec_id.clone();
        let start = t.get(me).unwrap().start_ticks;
        let p = t.entry(me, start + 1);
        assert_ne!(p.exec_id, old);
        assert!(p.argv.is_empty());
    }
}
