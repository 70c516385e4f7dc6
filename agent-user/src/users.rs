//! uid → user name, from the account database (/etc/passwd). An account created after
//! the sensor started must not stay a bare uid: on a miss the file is read again when
//! it changed (size, mtime or inode; checked at most once a second) or when the last
//! read is a minute old, so a new account resolves from its first event on.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Least time between two looks at the file on misses (a uid with no account, e.g. a
/// container's, misses on every event).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Read again on a miss after this long even if the file looks unchanged (coarse
/// mtime, a file replaced within the same second with the same size).
const RELOAD_EVERY: Duration = Duration::from_secs(60);

pub struct Users {
    path: PathBuf,
    names: HashMap<u32, String>,
    /// (size, mtime ns, inode) of the file when last read.
    stamp: Option<(u64, i128, u64)>,
    loaded: Option<Instant>,
    checked: Option<Instant>,
}

impl Default for Users {
    fn default() -> Self {
        Self::new()
    }
}

impl Users {
    pub fn new() -> Self {
        Self::from_file("/etc/passwd")
    }

    /// Names from a passwd-format file.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        let mut u = Users {
            path: path.into(),
            names: HashMap::new(),
            stamp: None,
            loaded: None,
            checked: None,
        };
        u.reload();
        u
    }

    fn stamp(&self) -> Option<(u64, i128, u64)> {
        let m = std::fs::metadata(&self.path).ok()?;
        Some((
            m.size(),
            m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            m.ino(),
        ))
    }

    fn reload(&mut self) {
        let now = Instant::now();
        self.loaded = Some(now);
        self.checked = Some(now);
        self.stamp = self.stamp();
        let Ok(s) = std::fs::read_to_string(&self.path) else {
            return;
        };
        // Rebuilt, so a removed or renumbered account does not linger.
        self.names.clear();
        for line in s.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if let (Some(name), Some(uid)) = (f.first(), f.get(2).and_then(|u| u.parse().ok())) {
                self.names.entry(uid).or_insert_with(|| (*name).to_string());
            }
        }
    }

    /// Whether a miss should read the file again.
    fn stale(&mut self) -> bool {
        if self.loaded.is_none_or(|t| t.elapsed() >= RELOAD_EVERY) {
            return true;
        }
        if self.checked.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
            return false;
        }
        self.checked = Some(Instant::now());
        self.stamp() != self.stamp
    }

    /// The user name, "" for the unset login uid, or the number when unknown.
    pub fn name(&mut self, uid: u32) -> String {
        if uid == u32::MAX {
            return String::new();
        }
        if let Some(n) = self.names.get(&uid) {
            return n.clone();
        }
        if self.stale() {
            self.reload();
            if let Some(n) = self.names.get(&uid) {
                return n.clone();
            }
        }
        uid.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_named() {
        let mut u = Users::new();
        assert_eq!(u.name(0), "root");
        assert_eq!(u.name(u32::MAX), "");
        assert_eq!(u.name(3_999_999), "3999999");
    }

    /// An account added after start resolves to its name on the first look past the
    /// once-a-second check, not a minute later.
    #[test]
    fn account_added_after_start_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let mut u = Users::from_file(&path);
        assert_eq!(u.name(0), "root");
        assert_eq!(u.name(4321), "4321");
        std::fs::write(
            &path,
            "root:x:0:0:root:/root:/bin/sh\nbob:x:4321:4321::/home/bob:/bin/sh\n",
        )
        .unwrap();
        std::thread::sleep(CHECK_EVERY + Duration::from_millis(50));
        assert_eq!(u.name(4321), "bob");
        // And it stays named.
        assert_eq!(u.name(4321), "bob");
    }

    /// Misses inside the check interval do not touch the file.
    #[test]
    fn misses_are_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let mut u = Users::from_file(&path);
        assert_eq!(u.name(77), "77");
        std::fs::write(&path, "root:x:0:0::/:/bin/sh\ncarol:x:77:77::/:/bin/sh\n").unwrap();
        // Within a second of the load: still unknown (no re-read on every miss).
        assert_eq!(u.name(77), "77");
        std::thread::sleep(CHECK_EVERY + Duration::from_millis(50));
        assert_eq!(u.name(77), "carol");
    }
}
