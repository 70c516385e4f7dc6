//! Shared state and helpers of the kernel programs.
//!
//! Filtering rule: a process is traced when its tgid is in `TRACKED` (an agent or a
//! descendant of one) or when the daemon loaded us in observe-all mode. Untracked
//! processes pay one map lookup per hook and emit nothing; process exec/exit are the
//! exception, since the daemon's process table and agent matching need them, and so
//! is the first write after a TCP connect when it is a TLS ClientHello (`hello.rs`:
//! its SNI is discovery evidence), one record per TLS connection.

pub mod declare;
pub mod enforce;
pub mod file;
pub mod go_tls;
pub mod hello;
pub mod net;
pub mod pipe;
pub mod policy;
pub mod process;
pub mod rustls;
pub mod tls;

use agent_ebpf::{Config, EventHeader, Offsets, Tracked, counter, flag};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel, bpf_probe_read_user, generated,
    },
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use core::ffi::c_void;

#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    task_real_parent: 0,
    task_group_leader: 0,
    task_tgid: 0,
    task_pid: 0,
    task_start_boottime: 0,
    task_loginuid: 0,
    task_nsproxy: 0,
    task_mm: 0,
    task_files: 0,
    task_exit_code: 0,
    nsproxy_net_ns: 0,
    net_ns_inum: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    mm_env_start: 0,
    mm_env_end: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_private_data: 0,
    file_inode: 0,
    inode_mode: 0,
    socket_sk: 0,
    sk_family: 0,
    sk_daddr: 0,
    sk_rcv_saddr: 0,
    sk_dport: 0,
    sk_num: 0,
    sk_v6_daddr: 0,
    sk_v6_rcv_saddr: 0,
    sk_type: 0,
    sk_protocol: 0,
    tp_exec_filename: 0,
    tp_exit_group_dead: 0,
    task_signal: 0,
    signal_live: 0,
    inet_sport: 0,
    tcp_bytes_acked: 0,
    tcp_bytes_received: 0,
};

#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    observe_all: 0,
    self_tgid: 0,
    netns: 0,
    _pad: 0,
};

/// Read one patched offset; volatile so the compiler keeps the load (the value is
/// rewritten in the object by the loader).
macro_rules! off {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        let v = unsafe { core::ptr::read_volatile(&crate::probes::OFFSETS.$field) };
        v
    }};
}
pub(crate) use off;

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Ring-buffer bytes pending before a high-rate event wakes the daemon; below it the
/// daemon drains on its own short timer. Waking on every record costs a context
/// switch (a VM exit on virtual machines) per event.
const WAKE_BYTES: u64 = 256 << 10;
const BPF_RB_NO_WAKEUP: u64 = 1;
pub const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Submit flags for high-rate events (files, network, TLS, pipes).
#[inline(always)]
pub fn lazy_wakeup() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) > WAKE_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[map]
pub static TRACKED: HashMap<u32, Tracked> = HashMap::with_max_entries(65536, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Arguments of a syscall between its enter and exit tracepoints (key: pid_tgid).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub kind: u32,
    pub fd: i32,
    pub a: u64,
    pub b: u64,
    pub flags: u32,
    pub mode: u32,
}

/// A plain (preallocated) hash: cheaper than LRU on the hot path; entries of threads
/// that die inside a syscall are removed by the exit program.
#[map]
pub static PENDING: HashMap<u64, Pending> = HashMap::with_max_entries(16384, 0);

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn observe_all() -> bool {
    unsafe { core::ptr::read_volatile(&CONFIG.observe_all) != 0 }
}

/// Whether the current task belongs to this sensor's host (see `Config::netns`).
#[inline(always)]
pub fn in_scope() -> bool {
    let want = unsafe { core::ptr::read_volatile(&CONFIG.netns) };
    if want == 0 {
        return true;
    }
    let task = current_task();
    let netns: u32 = unsafe {
        let nsproxy: *const u8 = kread(task, off!(task_nsproxy)).unwrap_or(core::ptr::null());
        let net: *const u8 = kread(nsproxy, off!(nsproxy_net_ns)).unwrap_or(core::ptr::null());
        kread(net, off!(net_ns_inum)).unwrap_or(0)
    };
    netns == want
}

