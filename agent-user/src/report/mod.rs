//! Reporting, where an event leaves the daemon: every event goes through
//! [`Reporter::emit`] — counted by kind, written to the JSON-lines output when there
//! is one, handed to the collector shipper when enrolled — and the status snapshot
//! behind `custodyd status` and the Prometheus metrics rendered from it live here too.

pub mod metrics;
pub mod output;
pub mod status;

use std::sync::{Arc, Mutex};

use agent_user::shipper::ShipperHandle;
use anyhow::Result;
use custody_proto::sensor::v1::Event;

use crate::pipeline;

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
        if let (Some(k), Ok(mut c)) = (ev.kind.as_ref(), self.counts.lock()) {
            *c.events.entry(pipeline::kind_name(k)).or_default() += 1;
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

    /// Flush the output and let the shipper hand over what it holds.
    pub async fn shutdown(&mut self) -> Result<()> {
        self.flush()?;
        if let Some(h) = &self.shipper {
            h.shutdown().await?;
        }
        Ok(())
    }
}
