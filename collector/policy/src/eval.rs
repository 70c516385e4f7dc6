//! Evaluation: events in, decisions out.
//!
//! Speed. Cedar's authorizer evaluates every policy of the set it is given, and a
//! Cedar request needs its entities and context built. So:
//! 1. the set is sliced once, at construction, per action (the policies whose action
//!    and resource scope can apply to it);
//! 2. within the slice, each policy's [`Guard`] — its resource tests and
//!    `principal == Agent::".."`, read from its JSON form — picks the policies that
//!    *may* match, in Rust, without building anything;
//! 3. only if some may, the Cedar request is built (chain part prepared once per
//!    [`PreparedChain`]) and authorised against the base permit plus those policies
//!    (Cedar policy sets are cached per candidate list).
//!
//! The decision (allowed, denying policy ids, response, severity) is the one the
//! whole set gives: guards are sound (a policy left out cannot be satisfied by the
//! request). The only difference: evaluation errors of policies left out are not
//! reported (an erroring policy never applies anyway).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use cedar_policy::Authorizer;
use custody_proto::sensor::v1::Event;
use serde::{Deserialize, Serialize};

use super::cedar::{CedarRequest, ChainRef, Facts, PreparedChain};
use super::context::ChainContext;
use super::guard::Guard;
use super::load::PolicySet;
use super::request::ActionRequest;
use super::{Action, Response, Severity};

/// The outcome of one Custody action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub action: Action,
    /// Agent id of the principal ("" when unattributed).
    pub principal: String,
    /// The resource as a Cedar uid, e.g. `File::"/data/hr/salaries.csv"`.
    pub resource: String,
    pub allowed: bool,
    /// Ids of the forbid policies that denied it (sorted).
    pub denied_by: Vec<String>,
    /// Strongest `@response` among `denied_by` (None when allowed).
    pub response: Option<Response>,
    /// Highest `@severity` among `denied_by` (None when allowed).
    pub severity: Option<Severity>,
    /// Evaluation errors (a policy that errored did not apply) and problems building
    /// the request, as text.
    pub diagnostics: Vec<String>,
    /// The request was built from partial context.
    pub context_incomplete: bool,
}

#[derive(Debug)]
struct Entry {
    /// Index in `PolicySet::policies`.
    index: u16,
    principal_eq: Option<String>,
    guard: Option<Guard>,
}

/// Candidate sets beyond this many are not cached (cleared and rebuilt).
const CACHE_LIMIT: usize = 4096;

/// Evaluates events against a policy set. Cheap to clone and share between threads.
#[derive(Debug, Clone)]
pub struct Evaluator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    set: PolicySet,
    /// Per action: the policies that can apply to it.
    slices: Vec<Vec<Entry>>,
    authorizer: Authorizer,
    /// Policy id → (response, severity).
    meta: HashMap<String, (Response, Severity)>,
    cache: RwLock<HashMap<Vec<u16>, Arc<cedar_policy::PolicySet>>>,
}

