//! Kernel policy rules (the chain-independent part of the collector's policies):
//! endpoint deny lists checked by the cgroup connect/sendmsg hooks (the syscall fails
//! with EPERM) and forbidden paths checked at openat/openat2 entry (the process is
//! killed with SIGKILL on that syscall, before it gets a file descriptor).
//!
//! Only tracked processes (agents and their descendants) are subject to rules: the
//! agent slot of the `TRACKED` entry selects the agent's rules, and rules stored
//! under `policy::ANY_AGENT` apply to every tracked process. The maps are not
//! pinned: agent slots are assigned per daemon run, so a starting daemon rewrites the
//! rules it persisted (state_dir/policy.json) for its own slots.

use agent_ebpf::{
    NetKey, NetRules, PATH_MAX, PathKey, PathRuleVal, PolicyEvent, PolicyMeta, counter, kind,
    policy,
};
use aya_ebpf::{
    helpers::generated,
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
};
use core::ffi::c_void;

use super::{EVENTS, TRACKED, count, current_tgid, fill_current};

/// The active generation (0 or 1), flipped by the daemon after writing a new set.
#[map]
pub static POLICY_GEN: Array<u32> = Array::with_max_entries(1, 0);

/// Per-generation summary: which rule kinds exist, which path lengths have rules.
#[map]
pub static POLICY_META: Array<PolicyMeta> = Array::with_max_entries(2, 0);

/// Endpoint deny rules (both generations; the daemon bounds each to half).
#[map]
pub static NET_DENY: LpmTrie<NetKey, NetRules> = LpmTrie::with_max_entries(8192, 0);

/// Forbidden paths and prefixes (both generations).
#[map]
pub static PATH_DENY: HashMap<PathKey, PathRuleVal> = HashMap::with_max_entries(8192, 0);

#[repr(C)]
pub struct PathScratch {
    pub buf: [u8; PATH_MAX],
    /// `hashes[n]`: FNV-1a of the first n bytes of `buf`.
    pub hashes: [u64; PATH_MAX],
}

/// The path being checked and its prefix hashes (too big for the stack).
#[map]
pub static PATH_SCRATCH: PerCpuArray<PathScratch> = PerCpuArray::with_max_entries(1, 0);

const SIGKILL: u32 = 9;
const O_ACCMODE: u32 = 3;
const O_WRONLY: u32 = 1;
const O_RDONLY: u32 = 0;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;

/// The active generation and its summary, when it has rules of `kind_flag`.
#[inline(always)]
fn armed(kind_flag: u32) -> Option<(u32, PolicyMeta)> {
    let generation = *POLICY_GEN.get(0)?;
    let meta = POLICY_META.get(generation & 1)?;
    if meta.flags & kind_flag == 0 {
        return None;
    }
    Some((generation & 1, *meta))
}

/// The agent slot of the current process, when it is tracked.
#[inline(always)]
fn tracked_agent() -> Option<u32> {
    // SAFETY: copied out immediately.
    unsafe { TRACKED.get(&current_tgid()) }.map(|t| t.agent)
}

/// Whether the current process is subject to endpoint rules: Some((generation,
/// agent)) when rules are loaded and it is tracked.
#[inline(always)]
pub fn net_subject() -> Option<(u32, u32)> {
    let (generation, _) = armed(policy::HAS_NET)?;
    Some((generation, tracked_agent()?))
}

#[inline(always)]
fn net_lookup(generation: u32, agent: u32, addr: [u8; 16], port: u16, proto: u8) -> Option<u32> {
    let key = Key::new(
        policy::NET_KEY_HEAD_BITS + 128,
        NetKey {
            generation,
            agent,
            addr,
        },
    );
    let v = NET_DENY.get(&key)?;
    let n = v.count as usize;
    for i in 0..policy::NET_RULES_MAX {
        if i >= n {
            break;
        }
        let r = &v.rules[i];
        if (r.port == 0 || r.port == port) && (r.proto == 0 || r.proto == proto) {
            return Some(r.rule);
        }
    }
    None
}

/// The rule denying a connection of (`generation`, `agent`) to `addr` (IPv6 form)
/// and `port`, if any: the agent's own rules, then the rules for every agent.
#[inline(always)]
pub fn net_denied(
    generation: u32,
    agent: u32,
    addr: [u8; 16],
    port: u16,
    proto: u8,
) -> Option<u32> {
    if agent != 0 && agent != policy::ANY_AGENT {
        if let Some(r) = net_lookup(generation, agent, addr, port, proto) {
            return Some(r);
        }
    }
    net_lookup(generation, policy::ANY_AGENT, addr, port, proto)
}

/// Report a refused connect/sendmsg (the daemon names the policy).
#[inline(always)]
pub fn report_net(op: u32, rule: u32, family: u16, addr: [u8; 16], port: u16, proto: u8) {
    count(counter::POLICY_NET_DENIED);
    let Some(mut entry) = EVENTS.reserve::<PolicyEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return;
    };
    // SAFETY: reserved memory of the right size; every field the daemon reads is set.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_current(&mut ev.hdr, kind::POLICY);
    ev.op = op;
    ev.rule = rule;
    ev.flags = 0;
    ev.path_len = 0;
    ev.family = family;
    ev.port = port;
    ev.proto = u16::from(proto);
    ev._pad = 0;
    ev.addr = addr;
    entry.submit(0);
}

