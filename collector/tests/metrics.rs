//! The collector's own telemetry against a real collector: `/metrics` scraped over
//! HTTP and parsed with a Prometheus text-format parser while real enrolled
//! shippers (mTLS gRPC) push events, drop off and answer an action; `custodyctl
//! status` for a healthy fleet and for a disconnected host; the config file
//! (`check-config`, unknown keys, flags over the file).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command as Proc;
use std::time::Duration;

use agent_user::shipper::{EnrolledPaths, Shipper, ShipperHandle};
use common::*;
use custody_collector::auth::Role;
use custody_collector::{Collector, CollectorConfig, synth};
use custody_proto::admin::v1::{RespondRequest, respond_request::Target};
use custody_proto::sensor::v1::{CommandResult, CommandStatus, Event};
use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET /metrics over plain HTTP/1.1; returns the body.
async fn get_metrics(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_owned()
}

/// Parses an exposition and checks its shape: every sample parsed, every family
/// with HELP and TYPE, counters ending in `_total`, only `custody_collector_`.
pub fn parse(text: &str) -> Scrape {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = Scrape::parse(lines).expect("valid exposition");
    let sample_lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count();
    assert_eq!(scrape.samples.len(), sample_lines, "a sample did not parse");
    for s in &scrape.samples {
        assert!(s.metric.starts_with("custody_collector_"), "{}", s.metric);
        assert!(
            scrape.docs.contains_key(&s.metric),
            "no HELP for {}",
            s.metric
        );
        match s.value {
            Value::Counter(_) => assert!(s.metric.ends_with("_total"), "{}", s.metric),
            Value::Gauge(_) => assert!(!s.metric.ends_with("_total"), "{}", s.metric),
            _ => panic!("{} has no TYPE", s.metric),
        }
    }
    scrape
}

/// The value of one sample whose labels include `labels`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

async fn scrape(addr: SocketAddr) -> Scrape {
    parse(&get_metrics(addr).await)
}

/// Scrapes until `name{labels}` equals `want`.
async fn wait_metric(addr: SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) -> Scrape {
    let mut last = None;
    for _ in 0..400 {
        let s = scrape(addr).await;
        last = value(&s, name, labels);
        if last == Some(want) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name}{labels:?} is {last:?}, never {want}");
}

/// An enrolled shipper that answers every command "ok".
struct Host {
    name: &'static str,
    paths: EnrolledPaths,
    spool: tempfile::TempDir,
    _state: tempfile::TempDir,
    ship: Option<ShipperHandle>,
}

impl Host {
    async fn enroll(c: &Collector, name: &'static str) -> Host {
        let state = tempfile::tempdir().unwrap();
        let token = enroll_token(c, Duration::from_secs(60));
        let paths = enroll_host(&c.addr.to_string(), &token, name, state.path()).await;
        Host {
            name,
            paths,
            spool: tempfile::tempdir().unwrap(),
            _state: state,
            ship: None,
        }
    }

