//! Routine reads summarised: the dynamic loader, interpreters and runtimes open
//! hundreds of library, bytecode, locale and `/proc/self` files per process, and a
//! responder looking for the LLM call, the tool call and the denied read scrolls past
//! them. Successful and failed read-only opens under a routine prefix become one
//! `RoutineReads` record per process and directory, sent when its summary window
//! closes and at the process's exit; every other event passes through untouched.
//!
//! Never summarised: writes (any write access, `O_CREAT`, `O_TRUNC`), credential
//! files, and opens a path rule forbids (the daemon reports those before they reach
//! here). Nothing is dropped: past [`MAX_ENTRIES`] summaries an open is reported in
//! full.

use std::collections::HashMap;

use agent_user::credential;
use anyhow::{Result, bail};
use custody_proto::sensor::v1::{Event, RoutineReads, event::Kind};

/// Summaries kept at once (process × directory).
pub const MAX_ENTRIES: usize = 65_536;

/// Default summary window.
pub const DEFAULT_WINDOW_SECS: u64 = 60;

/// Where runtimes read their own files from. An entry starting with `/` is a path
/// prefix; any other is a path component (`site-packages` matches
/// `/home/u/.venv/lib/python3.11/site-packages/x.py`).
pub const DEFAULT_PREFIXES: &[&str] = &[
    "/lib/",
    "/lib64/",
    "/usr/lib/",
    "/usr/lib64/",
    "/usr/local/lib/",
    "/usr/share/locale/",
    "/usr/share/zoneinfo/",
    "/usr/share/i18n/",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/proc/self/",
    "/sys/devices/system/cpu/",
    "site-packages",
    "dist-packages",
    "node_modules",
    "__pycache__",
];

const O_ACCMODE: u32 = 3;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    Prefix(String),
    Component(String),
}

/// The configured routine prefixes (`[signal] routine_prefixes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutineRules(Vec<Rule>);

impl Default for RoutineRules {
    fn default() -> Self {
        RoutineRules::parse(DEFAULT_PREFIXES.iter().map(|s| s.to_string())).expect("defaults")
    }
}

impl RoutineRules {
    pub fn parse(entries: impl IntoIterator<Item = String>) -> Result<RoutineRules> {
        let mut rules = Vec::new();
        for e in entries {
            let e = e.trim().to_string();
            if e.is_empty() || e == "/" {
                bail!("routine prefix {e:?} would summarise every read");
            }
            if e.starts_with('/') {
                rules.push(Rule::Prefix(e));
            } else if e.contains('/') {
                bail!("routine prefix {e:?}: a path prefix starts with '/', a component has none");
            } else {
                rules.push(Rule::Component(e));
            }
        }
        Ok(RoutineRules(rules))
    }

    /// The directory a routine read of `path` is summarised under, or None when the
    /// path is not routine: the path up to the end of the component the prefix ends
    /// in (`/usr/lib/` → `/usr/lib/python3.11`; `site-packages` → `…/site-packages`),
    /// or the parent directory when that would be the file itself.
    pub fn dir_of(&self, path: &str) -> Option<String> {
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return None;
        }
        let end = self.0.iter().find_map(|r| match r {
            Rule::Prefix(p) => path.starts_with(p.as_str()).then_some(p.len()),
            Rule::Component(c) => {
                let at = path.match_indices(c.as_str()).find(|&(i, _)| {
                    path.as_bytes()[i - 1] == b'/'
                        && matches!(path.as_bytes().get(i + c.len()), None | Some(b'/'))
                })?;
                Some(at.0 + c.len())
            }
        })?;
        // A prefix ending inside or at the end of a component: finish the component.
        let start = if end > 0 && path.as_bytes()[end - 1] == b'/' {
            end
        } else {
            end.saturating_sub(1)
        };
        let cut = path[start..].find('/').map_or(path.len(), |i| start + i);
        let dir = if cut >= path.len() {
            &path[..path.rfind('/').unwrap_or(0)]
        } else {
            &path[..cut]
        };
        Some(if dir.is_empty() {
            "/".into()
        } else {
            dir.into()
        })
    }
}

#[derive(Clone, Debug)]
struct Summary {
    /// The first summarised event, for the record's host and process.
    template: Event,
    first_ns: u64,
    last_ns: u64,
    window_start_ns: u64,
    count: u64,
    failed: u64,
    total: u64,
    total_failed: u64,
}