#[inline(always)]
pub fn self_tgid() -> u32 {
    unsafe { core::ptr::read_volatile(&CONFIG.self_tgid) }
}

/// Whether to trace `tgid`: `Some((agent slot, header flags))` or None.
#[inline(always)]
pub fn traced(tgid: u32) -> Option<(u32, u32)> {
    // SAFETY: the value is copied out immediately.
    if let Some(t) = unsafe { TRACKED.get(&tgid) } {
        return Some((t.agent, flag::TRACKED));
    }
    if observe_all() && tgid != self_tgid() && in_scope() {
        return Some((0, 0));
    }
    None
}

/// (agent slot, header flags) of `tgid` for an event that is emitted anyway; both
/// values are written on every path (the verifier rejects a partly set tuple).
#[inline(always)]
pub fn trace_info(tgid: u32) -> (u32, u32) {
    let mut agent = 0u32;
    let mut flags = 0u32;
    // SAFETY: the value is copied out immediately.
    if let Some(t) = unsafe { TRACKED.get(&tgid) } {
        agent = t.agent;
        flags = flag::TRACKED;
    }
    (agent, flags)
}

/// Cheap gate at the top of every syscall hook: one map lookup, before any argument
/// is read.
#[inline(always)]
pub fn wanted() -> bool {
    traced(current_tgid()).is_some()
}

#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// Read a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub unsafe fn kread<T>(base: *const u8, offset: u64) -> Result<T, i32> {
    if base.is_null() {
        return Err(-1);
    }
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
}

#[inline(always)]
pub unsafe fn uread<T>(ptr: u64) -> Result<T, i32> {
    unsafe { bpf_probe_read_user(ptr as *const T) }
}

/// Copy `len` bytes (already bounded by the caller) of user memory into `dst`.
#[inline(always)]
pub unsafe fn uread_into(dst: *mut u8, len: u32, src: u64) -> bool {
    unsafe { generated::bpf_probe_read_user(dst.cast::<c_void>(), len, src as *const c_void) == 0 }
}

#[inline(always)]
pub fn current_task() -> *const u8 {
    unsafe { bpf_get_current_task() as *const u8 }
}

