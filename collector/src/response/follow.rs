//! Actions follow their scope: a process that shows up in a killed chain, or as a
//! new process of a killed or quarantined agent, after the command went out gets a
//! follow-up command for its host. On one host the kernel already passes kill and
//! quarantine marks to children at fork; this covers what it cannot see — a
//! process that joins the chain over the network on another host, a host that was
//! offline, an agent started afresh.

use std::sync::Arc;
use std::time::Duration;

use custody_proto::admin::v1::HostDelivery;
use custody_proto::sensor::v1::event::Kind;
use tokio::sync::broadcast::error::RecvError;

use super::{KILL_FOLLOW_NS, Responder};
use crate::clock::now_ns;
use crate::engine::StoredEvent;

/// How long a candidate waits before its follow-up goes out: a child that inherited
/// a kill mark in the kernel dies within microseconds, and its exit event usually
/// arrives right behind its first one — no command is needed for it.
const SETTLE: Duration = Duration::from_millis(100);

impl Responder {
    /// Runs until the engine's event broadcast closes.
    pub fn spawn_follower(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let mut sub = self.engine.subscribe();
        tokio::spawn(async move {
            let mut last_expiry = 0u64;
            loop {
                let se = match sub.recv().await {
                    Ok(se) => se,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "response follower lagged behind ingest");
                        continue;
                    }
                    Err(RecvError::Closed) => break,
                };
                let now = now_ns();
                if now.saturating_sub(last_expiry) > 1_000_000_000 {
                    me.expire_follows(now);
                    last_expiry = now;
                }
                for (id, exec_id) in me.candidates(&se) {
                    let me = me.clone();
                    let host = se.event.host.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(SETTLE).await;
                        me.follow_up(&id, &host, &exec_id).await;
                    });
                }
            }
        })
    }

    /// Kills stop following after a while; quarantines and revocations stay.
    fn expire_follows(&self, now: u64) {
        let mut actions = self.lock();
        for a in actions.values_mut() {
            if a.active
                && a.kind.starts_with("kill_")
                && now.saturating_sub(a.issued_at_ns) > KILL_FOLLOW_NS
            {
                a.active = false;
                let _ = self.save(a);
            }
        }
    }

    /// Active actions whose scope this event's process falls in but has not reached.
    fn candidates(&self, se: &StoredEvent) -> Vec<(String, String)> {
        if matches!(se.event.kind, Some(Kind::Exit(_))) {
            return vec![];
        }
        let Some(p) = se.event.process.as_ref() else {
            return vec![];
        };
        let mut out = vec![];
        let actions = self.lock();
        let covered = self.covered.lock().unwrap_or_else(|e| e.into_inner());
        for a in actions.values() {
            if !a.active || !matches!(a.kind.as_str(), "kill_chain" | "kill_agent" | "quarantine") {
                continue;
            }
            let in_scope = match a.scope.as_str() {
                "chain" => se.chain_id == a.target,
                "agent" => p.agent_id == a.target,
                _ => false,
            };
            if in_scope && !covered.get(&a.id).is_some_and(|c| c.contains(&p.exec_id)) {
                out.push((a.id.clone(), p.exec_id.clone()));
            }
        }
        out
    }

    async fn follow_up(&self, id: &str, host: &str, exec_id: &str) {
        let alive = self
            .engine
            .read()
            .chains
            .node(exec_id)
            .is_some_and(|n| n.exited_ns == 0);
        if !alive {
            return;
        }
        {
            let mut covered = self.covered.lock().unwrap_or_else(|e| e.into_inner());
            if !covered
                .entry(id.to_string())
                .or_default()
                .insert(exec_id.to_string())
            {
                return;
            }
        }
        let i = {
            let mut actions = self.lock();
            let Some(a) = actions.get_mut(id) else { return };
            a.hosts.push(HostDelivery {
                host: host.to_string(),
                targets: vec![exec_id.to_string()],
                state: "pending".into(),
                follow_up: true,
                ..Default::default()
            });
            let _ = self.save(a);
            a.hosts.len() - 1
        };
        tracing::info!(action = %id, %host, %exec_id, "follow-up: a new process joined the action's scope");
        if let Some(a) = self.get(id) {
            self.send(&a, i).await;
        }
    }
}
