//! TLS coverage while running: which binaries tracked processes run and map, analysed
//! off the event loop, attached by offset once per file, and the uncovered ones
//! reported.
//!
//! Two ways a binary comes up: the exec of a tracked process (its `/proc/PID/exe`), and
//! a bounded periodic look at the executable file mappings of tracked processes
//! (`/proc/PID/maps`: libraries, dlopen'ed ones included). Each file (device, inode) is
//! analysed once, in `spawn_blocking` through the [`InspectionCache`] (kept in the state
//! directory, so a restart does not re-read a 245 MB executable); the answer comes back
//! over a channel to the loop ([`Daemon::on_tls_analysed`]), which attaches its hook
//! points (`kernel/tls_attach.rs`) and, for every process waiting on it, reports a
//! stack Custody cannot read: one `TlsUncovered` event per process and file, and the
//! process flagged in the table when none of its binaries is covered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_user::tls_stack::cache::InspectionCache;
use agent_user::tls_stack::{Identity, Inspection, TlsStack};
use anyhow::Result;
use custody_proto::sensor::v1::{self as pb, event::Kind};
use tokio::sync::mpsc;

use super::Daemon;
use crate::kernel::loader::StartTls;
use crate::kernel::tls_attach::{AttachedFile, FileId, FileStamp, TlsAttacher};
use crate::report::status::{TlsBinary, TlsCoverageStatus, TlsStackStatus};

/// Processes whose mappings are read per periodic look (bounds the loop's work).
const MAPS_PER_TICK: usize = 8;
/// Analyses running at once (each may read a few hundred MB).
const MAX_IN_FLIGHT: usize = 2;
/// Errors and anomalies kept for the status (the counters go on).
const MAX_NOTES: usize = 32;
/// Covered and uncovered binaries listed in the status (and counted by its gauges).
const MAX_LISTED: usize = 256;

/// A process waiting for the analysis of one of its files.
#[derive(Clone, Debug)]
struct Waiter {
    tgid: u32,
    start_ticks: u64,
    /// The file as the process reached it (its exe path, or the path in its maps).
    shown: String,
    /// When the daemon saw the exec (or mapping): for exec → attach latency.
    since: Instant,
    exec: bool,
    /// The process as it was when it reached the file: a short-lived process (Codex's
    /// one-shot run) is gone before a cold analysis ends, and is reported all the same.
    process: Option<pb::Process>,
}

/// An analysis to run: the file by id, and a path to open it by.
struct Job {
    id: FileId,
    open: PathBuf,
    shown: String,
}

/// What a blocking analysis sends back to the loop.
pub(super) struct Analysed {
    id: FileId,
    open: PathBuf,
    stamp: Option<FileStamp>,
    result: Result<Arc<Inspection>, String>,
    took: Duration,
    /// The path no longer reached that file (the process exec'd again, e.g. `env`
    /// running `node`, or exited): nothing learned about the file itself.
    moved_on: bool,
}

/// What became of one file.
#[derive(Clone)]
struct Known {
    inspection: Option<Arc<Inspection>>,
    covered: bool,
}

pub(super) struct TlsCoverage {
    cache: Arc<InspectionCache>,
    pub(super) attacher: TlsAttacher,
    tx: mpsc::Sender<Analysed>,
    pub(super) rx: mpsc::Receiver<Analysed>,
    known: HashMap<FileId, Known>,
    /// Analyses running, with who waits on each.
    waiting: HashMap<FileId, Vec<Waiter>>,
    queued: VecDeque<Job>,
    in_flight: usize,
    /// (tgid, start ticks, file) already reported uncovered.
    reported: HashSet<(u32, u64, FileId)>,
    /// Per process (by tgid, start ticks): whether one of its binaries is covered.
    covered_procs: HashMap<u32, (u64, bool)>,
    /// Round-robin position of the periodic maps look.
    maps_cursor: usize,
    maps_seen: HashSet<(u32, u64, FileId)>,
    pub(super) status: TlsCoverageStatus,
}

