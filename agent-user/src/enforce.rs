//! Enforcement on this host: kill and network quarantine, applied to the pinned
//! kernel maps (so they outlive the daemon) with `kill(2)` and socket shutdown as
//! immediate backstops.

use std::net::{IpAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::kernel::mounts::cgroup2_root;
use crate::kernel::pins::pin_replacing;
use agent_ebpf::{Endpoint, KillMark};
use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{
        CgroupAttachMode, CgroupSockAddr, RawTracePoint,
        links::{FdLink, PinnedLink},
    },
};

const HOOKS: [&str; 4] = [
    "custody_connect4",
    "custody_connect6",
    "custody_sendmsg4",
    "custody_sendmsg6",
];

pub struct Enforcer {
    kill: BpfHashMap<MapData, u32, KillMark>,
    quarantine: BpfHashMap<MapData, u32, u32>,
    allow: BpfHashMap<MapData, Endpoint, u8>,
    pin_dir: PathBuf,
    kill_attached: bool,
}

impl Enforcer {
    /// Attach the quarantine hooks (pinned) and take the enforcement maps.
    pub fn attach(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<Enforcer> {
        let cgroup = cgroup2_root()?;
        let cg = std::fs::File::open(&cgroup)
            .with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        for name in HOOKS {
            let p: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .with_context(|| format!("{name} missing"))?
                .try_into()?;
            p.load()?;
            let id = // Links are multi-attach by nature; the kernel rejects the flag on link_create.
            p.attach(cg.as_fd(), CgroupAttachMode::Single).with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
            let link: FdLink = p
                .take_link(id)?
                .try_into()
                .context("cgroup link is not an fd link")?;
            pin_replacing(link, &pin_dir.join("links").join(name))?;
        }
        let kill_prog: &mut RawTracePoint = ebpf
            .program_mut("custody_kill")
            .context("custody_kill missing")?
            .try_into()?;
        kill_prog.load()?;
        let kill = BpfHashMap::try_from(ebpf.take_map("KILL").context("KILL map missing")?)?;
        let quarantine = BpfHashMap::try_from(
            ebpf.take_map("QUARANTINE")
                .context("QUARANTINE map missing")?,
        )?;
        let allow = BpfHashMap::try_from(
            ebpf.take_map("ALLOW_DST")
                .context("ALLOW_DST map missing")?,
        )?;
        let mut e = Enforcer {
            kill,
            quarantine,
            allow,
            pin_dir: pin_dir.to_path_buf(),
            kill_attached: pin_dir.join("links/custody_kill").exists(),
        };
        // A previous daemon may have left kills pending: keep the hook for them.
        e.sync_kill_hook(ebpf)?;
        Ok(e)
    }

    /// Let quarantined processes still reach the collector (its resolved addresses).
    pub fn allow_collector(&mut self, addr: &str) -> Result<()> {
        for sa in addr
            .to_socket_addrs()
            .with_context(|| format!("resolving collector address {addr}"))?
        {
            let mut a = [0u8; 16];
            let family = match sa.ip() {
                IpAddr::V4(v4) => {
                    a[..4].copy_from_slice(&v4.octets());
                    2
                }
                IpAddr::V6(v6) => {
                    a = v6.octets();
                    10
                }
            };
            self.allow.insert(
                Endpoint {
                    addr: a,
                    port: sa.port(),
                    family,
                },
                1,
                0,
            )?;
        }
        Ok(())
    }

    pub fn quarantined(&self) -> Vec<u32> {
        self.quarantine.keys().filter_map(Result::ok).collect()
    }

    pub fn pending_kills(&self) -> usize {
        self.kill.keys().filter_map(Result::ok).count()
    }

    /// Attach the sys_enter kill hook while kills are pending, detach it when none are.
    pub fn sync_kill_hook(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        let want = self.pending_kills() > 0;
        let path = self.pin_dir.join("links/custody_kill");
        if want && !self.kill_attached {
            let p: &mut RawTracePoint = ebpf
                .program_mut("custody_kill")
                .context("custody_kill missing")?
                .try_into()?;
            let id = p.attach("sys_enter")?;
            let link: FdLink = p.take_link(id)?.into();
            pin_replacing(link, &path)?;
            self.kill_attached = true;
        } else if !want && self.kill_attached {
            if let Ok(p) = PinnedLink::from_pin(&path) {
                drop(p.unpin()?);
            }
            self.kill_attached = false;
        }
        Ok(())
    }

    /// Mark a process for death at its next syscall and SIGKILL it now.
    pub fn kill(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        start_boottime: u64,
        start_ticks: u64,
        command: u32,
    ) -> Result<bool> {
        // A pidfd pins the process before its start time is checked (in mark_kill):
        // if the pid was reused before the open, the check fails; after it, the
        // signal goes to the process the pidfd names, never to a newcomer on the
        // same pid (kill(2) by number has that window).
        let pidfd = open_pidfd(pid);
        if !self.mark_kill(ebpf, pid, start_boottime, start_ticks, command)? {
            return Ok(false);
        }
        // Without a pidfd (the process already gone, or a kernel without
        // pidfd_open) the in-kernel mark still stops it at its next syscall.
        if let Some(fd) = pidfd {
            // SAFETY: plain syscall on a pidfd we own.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
        }
        Ok(true)
    }

    /// The in-kernel half of a kill: the process dies at its next syscall (and can no
    /// longer fork: a pending SIGKILL aborts clone).
    pub fn mark_kill(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        start_boottime: u64,
        start_ticks: u64,
        command: u32,
    ) -> Result<bool> {
        if !same_process(pid, start_ticks) {
            return Ok(false);
        }
        self.kill.insert(
            pid,
            KillMark {
                start_boottime,
                command,
                _pad: 0,
            },
            0,
        )?;
        self.sync_kill_hook(ebpf)?;
        Ok(true)
    }

    pub fn quarantine(&mut self, pid: u32, start_ticks: u64) -> Result<bool> {
        if !same_process(pid, start_ticks) {
            return Ok(false);
        }
        self.quarantine.insert(pid, 1, 0)?;
        shutdown_sockets(pid);
        Ok(true)
    }

    pub fn release(&mut self, pid: u32) -> Result<bool> {
        Ok(self.quarantine.remove(&pid).is_ok())
    }
}

/// Whether `pid` is still the process that started at `start_ticks`.
pub fn same_process(pid: u32, start_ticks: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    stat[close + 2..]
        .split_whitespace()
        .nth(19)
        .and_then(|s| s.parse::<u64>().ok())
        == Some(start_ticks)
}

/// Stop a quarantined process's existing connections from carrying data: take a
/// duplicate of each of its inet sockets (pidfd_getfd) and shut it down both ways.
fn shutdown_sockets(pid: u32) {
    // SAFETY: raw syscalls with checked results; fds are owned and closed on drop.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) as i32;
        if pidfd < 0 {
            return;
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd);
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return;
        };
        for e in dir.flatten() {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            if !target.to_string_lossy().starts_with("socket:") {
                continue;
            }
            let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) as i32;
            if dup < 0 {
                continue;
            }
            let dup = OwnedFd::from_raw_fd(dup);
            let mut dom: libc::c_int = 0;
            let mut len = size_of::<libc::c_int>() as libc::socklen_t;
            let raw = std::os::fd::AsRawFd::as_raw_fd(&dup);
            libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
                (&mut dom as *mut libc::c_int).cast(),
                &mut len,
            );
            if dom == libc::AF_INET || dom == libc::AF_INET6 {
                libc::shutdown(raw, libc::SHUT_RDWR);
            }
        }
    }
}

