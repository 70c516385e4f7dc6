//! Builds the kernel programs (agent-ebpf's binary) for bpfel-unknown-none with the
//! nightly toolchain, via aya-build. `AYA_BUILD_SKIP=1` skips that and leaves an empty
//! object, for builds that only need the user-space code (the daemon then refuses to
//! start with a clear message).
//!
//! Quiet unless it fails: aya-build relays every line of its nested eBPF `cargo build`
//! (hundreds of `Compiling …` on a first build) as `cargo:warning`, which cargo shows
//! to whoever builds the workspace. This script therefore runs aya-build in a child copy
//! of itself and reads what it prints: cargo directives (`rerun-if-changed` and the
//! like) pass straight on, cargo's progress lines are dropped, compiler diagnostics are
//! kept as warnings, and when the eBPF build fails all of its output goes to stderr,
//! which cargo shows with the failure.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Set in the child copy of this script: it runs aya-build itself.
const CHILD: &str = "CUSTODY_EBPF_BUILD_CHILD";
const WARNING: &str = "cargo:warning=";

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let object = out.join("custody-probes");
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        std::fs::write(&object, [])?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    if std::env::var_os(CHILD).is_some() {
        return build_ebpf();
    }
    relay_quietly()
}

/// The child: aya-build's nested `cargo build` of agent-ebpf, printing as it likes.
fn build_ebpf() -> anyhow::Result<()> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?)
        .parent()
        .expect("workspace root")
        .join("agent-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: root.to_str().expect("utf-8 path"),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// The parent: run the child with cargo's environment (inherited) and filter its stdout.
fn relay_quietly() -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let mut child = Command::new(&me)
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("could not re-run {} for the eBPF build: {e}", me.display())
        })?;
    // stderr (a panic, an error aya-build returns) is read on a thread so neither pipe
    // can fill up while the other is read.
    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut relayed = Vec::new();
    let stdout = std::io::stdout();
    for line in BufReader::new(child.stdout.take().expect("stdout is piped")).lines() {
        let line = line?;
        match line.strip_prefix(WARNING) {
            Some(text) => relayed.push(text.to_string()),
            // rerun-if-changed / rerun-if-env-changed: cargo must see these as before.
            None => writeln!(stdout.lock(), "{line}")?,
        }
    }
    let status = child.wait()?;
    let errors = stderr.join().unwrap_or_default();
    if !status.success() {
        let mut err = std::io::stderr().lock();
        writeln!(
            err,
            "the eBPF build (agent-ebpf via aya-build) failed; its output:"
        )?;
        for line in relayed.iter().chain(&errors) {
            writeln!(err, "{line}")?;
        }
        anyhow::bail!("building the eBPF programs failed ({status}); output above");
    }
    // Success: only what the compiler said about our code is worth a warning.
    let mut out = stdout.lock();
    for line in relayed.iter().filter(|l| !is_progress(l)) {
        writeln!(out, "{WARNING}{line}")?;
    }
    Ok(())
}

/// Cargo's status lines (`   Compiling aya-ebpf v0.2.1`, `    Finished …`, `Updating`,
/// `Blocking` …): a capitalised verb right-aligned in 12 columns, then a space.
fn is_progress(line: &str) -> bool {
    let Some((head, rest)) = line.split_at_checked(12) else {
        return false;
    };
    let verb = head.trim_start();
    let mut chars = verb.chars();
    rest.starts_with(' ')
        && verb.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_lowercase())
}
