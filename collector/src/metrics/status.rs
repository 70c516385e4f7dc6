//! The status snapshot (`GetStatus`) and the verdict `custodyctl status` prints:
//! is the collector and its fleet healthy, and if not, what to do.

use std::sync::atomic::Ordering;

use custody_proto::admin::v1::{CollectorStatus, Host};
use serde::Serialize;

use super::Telemetry;
use crate::clock::now_ns;

/// A connected host with more unacknowledged events than this is lagging.
pub const LAG_EVENTS: u64 = 10_000;
/// A command sent to a connected host and not answered for this long is stuck.
pub const UNANSWERED_NS: u64 = 30 * 1_000_000_000;
/// Policy evaluation is behind when this many stored events wait for it.
pub const POLICY_BEHIND_EVENTS: u64 = 10_000;

impl Telemetry {
    pub fn status(&self) -> CollectorStatus {
        let m = &self.engine.metrics;
        let (stored_events, stored_bytes, oldest) = self.store_stats();
        let mut open_alerts = std::collections::HashMap::new();
        for ((sev, status), n) in self.alerts.counts() {
            if status == "open" {
                *open_alerts.entry(sev).or_default() += n;
            }
        }
        let (policy_version, policy_count) = self.policy.version_and_count();
        CollectorStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            started_at_ns: self.started_at_ns,
            now_ns: now_ns(),
            stored_events,
            stored_bytes,
            disk_bytes: self.engine.store().size_on_disk(),
            oldest_event_ns: oldest,
            retention_max_age_ns: self
                .retention
                .max_age
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            retention_max_bytes: self.retention.max_bytes.unwrap_or(0),
            retention_interval_ns: self.retention_interval.as_nanos() as u64,
            retention_last_ns: m.retention_last_ns.load(Ordering::Relaxed),
            retention_deleted_events: m.retention_deleted_events.load(Ordering::Relaxed),
            hosts: self.engine.list_hosts(),
            pending_actions: self
                .responder
                .list(usize::MAX, false)
                .into_iter()
                .filter(|a| a.status == "pending")
                .collect(),
            open_alerts,
            policy_version,
            policy_count: policy_count as u64,
            policy_queue_events: self.policy_queue_events(),
            events_ingested: m.events_stored.load(Ordering::Relaxed),
            batches_rejected: m.batches_rejected.load(Ordering::Relaxed),
            metrics_listen: self
                .metrics_listen
                .get()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        }
    }
}

/// One thing an operator should know, and what to do about it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// "problem" (the verdict is DEGRADED) or "note".
    pub level: &'static str,
    pub what: String,
    pub next: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verdict {
    /// "HEALTHY" or "DEGRADED".
    pub state: &'static str,
    /// One line: the state and why.
    pub summary: String,
    pub findings: Vec<Finding>,
}

/// "12m", "3h5m", "40s".
pub fn ago(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

fn lost(h: &Host) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = ["ringbuf_full", "pending_full", "tracked_full"]
        .iter()
        .filter_map(|r| {
            h.counters
                .get(*r)
                .filter(|n| **n > 0)
                .map(|n| (r.to_string(), *n))
        })
        .collect();
    if h.spool_dropped > 0 {
        v.push(("spool_full".into(), h.spool_dropped));
    }
    v
}

fn problem(f: &mut Vec<Finding>, what: String, next: String) {
    f.push(Finding {
        level: "problem",
        what,
        next,
    })
}

