//! Reading the stored stream for exports: events by id (the store numbers events
//! 1, 2, … in arrival order and a block holds a contiguous range of ids) and
//! alerts by id, plus the durable high-water mark that says how far it is safe to
//! read.

use std::sync::Arc;

use anyhow::Result;
use custody_proto::admin::v1::Alert;
use tokio::sync::watch;

use crate::engine::{Engine, StoredEvent};
use crate::store::{self, Store};

/// One stored event with its id.
pub struct Numbered {
    pub id: u64,
    pub se: StoredEvent,
}

/// The id after the last event of the store (1 for an empty store). Only called
/// before ingest starts, when everything in the store is durable.
pub fn stored_end(engine: &Engine) -> Result<u64> {
    let last = engine.read().blocks.keys().next_back().copied();
    let Some(b) = last else { return Ok(1) };
    Ok(match engine.store().get_block(b)? {
        Some(block) => block.entries.iter().map(|e| e.id + 1).max().unwrap_or(b),
        None => b,
    })
}

/// The first stored event id (for exports that start at the beginning).
pub fn stored_start(engine: &Engine) -> u64 {
    engine.read().blocks.keys().next().copied().unwrap_or(1)
}

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

/// Events with ids in `from..until`, in id order, at most `limit`; and the id to
/// read from next. Ids that are gone (retention) are skipped.
pub fn read_events(
    engine: &Arc<Engine>,
    from: u64,
    until: u64,
    limit: usize,
) -> Result<(Vec<Numbered>, u64)> {
    if from >= until {
        return Ok((vec![], from));
    }
    let blocks: Vec<u64> = {
        let st = engine.read();
        let first = st.blocks.range(..=from).next_back().map(|(b, _)| *b);
        first
            .into_iter()
            .chain(st.blocks.range(from + 1..until).map(|(b, _)| *b))
            .collect()
    };
    let mut out: Vec<(
        u64,
        String,
        custody_proto::sensor::v1::Event,
        crate::event_key::EventKey,
    )> = vec![];
    let mut next = until;
    for b in blocks {
        let Some(block) = engine.store().get_block(b)? else {
            continue;
        };
        let mut idx: Vec<usize> = (0..block.entries.len())
            .filter(|&i| (from..until).contains(&block.entries[i].id))
            .collect();
        idx.sort_unstable_by_key(|&i| block.entries[i].id);
        for i in idx {
            if out.len() >= limit {
                next = out.last().map(|o| o.0 + 1).unwrap_or(from);
                break;
            }
            let e = &block.entries[i];
            out.push((e.id, block.exec_id(i).to_owned(), block.event(i)?, e.key()));
        }
        if out.len() >= limit {
            if next == until {
                next = out.last().map(|o| o.0 + 1).unwrap_or(from);
            }
            break;
        }
    }
    // The chain as it is known now (it may have been joined since ingest).
    let st = engine.read();
    let events = out
        .into_iter()
        .map(|(id, exec, event, key)| Numbered {
            id,
            se: StoredEvent {
                key,
                chain_id: st.chains.chain_of(&exec).unwrap_or("").to_owned(),
                event,
            },
        })
        .collect();
    Ok((events, next))
}

/// Alerts with ids after `after`, oldest first, at most `limit`. Alert ids sort by
/// the time they were raised.
pub fn read_alerts(store: &Store, after: &str, limit: usize) -> Result<Vec<Alert>> {
    let mut out = vec![];
    for r in store.scan(store::ALERT, false) {
        let (k, v) = r?;
        if k.is_empty() || &k[1..] <= after.as_bytes() {
            continue;
        }
        out.push(serde_json::from_slice::<Alert>(&v)?);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}
