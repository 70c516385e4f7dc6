//! The held process as the daemon sees it: its clock, signals through a pidfd (immune
//! to pid reuse), its state and threads in /proc, and its memory.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `CLOCK_BOOTTIME` in ns: the clock of `bpf_ktime_get_boot_ns`.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) } as i32;
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Signal the process behind `pidfd` (immune to pid reuse).
pub fn pidfd_signal(pidfd: &OwnedFd, sig: i32) -> bool {
    // SAFETY: plain syscall on a valid pidfd; null siginfo means a kill(2)-like signal.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        ) == 0
    }
}

/// Process state letter from /proc/PID/stat (None when gone).
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    stat[close + 2..].chars().next()
}

/// Whether no thread of `tgid` is still running. Once a held process's threads have
/// all stopped, no uprobe handler of it is in flight: its writes are all in
/// `TLS_CALLS`, its records submitted, its `HELD` entry final. A single-threaded
/// process is quiet as soon as its record exists.
pub(super) fn threads_quiet(tgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{tgid}/task")) else {
        return true; // gone: nothing runs
    };
    let tasks: Vec<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if tasks.len() <= 1 {
        return true;
    }
    tasks.iter().all(|t| {
        let s = std::fs::read_to_string(format!("/proc/{tgid}/task/{t}/stat")).unwrap_or_default();
        s.rfind(')')
            .and_then(|i| s.get(i + 2..))
            .and_then(|r| r.chars().next())
            .is_none_or(|c| c != 'R')
    })
}

/// `len` bytes at `addr` in the memory of `pid` (a stopped process: the buffer of its
/// pending SSL_write is mapped and unchanging).
pub(super) fn read_mem(pid: u32, addr: u64, len: usize) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut out = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut out[got..], addr + got as u64) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got += n,
        }
    }
    Some(out)
}
