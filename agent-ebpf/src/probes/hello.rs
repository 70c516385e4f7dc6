//! The first write after a connect: the TLS ClientHello, whatever library encrypts
//! the rest, and the byte counts of a tracked process's TLS connection at its close.
//!
//! A TCP connect that succeeds (or is under way, EINPROGRESS) arms its socket in
//! `FIRST_WRITE` (key `tgid << 32 | fd`). Every write/writev/sendto/sendmsg looks
//! that key up before anything else and stops on a miss, so a socket costs one
//! inspection in its life and writes of unarmed fds cost one failed lookup. On a hit
//! the entry is removed; when the bytes start like a TLS handshake record with a
//! ClientHello, one bounded `bpf_probe_read_user` copies up to [`HELLO_MAX`] of them
//! into a ring-buffer record (no byte loop: the verifier budget is tight). A tracked
//! process's connection is then remembered in `CONNS` (key: the `struct sock *`) and
//! the `inet_sock_set_state` tracepoint reports its `tcp_sock` byte counts when it
//! reaches TCP_CLOSE. That tracepoint fires on TCP state changes only (not per
//! syscall, so it adds nothing to the syscall path), also runs for sockets closed by
//! the kernel after their process exited, and is a BTF tracepoint on 6.18 so its
//! `struct sock *` needs no record-layout parsing; the close of the fd would miss
//! connections the peer ends first and cannot tell how many bytes were acknowledged.

use agent_ebpf::{Armed, CloseEvent, ConnOpen, HELLO_MAX, HelloEvent, counter, flag, kind};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::{BtfTracePointContext, TracePointContext},
};

use super::file::arg;
use super::{
    EVENTS, clamp, count, fill_current, in_scope, kread, lazy_wakeup, off, self_tgid, sock_of_fd,
    uread, uread_into,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u16 = 1;
const IPPROTO_TCP: u16 = 6;
const EINPROGRESS: i64 = 115;
const TCP_CLOSE: i32 = 7;

/// `Pending::kind` of a connect by a process that is not traced: only armed for the
/// first-write inspection at its exit, never reported as a connect.
pub const CONNECT_ARM_ONLY: u32 = 0x8000_0000 | kind::NET_CONNECT;

/// Connected sockets not written yet. LRU: a socket that never writes (or whose fd
/// was closed first) ages out instead of filling the map.
#[map]
static FIRST_WRITE: LruHashMap<u64, Armed> = LruHashMap::with_max_entries(16384, 0);

/// Tracked processes' TLS connections until TCP_CLOSE. A plain hash: an entry always
/// leaves at the close, and a failed insert is counted (`CONNS_FULL`).
#[map]
static CONNS: HashMap<u64, ConnOpen> = HashMap::with_max_entries(16384, 0);

/// Whether a connect by an untraced process is armed: anything in the sensor's scope
/// but the daemon itself (SNI is discovery evidence for untracked processes).
#[inline(always)]
pub fn arm_untraced() -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 != self_tgid() && in_scope()
}

#[inline(always)]
fn key(fd: i32) -> u64 {
    (bpf_get_current_pid_tgid() & 0xffff_ffff_0000_0000) | u64::from(fd as u32)
}

/// At a connect's exit: arm a TCP socket that connected or is connecting.
#[inline(always)]
pub fn arm(fd: i32, ret: i64) {
    if ret != 0 && ret != -EINPROGRESS {
        return;
    }
    let Some(sk) = sock_of_fd(fd) else { return };
    let (family, ty, proto): (u16, u16, u16) = unsafe {
        (
            kread(sk, off!(sk_family)).unwrap_or(0),
            kread(sk, off!(sk_type)).unwrap_or(0),
            kread(sk, off!(sk_protocol)).unwrap_or(0),
        )
    };
    if (family != AF_INET && family != AF_INET6) || ty != SOCK_STREAM || proto != IPPROTO_TCP {
        return;
    }
    let a = Armed {
        sock: sk as u64,
        opened_ns: unsafe { bpf_ktime_get_boot_ns() },
    };
    // An LRU insert does not fail for lack of room: it evicts the oldest entry.
    let _ = FIRST_WRITE.insert(&key(fd), &a, 0);
}

/// The armed entry of `fd`, taken (the one lookup every write pays).
#[inline(always)]
fn take_armed(fd: i32) -> Option<Armed> {
    let k = key(fd);
    // SAFETY: copied out before the entry is removed.
    let a = unsafe { *FIRST_WRITE.get(&k)? };
    let _ = FIRST_WRITE.remove(&k);
    count(counter::HELLO_INSPECTED);
    Some(a)
}

/// write(fd, buf, len) and sendto(fd, buf, len, …).
#[inline(always)]
pub fn first_write(fd: i32, buf: u64, len: u64) {
    if let Some(a) = take_armed(fd) {
        inspect(fd, a, buf, len);
    }
}

/// writev(fd, iov, n) and sendmsg(fd, msghdr, …): the first iovec carries the start.
#[inline(always)]
fn first_write_iov(fd: i32, iov: u64) {
    let Some(a) = take_armed(fd) else { return };
    let base: u64 = unsafe { uread(iov) }.unwrap_or(0);
    let len: u64 = unsafe { uread(iov + 8) }.unwrap_or(0);
    inspect(fd, a, base, len);
}

#[inline(always)]
pub fn first_write_msg(fd: i32, msg: u64) {
    // Cheap miss first: the msghdr is read only for an armed socket.
    let Some(a) = take_armed(fd) else { return };
    // struct user_msghdr { void *msg_name; int msg_namelen; struct iovec *msg_iov; … }
    let iov: u64 = unsafe { uread(msg + 16) }.unwrap_or(0);
    let base: u64 = unsafe { uread(iov) }.unwrap_or(0);
    let len: u64 = unsafe { uread(iov + 8) }.unwrap_or(0);
    inspect(fd, a, base, len);
}

