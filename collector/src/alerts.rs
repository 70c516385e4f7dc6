//! Policy alerts: stored as records (JSON by id), newest first in memory, broadcast to
//! live viewers. Acknowledging or assigning is audited by the caller.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use custody_proto::admin::v1::Alert;
use tokio::sync::broadcast;

use crate::clock::now_ns;
use crate::store::{RecordKind, Store};

/// Alerts kept in memory (and on disk); the oldest acknowledged ones go first.
const MAX_ALERTS: usize = 100_000;

pub struct Alerts {
    by_id: Mutex<BTreeMap<String, Alert>>,
    seq: std::sync::atomic::AtomicU64,
    store: Arc<dyn Store>,
    live: broadcast::Sender<Alert>,
    /// Alerts raised since start, by severity (metrics).
    raised: Mutex<BTreeMap<String, u64>>,
}

impl Alerts {
    pub fn open(store: Arc<dyn Store>) -> Result<Arc<Alerts>> {
        let mut by_id = BTreeMap::new();
        for r in store.records(RecordKind::Alert) {
            let (_, v) = r?;
            let a: Alert = serde_json::from_slice(&v)?;
            by_id.insert(a.id.clone(), a);
        }
        let (live, _) = broadcast::channel(1024);
        Ok(Arc::new(Alerts {
            by_id: Mutex::new(by_id),
            store,
            seq: Default::default(),
            live,
            raised: Default::default(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Alert>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a new alert (id and time assigned here unless set) and tells viewers.
    pub fn raise(&self, mut a: Alert) -> Result<Alert> {
        if a.time_ns == 0 {
            a.time_ns = now_ns();
        }
        if a.id.is_empty() {
            let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Sortable by time: ids are the map order.
            a.id = format!("al-{:016x}-{n}", a.time_ns);
        }
        if a.status.is_empty() {
            a.status = "open".into();
        }
        self.store
            .put_record(RecordKind::Alert, &a.id, serde_json::to_vec(&a)?)?;
        let mut m = self.lock();
        m.insert(a.id.clone(), a.clone());
        if m.len() > MAX_ALERTS {
            let old: Vec<String> = m
                .values()
                .filter(|x| x.status != "open")
                .take(m.len() - MAX_ALERTS)
                .map(|x| x.id.clone())
                .collect();
            for id in old {
                m.remove(&id);
                let _ = self.store.remove_record(RecordKind::Alert, &id);
            }
        }
        drop(m);
        *self
            .raised
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(a.severity.clone())
            .or_default() += 1;
        let _ = self.live.send(a.clone());
        Ok(a)
    }

    /// Records the response action an alert caused.
    pub fn set_response_action(&self, id: &str, action_id: &str) -> Result<()> {
        let mut m = self.lock();
        if let Some(a) = m.get_mut(id) {
            a.response_action_id = action_id.to_string();
            self.store
                .put_record(RecordKind::Alert, id, serde_json::to_vec(a)?)?;
            let _ = self.live.send(a.clone());
        }
        Ok(())
    }

    /// Newest first, filtered.
    pub fn list(&self, limit: usize, chain_id: &str, status: &str, severity: &str) -> Vec<Alert> {
        self.lock()
            .values()
            .rev()
            .filter(|a| chain_id.is_empty() || a.chain_id == chain_id)
            .filter(|a| status.is_empty() || a.status == status)
            .filter(|a| severity.is_empty() || a.severity == severity)
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Alert> {
        self.lock().get(id).cloned()
    }

    /// Open alerts per chain (for chain lists) and per agent.
    pub fn open_counts(&self) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let (mut chains, mut agents) = (BTreeMap::new(), BTreeMap::new());
        for a in self.lock().values().filter(|a| a.status == "open") {
            *chains.entry(a.chain_id.clone()).or_default() += 1;
            if !a.agent_id.is_empty() {
                *agents.entry(a.agent_id.clone()).or_default() += 1;
            }
        }
        (chains, agents)
    }

    /// Alerts raised since start, by severity.
    pub fn raised(&self) -> BTreeMap<String, u64> {
        self.raised
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stored alerts by (severity, status).
    pub fn counts(&self) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for a in self.lock().values() {
            *out.entry((a.severity.clone(), a.status.clone()))
                .or_default() += 1;
        }
        out
    }

    /// Acknowledge and/or assign.
    pub fn update(
        &self,
        id: &str,
        by: &str,
        acknowledge: bool,
        assignee: &str,
    ) -> Result<Option<Alert>> {
        let mut m = self.lock();
        let Some(a) = m.get_mut(id) else {
            return Ok(None);
        };
        if acknowledge && a.status != "acknowledged" {
            a.status = "acknowledged".into();
            a.acknowledged_by = by.to_string();
            a.acknowledged_ns = now_ns();
        }
        if !assignee.is_empty() {
            a.assignee = assignee.to_string();
        }
        self.store
            .put_record(RecordKind::Alert, id, serde_json::to_vec(a)?)?;
        let a = a.clone();
        drop(m);
        let _ = self.live.send(a.clone());
        Ok(Some(a))
    }

    /// New and changed alerts, for live views.
    pub fn subscribe(&self) -> broadcast::Receiver<Alert> {
        self.live.subscribe()
    }
}
