//! The gRPC service sensors talk to: `Enroll` (token + CSR -> client certificate,
//! the one call allowed without a client certificate) and `Stream` (hello, event
//! batches and acks, heartbeats, commands and their results).
//!
//! Enrollment and streaming share one TLS port: client certificates are optional at
//! the TLS layer (verified against our CA when presented) and `Stream` refuses a
//! connection without one. The host a stream speaks for is the CN of its verified
//! client certificate, never what the sensor claims, and only the certificate the
//! host got at its last enrollment is accepted (see `engine::identity`): checked
//! when the stream opens and again for every message, and the host's streams are
//! ended when its identity changes.
//!
//! Enrolling a host id that is already enrolled needs a token bound to that id,
//! unless an admin retired the old identity: an unbound token must not take over
//! an existing host (its commands, its sequence numbers).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use custody_proto::admin::v1::AuditEntry;
use custody_proto::sensor::v1::{
    Ack, BatchRejected, CollectorMessage, Command, EnrollRequest, EnrollResponse, HelloAck,
    SensorMessage, collector_message, sensor_message, sensor_service_server::SensorService,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{EnrollTokenError, TokenStore};
use crate::engine::IngestOutcome;
use crate::engine::group_commit::{IngestQueue, Pending, STREAM_IN_FLIGHT};
use crate::engine::{Engine, field_caps};
use crate::log_throttle::LogThrottle;
use crate::pki::{CertIdentity, Pki, cert_identity};
use crate::response::Responder;
use crate::sensor_streams::{CommandSink, SensorStreams};

const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Heartbeats closer together than this on one stream are skipped (see `pump`).
const HEARTBEAT_MIN_GAP: Duration = Duration::from_millis(500);

type Outbound = mpsc::Sender<Result<CollectorMessage, Status>>;

pub struct SensorSvc {
    pub engine: Arc<Engine>,
    pub queue: IngestQueue,
    pub pki: Arc<Pki>,
    pub tokens: TokenStore,
    pub streams: Arc<SensorStreams>,
    pub responder: Arc<Responder>,
    pub shutdown: watch::Receiver<bool>,
    /// Held from the enrolled-or-not decision until the new certificate is
    /// recorded, so two enrollments of one id cannot both pass as the first.
    pub enrollments: std::sync::Mutex<()>,
    /// Refused enrollments reach the audit log (and the log) at most once per interval
    /// and kind, the record saying how many were held back: `Enroll` is open to anyone
    /// who can reach the port, and each audit record is a hash-chained disk write.
    pub token_refusals: LogThrottle,
    pub identity_refusals: LogThrottle,
}

fn valid_host_id(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Commands for a host go out on its stream's response channel, between acks.
struct StreamSink(Outbound);

impl CommandSink for StreamSink {
    fn push(&self, cmd: Command) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            self.0
                .send(msg(collector_message::Msg::Command(cmd)))
                .await
                .is_ok()
        })
    }
}

fn msg(m: collector_message::Msg) -> Result<CollectorMessage, Status> {
    Ok(CollectorMessage { msg: Some(m) })
}

