//! Small helpers every task uses: where the workspace and its target directory are,
//! running commands with a clear error.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace root, where
/// every task runs cargo) or `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_relative() { root().join(p) } else { p })
        .unwrap_or_else(|| root().join("target"))
}

/// `cargo`, run in the workspace root with the environment a shell would give it.
///
/// `cargo xtask` is `cargo run`, which sets `CARGO_PKG_NAME=xtask`,
/// `CARGO_MANIFEST_DIR` and the like for the running task. A cargo started from here
/// would inherit them, and build scripts that declare `rerun-if-env-changed` on them
/// (ring's does, on `CARGO_PKG_*` and `CARGO_MANIFEST_DIR`) would rerun, rebuilding
/// ring, rustls, tonic and everything above them whenever one goes from `cargo xtask
/// …` to a plain `cargo test -p …` and back.
pub fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root());
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || matches!(
                name,
                "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_RUSTC_CURRENT_DIR"
            )
        {
            c.env_remove(name);
        }
    }
    c
}

/// Run a command, failing with the command line when it does not succeed.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Run a command and return its stdout, or None when it cannot run or fails.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
