//! A compromised host speaks only about its own processes, and the size of what it
//! sends is bounded. Each test carries out the attack with real enrolled shippers
//! over mTLS against a real collector: a fork grafting another host's process, a
//! command result claiming another host's processes, a backdated cross-host link,
//! megabytes of `cwd`/`cgroup_path`, and a 120 KB path through a viewer's dry run.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_user::shipper::{Shipper, ShipperHandle};
use common::*;
use custody_collector::auth::Role;
use custody_collector::clock::now_ns;
use custody_collector::engine::field_caps;
use custody_collector::{Collector, synth};
use custody_proto::admin::v1::{
    Action, Chain, DryRunPoliciesRequest, EventFilter, GetActionRequest, GetChainRequest, Host,
    ListEventsRequest, ListHostsRequest, PolicyFile, RespondRequest,
    admin_service_client::AdminServiceClient, get_chain_request, respond_request::Target,
};
use custody_proto::sensor::v1::{
    Command, CommandResult, CommandStatus, Event, ProcessFork, event::Kind,
};
use tonic::transport::Channel;

type Answer = Arc<dyn Fn(&str, &Command) -> CommandResult + Send + Sync>;

/// An enrolled host whose sensor is a real shipper; the test decides what it sends
/// and how it answers commands.
struct Sensor {
    ship: ShipperHandle,
    commands: Arc<Mutex<Vec<Command>>>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Sensor {
    async fn start(c: &Collector, name: &'static str, answer: Answer) -> Sensor {
        let addr = c.addr.to_string();
        let state = tempfile::tempdir().unwrap();
        let spool = tempfile::tempdir().unwrap();
        let paths = enroll_host(
            &addr,
            &enroll_token(c, Duration::from_secs(60)),
            name,
            state.path(),
        )
        .await;
        let (ship, mut cmds) =
            Shipper::start(shipper_config(&addr, &paths, spool.path(), name)).unwrap();
        let commands = Arc::new(Mutex::new(vec![]));
        let (seen, reply) = (commands.clone(), ship.clone());
        tokio::spawn(async move {
            while let Some(cmd) = cmds.recv().await {
                seen.lock().unwrap().push(cmd.clone());
                let _ = reply.send_result(answer(name, &cmd)).await;
            }
        });
        Sensor {
            ship,
            commands,
            _dirs: (state, spool),
        }
    }

    /// Sends `events` and waits until the collector acknowledged them all (stored
    /// or refused).
    async fn ship(&self, events: &[Event]) {
        let mut last = 0;
        for e in events {
            last = self.ship.send(e.clone()).unwrap();
        }
        let ship = self.ship.clone();
        wait_for(30, "events acked", || {
            let s = ship.stats();
            async move { s.last_acked_seq >= last }
        })
        .await;
    }

    fn commands(&self) -> Vec<Command> {
        self.commands.lock().unwrap().clone()
    }
}

/// Answers "ok" with the command's targets as affected.
fn honest() -> Answer {
    Arc::new(|host, cmd| result(host, cmd, CommandStatus::Ok, cmd.targets.clone()))
}

fn result(
    host: &str,
    cmd: &Command,
    status: CommandStatus,
    affected: Vec<String>,
) -> CommandResult {
    let now = now_ns();
    CommandResult {
        command_id: cmd.id.clone(),
        host: host.into(),
        status: status.into(),
        message: "applied".into(),
        affected_exec_ids: affected,
        received_ns: now,
        completed_ns: now,
        apply_ns: 1,
    }
}

struct Api {
    adm: AdminServiceClient<Channel>,
    viewer: String,
    responder: String,
}

impl Api {
    async fn new(c: &Collector, dir: &std::path::Path) -> Api {
        Api {
            adm: admin(&c.addr.to_string(), &c.ca_pem).await,
            viewer: operator(dir, Role::Viewer),
            responder: operator(dir, Role::Responder),
        }
    }

    async fn chain_of(&mut self, exec_id: &str) -> Chain {
        self.adm
            .get_chain(authed(
                GetChainRequest {
                    target: Some(get_chain_request::Target::ExecId(exec_id.into())),
                    event_limit: 100,
                },
                &self.viewer,
            ))
            .await
            .unwrap()
            .into_inner()
    }

