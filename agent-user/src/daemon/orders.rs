//! What a collector command asks of this sensor: the wire `Command` read once, at
//! the edge, into an [`Order`]. This is the one place that looks at a command's kind
//! and enum values; anything this build cannot read (no kind, a newer kind, an enum
//! value it does not know, host rules it cannot check) is refused as
//! `unsupported` and changes nothing.

use custody_proto::enums::WireEnum;
use custody_proto::sensor::v1::{
    Command as SensorCommand, CommandResult, CommandStatus, EnforcementAction, command,
};

use crate::{clock, policy, response};

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
    let now = clock::now_ns();
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
