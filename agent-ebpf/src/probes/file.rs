//! File activity: openat/openat2, unlink/unlinkat, rename/renameat/renameat2.
//! Arguments are kept at syscall entry and the event is emitted at exit with the
//! result, so a failed open is reported as failed.

use agent_ebpf::{FileEvent, PATH_MAX, counter, flag, kind};
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, generated},
    macros::tracepoint,
    programs::TracePointContext,
};
use core::ffi::c_void;

use super::{EVENTS, PENDING, Pending, count, fill_current, lazy_wakeup, uread, wanted};

/// Syscall argument `i` of a `syscalls/sys_enter_*` record.
#[inline(always)]
pub fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    // Tracepoint records may be read directly at constant offsets: no helper call.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(16 + 8 * i).cast::<u64>()) }
}

/// `syscalls/sys_exit_*` return value.
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(16).cast::<i64>()) }
}

/// Remember a syscall's arguments until its exit (callers check [`wanted`] first).
#[inline(always)]
pub fn stash(kind: u32, fd: i32, a: u64, b: u64, flags: u32, mode: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let p = Pending {
        kind,
        fd,
        a,
        b,
        flags,
        mode,
    };
    if PENDING.insert(&pid_tgid, &p, 0).is_err() {
        count(counter::PENDING_FULL);
    }
}

/// Take the stashed arguments of the current thread's syscall.
#[inline(always)]
pub fn take() -> Option<Pending> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out before the entry is removed.
    let p = unsafe { *PENDING.get(&pid_tgid)? };
    let _ = PENDING.remove(&pid_tgid);
    Some(p)
}

const AT_FDCWD: i32 = -100;

#[tracepoint]
pub fn custody_openat_enter(ctx: TracePointContext) -> u32 {
    if !wanted() {
        return 0;
    }
    super::policy::check_open(arg(&ctx, 1), arg(&ctx, 2) as u32);
    stash(
        kind::FILE_OPEN,
        arg(&ctx, 0) as i32,
        arg(&ctx, 1),
        0,
        arg(&ctx, 2) as u32,
        arg(&ctx, 3) as u32,
    );
    0
}

#[tracepoint]
pub fn custody_openat2_enter(ctx: TracePointContext) -> u32 {
    if !wanted() {
        return 0;
    }
    // struct open_how { u64 flags; u64 mode; u64 resolve; }
    let how = arg(&ctx, 2);
    let flags: u64 = unsafe { uread(how) }.unwrap_or(0);
    let mode: u64 = unsafe { uread(how + 8) }.unwrap_or(0);
    super::policy::check_open(arg(&ctx, 1), flags as u32);
    stash(
        kind::FILE_OPEN,
        arg(&ctx, 0) as i32,
        arg(&ctx, 1),
        0,
        flags as u32,
        mode as u32,
    );
    0
}

#[tracepoint]
pub fn custody_unlink_enter(ctx: TracePointContext) -> u32 {
    if !wanted() {
        return 0;
    }
    stash(kind::FILE_UNLINK, AT_FDCWD, arg(&ctx, 0), 0, 0, 0);
    0
}

#[tracepoint]
pub fn custody_unlinkat_enter(ctx: TracePointContext) -> u32 {
    if !wanted() {
        return 0;
    }
    stash(
        kind::FILE_UNLINK,
        arg(&ctx, 0) as i32,
        arg(&ctx, 1),
        0,
        arg(&ctx, 2) as u32,
        0,
    );
    0
}

#[tracepoint]
pub fn custody_rename_enter(ctx: TracePointContext) -> u32 {
    if !wanted() {
        return 0;
    }
    stash(
        kind::FILE_RENAME,
        AT_FDCWD,
        arg(&ctx, 0),
        arg(&ctx, 1),
        0,
        0,
    );
    0
}

/// renameat/renameat2(olddfd, oldname, newdfd, newname[, flags]): newdfd is assumed
/// equal to olddfd for relative names (the common case); both names are reported.
#[inline(always)]
fn rename_at(ctx: &TracePointContext, flags: u32) {
    stash(
        kind::FILE_RENAME,
        arg(ctx, 0) as i32,
        arg(ctx, 1),
        arg(ctx, 3),
        flags,
        0,
    );
}

#[tracepoint]
pub fn custody_renameat_enter(ctx: TracePointContext) -> u32 {
    if wanted() {
        // Only the record's own fields may be read: the kernel refuses to attach a
        // program that reads past the end of the tracepoint record (renameat has 4).
        rename_at(&ctx, 0);
    }
    0
}

#[tracepoint]
pub fn custody_renameat2_enter(ctx: TracePointContext) -> u32 {
    if wanted() {
        rename_at(&ctx, arg(&ctx, 4) as u32);
    }
    0
}

/// Shared exit of every file syscall above.
#[tracepoint]
pub fn custody_file_exit(ctx: TracePointContext) -> u32 {
    let Some(p) = take() else { return 0 };
    if p.kind != kind::FILE_OPEN && p.kind != kind::FILE_UNLINK && p.kind != kind::FILE_RENAME {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<FileEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return 0;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_current(&mut ev.hdr, p.kind);
    ev.ret = ret(&ctx);
    ev.dirfd = p.fd;
    ev.flags = p.flags;
    ev.mode = p.mode;
    ev._pad = 0;
    ev.path_len = read_path(
        ev.path.as_mut_ptr(),
        p.a,
        &mut ev.hdr.flags,
        flag::PATH_TRUNCATED,
    );
    ev.path2_len = 0;
    if p.b != 0 {
        ev.path2_len = read_path(
            ev.path2.as_mut_ptr(),
            p.b,
            &mut ev.hdr.flags,
            flag::PATH2_TRUNCATED,
        );
    }
    entry.submit(lazy_wakeup());
    0
}

#[inline(always)]
fn read_path(dst: *mut u8, src: u64, flags: &mut u32, trunc: u32) -> u32 {
    let n = unsafe {
        generated::bpf_probe_read_user_str(
            dst.cast::<c_void>(),
            PATH_MAX as u32,
            src as *const c_void,
        )
    };
    if n <= 0 {
        *flags |= flag::READ_FAILED;
        return 0;
    }
    if n as usize >= PATH_MAX {
        *flags |= trunc;
        count(counter::PATH_TRUNCATED);
    }
    (n - 1) as u32
}
