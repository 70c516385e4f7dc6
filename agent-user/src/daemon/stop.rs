//! A clean stop: no new holds and the ones in flight settled (nobody would continue
//! them), the output flushed and the shipper's queue handed over, the programs
//! released — and the pins removed unless enforcement is still in force.

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::Daemon;
use crate::kernel::loader;
use crate::kernel::pins::PIN_LAYOUT;

impl Daemon {
    pub(super) async fn stop(mut self, mut ring: AsyncFd<RingBuf<MapData>>) -> Result<()> {
        if let Some(hs) = self.holds.as_mut() {
            if let Err(e) = hs.arm(false) {
                tracing::warn!("revocation hold: {e:#}");
            }
            self.drain(ring.get_mut())?;
            self.sweep_holds(std::time::Duration::ZERO)?;
        }
        // What routine summaries hold goes out before the output closes.
        let mut rest = Vec::new();
        self.routine.flush_all(&mut rest);
        for ev in rest {
            self.report.emit(ev)?;
        }
        self.report.shutdown().await?;
        let _ = std::fs::remove_file(&self.args.status_file);
        drop(ring);
        loader::release(std::mem::take(&mut self.links));
        // A clean stop with nothing enforced leaves nothing behind in bpffs; active
        // enforcement (a quarantine, a pending kill) stays pinned and in force.
        let (records, emitted) = (self.pipe.stats.records, self.pipe.stats.emitted);
        let nothing_in_force = self
            .enforcer
            .as_ref()
            .map(|en| en.quarantined().is_empty() && en.pending_kills() == 0);
        match nothing_in_force {
            Some(true) => {
                let pin_dir = self.pin_dir.clone();
                // The maps and the programs go first: their pins can then go too.
                drop(self);
                let _ = std::fs::remove_dir_all(pin_dir.join(PIN_LAYOUT));
                let _ = std::fs::remove_dir(&pin_dir);
            }
            Some(false) => tracing::warn!(
                "enforcement stays in force after exit (pinned in {})",
                self.pin_dir.display()
            ),
            None => {}
        }
        eprintln!("custodyd: stopped ({records} records, {emitted} events)");
        Ok(())
    }
}
