//! Go `crypto/tls` plaintext: uprobes at the entry and at every `RET` instruction of
//! `(*Conn).Write` and `(*Conn).Read`, found by the daemon in the binary's `.gopclntab`
//! (stripped Go binaries keep it).
//!
//! Go's ABIInternal (amd64) passes the receiver `c` in RAX and the buffer `b` in
//! RBX (pointer) / RCX (length); the result `n` comes back in RAX, and R14 holds the
//! running goroutine's `g` throughout. The entry saves the call under (tgid, `g`): a
//! goroutine may block inside `Read` and resume on another thread, so neither the thread
//! id nor the stack (Go moves stacks) identifies the call, the goroutine does. A
//! uretprobe is never used: it rewrites the return address on the goroutine stack, and
//! when Go copies the stack the kernel's trampoline state is left pointing at the old one.
//!
//! `Write` is emitted at its `RET`, not at entry, though the buffer is already known at
//! entry: a Go function whose stack must grow runs its entry twice (the prologue calls
//! `runtime.morestack` and jumps back to the first instruction), and an emit at entry
//! would then send the same request twice. At the `RET`, `n` is what was written.
//!
//! Records are the OpenSSL programs' `TlsEvent`s (same chunking, same caps, same
//! untracked sampling rule, see `tls.rs`) with `conn` = the `*tls.Conn`, so everything
//! downstream reads Go connections as it reads OpenSSL ones. Not done for Go: the hold
//! before send (stopping a request-shaped write at entry for the daemon to vet).

use agent_ebpf::{TlsCall, counter, direction};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};

use super::{
    count,
    tls::{capture_cap, emit, sampled},
    traced,
};

/// A goroutine of one process: the key of a call between its entry and its `RET`. The
/// tgid is part of it because the same executable run twice (no ASLR for a non-PIE Go
/// binary) gives its goroutines the same `g` addresses.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoroutineKey {
    pub tgid: u32,
    pub _pad: u32,
    pub g: u64,
}

/// Calls between entry and `RET` (one per goroutine at most: a goroutine runs one
/// `Read` or `Write` at a time). LRU: a call that never returns (a panic unwinds past
/// its `RET`) is overwritten by the goroutine's next call or evicted.
#[map]
static GO_CALLS: LruHashMap<GoroutineKey, TlsCall> = LruHashMap::with_max_entries(8192, 0);

#[inline(always)]
fn key(ctx: &ProbeContext) -> GoroutineKey {
    // SAFETY: the context of a uprobe is the task's saved registers.
    let g = unsafe { (*ctx.regs).r14 };
    GoroutineKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        g,
    }
}

#[inline(always)]
fn enter(ctx: &ProbeContext, dir: u32) -> u32 {
    let k = key(ctx);
    // SAFETY: as in `key`.
    let (conn, buf, len) = unsafe {
        let r = &*ctx.regs;
        (r.rax, r.rbx, r.rcx)
    };
    if conn == 0 || buf == 0 || len == 0 {
        return 0;
    }
    if traced(k.tgid).is_none() && !sampled(dir, conn, buf) {
        return 0;
    }
    let call = TlsCall {
        ssl: conn,
        buf,
        out_len: 0,
        len,
        direction: dir,
        _pad: 0,
    };
    let _ = GO_CALLS.insert(&k, &call, 0);
    0
}

#[inline(always)]
fn ret(ctx: &ProbeContext, dir: u32) -> u32 {
    let k = key(ctx);
    // SAFETY: copied out before removal.
    let Some(call) = (unsafe { GO_CALLS.get(&k) }).copied() else {
        // Untracked processes save nothing for the calls they do not sample, so only a
        // traced process's empty-handed RET is a loss.
        if traced(k.tgid).is_some() {
            count(counter::GO_TLS_MISSED);
        }
        return 0;
    };
    let _ = GO_CALLS.remove(&k);
    if call.direction != dir {
        count(counter::GO_TLS_MISSED);
        return 0;
    }
    // `n int`: never more than asked for; an error return may carry n < len.
    // SAFETY: as in `key`.
    let n = unsafe { (*ctx.regs).rax } as i64;
    if n <= 0 {
        return 0;
    }
    let n = (n as u64).min(call.len);
    emit(&call, n, capture_cap(k.tgid));
    0
}

/// Entry of `crypto/tls.(*Conn).Write(b []byte)`.
#[uprobe]
pub fn custody_go_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::WRITE)
}

/// Each `RET` of `(*Conn).Write`: emits `b[..n]`.
#[uprobe]
pub fn custody_go_write_ret(ctx: ProbeContext) -> u32 {
    ret(&ctx, direction::WRITE)
}

/// Entry of `crypto/tls.(*Conn).Read(b []byte)`.
#[uprobe]
pub fn custody_go_read_entry(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::READ)
}

/// Each `RET` of `(*Conn).Read`: emits `b[..n]`.
#[uprobe]
pub fn custody_go_read_ret(ctx: ProbeContext) -> u32 {
    ret(&ctx, direction::READ)
}
