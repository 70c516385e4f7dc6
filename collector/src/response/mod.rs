//! Response actions: kill, quarantine, release and credential revocation, issued by
//! a responder (or a policy), audited in the hash-chained log, delivered to every
//! affected host over its sensor stream — at once, or when an offline host comes
//! back — and confirmed per host with what was affected and how long it took.
//!
//! Actions are stored in sled, so pending deliveries survive a collector restart.
//! Kills follow their scope for a while and quarantines until released: a process
//! that joins a killed chain (or starts as a quarantined agent) after the command
//! gets a follow-up command as soon as its first event arrives (see [`follow`]).

pub mod follow;
pub mod hook;
pub mod resolve;
pub mod wire;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use custody_proto::admin::v1::{
    Action, AuditEntry, HostDelivery, RespondRequest, respond_request::Target,
};
use custody_proto::sensor::v1::{CommandResult, HostRules};
use tonic::Status;

use crate::auth::{Operator, now_ns};
use crate::engine::Engine;
use crate::sensor_service::Sessions;
use crate::store;

/// Kills keep following their scope (new processes of the chain / agent) this long.
pub const KILL_FOLLOW_NS: u64 = 10 * 60 * 1_000_000_000;
/// An identical kill within this window is refused as a duplicate.
const DUPLICATE_WINDOW_NS: u64 = 60 * 1_000_000_000;

fn key(id: &str) -> Vec<u8> {
    store::prefixed(store::ACTION, &[id.as_bytes()])
}

/// Who issued an action.
#[derive(Clone, Debug)]
pub struct Issuer {
    pub name: String,
    pub role: String,
}

impl From<&Operator> for Issuer {
    fn from(op: &Operator) -> Self {
        Issuer {
            name: op.name.clone(),
            role: op.role.as_str().into(),
        }
    }
}

pub struct Responder {
    engine: Arc<Engine>,
    sessions: Arc<Sessions>,
    actions: Mutex<BTreeMap<String, Action>>,
    /// Exec ids each action has already reached (targets and affected), so follow-ups
    /// go out once per new process.
    covered: Mutex<BTreeMap<String, HashSet<String>>>,
    hooks: Vec<hook::Hook>,
    http: reqwest::Client,
    seq: std::sync::atomic::AtomicU64,
    pub metrics: ResponseMetrics,
}

/// Command counters since start (metrics); commands are rare, so a lock is fine.
#[derive(Default)]
pub struct ResponseMetrics {
    /// Commands delivered to a sensor stream, by kind.
    pub sent: Mutex<BTreeMap<String, u64>>,
    /// Sensor answers, by (kind, status).
    pub results: Mutex<BTreeMap<(String, String), u64>>,
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K) {
    *m.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(k)
        .or_default() += 1;
}

fn terminal(state: &str) -> bool {
    matches!(state, "ok" | "partial" | "failed" | "unsupported")
}

/// Overall status from the per-host states.
/// Follow-ups are listed with the action but do not change its status: a follow-up
/// often finds its process already dead from the kernel's inherited mark.
fn overall(a: &Action) -> &'static str {
    let mut hosts = a.hosts.iter().filter(|h| !h.follow_up).peekable();
    if hosts.peek().is_none() {
        return "done";
    }
    let hosts: Vec<_> = hosts.collect();
    if hosts.iter().any(|h| !terminal(&h.state)) {
        "pending"
    } else if hosts.iter().all(|h| h.state == "ok") {
        "done"
    } else if hosts
        .iter()
        .any(|h| h.state == "ok" || h.state == "partial")
    {
        "partial"
    } else {
        "failed"
    }
}

