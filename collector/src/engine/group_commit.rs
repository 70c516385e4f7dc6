//! Group commit: batches from all sensor streams go through one writer thread,
//! which stores whatever has queued up with one atomic write and one flush, then
//! answers each stream. Each stream has at most one batch in flight, so a flooding
//! sensor waits for its own acks and cannot starve the others.

use std::sync::Arc;

use custody_proto::sensor::v1::EventBatch;
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Engine, IngestOutcome};

/// Stop adding batches to a group beyond this many events.
const GROUP_MAX_EVENTS: usize = 50_000;
const GROUP_MAX_BATCHES: usize = 256;

struct Job {
    host: String,
    batch: EventBatch,
    reply: oneshot::Sender<Result<IngestOutcome, String>>,
}

#[derive(Clone)]
pub struct IngestQueue {
    tx: mpsc::Sender<Job>,
}

impl IngestQueue {
    /// Starts the writer thread; it ends when every `IngestQueue` clone is dropped.
    pub fn start(engine: Arc<Engine>) -> (IngestQueue, std::thread::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Job>(1024);
        let handle = std::thread::Builder::new()
            .name("custody-ingest".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut events = first.batch.events.len();
                    let mut jobs = vec![first];
                    while jobs.len() < GROUP_MAX_BATCHES && events < GROUP_MAX_EVENTS {
                        match rx.try_recv() {
                            Ok(j) => {
                                events += j.batch.events.len();
                                jobs.push(j);
                            }
                            Err(_) => break,
                        }
                    }
                    let (items, replies): (Vec<_>, Vec<_>) = jobs
                        .into_iter()
                        .map(|j| ((j.host, j.batch), j.reply))
                        .unzip();
                    match engine.ingest_group(items) {
                        Ok(outcomes) => {
                            for (r, o) in replies.into_iter().zip(outcomes) {
                                let _ = r.send(Ok(o));
                            }
                        }
                        Err(e) => {
                            tracing::error!("storing events failed: {e:#}");
                            for r in replies {
                                let _ = r.send(Err(format!("{e:#}")));
                            }
                        }
                    }
                }
            })
            .expect("spawn ingest thread");
        (IngestQueue { tx }, handle)
    }

    /// Stores a batch; resolves once it is durable (or rejected).
    pub async fn submit(&self, host: String, batch: EventBatch) -> Result<IngestOutcome, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { host, batch, reply })
            .await
            .map_err(|_| "collector is shutting down".to_string())?;
        rx.await
            .map_err(|_| "collector is shutting down".to_string())?
    }
}
