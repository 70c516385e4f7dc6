//! Delivering an action: one command per host over its sensor stream, at once or
//! when the host reconnects, and the per-host confirmations that come back (what
//! was affected, how long it took); revocation hooks run after delivery.

use custody_proto::admin::v1::{Action, AuditEntry, HostDelivery};
use custody_proto::sensor::v1::CommandResult;

use std::collections::BTreeMap;

use std::sync::atomic::Ordering;

use super::{Responder, bump, hook, overall, result_check, terminal, wire};
use crate::clock::now_ns;

impl Responder {
    /// Sends every undelivered host part of an action to the hosts that are connected.
    pub(super) async fn deliver_action(&self, id: &str) {
        let Some(a) = self.get(id) else { return };
        for (i, d) in a.hosts.iter().enumerate() {
            if d.state == "pending" {
                self.send(&a, i).await;
            }
        }
    }

    /// Sends one delivery if its host is connected, marking it sent.
    pub(super) async fn send(&self, a: &Action, i: usize) {
        let d = &a.hosts[i];
        let cmd = wire::command(a, d, d.follow_up.then_some(i));
        if self.streams.send_command(&d.host, cmd).await {
            bump(&self.metrics.sent, a.kind.clone());
            let mut actions = self.lock();
            if let Some(a) = actions.get_mut(&a.id)
                && let Some(d) = a.hosts.get_mut(i)
                && d.state == "pending"
            {
                d.state = "sent".into();
                d.sent_ns = now_ns();
                let _ = self.save(a);
            }
        }
    }

    /// A host (re)connected: deliver what it missed, including fleet-wide
    /// revocations issued before it enrolled.
    pub async fn host_connected(&self, host: &str) {
        let mut todo = Vec::new();
        {
            let mut actions = self.lock();
            for a in actions.values_mut() {
                if a.kind == "revoke_credential"
                    && a.active
                    && !a.hosts.iter().any(|d| d.host == host)
                {
                    a.hosts.push(HostDelivery {
                        host: host.to_string(),
                        targets: vec![a.target.clone()],
                        state: "pending".into(),
                        ..Default::default()
                    });
                    a.status = overall(a).into();
                    let _ = self.save(a);
                }
                for (i, d) in a.hosts.iter_mut().enumerate() {
                    // "sent" without an answer: the stream broke before the result
                    // came back; the sensor may not have applied it.
                    if d.host == host && (d.state == "pending" || d.state == "sent") {
                        d.state = "pending".into();
                        todo.push((a.id.clone(), i));
                    }
                }
            }
        }
        for (id, i) in todo {
            if let Some(a) = self.get(&id) {
                self.send(&a, i).await;
            }
        }
    }

