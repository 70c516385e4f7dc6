//! Commands from the collector (kill, quarantine, release, revoke, policy update):
//! where they come from, how each is applied by the daemon (the wire command is read
//! once, into an [`orders::Order`]), how a policy set is put in force, and how
//! results are answered.

use std::collections::BTreeMap;

use anyhow::Result;
use custody_proto::enums::WireEnum;
use custody_proto::sensor::v1::{Command as SensorCommand, CommandResult, CommandStatus, Event};

use super::Daemon;
use super::orders::{self, Order};
use crate::policy::rules::HostRulesExt;
use crate::sighting::DaemonJudge;
use crate::watch::Violation;
use crate::{clock, policy, response};

/// A policy update whose endpoint names were resolved off the loop: the command,
/// when it was received (ns), and the rules ready to be put in force.
pub(super) type PolicyResolved = (SensorCommand, u64, policy::Pending);

pub(crate) async fn next_command(
    rx: &mut Option<tokio::sync::mpsc::Receiver<SensorCommand>>,
) -> Option<SensorCommand> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// How long names in endpoint rules may take to resolve when a policy arrives.
pub(crate) const POLICY_RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl Daemon {
    /// A command from the collector. Response actions (kill, quarantine, revoke)
    /// arrive here, only ever over the authenticated collector stream.
    pub(super) fn on_command(&mut self, cmd: SensorCommand) {
        tracing::info!(id = %cmd.id, kind = cmd.kind_name(), reason = %cmd.reason, by = %cmd.issued_by, "command received");
        let received = clock::now_ns();
        let (result, kills) = match orders::read(&cmd) {
            Order::Policy {
                version,
                rules,
                raw,
            } => {
                self.resolve_policy(cmd, received, version, rules, raw);
                return;
            }
            Order::Unsupported(why) => {
                tracing::warn!(id = %cmd.id, kind = cmd.kind_name(), "command refused: {why}");
                let r = orders::refused(
                    &self.host_id,
                    &cmd,
                    CommandStatus::Unsupported,
                    received,
                    why,
                );
                (r, Vec::new())
            }
            Order::Revoke { action } => {
                let r = response::revoke(
                    &mut self.pipe,
                    &mut self.watch,
                    &mut self.revocations,
                    self.enforcer.as_mut(),
                    &mut self.ebpf,
                    &cmd,
                    action,
                );
                // From now on, new processes are vetted before they run.
                self.arm_holds();
                (r, Vec::new())
            }
            Order::Act(act) => match self.enforcer.as_mut() {
                Some(en) => response::apply(&self.pipe.table, en, &mut self.ebpf, &cmd, act),
                None => (
                    response::unavailable(
                        &self.host_id,
                        &cmd,
                        "enforcement is degraded on this host (see custodyd status)",
                    ),
                    Vec::new(),
                ),
            },
        };
        self.report.answer(cmd.kind_name(), result, kills);
    }

    /// A `policy_update`: names are resolved off the loop; the rules are put in
    /// force (and the command answered) when that is done, in
    /// [`Daemon::on_policy_resolved`].
    fn resolve_policy(
        &mut self,
        cmd: SensorCommand,
        received: u64,
        version: String,
        rules: policy::rules::HostRules,
        raw: serde_json::Value,
    ) {
        let names = rules.names();
        let fallback = self.policy.last_resolved();
        let mut p = policy::Pending {
            version,
            command_id: cmd.id.clone(),
            rules,
            raw,
            resolved: BTreeMap::new(),
            source: "collector".into(),
        };
        let tx = self.policy_tx.clone();
        tokio::spawn(async move {
            if !names.is_empty() {
                p.resolved = tokio::task::spawn_blocking(move || {
                    policy::resolve(&names, POLICY_RESOLVE_TIMEOUT, &fallback)
                })
                .await
                .unwrap_or_default();
            }
            let _ = tx.send((cmd, received, p)).await;
        });
    }

    /// A policy update ready: put it in force, report its enforcements, answer.
    pub(super) fn on_policy_resolved(&mut self, (cmd, received, p): PolicyResolved) -> Result<()> {
        let version = p.version.clone();
        let (status, message, events, affected) = self.apply_policy(p);
        self.report.emit_all(events)?;
        tracing::info!(%version, status = status.name(), "policy: {message}");
        let now = clock::now_ns();
        let r = CommandResult {
            command_id: cmd.id.clone(),
            host: self.host_id.clone(),
            status: status.into(),
            message,
            affected_exec_ids: affected,
            received_ns: received,
            completed_ns: now,
            apply_ns: now.saturating_sub(received),
        };
        self.report.answer(cmd.kind_name(), r, Vec::new());
        Ok(())
    }

    /// Put a policy set in force: the kernel maps (one generation switch), the
    /// pipeline's credential rules, the hold (armed while credential rules or
    /// revocations exist), and processes that already showed a forbidden credential
    /// are stopped. Returns (status, message, enforcement events, affected exec ids).
    pub(super) fn apply_policy(
        &mut self,
        p: policy::Pending,
    ) -> (CommandStatus, String, Vec<Event>, Vec<String>) {
        let pol = &mut self.policy;
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
        let (status, message) = pol.apply(p, &self.pipe.identity);
        // The policy's own status words ("ok", "partial", "failed") are the contract's.
        let status = CommandStatus::from_name(&status).unwrap_or(CommandStatus::Failed);
        if status == CommandStatus::Failed {
            return (status, message, Vec::new(), Vec::new());
        }
        let creds = pol.plan().map(|pl| pl.creds.clone()).unwrap_or_default();
        self.watch.set_policy(creds, command_id.clone());
        self.arm_holds();
        let holders = self.watch.policy_holders(&self.pipe.table);
        let mut judge = DaemonJudge {
            pipe: &mut self.pipe,
            watch: &mut self.watch,
            enforcer: self.enforcer.as_mut(),
            ebpf: &mut self.ebpf,
            out: Vec::new(),
        };
        let mut affected = Vec::new();
        for (tgid, rule, seen_in) in holders {
            let Some(p) = judge.pipe.table.get(tgid) else {
                continue;
            };
            let v = Violation {
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
            if judge.stop(&v) {
                affected.push(judge.pipe.table.exec_id(tgid, v.start_ticks));
            }
        }
        let events = judge.out;
        (status, message, events, affected)
    }
}
