//! Agent identity: which processes are agents, declared (by the config's selectors or
//! `CUSTODY_AGENT=<id>`) or discovered (a known agent program at its exec, or a
//! process talking to an LLM API or speaking MCP). A discovered agent is named after
//! the program it is (`undeclared:gemini-cli`, from the catalogue of known agents),
//! else after its executable and script.
//!
//! Each identity has a small numeric slot that the kernel carries in the tracked map,
//! so children inherit their agent's identity from fork on without a round trip.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use agent_user::known_agents::{self, KnownAgent};
use sha2::{Digest, Sha256};

use crate::config::AgentDecl;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Declared,
    Discovered,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Declared => "declared",
            Kind::Discovered => "discovered",
        }
    }
}

#[derive(Debug)]
pub struct AgentInfo {
    pub slot: u32,
    pub id: String,
    pub name: String,
    pub owner: String,
    pub scope: String,
    pub kind: Kind,
}

/// What the exec event tells about a new program image.
pub struct ExecFacts<'a> {
    pub tgid: u32,
    pub exe: &'a str,
    pub argv: &'a [String],
    pub uid: u32,
    /// `CUSTODY_AGENT` from the environment at exec.
    pub env_agent: Option<&'a str>,
}

pub struct Identity {
    decls: Vec<AgentDecl>,
    by_slot: HashMap<u32, Arc<AgentInfo>>,
    by_id: HashMap<String, Arc<AgentInfo>>,
    next_slot: u32,
    /// sha256 of executables, keyed by path + size + mtime.
    hashes: HashMap<(String, u64, i64), String>,
}

impl Identity {
    pub fn new(decls: Vec<AgentDecl>) -> Self {
        let mut id = Identity {
            decls: Vec::new(),
            by_slot: HashMap::new(),
            by_id: HashMap::new(),
            next_slot: 1,
            hashes: HashMap::new(),
        };
        for d in &decls {
            id.register(&d.id, &d.name, &d.owner, &d.scope, Kind::Declared);
        }
        id.decls = decls;
        id
    }

    fn register(
        &mut self,
        id: &str,
        name: &str,
        owner: &str,
        scope: &str,
        kind: Kind,
    ) -> Arc<AgentInfo> {
        if let Some(a) = self.by_id.get(id) {
            return a.clone();
        }
        let a = Arc::new(AgentInfo {
            slot: self.next_slot,
            id: id.to_string(),
            name: name.to_string(),
            owner: owner.to_string(),
            scope: scope.to_string(),
            kind,
        });
        self.next_slot += 1;
        self.by_slot.insert(a.slot, a.clone());
        self.by_id.insert(a.id.clone(), a.clone());
        a
    }

