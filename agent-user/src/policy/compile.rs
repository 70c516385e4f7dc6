//! Host rules → what this sensor enforces: kernel map entries (endpoint deny trie,
//! forbidden path prefixes), credential rules for the stop-on-sight path, and an
//! account of what could not be enforced here and why. Pure functions: the maps are
//! written by `maps`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use agent_ebpf::{NetRule, NetRules, PathRuleVal, PolicyMeta, policy};

use super::rules::{
    EndpointRule, Enforcement, HostRules, HostRulesExt, PathMatch, PathRule, PolicyResponse,
};

/// An address prefix in IPv6 form (IPv4 as `::ffff:a.b.c.d`, its length + 96).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Net {
    pub addr: [u8; 16],
    pub len: u8,
}

fn mask(addr: [u8; 16], len: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, b) in addr.iter().enumerate() {
        let bits = (len as usize).saturating_sub(i * 8).min(8);
        out[i] = if bits == 0 {
            0
        } else {
            b & (0xffu8 << (8 - bits))
        };
    }
    out
}

impl Net {
    pub const ANY: Net = Net {
        addr: [0; 16],
        len: 0,
    };

    pub fn new(ip: IpAddr, len: u8) -> Net {
        let (addr, len) = match ip {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), len.min(32) + 96),
            IpAddr::V6(v6) => (v6.octets(), len.min(128)),
        };
        Net {
            addr: mask(addr, len),
            len,
        }
    }

    pub fn host(ip: IpAddr) -> Net {
        Net::new(ip, 128)
    }

    /// "10.0.0.0/8", "1.2.3.4" (a host), "fd00::/8".
    pub fn parse(s: &str) -> Option<Net> {
        let (ip, len) = match s.trim().split_once('/') {
            Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, Some(len.parse::<u8>().ok()?)),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return None;
        }
        Some(Net::new(ip, len))
    }

    pub fn contains(&self, other: &Net) -> bool {
        self.len <= other.len && mask(other.addr, self.len) == self.addr
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v6 = std::net::Ipv6Addr::from(self.addr);
        match (v6.to_ipv4_mapped(), self.len >= 96) {
            (Some(v4), true) => write!(f, "{v4}/{}", self.len - 96),
            _ if self.len == 0 => f.write_str("any address"),
            _ => write!(f, "{v6}/{}", self.len),
        }
    }
}

/// What one kernel rule index stands for (named in enforcement events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub policy: String,
    /// e.g. "deny 10.0.0.3/32 port 9999/tcp", "/srv/secret (dir, read)".
    pub what: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetEntry {
    /// None: every agent.
    pub agent: Option<String>,
    pub net: Net,
    pub port: u16,
    pub proto: u8,
    pub rule: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathEntry {
    pub agent: Option<String>,
    /// Normalised rule path (Dir rules without their trailing '/', "/" as "").
    pub path: Vec<u8>,
    /// `policy::EXACT`, `DIR` or `PREFIX`.
    pub kind: u32,
    pub read: bool,
    pub write: bool,
    pub rule: u32,
    /// Longer than the kernel can match: the daemon checks it after the fact only.
    pub daemon_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredEntry {
    pub agent: Option<String>,
    pub fingerprint: String,
    pub policy: String,
    /// "kill" or "quarantine".
    pub action: String,
}

/// The host rules, compiled for this sensor (independent of agent slots).
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub net: Vec<NetEntry>,
    pub paths: Vec<PathEntry>,
    pub creds: Vec<CredEntry>,
    pub rules: Vec<RuleInfo>,
    /// Rules (or parts of rules) this sensor cannot enforce in the kernel, and why.
    pub not_kernel: Vec<String>,
    /// Policies the collector alone evaluates (they need the chain).
    pub collector_only: usize,
    /// Endpoint / path / credential rules (per agent key) taken into the plan.
    pub endpoint_rules: usize,
    pub path_rules: usize,
    pub credential_rules: usize,
}

pub fn proto_number(p: Option<&str>) -> Option<u8> {
    match p.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") => Some(0),
        Some("tcp") => Some(6),
        Some("udp") => Some(17),
        _ => None,
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "/tcp",
        17 => "/udp",
        _ => "",
    }
}

