//! TLS plaintext: uprobes on SSL_write/SSL_read(_ex) keep the buffer at entry, and the
//! shared uretprobe emits what the call actually transferred.
//!
//! Untracked processes: only writes that start like an HTTP request or a JSON body are
//! emitted, so the daemon can discover undeclared agents (LLM and MCP clients) without
//! seeing every TLS byte on the host, and only their first record (`TLS_MAX` bytes).
//!
//! Whole calls: a tracked process's call is emitted as consecutive chunk records (see
//! `TlsEvent`) up to a cap per call (`TLS_CAPTURE`, set by the daemon), by a loop with
//! a constant bound; each chunk's reservation is submitted or discarded on its own
//! path, and a failed one ends the call (counted: `TLS_CHUNKS_LOST`).
//!
//! Hold before send: while the revocation hold is armed, a covered process whose
//! write starts like an HTTP/1 request (or continues a request head the daemon asked
//! to see, `HOLD_CONN`) is stopped at the entry of SSL_write(_ex), and a record of the
//! buffer flagged `HELD` wakes the daemon, which vets the request's headers before the
//! plaintext is encrypted.

use agent_ebpf::{
    TLS_CAPTURE_DEFAULT, TLS_CAPTURE_MAX, TLS_CHUNKS_MAX, TLS_MAX, TlsCall, TlsEvent, counter,
    direction, flag, kind,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::{map, uprobe, uretprobe},
    maps::{Array, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};

use super::{
    BPF_RB_FORCE_WAKEUP, COUNTERS, EVENTS, clamp, count, fill_current, lazy_wakeup, traced, uread,
    uread_into,
};

/// Bytes of plaintext kept per call of a tracked process (one value, written by the
/// daemon at start; 0 means `TLS_CAPTURE_DEFAULT`, larger than `TLS_CAPTURE_MAX`
/// is cut to it).
#[map]
pub static TLS_CAPTURE: Array<u32> = Array::with_max_entries(1, 0);

/// Calls between entry and return (key: pid_tgid). Read by the daemon too: pinned, so
/// a restarted daemon still finds the writes of a process a previous one held.
#[map]
pub static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::pinned(8192, 0);

/// `SSL *` of untracked connections that sent something request-shaped.
#[map]
static SAMPLED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

/// Connections (`SSL *` → tgid) whose next write is held whatever its shape: the
/// daemon marks them when a held write ended inside the request head, so the rest of
/// the head is vetted before it is sent too.
#[map]
static HOLD_CONN: LruHashMap<u64, u32> = LruHashMap::with_max_entries(1024, 0);

#[inline(always)]
fn looks_like_request(buf: u64) -> bool {
    let head: [u8; 4] = unsafe { uread(buf) }.unwrap_or([0; 4]);
    matches!(&head, b"POST" | b"GET " | b"PUT " | b"PATC" | b"DELE") || head[0] == b'{'
}

/// Starts like an HTTP/1 request line (the methods the daemon parses and clients
/// send over TLS). HTTP/2 is binary and not held (see docs/sensor.md).
#[inline(always)]
fn looks_like_http1_request(buf: u64) -> bool {
    let head: [u8; 4] = unsafe { uread(buf) }.unwrap_or([0; 4]);
    matches!(
        &head,
        b"POST" | b"GET " | b"PUT " | b"PATC" | b"DELE" | b"HEAD" | b"OPTI"
    )
}

/// Emit the record of a write held at entry: the first `n` bytes of its buffer (at
/// most `TLS_MAX`; the daemon reads the rest from the stopped process).
#[inline(always)]
fn emit_held(call: &TlsCall, n: u64, held_ns: u64) {
    let Some(mut entry) = EVENTS.reserve::<TlsEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_current(&mut ev.hdr, kind::TLS_DATA);
    ev.conn = call.ssl;
    ev.len = n.min(u32::MAX as u64) as u32;
    ev.direction = call.direction;
    ev.offset = 0;
    ev.buf = call.buf;
    ev.call_id = held_ns;
    let c = clamp(n, TLS_MAX);
    ev.captured = 0;
    if c > 0 && unsafe { uread_into(ev.data.as_mut_ptr(), c, call.buf) } {
        ev.captured = c;
    }
    if n > TLS_MAX as u64 {
        ev.hdr.flags |= flag::DATA_TRUNCATED;
    }
    ev.hdr.flags |= flag::HELD;
    ev.hdr.ktime_ns = held_ns;
    // A stopped process waits for this record: wake the daemon now.
    entry.submit(BPF_RB_FORCE_WAKEUP);
}

/// Bytes kept of one call: the daemon's cap for traced processes, one record for the
/// sampled connections of untracked ones (discovery needs only the request head).
#[inline(always)]
pub(super) fn capture_cap(tgid: u32) -> u64 {
    if traced(tgid).is_none() {
        return TLS_MAX as u64;
    }
    let cap = match TLS_CAPTURE.get(0) {
        Some(v) if *v != 0 => *v,
        _ => TLS_CAPTURE_DEFAULT,
    };
    u64::from(cap.min(TLS_CAPTURE_MAX))
}

#[inline(always)]
fn add(slot: u32, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += n };
    }
}

