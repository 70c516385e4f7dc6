//! Holds at exec: the new image is vetted by its environment before it runs.

use std::os::fd::OwnedFd;
use std::time::Duration;

use agent_ebpf::Held;

use super::process::{boot_ns, pidfd_signal};
use super::{Holds, Judge, Outcome, UNREADABLE_GIVE_UP, Verdict};

impl Holds {
    /// Exec hold: the record's environment when complete, else /proc/PID/environ.
    pub(super) fn vet_env(
        &mut self,
        tgid: u32,
        held: Held,
        env: Option<&[u8]>,
        judge: &mut dyn Judge,
        pidfd: &OwnedFd,
    ) -> Result<Verdict, Outcome> {
        let from_proc;
        let env = match env {
            Some(e) => e,
            None => match std::fs::read(format!("/proc/{tgid}/environ")) {
                Ok(e) => {
                    from_proc = e;
                    self.stats.vetted_from_proc += 1;
                    &from_proc
                }
                Err(e) => {
                    let age = Duration::from_nanos(boot_ns().saturating_sub(held.held_ns));
                    if age < UNREADABLE_GIVE_UP {
                        tracing::debug!(pid = tgid, "held process environment unreadable: {e}");
                        return Err(Outcome::Deferred);
                    }
                    tracing::warn!(
                        pid = tgid,
                        "continuing a held process whose environment stayed unreadable: {e}"
                    );
                    self.forget(tgid, &held);
                    pidfd_signal(pidfd, libc::SIGCONT);
                    self.stats.unvetted += 1;
                    return Err(Outcome::Unvetted);
                }
            },
        };
        Ok(match judge.revoked(tgid, env) {
            None => Verdict::Clean,
            Some(hit) => Verdict::Revoked(hit),
        })
    }
}

#[cfg(test)]
mod tests {
    //! Real kernel: the exec program stops a tracked process while the hold is armed,
    //! and settling from the pinned map (as a restarted daemon does) continues a clean
    //! process and kills a revoked one.
    use std::io::{BufRead, BufReader, Write};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use agent_ebpf::{Tracked, hold};
    use agent_user::credential::FleetKey;

    use super::super::Holds;
    use super::super::test_support::{Attached, PinCleanup, TestJudge, root_or_skip, wait_state};
    use crate::kernel::loader;

    /// A child that waits for one stdin line, then execs `sh -c CMD` with `env`.
    struct Waiting {
        child: Child,
    }

    impl Waiting {
        fn start(env: &[(&str, &str)], cmd: &str) -> Waiting {
            let mut c = Command::new("python3");
            c.args([
                "-c",
                "import os, sys; sys.stdin.readline(); os.execvp('sh', ['sh', '-c', sys.argv[1]])",
                cmd,
            ])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
            for (k, v) in env {
                c.env(k, v);
            }
            Waiting {
                child: c.spawn().unwrap(),
            }
        }

        fn go(&mut self) {
            let stdin = self.child.stdin.as_mut().unwrap();
            writeln!(stdin, "go").unwrap();
            stdin.flush().unwrap();
        }
    }

    impl Drop for Waiting {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn armed_hold_stops_tracked_exec_and_settling_from_the_pin_continues_or_kills() {
        if !root_or_skip(
            "armed_hold_stops_tracked_exec_and_settling_from_the_pin_continues_or_kills",
        ) {
            return;
        }
        let base = PathBuf::from(format!(
            "/sys/fs/bpf/custody-test-hold-{}",
            std::process::id()
        ));
        let _cleanup = PinCleanup(base.clone());
        let l = loader::load(&loader::Options {
            observe_all: false,
            floor: false,
            tls_binaries: Vec::new(),
            netns: 0,
            pin_dir: Some(base.clone()),
        })
        .expect("load programs");
        let mut ebpf = l.ebpf;
        let links = Attached(l.links);
        let mut tracked = l.tracked;
        let mut holds = Holds::attach(&mut ebpf, hold::TRACKED).unwrap();

        let secret = "sk-proj-HoLdTeStAbCdEfGhIjKlMnOpQrStUvWx0123456789";
        let key = FleetKey::from_bytes([7; 32]);
        let fp = key.fingerprint(secret.as_bytes());

        // Disarmed: a tracked exec runs through.
        let mut free = Waiting::start(&[], "echo ran");
        tracked
            .insert(free.child.id(), Tracked::new(1, 0), 0)
            .unwrap();
        free.go();
        let mut line = String::new();
        BufReader::new(free.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ran");
        assert!(holds.entries().is_empty());

        holds.arm(true).unwrap();
        // Untracked: not held in the "tracked" scope.
        let mut untracked = Waiting::start(&[], "echo ran");
        untracked.go();
        let mut line = String::new();
        BufReader::new(untracked.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ran", "an untracked exec is not held");

        // Tracked: stopped at exec, before it can print.
        let mut clean = Waiting::start(&[], "echo ran");
        let mut bad = Waiting::start(&[("OPENAI_API_KEY", secret)], "echo ran");
        for w in [&clean, &bad] {
            tracked.insert(w.child.id(), Tracked::new(1, 0), 0).unwrap();
        }
        clean.go();
        bad.go();
        for w in [&clean, &bad] {
            assert_eq!(
                wait_state(w.child.id(), 'T', Duration::from_secs(20)),
                Some('T'),
                "held at exec"
            );
        }
        let pids: Vec<u32> = {
            let mut p: Vec<u32> = holds.entries().iter().map(|e| e.0).collect();
            p.sort_unstable();
            p
        };
        let mut want = vec![clean.child.id(), bad.child.id()];
        want.sort_unstable();
        assert_eq!(pids, want);

        // The daemon goes away (programs unloaded), a new one starts on the same pins
        // and settles what it finds.
        holds.arm(false).unwrap();
        drop(holds);
        drop(links);
        drop(tracked);
        drop(ebpf);
        let l2 = loader::load(&loader::Options {
            observe_all: false,
            floor: false,
            tls_binaries: Vec::new(),
            netns: 0,
            pin_dir: Some(base.clone()),
        })
        .expect("reload programs");
        let mut ebpf2 = l2.ebpf;
        let _links2 = Attached(l2.links);
        let mut again = Holds::attach(&mut ebpf2, hold::TRACKED).unwrap();
        assert_eq!(again.entries().len(), 2, "holds survive in the pinned map");
        let mut judge = TestJudge {
            key,
            revoked: fp,
            enforced: Vec::new(),
        };
        assert_eq!(again.sweep(Duration::ZERO, &mut judge), 2);
        assert_eq!(judge.enforced, vec![bad.child.id()]);
        assert!(again.entries().is_empty());
        assert_eq!((again.stats.resumed, again.stats.killed), (1, 1));
        let mut line = String::new();
        BufReader::new(clean.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ran", "the clean process was continued");
        let st = bad.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            st.signal(),
            Some(libc::SIGKILL),
            "the revoked one was killed"
        );
        let mut rest = String::new();
        let _ = BufReader::new(bad.child.stdout.take().unwrap()).read_line(&mut rest);
        assert!(rest.is_empty(), "the revoked process never ran: {rest:?}");
    }
}
