//! The "hosts" of a fleet on one kernel: network namespaces on a private bridge, named
//! after the test process (pid and a counter) or, for the demo, with fixed names;
//! leftovers of runs that were killed are removed by the next run.

use std::ffi::OsStr;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);
/// Serialises subnet choice and creation inside this process.
static SETUP: Mutex<()> = Mutex::new(());

/// Runs `ip ARGS`, panicking with its stderr when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs `ip ARGS` ignoring failure (cleanup paths).
pub fn ip_quiet(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid embedded in one of our names: namespaces "cst-<pid>-<n>-<i>", bridges
/// "cb<pid>-<n>", veths "cv<pid>-<n>-<i>".
fn owner_pid(name: &str) -> Option<u32> {
    let (rest, parts) = if let Some(r) = name.strip_prefix("cst-") {
        (r, 3)
    } else if let Some(r) = name.strip_prefix("cb") {
        (r, 2)
    } else if let Some(r) = name.strip_prefix("cv") {
        (r, 3)
    } else {
        return None;
    };
    let nums: Vec<&str> = rest.split('-').collect();
    if nums.len() != parts
        || nums
            .iter()
            .any(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    nums[0].parse().ok()
}

/// Removes namespaces and links left by test processes that no longer exist.
pub fn cleanup_stale() {
    for line in ip_quiet(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with("cst-") && owner_pid(name).is_some_and(|p| !pid_alive(p)) {
            kill_netns_pids(name);
            ip_quiet(&["netns", "del", name]);
        }
    }
    for line in ip_quiet(&["-o", "link", "show"]).lines() {
        // "12: cb123-0: <...>" or "13: cv123-0-0@if12: <...>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or("");
        if (name.starts_with("cb") || name.starts_with("cv"))
            && owner_pid(name).is_some_and(|p| !pid_alive(p))
        {
            ip_quiet(&["link", "del", name]);
        }
    }
}

/// SIGKILLs what is left running in one of our namespaces (processes this test
/// started there: scenario agents and sensors).
fn kill_netns_pids(ns: &str) {
    for p in ip_quiet(&["netns", "pids", ns]).split_whitespace() {
        if let Ok(pid) = p.parse::<i32>() {
            // SAFETY: plain kill(2) on a pid inside our own namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// One "host": a network namespace with an address on the fleet bridge.
#[derive(Debug, Clone)]
pub struct NsHost {
    /// Namespace name (under /run/netns).
    pub ns: String,
    /// Host id its sensor enrolls as.
    pub host_id: String,
    /// Its address on the bridge.
    pub addr: String,
}

impl NsHost {
    /// A command that runs `program` inside this host's network namespace. Only the
    /// network namespace changes (unlike `ip netns exec`, which remounts /sys and so
    /// hides tracefs, bpffs and cgroup2 from the sensor).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        enter_netns(&mut cmd, &self.ns);
        cmd
    }
}

/// Makes `cmd` join network namespace `ns` between fork and exec.
pub fn enter_netns(cmd: &mut Command, ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("open /run/netns/{ns}: {e}"));
    // SAFETY: the closure only calls setns(2), which is async-signal-safe; the file
    // is owned by the closure and stays open until the command is dropped.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes the process started by `cmd` belong to audit login uid `uid` (what login
/// and sshd do for a user's session) before it execs.
pub fn set_login_uid(cmd: &mut Command, uid: u32) {
    let value = uid.to_string().into_bytes();
    // SAFETY: open/write/close are async-signal-safe; the path and buffer are
    // prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(c"/proc/self/loginuid".as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, value.as_ptr().cast(), value.len());
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != value.len() as isize {
                return Err(err);
            }
            Ok(())
        });
    }
}

/// Namespaces on a bridge in the root namespace, in a private /24 that no
/// interface of this machine uses: the bridge is .1, host i is .(i+2).
pub struct Fleet {
    pub hosts: Vec<NsHost>,
    /// Root-namespace address of the bridge (where the collector listens).
    pub bridge_addr: String,
    bridge: Option<String>,
    veths: Vec<String>,
    namespaces: Vec<String>,
}

/// The names one fleet uses: its bridge, and per host (namespace, host-side veth,
/// namespace-side veth before it is renamed eth0).
struct FleetNames {
    bridge: String,
    octet: u32,
    hosts: Vec<(String, String, String)>,
}

impl FleetNames {
    fn fixed(prefix: &str, host_ids: &[&str]) -> FleetNames {
        FleetNames {
            bridge: format!("{prefix}0"),
            octet: free_subnet(0, 0),
            hosts: host_ids
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    (
                        format!("{prefix}-{h}"),
                        format!("{prefix}v{i}"),
                        format!("{prefix}p{i}"),
                    )
                })
                .collect(),
        }
    }

    fn check_free(&self) -> Result<(), String> {
        let netns = ip_quiet(&["netns", "list"]);
        let links = ip_quiet(&["-o", "link", "show"]);
        let link_taken = |name: &str| {
            links.lines().any(|l| {
                l.split(": ")
                    .nth(1)
                    .is_some_and(|n| n.split('@').next() == Some(name))
            })
        };
        for (ns, vh, vp) in &self.hosts {
            if netns
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns))
            {
                return Err(format!(
                    "network namespace {ns} already exists (another demo is running, or one was \
                     killed before it could clean up): if nothing uses it, remove it with \
                     `ip netns del {ns}`"
                ));
            }
            for l in [vh, vp, &self.bridge] {
                if link_taken(l) {
                    return Err(format!(
                        "network interface {l} already exists: if nothing uses it, remove it \
                         with `ip link del {l}`"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Fleet {
    pub fn new(host_ids: &[&str]) -> Fleet {
        let _guard = SETUP.lock().unwrap_or_else(|e| e.into_inner());
        cleanup_stale();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{pid}-{n}");
        let names = FleetNames {
            bridge: format!("cb{tag}"),
            octet: free_subnet(pid, n),
            hosts: (0..host_ids.len())
                .map(|i| {
                    (
                        format!("cst-{tag}-{i}"),
                        format!("cv{tag}-{i}"),
                        format!("cp{tag}-{i}"),
                    )
                })
                .collect(),
        };
        Fleet::build(names, host_ids).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A fleet with fixed names for a long-lived setup (the demo): namespaces
    /// `PREFIX-HOST`, bridge `PREFIX0`. Refuses, saying which, when a name is taken;
    /// removes nothing it did not create.
    pub fn named(prefix: &str, host_ids: &[&str]) -> Result<Fleet, String> {
        let _guard = SETUP.lock().unwrap_or_else(|e| e.into_inner());
        let names = FleetNames::fixed(prefix, host_ids);
        names.check_free()?;
        Fleet::build(names, host_ids)
    }

    /// [`Fleet::named`]'s check alone: fails, saying what to do, if a name it would
    /// use is taken.
    pub fn check_names_free(prefix: &str, host_ids: &[&str]) -> Result<(), String> {
        FleetNames::fixed(prefix, host_ids).check_free()
    }

    fn build(names: FleetNames, host_ids: &[&str]) -> Result<Fleet, String> {
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("running ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let octet = names.octet;
        // Dropped on error: whatever was made so far is removed.
        let mut fleet = Fleet {
            hosts: vec![],
            bridge_addr: format!("10.231.{octet}.1"),
            bridge: None,
            veths: vec![],
            namespaces: vec![],
        };
        let br = names.bridge;
        if br.len() > 15 {
            return Err(format!("interface name {br} too long"));
        }
        run(&["link", "add", &br, "type", "bridge"])?;
        fleet.bridge = Some(br.clone());
        run(&[
            "addr",
            "add",
            &format!("{}/24", fleet.bridge_addr),
            "dev",
            &br,
        ])?;
        run(&["link", "set", &br, "up"])?;
        for (i, ((ns, vh, vp), host_id)) in names.hosts.into_iter().zip(host_ids).enumerate() {
            if vh.len() > 15 || vp.len() > 15 {
                return Err(format!("interface name {vh} or {vp} too long"));
            }
            run(&["netns", "add", &ns])?;
            fleet.namespaces.push(ns.clone());
            run(&["link", "add", &vh, "type", "veth", "peer", "name", &vp])?;
            fleet.veths.push(vh.clone());
            run(&["link", "set", &vh, "master", &br])?;
            run(&["link", "set", &vh, "up"])?;
            run(&["link", "set", &vp, "netns", &ns])?;
            run(&["-n", &ns, "link", "set", &vp, "name", "eth0"])?;
            let addr = format!("10.231.{octet}.{}", i + 2);
            run(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            run(&["-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["-n", &ns, "link", "set", "lo", "up"])?;
            fleet.hosts.push(NsHost {
                ns,
                host_id: host_id.to_string(),
                addr,
            });
        }
        Ok(fleet)
    }

    pub fn host(&self, host_id: &str) -> &NsHost {
        self.hosts
            .iter()
            .find(|h| h.host_id == host_id)
            .unwrap_or_else(|| panic!("no host {host_id}"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            kill_netns_pids(ns);
        }
        for ns in &self.namespaces {
            ip_quiet(&["netns", "del", ns]);
        }
        for v in &self.veths {
            ip_quiet(&["link", "del", v]);
        }
        if let Some(br) = &self.bridge {
            ip_quiet(&["link", "del", br]);
        }
    }
}

/// A third octet for 10.231.X.0/24 that no address or route of this machine uses.
fn free_subnet(pid: u32, n: u32) -> u32 {
    let used = format!(
        "{}\n{}",
        ip_quiet(&["-4", "-o", "addr", "show"]),
        ip_quiet(&["-4", "route", "show"])
    );
    let start = (pid + n * 37) % 200 + 20;
    (0..200)
        .map(|k| (start + k) % 200 + 20)
        .find(|o| !used.contains(&format!("10.231.{o}.")))
        .expect("no free 10.231.X.0/24 subnet")
}
