//! The policy set in force: every stored event is evaluated against it (on its own
//! thread, fed by the ingest path with back-pressure, so nothing is skipped); a
//! denial raises an alert with the chain, the policy and the diagnostics, and
//! carries out the policy's `@response` through the response machinery, audited
//! and attributed to the policy. Applying a new set validates it first (the old one
//! stays on any error), stores it, and pushes the chain-independent part to every
//! sensor as kernel rules.

pub mod build_context;
pub mod cached_eval;
mod replay;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::Result;
use custody_proto::admin::v1::{
    self as admin, Alert, AuditEntry, PolicySetInfo, RespondRequest, respond_request::Target,
};
use custody_proto::sensor::v1::event::Kind;
use serde::{Deserialize, Serialize};

use crate::alerts::Alerts;
use crate::clock::now_ns;
use crate::engine::{Engine, StoredEvent};
use crate::event_key::key_to_id;
use crate::response::{Issuer, Responder, ResponseError};
use cached_eval::CachedEvaluator;
use custody_policy::{
    AgentInfo, Decision, Enforcement, Evaluator, HostRules, PolicyLoadError, PolicySet, Response,
    compile_host_rules,
};

/// Events waiting for evaluation before ingest is held back.
const QUEUE: usize = 65_536;

/// The setting holding the policy set in force.
const SOURCES: &str = "policy_sources";

/// The stored form of the active set.
#[derive(Serialize, Deserialize, Default, Clone)]
struct Stored {
    version: u64,
    applied_by: String,
    applied_ns: u64,
    sources: Vec<(String, String)>,
    rules_action_id: String,
}

struct Active {
    stored: Stored,
    set: PolicySet,
    evaluator: Evaluator,
    rules: HostRules,
}

#[derive(Default)]
pub struct PolicyMetrics {
    pub events: AtomicU64,
    pub decisions: AtomicU64,
    pub denied: AtomicU64,
    /// Events taken off the evaluation queue (actions or not).
    pub dequeued: AtomicU64,
    /// Time spent building contexts and evaluating, ns.
    pub eval_ns: AtomicU64,
}

pub struct LivePolicy {
    engine: Arc<Engine>,
    alerts: Arc<Alerts>,
    responder: Arc<Responder>,
    active: RwLock<Arc<Active>>,
    pub metrics: PolicyMetrics,
    rt: tokio::runtime::Handle,
}

/// Whether evaluation has anything to judge in this event.
pub fn is_action(ev: &custody_proto::sensor::v1::Event) -> bool {
    matches!(
        ev.kind,
        Some(
            Kind::Exec(_)
                | Kind::FileOpen(_)
                | Kind::FileUnlink(_)
                | Kind::FileRename(_)
                | Kind::Net(_)
                | Kind::Dns(_)
                | Kind::Credential(_)
                | Kind::HttpRequest(_)
                | Kind::LlmRequest(_)
                | Kind::Mcp(_)
        )
    )
}

fn agents_of(engine: &Engine) -> Vec<AgentInfo> {
    let st = engine.read();
    st.fleet
        .agents
        .values()
        .map(|a| AgentInfo {
            id: a.agent_id.clone(),
            name: a.name.clone(),
            declared: a.origin == "declared",
            kind: a.origin.clone(),
            ..Default::default()
        })
        .collect()
}

fn activate(engine: &Engine, stored: Stored) -> Result<Active, PolicyLoadError> {
    let set = PolicySet::from_sources(stored.sources.clone())?;
    let rules = compile_host_rules(&set, &agents_of(engine));
    Ok(Active {
        evaluator: Evaluator::new(&set),
        set,
        rules,
        stored,
    })
}

impl LivePolicy {
    /// Loads the stored set (the built-in set on a new collector) and starts
    /// evaluating everything the engine stores.
    pub fn start(
        engine: Arc<Engine>,
        alerts: Arc<Alerts>,
        responder: Arc<Responder>,
    ) -> Result<Arc<LivePolicy>> {
        let stored = match engine.store().setting(SOURCES)? {
            Some(v) => serde_json::from_slice::<Stored>(&v)?,
            None => Stored {
                version: 1,
                applied_by: "built-in".into(),
                applied_ns: now_ns(),
                sources: PolicySet::builtin_files()
                    .iter()
                    .map(|(n, t)| (format!("builtin/{n}"), t.to_string()))
                    .collect(),
                rules_action_id: String::new(),
            },
        };
        let active = match activate(&engine, stored) {
            Ok(a) => a,
            Err(e) => {
                // A stored set that no longer loads (a newer schema?) must not stop the
                // collector: fall back to the built-in set, loudly.
                tracing::error!("stored policy set does not load, using the built-in set: {e}");
                activate(
                    &engine,
                    Stored {
                        version: 1,
                        applied_by: "built-in (fallback)".into(),
                        applied_ns: now_ns(),
                        sources: PolicySet::builtin_files()
                            .iter()
                            .map(|(n, t)| (format!("builtin/{n}"), t.to_string()))
                            .collect(),
                        rules_action_id: String::new(),
                    },
                )
                .map_err(|e| anyhow::anyhow!("built-in policies: {e}"))?
            }
        };
        let me = Arc::new(LivePolicy {
            engine: engine.clone(),
            alerts,
            responder,
            active: RwLock::new(Arc::new(active)),
            metrics: PolicyMetrics::default(),
            rt: tokio::runtime::Handle::current(),
        });
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<StoredEvent>>(QUEUE);
        engine.set_policy_sink(tx);
        let worker = me.clone();
        std::thread::Builder::new()
            .name("custody-policy".into())
            .spawn(move || {
                let mut cached: Option<(u64, CachedEvaluator)> = None;
                while let Ok(se) = rx.recv() {
                    worker.metrics.dequeued.fetch_add(1, Ordering::Relaxed);
                    worker.evaluate(&se, &mut cached);
                }
            })?;
        Ok(me)
    }