/// Emit a call that moved `n` bytes as chunk records of `TLS_MAX` bytes, up to `cap`
/// (OpenSSL's calls here, Go's from `go_tls.rs`).
#[inline(always)]
pub(super) fn emit(call: &TlsCall, n: u64, cap: u64) {
    let keep = if n < cap { n } else { cap };
    // SAFETY: a helper without arguments.
    let call_id = unsafe { bpf_ktime_get_boot_ns() };
    let len = n.min(u32::MAX as u64) as u32;
    // Each chunk's offset comes from the loop index alone, so nothing a branch of one
    // iteration decided is live in the next: the verifier sees one state per
    // iteration instead of one per path through all earlier ones.
    for i in 0..TLS_CHUNKS_MAX {
        let off = u64::from(i) * TLS_MAX as u64;
        if off >= keep && i != 0 {
            return;
        }
        let Some(mut entry) = EVENTS.reserve::<TlsEvent>(0) else {
            count(counter::RINGBUF_FULL);
            if i != 0 {
                count(counter::TLS_CHUNKS_LOST);
            }
            return;
        };
        let ev = unsafe { &mut *entry.as_mut_ptr() };
        fill_current(&mut ev.hdr, kind::TLS_DATA);
        ev.conn = call.ssl;
        ev.len = len;
        ev.direction = call.direction;
        ev.offset = off as u32;
        ev.buf = call.buf;
        ev.call_id = call_id;
        let c = clamp(keep.saturating_sub(off), TLS_MAX);
        ev.captured = 0;
        if c > 0 {
            if unsafe { uread_into(ev.data.as_mut_ptr(), c, call.buf + off) } {
                ev.captured = c;
            } else {
                // Sent as a record without data: the daemon sees a hole of `c` bytes.
                ev.hdr.flags |= flag::READ_FAILED;
                count(counter::READ_FAILED);
            }
        }
        if off + TLS_MAX as u64 >= keep && n > keep {
            ev.hdr.flags |= flag::DATA_TRUNCATED;
            count(counter::DATA_TRUNCATED);
            add(counter::TLS_BYTES_CAPPED, n - keep);
        }
        entry.submit(lazy_wakeup());
    }
}

/// Whether a call of an untracked process on connection `conn` is kept: connections
/// that carry an HTTP request are sampled, writes and the replies read on them, so the
/// daemon can discover an agent from its first exchange even before it tracks the
/// process. Only this sensor's own host: sensors sharing a kernel (netns scope) would
/// otherwise each "discover" the others' agents as processes of their own host.
/// Shared by every TLS stack whose calls carry a connection pointer (OpenSSL's `SSL *`,
/// Go's `*tls.Conn`).
#[inline(always)]
pub(super) fn sampled(dir: u32, conn: u64, buf: u64) -> bool {
    if !super::in_scope() {
        return false;
    }
    if dir == direction::WRITE {
        if !looks_like_request(buf) {
            return false;
        }
        let _ = SAMPLED.insert(&conn, &1u8, 0);
        true
    } else {
        unsafe { SAMPLED.get(&conn) }.is_some()
    }
}

#[inline(always)]
fn enter(ctx: &ProbeContext, dir: u32, ex: bool) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    // `num`: a size_t for the _ex variants, a C int for the plain ones.
    let len: u64 = if ex {
        ctx.arg(2).unwrap_or(0)
    } else {
        let n: i32 = ctx.arg(2).unwrap_or(0);
        if n > 0 { n as u64 } else { 0 }
    };
    let out_len: u64 = if ex { ctx.arg(3).unwrap_or(0) } else { 0 };
    let tracked = traced(tgid);
    // Hold before send: only while armed, only writes, only request-shaped ones (or
    // the continuation of a head the daemon asked for), only covered processes.
    let mut hold = false;
    let mut next = false;
    if dir == direction::WRITE && len > 0 && super::enforce::hold_armed() {
        let is_tracked = matches!(tracked, Some((_, f)) if f & flag::TRACKED != 0);
        if super::enforce::hold_covers(tgid, is_tracked) {
            next = matches!(unsafe { HOLD_CONN.get(&ssl) }, Some(t) if *t == tgid);
            hold = next || looks_like_http1_request(buf);
        }
    }
    if tracked.is_none() && !hold && !sampled(dir, ssl, buf) {
        return 0;
    }
    let call = TlsCall {
        ssl,
        buf,
        out_len,
        len,
        direction: dir,
        _pad: 0,
    };
    // Before the hold: whoever settles it (the held record's handler, the sweep)
    // finds every in-flight write of the process here.
    let _ = TLS_CALLS.insert(&pid_tgid, &call, 0);
    if hold {
        let held_ns = super::enforce::hold_before_send(tgid);
        if held_ns != 0 {
            if next {
                let _ = HOLD_CONN.remove(&ssl);
            }
            emit_held(&call, len, held_ns);
        }
    }
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
    emit(&call, n, capture_cap((pid_tgid >> 32) as u32));
    0
}
