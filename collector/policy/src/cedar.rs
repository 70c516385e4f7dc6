//! From Custody actions to Cedar requests and entities.
//!
//! The chain part (human, agents on the path, the credential in use, the constant
//! context fields) is built once per [`ChainContext`] in a [`PreparedChain`]; each
//! request adds only its resource (and, when they are not on the path, its
//! principal and credential).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{LazyLock, OnceLock};

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
};
use custody_proto::sensor::v1::Event;

use super::Action;
use super::context::{AgentInfo, ChainContext, CredentialInfo, Scope};
use super::request::{ActionRequest, Resource, requests_for};

struct Types {
    human: EntityTypeName,
    group: EntityTypeName,
    host: EntityTypeName,
    agent: EntityTypeName,
    credential: EntityTypeName,
    dir: EntityTypeName,
    file: EntityTypeName,
    domain: EntityTypeName,
    endpoint: EntityTypeName,
    tool: EntityTypeName,
    model: EntityTypeName,
    actions: Vec<EntityUid>,
}

static TYPES: LazyLock<Types> = LazyLock::new(|| {
    let t = |s: &str| {
        s.parse::<EntityTypeName>()
            .expect("constant, valid entity type name")
    };
    let action = t("Action");
    Types {
        human: t("Human"),
        group: t("Group"),
        host: t("Host"),
        agent: t("Agent"),
        credential: t("Credential"),
        dir: t("Dir"),
        file: t("File"),
        domain: t("Domain"),
        endpoint: t("Endpoint"),
        tool: t("Tool"),
        model: t("Model"),
        actions: Action::ALL
            .iter()
            .map(|a| EntityUid::from_type_name_and_id(action.clone(), EntityId::new(a.as_str())))
            .collect(),
    }
});

fn uid(t: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id))
}

pub(crate) fn action_uid(a: Action) -> EntityUid {
    TYPES.actions[a.index()].clone()
}

fn s(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_string())
}

fn agent_entity(a: &AgentInfo) -> Result<Entity, String> {
    let attrs: HashMap<String, RestrictedExpression> = [
        ("name".to_string(), s(&a.name)),
        ("owner".to_string(), s(&a.owner)),
        ("kind".to_string(), s(&a.kind)),
        (
            "declared".to_string(),
            RestrictedExpression::new_bool(a.declared),
        ),
        (
            "scope".to_string(),
            RestrictedExpression::new_set(a.scope.iter().map(|e| s(e))),
        ),
    ]
    .into();
    Entity::new(uid(&TYPES.agent, &a.id), attrs, HashSet::new()).map_err(|e| e.to_string())
}

fn credential_entity(c: &CredentialInfo) -> Result<Entity, String> {
    let attrs = [
        ("kind".to_string(), s(&c.kind)),
        ("fingerprint".to_string(), s(&c.fingerprint)),
        ("source".to_string(), s(&c.source)),
        ("location".to_string(), s(&c.location)),
    ];
    let tags = c.metadata.iter().map(|(k, v)| (k.clone(), s(v)));
    Entity::new_with_tags(
        uid(&TYPES.credential, &c.fingerprint),
        attrs,
        std::iter::empty(),
        tags,
    )
    .map_err(|e| e.to_string())
}

/// Parent directories of an absolute path, nearest first ("/a/b/c" → "/a/b", "/a", "/").
pub(crate) fn parent_dirs(path: &str) -> impl Iterator<Item = &str> {
    let mut cur = Some(path);
    std::iter::from_fn(move || {
        let p = cur?;
        let parent = match p.rfind('/') {
            Some(0) if p.len() > 1 => "/",
            Some(0) | None => {
                cur = None;
                return None;
            }
            Some(i) => &p[..i],
        };
        cur = (parent != "/").then_some(parent);
        Some(parent)
    })
}

/// Directories a file's entity lists as its parents, at most. Each parent's id is a
/// prefix of the path, so listing all of them costs the square of the path's length
/// (a 120 KB path of one-letter components is 3.6 GB); policies name directories
/// near the root (`resource in Dir::"/data/hr"`), so the ones kept are the nearest
/// to the root, and a deeper path is reported as a problem of the request.
pub const MAX_DIR_DEPTH: usize = 64;

