//! Exports of the stored stream to other systems:
//! - `jsonl`: every stored event (and policy alert) as one JSON object per line;
//! - `ocsf`: the same as OCSF 1.3 events for SIEMs (see [`ocsf`]);
//! - `otlp`: chains as OpenTelemetry traces over OTLP/gRPC (see [`otlp`]).
//!
//! JSON lines go to a file ([`file`]) or are POSTed to an HTTP endpoint ([`http`]).
//!
//! Each export reads the store, not the ingest path: a task per export follows a
//! persisted cursor (the next event id, the last alert id — [`cursor`]) up to the
//! durable high-water mark, shapes a batch, delivers it, and only then moves the
//! cursor. A failing endpoint is retried with backoff (0.5 s doubling to 30 s) and
//! never skipped, so delivery is at-least-once across endpoint outages and collector
//! restarts; the file sink also drops what its file already ends with, so a crash
//! between a write and the cursor update does not duplicate lines. Ingest is never
//! held back: the only link is a lossy broadcast that says how far the store has
//! got. [`Exports::stats`] tells how far behind each export is.

pub mod config;
pub mod cursor;
pub mod file;
pub mod http;
pub mod jsonl;
pub mod ocsf;
pub mod otlp;
pub mod source;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use tokio::sync::watch;

pub use config::{ExportConfig, ExportKind, StartAt};

use crate::alerts::Alerts;
use crate::clock::now_ns;
use crate::engine::Engine;
use crate::engine::Numbered;
use cursor::Cursor;

/// How one export is doing (for metrics and status).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ExportStats {
    pub name: String,
    /// "jsonl", "ocsf" or "otlp".
    pub kind: &'static str,
    /// Stored events the export has passed (delivered, or not applicable to it,
    /// e.g. a heartbeat-only event for OCSF).
    pub events_done: u64,
    /// Records delivered: lines (jsonl, ocsf) or spans (otlp).
    pub records_sent: u64,
    pub alerts_sent: u64,
    /// Delivery attempts that failed (each is retried).
    pub failures: u64,
    /// Failures since the last success (0 when healthy).
    pub consecutive_failures: u64,
    /// Spans the OTLP receiver said it rejected (partial success).
    pub rejected: u64,
    /// Stored events not yet exported.
    pub lag_events: u64,
    pub last_error: String,
    pub last_success_ns: u64,
    /// The next event id to export.
    pub cursor: u64,
}

/// One line for a line sink, with what it carries (for de-duplication).
pub struct Line {
    pub event_id: Option<u64>,
    pub alert_id: Option<String>,
    pub text: String,
}

enum Sink {
    File(file::FileSink),
    Http(http::HttpSink),
    Otlp(otlp::OtlpSink),
}

