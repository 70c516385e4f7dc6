//! The real coding-agent CLIs the `agent_clis` end-to-end test runs (Claude Code, Codex,
//! Gemini CLI), installed from npm into `tests/agents/clis/node_modules` with `npm ci`
//! from the versions pinned in `tests/agents/clis/package-lock.json`. Redone only when
//! the lock file changes: a copy of the lock installed last is kept in node_modules.

use std::fs;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::exec;

/// What `npm ci` must have produced: each CLI's command, and Claude Code's native
/// binary (its postinstall links it over the placeholder `claude.exe`).
const EXPECTED: &[&str] = &[
    "node_modules/.bin/claude",
    "node_modules/.bin/codex",
    "node_modules/.bin/gemini",
    "node_modules/@anthropic-ai/claude-code-linux-x64/claude",
];

pub fn ensure() -> Result<()> {
    let dir = crate::util::root().join("tests/agents/clis");
    let lock_path = dir.join("package-lock.json");
    let lock = fs::read(&lock_path).with_context(|| format!("reading {}", lock_path.display()))?;
    let stamp = dir.join("node_modules/.custody-package-lock.json");
    let complete = EXPECTED.iter().all(|p| dir.join(p).exists());
    if complete && fs::read(&stamp).ok().as_deref() == Some(lock.as_slice()) {
        return Ok(());
    }
    eprintln!(
        "setup: npm ci in {} (the agent CLIs the tests run)",
        dir.display()
    );
    exec(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir),
    )
    .context("installing the agent CLIs from npm")?;
    let missing: Vec<&str> = EXPECTED
        .iter()
        .copied()
        .filter(|p| !dir.join(p).exists())
        .collect();
    if !missing.is_empty() {
        bail!(
            "npm ci in {} left out {missing:?} (is this machine linux-x64?)",
            dir.display()
        );
    }
    // Claude Code's postinstall replaces the placeholder bin/claude.exe with the native
    // binary; an npm that skips install scripts leaves the stub, which cannot run.
    let len = |p: &str| fs::metadata(dir.join(p)).map(|m| m.len()).unwrap_or(0);
    if len("node_modules/@anthropic-ai/claude-code/bin/claude.exe")
        != len("node_modules/@anthropic-ai/claude-code-linux-x64/claude")
    {
        bail!(
            "npm ci in {} did not run Claude Code's postinstall (bin/claude.exe is still the \
             placeholder): allow its install script",
            dir.display()
        );
    }
    fs::write(&stamp, lock).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}
