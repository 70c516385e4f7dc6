//! Prometheus metrics (text exposition format) on a local HTTP endpoint, rendered
//! from the same snapshot as `custodyd status` once a second.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use super::status::Status;

/// Counters kept by the daemon loop beside the status snapshot.
#[derive(Default)]
pub struct Counters {
    /// Events emitted, by kind.
    pub events: BTreeMap<&'static str, u64>,
    /// Commands applied, by (kind, status).
    pub commands: BTreeMap<(String, String), u64>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub fn render(st: &Status, c: &Counters) -> String {
    let mut o = String::new();
    let one = |o: &mut String, name: &str, kind: &str, help: &str, v: u64| {
        family(o, name, kind, help);
        let _ = writeln!(o, "{name} {v}");
    };
    one(
        &mut o,
        "custody_sensor_kernel_records_total",
        "counter",
        "Records read from the kernel ring buffer.",
        st.records,
    );
    one(
        &mut o,
        "custody_sensor_malformed_records_total",
        "counter",
        "Kernel records skipped because of an unexpected size or kind.",
        st.decode_errors,
    );
    family(
        &mut o,
        "custody_sensor_events_total",
        "counter",
        "Events reported, by kind.",
    );
    for (k, v) in &c.events {
        let _ = writeln!(
            o,
            "custody_sensor_events_total{{kind=\"{}\"}} {v}",
            escape(k)
        );
    }
    family(
        &mut o,
        "custody_sensor_lost_events_total",
        "counter",
        "Events lost in the kernel, by reason (ring buffer or map full).",
    );
    for reason in ["ringbuf_full", "pending_full", "tracked_full", "conns_full"] {
        let _ = writeln!(
            o,
            "custody_sensor_lost_events_total{{reason=\"{reason}\"}} {}",
            st.kernel_counters.get(reason).copied().unwrap_or(0)
        );
    }
    family(
        &mut o,
        "custody_sensor_truncations_total",
        "counter",
        "Captures cut at their bound, by field.",
    );
    for (what, key) in [
        ("path", "path_truncated"),
        ("argv", "args_truncated"),
        ("payload", "data_truncated"),
    ] {
        let _ = writeln!(
            o,
            "custody_sensor_truncations_total{{field=\"{what}\"}} {}",
            st.kernel_counters.get(key).copied().unwrap_or(0)
        );
    }
    one(
        &mut o,
        "custody_sensor_processes",
        "gauge",
        "Processes in the daemon's process table.",
        st.processes_known as u64,
    );
    one(
        &mut o,
        "custody_sensor_declared_agents",
        "gauge",
        "Agents declared in the configuration.",
        st.declared_agents as u64,
    );
    one(
        &mut o,
        "custody_sensor_discovered_agents_total",
        "counter",
        "Undeclared agents discovered from their behaviour.",
        st.discovered_agents,
    );
    family(
        &mut o,
        "custody_sensor_tls_hellos_total",
        "counter",
        "TLS ClientHellos (first writes after a connect), by what parsing them gave.",
    );
    let h = &st.tls_hellos;
    for (result, v) in [
        ("parsed", h.hellos_parsed),
        ("unparseable", h.hellos_unparseable),
    ] {
        let _ = writeln!(
            o,
            "custody_sensor_tls_hellos_total{{result=\"{result}\"}} {v}"
        );
    }
    one(
        &mut o,
        "custody_sensor_hello_inspections_total",
        "counter",
        "First writes after a connect inspected in the kernel for a ClientHello.",
        st.kernel_counters
            .get("hello_inspected")
            .copied()
            .unwrap_or(0),
    );
    one(
        &mut o,
        "custody_sensor_opaque_egress_total",
        "counter",
        "Connections reported as opaque egress (TLS the sensor cannot read).",
        h.opaque_egress,
    );
    one(
        &mut o,
        "custody_sensor_quarantined_processes",
        "gauge",
        "Processes under network quarantine.",
        st.quarantined_pids.len() as u64,
    );
    one(
        &mut o,
        "custody_sensor_pending_kills",
        "gauge",
        "Processes marked to die at their next syscall.",
        st.pending_kills as u64,
    );
    if let Some(p) = &st.policy {
        one(
            &mut o,
            "custody_sensor_policy_version",
            "gauge",
            "Version of the policy set whose kernel rules are in force.",
            p.version.parse().unwrap_or(0),
        );
        family(
            &mut o,
            "custody_sensor_policy_rules",
            "gauge",
            "Kernel policy rules taken in, by kind.",
        );
        for (kind, v) in [
            ("endpoint", p.endpoint_rules),
            ("path", p.path_rules),
            ("credential", p.credential_rules),
        ] {
            let _ = writeln!(o, "custody_sensor_policy_rules{{kind=\"{kind}\"}} {v}");
        }
        one(
            &mut o,
            "custody_sensor_policy_rules_not_kernel",
            "gauge",
            "Rules (or parts of rules) this sensor cannot enforce in the kernel.",
            p.not_kernel.len() as u64,
        );
        family(
            &mut o,
            "custody_sensor_policy_enforcements_total",
            "counter",
            "Kernel policy enforcements, by kind.",
        );
        for (kind, v) in [
            ("connect_denied", p.connects_denied),
            ("killed_at_open", p.opens_killed),
            ("killed_after_open", p.killed_after_open),
            ("credential_stopped", p.credential_stops),
        ] {
            let _ = writeln!(
                o,
                "custody_sensor_policy_enforcements_total{{kind=\"{kind}\"}} {v}"
            );
        }
    }
    if let Some(h) = &st.holds {
        one(
            &mut o,
            "custody_sensor_exec_hold_armed",
            "gauge",
            "1 while new processes are held at exec for vetting (revocations cached).",
            u64::from(h.armed),
        );
        one(
            &mut o,
            "custody_sensor_exec_held_processes",
            "gauge",
            "Processes stopped at exec and not yet settled.",
            h.held_now as u64,
        );
        one(
            &mut o,
            "custody_sensor_exec_holds_kernel_total",
            "counter",
            "Processes the kernel stopped at exec.",
            st.kernel_counters.get("held").copied().unwrap_or(0),
        );
        one(
            &mut o,
            "custody_sensor_exec_hold_failures_total",
            "counter",
            "Execs that should have been held but ran (hold map full or signal refused).",
            st.kernel_counters.get("hold_failed").copied().unwrap_or(0),
        );
        family(
            &mut o,
            "custody_sensor_exec_holds_total",
            "counter",
            "Holds settled, by result.",
        );
        for (r, v) in [
            ("resumed", h.resumed),
            ("killed", h.killed),
            ("quarantined", h.quarantined),
            ("gone", h.gone),
            ("unvetted", h.unvetted),
        ] {
            let _ = writeln!(o, "custody_sensor_exec_holds_total{{result=\"{r}\"}} {v}");
        }
        one(
            &mut o,
            "custody_sensor_exec_holds_vetted_from_proc_total",
            "counter",
            "Holds vetted from /proc/PID/environ (record lost or environment cut short).",
            h.vetted_from_proc,
        );
        one(
            &mut o,
            "custody_sensor_exec_holds_swept_total",
            "counter",
            "Holds settled by the periodic sweep rather than the exec record.",
            h.by_sweep,
        );
        family(
            &mut o,
            "custody_sensor_exec_hold_seconds",
            "histogram",
            "Time a process stayed stopped at exec before its verdict.",
        );
        let mut cum = 0u64;
        for (i, b) in crate::hold::LATENCY_BUCKETS_S.iter().enumerate() {
            cum += h.latency_buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "custody_sensor_exec_hold_seconds_bucket{{le=\"{b}\"}} {cum}"
            );
        }
        let _ = writeln!(
            o,
            "custody_sensor_exec_hold_seconds_bucket{{le=\"+Inf\"}} {}",
            h.settled()
        );
        let _ = writeln!(
            o,
            "custody_sensor_exec_hold_seconds_sum {}",
            h.latency_sum_ns as f64 / 1e9
        );
        let _ = writeln!(o, "custody_sensor_exec_hold_seconds_count {}", h.settled());
        family(
            &mut o,
            "custody_sensor_exec_hold_max_seconds",
            "gauge",
            "Longest hold so far.",
        );
        let _ = writeln!(
            o,
            "custody_sensor_exec_hold_max_seconds {}",
            h.latency_max_ns as f64 / 1e9
        );
        let t = &h.tls;
        one(
            &mut o,
            "custody_sensor_tls_holds_kernel_total",
            "counter",
            "Processes the kernel stopped at the entry of a request-shaped SSL_write.",
            st.kernel_counters.get("held_tls").copied().unwrap_or(0),
        );
        one(
            &mut o,
            "custody_sensor_tls_hold_failures_total",
            "counter",
            "Request-shaped writes that should have been held but went on (hold map full or signal refused).",
            st.kernel_counters
                .get("hold_tls_failed")
                .copied()
                .unwrap_or(0),
        );
        family(
            &mut o,
            "custody_sensor_tls_holds_total",
            "counter",
            "Holds before a TLS send settled, by result (unvetted: quarantined fail-closed).",
        );
        for (r, v) in [
            ("resumed", t.resumed),
            ("killed", t.killed),
            ("quarantined", t.quarantined),
            ("gone", t.gone),
            ("unvetted", t.unvetted),
        ] {
            let _ = writeln!(o, "custody_sensor_tls_holds_total{{result=\"{r}\"}} {v}");
        }
        one(
            &mut o,
            "custody_sensor_tls_holds_vetted_from_memory_total",
            "counter",
            "Holds before send vetted from the process's memory (record lost or cut short).",
            t.vetted_from_memory,
        );
        one(
            &mut o,
            "custody_sensor_tls_holds_swept_total",
            "counter",
            "Holds before send settled by the periodic sweep rather than the held record.",
            t.by_sweep,
        );
        family(
            &mut o,
            "custody_sensor_tls_hold_seconds",
            "histogram",
            "Time a process stayed stopped before a TLS send: the latency a held request gains.",
        );
        let mut cum = 0u64;
        for (i, b) in crate::hold::LATENCY_BUCKETS_S.iter().enumerate() {
            cum += t.latency_buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "custody_sensor_tls_hold_seconds_bucket{{le=\"{b}\"}} {cum}"
            );
        }
        let _ = writeln!(
            o,
            "custody_sensor_tls_hold_seconds_bucket{{le=\"+Inf\"}} {}",
            t.settled()
        );
        let _ = writeln!(
            o,
            "custody_sensor_tls_hold_seconds_sum {}",
            t.latency_sum_ns as f64 / 1e9
        );
        let _ = writeln!(o, "custody_sensor_tls_hold_seconds_count {}", t.settled());
    }
    tls_coverage(&mut o, &st.tls);
    family(
        &mut o,
        "custody_sensor_feature_active",
        "gauge",
        "1 when a sensor feature is attached, 0 when degraded.",
    );
    for f in &st.features {
        let _ = writeln!(
            o,
            "custody_sensor_feature_active{{feature=\"{}\"}} {}",
            escape(&f.name),
            u8::from(f.active)
        );
    }
    family(
        &mut o,
        "custody_sensor_commands_total",
        "counter",
        "Response commands applied, by kind and result.",
    );
    for ((k, s), v) in &c.commands {
        let _ = writeln!(
            o,
            "custody_sensor_commands_total{{kind=\"{}\",status=\"{}\"}} {v}",
            escape(k),
            escape(s)
        );
    }
    one(
        &mut o,
        "custody_sensor_enrolled",
        "gauge",
        "1 when the sensor ships to a collector.",
        u64::from(st.collector.is_some()),
    );
    if let Some(col) = &st.collector {
        one(
            &mut o,
            "custody_sensor_collector_connected",
            "gauge",
            "1 while the collector stream is up.",
            u64::from(col.connected),
        );
        one(
            &mut o,
            "custody_sensor_spool_events",
            "gauge",
            "Events spooled locally, not yet acknowledged.",
            col.spool_depth,
        );
        one(
            &mut o,
            "custody_sensor_events_behind",
            "gauge",
            "Events assigned a sequence number that the collector has not acknowledged.",
            col.next_seq
                .saturating_sub(1)
                .saturating_sub(col.last_acked_seq),
        );
        one(
            &mut o,
            "custody_sensor_oldest_unacked_age_seconds",
            "gauge",
            "Age of the oldest event the collector has not acknowledged (0: none): how far behind in time.",
            if col.oldest_unacked_ns == 0 {
                0
            } else {
                crate::clock::now_ns().saturating_sub(col.oldest_unacked_ns) / 1_000_000_000
            },
        );
        one(
            &mut o,
            "custody_sensor_spool_bytes",
            "gauge",
            "Bytes in the local spool.",
            col.spool_bytes,
        );
        one(
            &mut o,
            "custody_sensor_spool_dropped_events_total",
            "counter",
            "Events dropped because the spool was full.",
            col.spool_dropped,
        );
        one(
            &mut o,
            "custody_sensor_stream_lag_events",
            "gauge",
            "Events produced but not yet acknowledged by the collector.",
            col.next_seq
                .saturating_sub(1)
                .saturating_sub(col.last_acked_seq),
        );
        one(
            &mut o,
            "custody_sensor_rejected_batches_total",
            "counter",
            "Batches the collector rejected.",
            col.rejected,
        );
    }
    o
}