/// The running exports.
pub struct Exports {
    stats: Vec<Arc<Mutex<ExportStats>>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

struct Ctx {
    engine: Arc<Engine>,
    cfg: ExportConfig,
    name: String,
    stats: Arc<Mutex<ExportStats>>,
    mark: watch::Receiver<u64>,
    alerts: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
}

impl Exports {
    /// Starts every export (none: nothing runs). Must be called before ingest
    /// starts. A misconfigured export (bad CA file, unwritable path) is an error.
    pub fn start(
        engine: Arc<Engine>,
        alerts: Arc<Alerts>,
        configs: &[ExportConfig],
    ) -> Result<Arc<Exports>> {
        config::check_all(configs)?;
        let (stop, stop_rx) = watch::channel(false);
        let mut me = Exports {
            stats: vec![],
            stop,
            tasks: Mutex::new(vec![]),
        };
        if configs.is_empty() {
            return Ok(Arc::new(me));
        }
        let end = engine.end_event_id()?;
        let (mark, feeder) = source::follow_tail(&engine, end);
        let (alert_tx, alert_rx) = watch::channel(0u64);
        let mut live = alerts.subscribe();
        let alert_feeder = tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            while let Ok(_) | Err(RecvError::Lagged(_)) = live.recv().await {
                alert_tx.send_modify(|n| *n += 1);
            }
        });
        let mut tasks = vec![feeder, alert_feeder];
        for cfg in configs {
            let name = cfg.display_name();
            let sink = match (cfg.kind, &cfg.path, &cfg.url) {
                (ExportKind::Otlp, _, Some(_)) => Sink::Otlp(otlp::OtlpSink::new(cfg)?),
                (_, Some(p), _) => Sink::File(file::FileSink::open(p)?),
                (_, _, Some(_)) => Sink::Http(http::HttpSink::new(cfg)?),
                _ => anyhow::bail!("export {name}: no target"),
            };
            let cursor = match Cursor::load(engine.store(), &name)? {
                Some(c) => c,
                None => {
                    let c = Cursor {
                        next_event_id: match cfg.start {
                            StartAt::Beginning => engine.first_event_id(),
                            StartAt::Now => end,
                        },
                        last_alert_id: match cfg.start {
                            StartAt::Beginning => String::new(),
                            StartAt::Now => alerts
                                .list(1, "", "", "")
                                .first()
                                .map(|a| a.id.clone())
                                .unwrap_or_default(),
                        },
                    };
                    c.save(engine.store(), &name)?;
                    c
                }
            };
            let stats = Arc::new(Mutex::new(ExportStats {
                name: name.clone(),
                kind: cfg.kind.as_str(),
                cursor: cursor.next_event_id,
                lag_events: end.saturating_sub(cursor.next_event_id),
                ..Default::default()
            }));
            me.stats.push(stats.clone());
            let ctx = Ctx {
                engine: engine.clone(),
                cfg: cfg.clone(),
                name,
                stats,
                mark: mark.clone(),
                alerts: alert_rx.clone(),
                stop: stop_rx.clone(),
            };
            tasks.push(tokio::spawn(run(ctx, sink, cursor)));
        }
        tracing::info!(exports = configs.len(), "exports started");
        *me.tasks.get_mut().unwrap_or_else(|e| e.into_inner()) = tasks;
        Ok(Arc::new(me))
    }

    /// A snapshot of every export's counters, in configuration order.
    pub fn stats(&self) -> Vec<ExportStats> {
        self.stats
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// Stops the exports: a delivery in progress is finished (or given up after
    /// its timeout) and its cursor saved. Waits at most `within`.
    pub async fn stop(&self, within: Duration) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let mut feeders = vec![];
        let mut runs = vec![];
        for (i, t) in tasks.into_iter().enumerate() {
            if i < 2 { feeders.push(t) } else { runs.push(t) }
        }
        for f in &feeders {
            f.abort();
        }
        let all = futures_util::future::join_all(runs);
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!("exports did not stop within {within:?}");
        }
    }
}

fn lock(s: &Mutex<ExportStats>) -> std::sync::MutexGuard<'_, ExportStats> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sleeps `d` unless stopped first; true when stopped.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}

/// What one pass read: events, alerts, and where the cursor goes after them.
struct Pass {
    events: Vec<Numbered>,
    alerts: Vec<custody_proto::admin::v1::Alert>,
    next: Cursor,
}

async fn read_pass(ctx: &Ctx, cur: &Cursor, until: u64, want_alerts: bool) -> Result<Pass> {
    let (engine, batch) = (ctx.engine.clone(), ctx.cfg.batch_size());
    let cur = cur.clone();
    tokio::task::spawn_blocking(move || {
        let (events, next_id) = engine.events_by_id(cur.next_event_id, until, batch)?;
        let alerts = if want_alerts {
            source::read_alerts(engine.store(), &cur.last_alert_id, batch)?
        } else {
            vec![]
        };
        let next = Cursor {
            next_event_id: next_id,
            last_alert_id: alerts
                .last()
                .map(|a| a.id.clone())
                .unwrap_or(cur.last_alert_id),
        };
        Ok(Pass {
            events,
            alerts,
            next,
        })
    })
    .await?
}

