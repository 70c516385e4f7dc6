//! Enrollment and channel security over real mTLS.

mod common;

use std::time::Duration;

use agent_user::shipper::{self, Shipper};
use common::*;
use custody_collector::auth::Role;
use custody_proto::admin::v1::{EventFilter, ListEventsRequest, ListHostsRequest};
use custody_proto::sensor::v1::{
    EventBatch, Hello, SensorMessage, collector_message, sensor_message,
    sensor_service_client::SensorServiceClient,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_then_stream_events() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    let state = tempfile::tempdir().unwrap();
    let paths = enroll_host(
        &addr,
        &enroll_token(&c, Duration::from_secs(60)),
        "host-a",
        state.path(),
    )
    .await;
    for p in [&paths.ca_pem, &paths.cert_pem, &paths.key_pem] {
        assert_eq!(mode(p), 0o600, "{}", p.display());
    }
    // Every host gets the collector's fleet key, so one secret has one fingerprint
    // fleet-wide.
    let other = tempfile::tempdir().unwrap();
    enroll_host(
        &addr,
        &enroll_token(&c, Duration::from_secs(60)),
        "host-z",
        other.path(),
    )
    .await;
    let fleet_key = std::fs::read(dir.path().join("fleet.key")).unwrap();
    assert_eq!(fleet_key.len(), 32);
    assert_eq!(mode(&dir.path().join("fleet.key")), 0o600);
    for s in [state.path(), other.path()] {
        let k = s.join("fleet.key");
        assert_eq!(std::fs::read(&k).unwrap(), fleet_key, "{}", k.display());
        assert_eq!(mode(&k), 0o600);
        let key = agent_user::credential::FleetKey::load_or_create(&k).unwrap();
        assert_eq!(
            key.fingerprint(b"sk-proj-same-secret"),
            agent_user::credential::FleetKey::from_bytes(fleet_key.clone().try_into().unwrap())
                .fingerprint(b"sk-proj-same-secret")
        );
    }
    let spool = tempfile::tempdir().unwrap();
    let (ship, _cmds) =
        Shipper::start(shipper_config(&addr, &paths, spool.path(), "host-a")).unwrap();
    let p = custody_collector::synth::process("host-a", 42, 1, "/usr/bin/agent", "agent-1");
    for i in 0..500u64 {
        ship.send(custody_collector::synth::file_open(
            &p,
            "host-a",
            1_700_000_000_000_000_000 + i,
            "/etc/hosts",
        ))
        .unwrap();
    }
    wait_for(20, "all events acked", || {
        let s = ship.stats();
        async move { s.last_acked_seq == 500 && s.spool_depth == 0 }
    })
    .await;
    let viewer = operator(dir.path(), Role::Viewer);
    let mut adm = admin(&addr, &c.ca_pem).await;
    let hosts = adm
        .list_hosts(authed(ListHostsRequest {}, &viewer))
        .await
        .unwrap()
        .into_inner()
        .hosts;
    let hosts: Vec<_> = hosts
        .into_iter()
        .filter(|h| h.host_id == "host-a")
        .collect();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].events_stored, 500);
    assert!(hosts[0].connected);
    assert!(hosts[0].enrolled_at_ns > 0);
    let evs = adm
        .list_events(authed(
            ListEventsRequest {
                filter: Some(EventFilter {
                    host: "host-a".into(),
                    ..Default::default()
                }),
                limit: 1000,
                ..Default::default()
            },
            &viewer,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(evs.len(), 500);
    ship.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_expired_and_mispinned_tokens_fail() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    let state = tempfile::tempdir().unwrap();

    let token = enroll_token(&c, Duration::from_secs(60));
    enroll_host(&addr, &token, "host-a", state.path()).await;
    let err = shipper::enroll(
        &addr,
        &token,
        "host-a",
        state.path(),
        &state.path().join("fleet.key"),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("already used"), "{err:#}");

    let expired = enroll_token(&c, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let err = shipper::enroll(
        &addr,
        &expired,
        "host-b",
        state.path(),
        &state.path().join("fleet.key"),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("expired"), "{err:#}");

    // A token pinning another CA never reaches the collector's Enroll.
    let good = enroll_token(&c, Duration::from_secs(60));
    let secret = good.rsplit('.').next().unwrap();
    let wrong = format!("cst1.{}.{secret}", "00".repeat(32));
    let err = shipper::enroll(
        &addr,
        &wrong,
        "host-c",
        state.path(),
        &state.path().join("fleet.key"),
    )
    .await
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("does not match the token"), "{msg}");
    // ...and the good token is still unused.
    enroll_host(&addr, &good, "host-c", state.path()).await;
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_without_client_cert_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    let ch = shipper::tls::channel(&addr, &c.ca_pem, None).await.unwrap();
    let hello = SensorMessage {
        msg: Some(sensor_message::Msg::Hello(Hello {
            host_id: "host-a".into(),
            ..Default::default()
        })),
    };
    let err = SensorServiceClient::new(ch)
        .stream(tokio_stream::iter(vec![hello]))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("no client certificate"),
        "{}",
        err.message()
    );
    c.shutdown().await.unwrap();
}

