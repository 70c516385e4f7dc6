//! What the running kernel offers custodyd, probed at start (and by `custodyd
//! check-kernel`) before anything is loaded: BTF, the filesystems it needs (tracefs,
//! bpffs, cgroup v2, found from mountinfo rather than assumed), the program and map
//! types and helpers its programs use, and the lockdown mode. Each probe says what
//! depends on it, so a missing piece reads as "this part is degraded" rather than a
//! bare load error; the loader's per-attach feature list then says what is active.

use std::path::{Path, PathBuf};

use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported};

use crate::kernel::loader::Feature;

/// One probe's outcome: `active` is false when the kernel lacks it; `detail` says
/// where it was found, or what goes without it.
fn probe(name: &str, ok: bool, detail: impl Into<String>) -> Feature {
    Feature {
        name: name.into(),
        active: ok,
        detail: detail.into(),
    }
}

/// Mount points by filesystem type, from a `/proc/self/mountinfo` text: the first
/// mount of `fstype` (field after the " - " separator), as a path.
pub fn mount_of(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next() == Some(fstype))
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// The lockdown mode from `/sys/kernel/security/lockdown` ("none [integrity]
/// confidentiality" → "integrity").
pub fn lockdown_mode(text: &str) -> Option<&str> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(&text[start..end])
}

fn yes(r: Result<bool, impl std::fmt::Display>) -> (bool, String) {
    match r {
        Ok(true) => (true, String::new()),
        Ok(false) => (false, "not supported by this kernel".into()),
        Err(e) => (false, format!("probe failed: {e}")),
    }
}

/// Probe the kernel. Never fails: every missing piece is one entry with its reason.
pub fn probe_all() -> Vec<Feature> {
    let mut out = Vec::new();
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    out.push(match std::fs::metadata(btf) {
        Ok(m) => probe("btf", true, format!("{} ({} KiB)", btf.display(), m.len() / 1024)),
        Err(e) => probe(
            "btf",
            false,
            format!(
                "{}: {e}; process tracing needs kernel BTF (CONFIG_DEBUG_INFO_BTF=y), custodyd cannot run without it",
                btf.display()
            ),
        ),
    });
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    out.push(match mount_of(&mi, "tracefs") {
        Some(p) => probe("tracefs", true, p.display().to_string()),
        None => probe(
            "tracefs",
            false,
            "not mounted and could not be mounted: tracepoint layouts cannot be read (mount -t tracefs tracefs /sys/kernel/tracing)",
        ),
    });
    out.push(match mount_of(&mi, "bpf") {
        Some(p) => probe("bpffs", true, p.display().to_string()),
        None => probe(
            "bpffs",
            false,
            "not mounted and could not be mounted: enforcement cannot be pinned (mount -t bpf bpf /sys/fs/bpf)",
        ),
    });
    out.push(match mount_of(&mi, "cgroup2") {
        Some(p) => {
            let hybrid = if p.ends_with("unified") {
                " (hybrid cgroup v1/v2 host)"
            } else {
                ""
            };
            probe("cgroup2", true, format!("{}{hybrid}", p.display()))
        }
        None => probe(
            "cgroup2",
            false,
            "no cgroup v2 hierarchy mounted: network quarantine and endpoint rules are unavailable",
        ),
    });
    for (name, ty, needed_by) in [
        (
            "prog:tracepoint",
            ProgramType::TracePoint,
            "process, file, network, DNS and stdio tracing",
        ),
        (
            "prog:raw_tracepoint",
            ProgramType::RawTracePoint,
            "the kill hook at syscall entry",
        ),
        (
            "prog:kprobe",
            ProgramType::KProbe,
            "TLS plaintext (uprobes on OpenSSL)",
        ),
        (
            "prog:cgroup_sock_addr",
            ProgramType::CgroupSockAddr,
            "network quarantine and endpoint rules",
        ),
    ] {
        let (ok, why) = yes(is_program_supported(ty));
        out.push(probe(
            name,
            ok,
            if ok {
                format!("used for {needed_by}")
            } else {
                format!("{why}: {needed_by} degraded")
            },
        ));
    }
    for (name, ty, needed_by) in [
        (
            "map:ringbuf",
            MapType::RingBuf,
            "every event (ring buffer, kernel 5.8+)",
        ),
        ("map:lru_hash", MapType::LruHash, "TLS call tracking"),
        ("map:lpm_trie", MapType::LpmTrie, "endpoint deny rules"),
    ] {
        let (ok, why) = yes(is_map_supported(ty));
        out.push(probe(
            name,
            ok,
            if ok {
                format!("used for {needed_by}")
            } else {
                format!("{why}: {needed_by} degraded")
            },
        ));
    }
    let (ok, why) = yes(is_helper_supported(
        ProgramType::TracePoint,
        BpfHelper::BPF_FUNC_send_signal,
    ));
    out.push(probe(
        "helper:send_signal",
        ok,
        if ok {
            "kill at the syscall, hold at exec".to_string()
        } else {
            format!("{why}: kills fall back to kill(2) from the daemon, holds are off")
        },
    ));
    let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown");
    out.push(match lockdown.as_deref().ok().and_then(lockdown_mode) {
        Some("confidentiality") => probe(
            "lockdown",
            false,
            "confidentiality: reading kernel memory is refused, process details degraded",
        ),
        Some(m) => probe("lockdown", true, m.to_string()),
        None if lockdown.is_ok() => probe("lockdown", true, "none"),
        None => probe(
            "lockdown",
            true,
            "unknown (no /sys/kernel/security/lockdown: securityfs not mounted or no lockdown LSM)",
        ),
    });
    out
}