    /// A sensor's answer: checked ([`result_check`]), then recorded on the action
    /// and in the audit log.
    pub fn command_result(&self, host: &str, r: &CommandResult) {
        let mut r = r.clone();
        let checked = match result_check::check(host, &mut r) {
            Ok(c) => c,
            Err(why) => {
                self.metrics.refused.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.metrics.result_log.allow() {
                    tracing::warn!(%host, suppressed, "refused a command result: {why}");
                }
                return;
            }
        };
        if checked.foreign > 0 {
            self.metrics
                .foreign_affected
                .fetch_add(checked.foreign as u64, Ordering::Relaxed);
            if let Some(suppressed) = self.metrics.result_log.allow() {
                tracing::warn!(%host, id = %r.command_id, dropped = checked.foreign, suppressed,
                    "command result named processes of another host as affected; they were dropped");
            }
        }
        let r = &r;
        let (action_id, follow) = match r.command_id.split_once('.') {
            Some((a, i)) => (a.to_string(), i.parse::<usize>().ok()),
            None => (r.command_id.clone(), None),
        };
        let now = now_ns();
        let mut actions = self.lock();
        let Some(a) = actions.get_mut(&action_id) else {
            drop(actions);
            tracing::warn!(%host, id = %r.command_id, "result for an unknown command");
            let _ = self.engine.audit(AuditEntry {
                actor: format!("host:{host}"),
                action: "command_result".into(),
                target: r.command_id.clone(),
                reason: r.message.clone(),
                result: format!("unknown command: {}", wire::state(r)),
                ..Default::default()
            });
            return;
        };
        let idx = match follow {
            Some(i) => Some(i).filter(|&i| a.hosts.get(i).is_some_and(|d| d.host == host)),
            None => a.hosts.iter().position(|d| d.host == host && !d.follow_up),
        };
        let Some(i) = idx else {
            tracing::warn!(%host, id = %r.command_id, "result from a host the action did not target");
            return;
        };
        let d = &mut a.hosts[i];
        if terminal(&d.state) {
            // A redelivered command answered twice: the first answer stands.
            return;
        }
        let state = wire::state(r);
        bump(&self.metrics.results, (a.kind.clone(), state.to_string()));
        d.state = state.into();
        d.message = r.message.clone();
        d.affected_exec_ids = r.affected_exec_ids.clone();
        d.confirmed_ns = now;
        d.received_ns = r.received_ns;
        d.completed_ns = r.completed_ns;
        d.effect_ns = r.completed_ns.saturating_sub(a.issued_at_ns);
        let d = d.clone();
        a.status = overall(a).into();
        let a = a.clone();
        let _ = self.save(&a);
        drop(actions);
        self.covered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(a.id.clone())
            .or_default()
            .extend(d.affected_exec_ids.iter().cloned());
        let mut details = BTreeMap::new();
        details.insert("affected".to_string(), d.affected_exec_ids.join(","));
        details.insert(
            "command_to_effect_ms".to_string(),
            format!("{:.3}", d.effect_ns as f64 / 1e6),
        );
        details.insert(
            "apply_ms".to_string(),
            format!("{:.3}", r.apply_ns as f64 / 1e6),
        );
        details.insert(
            "round_trip_ms".to_string(),
            format!(
                "{:.3}",
                d.confirmed_ns.saturating_sub(d.sent_ns) as f64 / 1e6
            ),
        );
        if d.follow_up {
            details.insert("follow_up".into(), "true".into());
        }
        if checked.foreign > 0 {
            details.insert(
                "foreign_affected_dropped".into(),
                checked.foreign.to_string(),
            );
        }
        if checked.over_cap > 0 {
            details.insert("affected_over_cap".into(), checked.over_cap.to_string());
        }
        let _ = self.engine.audit(AuditEntry {
            actor: format!("host:{host}"),
            action: "confirm".into(),
            target: d.targets.join(","),
            reason: r.message.clone(),
            result: d.state.clone(),
            action_id: a.id.clone(),
            details: details.into_iter().collect(),
            ..Default::default()
        });
    }

    /// Issuer hooks for a revocation; outcomes go on the action and the audit log.
    pub(super) async fn run_hooks(&self, id: &str) {
        let Some(a) = self.get(id) else { return };
        let (kind, metadata) = {
            let st = self.engine.read();
            match st.fleet.creds.get(&a.target) {
                Some(c) => (c.kind.clone(), c.metadata.clone()),
                None => (String::new(), BTreeMap::new()),
            }
        };
        let subject = hook::Subject {
            fingerprint: &a.target,
            kind: &kind,
            metadata: &metadata,
            reason: &a.reason,
            action_id: &a.id,
        };
        let mut results = Vec::new();
        for h in self.hooks.iter().filter(|h| h.applies_to(&kind)) {
            let r = h.call(&self.http, &subject).await;
            if r.status != "ok" {
                tracing::warn!(hook = %h.name, action = %a.id, "issuer hook failed: {}", r.message);
            }
            let mut details = BTreeMap::new();
            details.insert("url".to_string(), r.url.clone());
            details.insert("http_status".to_string(), r.http_status.to_string());
            details.insert(
                "duration_ms".to_string(),
                format!("{:.1}", r.duration_ns as f64 / 1e6),
            );
            let _ = self.engine.audit(AuditEntry {
                actor: "collector".into(),
                action: "issuer_hook".into(),
                target: a.target.clone(),
                reason: r.message.clone(),
                result: r.status.clone(),
                action_id: a.id.clone(),
                details: details.into_iter().collect(),
                ..Default::default()
            });
            results.push(r);
        }
        if results.is_empty() {
            return;
        }
        let mut actions = self.lock();
        if let Some(a) = actions.get_mut(id) {
            a.hooks = results;
            let _ = self.save(a);
        }
    }
}