impl SensorSvc {
    /// A refused enrollment: counted always, audited and logged when `throttle` allows.
    fn refused_enroll(&self, throttle: &LogThrottle, host: &str, why: &str) {
        let Some(held_back) = throttle.allow() else {
            self.engine
                .metrics
                .enroll_refusals_unaudited
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut details = std::collections::HashMap::new();
        if held_back > 0 {
            details.insert("refusals_held_back".to_owned(), held_back.to_string());
        }
        // A host id is at most 253 characters (checked before); the reason is ours.
        self.audit_enroll_with(host, format!("denied: {why}"), details);
        tracing::warn!(host = %host, held_back, "enrollment refused: {why}");
    }

    fn audit_enroll_with(
        &self,
        host: &str,
        result: String,
        details: std::collections::HashMap<String, String>,
    ) {
        let _ = self.engine.audit(AuditEntry {
            actor: format!("host:{host}"),
            action: "enroll".into(),
            target: host.to_owned(),
            result,
            details,
            ..Default::default()
        });
    }
}

#[tonic::async_trait]
impl SensorService for SensorSvc {
    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let r = req.into_inner();
        if !valid_host_id(&r.host_id) {
            return Err(Status::invalid_argument(
                "host_id must be 1-253 characters of letters, digits, '.', '-' or '_'",
            ));
        }
        // The CSR is read first (a bad one must not burn the token), the token is
        // checked next, and only an authorised enrollment costs a signature.
        let csr =
            Pki::check_csr(&r.csr_pem).map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        let refused = |e: EnrollTokenError| {
            self.engine
                .metrics
                .enroll_tokens_refused
                .fetch_add(1, Ordering::Relaxed);
            self.refused_enroll(&self.token_refusals, &r.host_id, &e.to_string());
            match e {
                EnrollTokenError::Malformed => Status::invalid_argument(e.to_string()),
                EnrollTokenError::WrongCa { .. } => Status::failed_precondition(e.to_string()),
                EnrollTokenError::Store(_) => Status::internal(e.to_string()),
                _ => Status::permission_denied(e.to_string()),
            }
        };
        let grant = self
            .tokens
            .check_enroll(&r.token, &self.pki.ca_fingerprint, &r.host_id)
            .map_err(refused)?;
        let _one_at_a_time = self.enrollments.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(why) = self.engine.may_enroll(&r.host_id, grant.bound) {
            // The token is not used up: it was minted for some host, just not this one.
            self.engine
                .metrics
                .enrollments_refused
                .fetch_add(1, Ordering::Relaxed);
            self.refused_enroll(&self.identity_refusals, &r.host_id, &why.to_string());
            return Err(Status::already_exists(why));
        }
        self.tokens.consume(&grant, &r.host_id).map_err(refused)?;
        let (cert_pem, not_after_ns, cert) = self
            .pki
            .sign_client(&r.host_id, csr)
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        let replaced = self
            .engine
            .enrolled(&cert, not_after_ns)
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        // Streams opened with the replaced certificate end now (and would be
        // refused at their next message anyway).
        let closed = self.streams.close_host(&r.host_id);
        let mut details =
            std::collections::HashMap::from([("cert_serial".to_owned(), cert.serial.clone())]);
        if let Some(old) = &replaced {
            details.insert("replaced_serial".into(), old.serial.clone());
            details.insert("streams_ended".into(), closed.to_string());
        }
        self.audit_enroll_with(&r.host_id, "ok".into(), details);
        tracing::info!(host = %r.host_id, serial = %cert.serial, re_enrolled = replaced.is_some(), "host enrolled");
        Ok(Response::new(EnrollResponse {
            host_id: r.host_id,
            client_cert_pem: cert_pem,
            ca_cert_pem: self.pki.ca_pem.clone(),
            not_after_ns,
            fleet_key: self.pki.fleet_key.to_vec(),
        }))
    }

    type StreamStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<CollectorMessage, Status>> + Send>>;

