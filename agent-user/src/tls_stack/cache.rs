//! Analyse each binary once: results are kept per identity (build id + length, or content
//! hash) in memory and, optionally, as one JSON file per binary in a state directory, so a
//! daemon restart does not re-read a 245 MB executable. A second small map remembers which
//! file (device, inode, size, mtime) had which identity, so a process exec of a known
//! binary costs one `stat`.
//!
//! `inspect` is synchronous and may take seconds on a first sight: the daemon calls it from
//! `spawn_blocking`. Two threads asking for the same new binary at once may both analyse
//! it; the results are equal, and the second insert is a no-op.

use super::{ANALYSIS_VERSION, InspectError, Inspection, elf, read_file};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileKey {
    fn of(path: &Path) -> Result<Self, InspectError> {
        let m = std::fs::metadata(path).map_err(|source| InspectError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(FileKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        })
    }
}

/// Counts for `custodyd status` / metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Binaries actually analysed (cache misses).
    pub analysed: u64,
    /// Answers from memory or the state directory.
    pub hits: u64,
    /// State files that could not be read or written (the in-memory answer still stands).
    pub state_errors: u64,
}

#[derive(Default)]
pub struct InspectionCache {
    dir: Option<PathBuf>,
    by_identity: Mutex<HashMap<String, Arc<Inspection>>>,
    by_file: Mutex<HashMap<FileKey, String>>,
    analysed: AtomicU64,
    hits: AtomicU64,
    state_errors: AtomicU64,
}

impl InspectionCache {
    /// `dir`: where to keep one `<identity>.json` per binary; `None` for memory only.
    pub fn new(dir: Option<PathBuf>) -> Self {
        InspectionCache {
            dir,
            ..Default::default()
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            analysed: self.analysed.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            state_errors: self.state_errors.load(Ordering::Relaxed),
        }
    }

    /// The inspection of the file at `path`, analysing it only if no cached answer exists
    /// for its identity.
    pub fn inspect(&self, path: &Path) -> Result<Arc<Inspection>, InspectError> {
        let file = FileKey::of(path)?;
        let known = self.by_file.lock().expect("cache lock").get(&file).cloned();
        if let Some(key) = known {
            if let Some(hit) = self
                .by_identity
                .lock()
                .expect("cache lock")
                .get(&key)
                .cloned()
            {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(hit);
            }
        }
        let bytes = read_file(path)?;
        let image = elf::Image::parse(&bytes)?;
        let identity = image.identity();
        let key = identity.key();
        self.by_file
            .lock()
            .expect("cache lock")
            .insert(file, key.clone());
        if let Some(hit) = self
            .by_identity
            .lock()
            .expect("cache lock")
            .get(&key)
            .cloned()
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        if let Some(stored) = self.load(&key).filter(|i| i.identity == identity) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(self.remember(key, stored));
        }
        let inspection = super::analyse(&image);
        self.analysed.fetch_add(1, Ordering::Relaxed);
        self.store(&key, &inspection);
        Ok(self.remember(key, inspection))
    }

    fn remember(&self, key: String, inspection: Inspection) -> Arc<Inspection> {
        self.by_identity
            .lock()
            .expect("cache lock")
            .entry(key)
            .or_insert_with(|| Arc::new(inspection))
            .clone()
    }

    fn state_path(&self, key: &str) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(format!("{key}.json")))
    }

    fn load(&self, key: &str) -> Option<Inspection> {
        let path = self.state_path(key)?;
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(_) => {
                self.state_errors.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        match serde_json::from_slice::<Inspection>(&text) {
            Ok(i) if i.analysis_version == ANALYSIS_VERSION => Some(i),
            Ok(_) => None, // written by another analyser version: analyse again
            Err(_) => {
                self.state_errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn store(&self, key: &str, inspection: &Inspection) {
        let Some(path) = self.state_path(key) else {
            return;
        };
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(inspection)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&tmp, json)?;
                std::fs::rename(&tmp, &path)
            });
        if written.is_err() {
            self.state_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