/// The parent directories a file entity lists (at most [`MAX_DIR_DEPTH`], nearest
/// the root), and how many the path has.
pub(crate) fn file_parents(path: &str) -> (HashSet<EntityUid>, usize) {
    if !path.starts_with('/') {
        return (HashSet::new(), 0);
    }
    let total = parent_dirs(path).count();
    let parents = parent_dirs(path)
        .skip(total.saturating_sub(MAX_DIR_DEPTH))
        .map(|d| uid(&TYPES.dir, d))
        .collect();
    (parents, total)
}

/// "a.b.c" → "a.b.c", "b.c", "c".
pub(crate) fn parent_domains(host: &str) -> impl Iterator<Item = &str> {
    let mut cur = Some(host);
    std::iter::from_fn(move || {
        let h = cur?;
        cur = h
            .split_once('.')
            .map(|(_, rest)| rest)
            .filter(|r| !r.is_empty());
        Some(h)
    })
}

fn resource_entity(r: &Resource) -> Result<Option<Entity>, String> {
    let e = match r {
        Resource::File { path } => {
            let name = path.rsplit('/').next().unwrap_or_default();
            let (parents, _) = file_parents(path);
            let attrs: HashMap<String, RestrictedExpression> =
                [("path".to_string(), s(path)), ("name".to_string(), s(name))].into();
            Entity::new(uid(&TYPES.file, path), attrs, parents)
        }
        Resource::Endpoint {
            host,
            addr,
            port,
            protocol,
        } => {
            let mut attrs: HashMap<String, RestrictedExpression> = [
                ("host".to_string(), s(host)),
                (
                    "port".to_string(),
                    RestrictedExpression::new_long(i64::from(*port)),
                ),
                ("protocol".to_string(), s(protocol)),
            ]
            .into();
            if let Some(a) = addr {
                attrs.insert("addr".into(), RestrictedExpression::new_ip(ip_text(a)));
            }
            let parents: HashSet<EntityUid> = if host.is_empty() || addr.is_some() {
                HashSet::new()
            } else {
                parent_domains(host)
                    .map(|d| uid(&TYPES.domain, d))
                    .collect()
            };
            Entity::new(uid(&TYPES.endpoint, &r.entity_id()), attrs, parents)
        }
        Resource::Tool { name, server } => Entity::new(
            uid(&TYPES.tool, name),
            HashMap::from([
                ("name".to_string(), s(name)),
                ("server".to_string(), s(server)),
            ]),
            HashSet::new(),
        ),
        Resource::Model { provider, model } => Entity::new(
            uid(&TYPES.model, &r.entity_id()),
            HashMap::from([
                ("provider".to_string(), s(provider)),
                ("name".to_string(), s(model)),
            ]),
            HashSet::new(),
        ),
        // Added by the caller (they may already be on the path / in the chain).
        Resource::Credential(_) | Resource::Agent { .. } => return Ok(None),
    };
    e.map(Some).map_err(|e| e.to_string())
}

fn ip_text(a: &IpAddr) -> String {
    a.to_string()
}

fn resource_uid(r: &Resource) -> EntityUid {
    let t = match r {
        Resource::File { .. } => &TYPES.file,
        Resource::Endpoint { .. } => &TYPES.endpoint,
        Resource::Tool { .. } => &TYPES.tool,
        Resource::Model { .. } => &TYPES.model,
        Resource::Credential(_) => &TYPES.credential,
        Resource::Agent { .. } => &TYPES.agent,
    };
    uid(t, &r.entity_id())
}

/// A request ready for Cedar, with the Custody action it came from.
#[derive(Debug, Clone)]
pub struct CedarRequest {
    pub action: ActionRequest,
    pub request: Request,
    pub entities: Entities,
    /// `context.context_incomplete` of this request.
    pub incomplete: bool,
    /// Problems building it (an entity Cedar refused); the request is still built
    /// from the rest.
    pub problems: Vec<String>,
}

/// The Cedar parts of a chain: human and path agents as entities, the credential
/// in use, the request-independent context pairs.
#[derive(Debug, Clone)]
pub(crate) struct Parts {
    /// Human and the agents on the path.
    entities: Entities,
    path_agents: HashSet<String>,
    credential: Option<Entity>,
    /// Context pairs that do not depend on the request.
    base: Vec<(String, RestrictedExpression)>,
    problems: Vec<String>,
}

