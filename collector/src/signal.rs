//! Signal first: which events a responder reads by default, and how routine activity
//! folds into one line per process and directory (issue 17, "the responder's view").
//!
//! An interpreter starting up opens hundreds of `.so`, `.pyc`, locale and
//! `site-packages` files; shown one by one they push the LLM request, the tool call
//! and the denied read off the first screen. A *routine read* is a successful,
//! read-only open of a path under one of [`ROUTINE_PREFIXES`] or containing one of
//! [`ROUTINE_SEGMENTS`]. Routine reads of one process under one directory become one
//! [`Row::Fold`] carrying their exact count and the events themselves (the page can
//! expand it). Nothing else folds: a write, a failed or denied open, or a path a
//! policy matched (the caller passes those in `keep`) is always shown in full.
//!
//! What the sensor already summarised joins the same line with its count: a
//! `RoutineReads` record of the daemon stands for its `count` reads (and its `failed`
//! opens) under its directory, beside the single routine `FileOpen`s it did not fold.
//!
//! Also here: the one-line note for a process whose TLS Custody cannot read
//! ([`uncovered_note`]) and the chain-wide "what Custody could not see" sentence
//! ([`opaque_sentence`]), so the page, the CLI and the API say the same thing.
//!
//! A leaf: it knows only the protobuf types.

use std::collections::{HashMap, HashSet};

use custody_proto::sensor::v1::{Event, FileAccess, TlsStack, TlsUncovered, event::Kind};

/// Path prefixes of the dynamic loader, interpreters and their data: what every
/// process reads to start. The group a read folds into is the prefix plus the next
/// path component ("/usr/lib/python3.11").
pub const ROUTINE_PREFIXES: &[&str] = &[
    "/usr/lib/",
    "/usr/lib64/",
    "/usr/local/lib/",
    "/lib/",
    "/lib64/",
    "/usr/share/locale/",
    "/usr/share/zoneinfo/",
    "/usr/share/i18n/",
    "/usr/lib/locale/",
    "/proc/self/",
    "/etc/ld.so",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/sys/devices/system/cpu/",
];

/// Path components of package trees and byte-code caches wherever they live (a
/// virtualenv, an nvm install, a project's `node_modules`). The group is the path up
/// to and including the component.
pub const ROUTINE_SEGMENTS: &[&str] = &[
    "/site-packages/",
    "/dist-packages/",
    "/node_modules/",
    "/__pycache__/",
];

/// The directory a routine path folds under, or `None` when the path is not routine.
pub fn routine_group(path: &str) -> Option<String> {
    // Segments first: a venv under /usr/lib still groups by its site-packages.
    for seg in ROUTINE_SEGMENTS {
        if let Some(i) = path.find(seg) {
            return Some(path[..i + seg.len() - 1].to_owned());
        }
    }
    for pre in ROUTINE_PREFIXES {
        if let Some(rest) = path.strip_prefix(pre) {
            if !pre.ends_with('/') {
                // "/etc/ld.so.cache", "/etc/localtime": the file's directory.
                return Some(
                    path.rsplit_once('/')
                        .map(|(d, _)| d.to_owned())
                        .unwrap_or_default(),
                );
            }
            let base = pre.trim_end_matches('/');
            return Some(match rest.split_once('/') {
                Some((first, _)) => format!("{base}/{first}"),
                None => base.to_owned(),
            });
        }
    }
    None
}

/// The fold group of an event if it is a routine read: a successful read-only open
/// of a routine path that is not in `keep` (paths a policy matched).
pub fn routine_read(ev: &Event, keep: &HashSet<String>) -> Option<String> {
    let Some(Kind::FileOpen(f)) = &ev.kind else {
        return None;
    };
    if f.result < 0 || !f.error.is_empty() || f.access() != FileAccess::Read {
        return None;
    }
    // O_CREAT / O_TRUNC with O_RDONLY still changes the file system.
    const O_CREAT: u32 = 0o100;
    const O_TRUNC: u32 = 0o1000;
    if f.flags & (O_CREAT | O_TRUNC) != 0 || keep.contains(&f.path) {
        return None;
    }
    routine_group(&f.path)
}

/// The fold group of an event and the reads (and failed opens) it stands for: a
/// routine read ([`routine_read`]) or a sensor's `RoutineReads` summary.
fn fold_group(ev: &Event, keep: &HashSet<String>) -> Option<(String, u64, u64)> {
    match &ev.kind {
        Some(Kind::RoutineReads(r)) => Some((r.dir.clone(), r.count, r.failed)),
        Some(Kind::FileOpen(_)) => routine_read(ev, keep).map(|g| (g, 1, 0)),
        _ => None,
    }
}

