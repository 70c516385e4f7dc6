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

mod catalogue;

pub use catalogue::{CATALOGUE, Entry};

use std::path::{Path, PathBuf};

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
mod tests;
