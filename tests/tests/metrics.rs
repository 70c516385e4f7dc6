//! Both Prometheus endpoints on the real kernel: a real custodyd (in a network
//! namespace, enrolled with a real collector) runs an agent process; then the
//! sensor's `/metrics` (custodyd --metrics-listen) and the collector's
//! (custody-collector --metrics-listen) are scraped and parsed with the same
//! Prometheus text-format parser, and what the sensor says it sent must be what the
//! collector says it stored for that host.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custody_tests::netns::{Fleet, NsHost, Proc, WorkDir, enroll, poll, sensor_config};
use custody_tests::{bin, bpf_available, python};
use prometheus_parse::{Scrape, Value};

/// Port custodyd serves metrics on inside its own namespace (no other test's
/// process listens there).
const SENSOR_METRICS_PORT: u16 = 19464;

/// A child process killed (by its own pid) when dropped; SIGTERM first.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..300 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get_metrics(addr: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

fn scrape(addr: &str) -> Option<Scrape> {
    let text = get_metrics(addr)?;
    let s = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition");
    // The parser folds a histogram's bucket lines into one sample.
    let lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.contains("_bucket{"))
        .count();
    let histograms = s
        .samples
        .iter()
        .filter(|x| matches!(x.value, Value::Histogram(_)))
        .count();
    assert_eq!(
        s.samples.len(),
        lines + histograms,
        "a sample of {addr} did not parse"
    );
    Some(s)
}

fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// `name{label=...}` by that label's value.
fn by_label(s: &Scrape, name: &str, label: &str) -> BTreeMap<String, f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter_map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) => Some((x.labels.get(label)?.to_owned(), v)),
            _ => None,
        })
        .collect()
}

/// Reads a child's stream into shared lines (and the test's stderr).
fn capture(r: impl Read + Send + 'static, label: &'static str) -> Arc<Mutex<Vec<String>>> {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let out = lines.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            eprintln!("[{label}] {l}");
            out.lock().unwrap().push(l);
        }
    });
    lines
}

fn wait_line(lines: &Mutex<Vec<String>>, prefix: &str, what: &str) -> String {
    poll(Duration::from_secs(60), || {
        lines
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.strip_prefix(prefix).map(str::to_owned))
    })
    .unwrap_or_else(|| panic!("{what}: no {prefix:?} line: {:?}", lines.lock().unwrap()))
}

