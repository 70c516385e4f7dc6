//! `cargo xtask demo` as a user meets it (issue 7), run from the debug binaries
//! (`--dev`): it refuses clearly without root and when a name or port of its own is
//! taken; brought up with the story, it prints the UI address, the operator token, the
//! chain, the alert and the kill confirmed by every host; Ctrl-C leaves no process,
//! namespace, interface or pin behind; and a second run works.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use custody_tests::{bin, bpf_available};

fn xtask_demo(args: &[&str]) -> Command {
    let mut c = Command::new(bin("xtask"));
    c.arg("demo")
        .arg("--dev")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null());
    c
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything a demo could leave behind, described; empty when clean.
fn leftovers() -> Vec<String> {
    let mut left = vec![];
    for l in ip(&["netns", "list"]).lines() {
        if l.starts_with("cdemo-") {
            left.push(format!("namespace {l}"));
        }
    }
    for l in ip(&["-o", "link", "show"]).lines() {
        if let Some(name) = l.split(": ").nth(1) {
            if name.starts_with("cdemo") {
                left.push(format!("link {name}"));
            }
        }
    }
    for e in std::fs::read_dir("/sys/fs/bpf")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("custody-demo-") {
            left.push(format!("pins {n}"));
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let needles = [
        root.join(".custody/demo").display().to_string(),
        root.join("tests/agents/story").display().to_string(),
    ];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if needles.iter().any(|n| cmd.contains(n.as_str())) {
            left.push(format!(
                "process {}: {cmd}",
                e.file_name().to_string_lossy()
            ));
        }
    }
    left
}

/// A running demo whose stdout (the guide) is read line by line.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = xtask_demo(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group: the test's Ctrl-C is sent by hand.
            .process_group(0)
            .spawn()
            .expect("spawn xtask demo");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Demo { child, lines }
    }

    /// The guide: stdout up to its closing rule.
    fn guide(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut text = String::new();
        let mut started = false;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => {
                    started |= l.contains("Custody demo is running");
                    if started {
                        text.push_str(&l);
                        text.push('\n');
                        if l.starts_with("=====") && !l.contains("Custody demo") {
                            return text;
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the demo exited before its guide: {:?}", self.child.wait())
                }
            }
        }
        panic!("no guide within {timeout:?}; so far: {text}");
    }

    /// Ctrl-C, and a bounded wait for it to finish tearing down.
    fn interrupt(mut self) {
        // SAFETY: SIGINT to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "the demo's exit after Ctrl-C: {st}");
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the demo did not stop within 90 s of Ctrl-C");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: as above; a failed test still tears the demo down.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let _ = self.child.wait();
        }
    }
}

#[test]
fn demo_refuses_clearly_runs_the_story_and_leaves_nothing_behind() {
    if !bpf_available("demo_refuses_clearly_runs_the_story_and_leaves_nothing_behind") {
        return;
    }
    assert_eq!(
        leftovers(),
        Vec::<String>::new(),
        "a demo is already up here"
    );

    // Not root: says so before touching anything.
    let mut c = xtask_demo(&[]);
    // SAFETY: setgid/setuid between fork and exec only.
    unsafe {
        c.pre_exec(|| {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("needs root"), "{err}");

    // A namespace of its names that it did not make: refused with what to do, and
    // left alone.
    ip(&["netns", "add", "cdemo-finance-b"]);
    let out = xtask_demo(&["--no-scenario"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let still = ip(&["netns", "list"]).contains("cdemo-finance-b");
    ip(&["netns", "del", "cdemo-finance-b"]);
    assert!(!out.status.success());
    assert!(
        err.contains("network namespace cdemo-finance-b already exists")
            && err.contains("ip netns del cdemo-finance-b"),
        "{err}"
    );
    assert!(still, "the demo removed a namespace it did not make");

    // Its port taken.
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let out = xtask_demo(&["--no-scenario", "--port", &port])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    drop(l);
    assert!(!out.status.success());
    assert!(err.contains(&format!("port {port} is taken")), "{err}");
    assert_eq!(leftovers(), Vec::<String>::new());

    // The story: the guide names the UI, the token, the chain, the alert and the kill
    // confirmed on every host.
    let started = Instant::now();
    let mut demo = Demo::start(&[]);
    let guide = demo.guide(Duration::from_secs(240));
    eprintln!("demo guide after {:?}:\n{guide}", started.elapsed());
    assert!(guide.contains("web UI          https://"), "{guide}");
    assert!(guide.contains("operator token  cso1."), "{guide}");
    assert!(guide.contains("/chains/finance-a:"), "{guide}");
    assert!(
        guide.contains("finance-reads-outside-root-scope — open_read"),
        "{guide}"
    );
    assert!(
        guide.contains("kill_chain done — finance-a ok, finance-b ok, finance-c ok")
            || guide.contains("kill_chain done")
                && ["finance-a ok", "finance-b ok", "finance-c ok"]
                    .iter()
                    .all(|h| guide.contains(h)),
        "{guide}"
    );
    assert!(
        guide.contains("custodyctl revoke --credential hmac-sha256:"),
        "{guide}"
    );
    assert!(!leftovers().is_empty());
    demo.interrupt();
    assert_eq!(leftovers(), Vec::<String>::new(), "left after Ctrl-C");

    // A second run works (the fleet alone).
    let mut demo = Demo::start(&["--no-scenario"]);
    let guide = demo.guide(Duration::from_secs(180));
    assert!(guide.contains("web UI          https://"), "{guide}");
    demo.interrupt();
    assert_eq!(
        leftovers(),
        Vec::<String>::new(),
        "left after the second run"
    );
}
