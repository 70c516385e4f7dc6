//! The demo's child processes: each in its own process group (so the terminal's
//! Ctrl-C reaches only the demo, which then stops them in order), told to stop if
//! the demo dies, with their output in log files and watched line by line.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Set by SIGINT, SIGTERM and SIGHUP.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Catch Ctrl-C (and SIGTERM, SIGHUP) so the demo can tear down, and become the
/// reaper of anything our children leave behind.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    // SAFETY: plain prctl on ourselves.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

pub fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Sleep up to `d`; false if a stop was requested meanwhile.
pub fn sleep(d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stopping() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100).min(end - Instant::now()));
    }
    !stopping()
}

/// Error used when the user pressed Ctrl-C during start-up.
pub fn interrupted() -> anyhow::Error {
    anyhow::anyhow!("interrupted")
}

/// How a process is asked to stop before it is killed.
#[derive(Clone, Copy)]
pub enum StopWith {
    Term,
    /// The collector shuts down cleanly (sled flushed) on SIGINT only.
    Int,
}

impl StopWith {
    fn signal(self) -> libc::c_int {
        match self {
            StopWith::Term => libc::SIGTERM,
            StopWith::Int => libc::SIGINT,
        }
    }
}

/// A child process (and its process group).
pub struct Proc {
    pub name: String,
    child: Child,
    stop: StopWith,
    log: PathBuf,
    lines: Receiver<String>,
    status: Option<ExitStatus>,
}

const TAIL: usize = 40;

fn append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Which of a child's streams the demo reads line by line; the other goes to the log.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    Stdout,
    Stderr,
}

impl Proc {
    /// Start `cmd` in its own process group. Both streams are appended to `log`; the
    /// watched one is also delivered line by line (see [`Proc::wait_line`]).
    pub fn spawn(
        name: &str,
        cmd: &mut Command,
        stop: StopWith,
        log: &Path,
        watch: Watch,
    ) -> Result<Proc> {
        let other = Stdio::from(append(log)?);
        cmd.stdin(Stdio::null());
        match watch {
            Watch::Stdout => cmd.stdout(Stdio::piped()).stderr(other),
            Watch::Stderr => cmd.stderr(Stdio::piped()).stdout(other),
        };
        let sig = stop.signal();
        // `cargo run` points LD_LIBRARY_PATH at the toolchain; nothing here needs it,
        // and every traced exec would report the failed opens it causes.
        cmd.env_remove("LD_LIBRARY_PATH").env("NO_COLOR", "1");
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // If the demo dies without tearing down, its children stop too.
                libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let stream: Box<dyn Read + Send> = match watch {
            Watch::Stdout => Box::new(child.stdout.take().expect("piped")),
            Watch::Stderr => Box::new(child.stderr.take().expect("piped")),
        };
        let (tx, rx) = mpsc::channel();
        let mut log_w = append(log)?;
        // Drain the pipe for the child's whole life: a full pipe would block it.
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = writeln!(log_w, "{line}");
                let _ = tx.send(line);
            }
        });
        Ok(Proc {
            name: name.to_string(),
            child,
            stop,
            log: log.to_path_buf(),
            lines: rx,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if it has exited (reaped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// The last lines of its output (both streams, from its log file).
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let skip = lines.len().saturating_sub(TAIL);
        lines[skip..]
            .iter()
            .map(|l| format!("    | {l}\n"))
            .collect()
    }

    /// Wait for a line of the watched stream satisfying `pred`; fails if the process
    /// exits first, on timeout, or on Ctrl-C.
    pub fn wait_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if stopping() {
                return Err(interrupted());
            }
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if pred(&l) => return Ok(l),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Stream closed: the process is exiting (give it a moment).
                    let end = Instant::now() + Duration::from_secs(5);
                    while self.exited().is_none() && Instant::now() < end {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    let st = self
                        .exited()
                        .map_or("still running".to_string(), |s| s.to_string());
                    bail!(
                        "{} closed its output ({st}) before {what}; its output:\n{}",
                        self.name,
                        self.tail()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not report {what} within {} s; its output:\n{}",
                    self.name,
                    timeout.as_secs(),
                    self.tail()
                );
            }
        }
    }

    /// Ask the process group to stop, then kill it; always reaps the process.
    pub fn shutdown(&mut self) {
        let pid = self.pid();
        if self.exited().is_none() {
            signal_group(pid, self.stop.signal());
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.exited().is_none() {
                eprintln!("demo: {} did not stop within 10 s; killing it", self.name);
                signal_group(pid, libc::SIGKILL);
                self.status = self.child.wait().ok();
            }
        }
        // Whatever is left in its process group.
        signal_group(pid, libc::SIGKILL);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn signal_group(pgid: u32, sig: libc::c_int) {
    // SAFETY: signalling a process group we created; ESRCH (already gone) is fine.
    unsafe { libc::killpg(pgid as libc::pid_t, sig) };
}

/// Reap whatever was re-parented to us (we are a child subreaper). Call only once
/// every [`Proc`] has been shut down, or it could steal their exit statuses.
pub fn reap_orphans() {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut st = 0;
        // SAFETY: waitpid on any child, non-blocking.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if r < 0 {
            return; // ECHILD: none left
        }
        if r == 0 {
            if Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Run a short command, returning stdout; its stderr is part of the error.
pub fn run_output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run {:?} ({what})", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
