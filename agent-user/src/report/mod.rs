//! Reporting, where an event leaves the daemon: every event goes through
//! [`Reporter::emit`] — counted by kind, written to the JSON-lines output when there
//! is one, handed to the collector shipper when enrolled — and every command result
//! through [`Reporter::answer`]. The status snapshot behind `custodyd status` and the
//! Prometheus metrics rendered from it live here too.

pub mod metrics;
pub mod output;
pub mod status;

use std::sync::{Arc, Mutex};

use agent_user::shipper::ShipperHandle;
use anyhow::Result;
use custody_proto::enums::WireEnum;
use custody_proto::sensor::v1::{CommandResult, CommandStatus, Event};

use crate::response;

/// Where events go: the local output, the collector shipper, the per-kind counters.
pub struct Reporter {
    sink: Option<output::JsonLines>,
    shipper: Option<ShipperHandle>,
    counts: Arc<Mutex<metrics::Counters>>,
}

impl Reporter {
    pub fn new(sink: Option<output::JsonLines>, shipper: Option<ShipperHandle>) -> Self {
        Reporter {
            sink,
            shipper,
            counts: Arc::new(Mutex::new(metrics::Counters::default())),
        }
    }

    /// Count an event, write it to the local output and hand it to the shipper.
    pub fn emit(&mut self, ev: Event) -> Result<()> {
        if let (true, Ok(mut c)) = (ev.kind.is_some(), self.counts.lock()) {
            *c.events.entry(ev.kind_name()).or_default() += 1;
        }
        if let Some(s) = self.sink.as_mut() {
            s.write(&ev)?;
        }
        if let Some(h) = &self.shipper {
            // The shipper spools durably and never blocks on the network.
            h.send(ev)?;
        }
        Ok(())
    }

    /// [`Reporter::emit`] for each event, in order.
    pub fn emit_all(&mut self, evs: impl IntoIterator<Item = Event>) -> Result<()> {
        evs.into_iter().try_for_each(|ev| self.emit(ev))
    }

    /// Push buffered JSON lines out (once per drained batch, not per event).
    pub fn flush(&mut self) -> Result<()> {
        match self.sink.as_mut() {
            Some(s) => s.flush(),
            None => Ok(()),
        }
    }

    /// The collector stream, when this host is enrolled.
    pub fn shipper(&self) -> Option<&ShipperHandle> {
        self.shipper.as_ref()
    }

    /// Events and command results counted so far (rendered as metrics).
    pub fn counts(&self) -> &Arc<Mutex<metrics::Counters>> {
        &self.counts
    }

    /// Send a command's result to the collector (off the event loop; kills are
    /// confirmed first) and count it.
    pub fn answer(&self, kind: &'static str, result: CommandResult, kills: Vec<response::Target>) {
        let counts = self.counts.clone();
        if let Some(h) = self.shipper.clone() {
            // Confirmation waits for the processes to be gone: off the event loop.
            tokio::spawn(async move {
                let r = if kills.is_empty() {
                    result
                } else {
                    tokio::task::spawn_blocking(move || response::confirm_kills(result, kills))
                        .await
                        .unwrap_or_else(|e| CommandResult {
                            status: CommandStatus::Failed.into(),
                            message: format!("confirmation task failed: {e}"),
                            ..Default::default()
                        })
                };
                let status = r.status().name();
                if let Ok(mut c) = counts.lock() {
                    *c.commands
                        .entry((kind.to_string(), status.to_string()))
                        .or_default() += 1;
                }
                tracing::info!(id = %r.command_id, status, affected = r.affected_exec_ids.len(), apply_ms = r.apply_ns as f64 / 1e6, "command applied");
                if let Err(e) = h.send_result(r).await {
                    tracing::warn!("could not answer a command: {e:#}");
                }
            });
        }
    }

    /// Flush the output and let the shipper hand over what it holds.
    pub async fn shutdown(&mut self) -> Result<()> {
        self.flush()?;
        if let Some(h) = &self.shipper {
            h.shutdown().await?;
        }
        Ok(())
    }
}