/// The forbidden kinds (`policy::EXACT | DIR | PREFIX`) of a path key for the
/// access: reading kinds where `rmask` is all ones, writing kinds where `wmask` is.
/// Branch-free in the access, so the verifier does not fork on it.
#[inline(always)]
fn path_kinds(key: &PathKey, rmask: u32, wmask: u32) -> (u32, u32) {
    // SAFETY: copied out immediately.
    match unsafe { PATH_DENY.get(key) } {
        Some(v) => ((v.read & rmask) | (v.write & wmask), v.rule),
        None => (0, 0),
    }
}

/// At openat/openat2 entry of a tracked process: when the absolute path (or one of
/// its directory prefixes) is forbidden to its agent for this access, SIGKILL the
/// process on this syscall and report it. Relative paths cannot be matched here
/// (their base is a directory fd or the cwd): the daemon checks them after the fact.
///
/// Two bounded loops keep the verifier's work small: the first hashes every prefix
/// of the path (one path through each iteration), the second looks up the prefixes
/// of the few lengths rule paths have (`PolicyMeta::path_lens`).
#[inline(always)]
pub fn check_open(path: u64, flags: u32) {
    let Some((generation, meta)) = armed(policy::HAS_PATH) else {
        return;
    };
    let Some(agent) = tracked_agent() else {
        return;
    };
    let Some(scratch) = PATH_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, used by this program run only.
    let sc = unsafe { &mut *scratch };
    let n = unsafe {
        generated::bpf_probe_read_user_str(
            sc.buf.as_mut_ptr().cast::<c_void>(),
            PATH_MAX as u32,
            path as *const c_void,
        )
    };
    if n <= 1 || sc.buf[0] != b'/' {
        return;
    }
    // Path length; cut at PATH_MAX, no "end of path" match is possible (the NUL in
    // the buffer is ours): no rule length equals PATH_MAX.
    let plen: usize = if n as usize >= PATH_MAX {
        PATH_MAX
    } else {
        (n - 1) as usize
    };
    let mut h = policy::FNV_OFFSET;
    for i in 0..PATH_MAX {
        sc.hashes[i] = h;
        let c = sc.buf[i];
        if c == 0 {
            break;
        }
        h = (h ^ u64::from(c)).wrapping_mul(policy::FNV_PRIME);
    }
    let acc = flags & O_ACCMODE;
    let rmask = 0u32.wrapping_sub(u32::from(acc != O_WRONLY));
    let wmask = 0u32.wrapping_sub(u32::from(
        acc != O_RDONLY || flags & (O_CREAT | O_TRUNC) != 0,
    ));
    let nlens = meta.nlens as usize;
    let mut hit: Option<u32> = None;
    for j in 0..policy::PATH_LENS_MAX {
        if j >= nlens {
            break;
        }
        let len = meta.path_lens[j] as usize;
        if len > plen || len >= PATH_MAX {
            continue;
        }
        // Which kinds match at this length, given the byte after the prefix.
        let next = sc.buf[len];
        let mut want = policy::PREFIX;
        if next == b'/' {
            want |= policy::DIR;
        }
        if len == plen {
            want |= policy::DIR | policy::EXACT;
        }
        let mut key = PathKey {
            generation,
            agent: policy::ANY_AGENT,
            len: len as u32,
            _pad: 0,
            hash: sc.hashes[len],
        };
        let (any, any_rule) = path_kinds(&key, rmask, wmask);
        key.agent = agent;
        let (own, own_rule) = path_kinds(&key, rmask, wmask);
        if any & want != 0 {
            hit = Some(any_rule);
            break;
        }
        if own & want != 0 {
            hit = Some(own_rule);
            break;
        }
    }
    let Some(rule) = hit else {
        return;
    };
    // Dies on this syscall: the fatal signal is delivered before the return to user
    // space, so the process never sees a descriptor (see docs/policies.md).
    unsafe { generated::bpf_send_signal(SIGKILL) };
    count(counter::POLICY_OPEN_KILLED);
    let Some(mut entry) = EVENTS.reserve::<PolicyEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return;
    };
    // SAFETY: reserved memory of the right size; every field the daemon reads is set.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_current(&mut ev.hdr, kind::POLICY);
    ev.op = policy::OP_OPEN;
    ev.rule = rule;
    ev.flags = flags;
    ev.family = 0;
    ev.port = 0;
    ev.proto = 0;
    ev._pad = 0;
    ev.addr = [0; 16];
    let n = unsafe {
        generated::bpf_probe_read_user_str(
            ev.path.as_mut_ptr().cast::<c_void>(),
            PATH_MAX as u32,
            path as *const c_void,
        )
    };
    ev.path_len = if n > 0 { (n - 1) as u32 } else { 0 };
    entry.submit(super::BPF_RB_FORCE_WAKEUP);
}
