//! What exports read besides the engine's events by id (`Engine::events_by_id`):
//! the durable high-water mark that says how far it is safe to read, and alerts
//! by id.

use anyhow::Result;
use custody_proto::admin::v1::Alert;
use tokio::sync::watch;

use crate::engine::Engine;
use crate::store::{RecordKind, Store};

/// Follows the engine's live tail: every stored event is published only after its
/// group is durable, and groups are written one at a time, so the highest id
/// published bounds what can be read. Lossy on purpose (a lagging receiver skips,
/// the next event carries a higher id): exports never hold ingest back.
pub fn follow_tail(
    engine: &Engine,
    start: u64,
) -> (watch::Receiver<u64>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(start);
    let mut tail = engine.subscribe();
    let task = tokio::spawn(async move {
        loop {
            match tail.recv().await {
                Ok(se) => {
                    let next = crate::event_key::event_key_id(&se.key) + 1;
                    tx.send_if_modified(|w| {
                        let newer = next > *w;
                        if newer {
                            *w = next;
                        }
                        newer
                    });
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    (rx, task)
}

/// Alerts with ids after `after`, oldest first, at most `limit`. Alert ids sort by
/// the time they were raised.
pub fn read_alerts(store: &dyn Store, after: &str, limit: usize) -> Result<Vec<Alert>> {
    let mut out = vec![];
    for r in store.records(RecordKind::Alert) {
        let (id, v) = r?;
        if id.as_str() <= after {
            continue;
        }
        out.push(serde_json::from_slice::<Alert>(&v)?);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}