/// Lexical normalisation of an absolute path: repeated '/', "." and ".." removed
/// (symlinks are not followed).
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = String::with_capacity(path.len());
    for p in &parts {
        out.push('/');
        out.push_str(p);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The rule path as the matchers use it, and its kind.
fn rule_path(r: &PathRule) -> (Vec<u8>, u32) {
    let trailing = r.path.ends_with('/');
    let norm = normalize(&r.path);
    // Checked on arrival (rules::check): the match is one of the three.
    match r.r#match() {
        PathMatch::Exact | PathMatch::Unspecified => (norm.into_bytes(), policy::EXACT),
        PathMatch::Dir => {
            let p = if norm == "/" { String::new() } else { norm };
            (p.into_bytes(), policy::DIR)
        }
        PathMatch::Prefix => {
            // "like /x/*" keeps its '/': it matches below /x, not /x itself or /xy.
            let mut p = norm;
            if trailing && !p.ends_with('/') {
                p.push('/');
            }
            (p.into_bytes(), policy::PREFIX)
        }
    }
}

/// Whether `path` (normalised, absolute) matches a rule path of `kind`.
pub fn path_matches(rule: &[u8], kind: u32, path: &[u8]) -> bool {
    if !path.starts_with(rule) {
        return false;
    }
    let next = path.get(rule.len()).copied();
    match kind {
        policy::EXACT => next.is_none(),
        policy::DIR => next.is_none() || next == Some(b'/'),
        _ => true,
    }
}

fn access_text(read: bool, write: bool) -> &'static str {
    match (read, write) {
        (true, true) => "read+write",
        (true, false) => "read",
        _ => "write",
    }
}

fn kind_text(kind: u32) -> &'static str {
    match kind {
        policy::EXACT => "file",
        policy::DIR => "dir",
        _ => "prefix",
    }
}

impl Plan {
    /// Compile `rules`; `resolved` holds the addresses of the names endpoint rules
    /// use (names missing from it are left to the collector).
    pub fn new(rules: &HostRules, resolved: &BTreeMap<String, Vec<IpAddr>>) -> Plan {
        let mut p = Plan {
            collector_only: rules
                .policies
                .iter()
                .filter(|x| x.enforcement() != Enforcement::Kernel)
                .count(),
            ..Plan::default()
        };
        let mut said: BTreeSet<String> = BTreeSet::new();
        for (agent, r) in rules.by_agent() {
            let all = agent.is_some().then_some(rules.every_agent());
            for e in &r.deny_endpoints {
                // An agent's list repeats the rules for every agent: enforced once.
                if all.is_some_and(|a| a.deny_endpoints.contains(e)) {
                    continue;
                }
                p.endpoint(agent, e, resolved, &mut said);
            }
            for f in &r.forbidden_paths {
                if all.is_some_and(|a| a.forbidden_paths.contains(f)) {
                    continue;
                }
                p.path(agent, f);
            }
            for c in &r.forbidden_credentials {
                if all.is_some_and(|a| a.forbidden_credentials.contains(c)) {
                    continue;
                }
                p.credential_rules += 1;
                p.creds.push(CredEntry {
                    agent: agent.map(str::to_string),
                    fingerprint: c.fingerprint.clone(),
                    policy: c.policy.clone(),
                    action: if c.response() == PolicyResponse::Quarantine {
                        "quarantine"
                    } else {
                        "kill"
                    }
                    .into(),
                });
            }
        }
        p
    }

    fn rule(&mut self, policy: &str, what: String) -> u32 {
        self.rules.push(RuleInfo {
            policy: policy.to_string(),
            what,
        });
        (self.rules.len() - 1) as u32
    }

