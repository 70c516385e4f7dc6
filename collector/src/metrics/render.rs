//! Prometheus text exposition (format 0.0.4) of the collector's metrics; every
//! family has HELP and TYPE lines, counters end in `_total`, label values are
//! escaped. The names are listed in docs/collector.md ("Metrics").

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use custody_proto::sensor::v1::EventKind;

use super::Telemetry;

/// Kernel loss counters the sensors report in heartbeats; the spool's drops are
/// reported as reason "spool_full".
const LOSS_REASONS: [&str; 3] = ["ringbuf_full", "pending_full", "tracked_full"];
const SEVERITIES: [&str; 4] = ["low", "medium", "high", "critical"];

pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.family(name, kind, help);
        let _ = writeln!(self.0, "{name} {v}");
    }
    /// One sample with labels (values escaped here).
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(self.0, "{name}{{{}}} {v}", l.join(","));
    }
}

pub fn render(t: &Telemetry) -> String {
    let mut o = Out(String::new());
    let m = &t.engine.metrics;
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);

    o.family(
        "custody_collector_build_info",
        "gauge",
        "Always 1; the collector's version as a label.",
    );
    o.sample(
        "custody_collector_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    o.one(
        "custody_collector_start_time_seconds",
        "gauge",
        "Unix time the collector process started.",
        secs(t.started_at_ns),
    );

    // Ingest.
    o.family(
        "custody_collector_events_total",
        "counter",
        "Events stored, by kind.",
    );
    for (i, k) in EventKind::NAMES.iter().enumerate() {
        o.sample(
            "custody_collector_events_total",
            &[("kind", k)],
            ld(&m.events_by_kind[i]),
        );
    }
    o.one(
        "custody_collector_batches_total",
        "counter",
        "Event batches stored (group-committed).",
        ld(&m.batches),
    );
    o.one(
        "custody_collector_rejected_batches_total",
        "counter",
        "Event batches rejected (malformed, too large or naming another host).",
        ld(&m.batches_rejected),
    );
    o.one(
        "custody_collector_refused_events_total",
        "counter",
        "Single events refused because they named another host's process (their batches were kept).",
        ld(&m.events_refused),
    );
    o.one(
        "custody_collector_truncated_fields_total",
        "counter",
        "Fields of sensor messages cut to their caps at ingest (stored with a mark).",
        ld(&m.fields_truncated),
    );
    o.one(
        "custody_collector_duplicate_events_total",
        "counter",
        "Re-sent events dropped because they were already stored.",
        ld(&m.duplicates),
    );
    o.one(
        "custody_collector_clock_skewed_events_total",
        "counter",
        "Events stored under their arrival time because their own was missing or in the future.",
        ld(&m.clock_skewed),
    );
    o.one(
        "custody_collector_stream_errors_total",
        "counter",
        "Sensor streams ended by an undecodable or oversized message.",
        ld(&m.stream_errors),
    );

    o.family(
        "custody_collector_sensor_certs_refused_total",
        "counter",
        "Sensor streams refused for their client certificate: not_enrolled, retired (the host's identity was retired) or superseded (not the certificate of the host's last enrollment).",
    );
    for (i, r) in crate::engine::CertRefusal::REASONS.iter().enumerate() {
        o.sample(
            "custody_collector_sensor_certs_refused_total",
            &[("reason", r)],
            ld(&m.certs_refused[i]),
        );
    }
    o.one(
        "custody_collector_enrollments_refused_total",
        "counter",
        "Enrollments refused because the host id is enrolled and the token was not bound to it.",
        ld(&m.enrollments_refused),
    );
    o.one(
        "custody_collector_enroll_tokens_refused_total",
        "counter",
        "Enrollments refused for their token (malformed, unknown, used, expired, mispinned).",
        ld(&m.enroll_tokens_refused),
    );
    o.one(
        "custody_collector_enroll_refusals_unaudited_total",
        "counter",
        "Refused enrollments counted here but not written to the audit log (one record per kind and interval carries the count held back).",
        ld(&m.enroll_refusals_unaudited),
    );

    // Fleet.
    let hosts = t.engine.list_hosts();
    o.one(
        "custody_collector_hosts_enrolled",
        "gauge",
        "Hosts the collector knows (enrolled or reporting).",
        hosts.len(),
    );
    o.one(
        "custody_collector_sensors_connected",
        "gauge",
        "Sensor streams open now.",
        hosts.iter().filter(|h| h.connected).count(),
    );
    o.family(
        "custody_collector_sensor_connected",
        "gauge",
        "1 while the host's sensor stream is open.",
    );
    for h in &hosts {
        o.sample(
            "custody_collector_sensor_connected",
            &[("host", &h.host_id)],
            u8::from(h.connected),
        );
    }
    o.family(
        "custody_collector_sensor_lag_events",
        "gauge",
        "Events the host's sensor holds that the collector has not acknowledged (spool depth at its last heartbeat).",
    );
    for h in &hosts {
        o.sample(
            "custody_collector_sensor_lag_events",
            &[("host", &h.host_id)],
            h.spool_depth,
        );
    }
    // Catch-up lag per host, from its heartbeats.
    type Gauge = fn(&custody_proto::admin::v1::Host) -> u64;
    let lag: [(&str, &str, Gauge); 6] = [
        (
            "custody_collector_sensor_events_behind",
            "Events the host's sensor assigned that are not stored yet (its newest sequence number minus the stored high-water mark).",
            |h| h.events_behind,
        ),
        (
            "custody_collector_sensor_time_behind_seconds",
            "Age of the oldest event the host's sensor still holds (0 when caught up).",
            |h| h.time_behind_ns / 1_000_000_000,
        ),
        (
            "custody_collector_sensor_drain_events_per_second",
            "Events of the host stored per second over its last heartbeat interval.",
            |h| h.drain_rate,
        ),
        (
            "custody_collector_sensor_produce_events_per_second",
            "Events the host's sensor produced per second over its last heartbeat interval.",
            |h| h.produce_rate,
        ),
        (
            "custody_collector_sensor_catch_up_eta_seconds",
            "Seconds until the host is caught up at its current net rate (0: caught up or not catching up).",
            |h| h.catch_up_eta_s,
        ),
        (
            "custody_collector_sensor_lag_growing",
            "1 when the host's backlog grew since its previous heartbeat.",
            |h| u64::from(h.lag_growing),
        ),
    ];
    for (name, help, value) in lag {
        o.family(name, "gauge", help);
        for h in &hosts {
            o.sample(name, &[("host", &h.host_id)], value(h));
        }
    }
    o.family(
        "custody_collector_sensor_last_seen_timestamp_seconds",
        "gauge",
        "Unix time of the host's last hello or heartbeat.",
    );
    for h in &hosts {
        o.sample(
            "custody_collector_sensor_last_seen_timestamp_seconds",
            &[("host", &h.host_id)],
            secs(h.last_seen_ns),
        );
    }
    o.family(
        "custody_collector_sensor_last_event_timestamp_seconds",
        "gauge",
        "Unix time of the host's newest stored event (0 if none).",
    );
    let newest: BTreeMap<String, u64> = {
        let st = t.engine.read();
        st.fleet
            .hosts
            .iter()
            .map(|(h, r)| (h.clone(), r.newest_event_ns))
            .collect()
    };
    for h in &hosts {
        o.sample(
            "custody_collector_sensor_last_event_timestamp_seconds",
            &[("host", &h.host_id)],
            secs(newest.get(&h.host_id).copied().unwrap_or(0)),
        );
    }
    o.family(
        "custody_collector_sensor_events_total",
        "counter",
        "Events stored from the host, since it enrolled.",
    );
    for h in &hosts {
        o.sample(
            "custody_collector_sensor_events_total",
            &[("host", &h.host_id)],
            h.events_stored,
        );
    }
    o.family(
        "custody_collector_sensor_lost_events_total",
        "counter",
        "Events the sensors report lost before shipping, summed over hosts, by reason \
         (kernel ring buffer or map full; spool_full: dropped from a full spool).",
    );
    let mut lost: BTreeMap<&str, u64> = BTreeMap::new();
    for h in &hosts {
        for r in LOSS_REASONS {
            *lost.entry(r).or_default() += h.counters.get(r).copied().unwrap_or(0);
        }
        *lost.entry("spool_full").or_default() += h.spool_dropped;
    }
    for (r, v) in &lost {
        o.sample(
            "custody_collector_sensor_lost_events_total",
            &[("reason", r)],
            v,
        );
    }

    // Store and retention.
    let (events, bytes, oldest) = t.store_stats();
    o.one(
        "custody_collector_store_events",
        "gauge",
        "Events in the store.",
        events,
    );
    o.one(
        "custody_collector_store_bytes",
        "gauge",
        "Encoded size of the stored events (what retention by size bounds).",
        bytes,
    );
    o.one(
        "custody_collector_store_disk_bytes",
        "gauge",
        "Size of the store's files on disk.",
        t.engine.store().size_on_disk(),
    );
    o.one(
        "custody_collector_store_oldest_event_timestamp_seconds",
        "gauge",
        "Unix time of the oldest stored event (0 if none).",
        secs(oldest),
    );
    o.one(
        "custody_collector_retention_max_age_seconds",
        "gauge",
        "Configured retention age (0: kept forever).",
        t.retention.max_age.map(|d| d.as_secs_f64()).unwrap_or(0.0),
    );
    o.one(
        "custody_collector_retention_max_bytes",
        "gauge",
        "Configured retention size (0: unbounded).",
        t.retention.max_bytes.unwrap_or(0),
    );
    o.one(
        "custody_collector_retention_runs_total",
        "counter",
        "Retention passes completed.",
        ld(&m.retention_runs),
    );
    o.one(
        "custody_collector_retention_deleted_events_total",
        "counter",
        "Events deleted by retention.",
        ld(&m.retention_deleted_events),
    );
    o.one(
        "custody_collector_retention_deleted_bytes_total",
        "counter",
        "Encoded bytes of the events deleted by retention.",
        ld(&m.retention_deleted_bytes),
    );
    o.one(
        "custody_collector_retention_last_run_timestamp_seconds",
        "gauge",
        "Unix time the last retention pass ended (0: none since start).",
        secs(ld(&m.retention_last_ns)),
    );

    // Policy evaluation and alerts.
    let pm = &t.policy.metrics;
    let (version, count) = t.policy.version_and_count();
    o.one(
        "custody_collector_policy_version",
        "gauge",
        "Version of the policy set in force.",
        version,
    );
    o.one(
        "custody_collector_policies",
        "gauge",
        "Policies in the set in force.",
        count,
    );
    o.one(
        "custody_collector_policy_queue_events",
        "gauge",
        "Stored events waiting for policy evaluation (ingest is held back when it is full).",
        t.policy_queue_events(),
    );
    o.one(
        "custody_collector_policy_evaluated_events_total",
        "counter",
        "Action events evaluated against the policy set.",
        ld(&pm.events),
    );
    o.family(
        "custody_collector_policy_decisions_total",
        "counter",
        "Policy decisions, by result.",
    );
    let (decisions, denied) = (ld(&pm.decisions), ld(&pm.denied));
    o.sample(
        "custody_collector_policy_decisions_total",
        &[("decision", "allow")],
        decisions.saturating_sub(denied),
    );
    o.sample(
        "custody_collector_policy_decisions_total",
        &[("decision", "deny")],
        denied,
    );
    o.one(
        "custody_collector_policy_evaluation_seconds_total",
        "counter",
        "Time spent building chain contexts and evaluating policies.",
        secs(ld(&pm.eval_ns)),
    );
    o.family(
        "custody_collector_alerts_raised_total",
        "counter",
        "Policy alerts raised since start, by severity.",
    );
    let raised = t.alerts.raised();
    for s in SEVERITIES {
        o.sample(
            "custody_collector_alerts_raised_total",
            &[("severity", s)],
            raised.get(s).copied().unwrap_or(0),
        );
    }
    for (s, v) in raised
        .iter()
        .filter(|(s, _)| !SEVERITIES.contains(&s.as_str()))
    {
        o.sample(
            "custody_collector_alerts_raised_total",
            &[("severity", s)],
            v,
        );
    }
    o.family(
        "custody_collector_alerts",
        "gauge",
        "Stored policy alerts, by severity and status (open or acknowledged).",
    );
    let mut counts = t.alerts.counts();
    for s in SEVERITIES {
        counts.entry((s.into(), "open".into())).or_default();
    }
    for ((s, st), v) in &counts {
        o.sample(
            "custody_collector_alerts",
            &[("severity", s), ("status", st)],
            v,
        );
    }

    // Response.
    let (actions, unanswered) = t.responder.summary();
    o.family(
        "custody_collector_actions",
        "gauge",
        "Response actions on record, by command kind and status (pending: some host has not answered).",
    );
    for ((k, s), v) in &actions {
        o.sample(
            "custody_collector_actions",
            &[("kind", k), ("status", s)],
            v,
        );
    }
    o.one(
        "custody_collector_action_deliveries_unanswered",
        "gauge",
        "Per-host parts of actions not yet answered by their sensor (host offline, or sent and waiting).",
        unanswered,
    );
    let rm = &t.responder.metrics;
    o.family(
        "custody_collector_commands_sent_total",
        "counter",
        "Commands delivered to sensor streams, by kind.",
    );
    for (k, v) in rm.sent.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        o.sample("custody_collector_commands_sent_total", &[("kind", k)], v);
    }
    o.family(
        "custody_collector_command_results_total",
        "counter",
        "Sensor confirmations of commands, by kind and status (ok, partial, failed, unsupported).",
    );
    for ((k, s), v) in rm.results.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        o.sample(
            "custody_collector_command_results_total",
            &[("kind", k), ("status", s)],
            v,
        );
    }
    o.one(
        "custody_collector_command_results_refused_total",
        "counter",
        "Sensor answers refused (a status that is not terminal).",
        ld(&rm.refused),
    );
    o.one(
        "custody_collector_command_results_foreign_affected_total",
        "counter",
        "Affected exec ids dropped from sensor answers because they named another host's process.",
        ld(&rm.foreign_affected),
    );
    exports(&mut o, t);
    o.0
}

