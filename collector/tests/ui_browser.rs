//! The responder's first screen in a real browser (issues 14 and 17): a story-like
//! chain (`synth::responder_story`: hundreds of interpreter and package reads, an LLM
//! request, a tool call, a denied read, a `uname -p` helper, a child whose rustls TLS
//! Custody cannot read and its opaque connections) shipped through the real ingest
//! API by an enrolled shipper; headless Chromium (Debian's package, driven by
//! playwright-core from tests/ui/node_modules) at 1440×900 checks that the first
//! screen of the chain timeline holds the LLM request, the tool call and the denied
//! read, that the graph's box lies inside the viewport, and that the uncovered mark
//! and the opaque-egress section render. Screenshots go to target/ui-screenshots.
//!
//! Skipped (with the reason) when node, Chromium or playwright-core are missing;
//! `CUSTODY_REQUIRE_BPF=1` (as in CI, where `cargo xtask setup` installs them) makes
//! that a failure.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use agent_user::shipper::Shipper;
use common::*;
use custody_collector::auth::Role;
use custody_collector::synth;
use serde_json::Value;

/// (script, node_modules, chromium), or why the browser cannot run.
fn browser_tools() -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let modules = here.join("../tests/ui/node_modules");
    if !modules.join("playwright-core/package.json").exists() {
        return Err(format!(
            "{} is missing (`cargo xtask setup` runs `npm ci` in tests/ui)",
            modules.display()
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Err("node is not installed (`cargo xtask setup`)".into());
    }
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
        })
        .ok_or("Debian's chromium is not installed (`cargo xtask setup`)")?;
    Ok((here.join("tests/ui/signal-view.js"), modules, chromium))
}

fn screenshot_dir() -> PathBuf {
    let d = std::env::var_os("CUSTODY_UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots")
        });
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn responders_first_screen_holds_the_story_and_says_what_was_not_seen() {
    let (script, modules, chromium) = match browser_tools() {
        Ok(t) => t,
        Err(why) => {
            if std::env::var("CUSTODY_REQUIRE_BPF").is_ok_and(|v| v == "1") {
                panic!("browser test cannot run: {why}");
            }
            eprintln!("skipping the responder's-view browser test: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    let state = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let host = "host-story";
    let paths = enroll_host(
        &addr,
        &enroll_token(&c, Duration::from_secs(60)),
        host,
        state.path(),
    )
    .await;
    let (ship, _cmds) = Shipper::start(shipper_config(&addr, &paths, spool.path(), host)).unwrap();
    let story = synth::responder_story(host, custody_collector::clock::now_ns());
    let n = story.events.len();
    let mut last = 0;
    for e in story.events {
        last = ship.send(e).unwrap();
    }
    wait_for(30, "the story acked", || {
        let s = ship.stats();
        async move { s.last_acked_seq >= last }
    })
    .await;
    assert!(n > 600, "hundreds of routine reads");
    let viewer = operator(dir.path(), Role::Viewer);
    let url = custody_collector::ui::url(c.addr);
    let shots = screenshot_dir();
    let agent = story.agent.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&script)
            .args([&url, &viewer, &agent, shots.to_str().unwrap()])
            .env("NODE_PATH", &modules)
            .env("CHROMIUM", &chromium)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser script failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("no result line ({e}): {stdout}\n{stderr}"));
    eprintln!("measured: {r:#}");

    // The graph fits the 1440×900 window.
    let g = &r["graph"];
    let f = |k: &str| g[k].as_f64().unwrap();
    assert!(
        f("left") >= 0.0 && f("right") <= f("vw"),
        "graph wider than the window: {g}"
    );
    assert!(
        f("top") >= 0.0 && f("bottom") <= f("vh"),
        "graph taller than the window: {g}"
    );
    // What Custody could not see.
    assert_eq!(r["uncovered_nodes"], 1, "{r}");
    assert!(
        r["uncovered_mark"]
            .as_str()
            .unwrap()
            .contains("TLS not readable")
    );
    assert_eq!(
        r["helper_boxes"], 0,
        "the uname helper folds into its parent"
    );
    assert_eq!(
        r["opaque_summary"],
        "3 opaque TLS connections from 1 process whose TLS Custody cannot read"
    );
    assert_eq!(r["opaque_rows"], 3);
    let ot = r["opaque_text"].as_str().unwrap();
    assert!(
        ot.contains("TLS not readable: rustls 0.23.20") && ot.contains("api.openai.com"),
        "{ot}"
    );
    // The first screen of the timeline holds what the responder looks for.
    for k in ["llm_request", "tool_call", "denied_read"] {
        assert_eq!(r[k]["found"], true, "{k} not a line of the timeline: {r}");
        assert_eq!(
            r[k]["inside"], true,
            "{k} not on the first screen: {}",
            r[k]
        );
    }
    let folds: Vec<&str> = r["folds"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        folds
            .iter()
            .any(|f| f.contains("451 routine reads under /usr/lib/python3.11")),
        "{folds:?}"
    );
    assert!(folds.iter().any(|f| {
        f.contains("200 routine reads under /home/alice/.venv/lib/python3.11/site-packages")
    }));
    assert!(r["top_rows"].as_u64().unwrap() < 30, "{r}");
    assert_eq!(r["fold_hidden_before"], true);
    assert_eq!(r["fold_shown_after"], true);
}
