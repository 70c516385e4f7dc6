//! Issuing a response action: checking the request and resolving its target to
//! hosts and processes, refusing duplicates, recording and auditing the action,
//! then handing it to delivery; releases retire what they release. Policy updates
//! are issued here too, as an action per policy version.

use std::collections::BTreeMap;

use anyhow::Result;

use custody_proto::admin::v1::{
    Action, AuditEntry, HostDelivery, RespondRequest, respond_request::Target,
};

use custody_proto::sensor::v1::HostRules;

use super::{DUPLICATE_WINDOW_NS, Issuer, Responder, ResponseError, resolve};
use crate::clock::now_ns;

impl Responder {
    /// Checks, resolves, records and delivers an operator's action.
    pub async fn respond(&self, who: Issuer, req: RespondRequest) -> Result<Action, ResponseError> {
        let reason = req.reason.trim().to_string();
        if reason.is_empty() {
            return Err(ResponseError::invalid(
                "a reason is required: it goes to the audit log with the action",
            ));
        }
        let target = req.target.clone().ok_or_else(|| {
            ResponseError::invalid(
                "no target: name a process, an agent, a chain, a credential or (release) an action",
            )
        })?;
        let (kind, scope, tgt) = match (req.verb.as_str(), &target) {
            ("kill", Target::Process(p)) => ("kill_process", "process", p),
            ("kill", Target::Agent(a)) => ("kill_agent", "agent", a),
            ("kill", Target::Chain(c)) => ("kill_chain", "chain", c),
            ("quarantine", Target::Process(p)) => ("quarantine", "process", p),
            ("quarantine", Target::Agent(a)) => ("quarantine", "agent", a),
            ("quarantine", Target::Chain(c)) => ("quarantine", "chain", c),
            ("release", Target::Process(p)) => ("release", "process", p),
            ("release", Target::Agent(a)) => ("release", "agent", a),
            ("release", Target::Chain(c)) => ("release", "chain", c),
            ("release", Target::Action(a)) => ("release", "action", a),
            ("revoke", Target::Credential(f)) => ("revoke_credential", "credential", f),
            (v @ ("kill" | "quarantine" | "release" | "revoke"), t) => {
                return Err(ResponseError::invalid(format!(
                    "{v} cannot target {}: kill/quarantine take a process, agent or chain; \
                     release also takes an action; revoke takes a credential",
                    match t {
                        Target::Process(_) => "a process",
                        Target::Agent(_) => "an agent",
                        Target::Chain(_) => "a chain",
                        Target::Credential(_) => "a credential",
                        Target::Action(_) => "an action",
                    }
                )));
            }
            (v, _) => {
                return Err(ResponseError::invalid(format!(
                    "unknown verb {v:?}: expected kill, quarantine, release or revoke"
                )));
            }
        };
        let tgt = tgt.trim().to_string();
        let mode = match req.revoke_mode.as_str() {
            "" | "kill" => "kill",
            "quarantine" => "quarantine",
            m => {
                return Err(ResponseError::invalid(format!(
                    "revoke mode {m:?}: expected kill or quarantine"
                )));
            }
        };
        let now = now_ns();
        let resolved = {
            let st = self.engine.read();
            match scope {
                "process" => resolve::process(&st, &tgt, now),
                "agent" => resolve::agent(&st, &tgt),
                "chain" => resolve::chain(&st, &tgt),
                "credential" => resolve::credential(&st, &tgt, req.allow_unknown),
                _ => self.resolve_release_of(&tgt),
            }?
        };
        let mut params = std::collections::HashMap::new();
        if kind == "revoke_credential" {
            params.insert("action".to_string(), mode.to_string());
        }
        // Refuse a second identical action rather than act twice.
        {
            let actions = self.lock();
            if let Some(prev) = actions.values().find(|a| {
                a.kind == kind
                    && a.scope == scope
                    && a.target == tgt
                    && a.params == params
                    && (a.active
                        || (kind.starts_with("kill_")
                            && now.saturating_sub(a.issued_at_ns) < DUPLICATE_WINDOW_NS))
            }) {
                return Err(ResponseError::Duplicate {
                    action_id: prev.id.clone(),
                    message: format!(
                        "identical to action {} issued by {} {:.0} s ago (status {}{}); nothing sent",
                        prev.id,
                        prev.operator,
                        now.saturating_sub(prev.issued_at_ns) as f64 / 1e9,
                        prev.status,
                        if prev.active { ", still in force" } else { "" }
                    ),
                });
            }
        }
        let id = self.new_id(now);
        let mut action = Action {
            id: id.clone(),
            kind: kind.into(),
            scope: scope.into(),
            target: tgt.clone(),
            reason: reason.clone(),
            operator: who.name.clone(),
            role: who.role.clone(),
            issued_at_ns: now,
            status: "pending".into(),
            notes: resolved.notes,
            active: matches!(
                kind,
                "quarantine" | "revoke_credential" | "kill_chain" | "kill_agent"
            ),
            params,
            ..Default::default()
        };
        for (host, targets) in resolved.hosts {
            action.hosts.push(HostDelivery {
                host,
                targets,
                state: "pending".into(),
                ..Default::default()
            });
        }
        let mut details = BTreeMap::new();
        details.insert("scope".to_string(), scope.to_string());
        details.insert(
            "hosts".to_string(),
            action
                .hosts
                .iter()
                .map(|h| h.host.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        if kind == "revoke_credential" {
            details.insert("mode".into(), mode.into());
        }
        if !action.notes.is_empty() {
            details.insert("notes".into(), action.notes.join("; "));
        }
        // Audited before anything is sent: an action that reaches a host is always
        // in the log.
        self.engine
            .audit(AuditEntry {
                time_ns: now,
                actor: who.name.clone(),
                role: who.role.clone(),
                action: kind.into(),
                target: tgt.clone(),
                reason: reason.clone(),
                result: "issued".into(),
                action_id: id.clone(),
                details: details.into_iter().collect(),
                ..Default::default()
            })
            .map_err(|e| ResponseError::storage(format!("audit log: {e:#}")))?;
        self.covered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id.clone(),
                action
                    .hosts
                    .iter()
                    .flat_map(|h| h.targets.clone())
                    .collect(),
            );
        if kind == "release" {
            self.retire_released(&action);
        }
        self.lock().insert(id.clone(), action.clone());
        self.save(&action)
            .map_err(|e| ResponseError::storage(format!("storing the action: {e:#}")))?;
        self.deliver_action(&id).await;
        if kind == "revoke_credential" && !self.hooks.is_empty() {
            self.run_hooks(&id).await;
        }
        let a = self.get(&id).unwrap_or(action);
        Ok(a)
    }

    /// Delivers a new policy version's host rules to every enrolled host (and to
    /// hosts that connect later); the previous version's delivery stops following.
    pub async fn push_policy(&self, who: Issuer, version: u64, rules: HostRules) -> Result<Action> {
        let now = now_ns();
        let id = self.new_id(now);
        let hosts: Vec<String> = self.engine.read().fleet.hosts.keys().cloned().collect();
        let mut params = std::collections::HashMap::new();
        params.insert("version".to_string(), version.to_string());
        let action = Action {
            id: id.clone(),
            kind: "policy_update".into(),
            scope: "fleet".into(),
            target: format!("policy v{version}"),
            reason: format!("policy set v{version} applied"),
            operator: who.name.clone(),
            role: who.role.clone(),
            issued_at_ns: now,
            status: "pending".into(),
            active: true,
            params,
            host_rules: Some(rules),
            hosts: hosts
                .into_iter()
                .map(|host| HostDelivery {
                    targets: vec![format!("v{version}")],
                    host,
                    state: "pending".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        self.engine.audit(AuditEntry {
            time_ns: now,
            actor: who.name,
            role: who.role,
            action: "policy_update".into(),
            target: action.target.clone(),
            reason: action.reason.clone(),
            result: "issued".into(),
            action_id: id.clone(),
            ..Default::default()
        })?;
        {
            let mut actions = self.lock();
            for a in actions.values_mut() {
                if a.kind == "policy_update" && a.active {
                    a.active = false;
                    a.released_by_action = id.clone();
                    let _ = self.save(a);
                }
            }
            actions.insert(id.clone(), action.clone());
        }
        self.save(&action)?;
        self.deliver_action(&id).await;
        Ok(self.get(&id).unwrap_or(action))
    }

    /// release --action: everything the quarantine put in force, per host.
    pub(super) fn resolve_release_of(&self, id: &str) -> Result<resolve::Resolved, ResponseError> {
        let actions = self.lock();
        let a = actions.get(id).ok_or_else(|| {
            ResponseError::not_found(format!("no action {id:?} (see `custodyctl actions`)"))
        })?;
        if a.kind != "quarantine" {
            return Err(ResponseError::invalid(format!(
                "action {id} is a {}; only a quarantine can be released",
                a.kind
            )));
        }
        if !a.active {
            return Err(ResponseError::not_applicable(format!(
                "quarantine {id} was already released by {}",
                a.released_by_action
            )));
        }
        let mut r = resolve::Resolved::default();
        for h in &a.hosts {
            let mut t: Vec<String> = h.targets.clone();
            for x in &h.affected_exec_ids {
                if !t.contains(x) {
                    t.push(x.clone());
                }
            }
            r.hosts.insert(h.host.clone(), t);
        }
        Ok(r)
    }

    /// A release ends the quarantines it covers.
    pub(super) fn retire_released(&self, rel: &Action) {
        let mut actions = self.lock();
        let ids: Vec<String> = actions
            .values()
            .filter(|a| {
                a.kind == "quarantine"
                    && a.active
                    && if rel.scope == "action" {
                        a.id == rel.target
                    } else {
                        a.scope == rel.scope && a.target == rel.target
                    }
            })
            .map(|a| a.id.clone())
            .collect();
        for id in ids {
            if let Some(a) = actions.get_mut(&id) {
                a.active = false;
                a.released_by_action = rel.id.clone();
                let _ = self.save(a);
            }
        }
    }
}
