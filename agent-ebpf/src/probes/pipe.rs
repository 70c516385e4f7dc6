//! JSON written to pipes by tracked processes: the stdio transport of MCP and other
//! JSON-RPC tool servers. Only writes whose first byte is `{` to a FIFO are kept.
//! The same hook gives the first write after a connect to `hello.rs`.

use agent_ebpf::{PIPE_MAX, PipeEvent, counter, flag, kind};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use super::file::{arg, ret, stash, take};
use super::{
    EVENTS, S_IFIFO, S_IFMT, clamp, count, current_tgid, file_mode, file_of_fd, fill_current,
    lazy_wakeup, traced, uread, uread_into,
};

#[tracepoint]
pub fn custody_write_enter(ctx: TracePointContext) -> u32 {
    let fd = arg(&ctx, 0) as i32;
    let buf = arg(&ctx, 1);
    // Every process: one lookup that misses unless this fd connected and has not
    // written since (the ClientHello inspection, `hello.rs`).
    super::hello::first_write(fd, buf, arg(&ctx, 2));
    if traced(current_tgid()).is_none() {
        return 0;
    }
    let first: u8 = unsafe { uread(buf) }.unwrap_or(0);
    if first != b'{' {
        return 0;
    }
    let Some(file) = file_of_fd(fd) else { return 0 };
    if file_mode(file) & S_IFMT != S_IFIFO {
        return 0;
    }
    stash(kind::PIPE_WRITE, fd, buf, 0, 0, 0);
    0
}

#[tracepoint]
pub fn custody_write_exit(ctx: TracePointContext) -> u32 {
    let Some(p) = take() else { return 0 };
    if p.kind != kind::PIPE_WRITE {
        return 0;
    }
    let r = ret(&ctx);
    if r <= 0 {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<PipeEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return 0;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_current(&mut ev.hdr, kind::PIPE_WRITE);
    ev.fd = p.fd;
    ev.len = r as u32;
    ev._pad = 0;
    let c = clamp(r as u64, PIPE_MAX);
    ev.captured = 0;
    if c > 0 && unsafe { uread_into(ev.data.as_mut_ptr(), c, p.a) } {
        ev.captured = c;
    }
    if r as u64 > PIPE_MAX as u64 {
        ev.hdr.flags |= flag::DATA_TRUNCATED;
        count(counter::DATA_TRUNCATED);
    }
    entry.submit(lazy_wakeup());
    0
}
