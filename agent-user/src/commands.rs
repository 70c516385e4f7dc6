//! Commands from the collector (kill, quarantine, release, revoke, policy update):
//! where they come from, what each asks of this sensor ([`Order`], read from the
//! wire in [`read`], the one place that looks at a command's kind), how a policy
//! set is put in force, and how results are answered.

use std::sync::{Arc, Mutex};

use agent_user::shipper::ShipperHandle;
use custody_proto::enums::WireEnum;
use custody_proto::sensor::v1::{
    Command as SensorCommand, CommandResult, CommandStatus, EnforcementAction, Event, command,
};

use crate::pipeline::{self, Pipeline};
use crate::sighting::stop_on_sight;
use crate::{enforce, hold, metrics, policy, response};

/// What a collector command asks of this sensor.
pub(crate) enum Order {
    /// Kill, quarantine or release the targets' processes.
    Act(response::Act),
    /// Revoke the target fingerprints; holders are stopped with `action` ("kill" or
    /// "quarantine").
    Revoke { action: &'static str },
    /// Put new host rules in force (checked; `raw` is their JSON for the state dir).
    Policy {
        version: String,
        rules: policy::rules::HostRules,
        raw: serde_json::Value,
    },
    /// Nothing this sensor can carry out as sent (no kind, a newer kind, an enum
    /// value it does not know): answered unsupported, nothing changes.
    Unsupported(String),
}

/// Read a command off the wire.
pub(crate) fn read(cmd: &SensorCommand) -> Order {
    use command::Kind;
    match &cmd.kind {
        Some(Kind::KillProcess(_) | Kind::KillAgent(_) | Kind::KillChain(_)) => {
            Order::Act(response::Act::Kill)
        }
        Some(Kind::Quarantine(_)) => Order::Act(response::Act::Quarantine),
        Some(Kind::Release(_)) => Order::Act(response::Act::Release),
        Some(Kind::RevokeCredential(r)) => match EnforcementAction::known(r.action) {
            Some(EnforcementAction::Unspecified | EnforcementAction::Kill) => {
                Order::Revoke { action: "kill" }
            }
            Some(EnforcementAction::Quarantine) => Order::Revoke {
                action: "quarantine",
            },
            Some(a @ EnforcementAction::Deny) => Order::Unsupported(format!(
                "revoke action {:?}: expected \"kill\" or \"quarantine\"",
                a.name()
            )),
            None => Order::Unsupported(format!(
                "revoke action {}: expected \"kill\" or \"quarantine\"",
                r.action
            )),
        },
        Some(Kind::PolicyUpdate(u)) => match policy::accept(u.rules.clone().unwrap_or_default()) {
            Ok((rules, raw)) => Order::Policy {
                version: u.version.to_string(),
                rules,
                raw,
            },
            Err(e) => Order::Unsupported(format!("{e:#}; the previous rules stay in force")),
        },
        None => Order::Unsupported(
            "this sensor does not implement this command (no kind it knows; a newer collector?)"
                .into(),
        ),
    }
}

/// The answer to a command this sensor refuses or cannot apply.
pub(crate) fn refused(
    host: &str,
    cmd: &SensorCommand,
    status: CommandStatus,
    received_ns: u64,
    why: String,
) -> CommandResult {
    let now = crate::status::now_ns();
    CommandResult {
        command_id: cmd.id.clone(),
        host: host.to_string(),
        status: status.into(),
        message: why,
        received_ns,
        completed_ns: now,
        apply_ns: now.saturating_sub(received_ns),
        ..Default::default()
    }
}

pub(crate) async fn next_command(
    rx: &mut Option<tokio::sync::mpsc::Receiver<SensorCommand>>,
) -> Option<SensorCommand> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Send a command's result to the collector (off the event loop; kills are
/// confirmed first) and count it.
pub(crate) fn answer(
    shipper: Option<&ShipperHandle>,
    counts: &Arc<Mutex<metrics::Counters>>,
    kind: &'static str,
    result: CommandResult,
    kills: Vec<response::Target>,
) {
    let counts = counts.clone();
    if let Some(h) = shipper.cloned() {
        // Confirmation waits for the processes to be gone: off the event loop.
        tokio::spawn(async move {
            let r = if kills.is_empty() {
                result
            } else {
                tokio::task::spawn_blocking(move || response::confirm_kills(result, kills))
                    .await
                    .unwrap_or_else(|e| CommandResult {
                        status: CommandStatus::Failed.into(),
                        message: format!("confirmation task failed: {e}"),
                        ..Default::default()
                    })
            };
            let status = r.status().name();
            if let Ok(mut c) = counts.lock() {
                *c.commands
                    .entry((kind.to_string(), status.to_string()))
                    .or_default() += 1;
            }
            tracing::info!(id = %r.command_id, status, affected = r.affected_exec_ids.len(), apply_ms = r.apply_ns as f64 / 1e6, "command applied");
            if let Err(e) = h.send_result(r).await {
                tracing::warn!("could not answer a command: {e:#}");
            }
        });
    }
}

/// How long names in endpoint rules may take to resolve when a policy arrives.
pub(crate) const POLICY_RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Put a policy set in force: the kernel maps (one generation switch), the
/// pipeline's credential rules, the hold (armed while credential rules or
/// revocations exist), and processes that already showed a forbidden credential
/// are stopped. Returns (status, message, enforcement events, affected exec ids).
pub(crate) fn apply_policy(
    pol: &mut policy::Policy,
    pipe: &mut Pipeline,
    holds: Option<&mut hold::Holds>,
    mut enforcer: Option<&mut enforce::Enforcer>,
    ebpf: &mut aya::Ebpf,
    p: policy::Pending,
) -> (CommandStatus, String, Vec<Event>, Vec<String>) {
    if pol.is_stale(&p.version) {
        return (
            CommandStatus::Ok,
            format!(
                "policy v{} not applied: v{} is already in force",
                p.version, pol.status.version
            ),
            Vec::new(),
            Vec::new(),
        );
    }
    let command_id = p.command_id.clone();
    let (status, message) = pol.apply(p, &pipe.identity);
    // The policy's own status words ("ok", "partial", "failed") are the contract's.
    let status = CommandStatus::from_name(&status).unwrap_or(CommandStatus::Failed);
    if status == CommandStatus::Failed {
        return (status, message, Vec::new(), Vec::new());
    }
    pipe.policy_creds = pol.plan().map(|pl| pl.creds.clone()).unwrap_or_default();
    pipe.policy_command = command_id.clone();
    if let Some(hs) = holds {
        let on = enforcer.is_some() && (!pipe.revoked.is_empty() || !pipe.policy_creds.is_empty());
        if let Err(e) = hs.arm(on) {
            tracing::warn!("revocation hold: {e:#}");
        }
    }
    let mut events = Vec::new();
    let mut affected = Vec::new();
    for (tgid, rule, seen_in) in pipe.policy_holders() {
        let Some(p) = pipe.table.get(tgid) else {
            continue;
        };
        let v = pipeline::Violation {
            tgid,
            tid: tgid,
            start_ticks: p.start_ticks,
            start_boottime: p.start_boottime,
            fingerprint: rule.fingerprint.clone(),
            seen_in,
            action: rule.action.clone(),
            command_id: command_id.clone(),
            held: false,
            policy: rule.policy.clone(),
        };
        let ev = stop_on_sight(pipe, enforcer.as_deref_mut(), ebpf, &v);
        if matches!(&ev.kind, Some(custody_proto::sensor::v1::event::Kind::Enforcement(e)) if e.applied)
        {
            affected.push(pipe.table.exec_id(tgid, v.start_ticks));
        }
        events.push(ev);
    }
    (status, message, events, affected)
}

#[cfg(test)]
mod tests {
    use custody_proto::sensor::v1::{
        AgentRules, HostRules, KillChain, PathRule, PolicyUpdate, RevokeCredential,
    };

