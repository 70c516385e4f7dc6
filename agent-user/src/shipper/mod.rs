//! Ships events to the collector: a durable bounded spool (sequence numbers are
//! assigned here), one mTLS gRPC stream with batches and acks, resume after
//! reconnects, and commands coming back on the same stream.
//!
//! ```text
//! let paths = shipper::enroll("collector:7443", &token, &host_id, state_dir, &fleet_key).await?; // once
//! let (ship, mut commands) = Shipper::start(ShipperConfig::from_enrollment(
//!     "collector:7443", &paths, spool_dir, host_id, boot_id))?;
//! ship.send(event)?;                      // never blocks on the network
//! while let Some(cmd) = commands.recv().await { ...; ship.send_result(result).await?; }
//! ```
//! Exec ids in events must start with "<host_id>:" (the collector refuses events
//! that describe another host's processes).

mod enroll;
mod spool;
mod stream;
pub mod tls;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use custody_proto::sensor::v1::{Command, CommandResult, Event};
use tokio::sync::{Notify, mpsc, watch};

pub use enroll::{EnrolledPaths, enroll, token_fingerprint};
pub use spool::Spool;

#[derive(Debug, Clone)]
pub struct ShipperConfig {
    /// "host:port" of the collector.
    pub collector: String,
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub host_id: String,
    pub boot_id: String,
    pub sensor_version: String,
    pub kernel_release: String,
    pub features: Vec<String>,
    /// Events per batch (bounded further by `batch_max_bytes`).
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    pub heartbeat_every: std::time::Duration,
}

impl ShipperConfig {
    pub fn from_enrollment(
        collector: &str,
        paths: &EnrolledPaths,
        spool_dir: &Path,
        host_id: &str,
        boot_id: &str,
    ) -> ShipperConfig {
        ShipperConfig {
            collector: collector.to_owned(),
            ca_pem: paths.ca_pem.clone(),
            cert_pem: paths.cert_pem.clone(),
            key_pem: paths.key_pem.clone(),
            spool_dir: spool_dir.to_owned(),
            spool_max_bytes: 256 << 20,
            host_id: host_id.to_owned(),
            boot_id: boot_id.to_owned(),
            sensor_version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel_release: String::new(),
            features: vec![],
            batch_max_events: 1000,
            batch_max_bytes: 1 << 20,
            heartbeat_every: std::time::Duration::from_secs(10),
        }
    }
}

/// A snapshot of the shipper's state, for `custodyd status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipperStats {
    pub connected: bool,
    pub next_seq: u64,
    pub last_acked_seq: u64,
    pub spool_depth: u64,
    pub spool_bytes: u64,
    /// Events dropped because the spool was full.
    pub spool_dropped: u64,
    /// Events the collector refused (reported to it in heartbeats too).
    pub rejected: u64,
    /// Event time of the oldest event not yet acknowledged (0: none).
    pub oldest_unacked_ns: u64,
}

pub(crate) struct Shared {
    pub spool: Spool,
    pub notify: Notify,
    pub counters: Mutex<HashMap<String, u64>>,
    pub connected: std::sync::atomic::AtomicBool,
}

/// Cheap to clone; every clone feeds the same spool.
#[derive(Clone)]
pub struct ShipperHandle {
    shared: Arc<Shared>,
    results: mpsc::Sender<CommandResult>,
    stop: Arc<watch::Sender<bool>>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

pub struct Shipper;

impl Shipper {
    /// Opens the spool and starts streaming in the background (needs a tokio
    /// runtime). Commands from the collector arrive on the returned receiver.
    pub fn start(cfg: ShipperConfig) -> Result<(ShipperHandle, mpsc::Receiver<Command>)> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| {
                format!(
                    "cannot read {} — is this host enrolled? (custodyd enroll --collector ADDR --token T)",
                    p.display()
                )
            })
        };
        let creds = stream::Creds {
            ca: read(&cfg.ca_pem)?,
            cert: read(&cfg.cert_pem)?,
            key: read(&cfg.key_pem)?,
        };
        let shared = Arc::new(Shared {
            spool: Spool::open(&cfg.spool_dir, cfg.spool_max_bytes)?,
            notify: Notify::new(),
            counters: Mutex::new(HashMap::new()),
            connected: false.into(),
        });
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (res_tx, res_rx) = mpsc::channel(256);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(stream::run(
            cfg,
            creds,
            shared.clone(),
            cmd_tx,
            res_rx,
            stop_rx,
        ));
        Ok((
            ShipperHandle {
                shared,
                results: res_tx,
                stop: Arc::new(stop),
                task: Arc::new(Mutex::new(Some(task))),
            },
            cmd_rx,
        ))
    }
}

impl ShipperHandle {
    /// Spools an event (assigning its sequence number, returned) and wakes the
    /// sender. Never waits for the network; when the spool is full the oldest
    /// events give way.
    pub fn send(&self, ev: Event) -> Result<u64> {
        let seq = self.shared.spool.push(ev)?;
        self.shared.notify.notify_one();
        Ok(seq)
    }

    /// Queues the result of a command for the collector.
    pub async fn send_result(&self, r: CommandResult) -> Result<()> {
        self.results
            .send(r)
            .await
            .map_err(|_| anyhow::anyhow!("shipper stopped"))
    }

    /// Sensor counters (ring-buffer losses, truncations, ...) for heartbeats.
    pub fn set_counters(&self, counters: HashMap<String, u64>) {
        *self
            .shared
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = counters;
    }

    pub fn stats(&self) -> ShipperStats {
        let s = &self.shared.spool;
        ShipperStats {
            connected: self
                .shared
                .connected
                .load(std::sync::atomic::Ordering::Relaxed),
            next_seq: s.next_seq(),
            last_acked_seq: s.last_acked(),
            spool_depth: s.depth(),
            spool_bytes: s.bytes(),
            spool_dropped: s.dropped(),
            rejected: s.rejected(),
            oldest_unacked_ns: s.oldest_time_ns(),
        }
    }

    /// Stops streaming and flushes the spool; unacked events stay for next time.
    pub async fn shutdown(&self) -> Result<()> {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
        self.shared.spool.flush()
    }
}