    fn endpoint(
        &mut self,
        agent: Option<&str>,
        e: &EndpointRule,
        resolved: &BTreeMap<String, Vec<IpAddr>>,
        said: &mut BTreeSet<String>,
    ) {
        let who = agent.map_or(String::new(), |a| format!(" (agent {a})"));
        let mut not = |s: String| {
            if said.insert(s.clone()) {
                self.not_kernel.push(s);
            }
        };
        let Some(proto) = proto_number(e.protocol.as_deref()) else {
            not(format!(
                "{}{who}: protocol {:?} is not matched in the kernel: collector-enforced",
                e.policy,
                e.protocol.as_deref().unwrap_or("")
            ));
            return;
        };
        if let Some(s) = &e.host_suffix {
            not(format!(
                "{}{who}: names ending in {s:?} cannot be resolved ahead: collector-enforced",
                e.policy
            ));
            return;
        }
        let cidr = match e.cidr.as_deref().map(Net::parse) {
            None => None,
            Some(Some(n)) => Some(n),
            Some(None) => {
                not(format!(
                    "{}{who}: address range {:?} not understood: collector-enforced",
                    e.policy,
                    e.cidr.as_deref().unwrap_or("")
                ));
                return;
            }
        };
        let name = e
            .host
            .as_deref()
            .or(e.domain.as_deref())
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        let nets: Vec<Net> = match &name {
            None => vec![cidr.unwrap_or(Net::ANY)],
            Some(n) => {
                let addrs = resolved.get(n).map(Vec::as_slice).unwrap_or(&[]);
                if addrs.is_empty() {
                    not(format!(
                        "{}{who}: {n} did not resolve on this host: collector-enforced",
                        e.policy
                    ));
                    return;
                }
                if e.host.is_none() {
                    not(format!(
                        "{}{who}: names below {n} cannot be listed ahead: only {n} itself is denied in the kernel, the rest is collector-enforced",
                        e.policy
                    ));
                }
                let mut v: Vec<Net> = addrs
                    .iter()
                    .map(|a| Net::host(*a))
                    .filter(|h| cidr.is_none_or(|c| c.contains(h)))
                    .collect();
                v.sort();
                v.dedup();
                if v.is_empty() {
                    return; // the name's addresses are outside the range: never matches
                }
                v
            }
        };
        // Checked on arrival (rules::check): 1-65535.
        let port = e.port.map_or(0, |p| p as u16);
        self.endpoint_rules += 1;
        for net in nets {
            let mut what = format!("deny {net}");
            if let Some(n) = &name {
                what = format!("deny {n} ({net})");
            }
            if port != 0 {
                what.push_str(&format!(" port {port}"));
            }
            what.push_str(proto_name(proto));
            let rule = self.rule(&e.policy, what);
            self.net.push(NetEntry {
                agent: agent.map(str::to_string),
                net,
                port,
                proto,
                rule,
            });
        }
    }

    fn path(&mut self, agent: Option<&str>, f: &PathRule) {
        if !f.read && !f.write {
            return;
        }
        let who = agent.map_or(String::new(), |a| format!(" (agent {a})"));
        if !f.path.starts_with('/') {
            self.not_kernel.push(format!(
                "{}{who}: path {:?} is not absolute: collector-enforced",
                f.policy, f.path
            ));
            return;
        }
        let (path, kind) = rule_path(f);
        let daemon_only = path.len() > policy::PATH_LEN_MAX;
        if daemon_only {
            self.not_kernel.push(format!(
                "{}{who}: path longer than {} bytes: checked by the daemon after the open, not in the kernel",
                f.policy,
                policy::PATH_LEN_MAX
            ));
        }
        self.path_rules += 1;
        let what = format!(
            "{} ({}, {})",
            f.path,
            kind_text(kind),
            access_text(f.read, f.write)
        );
        let rule = self.rule(&f.policy, what);
        self.paths.push(PathEntry {
            agent: agent.map(str::to_string),
            path,
            kind,
            read: f.read,
            write: f.write,
            rule,
            daemon_only,
        });
    }

    /// The path rule a (normalised, absolute) open by `agent` breaks, if any: the
    /// daemon's check of what the kernel could not match (relative paths, `..`,
    /// symlinks, over-long paths).
    pub fn path_rule(
        &self,
        agent: Option<&str>,
        path: &str,
        reads: bool,
        writes: bool,
    ) -> Option<u32> {
        self.paths
            .iter()
            .filter(|e| e.agent.is_none() || e.agent.as_deref() == agent)
            .filter(|e| (reads && e.read) || (writes && e.write))
            .find(|e| path_matches(&e.path, e.kind, path.as_bytes()))
            .map(|e| e.rule)
    }

    /// The credential rule that forbids `fingerprint` to `agent`, if any.
    #[cfg(test)]
    pub fn credential(&self, agent: Option<&str>, fingerprint: &str) -> Option<&CredEntry> {
        self.creds.iter().find(|c| {
            c.fingerprint == fingerprint && (c.agent.is_none() || c.agent.as_deref() == agent)
        })
    }

