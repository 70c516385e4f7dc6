//! Runs a collector: CA and server certificate, store, ingest writer, the sensor
//! and admin gRPC services on one mTLS port, and the retention task.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use custody_proto::admin::v1::admin_service_server::AdminServiceServer;
use custody_proto::sensor::v1::sensor_service_server::SensorServiceServer;
use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::alerts::Alerts;
use crate::api::admin_service::AdminSvc;
use crate::api::sensor_service::SensorSvc;
use crate::auth::TokenStore;
use crate::clock::now_ns;
use crate::engine::Engine;
use crate::engine::group_commit::IngestQueue;
use crate::engine::retention::Retention;
use crate::live_policy::LivePolicy;
use crate::metrics::Telemetry;
use crate::pki::Pki;
use crate::response::Responder;
use crate::sensor_streams::SensorStreams;

/// Largest protobuf message accepted from a sensor or operator; a batch beyond it
/// ends that stream with a clear error, nothing else.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Extra DNS names / IPs for the server certificate.
    pub sans: Vec<String>,
    pub retention: Retention,
    pub retention_interval: Duration,
    pub max_message_bytes: usize,
    /// Issuer hooks called when a credential is revoked (see `response::hook`).
    pub revocation_hooks: Vec<crate::response::hook::Hook>,
    /// Event exports (JSON lines, OCSF, OTLP; see `export`).
    pub exports: Vec<crate::export::ExportConfig>,
    /// Serve Prometheus metrics at `/metrics` here (plain HTTP).
    pub metrics_listen: Option<SocketAddr>,
    /// Connections the port holds at once, in all and per peer address.
    pub conn_limits: crate::api::conn_limit::ConnLimits,
}

impl CollectorConfig {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        CollectorConfig {
            data_dir: data_dir.into(),
            listen,
            sans: vec![],
            retention: Retention {
                max_age: Some(Duration::from_secs(30 * 86400)),
                max_bytes: None,
            },
            retention_interval: Duration::from_secs(60),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            revocation_hooks: vec![],
            exports: vec![],
            metrics_listen: None,
            conn_limits: Default::default(),
        }
    }
}

/// Paths inside a data dir.
pub fn store_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("store")
}

pub struct Collector {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub ca_fingerprint: String,
    /// The CA (tests issue certificates with it directly, as a holder of an old
    /// or stolen one would present them).
    pub pki: Arc<Pki>,
    pub engine: Arc<Engine>,
    pub streams: Arc<SensorStreams>,
    pub responder: Arc<Responder>,
    pub alerts: Arc<Alerts>,
    pub policy: Arc<LivePolicy>,
    pub tokens: TokenStore,
    /// The running exports and their counters (`exports.stats()`).
    pub exports: Arc<crate::export::Exports>,
    /// Where `/metrics` is served, when asked for.
    pub metrics_addr: Option<SocketAddr>,
    pub telemetry: Arc<Telemetry>,
    /// Connections open and refused at the port (see `api::conn_limit`).
    pub conn_gate: Arc<crate::api::conn_limit::Gate>,
    shutdown: watch::Sender<bool>,
    metrics: Option<tokio::task::JoinHandle<()>>,
    follower: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    retention: tokio::task::JoinHandle<()>,
    writer: std::thread::JoinHandle<()>,
}