    /// Ends evaluation (the worker drains and stops).
    pub fn stop(&self) {
        self.engine.clear_policy_sink();
    }

    fn active(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The active set's version and number of policies (cheap, for metrics).
    pub fn version_and_count(&self) -> (u64, usize) {
        let a = self.active();
        (a.stored.version, a.set.len())
    }

    pub fn info(&self) -> PolicySetInfo {
        let a = self.active();
        info_of(&a)
    }

    /// Validates and activates `sources`; on any problem nothing changes.
    pub async fn apply(
        &self,
        who: Issuer,
        sources: Vec<(String, String)>,
    ) -> Result<PolicySetInfo, PolicyLoadError> {
        let prev = self.active();
        let mut stored = Stored {
            version: prev.stored.version + 1,
            applied_by: who.name.clone(),
            applied_ns: now_ns(),
            sources,
            rules_action_id: String::new(),
        };
        let mut next = activate(&self.engine, stored.clone())?;
        let rules = next.rules.to_wire();
        match self
            .responder
            .push_policy(who.clone(), stored.version, rules)
            .await
        {
            Ok(a) => stored.rules_action_id = a.id,
            Err(e) => tracing::error!("pushing host rules: {e:#}"),
        }
        next.stored = stored;
        if let Ok(v) = serde_json::to_vec(&next.stored) {
            let _ = self.engine.store().put_setting(SOURCES, v);
            let _ = self.engine.store().flush();
        }
        let _ = self.engine.audit(AuditEntry {
            actor: who.name,
            role: who.role,
            action: "policy apply".into(),
            target: format!("v{}", next.stored.version),
            result: format!(
                "ok: {} policies from {} files",
                next.set.len(),
                next.stored.sources.len()
            ),
            action_id: next.stored.rules_action_id.clone(),
            ..Default::default()
        });
        let info = info_of(&next);
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Ok(info)
    }

    /// Evaluates one stored event; denials become alerts and responses.
    fn evaluate(&self, se: &StoredEvent, cached: &mut Option<(u64, CachedEvaluator)>) {
        if !is_action(&se.event) {
            return;
        }
        let start = std::time::Instant::now();
        let a = self.active();
        // A new policy version starts with a fresh evaluator (and cache).
        if cached.as_ref().is_none_or(|(v, _)| *v != a.stored.version) {
            *cached = Some((a.stored.version, CachedEvaluator::new(a.evaluator.clone())));
        }
        let Some((_, j)) = cached.as_mut() else {
            return;
        };
        let (prepared, decisions) = j.decide(&self.engine, se);
        let ctx = prepared.context();
        self.metrics.events.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .decisions
            .fetch_add(decisions.len() as u64, Ordering::Relaxed);
        self.metrics
            .eval_ns
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        for d in decisions.into_iter().filter(|d| !d.allowed) {
            self.metrics.denied.fetch_add(1, Ordering::Relaxed);
            self.deny(&a, se, ctx, d);
        }
    }

    fn deny(&self, a: &Active, se: &StoredEvent, ctx: &custody_policy::ChainContext, d: Decision) {
        let p = se.event.process.clone().unwrap_or_default();
        let kernel = d.denied_by.iter().any(|id| {
            a.rules
                .policies
                .iter()
                .any(|pe| &pe.id == id && pe.enforcement == Enforcement::Kernel)
        });
        let first = d.denied_by.first().cloned().unwrap_or_default();
        let file = a
            .set
            .get(&first)
            .map(|i| i.file.clone())
            .unwrap_or_default();
        let response = d.response.unwrap_or(Response::Alert);
        let chain_id = if se.chain_id.is_empty() {
            ctx.chain_id.clone()
        } else {
            se.chain_id.clone()
        };
        let alert = Alert {
            severity: d.severity.unwrap_or_default().as_str().into(),
            policy_id: d.denied_by.join(","),
            policy_file: file,
            chain_id: chain_id.clone(),
            exec_id: p.exec_id.clone(),
            host: se.event.host.clone(),
            agent_id: d.principal.clone(),
            action: d.action.as_str().into(),
            resource: d.resource.clone(),
            human: ctx
                .root_human
                .as_ref()
                .map(|h| h.id.clone())
                .unwrap_or_default(),
            event_id: key_to_id(&se.key),
            diagnostics: d.diagnostics.clone(),
            response: response.as_str().into(),
            enforced: if kernel { "kernel" } else { "collector" }.into(),
            context_incomplete: d.context_incomplete,
            ..Default::default()
        };
        let alert = match self.alerts.raise(alert) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("storing an alert failed: {e:#}");
                return;
            }
        };
        tracing::warn!(policy = %alert.policy_id, chain = %chain_id, action = %alert.action, resource = %alert.resource, response = %alert.response, "policy denied an action");
        let target = match response {
            Response::Alert => return,
            Response::KillProcess => Target::Process(p.exec_id.clone()),
            Response::KillChain => Target::Chain(chain_id),
            Response::Quarantine if !p.agent_id.is_empty() => Target::Agent(p.agent_id.clone()),
            Response::Quarantine => Target::Process(p.exec_id.clone()),
            Response::RevokeCredential => {
                match d
                    .resource
                    .strip_prefix("Credential::\"")
                    .and_then(|r| r.strip_suffix('"'))
                {
                    Some(fp) => Target::Credential(fp.to_string()),
                    None => return,
                }
            }
        };
        let verb = match response {
            Response::KillProcess | Response::KillChain => "kill",
            Response::Quarantine => "quarantine",
            _ => "revoke",
        };
        let req = RespondRequest {
            verb: verb.into(),
            target: Some(target),
            reason: format!(
                "policy {} denied {} of {} (alert {})",
                alert.policy_id, alert.action, alert.resource, alert.id
            ),
            allow_unknown: true,
            ..Default::default()
        };
        let who = Issuer {
            name: format!("policy:{first}"),
            role: "policy".into(),
        };
        let (responder, alerts) = (self.responder.clone(), self.alerts.clone());
        self.rt.spawn(async move {
            let outcome = match responder.respond(who, req).await {
                Ok(act) => act.id,
                // Already in force (another denial in the same chain): point there.
                Err(ResponseError::Duplicate { action_id, .. }) => action_id,
                Err(e) => {
                    tracing::warn!(alert = %alert.id, "automatic response refused: {e}");
                    format!("refused: {e}")
                }
            };
            let _ = alerts.set_response_action(&alert.id, &outcome);
        });
    }

    /// A policy set (the active one when `files` is empty) over stored events.
    pub fn dry_run(
        &self,
        files: Vec<(String, String)>,
        since_ns: u64,
        until_ns: u64,
        max_events: u64,
    ) -> Result<admin::DryRunReport, PolicyLoadError> {
        let set = if files.is_empty() {
            self.active().set.clone()
        } else {
            PolicySet::from_sources(files)?
        };
        Ok(replay::run(
            &self.engine,
            &set,
            since_ns,
            until_ns,
            max_events,
        ))
    }
}