    use super::*;

    fn cmd(kind: Option<command::Kind>) -> SensorCommand {
        SensorCommand {
            id: "act-1".into(),
            targets: vec!["h:1:2".into()],
            kind,
            ..Default::default()
        }
    }

    fn why(o: Order) -> String {
        match o {
            Order::Unsupported(why) => why,
            _ => panic!("expected a refusal"),
        }
    }

    #[test]
    fn kinds_read_as_orders() {
        assert!(matches!(
            read(&cmd(Some(command::Kind::KillChain(KillChain {})))),
            Order::Act(response::Act::Kill)
        ));
        let revoke = |action: EnforcementAction| {
            read(&cmd(Some(command::Kind::RevokeCredential(
                RevokeCredential {
                    action: action.into(),
                },
            ))))
        };
        assert!(matches!(
            revoke(EnforcementAction::Unspecified),
            Order::Revoke { action: "kill" }
        ));
        assert!(matches!(
            revoke(EnforcementAction::Quarantine),
            Order::Revoke {
                action: "quarantine"
            }
        ));
        let update = read(&cmd(Some(command::Kind::PolicyUpdate(PolicyUpdate {
            version: 7,
            rules: None,
        }))));
        assert!(matches!(update, Order::Policy { ref version, .. } if version == "7"));
    }

    #[test]
    fn what_the_sensor_cannot_read_is_refused_not_guessed() {
        // No kind (or one newer than this build, which prost leaves unset).
        assert!(why(read(&cmd(None))).contains("does not implement"));
        // An action value this build does not know, and one revocations do not take.
        let w = why(read(&cmd(Some(command::Kind::RevokeCredential(
            RevokeCredential { action: 9 },
        )))));
        assert!(w.contains("revoke action 9"), "{w}");
        let w = why(read(&cmd(Some(command::Kind::RevokeCredential(
            RevokeCredential {
                action: EnforcementAction::Deny.into(),
            },
        )))));
        assert!(w.contains("\"deny\""), "{w}");
        // Host rules with a path match from a newer collector.
        let mut rules = HostRules::default();
        rules.agents.insert(
            "x".into(),
            AgentRules {
                forbidden_paths: vec![PathRule {
                    policy: "p".into(),
                    path: "/srv".into(),
                    r#match: 42,
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        let w = why(read(&cmd(Some(command::Kind::PolicyUpdate(
            PolicyUpdate {
                version: 3,
                rules: Some(rules),
            },
        )))));
        assert!(
            w.contains("agent x, policy p: unknown path match 42"),
            "{w}"
        );
        assert!(w.contains("previous rules stay in force"), "{w}");
        let r = refused("h", &cmd(None), CommandStatus::Unsupported, 1, w);
        assert_eq!(r.status(), CommandStatus::Unsupported);
        assert_eq!(r.command_id, "act-1");
    }
}