    /// Map entries for the agents this host knows (`slot_of`).
    pub fn entries(&self, slot_of: &dyn Fn(&str) -> Option<u32>) -> MapEntries {
        let mut out = MapEntries::default();
        let slot = |a: &Option<String>, waiting: &mut BTreeSet<String>| match a {
            None => Some(policy::ANY_AGENT),
            Some(id) => {
                let s = slot_of(id);
                if s.is_none() {
                    waiting.insert(id.clone());
                }
                s
            }
        };
        // Endpoints: per agent slot, each prefix carries the rules of every prefix
        // that contains it (the trie answers with the longest match only).
        let mut by_slot: BTreeMap<u32, Vec<&NetEntry>> = BTreeMap::new();
        for e in &self.net {
            if let Some(s) = slot(&e.agent, &mut out.waiting) {
                by_slot.entry(s).or_default().push(e);
            }
        }
        for (s, list) in by_slot {
            let nets: BTreeSet<Net> = list.iter().map(|e| e.net).collect();
            for net in nets {
                let mut v = NetRules::default();
                let mut covering: Vec<&&NetEntry> =
                    list.iter().filter(|e| e.net.contains(&net)).collect();
                // Most specific first: with too many, the broad rules are the ones
                // left out of this prefix.
                covering.sort_by_key(|e| std::cmp::Reverse(e.net.len));
                for e in covering {
                    if v.rules[..v.count as usize]
                        .iter()
                        .any(|r| r.port == e.port && r.proto == e.proto)
                    {
                        continue;
                    }
                    if v.count as usize >= policy::NET_RULES_MAX {
                        out.overflow.insert(e.rule);
                        continue;
                    }
                    v.rules[v.count as usize] = NetRule {
                        port: e.port,
                        proto: e.proto,
                        _pad: 0,
                        rule: e.rule,
                    };
                    v.count += 1;
                }
                out.net.insert((s, net), v);
            }
        }
        // The kernel checks at most PATH_LENS_MAX distinct rule lengths per open
        // (the shortest ones); rules of other lengths are the daemon's to check.
        let mut lens: Vec<usize> = self
            .paths
            .iter()
            .filter(|e| !e.daemon_only)
            .map(|e| e.path.len())
            .collect();
        lens.sort_unstable();
        lens.dedup();
        lens.truncate(policy::PATH_LENS_MAX);
        for e in self.paths.iter().filter(|e| !e.daemon_only) {
            if !lens.contains(&e.path.len()) {
                out.path_overflow.insert(e.rule);
                continue;
            }
            let Some(s) = slot(&e.agent, &mut out.waiting) else {
                continue;
            };
            let key = (s, e.path.len() as u32, policy::path_hash(&e.path));
            let v = out.paths.entry(key).or_insert(PathRuleVal {
                rule: e.rule,
                ..PathRuleVal::default()
            });
            if e.read {
                v.read |= e.kind;
            }
            if e.write {
                v.write |= e.kind;
            }
        }
        if !out.paths.is_empty() {
            for (i, l) in lens.iter().enumerate() {
                out.meta.path_lens[i] = *l as u16;
            }
            out.meta.nlens = lens.len() as u32;
        }
        if !out.net.is_empty() {
            out.meta.flags |= policy::HAS_NET;
        }
        if !out.paths.is_empty() {
            out.meta.flags |= policy::HAS_PATH;
        }
        out
    }
}

/// Kernel map contents for one generation (keys without the generation).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MapEntries {
    /// (agent slot, prefix) → rules.
    pub net: BTreeMap<(u32, Net), NetRules>,
    /// (agent slot, path length, FNV-1a of the path) → forbidden kinds.
    pub paths: HashMap<(u32, u32, u64), PathRuleVal>,
    pub meta: PolicyMeta,
    /// Rules left out of some prefix (more than `NET_RULES_MAX` port rules).
    pub overflow: BTreeSet<u32>,
    /// Path rules of lengths beyond the `PATH_LENS_MAX` the kernel checks.
    pub path_overflow: BTreeSet<u32>,
    /// Agents the rules name that have no slot on this host yet.
    pub waiting: BTreeSet<String>,
}
