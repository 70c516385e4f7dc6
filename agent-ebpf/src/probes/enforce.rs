//! Enforcement: the kill set (checked at syscall entry, so a marked process dies at
//! its next syscall even when user space is slow) and network quarantine (cgroup
//! connect/sendmsg hooks make the syscall fail with EPERM; the same hooks apply the
//! agents' endpoint deny rules, see `policy`). The maps are pinned, so enforcement
//! outlives a crash or restart of the daemon.

use agent_ebpf::{Endpoint, Held, KillMark, counter, hold, policy};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, generated::bpf_send_signal},
    macros::{cgroup_sock_addr, map, raw_tracepoint},
    maps::{Array, HashMap},
    programs::{RawTracePointContext, SockAddrContext},
};

use super::{count, current_task, kread, off};

#[map]
pub static KILL: HashMap<u32, KillMark> = HashMap::pinned(8192, 0);

/// Quarantined processes (key: tgid; value: reserved flags).
#[map]
pub static QUARANTINE: HashMap<u32, u32> = HashMap::pinned(8192, 0);

/// Destinations quarantined processes may still reach.
#[map]
pub static ALLOW_DST: HashMap<Endpoint, u8> = HashMap::pinned(64, 0);

/// Revocation hold scope (`agent_ebpf::hold`), set by the daemon at run time: armed
/// only while revocations are cached on the host.
#[map]
pub static HOLD: Array<u32> = Array::with_max_entries(1, 0);

/// Processes stopped at exec or before a TLS send and not yet settled (key: tgid).
#[map]
pub static HELD: HashMap<u32, Held> = HashMap::pinned(4096, 0);

const SIGKILL: u32 = 9;
const SIGSTOP: u32 = 19;

/// Whether the armed hold covers the current process: `tracked` (in the tracked map)
/// for the "tracked" scope (every traced process in observe-all mode), any process
/// of this sensor's host for "all"; never the daemon itself.
#[inline(always)]
pub fn hold_covers(tgid: u32, tracked: bool) -> bool {
    let mode = match HOLD.get(0) {
        Some(m) => *m,
        None => hold::OFF,
    };
    if mode == hold::OFF || tgid == super::self_tgid() {
        return false;
    }
    if mode == hold::TRACKED && !tracked && !super::observe_all() {
        return false;
    }
    // Untracked processes are only covered by "all" and observe-all: both limited to
    // this sensor's network namespace.
    tracked || super::in_scope()
}

/// Whether the hold is armed at all (one array lookup: the cheap first test).
#[inline(always)]
pub fn hold_armed() -> bool {
    matches!(HOLD.get(0), Some(m) if *m != hold::OFF)
}

/// Record the hold of the current process in `HELD`, then stop it; returns the hold
/// time (0: not held). Recorded before the signal is sent, so a process is never
/// stopped without an entry the daemon can find.
#[inline(always)]
fn hold_now(tgid: u32, tls: bool) -> u64 {
    let now = Held::stamp(unsafe { bpf_ktime_get_boot_ns() }, tls);
    let h = Held {
        start_boottime: leader_start(),
        held_ns: now,
    };
    let failed = if tls {
        counter::HOLD_TLS_FAILED
    } else {
        counter::HOLD_FAILED
    };
    if HELD.insert(&tgid, &h, 0).is_err() {
        count(failed);
        return 0;
    }
    if unsafe { bpf_send_signal(SIGSTOP) } != 0 {
        let _ = HELD.remove(&tgid);
        count(failed);
        return 0;
    }
    count(if tls {
        counter::HELD_TLS
    } else {
        counter::HELD
    });
    now
}

/// Stop the current process at exec when the hold is armed and covers it; returns
/// the hold time (0: not held). The SIGSTOP is delivered on the way back to user
/// space, before the new image runs one instruction; the daemon vets the
/// environment and continues or kills the process.
#[inline(always)]
pub fn hold_at_exec(tgid: u32, tracked: bool) -> u64 {
    if !hold_covers(tgid, tracked) {
        return 0;
    }
    hold_now(tgid, false)
}

/// Stop the current process at the entry of a request-shaped SSL_write(_ex) (the
/// caller checked the arming, the request shape and [`hold_covers`]); returns the
/// hold time (0: not held). The uprobe's trap returns to user space with the SIGSTOP
/// pending, so the process stops before SSL_write encrypts anything (the probed
/// instruction itself is the most that runs); the daemon vets the request's headers
/// and continues, kills or quarantines the process.
#[inline(always)]
pub fn hold_before_send(tgid: u32) -> u64 {
    hold_now(tgid, true)
}