    /// The kernel slot of an agent id known on this host.
    pub fn slot_of(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).map(|a| a.slot)
    }

    /// Agents known so far (grows when one is discovered or first labelled).
    pub fn count(&self) -> usize {
        self.by_id.len()
    }

    pub fn by_slot(&self, slot: u32) -> Option<Arc<AgentInfo>> {
        self.by_slot.get(&slot).cloned()
    }

    /// A discovered (undeclared) agent for this program, created on first sight: named
    /// after the known agent program it runs, else after its executable and script.
    pub fn discovered(&mut self, tgid: u32, exe: &str, argv: &[String]) -> Arc<AgentInfo> {
        if let Some(k) = known_program(tgid, exe, argv) {
            return self.discovered_known(&k);
        }
        let base = exe.rsplit('/').next().unwrap_or(exe);
        // For interpreters the script names the agent better than the interpreter.
        let script = argv
            .iter()
            .skip(1)
            .find(|a| {
                !a.starts_with('-')
                    && (a.ends_with(".py")
                        || a.ends_with(".js")
                        || a.ends_with(".mjs")
                        || a.ends_with(".ts"))
            })
            .map(|s| s.rsplit('/').next().unwrap_or(s));
        let id = match script {
            Some(s) => format!("undeclared:{base}:{s}"),
            None => format!("undeclared:{base}"),
        };
        self.register(&id, &id, "", "", Kind::Discovered)
    }

    /// The discovered agent of a known agent program (`undeclared:<program>`).
    pub fn discovered_known(&mut self, k: &KnownAgent) -> Arc<AgentInfo> {
        let id = k.agent_id();
        self.register(&id, &id, "", "", Kind::Discovered)
    }

    /// A discovered agent with a given id (e.g. an MCP server named by its serverInfo).
    pub fn discovered_named(&mut self, id: &str) -> Arc<AgentInfo> {
        self.register(id, id, "", "", Kind::Discovered)
    }

    /// The declared agents the kernel can recognise at exec, as (selector value,
    /// slot): `CUSTODY_AGENT` values (each env selector and each agent id, as
    /// [`Identity::match_exec`] accepts both) and the paths of `exe`-only selectors.
    /// Selectors that need user space (sha256, argv glob, uid, cgroup path) are not
    /// listed: those agents are recognised from the exec record, as before.
    pub fn kernel_selectors(&self) -> KernelSelectors {
        let mut k = KernelSelectors::default();
        for d in &self.decls {
            let Some(slot) = self.slot_of(&d.id) else {
                continue;
            };
            let s = &d.selectors;
            if let Some(v) = &s.env {
                k.env.push((v.clone(), slot));
            }
            k.env.push((d.id.clone(), slot));
            let exe_only = s.sha256.is_none()
                && s.argv.is_none()
                && s.uid.is_none()
                && s.cgroup.is_none()
                && s.env.is_none();
            if let Some(e) = s.exe.as_ref().filter(|e| exe_only && e.starts_with('/')) {
                k.exe.push((e.clone(), slot));
            }
        }
        k
    }

    /// Match a new program image against the declared agents.
    pub fn match_exec(&mut self, f: &ExecFacts) -> Option<Arc<AgentInfo>> {
        if let Some(v) = f.env_agent.filter(|v| !v.is_empty()) {
            if let Some(d) = self
                .decls
                .iter()
                .find(|d| d.selectors.env.as_deref() == Some(v) || d.id == v)
            {
                let id = d.id.clone();
                return self.by_id.get(&id).cloned();
            }
            // An operator label on the process itself: an agent even when not in the config.
            return Some(self.register(v, v, "", "", Kind::Declared));
        }
        let joined = f.argv.join(" ");
        let mut hit = None;
        for (i, d) in self.decls.iter().enumerate() {
            let s = &d.selectors;
            if s.env.is_some() {
                continue; // needs the env marker, which this process does not carry
            }
            if s.exe.as_deref().is_some_and(|e| e != f.exe)
                || s.uid.is_some_and(|u| u != f.uid)
                || s.argv.as_ref().is_some_and(|g| !g.is_match(&joined))
                || s.cgroup
                    .as_deref()
                    .is_some_and(|c| !cgroup_of(f.tgid).starts_with(c))
            {
                continue;
            }
            if s.sha256.is_some() {
                hit = Some((i, true));
                break;
            }
            hit = Some((i, false));
            break;
        }
        let (i, needs_hash) = hit?;
        if needs_hash {
            let want = self.decls[i].selectors.sha256.clone().unwrap_or_default();
            if self.sha256_of(f.tgid, f.exe).as_deref() != Some(want.as_str()) {
                return None;
            }
        }
        let id = self.decls[i].id.clone();
        self.by_id.get(&id).cloned()
    }

    fn sha256_of(&mut self, tgid: u32, exe: &str) -> Option<String> {
        // Hash through /proc/PID/exe: the file the process really runs, even if the
        // path was replaced since.
        let path = format!("/proc/{tgid}/exe");
        let meta = std::fs::metadata(&path).ok()?;
        use std::os::unix::fs::MetadataExt;
        let key = (exe.to_string(), meta.size(), meta.mtime());
        if let Some(h) = self.hashes.get(&key) {
            return Some(h.clone());
        }
        let mut f = std::fs::File::open(&path).ok()?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let hex = hex::encode(h.finalize());
        self.hashes.insert(key, hex.clone());
        Some(hex)
    }
}

/// Declared-agent selectors the kernel matches at exec (see
/// [`Identity::kernel_selectors`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KernelSelectors {
    /// `CUSTODY_AGENT` value → slot (the first declaration of a value wins, as in
    /// [`Identity::match_exec`]).
    pub env: Vec<(String, u32)>,
    /// Absolute executable path → slot.
    pub exe: Vec<(String, u32)>,
}

/// The known agent program process `tgid` runs with this exe and argv, if any (a
/// relative script is resolved against the process's working directory).
pub fn known_program(tgid: u32, exe: &str, argv: &[String]) -> Option<KnownAgent> {
    known_agents::identify(exe, argv, &|| {
        std::fs::read_link(format!("/proc/{tgid}/cwd")).ok()
    })
}

/// The cgroup v2 path of a process ("" when unknown).
pub fn cgroup_of(tgid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{tgid}/cgroup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        })
        .unwrap_or_default()
}