fn proto_stack(s: TlsStack) -> pb::TlsStack {
    match s {
        TlsStack::OpenSsl => pb::TlsStack::Openssl,
        TlsStack::BoringSsl => pb::TlsStack::Boringssl,
        TlsStack::Rustls => pb::TlsStack::Rustls,
        TlsStack::GoCryptoTls => pb::TlsStack::GoCryptoTls,
    }
}

fn build_id(i: &Identity) -> String {
    match i {
        Identity::BuildId { build_id, .. } => build_id.clone(),
        Identity::Sha256 { sha256, .. } => format!("sha256:{sha256}"),
    }
}

fn note(list: &mut Vec<String>, s: String) {
    if list.len() >= MAX_NOTES {
        list.remove(0);
    }
    list.push(s);
}

/// Executable file mappings of a process: (file id, path) from `/proc/PID/maps`.
fn exec_mappings(tgid: u32) -> Vec<(FileId, String, String)> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{tgid}/maps")) else {
        return Vec::new();
    };
    let mut out: Vec<(FileId, String, String)> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(_off), Some(dev), Some(ino)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path: String = f.collect::<Vec<_>>().join(" ");
        if !perms.contains('x') || !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        let (Some((maj, min)), Ok(ino)) = (dev.split_once(':'), ino.parse::<u64>()) else {
            continue;
        };
        let (Ok(maj), Ok(min)) = (u32::from_str_radix(maj, 16), u32::from_str_radix(min, 16))
        else {
            continue;
        };
        let id = FileId {
            dev: libc::makedev(maj, min),
            ino,
        };
        if ino != 0 && !out.iter().any(|(i, _, _)| *i == id) {
            out.push((id, path, range.to_string()));
        }
    }
    out
}

/// A path that opens the file `id` that process `tgid` reached as `shown`: the path
/// itself when it names that file from here, else through the process's root, else
/// its `map_files` entry (or `exe` link).
fn open_path(tgid: u32, id: FileId, shown: &str, fallback: &str) -> Option<PathBuf> {
    let candidates = [
        PathBuf::from(shown),
        PathBuf::from(format!("/proc/{tgid}/root{shown}")),
        PathBuf::from(fallback),
    ];
    candidates
        .into_iter()
        .find(|p| FileStamp::of(p).is_ok_and(|s| s.id == id))
}

/// Directories where the catalogue's commands are installed: the system's bin
/// directories, and per home `~/.local/bin`, `~/.npm-global/bin`, `~/.volta/bin`,
/// `~/.bun/bin` and every nvm node's `bin`.
fn install_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["/usr/local/bin", "/usr/bin", "/opt/homebrew/bin"]
        .iter()
        .map(PathBuf::from)
        .collect();
    let mut homes = vec![PathBuf::from("/root")];
    if let Ok(rd) = std::fs::read_dir("/home") {
        homes.extend(rd.flatten().map(|e| e.path()).take(256));
    }
    for h in homes {
        for sub in [".local/bin", ".npm-global/bin", ".volta/bin", ".bun/bin"] {
            dirs.push(h.join(sub));
        }
        if let Ok(rd) = std::fs::read_dir(h.join(".nvm/versions/node")) {
            dirs.extend(rd.flatten().map(|e| e.path().join("bin")).take(64));
        }
    }
    dirs
}

/// Native executables of known agent programs installed on this host (the catalogue's
/// native commands in [`install_dirs`], links resolved): analysed and attached right
/// after start, so the first model request of, say, Claude Code's 245 MB binary does
/// not race its analysis.
pub(super) fn installed_agent_binaries() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for dir in install_dirs() {
        for e in agent_user::known_agents::CATALOGUE
            .iter()
            .filter(|e| e.native)
        {
            for c in e.commands {
                let Ok(real) = std::fs::canonicalize(dir.join(c)) else {
                    continue;
                };
                let elf = std::fs::File::open(&real).is_ok_and(|mut f| {
                    let mut magic = [0u8; 4];
                    std::io::Read::read_exact(&mut f, &mut magic).is_ok() && &magic == b"\x7fELF"
                });
                if elf && !out.contains(&real) {
                    out.push(real);
                }
            }
        }
    }
    out
}

