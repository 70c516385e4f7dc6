//! rustls plaintext (Codex, and any Rust agent on rustls with the `ring` provider):
//! uprobes on ring's AEAD `seal` and `open` functions, which the daemon finds through
//! ring's algorithm tables (`tls_stack::rustls`).
//!
//! rustls encrypts every record with one call of the algorithm's `seal(key, nonce, aad,
//! in_out, cpu)` and decrypts with `open(key, nonce, aad, in_out, src, cpu)`; both are
//! reached through function pointers, so they exist as functions even when everything
//! around them is inlined. Rust's ABI (checked by the daemon on each binary's code before
//! attaching): RDI = the returned `Result`'s slot, RSI = `&KeyInner`, RDX = `&Nonce`,
//! RCX/R8 = the AAD slice, R9 = `in_out.ptr`, the stack holds `in_out.len` (`[rsp+8]` at
//! entry) and, for `open`, `src.start` (`[rsp+16]`). `seal`'s `in_out` is plaintext at
//! entry; `open`'s is plaintext at return (`in_out[..len - src]`).
//!
//! Record types: TLS 1.3 (AAD of 5 bytes) puts the real content type in the last byte of
//! the plaintext; TLS 1.2 (AAD of 13 bytes) puts it in the AAD. Only application data is
//! emitted (handshake and alert records are not the agent's bytes), without that byte. A
//! TLS 1.3 record with padding (last byte zero) is counted (`RUSTLS_PADDED`), not guessed.
//!
//! Connections: the key pointer is per connection *and direction*, and `seal`/`open` see no
//! socket. The socket is learned from the thread: rustls (tokio-rustls) sends what it
//! sealed on the same thread right after, and decrypts what it received right after the
//! receive. So a process whose hooks fired is marked (`RUSTLS_PROCS`); for it the
//! `sock_send_length` / `sock_recv_length` tracepoints (attached only once a rustls binary
//! is hooked) bind the last sealed key to the socket and remember the socket a thread last
//! read. Every record of one connection then carries one id: the key of its first sealed
//! application record. What cannot be bound is counted (`RUSTLS_UNBOUND`: a record read
//! before anything was written on its socket; `RUSTLS_SPLIT`: a new write key, e.g. after a
//! TLS 1.3 KeyUpdate, whose first records went out under their own id).
//!
//! Not done for rustls: the hold before send (a write is not stopped to be vetted).

use agent_ebpf::{TlsCall, counter, direction};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};

use super::{
    count,
    tls::{capture_cap, emit, sampled},
    traced, uread,
};

/// TLS record content type of application data.
const APPLICATION_DATA: u8 = 0x17;
/// AAD lengths: TLS 1.3's is the record header, TLS 1.2's is seq + type + version + length.
const AAD_TLS13: u64 = 5;
const AAD_TLS12: u64 = 13;
/// Where TLS 1.2's AAD holds the content type (after the 8-byte sequence number).
const AAD_TLS12_TYPE: u64 = 8;
/// The largest record plaintext (2^14) plus TLS 1.3's type byte and any padding allowed.
const RECORD_MAX: u64 = 16384 + 256;
const IPPROTO_TCP: u16 = 6;

/// A key pointer of one process (heap addresses repeat across processes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcKey {
    pub tgid: u32,
    pub _pad: u32,
    pub key: u64,
}

/// A socket's connection id, for the process that owns it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockConn {
    pub tgid: u32,
    pub _pad: u32,
    pub conn: u64,
}

/// The last record a thread sealed, until its next socket send.
#[repr(C)]
#[derive(Clone, Copy)]
struct Sealed {
    key: u64,
    /// The id its record went out under (0: not application data, nothing emitted).
    conn: u64,
}

/// An `open` between its entry and its return.
#[repr(C)]
#[derive(Clone, Copy)]
struct Opening {
    conn: u64,
    buf: u64,
    len: u64,
    /// aws-lc's `size_t *out_len` (0 for ring: the length is known at entry).
    out_len: u64,
    /// Content type from a TLS 1.2 AAD, or 0 for TLS 1.3 (the type ends the plaintext).
    tls12_type: u32,
    /// 1 when `conn` is the connection's id, 0 when its socket had none yet.
    bound: u32,
}

/// Processes whose rustls hooks fired: the only ones the socket tracepoints look at.
#[map]
static RUSTLS_PROCS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(4096, 0);

