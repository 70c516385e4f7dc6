//! The real coding-agent CLIs as test subjects: Claude Code, Codex and Gemini CLI from
//! npm (pinned in `tests/agents/clis/package-lock.json`, installed by `cargo xtask
//! setup`), each run non-interactively against `tests/agents/clis/vendor_standin.py`,
//! a local HTTPS stand-in of its vendor's API that answers the first model request with
//! one shell tool call (`cat notes.txt`) and the follow-up with a final text.
//!
//! This module builds each CLI's world for one run: a temporary HOME (Gemini's
//! `~/.gemini/settings.json`, Codex's `CODEX_HOME`), an environment holding only what
//! the CLI needs (a fake but real-shaped API key generated for the run, the test CA,
//! the flags that keep it quiet and offline), and a working directory with the file the
//! tool call reads and a ~22 KB project context file (`CLAUDE.md`, `AGENTS.md`,
//! `GEMINI.md`) that pushes the user prompt, and the codeword in it, beyond the first
//! 16 KB of the request body. The facts behind each command line are in
//! `shared/AGENT-CLIS.md` of the project's notes; the caller decides what to assert.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::story::random_text;
use crate::{Server, read_jsonl};

/// How long one CLI run may take before it is killed (they take 1–6 s here).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// The file every tool call cats (relative: Claude Code reads only inside its
/// working directory).
pub const NOTES: &str = "notes.txt";
/// Where the user prompt must start, at least, in the CLI's first request body.
pub const DEEP_OFFSET: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cli {
    ClaudeCode,
    Codex,
    GeminiCli,
}

impl Cli {
    pub const ALL: [Cli; 3] = [Cli::ClaudeCode, Cli::Codex, Cli::GeminiCli];

    /// The program's own name (its npm package's), the name a discovered agent
    /// should carry.
    pub fn name(self) -> &'static str {
        match self {
            Cli::ClaudeCode => "claude-code",
            Cli::Codex => "codex",
            Cli::GeminiCli => "gemini-cli",
        }
    }

    /// The model the command line asks for (and the request body names).
    pub fn model(self) -> &'static str {
        match self {
            Cli::ClaudeCode => "claude-sonnet-4-5",
            // With its default model Codex hides its shell inside a JavaScript tool;
            // gpt-5 gets the plain `exec_command` function.
            Cli::Codex => "gpt-5",
            Cli::GeminiCli => "gemini-2.5-flash",
        }
    }

    /// The CLI's shell tool, offered in its requests and called by the stand-in.
    pub fn shell_tool(self) -> &'static str {
        match self {
            Cli::ClaudeCode => "Bash",
            Cli::Codex => "exec_command",
            Cli::GeminiCli => "run_shell_command",
        }
    }

    /// The environment variable holding the API key.
    pub fn key_env(self) -> &'static str {
        match self {
            Cli::ClaudeCode => "ANTHROPIC_API_KEY",
            Cli::Codex => "OPENAI_API_KEY",
            Cli::GeminiCli => "GEMINI_API_KEY",
        }
    }

    /// The request header the key travels in.
    pub fn key_header(self) -> &'static str {
        match self {
            Cli::ClaudeCode => "x-api-key",
            Cli::Codex => "authorization",
            Cli::GeminiCli => "x-goog-api-key",
        }
    }

    /// A fake key of the vendor's real shape, new for every call.
    pub fn fake_key(self) -> String {
        match self {
            Cli::ClaudeCode => format!("sk-ant-api03-{}-{}AA", random_text(86), random_text(6)),
            Cli::Codex => format!("sk-proj-{}T3BlbkFJ{}", random_text(74), random_text(74)),
            Cli::GeminiCli => format!("AIzaSy{}", random_text(33)),
        }
    }

    /// The project context file the CLI reads from its working directory.
    pub fn context_file(self) -> &'static str {
        match self {
            Cli::ClaudeCode => "CLAUDE.md",
            Cli::Codex => "AGENTS.md",
            Cli::GeminiCli => "GEMINI.md",
        }
    }

    /// The TLS stack of the engine Custody cannot read (its `tls_uncovered` report).
    /// Codex's rustls is read (ring's AEAD); the OpenSSL it vendors, stripped and unused
    /// for its API traffic, is not, and is reported as such.
    pub fn uncovered_stack(self) -> Option<&'static str> {
        match self {
            Cli::Codex => Some("openssl"),
            Cli::ClaudeCode | Cli::GeminiCli => None,
        }
    }

    /// The command npm installed (`node_modules/.bin/…`).
    pub fn command_path(self) -> PathBuf {
        let bin = match self {
            Cli::ClaudeCode => "claude",
            Cli::Codex => "codex",
            Cli::GeminiCli => "gemini",
        };
        clis_dir().join("node_modules/.bin").join(bin)
    }

    /// Whether an exec of `exe` with `argv` is the program that holds the key and
    /// talks to the model: Claude Code's native Bun binary, Codex's native Rust
    /// binary (started by its node shim), node running Gemini CLI's bundle (which
    /// relaunches itself, so there are two). npm's `.bin` links are resolved, since the kernel reports the path a program
    /// was started by.
    pub fn is_engine(self, exe: &str, argv: &[String]) -> bool {
        let real = |p: &str| {
            std::fs::canonicalize(p)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| p.to_owned())
        };
        let exe = real(exe);
        match self {
            Cli::ClaudeCode => {
                exe.ends_with("/@anthropic-ai/claude-code/bin/claude.exe")
                    || exe.ends_with("/@anthropic-ai/claude-code-linux-x64/claude")
            }
            Cli::Codex => exe.ends_with("/x86_64-unknown-linux-musl/bin/codex"),
            Cli::GeminiCli => {
                exe.ends_with("/node")
                    && argv
                        .iter()
                        .any(|a| real(a).ends_with("/@google/gemini-cli/bundle/gemini.js"))
            }
        }
    }
}

