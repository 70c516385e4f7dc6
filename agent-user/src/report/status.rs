//! `custodyd status`: the daemon writes a status snapshot every second; the command
//! reads it and tells the operator whether the sensor is healthy and what to do if not.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::clock::now_unix;
use crate::kernel::Feature;

pub const DEFAULT_PATH: &str = "/run/custody/custodyd-status.json";

#[derive(Serialize, Deserialize, Default)]
pub struct Status {
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub mode: String,
    pub started_unix: u64,
    pub updated_unix: u64,
    pub features: Vec<FeatureStatus>,
    /// What the kernel offers (probed at start, see `custodyd check-kernel`).
    #[serde(default)]
    pub kernel: Vec<FeatureStatus>,
    #[serde(default)]
    pub kernel_release: String,
    /// Kernel-side counters (lost events, truncations), summed over CPUs.
    pub kernel_counters: BTreeMap<String, u64>,
    pub records: u64,
    pub decode_errors: u64,
    pub events_emitted: u64,
    pub processes_known: usize,
    pub discovered_agents: u64,
    /// ClientHellos seen (first writes after connects) and opaque egress reported.
    #[serde(default)]
    pub tls_hellos: crate::pipeline::HelloStats,
    pub declared_agents: usize,
    pub state_dir: String,
    /// Processes under network quarantine (enforced in the kernel, pinned).
    pub quarantined_pids: Vec<u32>,
    pub pending_kills: usize,
    /// Revocation hold at exec (absent when unavailable).
    #[serde(default)]
    pub holds: Option<crate::hold::HoldStats>,
    /// Collector shipping (absent in standalone mode).
    pub collector: Option<CollectorStatus>,
    /// Kernel rules from the collector's policies (absent until a set arrives).
    #[serde(default)]
    pub policy: Option<crate::policy::PolicyStatus>,
    /// Which binaries' TLS is read, which is not, and why.
    #[serde(default)]
    pub tls: TlsCoverageStatus,
}

/// The "TLS coverage" section: binaries analysed, attached and uncovered.
#[derive(Serialize, Deserialize, Default, Clone)]
pub struct TlsCoverageStatus {
    /// Binaries analysed (cache misses) and answers from the cache.
    pub analysed: u64,
    pub cache_hits: u64,
    pub cache_errors: u64,
    /// Analyses waiting or running.
    pub pending: usize,
    /// Analysed and attached at start (with the time the analysis took).
    pub preanalysed: Vec<String>,
    pub covered: Vec<TlsBinary>,
    pub uncovered: Vec<TlsBinary>,
    /// `TlsUncovered` events emitted (one per process and file).
    pub uncovered_reports: u64,
    /// Files that could not be analysed, and attaches refused (file changed, offset
    /// not in code, attach failed); the latest ones in `error_notes`.
    pub errors: u64,
    pub attach_refused: u64,
    /// Analyses dropped because the process had exec'd again or exited and its path
    /// no longer reached the file (not an error of the file; asked again next time).
    #[serde(default)]
    pub moved_on: u64,
    pub error_notes: Vec<String>,
    /// Things in analysed files that did not add up (counted, never hooked).
    pub anomalies: u64,
    pub anomaly_notes: Vec<String>,
    pub analysis_ms_max: u64,
    /// From the daemon seeing a tracked exec to its binary's hooks being in place (0
    /// when the file was attached already).
    pub exec_to_attach_count: u64,
    pub exec_to_attach_ms_sum: f64,
    pub exec_to_attach_ms_max: f64,
    pub exec_to_attach_ms_last: f64,
}

#[derive(Serialize, Deserialize, Default, Clone)]
pub struct TlsBinary {
    pub path: String,
    pub build_id: String,
    pub stacks: Vec<TlsStackStatus>,
    /// Uprobes attached (covered binaries).
    pub probes: usize,
}

#[derive(Serialize, Deserialize, Default, Clone)]
pub struct TlsStackStatus {
    pub stack: String,
    pub versions: Vec<String>,
    pub tried: Vec<String>,
}

