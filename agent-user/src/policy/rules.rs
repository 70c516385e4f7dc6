//! The host rules a collector sends in a `policy_update` command (`params["rules"]`),
//! as JSON. These types mirror the collector's `custody_collector::policy::HostRules`
//! field for field (the sensor does not depend on the collector crate); unknown
//! fields are ignored and missing ones take their defaults, so either side can add
//! fields without breaking the other. `tests/fixtures/host_rules.json` is produced by
//! the collector's own compiler (collector/tests/policy_rules_fixture.rs) and parsed
//! by this crate's tests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostRules {
    /// Rules that apply to every agent, including agents not listed in `agents`.
    pub all_agents: AgentRules,
    /// Per agent id: the rules that apply to it.
    pub agents: BTreeMap<String, AgentRules>,
    /// Where each policy is enforced, and why (for the operator).
    pub policies: Vec<PolicyEnforcement>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentRules {
    pub deny_endpoints: Vec<EndpointRule>,
    pub forbidden_paths: Vec<PathRule>,
    pub forbidden_credentials: Vec<CredentialRule>,
}

/// A denied endpoint: every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointRule {
    pub policy: String,
    /// The policy's `@response` ("alert", "kill_process", ...).
    pub response: String,
    pub severity: String,
    /// "10.0.0.0/8", "1.2.3.4/32", "fd00::/8".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// "tcp" / "udp".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// DNS name, exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// DNS names ending with this text (".x.com").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_suffix: Option<String>,
    /// This domain or a name below it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// The path itself.
    Exact,
    /// The directory and everything below it.
    #[default]
    Dir,
    /// Any path starting with this text.
    Prefix,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PathRule {
    pub policy: String,
    pub response: String,
    pub severity: String,
    pub path: String,
    #[serde(rename = "match")]
    pub matching: PathMatch,
    /// Forbidden for open_read.
    pub read: bool,
    /// Forbidden for open_write.
    pub write: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CredentialRule {
    pub policy: String,
    pub response: String,
    pub severity: String,
    pub fingerprint: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyEnforcement {
    pub id: String,
    /// "kernel" or "collector".
    pub enforcement: String,
    pub why: String,
}

impl HostRules {
    #[cfg(test)]
    pub fn from_json(s: &str) -> Result<HostRules, serde_json::Error> {
        serde_json::from_str(s)
    }

    /// Rules of every agent key: None for every agent, Some(id) for one.
    pub fn by_agent(&self) -> impl Iterator<Item = (Option<&str>, &AgentRules)> {
        std::iter::once((None, &self.all_agents))
            .chain(self.agents.iter().map(|(k, v)| (Some(k.as_str()), v)))
    }

    /// DNS names endpoint rules name (exact hosts and domains), to resolve.
    pub fn names(&self) -> Vec<String> {
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
