//! The credential watch, on the enforcement side of the daemon: the credentials a
//! process must not show — revoked ones (a `revoke_credential` command, cached in
//! `state_dir/revoked.json` by [`crate::revocation`]) and those a kernel policy
//! forbids to some agents — checked against what the pipeline saw. A sighting of one
//! is a [`Violation`], stopped on sight (`sighting.rs`); a held process is vetted by
//! the same checks through its hold (`hold/`).

use std::collections::HashMap;

use agent_user::credential::Credential;
use custody_proto::enums::WireEnum;
use custody_proto::sensor::v1::{EnforcementAction, EnforcementApplied};

use crate::hold::Hit;
use crate::pipeline::Sighting;
use crate::policy::compile::CredEntry;
use crate::proctable::ProcTable;
use crate::revocation::Revocations;

/// A process seen holding or using a revoked (or policy-forbidden) credential.
#[derive(Clone, Debug)]
pub struct Violation {
    pub tgid: u32,
    pub tid: u32,
    pub start_ticks: u64,
    pub start_boottime: u64,
    pub fingerprint: String,
    pub seen_in: String,
    pub action: String,
    pub command_id: String,
    /// Seen while the process was held (at exec: stopped before it ran; before a TLS
    /// send: stopped before the request left).
    pub held: bool,
    /// The policy that forbids the credential to this agent ("" for a revocation).
    pub policy: String,
}

impl Violation {
    /// What the sensor reports having done about it, on its own authority.
    pub fn enforcement(&self, applied: bool, error: String) -> EnforcementApplied {
        EnforcementApplied {
        // The violation's action is one the sensor chose: "kill" or "quarantine".
        action: EnforcementAction::from_name(&self.action)
            .unwrap_or(EnforcementAction::Kill)
            .into(),
        reason: match (self.held, self.seen_in.as_str()) {
            _ if !self.policy.is_empty() => format!(
                "policy {}: credential forbidden to this agent seen in {}{}",
                self.policy,
                self.seen_in,
                match (self.held, self.seen_in.as_str()) {
                    (true, "env") => "; held at exec, stopped before it ran",
                    (true, _) => "; held before send, stopped before the request left",
                    _ => "",
                }
            ),
            (true, "env") => format!(
                "revoked credential seen in {}; held at exec, stopped before it ran",
                self.seen_in
            ),
            (true, _) if self.fingerprint.is_empty() => "request held before send could not be vetted (record lost, buffer unreadable): quarantined fail-closed".to_string(),
            (true, _) => format!(
                "revoked credential seen in {}; held before send, stopped before the request left",
                self.seen_in
            ),
            (false, _) => format!("revoked credential seen in {}", self.seen_in),
        },
        command_id: self.command_id.clone(),
        credential_fingerprint: self.fingerprint.clone(),
        seen_in: self.seen_in.clone(),
        applied,
        error,
}
    }
}

#[derive(Default)]
pub struct CredentialWatch {
    /// Revoked credential fingerprints → (action, command id): stopped on sight.
    revoked: HashMap<String, (String, String)>,
    /// Credentials the kernel policy forbids to some agents (stopped on sight like
    /// revocations, for processes of those agents only), and the policy_update
    /// command that brought them.
    policy_creds: Vec<CredEntry>,
    policy_command: String,
    /// Processes stopped for a credential a kernel policy forbids to their agent.
    pub policy_stops: u64,
}

impl CredentialWatch {
    /// The watch with the revocations cached on this host.
    pub fn new(revocations: &Revocations) -> Self {
        let mut w = CredentialWatch::default();
        for (fp, r) in &revocations.by_fingerprint {
            w.revoke(fp.clone(), r.action.clone(), r.command_id.clone());
        }
        w
    }

    /// Watch for a revoked credential from now on.
    pub fn revoke(&mut self, fingerprint: String, action: String, command_id: String) {
        self.revoked.insert(fingerprint, (action, command_id));
    }

    /// The credential rules of the policy set now in force (replacing the last).
    pub fn set_policy(&mut self, creds: Vec<CredEntry>, command_id: String) {
        self.policy_creds = creds;
        self.policy_command = command_id;
    }

    /// Whether there is anything to watch for (what the hold is armed for).
    pub fn is_watching(&self) -> bool {
        !self.revoked.is_empty() || !self.policy_creds.is_empty()
    }

    /// A credential sighting that must be stopped: a revoked credential, else one a
    /// policy forbids to the process's agent.
    pub fn judge(&self, s: &Sighting) -> Option<Violation> {
        let (action, command_id, policy) = match self.revoked.get(&s.fingerprint) {
            Some((action, command_id)) => (action.clone(), command_id.clone(), String::new()),
            None => {
                let r = self.forbidden(s.agent.as_deref(), &s.fingerprint)?;
                (
                    r.action.clone(),
                    self.policy_command.clone(),
                    r.policy.clone(),
                )
            }
        };
        Some(Violation {
            tgid: s.tgid,
            tid: s.tgid,
            start_ticks: s.start_ticks,
            start_boottime: s.start_boottime,
            fingerprint: s.fingerprint.clone(),
            seen_in: s.seen_in.clone(),
            action,
            command_id,
            held: false,
            policy,
        })
    }

    /// The first revoked credential among `creds` (fingerprinted with the fleet key
    /// like every sighting), as a hold's hit.
    pub fn revoked_hit(&self, creds: &[Credential], seen_in: &str) -> Option<Hit> {
        creds.iter().find_map(|c| {
            self.revoked
                .get(&c.fingerprint)
                .map(|(action, command_id)| Hit {
                    fingerprint: c.fingerprint.clone(),
                    action: action.clone(),
                    command_id: command_id.clone(),
                    seen_in: seen_in.into(),
                    policy: String::new(),
                })
        })
    }

    /// The first credential among `creds` that a kernel policy forbids to `agent`,
    /// as a hold's hit.
    pub fn forbidden_hit(
        &self,
        agent: Option<&str>,
        creds: &[Credential],
        seen_in: &str,
    ) -> Option<Hit> {
        creds.iter().find_map(|c| {
            let r = self.forbidden(agent, &c.fingerprint)?;
            Some(Hit {
                fingerprint: c.fingerprint.clone(),
                action: r.action.clone(),
                command_id: self.policy_command.clone(),
                seen_in: seen_in.into(),
                policy: r.policy.clone(),
            })
        })
    }

    /// The kernel policy rule forbidding `fingerprint` to `agent`. Rules for every
    /// agent apply to tracked processes, i.e. those of an agent.
    fn forbidden(&self, agent: Option<&str>, fingerprint: &str) -> Option<&CredEntry> {
        let agent = agent?;
        self.policy_creds
            .iter()
            .find(|c| c.fingerprint == fingerprint && c.agent.as_deref().is_none_or(|a| a == agent))
    }

    /// Live processes of the credential rules' agents that have shown a credential
    /// a rule forbids them (stopped when the rules arrive): (tgid, rule, seen in).
    pub fn policy_holders(&self, table: &ProcTable) -> Vec<(u32, CredEntry, String)> {
        let mut out = Vec::new();
        if self.policy_creds.is_empty() {
            return out;
        }
        for t in table.tgids() {
            let Some(p) = table.get(t) else { continue };
            let agent = p.agent.as_ref().map(|a| a.id.as_str());
            for seen in &p.seen_credentials {
                let mut parts = seen.split('|');
                let fp = parts.next().unwrap_or("");
                let source = parts.next().unwrap_or("").to_string();
                if let Some(r) = self.forbidden(agent, fp) {
                    out.push((t, r.clone(), source));
                    break;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
