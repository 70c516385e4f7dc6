//! TLS found per binary, not per path (issue 14), on the real kernel: custodyd analyses
//! what a tracked process runs and attaches its TLS functions by file offset, so a
//! byte-identical copy of node under an nvm-style path (a different inode, no path list
//! naming it) has its HTTPS plaintext read, and `custodyd status` lists it as covered.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use custody_tests::{Daemon, Server, agents_dir, bpf_available, kind, write_tls_files};
use serde_json::Value;

#[test]
fn node_copied_under_an_nvm_path_has_its_https_plaintext_read() {
    if !bpf_available("node_copied_under_an_nvm_path_has_its_https_plaintext_read") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    write_tls_files(work);
    let node_dir = work.join(".nvm/versions/node/v22.0.0/bin");
    std::fs::create_dir_all(&node_dir).unwrap();
    let node = node_dir.join("node");
    std::fs::copy("/usr/bin/node", &node).expect("copy /usr/bin/node");
    let agent_id = format!("nvm-agent-{}", std::process::id());
    let config = format!(
        "[sensor]\nhost_id = \"nvm-host\"\nstate_dir = \"{}\"\n\n[[agent]]\nid = \"{agent_id}\"\nowner = \"alice@example.com\"\n[agent.match]\nenv = \"{agent_id}\"\n",
        work.join("state").display()
    );
    let daemon = Daemon::start(work, &config, &[]);
    let tls = Server::start(
        Command::new("python3")
            .arg(agents_dir().join("tls_server.py"))
            .arg(work.join("server.pem"))
            .arg(work.join("server.key")),
    );
    let url = format!("https://localhost:{}/nvm/post", tls.first_line);
    let mut client = Command::new(&node)
        .arg(agents_dir().join("https_post_loop.js"))
        .arg(&url)
        .env("CUSTODY_AGENT", &agent_id)
        .env("NODE_EXTRA_CA_CERTS", work.join("ca.pem"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = client.id();
    let started = Instant::now();
    let seen = |e: &Value| {
        kind(e) == "http_request"
            && e["process"]["pid"] == pid
            && e["kind"]["http_request"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/nvm/post"))
    };
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        daemon.wait_for("a POST of the nvm node", Duration::from_secs(60), seen)
    }));
    let _ = client.kill();
    let _ = client.wait();
    let evs = waited.unwrap_or_else(|e| std::panic::resume_unwind(e));
    eprintln!(
        "first POST of the nvm node seen {:.2} s after its start",
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(1200)); // one status refresh
    let status: Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("status.json")).unwrap()).unwrap();
    daemon.stop();

    let post = evs.iter().find(|e| seen(e)).unwrap();
    assert_eq!(post["process"]["exe"], node.display().to_string());
    assert_eq!(post["kind"]["http_request"]["method"], "POST");
    assert_eq!(post["process"]["agent_id"], agent_id.as_str());
    // The copy is its own file (inode) and was attached as one; no uncovered report.
    let covered: Vec<&Value> = status["tls"]["covered"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    assert!(
        covered
            .iter()
            .any(|b| b["path"] == node.display().to_string()
                && b["stacks"][0]["stack"] == "openssl"
                && b["probes"].as_u64().unwrap_or(0) >= 8),
        "the nvm node is not listed as covered: {}",
        status["tls"]
    );
    assert!(
        !evs.iter()
            .any(|e| kind(e) == "tls_uncovered" && e["process"]["pid"] == pid),
        "node's OpenSSL is readable, yet reported uncovered"
    );
    eprintln!(
        "exec → attach: {} ms (max {} ms over {}); analyses {} (cache hits {})",
        status["tls"]["exec_to_attach_ms_last"],
        status["tls"]["exec_to_attach_ms_max"],
        status["tls"]["exec_to_attach_count"],
        status["tls"]["analysed"],
        status["tls"]["cache_hits"]
    );
}
