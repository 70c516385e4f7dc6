//! The demo's three hosts: network namespaces `cdemo-finance-{a,b,c}` on the bridge
//! `cdemo0`. Their names are recorded in `.custody/demo-fleet` while they exist, so a
//! demo that was killed before it could clean up is cleaned up by the next one; a
//! name that is taken by anything else stops the demo with what to do.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use custody_tests::netns::{Fleet, ip_quiet as ip};

const PREFIX: &str = "cdemo";

fn record(custody: &Path) -> PathBuf {
    custody.join("demo-fleet")
}

/// Fails early, before anything is built or started, if a name is taken.
pub fn check_free() -> Result<()> {
    Fleet::check_names_free(PREFIX, &super::HOSTS)
        .map_err(|e| anyhow::anyhow!("cannot create the demo's hosts: {e}"))
}

pub fn create(custody: &Path) -> Result<Fleet> {
    let fleet = match Fleet::named(PREFIX, &super::HOSTS) {
        Ok(f) => f,
        Err(e) => bail!("cannot create the demo's hosts: {e}"),
    };
    let mut names: Vec<String> = fleet
        .hosts
        .iter()
        .map(|h| format!("netns {}", h.ns))
        .collect();
    names.push(format!("link {PREFIX}0"));
    for i in 0..fleet.hosts.len() {
        names.push(format!("link {PREFIX}v{i}"));
    }
    std::fs::write(record(custody), names.join("\n") + "\n")?;
    Ok(fleet)
}

/// Forget the record once the fleet is gone.
pub fn forget(custody: &Path) {
    let _ = std::fs::remove_file(record(custody));
}

/// Remove what a killed demo left (we hold the demo lock, so it is not running).
pub fn remove_leftovers(custody: &Path) {
    let Ok(text) = std::fs::read_to_string(record(custody)) else {
        return;
    };
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("netns", ns)) => {
                for pid in ip(&["netns", "pids", ns]).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill(2) of a process left in the demo's own namespace.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                eprintln!("demo: removing namespace {ns} left by an earlier demo");
                ip(&["netns", "del", ns]);
            }
            Some(("link", l)) => {
                ip(&["link", "del", l]);
            }
            _ => {}
        }
    }
    forget(custody);
}
