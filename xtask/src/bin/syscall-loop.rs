//! Workload for `cargo xtask bench sensor` (see BENCHMARKS.md).
//!
//! The same program runs in every benchmark mode; only the daemon beside it and the
//! `CUSTODY_AGENT` environment variable change, so any difference in its timings is
//! the sensor's cost. Every mode first sleeps `--settle-ms`: the daemon starts tracking
//! a declared agent only after it has processed the exec event, and the measurement
//! must not start before that.

use std::ffi::CString;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// Connections the client may be ahead of the accepting thread: well under std's
/// listen backlog of 128, because an overflow costs a 1 s SYN retransmit (seen with a
/// window of 256), yet no handshake between the threads on every connection.
const WINDOW: u64 = 64;

#[derive(Parser)]
#[command(
    name = "syscall-loop",
    about = "Syscall workload for `cargo xtask bench sensor`"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// OPENS × openat+close of FILE, then CONNECTS × loopback TCP connect/accept/close,
    /// then (with `--distinct-dir`) one openat+close of each of DISTINCT different files
    /// DIR/0, DIR/1, …, which no de-duplication can fold; prints one JSON line with the
    /// elapsed nanoseconds of each phase and the CPU time.
    Run {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        opens: u64,
        #[arg(long)]
        connects: u64,
        #[arg(long)]
        distinct_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        distinct: u64,
        #[arg(long, default_value_t = 500)]
        settle_ms: u64,
    },
    /// openat+close of FILE as fast as possible for SECS; prints ops and nanoseconds.
    Flood {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
        #[arg(long, default_value_t = 500)]
        settle_ms: u64,
    },
    /// Fork COUNT children that block until stdin reaches EOF (or MAX_SECS pass),
    /// print `ready COUNT`, then release and reap them.
    Hold {
        count: u32,
        #[arg(long, default_value_t = 500)]
        settle_ms: u64,
        #[arg(long, default_value_t = 300)]
        max_secs: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().mode {
        Mode::Run {
            file,
            opens,
            connects,
            distinct_dir,
            distinct,
            settle_ms,
        } => {
            // Built before the clock starts: the phase times opens, not formatting.
            let distinct_paths = match &distinct_dir {
                Some(dir) => (0..distinct)
                    .map(|i| c_path(&dir.join(i.to_string())))
                    .collect::<Result<Vec<_>>>()?,
                None => Vec::new(),
            };
            settle(settle_ms);
            let cpu = cpu_ns();
            let open_ns = open_close(&file, opens)?;
            let connect_ns = connect_accept(connects)?;
            let cpu_used = cpu_ns() - cpu;
            let total_ns = open_ns + connect_ns;
            let cpu = cpu_ns();
            let distinct_ns = open_each(&distinct_paths)?;
            let distinct_cpu_ns = cpu_ns() - cpu;
            println!(
                r#"{{"open_ns":{open_ns},"connect_ns":{connect_ns},"total_ns":{total_ns},"cpu_ns":{cpu_used},"distinct_ns":{distinct_ns},"distinct_cpu_ns":{distinct_cpu_ns}}}"#
            );
        }
        Mode::Flood {
            file,
            secs,
            settle_ms,
        } => {
            settle(settle_ms);
            let (ops, ns) = flood(&file, Duration::from_secs_f64(secs))?;
            println!(r#"{{"ops":{ops},"ns":{ns}}}"#);
        }
        Mode::Hold {
            count,
            settle_ms,
            max_secs,
        } => {
            settle(settle_ms);
            hold(count, Duration::from_secs(max_secs))?;
        }
    }
    Ok(())
}

fn settle(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// User + system CPU time of this process (all threads). Unlike wall time it hardly
/// moves when other work competes for the cores, so it isolates the cost the sensor
/// adds inside the syscalls from the daemon and other jobs taking CPU away.
fn cpu_ns() -> u128 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let ns = |t: libc::timeval| t.tv_sec as u128 * 1_000_000_000 + t.tv_usec as u128 * 1000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).context("path contains a NUL byte")
}

/// One openat + close through libc, so the loop issues exactly those two syscalls.
fn open_close_once(path: &CString) -> Result<()> {
    // SAFETY: path is a valid NUL-terminated string; the fd is ours to close.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        bail!("open: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened by us.
    unsafe { libc::close(fd) };
    Ok(())
}

fn open_close(path: &Path, n: u64) -> Result<u128> {
    let path = c_path(path)?;
    let t = Instant::now();
    for _ in 0..n {
        open_close_once(&path)?;
    }
    Ok(t.elapsed().as_nanos())
}

