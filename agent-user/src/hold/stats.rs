//! Hold counters and stop-to-verdict latency, for `custodyd status` and the metrics.

use serde::{Deserialize, Serialize};

/// Upper bounds (seconds) of the hold-latency histogram buckets (+Inf is implied).
pub const LATENCY_BUCKETS_S: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Hold counters, for `custodyd status` and the metrics. The top-level outcome and
/// latency fields are holds at exec; `tls` has the same for holds before a TLS send.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HoldStats {
    /// Processes are being held (revocations cached and enforcement up).
    pub armed: bool,
    /// "tracked", "all" or "off".
    pub scope: String,
    /// Holds not settled yet (both kinds).
    pub held_now: usize,
    /// Settled holds, by outcome.
    pub resumed: u64,
    pub killed: u64,
    pub quarantined: u64,
    /// The process was gone (killed by someone else, pid reused) before its verdict.
    pub gone: u64,
    /// Continued without a verdict: the environment stayed unreadable.
    pub unvetted: u64,
    /// Vetted from /proc/PID/environ (record lost or its environment cut short).
    pub vetted_from_proc: u64,
    /// Settled by the periodic sweep rather than by the exec record.
    pub by_sweep: u64,
    /// Stop-to-verdict time of resumed, killed and quarantined holds.
    pub latency_sum_ns: u64,
    pub latency_max_ns: u64,
    /// Per [`LATENCY_BUCKETS_S`] bound, then +Inf; not cumulative.
    pub latency_buckets: Vec<u64>,
    /// Holds before a TLS send.
    #[serde(default)]
    pub tls: TlsHoldStats,
}

/// Holds at the entry of SSL_write(_ex), by outcome.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TlsHoldStats {
    pub resumed: u64,
    pub killed: u64,
    pub quarantined: u64,
    pub gone: u64,
    /// `hold_unvetted_tls`: a held write could be vetted neither from its record nor
    /// from the process's memory; the process was quarantined (fail-closed: its send
    /// fails) and continued, never continued unvetted.
    pub unvetted: u64,
    /// Vetted from the process's memory (record lost, or the write longer than the
    /// record's capture).
    pub vetted_from_memory: u64,
    /// A held write ended inside the request head: the connection's next write was
    /// held too, to vet the rest of the head.
    pub continued_heads: u64,
    /// Settled by the periodic sweep rather than by the held record.
    pub by_sweep: u64,
    /// Stop-to-verdict time of resumed, killed, quarantined and unvetted holds: the
    /// latency a held request gains.
    pub latency_sum_ns: u64,
    pub latency_max_ns: u64,
    pub latency_buckets: Vec<u64>,
}

impl TlsHoldStats {
    pub fn settled(&self) -> u64 {
        self.resumed + self.killed + self.quarantined + self.unvetted
    }
}

fn observe(sum: &mut u64, max: &mut u64, buckets: &mut Vec<u64>, ns: u64) {
    *sum += ns;
    *max = (*max).max(ns);
    if buckets.len() != LATENCY_BUCKETS_S.len() + 1 {
        *buckets = vec![0; LATENCY_BUCKETS_S.len() + 1];
    }
    let s = ns as f64 / 1e9;
    let i = LATENCY_BUCKETS_S
        .iter()
        .position(|&b| s <= b)
        .unwrap_or(LATENCY_BUCKETS_S.len());
    buckets[i] += 1;
}

impl HoldStats {
    pub fn settled(&self) -> u64 {
        self.resumed + self.killed + self.quarantined
    }

    pub(super) fn observe(&mut self, tls: bool, ns: u64) {
        if tls {
            let t = &mut self.tls;
            observe(
                &mut t.latency_sum_ns,
                &mut t.latency_max_ns,
                &mut t.latency_buckets,
                ns,
            );
        } else {
            observe(
                &mut self.latency_sum_ns,
                &mut self.latency_max_ns,
                &mut self.latency_buckets,
                ns,
            );
        }
    }
}
