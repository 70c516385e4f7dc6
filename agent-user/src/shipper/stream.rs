//! The connection loop: connect with backoff, hello, resume from the collector's
//! HelloAck, stream spooled batches (a few in flight), drop acked events from the
//! spool, pass commands on, send results and heartbeats.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use custody_proto::sensor::v1::{
    Command, CommandResult, EventBatch, Heartbeat, Hello, SensorMessage, collector_message,
    sensor_message, sensor_service_client::SensorServiceClient,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::{Shared, ShipperConfig, tls};

/// Unacked batches on the wire at once.
const WINDOW: usize = 8;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

pub(crate) struct Creds {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub(crate) async fn run(
    cfg: ShipperConfig,
    creds: Creds,
    shared: Arc<Shared>,
    cmd_tx: mpsc::Sender<Command>,
    mut results: mpsc::Receiver<CommandResult>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        let r = session(&cfg, &creds, &shared, &cmd_tx, &mut results, &mut stop).await;
        shared.connected.store(false, Ordering::Relaxed);
        match r {
            Ok(()) if *stop.borrow() => return,
            Ok(()) => tracing::info!("collector closed the stream; reconnecting"),
            Err(e) => tracing::warn!("collector stream: {e:#}"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = BACKOFF_MIN;
        }
        // Jitter keeps a fleet from reconnecting in lockstep after an outage.
        let jitter = Duration::from_millis(now_ns() % 100);
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn wrap(m: sensor_message::Msg) -> SensorMessage {
    SensorMessage { msg: Some(m) }
}

async fn session(
    cfg: &ShipperConfig,
    creds: &Creds,
    shared: &Shared,
    cmd_tx: &mpsc::Sender<Command>,
    results: &mut mpsc::Receiver<CommandResult>,
    stop: &mut watch::Receiver<bool>,
) -> Result<()> {
    let spool = &shared.spool;
    let ch = tls::channel(&cfg.collector, &creds.ca, Some((&creds.cert, &creds.key))).await?;
    let mut client = SensorServiceClient::new(ch).max_decoding_message_size(16 << 20);
    let (tx, rx) = mpsc::channel::<SensorMessage>(WINDOW + 4);
    tx.send(wrap(sensor_message::Msg::Hello(Hello {
        host_id: cfg.host_id.clone(),
        boot_id: cfg.boot_id.clone(),
        sensor_version: cfg.sensor_version.clone(),
        kernel_release: cfg.kernel_release.clone(),
        features: cfg.features.clone(),
        last_acked_seq: spool.last_acked(),
        spool_first_seq: spool.first_seq(),
        spool_next_seq: spool.next_seq(),
    })))
    .await?;
    let mut inbound = client
        .stream(ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow!("collector refused the stream: {}", s.message()))?
        .into_inner();
    let resume = match inbound.message().await {
        Ok(Some(m)) => match m.msg {
            Some(collector_message::Msg::HelloAck(a)) => a.resume_from_seq,
            _ => bail!("collector did not answer the hello"),
        },
        Ok(None) => bail!("collector closed the stream after hello"),
        Err(s) => bail!("collector refused the stream: {}", s.message()),
    };
    let mut cursor = spool.resume(resume)?;
    shared.connected.store(true, Ordering::Relaxed);
    tracing::info!(collector = %cfg.collector, resume = cursor, "streaming to collector");
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let mut heartbeat = tokio::time::interval(cfg.heartbeat_every);
    loop {
        // Fill the window from the spool.
        while in_flight.len() < WINDOW {
            let events = spool.read_from(cursor, cfg.batch_max_events, cfg.batch_max_bytes)?;
            let Some(last) = events.last().map(|e| e.seq) else {
                break;
            };
            let first = events[0].seq;
            tx.send(wrap(sensor_message::Msg::Batch(EventBatch {
                first_seq: first,
                events,
            })))
            .await
            .map_err(|_| anyhow!("stream closed"))?;
            cursor = last + 1;
            in_flight.push_back(last);
        }
        tokio::select! {
            _ = shared.notify.notified(), if in_flight.len() < WINDOW => {}
            m = inbound.message() => {
                let m = match m {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(()),
                    Err(s) => bail!("{}", s.message()),
                };
                match m.msg {
                    Some(collector_message::Msg::Ack(a)) => {
                        spool.ack(a.up_to_seq)?;
                        while in_flight.front().is_some_and(|s| *s <= a.up_to_seq) {
                            in_flight.pop_front();
                        }
                    }
                    Some(collector_message::Msg::Rejected(r)) => {
                        let n = spool.count_range(r.first_seq, r.last_seq);
                        spool.add_rejected(n)?;
                        tracing::error!(code = %r.code, first = r.first_seq, last = r.last_seq,
                            "collector rejected events: {}", r.reason);
                    }
                    Some(collector_message::Msg::Command(c)) => {
                        if cmd_tx.send(c).await.is_err() {
                            tracing::warn!("command receiver dropped; command ignored");
                        }
                    }
                    Some(collector_message::Msg::HelloAck(_)) | None => {}
                }
            }
            r = results.recv() => {
                if let Some(r) = r {
                    tx.send(wrap(sensor_message::Msg::Result(r))).await
                        .map_err(|_| anyhow!("stream closed"))?;
                }
            }
            _ = heartbeat.tick() => {
                let counters = shared.counters.lock().unwrap_or_else(|e| e.into_inner()).clone();
                tx.send(wrap(sensor_message::Msg::Heartbeat(Heartbeat {
                    time_ns: now_ns(),
                    spool_dropped: spool.dropped(),
                    rejected: spool.rejected(),
                    spool_depth: spool.depth(),
                    spool_bytes: spool.bytes(),
                    counters,
                    newest_seq: spool.next_seq().saturating_sub(1),
                    oldest_unacked_ns: spool.oldest_time_ns(),
                }))).await.map_err(|_| anyhow!("stream closed"))?;
            }
            _ = stop.changed() => return Ok(()),
        }
    }
}
