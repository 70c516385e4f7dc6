//! Group commit: batches from all sensor streams go through one writer thread,
//! which stores whatever has queued up with one atomic write and one flush, then
//! answers each stream. A stream keeps a few batches queued here
//! ([`STREAM_IN_FLIGHT`]) so a sensor draining a backlog fills whole groups (one
//! flush for several of its batches) instead of paying a flush per round trip; the
//! writer takes the waiting batches round by round, one per host each round
//! ([`fair_group`]), and keeps groups small, so a host's backlog cannot starve
//! another host's live batch: that one is in the next group.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use custody_proto::sensor::v1::EventBatch;
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Engine, IngestOutcome};

/// Stop adding batches to a group beyond this many events (each host's first
/// waiting batch still gets in). Small groups keep the wait of a live batch that
/// arrives behind several backlogs short; large enough to spread a flush over
/// several 1000-event batches.
const GROUP_MAX_EVENTS: usize = 4_096;
const GROUP_MAX_BATCHES: usize = 256;
/// Batches taken off the queue and waiting for a group.
const WAITING_MAX: usize = 1024;
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
                let mut waiting: VecDeque<Job> = VecDeque::new();
                loop {
                    if waiting.is_empty() {
                        match rx.blocking_recv() {
                            Some(j) => waiting.push_back(j),
                            None => break,
                        }
                    }
                    // Take what has queued meanwhile, bounded so that a full queue
                    // still holds senders back.
                    while waiting.len() < WAITING_MAX {
                        match rx.try_recv() {
                            Ok(j) => waiting.push_back(j),
                            Err(_) => break,
                        }
                    }
                    let jobs = fair_group(&mut waiting);
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

    /// Queues a batch behind the host's earlier ones (waiting while the queue
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

/// The next group: round by round, the oldest waiting batch of each host, so a host
/// with a deep backlog gets one batch per round like a host with one live batch
/// (each host's batches stay in their order). Every host's first batch gets in;
/// further rounds only while the group is under [`GROUP_MAX_EVENTS`].
fn fair_group(waiting: &mut VecDeque<Job>) -> Vec<Job> {
    let mut group = vec![];
    let mut events = 0;
    let mut first_round = true;
    while !waiting.is_empty() {
        let mut seen: HashSet<String> = HashSet::new();
        let mut rest = VecDeque::with_capacity(waiting.len());
        while let Some(j) = waiting.pop_front() {
            let full =
                group.len() >= GROUP_MAX_BATCHES || (!first_round && events >= GROUP_MAX_EVENTS);
            if full || seen.contains(&j.host) {
                rest.push_back(j);
                continue;
            }
            seen.insert(j.host.clone());
            events += j.batch.events.len();
            group.push(j);
        }
        *waiting = rest;
        first_round = false;
        if seen.is_empty() || events >= GROUP_MAX_EVENTS || group.len() >= GROUP_MAX_BATCHES {
            break;
        }
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_proto::sensor::v1::Event;

    fn job(host: &str, events: usize) -> Job {
        Job {
            host: host.into(),
            batch: EventBatch {
                first_seq: 0,
                events: vec![Event::default(); events],
            },
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_live_batch_behind_backlogs_is_in_the_next_group() {
        let mut w: VecDeque<Job> = (0..12)
            .map(|i| job(["a", "b", "c"][i % 3], 1000))
            .chain([job("live", 1)])
            .collect();
        let g = fair_group(&mut w);
        let hosts: Vec<&str> = g.iter().map(|j| j.host.as_str()).collect();
        // Round one: each host's first batch, the live one included; round two
        // stops at the event bound.
        assert_eq!(hosts, ["a", "b", "c", "live", "a", "b"]);
        assert_eq!(w.len(), 7);
        // Each host's batches keep their order (here: by position in the queue).
        let mut w2: VecDeque<Job> = (0..6).map(|_| job("a", 10)).collect();
        for (i, j) in w2.iter_mut().enumerate() {
            j.batch.first_seq = i as u64;
        }
        let g = fair_group(&mut w2);
        let seqs: Vec<u64> = g.iter().map(|j| j.batch.first_seq).collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4, 5]);
    }
}