    async fn host(&mut self, id: &str) -> Host {
        self.adm
            .list_hosts(authed(ListHostsRequest {}, &self.viewer))
            .await
            .unwrap()
            .into_inner()
            .hosts
            .into_iter()
            .find(|h| h.host_id == id)
            .unwrap()
    }

    async fn events(&mut self, host: &str, kind: &str) -> Vec<Event> {
        self.adm
            .list_events(authed(
                ListEventsRequest {
                    filter: Some(EventFilter {
                        host: host.into(),
                        kind: kind.into(),
                        ..Default::default()
                    }),
                    limit: 100,
                    ..Default::default()
                },
                &self.viewer,
            ))
            .await
            .unwrap()
            .into_inner()
            .events
            .into_iter()
            .filter_map(|e| e.event)
            .collect()
    }

    async fn respond(&mut self, verb: &str, target: Target) -> Action {
        self.adm
            .respond(authed(
                RespondRequest {
                    verb: verb.into(),
                    target: Some(target),
                    reason: format!("test {verb}"),
                    ..Default::default()
                },
                &self.responder,
            ))
            .await
            .unwrap()
            .into_inner()
    }

    async fn action(&mut self, id: &str) -> Action {
        self.adm
            .get_action(authed(GetActionRequest { id: id.into() }, &self.viewer))
            .await
            .unwrap()
            .into_inner()
    }

