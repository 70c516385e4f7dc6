//! TLS plaintext: uprobes on SSL_write/SSL_read(_ex) keep the buffer at entry, and the
//! shared uretprobe emits what the call actually transferred.
//!
//! Untracked processes: only writes that start like an HTTP request or a JSON body are
//! emitted, so the daemon can discover undeclared agents (LLM and MCP clients) without
//! seeing every TLS byte on the host.

use agent_ebpf::{TLS_MAX, TlsEvent, counter, direction, flag, kind};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};

use super::{EVENTS, clamp, count, fill_current, lazy_wakeup, traced, uread, uread_into};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    ssl: u64,
    buf: u64,
    /// `size_t *` out-parameter of the `_ex` variants (0 for the plain ones).
    out_len: u64,
    direction: u32,
    _pad: u32,
}

#[map]
static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(8192, 0);

/// `SSL *` of untracked connections that sent something request-shaped.
#[map]
static SAMPLED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn looks_like_request(buf: u64) -> bool {
    let head: [u8; 4] = unsafe { uread(buf) }.unwrap_or([0; 4]);
    matches!(&head, b"POST" | b"GET " | b"PUT " | b"PATC" | b"DELE") || head[0] == b'{'
}

#[inline(always)]
fn enter(ctx: &ProbeContext, dir: u32, ex: bool) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    let out_len: u64 = if ex { ctx.arg(3).unwrap_or(0) } else { 0 };
    if traced((pid_tgid >> 32) as u32).is_none() {
        // Untracked: sample connections that carry an HTTP request, writes and the
        // replies read on them, so the daemon can discover an agent from its first
        // exchange even before it tracks the process.
        if dir == direction::WRITE {
            if !looks_like_request(buf) {
                return 0;
            }
            let _ = SAMPLED.insert(&ssl, &1u8, 0);
        } else if unsafe { SAMPLED.get(&ssl) }.is_none() {
            return 0;
        }
    }
    let call = TlsCall {
        ssl,
        buf,
        out_len,
        direction: dir,
        _pad: 0,
    };
    let _ = TLS_CALLS.insert(&pid_tgid, &call, 0);
    0
}

#[uprobe]
pub fn custody_ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::WRITE, false)
}

#[uprobe]
pub fn custody_ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::WRITE, true)
}

#[uprobe]
pub fn custody_ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::READ, false)
}

#[uprobe]
pub fn custody_ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::READ, true)
}

#[uretprobe]
pub fn custody_ssl_ret(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out before removal.
    let Some(call) = (unsafe { TLS_CALLS.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let _ = TLS_CALLS.remove(&pid_tgid);
    // SSL_read/SSL_write(_ex) return a C int: the upper half of the register is not
    // part of it (a -1 would otherwise read as a huge byte count).
    let rv = i64::from(ctx.ret::<i32>());
    let n: u64 = if call.out_len != 0 {
        if rv != 1 {
            return 0;
        }
        unsafe { uread(call.out_len) }.unwrap_or(0)
    } else if rv > 0 {
        rv as u64
    } else {
        return 0;
    };
    if n == 0 {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<TlsEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return 0;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_current(&mut ev.hdr, kind::TLS_DATA);
    ev.conn = call.ssl;
    ev.len = n.min(u32::MAX as u64) as u32;
    ev.direction = call.direction;
    ev._pad = 0;
    let c = clamp(n, TLS_MAX);
    ev.captured = 0;
    if c > 0 && unsafe { uread_into(ev.data.as_mut_ptr(), c, call.buf) } {
        ev.captured = c;
    }
    if n > TLS_MAX as u64 {
        ev.hdr.flags |= flag::DATA_TRUNCATED;
        count(counter::DATA_TRUNCATED);
    }
    entry.submit(lazy_wakeup());
    0
}
