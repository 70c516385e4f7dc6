//! A `custodyd` started for one measurement: waits for its `ready` line, reads its
//! status file, and stops it with SIGTERM (the guard does so on every path).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use super::proc::{Guard, Stop};

/// Loading the programs and seeding the process table takes well under a second;
/// the margin is for a machine busy compiling.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The daemon writes its status file once a second.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
const TAIL_LINES: usize = 30;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Empty programs at the same attach points; reports nothing.
    Floor,
    /// The real sensor, JSON lines to /dev/null.
    Sensor,
}

pub struct Daemon {
    guard: Guard,
    status_file: PathBuf,
    tail: Arc<Mutex<VecDeque<String>>>,
}

/// The fields of the daemon's status snapshot the benchmark uses.
#[derive(Clone, Copy, Debug)]
pub struct Status {
    pub records: u64,
    pub ringbuf_full: u64,
    pub tracked_full: u64,
    pub processes_known: u64,
}

impl Daemon {
    pub fn start(bin: &Path, config: &Path, dir: &Path, kind: Kind) -> Result<Daemon> {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let status_file = dir.join(format!("status-{n}.json"));
        let mut cmd = Command::new(bin);
        cmd.arg("--standalone")
            .arg("--config")
            .arg(config)
            .arg("--status-file")
            .arg(&status_file);
        match kind {
            Kind::Floor => cmd.arg("--floor"),
            Kind::Sensor => cmd.args(["--output", "/dev/null"]),
        };
        cmd.env("CUSTODY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut guard = Guard::spawn(&mut cmd, "custodyd", Stop::Term)?;
        let stderr = guard.child_mut().stderr.take().expect("stderr is piped");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let tail_w = tail.clone();
        // Drain stderr for the daemon's whole life: a full pipe would block it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("custodyd: ready") {
                    let _ = ready_tx.send(());
                }
                let mut t = tail_w.lock().expect("tail lock");
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        let mut d = Daemon {
            guard,
            status_file,
            tail,
        };
        d.wait_ready(&ready_rx)?;
        Ok(d)
    }

    fn wait_ready(&mut self, rx: &mpsc::Receiver<()>) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.guard.try_wait()? {
                std::thread::sleep(Duration::from_millis(100)); // let the reader catch the last lines
                bail!(
                    "custodyd exited before it was ready ({status}):\n{}",
                    self.tail()
                );
            }
        }
        bail!(
            "custodyd was not ready within {READY_TIMEOUT:?}:\n{}",
            self.tail()
        )
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    fn tail(&self) -> String {
        self.tail
            .lock()
            .expect("tail lock")
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The next status snapshot written after `since`.
    pub fn status_after(&self, since: SystemTime) -> Result<Status> {
        let deadline = Instant::now() + STATUS_TIMEOUT;
        loop {
            let fresh = std::fs::metadata(&self.status_file)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > since);
            if fresh {
                if let Ok(s) = self.read_status() {
                    return Ok(s);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "custodyd wrote no status to {} within {STATUS_TIMEOUT:?}",
                    self.status_file.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A fresh snapshot once the daemon has caught up: two consecutive snapshots with
    /// the same record count (it drains its ring buffer between them).
    pub fn settled_status(&self, limit: Duration) -> Result<Status> {
        let deadline = Instant::now() + limit;
        let mut last = self.status_after(SystemTime::now())?;
        loop {
            let next = self.status_after(SystemTime::now())?;
            if next.records == last.records && next.processes_known == last.processes_known {
                return Ok(next);
            }
            if Instant::now() >= deadline {
                bail!(
                    "custodyd still busy after {limit:?} (records {} → {})",
                    last.records,
                    next.records
                );
            }
            last = next;
        }
    }

    fn read_status(&self) -> Result<Status> {
        let text = std::fs::read_to_string(&self.status_file)?;
        let v: serde_json::Value =
            serde_json::from_str(&text).context("status file is not JSON")?;
        let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let counter = |name: &str| num(&v["kernel_counters"][name]);
        Ok(Status {
            records: num(&v["records"]),
            ringbuf_full: counter("ringbuf_full"),
            tracked_full: counter("tracked_full"),
            processes_known: num(&v["processes_known"]),
        })
    }

    /// Stop with SIGTERM. A daemon that failed is an error (the run would be
    /// suspect); one that had to be killed after the grace period is only slow.
    pub fn stop(mut self) -> Result<()> {
        let status = self.guard.stop()?;
        if status.signal() == Some(libc::SIGKILL) {
            eprintln!("bench: warning: custodyd had to be killed after SIGTERM");
        } else if !status.success() {
            bail!("custodyd exited with {status}:\n{}", self.tail());
        }
        Ok(())
    }
}

/// User + system CPU time of a process, in milliseconds.
pub fn cpu_ms(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the comm (which may contain spaces) start at state (field 3).
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 * 1000.0 / hz)
}

/// A numeric field of /proc/PID/status (`VmRSS`, `VmHWM` in KiB; context switches).
pub fn status_field(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    line.split_whitespace()
        .nth(1)
        .context("malformed status line")?
        .parse()
        .context("malformed status line")
}

/// Resident KiB of the mappings whose name starts with `prefix`, from /proc/PID/smaps.
/// BPF maps mmapped by the daemon (the ring buffer) count in VmRSS though the kernel
/// allocated them, so the memory figure is broken down.
pub fn mapped_kib(pid: u32, prefix: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut inside = false;
    let mut kib = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping header: address range, perms, offset, dev, inode, [name].
            inside = words.nth(4).is_some_and(|name| name.starts_with(prefix));
        } else if inside && first == "Rss:" {
            kib += words
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(kib)
}