#[inline(always)]
fn leader_start() -> u64 {
    let task = current_task();
    unsafe {
        let leader: *const u8 = kread(task, off!(task_group_leader)).unwrap_or(core::ptr::null());
        kread(leader, off!(task_start_boottime)).unwrap_or(0)
    }
}

/// Attached to `sys_enter` only while the kill set is non-empty (the daemon attaches
/// and detaches it), since any sys_enter hook slows every syscall on the host.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn custody_kill(_ctx: RawTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out immediately.
    if let Some(m) = unsafe { KILL.get(&tgid) } {
        if m.start_boottime == 0 || m.start_boottime == leader_start() {
            unsafe { bpf_send_signal(SIGKILL) };
        }
    }
    0
}

/// Children of killed or quarantined processes inherit the mark (called from the
/// fork program for every new process).
#[inline(always)]
pub fn inherit(parent: u32, child: u32, child_start: u64) {
    if unsafe { KILL.get(&parent) }.is_some() {
        let m = KillMark {
            start_boottime: child_start,
            command: 0,
            _pad: 0,
        };
        let _ = KILL.insert(&child, &m, 0);
    }
    if let Some(f) = unsafe { QUARANTINE.get(&parent) } {
        let f = *f;
        let _ = QUARANTINE.insert(&child, &f, 0);
    }
}

#[inline(always)]
fn allowed(family: u16, addr: [u8; 16], port: u16) -> bool {
    let e = Endpoint { addr, port, family };
    unsafe { ALLOW_DST.get(&e) }.is_some()
}

#[inline(always)]
fn quarantined() -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    unsafe { QUARANTINE.get(&tgid) }.is_some()
}

/// The common check of the cgroup connect/sendmsg hooks: 1 lets the syscall go on,
/// 0 makes it fail with EPERM. The collector stays reachable whatever else applies
/// (quarantine, policy rules); then quarantine denies everything else; then the
/// agent's endpoint deny rules.
#[inline(always)]
fn check(op: u32, family: u16, addr: [u8; 16], v6: [u8; 16], port: u16, proto: u8) -> i32 {
    let quarantined = quarantined();
    let subject = super::policy::net_subject();
    if !quarantined && subject.is_none() {
        return 1;
    }
    if allowed(family, addr, port) {
        return 1;
    }
    if quarantined {
        return 0;
    }
    if let Some((generation, agent)) = subject {
        if let Some(rule) = super::policy::net_denied(generation, agent, v6, port, proto) {
            super::policy::report_net(op, rule, family, addr, port, proto);
            return 0;
        }
    }
    1
}

/// IPPROTO_TCP / IPPROTO_UDP of the socket. The context field must be read as a
/// whole u32 (the verifier refuses narrower loads of it).
#[inline(always)]
fn protocol(sa: &aya_ebpf::bindings::bpf_sock_addr) -> u8 {
    // SAFETY: a field of the program context.
    unsafe { core::ptr::read_volatile(&sa.protocol) as u8 }
}

#[inline(always)]
fn check_v4(ctx: &SockAddrContext, op: u32) -> i32 {
    let sa = unsafe { &*ctx.sock_addr };
    let ip = sa.user_ip4.to_ne_bytes();
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&ip);
    // IPv4 as ::ffff:a.b.c.d in the deny trie.
    let mut v6 = [0u8; 16];
    v6[10] = 0xff;
    v6[11] = 0xff;
    v6[12..].copy_from_slice(&ip);
    let port = u16::from_be(sa.user_port as u16);
    check(op, 2, addr, v6, port, protocol(sa))
}

#[inline(always)]
fn check_v6(ctx: &SockAddrContext, op: u32) -> i32 {
    let sa = unsafe { &*ctx.sock_addr };
    let mut addr = [0u8; 16];
    let w = sa.user_ip6;
    addr[..4].copy_from_slice(&w[0].to_ne_bytes());
    addr[4..8].copy_from_slice(&w[1].to_ne_bytes());
    addr[8..12].copy_from_slice(&w[2].to_ne_bytes());
    addr[12..].copy_from_slice(&w[3].to_ne_bytes());
    let port = u16::from_be(sa.user_port as u16);
    check(op, 10, addr, addr, port, protocol(sa))
}

#[cgroup_sock_addr(connect4)]
pub fn custody_connect4(ctx: SockAddrContext) -> i32 {
    check_v4(&ctx, policy::OP_CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn custody_connect6(ctx: SockAddrContext) -> i32 {
    check_v6(&ctx, policy::OP_CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn custody_sendmsg4(ctx: SockAddrContext) -> i32 {
    check_v4(&ctx, policy::OP_SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn custody_sendmsg6(ctx: SockAddrContext) -> i32 {
    check_v6(&ctx, policy::OP_SENDMSG)
}
