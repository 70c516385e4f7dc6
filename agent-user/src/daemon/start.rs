//! Start-up: what the kernel offers, the programs loaded and attached, enforcement,
//! the revocation hold and kernel policy rules put back in force, the collector
//! stream opened — each missing piece named with what it degrades — and the
//! [`Daemon`] that owns the lot.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use agent_user::credential::FleetKey;
use agent_user::shipper::{Shipper, ShipperConfig};
use agent_user::tls_stack::cache::InspectionCache;
use anyhow::{Context, Result, bail};
use aya::maps::{MapData, RingBuf};
use custody_proto::enums::WireEnum;

use super::commands::POLICY_RESOLVE_TIMEOUT;
use super::{Daemon, MapTracker, RunArgs};
use crate::config::Config;
use crate::identity::Identity;
use crate::kernel::pins::PIN_LAYOUT;
use crate::kernel::{Feature, loader, mounts, support};
use crate::pipeline::Pipeline;
use crate::policy::rules::HostRulesExt;
use crate::report::{Reporter, metrics, output, status};
use crate::watch::CredentialWatch;
use crate::{clock, detach, enforce, enrollment, hold, policy, revocation};

pub(super) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub(super) fn kernel_release() -> String {
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

/// A feature that can fail on its own (enforcement, the hold): listed either way,
/// and logged with its reason when it is degraded.
fn feature<T>(features: &mut Vec<Feature>, name: &str, r: Result<T>) -> Option<T> {
    features.push(Feature {
        name: name.into(),
        active: r.is_ok(),
        detail: r
            .as_ref()
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default(),
    });
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(reason = %format!("{e:#}"), "{} degraded", name.replace('_', " "));
            None
        }
    }
}

impl Daemon {
    /// Build the running sensor, and hand back the ring buffer its loop reads.
    pub(super) async fn start(args: RunArgs) -> Result<(Daemon, RingBuf<MapData>)> {
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
        let run_lock = (!args.floor)
            .then(|| detach::RunLock::take(&cfg.state_dir))
            .flatten();
        // What the kernel offers, before anything is loaded: a missing piece is named with
        // what it degrades, even when the load below then fails.
        mounts::ensure_mounts();
        let kernel_probes = support::probe_all();
        tracing::info!(
            "kernel {}: {}",
            kernel_release(),
            support::summary(&kernel_probes)
        );
        for p in kernel_probes.iter().filter(|p| !p.active) {
            tracing::warn!(probe = %p.name, "kernel: {}", p.detail);
        }
        let key = FleetKey::load_or_create(&cfg.fleet_key).context("fleet key")?;
        let mut tls_binaries = loader::preanalysed_tls_binaries();
        tls_binaries.extend(cfg.tls_binaries.iter().cloned());
        let netns = if cfg.netns_scope { own_netns()? } else { 0 };
        // One analysis per binary, kept across restarts (a 245 MB Bun executable takes
        // seconds to analyse).
        let tls_cache = Arc::new(InspectionCache::new(Some(cfg.state_dir.join("tls"))));
        let loaded = loader::load_with(
            &loader::Options {
                observe_all,
                floor: args.floor,
                tls_binaries,
                netns,
                pin_dir: (!args.floor).then(|| cfg.pin_dir.clone()),
            },
            &tls_cache,
        )?;
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
            tls,
            tls_start,
        } = loaded;
        let tls = super::tls::TlsCoverage::new(tls_cache, tls, tls_start);
        // Enforcement (kill, quarantine): pinned in bpffs so it outlives this daemon.
        let mut enforcer = if args.floor {
            None
        } else {
            feature(
                &mut features,
                "enforcement",
                enforce::Enforcer::attach(&mut ebpf, &cfg.pin_dir.join(PIN_LAYOUT)),
            )
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
        let llm_hosts = cfg.llm_hosts.clone();
        let routine = crate::routine::Routine::new(cfg.routine.clone(), cfg.summary_window_secs);
        let mut tracker = MapTracker(tracked);
        let identity = Identity::new(cfg.agents);
        let at_exec = super::declared::fill(&mut ebpf, &identity.kernel_selectors())
            .context("declared agents in the kernel")?;
        tracing::info!(selectors = at_exec, "declared agents recognised at exec");
        let mut pipe = Pipeline::new(cfg.host_id.clone(), identity, key, observe_all);
        pipe.set_llm_hosts(llm_hosts);
        let revocations = revocation::Revocations::load(&cfg.state_dir)?;
        let watch = CredentialWatch::new(&revocations);
        let seeded = pipe.seed(&mut tracker, netns);
        // Revocation hold: armed while revocations are cached and enforcement works.
        let holds = if args.floor {
            None
        } else {
            let armed = super::holds::hold_wanted(enforcer.is_some(), &watch);
            let h = hold::Holds::attach(&mut ebpf, cfg.revocation_hold).and_then(|mut h| {
                h.arm(armed)?;
                Ok(h)
            });
            feature(&mut features, "revocation_hold", h)
        };
        let sink = match (&args.output, args.json) {
            (Some(p), _) => Some(output::JsonLines::file(p)?),
            (None, true) => Some(output::JsonLines::stdout()),
            (None, false) => None,
        };
        let (shipper, commands) = match &enrolled {
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
        let policy = policy::Policy::new(
            &cfg.state_dir,
            policy_maps,
            enforcer.is_some(),
            files_active,
        );
        let (policy_tx, policy_rx) = tokio::sync::mpsc::channel(8);
        let metrics_text = Arc::new(Mutex::new(String::new()));
        if let Some(addr) = args.metrics_listen {
            metrics::serve(addr, metrics_text.clone()).await?;
            tracing::info!(%addr, "metrics at http://{addr}/metrics");
        }
        let status = status::Status {
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
            started_unix: clock::now_unix(),
            features: features.iter().map(Into::into).collect(),
            kernel: kernel_probes.iter().map(Into::into).collect(),
            kernel_release: kernel_release(),
            declared_agents: declared,
            state_dir: cfg.state_dir.display().to_string(),
            ..Default::default()
        };
        let mut daemon = Daemon {
            host_id: cfg.host_id.clone(),
            pin_dir: cfg.pin_dir.clone(),
            _run_lock: run_lock,
            enrolled,
            ebpf,
            links,
            kernel_counters: counters,
            tracker,
            pipe,
            watch,
            revocations,
            enforcer,
            holds,
            policy,
            report: Reporter::new(sink, shipper),
            commands,
            policy_tx,
            policy_rx,
            metrics_text,
            status,
            batch: Vec::with_capacity(1024),
            routine,
            routine_out: Vec::new(),
            reported_lost: HashMap::new(),
            tls,
            args,
        };
        daemon.restore_policy(&cfg.state_dir)?;
        eprintln!(
            "custodyd: ready host={} processes={} features={}",
            cfg.host_id,
            seeded,
            features.iter().filter(|f| f.active).count()
        );
        Ok((daemon, events))
    }

    /// The last policy set received, from the state dir, put back in force.
    fn restore_policy(&mut self, state_dir: &std::path::Path) -> Result<()> {
        match policy::load_stored(state_dir) {
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
                    let (status, message, events, _) = self.apply_policy(p);
                    tracing::info!(version = %self.policy.status.version, status = status.name(), "policy restored from the state dir: {message}");
                    self.report.emit_all(events)?;
                }
                Err(e) => tracing::warn!("stored policy ignored: {e:#}"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!("stored policy ignored: {e:#}"),
        }
        Ok(())
    }
}
