//! Declared agents recognised in the kernel, at the exec itself: a process whose
//! executable path is an `exe`-only selector of the config is put in `TRACKED` before its new image runs, so a child it
//! forks at once (a wrapper script's `curl`) is tracked from its first instruction.
//! The daemon fills the selector maps from its config; selectors that need user space
//! (sha256, argv glob, uid, cgroup path) keep the daemon's path.

use agent_ebpf::{ExecEvent, PATH_MAX, Tracked, counter, declare, policy, track};
use aya_ebpf::{macros::map, maps::HashMap};

use super::{TRACKED, count};

/// `path_hash(value of CUSTODY_AGENT)` → agent slot, for the config's env selectors
/// and agent ids (a value not listed is tracked under slot 0 and named by the daemon).
#[map]
pub static DECLARED_ENV: HashMap<u64, u32> = HashMap::with_max_entries(declare::MAX, 0);

/// `path_hash(executable path)` → agent slot, for the config's `exe`-only selectors.
#[map]
pub static DECLARED_EXE: HashMap<u64, u32> = HashMap::with_max_entries(declare::MAX, 0);

/// Track the exec'ing process if it is a declared agent the kernel can recognise;
/// returns the `Tracked::flags` it was tracked with (0: not recognised). The caller
/// only asks for untracked processes (a tracked one's children are tracked anyway).
#[inline(always)]
pub fn at_exec(tgid: u32, ev: &mut ExecEvent) -> Option<(u32, u32)> {
    // The `CUSTODY_AGENT=` scan of the environment is not here yet: a byte loop over
    // the record's 4 KiB (or even 2 KiB) exceeds the verifier's budget on 6.18; it
    // needs `bpf_loop` or a scan in words. Until then that marker is read by the daemon.
    let (slot, how) = (exe_slot(ev)?, track::KERNEL_EXE);
    let t = Tracked::new(slot, track::DECLARED | how);
    if TRACKED.insert(&tgid, &t, 0).is_err() {
        count(counter::TRACKED_FULL);
        return None;
    }
    count(counter::DECLARED_AT_EXEC);
    Some((slot, how))
}

/// The slot of an `exe` selector naming this exec's path.
#[inline(always)]
fn exe_slot(ev: &ExecEvent) -> Option<u32> {
    let n = ev.path_len as usize;
    if n == 0 || ev.path[0] != b'/' {
        return None;
    }
    let mut h = policy::FNV_OFFSET;
    for i in 0..PATH_MAX {
        if i >= n {
            break;
        }
        h = (h ^ ev.path[i] as u64).wrapping_mul(policy::FNV_PRIME);
    }
    unsafe { DECLARED_EXE.get(&h) }.copied()
}
