//! The filesystems the kernel programs need, found from mountinfo rather than
//! assumed (hybrid hosts mount cgroup v2 at .../unified), and mounted where a fresh
//! mount namespace lacks them.

use std::path::PathBuf;

use anyhow::{Result, bail};

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

/// Mount tracefs and bpffs where they are missing (a fresh mount namespace, e.g.
/// under `ip netns exec`, has a new /sys without them). Failures are left to the
/// steps that need the mounts, which say what is missing.
pub fn ensure_mounts() {
    for (fstype, target, probe) in [
        (
            "tracefs",
            "/sys/kernel/tracing",
            "/sys/kernel/tracing/events",
        ),
        ("bpf", "/sys/fs/bpf", ""),
    ] {
        let mounted = if probe.is_empty() {
            std::fs::read_to_string("/proc/self/mounts")
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.split_whitespace().nth(1) == Some(target)
                        && l.split_whitespace().nth(2) == Some(fstype)
                })
        } else {
            std::path::Path::new(probe).exists()
        };
        if mounted {
            continue;
        }
        let (Ok(src), Ok(dst), Ok(ty)) = (
            std::ffi::CString::new(fstype),
            std::ffi::CString::new(target),
            std::ffi::CString::new(fstype),
        ) else {
            continue;
        };
        // SAFETY: valid NUL-terminated strings; a failed mount only returns an error.
        let rc =
            unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
        if rc == 0 {
            tracing::info!("mounted {fstype} at {target}");
        }
    }
}

/// The cgroup v2 root, from mountinfo (hybrid hosts mount it at .../unified).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
    match mount_of(&mi, "cgroup2") {
        Some(p) => Ok(p),
        None => bail!("no cgroup v2 hierarchy is mounted: network quarantine needs one"),
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
}
