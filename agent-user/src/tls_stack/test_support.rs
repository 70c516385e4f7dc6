//! What the TLS-stack tests share: real binaries to analyse (system node and libssl, a Go
//! HTTPS client built from `tests/agents/tls_clients/go/`, Claude Code's and Codex's
//! binaries when given) and the skip rule: a missing tool or binary skips with a note, or fails
//! the test under CUSTODY_REQUIRE_BPF=1 (CI), so a skip never passes silently.

use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn skip(name: &str, why: &str) {
    let required = std::env::var("CUSTODY_REQUIRE_BPF").as_deref() == Ok("1");
    assert!(
        !required,
        "{name} {why}, and CUSTODY_REQUIRE_BPF=1 forbids skipping"
    );
    eprintln!("skipping {name}: {why}");
}

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent-user has a parent")
        .to_path_buf()
}

/// Builds the Go HTTPS client into `dir` three ways: plain (with its symbol table, for
/// `go tool nm`), with `-ldflags=-s -w` (no symbol table, no DWARF), and that build after
/// `strip`. `None` (skipped) when the Go toolchain or `strip` is missing.
pub(crate) struct GoClients {
    pub with_symbols: PathBuf,
    pub no_symbols: PathBuf,
    pub stripped: PathBuf,
    pub pie: PathBuf,
    pub pie_with_symbols: PathBuf,
}

pub(crate) fn go_clients(name: &str, dir: &Path) -> Option<GoClients> {
    let src = repo_root().join("tests/agents/tls_clients/go");
    let build = |out: &Path, ldflags: &str, mode: &str| {
        Command::new("go")
            .args([
                "build",
                "-trimpath",
                mode,
                &format!("-ldflags={ldflags}"),
                "-o",
            ])
            .arg(out)
            .arg(".")
            .current_dir(&src)
            .env("GOFLAGS", "-mod=mod")
            .env("CGO_ENABLED", "0")
            .output()
    };
    let clients = GoClients {
        with_symbols: dir.join("go_client_symbols"),
        no_symbols: dir.join("go_client"),
        stripped: dir.join("go_client_stripped"),
        pie: dir.join("go_client_pie"),
        pie_with_symbols: dir.join("go_client_pie_symbols"),
    };
    for (out, ldflags, mode) in [
        (&clients.with_symbols, "", "-buildmode=exe"),
        (&clients.no_symbols, "-s -w", "-buildmode=exe"),
        (&clients.pie_with_symbols, "", "-buildmode=pie"),
        (&clients.pie, "-s -w", "-buildmode=pie"),
    ] {
        match build(out, ldflags, mode) {
            Err(e) => {
                skip(name, &format!("cannot run `go` ({e}); install golang-go"));
                return None;
            }
            Ok(o) => assert!(
                o.status.success(),
                "go build failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
        }
    }
    std::fs::copy(&clients.no_symbols, &clients.stripped).expect("copy Go client");
    match Command::new("strip").arg(&clients.stripped).status() {
        Ok(s) => assert!(s.success(), "strip failed"),
        Err(e) => {
            skip(name, &format!("cannot run `strip` ({e})"));
            return None;
        }
    }
    Some(clients)
}

/// `go tool nm -size` of a binary: (address, size) of the named function, read by Go's own
/// pclntab reader, as an independent check of ours.
pub(crate) fn go_nm(bin: &Path, func: &str) -> Option<(u64, u64)> {
    let out = Command::new("go")
        .args(["tool", "nm", "-size"])
        .arg(bin)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 4 && f[3] == func)
            .then(|| Some((u64::from_str_radix(f[0], 16).ok()?, f[1].parse().ok()?)))
            .flatten()
    })
}

/// A real agent binary: the one an environment variable names, else the one
/// `cargo xtask setup` installs from the pinned npm lock (`tests/agents/clis`), else
/// `None` (skipped): CUSTODY_CLAUDE_BIN for `@anthropic-ai/claude-code-linux-x64@2.1.197`'s
/// `claude` (~245 MB), CUSTODY_CODEX_BIN for `@openai/codex@0.169.0-linux-x64`'s
/// `vendor/x86_64-unknown-linux-musl/bin/codex`.
pub(crate) fn agent_binary(name: &str, var: &str) -> Option<PathBuf> {
    let installed = match var {
        "CUSTODY_CLAUDE_BIN" => "@anthropic-ai/claude-code-linux-x64/claude",
        "CUSTODY_CODEX_BIN" => "@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex",
        _ => "",
    };
    let installed = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/agents/clis/node_modules")
        .join(installed);
    match std::env::var_os(var).map(PathBuf::from) {
        Some(p) if p.is_file() => Some(p),
        Some(p) => {
            skip(name, &format!("{var}={} is not a file", p.display()));
            None
        }
        None if installed.is_file() => Some(installed),
        None => {
            skip(
                name,
                &format!(
                    "{var} is not set and {} is not installed (cargo xtask setup)",
                    installed.display()
                ),
            );
            None
        }
    }
}

/// Zeroes the section header table fields of an ELF64 header (e_shoff, e_shnum,
/// e_shstrndx), as packers and some strippers leave binaries: only segments remain.
pub(crate) fn drop_section_headers(bytes: &mut [u8]) {
    bytes[0x28..0x30].fill(0);
    bytes[0x3c..0x40].fill(0);
}
