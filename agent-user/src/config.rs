//! custodyd's configuration file (TOML): sensor settings and declared agents.
//!
//! Every error names the file, the line and column, and what is wrong, because an
//! operator fixing a fleet-wide config needs to know exactly where to look.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use globset::{Glob, GlobMatcher};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    sensor: RawSensor,
    #[serde(default)]
    agent: Vec<Spanned<RawAgent>>,
    #[serde(default)]
    discovery: RawDiscovery,
    #[serde(default)]
    signal: RawSignal,
}

/// What is reported one by one and what is summarised (`routine.rs`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignal {
    /// Where routine reads happen: entries starting with `/` are path prefixes, others
    /// path components (`site-packages`). Replaces the built-in list; `[]` turns
    /// summarising off.
    routine_prefixes: Option<Vec<String>>,
    /// Seconds a routine summary collects reads before it is sent (and again).
    summary_window_secs: Option<u64>,
}

/// How undeclared agents are recognised, beyond the built-in rules.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    /// Host names of LLM/MCP APIs (besides the built-in provider hosts): a process whose
    /// TLS ClientHello names one (or a subdomain) becomes a discovered agent.
    #[serde(default)]
    llm_hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSensor {
    host_id: Option<String>,
    state_dir: Option<PathBuf>,
    fleet_key: Option<PathBuf>,
    #[serde(default)]
    observe_all: bool,
    #[serde(default)]
    tls_binaries: Vec<PathBuf>,
    /// "host" (default: every process of the kernel) or "netns" (only processes in
    /// the daemon's own network namespace, for hosts that are namespaces of one kernel).
    scope: Option<String>,
    /// bpffs directory for pinned enforcement state (default /sys/fs/bpf/custody/<host_id>).
    pin_dir: Option<PathBuf>,
    /// Which execs are held for vetting while revocations are cached: "tracked"
    /// (default), "all" or "off".
    revocation_hold: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: String,
    name: Option<String>,
    owner: Option<String>,
    scope: Option<String>,
    #[serde(rename = "match")]
    selectors: RawSelectors,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelectors {
    exe: Option<String>,
    sha256: Option<String>,
    argv: Option<String>,
    uid: Option<u32>,
    cgroup: Option<String>,
    env: Option<String>,
}

/// Ways a process is recognised as a declared agent. All given selectors must match.
#[derive(Debug, Default)]
pub struct Selectors {
    pub exe: Option<String>,
    pub sha256: Option<String>,
    pub argv: Option<GlobMatcher>,
    pub uid: Option<u32>,
    /// cgroup v2 path prefix, e.g. `/system.slice/agent.service`.
    pub cgroup: Option<String>,
    /// Value of `CUSTODY_AGENT` in the process environment.
    pub env: Option<String>,
}

#[derive(Debug)]
pub struct AgentDecl {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub scope: String,
    pub selectors: Selectors,
}

#[derive(Debug)]
pub struct Config {
    pub host_id: String,
    pub state_dir: PathBuf,
    pub fleet_key: PathBuf,
    pub observe_all: bool,
    pub tls_binaries: Vec<PathBuf>,
    /// Report only processes in the daemon's own network namespace.
    pub netns_scope: bool,
    pub pin_dir: PathBuf,
    /// Revocation hold scope (`agent_ebpf::hold`).
    pub revocation_hold: u32,
    pub agents: Vec<AgentDecl>,
    /// `[discovery] llm_hosts`, lower-cased.
    pub llm_hosts: Vec<String>,
    /// `[signal] routine_prefixes`.
    pub routine: crate::routine::RoutineRules,
    /// `[signal] summary_window_secs`.
    pub summary_window_secs: u64,
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let src = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("config {}: cannot read: {e}", path.display()))?;
        Self::parse(&src, &path.display().to_string())
    }

    /// Built-in defaults when no config file is given.
    pub fn default_config() -> Config {
        Self::parse("", "<defaults>").expect("empty config is valid")
    }

    pub fn parse(src: &str, name: &str) -> Result<Config> {
        let raw: RawConfig = match toml::from_str(src) {
            Ok(r) => r,
            Err(e) => {
                let (line, col) = e.span().map_or((1, 1), |s| line_col(src, s.start));
                bail!("config {name}:{line}:{col}: {}", e.message());
            }
        };
        let state_dir = raw
            .sensor
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/custody"));
        let fleet_key = raw
            .sensor
            .fleet_key
            .unwrap_or_else(|| state_dir.join("fleet.key"));
        let netns_scope = match raw.sensor.scope.as_deref() {
            None | Some("host") => false,
            Some("netns") => true,
            Some(other) => {
                bail!("config {name}: [sensor] scope = {other:?}: expected \"host\" or \"netns\"")
            }
        };
        let revocation_hold =
            crate::hold::parse_scope(raw.sensor.revocation_hold.as_deref().unwrap_or("tracked"))
                .map_err(|e| anyhow::anyhow!("config {name}: [sensor] {e}"))?;
        let mut agents = Vec::new();
        for spanned in raw.agent {
            let (line, col) = line_col(src, spanned.span().start);
            let where_ = format!("config {name}:{line}:{col}");
            let a = spanned.into_inner();
            if a.id.trim().is_empty() || a.id.contains(char::is_whitespace) {
                bail!(
                    "{where_}: agent id {:?} must be non-empty and contain no spaces",
                    a.id
                );
            }
            if agents.iter().any(|d: &AgentDecl| d.id == a.id) {
                bail!("{where_}: agent id {:?} is declared twice", a.id);
            }
            let s = a.selectors;
            let argv = match &s.argv {
                Some(p) => Some(
                    Glob::new(p)
                        .map_err(|e| {
                            anyhow::anyhow!("{where_}: agent {:?}: bad argv glob {p:?}: {e}", a.id)
                        })?
                        .compile_matcher(),
                ),
                None => None,
            };
            if let Some(h) = &s.sha256 {
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bail!(
                        "{where_}: agent {:?}: sha256 must be 64 hex characters",
                        a.id
                    );
                }
            }
            if let Some(e) = &s.exe {
                if !e.starts_with('/') {
                    bail!(
                        "{where_}: agent {:?}: exe {e:?} must be an absolute path",
                        a.id
                    );
                }
            }
            let selectors = Selectors {
                exe: s.exe,
                sha256: s.sha256.map(|h| h.to_ascii_lowercase()),
                argv,
                uid: s.uid,
                cgroup: s.cgroup,
                env: s.env,
            };
            if selectors.exe.is_none()
                && selectors.sha256.is_none()
                && selectors.argv.is_none()
                && selectors.uid.is_none()
                && selectors.cgroup.is_none()
                && selectors.env.is_none()
            {
                bail!(
                    "{where_}: agent {:?}: [agent.match] needs at least one selector (exe, sha256, argv, uid, cgroup, env)",
                    a.id
                );
            }
            agents.push(AgentDecl {
                name: a.name.unwrap_or_else(|| a.id.clone()),
                owner: a.owner.unwrap_or_default(),
                scope: a.scope.unwrap_or_default(),
                id: a.id,
                selectors,
            });
        }
        let host_id = raw.sensor.host_id.unwrap_or_else(hostname);
        let pin_dir = raw
            .sensor
            .pin_dir
            .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/custody").join(&host_id));
        let mut llm_hosts = Vec::new();
        for h in raw.discovery.llm_hosts {
            let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                bail!("config {name}: [discovery] llm_hosts: {h:?} is not a host name");
            }
            llm_hosts.push(h);
        }
        let routine = match raw.signal.routine_prefixes {
            None => crate::routine::RoutineRules::default(),
            Some(list) => crate::routine::RoutineRules::parse(list)
                .map_err(|e| anyhow::anyhow!("config {name}: [signal] routine_prefixes: {e}"))?,
        };
        let summary_window_secs = raw
            .signal
            .summary_window_secs
            .unwrap_or(crate::routine::DEFAULT_WINDOW_SECS);
        if summary_window_secs == 0 {
            bail!("config {name}: [signal] summary_window_secs must be at least 1");
        }
        Ok(Config {
            routine,
            summary_window_secs,
            llm_hosts,
            pin_dir,
            host_id,
            state_dir,
            fleet_key,
            observe_all: raw.sensor.observe_all,
            tls_binaries: raw.sensor.tls_binaries,
            netns_scope,
            revocation_hold,
            agents,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_section_sets_the_routine_prefixes_and_window() {
        let c = Config::parse(
            "[signal]\nroutine_prefixes = [\"/opt/rt/\", \"vendor\"]\nsummary_window_secs = 5\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.summary_window_secs, 5);
        assert_eq!(
            c.routine.dir_of("/opt/rt/a/b").as_deref(),
            Some("/opt/rt/a")
        );
        assert_eq!(c.routine.dir_of("/usr/lib/python3.11/os.py"), None);
        let d = Config::parse("", "t").unwrap();
        assert_eq!(d.summary_window_secs, crate::routine::DEFAULT_WINDOW_SECS);
        assert!(d.routine.dir_of("/usr/lib/python3.11/os.py").is_some());
        let e = Config::parse("[signal]\nroutine_prefixes = [\"/\"]\n", "t").unwrap_err();
        assert!(e.to_string().contains("[signal] routine_prefixes"), "{e}");
        assert!(Config::parse("[signal]\nsummary_window_secs = 0\n", "t").is_err());
    }

    #[test]
    fn parses_agents_and_defaults() {
        let c = Config::parse(
            r#"
[sensor]
host_id = "h1"
state_dir = "/tmp/x"

[[agent]]
id = "fin"
owner = "alice"
scope = "/data/finance"
[agent.match]
argv = "*supervisor.py*"
uid = 1000
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.host_id, "h1");
        assert_eq!(c.fleet_key, PathBuf::from("/tmp/x/fleet.key"));
        assert_eq!(c.agents.len(), 1);
        assert_eq!(c.agents[0].name, "fin");
        assert_eq!(c.revocation_hold, agent_ebpf::hold::TRACKED);
        assert!(
            c.agents[0]
                .selectors
                .argv
                .as_ref()
                .unwrap()
                .is_match("python3 supervisor.py --x")
        );
        let h = Config::parse("[sensor]\nrevocation_hold = \"all\"\n", "h.toml").unwrap();
        assert_eq!(h.revocation_hold, agent_ebpf::hold::ALL);
        let e = Config::parse("[sensor]\nrevocation_hold = \"some\"\n", "h.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("h.toml") && e.contains("revocation_hold"), "{e}");
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = Config::parse("[sensor]\nhost_id = 3\n", "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config bad.toml:2:"), "{e}");
        let e = Config::parse("[sensor]\nbogus = true\n", "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml:2:") && e.contains("bogus"), "{e}");
        let src = "\n\n[[agent]]\nid = \"a\"\n[agent.match]\n";
        let e = Config::parse(src, "c.toml").unwrap_err().to_string();
        assert!(
            e.contains("c.toml:3:") && e.contains("at least one selector"),
            "{e}"
        );
        let src = "[[agent]]\nid = \"a\"\n[agent.match]\nargv = \"[\"\n";
        let e = Config::parse(src, "g.toml").unwrap_err().to_string();
        assert!(e.contains("bad argv glob"), "{e}");
        let src = "[[agent]]\nid = \"a\"\n[agent.match]\nexe = \"python\"\n";
        assert!(
            Config::parse(src, "g.toml")
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
        let src = "[[agent]]\nid = \"a\"\n[agent.match]\nuid = 1\n[[agent]]\nid = \"a\"\n[agent.match]\nuid = 2\n";
        let e = Config::parse(src, "d.toml").unwrap_err().to_string();
        assert!(e.contains("d.toml:5:") && e.contains("twice"), "{e}");
    }
}
