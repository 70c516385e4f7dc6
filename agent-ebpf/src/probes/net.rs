//! Network activity: connect, accept/accept4, bind, listen (with results and the
//! socket's full 4-tuple read from the kernel socket behind the fd), and UDP/53 sends
//! (DNS queries) from sendto/sendmsg/sendmmsg. Connects and sends also feed the
//! first-write ClientHello inspection (`hello.rs`).

use agent_ebpf::{DNS_MAX, DnsEvent, NetEvent, counter, kind};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use super::file::{arg, ret, stash, take};
use super::{
    EVENTS, clamp, count, current_tgid, fill_current, kread, lazy_wakeup, off, sock_of_fd, traced,
    uread, uread_into, wanted,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_DGRAM: u16 = 2;

#[tracepoint]
pub fn custody_connect_enter(ctx: TracePointContext) -> u32 {
    if !wanted() {
        // Not reported, but its first write is inspected for a ClientHello (discovery
        // by SNI); connects are rare enough for the stash.
        if super::hello::arm_untraced() {
            stash(
                super::hello::CONNECT_ARM_ONLY,
                arg(&ctx, 0) as i32,
                0,
                0,
                0,
                0,
            );
        }
        return 0;
    }
    stash(
        kind::NET_CONNECT,
        arg(&ctx, 0) as i32,
        arg(&ctx, 1),
        0,
        0,
        0,
    );
    0
}

#[tracepoint]
pub fn custody_bind_enter(ctx: TracePointContext) -> u32 {
    if !wanted() {
        return 0;
    }
    stash(kind::NET_BIND, arg(&ctx, 0) as i32, arg(&ctx, 1), 0, 0, 0);
    0
}

#[tracepoint]
pub fn custody_listen_enter(ctx: TracePointContext) -> u32 {
    if !wanted() {
        return 0;
    }
    stash(
        kind::NET_LISTEN,
        arg(&ctx, 0) as i32,
        0,
        0,
        arg(&ctx, 1) as u32,
        0,
    );
    0
}

/// Exit of connect, bind and listen.
#[tracepoint]
pub fn custody_sock_exit(ctx: TracePointContext) -> u32 {
    let Some(p) = take() else { return 0 };
    if p.kind == super::hello::CONNECT_ARM_ONLY {
        super::hello::arm(p.fd, ret(&ctx));
        return 0;
    }
    if p.kind != kind::NET_CONNECT && p.kind != kind::NET_BIND && p.kind != kind::NET_LISTEN {
        return 0;
    }
    if p.kind == kind::NET_CONNECT {
        super::hello::arm(p.fd, ret(&ctx));
    }
    emit(p.kind, p.fd, ret(&ctx), p.a);
    0
}

/// Exit of accept and accept4: the new fd's socket carries both ends.
#[tracepoint]
pub fn custody_accept_exit(ctx: TracePointContext) -> u32 {
    let r = ret(&ctx);
    if r < 0 || traced(current_tgid()).is_none() {
        return 0;
    }
    emit(kind::NET_ACCEPT, r as i32, r, 0);
    0
}

/// Emit a NetEvent for socket `fd`. `uaddr` is a user sockaddr (connect's target,
/// bind's address) used when the socket cannot tell (a failed connect).
#[inline(always)]
fn emit(kind: u32, fd: i32, result: i64, uaddr: u64) {
    let sk = sock_of_fd(fd);
    let mut family: u16 = match sk {
        Some(sk) => unsafe { kread(sk, off!(sk_family)) }.unwrap_or(0),
        None => 0,
    };
    if family == 0 && uaddr != 0 {
        family = unsafe { uread(uaddr) }.unwrap_or(0);
    }
    if family != AF_INET && family != AF_INET6 {
        return; // unix and netlink sockets are not network activity
    }
    let Some(mut entry) = EVENTS.reserve::<NetEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_current(&mut ev.hdr, kind);
    ev.ret = result;
    ev.fd = fd;
    ev.family = family;
    ev._pad = 0;
    ev.local_addr = [0; 16];
    ev.remote_addr = [0; 16];
    ev.local_port = 0;
    ev.remote_port = 0;
    ev.protocol = 0;
    ev.sock_type = 0;
    if let Some(sk) = sk {
        unsafe {
            ev.sock_type = kread(sk, off!(sk_type)).unwrap_or(0);
            ev.protocol = kread(sk, off!(sk_protocol)).unwrap_or(0);
            ev.local_port = kread(sk, off!(sk_num)).unwrap_or(0);
            ev.remote_port = u16::from_be(kread(sk, off!(sk_dport)).unwrap_or(0));
            if family == AF_INET {
                let l: [u8; 4] = kread(sk, off!(sk_rcv_saddr)).unwrap_or([0; 4]);
                let r: [u8; 4] = kread(sk, off!(sk_daddr)).unwrap_or([0; 4]);
                ev.local_addr[..4].copy_from_slice(&l);
                ev.remote_addr[..4].copy_from_slice(&r);
            } else {
                ev.local_addr = kread(sk, off!(sk_v6_rcv_saddr)).unwrap_or([0; 16]);
                ev.remote_addr = kread(sk, off!(sk_v6_daddr)).unwrap_or([0; 16]);
            }
        }
    }
    // The socket does not know its peer (failed or non-blocking connect) or its bound
    // address yet: take what the caller passed.
    if uaddr != 0 && (ev.remote_port == 0 || kind == agent_ebpf::kind::NET_BIND) {
        let port: u16 = u16::from_be(unsafe { uread(uaddr + 2) }.unwrap_or(0));
        let (a, p) = if kind == agent_ebpf::kind::NET_BIND {
            (&mut ev.local_addr, &mut ev.local_port)
        } else {
            (&mut ev.remote_addr, &mut ev.remote_port)
        };
        *p = port;
        if family == AF_INET {
            let v: [u8; 4] = unsafe { uread(uaddr + 4) }.unwrap_or([0; 4]);
            a[..4].copy_from_slice(&v);
        } else {
            *a = unsafe { uread(uaddr + 8) }.unwrap_or([0; 16]);
        }
    }
    entry.submit(lazy_wakeup());
}

#[tracepoint]
pub fn custody_sendto_enter(ctx: TracePointContext) -> u32 {
    super::hello::first_write(arg(&ctx, 0) as i32, arg(&ctx, 1), arg(&ctx, 2));
    if !wanted() {
        return 0;
    }
    // sendto(fd, buf, len, flags, addr, addrlen)
    dns(
        arg(&ctx, 0) as i32,
        arg(&ctx, 1),
        arg(&ctx, 2),
        arg(&ctx, 4),
    );
    0
}

#[tracepoint]
pub fn custody_sendmsg_enter(ctx: TracePointContext) -> u32 {
    super::hello::first_write_msg(arg(&ctx, 0) as i32, arg(&ctx, 1));
    if !wanted() {
        return 0;
    }
    // sendmsg(fd, struct user_msghdr *msg, flags)
    msghdr(arg(&ctx, 0) as i32, arg(&ctx, 1));
    0
}

#[tracepoint]
pub fn custody_sendmmsg_enter(ctx: TracePointContext) -> u32 {
    if !wanted() {
        return 0;
    }
    // sendmmsg(fd, struct mmsghdr *vec, vlen, flags): the first message is the query
    // (glibc sends the A and AAAA queries as two messages).
    msghdr(arg(&ctx, 0) as i32, arg(&ctx, 1));
    0
}

#[inline(always)]
fn msghdr(fd: i32, msg: u64) {
    // struct user_msghdr { void *msg_name; int msg_namelen; struct iovec *msg_iov; ... }
    let name: u64 = unsafe { uread(msg) }.unwrap_or(0);
    let iov: u64 = unsafe { uread(msg + 16) }.unwrap_or(0);
    let base: u64 = unsafe { uread(iov) }.unwrap_or(0);
    let len: u64 = unsafe { uread(iov + 8) }.unwrap_or(0);
    dns(fd, base, len, name);
}

/// Emit a DnsEvent when this datagram goes to port 53.
#[inline(always)]
fn dns(fd: i32, buf: u64, len: u64, uaddr: u64) {
    let family: u16;
    let port: u16;
    let mut addr = [0u8; 16];
    if uaddr != 0 {
        family = unsafe { uread(uaddr) }.unwrap_or(0);
        port = u16::from_be(unsafe { uread(uaddr + 2) }.unwrap_or(0));
        if port != 53 {
            return;
        }
        if family == AF_INET {
            let v: [u8; 4] = unsafe { uread(uaddr + 4) }.unwrap_or([0; 4]);
            addr[..4].copy_from_slice(&v);
        } else if family == AF_INET6 {
            addr = unsafe { uread(uaddr + 8) }.unwrap_or([0; 16]);
        }
    } else if let Some(sk) = sock_of_fd(fd) {
        let ty: u16 = unsafe { kread(sk, off!(sk_type)) }.unwrap_or(0);
        if ty != SOCK_DGRAM {
            return;
        }
        port = u16::from_be(unsafe { kread(sk, off!(sk_dport)) }.unwrap_or(0));
        if port != 53 {
            return;
        }
        family = unsafe { kread(sk, off!(sk_family)) }.unwrap_or(0);
        if family == AF_INET {
            let v: [u8; 4] = unsafe { kread(sk, off!(sk_daddr)) }.unwrap_or([0; 4]);
            addr[..4].copy_from_slice(&v);
        } else {
            addr = unsafe { kread(sk, off!(sk_v6_daddr)) }.unwrap_or([0; 16]);
        }
    } else {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<DnsEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_current(&mut ev.hdr, kind::DNS_QUERY);
    ev.family = family;
    ev.remote_port = port;
    ev.remote_addr = addr;
    let n = clamp(len, DNS_MAX);
    ev.len = 0;
    if n > 0 && unsafe { uread_into(ev.data.as_mut_ptr(), n, buf) } {
        ev.len = n;
    }
    entry.submit(lazy_wakeup());
}
