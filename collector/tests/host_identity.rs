//! Host identity under attack, over real mTLS against a real collector: a token
//! not bound to a host cannot enroll over it, only the certificate of a host's last
//! enrollment is accepted on its stream, a retired identity is refused while its
//! data stays, and one event numbered 2^63 does not turn later events into
//! duplicates.

mod common;

use std::time::Duration;

use agent_user::shipper::{self, EnrolledPaths, Shipper};
use common::*;
use custody_collector::Collector;
use custody_collector::auth::Role;
use custody_collector::pki::Pki;
use custody_proto::admin::v1::{
    CreateEnrollTokenRequest, EventFilter, GetAuditRequest, Host, ListEventsRequest,
    ListHostsRequest, RespondRequest, RetireHostRequest, respond_request::Target,
};
use custody_proto::sensor::v1::{
    CollectorMessage, EnrollRequest, Event, EventBatch, Hello, SensorMessage, collector_message,
    command, sensor_message, sensor_service_client::SensorServiceClient,
};
use tokio::sync::mpsc;
use tonic::Streaming;

/// A certificate and key as a sensor presents them.
struct Cert {
    cert_pem: String,
    key_pem: String,
}

impl Cert {
    fn of(paths: &EnrolledPaths) -> Cert {
        Cert {
            cert_pem: std::fs::read_to_string(&paths.cert_pem).unwrap(),
            key_pem: std::fs::read_to_string(&paths.key_pem).unwrap(),
        }
    }

    /// A certificate for `host` signed by the collector's CA outside enrollment:
    /// what someone holds who obtained one earlier (an old disk image, a stolen key
    /// of a since re-enrolled host).
    fn issued_directly(c: &Collector, host: &str) -> Cert {
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let (cert_pem, _, _) = c
            .pki
            .sign_client(host, Pki::check_csr(&csr).unwrap())
            .unwrap();
        Cert {
            cert_pem,
            key_pem: key.serialize_pem(),
        }
    }
}

/// A hand-driven sensor stream: send a message, read the next answer.
struct RawSensor {
    tx: mpsc::Sender<SensorMessage>,
    inbound: Streaming<CollectorMessage>,
}

