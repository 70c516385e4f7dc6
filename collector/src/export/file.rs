//! A file of JSON lines: appended to, fsynced after every batch, created 0600 (events
//! carry command lines and paths), and reopened when it was moved or removed (log
//! rotation: `mv` then the next batch starts a new file; `copytruncate` works too).
//!
//! When the file is opened, the records it already ends with are noted and not
//! written again: a crash after a write but before the export's cursor was saved
//! does not duplicate lines in the file. A torn last line (the power failed mid
//! write) is ended with a newline so the next record starts on its own line.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{Line, Sent};

/// How much of a file's end is read to find the records it holds.
const TAIL_BYTES: u64 = 1 << 20;

struct Open {
    file: File,
    dev: u64,
    ino: u64,
    /// The newest event id and alert id in the file.
    last_event: u64,
    last_alert: String,
}

pub struct FileSink {
    path: PathBuf,
    open: Arc<Mutex<Option<Open>>>,
}

/// The event id or alert id a line carries (JSON lines and OCSF shapes).
fn ids_of(v: &Value) -> (Option<u64>, Option<String>) {
    let s = |v: &Value| v.as_str().map(str::to_owned);
    match v.get("record").and_then(Value::as_str) {
        Some("event") => (v.get("id").and_then(Value::as_u64), None),
        Some("alert") => (None, v.get("alert_id").and_then(s)),
        _ if v.get("class_uid").and_then(Value::as_u64) == Some(2004) => {
            (None, v.pointer("/finding_info/uid").and_then(s))
        }
        _ => (
            v.pointer("/metadata/sequence").and_then(Value::as_u64),
            None,
        ),
    }
}

fn open_file(path: &Path) -> Result<Open> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open export file {}", path.display()))?;
    let meta = file.metadata()?;
    let (mut last_event, mut last_alert) = (0, String::new());
    let len = meta.len();
    if len > 0 {
        let from = len.saturating_sub(TAIL_BYTES);
        file.seek(SeekFrom::Start(from))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        let torn = tail.last() != Some(&b'\n');
        for line in tail.split(|b| *b == b'\n') {
            if let Ok(v) = serde_json::from_slice::<Value>(line) {
                let (e, a) = ids_of(&v);
                last_event = last_event.max(e.unwrap_or(0));
                if let Some(a) = a
                    && a > last_alert
                {
                    last_alert = a;
                }
            }
        }
        if torn {
            file.write_all(b"\n")?;
        }
    }
    Ok(Open {
        file,
        dev: meta.dev(),
        ino: meta.ino(),
        last_event,
        last_alert,
    })
}

impl FileSink {
    pub fn open(path: &Path) -> Result<FileSink> {
        let open = open_file(path)?;
        Ok(FileSink {
            path: path.to_owned(),
            open: Arc::new(Mutex::new(Some(open))),
        })
    }

    /// Appends the lines not already in the file and fsyncs.
    pub async fn write(&mut self, lines: &[Line]) -> Result<Sent> {
        let (path, open) = (self.path.clone(), self.open.clone());
        // Lines are small; copy them for the blocking task.
        let lines: Vec<(Option<u64>, Option<String>, String)> = lines
            .iter()
            .map(|l| (l.event_id, l.alert_id.clone(), l.text.clone()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let mut guard = open.lock().unwrap_or_else(|e| e.into_inner());
            // Moved or removed (rotation)? Start a new file at the path.
            let same = match std::fs::metadata(&path) {
                Ok(m) => guard
                    .as_ref()
                    .is_some_and(|o| o.dev == m.dev() && o.ino == m.ino()),
                Err(_) => false,
            };
            if !same {
                if let Some(o) = guard.as_ref() {
                    let _ = o.file.sync_all();
                }
                *guard = None;
                *guard = Some(open_file(&path)?);
            }
            let o = guard.as_mut().expect("opened above");
            let mut buf = Vec::new();
            let mut n = 0u64;
            for (e, a, text) in &lines {
                let dup = e.is_some_and(|e| e <= o.last_event)
                    || a.as_ref().is_some_and(|a| *a <= o.last_alert);
                if dup {
                    continue;
                }
                buf.extend_from_slice(text.as_bytes());
                buf.push(b'\n');
                n += 1;
            }
            if !buf.is_empty() {
                o.file
                    .write_all(&buf)
                    .with_context(|| format!("writing {}", path.display()))?;
                o.file
                    .sync_data()
                    .with_context(|| format!("fsync of {}", path.display()))?;
            }
            for (e, a, _) in &lines {
                o.last_event = o.last_event.max(e.unwrap_or(0));
                if let Some(a) = a
                    && *a > o.last_alert
                {
                    o.last_alert = a.clone();
                }
            }
            Ok(Sent {
                delivered: n,
                rejected: 0,
            })
        })
        .await?
    }

    pub fn sync(&mut self) -> Result<()> {
        if let Some(o) = self.open.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            o.file.sync_all()?;
        }
        Ok(())
    }
}