#[map]
static SEALED: LruHashMap<u64, Sealed> = LruHashMap::with_max_entries(8192, 0);

/// Write key → connection id, once its record was sent on a socket.
#[map]
static KEY_CONN: LruHashMap<ProcKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// `struct sock *` → connection id (removed at TCP_CLOSE by `hello.rs`).
#[map]
pub static SOCK_CONN: LruHashMap<u64, SockConn> = LruHashMap::with_max_entries(16384, 0);

/// The socket a thread of a rustls process last received on.
#[map]
static RECEIVED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(8192, 0);

#[map]
static OPENING: LruHashMap<u64, Opening> = LruHashMap::with_max_entries(8192, 0);

/// A socket closed: its id and its key's binding go (the key's memory will be reused by
/// the next connection, which must not inherit this one's id).
#[inline(always)]
pub(super) fn forget_sock(sk: u64) {
    // SAFETY: copied out before the removals.
    if let Some(c) = (unsafe { SOCK_CONN.get(&sk) }).copied() {
        let k = ProcKey {
            tgid: c.tgid,
            _pad: 0,
            key: c.conn,
        };
        let _ = KEY_CONN.remove(&k);
        let _ = SOCK_CONN.remove(&sk);
    }
}

#[inline(always)]
fn mark(tgid: u32) {
    if unsafe { RUSTLS_PROCS.get(&tgid) }.is_none() {
        let _ = RUSTLS_PROCS.insert(&tgid, &1u8, 0);
    }
}

/// One AEAD call as both providers' ABIs give it at entry.
#[derive(Clone, Copy)]
struct Aead {
    /// Per connection and direction: ring's `&KeyInner`, aws-lc's `EVP_AEAD_CTX *`.
    key: u64,
    aad: u64,
    aad_len: u64,
    /// The record's bytes: plaintext at a seal's entry, where the plaintext will be at an
    /// open's.
    buf: u64,
    len: u64,
}

/// ring's `seal`/`open`: RSI = key, RCX/R8 = AAD, R9 = `in_out.ptr`, `[rsp+8]` = its
/// length, and for `open` `[rsp+16]` = `src.start` (plaintext is `in_out[..len - src]`).
#[inline(always)]
fn ring_args(ctx: &ProbeContext, open: bool) -> Option<Aead> {
    // SAFETY: the context of a uprobe is the task's saved registers.
    let (key, aad, aad_len, buf, sp) = unsafe {
        let r = &*ctx.regs;
        (r.rsi, r.rcx, r.r8, r.r9, r.rsp)
    };
    let len: u64 = unsafe { uread(sp + 8) }.ok()?;
    let src: u64 = if open {
        unsafe { uread(sp + 16) }.ok()?
    } else {
        0
    };
    (src <= len).then_some(Aead {
        key,
        aad,
        aad_len,
        buf,
        len: len - src,
    })
}

/// aws-lc's `EVP_AEAD_CTX_seal`/`_open(ctx, out, out_len, max_out_len, nonce, nonce_len,
/// in, in_len, ad, ad_len)` (C ABI): RDI = ctx, the 7th to 10th arguments on the stack.
#[inline(always)]
fn aws_lc_args(ctx: &ProbeContext) -> Option<Aead> {
    // SAFETY: as in `ring_args`.
    let (key, sp) = unsafe {
        let r = &*ctx.regs;
        (r.rdi, r.rsp)
    };
    let stack: [u64; 4] = unsafe { uread(sp + 8) }.ok()?;
    Some(Aead {
        key,
        buf: stack[0],
        len: stack[1],
        aad: stack[2],
        aad_len: stack[3],
    })
}

/// Content type of a TLS 1.2 record from its AAD (0 when unreadable).
#[inline(always)]
fn tls12_type(aad: u64) -> u8 {
    unsafe { uread::<u8>(aad + AAD_TLS12_TYPE) }.unwrap_or(0)
}

/// Application bytes of a record's plaintext `buf[..len]`, or None for other records.
#[inline(always)]
fn app_len(buf: u64, len: u64, tls12: u8) -> Option<u64> {
    if len == 0 || len > RECORD_MAX {
        return None;
    }
    if tls12 != 0 {
        return (tls12 == APPLICATION_DATA).then_some(len);
    }
    let last: u8 = unsafe { uread(buf + len - 1) }.unwrap_or(0);
    match last {
        APPLICATION_DATA => Some(len - 1),
        0 => {
            count(counter::RUSTLS_PADDED);
            None
        }
        _ => None,
    }
}

