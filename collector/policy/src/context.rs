//! What the collector knows about the chain an event belongs to, as the policy
//! engine consumes it, and declared scopes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use custody_proto::sensor::v1::{Credential, Process};
use serde::{Deserialize, Serialize};

use super::request::Resource;

/// The chain an action event belongs to. The collector fills it from its chain index
/// (the path from the chain root to the event's process); any part may be unknown —
/// set [`ChainContext::incomplete`] when what is known is partial.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChainContext {
    /// Chain id (exec id of the chain's root process); "" when unknown.
    pub chain_id: String,
    /// The human the chain acts for.
    pub root_human: Option<HumanInfo>,
    /// Task / intent text of the root (e.g. the first user prompt), "" when unknown.
    pub task: String,
    /// Agent hops from the human: the root agent is 1, an agent it hands work to is
    /// 2, that agent's MCP tool server 3, ... (0 when unknown).
    pub depth: u32,
    /// Agents on the path from the chain root down to the acting agent, root first,
    /// the acting agent last (consecutive processes of one agent count once).
    pub agents: Vec<AgentInfo>,
    /// Host of the event ("" = take it from the event).
    pub host: String,
    /// Credential the acting process is using, when known (e.g. the API key of the
    /// connection an `llm_call` went over). A `use_credential` event brings its own.
    pub credential: Option<CredentialInfo>,
    /// Fingerprints of the credentials the acting agent was given by its parent: those
    /// its upstream agents held (environment at exec, files, headers) before it ran.
    pub inherited_credentials: Vec<String>,
    /// Agent id of the process the acting process hangs from (its upstream in the
    /// chain), when that is a *different* agent: an `exec` of the acting agent is then
    /// also a `delegate` from that agent to this one.
    pub delegated_by: Option<String>,
    /// The caller knows the chain is partial (root not seen yet, a host missing, ...).
    pub incomplete: bool,
}

/// The human principal at the root of a chain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HumanInfo {
    /// Login user name or delegated subject (JWT `sub`).
    pub id: String,
    /// Groups the human belongs to (Cedar `Group::"<name>"` parents).
    pub groups: Vec<String>,
    /// "login" or "delegation".
    pub via: String,
}

/// An agent on a chain's path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub id: String,
    pub name: String,
    pub owner: String,
    /// Declared in a sensor's config (as opposed to discovered by behaviour).
    pub declared: bool,
    /// "declared", "discovered" or "".
    pub kind: String,
    /// Declared scope entries (see [`Scope`]).
    pub scope: Vec<String>,
}

impl AgentInfo {
    /// The agent a sensor event's process is attributed to, if any.
    pub fn from_process(p: &Process) -> Option<AgentInfo> {
        if p.agent_id.is_empty() {
            return None;
        }
        Some(AgentInfo {
            id: p.agent_id.clone(),
            name: p.agent_name.clone(),
            owner: p.agent_owner.clone(),
            declared: p.agent_kind == "declared",
            kind: p.agent_kind.clone(),
            scope: parse_scope(&p.agent_scope),
        })
    }
}

/// A credential, by fingerprint and non-secret metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CredentialInfo {
    pub kind: String,
    /// "hmac-sha256:<hex>".
    pub fingerprint: String,
    /// "env", "file" or "header".
    pub source: String,
    pub location: String,
    /// Non-secret metadata (Cedar entity tags).
    pub metadata: BTreeMap<String, String>,
}