impl Summary {
    fn record(&mut self, dir: &str) -> Event {
        let mut ev = self.template.clone();
        ev.time_ns = self.last_ns;
        ev.seq = 0;
        ev.kind = Some(Kind::RoutineReads(RoutineReads {
            dir: dir.to_string(),
            count: self.count,
            failed: self.failed,
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            total: self.total,
            total_failed: self.total_failed,
        }));
        self.count = 0;
        self.failed = 0;
        ev
    }
}

/// The open summaries, per process (exec id) and directory.
pub struct Routine {
    rules: RoutineRules,
    window_ns: u64,
    /// exec id → directory → summary.
    by: HashMap<String, HashMap<String, Summary>>,
    len: usize,
}

impl Routine {
    pub fn new(rules: RoutineRules, window_secs: u64) -> Routine {
        Routine {
            rules,
            window_ns: window_secs.max(1) * 1_000_000_000,
            by: HashMap::new(),
            len: 0,
        }
    }

    /// Take `ev` into a summary, or pass it (and, at a process's exit, its summaries
    /// before it) to `out`.
    pub fn absorb(&mut self, ev: Event, out: &mut Vec<Event>) {
        let exec_id = ev
            .process
            .as_ref()
            .map(|p| p.exec_id.clone())
            .unwrap_or_default();
        match &ev.kind {
            Some(Kind::Exit(_)) => {
                self.flush_process(&exec_id, out);
                out.push(ev);
            }
            Some(Kind::FileOpen(f)) if !exec_id.is_empty() && routine_open(f) => {
                let Some(dir) = self.rules.dir_of(&f.path) else {
                    out.push(ev);
                    return;
                };
                let dirs = self.by.entry(exec_id).or_default();
                if !dirs.contains_key(&dir) {
                    if self.len >= MAX_ENTRIES {
                        out.push(ev);
                        return;
                    }
                    self.len += 1;
                }
                let (ok, failed) = if f.result < 0 { (0, 1) } else { (1, 0) };
                let t = ev.time_ns;
                let s = dirs.entry(dir).or_insert_with(|| Summary {
                    template: Event {
                        kind: None,
                        ..ev.clone()
                    },
                    first_ns: t,
                    last_ns: t,
                    window_start_ns: t,
                    count: 0,
                    failed: 0,
                    total: 0,
                    total_failed: 0,
                });
                if s.count == 0 && s.failed == 0 {
                    s.window_start_ns = t;
                }
                s.last_ns = s.last_ns.max(t);
                s.count += ok;
                s.failed += failed;
                s.total += ok;
                s.total_failed += failed;
            }
            _ => out.push(ev),
        }
    }

    /// Summaries whose window has closed by `now_ns`: their records, with the window's
    /// counts restarted (the totals go on).
    pub fn due(&mut self, now_ns: u64, out: &mut Vec<Event>) {
        for (dir, s) in self.by.values_mut().flat_map(|d| d.iter_mut()) {
            if (s.count > 0 || s.failed > 0)
                && now_ns.saturating_sub(s.window_start_ns) >= self.window_ns
            {
                out.push(s.record(dir));
            }
        }
    }

    /// Everything still open (the daemon stops).
    pub fn flush_all(&mut self, out: &mut Vec<Event>) {
        let procs: Vec<String> = self.by.keys().cloned().collect();
        for p in procs {
            self.flush_process(&p, out);
        }
    }

    fn flush_process(&mut self, exec_id: &str, out: &mut Vec<Event>) {
        let Some(dirs) = self.by.remove(exec_id) else {
            return;
        };
        self.len -= dirs.len();
        let mut dirs: Vec<_> = dirs.into_iter().collect();
        dirs.sort_by_key(|(_, s)| s.first_ns);
        for (dir, mut s) in dirs {
            if s.count > 0 || s.failed > 0 {
                out.push(s.record(&dir));
            }
        }
    }
}

/// A read-only open of a file that is not a credential file.
fn routine_open(f: &custody_proto::sensor::v1::FileOpen) -> bool {
    f.flags & O_ACCMODE == 0
        && f.flags & (O_CREAT | O_TRUNC) == 0
        && credential::credential_file_kind(&f.path).is_none()
}

#[cfg(test)]
#[path = "routine_tests.rs"]
mod tests;
