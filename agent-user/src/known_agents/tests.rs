//! Tests of the known-agent catalogue: real npm- and pip-shaped install trees.
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
