//! The Debian packages on this machine (issue 8): `cargo xtask package` from the debug
//! binaries, `dpkg -i`, files/modes/owners, `systemd-analyze verify` of the units, the
//! installed collector and sensor through enrollment and an event (the sensor under
//! the unit's capability bounding set), an upgrade that keeps the edited conffile and
//! the keys, a removal refused while a quarantine is in force, a removal after the
//! release that detaches and removes the pins, and a purge that cleans up.
//!
//! The machine is left as it was: a guard purges both packages (forcing the detach)
//! and removes the service user whatever happens. The test refuses to run on a
//! machine where Custody is already installed.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use custody_tests::netns::{WorkDir, poll};
use custody_tests::{bin, bpf_available, python};
use serde_json::Value;

const PKGS: [&str; 2] = ["custodyd", "custody-collector"];
const CONF: &str = "/etc/custody/custodyd.toml";
const DATA: &str = "/var/lib/custody-collector";

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{shown}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn installed(pkg: &str) -> bool {
    // "install ok installed", or "deinstall ok installed" after a refused removal.
    run(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .stdout
        .ends_with(b" ok installed")
}

fn user_exists(name: &str) -> bool {
    run(Command::new("getent").args(["passwd", name]))
        .status
        .success()
}

/// Purges whatever the test installed, even when it fails half way.
struct Cleanup {
    made_user: bool,
    pin_dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in PKGS {
            let _ = Command::new("dpkg")
                .args(["--purge", p])
                .env("CUSTODY_FORCE_REMOVE", "1")
                .stdin(Stdio::null())
                .output();
        }
        if self.made_user && user_exists("custody") {
            let _ = Command::new("userdel").arg("custody").output();
            let _ = Command::new("groupdel").arg("custody").output();
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// A child killed (and reaped) when dropped, its output lines collected.
struct Svc {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Svc {
    fn start(cmd: &mut Command, tag: &'static str) -> Svc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let (tx, lines) = mpsc::channel();
        for r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    eprintln!("[{tag}] {l}");
                    let _ = tx.send(l);
                }
            });
        }
        Svc {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits (bounded) for a line starting with `prefix`; returns it.
    fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log.iter().find(|l| l.starts_with(prefix)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {prefix:?} line within {timeout:?}: {:?}",
                self.log
            );
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(l) => self.log.push(l),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "exited ({:?}) before {prefix:?}: {:?}",
                        self.child.wait(),
                        self.log
                    )
                }
            }
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and a bounded wait; the exit must be clean (`by_signal`: or by the
    /// SIGTERM itself, which systemd also counts as a clean stop).
    fn stop(&mut self, by_signal: bool) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "ignored SIGTERM for 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let st = self.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        let clean = st.success() || (by_signal && st.signal() == Some(libc::SIGTERM));
        assert!(clean, "exited with {st}");
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn mode_owner(p: &str) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

fn uid_of(name: &str) -> u32 {
    let s = ok(Command::new("id").args(["-u", name]));
    s.trim().parse().unwrap()
}

/// The unit's CapabilityBoundingSet as a setpriv --bounding-set argument.
fn bounding_set(unit: &str) -> String {
    let text = std::fs::read_to_string(unit).unwrap();
    let caps = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("unit sets CapabilityBoundingSet");
    let mut arg = "-all".to_string();
    for c in caps.split_whitespace() {
        arg.push_str(",+");
        arg.push_str(&c.trim_start_matches("CAP_").to_ascii_lowercase());
    }
    arg
}

/// The installed custodyd, as the unit runs it: root limited to the unit's
/// capabilities, the packaged config (status file aside, not to meet other daemons').
fn start_sensor(caps: &str, status: &Path) -> Svc {
    let mut s = Svc::start(
        Command::new("setpriv")
            .args(["--bounding-set", caps, "--inh-caps=-all", "--"])
            .args(["/usr/bin/custodyd", "--config", CONF, "--status-file"])
            .arg(status),
        "custodyd",
    );
    s.wait_line("custodyd: ready", Duration::from_secs(60));
    s
}

struct Ctl {
    addr: String,
    token: String,
}

impl Ctl {
    fn raw(&self, args: &[&str]) -> Output {
        run(Command::new("/usr/bin/custodyctl")
            .args(["--collector", &self.addr, "--token", &self.token, "--ca"])
            .arg(format!("{DATA}/ca.pem"))
            .arg("--json")
            .args(args)
            .env_remove("CUSTODY_CONFIG"))
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.raw(args);
        assert!(
            out.status.success(),
            "custodyctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8(out.stdout).unwrap();
        serde_json::from_str(&s).unwrap_or_else(|_| {
            Value::Array(
                s.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect(),
            )
        })
    }

    fn host_state(&self, a: &Value, host: &str) -> String {
        a["hosts"]
            .as_array()
            .and_then(|hs| hs.iter().find(|h| h["host"] == host))
            .map(|h| h["state"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("no delivery for {host}: {a:#}"))
    }

    fn wait_connected(&self, host: &str) {
        poll(Duration::from_secs(30), || {
            let hs = self.json(&["hosts"]);
            hs.as_array()?
                .iter()
                .any(|h| h["host_id"] == host && h["connected"] == true)
                .then_some(())
        })
        .unwrap_or_else(|| panic!("host {host} never connected"));
    }
}

/// Everything in the state dir except the spool: enrollment, certificate, keys.
fn key_files() -> Vec<(String, Vec<u8>, u32)> {
    let mut v: Vec<_> = std::fs::read_dir("/var/lib/custody")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            let p = e.path();
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            (p.display().to_string(), std::fs::read(&p).unwrap(), mode)
        })
        .filter(|(p, _, _)| !p.ends_with("custodyd.lock"))
        .collect();
    v.sort();
    v
}

fn dpkg_i(deb: &Path) -> String {
    ok(Command::new("dpkg").arg("-i").arg(deb))
}

#[test]
fn deb_install_enroll_upgrade_refused_remove_and_purge() {
    if !bpf_available("deb_install_enroll_upgrade_refused_remove_and_purge") {
        return;
    }
    let required = std::env::var("CUSTODY_REQUIRE_BPF").is_ok_and(|v| v == "1");
    for tool in ["dpkg-deb", "systemd-analyze", "setpriv", "adduser"] {
        if run(Command::new("sh").args(["-c", &format!("command -v {tool}")]))
            .status
            .success()
        {
            continue;
        }
        assert!(
            !required,
            "{tool} missing, and CUSTODY_REQUIRE_BPF=1 forbids skipping"
        );
        eprintln!("skipping deb_install_enroll_upgrade_refused_remove_and_purge: {tool} missing");
        return;
    }
    for p in PKGS {
        assert!(
            !installed(p),
            "{p} is already installed on this machine: the test would replace and purge it"
        );
    }
    for d in ["/etc/custody", "/var/lib/custody", DATA] {
        assert!(
            !Path::new(d).exists(),
            "{d} exists: the test would purge it"
        );
    }
    let host = format!("pkgtest-{}", std::process::id());
    let pin_dir = PathBuf::from("/sys/fs/bpf/custody").join(&host);
    let _cleanup = Cleanup {
        made_user: !user_exists("custody"),
        pin_dir: pin_dir.clone(),
    };
    let work = WorkDir::new();
    let w = work.path();
    let t0 = Instant::now();

    // Build: the packaging code path of `cargo xtask package`, on the debug binaries.
    let bin_dir = bin("custodyd").parent().unwrap().to_path_buf();
    let xtask = bin("xtask");
    for (out, version) in [("v1", "0.1.0"), ("v2", "0.1.0+pkgtest2")] {
        ok(Command::new(&xtask)
            .args([
                "package",
                "--profile",
                "dev",
                "--no-build",
                "--version",
                version,
            ])
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--out")
            .arg(w.join(out)));
    }
    let arch = ok(Command::new("dpkg").arg("--print-architecture"));
    let arch = arch.trim();
    let deb = |dir: &str, p: &str, v: &str| w.join(dir).join(format!("{p}_{v}_{arch}.deb"));
    let info = ok(Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb("v1", "custodyd", "0.1.0"))
        .args(["Depends", "Version"]));
    assert!(
        info.contains("libc6 (>= 2.") && info.contains("Version: 0.1.0"),
        "{info}"
    );
    eprintln!("packages built in {:?}", t0.elapsed());

    // Install.
    dpkg_i(&deb("v1", "custody-collector", "0.1.0"));
    let out = dpkg_i(&deb("v1", "custodyd", "0.1.0"));
    assert!(
        out.contains("custodyd enroll"),
        "postinst says what is next: {out}"
    );
    assert!(installed("custodyd") && installed("custody-collector"));
    let custody = uid_of("custody");
    for (p, mode, uid) in [
        ("/usr/bin/custodyd", 0o755, 0),
        ("/usr/bin/custody-collector", 0o755, 0),
        ("/usr/bin/custodyctl", 0o755, 0),
        (CONF, 0o644, 0),
        ("/etc/custody/collector.toml", 0o644, 0),
        ("/lib/systemd/system/custodyd.service", 0o644, 0),
        ("/lib/systemd/system/custody-collector.service", 0o644, 0),
        ("/var/lib/custody", 0o700, 0),
        (DATA, 0o750, custody),
        ("/var/log/custody", 0o750, custody),
    ] {
        let (m, u, _) = mode_owner(p);
        assert_eq!((m, u), (mode, uid), "{p}: mode {m:o} owner {u}");
    }
    for (p, c) in [
        ("custodyd", CONF),
        ("custody-collector", "/etc/custody/collector.toml"),
    ] {
        let cf = ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", p]));
        assert!(cf.contains(c), "{p} conffiles: {cf}");
        ok(Command::new("dpkg").args(["--verify", p]));
    }
    for unit in ["custodyd.service", "custody-collector.service"] {
        let out = run(Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("/lib/systemd/system/{unit}")));
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify {unit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let kc = run(Command::new("/usr/bin/custodyd").arg("check-kernel"));
    let kc_text = String::from_utf8_lossy(&kc.stdout);
    assert!(
        kc_text.contains("btf") && kc_text.contains("cgroup2"),
        "{kc_text}"
    );

    // The installed collector as its unit runs it (the service user, the packaged
    // data dir), on a loopback port of its own.
    let help = ok(Command::new("/usr/bin/custody-collector").args(["serve", "--help"]));
    let mut serve = Command::new("setpriv");
    serve
        .args(["--reuid=custody", "--regid=custody", "--init-groups", "--"])
        .args(["/usr/bin/custody-collector", "--data-dir", DATA, "serve"]);
    if help.contains("--config") {
        let packaged = std::fs::read_to_string("/etc/custody/collector.toml").unwrap();
        let cfg = packaged
            .lines()
            .map(|l| match l {
                l if l.starts_with("listen =") => "listen = \"127.0.0.1:0\"".to_string(),
                l if l.starts_with("retention_age =") => "retention_age = \"0\"".to_string(),
                l => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let p = format!("{DATA}/pkgtest-collector.toml");
        std::fs::write(&p, cfg).unwrap();
        serve.args(["--config", &p]);
    } else {
        eprintln!("custody-collector serve has no --config yet: passing flags");
        serve.args(["--listen", "127.0.0.1:0", "--retention-age", "0"]);
    }
    let mut collector = Svc::start(&mut serve, "collector");
    let addr = collector
        .wait_line("listening on ", Duration::from_secs(30))
        .trim_start_matches("listening on ")
        .trim()
        .to_string();
    let admin = |args: &[&str]| {
        ok(Command::new("runuser")
            .args([
                "-u",
                "custody",
                "--",
                "/usr/bin/custody-collector",
                "--data-dir",
                DATA,
            ])
            .args(args))
        .trim()
        .to_string()
    };
    let enroll_token = admin(&["enroll-token", "--ttl", "10m"]);
    let ctl = Ctl {
        addr: addr.clone(),
        token: admin(&["operator-token", "--role", "responder", "--name", "pkgtest"]),
    };

    // Configure (the conffile, edited as an operator would), enroll, run.
    let agent = format!("pkgtest-agent-{}", std::process::id());
    let conf = std::fs::read_to_string(CONF).unwrap().replace(
        "# host_id = \"agent-host-1\"",
        &format!("host_id = \"{host}\""),
    ) + &format!(
        "\n[[agent]]\nid = \"{agent}\"\nowner = \"pkgtest@example.com\"\n[agent.match]\nenv = \"{agent}\"\n"
    );
    std::fs::write(CONF, &conf).unwrap();
    ok(Command::new("/usr/bin/custodyd").args(["check-config", CONF]));
    ok(Command::new("/usr/bin/custodyd")
        .args([
            "enroll",
            "--collector",
            &addr,
            "--token",
            &enroll_token,
            "--config",
            CONF,
        ])
        .env_remove("CUSTODY_ENROLL_TOKEN"));
    let caps = bounding_set("/lib/systemd/system/custodyd.service");
    let status = w.join("status.json");
    let mut sensor = start_sensor(&caps, &status);
    // Enrollment, certificate, keys (the fleet key is made at the first start).
    let keys = key_files();
    assert!(keys.len() >= 3, "enrollment wrote its files: {keys:?}");
    for (p, _, mode) in &keys {
        if p.ends_with(".key") {
            assert_eq!(*mode, 0o600, "{p}");
        }
    }
    let st: Value = poll(Duration::from_secs(10), || {
        serde_json::from_str(&std::fs::read_to_string(&status).ok()?).ok()
    })
    .expect("status file");
    let inactive: Vec<&Value> = st["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["active"] != true)
        .collect();
    assert!(
        inactive.is_empty(),
        "with the unit's capabilities: {inactive:?}"
    );
    assert!(
        st["kernel"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == "btf" && k["active"] == true),
        "kernel probes in the status: {st}"
    );

    // A declared agent's activity reaches the collector under this host.
    let marker = format!("pkgtest-marker-{}", std::process::id());
    let mut agent_proc = Svc::start(
        Command::new(python())
            .args(["-u", "-c", "import sys,time; open('/etc/hostname').read(); print('up', flush=True); time.sleep(600)"])
            .arg(&marker)
            .env("CUSTODY_AGENT", &agent),
        "agent",
    );
    agent_proc.wait_line("up", Duration::from_secs(10));
    ctl.wait_connected(&host);
    poll(Duration::from_secs(30), || {
        let evs = ctl.json(&[
            "events", "--host", &host, "--kind", "exec", "--limit", "500",
        ]);
        evs.to_string().contains(&marker).then_some(())
    })
    .expect("the agent's exec event reached the collector");

    // Quarantine it; stop the sensor (the quarantine stays pinned).
    let q = ctl.json(&["quarantine", "--agent", &agent, "--reason", "package test"]);
    assert_eq!(ctl.host_state(&q, &host), "ok", "{q:#}");
    let qid = q["id"].as_str().unwrap().to_string();
    sensor.stop(false);
    assert!(pin_dir.join("custody-enforce-v1/QUARANTINE").exists());

    // Upgrade: the edited conffile, the keys and the spool stay.
    let spool_before = Path::new("/var/lib/custody/spool").exists();
    let out = dpkg_i(&deb("v2", "custodyd", "0.1.0+pkgtest2"));
    eprintln!("{out}");
    let v = ok(Command::new("dpkg-query").args(["-W", "-f=${Version}", "custodyd"]));
    assert_eq!(v, "0.1.0+pkgtest2");
    assert_eq!(
        std::fs::read_to_string(CONF).unwrap(),
        conf,
        "conffile kept"
    );
    assert!(!Path::new(&format!("{CONF}.dpkg-dist")).exists());
    assert_eq!(
        key_files(),
        keys,
        "enrollment and keys untouched by the upgrade"
    );
    assert_eq!(Path::new("/var/lib/custody/spool").exists(), spool_before);
    dpkg_i(&deb("v2", "custody-collector", "0.1.0+pkgtest2"));

    // Removal is refused while the quarantine is in force.
    let d = run(Command::new("/usr/bin/custodyd").args(["detach", "--config", CONF]));
    assert_eq!(d.status.code(), Some(3), "{d:?}");
    let r = run(Command::new("dpkg").args(["-r", "custodyd"]));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "removal must be refused");
    assert!(
        err.contains("refused")
            && err.contains("quarantine")
            && err.contains("CUSTODY_FORCE_REMOVE=1"),
        "{err}"
    );
    assert!(installed("custodyd"), "still installed after the refusal");
    assert!(pin_dir.join("custody-enforce-v1/QUARANTINE").exists());

    // Released (by the restarted sensor), then the daemon dies hard: the pins stay,
    // nothing is in force, and the removal detaches them.
    let mut sensor = start_sensor(&caps, &status);
    ctl.wait_connected(&host);
    let d = run(Command::new("/usr/bin/custodyd").args(["detach", "--config", CONF]));
    assert_eq!(d.status.code(), Some(2), "refused while running: {d:?}");
    let r = ctl.json(&["release", "--action", &qid, "--reason", "package test done"]);
    assert_eq!(ctl.host_state(&r, &host), "ok", "{r:#}");
    sensor.kill9();
    assert!(pin_dir.exists(), "a SIGKILLed daemon leaves its pins");
    let out = ok(Command::new("dpkg").args(["-r", "custodyd"]));
    eprintln!("{out}");
    assert!(!installed("custodyd"));
    assert!(!pin_dir.exists(), "removal detached the pins");
    assert!(!Path::new("/usr/bin/custodyd").exists());
    assert!(Path::new(CONF).exists(), "remove keeps the conffile");
    assert_eq!(key_files(), keys, "remove keeps the state");

    // Purge cleans up.
    // (custody-collector has no SIGTERM handler: it dies of the signal.)
    collector.stop(true);
    ok(Command::new("dpkg").args(["--purge", "custodyd", "custody-collector"]));
    for p in ["/var/lib/custody", "/etc/custody", DATA, "/var/log/custody"] {
        assert!(!Path::new(p).exists(), "{p} left after purge");
    }
    drop(agent_proc);
    eprintln!("package test done in {:?}", t0.elapsed());
}
