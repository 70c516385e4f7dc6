//! Process lifecycle: exec (with argv and environment read from the new mm in the
//! kernel, so a 1 ms process still has its arguments), fork (tracking inherited by
//! children), exit. Declared agents the kernel can recognise are tracked at the exec
//! itself (`declare`).

use agent_ebpf::{
    ARGS_MAX, ENV_MAX, ExecEvent, ExitEvent, ForkEvent, PATH_MAX, Tracked, counter, flag, kind,
    track,
};
use aya_ebpf::{
    EbpfContext,
    helpers::generated,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use core::ffi::c_void;

use super::{
    EVENTS, TRACKED, clamp, count, current_task, current_tgid, fill_header, kread, off, trace_info,
    traced, uread_into,
};

#[tracepoint]
pub fn custody_exec(ctx: TracePointContext) -> u32 {
    let tgid = current_tgid();
    if tgid == unsafe { core::ptr::read_volatile(&super::CONFIG.self_tgid) } || !super::in_scope() {
        return 0;
    }
    let (agent, tflags) = trace_info(tgid);
    // A new image: refresh the cached header fields with this event.
    if let Some(t) = TRACKED.get_ptr_mut(&tgid) {
        unsafe { (*t).cached = 0 };
    }
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count(counter::RINGBUF_FULL);
        // Revocation hold: stopped even when the record is lost (the daemon's sweep
        // then vets the process from /proc).
        super::enforce::hold_at_exec(tgid, tflags & flag::TRACKED != 0);
        return 0;
    };
    // SAFETY: reserved memory of the right size; every field we read later is written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.hdr, kind::EXEC, agent, tflags);
    ev._pad = 0;

    // filename: a __data_loc field; the low 16 bits are its offset inside the record.
    let loc: u32 = unsafe { ctx.read_at(off!(tp_exec_filename) as usize) }.unwrap_or(0);
    let fname = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
    let n = unsafe {
        generated::bpf_probe_read_kernel_str(
            ev.path.as_mut_ptr().cast::<c_void>(),
            PATH_MAX as u32,
            fname.cast::<c_void>(),
        )
    };
    ev.path_len = if n > 0 { (n - 1) as u32 } else { 0 };
    if n as usize >= PATH_MAX {
        ev.hdr.flags |= flag::PATH_TRUNCATED;
        count(counter::PATH_TRUNCATED);
    }

    let task = current_task();
    let mm: *const u8 = unsafe { kread(task, off!(task_mm)) }.unwrap_or(core::ptr::null());
    let arg_start: u64 = unsafe { kread(mm, off!(mm_arg_start)) }.unwrap_or(0);
    let arg_end: u64 = unsafe { kread(mm, off!(mm_arg_end)) }.unwrap_or(0);
    let env_start: u64 = unsafe { kread(mm, off!(mm_env_start)) }.unwrap_or(0);
    let env_end: u64 = unsafe { kread(mm, off!(mm_env_end)) }.unwrap_or(0);

    let want = arg_end.saturating_sub(arg_start);
    let len = clamp(want, ARGS_MAX);
    ev.args_len = 0;
    if len > 0 {
        if unsafe { uread_into(ev.args.as_mut_ptr(), len, arg_start) } {
            ev.args_len = len;
        } else {
            ev.hdr.flags |= flag::READ_FAILED;
        }
    }
    if want > ARGS_MAX as u64 {
        ev.hdr.flags |= flag::ARGS_TRUNCATED;
        count(counter::ARGS_TRUNCATED);
    }

    let want = env_end.saturating_sub(env_start);
    let len = clamp(want, ENV_MAX);
    ev.env_len = 0;
    if len > 0 {
        if unsafe { uread_into(ev.env.as_mut_ptr(), len, env_start) } {
            ev.env_len = len;
        } else {
            ev.hdr.flags |= flag::READ_FAILED;
        }
    }
    if want > ENV_MAX as u64 {
        ev.hdr.flags |= flag::ENV_TRUNCATED;
    }
    // A declared agent the kernel can recognise is tracked now, before its image
    // runs, so whatever it forks is tracked from its first instruction.
    if tflags & flag::TRACKED == 0 {
        if let Some((slot, _)) = super::declare::at_exec(tgid, ev) {
            ev.hdr.flags |= flag::TRACKED;
            ev.hdr.agent = slot;
        }
    }
    // Revocation hold (after the tracking decision, so a declared agent is held as a
    // tracked process); the process is still in exec and has not run.
    let held_ns = super::enforce::hold_at_exec(tgid, ev.hdr.flags & flag::TRACKED != 0);
    let mut wake = 0;
    if held_ns != 0 {
        ev.hdr.flags |= flag::HELD;
        ev.hdr.ktime_ns = held_ns;
        // A stopped process waits for this record: wake the daemon now, whatever
        // the backlog (other records only wake it past WAKE_BYTES).
        wake = super::BPF_RB_FORCE_WAKEUP;
    }
    entry.submit(wake);
    0
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn custody_fork(ctx: BtfTracePointContext) -> i32 {
    let child: *const u8 = ctx.arg(1);
    let child_tgid: u32 = unsafe { kread(child, off!(task_tgid)) }.unwrap_or(0);
    let child_pid: u32 = unsafe { kread(child, off!(task_pid)) }.unwrap_or(0);
    if child_tgid == 0 || child_pid != child_tgid {
        // A new thread: it shares its process's entry in the tracked map.
        return 0;
    }
    let tgid = current_tgid();
    let child_start: u64 = unsafe { kread(child, off!(task_start_boottime)) }.unwrap_or(0);
    super::enforce::inherit(tgid, child_tgid, child_start);
    let Some((agent, tflags)) = traced(tgid) else {
        return 0;
    };
    if tflags & flag::TRACKED != 0 {
        let t = Tracked::new(agent, track::INHERITED);
        if TRACKED.insert(&child_tgid, &t, 0).is_err() {
            count(counter::TRACKED_FULL);
        }
    }
    let Some(mut entry) = EVENTS.reserve::<ForkEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return 0;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.hdr, kind::FORK, agent, tflags);
    ev.child_tgid = child_tgid;
    ev._pad = 0;
    ev.child_start_boottime = child_start;
    entry.submit(0);
    0
}

