//! The running sensor: start-up (kernel programs, enforcement, holds, policy, the
//! collector stream) and the event loop that turns kernel records into events,
//! applies commands and settles holds until SIGTERM/SIGINT.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use agent_ebpf::{Tracked, counter};
use agent_user::credential::FleetKey;
use anyhow::{Context, Result, bail};
use aya::maps::{HashMap as BpfHashMap, MapData};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use agent_user::shipper::{Shipper, ShipperConfig, ShipperHandle};
use custody_proto::sensor::v1::{Command as SensorCommand, CommandResult, Event};

use crate::cli::RunArgs;
use crate::commands::{POLICY_RESOLVE_TIMEOUT, answer, apply_policy, next_command};
use crate::config::Config;
use crate::identity::Identity;
use crate::pipeline::{self, Pipeline, Tracker};
use crate::sighting::{DaemonJudge, HeldRecord, held_record, stop_on_sight};
use crate::{
    decode, detach, enforce, enrollment, hold, kernel, loader, metrics, output, policy, response,
    revocation, status,
};

struct MapTracker(BpfHashMap<MapData, u32, Tracked>);

impl Tracker for MapTracker {
    fn track(&mut self, tgid: u32, t: Tracked) {
        if let Err(e) = self.0.insert(tgid, t, 0) {
            tracing::warn!("could not track pid {tgid}: {e}");
        }
    }
}

/// Records handled per turn of the event loop before timers and signals get a look.
const DRAIN_MAX: usize = 4096;

const COUNTER_NAMES: [(u32, &str); 15] = [
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
];

/// How long the exec record path has to settle a hold before the sweep does it.
const HOLD_SWEEP_AGE: std::time::Duration = std::time::Duration::from_millis(100);

/// Write an event to the local output and hand it to the collector shipper.
fn emit(
    sink: &mut Option<output::JsonLines>,
    shipper: Option<&ShipperHandle>,
    counts: &Mutex<metrics::Counters>,
    ev: Event,
) -> Result<()> {
    if let (Some(k), Ok(mut c)) = (ev.kind.as_ref(), counts.lock()) {
        *c.events.entry(pipeline::kind_name(k)).or_default() += 1;
    }
    if let Some(s) = sink.as_mut() {
        s.write(&ev)?;
    }
    if let Some(h) = shipper {
        // The shipper spools durably and never blocks on the network.
        h.send(ev)?;
    }
    Ok(())
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Inode of this process's network namespace.
fn own_netns() -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    Ok(m.ino() as u32)
}

