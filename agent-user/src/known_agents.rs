//! The catalogue of known agent programs: which executables and which scripts inside
//! npm / pip packages are coding agents (Claude Code, Codex, Gemini CLI, goose, aider,
//! …), so that custodyd discovers an undeclared agent at its exec — before, and
//! whatever, it sends on the wire — and names it after the program it is
//! (`gemini-cli`, from its package) rather than after its interpreter (`node`).
//!
//! A program is recognised by the shape of its path, never by its bytes:
//! * inside an npm package: `…/node_modules/<package>/<file>`, where the package is the
//!   agent's (or one of its per-platform packages, `@openai/codex-linux-x64`) and the
//!   file is the agent's command (`bin/claude.exe`, `…/bin/codex`, `bundle/gemini.js`)
//!   or one of the `bin` targets its `package.json` declares — so a helper the package
//!   vendors (`vendor/ripgrep/…/rg`) is not taken for the agent;
//! * inside a pip package: `…/site-packages/<module>/…`, or `python -m <module>`;
//! * in a native installer's version directory (`~/.local/share/claude/versions/<v>`);
//! * by the file name of a standalone executable (`~/.local/bin/goose`), only for
//!   agents that ship one.
//!
//! Interpreters (node, bun, deno, python) are looked through: their script (or
//! module) is matched instead. npm's `.bin/` links and `npm -g` links in `/usr/local/bin`
//! are resolved, but only for paths that may lead to an agent (a command name of the
//! catalogue, a package directory), so ordinary execs cost no file-system work.
//! The version comes from the package's `package.json` or `*.dist-info` directory, or
//! the installer's version directory, read with a bound.

use std::path::{Path, PathBuf};

/// One known agent program.
#[derive(Debug)]
pub struct Entry {
    /// The program's name: a discovered agent's id is `undeclared:<name>`.
    pub name: &'static str,
    /// npm packages that hold it (per-platform packages `<pkg>-<os>-<cpu>[-musl]` count).
    pub npm: &'static [&'static str],
    /// pip packages that hold it: (import module, distribution name).
    pub pip: &'static [(&'static str, &'static str)],
    /// Its command names (the file a package's `bin` or an installer puts on PATH).
    pub commands: &'static [&'static str],
    /// Whether a standalone executable of that command name is the agent itself
    /// (native builds); for interpreted agents only a script of that name counts.
    pub native: bool,
    /// Installer directories of the form `<dir><version>/…` (or `<dir><version>`).
    pub version_dirs: &'static [&'static str],
}