/// The TLS coverage families: binaries by whether their TLS is read, analyses, errors,
/// anomalies (counted, never hooked), uncovered reports and exec → attach time.
fn tls_coverage(o: &mut String, t: &crate::report::status::TlsCoverageStatus) {
    family(
        o,
        "custody_sensor_tls_binaries",
        "gauge",
        "Binaries of tracked processes analysed, by whether their TLS is read.",
    );
    let _ = writeln!(
        o,
        "custody_sensor_tls_binaries{{coverage=\"covered\"}} {}",
        t.covered.len()
    );
    let _ = writeln!(
        o,
        "custody_sensor_tls_binaries{{coverage=\"uncovered\"}} {}",
        t.uncovered.len()
    );
    family(
        o,
        "custody_sensor_tls_analyses_total",
        "counter",
        "TLS analyses of binaries, by source (analysed, or answered by the cache).",
    );
    let _ = writeln!(
        o,
        "custody_sensor_tls_analyses_total{{source=\"analysed\"}} {}",
        t.analysed
    );
    let _ = writeln!(
        o,
        "custody_sensor_tls_analyses_total{{source=\"cache\"}} {}",
        t.cache_hits
    );
    family(
        o,
        "custody_sensor_tls_analysis_errors_total",
        "counter",
        "Binaries that could not be analysed, and attaches refused, by reason.",
    );
    for (reason, v) in [
        ("analysis", t.errors),
        ("attach_refused", t.attach_refused),
        ("cache_state", t.cache_errors),
        ("moved_on", t.moved_on),
    ] {
        let _ = writeln!(
            o,
            "custody_sensor_tls_analysis_errors_total{{reason=\"{reason}\"}} {v}"
        );
    }
    family(
        o,
        "custody_sensor_tls_anomalies_total",
        "counter",
        "Things in analysed binaries that did not add up (never hooked).",
    );
    let _ = writeln!(o, "custody_sensor_tls_anomalies_total {}", t.anomalies);
    family(
        o,
        "custody_sensor_tls_uncovered_reports_total",
        "counter",
        "TLS Custody cannot read, reported (one per process and binary).",
    );
    let _ = writeln!(
        o,
        "custody_sensor_tls_uncovered_reports_total {}",
        t.uncovered_reports
    );
    family(
        o,
        "custody_sensor_tls_exec_to_attach_seconds",
        "summary",
        "From a tracked exec seen to its binary's TLS hooks in place.",
    );
    let _ = writeln!(
        o,
        "custody_sensor_tls_exec_to_attach_seconds_sum {}",
        t.exec_to_attach_ms_sum / 1000.0
    );
    let _ = writeln!(
        o,
        "custody_sensor_tls_exec_to_attach_seconds_count {}",
        t.exec_to_attach_count
    );
    family(
        o,
        "custody_sensor_tls_exec_to_attach_max_seconds",
        "gauge",
        "The longest exec to TLS attach so far.",
    );
    let _ = writeln!(
        o,
        "custody_sensor_tls_exec_to_attach_max_seconds {}",
        t.exec_to_attach_ms_max / 1000.0
    );
}

