//! Part 3: the daemon's memory with many tracked processes.
//!
//! A declared agent forks COUNT children that block; once the daemon's process table
//! holds them all, its resident set is read from /proc. Every child dies when the
//! holder releases them, when the holder dies, or when the guard kills their group.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use super::daemon::{Daemon, Kind, mapped_kib, status_field};
use super::proc::{Guard, Stop};
use super::{AGENT_ID, Env, budget_mark};

pub const RSS_BUDGET_KIB: u64 = 64 * 1024;
/// Forking 10 k processes takes seconds; on a box busy compiling, more.
const FORK_TIMEOUT: Duration = Duration::from_secs(180);
const SEEN_TIMEOUT: Duration = Duration::from_secs(120);
/// Pids and threads left for everything else on the host while the children live.
const HEADROOM: u64 = 2_000;

pub struct Outcome {
    pub processes_known: u64,
    pub mem: Memory,
}

/// The daemon's memory at one moment, in KiB.
#[derive(Clone, Copy)]
pub struct Memory {
    pub rss: u64,
    pub hwm: u64,
    pub anon: u64,
    pub heap: u64,
    /// Resident BPF maps mmapped into the daemon (the ring buffer, whose data pages
    /// are mapped twice): kernel memory that VmRSS counts once its pages are touched.
    pub bpf: u64,
}

impl Memory {
    fn read(pid: u32) -> Result<Memory> {
        let field = |f| status_field(pid, f);
        Ok(Memory {
            rss: field("VmRSS")?,
            hwm: field("VmHWM")?,
            anon: field("RssAnon")?,
            heap: mapped_kib(pid, "[heap]")?,
            bpf: mapped_kib(pid, "anon_inode:bpf-map")?,
        })
    }

    fn print(&self, when: &str) {
        println!(
            "  {when:<22} VmRSS {:>5.1} MiB = BPF maps {:>4.1} + anon {:>4.1} (heap {:>4.1}) + other file {:>4.1}; VmHWM {:.1}",
            mib(self.rss),
            mib(self.bpf),
            mib(self.anon),
            mib(self.heap),
            mib(self.rss.saturating_sub(self.bpf + self.anon)),
            mib(self.hwm)
        );
    }
}

pub fn run(env: &Env, count: u32) -> Result<Outcome> {
    println!("\n== 3. daemon memory with {count} tracked processes");
    check_limits(count)?;
    let d = Daemon::start(&env.custodyd, &env.config, &env.dir, Kind::Sensor)?;
    let idle = d.status_after(SystemTime::UNIX_EPOCH)?;
    let idle_mem = Memory::read(d.pid())?;
    let mut holder = spawn_holder(env, count)?;
    wait_ready_line(&mut holder)?;
    // The children, not the idle count: processes of other users come and go.
    let seen = wait_seen(&d, u64::from(count))?;
    let mem = Memory::read(d.pid())?;
    release(holder)?;
    let after = d.settled_status(Duration::from_secs(60))?;
    let after_mem = Memory::read(d.pid())?;
    d.stop()?;
    println!(
        "processes known to the daemon: {} before, {} with the children, {} after they exited (tracked_full {})",
        idle.processes_known, seen.processes_known, after.processes_known, seen.tracked_full
    );
    println!(
        "VmRSS {:.1} MiB, VmHWM {:.1} MiB   ≤ 64 MiB {}",
        mib(mem.rss),
        mib(mem.hwm),
        budget_mark(mem.rss <= RSS_BUDGET_KIB)
    );
    idle_mem.print("idle:");
    mem.print(&format!("{count} children:"));
    after_mem.print("after they exited:");
    Ok(Outcome {
        processes_known: seen.processes_known,
        mem,
    })
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn read_u64(path: &str) -> Result<u64> {
    std::fs::read_to_string(path)?
        .trim()
        .parse()
        .with_context(|| format!("malformed {path}"))
}

/// Fail early and clearly rather than with EAGAIN after thousands of forks.
fn check_limits(count: u32) -> Result<()> {
    let need = u64::from(count) + HEADROOM;
    // /proc/loadavg's fourth field is running/total scheduling entities (threads).
    let loadavg = std::fs::read_to_string("/proc/loadavg")?;
    let tasks: u64 = loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split('/').nth(1))
        .and_then(|n| n.parse().ok())
        .context("malformed /proc/loadavg")?;
    for (file, sysctl) in [
        ("/proc/sys/kernel/pid_max", "kernel.pid_max"),
        ("/proc/sys/kernel/threads-max", "kernel.threads-max"),
    ] {
        let limit = read_u64(file)?;
        if limit < tasks + need {
            bail!(
                "{count} processes do not fit: {sysctl} is {limit} and {tasks} tasks exist; \
                 need {} (raise it with `sysctl -w {sysctl}={}`)",
                tasks + need,
                (tasks + need).next_power_of_two()
            );
        }
    }
    Ok(())
}

fn spawn_holder(env: &Env, count: u32) -> Result<Guard> {
    let mut cmd = Command::new(&env.syscall_loop);
    cmd.args(["hold", &count.to_string()])
        .env("CUSTODY_AGENT", AGENT_ID)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    Guard::spawn(&mut cmd, "syscall-loop hold", Stop::KillGroup)
}

/// The holder prints `ready N` once every child is forked.
fn wait_ready_line(holder: &mut Guard) -> Result<()> {
    let stdout = holder.child_mut().stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(FORK_TIMEOUT) {
        Ok(line) if line.starts_with("ready") => Ok(()),
        Ok(line) => bail!("syscall-loop hold failed (printed {line:?}, see its error above)"),
        Err(_) => bail!("syscall-loop hold did not fork its children within {FORK_TIMEOUT:?}"),
    }
}

/// Wait until the daemon's table holds `want` processes and it has caught up.
fn wait_seen(d: &Daemon, want: u64) -> Result<super::daemon::Status> {
    let deadline = Instant::now() + SEEN_TIMEOUT;
    loop {
        let s = d.status_after(SystemTime::now())?;
        if s.processes_known >= want {
            return d.settled_status(SEEN_TIMEOUT);
        }
        if Instant::now() >= deadline {
            bail!(
                "custodyd knows {} processes after {SEEN_TIMEOUT:?}, expected {want}",
                s.processes_known
            );
        }
    }
}

/// Closing the holder's stdin releases and reaps the children; the guard's group kill
/// covers a holder that does not exit in time.
fn release(mut holder: Guard) -> Result<()> {
    drop(holder.child_mut().stdin.take());
    let status = holder.wait_timeout(Duration::from_secs(60))?;
    if !status.success() {
        bail!("syscall-loop hold exited with {status}");
    }
    Ok(())
}
