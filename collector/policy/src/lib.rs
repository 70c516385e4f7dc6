//! Custody policies: Cedar policies over agents, their actions and the chain they
//! belong to, evaluated by the collector on arrival and — where a policy needs no
//! chain context — compiled into per-host rules the sensors enforce in the kernel.
//!
//! Its own crate (`custody-policy`) because it knows nothing of the collector:
//! `custodyctl` and the benchmarks use it alone, and the collector's `live_policy`
//! feeds it stored events and chain context.
//!
//! # Model
//! The schema ([`SCHEMA`], `custody.cedarschema`) publishes the entities (`Human`,
//! `Group`, `Agent`, `Host`, `Credential`, and the resources `File`/`Dir`,
//! `Endpoint`/`Domain`, `Tool`, `Model`), the ten actions ([`Action`]) and the
//! request context (type `Chain`: root human, task text, depth, agents on the path,
//! credential in use, declared flag, scope flags, `context_incomplete`). Every policy
//! is validated against it in strict mode when loaded.
//!
//! # Deny-list convention
//! A built-in `permit(principal, action, resource);` (id [`BASE_PERMIT_ID`]) is always
//! part of a [`PolicySet`]: everything is allowed unless a `forbid` matches. Custody
//! policies are `forbid` rules annotated with `@response`, `@severity` and `@id`.
//!
//! # Pieces
//! - [`PolicySet`] (`load`): loading, validation, errors with file/line/column,
//!   the built-in set (`collector/policies/*.cedar`), [`PolicySet::list`].
//! - [`ChainContext`] (`context`): what the collector knows about an event's chain.
//! - [`requests_for`] (`request`): the one mapping table from sensor events to
//!   Custody actions and resources; [`cedar_requests`] turns them into Cedar requests.
//! - [`Evaluator`] (`eval`): decisions for an event, fast (policies sliced per
//!   action, pre-filtered per request by their resource tests (`guard`), chain
//!   entities prepared once per chain).
//! - [`compile_host_rules`] (`kernel`, reading policies through `analysis`): the
//!   chain-independent subset of forbid policies as [`HostRules`] for sensors; why
//!   each policy is or is not kernel-enforced.
//! - [`dry_run`] (`dryrun`): a policy set over recorded events, same code path.

mod analysis;
mod cedar;
mod context;
mod dryrun;
mod eval;
mod guard;
mod kernel;
mod load;
mod request;
mod wire;

pub use cedar::{CedarRequest, PreparedChain, cedar_requests};
pub use context::{AgentInfo, ChainContext, CredentialInfo, HumanInfo, Scope, parse_scope};
pub use dryrun::{PolicyCount, Report, dry_run};
pub use eval::{Decision, Evaluator};
pub use kernel::{
    AgentRules, CredentialRule, EndpointRule, HostRules, PathRule, PolicyEnforcement,
    compile_host_rules,
};
pub use load::{
    BASE_PERMIT_ID, ErrorKind, PolicyError, PolicyInfo, PolicyLoadError, PolicySet, SCHEMA,
};
pub use request::{ActionRequest, Resource, requests_for};

use serde::{Deserialize, Serialize};

/// The actions of Custody's schema (Cedar `Action::"<name>"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Exec,
    OpenRead,
    OpenWrite,
    Unlink,
    Connect,
    DnsQuery,
    LlmCall,
    ToolCall,
    UseCredential,
    Delegate,
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::Exec,
        Action::OpenRead,
        Action::OpenWrite,
        Action::Unlink,
        Action::Connect,
        Action::DnsQuery,
        Action::LlmCall,
        Action::ToolCall,
        Action::UseCredential,
        Action::Delegate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Exec => "exec",
            Action::OpenRead => "open_read",
            Action::OpenWrite => "open_write",
            Action::Unlink => "unlink",
            Action::Connect => "connect",
            Action::DnsQuery => "dns_query",
            Action::LlmCall => "llm_call",
            Action::ToolCall => "tool_call",
            Action::UseCredential => "use_credential",
            Action::Delegate => "delegate",
        }
    }

    pub fn from_name(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Resource entity types the schema allows for this action.
    pub fn resource_types(self) -> &'static [&'static str] {
        match self {
            Action::Exec | Action::OpenRead | Action::OpenWrite | Action::Unlink => &["File"],
            Action::Connect | Action::DnsQuery => &["Endpoint"],
            Action::LlmCall => &["Model"],
            Action::ToolCall => &["Tool"],
            Action::UseCredential => &["Credential"],
            Action::Delegate => &["Agent", "Endpoint"],
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `@response(...)`: what the collector does when the policy denies. Ordered by
/// strength (blast radius), weakest first; a decision carries the strongest response
/// of the policies that denied it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Raise an alert only.
    #[default]
    Alert,
    /// Deny the credential fleet-wide (by fingerprint).
    RevokeCredential,
    /// Cut the agent off the network (all but the collector).
    Quarantine,
    /// Kill the acting process.
    KillProcess,
    /// Kill every process of the chain on every host.
    KillChain,
}

impl Response {
    pub const ALL: [Response; 5] = [
        Response::Alert,
        Response::RevokeCredential,
        Response::Quarantine,
        Response::KillProcess,
        Response::KillChain,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Response::Alert => "alert",
            Response::RevokeCredential => "revoke_credential",
            Response::Quarantine => "quarantine",
            Response::KillProcess => "kill_process",
            Response::KillChain => "kill_chain",
        }
    }

    pub fn from_name(s: &str) -> Option<Response> {
        Response::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `@severity(...)`, lowest first.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn from_name(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a policy is enforced: in the sensors' kernel maps (prevention, plus the
/// collector's evaluation after the fact) or only by the collector after the fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    Kernel,
    Collector,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Kernel => "kernel",
            Enforcement::Collector => "collector",
        }
    }
}

impl std::fmt::Display for Enforcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_eval;
