//! Response commands from the collector (kill, quarantine, release), resolved against
//! this host's process table and applied through the enforcer. Commands only ever
//! arrive over the authenticated collector stream.

use std::time::Duration;

use aya::Ebpf;
use custody_proto::sensor::v1::{Command, CommandResult, CommandStatus};

use crate::clock::now_ns;
use crate::enforce::{Enforcer, wait_gone};
use crate::kill_tree;
use crate::proctable::ProcTable;

/// What a kill, quarantine or release command does to each target process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// kill_process, kill_agent, kill_chain.
    Kill,
    Quarantine,
    Release,
}

/// A live process targeted by a command.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub pid: u32,
    pub start_ticks: u64,
    pub start_boottime: u64,
}

/// Parse "host:pid:start_ticks"; None when malformed or for another host.
fn parse_exec_id(host: &str, id: &str) -> Option<(u32, u64)> {
    let rest = id.strip_prefix(host)?.strip_prefix(':')?;
    let (pid, ticks) = rest.split_once(':')?;
    Some((pid.parse().ok()?, ticks.parse().ok()?))
}

fn is_exec_id(id: &str) -> bool {
    let mut parts = id.rsplitn(3, ':');
    let ticks = parts.next().is_some_and(|t| t.parse::<u64>().is_ok());
    let pid = parts.next().is_some_and(|p| p.parse::<u32>().is_ok());
    ticks && pid && parts.next().is_some()
}

/// Resolve a command's targets to live processes of this host, with descendants
/// (a chain or an agent includes what it spawned).
pub fn resolve(table: &ProcTable, cmd: &Command) -> (Vec<Target>, Vec<String>) {
    let mut roots: Vec<u32> = Vec::new();
    let mut unknown = Vec::new();
    for t in &cmd.targets {
        if is_exec_id(t) {
            match parse_exec_id(&table.host, t) {
                Some((pid, ticks)) if table.get(pid).is_some_and(|p| p.start_ticks == ticks) => {
                    roots.push(pid)
                }
                Some((pid, ticks)) if crate::enforce::same_process(pid, ticks) => roots.push(pid),
                Some(_) => unknown.push(format!("{t}: not running")),
                None => {} // another host's process: not ours to act on
            }
        } else {
            let before = roots.len();
            for tgid in table.tgids() {
                if table
                    .get(tgid)
                    .and_then(|p| p.agent.as_ref())
                    .is_some_and(|a| &a.id == t)
                {
                    roots.push(tgid);
                }
            }
            if roots.len() == before {
                unknown.push(format!("agent {t}: no live process on this host"));
            }
        }
    }
    let mut all = roots.clone();
    for r in &roots {
        all.extend(table.descendants(*r));
    }
    all.sort_unstable();
    all.dedup();
    let targets = all
        .into_iter()
        .filter_map(|pid| {
            let p = table.get(pid)?;
            Some(Target {
                pid,
                start_ticks: p.start_ticks,
                start_boottime: p.start_boottime,
            })
        })
        .collect();
    (targets, unknown)
}

/// Apply a command; for kills, the result is completed by [`confirm_kills`].
pub fn apply(
    table: &ProcTable,
    enforcer: &mut Enforcer,
    ebpf: &mut Ebpf,
    cmd: &Command,
    act: Act,
) -> (CommandResult, Vec<Target>) {
    let received = now_ns();
    let (mut targets, mut unknown) = resolve(table, cmd);
    if act == Act::Kill {
        // Children forked just before the command that the table does not list yet
        // (they would outlive the kill: mark inheritance covers later forks only).
        let named: Vec<(u32, u64)> = targets.iter().map(|t| (t.pid, t.start_ticks)).collect();
        let found = kill_tree::stop_tree(&named);
        if found.bounded {
            unknown.push(format!(
                "the search for unlisted children stopped at {} processes",
                found.extra.len()
            ));
        }
        targets.extend(found.extra.into_iter().map(|(pid, start_ticks)| Target {
            pid,
            start_ticks,
            // Not known from /proc to the nanosecond: the kernel mark then matches
            // the pid alone, until the process exits (the exit program removes it).
            start_boottime: 0,
        }));
    }
    let mut affected = Vec::new();
    let mut errors = Vec::new();
    let cmd_ref = cmd
        .id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    for t in &targets {
        let r = match act {
            Act::Kill => enforcer.kill(ebpf, t.pid, t.start_boottime, t.start_ticks, cmd_ref),
            Act::Quarantine => enforcer.quarantine(t.pid, t.start_ticks),
            Act::Release => enforcer.release(t.pid),
        };
        match r {
            Ok(true) => affected.push(table.exec_id(t.pid, t.start_ticks)),
            Ok(false) => {}
            Err(e) => {
                if act == Act::Kill {
                    // Stopped above: never leave it stopped and unmarked.
                    kill_tree::end(t.pid, t.start_ticks);
                }
                errors.push(format!("pid {}: {e:#}", t.pid))
            }
        }
    }
    // Releasing what is already gone is not a failure: a quarantined process that
    // exited took its quarantine entry with it.
    let release_nothing = act == Act::Release && errors.is_empty() && affected.is_empty();
    let status = if release_nothing {
        CommandStatus::Ok
    } else if !errors.is_empty() {
        if affected.is_empty() {
            CommandStatus::Failed
        } else {
            CommandStatus::Partial
        }
    } else if affected.is_empty() && !unknown.is_empty() {
        CommandStatus::Failed
    } else {
        CommandStatus::Ok
    };
    let mut message: Vec<String> = errors;
    message.extend(unknown);
    if affected.is_empty() && message.is_empty() {
        message.push("no matching live process on this host".into());
    }
    if release_nothing {
        message.insert(0, "nothing to release: no quarantined process left".into());
    }
    let now = now_ns();
    let result = CommandResult {
        command_id: cmd.id.clone(),
        host: table.host.clone(),
        status: status.into(),
        message: message.join("; "),
        affected_exec_ids: affected,
        received_ns: received,
        completed_ns: now,
        apply_ns: now - received,
    };
    let kills = if act == Act::Kill {
        targets
    } else {
        Vec::new()
    };
    (result, kills)
}