impl CredentialInfo {
    pub fn from_proto(c: &Credential) -> CredentialInfo {
        CredentialInfo {
            kind: c.kind.clone(),
            fingerprint: c.fingerprint.clone(),
            source: c.source.clone(),
            location: c.location.clone(),
            metadata: c
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

impl ChainContext {
    /// The first agent of the chain.
    pub fn root_agent(&self) -> Option<&AgentInfo> {
        self.agents.first()
    }

    /// The last agent of the path (the one the event's process belongs to).
    pub fn acting_agent(&self) -> Option<&AgentInfo> {
        self.agents.last()
    }
}

/// Splits a declared scope string (a sensor config's `scope = "..."`, as carried in
/// `Process.agent_scope`) into entries: separated by commas, semicolons or blanks.
pub fn parse_scope(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// A declared scope, compiled for matching. Entries:
/// - `/path`: a directory prefix (the directory and everything below it);
/// - `tool:<name>`: an MCP tool; `model:<provider>` or `model:<provider>/<model>`;
/// - anything else is an endpoint: `host`, `*.domain` (the domain and its
///   subdomains), an IP address or CIDR (`10.0.0.0/8`), each optionally with
///   `:<port>` (`[v6]:port` for IPv6 addresses).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    pub dirs: Vec<String>,
    pub endpoints: Vec<EndpointPattern>,
    pub tools: Vec<String>,
    pub models: Vec<String>,
}

/// A host part of an endpoint pattern.
#[derive(Debug, Clone, PartialEq)]
pub enum HostPattern {
    /// This DNS name (case-insensitive).
    Exact(String),
    /// This domain and every name below it.
    Domain(String),
    /// Addresses in this network.
    Net(IpNet),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointPattern {
    pub host: HostPattern,
    pub port: Option<u16>,
}

impl Scope {
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Scope {
        let mut s = Scope::default();
        for e in entries {
            let e = e.as_ref().trim();
            if e.is_empty() {
                continue;
            }
            if e.starts_with('/') {
                s.dirs.push(normalize_path(e));
            } else if let Some(t) = e.strip_prefix("tool:") {
                s.tools.push(t.to_string());
            } else if let Some(m) = e.strip_prefix("model:") {
                s.models.push(m.to_ascii_lowercase());
            } else if let Some(p) = EndpointPattern::parse(e) {
                s.endpoints.push(p);
            }
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
            && self.endpoints.is_empty()
            && self.tools.is_empty()
            && self.models.is_empty()
    }

    /// Whether the resource lies in this scope; `None` when the scope declares nothing
    /// for this kind of resource (credentials and agents are never scoped).
    pub fn contains(&self, r: &Resource) -> Option<bool> {
        match r {
            Resource::File { path } => {
                (!self.dirs.is_empty()).then(|| self.dirs.iter().any(|d| path_under(path, d)))
            }
            Resource::Endpoint {
                host, addr, port, ..
            } => {
                // Only patterns this endpoint can be checked against count: a bare
                // address (a connect) is not "outside" a scope of host names.
                let mut usable = self.endpoints.iter().filter(|p| match p.host {
                    HostPattern::Net(_) => addr.is_some() || host.parse::<IpAddr>().is_ok(),
                    HostPattern::Exact(_) | HostPattern::Domain(_) => !host.is_empty(),
                });
                let first = usable.next()?;
                Some(
                    std::iter::once(first)
                        .chain(usable)
                        .any(|p| p.matches(host, addr.as_ref(), *port)),
                )
            }
            Resource::Tool { name, .. } => {
                (!self.tools.is_empty()).then(|| self.tools.iter().any(|t| t == name))
            }
            Resource::Model { provider, model } => (!self.models.is_empty()).then(|| {
                let provider = provider.to_ascii_lowercase();
                let full = format!("{provider}/{}", model.to_ascii_lowercase());
                self.models.iter().any(|m| *m == provider || *m == full)
            }),
            Resource::Credential(_) | Resource::Agent { .. } => None,
        }
    }
}

impl EndpointPattern {
    pub fn parse(e: &str) -> Option<EndpointPattern> {
        let e = e.trim();
        if let Ok(ip) = e.parse::<IpAddr>() {
            return Some(EndpointPattern {
                host: HostPattern::Net(IpNet::host(ip)),
                port: None,
            });
        }
        // "[v6]:port" / "[v6]"
        if let Some(rest) = e.strip_prefix('[') {
            let (addr, tail) = rest.split_once(']')?;
            let port = match tail.strip_prefix(':') {
                Some(p) => Some(p.parse().ok()?),
                None if tail.is_empty() => None,
                None => return None,
            };
            return Some(EndpointPattern {
                host: HostPattern::Net(IpNet::parse(addr)?),
                port,
            });
        }
        let (hostpart, port) = match e.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                (h, Some(p.parse().ok()?))
            }
            _ => (e, None),
        };
        let host = if let Some(net) = IpNet::parse(hostpart) {
            HostPattern::Net(net)
        } else if let Some(d) = hostpart.strip_prefix("*.").or(hostpart.strip_prefix('.')) {
            HostPattern::Domain(d.to_ascii_lowercase())
        } else if !hostpart.is_empty() && !hostpart.contains('/') {
            HostPattern::Exact(hostpart.to_ascii_lowercase())
        } else {
            return None;
        };
        Some(EndpointPattern { host, port })
    }

    /// Port 0 (unknown, e.g. a DNS query) matches any port.
    pub fn matches(&self, host: &str, addr: Option<&IpAddr>, port: u16) -> bool {
        if let Some(p) = self.port
            && port != 0
            && p != port
        {
            return false;
        }
        match &self.host {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
            HostPattern::Domain(d) => domain_of(host, d),
            HostPattern::Net(n) => addr
                .copied()
                .or_else(|| host.parse().ok())
                .is_some_and(|a| n.contains(&a)),
        }
    }
}

/// `host` is `domain` or a name below it (case-insensitive).
pub(crate) fn domain_of(host: &str, domain: &str) -> bool {
    let (h, d) = (host.as_bytes(), domain.as_bytes());
    if h.len() == d.len() {
        return h.eq_ignore_ascii_case(d);
    }
    h.len() > d.len()
        && h[h.len() - d.len() - 1] == b'.'
        && h[h.len() - d.len()..].eq_ignore_ascii_case(d)
}

/// `path` is `dir` or below it (both normalised).
pub(crate) fn path_under(path: &str, dir: &str) -> bool {
    dir == "/"
        || path == dir
        || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

/// Lexical normalisation of an absolute path: repeated slashes, "." and ".." are
/// resolved, no trailing slash ("/" stays "/"). Relative paths are returned cleaned
/// but relative.
pub(crate) fn normalize_path(p: &str) -> String {
    let abs = p.starts_with('/');
    let needs = p.contains("//")
        || p.contains("/./")
        || p.contains("/../")
        || p.ends_with("/.")
        || p.ends_with("/..")
        || p.starts_with("./")
        || p.starts_with("../")
        || (p.len() > 1 && p.ends_with('/'));
    if !needs {
        return p.to_string();
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !abs {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    if abs { format!("/{joined}") } else { joined }
}

/// An IP network (address and prefix length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn host(addr: IpAddr) -> IpNet {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        IpNet { addr, prefix }
    }

    /// "a.b.c.d", "a.b.c.d/n", "v6", "v6/n".
    pub fn parse(s: &str) -> Option<IpNet> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse().ok().filter(|n| *n <= max)?,
            None => max,
        };
        Some(IpNet { addr, prefix })
    }

    pub fn contains(&self, a: &IpAddr) -> bool {
        let a = match a {
            IpAddr::V6(v6) if self.addr.is_ipv4() => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            a => *a,
        };
        match (self.addr, a) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}