    async fn stream(
        &self,
        req: Request<Streaming<SensorMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let certs = req.peer_certs().ok_or_else(|| {
            Status::unauthenticated(
                "no client certificate: Stream needs the certificate issued at enrollment \
                 (run `custodyd enroll --collector ADDR --token TOKEN` on the host)",
            )
        })?;
        let der = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
        let cert = cert_identity(der).map_err(|e| Status::unauthenticated(format!("{e:#}")))?;
        if let Err(r) = self.engine.check_sensor_cert(&cert) {
            tracing::warn!(host = %cert.host, serial = %cert.serial, "sensor stream refused: {r}");
            return Err(Status::unauthenticated(r.to_string()));
        }
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let session = Session {
            host: cert.host.clone(),
            cert,
            engine: self.engine.clone(),
            queue: self.queue.clone(),
            streams: self.streams.clone(),
            responder: self.responder.clone(),
            shutdown: self.shutdown.clone(),
            tx,
        };
        tokio::spawn(session.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Session {
    host: String,
    /// The certificate the stream was opened with; it must stay the host's current
    /// one for every message.
    cert: CertIdentity,
    engine: Arc<Engine>,
    queue: IngestQueue,
    streams: Arc<SensorStreams>,
    responder: Arc<Responder>,
    shutdown: watch::Receiver<bool>,
    tx: Outbound,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<SensorMessage>) {
        let host = self.host.clone();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await;
        let hello = match first {
            Ok(Ok(Some(SensorMessage {
                msg: Some(sensor_message::Msg::Hello(h)),
            }))) => h,
            Ok(Err(e)) => {
                return self
                    .fail(Status::invalid_argument(format!(
                        "bad message: {}",
                        e.message()
                    )))
                    .await;
            }
            Err(_) => {
                return self
                    .fail(Status::deadline_exceeded("no hello within 30 s"))
                    .await;
            }
            _ => {
                return self
                    .fail(Status::invalid_argument(
                        "the first message must be a hello",
                    ))
                    .await;
            }
        };
        if !hello.host_id.is_empty() && hello.host_id != host {
            return self
                .fail(Status::permission_denied(format!(
                    "hello names host {:?} but the client certificate is for {host:?}",
                    hello.host_id
                )))
                .await;
        }
        // The hello may come up to 30 s after the stream opened.
        if let Err(r) = self.engine.check_sensor_cert(&self.cert) {
            return self.fail(Status::unauthenticated(r.to_string())).await;
        }
        let resume = match self.engine.hello(&host, &hello) {
            Ok(r) => r,
            Err(e) => return self.fail(Status::unavailable(format!("{e:#}"))).await,
        };
        // What the sensor says is cut before it reaches the log.
        let boot = field_caps::shorten(&hello.boot_id, field_caps::ID);
        tracing::info!(%host, resume, %boot, "sensor connected");
        if self
            .tx
            .send(msg(collector_message::Msg::HelloAck(HelloAck {
                resume_from_seq: resume,
                host_id: host.clone(),
            })))
            .await
            .is_err()
        {
            return;
        }
        let reg = self
            .streams
            .register(&host, Arc::new(StreamSink(self.tx.clone())));
        // The identity may have changed between the check at open and now.
        if let Err(r) = self.engine.check_sensor_cert(&self.cert) {
            self.streams.unregister(&host, reg.id);
            return self.fail(Status::unauthenticated(r.to_string())).await;
        }
        self.engine.set_connected(&host, true);
        let sid = reg.id;
        // Actions issued while the host was away, in the order they were issued.
        {
            let responder = self.responder.clone();
            let host = host.clone();
            tokio::spawn(async move { responder.host_connected(&host).await });
        }
        let result = self.pump(&mut inbound, &reg.closed).await;
        self.streams.unregister(&host, sid);
        self.engine.set_connected(&host, false);
        if let Err(status) = result {
            tracing::warn!(%host, "sensor stream ended: {}", status.message());
            let _ = self.tx.send(Err(status)).await;
        } else {
            tracing::info!(%host, "sensor disconnected");
        }
    }

    async fn fail(self, status: Status) {
        tracing::warn!(host = %self.host, "sensor stream refused: {}", status.message());
        let _ = self.tx.send(Err(status)).await;
    }

    async fn pump(
        &mut self,
        inbound: &mut Streaming<SensorMessage>,
        closed: &tokio::sync::Notify,
    ) -> Result<(), Status> {
        // Batches queued for storing, oldest first: their answers go out in order.
        let mut pending: VecDeque<(u64, Pending)> = VecDeque::new();
        let mut last_heartbeat: Option<std::time::Instant> = None;
        loop {
            let m = tokio::select! {
                // Answers first: an ack lets the sensor send its next batch.
                biased;
                out = async { (&mut pending.front_mut().expect("guarded").1).await },
                    if !pending.is_empty() =>
                {
                    let (first, _) = pending.pop_front().expect("guarded");
                    let out = out
                        .map_err(|_| "collector is shutting down".to_string())
                        .and_then(|r| r)
                        .map_err(Status::unavailable)?;
                    self.answer(first, out).await?;
                    continue;
                }
                m = inbound.message(), if pending.len() < STREAM_IN_FLIGHT => m,
                _ = self.shutdown.changed() => {
                    return Err(Status::unavailable("collector is shutting down"));
                }
                _ = closed.notified() => {
                    // Re-enrolled or retired: say which, from the engine's record.
                    return Err(Status::unauthenticated(match self.engine.check_sensor_cert(&self.cert) {
                        Err(r) => r.to_string(),
                        Ok(()) => "the host re-enrolled: reconnect".to_owned(),
                    }));
                }
            };
            let m = match m {
                Ok(Some(m)) => m,
                Ok(None) => return self.answer_all(&mut pending).await,
                Err(e) => {
                    // What came before the bad message is stored: say so first.
                    self.answer_all(&mut pending).await?;
                    self.engine
                        .metrics
                        .stream_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Oversized or undecodable messages end this stream only.
                    return Err(Status::new(
                        if e.code() == tonic::Code::Unknown {
                            tonic::Code::InvalidArgument
                        } else {
                            e.code()
                        },
                        format!("rejected message from {}: {}", self.host, e.message()),
                    ));
                }
            };
            // Nothing from a certificate that stopped being the host's is used.
            if let Err(r) = self.engine.check_sensor_cert(&self.cert) {
                return Err(Status::unauthenticated(r.to_string()));
            }
            match m.msg {
                Some(sensor_message::Msg::Batch(b)) => {
                    let first = b.first_seq;
                    let p = self
                        .queue
                        .enqueue(self.host.clone(), b)
                        .await
                        .map_err(Status::unavailable)?;
                    pending.push_back((first, p));
                }
                Some(sensor_message::Msg::Heartbeat(hb)) => {
                    // After an outage a stream delivers every heartbeat the sensor
                    // queued meanwhile; each takes the engine's write lock, so
                    // applying them all would hold the host's next batch (a live
                    // event) behind the other hosts' groups many times over. The
                    // counters are cumulative: the next one says it all.
                    if last_heartbeat.is_some_and(|t| t.elapsed() < HEARTBEAT_MIN_GAP) {
                        continue;
                    }
                    last_heartbeat = Some(std::time::Instant::now());
                    self.engine
                        .heartbeat(&self.host, &hb)
                        .map_err(|e| Status::unavailable(format!("{e:#}")))?;
                }
                Some(sensor_message::Msg::Result(r)) => {
                    if !r.host.is_empty() && r.host != self.host {
                        let claimed = field_caps::shorten(&r.host, field_caps::NAME);
                        tracing::warn!(host = %self.host, %claimed, "command result names another host; recorded for the stream's host");
                    }
                    let responder = self.responder.clone();
                    let host = self.host.clone();
                    // The audit append flushes to disk: off the stream's task.
                    let _ =
                        tokio::task::spawn_blocking(move || responder.command_result(&host, &r))
                            .await;
                }
                Some(sensor_message::Msg::Hello(_)) => {
                    return Err(Status::invalid_argument("hello sent twice on one stream"));
                }
                None => {
                    return Err(Status::invalid_argument(
                        "empty or unknown sensor message (is the sensor newer than the collector?)",
                    ));
                }
            }
        }
    }

    /// Answers every queued batch, in order (the stream is ending).
    async fn answer_all(&self, pending: &mut VecDeque<(u64, Pending)>) -> Result<(), Status> {
        while let Some((first, p)) = pending.pop_front() {
            let out = IngestQueue::outcome(p).await.map_err(Status::unavailable)?;
            self.answer(first, out).await?;
        }
        Ok(())
    }

    /// Tells the sensor what became of one of its batches: refusals, then the ack.
    async fn answer(&self, first: u64, out: IngestOutcome) -> Result<(), Status> {
        if let Some(r) = &out.rejected {
            self.send(collector_message::Msg::Rejected(BatchRejected {
                first_seq: first,
                last_seq: out.up_to_seq,
                code: r.code.into(),
                reason: r.reason.clone(),
            }))
            .await?;
        }
        // Each refused event is reported as a range of one, so the
        // sensor counts exactly what was lost (the rest is stored).
        for (seq, r) in &out.refused {
            self.send(collector_message::Msg::Rejected(BatchRejected {
                first_seq: *seq,
                last_seq: *seq,
                code: r.code.into(),
                reason: r.reason.clone(),
            }))
            .await?;
        }
        if out.up_to_seq > 0 {
            self.send(collector_message::Msg::Ack(Ack {
                up_to_seq: out.up_to_seq,
            }))
            .await?;
        }
        Ok(())
    }

    async fn send(&self, m: collector_message::Msg) -> Result<(), Status> {
        self.tx
            .send(msg(m))
            .await
            .map_err(|_| Status::cancelled("sensor went away"))
    }
}
