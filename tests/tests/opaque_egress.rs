//! What Custody could not read still leaves a trace (issue 14), on the real kernel:
//! custodyd runs a declared agent whose TLS it cannot read (a C client linked statically
//! with OpenSSL and stripped: no symbols, and stripped OpenSSL is not located) against a
//! loopback HTTPS server, and reports each of its connections as `opaque_egress` with
//! the 4-tuple, the SNI from the ClientHello the kernel saw in its first write, and the
//! connection's byte counts.

use std::process::{Command, Stdio};
use std::time::Duration;

use custody_tests::{Daemon, Server, agents_dir, bpf_available, kind, write_tls_files};
use serde_json::Value;

/// A JSON number, or a 64-bit one written as a string (the proto JSON mapping).
fn num(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// Builds the static OpenSSL client into `dir` and strips it.
fn static_openssl_client(dir: &std::path::Path) -> std::path::PathBuf {
    let client = dir.join("openssl-static-client");
    let src = agents_dir().join("tls_clients/openssl_static/client.c");
    let built = Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(&client)
        .arg(&src)
        .args(["-static", "-lssl", "-lcrypto", "-lpthread"])
        .stderr(Stdio::null())
        .status()
        .expect("cc (cargo xtask setup installs gcc and libssl-dev)");
    assert!(built.success(), "building {}", src.display());
    assert!(
        Command::new("strip")
            .arg(&client)
            .status()
            .unwrap()
            .success()
    );
    client
}

#[test]
fn a_stripped_static_openssl_client_s_connections_are_opaque_egress_with_sni_and_bytes() {
    let name =
        "a_stripped_static_openssl_client_s_connections_are_opaque_egress_with_sni_and_bytes";
    if !bpf_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    write_tls_files(work);
    let client = static_openssl_client(work);
    let agent_id = format!("opaque-agent-{}", std::process::id());
    let config = format!(
        "[sensor]\nhost_id = \"opaque-host\"\nstate_dir = \"{}\"\n\n[[agent]]\nid = \"{agent_id}\"\nowner = \"alice@example.com\"\n[agent.match]\nenv = \"{agent_id}\"\n",
        work.join("state").display()
    );
    let daemon = Daemon::start(work, &config, &[]);
    let tls = Server::start(
        Command::new("python3")
            .arg(agents_dir().join("tls_server.py"))
            .arg(work.join("server.pem"))
            .arg(work.join("server.key")),
    );
    let port: u64 = tls.first_line.trim().parse().unwrap();
    let port_arg = port.to_string();
    // A loop of runs: the first may finish before its binary is analysed and found
    // uncovered; later runs of the same file are known uncovered from their exec.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looper = {
        let (stop, client, port_arg, agent_id) = (
            stop.clone(),
            client.clone(),
            port_arg.clone(),
            agent_id.clone(),
        );
        let ca = work.join("ca.pem");
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = Command::new(&client)
                    .args(["localhost", &port_arg, "/v1/chat/completions"])
                    .arg(&ca)
                    .env("CUSTODY_AGENT", &agent_id)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let exe = client.display().to_string();
    let seen = |e: &Value| kind(e) == "opaque_egress" && e["process"]["exe"] == exe.as_str();
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        daemon.wait_for(
            "an opaque egress of the static OpenSSL client",
            Duration::from_secs(60),
            seen,
        )
    }));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = looper.join();
    let evs = waited.unwrap_or_else(|e| std::panic::resume_unwind(e));
    std::thread::sleep(Duration::from_millis(1200)); // one status refresh
    let status: Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("status.json")).unwrap()).unwrap();
    daemon.stop();

    let e = evs.iter().find(|e| seen(e)).unwrap();
    eprintln!("{e}");
    let o = &e["kind"]["opaque_egress"];
    assert_eq!(e["process"]["agent_id"], agent_id.as_str());
    assert_eq!(o["sni"], "localhost");
    assert_eq!(
        o["stack"], "openssl",
        "the stack it found and could not read: {o}"
    );
    assert_eq!(o["conn"]["remote_addr"], "127.0.0.1");
    assert_eq!(num(&o["conn"]["remote_port"]), port);
    assert!(num(&o["conn"]["local_port"]) > 0, "{o}");
    // A ClientHello and a POST out, a certificate chain and a JSON answer back.
    assert!(num(&o["bytes_sent"]) > 300, "{o}");
    assert!(num(&o["bytes_received"]) > 500, "{o}");
    assert!(num(&o["opened_ns"]) > 0, "the connect's time: {o}");
    let h = &status["tls_hellos"];
    assert!(num(&h["hellos_parsed"]) >= 1, "{h}");
    assert!(num(&h["opaque_egress"]) >= 1, "{h}");
}