#[tracepoint]
pub fn custody_writev_enter(ctx: TracePointContext) -> u32 {
    first_write_iov(arg(&ctx, 0) as i32, arg(&ctx, 1));
    0
}

/// A TLS record header (content type 22 = handshake, version 3.x) followed by a
/// handshake of type 1 (ClientHello).
#[inline(always)]
fn is_client_hello(buf: u64, len: u64) -> bool {
    if len < 6 {
        return false;
    }
    let head: [u8; 6] = unsafe { uread(buf) }.unwrap_or([0; 6]);
    head[0] == 0x16 && head[1] == 0x03 && head[5] == 0x01
}

#[inline(always)]
fn inspect(fd: i32, a: Armed, buf: u64, len: u64) {
    if !is_client_hello(buf, len) {
        return;
    }
    // The fd may have been closed and reused since the connect: same socket only.
    let Some(sk) = sock_of_fd(fd) else { return };
    if sk as u64 != a.sock {
        return;
    }
    count(counter::HELLO_SEEN);
    let Some(mut entry) = EVENTS.reserve::<HelloEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_current(&mut ev.hdr, kind::TLS_HELLO);
    ev.sock = a.sock;
    ev.opened_ns = a.opened_ns;
    ev.fd = fd;
    ev.len = len as u32;
    ev._pad = [0; 3];
    read_tuple(
        sk,
        &mut ev.family,
        &mut ev.local_addr,
        &mut ev.local_port,
        &mut ev.remote_addr,
        &mut ev.remote_port,
    );
    let n = clamp(len, HELLO_MAX);
    ev.captured = 0;
    if n > 0 && unsafe { uread_into(ev.data.as_mut_ptr(), n, buf) } {
        ev.captured = n;
    } else {
        ev.hdr.flags |= flag::READ_FAILED;
    }
    if len > HELLO_MAX as u64 {
        ev.hdr.flags |= flag::DATA_TRUNCATED;
    }
    let follow = ev.hdr.flags & flag::TRACKED != 0 || super::observe_all();
    let open = ConnOpen {
        tgid: ev.hdr.tgid,
        agent: ev.hdr.agent,
        flags: ev.hdr.flags & flag::TRACKED,
        _pad: 0,
        start_boottime: ev.hdr.start_boottime,
        opened_ns: a.opened_ns,
    };
    entry.submit(lazy_wakeup());
    if follow && CONNS.insert(&a.sock, &open, 0).is_err() {
        count(counter::CONNS_FULL);
    }
}

/// The socket's family and both ends (ports in host order).
#[inline(always)]
fn read_tuple(
    sk: *const u8,
    family: &mut u16,
    local_addr: &mut [u8; 16],
    local_port: &mut u16,
    remote_addr: &mut [u8; 16],
    remote_port: &mut u16,
) {
    *local_addr = [0; 16];
    *remote_addr = [0; 16];
    unsafe {
        *family = kread(sk, off!(sk_family)).unwrap_or(0);
        // Not `skc_num`: releasing the port at close clears it before TCP_CLOSE.
        *local_port = u16::from_be(kread(sk, off!(inet_sport)).unwrap_or(0));
        *remote_port = u16::from_be(kread(sk, off!(sk_dport)).unwrap_or(0));
        if *family == AF_INET {
            let l: [u8; 4] = kread(sk, off!(sk_rcv_saddr)).unwrap_or([0; 4]);
            let r: [u8; 4] = kread(sk, off!(sk_daddr)).unwrap_or([0; 4]);
            local_addr[..4].copy_from_slice(&l);
            remote_addr[..4].copy_from_slice(&r);
        } else {
            *local_addr = kread(sk, off!(sk_v6_rcv_saddr)).unwrap_or([0; 16]);
            *remote_addr = kread(sk, off!(sk_v6_daddr)).unwrap_or([0; 16]);
        }
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn custody_sock_state(ctx: BtfTracePointContext) -> i32 {
    let newstate: i32 = ctx.arg(2);
    if newstate != TCP_CLOSE {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    let k = sk as u64;
    super::rustls::forget_sock(k);
    // SAFETY: copied out before the entry is removed.
    let Some(c) = (unsafe { CONNS.get(&k) }).copied() else {
        return 0;
    };
    let _ = CONNS.remove(&k);
    let Some(mut entry) = EVENTS.reserve::<CloseEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return 0;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    let h = &mut ev.hdr;
    h.kind = kind::SOCK_CLOSE;
    h.flags = c.flags;
    h.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    h.tgid = c.tgid;
    h.pid = c.tgid;
    h.ppid = 0;
    h.uid = 0;
    h.gid = 0;
    h.auid = u32::MAX;
    h.netns = 0;
    h.agent = c.agent;
    h.cgroup_id = 0;
    h.start_boottime = c.start_boottime;
    h.parent_start_boottime = 0;
    h.comm = [0; 16];
    ev.sock = k;
    ev.opened_ns = c.opened_ns;
    ev.bytes_acked = unsafe { kread(sk, off!(tcp_bytes_acked)) }.unwrap_or(0);
    ev.bytes_received = unsafe { kread(sk, off!(tcp_bytes_received)) }.unwrap_or(0);
    ev._pad = 0;
    read_tuple(
        sk,
        &mut ev.family,
        &mut ev.local_addr,
        &mut ev.local_port,
        &mut ev.remote_addr,
        &mut ev.remote_port,
    );
    entry.submit(lazy_wakeup());
    0
}