impl TlsCoverage {
    /// Analyses (then attaches) `paths` with nobody waiting: the cache warmed at start.
    pub(super) fn prewarm(&mut self, paths: Vec<PathBuf>) {
        for p in paths {
            let Ok(stamp) = FileStamp::of(&p) else {
                continue;
            };
            if self.known.contains_key(&stamp.id) || self.waiting.contains_key(&stamp.id) {
                continue;
            }
            self.status
                .preanalysed
                .push(format!("{} (after start)", p.display()));
            self.queued.push_back(Job {
                id: stamp.id,
                shown: p.display().to_string(),
                open: p,
            });
            self.waiting.insert(stamp.id, Vec::new());
        }
        self.start_jobs();
    }

    /// Takes over what the loader analysed and attached at start.
    pub(super) fn new(
        cache: Arc<InspectionCache>,
        attacher: TlsAttacher,
        start: Vec<StartTls>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let mut me = TlsCoverage {
            cache,
            attacher,
            tx,
            rx,
            known: HashMap::new(),
            waiting: HashMap::new(),
            queued: VecDeque::new(),
            in_flight: 0,
            reported: HashSet::new(),
            covered_procs: HashMap::new(),
            maps_cursor: 0,
            maps_seen: HashSet::new(),
            status: TlsCoverageStatus::default(),
        };
        for s in start {
            let Some(stamp) = s.stamp else { continue };
            me.status.preanalysed.push(format!(
                "{} ({} ms)",
                s.path.display(),
                s.analysis.as_millis()
            ));
            let attached = s.attached.filter(|a| a.probes > 0);
            me.learned(
                &s.path.display().to_string(),
                stamp.id,
                s.inspection,
                attached,
            );
        }
        me
    }

    /// Records what the analysis of a file said (status, counters).
    fn learned(
        &mut self,
        shown: &str,
        id: FileId,
        result: Result<Arc<Inspection>, String>,
        attached: Option<AttachedFile>,
    ) -> Known {
        let st = &mut self.status;
        let known = match result {
            Ok(i) => {
                st.anomalies += i.anomalies.len() as u64;
                for a in &i.anomalies {
                    note(&mut st.anomaly_notes, format!("{shown}: {a}"));
                }
                let uncovered: Vec<TlsStackStatus> = i
                    .uncovered()
                    .map(|f| TlsStackStatus {
                        stack: f.stack.name().into(),
                        versions: f.versions.clone(),
                        tried: f.tried.clone(),
                    })
                    .collect();
                if !uncovered.is_empty() && st.uncovered.len() < MAX_LISTED {
                    st.uncovered.push(TlsBinary {
                        path: shown.into(),
                        build_id: build_id(&i.identity),
                        stacks: uncovered,
                        probes: 0,
                    });
                }
                let covered = attached.is_some();
                if let Some(a) = attached.filter(|_| st.covered.len() < MAX_LISTED) {
                    st.covered.push(TlsBinary {
                        path: shown.into(),
                        build_id: build_id(&i.identity),
                        stacks: a
                            .stacks
                            .iter()
                            .map(|s| TlsStackStatus {
                                stack: s.clone(),
                                ..Default::default()
                            })
                            .collect(),
                        probes: a.probes,
                    });
                }
                Known {
                    inspection: Some(i),
                    covered,
                }
            }
            Err(e) => {
                st.errors += 1;
                note(&mut st.error_notes, format!("{shown}: {e}"));
                Known {
                    inspection: None,
                    covered: false,
                }
            }
        };
        self.known.insert(id, known.clone());
        known
    }