/// The value of `CUSTODY_AGENT` in a NUL-separated environment block.
pub fn env_agent(env: &[u8]) -> Option<&str> {
    env.split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"CUSTODY_AGENT="))
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn ident(src: &str) -> Identity {
        Identity::new(Config::parse(src, "t").unwrap().agents)
    }

    #[test]
    fn matches_by_selectors_and_env() {
        let mut id = ident(
            "[[agent]]\nid=\"sup\"\n[agent.match]\nargv=\"*supervisor.py*\"\nuid=1000\n\
             [[agent]]\nid=\"w\"\n[agent.match]\nenv=\"worker-1\"\n",
        );
        let argv = vec!["python3".to_string(), "/x/supervisor.py".to_string()];
        let f = ExecFacts {
            tgid: 1,
            exe: "/usr/bin/python3",
            argv: &argv,
            uid: 1000,
            env_agent: None,
        };
        assert_eq!(id.match_exec(&f).unwrap().id, "sup");
        let f = ExecFacts { uid: 0, ..f };
        assert!(id.match_exec(&f).is_none(), "uid selector must also match");
        let f = ExecFacts {
            env_agent: Some("worker-1"),
            ..f
        };
        assert_eq!(id.match_exec(&f).unwrap().id, "w");
        let f = ExecFacts {
            env_agent: Some("adhoc"),
            ..f
        };
        let a = id.match_exec(&f).unwrap();
        assert_eq!((a.id.as_str(), a.kind), ("adhoc", Kind::Declared));
        assert_eq!(id.by_slot(a.slot).unwrap().id, "adhoc");
        let d = id.discovered(
            1,
            "/usr/bin/python3",
            &["python3".into(), "-u".into(), "/t/llm_client.py".into()],
        );
        assert_eq!(
            (d.id.as_str(), d.kind),
            ("undeclared:python3:llm_client.py", Kind::Discovered)
        );
    }

    /// What the kernel can recognise at exec: env values and ids of every agent,
    /// and only `exe` selectors that need nothing else.
    #[test]
    fn kernel_selectors_leave_user_space_selectors_out() {
        let id = ident(
            "[[agent]]\nid=\"sup\"\n[agent.match]\nargv=\"*supervisor.py*\"\nexe=\"/usr/bin/python3\"\n\
             [[agent]]\nid=\"w\"\n[agent.match]\nenv=\"worker-1\"\n\
             [[agent]]\nid=\"job\"\n[agent.match]\nexe=\"/opt/job.sh\"\n\
             [[agent]]\nid=\"h\"\n[agent.match]\nexe=\"/opt/h\"\nsha256=\"0000000000000000000000000000000000000000000000000000000000000000\"\n",
        );
        let (sup, w, job, h) = (
            id.slot_of("sup").unwrap(),
            id.slot_of("w").unwrap(),
            id.slot_of("job").unwrap(),
            id.slot_of("h").unwrap(),
        );
        let k = id.kernel_selectors();
        assert_eq!(
            k.env,
            vec![
                ("sup".to_string(), sup),
                ("worker-1".to_string(), w),
                ("w".to_string(), w),
                ("job".to_string(), job),
                ("h".to_string(), h),
            ]
        );
        assert_eq!(k.exe, vec![("/opt/job.sh".to_string(), job)]);
    }

    #[test]
    fn discovered_known_program_is_named_after_it_not_its_interpreter() {
        let t = tempfile::tempdir().unwrap();
        let bundle = t.path().join("lib/node_modules/@google/gemini-cli/bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(bundle.join("gemini.js"), "").unwrap();
        let script = bundle.join("gemini.js").to_string_lossy().into_owned();
        let mut id = ident("");
        // The path taken when a process is discovered by its LLM traffic.
        let a = id.discovered(1, "/usr/bin/node", &["node".into(), script, "-p".into()]);
        assert_eq!(
            (a.id.as_str(), a.kind),
            ("undeclared:gemini-cli", Kind::Discovered)
        );
        let b = id.discovered(1, "/usr/bin/node", &["node".into(), "/srv/app.js".into()]);
        assert_eq!(b.id, "undeclared:node:app.js");
    }

    #[test]
    fn env_marker_is_found() {
        assert_eq!(env_agent(b"A=1\0CUSTODY_AGENT=fin\0B=2\0"), Some("fin"));
        assert_eq!(env_agent(b"XCUSTODY_AGENT=fin\0"), None);
    }
}