fn collector_admin(data: &Path, args: &[&str]) -> String {
    let out = Command::new(bin("custody-collector"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn start_sensor(host: &NsHost, dir: &Path, collector: &str, token: &str) -> (Kid, String) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("custodyd.toml");
    let config = sensor_config(
        &host.host_id,
        &dir.join("state"),
        &[("metrics-agent", "metrics-agent")],
    );
    std::fs::write(&cfg, config).unwrap();
    let out = enroll(host, dir, collector, token);
    assert!(
        out.status.success(),
        "custodyd enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = format!("{}:{SENSOR_METRICS_PORT}", host.addr);
    let mut child = host
        .command(bin("custodyd"))
        .arg("--config")
        .arg(&cfg)
        .arg("--status-file")
        .arg(dir.join("status.json"))
        .arg("--output")
        .arg(dir.join("events.jsonl"))
        .args(["--metrics-listen", &metrics])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn custodyd");
    let log = capture(child.stderr.take().unwrap(), "custodyd");
    let kid = Kid(child);
    wait_line(&log, "custodyd: ready", "custodyd");
    (kid, metrics)
}

#[test]
fn sensor_and_collector_metrics_agree() {
    if !bpf_available("sensor_and_collector_metrics_agree") {
        return;
    }
    let dir = WorkDir::new();
    let work = dir.path();
    let fleet = Fleet::new(&["host-m"]);
    let host = fleet.host("host-m");
    let data = work.join("collector");
    let mut child = Command::new(bin("custody-collector"))
        .arg("--data-dir")
        .arg(&data)
        .args(["serve", "--listen", &format!("{}:0", fleet.bridge_addr)])
        .args(["--retention-age", "0", "--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn custody-collector");
    let out = capture(child.stdout.take().unwrap(), "collector");
    let _err = capture(child.stderr.take().unwrap(), "collector");
    let _collector = Kid(child);
    let addr = wait_line(&out, "listening on ", "collector");
    let c_metrics = wait_line(&out, "metrics on http://", "collector");
    let c_metrics = c_metrics.trim_end_matches("/metrics").to_owned();

    let token = collector_admin(&data, &["enroll-token", "--ttl", "10m"]);
    let (_sensor, s_metrics) = start_sensor(host, &work.join("host-m"), &addr, &token);
    poll(Duration::from_secs(30), || {
        let c = scrape(&c_metrics)?;
        (value(
            &c,
            "custody_collector_sensor_connected",
            &[("host", "host-m")],
        ) == Some(1.0))
        .then_some(())
    })
    .expect("host-m connected to the collector");

    // An agent process in the namespace: exec, Python's file opens, a child.
    let mut cmd = host.command(python());
    cmd.args([
        "-c",
        "import subprocess; open('/etc/hostname').read(); subprocess.run(['true'])",
    ])
    .env("CUSTODY_AGENT", "metrics-agent")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let (st, _) = Proc::spawn(&mut cmd).wait_output(Duration::from_secs(30));
    assert!(st.success());

    // Once the sensor has nothing unacknowledged, its count of events sent is the
    // collector's count of events stored for host-m, kind by kind.
    let mut last = None;
    let agreed = poll(Duration::from_secs(60), || {
        let s = scrape(&s_metrics)?;
        let c = scrape(&c_metrics)?;
        let sent = by_label(&s, "custody_sensor_events_total", "kind");
        let stored = by_label(&c, "custody_collector_events_total", "kind");
        let total: f64 = sent.values().sum();
        let host_total = value(
            &c,
            "custody_collector_sensor_events_total",
            &[("host", "host-m")],
        );
        let settled = value(&s, "custody_sensor_stream_lag_events", &[]) == Some(0.0)
            && value(&s, "custody_sensor_spool_events", &[]) == Some(0.0);
        let same_kinds = sent
            .iter()
            .all(|(k, n)| stored.get(k).copied().unwrap_or(0.0) == *n);
        let exec = sent.get("exec").copied().unwrap_or(0.0);
        last = Some((sent.clone(), stored.clone(), host_total, settled));
        (settled && exec >= 2.0 && host_total == Some(total) && same_kinds).then_some((s, c, total))
    });
    let Some((s, c, total)) = agreed else {
        panic!("sensor and collector never agreed (sent, stored, host total, settled): {last:?}");
    };
    eprintln!("sensor sent and collector stored {total} events");
    assert!(total > 10.0, "{total}");
    assert_eq!(
        value(&s, "custody_sensor_collector_connected", &[]),
        Some(1.0)
    );
    assert_eq!(value(&s, "custody_sensor_enrolled", &[]), Some(1.0));
    assert_eq!(
        value(&s, "custody_sensor_rejected_batches_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&c, "custody_collector_rejected_batches_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&c, "custody_collector_hosts_enrolled", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&c, "custody_collector_sensors_connected", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&c, "custody_collector_store_events", &[]),
        Some(total)
    );
    // The sensor's kernel losses (none expected here) are what the collector sums.
    for reason in ["ringbuf_full", "pending_full", "tracked_full"] {
        let kernel = value(
            &s,
            "custody_sensor_lost_events_total",
            &[("reason", reason)],
        );
        let fleet = poll(Duration::from_secs(5), || {
            let c = scrape(&c_metrics)?;
            let v = value(
                &c,
                "custody_collector_sensor_lost_events_total",
                &[("reason", reason)],
            );
            (v == kernel).then_some(v)
        });
        assert!(fleet.is_some(), "{reason}: sensor says {kernel:?}");
    }
}
