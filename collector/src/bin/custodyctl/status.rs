//! `custodyctl status`: one screen that says whether the collector and its fleet are
//! healthy and, if not, what to do. Exit code 0 healthy, 1 degraded, 2 collector
//! unreachable (like `custodyd status`: 0 healthy, 1 degraded, 2 not running).

use anyhow::Result;
use custody_collector::metrics::{Verdict, ago, assess};
use custody_proto::admin::v1::{self as admin, CollectorStatus};

use crate::{explain, ts};

pub const UNREACHABLE: i32 = 2;

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Prints the screen for an unreachable collector; returns the exit code.
pub fn unreachable(addr: &str, err: &anyhow::Error, json: bool) -> i32 {
    if json {
        let v = serde_json::json!({
            "verdict": {"state": "UNREACHABLE", "summary": format!("collector at {addr} unreachable"), "error": format!("{err:#}")}
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return UNREACHABLE;
    }
    println!("collector {addr}: UNREACHABLE");
    println!("  {err:#}");
    println!("what to do:");
    println!(
        "  - on the collector host: `systemctl status custody-collector` (or is `custody-collector serve` running?) and its log"
    );
    println!(
        "  - check the address and port ({addr}), firewalls in between, and that CUSTODY_CA is the collector's ca.pem"
    );
    println!(
        "  - sensors keep spooling events while the collector is away; nothing is lost until their spools fill"
    );
    UNREACHABLE
}

/// Fetches the status and prints it; returns the exit code.
pub async fn run(c: &mut crate::AdminClient, addr: &str, json: bool) -> Result<i32> {
    let s = match c.get_status(admin::GetStatusRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(e) if e.code() == tonic::Code::Unavailable => {
            return Ok(unreachable(addr, &anyhow::anyhow!("{}", e.message()), json));
        }
        Err(e) => return Err(explain(e)),
    };
    let v = assess(&s);
    let code = if v.state == "HEALTHY" { 0 } else { 1 };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"status": s, "verdict": v}))?
        );
    } else {
        print(addr, &s, &v);
    }
    Ok(code)
}

fn print(addr: &str, s: &CollectorStatus, v: &Verdict) {
    let now = s.now_ns;
    println!("collector {addr}: {}", v.summary);
    println!(
        "  version {}  up {}  metrics {}",
        s.version,
        ago(now.saturating_sub(s.started_at_ns)),
        if s.metrics_listen.is_empty() {
            "off".to_string()
        } else {
            format!("http://{}/metrics", s.metrics_listen)
        }
    );
    println!(
        "  store {} events, {} (on disk {}), oldest {}",
        s.stored_events,
        bytes(s.stored_bytes),
        bytes(s.disk_bytes),
        ts(s.oldest_event_ns)
    );
    println!(
        "  retention: age {}, size {}, every {}; last run {}, {} events deleted since start",
        if s.retention_max_age_ns == 0 {
            "forever".into()
        } else {
            ago(s.retention_max_age_ns)
        },
        if s.retention_max_bytes == 0 {
            "unbounded".into()
        } else {
            bytes(s.retention_max_bytes)
        },
        ago(s.retention_interval_ns),
        if s.retention_last_ns == 0 {
            "not yet".into()
        } else {
            format!("{} ago", ago(now.saturating_sub(s.retention_last_ns)))
        },
        s.retention_deleted_events
    );
    println!(
        "  ingest since start: {} events, {} batches rejected",
        s.events_ingested, s.batches_rejected
    );
    println!(
        "  policy set v{} ({} policies), evaluation queue {} events",
        s.policy_version, s.policy_count, s.policy_queue_events
    );
    let connected = s.hosts.iter().filter(|h| h.connected).count();
    println!(
        "  hosts: {} enrolled, {connected} connected, {} disconnected",
        s.hosts.len(),
        s.hosts.len() - connected
    );
    for h in &s.hosts {
        let state = if h.connected {
            format!(
                "connected (heartbeat {} ago)",
                ago(now.saturating_sub(h.last_seen_ns))
            )
        } else if h.last_seen_ns == 0 {
            "NEVER CONNECTED".into()
        } else {
            format!(
                "DISCONNECTED for {} (since {})",
                ago(now.saturating_sub(h.last_seen_ns)),
                ts(h.last_seen_ns)
            )
        };
        let lost: u64 = ["ringbuf_full", "pending_full", "tracked_full"]
            .iter()
            .map(|r| h.counters.get(*r).copied().unwrap_or(0))
            .sum::<u64>()
            + h.spool_dropped;
        let behind = if h.events_behind == 0 {
            String::new()
        } else {
            format!(
                "  behind {} events / {} s, draining {}/s, {}{}",
                h.events_behind,
                h.time_behind_ns / 1_000_000_000,
                h.drain_rate,
                if h.catch_up_eta_s == 0 {
                    "not catching up".to_owned()
                } else {
                    format!("caught up in ~{} s", h.catch_up_eta_s)
                },
                if h.lag_growing {
                    ", FALLING FURTHER BEHIND"
                } else {
                    ""
                }
            )
        };
        println!(
            "    {:<20} {state}  events {}  unacked {}  lost {lost}  sensor {}{behind}",
            h.host_id,
            h.events_stored,
            h.spool_depth,
            if h.sensor_version.is_empty() {
                "?"
            } else {
                &h.sensor_version
            }
        );
    }
    if s.pending_actions.is_empty() {
        println!("  actions: none waiting for confirmation");
    } else {
        println!(
            "  actions waiting for confirmation: {}",
            s.pending_actions.len()
        );
        for a in &s.pending_actions {
            let waiting: Vec<String> = a
                .hosts
                .iter()
                .filter(|d| d.state == "pending" || d.state == "sent")
                .map(|d| format!("{} {}", d.host, d.state))
                .collect();
            println!(
                "    {} {} {} (issued {} by {}): waiting for {}",
                a.id,
                a.kind,
                a.target,
                ts(a.issued_at_ns),
                a.operator,
                waiting.join(", ")
            );
        }
    }
    let open: u64 = s.open_alerts.values().sum();
    if open == 0 {
        println!("  alerts: none open");
    } else {
        let by: Vec<String> = ["critical", "high", "medium", "low"]
            .iter()
            .filter_map(|sev| s.open_alerts.get(*sev).map(|n| format!("{n} {sev}")))
            .collect();
        println!("  alerts: {open} open ({})", by.join(", "));
    }
    let problems: Vec<_> = v.findings.iter().filter(|f| f.level == "problem").collect();
    let notes: Vec<_> = v.findings.iter().filter(|f| f.level != "problem").collect();
    if !problems.is_empty() {
        println!("what to do:");
        for f in problems {
            println!("  - {}: {}", f.what, f.next);
        }
    }
    if !notes.is_empty() {
        println!("notes:");
        for f in notes {
            println!("  - {}: {}", f.what, f.next);
        }
    }
}
