//! The collector half of response: resolving an operator's action to per-host
//! commands, delivery over each host's sensor stream (now, or when an offline host
//! reconnects), per-host confirmations, follow-ups for processes that join a killed
//! chain later, clear refusals of bad input, roles, issuer hooks, and the audit
//! log's hash chain. Hosts are real enrolled shippers over mTLS; what they do with
//! a command is answered by the test (the kernel side is tests/tests/response.rs).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_user::shipper::{EnrolledPaths, Shipper, ShipperHandle};
use common::*;
use custody_collector::audit::AuditLog;
use custody_collector::auth::Role;
use custody_collector::response::hook::Hook;
use custody_collector::{Collector, CollectorConfig, synth};
use custody_proto::admin::v1::{
    Action, GetActionRequest, GetAuditRequest, ListHostsRequest, RespondRequest,
    VerifyAuditRequest, admin_service_client::AdminServiceClient, respond_request::Target,
};
use custody_proto::enums::WireEnum;
use custody_proto::sensor::v1::{
    Command, CommandResult, CommandStatus, Event, ProcessExit, command, event::Kind,
};
use tonic::transport::Channel;

type Seen = Arc<Mutex<Vec<Command>>>;

/// A host: an enrolled shipper whose commands are recorded and answered "ok" with
/// the targets as affected processes.
struct Host {
    name: &'static str,
    paths: EnrolledPaths,
    spool: tempfile::TempDir,
    _state: tempfile::TempDir,
    ship: Option<ShipperHandle>,
    seen: Seen,
}

impl Host {
    async fn enroll(c: &Collector, name: &'static str) -> Host {
        let state = tempfile::tempdir().unwrap();
        let paths = enroll_host(
            &c.addr.to_string(),
            &enroll_token(c, Duration::from_secs(60)),
            name,
            state.path(),
        )
        .await;
        Host {
            name,
            paths,
            spool: tempfile::tempdir().unwrap(),
            _state: state,
            ship: None,
            seen: Seen::default(),
        }
    }

    fn start(&mut self, addr: &str) {
        let (ship, mut cmds) = Shipper::start(shipper_config(
            addr,
            &self.paths,
            self.spool.path(),
            self.name,
        ))
        .unwrap();
        let (seen, answer, host) = (self.seen.clone(), ship.clone(), self.name);
        tokio::spawn(async move {
            while let Some(cmd) = cmds.recv().await {
                seen.lock().unwrap().push(cmd.clone());
                let now = custody_collector::clock::now_ns();
                let _ = answer
                    .send_result(CommandResult {
                        command_id: cmd.id.clone(),
                        host: host.into(),
                        status: CommandStatus::Ok.into(),
                        message: format!("applied {}", cmd.kind_name()),
                        affected_exec_ids: cmd.targets.clone(),
                        received_ns: now,
                        completed_ns: now + 1_000_000,
                        apply_ns: 1_000_000,
                    })
                    .await;
            }
        });
        self.ship = Some(ship);
    }

    async fn stop(&mut self) {
        if let Some(s) = self.ship.take() {
            s.shutdown().await.unwrap();
        }
    }

    async fn ship(&self, events: &[Event]) {
        let ship = self.ship.as_ref().unwrap();
        let mut last = 0;
        for e in events {
            last = ship.send(e.clone()).unwrap();
        }
        wait_for(20, "events acked", || {
            let s = ship.stats();
            async move { s.last_acked_seq >= last }
        })
        .await;
    }

    fn commands(&self) -> Vec<Command> {
        self.seen.lock().unwrap().clone()
    }
}

async fn respond(
    adm: &mut AdminServiceClient<Channel>,
    token: &str,
    verb: &str,
    target: Target,
) -> Result<Action, tonic::Status> {
    adm.respond(authed(
        RespondRequest {
            verb: verb.into(),
            target: Some(target),
            reason: format!("test {verb}"),
            ..Default::default()
        },
        token,
    ))
    .await
    .map(|r| r.into_inner())
}

async fn action(adm: &mut AdminServiceClient<Channel>, token: &str, id: &str) -> Action {
    adm.get_action(authed(GetActionRequest { id: id.into() }, token))
        .await
        .unwrap()
        .into_inner()
}

