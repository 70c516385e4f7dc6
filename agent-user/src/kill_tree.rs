//! The whole tree a kill takes, including children the daemon has not heard of yet.
//!
//! A kill command names processes from the daemon's process table, which lags the
//! kernel by whatever is still in the ring buffer. A target that forked a moment
//! before the command was applied has a child the table does not list: the kernel's
//! mark inheritance only covers forks *after* the target was marked, so that child
//! outlived the kill (seen under load: a fork loop's newest child survived a
//! `kill_chain`). So before marking, every target is stopped (`SIGSTOP` through a
//! pidfd: a stopped process forks no more), and `/proc` is searched for children of
//! stopped processes until a search finds none; those are stopped and added in turn.
//! The caller then kills the whole set; SIGKILL ends a stopped process as any other.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::hold::{pidfd_open, pidfd_signal};

/// How long a search waits for its newly stopped processes to be stopped: a process
/// mid-`clone` finishes it first, and its child must be visible before the search.
const STOP_WAIT: Duration = Duration::from_millis(50);
/// Rounds of search (one per generation found): bounds the work a fork bomb can cause.
const MAX_ROUNDS: usize = 32;
/// Processes one kill may add beyond its targets.
const MAX_FOUND: usize = 4096;

/// A process of the tree: pid and start time in clock ticks (as in /proc/PID/stat).
pub type Proc = (u32, u64);

/// What the search found beyond the targets.
#[derive(Debug, Default)]
pub struct Found {
    /// Children (and their descendants) of the targets, not in the targets.
    pub extra: Vec<Proc>,
    /// The search stopped at a bound (rounds or count): the kernel's mark inheritance
    /// still covers later forks, but a child forked before the mark may be missed.
    pub bounded: bool,
}

/// Stops `targets` and every live descendant, and returns the descendants that were
/// not targets. Targets that are gone or reused are skipped (the caller's own
/// start-time check reports them).
pub fn stop_tree(targets: &[Proc]) -> Found {
    let mut stopped: HashMap<u32, u64> = HashMap::new();
    let mut found = Found::default();
    let mut new: Vec<Proc> = targets.to_vec();
    for _ in 0..MAX_ROUNDS {
        let fresh: Vec<Proc> = new
            .drain(..)
            .filter(|(pid, ticks)| !stopped.contains_key(pid) && stop(*pid, *ticks))
            .collect();
        if fresh.is_empty() {
            return found;
        }
        for (pid, ticks) in &fresh {
            stopped.insert(*pid, *ticks);
        }
        wait_stopped(&fresh);
        new = children_of(&stopped);
        if found.extra.len() + new.len() > MAX_FOUND {
            new.truncate(MAX_FOUND.saturating_sub(found.extra.len()));
            found.bounded = true;
        }
        found.extra.extend(new.iter().copied());
    }
    found.bounded = !new.is_empty();
    found
}

/// `SIGSTOP` to `pid` if it is still the process started at `ticks`.
fn stop(pid: u32, ticks: u64) -> bool {
    signal(pid, ticks, libc::SIGSTOP)
}

fn signal(pid: u32, ticks: u64, sig: libc::c_int) -> bool {
    let Some(fd) = pidfd_open(pid) else {
        return false;
    };
    // The check after the open: from here the pidfd names this process, whatever
    // happens to the number.
    stat_of(pid).map(|s| s.start_ticks) == Some(ticks) && pidfd_signal(&fd, sig)
}

/// SIGKILL to `pid` if it is still the process started at `ticks` (for a stopped
/// process whose kernel mark could not be set).
pub fn end(pid: u32, ticks: u64) {
    signal(pid, ticks, libc::SIGKILL);
}

/// Waits (bounded by [`STOP_WAIT`]) until each process is stopped, dead or gone.
fn wait_stopped(procs: &[Proc]) {
    let until = Instant::now() + STOP_WAIT;
    let mut left: Vec<Proc> = procs.to_vec();
    while !left.is_empty() && Instant::now() < until {
        left.retain(|(pid, ticks)| match stat_of(*pid) {
            Some(s) if s.start_ticks == *ticks => !matches!(s.state, 'T' | 't' | 'Z' | 'X'),
            _ => false,
        });
        if !left.is_empty() {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

/// Live processes whose parent is one of `parents` and that are not in it.
fn children_of(parents: &HashMap<u32, u64>) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !parents.contains_key(pid))
        .filter_map(|pid| {
            let s = stat_of(pid)?;
            (parents.contains_key(&s.ppid) && s.state != 'Z').then_some((pid, s.start_ticks))
        })
        .collect()
}

struct Stat {
    state: char,
    ppid: u32,
    start_ticks: u64,
}

/// Fields of /proc/PID/stat after the command name (which may hold spaces and
/// parentheses, hence the last `)`).
fn stat_of(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.get(text.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        start_ticks: f.get(19)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    //! Real processes: a shell that forks children the search must find.
    use std::process::{Command, Stdio};

    use super::*;

    fn ticks(pid: u32) -> u64 {
        stat_of(pid).unwrap().start_ticks
    }

    #[test]
    fn stops_the_target_and_finds_its_unlisted_children_and_grandchildren() {
        // The target forks a child that forks a grandchild; only the target is named.
        let mut sh = Command::new("sh")
            .arg("-c")
            .arg("sh -c 'sleep 60 & sleep 60; wait' & sleep 60; wait")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let root = sh.id();
        // Let the shells fork (the search must not depend on it, but the assertion
        // wants all three generations present).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut tree = 0;
        while Instant::now() < deadline {
            let mut set = HashMap::from([(root, 0)]);
            let mut n = 0;
            loop {
                let kids = children_of(&set);
                if kids.is_empty() {
                    break;
                }
                n += kids.len();
                set.extend(kids);
            }
            tree = n;
            if tree >= 4 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(tree >= 4, "the tree never formed: {tree}");

        let found = stop_tree(&[(root, ticks(root))]);
        assert!(!found.bounded);
        assert!(
            found.extra.len() >= 4,
            "children and grandchildren found: {:?}",
            found.extra
        );
        for (pid, _) in found.extra.iter().chain([(root, 0)].iter()) {
            // Stopped, or about to be: the search waits 50 ms at most for a stop, and a
            // loaded machine can take longer to deliver it.
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut state = stat_of(*pid).unwrap().state;
            while !matches!(state, 'T' | 't') && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
                state = stat_of(*pid).unwrap().state;
            }
            assert!(matches!(state, 'T' | 't'), "pid {pid} is {state}");
        }
        for (pid, _) in &found.extra {
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        sh.kill().unwrap();
        sh.wait().unwrap();
    }

    #[test]
    fn a_reused_or_gone_target_is_left_alone() {
        let mut c = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = c.id();
        let found = stop_tree(&[(pid, ticks(pid) + 1)]);
        assert!(found.extra.is_empty());
        // Not stopped (it may still be running its exec, or asleep).
        let state = stat_of(pid).unwrap().state;
        assert!(!matches!(state, 'T' | 't'), "pid {pid} is {state}");
        c.kill().unwrap();
        c.wait().unwrap();
    }
}