/// The "TLS coverage" lines of the status screen.
fn show_tls(t: &TlsCoverageStatus) {
    println!(
        "  TLS coverage: {} binaries analysed ({} from cache), {} covered, {} uncovered, {} pending",
        t.analysed,
        t.cache_hits,
        t.covered.len(),
        t.uncovered.len(),
        t.pending
    );
    for b in &t.covered {
        let stacks: Vec<&str> = b.stacks.iter().map(|s| s.stack.as_str()).collect();
        println!(
            "    covered   {}  {}  {} probes",
            b.path,
            stacks.join(","),
            b.probes
        );
    }
    for b in &t.uncovered {
        println!("    UNCOVERED {}  build id {}", b.path, b.build_id);
        for s in &b.stacks {
            println!(
                "      {}  versions {:?}  tried {:?}",
                s.stack, s.versions, s.tried
            );
        }
    }
    if t.exec_to_attach_count > 0 {
        println!(
            "    exec → attach: last {:.1} ms, max {:.1} ms, mean {:.1} ms over {}",
            t.exec_to_attach_ms_last,
            t.exec_to_attach_ms_max,
            t.exec_to_attach_ms_sum / t.exec_to_attach_count as f64,
            t.exec_to_attach_count
        );
    }
    if t.errors + t.attach_refused > 0 {
        println!(
            "    analysis errors {}  attaches refused {}",
            t.errors, t.attach_refused
        );
        for n in &t.error_notes {
            println!("      {n}");
        }
    }
    if t.anomalies > 0 {
        println!("    anomalies {} (never hooked)", t.anomalies);
        for n in &t.anomaly_notes {
            println!("      {n}");
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
pub struct CollectorStatus {
    pub address: String,
    pub connected: bool,
    pub next_seq: u64,
    pub last_acked_seq: u64,
    pub spool_depth: u64,
    pub spool_bytes: u64,
    pub spool_dropped: u64,
    pub rejected: u64,
    /// Event time of the oldest event the collector has not acknowledged (0: none).
    #[serde(default)]
    pub oldest_unacked_ns: u64,
}

#[derive(Serialize, Deserialize, Default)]
pub struct FeatureStatus {
    pub name: String,
    pub active: bool,
    pub detail: String,
}

impl From<&Feature> for FeatureStatus {
    fn from(f: &Feature) -> Self {
        FeatureStatus {
            name: f.name.clone(),
            active: f.active,
            detail: f.detail.clone(),
        }
    }
}

pub fn write(path: &Path, s: &Status) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Print the status screen; returns the process exit code (0 healthy, 1 degraded,
/// 2 not running).
pub fn show(path: &Path, json: bool) -> Result<i32> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(_) => {
            println!("custodyd: NOT RUNNING (no status at {})", path.display());
            println!(
                "  what to do: start it (systemctl start custodyd, or custodyd --standalone --json)"
            );
            return Ok(2);
        }
    };
    let s: Status =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if json {
        println!("{text}");
    }
    let age = now_unix().saturating_sub(s.updated_unix);
    let alive = Path::new(&format!("/proc/{}", s.pid)).exists() && age < 10;
    let lost = s.kernel_counters.get("ringbuf_full").copied().unwrap_or(0)
        + s.kernel_counters.get("pending_full").copied().unwrap_or(0);
    let inactive: Vec<&FeatureStatus> = s.features.iter().filter(|f| !f.active).collect();
    let mut code = 0;
    let state = if !alive {
        code = 2;
        "NOT RUNNING (stale status)"
    } else if lost > 0 || !inactive.is_empty() {
        code = 1;
        "DEGRADED"
    } else {
        "HEALTHY"
    };
    if json {
        return Ok(code);
    }
    println!("custodyd on {}: {state}", s.host);
    println!(
        "  pid {}  version {}  mode {}  up {}s  status age {}s",
        s.pid,
        s.version,
        s.mode,
        s.updated_unix.saturating_sub(s.started_unix),
        age
    );
    println!(
        "  processes known {}  declared agents {}  discovered agents {}",
        s.processes_known, s.declared_agents, s.discovered_agents
    );
    println!(
        "  kernel records {}  events emitted {}  malformed records {}",
        s.records, s.events_emitted, s.decode_errors
    );
    let h = &s.tls_hellos;
    println!(
        "  TLS ClientHellos {} (first writes inspected {})  parsed {}  unparseable {}  truncated {}  opaque egress {}",
        h.hellos_seen,
        s.kernel_counters
            .get("hello_inspected")
            .copied()
            .unwrap_or(0),
        h.hellos_parsed,
        h.hellos_unparseable,
        h.hellos_truncated,
        h.opaque_egress
    );
    if let Some(c) = &s.collector {
        println!(
            "  collector {}: {}  acked up to seq {} of {}  spool {} events ({} bytes)  dropped {}  rejected {}",
            c.address,
            if c.connected {
                "connected"
            } else {
                "NOT CONNECTED"
            },
            c.last_acked_seq,
            c.next_seq.saturating_sub(1),
            c.spool_depth,
            c.spool_bytes,
            c.spool_dropped,
            c.rejected
        );
        let behind = c
            .next_seq
            .saturating_sub(1)
            .saturating_sub(c.last_acked_seq);
        if behind > 0 && c.oldest_unacked_ns > 0 {
            let age = crate::clock::now_ns().saturating_sub(c.oldest_unacked_ns) / 1_000_000_000;
            println!(
                "  behind: {behind} events, the oldest {age} s old (not yet stored by the collector)"
            );
        }
        if !c.connected {
            code = code.max(1);
            println!(
                "  what to do: events are spooled locally; check that the collector at {} is up and reachable (custodyctl status)",
                c.address
            );
        }
        if c.spool_dropped > 0 {
            println!(
                "  what to do: {} events were dropped because the spool was full during a long outage",
                c.spool_dropped
            );
        }
    }
    if !s.quarantined_pids.is_empty() {
        println!(
            "  QUARANTINE in force for pids {:?} (network denied except to the collector)",
            s.quarantined_pids
        );
    }
    if s.pending_kills > 0 {
        println!(
            "  {} processes marked for kill at their next syscall",
            s.pending_kills
        );
    }
    if let Some(h) = &s.holds {
        let settled = h.settled();
        let avg_ms = if settled > 0 {
            h.latency_sum_ns as f64 / settled as f64 / 1e6
        } else {
            0.0
        };
        println!(
            "  revocation hold ({}): {}  held now {}  settled {} (resumed {}, killed {}, quarantined {}, gone {}, unvetted {})  latency avg {avg_ms:.2} ms max {:.2} ms",
            h.scope,
            if h.armed { "ARMED" } else { "idle" },
            h.held_now,
            settled,
            h.resumed,
            h.killed,
            h.quarantined,
            h.gone,
            h.unvetted,
            h.latency_max_ns as f64 / 1e6
        );
        let t = &h.tls;
        let n = t.settled();
        println!(
            "  hold before TLS send: settled {n} (resumed {}, killed {}, quarantined {}, gone {}, unvetted {})  latency avg {:.2} ms max {:.2} ms",
            t.resumed,
            t.killed,
            t.quarantined,
            t.gone,
            t.unvetted,
            if n > 0 {
                t.latency_sum_ns as f64 / n as f64 / 1e6
            } else {
                0.0
            },
            t.latency_max_ns as f64 / 1e6
        );
    }
    if let Some(p) = &s.policy {
        println!(
            "  policy v{} ({}, from {}): {} endpoint, {} path, {} credential rule(s); kernel entries {} prefixes, {} paths; connects denied {}, killed at open {}, killed after open {}, credential stops {}",
            p.version,
            p.status,
            p.source,
            p.endpoint_rules,
            p.path_rules,
            p.credential_rules,
            p.kernel_endpoint_prefixes,
            p.kernel_path_entries,
            p.connects_denied,
            p.opens_killed,
            p.killed_after_open,
            p.credential_stops
        );
        for n in &p.not_kernel {
            println!("    not in the kernel: {n}");
        }
        if !p.waiting_agents.is_empty() {
            println!(
                "    rules waiting for agents not seen yet: {}",
                p.waiting_agents.join(", ")
            );
        }
    }
    show_tls(&s.tls);
    if !s.kernel.is_empty() {
        println!(
            "  kernel {}: {}",
            s.kernel_release,
            s.kernel
                .iter()
                .map(|k| format!("{}={}", k.name, if k.active { "yes" } else { "NO" }))
                .collect::<Vec<_>>()
                .join(" ")
        );
        for k in s.kernel.iter().filter(|k| !k.active) {
            println!("    kernel lacks {}: {}", k.name, k.detail);
        }
    }
    for f in &s.features {
        let mark = if f.active { "active  " } else { "DEGRADED" };
        println!(
            "  [{mark}] {}{}",
            f.name,
            if f.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", f.detail)
            }
        );
    }
    for (k, v) in &s.kernel_counters {
        println!("  counter {k} = {v}");
    }
    if lost > 0 {
        println!(
            "  what to do: {lost} events were lost in the kernel (ring buffer or syscall map full); the host is busier than the sensor drains — check CPU limits on custodyd"
        );
    }
    if !inactive.is_empty() {
        println!(
            "  what to do: degraded features are listed with the kernel's reason above; the rest of the sensor works"
        );
    }
    if !alive {
        println!(
            "  what to do: the daemon is not running; start it and check its log (journalctl -u custodyd)"
        );
    }
    Ok(code)
}
