//! The host rules a collector sends in a `PolicyUpdate` command: the contract's own
//! `custody.sensor.v1.HostRules` (one definition, in `proto/`, shared with the
//! collector that compiles them), re-exported here with what the sensor asks of
//! them, and checked once where they arrive ([`check`]) so the compiler below can
//! trust every enum and port it reads.

use custody_proto::enums::WireEnum;
pub use custody_proto::sensor::v1::{
    AgentRules, EndpointRule, Enforcement, HostRules, PathMatch, PathRule, PolicyResponse,
};

/// No rules (for a message without `all_agents`).
const NONE: &AgentRules = &AgentRules {
    deny_endpoints: Vec::new(),
    forbidden_paths: Vec::new(),
    forbidden_credentials: Vec::new(),
};

/// What the sensor reads off a rule set.
pub trait HostRulesExt {
    /// The rules for every agent.
    fn every_agent(&self) -> &AgentRules;
    /// Rules of every agent key: None for every agent, Some(id) for one.
    fn by_agent(&self) -> impl Iterator<Item = (Option<&str>, &AgentRules)>;
    /// DNS names endpoint rules name (exact hosts and domains), to resolve.
    fn names(&self) -> Vec<String>;
}

impl HostRulesExt for HostRules {
    fn every_agent(&self) -> &AgentRules {
        self.all_agents.as_ref().unwrap_or(NONE)
    }

    fn by_agent(&self) -> impl Iterator<Item = (Option<&str>, &AgentRules)> {
        std::iter::once((None, self.every_agent()))
            .chain(self.agents.iter().map(|(k, v)| (Some(k.as_str()), v)))
    }

    fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .by_agent()
            .flat_map(|(_, r)| r.deny_endpoints.iter())
            .filter(|e| e.host_suffix.is_none())
            .flat_map(|e| e.host.iter().chain(e.domain.iter()))
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Refuses a rule set this sensor cannot read faithfully: an enum value it does not
/// know (a newer collector's, or unset where it decides the match), or a port out of
/// range. Enforcing a guess would block the wrong thing or miss the right one.
pub fn check(rules: &HostRules) -> Result<(), String> {
    for p in &rules.policies {
        known::<Enforcement>(p.enforcement, &format!("policy {}: enforcement", p.id))?;
    }
    for (agent, r) in rules.by_agent() {
        let whose = agent.map_or("every agent".to_string(), |a| format!("agent {a}"));
        for e in &r.deny_endpoints {
            let at = format!("{whose}, policy {}", e.policy);
            known::<PolicyResponse>(e.response, &format!("{at}: response"))?;
            if let Some(port) = e.port
                && !(1..=u32::from(u16::MAX)).contains(&port)
            {
                return Err(format!("{at}: port {port} is not 1-65535"));
            }
        }
        for f in &r.forbidden_paths {
            let at = format!("{whose}, policy {}", f.policy);
            known::<PolicyResponse>(f.response, &format!("{at}: response"))?;
            match PathMatch::known(f.r#match) {
                Some(PathMatch::Unspecified) => {
                    return Err(format!("{at}: path {} does not say how it matches", f.path));
                }
                Some(_) => {}
                None => return Err(format!("{at}: unknown path match {}", f.r#match)),
            }
        }
        for c in &r.forbidden_credentials {
            let at = format!("{whose}, policy {}", c.policy);
            known::<PolicyResponse>(c.response, &format!("{at}: response"))?;
        }
    }
    Ok(())
}

fn known<E: WireEnum>(n: i32, what: &str) -> Result<E, String> {
    E::known(n).ok_or_else(|| format!("{what}: unknown value {n} (a newer collector?)"))
}