impl Parts {
    fn new(ctx: &ChainContext) -> Parts {
        let mut problems = Vec::new();
        let mut list = Vec::new();
        let mut path_agents = HashSet::new();
        for a in &ctx.agents {
            if path_agents.insert(a.id.clone()) {
                match agent_entity(a) {
                    Ok(e) => list.push(e),
                    Err(e) => problems.push(format!("agent {:?}: {e}", a.id)),
                }
            }
        }
        if let Some(h) = &ctx.root_human {
            let groups: HashSet<EntityUid> =
                h.groups.iter().map(|g| uid(&TYPES.group, g)).collect();
            match Entity::new(
                uid(&TYPES.human, &h.id),
                HashMap::from([("via".to_string(), s(&h.via))]),
                groups,
            ) {
                Ok(e) => list.push(e),
                Err(e) => problems.push(format!("human {:?}: {e}", h.id)),
            }
        }
        let entities = Entities::from_entities(list, None).unwrap_or_else(|e| {
            problems.push(format!("chain entities: {e}"));
            Entities::empty()
        });
        let credential = ctx
            .credential
            .as_ref()
            .and_then(|c| match credential_entity(c) {
                Ok(e) => Some(e),
                Err(e) => {
                    problems.push(format!("credential: {e}"));
                    None
                }
            });
        let depth = depth_of(ctx);
        let mut base = vec![
            ("chain_id".to_string(), s(&ctx.chain_id)),
            ("task".to_string(), s(&ctx.task)),
            ("depth".to_string(), RestrictedExpression::new_long(depth)),
            (
                "agents".to_string(),
                RestrictedExpression::new_set(
                    ctx.agents
                        .iter()
                        .map(|a| RestrictedExpression::new_entity_uid(uid(&TYPES.agent, &a.id))),
                ),
            ),
        ];
        if let Some(h) = &ctx.root_human {
            base.push((
                "root_human".to_string(),
                RestrictedExpression::new_entity_uid(uid(&TYPES.human, &h.id)),
            ));
        }
        Parts {
            entities,
            path_agents,
            credential,
            base,
            problems,
        }
    }
}

/// `context.depth`: the caller's, else the number of agents on the path.
fn depth_of(ctx: &ChainContext) -> i64 {
    if ctx.depth > 0 {
        i64::from(ctx.depth)
    } else {
        ctx.agents.len() as i64
    }
}

/// The chain part of requests, built once per [`ChainContext`] (e.g. once per
/// process and chain version in the collector) and reused for each of its events.
/// The Cedar entities are built on first use only (most requests are decided by
/// the evaluator's pre-filter without them).
#[derive(Debug, Clone)]
pub struct PreparedChain {
    ctx: ChainContext,
    scope: OnceLock<Scope>,
    parts: OnceLock<Parts>,
}

impl PreparedChain {
    pub fn new(ctx: &ChainContext) -> PreparedChain {
        PreparedChain {
            ctx: ctx.clone(),
            scope: OnceLock::new(),
            parts: OnceLock::new(),
        }
    }

    pub fn context(&self) -> &ChainContext {
        &self.ctx
    }

    pub(crate) fn view(&self) -> ChainRef<'_> {
        ChainRef {
            ctx: &self.ctx,
            scope: &self.scope,
            parts: &self.parts,
        }
    }

    /// The Cedar requests for one event of this chain.
    pub fn requests(&self, ev: &Event) -> Vec<CedarRequest> {
        self.view().requests(ev)
    }

    /// One Custody action as a Cedar request with its entities.
    pub fn cedar_request(&self, ev: &Event, req: ActionRequest) -> CedarRequest {
        let v = self.view();
        let facts = v.facts(ev, &req);
        v.cedar_request(ev, req, &facts)
    }
}

/// The request-dependent values of the Cedar context, computed once per request
/// and used both by the evaluator's pre-filter and to build the context.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Facts {
    pub depth: i64,
    pub agent_declared: bool,
    pub has_credential: bool,
    pub credential_inherited: bool,
    /// Root scope: None = declares nothing for this kind of resource.
    pub scope: Option<bool>,
    pub succeeded: bool,
    pub incomplete: bool,
}

/// A chain context with its lazily built parts, borrowed: what both
/// [`PreparedChain`] and a one-off evaluation use.
#[derive(Clone, Copy)]
pub(crate) struct ChainRef<'a> {
    pub ctx: &'a ChainContext,
    pub scope: &'a OnceLock<Scope>,
    pub parts: &'a OnceLock<Parts>,
}

