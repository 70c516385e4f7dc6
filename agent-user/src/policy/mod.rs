//! Kernel enforcement of the collector's policies (`policy_update` commands).
//!
//! The collector compiles the chain-independent part of its Cedar policy set into
//! host rules per agent ([`rules::HostRules`]): endpoint deny lists, forbidden paths
//! and forbidden credentials. This sensor enforces them itself:
//! - endpoints: the cgroup connect/sendmsg hooks refuse a tracked process's
//!   connection (EPERM) when its agent has a matching rule; DNS names are resolved
//!   with getaddrinfo when the rules arrive (and at start), names that do not resolve
//!   or cannot be listed (`*.x.com`) are left to the collector;
//! - paths: at openat/openat2 entry the kernel hashes each prefix of the absolute
//!   path and kills (SIGKILL) a process whose agent may not open it; relative paths,
//!   `..` and symlinks are checked by the daemon on the open event (killed after the
//!   fact);
//! - credentials: stopped on sight like revocations (hold at exec and before TLS
//!   send), for processes of the rule's agent only.
//!
//! The last rules are kept in `state_dir/policy.json` and put back in force at start,
//! before the collector is reachable.

pub mod compile;
pub mod maps;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_ebpf::{PolicyEvent, policy as kpolicy};
use anyhow::{Context, Result};
use custody_proto::sensor::v1::{EnforcementAction, EnforcementApplied, Event, event::Kind};
use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use compile::{Plan, normalize};
use maps::PolicyMaps;
use rules::HostRules;

/// What is kept in `state_dir/policy.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Stored {
    pub version: String,
    pub command_id: String,
    pub received_unix: u64,
    /// The host rules as the collector sent them.
    pub rules: serde_json::Value,
    /// Addresses the names resolved to last time (used when they do not resolve at
    /// start, e.g. while the network is down).
    pub resolved: BTreeMap<String, Vec<String>>,
}

pub fn stored_path(state_dir: &Path) -> PathBuf {
    state_dir.join("policy.json")
}

pub fn load_stored(state_dir: &Path) -> Result<Option<Stored>> {
    let p = stored_path(state_dir);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("{} is corrupt", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn store(state_dir: &Path, s: &Stored) -> Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let p = stored_path(state_dir);
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)?;
    std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))
}