/// A metric family read off each export's stats: name, type, help, value.
type ExportFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::export::ExportStats) -> f64,
);

/// One series per configured export, labelled by its name and kind.
fn exports(o: &mut Out, t: &Telemetry) {
    let stats = t.exports.stats();
    let families: [ExportFamily; 6] = [
        (
            "custody_collector_export_records_total",
            "counter",
            "Records an export delivered: lines (jsonl, ocsf) or spans (otlp).",
            |s| s.records_sent as f64,
        ),
        (
            "custody_collector_export_alerts_total",
            "counter",
            "Alerts an export delivered.",
            |s| s.alerts_sent as f64,
        ),
        (
            "custody_collector_export_failures_total",
            "counter",
            "Delivery attempts that failed (each is retried; nothing is skipped).",
            |s| s.failures as f64,
        ),
        (
            "custody_collector_export_lag_events",
            "gauge",
            "Stored events an export has not delivered yet.",
            |s| s.lag_events as f64,
        ),
        (
            "custody_collector_export_consecutive_failures",
            "gauge",
            "Failures since the export's last success (0 when healthy).",
            |s| s.consecutive_failures as f64,
        ),
        (
            "custody_collector_export_last_success_timestamp_seconds",
            "gauge",
            "When the export last delivered a batch (0: never).",
            |s| secs(s.last_success_ns),
        ),
    ];
    for (name, kind, help, get) in families {
        o.family(name, kind, help);
        for s in &stats {
            o.sample(name, &[("export", &s.name), ("kind", s.kind)], get(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
