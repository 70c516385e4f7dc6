//! Kill the collector (SIGKILL, the real binary) mid-stream and restart it on the
//! same data dir: every event the sensor produced is stored exactly once.

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use agent_user::shipper::Shipper;
use common::*;
use custody_collector::auth::{Role, TokenStore};
use custody_collector::synth;
use custody_proto::admin::v1::{EventFilter, ListEventsRequest, ListHostsRequest};

fn kill9(child: &mut Child) {
    nix_kill(child.id());
    child.wait().unwrap();
}

fn nix_kill(pid: u32) {
    // SIGKILL: no chance to flush anything that was not already durable.
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_mid_stream_loses_and_duplicates_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_collector(dir.path(), "127.0.0.1:0");
    let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let fp = custody_collector::secret::sha256_hex(
        &custody_collector::pki::pem_to_der(&ca_pem).unwrap(),
    );
    let tokens = TokenStore::open(dir.path()).unwrap();
    let token = tokens
        .mint_enroll(&fp, Duration::from_secs(60), None)
        .unwrap()
        .0;
    let state = tempfile::tempdir().unwrap();
    let paths = enroll_host(&addr, &token, "host-a", state.path()).await;
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = shipper_config(&addr, &paths, spool.path(), "host-a");
    cfg.batch_max_events = 200;
    let (ship, _cmds) = Shipper::start(cfg.clone()).unwrap();

    const N: u64 = 20_000;
    let producer = {
        let ship = ship.clone();
        tokio::spawn(async move {
            let p = synth::process("host-a", 100, 1, "/usr/bin/agent", "agent-1");
            for i in 0..N {
                ship.send(synth::file_open(
                    &p,
                    "host-a",
                    synth::T0 + i,
                    &format!("/data/{i}"),
                ))
                .unwrap();
                if i % 500 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    wait_for(30, "some events acked", || {
        let s = ship.stats();
        async move { s.last_acked_seq > 2_000 }
    })
    .await;
    kill9(&mut child);
    let acked_at_kill = ship.stats().last_acked_seq;
    assert!(acked_at_kill < N, "killed too late to test anything");
    // Restart the shipper too while the collector is down: seqs persist.
    tokio::time::sleep(Duration::from_millis(300)).await;
    producer.await.unwrap();
    ship.shutdown().await.unwrap();
    drop(ship);
    let (ship, _cmds) = Shipper::start(cfg).unwrap();
    assert_eq!(ship.stats().next_seq, N + 1);

    let (mut child, addr2) = spawn_collector(dir.path(), &addr);
    assert_eq!(addr2, addr);
    wait_for(60, "everything acked after restart", || {
        let s = ship.stats();
        async move { s.last_acked_seq == N && s.spool_depth == 0 }
    })
    .await;

    let viewer = tokens.mint_operator("t", Role::Viewer).unwrap();
    let mut adm = admin(&addr, &ca_pem).await;
    let hosts = adm
        .list_hosts(authed(ListHostsRequest {}, &viewer))
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert_eq!(hosts[0].events_stored, N);
    assert_eq!(hosts[0].last_seq, N);
    // Page through everything stored: each seq exactly once.
    let mut seqs = vec![];
    let mut page = String::new();
    loop {
        let r = adm
            .list_events(authed(
                ListEventsRequest {
                    filter: Some(EventFilter {
                        host: "host-a".into(),
                        ..Default::default()
                    }),
                    limit: 5000,
                    page_token: page.clone(),
                    ascending: true,
                },
                &viewer,
            ))
            .await
            .unwrap()
            .into_inner();
        seqs.extend(r.events.iter().map(|e| e.event.as_ref().unwrap().seq));
        if r.next_page_token.is_empty() {
            break;
        }
        page = r.next_page_token;
    }
    assert_eq!(seqs.len() as u64, N);
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len() as u64, N, "duplicates stored");
    assert_eq!((seqs[0], *seqs.last().unwrap()), (1, N));
    ship.shutdown().await.unwrap();
    kill9(&mut child);
}