/// Fields every header takes from helpers.
#[inline(always)]
fn fill_common(h: &mut EventHeader, kind: u32, agent: u32, flags: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    h.kind = kind;
    h.flags = flags;
    h.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    h.tgid = (pid_tgid >> 32) as u32;
    h.pid = pid_tgid as u32;
    h.uid = uid_gid as u32;
    h.gid = (uid_gid >> 32) as u32;
    h.agent = agent;
    h.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// The task fields, from the tracked entry's cache (filled on first use).
#[inline(always)]
fn fill_cached(h: &mut EventHeader, t: *mut Tracked) {
    // SAFETY: map value pointer, valid for this program run.
    let t = unsafe { &mut *t };
    if t.cached == 1 {
        h.start_boottime = t.start_boottime;
        h.ppid = t.ppid;
        h.parent_start_boottime = t.parent_start_boottime;
        h.auid = t.auid;
        h.netns = t.netns;
        return;
    }
    read_task_fields(h);
    t.start_boottime = h.start_boottime;
    t.ppid = h.ppid;
    t.parent_start_boottime = h.parent_start_boottime;
    t.auid = h.auid;
    t.netns = h.netns;
    t.cached = 1;
}

/// Fill the common header for the current task with the agent and flags given.
#[inline(always)]
pub fn fill_header(h: &mut EventHeader, kind: u32, agent: u32, flags: u32) {
    fill_common(h, kind, agent, flags);
    let tracked = if flags & flag::TRACKED != 0 {
        TRACKED.get_ptr_mut(&h.tgid)
    } else {
        None
    };
    match tracked {
        Some(t) => fill_cached(h, t),
        None => read_task_fields(h),
    }
}

/// Fill the header for the current task from one tracked-map lookup (agent, flags
/// and the cached task fields).
#[inline(always)]
pub fn fill_current(h: &mut EventHeader, kind: u32) {
    match TRACKED.get_ptr_mut(&current_tgid()) {
        Some(t) => {
            let agent = unsafe { (*t).agent };
            fill_common(h, kind, agent, flag::TRACKED);
            fill_cached(h, t);
        }
        None => {
            fill_common(h, kind, 0, 0);
            read_task_fields(h);
        }
    }
}

/// The header fields that need kernel pointer chasing.
#[inline(always)]
fn read_task_fields(h: &mut EventHeader) {
    let task = current_task();
    unsafe {
        let leader: *const u8 = kread(task, off!(task_group_leader)).unwrap_or(core::ptr::null());
        h.start_boottime = kread(leader, off!(task_start_boottime)).unwrap_or(0);
        let parent: *const u8 = kread(task, off!(task_real_parent)).unwrap_or(core::ptr::null());
        h.ppid = kread(parent, off!(task_tgid)).unwrap_or(0);
        let pleader: *const u8 =
            kread(parent, off!(task_group_leader)).unwrap_or(core::ptr::null());
        h.parent_start_boottime = kread(pleader, off!(task_start_boottime)).unwrap_or(0);
        h.auid = kread(task, off!(task_loginuid)).unwrap_or(u32::MAX);
        let nsproxy: *const u8 = kread(task, off!(task_nsproxy)).unwrap_or(core::ptr::null());
        let net: *const u8 = kread(nsproxy, off!(nsproxy_net_ns)).unwrap_or(core::ptr::null());
        h.netns = kread(net, off!(net_ns_inum)).unwrap_or(0);
    }
}

/// The `struct file *` behind `fd` of the current task.
#[inline(always)]
pub fn file_of_fd(fd: i32) -> Option<*const u8> {
    if fd < 0 {
        return None;
    }
    let task = current_task();
    unsafe {
        let files: *const u8 = kread(task, off!(task_files)).ok()?;
        let fdt: *const u8 = kread(files, off!(files_fdt)).ok()?;
        let max: u32 = kread(fdt, off!(fdt_max_fds)).ok()?;
        if fd as u32 >= max {
            return None;
        }
        let arr: *const u8 = kread(fdt, off!(fdt_fd)).ok()?;
        let file: *const u8 = kread(arr, (fd as u64) * 8).ok()?;
        if file.is_null() { None } else { Some(file) }
    }
}

pub const S_IFMT: u16 = 0o170000;
pub const S_IFSOCK: u16 = 0o140000;
pub const S_IFIFO: u16 = 0o010000;

#[inline(always)]
pub fn file_mode(file: *const u8) -> u16 {
    unsafe {
        let inode: *const u8 = kread(file, off!(file_inode)).unwrap_or(core::ptr::null());
        kread(inode, off!(inode_mode)).unwrap_or(0)
    }
}

/// The `struct sock *` behind a socket fd.
#[inline(always)]
pub fn sock_of_fd(fd: i32) -> Option<*const u8> {
    let file = file_of_fd(fd)?;
    if file_mode(file) & S_IFMT != S_IFSOCK {
        return None;
    }
    unsafe {
        let socket: *const u8 = kread(file, off!(file_private_data)).ok()?;
        let sk: *const u8 = kread(socket, off!(socket_sk)).ok()?;
        if sk.is_null() { None } else { Some(sk) }
    }
}

/// Clamp a runtime length to `max` in a form the verifier can follow.
#[inline(always)]
pub fn clamp(len: u64, max: usize) -> u32 {
    if len > max as u64 {
        max as u32
    } else {
        len as u32
    }
}

/// Floor programs: the same attach points with empty bodies, so benchmarks can
/// separate the cost of the hooks themselves from the cost of Custody's work.
pub mod floor {
    use aya_ebpf::{
        macros::{btf_tracepoint, tracepoint, uprobe, uretprobe},
        programs::{BtfTracePointContext, ProbeContext, RetProbeContext, TracePointContext},
    };

    #[tracepoint]
    pub fn custody_floor_tp(_ctx: TracePointContext) -> u32 {
        0
    }

    #[btf_tracepoint(function = "sched_process_fork")]
    pub fn custody_floor_fork(_ctx: BtfTracePointContext) -> i32 {
        0
    }

    #[uprobe]
    pub fn custody_floor_uprobe(_ctx: ProbeContext) -> u32 {
        0
    }

    #[uretprobe]
    pub fn custody_floor_uretprobe(_ctx: RetProbeContext) -> u32 {
        0
    }
}
