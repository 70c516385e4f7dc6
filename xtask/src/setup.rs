//! Machine preparation: nightly rust-src, bpf-linker linked against the nightly's own
//! LLVM, bpffs and tracefs mounted, and the Debian packages the tests use.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

use crate::util::{exec, is_root, output};

mod clis;
mod venv;

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the tests and the demo rely on (binary → package).
const DEBIAN_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("openssl", "openssl"),
    ("node", "nodejs"),
    ("python3", "python3"),
    // The web UI's browser test: Debian's Chromium driven by playwright-core (which
    // never downloads a browser of its own).
    ("chromium", "chromium"),
    ("npm", "npm"),
    // The package test: unit checks, stripping binaries, the collector's service user.
    ("systemd-analyze", "systemd"),
    ("strip", "binutils"),
    ("adduser", "adduser"),
    // A Go HTTPS client built by the tests (Go's own crypto/tls, stripped).
    ("go", "golang-go"),
    // The start-up gap test: a declared wrapper forks curl (system libssl).
    ("curl", "curl"),
    // The opaque-egress test: a C client linked statically with OpenSSL and stripped
    // (a TLS stack Custody cannot read). A path: checked as a file, not on PATH.
    ("cc", "gcc"),
    ("/usr/lib/x86_64-linux-gnu/libssl.a", "libssl-dev"),
];

/// `cargo xtask setup`, at most once per task however many of its steps ask for it
/// (the demo before its preflight checks, then the build).
pub fn once() -> Result<()> {
    static DONE: OnceLock<()> = OnceLock::new();
    if DONE.get().is_none() {
        run()?;
        let _ = DONE.set(());
    }
    Ok(())
}

pub fn run() -> Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    debian_tools()?;
    ui_test_deps()?;
    venv::ensure()?;
    clis::ensure()?;
    kernel_filesystems()?;
    eprintln!("setup: ready");
    Ok(())
}

fn nightly_sysroot() -> Option<PathBuf> {
    output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .map(|s| PathBuf::from(s.trim()))
}

fn nightly_rust_src() -> Result<()> {
    if nightly_sysroot().is_none() {
        eprintln!("setup: installing the nightly toolchain");
        exec(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context("the eBPF programs need a nightly toolchain")?;
    }
    let sysroot = nightly_sysroot().context("nightly toolchain has no sysroot")?;
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        eprintln!("setup: adding rust-src to nightly");
        exec(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// The nightly ships its own libLLVM; bpf-linker must link against exactly that one.
fn nightly_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("libLLVM") && name.contains(".so") {
            return Ok(path);
        }
    }
    bail!(
        "no libLLVM*.so in {}: is the nightly toolchain complete?",
        lib.display()
    )
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo")
        })
}

fn bpf_linker() -> Result<()> {
    let sysroot = nightly_sysroot().context("nightly toolchain missing")?;
    let libllvm = nightly_libllvm(&sysroot)?;
    let llvm_name = libllvm.file_name().unwrap().to_string_lossy().into_owned();
    // The prefix directory is named after the exact libLLVM so a new nightly gets a new linker.
    let prefix = cargo_home().join("custody-bpf-llvm").join(&llvm_name);
    let stamp = prefix.join("bpf-linker.built");
    let have = output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if have && stamp.exists() {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against {llvm_name}");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    for link in ["libLLVM.so", llvm_name.as_str()] {
        let dst = lib.join(link);
        let _ = fs::remove_file(&dst);
        std::os::unix::fs::symlink(&libllvm, &dst)
            .with_context(|| format!("linking {}", dst.display()))?;
    }
    let major = llvm_name
        .trim_start_matches("libLLVM.so.")
        .trim_start_matches("libLLVM-")
        .split(['.', '-'])
        .next()
        .unwrap_or("22")
        .to_string();
    exec(
        Command::new("cargo")
            .args([
                "+stable",
                "install",
                "bpf-linker",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
    .context("building bpf-linker")?;
    fs::write(&stamp, b"ok")?;
    Ok(())
}

fn debian_tools() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_TOOLS
        .iter()
        .filter(|(bin, _)| {
            if bin.starts_with('/') {
                return !std::path::Path::new(bin).exists();
            }
            output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_none()
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}; install them as root (apt-get install {})",
            missing.join(" ")
        );
    }
    eprintln!("setup: apt-get install {}", missing.join(" "));
    exec(Command::new("apt-get").arg("update").arg("-q"))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing),
    )?;
    Ok(())
}

/// `npm ci` in tests/ui when its node_modules does not hold the locked
/// playwright-core (a no-op once done).
fn ui_test_deps() -> Result<()> {
    let dir = crate::util::root().join("tests/ui");
    let lock: serde_json::Value = serde_json::from_slice(
        &fs::read(dir.join("package-lock.json")).context("reading tests/ui/package-lock.json")?,
    )?;
    let want = lock["packages"]["node_modules/playwright-core"]["version"].as_str();
    let have = fs::read(dir.join("node_modules/playwright-core/package.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned));
    if want.is_some() && have.as_deref() == want {
        return Ok(());
    }
    eprintln!("setup: npm ci in tests/ui (playwright-core, no browser download)");
    exec(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1"),
    )
    .context("installing the browser test's node modules")?;
    Ok(())
}

fn mounted(fstype: &str, target: &str) -> bool {
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let mut f = l.split_whitespace();
            let _dev = f.next();
            f.next() == Some(target) && f.next() == Some(fstype)
        })
}

fn kernel_filesystems() -> Result<()> {
    for (fstype, target) in [("bpf", "/sys/fs/bpf"), ("tracefs", "/sys/kernel/tracing")] {
        if mounted(fstype, target) {
            continue;
        }
        if !is_root() {
            eprintln!(
                "setup: {fstype} is not mounted at {target} and we are not root; eBPF tests will skip"
            );
            continue;
        }
        fs::create_dir_all(target).ok();
        exec(Command::new("mount").args(["-t", fstype, fstype, target]))
            .with_context(|| format!("mounting {fstype} at {target}"))?;
    }
    Ok(())
}