/// The catalogue. Names are the npm/pip package's short name, the one users know.
pub static CATALOGUE: &[Entry] = &[
    // Anthropic's Claude Code: npm `bin/claude.exe` (the native Bun binary, a hard link
    // to the per-platform package's `claude`); older releases ran `cli.js` on node; the
    // native installer keeps `~/.local/share/claude/versions/<v>`.
    Entry {
        name: "claude-code",
        npm: &["@anthropic-ai/claude-code"],
        pip: &[],
        commands: &["claude"],
        native: true,
        version_dirs: &["/.local/share/claude/versions/"],
    },
    // OpenAI's Codex CLI: node shim `bin/codex.js` spawning the static Rust binary of
    // `@openai/codex-linux-x64/vendor/<target>/bin/codex`; brew/standalone: `codex`.
    Entry {
        name: "codex",
        npm: &["@openai/codex"],
        pip: &[],
        commands: &["codex"],
        native: true,
        version_dirs: &[],
    },
    // Google's Gemini CLI: node running `bundle/gemini.js` (it relaunches itself).
    Entry {
        name: "gemini-cli",
        npm: &["@google/gemini-cli"],
        pip: &[],
        commands: &["gemini"],
        native: false,
        version_dirs: &[],
    },
    // Qwen Code, a Gemini CLI fork: node running the package's `cli.js` (`qwen`).
    Entry {
        name: "qwen-code",
        npm: &["@qwen-code/qwen-code"],
        pip: &[],
        commands: &["qwen"],
        native: false,
        version_dirs: &[],
    },
    // Block's goose: a native Rust binary, installed as `~/.local/bin/goose`.
    Entry {
        name: "goose",
        npm: &[],
        pip: &[],
        commands: &["goose"],
        native: true,
        version_dirs: &[],
    },
    // aider: pip `aider-chat`, console script `aider` or `python -m aider`.
    Entry {
        name: "aider",
        npm: &[],
        pip: &[("aider", "aider_chat")],
        commands: &["aider"],
        native: false,
        version_dirs: &[],
    },
    // Cursor's CLI agent: the installer's `~/.local/share/cursor-agent/versions/<v>/`
    // holds its own node and `index.js`; `cursor-agent` links there.
    Entry {
        name: "cursor-agent",
        npm: &[],
        pip: &[],
        commands: &["cursor-agent"],
        native: true,
        version_dirs: &["/.local/share/cursor-agent/versions/"],
    },
    // SST's opencode: npm `opencode-ai` with per-platform `opencode-<os>-<cpu>` binaries,
    // or the installer's `~/.opencode/bin/opencode`.
    Entry {
        name: "opencode",
        npm: &["opencode-ai", "opencode"],
        pip: &[],
        commands: &["opencode"],
        native: true,
        version_dirs: &[],
    },
    // All Hands' OpenHands CLI: pip `openhands-ai`, console script `openhands`.
    Entry {
        name: "openhands",
        npm: &[],
        pip: &[("openhands", "openhands_ai")],
        commands: &["openhands"],
        native: false,
        version_dirs: &[],
    },
    // Charm's crush: a Go binary, also from npm `@charmland/crush`.
    Entry {
        name: "crush",
        npm: &["@charmland/crush"],
        pip: &[],
        commands: &["crush"],
        native: true,
        version_dirs: &[],
    },
    // Sourcegraph's Amp: node running npm `@sourcegraph/amp` (`amp`).
    Entry {
        name: "amp",
        npm: &["@sourcegraph/amp"],
        pip: &[],
        commands: &["amp"],
        native: false,
        version_dirs: &[],
    },
    // GitHub Copilot CLI: node running npm `@github/copilot` (`copilot`).
    Entry {
        name: "copilot-cli",
        npm: &["@github/copilot"],
        pip: &[],
        commands: &["copilot"],
        native: false,
        version_dirs: &[],
    },
];

/// How a program was recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A file of the agent's npm package.
    NpmPackage,
    /// A module of the agent's pip package.
    PipPackage,
    /// The agent's installer directory.
    InstallDir,
    /// The agent's command name alone.
    Command,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::NpmPackage => "npm package",
            Via::PipPackage => "pip package",
            Via::InstallDir => "install directory",
            Via::Command => "command name",
        }
    }
}

/// A process recognised as a known agent program, with the evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownAgent {
    /// The catalogue entry's name (`gemini-cli`).
    pub name: &'static str,
    pub via: Via,
    /// The package (`@google/gemini-cli`, `aider-chat`), when matched in one.
    pub package: Option<String>,
    /// The program's version, when its package or installer says it.
    pub version: Option<String>,
    /// The path that matched (resolved when it was a link), or `-m <module>`.
    pub path: String,
    /// The interpreter that runs it (`node`), when it is a script.
    pub interpreter: Option<String>,
}

impl KnownAgent {
    /// The discovered agent's id.
    pub fn agent_id(&self) -> String {
        format!("undeclared:{}", self.name)
    }

    /// One line saying what matched and why.
    pub fn evidence(&self) -> String {
        let mut s = format!("{}: ", self.name);
        if let Some(i) = &self.interpreter {
            s.push_str(&format!("{i} running "));
        }
        s.push_str(&self.path);
        s.push_str(&format!(" ({}", self.via.as_str()));
        if let Some(p) = &self.package {
            s.push_str(&format!(" {p}"));
        }
        if let Some(v) = &self.version {
            s.push_str(&format!(", version {v}"));
        }
        s.push(')');
        s
    }
}

/// Arguments looked at for an interpreter's script (bounded work on long command lines).
const MAX_ARGS: usize = 16;
/// `package.json` files larger than this are not read (agents' are a few KB).
const MAX_PACKAGE_JSON: u64 = 256 * 1024;
/// Entries of a site-packages directory looked at for a `*.dist-info`.
const MAX_DIR_ENTRIES: usize = 4096;