impl<'a> ChainRef<'a> {
    fn parts(&self) -> &'a Parts {
        self.parts.get_or_init(|| Parts::new(self.ctx))
    }

    fn root_scope(&self) -> &'a Scope {
        self.scope
            .get_or_init(|| Scope::parse(self.ctx.root_agent().map_or(&[][..], |a| &a.scope[..])))
    }

    pub fn requests(&self, ev: &Event) -> Vec<CedarRequest> {
        requests_for(ev, self.ctx)
            .into_iter()
            .map(|r| {
                let facts = self.facts(ev, &r);
                self.cedar_request(ev, r, &facts)
            })
            .collect()
    }

    /// The request-dependent context values.
    pub fn facts(&self, ev: &Event, req: &ActionRequest) -> Facts {
        let ctx = self.ctx;
        let depth = depth_of(ctx);
        // The principal's declared flag: from the path (the first occurrence, as in
        // the entities), else the event's process.
        let agent_declared = match ctx.agents.iter().find(|a| a.id == req.principal) {
            Some(a) => a.declared,
            None => ev.process.as_ref().is_some_and(|p| {
                !p.agent_id.is_empty() && p.agent_id == req.principal && p.agent_kind == "declared"
            }),
        };
        let cred = req.credential.as_ref().or(ctx.credential.as_ref());
        Facts {
            depth,
            agent_declared,
            has_credential: cred.is_some(),
            credential_inherited: cred.is_none_or(|c| self.inherited(c)),
            scope: self.root_scope().contains(&req.resource),
            succeeded: req.succeeded,
            incomplete: ctx.incomplete
                || req.incomplete
                || ctx.root_human.is_none()
                || ctx.agents.is_empty()
                || depth == 0,
        }
    }

    /// Whether a credential counts as given to the acting agent by its parent.
    fn inherited(&self, c: &CredentialInfo) -> bool {
        c.source == "env" || self.ctx.inherited_credentials.contains(&c.fingerprint)
    }

    /// One Custody action as a Cedar request with its entities.
    pub fn cedar_request(&self, ev: &Event, req: ActionRequest, facts: &Facts) -> CedarRequest {
        let parts = self.parts();
        let mut problems = parts.problems.clone();
        let mut add: Vec<Entity> = Vec::with_capacity(3);
        // Principal: from the path, else the event's process, else a bare agent.
        let from_event = || {
            ev.process
                .as_ref()
                .and_then(AgentInfo::from_process)
                .filter(|a| a.id == req.principal)
        };
        let mut added_agents: HashSet<&str> = HashSet::new();
        if !parts.path_agents.contains(&req.principal) {
            let info = from_event().unwrap_or_else(|| AgentInfo {
                id: req.principal.clone(),
                ..AgentInfo::default()
            });
            match agent_entity(&info) {
                Ok(e) => add.push(e),
                Err(e) => problems.push(format!("principal: {e}")),
            }
            added_agents.insert(&req.principal);
        }
        if let Resource::Agent { id } = &req.resource
            && !parts.path_agents.contains(id)
            && !added_agents.contains(id.as_str())
        {
            match agent_entity(&AgentInfo {
                id: id.clone(),
                ..AgentInfo::default()
            }) {
                Ok(e) => add.push(e),
                Err(e) => problems.push(format!("resource: {e}")),
            }
        }
        if let Resource::File { path } = &req.resource
            && path.starts_with('/')
        {
            let depth = parent_dirs(path).count();
            if depth > MAX_DIR_DEPTH {
                problems.push(format!(
                    "resource: the path has {depth} parent directories; only the \
                     {MAX_DIR_DEPTH} nearest the root are its Dir parents"
                ));
            }
        }
        match resource_entity(&req.resource) {
            Ok(Some(e)) => add.push(e),
            Ok(None) => {}
            Err(e) => problems.push(format!("resource: {e}")),
        }
        // Credential: the request's own, else the chain's credential in use.
        let cred_info = req.credential.as_ref().or(self.ctx.credential.as_ref());
        match &req.credential {
            Some(c) => match credential_entity(c) {
                Ok(e) => add.push(e),
                Err(e) => problems.push(format!("credential: {e}")),
            },
            None => add.extend(parts.credential.clone()),
        }
        let Facts {
            agent_declared,
            credential_inherited,
            scope,
            succeeded,
            incomplete,
            ..
        } = *facts;
        let host = if self.ctx.host.is_empty() {
            ev.host.as_str()
        } else {
            self.ctx.host.as_str()
        };
        let root_agent = self
            .ctx
            .root_agent()
            .map_or(req.principal.as_str(), |a| a.id.as_str());

        let mut pairs = parts.base.clone();
        pairs.extend([
            (
                "root_agent".to_string(),
                RestrictedExpression::new_entity_uid(uid(&TYPES.agent, root_agent)),
            ),
            (
                "agent_declared".to_string(),
                RestrictedExpression::new_bool(agent_declared),
            ),
            (
                "credential_inherited".to_string(),
                RestrictedExpression::new_bool(credential_inherited),
            ),
            (
                "root_scope_declared".to_string(),
                RestrictedExpression::new_bool(scope.is_some()),
            ),
            (
                "in_root_scope".to_string(),
                RestrictedExpression::new_bool(scope.unwrap_or(true)),
            ),
            (
                "succeeded".to_string(),
                RestrictedExpression::new_bool(succeeded),
            ),
            (
                "context_incomplete".to_string(),
                RestrictedExpression::new_bool(incomplete),
            ),
            (
                "host".to_string(),
                RestrictedExpression::new_entity_uid(uid(&TYPES.host, host)),
            ),
        ]);
        if let Some(c) = cred_info {
            pairs.push((
                "credential".to_string(),
                RestrictedExpression::new_entity_uid(uid(&TYPES.credential, &c.fingerprint)),
            ));
        }
        let context = Context::from_pairs(pairs).unwrap_or_else(|e| {
            problems.push(format!("context: {e}"));
            Context::empty()
        });
        let entities = parts
            .entities
            .clone()
            .add_entities(add, None)
            .unwrap_or_else(|e| {
                problems.push(format!("entities: {e}"));
                parts.entities.clone()
            });
        // Without a schema, building a request cannot fail.
        let request = Request::new(
            uid(&TYPES.agent, &req.principal),
            action_uid(req.action),
            resource_uid(&req.resource),
            context,
            None,
        )
        .expect("a request without a schema always builds");
        CedarRequest {
            action: req,
            request,
            entities,
            incomplete,
            problems,
        }
    }
}

