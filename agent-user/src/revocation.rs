//! Revoked credentials, cached on the host (state_dir/revoked.json) so a revocation
//! keeps applying across daemon restarts and while the collector is unreachable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revoked {
    /// "kill" or "quarantine".
    pub action: String,
    pub command_id: String,
    pub reason: String,
}

#[derive(Debug)]
pub struct Revocations {
    path: PathBuf,
    pub by_fingerprint: BTreeMap<String, Revoked>,
}

impl Revocations {
    pub fn load(state_dir: &Path) -> Result<Revocations> {
        let path = state_dir.join("revoked.json");
        let by_fingerprint = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is corrupt", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Revocations {
            path,
            by_fingerprint,
        })
    }

    /// Add revocations and persist them before they are acknowledged.
    pub fn add(&mut self, fps: &[String], r: Revoked) -> Result<()> {
        for fp in fps {
            self.by_fingerprint.insert(fp.clone(), r.clone());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.by_fingerprint)?)?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_across_loads() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Revocations::load(d.path()).unwrap();
        assert!(r.by_fingerprint.is_empty());
        let v = Revoked {
            action: "kill".into(),
            command_id: "c1".into(),
            reason: "leaked".into(),
        };
        r.add(&["hmac-sha256:ab".into()], v.clone()).unwrap();
        let r2 = Revocations::load(d.path()).unwrap();
        assert_eq!(r2.by_fingerprint.get("hmac-sha256:ab"), Some(&v));
        std::fs::write(d.path().join("revoked.json"), b"{not json").unwrap();
        assert!(
            Revocations::load(d.path())
                .unwrap_err()
                .to_string()
                .contains("corrupt")
        );
    }
}