/// Serve `/metrics` from a text snapshot the daemon loop refreshes.
pub async fn serve(addr: SocketAddr, text: Arc<Mutex<String>>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics: cannot listen on {addr}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = text.clone();
            async move {
                let body = text.lock().map(|t| t.clone()).unwrap_or_default();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics endpoint stopped: {e}");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_valid_exposition_lines() {
        let mut st = Status {
            records: 5,
            ..Default::default()
        };
        st.kernel_counters.insert("ringbuf_full".into(), 2);
        let mut c = Counters::default();
        c.events.insert("file_open", 3);
        c.commands.insert(("kill_chain".into(), "ok".into()), 1);
        let mut h = crate::hold::HoldStats {
            armed: true,
            resumed: 2,
            killed: 1,
            latency_sum_ns: 3_000_000,
            latency_max_ns: 2_000_000,
            ..Default::default()
        };
        h.latency_buckets = vec![0; crate::hold::LATENCY_BUCKETS_S.len() + 1];
        h.latency_buckets[1] = 2;
        h.latency_buckets[3] = 1;
        h.tls.killed = 1;
        h.tls.latency_sum_ns = 400_000;
        h.tls.latency_buckets = vec![0; crate::hold::LATENCY_BUCKETS_S.len() + 1];
        h.tls.latency_buckets[0] = 1;
        st.holds = Some(h);
        st.policy = Some(crate::policy::PolicyStatus {
            version: "3".into(),
            endpoint_rules: 2,
            connects_denied: 4,
            ..Default::default()
        });
        st.tls
            .uncovered
            .push(crate::report::status::TlsBinary::default());
        st.tls.uncovered_reports = 2;
        st.tls.exec_to_attach_count = 1;
        st.tls.exec_to_attach_ms_sum = 250.0;
        let t = render(&st, &c);
        assert!(t.contains("custody_sensor_tls_binaries{coverage=\"uncovered\"} 1\n"));
        assert!(t.contains("custody_sensor_tls_uncovered_reports_total 2\n"));
        assert!(t.contains("custody_sensor_tls_exec_to_attach_seconds_sum 0.25\n"));
        assert!(t.contains("custody_sensor_policy_version 3\n"));
        assert!(t.contains("custody_sensor_policy_rules{kind=\"endpoint\"} 2\n"));
        assert!(
            t.contains("custody_sensor_policy_enforcements_total{kind=\"connect_denied\"} 4\n")
        );
        assert!(t.contains("custody_sensor_tls_holds_total{result=\"killed\"} 1\n"));
        assert!(t.contains("custody_sensor_tls_hold_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(t.contains("custody_sensor_tls_hold_seconds_count 1\n"));
        assert!(t.contains("custody_sensor_exec_holds_total{result=\"killed\"} 1\n"));
        assert!(t.contains("custody_sensor_exec_hold_seconds_bucket{le=\"0.001\"} 2\n"));
        assert!(t.contains("custody_sensor_exec_hold_seconds_bucket{le=\"0.005\"} 3\n"));
        assert!(t.contains("custody_sensor_exec_hold_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(t.contains("custody_sensor_exec_hold_seconds_count 3\n"));
        assert!(t.contains("custody_sensor_events_total{kind=\"file_open\"} 3\n"));
        assert!(t.contains("custody_sensor_lost_events_total{reason=\"ringbuf_full\"} 2\n"));
        assert!(t.contains("custody_sensor_commands_total{kind=\"kill_chain\",status=\"ok\"} 1\n"));
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("custody_sensor_"), "{line}");
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
        }
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }
}