/// The Cedar requests (with their entities) for one event in its chain: the pure
/// request-construction function. [`PreparedChain`] is the same, amortised over
/// the events of one chain.
pub fn cedar_requests(ctx: &ChainContext, ev: &Event) -> Vec<CedarRequest> {
    PreparedChain::new(ctx).requests(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents() {
        let d: Vec<&str> = parent_dirs("/data/hr/salaries.csv").collect();
        assert_eq!(d, ["/data/hr", "/data", "/"]);
        assert_eq!(parent_dirs("/x").collect::<Vec<_>>(), ["/"]);
        assert_eq!(parent_dirs("/").count(), 0);
        let h: Vec<&str> = parent_domains("api.openai.com").collect();
        assert_eq!(h, ["api.openai.com", "openai.com", "com"]);
    }

    #[test]
    fn a_deep_path_lists_a_bounded_set_of_parents_nearest_the_root() {
        // 120 KB of one-letter components: 61,440 parent directories.
        let path = "/a".repeat(61_440);
        let (parents, total) = file_parents(&path);
        assert_eq!(total, 61_440);
        assert_eq!(parents.len(), MAX_DIR_DEPTH);
        assert!(parents.contains(&uid(&TYPES.dir, "/")));
        assert!(parents.contains(&uid(&TYPES.dir, &"/a".repeat(MAX_DIR_DEPTH - 1))));
        assert!(!parents.contains(&uid(&TYPES.dir, &"/a".repeat(MAX_DIR_DEPTH))));
        let (p, n) = file_parents("/data/hr/salaries.csv");
        assert_eq!((p.len(), n), (3, 3));
    }

    #[test]
    fn a_120_kb_path_builds_a_bounded_request_and_says_so() {
        use custody_proto::sensor::v1::{FileAccess, FileOpen, Process, event::Kind};
        let path = "/a".repeat(61_440);
        let ev = Event {
            host: "h".into(),
            process: Some(Process {
                exec_id: "h:1:1".into(),
                agent_id: "coder".into(),
                ..Default::default()
            }),
            kind: Some(Kind::FileOpen(FileOpen {
                path: path.clone(),
                result: 3,
                access: FileAccess::Read.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let reqs = cedar_requests(&ChainContext::default(), &ev);
        assert!(!reqs.is_empty());
        for r in &reqs {
            let ancestors = r
                .entities
                .ancestors(&uid(&TYPES.file, &path))
                .expect("the file is an entity")
                .count();
            assert_eq!(ancestors, MAX_DIR_DEPTH);
            assert!(r.entities.len() < 10, "{}", r.entities.len());
            assert!(
                r.problems
                    .iter()
                    .any(|p| p.contains("61440 parent directories")),
                "{:?}",
                r.problems
            );
        }
    }
}