/// `tests/agents/clis`.
pub fn clis_dir() -> PathBuf {
    crate::agents_dir().join("clis")
}

/// Ok when `cargo xtask setup` installed the CLIs (their commands exist).
pub fn installed() -> Result<(), String> {
    let missing: Vec<String> = Cli::ALL
        .iter()
        .map(|c| c.command_path())
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "agent CLIs not installed ({missing:?}): run `cargo xtask setup` (npm ci in {})",
            clis_dir().display()
        ))
    }
}

/// `.custody/venv/bin/python` with hypercorn (made by `cargo xtask setup` from
/// `tests/agents/story/requirements.txt`).
pub fn standin_python() -> Result<PathBuf, String> {
    let py = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join(".custody/venv/bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import hypercorn, h2"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(py)
    } else {
        Err(format!(
            "{} cannot import hypercorn and h2: run `cargo xtask setup` (it makes the \
             virtualenv from tests/agents/story/requirements.txt)",
            py.display()
        ))
    }
}

/// The running vendor API stand-in and the file it records requests in.
pub struct Standin {
    _server: Server,
    pub port: u16,
    pub record: PathBuf,
    /// The text of every final answer.
    pub final_text: String,
}

impl Standin {
    /// Starts the stand-in with the certificates `crate::write_tls_files` wrote in `dir`.
    pub fn start(dir: &Path, python: &Path) -> Standin {
        let record = dir.join("standin-requests.jsonl");
        let final_text = format!("Custody final answer {}", random_text(12));
        let server = Server::start(
            Command::new(python)
                .arg(clis_dir().join("vendor_standin.py"))
                .arg("--cert")
                .arg(dir.join("server.pem"))
                .arg("--key")
                .arg(dir.join("server.key"))
                .arg("--record")
                .arg(&record)
                .args(["--cat", NOTES, "--final", &final_text])
                .env("PYTHONDONTWRITEBYTECODE", "1"),
        );
        let port = server
            .first_line
            .parse()
            .unwrap_or_else(|_| panic!("stand-in printed {:?}, not a port", server.first_line));
        Standin {
            _server: server,
            port,
            record,
            final_text,
        }
    }

    /// Every request recorded so far.
    pub fn requests(&self) -> Vec<Value> {
        read_jsonl(&self.record)
    }
}

/// One run's world: what the CLI is given, and so what a test can look for.
pub struct Run {
    pub cli: Cli,
    /// Declared agent id (`CUSTODY_AGENT`), or None to leave discovery to the sensor.
    pub declared: Option<String>,
    pub home: PathBuf,
    pub work: PathBuf,
    pub key: String,
    /// A word only in `notes.txt`: the follow-up request carries it when the tool ran.
    pub note_word: String,
    /// A word only in the user prompt, which sits beyond [`DEEP_OFFSET`].
    pub codeword: String,
    pub prompt: String,
}

/// What one run did.
pub struct Outcome {
    pub pid: u32,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// Lays out HOME and the working directory under `dir/<cli>-<label>`.
    pub fn prepare(cli: Cli, dir: &Path, label: &str, declared: Option<String>) -> Run {
        let base = dir.join(format!("{}-{label}", cli.name()));
        let home = base.join("home");
        let work = base.join("work");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(home.join(".codex")).unwrap();
        std::fs::create_dir_all(home.join(".gemini")).unwrap();
        // Gemini CLI: the API key mode must be chosen in its settings (the env var alone
        // selects a gateway auth that non-interactive mode rejects); nothing phones home.
        std::fs::write(
            home.join(".gemini/settings.json"),
            serde_json::json!({
                "security": {"auth": {"selectedType": "gemini-api-key"}},
                "privacy": {"usageStatisticsEnabled": false},
                "telemetry": {"enabled": false},
                "general": {"disableAutoUpdate": true, "disableUpdateNag": true},
            })
            .to_string(),
        )
        .unwrap();
        let note_word = format!("custody-note-{}", random_text(16));
        std::fs::write(
            work.join(NOTES),
            format!("Release checklist. The note word is {note_word}.\n"),
        )
        .unwrap();
        std::fs::write(work.join(cli.context_file()), context_text()).unwrap();
        let codeword = format!("codeword{}", random_text(12));
        let prompt = format!("Show me the contents of {NOTES}. The {codeword} is for the audit.");
        Run {
            cli,
            declared,
            home,
            work,
            key: cli.fake_key(),
            note_word,
            codeword,
            prompt,
        }
    }