#[tracepoint]
pub fn custody_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // A thread that dies inside a syscall leaves its arguments behind.
    let _ = super::PENDING.remove(&pid_tgid);
    // Likewise a TLS call (a process killed while held before send never returns):
    // a stale entry would be vetted again for a later thread with this id.
    let _ = super::tls::TLS_CALLS.remove(&pid_tgid);
    // The tracepoint fires per thread, and the leader can exit (`SYS_exit` on the main
    // thread) while the others run on: the process — and its quarantine, kill mark,
    // hold and tracking — ends only with the last thread of the group.
    if !group_dead(&ctx) {
        return 0;
    }
    if tgid == unsafe { core::ptr::read_volatile(&super::CONFIG.self_tgid) } {
        return 0;
    }
    let _ = super::enforce::KILL.remove(&tgid);
    let _ = super::enforce::QUARANTINE.remove(&tgid);
    let _ = super::enforce::HELD.remove(&tgid);
    let (agent, tflags) = trace_info(tgid);
    if tflags == 0 && !super::in_scope() {
        return 0;
    }
    if tflags & flag::TRACKED != 0 {
        let _ = TRACKED.remove(&tgid);
    }
    let Some(mut entry) = EVENTS.reserve::<ExitEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return 0;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.hdr, kind::EXIT, agent, tflags);
    ev.exit_code = unsafe { kread(current_task(), off!(task_exit_code)) }.unwrap_or(0);
    ev._pad = 0;
    entry.submit(0);
    0
}

/// Whether the exiting thread is the last of its thread group: the record's
/// `group_dead` where the kernel has it, else `task->signal->live` (decremented before
/// the tracepoint fires). Two threads dying at once may both see 0; cleaning up twice is
/// harmless, missing the group's end is not.
#[inline(always)]
fn group_dead(ctx: &TracePointContext) -> bool {
    let off = off!(tp_exit_group_dead);
    if off != 0 {
        return unsafe { ctx.read_at::<u8>(off as usize) }
            .map(|v| v != 0)
            .unwrap_or(true);
    }
    let task = current_task();
    let Ok(signal) = (unsafe { kread::<u64>(task, off!(task_signal)) }) else {
        return true;
    };
    let live: i32 = unsafe { kread(signal as *const u8, off!(signal_live)) }.unwrap_or(0);
    live == 0
}
