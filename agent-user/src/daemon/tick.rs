//! Once a second: the kernel's counters read (and a warning event when it lost
//! events), per-process state pruned, the kill hook kept in step, and the status
//! snapshot and metrics rewritten from the same numbers.

use std::collections::BTreeMap;

use agent_ebpf::counter;
use anyhow::Result;

use super::Daemon;
use crate::clock;
use crate::report::{metrics, status};

const COUNTER_NAMES: [(u32, &str); 23] = [
    (counter::RINGBUF_FULL, "ringbuf_full"),
    (counter::PATH_TRUNCATED, "path_truncated"),
    (counter::ARGS_TRUNCATED, "args_truncated"),
    (counter::DATA_TRUNCATED, "data_truncated"),
    (counter::PENDING_FULL, "pending_full"),
    (counter::TRACKED_FULL, "tracked_full"),
    (counter::READ_FAILED, "read_failed"),
    (counter::HELD, "held"),
    (counter::HOLD_FAILED, "hold_failed"),
    (counter::HELD_TLS, "held_tls"),
    (counter::HOLD_TLS_FAILED, "hold_tls_failed"),
    (counter::POLICY_NET_DENIED, "policy_net_denied"),
    (counter::POLICY_OPEN_KILLED, "policy_open_killed"),
    (counter::TLS_CHUNKS_LOST, "tls_chunks_lost"),
    (counter::TLS_BYTES_CAPPED, "tls_bytes_capped"),
    (counter::GO_TLS_MISSED, "go_tls_missed"),
    (counter::DECLARED_AT_EXEC, "declared_at_exec"),
    (counter::HELLO_INSPECTED, "hello_inspected"),
    (counter::HELLO_SEEN, "hello_seen"),
    (counter::CONNS_FULL, "conns_full"),
    (counter::RUSTLS_PADDED, "rustls_padded"),
    (counter::RUSTLS_UNBOUND, "rustls_unbound"),
    (counter::RUSTLS_SPLIT, "rustls_split"),
];

impl Daemon {
    pub(super) fn on_tick(&mut self) -> Result<()> {
        // Routine summaries whose window closed.
        let mut due = Vec::new();
        self.routine.due(clock::now_ns(), &mut due);
        for ev in due {
            self.report.emit(ev)?;
        }
        let mut counters_now = BTreeMap::new();
        for (slot, name) in COUNTER_NAMES {
            let v: u64 = self
                .kernel_counters
                .get(&slot, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            counters_now.insert(name.to_string(), v);
        }
        for name in ["ringbuf_full", "pending_full", "tracked_full", "conns_full"] {
            let v = counters_now[name];
            let before = self.reported_lost.insert(name, v).unwrap_or(0);
            if v > before && !self.args.floor {
                let msg = format!("kernel lost {} events ({name})", v - before);
                tracing::warn!("{msg}");
                let ev = self
                    .pipe
                    .warning(msg, counters_now.clone().into_iter().collect());
                self.report.emit(ev)?;
            }
        }
        self.pipe.prune();
        self.tls_scan_maps()?;
        self.status.tls = self.tls_status();
        let st = &mut self.status;
        if let Some(en) = self.enforcer.as_mut() {
            if let Err(e) = en.sync_kill_hook(&mut self.ebpf) {
                tracing::warn!("kill hook: {e:#}");
            }
            st.quarantined_pids = en.quarantined();
            st.pending_kills = en.pending_kills();
        }
        if let Some(hs) = self.holds.as_mut() {
            hs.stats.held_now = hs.entries().len();
            st.holds = Some(hs.stats.clone());
        }
        st.updated_unix = clock::now_unix();
        let pol = &mut self.policy;
        if pol.active() {
            pol.status.connects_denied = counters_now["policy_net_denied"];
            pol.status.opens_killed = counters_now["policy_open_killed"];
            pol.status.credential_stops = self.watch.policy_stops;
            st.policy = Some(pol.status.clone());
        }
        st.kernel_counters = counters_now;
        st.records = self.pipe.stats.records;
        st.decode_errors = self.pipe.stats.decode_errors;
        st.events_emitted = self.pipe.stats.emitted;
        st.processes_known = self.pipe.table.len();
        st.discovered_agents = self.pipe.stats.discovered_agents;
        st.tls_hellos = self.pipe.stats.hello.clone();
        if let (Some(h), Some(e)) = (self.report.shipper(), &self.enrolled) {
            h.set_counters(
                st.kernel_counters
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
            );
            let s = h.stats();
            st.collector = Some(status::CollectorStatus {
                address: e.collector.clone(),
                connected: s.connected,
                next_seq: s.next_seq,
                last_acked_seq: s.last_acked_seq,
                spool_depth: s.spool_depth,
                spool_bytes: s.spool_bytes,
                spool_dropped: s.spool_dropped,
                rejected: s.rejected,
                oldest_unacked_ns: s.oldest_unacked_ns,
            });
        }
        if let (Ok(c), Ok(mut t)) = (self.report.counts().lock(), self.metrics_text.lock()) {
            *t = metrics::render(st, &c);
        }
        if let Err(e) = status::write(&self.args.status_file, st) {
            tracing::debug!("status file {}: {e}", self.args.status_file.display());
        }
        Ok(())
    }
}
