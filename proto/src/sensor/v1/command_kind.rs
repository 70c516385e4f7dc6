//! Names of command kinds, for logs, counters and the operator API (which names an
//! action's kind the same way: the `Command.kind` oneof's field names).

use super::{Command, command::Kind};

impl Kind {
    /// "kill_process", "kill_agent", "kill_chain", "quarantine", "release",
    /// "revoke_credential" or "policy_update".
    pub fn name(&self) -> &'static str {
        match self {
            Kind::KillProcess(_) => "kill_process",
            Kind::KillAgent(_) => "kill_agent",
            Kind::KillChain(_) => "kill_chain",
            Kind::Quarantine(_) => "quarantine",
            Kind::Release(_) => "release",
            Kind::RevokeCredential(_) => "revoke_credential",
            Kind::PolicyUpdate(_) => "policy_update",
        }
    }
}

impl Command {
    /// The kind's name; "unknown" for a command without a kind this build knows (a
    /// newer collector's, which prost leaves unset).
    pub fn kind_name(&self) -> &'static str {
        self.kind.as_ref().map_or("unknown", Kind::name)
    }
}