impl Evaluator {
    pub fn new(set: &PolicySet) -> Evaluator {
        assert!(
            set.policies.len() <= usize::from(u16::MAX),
            "at most 65535 policies"
        );
        let slices = Action::ALL
            .iter()
            .map(|a| {
                let bit = 1u16 << a.index();
                set.policies
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.mask & bit != 0)
                    .map(|(i, p)| Entry {
                        index: i as u16,
                        principal_eq: p.principal_eq.clone(),
                        guard: p.guard.clone(),
                    })
                    .collect()
            })
            .collect();
        Evaluator {
            inner: Arc::new(Inner {
                set: set.clone(),
                slices,
                authorizer: Authorizer::new(),
                meta: set
                    .policies
                    .iter()
                    .map(|p| (p.info.id.clone(), (p.info.response, p.info.severity)))
                    .collect(),
                cache: RwLock::new(HashMap::new()),
            }),
        }
    }

    pub fn policies(&self) -> &PolicySet {
        &self.inner.set
    }

    /// Decisions for one event in its chain: one per Custody action the event stands
    /// for (none for events that are not actions).
    pub fn evaluate(&self, ctx: &ChainContext, ev: &Event) -> Vec<Decision> {
        let (scope, parts) = (OnceLock::new(), OnceLock::new());
        let chain = ChainRef {
            ctx,
            scope: &scope,
            parts: &parts,
        };
        self.evaluate_in(chain, ev)
    }

    /// [`Evaluator::evaluate`] with the chain part prepared once for many events.
    pub fn evaluate_prepared(&self, chain: &PreparedChain, ev: &Event) -> Vec<Decision> {
        self.evaluate_in(chain.view(), ev)
    }

    fn evaluate_in(&self, chain: ChainRef<'_>, ev: &Event) -> Vec<Decision> {
        super::request::requests_for(ev, chain.ctx)
            .into_iter()
            .map(|req| {
                let facts = chain.facts(ev, &req);
                let candidates = self.candidates(&req, &facts, chain.ctx, ev);
                if candidates.is_empty() {
                    allowed(req, Vec::new(), facts.incomplete)
                } else {
                    let r = chain.cedar_request(ev, req, &facts);
                    self.authorize(&r, candidates)
                }
            })
            .collect()
    }

    /// Authorises one Cedar request (e.g. from [`super::cedar_requests`]) against
    /// the policies that can apply to its action — without the pre-filter, which
    /// needs the chain context.
    pub fn decide(&self, r: &CedarRequest) -> Decision {
        let candidates = self.inner.slices[r.action.action.index()]
            .iter()
            .filter(|e| {
                e.principal_eq
                    .as_ref()
                    .is_none_or(|p| *p == r.action.principal)
            })
            .map(|e| e.index)
            .collect();
        self.authorize(r, candidates)
    }

    /// Indices of the policies that may match the request.
    fn candidates(
        &self,
        req: &ActionRequest,
        facts: &Facts,
        ctx: &ChainContext,
        ev: &Event,
    ) -> Vec<u16> {
        self.inner.slices[req.action.index()]
            .iter()
            .filter(|e| {
                e.principal_eq.as_ref().is_none_or(|p| *p == req.principal)
                    && e.guard
                        .as_ref()
                        .is_none_or(|g| g.may_match(req, facts, ctx, ev))
            })
            .map(|e| e.index)
            .collect()
    }

    fn policy_set(&self, candidates: Vec<u16>) -> Arc<cedar_policy::PolicySet> {
        let inner = &*self.inner;
        if let Some(s) = inner
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&candidates)
        {
            return s.clone();
        }
        let mut s = cedar_policy::PolicySet::new();
        s.add(inner.set.base.clone())
            .expect("fresh set accepts the base permit");
        for &i in &candidates {
            s.add(inner.set.policies[usize::from(i)].policy.clone())
                .expect("policy ids are unique");
        }
        let s = Arc::new(s);
        let mut cache = inner.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(candidates, s.clone());
        s
    }

    fn authorize(&self, r: &CedarRequest, candidates: Vec<u16>) -> Decision {
        let inner = &*self.inner;
        let set = self.policy_set(candidates);
        let resp = inner
            .authorizer
            .is_authorized(&r.request, &set, &r.entities);
        let allowed = resp.decision() == cedar_policy::Decision::Allow;
        let mut denied_by: Vec<String> = if allowed {
            Vec::new()
        } else {
            resp.diagnostics()
                .reason()
                .map(|id| id.to_string())
                .collect()
        };
        denied_by.sort();
        let mut response = None;
        let mut severity = None;
        for id in &denied_by {
            if let Some((r, s)) = inner.meta.get(id) {
                response = response.max(Some(*r));
                severity = severity.max(Some(*s));
            }
        }
        let mut diagnostics = r.problems.clone();
        diagnostics.extend(resp.diagnostics().errors().map(|e| e.to_string()));
        Decision {
            action: r.action.action,
            principal: r.action.principal.clone(),
            resource: r.action.resource.uid_text(),
            allowed,
            denied_by,
            response,
            severity,
            diagnostics,
            context_incomplete: r.incomplete,
        }
    }
}

fn allowed(req: ActionRequest, diagnostics: Vec<String>, incomplete: bool) -> Decision {
    Decision {
        action: req.action,
        resource: req.resource.uid_text(),
        principal: req.principal,
        allowed: true,
        denied_by: Vec::new(),
        response: None,
        severity: None,
        diagnostics,
        context_incomplete: incomplete,
    }
}