    /// The command line, working directory and environment (nothing inherited but
    /// PATH, so no real key or proxy of the machine leaks in).
    pub fn command(&self, standin: &Standin, ca: &Path) -> Command {
        let cli = self.cli;
        let mut c = Command::new(cli.command_path());
        c.current_dir(&self.work)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", &self.home)
            .env("LANG", "C.UTF-8")
            .env("TERM", "dumb")
            .env(cli.key_env(), &self.key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout takes every helper process with it.
            .process_group(0);
        if let Some(agent) = &self.declared {
            c.env("CUSTODY_AGENT", agent);
        }
        let base = format!("https://localhost:{}", standin.port);
        match cli {
            Cli::ClaudeCode => {
                c.env("ANTHROPIC_BASE_URL", &base)
                    .env("NODE_EXTRA_CA_CERTS", ca)
                    .env("DISABLE_TELEMETRY", "1")
                    .env("DISABLE_ERROR_REPORTING", "1")
                    .env("DISABLE_AUTOUPDATER", "1")
                    .env("DISABLE_BUG_COMMAND", "1")
                    .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
                    .args(["-p", &self.prompt, "--model", cli.model()])
                    .args(["--allowedTools", "Bash(cat:*)", "Read"]);
            }
            Cli::Codex => {
                let provider = format!(
                    "model_providers.standin={{name=\"standin\", base_url=\"{base}/v1\", \
                     env_key=\"OPENAI_API_KEY\", wire_api=\"responses\"}}"
                );
                c.env("CODEX_HOME", self.home.join(".codex"))
                    .env("CODEX_CA_CERTIFICATE", ca)
                    .args(["exec", "-m", cli.model(), "--skip-git-repo-check"])
                    .args(["--dangerously-bypass-approvals-and-sandbox", "--ephemeral"])
                    .args(["-c", &provider, "-c", "model_provider=\"standin\""])
                    // Without these it runs `git ls-remote` against a public host.
                    .args(["--disable", "plugins", "--disable", "remote_plugin"])
                    .args(["--disable", "apps", &self.prompt]);
            }
            Cli::GeminiCli => {
                c.env("GOOGLE_GEMINI_BASE_URL", &base)
                    .env("NODE_EXTRA_CA_CERTS", ca)
                    .args(["-p", &self.prompt, "-m", cli.model()])
                    .args(["--yolo", "--skip-trust"]);
            }
        }
        c
    }

    /// Runs the CLI to completion (bounded by [`RUN_TIMEOUT`]; its whole process
    /// group is killed then).
    pub fn execute(&self, standin: &Standin, ca: &Path) -> Outcome {
        let start = Instant::now();
        let mut child = self
            .command(standin, ca)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.cli.name()));
        let pid = child.id();
        let reader = |r: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_string(&mut s);
                }
                s
            })
        };
        let out = reader(child.stdout.take().map(|r| Box::new(r) as _));
        let err = reader(child.stderr.take().map(|r| Box::new(r) as _));
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > RUN_TIMEOUT {
                // SAFETY: signalling the process group this run created.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = start.elapsed();
        // Helpers the CLI left behind in its group (none is expected) go too.
        // SAFETY: as above.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        Outcome {
            pid,
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
            elapsed,
        }
    }

    /// The stand-in's records of this run's requests (they carry its key's digest).
    pub fn requests(&self, all: &[Value]) -> Vec<Value> {
        let digest = sha256_hex(&self.key);
        all.iter()
            .filter(|r| {
                r["headers"].as_array().is_some_and(|hs| {
                    hs.iter().any(|h| {
                        h[0] == self.cli.key_header()
                            && h[1].as_str().is_some_and(|v| v.ends_with(&digest))
                    })
                })
            })
            .cloned()
            .collect()
    }
}

/// A fleet key file (64 hex characters, mode 0600) for custodyd; returns the key, so
/// a test can compute the fingerprints the daemon must report.
pub fn write_fleet_key(path: &Path) -> [u8; 32] {
    let mut key = [0u8; 32];
    for (i, b) in random_text(32).bytes().enumerate() {
        key[i] = b;
    }
    std::fs::write(path, format!("{}\n", hex::encode(key))).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    key
}

/// Project context of ~22 KB: long enough that every CLI's user prompt, which follows
/// it in the request, starts well beyond [`DEEP_OFFSET`] (Gemini's by ~6 KB).
fn context_text() -> String {
    let mut t = String::from("# Project conventions\n\n");
    for i in 0..220 {
        t.push_str(&format!(
            "- Convention {i}: keep functions small, name them after the domain, and say why in comments.\n"
        ));
    }
    t
}

/// SHA-256 in hex, as the stand-in records credential header values.
fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// custodyd's fingerprint of a secret under `key`: HMAC-SHA256, first 16 bytes in hex.
pub fn fingerprint(key: &[u8; 32], secret: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(secret.as_bytes());
    format!(
        "hmac-sha256:{}",
        hex::encode(&mac.finalize().into_bytes()[..16])
    )
}