async fn wait_connected(adm: &mut AdminServiceClient<Channel>, token: &str, host: &str, up: bool) {
    for _ in 0..400 {
        let hosts = adm
            .list_hosts(authed(ListHostsRequest {}, token))
            .await
            .unwrap()
            .into_inner()
            .hosts;
        if hosts.iter().any(|h| h.host_id == host && h.connected == up) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{host} never became connected={up}");
}

async fn wait_state(
    adm: &mut AdminServiceClient<Channel>,
    token: &str,
    id: &str,
    done: impl Fn(&Action) -> bool,
) -> Action {
    for _ in 0..400 {
        let a = action(adm, token, id).await;
        if done(&a) {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let a = action(adm, token, id).await;
    panic!("action never reached the expected state: {a:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_kill_reaches_every_host_including_offline_and_late_processes() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    let mut hosts = vec![];
    for h in ["host-a", "host-b", "host-c"] {
        let mut host = Host::enroll(&c, h).await;
        host.start(&addr);
        hosts.push(host);
    }
    let s = synth::three_hosts(["host-a", "host-b", "host-c"], synth::T0);
    hosts[0].ship(&s.a).await;
    hosts[1].ship(&s.b).await;
    hosts[2].ship(&s.c).await;

    let responder = operator(dir.path(), Role::Responder);
    let viewer = operator(dir.path(), Role::Viewer);
    let mut adm = admin(&addr, &c.ca_pem).await;

    // Host C goes offline before the action.
    hosts[2].stop().await;
    wait_connected(&mut adm, &viewer, "host-c", false).await;

    // A viewer cannot act; the refusal is audited.
    let err = respond(&mut adm, &viewer, "kill", Target::Chain(s.a1.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    let a = respond(&mut adm, &responder, "kill", Target::Chain(s.a1.clone()))
        .await
        .unwrap();
    assert_eq!(a.kind, "kill_chain");
    assert_eq!(a.operator, "responder");
    let a = wait_state(&mut adm, &viewer, &a.id, |a| {
        a.hosts.iter().filter(|h| h.state == "ok").count() == 2
    })
    .await;
    let by_host: BTreeMap<&str, _> = a.hosts.iter().map(|h| (h.host.as_str(), h)).collect();
    assert_eq!(by_host["host-a"].targets, vec![s.a1.clone()]);
    let mut b_targets = by_host["host-b"].targets.clone();
    b_targets.sort();
    assert_eq!(b_targets, vec![s.b1.clone(), s.b2.clone()]);
    assert_eq!(by_host["host-c"].state, "pending", "offline host waits");
    assert_eq!(a.status, "pending");
    assert!(by_host["host-a"].effect_ns > 0);
    assert_eq!(by_host["host-a"].affected_exec_ids, vec![s.a1.clone()]);
    let cmd = &hosts[0].commands()[0];
    assert_eq!(
        (cmd.kind_name(), cmd.id.as_str()),
        ("kill_chain", a.id.as_str())
    );
    assert_eq!(cmd.reason, "test kill");
    assert!(hosts[2].commands().is_empty());

    // A second identical action gets a clear answer and sends nothing.
    let err = respond(&mut adm, &responder, "kill", Target::Chain(s.a1.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(err.message().contains(&a.id), "{}", err.message());
    assert_eq!(hosts[0].commands().len(), 1);

    // Host C comes back and gets what it missed.
    hosts[2].start(&addr);
    let a = wait_state(&mut adm, &viewer, &a.id, |a| a.status == "done").await;
    let c_part = a.hosts.iter().find(|h| h.host == "host-c").unwrap();
    assert_eq!(c_part.targets, vec![s.c1.clone()]);
    assert_eq!(hosts[2].commands().len(), 1);

    // A process that joins the chain after the command (B's service forks again)
    // gets a follow-up on its host.
    let late = synth::process("host-b", 5300, 5100, "/usr/bin/late-tool", "");
    let t = synth::T0 + 10_000_000_000;
    hosts[1]
        .ship(&[
            synth::event(
                &synth::process(
                    "host-b",
                    5100,
                    1,
                    "/opt/agent/bin/agent-svc",
                    "research-agent",
                ),
                "host-b",
                t,
                Kind::Fork(custody_proto::sensor::v1::ProcessFork {
                    child_exec_id: late.exec_id.clone(),
                    child_pid: 5300,
                }),
            ),
            synth::exec(&late, "host-b", t + 10, vec![]),
        ])
        .await;
    let a = wait_state(&mut adm, &viewer, &a.id, |a| {
        a.hosts.iter().any(|h| h.follow_up && h.state == "ok")
    })
    .await;
    let f = a.hosts.iter().find(|h| h.follow_up).unwrap();
    assert_eq!(
        (f.host.as_str(), f.targets.clone()),
        ("host-b", vec![late.exec_id.clone()])
    );
    assert!(hosts[1].commands().iter().any(
        |c| c.id.starts_with(&format!("{}.", a.id)) && c.targets == vec![late.exec_id.clone()]
    ));

    // The audit log holds the action and every host's confirmation, chained.
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
        .into_inner()
        .entries;
    let mine: Vec<_> = audit.iter().filter(|e| e.action_id == a.id).collect();
    assert!(mine.iter().any(|e| e.result == "issued"
        && e.action == "kill_chain"
        && e.actor == "responder"
        && e.reason == "test kill"));
    for h in ["host-a", "host-b", "host-c"] {
        let conf = mine
            .iter()
            .find(|e| e.action == "confirm" && e.actor == format!("host:{h}"))
            .unwrap_or_else(|| panic!("no confirmation from {h}"));
        assert_eq!(conf.result, "ok");
        assert!(conf.details.contains_key("command_to_effect_ms"));
    }
    assert!(
        audit
            .iter()
            .any(|e| e.actor == "viewer" && e.result.starts_with("denied"))
    );
    let v = adm
        .verify_audit(authed(VerifyAuditRequest {}, &viewer))
        .await
        .unwrap()
        .into_inner();
    assert!(v.intact, "{v:?}");
    assert_eq!(v.records as usize, audit.len().max(v.records as usize));
    for h in hosts.iter_mut() {
        h.stop().await;
    }
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_targets_get_clear_answers() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    let addr = c.addr.to_string();
    let mut a = Host::enroll(&c, "host-a").await;
    a.start(&addr);
    let s = synth::three_hosts(["host-a", "host-b", "host-c"], synth::T0);
    let p = synth::process("host-a", 4100, 4000, "/usr/bin/python3", "");
    let mut exit = synth::event(
        &p,
        "host-a",
        synth::T0 + 5,
        Kind::Exit(ProcessExit::default()),
    );
    exit.time_ns = synth::T0 + 5_000_000_000;
    a.ship(&s.a).await;
    a.ship(&[exit]).await;
    let responder = operator(dir.path(), Role::Responder);
    let mut adm = admin(&addr, &c.ca_pem).await;

    let cases = [
        (
            "kill",
            Target::Process("nonsense".into()),
            tonic::Code::InvalidArgument,
            "not an exec id",
        ),
        (
            "kill",
            Target::Process("host-z:1:2".into()),
            tonic::Code::NotFound,
            "no host",
        ),
        (
            "kill",
            Target::Process("host-a:77:88".into()),
            tonic::Code::NotFound,
            "never reported",
        ),
        (
            "kill",
            Target::Process(s.a1.clone()),
            tonic::Code::FailedPrecondition,
            "already exited",
        ),
        (
            "kill",
            Target::Chain(s.a1.clone()),
            tonic::Code::FailedPrecondition,
            "has exited",
        ),
        (
            "kill",
            Target::Chain("host-a:1:1".into()),
            tonic::Code::NotFound,
            "no chain",
        ),
        (
            "quarantine",
            Target::Agent("ghost".into()),
            tonic::Code::NotFound,
            "no agent",
        ),
        (
            "kill",
            Target::Credential("hmac-sha256:00".into()),
            tonic::Code::InvalidArgument,
            "revoke takes a credential",
        ),
        (
            "revoke",
            Target::Credential("abc".into()),
            tonic::Code::InvalidArgument,
            "not a credential fingerprint",
        ),
        (
            "revoke",
            Target::Credential(format!("hmac-sha256:{}", "0".repeat(32))),
            tonic::Code::NotFound,
            "--allow-unknown",
        ),
        (
            "release",
            Target::Action("act-nope".into()),
            tonic::Code::NotFound,
            "no action",
        ),
        (
            "explode",
            Target::Agent("x".into()),
            tonic::Code::InvalidArgument,
            "unknown verb",
        ),
    ];
    for (verb, target, code, text) in cases {
        let err = respond(&mut adm, &responder, verb, target.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{verb} {target:?}: {}", err.message());
        assert!(
            err.message().contains(text),
            "{verb} {target:?}: {}",
            err.message()
        );
    }
    let err = adm
        .respond(authed(
            RespondRequest {
                verb: "kill".into(),
                target: Some(Target::Chain(s.a1.clone())),
                reason: "  ".into(),
                ..Default::default()
            },
            &responder,
        ))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("reason is required"),
        "{}",
        err.message()
    );
    // Nothing was sent to the host for any of them.
    assert!(a.commands().is_empty());
    a.stop().await;
    c.shutdown().await.unwrap();
}

/// A minimal HTTP endpoint that records request bodies and answers 200.
async fn issuer_endpoint() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(Mutex::new(vec![]));
    let g = got.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            // Read until the headers and the declared body are in.
            loop {
                let m = s.read(&mut buf[n..]).await.unwrap_or(0);
                if m == 0 {
                    break;
                }
                n += m;
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                if let Some(i) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if n >= i + 4 + len {
                        g.lock().unwrap().push(text);
                        break;
                    }
                }
            }
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nrevoked",
                )
                .await;
        }
    });
    (addr, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_is_fleet_wide_calls_issuer_hooks_and_reaches_late_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let (issuer, requests) = issuer_endpoint().await;
    // A closed port: the second hook must fail, visibly.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = CollectorConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    let hook = |name: &str, url: String| Hook {
        name: name.into(),
        kinds: vec!["openai_api_key".into()],
        url,
        method: "POST".into(),
        form: [
            ("fingerprint".to_string(), "{fingerprint}".to_string()),
            ("why".to_string(), "{reason}".to_string()),
        ]
        .into_iter()
        .collect(),
        json: None,
        headers: BTreeMap::new(),
        timeout_ms: 2000,
    };
    cfg.revocation_hooks = vec![
        hook("issuer", format!("http://{issuer}/revoke")),
        hook("backup", format!("http://{closed}/revoke")),
    ];
    init_tracing();
    let c = Collector::start(cfg).await.unwrap();
    let addr = c.addr.to_string();
    let mut a = Host::enroll(&c, "host-a").await;
    a.start(&addr);
    let fp = "c".repeat(32);
    let p = synth::process("host-a", 700, 1, "/usr/bin/agent", "agent-x");
    a.ship(&[synth::exec(
        &p,
        "host-a",
        synth::T0,
        vec![synth::api_key(&fp)],
    )])
    .await;
    // host-b is enrolled but offline at revocation time.
    let mut b = Host::enroll(&c, "host-b").await;

    let responder = operator(dir.path(), Role::Responder);
    let mut adm = admin(&addr, &c.ca_pem).await;
    let act = adm
        .respond(authed(
            RespondRequest {
                verb: "revoke".into(),
                target: Some(Target::Credential(format!("hmac-sha256:{fp}"))),
                reason: "leaked in a log".into(),
                revoke_mode: "quarantine".into(),
                ..Default::default()
            },
            &responder,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(act.active);
    assert_eq!(
        act.params.get("action").map(String::as_str),
        Some("quarantine")
    );
    assert_eq!(act.hooks.len(), 2, "{act:#?}");
    let ok = act
        .hooks
        .iter()
        .find(|h| h.url.contains(&issuer.to_string()))
        .unwrap();
    assert_eq!((ok.status.as_str(), ok.http_status), ("ok", 200));
    let bad = act
        .hooks
        .iter()
        .find(|h| h.url.contains(&closed.to_string()))
        .unwrap();
    assert_eq!(bad.status, "failed");
    assert!(!bad.message.is_empty());
    let body = requests.lock().unwrap().concat();
    assert!(
        body.contains(&format!("fingerprint=hmac-sha256%3A{fp}")),
        "{body}"
    );
    assert!(body.contains("why=leaked%20in%20a%20log"), "{body}");

    let viewer = operator(dir.path(), Role::Viewer);
    wait_state(&mut adm, &viewer, &act.id, |x| {
        x.hosts
            .iter()
            .any(|h| h.host == "host-a" && h.state == "ok")
    })
    .await;
    let cmd = &a.commands()[0];
    assert_eq!(cmd.kind_name(), "revoke_credential");
    let revoke_action = match &cmd.kind {
        Some(command::Kind::RevokeCredential(r)) => Some(r.action().name()),
        _ => None,
    };
    assert_eq!(revoke_action, Some("quarantine"));
    // host-b gets the revocation when it first connects.
    b.start(&addr);
    let done = wait_state(&mut adm, &viewer, &act.id, |x| x.status == "done").await;
    assert_eq!(done.hosts.len(), 2);
    assert_eq!(b.commands()[0].targets, vec![format!("hmac-sha256:{fp}")]);
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
        .into_inner()
        .entries;
    assert!(
        audit
            .iter()
            .any(|e| e.action == "issuer_hook" && e.result == "failed")
    );
    assert!(
        audit
            .iter()
            .any(|e| e.action == "issuer_hook" && e.result == "ok")
    );

    // Quarantine, then release by action id: the release reaches the same host and
    // ends the quarantine.
    let q = respond(
        &mut adm,
        &responder,
        "quarantine",
        Target::Agent("agent-x".into()),
    )
    .await
    .unwrap();
    assert!(q.active);
    let r = respond(
        &mut adm,
        &responder,
        "release",
        Target::Action(q.id.clone()),
    )
    .await
    .unwrap();
    assert_eq!(r.hosts[0].host, "host-a");
    let q = action(&mut adm, &viewer, &q.id).await;
    assert!(!q.active);
    assert_eq!(q.released_by_action, r.id);
    let err = respond(
        &mut adm,
        &responder,
        "release",
        Target::Action(q.id.clone()),
    )
    .await
    .unwrap_err();
    assert!(
        err.message().contains("already released"),
        "{}",
        err.message()
    );
    a.stop().await;
    b.stop().await;
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_hash_chain_detects_edits_and_removals() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_collector(dir.path()).await;
    for i in 0..5 {
        c.engine
            .audit(custody_proto::admin::v1::AuditEntry {
                actor: "op".into(),
                action: "kill_chain".into(),
                target: format!("h:{i}:1"),
                reason: "why".into(),
                result: "issued".into(),
                ..Default::default()
            })
            .unwrap();
    }
    c.shutdown().await.unwrap();
    let store_dir = custody_collector::server::store_dir(dir.path());
    {
        let store = custody_collector::store::SledStore::open(&store_dir).unwrap();
        let v = AuditLog::verify(&store).unwrap();
        assert!(v.intact, "{v:?}");
        assert_eq!(v.records, 5);
    }
    // The offline checker agrees, and exits 0.
    let bin = env!("CARGO_BIN_EXE_custody-collector");
    let out = std::process::Command::new(bin)
        .args(["--data-dir", dir.path().to_str().unwrap(), "verify-audit"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Someone edits record 3's reason directly in the store.
    {
        use prost::Message;
        let store = custody_collector::store::SledStore::open(&store_dir).unwrap();
        use custody_collector::store::Store;
        let key = custody_collector::store::sled_store::prefixed(
            custody_collector::store::sled_store::AUDIT,
            &[&3u64.to_be_bytes()],
        );
        let mut e =
            custody_proto::admin::v1::AuditEntry::decode(&*store.get(&key).unwrap().unwrap())
                .unwrap();
        e.reason = "nothing to see".into();
        store.insert(key.clone(), e.encode_to_vec()).unwrap();
        store.flush().unwrap();
        let v = AuditLog::verify(&store).unwrap();
        assert!(!v.intact);
        assert_eq!(v.first_bad_seq, 3, "{v:?}");
        assert!(v.problem.contains("altered"), "{}", v.problem);
        // Re-hashing the edited record does not help: the next one links to the old hash.
        e.hash = custody_collector::audit::record_hash(&e);
        store.insert(key.clone(), e.encode_to_vec()).unwrap();
        let v = AuditLog::verify(&store).unwrap();
        assert_eq!(v.first_bad_seq, 4, "{v:?}");
        // Removing a record is a gap.
        store.remove(&key).unwrap();
        store.flush().unwrap();
        let v = AuditLog::verify(&store).unwrap();
        assert!(!v.intact);
        assert_eq!(v.first_bad_seq, 3, "{v:?}");
        assert!(v.problem.contains("removed"), "{}", v.problem);
    }
    let out = std::process::Command::new(bin)
        .args(["--data-dir", dir.path().to_str().unwrap(), "verify-audit"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("BROKEN at record 3"));
}