impl RawSensor {
    /// Opens a stream and says hello; `Err` is the collector's refusal.
    async fn connect(c: &Collector, cert: &Cert, host: &str) -> Result<RawSensor, tonic::Status> {
        let ch = shipper::tls::channel(
            &c.addr.to_string(),
            &c.ca_pem,
            Some((&cert.cert_pem, &cert.key_pem)),
        )
        .await
        .unwrap();
        let (tx, rx) = mpsc::channel(16);
        tx.send(SensorMessage {
            msg: Some(sensor_message::Msg::Hello(Hello {
                host_id: host.into(),
                boot_id: "boot-raw".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let inbound = SensorServiceClient::new(ch)
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut s = RawSensor { tx, inbound };
        match s.next().await? {
            collector_message::Msg::HelloAck(_) => Ok(s),
            other => panic!("expected a hello ack, got {other:?}"),
        }
    }

    async fn next(&mut self) -> Result<collector_message::Msg, tonic::Status> {
        match tokio::time::timeout(Duration::from_secs(10), self.inbound.message()).await {
            Ok(Ok(Some(m))) => Ok(m.msg.expect("a message")),
            Ok(Ok(None)) => Err(tonic::Status::cancelled("stream ended without a status")),
            Ok(Err(s)) => Err(s),
            Err(_) => panic!("no answer from the collector within 10 s"),
        }
    }

    /// Sends one batch and returns the collector's answers up to its ack.
    async fn batch(
        &mut self,
        events: Vec<Event>,
    ) -> Result<Vec<collector_message::Msg>, tonic::Status> {
        self.tx
            .send(SensorMessage {
                msg: Some(sensor_message::Msg::Batch(EventBatch {
                    first_seq: 0,
                    events,
                })),
            })
            .await
            .map_err(|_| tonic::Status::cancelled("stream closed"))?;
        let mut out = vec![];
        loop {
            let m = self.next().await?;
            let done = matches!(m, collector_message::Msg::Ack(_));
            out.push(m);
            if done {
                return Ok(out);
            }
        }
    }
}

fn events(host: &str, seqs: &[u64]) -> Vec<Event> {
    let p = custody_collector::synth::process(host, 42, 1, "/usr/bin/agent", "");
    seqs.iter()
        .map(|s| {
            let mut e = custody_collector::synth::file_open(
                &p,
                host,
                1_700_000_000_000_000_000 + s,
                "/etc/hosts",
            );
            e.seq = *s;
            e
        })
        .collect()
}

fn bound_token(c: &Collector, host: &str) -> String {
    c.tokens
        .mint_enroll(&c.ca_fingerprint, Duration::from_secs(60), Some(host))
        .unwrap()
        .0
}

async fn host(c: &Collector, viewer: &str, id: &str) -> Host {
    admin(&c.addr.to_string(), &c.ca_pem)
        .await
        .list_hosts(authed(ListHostsRequest {}, viewer))
        .await
        .unwrap()
        .into_inner()
        .hosts
        .into_iter()
        .find(|h| h.host_id == id)
        .unwrap_or_else(|| panic!("no host {id}"))
}

async fn stored_events(c: &Collector, viewer: &str, host: &str) -> usize {
    admin(&c.addr.to_string(), &c.ca_pem)
        .await
        .list_events(authed(
            ListEventsRequest {
                filter: Some(EventFilter {
                    host: host.into(),
                    ..Default::default()
                }),
                limit: 1000,
                ..Default::default()
            },
            viewer,
        ))
        .await
        .unwrap()
        .into_inner()
        .events
        .len()
}

fn refused(r: Result<RawSensor, tonic::Status>) -> tonic::Status {
    match r {
        Ok(_) => panic!("the collector accepted the stream"),
        Err(s) => s,
    }
}

fn superseded_refusals(c: &Collector) -> u64 {
    let i = custody_collector::engine::CertRefusal::REASONS
        .iter()
        .position(|r| *r == "superseded")
        .unwrap();
    c.engine.metrics.certs_refused[i].load(std::sync::atomic::Ordering::Relaxed)
}

/// The review's attack: with any enrollment token, enroll under an existing host
/// id, get a second valid certificate and receive the host's commands. Now the
/// enrollment is refused (ALREADY_EXISTS, saying what to do, audited), the token
/// is not used up, a certificate for the host obtained outside its enrollment is
/// refused on Stream, and the real host's events and commands keep flowing to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbound_token_cannot_take_over_an_enrolled_host() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    let viewer = operator(dir.path(), Role::Viewer);
    let state = tempfile::tempdir().unwrap();
    let paths = enroll_host(&addr, &bound_token(&c, "host-a"), "host-a", state.path()).await;
    let spool = tempfile::tempdir().unwrap();
    let (ship, mut cmds) =
        Shipper::start(shipper_config(&addr, &paths, spool.path(), "host-a")).unwrap();

    // The attacker holds a token for any host and asks for host-a.
    let unbound = enroll_token(&c, Duration::from_secs(60));
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let ch = shipper::tls::channel(&addr, &c.ca_pem, None).await.unwrap();
    let issued_before = c.pki.issued();
    let err = SensorServiceClient::new(ch)
        .enroll(EnrollRequest {
            token: unbound.clone(),
            host_id: "host-a".into(),
            csr_pem: csr,
        })
        .await
        .expect_err("enrollment over an enrolled host is refused");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    for want in [
        "already enrolled",
        "enroll-token --host host-a",
        "host retire host-a",
    ] {
        assert!(
            err.message().contains(want),
            "{want:?} in {}",
            err.message()
        );
    }
    assert_eq!(c.pki.issued(), issued_before, "nothing was signed");
    // Through the sensor's own enrollment too; no certificate is written.
    let thief = tempfile::tempdir().unwrap();
    let e = shipper::enroll(
        &addr,
        &unbound,
        "host-a",
        thief.path(),
        &thief.path().join("fleet.key"),
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("already enrolled"), "{e:#}");
    assert!(!thief.path().join("client.pem").exists());
    assert_eq!(
        c.engine
            .metrics
            .enrollments_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    let audit = admin(&addr, &c.ca_pem)
        .await
        .get_audit(authed(GetAuditRequest::default(), &viewer))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(
        audit.iter().any(|a| a.action == "enroll"
            && a.target == "host-a"
            && a.result.starts_with("denied: ")
            && a.result.contains("already enrolled")),
        "{audit:#?}"
    );

    // A certificate for host-a from outside its enrollment is refused on Stream,
    // and nothing it sends is stored.
    let stolen = Cert::issued_directly(&c, "host-a");
    let s = refused(RawSensor::connect(&c, &stolen, "host-a").await);
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    assert!(
        s.message()
            .contains("not the current certificate of host \"host-a\""),
        "{}",
        s.message()
    );
    assert_eq!(superseded_refusals(&c), 1);

    // The real host still streams: its events are stored...
    for e in events("host-a", &[1, 2, 3, 4, 5]) {
        ship.send(e).unwrap();
    }
    wait_for(20, "host-a's events acked", || {
        let s = ship.stats();
        async move { s.last_acked_seq == 5 }
    })
    .await;
    assert_eq!(stored_events(&c, &viewer, "host-a").await, 5);
    // ...and a kill for one of its processes reaches its stream.
    let responder = operator(dir.path(), Role::Responder);
    let exec_id = custody_collector::synth::process("host-a", 42, 1, "", "").exec_id;
    let action = admin(&addr, &c.ca_pem)
        .await
        .respond(authed(
            RespondRequest {
                verb: "kill".into(),
                target: Some(Target::Process(exec_id.clone())),
                reason: "test".into(),
                ..Default::default()
            },
            &responder,
        ))
        .await
        .unwrap()
        .into_inner();
    let cmd = tokio::time::timeout(Duration::from_secs(10), cmds.recv())
        .await
        .expect("the kill reaches host-a's stream")
        .unwrap();
    assert!(
        matches!(cmd.kind, Some(command::Kind::KillProcess(_))),
        "{cmd:?}"
    );
    assert_eq!(cmd.targets, vec![exec_id]);
    assert!(!action.id.is_empty());
    let a = host(&c, &viewer, "host-a").await;
    assert!(a.connected && !a.retired);
    assert_eq!(a.certs_refused, 1);

    // The unbound token was not used up by the refusals: it enrolls a new host.
    let other = tempfile::tempdir().unwrap();
    enroll_host(&addr, &unbound, "host-z", other.path()).await;
    ship.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
}

/// Re-enrolling with a token bound to the host replaces its certificate: the open
/// stream of the old one ends, the old one and any other certificate for the host
/// are refused, the new one works, and nothing a refused stream sent is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_refused_on_stream() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    let viewer = operator(dir.path(), Role::Viewer);
    let admin_token = operator(dir.path(), Role::Admin);
    let first = tempfile::tempdir().unwrap();
    let old = Cert::of(
        &enroll_host(
            &addr,
            &enroll_token(&c, Duration::from_secs(60)),
            "host-a",
            first.path(),
        )
        .await,
    );
    // Held by an attacker since before the re-enrollment.
    let held = Cert::issued_directly(&c, "host-a");

    let mut open = RawSensor::connect(&c, &old, "host-a").await.unwrap();
    open.batch(events("host-a", &[1, 2])).await.unwrap();

    // The admin re-enrolls host-a with a token bound to it.
    let token = admin(&addr, &c.ca_pem)
        .await
        .create_enroll_token(authed(
            CreateEnrollTokenRequest {
                ttl_seconds: 60,
                host_id: "host-a".into(),
            },
            &admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let second = tempfile::tempdir().unwrap();
    let new = Cert::of(&enroll_host(&addr, &token, "host-a", second.path()).await);

    // The stream opened with the old certificate is ended, naming why.
    let s = open.next().await.expect_err("the old stream ends");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    assert!(
        s.message().contains("a later enrollment replaced it"),
        "{}",
        s.message()
    );
    for cert in [&old, &held] {
        let s = refused(RawSensor::connect(&c, cert, "host-a").await);
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
        assert!(
            s.message().contains("not the current certificate"),
            "{}",
            s.message()
        );
    }
    assert!(superseded_refusals(&c) >= 3);

    let mut current = RawSensor::connect(&c, &new, "host-a").await.unwrap();
    let out = current.batch(events("host-a", &[3, 4])).await.unwrap();
    assert!(
        matches!(out.last(), Some(collector_message::Msg::Ack(a)) if a.up_to_seq == 4),
        "{out:?}"
    );
    assert_eq!(stored_events(&c, &viewer, "host-a").await, 4);
    let a = host(&c, &viewer, "host-a").await;
    assert_eq!(a.last_seq, 4);
    assert!(a.certs_refused >= 2, "{a:?}");
    let new_serial = custody_collector::pki::cert_identity(
        &custody_collector::pki::pem_to_der(&new.cert_pem).unwrap(),
    )
    .unwrap()
    .serial;
    assert_eq!(a.cert_serial, new_serial);
    // The audit log says which certificate replaced which.
    let audit = admin(&addr, &c.ca_pem)
        .await
        .get_audit(authed(GetAuditRequest::default(), &viewer))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let re = audit
        .iter()
        .find(|a| a.action == "enroll" && a.details.contains_key("replaced_serial"))
        .expect("the re-enrollment is audited");
    assert_eq!((re.result.as_str(), re.target.as_str()), ("ok", "host-a"));
    assert_eq!(re.details["cert_serial"], new_serial);
    assert_eq!(re.details["streams_ended"], "1");
    c.shutdown().await.unwrap();
}

/// `custodyctl host retire` (admin only): the retired identity's certificate is
/// refused and its open stream ends, its events stay readable, the fleet shows it
/// as retired, and the host id enrolls again with any token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_identity_is_refused_and_the_id_enrolls_again() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    let viewer = operator(dir.path(), Role::Viewer);
    let admin_token = operator(dir.path(), Role::Admin);
    let state = tempfile::tempdir().unwrap();
    let paths = enroll_host(
        &addr,
        &enroll_token(&c, Duration::from_secs(60)),
        "host-a",
        state.path(),
    )
    .await;
    let old = Cert::of(&paths);
    let mut open = RawSensor::connect(&c, &old, "host-a").await.unwrap();
    open.batch(events("host-a", &[1, 2, 3])).await.unwrap();

    let ctl = |token: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_custodyctl"))
            .args(args)
            .env("CUSTODY_COLLECTOR", &addr)
            .env("CUSTODY_CA", dir.path().join("ca.pem"))
            .env("CUSTODY_TOKEN", token)
            .env("HOME", "/nonexistent")
            .env_remove("CUSTODY_CONFIG")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = tokio::task::block_in_place(|| {
        ctl(
            &viewer,
            &["host", "retire", "host-a", "--reason", "laptop lost"],
        )
    });
    assert!(!ok, "a viewer cannot retire a host");
    assert!(err.contains("needs role admin"), "{err}");
    let (ok, out, err) = tokio::task::block_in_place(|| {
        ctl(
            &admin_token,
            &["host", "retire", "host-a", "--reason", "laptop lost"],
        )
    });
    assert!(ok, "{err}");
    assert!(out.contains("host host-a retired"), "{out}");

    let s = open
        .next()
        .await
        .expect_err("the retired identity's stream ends");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    assert!(
        s.message().contains("was retired by admin"),
        "{}",
        s.message()
    );
    let s = refused(RawSensor::connect(&c, &old, "host-a").await);
    assert_eq!(s.code(), tonic::Code::Unauthenticated);
    assert!(s.message().contains("retired"), "{}", s.message());
    // Twice is refused, and says by whom.
    let e = admin(&addr, &c.ca_pem)
        .await
        .retire_host(authed(
            RetireHostRequest {
                host_id: "host-a".into(),
                reason: String::new(),
            },
            &admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    // The data stays; the fleet shows the identity retired.
    assert_eq!(stored_events(&c, &viewer, "host-a").await, 3);
    let a = host(&c, &viewer, "host-a").await;
    assert!(a.retired && !a.connected, "{a:?}");
    assert_eq!(
        (a.retired_by.as_str(), a.retired_reason.as_str()),
        ("admin", "laptop lost")
    );
    let (ok, out, err) = tokio::task::block_in_place(|| ctl(&viewer, &["hosts"]));
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with("host-a")).unwrap();
    assert!(line.contains("retired"), "{out}");
    let (ok, out, _) = tokio::task::block_in_place(|| ctl(&viewer, &["status"]));
    assert!(ok, "a retired host does not make the fleet degraded: {out}");

    // A new enrollment under the id is allowed with any token; the new sensor's
    // events are stored after the old ones.
    let fresh = tempfile::tempdir().unwrap();
    let paths = enroll_host(
        &addr,
        &enroll_token(&c, Duration::from_secs(60)),
        "host-a",
        fresh.path(),
    )
    .await;
    let spool = tempfile::tempdir().unwrap();
    let (ship, _cmds) =
        Shipper::start(shipper_config(&addr, &paths, spool.path(), "host-a")).unwrap();
    for e in events("host-a", &[1, 2]) {
        ship.send(e).unwrap();
    }
    wait_for(20, "the new identity's events acked", || {
        let s = ship.stats();
        async move { s.last_acked_seq == 5 }
    })
    .await;
    assert_eq!(stored_events(&c, &viewer, "host-a").await, 5);
    let a = host(&c, &viewer, "host-a").await;
    assert!(!a.retired && a.connected, "{a:?}");
    // The retired certificate stays refused.
    refused(RawSensor::connect(&c, &old, "host-a").await);
    ship.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
}

/// The review's second half of the takeover: one event with seq 2^63 made every
/// later real event of the host a "duplicate". A batch reaching that far above the
/// high-water mark is refused, and the host's real events are stored after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_far_ahead_does_not_drop_later_events() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    let viewer = operator(dir.path(), Role::Viewer);
    let state = tempfile::tempdir().unwrap();
    let paths = enroll_host(
        &addr,
        &enroll_token(&c, Duration::from_secs(60)),
        "host-a",
        state.path(),
    )
    .await;
    let mut s = RawSensor::connect(&c, &Cert::of(&paths), "host-a")
        .await
        .unwrap();
    s.batch(events("host-a", &[1, 2])).await.unwrap();
    let jump = custody_collector::engine::MAX_SEQ_JUMP;
    for far in [1u64 << 63, 2 + jump + 1] {
        let out = s.batch(events("host-a", &[far])).await.unwrap();
        match &out[0] {
            collector_message::Msg::Rejected(r) => {
                assert_eq!(r.code, "seq_out_of_range", "{r:?}");
                assert!(r.reason.contains("more than"), "{}", r.reason);
            }
            other => panic!("expected a rejection of seq {far}, got {other:?}"),
        }
    }
    // At the bound it is still a plausible gap (events the spool dropped).
    s.batch(events("host-a", &[2 + jump])).await.unwrap();
    drop(s);
    assert_eq!(stored_events(&c, &viewer, "host-a").await, 3);
    let a = host(&c, &viewer, "host-a").await;
    assert_eq!(a.last_seq, 2 + jump);
    assert_eq!(a.batches_rejected, 2);

    // On a fresh collector: the huge seq first, then the real sensor's events.
    let dir = tempfile::tempdir().unwrap();
    let c2 = start_collector(dir.path()).await;
    let addr2 = c2.addr.to_string();
    let viewer2 = operator(dir.path(), Role::Viewer);
    let state = tempfile::tempdir().unwrap();
    let paths = enroll_host(
        &addr2,
        &enroll_token(&c2, Duration::from_secs(60)),
        "host-a",
        state.path(),
    )
    .await;
    let mut s = RawSensor::connect(&c2, &Cert::of(&paths), "host-a")
        .await
        .unwrap();
    s.batch(events("host-a", &[1 << 63])).await.unwrap();
    drop(s);
    let spool = tempfile::tempdir().unwrap();
    let (ship, _cmds) =
        Shipper::start(shipper_config(&addr2, &paths, spool.path(), "host-a")).unwrap();
    for e in events("host-a", &[1, 2, 3, 4]) {
        ship.send(e).unwrap();
    }
    wait_for(20, "real events acked", || {
        let s = ship.stats();
        async move { s.last_acked_seq == 4 }
    })
    .await;
    assert_eq!(stored_events(&c2, &viewer2, "host-a").await, 4);
    let a = host(&c2, &viewer2, "host-a").await;
    assert_eq!((a.last_seq, a.duplicates_dropped), (4, 0));
    ship.shutdown().await.unwrap();
    c2.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
}