/// One line for the log: `btf=yes tracefs=/sys/kernel/tracing … helper:send_signal=no`.
pub fn summary(probes: &[Feature]) -> String {
    probes
        .iter()
        .map(|p| {
            let v = match (p.active, p.name.as_str()) {
                (true, "tracefs" | "bpffs" | "cgroup2" | "lockdown") => {
                    p.detail.split(' ').next().unwrap_or("yes").to_string()
                }
                (true, _) => "yes".into(),
                (false, _) => "NO".into(),
            };
            format!("{}={v}", p.name)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether custodyd can run at all here (the rest only degrades parts of it).
pub fn can_run(probes: &[Feature]) -> bool {
    ["btf", "tracefs", "prog:tracepoint", "map:ringbuf"]
        .iter()
        .all(|n| probes.iter().any(|p| p.name == *n && p.active))
}

/// `custodyd check-kernel`: print the report; exit 0 when everything is there, 1
/// when parts would be degraded, 2 when custodyd cannot run on this kernel.
pub fn check() -> i32 {
    crate::kernel::loader::ensure_mounts();
    let probes = probe_all();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel {}", release.trim());
    for p in &probes {
        let mark = if p.active { "ok      " } else { "MISSING " };
        println!("  [{mark}] {:<22} {}", p.name, p.detail);
    }
    if !can_run(&probes) {
        println!("custodyd cannot run on this kernel (see MISSING above)");
        2
    } else if probes.iter().any(|p| !p.active) {
        println!("custodyd runs here with the parts named above degraded");
        1
    } else {
        println!("everything custodyd uses is available");
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/root rw
25 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
40 25 0:35 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:16 - bpf bpf rw,mode=700
41 25 0:12 / /sys/kernel/tracing rw,nosuid,nodev,noexec,relatime shared:17 - tracefs tracefs rw
";

    #[test]
    fn mounts_are_found_by_type_not_by_path() {
        assert_eq!(
            mount_of(HYBRID, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(mount_of(HYBRID, "bpf"), Some(PathBuf::from("/sys/fs/bpf")));
        assert_eq!(
            mount_of(HYBRID, "tracefs"),
            Some(PathBuf::from("/sys/kernel/tracing"))
        );
        // A v1 "cgroup" mount is not a v2 hierarchy.
        let v1_only: String =
            HYBRID
                .lines()
                .filter(|l| !l.contains("cgroup2"))
                .fold(String::new(), |mut s, l| {
                    s.push_str(l);
                    s.push('\n');
                    s
                });
        assert_eq!(mount_of(&v1_only, "cgroup2"), None);
        let unified = "29 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            mount_of(unified, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn lockdown_and_summary() {
        assert_eq!(
            lockdown_mode("none [integrity] confidentiality\n"),
            Some("integrity")
        );
        assert_eq!(lockdown_mode(""), None);
        let probes = vec![
            probe("btf", true, "/sys/kernel/btf/vmlinux (5000 KiB)"),
            probe("tracefs", true, "/sys/kernel/tracing"),
            probe(
                "cgroup2",
                true,
                "/sys/fs/cgroup/unified (hybrid cgroup v1/v2 host)",
            ),
            probe("prog:tracepoint", true, "used for x"),
            probe("map:ringbuf", false, "not supported"),
        ];
        assert_eq!(
            summary(&probes),
            "btf=yes tracefs=/sys/kernel/tracing cgroup2=/sys/fs/cgroup/unified prog:tracepoint=yes map:ringbuf=NO"
        );
        assert!(!can_run(&probes));
        let mut ok = probes;
        ok[4].active = true;
        assert!(can_run(&ok));
    }
}
