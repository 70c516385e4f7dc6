//! Declared agents recognised in the kernel, at the exec itself: a process whose
//! environment carries `CUSTODY_AGENT=` or whose executable path is an `exe`-only
//! selector of the config is put in `TRACKED` before its new image runs, so a child it
//! forks at once (a wrapper script's `curl`) is tracked from its first instruction.
//! The daemon fills the selector maps from its config; selectors that need user space
//! (sha256, argv glob, uid, cgroup path) keep the daemon's path.

use agent_ebpf::{ENV_MAX, ExecEvent, PATH_MAX, Tracked, counter, declare, policy, track};
use aya_ebpf::{macros::map, maps::HashMap};

use super::{TRACKED, count};

/// `path_hash(value of CUSTODY_AGENT)` → agent slot, for the config's env selectors
/// and agent ids (a value not listed is tracked under slot 0 and named by the daemon).
#[map]
pub static DECLARED_ENV: HashMap<u64, u32> = HashMap::with_max_entries(declare::MAX, 0);

/// `path_hash(executable path)` → agent slot, for the config's `exe`-only selectors.
#[map]
pub static DECLARED_EXE: HashMap<u64, u32> = HashMap::with_max_entries(declare::MAX, 0);

const P: usize = declare::ENV_PREFIX.len();

/// Track the exec'ing process if it is a declared agent the kernel can recognise;
/// returns the `Tracked::flags` it was tracked with (0: not recognised). The caller
/// only asks for untracked processes (a tracked one's children are tracked anyway).
#[inline(always)]
pub fn at_exec(tgid: u32, ev: &mut ExecEvent) -> Option<(u32, u32)> {
    let (slot, how) = if let Some(slot) = exe_slot(ev) {
        (slot, track::KERNEL_EXE)
    } else {
        (env_slot(ev)?, track::KERNEL_ENV)
    };
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

/// Some(slot) when the environment carries `CUSTODY_AGENT=<non-empty>` (slot 0 when
/// the value is not one of the config's). One pass over the bytes already read for
/// the exec record, stopping at the first match; the value is hashed in a second,
/// separate loop so the verifier walks each loop once.
#[inline(always)]
fn env_slot(ev: &ExecEvent) -> Option<u32> {
    let n = ev.env_len as usize;
    let mut start = usize::MAX;
    for i in 0..ENV_MAX - P {
        if i + P > n {
            break;
        }
        if ev.env[i] != b'C' || (i > 0 && ev.env[i - 1] != 0) {
            continue;
        }
        let mut same = true;
        for j in 1..P {
            if ev.env[i + j] != declare::ENV_PREFIX[j] {
                same = false;
                break;
            }
        }
        if same {
            start = i + P;
            break;
        }
    }
    if start >= n || ev.env[start & (ENV_MAX - 1)] == 0 {
        // No marker, or an empty value (which user space ignores too).
        return None;
    }
    let mut h = policy::FNV_OFFSET;
    let mut whole = false;
    for k in 0..declare::VALUE_MAX {
        let i = (start + k) & (ENV_MAX - 1);
        if start + k >= n || ev.env[i] == 0 {
            whole = true;
            break;
        }
        h = (h ^ ev.env[i] as u64).wrapping_mul(policy::FNV_PRIME);
    }
    if !whole {
        return Some(0);
    }
    Some(unsafe { DECLARED_ENV.get(&h) }.copied().unwrap_or(0))
}