/// 0 for TLS 1.3 (the type ends the plaintext), the TLS 1.2 type (at least 1), or None
/// for an AAD of neither shape.
#[inline(always)]
fn record_version(a: &Aead) -> Option<u32> {
    match a.aad_len {
        AAD_TLS13 => Some(0),
        AAD_TLS12 => Some(u32::from(tls12_type(a.aad).max(1))),
        _ => None,
    }
}

/// What both directions do first: (pid_tgid, tgid, record version) of a call worth
/// following, the process marked for the socket tracepoints.
#[inline(always)]
fn begin(a: &Aead) -> Option<(u64, u32, u32)> {
    if a.key == 0 || a.buf == 0 {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    mark(tgid);
    Some((pid_tgid, tgid, record_version(a)?))
}

/// The record of `n` application bytes at `buf` on connection `conn`.
#[inline(always)]
fn record(conn: u64, buf: u64, n: u64, dir: u32) -> TlsCall {
    TlsCall {
        ssl: conn,
        buf,
        out_len: 0,
        len: n,
        direction: dir,
        _pad: 0,
    }
}

/// A record about to be sealed: emitted now (its plaintext is in the buffer only until
/// the call encrypts it in place), bound to its socket at the next send.
#[inline(always)]
fn seal(a: Aead) -> u32 {
    let Some((pid_tgid, tgid, t12)) = begin(&a) else {
        return 0;
    };
    let pk = ProcKey {
        tgid,
        _pad: 0,
        key: a.key,
    };
    let mut sealed = Sealed {
        key: a.key,
        conn: 0,
    };
    if let Some(n) = app_len(a.buf, a.len, t12 as u8) {
        let conn = unsafe { KEY_CONN.get(&pk) }.copied().unwrap_or(a.key);
        sealed.conn = conn;
        if traced(tgid).is_some() || sampled(direction::WRITE, conn, a.buf) {
            emit(
                &record(conn, a.buf, n, direction::WRITE),
                n,
                capture_cap(tgid),
            );
        }
    }
    let _ = SEALED.insert(&pid_tgid, &sealed, 0);
    0
}

/// A record about to be opened: its connection is the socket this thread received on,
/// and from then on the one its read key was first bound to (a key belongs to one
/// connection for its whole life).
#[inline(always)]
fn open_enter(a: Aead, out_len: u64) -> u32 {
    let Some((pid_tgid, tgid, t12)) = begin(&a) else {
        return 0;
    };
    let sock = unsafe { RECEIVED.get(&pid_tgid) }.copied().unwrap_or(0);
    let (mut conn, mut bound) = match unsafe { SOCK_CONN.get(&sock) } {
        Some(c) if sock != 0 && c.tgid == tgid => (c.conn, 1),
        _ => (if sock != 0 { sock } else { a.key }, 0),
    };
    let pk = ProcKey {
        tgid,
        _pad: 0,
        key: a.key,
    };
    match unsafe { KEY_CONN.get(&pk) }.copied() {
        Some(known) => {
            if bound == 1 && known != conn {
                count(counter::RUSTLS_SPLIT);
            }
            conn = known;
            bound = 1;
        }
        None if bound == 1 => {
            let _ = KEY_CONN.insert(&pk, &conn, 0);
        }
        None => {}
    }
    let o = Opening {
        conn,
        buf: a.buf,
        len: a.len,
        out_len,
        tls12_type: t12,
        bound,
    };
    let _ = OPENING.insert(&pid_tgid, &o, 0);
    0
}

/// At an open's return: the record's plaintext at the buffer kept at entry, its length
/// known then (ring) or written to `*out_len` (aws-lc).
#[inline(always)]
fn open_ret(ok: bool) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out before removal.
    let Some(o) = (unsafe { OPENING.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let _ = OPENING.remove(&pid_tgid);
    if !ok {
        return 0;
    }
    let tgid = (pid_tgid >> 32) as u32;
    let len = if o.out_len != 0 {
        unsafe { uread::<u64>(o.out_len) }.unwrap_or(0)
    } else {
        o.len
    };
    let Some(n) = app_len(o.buf, len, o.tls12_type as u8) else {
        return 0;
    };
    if traced(tgid).is_none() && !sampled(direction::READ, o.conn, o.buf) {
        return 0;
    }
    if o.bound == 0 {
        // Application data under an id of its own (handshake records do not count).
        count(counter::RUSTLS_UNBOUND);
    }
    emit(
        &record(o.conn, o.buf, n, direction::READ),
        n,
        capture_cap(tgid),
    );
    0
}

/// ring's `seal`: the record's plaintext at entry.
#[uprobe]
pub fn custody_rustls_seal(ctx: ProbeContext) -> u32 {
    ring_args(&ctx, false).map_or(0, seal)
}

/// ring's `open`: where the plaintext will be, kept at entry and read at return.
#[uprobe]
pub fn custody_rustls_open(ctx: ProbeContext) -> u32 {
    ring_args(&ctx, true).map_or(0, |a| open_enter(a, 0))
}

/// ring's `open` returns the computed tag for its caller to compare: the plaintext is in
/// place whatever it says (a record failing its tag ends the connection in rustls).
#[uretprobe]
pub fn custody_rustls_open_ret(_ctx: RetProbeContext) -> u32 {
    open_ret(true)
}

/// aws-lc's `EVP_AEAD_CTX_seal`: the record's plaintext (`in`) at entry.
#[uprobe]
pub fn custody_awslc_seal(ctx: ProbeContext) -> u32 {
    aws_lc_args(&ctx).map_or(0, seal)
}

/// aws-lc's `EVP_AEAD_CTX_open`: `out` and `out_len` kept at entry, read at return.
#[uprobe]
pub fn custody_awslc_open(ctx: ProbeContext) -> u32 {
    // SAFETY: as in `ring_args`.
    let (out, out_len) = unsafe {
        let r = &*ctx.regs;
        (r.rsi, r.rdx)
    };
    aws_lc_args(&ctx).map_or(0, |mut a| {
        a.buf = out;
        open_enter(a, out_len)
    })
}

/// `EVP_AEAD_CTX_open` returns 1 on success (0 after zeroing its output).
#[uretprobe]
pub fn custody_awslc_open_ret(ctx: RetProbeContext) -> u32 {
    open_ret(ctx.ret::<i32>() == 1)
}

/// `struct sock *` and protocol of a `sock_send_length` / `sock_recv_length` record
/// (their layout: common fields, `sk` at 8, `family` at 16, `protocol` at 18).
#[inline(always)]
fn sock_of(ctx: &TracePointContext) -> Option<u64> {
    let sk: u64 = unsafe { ctx.read_at(8) }.ok()?;
    let protocol: u16 = unsafe { ctx.read_at(18) }.ok()?;
    (protocol == IPPROTO_TCP && sk != 0).then_some(sk)
}

/// A socket send: binds the key of the record this thread sealed last to the socket.
#[tracepoint]
pub fn custody_rustls_send(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if unsafe { RUSTLS_PROCS.get(&tgid) }.is_none() {
        return 0;
    }
    // SAFETY: copied out before removal.
    let Some(s) = (unsafe { SEALED.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let _ = SEALED.remove(&pid_tgid);
    if s.conn == 0 {
        return 0; // a handshake record: not the connection's id
    }
    let Some(sk) = sock_of(&ctx) else {
        return 0;
    };
    let pk = ProcKey {
        tgid,
        _pad: 0,
        key: s.key,
    };
    if unsafe { KEY_CONN.get(&pk) }.is_some() {
        return 0;
    }
    let conn = match unsafe { SOCK_CONN.get(&sk) } {
        Some(c) if c.tgid == tgid => {
            // A second write key on a known socket: its first records had their own id.
            count(counter::RUSTLS_SPLIT);
            c.conn
        }
        _ => {
            let c = SockConn {
                tgid,
                _pad: 0,
                conn: s.conn,
            };
            let _ = SOCK_CONN.insert(&sk, &c, 0);
            s.conn
        }
    };
    let _ = KEY_CONN.insert(&pk, &conn, 0);
    0
}

/// A socket receive: the socket the next `open` on this thread decrypts from.
#[tracepoint]
pub fn custody_rustls_recv(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if unsafe { RUSTLS_PROCS.get(&tgid) }.is_none() {
        return 0;
    }
    if let Some(sk) = sock_of(&ctx) {
        let _ = RECEIVED.insert(&pid_tgid, &sk, 0);
    }
    0
}