/// The known agent program an exec runs, if any: its executable, or for an
/// interpreter its script or module. `cwd` is asked for only when a relative script
/// path must be resolved.
pub fn identify(
    exe: &str,
    argv: &[String],
    cwd: &dyn Fn() -> Option<PathBuf>,
) -> Option<KnownAgent> {
    if let Some(k) = check_path(exe, Role::Exe, cwd) {
        return Some(k);
    }
    let interp = interpreter(exe)?;
    let interp_name = base(exe).to_string();
    let found = match script_arg(interp, argv)? {
        Script::Path(p) => check_path(p, Role::Script, cwd),
        Script::Module(m) => module_match(m),
    };
    found.map(|k| KnownAgent {
        interpreter: Some(interp_name),
        ..k
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// The executable itself.
    Exe,
    /// A script an interpreter runs.
    Script,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Interp {
    Js,
    Python,
}

enum Script<'a> {
    Path(&'a str),
    Module(&'a str),
}

fn base(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// The interpreter family of an executable, by its file name.
fn interpreter(exe: &str) -> Option<Interp> {
    let b = base(exe);
    match b {
        "node" | "nodejs" | "bun" | "deno" => Some(Interp::Js),
        _ if b.starts_with("python") || b.starts_with("pypy") => {
            // python, python3, python3.13, python3.13t — not python-config & co.
            let rest = b.trim_start_matches("python").trim_start_matches("pypy");
            rest.chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == 't')
                .then_some(Interp::Python)
        }
        _ => None,
    }
}

/// The script (or module) an interpreter's command line runs.
fn script_arg(interp: Interp, argv: &[String]) -> Option<Script<'_>> {
    let mut args = argv.iter().skip(1).take(MAX_ARGS).map(String::as_str);
    while let Some(a) = args.next() {
        match (interp, a) {
            // Code on the command line: no script to name the program by.
            (Interp::Js, "-e" | "--eval" | "-p" | "--print") => return None,
            (Interp::Python, "-c") => return None,
            (Interp::Python, "-m") => return args.next().map(Script::Module),
            (Interp::Python, m) if m.starts_with("-m") && m.len() > 2 => {
                return Some(Script::Module(&m[2..]));
            }
            // Flags whose value is the next argument.
            (Interp::Js, "-r" | "--require" | "--import" | "--loader")
            | (Interp::Js, "--experimental-loader" | "--env-file" | "--title")
            | (Interp::Python, "-X" | "-W") => {
                args.next();
            }
            // `deno run …`, `bun run …`: the subcommand, then the script.
            (Interp::Js, "run") => {}
            (_, f) if f.starts_with('-') => {}
            (_, s) => return Some(Script::Path(s)),
        }
    }
    None
}

/// `python -m <module>`: a pip entry's module (or a submodule of it).
fn module_match(m: &str) -> Option<KnownAgent> {
    let top = m.split('.').next().unwrap_or(m);
    CATALOGUE.iter().find_map(|e| {
        e.pip
            .iter()
            .find(|(module, _)| *module == top)
            .map(|(_, dist)| KnownAgent {
                name: e.name,
                via: Via::PipPackage,
                package: Some(dist.replace('_', "-")),
                version: None,
                path: format!("-m {m}"),
                interpreter: None,
            })
    })
}

/// Match a path, literally and (when it may lead to an agent) resolved.
fn check_path(p: &str, role: Role, cwd: &dyn Fn() -> Option<PathBuf>) -> Option<KnownAgent> {
    if p.is_empty() {
        return None;
    }
    let literal = shape(p, role);
    if let Some(k) = literal.as_ref().filter(|k| k.via != Via::Command) {
        return confirm(k.clone());
    }
    if worth_resolving(p) {
        let abs = if p.starts_with('/') {
            PathBuf::from(p)
        } else {
            cwd()?.join(p)
        };
        if let Ok(real) = std::fs::canonicalize(&abs) {
            let real = real.to_string_lossy();
            if real != p {
                if let Some(k) = shape(&real, role).and_then(confirm) {
                    return Some(k);
                }
            }
        }
    }
    literal.and_then(confirm)
}

/// Whether resolving links of `p` may reveal an agent: only paths named like one of
/// the catalogue's commands or inside a package directory.
fn worth_resolving(p: &str) -> bool {
    let b = base(p);
    let stem = strip_ext(b);
    p.contains("/node_modules/")
        || p.contains("site-packages/")
        || CATALOGUE.iter().any(|e| e.commands.contains(&stem))
}

fn strip_ext(file: &str) -> &str {
    for ext in [".js", ".mjs", ".cjs", ".exe", ".py"] {
        if let Some(s) = file.strip_suffix(ext) {
            return s;
        }
    }
    file
}

/// `@openai/codex-linux-x64` → `@openai/codex`: per-platform packages of a CLI.
fn strip_platform(pkg: &str) -> &str {
    const OS: [&str; 3] = ["-linux-", "-darwin-", "-win32-"];
    for os in OS {
        if let Some(i) = pkg.rfind(os) {
            let tail = &pkg[i + os.len()..];
            let cpu = tail.split('-').next().unwrap_or("");
            let rest = &tail[cpu.len()..];
            if matches!(cpu, "x64" | "arm64" | "ia32" | "arm")
                && matches!(rest, "" | "-musl" | "-gnu" | "-baseline" | "-msvc")
            {
                return &pkg[..i];
            }
        }
    }
    pkg
}

/// A path match before any file is read (pure). npm matches that are not the command
/// carry the path inside the package, checked against `package.json` in [`confirm`].
fn shape(p: &str, role: Role) -> Option<KnownAgent> {
    if let Some(k) = npm_shape(p) {
        return Some(k);
    }
    if role == Role::Script {
        if let Some(k) = pip_shape(p) {
            return Some(k);
        }
    }
    for e in CATALOGUE {
        for d in e.version_dirs {
            if let Some(i) = p.find(d) {
                let v = p[i + d.len()..].split('/').next().unwrap_or("");
                return Some(KnownAgent {
                    name: e.name,
                    via: Via::InstallDir,
                    package: None,
                    version: valid_version(v),
                    path: p.to_string(),
                    interpreter: None,
                });
            }
        }
    }
    let stem = match role {
        Role::Exe => base(p),
        Role::Script => strip_ext(base(p)),
    };
    CATALOGUE
        .iter()
        .find(|e| e.commands.contains(&stem) && (role == Role::Script || e.native))
        .map(|e| KnownAgent {
            name: e.name,
            via: Via::Command,
            package: None,
            version: None,
            path: p.to_string(),
            interpreter: None,
        })
}

fn npm_shape(p: &str) -> Option<KnownAgent> {
    const NM: &str = "/node_modules/";
    // The innermost package: a dependency nested inside an agent's package is not it.
    let i = p.rfind(NM)?;
    let after = &p[i + NM.len()..];
    let mut parts = after.splitn(3, '/');
    let first = parts.next()?;
    let (pkg, rest) = if first.starts_with('@') {
        let second = parts.next()?;
        (&after[..first.len() + 1 + second.len()], parts.next()?)
    } else {
        let rest = &after[first.len()..];
        (first, rest.strip_prefix('/')?)
    };
    let base_pkg = strip_platform(pkg);
    let e = CATALOGUE.iter().find(|e| e.npm.contains(&base_pkg))?;
    if rest.is_empty() {
        return None;
    }
    Some(KnownAgent {
        name: e.name,
        via: Via::NpmPackage,
        package: Some(pkg.to_string()),
        version: None,
        path: p.to_string(),
        interpreter: None,
    })
}

fn pip_shape(p: &str) -> Option<KnownAgent> {
    for marker in ["/site-packages/", "/dist-packages/"] {
        let Some(i) = p.rfind(marker) else { continue };
        let module = p[i + marker.len()..].split('/').next().unwrap_or("");
        let module = module.strip_suffix(".py").unwrap_or(module);
        for e in CATALOGUE {
            if let Some((_, dist)) = e.pip.iter().find(|(m, _)| *m == module) {
                return Some(KnownAgent {
                    name: e.name,
                    via: Via::PipPackage,
                    package: Some(dist.replace('_', "-")),
                    version: None,
                    path: p.to_string(),
                    interpreter: None,
                });
            }
        }
    }
    None
}

/// Read what the files say: an npm package's `package.json` (its version, and for a
/// file that is not the agent's command, whether it is one of the package's `bin`
/// targets); a pip program's `*.dist-info` version.
fn confirm(mut k: KnownAgent) -> Option<KnownAgent> {
    match k.via {
        Via::NpmPackage => {
            let pkg = k.package.clone()?;
            let (dir, rel) = split_package(&k.path, &pkg)?;
            let manifest = read_package_json(&dir.join("package.json"));
            let entry = CATALOGUE.iter().find(|e| e.name == k.name)?;
            let stem = strip_ext(base(rel));
            let is_command = entry.commands.contains(&stem);
            let is_bin = manifest
                .as_ref()
                .is_some_and(|m| bin_targets(m).iter().any(|t| t == rel));
            if !(is_command || is_bin) {
                return None; // a file the package ships, not the agent (e.g. vendored rg)
            }
            if let Some(m) = &manifest {
                k.version = m
                    .get("version")
                    .and_then(|v| v.as_str())
                    .map(|v| strip_platform(v).trim_end_matches('-'))
                    .and_then(valid_version);
            }
            Some(k)
        }
        Via::PipPackage | Via::Command => {
            if let Some(e) = CATALOGUE.iter().find(|e| e.name == k.name) {
                if let Some((_, dist)) = e.pip.first() {
                    k.version = site_packages_of(&k.path).and_then(|sp| dist_version(&sp, dist));
                    k.package.get_or_insert_with(|| dist.replace('_', "-"));
                }
            }
            Some(k)
        }
        Via::InstallDir => Some(k),
    }
}

/// The package directory and the path inside it.
fn split_package<'a>(path: &'a str, pkg: &str) -> Option<(PathBuf, &'a str)> {
    let marker = format!("/node_modules/{pkg}/");
    let i = path.rfind(&marker)?;
    let dir = &path[..i + marker.len() - 1];
    Some((PathBuf::from(dir), &path[i + marker.len()..]))
}

fn read_package_json(path: &Path) -> Option<serde_json::Value> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(MAX_PACKAGE_JSON + 1).read_to_end(&mut buf).ok()?;
    if buf.len() as u64 > MAX_PACKAGE_JSON {
        return None;
    }
    serde_json::from_slice(&buf).ok()
}

/// `bin` of a package.json (a string or a map of command → path), normalised.
fn bin_targets(m: &serde_json::Value) -> Vec<String> {
    let norm = |s: &str| s.trim_start_matches("./").to_string();
    match m.get("bin") {
        Some(serde_json::Value::String(s)) => vec![norm(s)],
        Some(serde_json::Value::Object(o)) => {
            o.values().filter_map(|v| v.as_str()).map(norm).collect()
        }
        _ => Vec::new(),
    }
}

/// A version string fit to report (no path tricks, no control bytes, bounded).
fn valid_version(v: &str) -> Option<String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_'));
    ok.then(|| v.to_string())
}