impl Collector {
    pub async fn start(cfg: CollectorConfig) -> Result<Collector> {
        let started_at_ns = now_ns();
        let mut names = cfg.sans.clone();
        if !cfg.listen.ip().is_unspecified() {
            names.push(cfg.listen.ip().to_string());
        }
        let pki = Arc::new(Pki::load_or_create(&cfg.data_dir, &names)?);
        let tokens = TokenStore::open(&cfg.data_dir)?;
        let engine = Arc::new(Engine::open(&store_dir(&cfg.data_dir))?);
        let (queue, writer) = IngestQueue::start(engine.clone());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let streams = Arc::new(SensorStreams::default());
        let responder = Responder::open(
            engine.clone(),
            streams.clone(),
            cfg.revocation_hooks.clone(),
        )?;
        let follower = responder.spawn_follower();
        let alerts = Alerts::open(engine.store_handle())?;
        let policy = LivePolicy::start(engine.clone(), alerts.clone(), responder.clone())?;
        let exports = crate::export::Exports::start(engine.clone(), alerts.clone(), &cfg.exports)?;
        let telemetry = Arc::new(Telemetry {
            engine: engine.clone(),
            responder: responder.clone(),
            alerts: alerts.clone(),
            policy: policy.clone(),
            exports: exports.clone(),
            started_at_ns,
            retention: cfg.retention.clone(),
            retention_interval: cfg.retention_interval,
            metrics_listen: Default::default(),
        });
        let (metrics_addr, metrics) = match cfg.metrics_listen {
            Some(a) => {
                let (bound, task) =
                    crate::metrics::serve(a, telemetry.clone(), shutdown_rx.clone()).await?;
                (Some(bound), Some(task))
            }
            None => (None, None),
        };

        let sensor = SensorSvc {
            engine: engine.clone(),
            queue,
            pki: pki.clone(),
            tokens: tokens.clone(),
            streams: streams.clone(),
            responder: responder.clone(),
            shutdown: shutdown_rx.clone(),
            enrollments: Default::default(),
            token_refusals: Default::default(),
            identity_refusals: Default::default(),
        };
        let admin = AdminSvc {
            engine: engine.clone(),
            tokens: tokens.clone(),
            pki: pki.clone(),
            streams: streams.clone(),
            responder: responder.clone(),
            alerts: alerts.clone(),
            policy: policy.clone(),
            telemetry: telemetry.clone(),
        };
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                &pki.server_chain_pem,
                &pki.server_key_pem,
            ))
            .client_ca_root(Certificate::from_pem(&pki.ca_pem))
            .client_auth_optional(true)
            .timeout(Duration::from_secs(10));
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let conn_gate = Arc::new(crate::api::conn_limit::Gate::default());
        let incoming = crate::api::conn_limit::limit(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            cfg.conn_limits,
            conn_gate.clone(),
        );
        let mut stop = shutdown_rx.clone();
        // The web UI's routes on the same port (browsers speak h2 via ALPN; HTTP/1.1
        // without ALPN works too), with the gRPC services added to them.
        let ui = crate::ui::Ui::new(
            engine.clone(),
            responder.clone(),
            alerts.clone(),
            tokens.clone(),
            shutdown_rx.clone(),
        );
        let routes = tonic::service::Routes::from(crate::ui::router(ui))
            .add_service(
                SensorServiceServer::new(sensor).max_decoding_message_size(cfg.max_message_bytes),
            )
            .add_service(
                AdminServiceServer::new(admin).max_decoding_message_size(cfg.max_message_bytes),
            );
        let router = Server::builder()
            .tls_config(tls)
            .context("TLS configuration")?
            .accept_http1(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_routes(routes);
        let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));

        let retention = {
            let engine = engine.clone();
            let policy = cfg.retention.clone();
            let every = cfg.retention_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let (e, p) = (engine.clone(), policy.clone());
                    match tokio::task::spawn_blocking(move || e.enforce_retention(&p, now_ns()))
                        .await
                    {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::error!("retention failed: {e:#}"),
                        Err(e) => tracing::error!("retention task failed: {e}"),
                    }
                }
            })
        };
        tracing::info!(%addr, ca = %pki.ca_fingerprint, "collector listening");
        Ok(Collector {
            addr,
            ca_pem: pki.ca_pem.clone(),
            ca_fingerprint: pki.ca_fingerprint.clone(),
            pki,
            engine,
            streams,
            responder,
            alerts,
            policy,
            tokens,
            exports,
            metrics_addr,
            telemetry,
            conn_gate,
            shutdown,
            metrics,
            follower,
            server,
            retention,
            writer,
        })
    }

    /// Waits until the server stops on its own (it only does on error).
    pub async fn wait(&mut self) -> Result<()> {
        (&mut self.server).await?.context("gRPC server failed")
    }

    /// Stops serving, ends sensor streams, finishes pending writes and closes the
    /// store (releasing its lock, so the same data dir can be opened again).
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        self.retention.abort();
        self.follower.abort();
        if let Some(m) = self.metrics {
            let _ = tokio::time::timeout(Duration::from_secs(5), m).await;
        }
        self.policy.stop();
        drop(self.policy);
        drop(self.responder);
        let _ = self.retention.await;
        match tokio::time::timeout(Duration::from_secs(10), self.server).await {
            Ok(r) => r?.context("gRPC server failed")?,
            Err(_) => tracing::warn!("server did not stop within 10 s"),
        }
        self.exports.stop(Duration::from_secs(10)).await;
        // The writer ends when the last stream session drops its queue handle.
        let writer = self.writer;
        let engine = self.engine;
        let joined = tokio::task::spawn_blocking(move || {
            let _ = writer.join();
        });
        if tokio::time::timeout(Duration::from_secs(10), joined)
            .await
            .is_err()
        {
            tracing::warn!("ingest writer did not stop within 10 s");
        }
        // Session tasks may still hold the engine for a moment.
        for _ in 0..200 {
            if Arc::strong_count(&engine) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        engine.store().flush()?;
        Ok(())
    }
}
