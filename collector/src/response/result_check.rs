//! What a sensor may say in answer to a command. A result is only about the
//! sender's own host: its `affected` exec ids must carry the sender's host prefix
//! (they become the processes an action has reached, which follow-ups skip — a
//! host listing another host's processes would shield them from a kill), its
//! status must be one of the four terminal ones, and its sizes are bounded because
//! the result is stored on the action and written to the audit log.

use custody_proto::enums::WireEnum;
use custody_proto::sensor::v1::{CommandResult, CommandStatus};

use crate::engine::field_caps::{self, cap_str};
use crate::engine::own_processes::{MAX_EXEC_ID, is_own};

/// Affected processes kept from one result. A kill of a chain's part on one host
/// reports its processes and their descendants; thousands is already a fork bomb.
/// Each id is up to ~300 bytes and the list is stored on the action and in its
/// audit record, so 4096 bounds one result at ~1 MiB worst case. Ids beyond it
/// are dropped (the action then sends follow-ups for them, which is harmless: a
/// command to a process that is gone finds nothing to do).
pub const MAX_AFFECTED: usize = 4096;
/// The sensor's message (what was left, why it failed), as stored and audited.
pub const MAX_MESSAGE: usize = 2048;

/// What checking a result changed, for the log and the audit record.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Affected ids dropped because they are not the sender's processes.
    pub foreign: usize,
    /// Affected ids dropped over [`MAX_AFFECTED`].
    pub over_cap: usize,
    /// Text fields cut to their caps.
    pub cut: u32,
}

/// Checks and bounds `r` from `host`; a result with a status that is not
/// terminal is refused (the delivery keeps waiting for a real answer).
pub fn check(host: &str, r: &mut CommandResult) -> Result<Checked, String> {
    let mut c = Checked::default();
    // Cut first: the id and message also go into refusals and the audit log.
    c.cut += u32::from(cap_str(&mut r.command_id, field_caps::ID));
    c.cut += u32::from(cap_str(&mut r.message, MAX_MESSAGE));
    c.cut += u32::from(cap_str(&mut r.host, field_caps::NAME));
    match CommandStatus::known(r.status) {
        Some(
            CommandStatus::Ok
            | CommandStatus::Partial
            | CommandStatus::Failed
            | CommandStatus::Unsupported,
        ) => {}
        Some(CommandStatus::Unspecified) | None => {
            return Err(format!(
                "command result {:?} has status {} — only ok, partial, failed and \
                 unsupported answer a command",
                r.command_id, r.status
            ));
        }
    }
    let before = r.affected_exec_ids.len();
    r.affected_exec_ids
        .retain(|id| id.len() <= MAX_EXEC_ID && is_own(host, id));
    c.foreign = before - r.affected_exec_ids.len();
    r.affected_exec_ids.sort_unstable();
    r.affected_exec_ids.dedup();
    if r.affected_exec_ids.len() > MAX_AFFECTED {
        c.over_cap = r.affected_exec_ids.len() - MAX_AFFECTED;
        r.affected_exec_ids.truncate(MAX_AFFECTED);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: CommandStatus, affected: Vec<String>) -> CommandResult {
        CommandResult {
            command_id: "act-1".into(),
            status: status.into(),
            affected_exec_ids: affected,
            ..Default::default()
        }
    }

    #[test]
    fn only_terminal_statuses() {
        for s in [
            CommandStatus::Ok,
            CommandStatus::Partial,
            CommandStatus::Failed,
            CommandStatus::Unsupported,
        ] {
            check("hb", &mut result(s, vec![])).unwrap();
        }
        let e = check("hb", &mut result(CommandStatus::Unspecified, vec![])).unwrap_err();
        assert!(e.contains("status 0"), "{e}");
        let mut newer = result(CommandStatus::Ok, vec![]);
        newer.status = 99;
        check("hb", &mut newer).unwrap_err();
    }

    #[test]
    fn affected_ids_of_other_hosts_are_dropped_and_the_list_is_bounded() {
        let mut r = result(
            CommandStatus::Ok,
            vec![
                "hb:1:1".into(),
                "ha:2:2".into(),
                "hbb:3:3".into(),
                "hb:1:1".into(),
            ],
        );
        let c = check("hb", &mut r).unwrap();
        assert_eq!(r.affected_exec_ids, vec!["hb:1:1".to_string()]);
        assert_eq!(c.foreign, 2);
        let mut big = result(
            CommandStatus::Ok,
            (0..MAX_AFFECTED + 10)
                .map(|i| format!("hb:{i}:1"))
                .collect(),
        );
        big.message = "m".repeat(1 << 20);
        let c = check("hb", &mut big).unwrap();
        assert_eq!(big.affected_exec_ids.len(), MAX_AFFECTED);
        assert_eq!(c.over_cap, 10);
        assert!(big.message.len() <= MAX_MESSAGE);
        assert_eq!(c.cut, 1);
    }
}
