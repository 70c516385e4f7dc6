//! Operator authentication and roles on the admin API; retention.

mod common;

use std::time::Duration;

use common::*;
use custody_collector::auth::Role;
use custody_collector::engine::retention::Retention;
use custody_collector::{Collector, CollectorConfig, synth};
use custody_proto::admin::v1::{
    CreateEnrollTokenRequest, EventFilter, GetAuditRequest, ListHostsRequest, WhoAmIRequest,
};
use custody_proto::sensor::v1::EventBatch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_requires_tokens_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    let mut adm = admin(&addr, &c.ca_pem).await;

    let err = adm.list_hosts(ListHostsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("missing operator token"),
        "{}",
        err.message()
    );
    let err = adm
        .list_hosts(authed(ListHostsRequest {}, "cso1.bogus"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let viewer = operator(dir.path(), Role::Viewer);
    let responder = operator(dir.path(), Role::Responder);
    let admin_t = operator(dir.path(), Role::Admin);
    let me = adm
        .who_am_i(authed(WhoAmIRequest {}, &viewer))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.role, "viewer");
    adm.list_hosts(authed(ListHostsRequest {}, &viewer))
        .await
        .unwrap();

    for t in [&viewer, &responder] {
        let err = adm
            .create_enroll_token(authed(
                CreateEnrollTokenRequest {
                    ttl_seconds: 60,
                    host_id: String::new(),
                },
                t,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("needs role admin"),
            "{}",
            err.message()
        );
    }
    let tok = adm
        .create_enroll_token(authed(
            CreateEnrollTokenRequest {
                ttl_seconds: 60,
                host_id: "host-z".into(),
            },
            &admin_t,
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    // The minted token really enrolls (and only host-z).
    let state = tempfile::tempdir().unwrap();
    let err = agent_user::shipper::enroll(
        &addr,
        &tok,
        "host-y",
        state.path(),
        &state.path().join("fleet.key"),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("bound to host"), "{err:#}");
    enroll_host(&addr, &tok, "host-z", state.path()).await;

    let audit = adm
        .get_audit(authed(
            GetAuditRequest {
                limit: 100,
                since_ns: 0,
            },
            &viewer,
        ))
        .await
        .unwrap()
        .into_inner();
    let denied = audit
        .entries
        .iter()
        .filter(|e| e.result.starts_with("denied: needs role"))
        .count();
    assert_eq!(denied, 2, "{:?}", audit.entries);
    assert!(
        audit
            .entries
            .iter()
            .any(|e| e.action == "enroll" && e.target == "host-z" && e.result == "ok")
    );
    c.shutdown().await.unwrap();
}

#[test]
fn retention_by_age_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let e = custody_collector::Engine::open(dir.path()).unwrap();
    let now = custody_collector::clock::now_ns();
    let hour = 3_600_000_000_000u64;
    let old = synth::process("h", 1, 0, "/bin/old", "");
    let new = synth::process("h", 2, 0, "/bin/new", "");
    let mut evs = vec![];
    for i in 0..100 {
        evs.push(synth::file_open(&old, "h", now - 48 * hour + i, "/old"));
    }
    for i in 0..100 {
        evs.push(synth::file_open(&new, "h", now - hour + i, "/new"));
    }
    synth::number(&mut evs);
    e.ingest(
        "h",
        EventBatch {
            first_seq: 1,
            events: evs.clone(),
        },
    )
    .unwrap();
    let r = e
        .enforce_retention(
            &Retention {
                max_age: Some(Duration::from_secs(24 * 3600)),
                max_bytes: None,
            },
            now,
        )
        .unwrap();
    assert_eq!(r.events_deleted, 100);
    assert_eq!(r.processes_removed, 1);
    let (left, _) = e
        .list_events(&EventFilter::default(), 1000, None, true)
        .unwrap();
    assert_eq!(left.len(), 100);
    assert!(
        left.iter()
            .all(|s| s.event.process.as_ref().unwrap().exe == "/bin/new")
    );
    // Re-sent old events are still duplicates after their index entries are gone.
    let out = e
        .ingest(
            "h",
            EventBatch {
                first_seq: 1,
                events: evs[..100].to_vec(),
            },
        )
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (0, 100));

    // Size: keep roughly the newest half.
    let bytes = e.read().stored_bytes;
    let r = e
        .enforce_retention(
            &Retention {
                max_age: None,
                max_bytes: Some(bytes / 2),
            },
            now,
        )
        .unwrap();
    assert!((49..=51).contains(&r.events_deleted), "{r:?}");
    assert!(e.read().stored_bytes <= bytes / 2);
    let (left, _) = e
        .list_events(
            &EventFilter {
                host: "h".into(),
                ..Default::default()
            },
            1000,
            None,
            true,
        )
        .unwrap();
    assert_eq!(left.len() as u64, 100 - r.events_deleted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_task_runs_periodically() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CollectorConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.retention = Retention {
        max_age: Some(Duration::from_secs(3600)),
        max_bytes: None,
    };
    cfg.retention_interval = Duration::from_millis(100);
    let c = Collector::start(cfg).await.unwrap();
    let now = custody_collector::clock::now_ns();
    let p = synth::process("h", 1, 0, "/bin/x", "");
    let mut evs: Vec<_> = (0..10)
        .map(|i| synth::file_open(&p, "h", now - 7_200_000_000_000 + i, "/x"))
        .collect();
    synth::number(&mut evs);
    c.engine
        .ingest(
            "h",
            EventBatch {
                first_seq: 1,
                events: evs,
            },
        )
        .unwrap();
    let engine = c.engine.clone();
    wait_for(10, "retention task", || {
        let n = engine.read().stored_events;
        async move { n == 0 }
    })
    .await;
    drop(engine);
    c.shutdown().await.unwrap();
}