/// Resolve `names` (getaddrinfo, in parallel, bounded by `timeout`); a name that
/// fails or is late takes its `fallback` addresses (the last ones seen).
pub fn resolve(
    names: &[String],
    timeout: Duration,
    fallback: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, Vec<IpAddr>> {
    let (tx, rx) = std::sync::mpsc::channel();
    for n in names {
        let (tx, n) = (tx.clone(), n.clone());
        // Detached: a resolver stuck past the deadline is simply not waited for.
        std::thread::spawn(move || {
            let addrs: Vec<IpAddr> = (n.as_str(), 0)
                .to_socket_addrs()
                .map(|it| it.map(|sa| sa.ip()).collect())
                .unwrap_or_default();
            let _ = tx.send((n, addrs));
        });
    }
    drop(tx);
    let deadline = std::time::Instant::now() + timeout;
    let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    while out.len() < names.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((n, mut a)) if !a.is_empty() => {
                a.sort();
                a.dedup();
                out.insert(n, a);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    for n in names {
        if !out.contains_key(n) {
            let old: Vec<IpAddr> = fallback
                .get(n)
                .into_iter()
                .flatten()
                .filter_map(|a| a.parse().ok())
                .collect();
            if !old.is_empty() {
                out.insert(n.clone(), old);
            }
        }
    }
    out
}

/// Parsed rules waiting to be put in force (resolution done).
pub struct Pending {
    pub version: String,
    pub command_id: String,
    pub rules: HostRules,
    pub raw: serde_json::Value,
    pub resolved: BTreeMap<String, Vec<IpAddr>>,
    /// "collector" or "state_dir".
    pub source: String,
}

/// Read back the rules kept in the state dir (the contract's JSON rendering of
/// `HostRules`), checked like a command's.
pub fn parse(raw: &str) -> Result<(HostRules, serde_json::Value)> {
    let r: HostRules = serde_json::from_str(raw).context("not a host rule set")?;
    accept(r)
}

/// Check a `policy_update`'s rules ([`rules::check`]) and keep their JSON for the
/// state dir.
pub fn accept(r: HostRules) -> Result<(HostRules, serde_json::Value)> {
    rules::check(&r).map_err(|e| anyhow::anyhow!("policy_update: {e}"))?;
    let v = serde_json::to_value(&r).context("host rules as JSON")?;
    Ok((r, v))
}

/// Counts for `custodyd status` and the metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub version: String,
    pub command_id: String,
    /// "collector" (pushed) or "state_dir" (restored at start).
    pub source: String,
    pub applied_unix: u64,
    /// "ok" or "partial" (see `not_kernel`).
    pub status: String,
    /// Rules taken in (per agent key).
    pub endpoint_rules: usize,
    pub path_rules: usize,
    pub credential_rules: usize,
    /// Kernel map entries in force.
    pub kernel_endpoint_prefixes: usize,
    pub kernel_path_entries: usize,
    /// Rules (or parts) not enforced in the kernel here, and why.
    pub not_kernel: Vec<String>,
    /// Agents the rules name that have not appeared on this host yet.
    pub waiting_agents: Vec<String>,
    pub collector_only_policies: usize,
    /// Enforcements: connects refused and processes killed at an open (kernel),
    /// processes killed after an open the kernel could not match (daemon), and
    /// processes stopped for a forbidden credential.
    pub connects_denied: u64,
    pub opens_killed: u64,
    pub killed_after_open: u64,
    pub credential_stops: u64,
    pub message: String,
}

/// The rules in force on this host.
pub struct Policy {
    state_dir: PathBuf,
    maps: Option<PolicyMaps>,
    /// The cgroup hooks (endpoint rules) and openat hooks (path rules) are attached.
    net_kernel: bool,
    path_kernel: bool,
    plan: Option<Plan>,
    stored: Option<Stored>,
    /// Agents known when the maps were last written.
    synced_agents: usize,
    /// Processes the kernel killed at an open (not to be reported twice).
    kernel_kills: VecDeque<(u32, u64)>,
    pub status: PolicyStatus,
}

impl Policy {
    pub fn new(
        state_dir: &Path,
        maps: Option<PolicyMaps>,
        net_kernel: bool,
        path_kernel: bool,
    ) -> Policy {
        Policy {
            state_dir: state_dir.to_path_buf(),
            net_kernel: net_kernel && maps.is_some(),
            path_kernel: path_kernel && maps.is_some(),
            maps,
            plan: None,
            stored: None,
            synced_agents: 0,
            kernel_kills: VecDeque::new(),
            status: PolicyStatus::default(),
        }
    }

    pub fn active(&self) -> bool {
        self.plan.is_some()
    }

    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// Addresses names resolved to last time.
    pub fn last_resolved(&self) -> BTreeMap<String, Vec<String>> {
        self.stored
            .as_ref()
            .map(|s| s.resolved.clone())
            .unwrap_or_default()
    }

    /// Whether the version of a command is older than the one in force.
    pub fn is_stale(&self, version: &str) -> bool {
        match (version.parse::<u64>(), self.status.version.parse::<u64>()) {
            (Ok(new), Ok(cur)) => self.active() && new < cur,
            _ => false,
        }
    }

    /// Put `p` in force (maps replaced in one generation switch), persist it when it
    /// came from the collector, and say what is enforced where: (status, message).
    pub fn apply(&mut self, p: Pending, identity: &Identity) -> (String, String) {
        let plan = Plan::new(&p.rules, &p.resolved);
        let stored = Stored {
            version: p.version.clone(),
            command_id: p.command_id.clone(),
            received_unix: crate::clock::now_unix(),
            rules: p.raw,
            resolved: p
                .resolved
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().map(IpAddr::to_string).collect()))
                .collect(),
        };
        let mut errors = Vec::new();
        let entries = plan.entries(&|id| identity.slot_of(id));
        if let Some(m) = self.maps.as_mut() {
            if let Err(e) = m.install(&entries) {
                // The previous set stays in force in the kernel.
                return (
                    "failed".into(),
                    format!(
                        "policy v{}: kernel rules not loaded, the previous set stays in force: {e:#}",
                        p.version
                    ),
                );
            }
        }
        if p.source == "collector" {
            if let Err(e) = store(&self.state_dir, &stored) {
                errors.push(format!(
                    "not persisted (it will not survive a restart): {e:#}"
                ));
            }
        }
        self.synced_agents = identity.count();
        let (status, message) = self.report(&plan, &entries, &p.resolved, errors);
        let s = &mut self.status;
        s.version = p.version;
        s.command_id = p.command_id;
        s.source = p.source;
        s.applied_unix = crate::clock::now_unix();
        s.status = status.clone();
        s.message = message.clone();
        s.endpoint_rules = plan.endpoint_rules;
        s.path_rules = plan.path_rules;
        s.credential_rules = plan.credential_rules;
        s.not_kernel = plan.not_kernel.clone();
        s.waiting_agents = entries.waiting.iter().cloned().collect();
        s.collector_only_policies = plan.collector_only;
        self.refresh_counts();
        self.plan = Some(plan);
        self.stored = Some(stored);
        (status, message)
    }

    fn refresh_counts(&mut self) {
        if let Some(m) = &self.maps {
            let (n, p) = m.counts();
            self.status.kernel_endpoint_prefixes = n;
            self.status.kernel_path_entries = p;
        }
    }

    /// New agents appeared since the maps were written: write them again so the
    /// agents' rules apply to them (cheap check, called for every record).
    pub fn sync(&mut self, identity: &Identity) {
        if self.synced_agents == identity.count() {
            return;
        }
        self.synced_agents = identity.count();
        let Some(plan) = &self.plan else { return };
        let entries = plan.entries(&|id| identity.slot_of(id));
        let waiting: Vec<String> = entries.waiting.iter().cloned().collect();
        if waiting == self.status.waiting_agents {
            return; // no agent named by the rules among the new ones
        }
        if let Some(m) = self.maps.as_mut() {
            match m.install(&entries) {
                Ok(()) => {
                    tracing::info!(waiting = ?waiting, "policy: rules loaded for a new agent");
                    self.status.waiting_agents = waiting;
                }
                Err(e) => tracing::warn!("policy: loading rules for a new agent: {e:#}"),
            }
        }
        self.refresh_counts();
    }

    fn report(
        &self,
        plan: &Plan,
        entries: &compile::MapEntries,
        resolved: &BTreeMap<String, Vec<IpAddr>>,
        mut problems: Vec<String>,
    ) -> (String, String) {
        let mut kernel = Vec::new();
        let policies = |it: &mut dyn Iterator<Item = u32>| {
            let set: BTreeSet<&str> = it
                .filter_map(|r| plan.rules.get(r as usize))
                .map(|r| r.policy.as_str())
                .collect();
            set.into_iter().collect::<Vec<_>>().join(", ")
        };
        if plan.endpoint_rules > 0 {
            let names = policies(&mut plan.net.iter().map(|e| e.rule));
            if self.net_kernel {
                kernel.push(format!(
                    "{} endpoint deny rule(s) in the kernel, connect/sendmsg fail with EPERM ({names})",
                    plan.endpoint_rules
                ));
            } else {
                problems.push(format!(
                    "{} endpoint deny rule(s) ({names}) not enforced here: the cgroup connect hooks are unavailable (see custodyd status)",
                    plan.endpoint_rules
                ));
            }
        }
        if plan.path_rules > 0 {
            let names = policies(&mut plan.paths.iter().map(|e| e.rule));
            if self.path_kernel {
                kernel.push(format!(
                    "{} forbidden path rule(s) in the kernel, SIGKILL at openat/openat2 entry ({names}); relative paths, `..` and symlinks are checked by the daemon after the open",
                    plan.path_rules
                ));
            } else {
                problems.push(format!(
                    "{} forbidden path rule(s) ({names}) only checked by the daemon after the open: the openat hooks are unavailable",
                    plan.path_rules
                ));
            }
        }
        if plan.credential_rules > 0 {
            let set: BTreeSet<&str> = plan.creds.iter().map(|c| c.policy.as_str()).collect();
            kernel.push(format!(
                "{} forbidden credential rule(s) stopped on sight for their agents, held at exec and before TLS send ({})",
                plan.credential_rules,
                set.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        let mut msg = Vec::new();
        if kernel.is_empty() {
            msg.push("no rule for this sensor to enforce".to_string());
        } else {
            msg.push(format!("enforced here: {}", kernel.join("; ")));
        }
        if !resolved.is_empty() {
            let r: Vec<String> = resolved
                .iter()
                .map(|(n, a)| {
                    let a: Vec<String> = a.iter().map(IpAddr::to_string).collect();
                    format!("{n} → {}", a.join(" "))
                })
                .collect();
            msg.push(format!(
                "names resolved with getaddrinfo when the rules arrived (again at each start): {}",
                r.join(", ")
            ));
        }
        if !entries.waiting.is_empty() {
            msg.push(format!(
                "agents not on this host yet (their rules load when they appear): {}",
                entries
                    .waiting
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for r in &entries.overflow {
            if let Some(i) = plan.rules.get(*r as usize) {
                problems.push(format!(
                    "{}: {} left out of the kernel under some prefixes (more than {} port rules per prefix): collector-enforced there",
                    i.policy,
                    i.what,
                    kpolicy::NET_RULES_MAX
                ));
            }
        }
        for r in &entries.path_overflow {
            if let Some(i) = plan.rules.get(*r as usize) {
                problems.push(format!(
                    "{}: {} checked by the daemon after the open only (rule paths of more than {} distinct lengths)",
                    i.policy,
                    i.what,
                    kpolicy::PATH_LENS_MAX
                ));
            }
        }
        problems.extend(plan.not_kernel.iter().cloned());
        if !problems.is_empty() {
            msg.push(format!(
                "not enforced in the kernel: {}",
                problems.join("; ")
            ));
        }
        if plan.collector_only > 0 {
            msg.push(if plan.collector_only == 1 {
                "1 policy needs the chain and is evaluated by the collector only".to_string()
            } else {
                format!(
                    "{} policies need the chain and are evaluated by the collector only",
                    plan.collector_only
                )
            });
        }
        let status = if problems.is_empty() { "ok" } else { "partial" };
        (status.into(), msg.join(". "))
    }

    /// The enforcement event for a kernel policy record.
    pub fn enforcement(&mut self, rec: &PolicyEvent) -> EnforcementApplied {
        let info = self
            .plan
            .as_ref()
            .and_then(|p| p.rules.get(rec.rule as usize));
        let (policy, what) = info.map_or(("?", "a rule no longer in force"), |i| {
            (i.policy.as_str(), i.what.as_str())
        });
        let command_id = self.status.command_id.clone();
        if rec.op == kpolicy::OP_OPEN {
            let path = agent_user::credential::escape_bytes(
                &rec.path[..(rec.path_len as usize).min(rec.path.len())],
            );
            self.kernel_kills
                .push_back((rec.hdr.tgid, rec.hdr.start_boottime));
            if self.kernel_kills.len() > 256 {
                self.kernel_kills.pop_front();
            }
            return EnforcementApplied {
                action: EnforcementAction::Kill.into(),
                reason: format!(
                    "policy {policy}: open of {path} ({}) forbidden by rule {what}: killed at the open, in the kernel",
                    access_name(rec.flags)
                ),
                command_id,
                seen_in: "open".into(),
                applied: true,
                ..Default::default()
            };
        }
        let addr = if rec.family == 2 {
            IpAddr::from([rec.addr[0], rec.addr[1], rec.addr[2], rec.addr[3]]).to_string()
        } else {
            format!("[{}]", std::net::Ipv6Addr::from(rec.addr))
        };
        let op = if rec.op == kpolicy::OP_SENDMSG {
            "sendmsg"
        } else {
            "connect"
        };
        EnforcementApplied {
            action: EnforcementAction::Deny.into(),
            reason: format!(
                "policy {policy}: {op} to {addr}:{} refused in the kernel (EPERM) by rule {what}",
                rec.port
            ),
            command_id,
            seen_in: op.into(),
            applied: true,
            ..Default::default()
        }
    }

    /// An open event of a tracked process that breaks a path rule the kernel could
    /// not match (relative path, `..`, symlink, over-long path): (pid, start_ticks,
    /// reason) of the process to kill after the fact.
    pub fn open_violation(&self, ev: &Event, start_boottime: u64) -> Option<(u32, u64, String)> {
        let plan = self.plan.as_ref()?;
        if plan.paths.is_empty() {
            return None;
        }
        let Some(Kind::FileOpen(f)) = &ev.kind else {
            return None;
        };
        let p = ev.process.as_ref()?;
        if p.agent_id.is_empty() || !f.path.starts_with('/') {
            return None;
        }
        if self
            .kernel_kills
            .iter()
            .any(|&(t, s)| t == p.pid && s == start_boottime)
        {
            return None; // killed at this very open by the kernel
        }
        let acc = f.flags & 3;
        let reads = acc != 1;
        let writes = acc != 0 || f.flags & (0o100 | 0o1000) != 0;
        let mut candidates = vec![normalize(&f.path)];
        if f.result >= 0 {
            if let Ok(real) = std::fs::canonicalize(&candidates[0]) {
                candidates.push(real.to_string_lossy().into_owned());
            }
        }
        let rule = candidates
            .iter()
            .find_map(|c| plan.path_rule(Some(&p.agent_id), c, reads, writes))?;
        let info = plan.rules.get(rule as usize)?;
        Some((
            p.pid,
            p.start_ticks,
            format!(
                "policy {}: open of {} ({}) forbidden by rule {}: not matched in the kernel (relative path, `..`, symlink or over-long path), killed after the open by the daemon",
                info.policy,
                f.path,
                access_name(f.flags),
                info.what
            ),
        ))
    }
}

fn access_name(flags: u32) -> &'static str {
    match flags & 3 {
        0 if flags & 0o1100 == 0 => "read",
        0 => "write",
        1 => "write",
        _ => "read+write",
    }
}

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod tests;
