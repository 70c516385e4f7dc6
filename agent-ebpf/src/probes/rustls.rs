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
    /// Content type from a TLS 1.2 AAD, or 0 for TLS 1.3 (the type ends the plaintext).
    tls12_type: u32,
    _pad: u32,
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

/// (key, AAD pointer, AAD length, `in_out` pointer, `in_out` length) of a `seal`/`open`
/// at entry, from the registers and the stack.
#[inline(always)]
fn args(ctx: &ProbeContext) -> (u64, u64, u64, u64, u64) {
    // SAFETY: the context of a uprobe is the task's saved registers.
    let (key, aad, aad_len, buf, sp) = unsafe {
        let r = &*ctx.regs;
        (r.rsi, r.rcx, r.r8, r.r9, r.rsp)
    };
    let len: u64 = unsafe { uread(sp + 8) }.unwrap_or(0);
    (key, aad, aad_len, buf, len)
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

#[uprobe]
pub fn custody_rustls_seal(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let (key, aad, aad_len, buf, len) = args(&ctx);
    if key == 0 || buf == 0 {
        return 0;
    }
    mark(tgid);
    let t12 = match aad_len {
        AAD_TLS13 => 0,
        AAD_TLS12 => tls12_type(aad).max(1),
        _ => return 0,
    };
    let pk = ProcKey { tgid, _pad: 0, key };
    let mut sealed = Sealed { key, conn: 0 };
    if let Some(n) = app_len(buf, len, t12) {
        let conn = unsafe { KEY_CONN.get(&pk) }.copied().unwrap_or(key);
        sealed.conn = conn;
        if traced(tgid).is_some() || sampled(direction::WRITE, conn, buf) {
            let call = TlsCall {
                ssl: conn,
                buf,
                out_len: 0,
                len: n,
                direction: direction::WRITE,
                _pad: 0,
            };
            emit(&call, n, capture_cap(tgid));
        }
    }
    let _ = SEALED.insert(&pid_tgid, &sealed, 0);
    0
}

#[uprobe]
pub fn custody_rustls_open(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let (key, aad, aad_len, buf, len) = args(&ctx);
    if key == 0 || buf == 0 {
        return 0;
    }
    mark(tgid);
    let src: u64 = unsafe { uread((*ctx.regs).rsp + 16) }.unwrap_or(u64::MAX);
    if src > len {
        return 0;
    }
    let t12 = match aad_len {
        AAD_TLS13 => 0,
        AAD_TLS12 => u32::from(tls12_type(aad).max(1)),
        _ => return 0,
    };
    let sock = unsafe { RECEIVED.get(&pid_tgid) }.copied().unwrap_or(0);
    let conn = match unsafe { SOCK_CONN.get(&sock) } {
        Some(c) if sock != 0 && c.tgid == tgid => c.conn,
        _ => {
            count(counter::RUSTLS_UNBOUND);
            if sock != 0 { sock } else { key }
        }
    };
    let o = Opening {
        conn,
        buf,
        len: len - src,
        tls12_type: t12,
        _pad: 0,
    };
    let _ = OPENING.insert(&pid_tgid, &o, 0);
    0
}

#[uretprobe]
pub fn custody_rustls_open_ret(_ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out before removal.
    let Some(o) = (unsafe { OPENING.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let _ = OPENING.remove(&pid_tgid);
    let tgid = (pid_tgid >> 32) as u32;
    let Some(n) = app_len(o.buf, o.len, o.tls12_type as u8) else {
        return 0;
    };
    if traced(tgid).is_none() && !sampled(direction::READ, o.conn, o.buf) {
        return 0;
    }
    let call = TlsCall {
        ssl: o.conn,
        buf: o.buf,
        out_len: 0,
        len: n,
        direction: direction::READ,
        _pad: 0,
    };
    emit(&call, n, capture_cap(tgid));
    0
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