fn info_of(a: &Active) -> PolicySetInfo {
    let enforcement: BTreeMap<&str, (&str, &str)> = a
        .rules
        .policies
        .iter()
        .map(|p| (p.id.as_str(), (p.enforcement.as_str(), p.why.as_str())))
        .collect();
    PolicySetInfo {
        policies: a
            .set
            .list()
            .into_iter()
            .map(|p| {
                let (enf, why) = enforcement
                    .get(p.id.as_str())
                    .map(|(e, w)| (e.to_string(), w.to_string()))
                    .unwrap_or((p.enforcement.as_str().to_string(), p.why.clone()));
                admin::PolicyInfo {
                    id: p.id,
                    file: p.file,
                    line: p.line as u32,
                    effect: p.effect,
                    response: p.response.as_str().into(),
                    severity: p.severity.as_str().into(),
                    enforcement: enf,
                    why,
                    description: p.description,
                    actions: p.actions.iter().map(|x| x.as_str().to_string()).collect(),
                }
            })
            .collect(),
        version: a.stored.version,
        applied_by: a.stored.applied_by.clone(),
        applied_ns: a.stored.applied_ns,
        files: a.stored.sources.iter().map(|(n, _)| n.clone()).collect(),
        // The rules as sensors receive them, in the contract's JSON rendering.
        host_rules_json: serde_json::to_string(&a.rules.to_wire()).unwrap_or_default(),
        rules_action_id: a.stored.rules_action_id.clone(),
        warnings: a.set.warnings().to_vec(),
    }
}
