//! Kernel compilation: the forbid policies sensors can enforce on their own.
//!
//! A policy compiles when (read from its Cedar JSON form, `Policy::to_json`):
//! - it is a `forbid`;
//! - its principal scope is unconstrained, `is Agent` or `== Agent::"<id>"`;
//! - it can apply to `connect`, `open_read`, `open_write` or `use_credential`;
//! - it has no `unless`, and its `when` conditions are `&&`/`||` combinations of
//!   resource tests — `resource == / in / is ...` (e.g. `resource in Dir::"/x"`,
//!   `resource in Domain::"x.com"`), `resource.port == 443`, `resource.host == "h"`,
//!   `resource.host like "*.x.com"`, `resource.path like "/x/*"`,
//!   `resource.addr == ip("a")`, `resource.addr.isInRange(ip("cidr"))`,
//!   `[22, 23].contains(resource.port)`, `resource.protocol == "tcp"`,
//!   `resource.fingerprint == "..."`, `resource has addr` — and tests of the agent's
//!   static attributes (`principal.declared`, `principal.owner == "..."`, ...), which
//!   are resolved per agent at compile time.
//!
//! Anything that needs the chain (`context.*`: depth, root human, task, scope
//! flags...) or facts sensors do not have is enforced by the collector after the
//! fact; [`PolicyEnforcement::why`] says which construct decided it. Every policy is
//! evaluated by the collector as well — kernel rules add prevention.

use std::collections::BTreeMap;
use std::net::IpAddr;

use cedar_policy::Effect;
use serde_json::Value;

use super::analysis::{Atom, Lit, Mode, PatElem, PolicyDnf, policy_dnf, split_endpoint_id};
use super::context::{AgentInfo, IpNet};
use super::load::PolicySet;
use super::{Action, Enforcement, Response, Severity};

/// Rules for the sensors, per agent. Travels as `custody.sensor.v1.HostRules` in a
/// `PolicyUpdate` command (see `wire.rs`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostRules {
    /// Rules that apply to every agent, including agents not listed below (policies
    /// whose principal is unconstrained).
    pub all_agents: AgentRules,
    /// Per agent id: every rule that applies to it (`all_agents`' included).
    pub agents: BTreeMap<String, AgentRules>,
    /// Where each policy is enforced, and why.
    pub policies: Vec<PolicyEnforcement>,
}

