//! The collector binary stops cleanly on SIGTERM (what systemd sends) as on SIGINT:
//! it says so, flushes the store, exits 0, and the store opens again.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn serve_and_stop(sig: libc::c_int, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_custody-collector"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
    let deadline = Instant::now() + Duration::from_secs(25);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "no exit 25 s after {name}: {}",
            std::fs::read_to_string(dir.path().join("stderr")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(st.success(), "{name}: {st} {err}");
    assert!(err.contains(&format!("{name}: shutting down")), "{err}");
    // The store was closed properly: it opens at once.
    let store = custody_collector::store::SledStore::open(&custody_collector::server::store_dir(
        dir.path(),
    ));
    assert!(store.is_ok(), "{:?}", store.err());
}

#[test]
fn sigterm_stops_the_collector_cleanly() {
    serve_and_stop(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_stops_the_collector_cleanly() {
    serve_and_stop(libc::SIGINT, "SIGINT");
}