/// Wait (bounded) until every (pid, start) is gone; returns the time it took.
pub fn wait_gone(procs: &[(u32, u64)], limit: Duration) -> (Duration, Vec<(u32, u64)>) {
    let t = Instant::now();
    loop {
        let alive: Vec<(u32, u64)> = procs
            .iter()
            .copied()
            .filter(|&(p, s)| same_process(p, s) && !is_zombie(p))
            .collect();
        if alive.is_empty() || t.elapsed() >= limit {
            return (t.elapsed(), alive);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

/// A pidfd for `pid`, or None when the process is gone.
fn open_pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new fd we then own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) } as i32;
    // SAFETY: fd was just returned by pidfd_open and is owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    //! Real kernel: loads the programs, applies quarantine and kills to child processes.
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::process::{Child, ChildStdin, Command, Stdio};

    use super::*;
    use crate::kernel::loader;
    use crate::kernel::pins::PIN_LAYOUT;
    use crate::kernel::test_support::{Attached, PinCleanup, root_or_skip};

    struct Loaded {
        ebpf: Ebpf,
        enforcer: Enforcer,
        base: PathBuf,
        _links: Attached,
        /// Removes the test's pins when the test ends (declared last: dropped last).
        _cleanup: PinCleanup,
    }

    /// What a daemon start does: load the programs with pins under `base`, attach
    /// enforcement.
    fn daemon(base: &Path) -> (Ebpf, Enforcer, Attached) {
        let l = loader::load(&loader::Options {
            observe_all: false,
            floor: false,
            tls_binaries: Vec::new(),
            netns: 0,
            pin_dir: Some(base.to_path_buf()),
        })
        .expect("load programs");
        let mut ebpf = l.ebpf;
        let enforcer =
            Enforcer::attach(&mut ebpf, &base.join(PIN_LAYOUT)).expect("attach enforcement");
        (ebpf, enforcer, Attached(l.links))
    }

    fn load(tag: &str) -> Loaded {
        let base = PathBuf::from(format!(
            "/sys/fs/bpf/custody-test-{tag}-{}",
            std::process::id()
        ));
        let (ebpf, enforcer, links) = daemon(&base);
        Loaded {
            _links: links,
            ebpf,
            enforcer,
            _cleanup: PinCleanup(base.clone()),
            base,
        }
    }

    /// A python child that runs one command per stdin line and answers on stdout.
    struct Agent {
        child: Child,
        stdin: ChildStdin,
        out: BufReader<std::process::ChildStdout>,
    }

    impl Agent {
        fn start() -> Agent {
            let code = r#"
import socket, sys, os, threading, ctypes
keep = None
def serve():
  global keep
  for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    try:
        if cmd == "leader_exit":
            # Serve on from a second thread; the main thread ends with SYS_exit (60),
            # not exit_group: the process lives on without its leader.
            threading.Thread(target=serve).start()
            print("ok", flush=True)
            ctypes.CDLL(None).syscall(60, 0)
        elif cmd == "connect":
            s = socket.create_connection(("127.0.0.1", int(arg)), timeout=2); s.close(); print("ok", flush=True)
        elif cmd == "open":
            keep = socket.create_connection(("127.0.0.1", int(arg)), timeout=2); print("ok", flush=True)
        elif cmd == "send":
            keep.sendall(b"x" * 10); print("ok", flush=True)
        elif cmd == "fork":
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0); print("ok", flush=True)
    except OSError as e:
        print("err", e.errno, flush=True)
serve()
"#;
            let mut child = Command::new("python3")
                .args(["-c", code])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let stdin = child.stdin.take().unwrap();
            let out = BufReader::new(child.stdout.take().unwrap());
            Agent { child, stdin, out }
        }

        fn ask(&mut self, cmd: &str) -> String {
            writeln!(self.stdin, "{cmd}").unwrap();
            self.stdin.flush().unwrap();
            let mut l = String::new();
            self.out.read_line(&mut l).unwrap();
            l.trim().to_string()
        }

        fn start_ticks(&self) -> u64 {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
            let close = stat.rfind(')').unwrap();
            stat[close + 2..]
                .split_whitespace()
                .nth(19)
                .unwrap()
                .parse()
                .unwrap()
        }
    }

    impl Drop for Agent {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn listener() -> (TcpListener, u16) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        (l, p)
    }

    #[test]
    fn quarantine_denies_connect_except_collector_and_release_restores() {
        if !root_or_skip("quarantine_denies_connect_except_collector_and_release_restores") {
            return;
        }
        let mut l = load("q");
        let (_srv, port) = listener();
        let (_col, col_port) = listener();
        l.enforcer
            .allow_collector(&format!("127.0.0.1:{col_port}"))
            .unwrap();
        let mut a = Agent::start();
        assert_eq!(a.ask(&format!("connect {port}")), "ok");
        assert_eq!(a.ask(&format!("open {port}")), "ok");
        let pid = a.child.id();
        assert!(l.enforcer.quarantine(pid, a.start_ticks()).unwrap());
        assert_eq!(
            a.ask(&format!("connect {port}")),
            format!("err {}", libc::EPERM),
            "connect must fail with EPERM"
        );
        assert_eq!(
            a.ask(&format!("connect {col_port}")),
            "ok",
            "the collector stays reachable"
        );
        assert!(
            a.ask("send").starts_with("err"),
            "the existing connection no longer carries data"
        );
        assert_eq!(l.enforcer.quarantined(), vec![pid]);
        assert!(l.enforcer.release(pid).unwrap());
        assert_eq!(
            a.ask(&format!("connect {port}")),
            "ok",
            "release restores connectivity"
        );
    }

    #[test]
    fn quarantine_outlives_the_main_thread_of_the_process() {
        // The attack: a quarantined process ends its main thread (SYS_exit) while a
        // second thread runs on. The exit tracepoint fires for the leader; the
        // quarantine must stay until the last thread of the group is gone.
        if !root_or_skip("quarantine_outlives_the_main_thread_of_the_process") {
            return;
        }
        let mut l = load("qleader");
        let (_srv, port) = listener();
        let mut a = Agent::start();
        let pid = a.child.id();
        assert!(l.enforcer.quarantine(pid, a.start_ticks()).unwrap());
        assert_eq!(
            a.ask(&format!("connect {port}")),
            format!("err {}", libc::EPERM)
        );
        assert_eq!(a.ask("leader_exit"), "ok");
        // The leader is a zombie now; its sibling thread still answers.
        std::thread::sleep(Duration::from_millis(100));
        let state = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(state.contains("State:\tZ"), "leader has exited: {state}");
        assert_eq!(
            a.ask(&format!("connect {port}")),
            format!("err {}", libc::EPERM),
            "the process is still quarantined after its main thread exited"
        );
        assert_eq!(l.enforcer.quarantined(), vec![pid]);
        drop(a);
        // When the whole group is gone the entry goes with it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !l.enforcer.quarantined().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            l.enforcer.quarantined().is_empty(),
            "entry removed at group death"
        );
    }

    #[test]
    fn marked_process_dies_at_its_next_syscall_and_cannot_fork() {
        if !root_or_skip("marked_process_dies_at_its_next_syscall_and_cannot_fork") {
            return;
        }
        let mut l = load("k");
        let mut a = Agent::start();
        assert_eq!(a.ask("fork"), "ok");
        let pid = a.child.id();
        // In-kernel only (no kill(2) backstop): the process is blocked in read().
        assert!(
            l.enforcer
                .mark_kill(&mut l.ebpf, pid, 0, a.start_ticks(), 7)
                .unwrap()
        );
        assert_eq!(l.enforcer.pending_kills(), 1);
        writeln!(a.stdin, "fork").unwrap();
        let _ = a.stdin.flush();
        let st = a.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            st.signal(),
            Some(libc::SIGKILL),
            "killed by the kernel at its next syscall"
        );
        let mut rest = String::new();
        let _ = a.out.read_line(&mut rest);
        assert!(
            rest.is_empty(),
            "it must not have completed the fork: {rest:?}"
        );
        // The exit removed the mark; the next tick detaches the sys_enter hook.
        assert_eq!(l.enforcer.pending_kills(), 0);
        l.enforcer.sync_kill_hook(&mut l.ebpf).unwrap();
        assert!(!l.base.join(PIN_LAYOUT).join("links/custody_kill").exists());
        // A stale pid (wrong start time) is refused.
        assert!(
            !l.enforcer
                .mark_kill(&mut l.ebpf, std::process::id(), 0, 1, 7)
                .unwrap()
        );
    }

    #[test]
    fn quarantine_survives_the_daemon_and_is_found_on_restart() {
        if !root_or_skip("quarantine_survives_the_daemon_and_is_found_on_restart") {
            return;
        }
        let (_srv, port) = listener();
        let mut a = Agent::start();
        let pid = a.child.id();
        let mut first = load("r");
        let base = first.base.clone();
        assert!(first.enforcer.quarantine(pid, a.start_ticks()).unwrap());
        let Loaded {
            ebpf,
            enforcer,
            _links,
            _cleanup,
            ..
        } = first;
        // The daemon goes away without any clean-up (as with SIGKILL): programs and
        // maps are released by this process, only the pins remain.
        drop(enforcer);
        drop(_links);
        drop(ebpf);
        assert_eq!(
            a.ask(&format!("connect {port}")),
            format!("err {}", libc::EPERM),
            "quarantine holds with no daemon"
        );
        // A new daemon finds the pinned state and reports it.
        let (_ebpf, mut again, _links2) = daemon(&base);
        assert_eq!(again.quarantined(), vec![pid]);
        assert_eq!(
            a.ask(&format!("connect {port}")),
            format!("err {}", libc::EPERM),
            "still enforced after restart"
        );
        assert!(again.release(pid).unwrap());
        assert_eq!(a.ask(&format!("connect {port}")), "ok");
    }
}
