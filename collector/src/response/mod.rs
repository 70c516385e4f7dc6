//! Response actions: kill, quarantine, release and credential revocation, issued by
//! a responder (or a policy), audited in the hash-chained log, delivered to every
//! affected host over its sensor stream — at once, or when an offline host comes
//! back — and confirmed per host with what was affected and how long it took.
//!
//! Actions are stored as records in the store, so pending deliveries survive a
//! collector restart. Issuing is in `issue.rs`, delivery and confirmations in
//! `delivery.rs`.
//! Kills follow their scope for a while and quarantines until released: a process
//! that joins a killed chain (or starts as a quarantined agent) after the command
//! gets a follow-up command as soon as its first event arrives (see [`follow`]).

mod delivery;
mod error;
pub mod follow;
pub mod hook;
mod issue;
pub mod resolve;
pub mod result_check;
pub mod wire;

pub use error::ResponseError;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use custody_proto::admin::v1::Action;

use crate::auth::Operator;
use crate::engine::Engine;
use crate::sensor_streams::SensorStreams;
use crate::store::RecordKind;

/// Kills keep following their scope (new processes of the chain / agent) this long.
pub const KILL_FOLLOW_NS: u64 = 10 * 60 * 1_000_000_000;
/// An identical kill within this window is refused as a duplicate.
const DUPLICATE_WINDOW_NS: u64 = 60 * 1_000_000_000;

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
    streams: Arc<SensorStreams>,
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
    /// Answers refused (see [`result_check`]).
    pub refused: std::sync::atomic::AtomicU64,
    /// Affected ids dropped from answers because they named another host's process.
    pub foreign_affected: std::sync::atomic::AtomicU64,
    /// Warnings about refused or filtered answers, rate-limited.
    pub(crate) result_log: crate::log_throttle::LogThrottle,
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
        streams: Arc<SensorStreams>,
        hooks: Vec<hook::Hook>,
    ) -> Result<Arc<Responder>> {
        let mut actions = BTreeMap::new();
        let mut covered = BTreeMap::new();
        for r in engine.store().records(RecordKind::Action) {
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
            streams,
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
        self.engine
            .store()
            .put_record(RecordKind::Action, &a.id, v)?;
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
}