/// One openat+close of each path.
fn open_each(paths: &[CString]) -> Result<u128> {
    let t = Instant::now();
    for p in paths {
        open_close_once(p)?;
    }
    Ok(t.elapsed().as_nanos())
}

fn flood(path: &Path, dur: Duration) -> Result<(u64, u128)> {
    let path = c_path(path)?;
    let t = Instant::now();
    let mut ops = 0u64;
    loop {
        // Check the clock only every 1024 ops: clock_gettime is vDSO, but cheap is not free.
        for _ in 0..1024 {
            open_close_once(&path)?;
        }
        ops += 1024;
        if t.elapsed() >= dur {
            return Ok((ops, t.elapsed().as_nanos()));
        }
    }
}

/// M connections to a listener served by an accepting thread of this process (so both
/// sides belong to the measured process). Timed until the last one is accepted.
fn connect_accept(m: u64) -> Result<u128> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let server = {
        let accepted = accepted.clone();
        std::thread::spawn(move || serve(listener, m, &accepted))
    };
    for i in 0..m {
        while i - accepted.load(Ordering::Acquire) >= WINDOW {
            std::thread::yield_now();
        }
        connect_reset(addr)?;
    }
    wait_accepted(&accepted, m, Duration::from_secs(10))?;
    let ns = t.elapsed().as_nanos();
    server
        .join()
        .map_err(|_| anyhow::anyhow!("accept thread panicked"))??;
    Ok(ns)
}

fn serve(listener: TcpListener, m: u64, accepted: &AtomicU64) -> Result<()> {
    for _ in 0..m {
        match listener.accept() {
            Ok((conn, _)) => drop(conn),
            // The client resets its end at once; Linux may report that here. The queued
            // connection is consumed either way.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
            Err(e) => return Err(e).context("accept"),
        }
        accepted.fetch_add(1, Ordering::Release);
    }
    Ok(())
}

/// Connect, then close with SO_LINGER 0: a reset instead of a FIN leaves no TIME_WAIT
/// socket behind, so tens of thousands of connections per run cannot exhaust the
/// ephemeral ports or slow the port search between modes.
fn connect_reset(addr: SocketAddr) -> Result<()> {
    let s = TcpStream::connect(addr).context("connect")?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("SO_LINGER: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn wait_accepted(accepted: &AtomicU64, m: u64, limit: Duration) -> Result<()> {
    let t = Instant::now();
    while accepted.load(Ordering::Acquire) < m {
        if t.elapsed() > limit {
            bail!(
                "only {} of {m} connections accepted after {limit:?}",
                accepted.load(Ordering::Acquire)
            );
        }
        std::thread::yield_now();
    }
    Ok(())
}

/// Fork `count` blocked children, report, wait for the release, reap.
///
/// Children block reading a pipe whose only write end the parent holds, so they all
/// exit as soon as the parent closes it or dies; PR_SET_PDEATHSIG is a second net.
fn hold(count: u32, max: Duration) -> Result<()> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let forked = fork_children(count, rd, wr, parent);
    if forked == count {
        println!("ready {count}");
        std::io::stdout().flush()?;
        wait_release(max);
    }
    // SAFETY: closing our own write end releases every child.
    unsafe { libc::close(wr) };
    reap(forked);
    if forked < count {
        bail!(
            "fork failed after {forked} of {count} children: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn fork_children(count: u32, rd: i32, wr: i32, parent: libc::pid_t) -> u32 {
    for i in 0..count {
        // SAFETY: this program is single-threaded here, and the child only makes
        // async-signal-safe calls before _exit.
        match unsafe { libc::fork() } {
            0 => child(rd, wr, parent),
            -1 => return i,
            _ => {}
        }
    }
    count
}

fn child(rd: i32, wr: i32, parent: libc::pid_t) -> ! {
    // SAFETY: plain syscalls on our own descriptors; _exit never returns.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(0); // the parent died before the prctl took effect
        }
        libc::close(wr);
        let mut b = 0u8;
        while libc::read(rd, (&mut b as *mut u8).cast(), 1) < 0
            && *libc::__errno_location() == libc::EINTR
        {}
        libc::_exit(0)
    }
}

/// Block until stdin reaches EOF (the benchmark closes it) or `max` passes.
fn wait_release(max: Duration) {
    let deadline = Instant::now() + max;
    let mut buf = [0u8; 64];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let mut pfd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd; reading into a buffer we own.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready > 0 && unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) } <= 0 {
            return;
        }
    }
}

fn reap(n: u32) {
    for _ in 0..n {
        // SAFETY: waiting for any child of ours.
        if unsafe { libc::wait(std::ptr::null_mut()) } < 0 {
            break;
        }
    }
}