/// One line of a folded timeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// An event shown in full: its index in the input.
    Event(usize),
    /// Routine reads of one process under one directory: the indices of the events,
    /// in order (the first is where the line sits in the timeline).
    Fold {
        exec_id: String,
        comm: String,
        dir: String,
        events: Vec<usize>,
        first_ns: u64,
        last_ns: u64,
        /// Reads the line stands for (more than `events` where the sensor counted).
        reads: u64,
        /// Failed opens the sensor's summaries counted.
        failed: u64,
    },
}

impl Row {
    /// "412 routine reads under /usr/lib/python3.11".
    pub fn fold_text(&self) -> Option<String> {
        match self {
            Row::Fold {
                dir, reads, failed, ..
            } => Some(format!(
                "{reads} routine read{} under {dir}{}",
                if *reads == 1 { "" } else { "s" },
                if *failed > 0 {
                    format!(" ({failed} failed)")
                } else {
                    String::new()
                }
            )),
            Row::Event(_) => None,
        }
    }
}

/// Folds `events` (in timeline order) until `max_rows` lines are formed. Returns the
/// lines and how many events they consume: events after that are not in any line (a
/// next page starts there), so every count is exact for what is shown.
pub fn fold<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    keep: &HashSet<String>,
    max_rows: usize,
) -> (Vec<Row>, usize) {
    let mut rows: Vec<Row> = Vec::new();
    let mut open: HashMap<(String, String), usize> = HashMap::new();
    let mut consumed = 0;
    for (i, ev) in events.into_iter().enumerate() {
        let found = fold_group(ev, keep);
        let (n, nf) = found.as_ref().map_or((0, 0), |f| (f.1, f.2));
        let group = found.map(|f| f.0);
        let exec = ev
            .process
            .as_ref()
            .map(|p| p.exec_id.clone())
            .unwrap_or_default();
        let existing = group
            .as_ref()
            .and_then(|g| open.get(&(exec.clone(), g.clone())).copied());
        if existing.is_none() && rows.len() >= max_rows {
            break;
        }
        consumed = i + 1;
        match (group, existing) {
            (Some(_), Some(at)) => {
                if let Row::Fold {
                    events,
                    last_ns,
                    reads,
                    failed,
                    ..
                } = &mut rows[at]
                {
                    events.push(i);
                    *last_ns = (*last_ns).max(ev.time_ns);
                    *reads += n;
                    *failed += nf;
                }
            }
            (Some(dir), None) => {
                open.insert((exec.clone(), dir.clone()), rows.len());
                rows.push(Row::Fold {
                    comm: ev
                        .process
                        .as_ref()
                        .map(|p| p.comm.clone())
                        .unwrap_or_default(),
                    exec_id: exec,
                    dir,
                    events: vec![i],
                    first_ns: ev.time_ns,
                    last_ns: ev.time_ns,
                    reads: n,
                    failed: nf,
                });
            }
            (None, _) => rows.push(Row::Event(i)),
        }
    }
    (rows, consumed)
}

fn stack_name(s: i32) -> &'static str {
    match TlsStack::try_from(s).unwrap_or(TlsStack::Unknown) {
        TlsStack::Unknown => "unknown TLS",
        TlsStack::Openssl => "OpenSSL",
        TlsStack::Boringssl => "BoringSSL",
        TlsStack::Rustls => "rustls",
        TlsStack::GoCryptoTls => "Go crypto/tls",
    }
}

/// "TLS not readable: rustls 0.23.20 — tried symbols, prologue scan": what the
/// process's node says when its binary has TLS Custody cannot read.
pub fn uncovered_note(t: &TlsUncovered) -> String {
    let stacks: Vec<String> = t
        .stacks
        .iter()
        .map(|s| {
            if s.versions.is_empty() {
                stack_name(s.stack).to_owned()
            } else {
                s.versions.join(", ")
            }
        })
        .collect();
    let tried: Vec<&str> = t
        .stacks
        .iter()
        .flat_map(|s| s.tried.iter().map(String::as_str))
        .collect();
    let mut out = format!(
        "TLS not readable: {}",
        if stacks.is_empty() {
            "unknown TLS".to_owned()
        } else {
            stacks.join("; ")
        }
    );
    if !tried.is_empty() {
        out.push_str(" — tried ");
        out.push_str(&tried.join("; "));
    }
    out
}

/// "3 opaque TLS connections from 2 processes whose TLS Custody cannot read", or
/// `None` when the chain has neither an uncovered process nor opaque egress.
pub fn opaque_sentence(connections: u64, processes: u64) -> Option<String> {
    (connections > 0 || processes > 0).then(|| {
        format!(
            "{connections} opaque TLS connection{} from {processes} process{} whose TLS Custody cannot read",
            if connections == 1 { "" } else { "s" },
            if processes == 1 { "" } else { "es" },
        )
    })
}

#[cfg(test)]
mod tests;
