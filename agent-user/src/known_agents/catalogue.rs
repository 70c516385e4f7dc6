//! The catalogue's data: one entry per known agent program, with the shapes of path
//! that identify it (see the parent module for how they are matched).

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
