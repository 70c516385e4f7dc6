//! What the hold's kernel tests share (besides crate::kernel::test_support): a judge
//! with one revoked fingerprint, and waiting for a process state.

use std::time::{Duration, Instant};

use agent_user::credential::{FleetKey, scan_env, scan_headers};

use super::{Hit, Judge, proc_state};
pub(super) use crate::kernel::test_support::{Attached, PinCleanup, root_or_skip};

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
