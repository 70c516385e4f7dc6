//! Declared agents recognised in the kernel, at the exec itself: a process whose
//! environment carries `CUSTODY_AGENT=` or whose executable path is an `exe`-only
//! selector of the config is put in `TRACKED` before its new image runs, so a child it
//! forks at once (a wrapper script's `curl`) is tracked from its first instruction.
//! The daemon fills the selector maps from its config; selectors that need user space
//! (sha256, argv glob, uid, cgroup path) keep the daemon's path.

use core::ffi::c_void;

use agent_ebpf::{ENV_MAX, ExecEvent, PATH_MAX, Tracked, counter, declare, policy, track};
use aya_ebpf::{helpers::generated::bpf_loop, macros::map, maps::HashMap};

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

const P: usize = declare::ENV_PREFIX.len();

/// State of the environment scan, shared by the `bpf_loop` callbacks below. The scan
/// is two `bpf_loop`s rather than Rust loops: the verifier walks a callback once,
/// whereas a bounded loop over the record's 4 KiB is walked byte by byte and exceeds
/// its budget on 6.18 (measured: `custody_exec` then failed to load).
#[repr(C)]
struct EnvScan {
    ev: *const ExecEvent,
    /// Bytes of environment in the record.
    len: u64,
    /// Offset of the marker's value once found (`u64::MAX` until then).
    start: u64,
    hash: u64,
    /// The value ended (NUL or end of environment) within `VALUE_MAX` bytes.
    whole: u64,
}

/// Position `i` of the environment: does a `CUSTODY_AGENT=` variable start here?
/// (Returning 1 stops the loop.)
unsafe extern "C" fn marker_at(i: u64, ctx: *mut c_void) -> i64 {
    let s = unsafe { &mut *(ctx as *mut EnvScan) };
    if i >= (ENV_MAX - P) as u64 || i + P as u64 > s.len {
        return 1;
    }
    let i = i as usize;
    let env = unsafe { &(*s.ev).env };
    if env[i] != b'C' || (i > 0 && env[i - 1] != 0) {
        return 0;
    }
    let mut j = 1;
    while j < P {
        if env[i + j] != declare::ENV_PREFIX[j] {
            return 0;
        }
        j += 1;
    }
    s.start = (i + P) as u64;
    1
}

/// Byte `k` of the marker's value: fold it into the hash, stop at its end.
unsafe extern "C" fn value_at(k: u64, ctx: *mut c_void) -> i64 {
    let s = unsafe { &mut *(ctx as *mut EnvScan) };
    let at = s.start.wrapping_add(k);
    if at >= s.len || at >= ENV_MAX as u64 {
        s.whole = 1;
        return 1;
    }
    let b = unsafe { (*s.ev).env[at as usize] };
    if b == 0 {
        s.whole = 1;
        return 1;
    }
    s.hash = (s.hash ^ b as u64).wrapping_mul(policy::FNV_PRIME);
    0
}

/// Some(slot) when the environment carries `CUSTODY_AGENT=<non-empty>` (slot 0 when
/// the value is not one of the config's, or longer than `VALUE_MAX`: the daemon names
/// it from the exec record). Scans the bytes already read for the exec record.
#[inline(always)]
fn env_slot(ev: &ExecEvent) -> Option<u32> {
    let mut s = EnvScan {
        ev: ev as *const ExecEvent,
        len: ev.env_len as u64,
        start: u64::MAX,
        hash: policy::FNV_OFFSET,
        whole: 0,
    };
    let ctx = &mut s as *mut EnvScan as *mut c_void;
    // The callbacks go to the helper as function pointers, never through an integer:
    // the relocation that makes them BPF subprograms needs the symbol itself.
    let marker = marker_at as unsafe extern "C" fn(u64, *mut c_void) -> i64 as *mut c_void;
    let value = value_at as unsafe extern "C" fn(u64, *mut c_void) -> i64 as *mut c_void;
    unsafe { bpf_loop((ENV_MAX - P) as u32, marker, ctx, 0) };
    if s.start >= s.len {
        return None;
    }
    unsafe { bpf_loop(declare::VALUE_MAX as u32 + 1, value, ctx, 0) };
    if s.hash == policy::FNV_OFFSET {
        // An empty value, which user space ignores too.
        return None;
    }
    if s.whole == 0 {
        return Some(0);
    }
    Some(unsafe { DECLARED_ENV.get(&s.hash) }.copied().unwrap_or(0))
}