/// The site-packages directory of a pip program: the one in its path, or for a
/// console script `<prefix>/bin/<cmd>` the prefix's `lib/python3.*/site-packages`.
fn site_packages_of(path: &str) -> Option<PathBuf> {
    for marker in ["/site-packages/", "/dist-packages/"] {
        if let Some(i) = path.rfind(marker) {
            return Some(PathBuf::from(&path[..i + marker.len() - 1]));
        }
    }
    let bin = Path::new(path).parent()?;
    if bin.file_name()? != "bin" {
        return None;
    }
    let lib = bin.parent()?.join("lib");
    let py = std::fs::read_dir(&lib)
        .ok()?
        .take(64)
        .filter_map(Result::ok)
        .find(|d| d.file_name().to_string_lossy().starts_with("python"))?;
    Some(py.path().join("site-packages"))
}

/// `<dist>-<version>.dist-info` in a site-packages directory (names compared the way
/// pip normalises them: case-insensitive, `-` and `_` alike).
fn dist_version(site: &Path, dist: &str) -> Option<String> {
    let want = format!("{}-", dist.to_ascii_lowercase().replace('-', "_"));
    std::fs::read_dir(site)
        .ok()?
        .take(MAX_DIR_ENTRIES)
        .filter_map(Result::ok)
        .find_map(|d| {
            let n = d.file_name().to_string_lossy().to_ascii_lowercase();
            let v = n
                .strip_prefix(&want)?
                .strip_suffix(".dist-info")?
                .to_string();
            valid_version(&v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn no_cwd() -> Option<PathBuf> {
        None
    }

    /// An npm install tree like the CLIs': packages with package.json and `.bin` links.
    fn npm_tree(root: &Path) {
        let nm = root.join("node_modules");
        let write = |rel: &str, body: &str| {
            let p = nm.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        };
        write(
            "@google/gemini-cli/package.json",
            r#"{"name":"@google/gemini-cli","version":"0.61.0","bin":{"gemini":"bundle/gemini.js"}}"#,
        );
        write("@google/gemini-cli/bundle/gemini.js", "// bundle");
        write("@google/gemini-cli/bundle/chunk-2YTYPKEZ.js", "// chunk");
        write(
            "@anthropic-ai/claude-code/package.json",
            r#"{"name":"@anthropic-ai/claude-code","version":"2.1.197","bin":{"claude":"bin/claude.exe"}}"#,
        );
        write("@anthropic-ai/claude-code/bin/claude.exe", "ELF");
        write(
            "@anthropic-ai/claude-code/vendor/ripgrep/x64-linux/rg",
            "ELF",
        );
        write(
            "@openai/codex/package.json",
            r#"{"name":"@openai/codex","version":"0.169.0","bin":{"codex":"bin/codex.js"}}"#,
        );
        write("@openai/codex/bin/codex.js", "#!/usr/bin/env node");
        write(
            "@openai/codex-linux-x64/package.json",
            r#"{"name":"@openai/codex","version":"0.169.0-linux-x64"}"#,
        );
        write(
            "@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex",
            "ELF",
        );
        write(
            "@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex-code-mode-host",
            "ELF",
        );
        write(
            "@qwen-code/qwen-code/package.json",
            r#"{"name":"@qwen-code/qwen-code","version":"0.4.1","bin":{"qwen":"cli.js"}}"#,
        );
        write("@qwen-code/qwen-code/cli.js", "// cli");
        std::fs::create_dir_all(nm.join(".bin")).unwrap();
        for (link, target) in [
            ("gemini", "../@google/gemini-cli/bundle/gemini.js"),
            ("claude", "../@anthropic-ai/claude-code/bin/claude.exe"),
            ("codex", "../@openai/codex/bin/codex.js"),
            ("qwen", "../@qwen-code/qwen-code/cli.js"),
        ] {
            std::os::unix::fs::symlink(target, nm.join(".bin").join(link)).unwrap();
        }
    }

    #[test]
    fn npm_clis_are_named_after_their_package_with_version() {
        let t = tempfile::tempdir().unwrap();
        npm_tree(t.path());
        let nm = t.path().join("node_modules");
        let s = |rel: &str| nm.join(rel).to_string_lossy().into_owned();

        // node running the `.bin` link: resolved to the bundle of the package.
        let k = identify(
            "/usr/bin/node",
            &argv(&["node", &s(".bin/gemini"), "-p", "hi"]),
            &no_cwd,
        )
        .expect("gemini-cli");
        assert_eq!((k.name, k.via), ("gemini-cli", Via::NpmPackage));
        assert_eq!(k.package.as_deref(), Some("@google/gemini-cli"));
        assert_eq!(k.version.as_deref(), Some("0.61.0"));
        assert_eq!(k.interpreter.as_deref(), Some("node"));
        assert_eq!(k.agent_id(), "undeclared:gemini-cli");
        assert!(
            k.evidence().contains("bundle/gemini.js"),
            "{}",
            k.evidence()
        );
        // Its relaunch with a V8 flag first.
        let k = identify(
            "/opt/nvm/versions/node/v22.1.0/bin/node",
            &argv(&[
                "node",
                "--max-old-space-size=8192",
                &s("@google/gemini-cli/bundle/gemini.js"),
            ]),
            &no_cwd,
        )
        .unwrap();
        assert_eq!(k.name, "gemini-cli");

        // Claude Code's native binary, started through the `.bin` link.
        let k = identify(&s(".bin/claude"), &argv(&["claude", "-p", "x"]), &no_cwd).unwrap();
        assert_eq!(
            (k.name, k.version.as_deref()),
            ("claude-code", Some("2.1.197"))
        );
        assert!(k.path.ends_with("@anthropic-ai/claude-code/bin/claude.exe"));
        assert_eq!(k.interpreter, None);

        // Codex: the node shim and the per-platform Rust binary; the version without
        // the platform suffix its package.json carries.
        let k = identify(
            "/usr/bin/node",
            &argv(&["node", &s(".bin/codex"), "exec"]),
            &no_cwd,
        )
        .unwrap();
        assert_eq!((k.name, k.version.as_deref()), ("codex", Some("0.169.0")));
        let native = s("@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex");
        let k = identify(&native, &argv(&["codex", "exec"]), &no_cwd).unwrap();
        assert_eq!(k.package.as_deref(), Some("@openai/codex-linux-x64"));
        assert_eq!(k.version.as_deref(), Some("0.169.0"));

        // A `bin` target that is not named like the command (qwen's cli.js).
        let k = identify("/usr/bin/node", &argv(&["node", &s(".bin/qwen")]), &no_cwd).unwrap();
        assert_eq!((k.name, k.version.as_deref()), ("qwen-code", Some("0.4.1")));

        // A relative script, resolved against the process's working directory.
        let root = t.path().to_path_buf();
        let k = identify(
            "/usr/bin/node",
            &argv(&["node", "node_modules/.bin/gemini"]),
            &|| Some(root.clone()),
        )
        .unwrap();
        assert_eq!(k.name, "gemini-cli");
    }

    #[test]
    fn helpers_a_package_ships_are_not_the_agent() {
        let t = tempfile::tempdir().unwrap();
        npm_tree(t.path());
        let nm = t.path().join("node_modules");
        let s = |rel: &str| nm.join(rel).to_string_lossy().into_owned();
        for exe in [
            s("@anthropic-ai/claude-code/vendor/ripgrep/x64-linux/rg"),
            s("@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex-code-mode-host"),
        ] {
            assert_eq!(identify(&exe, &argv(&["x"]), &no_cwd), None, "{exe}");
        }
        // A chunk of the bundle run directly is not its entry point.
        let chunk = s("@google/gemini-cli/bundle/chunk-2YTYPKEZ.js");
        assert_eq!(
            identify("/usr/bin/node", &argv(&["node", &chunk]), &no_cwd),
            None
        );
        // A dependency nested inside an agent's package is not the agent.
        let nested = "/x/node_modules/@google/gemini-cli/node_modules/undici/index.js";
        assert_eq!(
            identify("/usr/bin/node", &argv(&["node", nested]), &no_cwd),
            None
        );
    }

    #[test]
    fn ordinary_programs_are_not_agents() {
        for (exe, a) in [
            ("/usr/bin/node", vec!["node", "/srv/app/server.js"]),
            (
                "/usr/bin/node",
                vec![
                    "node",
                    "-e",
                    "require('/x/node_modules/@google/gemini-cli/bundle/gemini.js')",
                ],
            ),
            ("/usr/bin/python3", vec!["python3", "-c", "import aider"]),
            ("/usr/bin/python3", vec!["python3", "/t/llm_client.py"]),
            ("/usr/bin/cat", vec!["cat", "notes.txt"]),
            (
                "/usr/bin/env",
                vec!["/usr/bin/env", "node", "/usr/local/bin/gemini"],
            ),
            // gemini-cli is a node program: a native executable named gemini is not it.
            ("/opt/tools/gemini", vec!["gemini"]),
            (
                "/usr/bin/python3-config",
                vec!["python3-config", "/x/bin/aider"],
            ),
            ("", vec![]),
        ] {
            assert_eq!(identify(exe, &argv(&a), &no_cwd), None, "{exe} {a:?}");
        }
    }

    #[test]
    fn native_and_pip_agents() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home/u");
        // Claude Code's native installer: ~/.local/bin/claude → versions/<v>.
        let versions = home.join(".local/share/claude/versions");
        std::fs::create_dir_all(&versions).unwrap();
        std::fs::write(versions.join("2.1.197"), "ELF").unwrap();
        std::fs::create_dir_all(home.join(".local/bin")).unwrap();
        let link = home.join(".local/bin/claude");
        std::os::unix::fs::symlink(versions.join("2.1.197"), &link).unwrap();
        let k = identify(&link.to_string_lossy(), &argv(&["claude"]), &no_cwd).unwrap();
        assert_eq!((k.name, k.via), ("claude-code", Via::InstallDir));
        assert_eq!(k.version.as_deref(), Some("2.1.197"));

        // goose: a standalone binary, by its name.
        let k = identify(
            "/home/u/.local/bin/goose",
            &argv(&["goose", "run"]),
            &no_cwd,
        )
        .unwrap();
        assert_eq!((k.name, k.via), ("goose", Via::Command));

        // aider from pip: a console script in a venv, its version from the dist-info.
        let venv = t.path().join("venv");
        let sp = venv.join("lib/python3.13/site-packages");
        std::fs::create_dir_all(sp.join("aider_chat-0.86.2.dist-info")).unwrap();
        std::fs::create_dir_all(sp.join("aider")).unwrap();
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::fs::write(venv.join("bin/aider"), "from aider.main import main").unwrap();
        let script = venv.join("bin/aider").to_string_lossy().into_owned();
        let py = venv.join("bin/python3").to_string_lossy().into_owned();
        let k = identify(&py, &argv(&["python3", &script, "--yes"]), &no_cwd).unwrap();
        assert_eq!((k.name, k.via), ("aider", Via::Command));
        assert_eq!(k.package.as_deref(), Some("aider-chat"));
        assert_eq!(k.version.as_deref(), Some("0.86.2"));
        // `python -m aider` and a file of the module.
        let k = identify(
            "/usr/bin/python3",
            &argv(&["python3", "-m", "aider", "--yes"]),
            &no_cwd,
        )
        .unwrap();
        assert_eq!((k.name, k.via), ("aider", Via::PipPackage));
        let main = sp.join("aider/main.py").to_string_lossy().into_owned();
        let k = identify(
            "/usr/bin/python3.13",
            &argv(&["python3.13", "-X", "utf8", &main]),
            &no_cwd,
        )
        .unwrap();
        assert_eq!((k.name, k.version.as_deref()), ("aider", Some("0.86.2")));
    }

    #[test]
    fn hostile_paths_and_manifests_are_bounded() {
        let t = tempfile::tempdir().unwrap();
        let pkg = t.path().join("node_modules/@google/gemini-cli");
        std::fs::create_dir_all(pkg.join("bundle")).unwrap();
        std::fs::write(pkg.join("bundle/gemini.js"), "").unwrap();
        // A version that is not one is not reported; a non-JSON manifest is no manifest.
        std::fs::write(pkg.join("package.json"), r#"{"version":"../../etc\u0007"}"#).unwrap();
        let script = pkg.join("bundle/gemini.js").to_string_lossy().into_owned();
        let k = identify("/usr/bin/node", &argv(&["node", &script]), &no_cwd).unwrap();
        assert_eq!((k.name, k.version), ("gemini-cli", None));
        std::fs::write(pkg.join("package.json"), vec![b'{'; 300 * 1024]).unwrap();
        let k = identify("/usr/bin/node", &argv(&["node", &script]), &no_cwd).unwrap();
        assert_eq!(k.version, None);
        for p in [
            "/node_modules/",
            "/node_modules/@",
            "/node_modules/@google/",
            "/node_modules/@google/gemini-cli",
            "/node_modules/@google/gemini-cli/",
            "node_modules/@google/gemini-cli/bundle/gemini.js",
            "/x/site-packages/",
            "/.local/share/claude/versions/",
        ] {
            let _ = identify(p, &argv(&["x"]), &no_cwd);
            let _ = identify("/usr/bin/node", &argv(&["node", p]), &no_cwd);
        }
        assert_eq!(strip_platform("@openai/codex-linux-x64"), "@openai/codex");
        assert_eq!(
            strip_platform("@anthropic-ai/claude-code-linux-arm64-musl"),
            "@anthropic-ai/claude-code"
        );
        assert_eq!(strip_platform("opencode-darwin-arm64"), "opencode");
        assert_eq!(strip_platform("@openai/codex-sdk"), "@openai/codex-sdk");
        assert_eq!(strip_platform("x-linux-"), "x-linux-");
    }
}