    fn start(&mut self, addr: &str) {
        let cfg = shipper_config(addr, &self.paths, self.spool.path(), self.name);
        let (ship, mut cmds) = Shipper::start(cfg).unwrap();
        let (answer, host) = (ship.clone(), self.name);
        tokio::spawn(async move {
            while let Some(cmd) = cmds.recv().await {
                let now = custody_collector::clock::now_ns();
                let _ = answer
                    .send_result(CommandResult {
                        command_id: cmd.id.clone(),
                        host: host.into(),
                        status: CommandStatus::Ok.into(),
                        affected_exec_ids: cmd.targets.clone(),
                        received_ns: now,
                        completed_ns: now + 1_000_000,
                        ..Default::default()
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
}

/// Runs custodyctl; (exit code, stdout, stderr).
fn ctl(addr: &str, ca: &Path, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Proc::new(env!("CARGO_BIN_EXE_custodyctl"))
        .args(args)
        .env("CUSTODY_COLLECTOR", addr)
        .env("CUSTODY_CA", ca)
        .env("CUSTODY_TOKEN", token)
        .env("HOME", "/nonexistent")
        .env_remove("CUSTODY_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_follow_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    init_tracing();
    let mut cfg = CollectorConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let c = Collector::start(cfg).await.unwrap();
    let m = c.metrics_addr.expect("metrics served");
    let addr = c.addr.to_string();
    let ca = dir.path().join("ca.pem");
    let viewer = operator(dir.path(), Role::Viewer);
    let responder = operator(dir.path(), Role::Responder);

    let s = parse(&get_metrics(m).await);
    assert_eq!(
        value(
            &s,
            "custody_collector_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "custody_collector_hosts_enrolled", &[]),
        Some(0.0)
    );

    let mut hosts = vec![];
    for h in ["host-a", "host-b", "host-c"] {
        let mut host = Host::enroll(&c, h).await;
        host.start(&addr);
        hosts.push(host);
    }
    let sc = synth::three_hosts(["host-a", "host-b", "host-c"], synth::T0);
    let shipped = [&sc.a, &sc.b, &sc.c];
    for (h, evs) in hosts.iter().zip(shipped) {
        h.ship(evs).await;
    }
    let mut by_kind: BTreeMap<&str, f64> = BTreeMap::new();
    for e in shipped.iter().flat_map(|v| v.iter()) {
        *by_kind.entry(e.kind_name()).or_default() += 1.0;
    }
    let total: f64 = by_kind.values().sum();
    let s = wait_metric(m, "custody_collector_sensors_connected", &[], 3.0).await;
    for (k, n) in &by_kind {
        assert_eq!(
            value(&s, "custody_collector_events_total", &[("kind", k)]),
            Some(*n),
            "kind {k}"
        );
    }
    assert!(by_kind.len() >= 3, "{by_kind:?}");
    assert_eq!(
        value(&s, "custody_collector_store_events", &[]),
        Some(total)
    );
    assert_eq!(
        value(&s, "custody_collector_hosts_enrolled", &[]),
        Some(3.0)
    );
    for (h, evs) in ["host-a", "host-b", "host-c"].iter().zip(shipped) {
        assert_eq!(
            value(&s, "custody_collector_sensor_events_total", &[("host", h)]),
            Some(evs.len() as f64)
        );
        assert_eq!(
            value(&s, "custody_collector_sensor_connected", &[("host", h)]),
            Some(1.0)
        );
    }
    assert!(value(&s, "custody_collector_batches_total", &[]).unwrap() >= 3.0);
    assert_eq!(
        value(&s, "custody_collector_rejected_batches_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&s, "custody_collector_policy_version", &[]),
        Some(1.0)
    );
    assert!(value(&s, "custody_collector_store_bytes", &[]).unwrap() > 0.0);

    // Healthy fleet.
    let (code, out, err) = tokio::task::block_in_place(|| ctl(&addr, &ca, &viewer, &["status"]));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("HEALTHY: 3 of 3 hosts connected"),
        "status:\n{out}"
    );
    assert!(
        out.contains("hosts: 3 enrolled, 3 connected, 0 disconnected"),
        "{out}"
    );
    assert!(!out.contains("what to do:"), "{out}");

    // Host C goes away, then an action that it cannot confirm.
    hosts[2].stop().await;
    wait_metric(
        m,
        "custody_collector_sensor_connected",
        &[("host", "host-c")],
        0.0,
    )
    .await;
    let mut adm = admin(&addr, &c.ca_pem).await;
    let a = adm
        .respond(authed(
            RespondRequest {
                verb: "kill".into(),
                target: Some(Target::Chain(sc.a1.clone())),
                reason: "metrics test".into(),
                ..Default::default()
            },
            &responder,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.kind, "kill_chain");
    let ok = [("kind", "kill_chain"), ("status", "ok")];
    let s = wait_metric(m, "custody_collector_command_results_total", &ok, 2.0).await;
    assert_eq!(
        value(
            &s,
            "custody_collector_commands_sent_total",
            &[("kind", "kill_chain")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &s,
            "custody_collector_actions",
            &[("kind", "kill_chain"), ("status", "pending")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "custody_collector_action_deliveries_unanswered", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "custody_collector_sensors_connected", &[]),
        Some(2.0)
    );

    let (code, out, err) = tokio::task::block_in_place(|| ctl(&addr, &ca, &viewer, &["status"]));
    assert_eq!(code, 1, "{out}\n{err}");
    for want in [
        "DEGRADED: 1 of 3 hosts disconnected",
        "host-c",
        "DISCONNECTED for",
        "what to do:",
        "host host-c disconnected for",
        "check `custodyd status` on host-c",
        &format!("action {} (kill_chain", a.id),
        "waits for host host-c (offline)",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let (code, out, _) =
        tokio::task::block_in_place(|| ctl(&addr, &ca, &viewer, &["status", "--json"]));
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"]["state"], "DEGRADED");
    assert_eq!(v["status"]["pending_actions"][0]["id"], a.id.as_str());
    assert_eq!(v["status"]["hosts"].as_array().unwrap().len(), 3);

    // A sensor reports kernel losses in its heartbeat.
    hosts[0]
        .ship
        .as_ref()
        .unwrap()
        .set_counters(HashMap::from([("ringbuf_full".to_string(), 5)]));
    let lost = [("reason", "ringbuf_full")];
    wait_metric(m, "custody_collector_sensor_lost_events_total", &lost, 5.0).await;

    // Host C returns: the action completes everywhere.
    hosts[2].start(&addr);
    let s = wait_metric(m, "custody_collector_command_results_total", &ok, 3.0).await;
    let done = [("kind", "kill_chain"), ("status", "done")];
    assert_eq!(value(&s, "custody_collector_actions", &done), Some(1.0));
    let (code, out, _) = tokio::task::block_in_place(|| ctl(&addr, &ca, &viewer, &["status"]));
    assert_eq!(code, 1, "losses keep it degraded:\n{out}");
    assert!(
        out.contains("host host-a lost 5 events since its sensor started (ringbuf_full 5)"),
        "{out}"
    );
    assert!(!out.contains("DISCONNECTED"), "{out}");

    for h in &mut hosts {
        h.stop().await;
    }
    c.shutdown().await.unwrap();
}

fn collector_bin() -> Proc {
    let mut p = Proc::new(env!("CARGO_BIN_EXE_custody-collector"));
    p.env_remove("CUSTODY_DATA_DIR").env("RUST_BACKTRACE", "0");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_checked_and_overridden_by_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("collector.toml");
    std::fs::write(
        &file,
        "data_dir = \"data\"\nlisten = \"127.0.0.1:1\"\nsan = [\"collector.test\"]\n\
         retention_age = \"7d\"\nmetrics_listen = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let out = collector_bin()
        .args(["check-config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        format!("data_dir = \"{}\"", dir.path().join("data").display()),
        "listen = \"127.0.0.1:1\"".into(),
        "san = [\"collector.test\"]".into(),
        "retention_age = \"7d\"".into(),
        "retention_interval = \"60s\"".into(),
        "metrics_listen = \"127.0.0.1:0\"".into(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in\n{text}");
    }

    // An unknown key is named, with the file and its line.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:1\"\n\nmetrics_port = 9464\n").unwrap();
    let out = collector_bin()
        .args(["check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for want in ["bad.toml", "line 3", "metrics_port", "metrics_listen"] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }
    // The same refusal from serve, before anything starts.
    let out = collector_bin()
        .args(["serve", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("metrics_port"));

    // serve: the file's data dir, retention and metrics address; --listen wins over
    // the file's unusable port.
    let mut child = collector_bin()
        .args(["serve", "--config", file.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut got = vec![];
        for l in std::io::BufReader::new(stdout).lines() {
            let l = l.unwrap();
            let last = l.starts_with("metrics on ");
            got.push(l);
            if last {
                break;
            }
        }
        got
    });
    let lines = tokio::time::timeout(Duration::from_secs(60), lines)
        .await
        .expect("collector starts")
        .unwrap();
    let listen: SocketAddr = lines[0]
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(listen.port(), 1, "--listen overrides the file");
    let metrics: SocketAddr = lines
        .last()
        .unwrap()
        .strip_prefix("metrics on http://")
        .and_then(|l| l.strip_suffix("/metrics"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        dir.path().join("data/ca.pem").exists(),
        "data_dir from the file"
    );
    let s = scrape(metrics).await;
    assert_eq!(
        value(&s, "custody_collector_retention_max_age_seconds", &[]),
        Some(7.0 * 86400.0)
    );
    child.kill().unwrap();
    let _ = child.wait();
}