    async fn wait_action(&mut self, id: &str, done: impl Fn(&Action) -> bool) -> Action {
        for _ in 0..400 {
            let a = self.action(id).await;
            if done(&a) {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "action never reached the state: {:#?}",
            self.action(id).await
        );
    }
}

fn fork(parent: &custody_proto::sensor::v1::Process, host: &str, t: u64, child: &str) -> Event {
    synth::event(
        parent,
        host,
        t,
        Kind::Fork(ProcessFork {
            child_exec_id: child.into(),
            child_pid: 4242,
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cannot_graft_another_hosts_process_into_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let a = Sensor::start(&c, "host-a", honest()).await;
    let b = Sensor::start(&c, "host-b", honest()).await;
    let mut api = Api::new(&c, dir.path()).await;
    let t = now_ns();

    // A's agent: a root process (no parent yet).
    let a1 = synth::process("host-a", 100, 0, "/usr/bin/agent", "finance-agent");
    a.ship(&[synth::exec(&a1, "host-a", t, vec![])]).await;
    // B claims to have forked it, in a batch with a legitimate event.
    let b1 = synth::process("host-b", 200, 0, "/bin/sh", "");
    b.ship(&[
        synth::exec(&b1, "host-b", t, vec![]),
        fork(&b1, "host-b", t + 1, &a1.exec_id),
        synth::file_open(&b1, "host-b", t + 2, "/tmp/kept"),
    ])
    .await;

    // The graft was refused, counted, and reported to the sensor; the rest of the
    // batch was stored.
    let hb = api.host("host-b").await;
    assert_eq!(hb.events_refused, 1, "{hb:?}");
    assert_eq!(hb.events_stored, 2, "{hb:?}");
    assert_eq!(hb.batches_rejected, 0);
    assert_eq!(b.ship.stats().rejected, 1);
    assert_eq!(api.events("host-b", "file_open").await.len(), 1);
    assert!(api.events("host-b", "fork").await.is_empty());

    // B's chain does not contain A's process; A's process is still its own root.
    let chain_b = api.chain_of(&b1.exec_id).await;
    assert!(
        chain_b.nodes.iter().all(|n| n.exec_id != a1.exec_id),
        "{:?}",
        chain_b.nodes
    );
    let chain_a = api.chain_of(&a1.exec_id).await;
    assert_eq!(chain_a.summary.unwrap().chain_id, a1.exec_id);

    // A kill of B's chain goes to B only.
    let act = api.respond("kill", Target::Chain(b1.exec_id.clone())).await;
    let act = api
        .wait_action(&act.id, |x| x.hosts.iter().all(|h| h.state == "ok"))
        .await;
    assert_eq!(
        act.hosts
            .iter()
            .map(|h| h.host.as_str())
            .collect::<Vec<_>>(),
        ["host-b"]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.commands().is_empty(), "{:?}", a.commands());
    assert_eq!(b.commands().len(), 1);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_results_name_only_the_senders_processes() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let a = Sensor::start(&c, "host-a", honest()).await;
    let a1 = synth::process("host-a", 100, 0, "/usr/bin/agent", "finance-agent");
    let foreign = a1.exec_id.clone();
    // B answers kills of its processes claiming A's process as affected (so that
    // follow-ups would skip it); a quarantine it answers with a status that is not
    // an answer.
    let liar: Answer = Arc::new(move |host, cmd| {
        if cmd.kind_name() == "quarantine" {
            return result(host, cmd, CommandStatus::Unspecified, cmd.targets.clone());
        }
        let mut affected = cmd.targets.clone();
        affected.push(foreign.clone());
        affected.push("host-bx:1:1".into());
        result(host, cmd, CommandStatus::Ok, affected)
    });
    let b = Sensor::start(&c, "host-b", liar).await;
    let mut api = Api::new(&c, dir.path()).await;
    let t = now_ns();
    a.ship(&[synth::exec(&a1, "host-a", t, vec![])]).await;
    let b1 = synth::process("host-b", 200, 0, "/bin/sh", "");
    let b2 = synth::process("host-b", 201, 0, "/bin/sleep", "");
    b.ship(&[
        synth::exec(&b1, "host-b", t, vec![]),
        synth::exec(&b2, "host-b", t, vec![]),
    ])
    .await;

    // A status that is not terminal is refused: the delivery keeps waiting.
    let q = api
        .respond("quarantine", Target::Process(b2.exec_id.clone()))
        .await;
    // The answers of one stream are handled in order: once the kill's answer is in,
    // the quarantine's was handled.
    let kill = api
        .respond("kill", Target::Process(b1.exec_id.clone()))
        .await;
    let kill = api
        .wait_action(&kill.id, |x| x.hosts.iter().all(|h| h.state == "ok"))
        .await;
    assert_eq!(kill.hosts[0].affected_exec_ids, vec![b1.exec_id.clone()]);
    let q = api.action(&q.id).await;
    assert_eq!(q.hosts[0].state, "sent", "{q:?}");
    assert_eq!(b.commands().len(), 2);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backdated_cross_host_link_is_timed_by_its_arrival() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let a = Sensor::start(&c, "host-a", honest()).await;
    let b = Sensor::start(&c, "host-b", honest()).await;
    let hc = Sensor::start(&c, "host-c", honest()).await;
    let mut api = Api::new(&c, dir.path()).await;
    let s = 1_000_000_000u64;
    let start = now_ns();

    // C's process connected to B's service 10 s ago: that is what put it to work.
    let c1 = synth::process("host-c", 300, 0, "/usr/bin/client", "");
    let b1 = synth::process("host-b", 200, 0, "/usr/bin/service", "svc-agent");
    let (bip, cip, aip) = ("10.0.0.2", "10.0.0.3", "10.0.0.1");
    hc.ship(&[synth::net(
        &c1,
        "host-c",
        start - 10 * s,
        "connect",
        (cip, 40000),
        (bip, 8080),
    )])
    .await;
    b.ship(&[
        synth::net(
            &b1,
            "host-b",
            start - 10 * s,
            "accept",
            (bip, 8080),
            (cip, 40000),
        ),
        // A second connection, from A, 5 s ago.
        synth::net(
            &b1,
            "host-b",
            start - 5 * s,
            "accept",
            (bip, 8080),
            (aip, 50000),
        ),
    ])
    .await;
    assert_eq!(
        api.chain_of(&b1.exec_id).await.summary.unwrap().chain_id,
        c1.exec_id
    );
    // A claims its connect happened 100 s ago (still within the pairing window of
    // B's accept): earlier than C's, so it would become B's upstream.
    let a1 = synth::process("host-a", 100, 0, "/usr/bin/attacker", "");
    a.ship(&[synth::net(
        &a1,
        "host-a",
        start - 100 * s,
        "connect",
        (aip, 50000),
        (bip, 8080),
    )])
    .await;

    let chain = api.chain_of(&b1.exec_id).await;
    assert_eq!(
        chain.summary.as_ref().unwrap().chain_id,
        c1.exec_id,
        "B's service stays in the chain that put it to work: {chain:?}"
    );
    // A's link to B's accept exists, timed by when the collector got it.
    let inbound = c.engine.read().chains.inbound(&b1.exec_id).to_vec();
    let edge = inbound
        .iter()
        .find(|e| e.from == a1.exec_id)
        .expect("A's connection is linked to B's accept");
    assert!(
        edge.time_ns >= start,
        "the cross-host link is timed by its arrival ({} >= {start})",
        edge.time_ns
    );
    let c_edge = inbound.iter().find(|e| e.from == c1.exec_id).unwrap();
    assert!(
        c_edge.time_ns >= start,
        "honest links are timed the same way"
    );
    assert!(c_edge.time_ns < edge.time_ns);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabytes_of_cwd_and_cgroup_path_are_stored_capped() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let a = Sensor::start(&c, "host-a", honest()).await;
    let mut api = Api::new(&c, dir.path()).await;
    let t = now_ns();
    // 3 MiB each, 6 MiB per event (under the 8 MiB message limit): 1,500 times the
    // cap of either field.
    let big = "/x".repeat(3 << 19);
    let mut events = vec![];
    for i in 0..4u32 {
        let mut p = synth::process("host-a", 100 + i, 0, "/usr/bin/agent", "coder");
        p.cwd = big.clone();
        p.cgroup_path = big.clone();
        events.push(synth::exec(&p, "host-a", t + u64::from(i), vec![]));
    }
    a.ship(&events).await;

    let h = api.host("host-a").await;
    assert_eq!(h.events_stored, 4);
    assert!(h.fields_truncated >= 8, "{h:?}");
    let stored = api.events("host-a", "exec").await;
    assert_eq!(stored.len(), 4);
    for e in &stored {
        let p = e.process.as_ref().unwrap();
        for f in [&p.cwd, &p.cgroup_path] {
            assert!(f.len() <= field_caps::PATH, "{}", f.len());
            assert!(f.starts_with("/x/x"));
            assert!(f.ends_with(&format!("…[truncated from {} bytes]", big.len())));
        }
    }
    // The chain index keeps every process in memory: it holds the capped fields.
    {
        let st = c.engine.read();
        for i in 0..4 {
            let n = st
                .chains
                .node(&format!("host-a:{}:{}", 100 + i, 1100 + i))
                .unwrap();
            assert!(n.process.cwd.len() <= field_caps::PATH);
            assert!(n.process.cgroup_path.len() <= field_caps::CGROUP_PATH);
        }
    }
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewers_dry_run_over_a_120_kb_path_completes() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let a = Sensor::start(&c, "host-a", honest()).await;
    let mut api = Api::new(&c, dir.path()).await;
    let t = now_ns();
    // 120 KB of one-letter directories: 61,440 parents.
    let path = "/a".repeat(61_440);
    let p = synth::process("host-a", 100, 0, "/usr/bin/agent", "coder");
    a.ship(&[
        synth::exec(&p, "host-a", t, vec![]),
        synth::file_open(&p, "host-a", t + 1, &path),
    ])
    .await;
    let opened = api.events("host-a", "file_open").await;
    let Some(Kind::FileOpen(f)) = &opened[0].kind else {
        panic!("{opened:?}")
    };
    assert!(f.path_truncated && f.path.len() <= field_caps::PATH);

    let policy = r#"
@id("no-reads-under-a")
forbid (principal, action == Action::"open_read", resource in Dir::"/a/a");
"#;
    let report = api
        .adm
        .dry_run_policies(authed(
            DryRunPoliciesRequest {
                files: vec![PolicyFile {
                    name: "a.cedar".into(),
                    text: policy.into(),
                }],
                ..Default::default()
            },
            &api.viewer,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(report.events >= 2, "{report:?}");
    // The policy still sees the directories near the root of the cut path.
    assert_eq!(
        report.per_policy.get("no-reads-under-a"),
        Some(&1),
        "{report:?}"
    );
    c.shutdown().await.unwrap();
}
