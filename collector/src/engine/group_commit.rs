//! Group commit: batches from all sensor streams go through one writer thread,
//! which stores whatever has queued up with one atomic write and one flush, then
//! answers each stream. A stream keeps a few batches queued here
//! ([`STREAM_IN_FLIGHT`]) so a sensor draining a backlog fills whole groups (one
//! flush for several of its batches) instead of paying a flush per round trip; the
//! bound keeps a flooding sensor from starving the others: another host's live
//! batch waits behind at most that many batches per stream.

use std::sync::Arc;

use custody_proto::sensor::v1::EventBatch;
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Engine, IngestOutcome};

/// Stop adding batches to a group beyond this many events.
const GROUP_MAX_EVENTS: usize = 50_000;
const GROUP_MAX_BATCHES: usize = 256;
/// Batches one sensor stream may have queued or being stored at once.
pub const STREAM_IN_FLIGHT: usize = 4;

/// The answer to one queued batch: resolves once it is durable (or rejected).
pub type Pending = oneshot::Receiver<Result<IngestOutcome, String>>;

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
        Self::outcome(self.enqueue(host, batch).await?).await
    }

    /// Queues a batch behind everything queued before it (waiting while the queue
    /// is full: that is the back-pressure a sender feels) and returns its answer to
    /// await later, so a stream can queue its next batch meanwhile.
    pub async fn enqueue(&self, host: String, batch: EventBatch) -> Result<Pending, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { host, batch, reply })
            .await
            .map_err(|_| "collector is shutting down".to_string())?;
        Ok(rx)
    }

    /// The outcome of an [`IngestQueue::enqueue`]d batch.
    pub async fn outcome(p: Pending) -> Result<IngestOutcome, String> {
        p.await
            .map_err(|_| "collector is shutting down".to_string())?
    }
}
