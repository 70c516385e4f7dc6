//! The collector's own telemetry: Prometheus metrics (text format 0.0.4 at
//! `/metrics` on a separate plain-HTTP listener, `--metrics-listen`) and the status
//! snapshot behind `custodyctl status` (the admin API's `GetStatus`).
//!
//! Everything is read at scrape time from counters the ingest path, the policy
//! evaluator and the responder keep anyway (relaxed atomics on the hot path, small
//! locks only where events are rare), so scraping costs nothing between scrapes.

mod render;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::alerts::Alerts;
use crate::engine::Engine;
use crate::live_policy::LivePolicy;
use crate::response::Responder;
use crate::retention::Retention;

pub use render::render;
pub use status::{Finding, Verdict, ago, assess};

/// What metrics and status read: the running collector's parts and settings.
pub struct Telemetry {
    pub engine: Arc<Engine>,
    pub responder: Arc<Responder>,
    pub alerts: Arc<Alerts>,
    pub policy: Arc<LivePolicy>,
    pub exports: Arc<crate::export::Exports>,
    pub started_at_ns: u64,
    pub retention: Retention,
    pub retention_interval: Duration,
    /// The bound metrics address, once serving.
    pub metrics_listen: std::sync::OnceLock<SocketAddr>,
}

impl Telemetry {
    /// Stored events, their bytes, and the time of the oldest (0 when empty).
    pub fn store_stats(&self) -> (u64, u64, u64) {
        let st = self.engine.read();
        let oldest = st
            .blocks
            .values()
            .map(|b| crate::store::event_key_time(&b.min))
            .min()
            .unwrap_or(0);
        (st.stored_events, st.stored_bytes, oldest)
    }

    /// Stored events waiting for policy evaluation.
    pub fn policy_queue_events(&self) -> u64 {
        let queued = self
            .engine
            .metrics
            .policy_enqueued
            .load(std::sync::atomic::Ordering::Relaxed);
        let taken = self
            .policy
            .metrics
            .dequeued
            .load(std::sync::atomic::Ordering::Relaxed);
        queued.saturating_sub(taken)
    }
}

/// Serves `/metrics` on `addr` (plain HTTP) until `stop` turns true; returns the
/// bound address.
pub async fn serve(
    addr: SocketAddr,
    t: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics: cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let _ = t.metrics_listen.set(bound);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let t = t.clone();
            async move {
                // Reads take the engine's state lock briefly: off the async workers.
                let body = tokio::task::spawn_blocking(move || render(&t))
                    .await
                    .unwrap_or_default();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!("metrics endpoint stopped: {e}");
        }
    });
    Ok((bound, task))
}
