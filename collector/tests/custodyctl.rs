//! The operator CLI against a real collector.

mod common;

use std::process::Command;

use common::*;
use custody_collector::auth::Role;
use custody_collector::synth;
use custody_proto::sensor::v1::EventBatch;

fn ctl(
    addr: &str,
    ca: &std::path::Path,
    token: Option<&str>,
    args: &[&str],
) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_custodyctl"));
    cmd.args(args)
        .env("CUSTODY_COLLECTOR", addr)
        .env("CUSTODY_CA", ca)
        .env("HOME", "/nonexistent")
        .env_remove("CUSTODY_TOKEN")
        .env_remove("CUSTODY_CONFIG");
    if let Some(t) = token {
        cmd.env("CUSTODY_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custodyctl_reads_fleet_and_chains() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let s = synth::three_hosts(["host-a", "host-b", "host-c"], synth::T0);
    for (h, evs) in [("host-a", &s.a), ("host-b", &s.b), ("host-c", &s.c)] {
        let mut evs = evs.clone();
        synth::number(&mut evs);
        c.engine
            .ingest(
                h,
                EventBatch {
                    first_seq: 1,
                    events: evs,
                },
            )
            .unwrap();
    }
    let addr = c.addr.to_string();
    let ca = dir.path().join("ca.pem");
    let viewer = operator(dir.path(), Role::Viewer);

    let (ok, out, err) = tokio::task::block_in_place(|| ctl(&addr, &ca, None, &["hosts"]));
    assert!(!ok);
    assert!(
        err.contains("no operator token") && err.contains("CUSTODY_TOKEN"),
        "{err}"
    );

    let (ok, out2, err) =
        tokio::task::block_in_place(|| ctl(&addr, &ca, Some("cso1.nope"), &["hosts"]));
    assert!(!ok, "{out2}");
    assert!(err.contains("refused the operator token"), "{err}");
    let _ = out;

    let (ok, out, err) = tokio::task::block_in_place(|| ctl(&addr, &ca, Some(&viewer), &["hosts"]));
    assert!(ok, "{err}");
    assert!(out.starts_with("HOST") && out.contains("host-b"), "{out}");
    assert!(!err.contains("warning"), "{err}");

    // A token on the command line works but is warned about (it shows in `ps`); a
    // token file does not show anywhere.
    let (ok, out, err) =
        tokio::task::block_in_place(|| ctl(&addr, &ca, None, &["hosts", "--token", &viewer]));
    assert!(ok && out.contains("host-b"), "{err}");
    assert!(
        err.contains("warning: --token puts the operator token in the process list"),
        "{err}"
    );
    assert!(
        !err.contains(&viewer),
        "the warning never repeats the token: {err}"
    );
    let tf = dir.path().join("viewer.token");
    std::fs::write(&tf, format!("{viewer}\n")).unwrap();
    let (ok, out, err) = tokio::task::block_in_place(|| {
        ctl(
            &addr,
            &ca,
            None,
            &["hosts", "--token-file", tf.to_str().unwrap()],
        )
    });
    assert!(
        ok && out.contains("host-b") && !err.contains("warning"),
        "{err}"
    );

    let (ok, out, err) =
        tokio::task::block_in_place(|| ctl(&addr, &ca, Some(&viewer), &["chains", "--json"]));
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["human"], "alice");

    let (ok, out, err) =
        tokio::task::block_in_place(|| ctl(&addr, &ca, Some(&viewer), &["chain", &s.c1]));
    assert!(ok, "{err}");
    for want in [
        "human: alice (login)",
        "[net 10.0.0.1:40000 -> 10.0.0.2:8080 (tcp)]",
        "[stdio]",
        "open /srv/data/report.csv",
        "agent=research-agent",
        "credential openai_api_key hmac-sha256:aa11",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }

    let (ok, out, err) = tokio::task::block_in_place(|| {
        ctl(
            &addr,
            &ca,
            Some(&viewer),
            &["events", "--host", "host-c", "--kind", "file_open"],
        )
    });
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    for sub in [["agents"], ["credentials"], ["audit"], ["whoami"]] {
        let (ok, _, err) = tokio::task::block_in_place(|| ctl(&addr, &ca, Some(&viewer), &sub));
        assert!(ok, "{sub:?}: {err}");
    }
    c.shutdown().await.unwrap();
}