    fn start_jobs(&mut self) {
        while self.in_flight < MAX_IN_FLIGHT {
            let Some(job) = self.queued.pop_front() else {
                return;
            };
            self.in_flight += 1;
            let cache = self.cache.clone();
            let tx = self.tx.clone();
            tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                let before = FileStamp::of(&job.open).ok();
                let mut result = cache.inspect(&job.open).map_err(|e| e.to_string());
                let after = FileStamp::of(&job.open).ok();
                let moved_on =
                    before.is_none() || before != after || before.map(|s| s.id) != Some(job.id);
                if moved_on {
                    result = Err(format!(
                        "{} changed or went away during the analysis",
                        job.shown
                    ));
                }
                let _ = tx.blocking_send(Analysed {
                    id: job.id,
                    open: job.open,
                    stamp: before,
                    result,
                    took: t.elapsed(),
                    moved_on,
                });
            });
        }
    }

    /// A process reached file `id` (its exe or a mapping): analyse it unless known.
    /// Returns the known answer at once when there is one.
    fn want(&mut self, w: Waiter, id: FileId, open: Option<PathBuf>) -> Option<Known> {
        if let Some(k) = self.known.get(&id) {
            return Some(k.clone());
        }
        if let Some(ws) = self.waiting.get_mut(&id) {
            ws.push(w);
            return None;
        }
        let Some(open) = open else {
            self.status.errors += 1;
            note(
                &mut self.status.error_notes,
                format!("{}: no path reaches the file from the daemon", w.shown),
            );
            return None;
        };
        self.queued.push_back(Job {
            id,
            open,
            shown: w.shown.clone(),
        });
        self.waiting.insert(id, vec![w]);
        self.start_jobs();
        None
    }
}

impl Daemon {
    /// A tracked process exec'd: look at its executable.
    pub(super) fn tls_on_exec(&mut self, tgid: u32) -> Result<()> {
        let Some(p) = self.pipe.table.get(tgid) else {
            return Ok(());
        };
        if p.agent.is_none() {
            return Ok(());
        }
        let exe_link = format!("/proc/{tgid}/exe");
        let Ok(stamp) = FileStamp::of(Path::new(&exe_link)) else {
            return Ok(()); // gone already
        };
        let w = Waiter {
            tgid,
            start_ticks: p.start_ticks,
            shown: p.exe.clone(),
            since: Instant::now(),
            exec: true,
            process: None,
        };
        let open = open_path(tgid, stamp.id, &p.exe, &exe_link);
        let mut w = w;
        w.process = self.pipe.process_proto(tgid);
        if let Some(k) = self.tls.want(w.clone(), stamp.id, open) {
            self.tls_settle(&w, stamp.id, &k)?;
        }
        Ok(())
    }

    /// The periodic look at tracked processes' executable mappings (bounded).
    pub(super) fn tls_scan_maps(&mut self) -> Result<()> {
        // What is kept per process goes with the process.
        let table = &self.pipe.table;
        self.tls
            .maps_seen
            .retain(|(t, s, _)| table.get(*t).is_some_and(|p| p.start_ticks == *s));
        self.tls
            .covered_procs
            .retain(|t, (s, _)| table.get(*t).is_some_and(|p| p.start_ticks == *s));
        self.tls
            .reported
            .retain(|(t, s, _)| table.get(*t).is_some_and(|p| p.start_ticks == *s));
        let mut tgids: Vec<u32> = self
            .pipe
            .table
            .tgids()
            .into_iter()
            .filter(|t| self.pipe.table.get(*t).is_some_and(|p| p.agent.is_some()))
            .collect();
        if tgids.is_empty() {
            return Ok(());
        }
        tgids.sort_unstable();
        let n = tgids.len();
        for k in 0..MAPS_PER_TICK.min(n) {
            let tgid = tgids[(self.tls.maps_cursor + k) % n];
            let Some(start_ticks) = self.pipe.table.get(tgid).map(|p| p.start_ticks) else {
                continue;
            };
            for (id, path, range) in exec_mappings(tgid) {
                if !self.tls.maps_seen.insert((tgid, start_ticks, id)) {
                    continue;
                }
                let w = Waiter {
                    tgid,
                    start_ticks,
                    shown: path.clone(),
                    since: Instant::now(),
                    exec: false,
                    process: self.pipe.process_proto(tgid),
                };
                let open = open_path(tgid, id, &path, &format!("/proc/{tgid}/map_files/{range}"));
                if let Some(known) = self.tls.want(w.clone(), id, open) {
                    self.tls_settle(&w, id, &known)?;
                }
            }
        }
        self.tls.maps_cursor = (self.tls.maps_cursor + MAPS_PER_TICK) % n;
        Ok(())
    }

