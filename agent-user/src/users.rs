//! uid → user name, from /etc/passwd (re-read when an unknown uid shows up, at most
//! once a minute, so new accounts appear without a restart).

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct Users {
    names: HashMap<u32, String>,
    loaded: Option<Instant>,
}

impl Default for Users {
    fn default() -> Self {
        Self::new()
    }
}

impl Users {
    pub fn new() -> Self {
        let mut u = Users {
            names: HashMap::new(),
            loaded: None,
        };
        u.reload();
        u
    }

    fn reload(&mut self) {
        self.loaded = Some(Instant::now());
        let Ok(s) = std::fs::read_to_string("/etc/passwd") else {
            return;
        };
        for line in s.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if let (Some(name), Some(uid)) = (f.first(), f.get(2).and_then(|u| u.parse().ok())) {
                self.names.insert(uid, (*name).to_string());
            }
        }
    }

    /// The user name, "" for the unset login uid, or the number when unknown.
    pub fn name(&mut self, uid: u32) -> String {
        if uid == u32::MAX {
            return String::new();
        }
        if let Some(n) = self.names.get(&uid) {
            return n.clone();
        }
        if self
            .loaded
            .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
        {
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
    #[test]
    fn root_is_named() {
        let mut u = super::Users::new();
        assert_eq!(u.name(0), "root");
        assert_eq!(u.name(u32::MAX), "");
        assert_eq!(u.name(3_999_999), "3999999");
    }
}