impl Responder {
    pub fn open(
        engine: Arc<Engine>,
        sessions: Arc<Sessions>,
        hooks: Vec<hook::Hook>,
    ) -> Result<Arc<Responder>> {
        let mut actions = BTreeMap::new();
        let mut covered = BTreeMap::new();
        for r in engine.store().scan(store::ACTION, false) {
            let (_, v) = r?;
            let a: Action = serde_json::from_slice(&v)?;
            let c: HashSet<String> = a
                .hosts
                .iter()
                .flat_map(|h| h.targets.iter().chain(&h.affected_exec_ids).cloned())
                .collect();
            covered.insert(a.id.clone(), c);
            actions.insert(a.id.clone(), a);
        }
        // reqwest's TLS uses the process-wide rustls provider; ours is ring (an
        // error only means one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("custody-collector/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Arc::new(Responder {
            engine,
            sessions,
            actions: Mutex::new(actions),
            covered: Mutex::new(covered),
            hooks,
            http,
            seq: Default::default(),
            metrics: Default::default(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Action>> {
        self.actions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, a: &Action) -> Result<()> {
        let v = serde_json::to_vec(a)?;
        self.engine.store().insert(key(&a.id), v)?;
        self.engine.store().flush()
    }

    fn new_id(&self, now: u64) -> String {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("act-{now:x}-{n}")
    }

    pub fn get(&self, id: &str) -> Option<Action> {
        self.lock().get(id).cloned()
    }

    /// Newest first.
    pub fn list(&self, limit: usize, active_only: bool) -> Vec<Action> {
        let mut v: Vec<Action> = self
            .lock()
            .values()
            .filter(|a| !active_only || a.active)
            .cloned()
            .collect();
        v.sort_by(|a, b| b.issued_at_ns.cmp(&a.issued_at_ns).then(b.id.cmp(&a.id)));
        v.truncate(limit);
        v
    }

    /// Actions by (kind, status), and host deliveries not yet answered (pending or
    /// sent; follow-ups included).
    pub fn summary(&self) -> (BTreeMap<(String, String), u64>, u64) {
        let mut by = BTreeMap::new();
        let mut open = 0;
        for a in self.lock().values() {
            *by.entry((a.kind.clone(), a.status.clone())).or_default() += 1;
            open += a.hosts.iter().filter(|d| !terminal(&d.state)).count() as u64;
        }
        (by, open)
    }

    /// Checks, resolves, records and delivers an operator's action.
    pub async fn respond(&self, who: Issuer, req: RespondRequest) -> Result<Action, Status> {
        let reason = req.reason.trim().to_string();
        if reason.is_empty() {
            return Err(Status::invalid_argument(
                "a reason is required: it goes to the audit log with the action",
            ));
        }
        let target = req.target.clone().ok_or_else(|| {
            Status::invalid_argument(
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
                return Err(Status::invalid_argument(format!(
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
                return Err(Status::invalid_argument(format!(
                    "unknown verb {v:?}: expected kill, quarantine, release or revoke"
                )));
            }
        };
        let tgt = tgt.trim().to_string();
        let mode = match req.revoke_mode.as_str() {
            "" | "kill" => "kill",
            "quarantine" => "quarantine",
            m => {
                return Err(Status::invalid_argument(format!(
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
                return Err(Status::already_exists(format!(
                    "identical to action {} issued by {} {:.0} s ago (status {}{}); nothing sent",
                    prev.id,
                    prev.operator,
                    now.saturating_sub(prev.issued_at_ns) as f64 / 1e9,
                    prev.status,
                    if prev.active { ", still in force" } else { "" }
                )));
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
            .map_err(|e| Status::internal(format!("audit log: {e:#}")))?;
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
            .map_err(|e| Status::internal(format!("storing the action: {e:#}")))?;
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
    fn resolve_release_of(&self, id: &str) -> Result<resolve::Resolved, Status> {
        let actions = self.lock();
        let a = actions.get(id).ok_or_else(|| {
            Status::not_found(format!("no action {id:?} (see `custodyctl actions`)"))
        })?;
        if a.kind != "quarantine" {
            return Err(Status::invalid_argument(format!(
                "action {id} is a {}; only a quarantine can be released",
                a.kind
            )));
        }
        if !a.active {
            return Err(Status::failed_precondition(format!(
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
    fn retire_released(&self, rel: &Action) {
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

    /// Sends every undelivered host part of an action to the hosts that are connected.
    async fn deliver_action(&self, id: &str) {
        let Some(a) = self.get(id) else { return };
        for (i, d) in a.hosts.iter().enumerate() {
            if d.state == "pending" {
                self.send(&a, i).await;
            }
        }
    }

    /// Sends one delivery if its host is connected, marking it sent.
    async fn send(&self, a: &Action, i: usize) {
        let d = &a.hosts[i];
        let cmd = wire::command(a, d, d.follow_up.then_some(i));
        if self.sessions.send_command(&d.host, cmd).await {
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

    /// A sensor's answer: recorded on the action and in the audit log.
    pub fn command_result(&self, host: &str, r: &CommandResult) {
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
    async fn run_hooks(&self, id: &str) {
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