/// Judges a status snapshot: problems make the fleet DEGRADED; notes are listed.
pub fn assess(s: &CollectorStatus) -> Verdict {
    let now = s.now_ns;
    let mut f: Vec<Finding> = vec![];
    let mut short: Vec<String> = vec![];
    // A retired identity is expected to be gone.
    let live: Vec<&Host> = s.hosts.iter().filter(|h| !h.retired).collect();
    let down: Vec<&Host> = live.iter().copied().filter(|h| !h.connected).collect();
    for h in &down {
        if h.last_seen_ns == 0 {
            problem(
                &mut f,
                format!("host {} enrolled but never connected", h.host_id),
                format!(
                    "start custodyd on {} (systemctl start custodyd) and check `custodyd status` there",
                    h.host_id
                ),
            );
        } else {
            problem(
                &mut f,
                format!(
                    "host {} disconnected for {}",
                    h.host_id,
                    ago(now.saturating_sub(h.last_seen_ns))
                ),
                format!(
                    "check `custodyd status` on {} (is custodyd running, can it reach the collector?); \
                     its events are spooled there and arrive when it reconnects",
                    h.host_id
                ),
            );
        }
    }
    if !down.is_empty() {
        short.push(format!(
            "{} of {} hosts disconnected",
            down.len(),
            live.len()
        ));
    }
    let mut losing = 0;
    for h in &s.hosts {
        let l = lost(h);
        if !l.is_empty() {
            losing += 1;
            let total: u64 = l.iter().map(|(_, n)| n).sum();
            let why: Vec<String> = l.iter().map(|(r, n)| format!("{r} {n}")).collect();
            problem(
                &mut f,
                format!(
                    "host {} lost {total} events since its sensor started ({})",
                    h.host_id,
                    why.join(", ")
                ),
                format!(
                    "check `custodyd status` on {}: kernel losses mean the host is busier than the sensor drains \
                     (CPU limits on custodyd); spool_full means an outage outlasted the spool",
                    h.host_id
                ),
            );
        }
        if h.batches_rejected > 0 {
            problem(
                &mut f,
                format!(
                    "host {}: the collector rejected {} event batches",
                    h.host_id, h.batches_rejected
                ),
                "see the collector's log (\"rejected event batch\") for the reason; a sensor newer than the collector is the usual cause".into(),
            );
        }
        // A retired identity's certificate is expected to keep knocking.
        if h.certs_refused > 0 && !h.retired {
            problem(
                &mut f,
                format!(
                    "host {}: {} sensor streams refused for a certificate that is not its current one",
                    h.host_id, h.certs_refused
                ),
                format!(
                    "someone may hold an old or stolen certificate of {0}: see the collector's log \
                     (\"sensor stream refused\") and `custodyctl audit`; if {0} itself is refused, \
                     re-enroll it with a token bound to it (`custody-collector enroll-token --host {0}`)",
                    h.host_id
                ),
            );
        }
        if h.connected && h.lag_growing && h.events_behind > LAG_EVENTS {
            problem(
                &mut f,
                format!(
                    "host {} is falling further behind: {} events / {} s not stored yet, storing {}/s while it produces {}/s",
                    h.host_id,
                    h.events_behind,
                    h.time_behind_ns / 1_000_000_000,
                    h.drain_rate,
                    h.produce_rate
                ),
                "the collector stores this host's events slower than it produces them: check the collector's CPU and disk, and the host's event rate".into(),
            );
        } else if h.connected && h.spool_depth > LAG_EVENTS {
            problem(
                &mut f,
                format!(
                    "host {} is {} events behind (not yet acknowledged)",
                    h.host_id, h.spool_depth
                ),
                "the collector is slow to store: check its CPU and disk; the backlog drains by itself once it keeps up".into(),
            );
        }
    }
    if losing > 0 {
        short.push(format!("{losing} hosts losing events"));
    }
    let mut stuck = 0;
    for a in &s.pending_actions {
        for d in a
            .hosts
            .iter()
            .filter(|d| d.state == "pending" || d.state == "sent")
        {
            let connected = s.hosts.iter().any(|h| h.host_id == d.host && h.connected);
            let since = now.saturating_sub(if d.sent_ns > 0 {
                d.sent_ns
            } else {
                a.issued_at_ns
            });
            if connected && since >= UNANSWERED_NS {
                stuck += 1;
                problem(
                    &mut f,
                    format!(
                        "action {} ({} {}) not confirmed by host {} for {}",
                        a.id,
                        a.kind,
                        a.target,
                        d.host,
                        ago(since)
                    ),
                    format!(
                        "check `custodyd status` and the custodyd log on {}; `custodyctl action {}` shows every host's answer",
                        d.host, a.id
                    ),
                );
            } else if !connected {
                f.push(Finding {
                    level: "note",
                    what: format!(
                        "action {} ({} {}) waits for host {} (offline)",
                        a.id, a.kind, a.target, d.host
                    ),
                    next: format!("it is delivered when {} reconnects", d.host),
                });
            }
        }
    }
    if stuck > 0 {
        short.push(format!("{stuck} action deliveries unconfirmed"));
    }
    if s.policy_queue_events >= POLICY_BEHIND_EVENTS {
        problem(
                &mut f,
            format!(
                "policy evaluation is {} events behind",
                s.policy_queue_events
            ),
            "alerts and automatic responses are late; check the collector's CPU (policy-bench measures the rate)".into(),
        );
        short.push("policy evaluation behind".into());
    }
    if s.hosts.is_empty() {
        f.push(Finding {
            level: "note",
            what: "no hosts enrolled".into(),
            next: "mint a token with `custody-collector enroll-token` and run `custodyd enroll --collector ADDR --token TOKEN` on each host".into(),
        });
    }
    let open: u64 = s.open_alerts.values().sum();
    if open > 0 {
        let mut by: Vec<String> = ["critical", "high", "medium", "low"]
            .iter()
            .filter_map(|sev| {
                s.open_alerts
                    .get(*sev)
                    .filter(|n| **n > 0)
                    .map(|n| format!("{n} {sev}"))
            })
            .collect();
        if by.is_empty() {
            by.push(format!("{open}"));
        }
        f.push(Finding {
            level: "note",
            what: format!("{open} open policy alerts ({})", by.join(", ")),
            next: "review them with `custodyctl alerts --open` (or the web UI) and acknowledge with `custodyctl ack ID`".into(),
        });
    }
    let degraded = f.iter().any(|x| x.level == "problem");
    let connected = s.hosts.iter().filter(|h| h.connected).count();
    Verdict {
        state: if degraded { "DEGRADED" } else { "HEALTHY" },
        summary: if degraded {
            format!("DEGRADED: {}", short.join(", "))
        } else {
            format!(
                "HEALTHY: {connected} of {} hosts connected, nothing lost or waiting",
                s.hosts.len()
            )
        },
        findings: f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_proto::admin::v1::{Action, HostDelivery};

    const S: u64 = 1_000_000_000;

    fn host(id: &str, connected: bool, last_seen: u64) -> Host {
        Host {
            host_id: id.into(),
            connected,
            last_seen_ns: last_seen,
            ..Default::default()
        }
    }

    #[test]
    fn healthy_and_degraded() {
        let now = 10_000 * S;
        let mut s = CollectorStatus {
            now_ns: now,
            hosts: vec![host("a", true, now), host("b", true, now)],
            ..Default::default()
        };
        let v = assess(&s);
        assert_eq!(v.state, "HEALTHY", "{v:?}");
        assert!(v.findings.is_empty());

        s.hosts[1] = host("b", false, now - 12 * 60 * S);
        s.hosts[0].counters.insert("ringbuf_full".into(), 7);
        s.pending_actions = vec![Action {
            id: "act-1".into(),
            kind: "kill_chain".into(),
            target: "a:1:2".into(),
            issued_at_ns: now - 60 * S,
            status: "pending".into(),
            hosts: vec![
                HostDelivery {
                    host: "a".into(),
                    state: "sent".into(),
                    sent_ns: now - 45 * S,
                    ..Default::default()
                },
                HostDelivery {
                    host: "b".into(),
                    state: "pending".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }];
        s.open_alerts.insert("high".into(), 2);
        let v = assess(&s);
        assert_eq!(v.state, "DEGRADED");
        let all: Vec<String> = v
            .findings
            .iter()
            .map(|f| format!("{}: {} -> {}", f.level, f.what, f.next))
            .collect();
        let all = all.join("\n");
        for want in [
            "problem: host b disconnected for 12m -> check `custodyd status` on b",
            "problem: host a lost 7 events since its sensor started (ringbuf_full 7)",
            "problem: action act-1 (kill_chain a:1:2) not confirmed by host a for 45s",
            "note: action act-1 (kill_chain a:1:2) waits for host b (offline)",
            "note: 2 open policy alerts (2 high)",
        ] {
            assert!(all.contains(want), "missing {want:?} in\n{all}");
        }
        assert!(v.summary.contains("1 of 2 hosts disconnected"), "{v:?}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(ago(40 * S), "40s");
        assert_eq!(ago(12 * 60 * S), "12m");
        assert_eq!(ago((3 * 3600 + 5 * 60) * S), "3h5m");
        assert_eq!(ago(2 * 86400 * S), "2d0h");
    }
}