/// Raw sensor stream with a host's enrolled identity.
async fn raw_stream(
    addr: &str,
    paths: &agent_user::shipper::EnrolledPaths,
    msgs: Vec<SensorMessage>,
) -> Vec<Result<collector_message::Msg, tonic::Status>> {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let ch = shipper::tls::channel(
        addr,
        &read(&paths.ca_pem),
        Some((&read(&paths.cert_pem), &read(&paths.key_pem))),
    )
    .await
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut inbound = SensorServiceClient::new(ch)
        .max_encoding_message_size(64 << 20)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let n = msgs.len();
    for m in msgs {
        tx.send(m).await.unwrap();
    }
    let mut out = vec![];
    // Hello -> HelloAck, then one or two answers per batch; stop at an error.
    while out.len() < 1 + 2 * (n - 1) {
        match tokio::time::timeout(Duration::from_secs(5), inbound.message()).await {
            Ok(Ok(Some(m))) => out.push(Ok(m.msg.unwrap())),
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(s)) => {
                out.push(Err(s));
                break;
            }
        }
    }
    out
}

fn hello(host: &str) -> SensorMessage {
    SensorMessage {
        msg: Some(sensor_message::Msg::Hello(Hello {
            host_id: host.into(),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_cannot_speak_for_another_host() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    let state = tempfile::tempdir().unwrap();
    let paths = enroll_host(
        &addr,
        &enroll_token(&c, Duration::from_secs(60)),
        "host-a",
        state.path(),
    )
    .await;

    // Events claiming host B, and events naming B's processes, are refused.
    let pb = custody_collector::synth::process("host-b", 7, 1, "/bin/x", "");
    let mut forged = custody_collector::synth::file_open(&pb, "host-b", 1, "/etc/shadow");
    forged.seq = 1;
    let mut grafted = custody_collector::synth::file_open(&pb, "host-a", 1, "/etc/shadow");
    grafted.seq = 2;
    let batch = |e| SensorMessage {
        msg: Some(sensor_message::Msg::Batch(EventBatch {
            first_seq: 0,
            events: vec![e],
        })),
    };
    let out = raw_stream(
        &addr,
        &paths,
        vec![hello("host-a"), batch(forged), batch(grafted)],
    )
    .await;
    let rejected: Vec<_> = out
        .iter()
        .filter_map(|m| match m {
            Ok(collector_message::Msg::Rejected(r)) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(rejected.len(), 2, "{out:?}");
    assert!(rejected.iter().all(|r| r.code == "host_mismatch"));
    assert!(
        rejected[0].reason.contains("host-b"),
        "{}",
        rejected[0].reason
    );

    // A hello for another host ends the stream.
    let out = raw_stream(&addr, &paths, vec![hello("host-b")]).await;
    match &out[0] {
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::PermissionDenied);
            assert!(
                s.message().contains("certificate is for \"host-a\""),
                "{}",
                s.message()
            );
        }
        other => panic!("expected refusal, got {other:?}"),
    }

    let viewer = operator(dir.path(), Role::Viewer);
    let mut adm = admin(&addr, &c.ca_pem).await;
    let hosts = adm
        .list_hosts(authed(ListHostsRequest {}, &viewer))
        .await
        .unwrap()
        .into_inner()
        .hosts;
    let a = hosts.iter().find(|h| h.host_id == "host-a").unwrap();
    assert_eq!(a.events_stored, 0);
    // Each event is refused on its own (a batch with other events would be kept).
    assert_eq!(a.events_refused, 2);
    assert_eq!(a.batches_rejected, 0);
    assert!(
        hosts
            .iter()
            .all(|h| h.host_id != "host-b" || h.events_stored == 0)
    );
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_batches_do_not_hurt_others() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    let state = tempfile::tempdir().unwrap();
    let pa = enroll_host(
        &addr,
        &enroll_token(&c, Duration::from_secs(60)),
        "host-a",
        state.path(),
    )
    .await;
    let state_b = tempfile::tempdir().unwrap();
    let pb = enroll_host(
        &addr,
        &enroll_token(&c, Duration::from_secs(60)),
        "host-b",
        state_b.path(),
    )
    .await;

    // Host A: a batch with decreasing seqs, then one far beyond the size limit.
    let p = custody_collector::synth::process("host-a", 7, 1, "/bin/x", "");
    let mut e1 = custody_collector::synth::file_open(&p, "host-a", 1, "/a");
    e1.seq = 5;
    let mut e2 = e1.clone();
    e2.seq = 4;
    let bad = SensorMessage {
        msg: Some(sensor_message::Msg::Batch(EventBatch {
            first_seq: 5,
            events: vec![e1.clone(), e2],
        })),
    };
    let mut huge = e1.clone();
    huge.process.as_mut().unwrap().argv = vec!["x".repeat(9 << 20)];
    let huge = SensorMessage {
        msg: Some(sensor_message::Msg::Batch(EventBatch {
            first_seq: 5,
            events: vec![huge],
        })),
    };
    let out = raw_stream(&addr, &pa, vec![hello("host-a"), bad, huge]).await;
    assert!(
        out.iter()
            .any(|m| matches!(m, Ok(collector_message::Msg::Rejected(r)) if r.code == "malformed")),
        "{out:?}"
    );
    let last = out.last().unwrap();
    assert!(
        matches!(last, Err(s) if s.code() == tonic::Code::OutOfRange || s.message().contains("too large")),
        "{last:?}"
    );

    // Host B is unaffected.
    let spool = tempfile::tempdir().unwrap();
    let (ship, _cmds) = Shipper::start(shipper_config(&addr, &pb, spool.path(), "host-b")).unwrap();
    let q = custody_collector::synth::process("host-b", 9, 1, "/bin/y", "");
    for i in 0..10 {
        ship.send(custody_collector::synth::file_open(
            &q,
            "host-b",
            1_700_000_000_000_000_000 + i,
            "/b",
        ))
        .unwrap();
    }
    wait_for(20, "host-b acked", || {
        let s = ship.stats();
        async move { s.last_acked_seq == 10 }
    })
    .await;
    ship.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
}

/// Sends its bytes as they are: a message the server's codec cannot decode.
#[derive(Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// Undecodable protobuf is the caller's error: INVALID_ARGUMENT, not INTERNAL (which
/// says the collector broke), on the unauthenticated Enroll and the operator API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    let ch = shipper::tls::channel(&addr, &c.ca_pem, None).await.unwrap();
    let viewer = operator(dir.path(), Role::Viewer);
    for path in [
        "/custody.sensor.v1.SensorService/Enroll",
        "/custody.admin.v1.AdminService/ListHosts",
    ] {
        let mut grpc = tonic::client::Grpc::new(ch.clone());
        grpc.ready().await.unwrap();
        // Field 1 as a length-delimited value claiming 100 bytes that are not there.
        let req = authed(vec![0x0a, 0x64, 0x01], &viewer);
        let err = grpc
            .unary(
                req,
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{path}: {err:?}");
        assert!(
            err.message().contains("malformed protobuf"),
            "{path}: {err:?}"
        );
    }
    c.shutdown().await.unwrap();
}

/// The review's slowloris: 300 connections from one peer, each holding a half-sent
/// HTTP/1.1 request, stayed open. With a per-peer limit the ones over it are closed
/// at accept, and a sensor from another address enrolls and streams meanwhile; when
/// the flood ends its places are given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_from_one_peer_is_capped_and_others_still_connect() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = custody_collector::server::CollectorConfig::new(
        dir.path(),
        "127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(),
    );
    cfg.conn_limits = custody_collector::api::conn_limit::ConnLimits {
        total: 1000,
        per_peer: 20,
    };
    let c = custody_collector::server::Collector::start(cfg)
        .await
        .unwrap();
    let port = c.addr.port();
    // The flood comes from 127.0.0.2; the sensor uses 127.0.0.1.
    let mut held = Vec::new();
    let mut closed = 0;
    for _ in 0..300 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = sock
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        // Half a TLS ClientHello: the server waits for the rest.
        let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
        held.push(s);
    }
    wait_for(10, "the connections over the limit are refused", || {
        let n = c.conn_gate.refused();
        async move { n >= 280 }
    })
    .await;
    for s in &mut held {
        let mut b = [0u8; 1];
        // A refused connection reads EOF (or a reset) at once; a held one times out.
        match tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            _ => {}
        }
    }
    assert_eq!(closed, 280, "20 held, the rest closed");
    // Another peer is served while the flood holds its 20.
    let addr = format!("127.0.0.1:{port}");
    let state = tempfile::tempdir().unwrap();
    enroll_host(
        &addr,
        &enroll_token(&c, Duration::from_secs(60)),
        "host-a",
        state.path(),
    )
    .await;
    drop(held);
    // The flood's places come back: the same peer can connect again.
    wait_for(10, "places given back", || {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let refused_before = c.conn_gate.refused();
        let gate = c.conn_gate.clone();
        async move {
            let mut s = sock
                .connect(format!("127.0.0.1:{port}").parse().unwrap())
                .await
                .unwrap();
            let mut b = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_millis(100), s.read(&mut b)).await;
            gate.refused() == refused_before
        }
    })
    .await;
    c.shutdown().await.unwrap();
}