/// The answer when this host cannot enforce at all.
pub fn unavailable(host: &str, cmd: &Command, why: &str) -> CommandResult {
    let now = now_ns();
    CommandResult {
        command_id: cmd.id.clone(),
        host: host.to_string(),
        status: CommandStatus::Failed.into(),
        message: why.to_string(),
        affected_exec_ids: Vec::new(),
        received_ns: now,
        completed_ns: now,
        apply_ns: 0,
    }
}

/// Wait (off the event loop) until the killed processes are gone and complete the
/// result with the time from command to effect.
pub fn confirm_kills(mut r: CommandResult, kills: Vec<Target>) -> CommandResult {
    let procs: Vec<(u32, u64)> = kills.iter().map(|t| (t.pid, t.start_ticks)).collect();
    let (_, alive) = wait_gone(&procs, Duration::from_secs(5));
    r.completed_ns = now_ns();
    r.apply_ns = r.completed_ns.saturating_sub(r.received_ns);
    if !alive.is_empty() {
        r.status = CommandStatus::Partial.into();
        let pids: Vec<String> = alive.iter().map(|(p, _)| p.to_string()).collect();
        let msg = format!("still alive after 5 s: {}", pids.join(", "));
        r.message = if r.message.is_empty() {
            msg
        } else {
            format!("{}; {msg}", r.message)
        };
    }
    r
}

/// `revoke_credential`: cache the revocation on the host (it keeps applying while the
/// collector is away), then stop every live process that has shown the credential.
pub fn revoke(
    pipe: &mut crate::pipeline::Pipeline,
    watch: &mut crate::watch::CredentialWatch,
    revocations: &mut crate::revocation::Revocations,
    enforcer: Option<&mut Enforcer>,
    ebpf: &mut Ebpf,
    cmd: &Command,
    action: &str,
) -> CommandResult {
    let received = now_ns();
    let action = action.to_string();
    let mut result = CommandResult {
        command_id: cmd.id.clone(),
        host: pipe.table.host.clone(),
        received_ns: received,
        ..Default::default()
    };
    let fps: Vec<String> = cmd
        .targets
        .iter()
        .filter(|t| t.starts_with("hmac-sha256:"))
        .cloned()
        .collect();
    if fps.is_empty() {
        result.status = CommandStatus::Failed.into();
        result.message = "no credential fingerprint (hmac-sha256:…) among the targets".into();
        return result;
    }
    let rec = crate::revocation::Revoked {
        action: action.clone(),
        command_id: cmd.id.clone(),
        reason: cmd.reason.clone(),
    };
    if let Err(e) = revocations.add(&fps, rec) {
        result.status = CommandStatus::Failed.into();
        result.message = format!("could not cache the revocation: {e:#}");
        return result;
    }
    for fp in &fps {
        watch.revoke(fp.clone(), action.clone(), cmd.id.clone());
    }
    let mut errors = Vec::new();
    if let Some(en) = enforcer {
        for tgid in pipe.holders(&fps) {
            let Some(p) = pipe.table.get(tgid) else {
                continue;
            };
            let (ticks, boot) = (p.start_ticks, p.start_boottime);
            let r = if action == "kill" {
                en.kill(ebpf, tgid, boot, ticks, 0)
            } else {
                en.quarantine(tgid, ticks)
            };
            match r {
                Ok(true) => result
                    .affected_exec_ids
                    .push(pipe.table.exec_id(tgid, ticks)),
                Ok(false) => {}
                Err(e) => errors.push(format!("pid {tgid}: {e:#}")),
            }
        }
    } else {
        errors.push(
            "enforcement is degraded on this host: revocation cached, nothing stopped".into(),
        );
    }
    result.status = if errors.is_empty() {
        CommandStatus::Ok
    } else if result.affected_exec_ids.is_empty() {
        CommandStatus::Failed
    } else {
        CommandStatus::Partial
    }
    .into();
    let held = result.affected_exec_ids.len();
    result.message = if errors.is_empty() {
        format!(
            "revoked {} credential(s); {held} holder(s) stopped ({action}); later sightings are stopped on sight",
            fps.len()
        )
    } else {
        errors.join("; ")
    };
    result.completed_ns = now_ns();
    result.apply_ns = result.completed_ns - received;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_ids_parse_for_this_host_only() {
        assert_eq!(parse_exec_id("h-a", "h-a:42:1234"), Some((42, 1234)));
        assert_eq!(parse_exec_id("h-a", "h-b:42:1234"), None);
        assert_eq!(parse_exec_id("h", "h-a:42:1234"), None);
        assert!(is_exec_id("h-a:42:1234"));
        assert!(!is_exec_id("finance-worker"));
        assert!(!is_exec_id("mcp:ledger-tools"));
    }
}