impl HostRules {
    /// The rules for one agent (its own entry, else the rules for every agent).
    pub fn for_agent(&self, agent_id: &str) -> &AgentRules {
        self.agents.get(agent_id).unwrap_or(&self.all_agents)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentRules {
    /// `connect` deny list.
    pub deny_endpoints: Vec<EndpointRule>,
    /// `open_read` / `open_write` of these paths is forbidden.
    pub forbidden_paths: Vec<PathRule>,
    /// `use_credential` of these fingerprints is forbidden.
    pub forbidden_credentials: Vec<CredentialRule>,
}

impl AgentRules {
    pub fn is_empty(&self) -> bool {
        self.deny_endpoints.is_empty()
            && self.forbidden_paths.is_empty()
            && self.forbidden_credentials.is_empty()
    }
}

/// A denied endpoint: every field that is set must match (none set: every
/// connect — the sensor keeps its own collector connection regardless).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointRule {
    pub policy: String,
    pub response: Response,
    pub severity: Severity,
    /// Remote address range ("10.0.0.0/8", "1.2.3.4/32").
    pub cidr: Option<String>,
    pub port: Option<u16>,
    /// "tcp" / "udp".
    pub protocol: Option<String>,
    /// DNS name, exactly (case-insensitive).
    pub host: Option<String>,
    /// DNS name ending with this text (from `like "*.x.com"`: ".x.com").
    pub host_suffix: Option<String>,
    /// This domain or a name below it (from `resource in Domain::"x.com"`).
    pub domain: Option<String>,
}

/// How a [`PathRule`] matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// The path itself.
    Exact,
    /// The directory and everything below it.
    #[default]
    Dir,
    /// Any path starting with this text.
    Prefix,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathRule {
    pub policy: String,
    pub response: Response,
    pub severity: Severity,
    pub path: String,
    pub matching: PathMatch,
    /// Forbidden for open_read.
    pub read: bool,
    /// Forbidden for open_write.
    pub write: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialRule {
    pub policy: String,
    pub response: Response,
    pub severity: Severity,
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEnforcement {
    pub id: String,
    pub enforcement: Enforcement,
    pub why: String,
}

/// Compiles the kernel-enforceable subset of `set` for `agents` (the agents the
/// target hosts know; rules naming other agents by id are included too).
pub fn compile_host_rules(set: &PolicySet, agents: &[AgentInfo]) -> HostRules {
    let mut out = HostRules::default();
    for a in agents {
        out.agents.entry(a.id.clone()).or_default();
    }
    for p in &set.policies {
        let (enforcement, why) = p.plan.summary();
        out.policies.push(PolicyEnforcement {
            id: p.info.id.clone(),
            enforcement,
            why,
        });
        let KernelPlan::Kernel { rules, .. } = &p.plan else {
            continue;
        };
        for t in rules {
            let mut rule = t.rule.clone();
            rule.set_meta(&p.info.id, p.info.response, p.info.severity);
            if t.principal.is_any() {
                rule.push_to(&mut out.all_agents);
                for r in out.agents.values_mut() {
                    rule.push_to(r);
                }
                continue;
            }
            if let Some(id) = &t.principal.agent
                && t.principal.attrs.is_empty()
            {
                rule.push_to(out.agents.entry(id.clone()).or_default());
                continue;
            }
            for a in agents.iter().filter(|a| t.principal.matches(a)) {
                rule.push_to(out.agents.entry(a.id.clone()).or_default());
            }
        }
    }
    out
}

/// The analysis of one policy, done once at load.
#[derive(Debug, Clone)]
pub(crate) enum KernelPlan {
    Collector { why: String },
    Kernel { why: String, rules: Vec<Template> },
}

impl KernelPlan {
    pub fn summary(&self) -> (Enforcement, String) {
        match self {
            KernelPlan::Collector { why } => (Enforcement::Collector, why.clone()),
            KernelPlan::Kernel { why, .. } => (Enforcement::Kernel, why.clone()),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Template {
    principal: PrincipalFilter,
    rule: Rule,
}

#[derive(Debug, Clone)]
enum Rule {
    Endpoint(EndpointRule),
    Path(PathRule),
    Credential(CredentialRule),
}

impl Rule {
    fn set_meta(&mut self, id: &str, response: Response, severity: Severity) {
        let (p, r, s) = match self {
            Rule::Endpoint(e) => (&mut e.policy, &mut e.response, &mut e.severity),
            Rule::Path(e) => (&mut e.policy, &mut e.response, &mut e.severity),
            Rule::Credential(e) => (&mut e.policy, &mut e.response, &mut e.severity),
        };
        *p = id.to_string();
        *r = response;
        *s = severity;
    }

    fn push_to(&self, rules: &mut AgentRules) {
        match self {
            Rule::Endpoint(e) => {
                if !rules.deny_endpoints.contains(e) {
                    rules.deny_endpoints.push(e.clone())
                }
            }
            Rule::Path(p) => {
                // One rule per (policy, path): read and write merged.
                if let Some(x) = rules
                    .forbidden_paths
                    .iter_mut()
                    .find(|x| x.policy == p.policy && x.path == p.path && x.matching == p.matching)
                {
                    x.read |= p.read;
                    x.write |= p.write;
                } else {
                    rules.forbidden_paths.push(p.clone());
                }
            }
            Rule::Credential(c) => {
                if !rules.forbidden_credentials.contains(c) {
                    rules.forbidden_credentials.push(c.clone())
                }
            }
        }
    }
}

/// Which agents a rule applies to: all must hold.
#[derive(Debug, Clone, Default, PartialEq)]
struct PrincipalFilter {
    agent: Option<String>,
    attrs: Vec<(String, Lit)>,
}

impl PrincipalFilter {
    fn is_any(&self) -> bool {
        self.agent.is_none() && self.attrs.is_empty()
    }

    fn matches(&self, a: &AgentInfo) -> bool {
        if self.agent.as_ref().is_some_and(|id| *id != a.id) {
            return false;
        }
        self.attrs.iter().all(|(k, v)| match (k.as_str(), v) {
            ("declared", Lit::Bool(b)) => a.declared == *b,
            ("name", Lit::Str(s)) => a.name == *s,
            ("owner", Lit::Str(s)) => a.owner == *s,
            ("kind", Lit::Str(s)) => a.kind == *s,
            _ => false,
        })
    }
}

/// The actions sensors can enforce.
const KERNEL_ACTIONS: [Action; 4] = [
    Action::Connect,
    Action::OpenRead,
    Action::OpenWrite,
    Action::UseCredential,
];

fn names(actions: &[Action]) -> String {
    actions
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decides whether a policy compiles to sensor rules, and compiles it. `json` is
/// the policy's JSON form (None if Cedar could not produce it).
pub(crate) fn analyse(effect: Effect, json: Option<&Value>, mask: u16) -> KernelPlan {
    let collector = |why: String| KernelPlan::Collector { why };
    if effect == Effect::Permit {
        return collector(
            "permit: the set is deny-list style; only forbid rules are compiled".into(),
        );
    }
    let applicable: Vec<Action> = Action::ALL
        .into_iter()
        .filter(|a| mask & (1 << a.index()) != 0)
        .collect();
    if applicable.is_empty() {
        return collector("applies to no action of the schema".into());
    }
    let kernel: Vec<Action> = applicable
        .iter()
        .copied()
        .filter(|a| KERNEL_ACTIONS.contains(a))
        .collect();
    let rest: Vec<Action> = applicable
        .iter()
        .copied()
        .filter(|a| !KERNEL_ACTIONS.contains(a))
        .collect();
    if kernel.is_empty() {
        return collector(format!(
            "{}: sensors enforce only connect, open_read, open_write and use_credential",
            names(&rest)
        ));
    }
    let Some(json) = json else {
        return collector("not analysable: no JSON form".into());
    };
    match compile(json, &kernel) {
        Err(why) => collector(why),
        Ok(rules) if rules.is_empty() => {
            collector("its conditions can never hold for a kernel-enforced action".into())
        }
        Ok(rules) => {
            let mut why = format!(
                "{}: conditions only on the resource (and static agent attributes), enforced by sensors",
                names(&kernel)
            );
            if !rest.is_empty() {
                why.push_str(&format!(
                    "; {}: evaluated by the collector after the fact",
                    names(&rest)
                ));
            }
            KernelPlan::Kernel { why, rules }
        }
    }
}

fn compile(v: &Value, actions: &[Action]) -> Result<Vec<Template>, String> {
    let PolicyDnf {
        principal_agent,
        dnf,
    } = policy_dnf(v, Mode::Strict)?;
    let base = PrincipalFilter {
        agent: principal_agent,
        attrs: Vec::new(),
    };
    let mut out = Vec::new();
    for conj in &dnf {
        let mut principal = base.clone();
        let mut res = Vec::new();
        for a in conj {
            match a {
                Atom::PrincipalEq(id) => {
                    if principal.agent.as_ref().is_some_and(|x| x != id) {
                        principal.agent = None;
                        res.clear();
                        break;
                    }
                    principal.agent = Some(id.clone());
                }
                Atom::PrincipalAttr(k, v) => principal.attrs.push((k.clone(), v.clone())),
                a => res.push(a.clone()),
            }
        }
        for &action in actions {
            if let Some(rule) = resource_rule(action, &res)? {
                out.push(Template {
                    principal: principal.clone(),
                    rule,
                });
            }
        }
    }
    Ok(out)
}

/// The rule one conjunction of resource tests stands for, for one action; None when
/// the conjunction cannot hold for that action's resource type.
fn resource_rule(action: Action, atoms: &[Atom]) -> Result<Option<Rule>, String> {
    match action {
        Action::Connect => endpoint_rule(atoms),
        Action::OpenRead | Action::OpenWrite => path_rule(action, atoms),
        Action::UseCredential => credential_rule(atoms),
        _ => Ok(None),
    }
}

fn set_once<T: PartialEq + std::fmt::Debug>(
    slot: &mut Option<T>,
    v: T,
    what: &str,
) -> Result<(), String> {
    match slot {
        Some(old) if *old != v => Err(format!(
            "two different tests of {what} in one alternative ({old:?}, {v:?})"
        )),
        _ => {
            *slot = Some(v);
            Ok(())
        }
    }
}

fn endpoint_rule(atoms: &[Atom]) -> Result<Option<Rule>, String> {
    let mut r = EndpointRule::default();
    for a in atoms {
        match a {
            Atom::ResIs(t) if t != "Endpoint" => return Ok(None),
            Atom::ResIs(_) | Atom::Has => {}
            Atom::ResEq(t, id) | Atom::ResIn(t, id) if t == "Endpoint" => {
                let (host, port) = split_endpoint_id(id);
                if let Some(p) = port {
                    set_once(&mut r.port, p, "resource.port")?;
                }
                match host.parse::<IpAddr>() {
                    Ok(ip) => set_once(&mut r.cidr, IpNet::host(ip).to_string(), "resource.addr")?,
                    Err(_) => set_once(&mut r.host, host.to_ascii_lowercase(), "resource.host")?,
                }
            }
            Atom::ResIn(t, d) if t == "Domain" => {
                set_once(&mut r.domain, d.to_ascii_lowercase(), "the domain")?
            }
            Atom::ResEq(..) | Atom::ResIn(..) => return Ok(None),
            Atom::AddrIn(net) => set_once(&mut r.cidr, net.to_string(), "resource.addr")?,
            Atom::Attr(k, Lit::Long(n)) if k == "port" => {
                let p = u16::try_from(*n).map_err(|_| format!("port {n} out of range"))?;
                set_once(&mut r.port, p, "resource.port")?
            }
            Atom::Attr(k, Lit::Str(s)) if k == "host" => {
                set_once(&mut r.host, s.to_ascii_lowercase(), "resource.host")?
            }
            Atom::Attr(k, Lit::Str(s)) if k == "protocol" => {
                set_once(&mut r.protocol, s.clone(), "resource.protocol")?
            }
            Atom::Like(k, p) if k == "host" => match p.as_slice() {
                [PatElem::Literal(l)] => {
                    set_once(&mut r.host, l.to_ascii_lowercase(), "resource.host")?
                }
                [PatElem::Wildcard, PatElem::Literal(l)] => {
                    set_once(&mut r.host_suffix, l.to_ascii_lowercase(), "resource.host")?
                }
                _ => {
                    return Err(
                        "`resource.host like` compiles only as \"*suffix\" or an exact name".into(),
                    );
                }
            },
            Atom::Attr(k, _) | Atom::Like(k, _) => {
                return Err(format!(
                    "test of resource.{k}: sensors match endpoints by address, port, protocol and host name only"
                ));
            }
            Atom::PrincipalEq(_) | Atom::PrincipalAttr(..) => {}
            Atom::Unknown(why) => return Err(why.clone()),
            // Strict analysis rejects context tests before rules are built.
            a => return Err(format!("not a sensor test: {a:?}")),
        }
    }
    Ok(Some(Rule::Endpoint(r)))
}

fn path_rule(action: Action, atoms: &[Atom]) -> Result<Option<Rule>, String> {
    let mut path: Option<(String, PathMatch)> = None;
    for a in atoms {
        let v = match a {
            Atom::ResIs(t) if t != "File" => return Ok(None),
            Atom::ResIs(_) | Atom::Has => continue,
            Atom::ResEq(t, p) | Atom::ResIn(t, p) if t == "File" => (p.clone(), PathMatch::Exact),
            Atom::ResIn(t, p) if t == "Dir" => (p.clone(), PathMatch::Dir),
            Atom::ResEq(..) | Atom::ResIn(..) => return Ok(None),
            Atom::Attr(k, Lit::Str(p)) if k == "path" => (p.clone(), PathMatch::Exact),
            Atom::Like(k, pat) if k == "path" => match pat.as_slice() {
                [PatElem::Literal(l)] => (l.clone(), PathMatch::Exact),
                [PatElem::Literal(l), PatElem::Wildcard] => (l.clone(), PathMatch::Prefix),
                _ => {
                    return Err(
                        "`resource.path like` compiles only as \"/prefix*\" or an exact path"
                            .into(),
                    );
                }
            },
            Atom::Attr(k, _) | Atom::Like(k, _) => {
                return Err(format!(
                    "test of resource.{k}: sensors match files by path only"
                ));
            }
            Atom::AddrIn(_) => return Ok(None),
            Atom::PrincipalEq(_) | Atom::PrincipalAttr(..) => continue,
            Atom::Unknown(why) => return Err(why.clone()),
            // Strict analysis rejects context tests before rules are built.
            a => return Err(format!("not a sensor test: {a:?}")),
        };
        set_once(&mut path, v, "the path")?;
    }
    let (path, matching) = path.unwrap_or(("/".into(), PathMatch::Dir));
    Ok(Some(Rule::Path(PathRule {
        path,
        matching,
        read: action == Action::OpenRead,
        write: action == Action::OpenWrite,
        ..PathRule::default()
    })))
}

fn credential_rule(atoms: &[Atom]) -> Result<Option<Rule>, String> {
    let mut fp: Option<String> = None;
    for a in atoms {
        match a {
            Atom::ResIs(t) if t != "Credential" => return Ok(None),
            Atom::ResIs(_) | Atom::Has => {}
            Atom::ResEq(t, f) | Atom::ResIn(t, f) if t == "Credential" => {
                set_once(&mut fp, f.clone(), "the fingerprint")?
            }
            Atom::ResEq(..) | Atom::ResIn(..) | Atom::AddrIn(_) => return Ok(None),
            Atom::Attr(k, Lit::Str(f)) if k == "fingerprint" => {
                set_once(&mut fp, f.clone(), "the fingerprint")?
            }
            Atom::Attr(k, _) | Atom::Like(k, _) => {
                return Err(format!(
                    "test of resource.{k}: sensors match credentials by fingerprint only"
                ));
            }
            Atom::PrincipalEq(_) | Atom::PrincipalAttr(..) => {}
            Atom::Unknown(why) => return Err(why.clone()),
            // Strict analysis rejects context tests before rules are built.
            a => return Err(format!("not a sensor test: {a:?}")),
        }
    }
    match fp {
        Some(fingerprint) => Ok(Some(Rule::Credential(CredentialRule {
            fingerprint,
            ..CredentialRule::default()
        }))),
        None => Err(
            "use_credential without a fingerprint: sensors match credentials by fingerprint only"
                .into(),
        ),
    }
}