    /// An analysis finished: attach, then settle everyone waiting for it.
    pub(super) fn on_tls_analysed(&mut self, a: Analysed) -> Result<()> {
        self.tls.in_flight = self.tls.in_flight.saturating_sub(1);
        self.tls.status.analysis_ms_max = self
            .tls
            .status
            .analysis_ms_max
            .max(a.took.as_millis() as u64);
        let waiters = self.tls.waiting.remove(&a.id).unwrap_or_default();
        if a.moved_on {
            // Not the file's fault: the next process reaching it asks again.
            tracing::debug!(file = %a.open.display(), "TLS analysis dropped: the path moved on");
            self.tls.status.moved_on += 1;
            self.tls.start_jobs();
            return Ok(());
        }
        let shown = waiters
            .first()
            .map_or_else(|| a.open.display().to_string(), |w| w.shown.clone());
        tracing::debug!(file = %shown, ms = a.took.as_millis() as u64, ok = a.result.is_ok(), "TLS analysis done");
        let mut attached = None;
        if let (Ok(i), Some(stamp)) = (&a.result, a.stamp) {
            if i.hooks().next().is_some() {
                match self
                    .tls
                    .attacher
                    .attach(&mut self.ebpf, &mut self.links, &a.open, stamp, i)
                {
                    Ok(done) if done.probes > 0 => {
                        tracing::info!(file = %shown, stacks = ?done.stacks, probes = done.probes, analysis_ms = a.took.as_millis() as u64, "TLS attached by offset");
                        attached = Some(done);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.tls.status.attach_refused += 1;
                        tracing::warn!(file = %shown, "TLS not attached: {e:#}");
                        note(&mut self.tls.status.error_notes, format!("{shown}: {e}"));
                    }
                }
            }
        }
        if let Err(e) = &a.result {
            tracing::warn!(file = %shown, "TLS analysis failed: {e}");
        }
        let known = self.tls.learned(&shown, a.id, a.result, attached);
        for w in &waiters {
            self.tls_settle(w, a.id, &known)?;
        }
        self.tls.start_jobs();
        Ok(())
    }