pub(crate) async fn run(args: RunArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default_config(),
    };
    let enrolled = if args.standalone || args.floor {
        None
    } else {
        let e = enrollment::Enrollment::load(&cfg.state_dir)?.with_context(|| {
            format!(
                "this host is not enrolled (no {}): run `custodyd enroll --collector ADDR --token TOKEN`, or use --standalone",
                enrollment::path(&cfg.state_dir).display()
            )
        })?;
        // Exec ids carry the host id, and the collector only accepts this host's own.
        cfg.host_id = e.host_id.clone();
        Some(e)
    };
    if enrolled.is_none() && !args.json && args.output.is_none() && !args.floor {
        bail!("--standalone needs an output: --json (stdout) or --output FILE");
    }
    let observe_all = args.observe_all || cfg.observe_all;
    // Held while running: `custodyd detach` refuses to pull pins from a live sensor.
    let _run_lock = (!args.floor).then(|| detach::RunLock::take(&cfg.state_dir));
    // What the kernel offers, before anything is loaded: a missing piece is named with
    // what it degrades, even when the load below then fails.
    loader::ensure_mounts();
    let kernel_probes = kernel::probe_all();
    tracing::info!(
        "kernel {}: {}",
        kernel_release(),
        kernel::summary(&kernel_probes)
    );
    for p in kernel_probes.iter().filter(|p| !p.active) {
        tracing::warn!(probe = %p.name, "kernel: {}", p.detail);
    }
    let key = FleetKey::load_or_create(&cfg.fleet_key).context("fleet key")?;
    let mut tls_binaries = loader::default_tls_binaries();
    tls_binaries.extend(cfg.tls_binaries.iter().cloned());
    let netns = if cfg.netns_scope { own_netns()? } else { 0 };
    let loaded = loader::load(&loader::Options {
        observe_all,
        floor: args.floor,
        tls_binaries,
        netns,
        pin_dir: (!args.floor).then(|| cfg.pin_dir.clone()),
    })?;
    for f in &loaded.features {
        if f.active {
            tracing::info!(feature = %f.name, "active");
        } else {
            tracing::warn!(feature = %f.name, reason = %f.detail, "degraded");
        }
    }
    if !loaded
        .features
        .iter()
        .any(|f| f.name == "process" && f.active)
    {
        bail!("process tracing could not be attached; nothing would be reported");
    }
    let loader::Loaded {
        mut ebpf,
        links,
        events,
        tracked,
        counters,
        mut features,
    } = loaded;
    // Enforcement (kill, quarantine): pinned in bpffs so it outlives this daemon.
    let mut enforcer = if args.floor {
        None
    } else {
        match enforce::Enforcer::attach(&mut ebpf, &cfg.pin_dir.join(enforce::PIN_LAYOUT)) {
            Ok(e) => {
                features.push(loader::Feature {
                    name: "enforcement".into(),
                    active: true,
                    detail: String::new(),
                });
                Some(e)
            }
            Err(e) => {
                tracing::warn!(reason = %format!("{e:#}"), "enforcement degraded");
                features.push(loader::Feature {
                    name: "enforcement".into(),
                    active: false,
                    detail: format!("{e:#}"),
                });
                None
            }
        }
    };
    if let Some(en) = enforcer.as_mut() {
        let q = en.quarantined();
        if !q.is_empty() {
            tracing::warn!(pids = ?q, "quarantine still in force from before this start");
        }
        if let Some(e) = &enrolled {
            en.allow_collector(&e.collector)?;
        }
    }
    let declared = cfg.agents.len();
    let mut tracker = MapTracker(tracked);
    let mut pipe = Pipeline::new(
        cfg.host_id.clone(),
        Identity::new(cfg.agents),
        key,
        observe_all,
    );
    let mut revocations = revocation::Revocations::load(&cfg.state_dir)?;
    for (fp, r) in &revocations.by_fingerprint {
        pipe.revoked
            .insert(fp.clone(), (r.action.clone(), r.command_id.clone()));
    }
    let seeded = pipe.seed(&mut tracker, netns);
    // Revocation hold: armed while revocations are cached and enforcement works.
    let mut holds = if args.floor {
        None
    } else {
        let h = hold::Holds::attach(&mut ebpf, cfg.revocation_hold).and_then(|mut h| {
            h.arm(
                enforcer.is_some() && (!pipe.revoked.is_empty() || !pipe.policy_creds.is_empty()),
            )?;
            Ok(h)
        });
        features.push(loader::Feature {
            name: "revocation_hold".into(),
            active: h.is_ok(),
            detail: h
                .as_ref()
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default(),
        });
        match h {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(reason = %format!("{e:#}"), "revocation hold degraded");
                None
            }
        }
    };
    let mut sink = match (&args.output, args.json) {
        (Some(p), _) => Some(output::JsonLines::file(p)?),
        (None, true) => Some(output::JsonLines::stdout()),
        (None, false) => None,
    };
    let (shipper, mut commands) = match &enrolled {
        Some(e) => {
            let mut sc = ShipperConfig::from_enrollment(
                &e.collector,
                &enrollment::Enrollment::paths(&cfg.state_dir),
                &cfg.state_dir.join("spool"),
                &e.host_id,
                &boot_id(),
            );
            sc.kernel_release = kernel_release();
            sc.features = features
                .iter()
                .filter(|f| f.active)
                .map(|f| f.name.clone())
                .collect();
            let (h, rx) = Shipper::start(sc)?;
            (Some(h), Some(rx))
        }
        None => (None, None),
    };
    let counts = Arc::new(Mutex::new(metrics::Counters::default()));
    // Kernel rules from the collector's policies: the last set received is put back
    // in force before any command is read (the collector may be unreachable).
    let policy_maps = if args.floor {
        None
    } else {
        match policy::maps::PolicyMaps::take(&mut ebpf) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(reason = %format!("{e:#}"), "kernel policy rules unavailable");
                None
            }
        }
    };
    let files_active = features.iter().any(|f| f.name == "files" && f.active);
    let mut pol = policy::Policy::new(
        &cfg.state_dir,
        policy_maps,
        enforcer.is_some(),
        files_active,
    );
    match policy::load_stored(&cfg.state_dir) {
        Ok(Some(stored)) => match policy::parse(&stored.rules.to_string()) {
            Ok((rules, raw)) => {
                let names = rules.names();
                let resolved = if names.is_empty() {
                    BTreeMap::new()
                } else {
                    policy::resolve(&names, POLICY_RESOLVE_TIMEOUT, &stored.resolved)
                };
                let p = policy::Pending {
                    version: stored.version,
                    command_id: stored.command_id,
                    rules,
                    raw,
                    resolved,
                    source: "state_dir".into(),
                };
                let (status, message, events, _) = apply_policy(
                    &mut pol,
                    &mut pipe,
                    holds.as_mut(),
                    enforcer.as_mut(),
                    &mut ebpf,
                    p,
                );
                tracing::info!(version = %pol.status.version, %status, "policy restored from the state dir: {message}");
                for ev in events {
                    emit(&mut sink, shipper.as_ref(), &counts, ev)?;
                }
            }
            Err(e) => tracing::warn!("stored policy ignored: {e:#}"),
        },
        Ok(None) => {}
        Err(e) => tracing::warn!("stored policy ignored: {e:#}"),
    }
    let (policy_tx, mut policy_rx) =
        tokio::sync::mpsc::channel::<(SensorCommand, u64, policy::Pending)>(8);
    let metrics_text = Arc::new(Mutex::new(String::new()));
    if let Some(addr) = args.metrics_listen {
        metrics::serve(addr, metrics_text.clone()).await?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    let started = status::now_unix();
    let mut st = status::Status {
        host: cfg.host_id.clone(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        mode: match (args.floor, &enrolled, observe_all) {
            (true, _, _) => "floor".to_string(),
            (_, Some(e), all) => format!(
                "collector {}{}",
                e.collector,
                if all { ", observe-all" } else { "" }
            ),
            (_, None, true) => "standalone, observe-all".to_string(),
            (_, None, false) => "standalone".to_string(),
        },
        started_unix: started,
        features: features.iter().map(Into::into).collect(),
        kernel: kernel_probes.iter().map(Into::into).collect(),
        kernel_release: kernel_release(),
        declared_agents: declared,
        state_dir: cfg.state_dir.display().to_string(),
        ..Default::default()
    };
    eprintln!(
        "custodyd: ready host={} processes={} features={}",
        cfg.host_id,
        seeded,
        features.iter().filter(|f| f.active).count()
    );

    // SAFETY: the ring buffer owns its fd and lives as long as the AsyncFd, which is
    // dropped (deregistered) before the map at the end of this function.
    let mut ring = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }?;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut batch = Vec::with_capacity(1024);
    let mut reported_lost: HashMap<&str, u64> = HashMap::new();
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(5));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Read up to DRAIN_MAX records, turn them into events and hand them out; returns
    // how many were read (a full batch yields to timers and signals under a flood).
    macro_rules! drain {
        ($rb:expr) => {{
            let rb = $rb;
            let mut n = 0usize;
            while let Some(item) = rb.next() {
                n += 1;
                let mut held = None;
                match decode::decode(&item) {
                    Ok(raw) if !args.floor => {
                        held = held_record(&raw);
                        if matches!(held, Some(HeldRecord::Tls { .. })) {
                            // Vetting only: the call's own record follows at return.
                            pipe.stats.records += 1;
                        } else {
                            pipe.handle(raw, &mut tracker, &mut batch);
                            // A new agent named by the rules gets them at once.
                            pol.sync(&pipe.identity);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        pipe.stats.decode_errors += 1;
                        tracing::debug!("skipping record: {e}");
                    }
                }
                drop(item);
                let mut open_kills = Vec::new();
                for ev in batch.drain(..) {
                    // Opens the kernel could not match (relative paths, `..`,
                    // symlinks): killed after the fact.
                    if pol.active() {
                        if let Some(pid) = ev.process.as_ref().map(|p| p.pid) {
                            let boot = pipe.table.get(pid).map_or(0, |p| p.start_boottime);
                            if let Some(k) = pol.open_violation(&ev, boot) {
                                open_kills.push((k, boot));
                            }
                        }
                    }
                    emit(&mut sink, shipper.as_ref(), &counts, ev)?;
                }
                for hit in std::mem::take(&mut pipe.policy_hits) {
                    let e = pol.enforcement(&hit);
                    tracing::warn!(pid = hit.hdr.tgid, reason = %e.reason, "kernel policy rule applied");
                    let ev = pipe.event_for(&hit.hdr, custody_proto::sensor::v1::event::Kind::Enforcement(e));
                    emit(&mut sink, shipper.as_ref(), &counts, ev)?;
                }
                for ((pid, ticks, reason), boot) in open_kills {
                    let (applied, error) = match enforcer.as_mut() {
                        None => (false, "enforcement is degraded on this host".to_string()),
                        Some(en) => match en.kill(&mut ebpf, pid, boot, ticks, 0) {
                            Ok(true) => (true, String::new()),
                            Ok(false) => (false, "process already gone".to_string()),
                            Err(e) => (false, format!("{e:#}")),
                        },
                    };
                    pol.status.killed_after_open += u64::from(applied);
                    tracing::warn!(pid, applied, %reason, "policy: forbidden open");
                    let ev = pipe.enforcement_for(pid, custody_proto::sensor::v1::EnforcementApplied {
                        action: "kill".into(),
                        reason,
                        command_id: pol.status.command_id.clone(),
                        seen_in: "open".into(),
                        applied,
                        error,
                        ..Default::default()
                    });
                    emit(&mut sink, shipper.as_ref(), &counts, ev)?;
                }
                let mut violations = std::mem::take(&mut pipe.violations);
                // A held exec is vetted (and enforced) by its hold, with the whole
                // environment: the pipeline's own sighting of it would be a duplicate.
                let pending = held.and_then(|h| {
                    let hs = holds.as_ref()?;
                    let entry = match &h {
                        HeldRecord::Exec(e) => hs.pending(e.tgid, e.held_ns)?,
                        HeldRecord::Tls { tgid, start_boottime, .. } => {
                            hs.pending_tls(*tgid, *start_boottime)?
                        }
                    };
                    Some((h, entry))
                });
                if let Some((HeldRecord::Exec(h), _)) = &pending {
                    violations.retain(|v| !(v.tgid == h.tgid && v.seen_in == "env"));
                }
                for v in violations {
                    let ev = stop_on_sight(&mut pipe, enforcer.as_mut(), &mut ebpf, &v);
                    emit(&mut sink, shipper.as_ref(), &counts, ev)?;
                }
                if let (Some((h, entry)), Some(hs)) = (pending, holds.as_mut()) {
                    let mut judge = DaemonJudge {
                        pipe: &mut pipe,
                        enforcer: enforcer.as_mut(),
                        ebpf: &mut ebpf,
                        out: Vec::new(),
                    };
                    match &h {
                        HeldRecord::Exec(e) => {
                            let ev = e
                                .env
                                .as_deref()
                                .map_or(hold::Evidence::None, hold::Evidence::Env);
                            hs.settle(e.tgid, entry, ev, &mut judge, false);
                        }
                        HeldRecord::Tls { tgid, write, .. } => {
                            let ev = hold::Evidence::Write(write);
                            let o = hs.settle(*tgid, entry, ev, &mut judge, false);
                            tracing::debug!(
                                pid = tgid,
                                tid = write.tid,
                                len = write.len,
                                outcome = ?o,
                                "held before send"
                            );
                        }
                    }
                    for ev in judge.out {
                        emit(&mut sink, shipper.as_ref(), &counts, ev)?;
                    }
                }
                if n == DRAIN_MAX {
                    break;
                }
            }
            if n > 0 {
                if let Some(s) = sink.as_mut() {
                    s.flush()?;
                }
            }
            n
        }};
    }
    // Settle holds older than `$age` (the exec record path missed them).
    macro_rules! sweep_holds {
        ($age:expr) => {{
            if let Some(hs) = holds.as_mut() {
                let mut judge = DaemonJudge {
                    pipe: &mut pipe,
                    enforcer: enforcer.as_mut(),
                    ebpf: &mut ebpf,
                    out: Vec::new(),
                };
                let n = hs.sweep($age, &mut judge);
                if n > 0 {
                    tracing::info!(settled = n, "revocation hold: settled by the sweep");
                }
                for ev in judge.out {
                    emit(&mut sink, shipper.as_ref(), &counts, ev)?;
                }
            }
        }};
    }
    // Processes a previous daemon held (and never settled) are still stopped.
    sweep_holds!(std::time::Duration::ZERO);
    let mut hold_sweep = tokio::time::interval(std::time::Duration::from_millis(250));
    hold_sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let n = drain!(guard.get_inner_mut());
                if n < DRAIN_MAX {
                    guard.clear_ready();
                }
            }
            // High-rate records do not wake us (see the kernel's lazy_wakeup): drain
            // on a short timer too, so they are never more than a few ms late.
            _ = poll.tick() => {
                drain!(ring.get_mut());
                if let Some(hs) = holds.as_mut().filter(|h| h.has_deferred()) {
                    let mut judge = DaemonJudge {
                        pipe: &mut pipe,
                        enforcer: enforcer.as_mut(),
                        ebpf: &mut ebpf,
                        out: Vec::new(),
                    };
                    hs.retry_deferred(&mut judge);
                    for ev in judge.out {
                        emit(&mut sink, shipper.as_ref(), &counts, ev)?;
                    }
                }
            }
            _ = hold_sweep.tick(), if holds.is_some() => {
                sweep_holds!(HOLD_SWEEP_AGE);
            }
            _ = tick.tick() => {
                let mut counters_now = BTreeMap::new();
                for (slot, name) in COUNTER_NAMES {
                    let v: u64 = counters.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0);
                    counters_now.insert(name.to_string(), v);
                }
                for name in ["ringbuf_full", "pending_full", "tracked_full"] {
                    let v = counters_now[name];
                    let before = reported_lost.insert(name, v).unwrap_or(0);
                    if v > before && !args.floor {
                        let msg = format!("kernel lost {} events ({name})", v - before);
                        tracing::warn!("{msg}");
                        let ev = pipe.warning(msg, counters_now.clone().into_iter().collect());
                        emit(&mut sink, shipper.as_ref(), &counts, ev)?;
                    }
                }
                pipe.prune();
                if let Some(en) = enforcer.as_mut() {
                    if let Err(e) = en.sync_kill_hook(&mut ebpf) {
                        tracing::warn!("kill hook: {e:#}");
                    }
                    st.quarantined_pids = en.quarantined();
                    st.pending_kills = en.pending_kills();
                }
                if let Some(hs) = holds.as_mut() {
                    hs.stats.held_now = hs.entries().len();
                    st.holds = Some(hs.stats.clone());
                }
                st.updated_unix = status::now_unix();
                if pol.active() {
                    pol.status.connects_denied = counters_now["policy_net_denied"];
                    pol.status.opens_killed = counters_now["policy_open_killed"];
                    pol.status.credential_stops = pipe.stats.policy_credential_stops;
                    st.policy = Some(pol.status.clone());
                }
                st.kernel_counters = counters_now;
                st.records = pipe.stats.records;
                st.decode_errors = pipe.stats.decode_errors;
                st.events_emitted = pipe.stats.emitted;
                st.processes_known = pipe.table.len();
                st.discovered_agents = pipe.stats.discovered_agents;
                if let (Some(h), Some(e)) = (&shipper, &enrolled) {
                    h.set_counters(st.kernel_counters.iter().map(|(k, v)| (k.clone(), *v)).collect());
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
                    });
                }
                if let (Ok(c), Ok(mut t)) = (counts.lock(), metrics_text.lock()) {
                    *t = metrics::render(&st, &c);
                }
                if let Err(e) = status::write(&args.status_file, &st) {
                    tracing::debug!("status file {}: {e}", args.status_file.display());
                }
            }
            Some(cmd) = next_command(&mut commands) => {
                // Response actions (kill, quarantine, revoke) arrive here, only ever over
                // the authenticated collector stream.
                tracing::info!(id = %cmd.id, kind = %cmd.kind, reason = %cmd.reason, by = %cmd.issued_by, "command received");
                if cmd.kind == "policy_update" {
                    let received = status::now_ns();
                    match policy::parse(cmd.params.get("rules").map(String::as_str).unwrap_or("")) {
                        Ok((rules, raw)) => {
                            // Names are resolved off the loop; the rules are put in force
                            // (and the command answered) when that is done.
                            let names = rules.names();
                            let fallback = pol.last_resolved();
                            let mut p = policy::Pending {
                                version: cmd.params.get("version").cloned().unwrap_or_default(),
                                command_id: cmd.id.clone(),
                                rules,
                                raw,
                                resolved: BTreeMap::new(),
                                source: "collector".into(),
                            };
                            let tx = policy_tx.clone();
                            tokio::spawn(async move {
                                if !names.is_empty() {
                                    p.resolved = tokio::task::spawn_blocking(move || {
                                        policy::resolve(&names, POLICY_RESOLVE_TIMEOUT, &fallback)
                                    })
                                    .await
                                    .unwrap_or_default();
                                }
                                let _ = tx.send((cmd, received, p)).await;
                            });
                        }
                        Err(e) => {
                            let now = status::now_ns();
                            let r = CommandResult {
                                command_id: cmd.id.clone(),
                                host: cfg.host_id.clone(),
                                status: "failed".into(),
                                message: format!("{e:#}; the previous rules stay in force"),
                                received_ns: received,
                                completed_ns: now,
                                apply_ns: now - received,
                                ..Default::default()
                            };
                            answer(shipper.as_ref(), &counts, cmd.kind.clone(), r, Vec::new());
                        }
                    }
                    continue;
                }
                let (result, kills) = match enforcer.as_mut() {
                    _ if cmd.kind == "revoke_credential" => {
                        let r = response::revoke(&mut pipe, &mut revocations, enforcer.as_mut(), &mut ebpf, &cmd);
                        // From now on, new processes are vetted before they run.
                        if let Some(hs) = holds.as_mut() {
                            if let Err(e) = hs.arm(enforcer.is_some() && (!pipe.revoked.is_empty() || !pipe.policy_creds.is_empty())) {
                                tracing::warn!("revocation hold: {e:#}");
                            }
                        }
                        (r, Vec::new())
                    }
                    Some(en) => response::apply(&pipe.table, en, &mut ebpf, &cmd),
                    None => (response::unavailable(&cfg.host_id, &cmd, "enforcement is degraded on this host (see custodyd status)"), Vec::new()),
                };
                answer(shipper.as_ref(), &counts, cmd.kind.clone(), result, kills);
            }
            Some((cmd, received, p)) = policy_rx.recv() => {
                let version = p.version.clone();
                let (status, message, events, affected) = apply_policy(
                    &mut pol,
                    &mut pipe,
                    holds.as_mut(),
                    enforcer.as_mut(),
                    &mut ebpf,
                    p,
                );
                for ev in events {
                    emit(&mut sink, shipper.as_ref(), &counts, ev)?;
                }
                tracing::info!(%version, %status, "policy: {message}");
                let now = status::now_ns();
                let r = CommandResult {
                    command_id: cmd.id.clone(),
                    host: cfg.host_id.clone(),
                    status,
                    message,
                    affected_exec_ids: affected,
                    received_ns: received,
                    completed_ns: now,
                    apply_ns: now.saturating_sub(received),
                };
                answer(shipper.as_ref(), &counts, cmd.kind.clone(), r, Vec::new());
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // No new holds; settle the ones in flight (nobody would continue them).
    if let Some(hs) = holds.as_mut() {
        if let Err(e) = hs.arm(false) {
            tracing::warn!("revocation hold: {e:#}");
        }
        drain!(ring.get_mut());
        sweep_holds!(std::time::Duration::ZERO);
    }
    if let Some(s) = sink.as_mut() {
        s.flush()?;
    }
    if let Some(h) = &shipper {
        h.shutdown().await?;
    }
    let _ = std::fs::remove_file(&args.status_file);
    drop(ring);
    loader::release(links);
    // A clean stop with nothing enforced leaves nothing behind in bpffs; active
    // enforcement (a quarantine, a pending kill) stays pinned and in force.
    if let Some(en) = &enforcer {
        if en.quarantined().is_empty() && en.pending_kills() == 0 {
            drop(enforcer);
            drop(ebpf);
            let _ = std::fs::remove_dir_all(cfg.pin_dir.join(enforce::PIN_LAYOUT));
            let _ = std::fs::remove_dir(&cfg.pin_dir);
        } else {
            tracing::warn!(
                "enforcement stays in force after exit (pinned in {})",
                cfg.pin_dir.display()
            );
        }
    }
    eprintln!(
        "custodyd: stopped ({} records, {} events)",
        pipe.stats.records, pipe.stats.emitted
    );
    Ok(())
}
