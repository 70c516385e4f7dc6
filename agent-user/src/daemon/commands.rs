//! Commands from the collector (kill, quarantine, release, revoke, policy update):
//! where they come from, how a policy set is put in force, and how results are
//! answered.

use std::sync::{Arc, Mutex};

use agent_user::shipper::ShipperHandle;
use custody_proto::sensor::v1::{Command as SensorCommand, CommandResult, Event};

use crate::pipeline::{self, Pipeline};
use crate::sighting::stop_on_sight;
use crate::report::metrics;
use crate::{enforce, hold, policy, response};

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
    kind: String,
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
                        status: "failed".into(),
                        message: format!("confirmation task failed: {e}"),
                        ..Default::default()
                    })
            };
            if let Ok(mut c) = counts.lock() {
                *c.commands.entry((kind, r.status.clone())).or_default() += 1;
            }
            tracing::info!(id = %r.command_id, status = %r.status, affected = r.affected_exec_ids.len(), apply_ms = r.apply_ns as f64 / 1e6, "command applied");
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
) -> (String, String, Vec<Event>, Vec<String>) {
    if pol.is_stale(&p.version) {
        return (
            "ok".into(),
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
    if status == "failed" {
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
