//! Checks made before anything starts, so the demo fails early and says what to do:
//! root, eBPF, one demo at a time, leftovers of an earlier demo, the port.

use std::fs::File;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::is_root;

pub fn root() -> Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask demo needs root: custodyd loads eBPF programs into the kernel.\n\
             Run it from a root shell (`sudo -i`, then `cd {} && cargo xtask demo`), \
             or keep your toolchain with `sudo -E env PATH=\"$PATH\" cargo xtask demo`.",
            crate::util::root().display()
        );
    }
    Ok(())
}

/// Loads a two-instruction socket filter: proves the bpf() syscall works here, which
/// a container or a seccomp policy can forbid even to root. Also checks kernel BTF.
pub fn bpf() -> Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing); custodyd needs a \
             kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian 12's stock kernel has it)"
        );
    }
    // r0 = 0; exit
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = b"GPL\0";
    let mut attr = [0u64; 16];
    attr[0] = 1 /* BPF_PROG_TYPE_SOCKET_FILTER */ | (2u64 << 32) /* insn_cnt */;
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // SAFETY: BPF_PROG_LOAD with a zeroed attribute block that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5, /* BPF_PROG_LOAD */
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd >= 0 {
        // SAFETY: closing the fd the kernel just gave us.
        unsafe { libc::close(fd as i32) };
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    let why = match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "the kernel refused (permission denied). Inside a container, run it privileged \
             (docker run --privileged) or use a VM; check that no seccomp profile blocks bpf()"
        }
        Some(libc::ENOSYS) => "this kernel has no bpf() syscall (CONFIG_BPF_SYSCALL is off)",
        _ => "see the error above",
    };
    bail!("eBPF is not available on this machine: bpf(BPF_PROG_LOAD) failed: {err}; {why}")
}

/// Held for the demo's life: a second `cargo xtask demo` on this checkout fails fast
/// instead of tearing the first one's processes down.
pub struct Lock {
    _file: File,
}

pub fn lock(path: &Path) -> Result<Lock> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = std::fs::read_to_string(path).unwrap_or_default();
        bail!(
            "another `cargo xtask demo` is running from this checkout (pid {}); stop it with \
             Ctrl-C in its terminal (or `kill -INT {}`) first",
            pid.trim(),
            pid.trim()
        );
    }
    file.set_len(0)?;
    std::fs::write(path, format!("{}\n", std::process::id()))?;
    Ok(Lock { _file: file })
}

/// Processes whose command line mentions `dir`: what an earlier demo that did not
/// tear down (killed with SIGKILL, say) left running.
fn mentioning(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        let prog = cmd.split(' ').next().unwrap_or("");
        let base = prog.rsplit('/').next().unwrap_or(prog);
        // Only what the demo starts; not, say, a custodyctl someone left open.
        let ours = base == "custodyd"
            || base == "custody-collector"
            || base.starts_with("python")
            || base == "node";
        if ours && cmd.contains(&needle) {
            found.push((pid, cmd.trim().to_string()));
        }
    }
    found
}

/// Stop what an earlier demo left running (we hold the lock, so it is not live).
pub fn stop_leftovers(dir: &Path) {
    let left = mentioning(dir);
    if left.is_empty() {
        return;
    }
    for (pid, cmd) in &left {
        eprintln!("demo: stopping pid {pid} left over from an earlier demo: {cmd}");
        // SAFETY: signalling a process we identified by its command line.
        unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !mentioning(dir).is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }
    for (pid, _) in mentioning(dir) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(200));
}

/// Fails with who holds the port when it cannot be bound on every address (the
/// collector listens on the demo bridge's).
pub fn port_free(port: u16) -> Result<()> {
    match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => {
            drop(l);
            Ok(())
        }
        Err(e) => {
            let who = port_owner(port)
                .map(|(pid, cmd)| format!(" by pid {pid} ({cmd})"))
                .unwrap_or_default();
            let what = if who.contains("custody-collector") {
                "That is a collector this demo did not start: stop it, or pick"
            } else {
                "Stop it, or pick"
            };
            bail!(
                "port {port} is taken{who} ({e}). {what} another port with \
                 `cargo xtask demo --port N`"
            )
        }
    }
}

/// The process listening on `port` (TCP, IPv4 or IPv6), from /proc.
fn port_owner(port: u16) -> Option<(u32, String)> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue; // not LISTEN
            }
            let lport = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if lport == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                let raw = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
                return Some((pid, cmd.trim().to_string()));
            }
        }
    }
    None
}
