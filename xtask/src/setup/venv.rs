//! The scenario agents' Python virtualenv, `.custody/venv`: Debian's python3 with the
//! packages pinned in `tests/agents/story/requirements.txt` (the real openai and mcp
//! SDKs) from PyPI. Re-made only when the requirements change.

use std::fs;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{exec, is_root, output};

/// Debian's interpreter, not a pyenv shim or another python on PATH: the venv must
/// link the system libssl the sensor's uprobes are attached to.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

pub fn ensure() -> Result<()> {
    let root = crate::util::root();
    let reqs_path = root.join("tests/agents/story/requirements.txt");
    let reqs = fs::read_to_string(&reqs_path)
        .with_context(|| format!("reading {}", reqs_path.display()))?;
    let venv = root.join(".custody/venv");
    let stamp = venv.join("custody-requirements.txt");
    let python = venv.join("bin/python");
    if python.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(reqs.as_str()) {
        return Ok(());
    }
    // `python3 -m venv` needs Debian's python3-venv (ensurepip).
    if output(Command::new(SYSTEM_PYTHON).args(["-c", "import ensurepip, venv"])).is_none() {
        if !is_root() {
            bail!("python3-venv is missing; install it as root (apt-get install python3-venv)");
        }
        eprintln!("setup: apt-get install python3-venv");
        exec(Command::new("apt-get").args(["install", "-y", "-q", "python3-venv"]))?;
    }
    eprintln!(
        "setup: Python virtualenv {} from {}",
        venv.display(),
        reqs_path.display()
    );
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    exec(Command::new(SYSTEM_PYTHON).args(["-m", "venv"]).arg(&venv))
        .context("creating the scenario agents' virtualenv")?;
    exec(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(&reqs_path),
    )
    .context("installing the scenario agents' Python packages from PyPI")?;
    fs::write(&stamp, reqs).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}
