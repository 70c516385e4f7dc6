//! Child processes that cannot outlive the benchmark: every one is killed on drop, on
//! every path (error, panic unwinding), and by the kernel if xtask itself dies.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How a guarded process is stopped.
#[derive(Clone, Copy)]
pub enum Stop {
    /// SIGTERM, then SIGKILL after a grace period (the daemon detaches its programs
    /// and removes its status file on SIGTERM).
    Term,
    /// SIGKILL to the whole process group (a parent holding forked children).
    KillGroup,
    /// SIGKILL.
    Kill,
}

/// custodyd detaches ~90 probes on exit and each detach waits for an RCU grace period:
/// 3–7 s on a loaded 2-core VM.
const TERM_GRACE: Duration = Duration::from_secs(30);

pub struct Guard {
    child: Option<Child>,
    name: String,
    stop: Stop,
}

impl Guard {
    pub fn spawn(cmd: &mut Command, name: &str, stop: Stop) -> Result<Guard> {
        let death_signal = match stop {
            Stop::Term => libc::SIGTERM,
            Stop::Kill | Stop::KillGroup => libc::SIGKILL,
        };
        if matches!(stop, Stop::KillGroup) {
            cmd.process_group(0);
        }
        // SAFETY: prctl is async-signal-safe; it makes the kernel signal the child if
        // xtask dies without running its destructors (e.g. SIGKILL).
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, death_signal);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {name} ({cmd:?})"))?;
        Ok(Guard {
            child: Some(child),
            name: name.to_string(),
            stop,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("guard holds its child until dropped")
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child_mut().try_wait()?)
    }

    /// Wait for exit; past `limit` the process is killed and this is an error.
    pub fn wait_timeout(&mut self, limit: Duration) -> Result<ExitStatus> {
        match poll_exit(self.child_mut(), limit)? {
            Some(status) => Ok(status),
            None => {
                self.kill_now();
                bail!("{} did not finish within {limit:?}; killed", self.name)
            }
        }
    }

    /// Stop the process the way its `Stop` says and wait for it.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        if matches!(self.stop, Stop::Term) {
            self.signal(libc::SIGTERM);
            if let Some(status) = poll_exit(self.child_mut(), TERM_GRACE)? {
                return Ok(status);
            }
            eprintln!(
                "bench: {} ignored SIGTERM for {TERM_GRACE:?}; killing it",
                self.name
            );
        }
        self.kill_now();
        Ok(self.child_mut().wait()?)
    }

    fn kill_now(&mut self) {
        match self.stop {
            Stop::KillGroup => self.signal_group(libc::SIGKILL),
            Stop::Term | Stop::Kill => self.signal(libc::SIGKILL),
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory preconditions; the pid is our unreaped child, so
        // it cannot have been recycled for another process.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    fn signal_group(&self, sig: i32) {
        // SAFETY: as above; the group was created for this child (process_group(0)).
        unsafe { libc::kill(-(self.pid() as i32), sig) };
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("bench: could not stop {}: {e:#}", self.name);
        }
        if matches!(self.stop, Stop::KillGroup) {
            // The leader is reaped; its children (same group) may still be running.
            self.signal_group(libc::SIGKILL);
        }
    }
}

/// Poll for exit until `limit`; None if still running.
fn poll_exit(child: &mut Child, limit: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
