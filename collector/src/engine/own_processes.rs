//! A sensor speaks only about its own processes. Exec ids name their host
//! ("HOST:PID:START_TICKS", host ids never hold ':'), so every exec id a sensor's
//! message names — the acting process, its parent, a forked child — must carry the
//! sender's host prefix (the CN of its client certificate). Otherwise one host could
//! graft another host's process into its own chain (and an operator's `kill_chain`
//! on that chain would be delivered to the other host) or move itself under
//! another host's process.
//!
//! A violation refuses that one event; the rest of its batch is kept (bad input
//! loses nothing else). Command results are checked the same way in
//! `response::result_check`.

use custody_proto::sensor::v1::{Event, event::Kind};

use super::Rejection;

/// An exec id is the host id (at most 253 bytes), a pid and a tick count; anything
/// much longer is not one (and is a key: it is refused, never cut).
pub const MAX_EXEC_ID: usize = 320;

/// Every exec id `ev` names, with the field it is in.
pub fn exec_id_refs(ev: &Event) -> impl Iterator<Item = (&'static str, &str)> {
    let process = ev.process.as_ref();
    let own = process.map(|p| ("process.exec_id", p.exec_id.as_str()));
    let parent = process.map(|p| ("process.parent_exec_id", p.parent_exec_id.as_str()));
    let child = match &ev.kind {
        Some(Kind::Fork(f)) => Some(("fork.child_exec_id", f.child_exec_id.as_str())),
        _ => None,
    };
    [own, parent, child]
        .into_iter()
        .flatten()
        .filter(|(_, id)| !id.is_empty())
}

/// Whether `exec_id` belongs to `host`.
pub fn is_own(host: &str, exec_id: &str) -> bool {
    exec_id
        .strip_prefix(host)
        .is_some_and(|rest| rest.starts_with(':'))
}

/// Refuses an event that claims another host or names another host's process.
/// An event without a host is the sender's.
pub fn check(host: &str, ev: &mut Event) -> Result<(), Rejection> {
    if ev.host.is_empty() {
        ev.host = host.to_owned();
    }
    if ev.host != host {
        return Err(Rejection {
            code: "host_mismatch",
            reason: format!(
                "event seq {} claims host {:?} but this sensor's certificate is for {host:?}",
                ev.seq,
                super::field_caps::shorten(&ev.host, 256)
            ),
        });
    }
    if let Some((field, id)) = exec_id_refs(ev).find(|(_, id)| id.len() > MAX_EXEC_ID) {
        return Err(Rejection {
            code: "malformed",
            reason: format!(
                "event seq {} has a {}-byte {field}: exec ids are HOST:PID:START_TICKS",
                ev.seq,
                id.len()
            ),
        });
    }
    if let Some((field, id)) = exec_id_refs(ev).find(|(_, id)| !is_own(host, id)) {
        return Err(Rejection {
            code: "host_mismatch",
            reason: format!(
                "event seq {} names process {:?} in {field}, which is not on host {host:?}",
                ev.seq,
                super::field_caps::shorten(id, 256)
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_proto::sensor::v1::{Process, ProcessFork};

    fn fork(exec_id: &str, parent: &str, child: &str) -> Event {
        Event {
            host: String::new(),
            seq: 1,
            process: Some(Process {
                exec_id: exec_id.into(),
                parent_exec_id: parent.into(),
                ..Default::default()
            }),
            kind: Some(Kind::Fork(ProcessFork {
                child_exec_id: child.into(),
                child_pid: 2,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn own_means_the_host_part_not_a_string_prefix() {
        assert!(is_own("hostb", "hostb:1:2"));
        assert!(!is_own("hostb", "hostbx:1:2"));
        assert!(!is_own("host", "hostb:1:2"));
        assert!(!is_own("hostb", "hostb"));
    }

    #[test]
    fn a_fork_child_of_another_host_is_refused() {
        let mut ok = fork("hostb:1:1", "hostb:0:1", "hostb:2:5");
        check("hostb", &mut ok).unwrap();
        assert_eq!(ok.host, "hostb");
        let mut bad = fork("hostb:1:1", "hostb:0:1", "hosta:2:5");
        let r = check("hostb", &mut bad).unwrap_err();
        assert_eq!(r.code, "host_mismatch");
        assert!(r.reason.contains("fork.child_exec_id"), "{}", r.reason);
        assert!(r.reason.contains("hosta:2:5"), "{}", r.reason);
        let mut bad_parent = fork("hostb:1:1", "hosta:0:1", "");
        let r = check("hostb", &mut bad_parent).unwrap_err();
        assert!(r.reason.contains("parent_exec_id"), "{}", r.reason);
    }
}
