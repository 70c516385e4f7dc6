//! Actions to sensor commands and sensor answers back: the only place the response
//! code turns its [`Action`] records (kind and settings as the operator API names
//! them) into a typed `custody.sensor.v1.Command`, and a `CommandStatus` into the
//! delivery state the API, UI and audit log show.

use custody_proto::admin::v1::{Action, HostDelivery};
use custody_proto::enums::WireEnum;
use custody_proto::sensor::v1::{
    Command, CommandResult, CommandStatus, EnforcementAction, KillAgent, KillChain, KillProcess,
    PolicyUpdate, Quarantine, Release, RevokeCredential, command,
};

/// The command carrying delivery `d` of `a` (`follow_up`: its index, for a
/// follow-up's own id). An action kind the sensor protocol does not have yields a
/// command without a kind, which sensors answer `unsupported`.
pub fn command(a: &Action, d: &HostDelivery, follow_up: Option<usize>) -> Command {
    Command {
        id: match follow_up {
            Some(i) => format!("{}.{i}", a.id),
            None => a.id.clone(),
        },
        targets: d.targets.clone(),
        reason: a.reason.clone(),
        issued_by: a.operator.clone(),
        issued_at_ns: a.issued_at_ns,
        kind: kind(a),
    }
}

fn kind(a: &Action) -> Option<command::Kind> {
    Some(match a.kind.as_str() {
        "kill_process" => command::Kind::KillProcess(KillProcess {}),
        "kill_agent" => command::Kind::KillAgent(KillAgent {}),
        "kill_chain" => command::Kind::KillChain(KillChain {}),
        "quarantine" => command::Kind::Quarantine(Quarantine {}),
        "release" => command::Kind::Release(Release {}),
        "revoke_credential" => command::Kind::RevokeCredential(RevokeCredential {
            action: a
                .params
                .get("action")
                .and_then(|m| EnforcementAction::from_name(m))
                .unwrap_or(EnforcementAction::Kill)
                .into(),
        }),
        "policy_update" => command::Kind::PolicyUpdate(PolicyUpdate {
            version: a
                .params
                .get("version")
                .and_then(|v| v.parse().ok())
                .unwrap_or_default(),
            rules: a.host_rules.clone(),
        }),
        _ => return None,
    })
}

/// The delivery state a sensor's answer puts a host in: "ok", "partial", "failed"
/// or "unsupported". Answers with another status are refused before they are
/// recorded (`result_check`); reading one as failed only guards a caller that
/// skipped the check.
pub fn state(r: &CommandResult) -> &'static str {
    match CommandStatus::known(r.status) {
        Some(s @ (CommandStatus::Ok | CommandStatus::Partial | CommandStatus::Unsupported)) => {
            s.name()
        }
        Some(CommandStatus::Failed | CommandStatus::Unspecified) | None => "failed",
    }
}