    /// What a file's analysis means for one process reaching it: the exec → attach
    /// latency, the uncovered-TLS report and flag.
    fn tls_settle(&mut self, w: &Waiter, id: FileId, k: &Known) -> Result<()> {
        let alive = self
            .pipe
            .table
            .get(w.tgid)
            .is_some_and(|p| p.start_ticks == w.start_ticks);
        // Measured whether or not the process still runs: a one-shot run may end before
        // a cold analysis does, and that is exactly the latency worth seeing.
        if w.exec && k.covered {
            let ms = w.since.elapsed().as_secs_f64() * 1000.0;
            let st = &mut self.tls.status;
            st.exec_to_attach_count += 1;
            st.exec_to_attach_ms_sum += ms;
            st.exec_to_attach_ms_max = st.exec_to_attach_ms_max.max(ms);
            st.exec_to_attach_ms_last = ms;
        }
        let proc_covered = if alive {
            let entry = self
                .tls
                .covered_procs
                .entry(w.tgid)
                .or_insert((w.start_ticks, false));
            if entry.0 != w.start_ticks {
                *entry = (w.start_ticks, false);
            }
            entry.1 |= k.covered;
            entry.1
        } else {
            true // gone: nothing to flag
        };
        if alive && proc_covered && self.pipe.table.tls_uncovered(w.tgid).is_some() {
            // A library it maps (a libssl) is read after all: not opaque any more.
            if let Some(p) = self.pipe.table.get_mut(w.tgid) {
                p.tls_uncovered = None;
            }
        }
        let Some(i) = &k.inspection else {
            return Ok(());
        };
        let uncovered: Vec<_> = i.uncovered().collect();
        let Some(first) = uncovered.first() else {
            return Ok(());
        };
        let stack = proto_stack(first.stack) as i32;
        if !proc_covered && self.pipe.table.tls_uncovered(w.tgid).is_none() {
            self.pipe.table.mark_tls_uncovered(w.tgid, stack);
        }
        if !self.tls.reported.insert((w.tgid, w.start_ticks, id)) {
            return Ok(());
        }
        let ev = pb::TlsUncovered {
            path: w.shown.clone(),
            build_id: build_id(&i.identity),
            stacks: uncovered
                .iter()
                .map(|f| pb::TlsStackFinding {
                    stack: proto_stack(f.stack) as i32,
                    versions: f.versions.clone(),
                    tried: f.tried.clone(),
                })
                .collect(),
            anomalies: i.anomalies.clone(),
        };
        self.tls.status.uncovered_reports += 1;
        let stacks: Vec<&str> = uncovered.iter().map(|f| f.stack.name()).collect();
        tracing::warn!(pid = w.tgid, file = %w.shown, ?stacks, "TLS Custody cannot read");
        let ev = match (alive, &w.process) {
            (true, _) | (false, None) => self.pipe.process_event(w.tgid, Kind::TlsUncovered(ev)),
            (false, Some(p)) => Some(self.pipe.event_on(p.clone(), Kind::TlsUncovered(ev))),
        };
        if let Some(ev) = ev {
            self.report.emit(ev)?;
            self.report.flush()?;
        }
        Ok(())
    }

    /// The status section, refreshed with the cache's counters.
    pub(super) fn tls_status(&mut self) -> TlsCoverageStatus {
        let c = self.tls.cache.stats();
        let st = &mut self.tls.status;
        st.analysed = c.analysed;
        st.cache_hits = c.hits;
        st.cache_errors = c.state_errors;
        st.pending = self.tls.waiting.len();
        st.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_executable_mappings_are_found_with_their_file_ids() {
        let me = std::process::id();
        let exe = std::fs::canonicalize("/proc/self/exe").unwrap();
        let want = FileStamp::of(&exe).unwrap().id;
        let maps = exec_mappings(me);
        let (id, path, range) = maps
            .iter()
            .find(|(_, p, _)| Path::new(p) == exe)
            .unwrap_or_else(|| panic!("own exe not among {maps:?}"));
        assert_eq!(*id, want, "device and inode from maps match stat");
        // Each file once, whatever the number of its executable mappings.
        assert_eq!(maps.iter().filter(|(i, _, _)| i == id).count(), 1);
        // The path opens it from here; so does the map_files entry.
        let open = open_path(me, *id, path, &format!("/proc/{me}/map_files/{range}"));
        assert_eq!(open.as_deref(), Some(exe.as_path()));
        let by_map = open_path(
            me,
            *id,
            "/nonexistent",
            &format!("/proc/{me}/map_files/{range}"),
        );
        assert!(by_map.is_some_and(|p| p.starts_with("/proc/")));
    }

    #[test]
    fn a_path_naming_another_file_is_not_taken() {
        let me = std::process::id();
        let exe = std::fs::canonicalize("/proc/self/exe").unwrap();
        let id = FileStamp::of(&exe).unwrap().id;
        assert_eq!(open_path(me, id, "/bin/sh", "/nonexistent"), None);
    }
}