/// `Enroll` is open to anyone who reaches the port, and every audit record is a
/// hash-chained disk write: a flood of refused enrollments (here 300 with a token that
/// is not one) is counted in full but reaches the audit log once per interval, the
/// record saying how many were held back; real enrollments are still recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_enrollments_does_not_flood_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let ch = shipper::tls::channel(&addr, &c.ca_pem, None).await.unwrap();
    let mut client = SensorServiceClient::new(ch);
    const FLOOD: u64 = 300;
    for i in 0..FLOOD {
        let err = client
            .enroll(custody_proto::sensor::v1::EnrollRequest {
                token: format!("not-a-token-{i}"),
                host_id: format!("flood-{i}"),
                csr_pem: csr.clone(),
            })
            .await
            .expect_err("a bogus token is refused");
        assert_ne!(err.code(), tonic::Code::Ok);
    }
    let m = &c.engine.metrics;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        load(&m.enroll_tokens_refused),
        FLOOD,
        "every refusal is counted"
    );
    assert_eq!(load(&m.enroll_refusals_unaudited), FLOOD - 1);

    // A real enrollment after the flood is audited as before.
    let state = tempfile::tempdir().unwrap();
    enroll_host(
        &addr,
        &enroll_token(&c, Duration::from_secs(60)),
        "host-real",
        state.path(),
    )
    .await;
    let viewer = operator(dir.path(), Role::Viewer);
    let audit = admin(&addr, &c.ca_pem)
        .await
        .get_audit(authed(
            custody_proto::admin::v1::GetAuditRequest::default(),
            &viewer,
        ))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let denied = audit
        .iter()
        .filter(|a| a.action == "enroll" && a.result.starts_with("denied: "))
        .count();
    assert_eq!(denied, 1, "one record for the flood: {audit:#?}");
    assert!(
        audit
            .iter()
            .any(|a| a.action == "enroll" && a.target == "host-real" && a.result == "ok"),
        "{audit:#?}"
    );
}
