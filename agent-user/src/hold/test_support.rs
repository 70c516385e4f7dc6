//! What the hold's kernel tests share: a root check, pin and link cleanup, a judge
//! with one revoked fingerprint, and waiting for a process state.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent_user::credential::{FleetKey, scan_env, scan_headers};

use super::{Hit, Judge, proc_state};
use crate::loader;

pub(super) fn root_or_skip(name: &str) -> bool {
    let required = std::env::var("CUSTODY_REQUIRE_BPF").as_deref() == Ok("1");
    // SAFETY: no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        "needs root to load eBPF"
    } else if !loader::has_programs() {
        "was built with AYA_BUILD_SKIP=1 (no kernel programs)"
    } else {
        return true;
    };
    assert!(
        !required,
        "{name} {why}, and CUSTODY_REQUIRE_BPF=1 forbids skipping"
    );
    eprintln!("skipping {name}: {why}");
    false
}

pub(super) struct PinCleanup(pub(super) PathBuf);

impl Drop for PinCleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) struct Attached(pub(super) loader::Links);

impl Drop for Attached {
    fn drop(&mut self) {
        loader::release(std::mem::take(&mut self.0));
    }
}

pub(super) struct TestJudge {
    pub(super) key: FleetKey,
    pub(super) revoked: String,
    pub(super) enforced: Vec<u32>,
}

impl Judge for TestJudge {
    fn revoked(&self, _tgid: u32, env: &[u8]) -> Option<Hit> {
        scan_env(env, &self.key)
            .into_iter()
            .find(|c| c.fingerprint == self.revoked)
            .map(|c| Hit {
                fingerprint: c.fingerprint,
                action: "kill".into(),
                command_id: "t".into(),
                seen_in: "env".into(),
                policy: String::new(),
            })
    }

    fn revoked_headers(&self, _tgid: u32, headers: &[(String, String)]) -> Option<Hit> {
        scan_headers(headers, &self.key)
            .into_iter()
            .find(|c| c.fingerprint == self.revoked)
            .map(|c| Hit {
                fingerprint: c.fingerprint,
                action: "kill".into(),
                command_id: "t".into(),
                seen_in: "header".into(),
                policy: String::new(),
            })
    }

    fn enforce(&mut self, tgid: u32, _: u64, _: u64, _: &Hit) {
        self.enforced.push(tgid);
    }
}

pub(super) fn wait_state(pid: u32, want: char, limit: Duration) -> Option<char> {
    let t = Instant::now();
    loop {
        let s = proc_state(pid);
        if s == Some(want) || t.elapsed() > limit {
            return s;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
