//! What the running kernel offers custodyd, probed at start (and by `custodyd
//! check-kernel`) before anything is loaded: BTF, the filesystems it needs (tracefs,
//! bpffs, cgroup v2, found from mountinfo rather than assumed), the program and map
//! types and helpers its programs use, and the lockdown mode. Each probe says what
//! depends on it, so a missing piece reads as "this part is degraded" rather than a
//! bare load error; the loader's per-attach feature list then says what is active.

use std::path::Path;

use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported};

use super::Feature;
use super::mounts::{ensure_mounts, mount_of};

/// One probe's outcome: `active` is false when the kernel lacks it; `detail` says
/// where it was found, or what goes without it.
fn probe(name: &str, ok: bool, detail: impl Into<String>) -> Feature {
    Feature {
        name: name.into(),
        active: ok,
        detail: detail.into(),
    }
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
    ensure_mounts();
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
