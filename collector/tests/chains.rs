//! Three hosts, each with its own enrolled identity and shipper: alice's process
//! on A connects to B's agent service, which spawns a stdio MCP server that
//! connects to C, which opens a file. The collector returns one chain.

mod common;

use std::time::Duration;

use agent_user::shipper::{Shipper, ShipperHandle};
use common::*;
use custody_collector::auth::Role;
use custody_collector::synth;
use custody_proto::admin::v1::{
    GetChainRequest, ListAgentsRequest, ListChainsRequest, ListCredentialsRequest,
    get_chain_request::Target,
};
use custody_proto::sensor::v1::Event;

async fn ship_all(ship: &ShipperHandle, events: &[Event]) {
    let mut last = 0;
    for e in events {
        last = ship.send(e.clone()).unwrap();
    }
    wait_for(20, "acked", || {
        let s = ship.stats();
        async move { s.last_acked_seq >= last }
    })
    .await;
}

async fn run(accept_first: bool) {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    let hosts = ["host-a", "host-b", "host-c"];
    let mut ships = vec![];
    let mut keep = vec![];
    for h in hosts {
        let state = tempfile::tempdir().unwrap();
        let spool = tempfile::tempdir().unwrap();
        let paths = enroll_host(
            &addr,
            &enroll_token(&c, Duration::from_secs(60)),
            h,
            state.path(),
        )
        .await;
        let (ship, _cmds) = Shipper::start(shipper_config(&addr, &paths, spool.path(), h)).unwrap();
        ships.push(ship);
        keep.push((state, spool, _cmds));
    }
    let s = synth::three_hosts(hosts, synth::T0);
    if accept_first {
        // C and B report (accepts included) before A's connect arrives.
        ship_all(&ships[2], &s.c).await;
        ship_all(&ships[1], &s.b).await;
        ship_all(&ships[0], &s.a).await;
    } else {
        ship_all(&ships[0], &s.a).await;
        ship_all(&ships[1], &s.b).await;
        ship_all(&ships[2], &s.c).await;
    }

    let viewer = operator(dir.path(), Role::Viewer);
    let mut adm = admin(&addr, &c.ca_pem).await;
    // Find the file open and ask for its chain.
    let evs = adm
        .list_events(authed(
            custody_proto::admin::v1::ListEventsRequest {
                filter: Some(custody_proto::admin::v1::EventFilter {
                    host: "host-c".into(),
                    kind: "file_open".into(),
                    ..Default::default()
                }),
                limit: 10,
                ..Default::default()
            },
            &viewer,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].chain_id, s.a1);
    let chain = adm
        .get_chain(authed(
            GetChainRequest {
                target: Some(Target::EventId(evs[0].event_id.clone())),
                event_limit: 100,
            },
            &viewer,
        ))
        .await
        .unwrap()
        .into_inner();
    let sum = chain.summary.as_ref().unwrap();
    assert_eq!(sum.chain_id, s.a1);
    assert_eq!(
        (sum.human.as_str(), sum.human_source.as_str()),
        ("alice", "login")
    );
    assert_eq!(sum.hosts, vec!["host-a", "host-b", "host-c"]);
    assert_eq!(
        chain.path_from_root,
        vec![s.a1.clone(), s.b1.clone(), s.b2.clone(), s.c1.clone()]
    );
    let node = |id: &str| chain.nodes.iter().find(|n| n.exec_id == id).unwrap();
    assert_eq!(node(&s.a1).host, "host-a");
    assert_eq!(node(&s.b1).host, "host-b");
    assert_eq!(node(&s.b1).agent_id, "research-agent");
    assert_eq!(node(&s.b2).upstream, s.b1);
    assert_eq!(node(&s.c1).depth, 3);
    assert!(
        node(&s.c1)
            .actions
            .iter()
            .any(|a| a.contains("open /srv/data/report.csv"))
    );
    assert_eq!(node(&s.a1).credentials[0].fingerprint, "hmac-sha256:aa11");
    assert_eq!(node(&s.b1).credentials[0].usage, "held");
    let mut kinds: Vec<(String, String, String)> = chain
        .edges
        .iter()
        .map(|e| (e.from_exec_id.clone(), e.to_exec_id.clone(), e.kind.clone()))
        .collect();
    kinds.sort();
    let mut want = vec![
        (s.a1.clone(), s.b1.clone(), "net".to_string()),
        (s.b1.clone(), s.b2.clone(), "stdio".to_string()),
        (s.b2.clone(), s.c1.clone(), "net".to_string()),
    ];
    want.sort();
    assert_eq!(kinds, want);
    assert_eq!(chain.events.len(), s.a.len() + s.b.len() + s.c.len());

    let chains = adm
        .list_chains(authed(ListChainsRequest::default(), &viewer))
        .await
        .unwrap()
        .into_inner()
        .chains;
    assert_eq!(chains.len(), 1, "{chains:?}");
    let creds = adm
        .list_credentials(authed(ListCredentialsRequest {}, &viewer))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(creds.credentials.len(), 2);
    let agents = adm
        .list_agents(authed(ListAgentsRequest {}, &viewer))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(agents.agents[0].agent_id, "research-agent");
    for s in &ships {
        s.shutdown().await.unwrap();
    }
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_host_chain_in_order() {
    run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_host_chain_accept_before_connect() {
    run(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_survives_collector_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = synth::three_hosts(["a", "b", "c"], synth::T0);
    {
        let e = custody_collector::Engine::open(&dir.path().join("store")).unwrap();
        // B and C first, then the collector restarts, then A.
        for (h, evs) in [("c", &s.c), ("b", &s.b)] {
            let mut evs = evs.clone();
            synth::number(&mut evs);
            e.ingest(
                h,
                custody_proto::sensor::v1::EventBatch {
                    first_seq: 1,
                    events: evs,
                },
            )
            .unwrap();
        }
    }
    let e = custody_collector::Engine::open(&dir.path().join("store")).unwrap();
    let mut a = s.a.clone();
    synth::number(&mut a);
    e.ingest(
        "a",
        custody_proto::sensor::v1::EventBatch {
            first_seq: 1,
            events: a,
        },
    )
    .unwrap();
    let chain = e
        .get_chain(&GetChainRequest {
            target: Some(Target::ExecId(s.c1.clone())),
            event_limit: 10,
        })
        .unwrap()
        .unwrap();
    assert_eq!(
        chain.path_from_root,
        vec![s.a1.clone(), s.b1.clone(), s.b2.clone(), s.c1.clone()]
    );
    assert_eq!(chain.summary.unwrap().human, "alice");
}