async fn run(mut ctx: Ctx, mut sink: Sink, mut cur: Cursor) {
    let settle = ctx.cfg.settle();
    // Marks seen, with when: an event is read once the mark past it is `settle` old.
    let mut marks: VecDeque<(Instant, u64)> = VecDeque::new();
    let start_mark = *ctx.mark.borrow();
    marks.push_back((
        Instant::now()
            .checked_sub(settle)
            .unwrap_or_else(Instant::now),
        start_mark,
    ));
    let mut alerts_seen = u64::MAX; // read alerts on the first pass
    loop {
        if *ctx.stop.borrow() {
            break;
        }
        let now_mark = *ctx.mark.borrow_and_update();
        if marks.back().is_none_or(|m| m.1 != now_mark) {
            marks.push_back((Instant::now(), now_mark));
        }
        while marks.len() > 1 && marks[1].0.elapsed() >= settle {
            marks.pop_front();
        }
        let ripe = marks
            .front()
            .filter(|m| m.0.elapsed() >= settle)
            .map(|m| m.1)
            .unwrap_or(cur.next_event_id);
        let alert_gen = *ctx.alerts.borrow_and_update();
        let want_alerts = ctx.cfg.kind != ExportKind::Otlp && alert_gen != alerts_seen;
        lock(&ctx.stats).lag_events = now_mark.saturating_sub(cur.next_event_id);
        if ripe <= cur.next_event_id && !want_alerts {
            // Nothing to do: wait for new events or alerts (or the settle time).
            let wait = if marks.len() > 1 || now_mark > cur.next_event_id {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(5)
            };
            tokio::select! {
                _ = ctx.mark.changed() => {}
                _ = ctx.alerts.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.stop.wait_for(|s| *s) => break,
            }
            continue;
        }
        let pass = match read_pass(&ctx, &cur, ripe, want_alerts).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(export = %ctx.name, "reading the store: {e:#}");
                if sleep_or_stop(&mut ctx.stop, Duration::from_secs(1)).await {
                    break;
                }
                continue;
            }
        };
        let alerts_done = pass.alerts.len() < ctx.cfg.batch_size();
        if !deliver(&mut ctx, &mut sink, &pass).await {
            break; // stopped while retrying; the cursor stays where it was
        }
        if alerts_done && want_alerts {
            alerts_seen = alert_gen;
        }
        {
            let mut s = lock(&ctx.stats);
            s.events_done += pass.events.len() as u64;
            s.alerts_sent += pass.alerts.len() as u64;
            s.cursor = pass.next.next_event_id;
            s.lag_events = (*ctx.mark.borrow()).saturating_sub(pass.next.next_event_id);
        }
        cur = pass.next;
        if let Err(e) = cur.save(ctx.engine.store(), &ctx.name) {
            tracing::error!(export = %ctx.name, "saving the export cursor: {e:#}");
        }
    }
    if let Sink::File(f) = &mut sink {
        let _ = f.sync();
    }
}

/// Shapes and sends one pass, retrying until it is delivered; false when the
/// export was stopped first.
async fn deliver(ctx: &mut Ctx, sink: &mut Sink, pass: &Pass) -> bool {
    let mut backoff = Duration::from_millis(500);
    // Shaping reads the chain index: do it once per pass, before any retry.
    let payload = match &sink {
        Sink::Otlp(_) => Payload::Spans(otlp::build(&ctx.engine, &pass.events)),
        _ => Payload::Lines(match ctx.cfg.kind {
            ExportKind::Ocsf => ocsf::lines(&ctx.engine, &pass.events, &pass.alerts),
            _ => jsonl::lines(&pass.events, &pass.alerts),
        }),
    };
    if payload.is_empty() {
        return true;
    }
    loop {
        let r = match (&mut *sink, &payload) {
            (Sink::File(f), Payload::Lines(l)) => f.write(l).await,
            (Sink::Http(h), Payload::Lines(l)) => h.post(l).await,
            (Sink::Otlp(o), Payload::Spans(s)) => o.send(s.clone()).await,
            _ => Err(anyhow::anyhow!("sink and payload do not match")),
        };
        match r {
            Ok(sent) => {
                let mut s = lock(&ctx.stats);
                s.records_sent += sent.delivered;
                s.rejected += sent.rejected;
                s.consecutive_failures = 0;
                s.last_success_ns = now_ns();
                return true;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                {
                    let mut s = lock(&ctx.stats);
                    s.failures += 1;
                    s.consecutive_failures += 1;
                    if s.consecutive_failures == 1 || s.consecutive_failures.is_multiple_of(20) {
                        tracing::warn!(export = %ctx.name, failures = s.consecutive_failures, "export failed, retrying: {msg}");
                    }
                    s.last_error = msg;
                    s.lag_events = (*ctx.mark.borrow()).saturating_sub(s.cursor);
                }
                if sleep_or_stop(&mut ctx.stop, backoff).await {
                    return false;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

enum Payload {
    Lines(Vec<Line>),
    Spans(otlp::Spans),
}

impl Payload {
    fn is_empty(&self) -> bool {
        match self {
            Payload::Lines(l) => l.is_empty(),
            Payload::Spans(s) => s.count == 0,
        }
    }
}

/// What a sink took.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    pub delivered: u64,
    pub rejected: u64,
}
