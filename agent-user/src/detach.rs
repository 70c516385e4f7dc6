//! `custodyd detach`: remove what a stopped sensor left pinned in bpffs (its
//! enforcement maps and the links that keep the quarantine and kill hooks attached),
//! e.g. before the package is removed. It is the offline twin of the daemon's clean
//! stop: enforcement in force (a quarantine, a pending kill, a held process) is never
//! dropped silently — detach refuses and says what is in force, unless `--force`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use agent_ebpf::{Held, KillMark};
use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};

use crate::config::Config;
use crate::kernel::pins::PIN_LAYOUT;

/// Exit code: a custodyd is running with this state directory.
pub const EXIT_RUNNING: i32 = 2;
/// Exit code: enforcement is in force and `--force` was not given.
pub const EXIT_ENFORCING: i32 = 3;

/// Lock file in the state directory, held (flock) by a running daemon.
const LOCK_FILE: &str = "custodyd.lock";

/// Held by the daemon for as long as it runs: `detach` checks it to refuse pulling
/// the pins from under a live sensor.
pub struct RunLock {
    _file: File,
}

fn try_flock(f: &File) -> bool {
    // SAFETY: flock on an fd we own; failure is reported through the return value.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl RunLock {
    /// Take the lock (best effort: a second daemon on the same state directory is
    /// warned about, not stopped).
    pub fn take(state_dir: &Path) -> Option<RunLock> {
        let _ = std::fs::create_dir_all(state_dir);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(state_dir.join(LOCK_FILE))
            .ok()?;
        if !try_flock(&f) {
            tracing::warn!(
                "another custodyd holds {}: two daemons share this state directory",
                state_dir.join(LOCK_FILE).display()
            );
            return None;
        }
        Some(RunLock { _file: f })
    }
}

/// Whether a daemon holds the state directory's lock.
pub fn daemon_running(state_dir: &Path) -> bool {
    match File::open(state_dir.join(LOCK_FILE)) {
        Ok(f) => !try_flock(&f), // our probe lock is released when `f` is dropped
        Err(_) => false,
    }
}

/// Enforcement found in the pinned maps, for processes that still exist.
#[derive(Debug, Default, PartialEq)]
pub struct InForce {
    pub quarantined: Vec<u32>,
    pub pending_kills: Vec<u32>,
    pub held: Vec<u32>,
}

impl InForce {
    pub fn is_empty(&self) -> bool {
        self.quarantined.is_empty() && self.pending_kills.is_empty() && self.held.is_empty()
    }
}

fn alive(pid: u32) -> bool {
    crate::hold::proc_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

fn keys<V: aya::Pod>(path: &Path) -> Result<Vec<u32>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let data = MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
    let map: BpfHashMap<MapData, u32, V> = BpfHashMap::try_from(Map::HashMap(data))
        .with_context(|| format!("{}: unexpected map layout", path.display()))?;
    let mut k: Vec<u32> = map.keys().filter_map(Result::ok).collect();
    k.sort_unstable();
    Ok(k)
}

/// Read the pinned enforcement maps under `pin_dir` (the sensor's base pin dir).
/// Entries of processes that are gone are ignored: they were left because the exit
/// hook that clears them went away with the daemon.
pub fn in_force(pin_dir: &Path) -> Result<InForce> {
    let dir = pin_dir.join(PIN_LAYOUT);
    let live = |v: Vec<u32>| v.into_iter().filter(|p| alive(*p)).collect::<Vec<_>>();
    Ok(InForce {
        quarantined: live(keys::<u32>(&dir.join("QUARANTINE"))?),
        pending_kills: live(keys::<KillMark>(&dir.join("KILL"))?),
        held: live(keys::<Held>(&dir.join("HELD"))?),
    })
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn describe(pids: &[u32]) -> String {
    pids.iter()
        .map(|p| format!("{p} ({})", comm(*p)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every pin (file) below `dir`.
fn count_pins(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.filter_map(Result::ok)
            .map(|e| {
                let p = e.path();
                if p.is_dir() { count_pins(&p) } else { 1 }
            })
            .sum()
    })
}

/// `custodyd detach [--force]`; returns the exit code.
pub fn run(cfg: &Config, force: bool) -> Result<i32> {
    let pin_dir: PathBuf = cfg.pin_dir.clone();
    if daemon_running(&cfg.state_dir) {
        eprintln!(
            "custodyd detach: refused: a custodyd is running with state directory {} — stop it first (systemctl stop custodyd); it removes its own pins on a clean stop when nothing is enforced",
            cfg.state_dir.display()
        );
        return Ok(EXIT_RUNNING);
    }
    if !pin_dir.exists() {
        println!(
            "custodyd detach: nothing pinned under {}",
            pin_dir.display()
        );
        return Ok(0);
    }
    let found = match in_force(&pin_dir) {
        Ok(f) => f,
        Err(e) if force => {
            eprintln!(
                "custodyd detach: could not read the pinned maps ({e:#}); --force: removing them anyway"
            );
            InForce::default()
        }
        Err(e) => {
            return Err(e.context(format!(
                "cannot tell whether enforcement is in force under {} (use --force to remove the pins anyway)",
                pin_dir.display()
            )));
        }
    };
    if !found.is_empty() && !force {
        eprintln!(
            "custodyd detach: refused: enforcement is in force on host {} (pinned in {}):",
            cfg.host_id,
            pin_dir.display()
        );
        if !found.quarantined.is_empty() {
            eprintln!("  network quarantine: {}", describe(&found.quarantined));
        }
        if !found.pending_kills.is_empty() {
            eprintln!("  pending kills: {}", describe(&found.pending_kills));
        }
        if !found.held.is_empty() {
            eprintln!("  held for vetting (stopped): {}", describe(&found.held));
        }
        eprintln!(
            "  release it first (custodyctl release …, with custodyd running), or remove anyway with `custodyd detach --force` (lifts the quarantine, kills held processes); for the package: CUSTODY_FORCE_REMOVE=1 apt remove custodyd"
        );
        return Ok(EXIT_ENFORCING);
    }
    // Held processes were stopped by the kernel until custodyd vets them; with the
    // daemon gone for good nobody would: fail closed.
    for pid in &found.held {
        // SAFETY: plain syscall on a pid read from the pinned HELD map.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    let n = count_pins(&pin_dir);
    std::fs::remove_dir_all(&pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    println!(
        "custodyd detach: removed {n} pins under {} (maps and links; the quarantine and kill hooks are detached)",
        pin_dir.display()
    );
    if !found.quarantined.is_empty() {
        println!(
            "  --force: quarantine lifted for {}",
            describe(&found.quarantined)
        );
    }
    if !found.pending_kills.is_empty() {
        println!(
            "  --force: pending kills dropped for {}",
            describe(&found.pending_kills)
        );
    }
    if !found.held.is_empty() {
        println!(
            "  --force: held processes killed (never vetted): {:?}",
            found.held
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_seen_while_held_and_gone_after() {
        let d = tempfile::tempdir().unwrap();
        assert!(!daemon_running(d.path()), "no lock file yet");
        let l = RunLock::take(d.path()).expect("first lock");
        assert!(daemon_running(d.path()));
        assert!(RunLock::take(d.path()).is_none(), "second daemon");
        drop(l);
        assert!(!daemon_running(d.path()));
    }

    #[test]
    fn nothing_in_force_without_pins() {
        let d = tempfile::tempdir().unwrap();
        assert!(in_force(d.path()).unwrap().is_empty());
    }
}
