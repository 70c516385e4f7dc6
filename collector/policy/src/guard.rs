//! Pre-filter: which policies *may* match a request, decided in Rust from the
//! resource alone, so Cedar only evaluates those (most requests: none).
//!
//! A guard is the policy's conditions in disjunctive normal form (tolerant mode:
//! `unless` clauses skipped, tests not understood dropped), keeping the tests on the
//! resource, the principal (`principal == Agent::".."`, `principal.declared`,
//! `principal.owner == ".."`, ...) and the common tests of the chain context
//! (`context.depth >= 2`, the boolean flags, `context.task like ..`,
//! `context has root_human`, `context.root_human in Group::".."`, and their
//! negations). It is sound: when it says "no", every alternative has a test that is
//! false (or would error) for this request, so Cedar would not apply the policy
//! (if `A && B` or `A || B` is true, some alternative of its normal form has every
//! test true). Each test mirrors exactly how the request builder makes the entities
//! (ancestors, attributes) and the context ([`Facts`]); negated tests are only
//! formed over context tests, which are decided exactly.

use custody_proto::sensor::v1::Event;
use serde_json::Value;

use super::analysis::{Atom, Lit, Mode, PatElem, policy_dnf};
use super::cedar::{Facts, parent_dirs, parent_domains};
use super::context::ChainContext;
use super::request::{ActionRequest, Resource};

#[derive(Debug, Clone)]
pub(crate) struct Guard {
    alternatives: Vec<Vec<Atom>>,
}

impl Guard {
    /// None: the policy must always be evaluated.
    pub fn new(json: Option<&Value>) -> Option<Guard> {
        let d = policy_dnf(json?, Mode::Tolerant).ok()?;
        let mut alternatives = Vec::with_capacity(d.dnf.len());
        for conj in d.dnf {
            let kept: Vec<Atom> = conj
                .into_iter()
                .filter(|a| {
                    a.is_context()
                        || matches!(
                            a,
                            Atom::ResEq(..)
                                | Atom::ResIn(..)
                                | Atom::ResIs(_)
                                | Atom::Attr(..)
                                | Atom::AddrIn(_)
                                | Atom::Like(..)
                                | Atom::PrincipalEq(_)
                                | Atom::PrincipalAttr(..)
                        )
                })
                .collect();
            if kept.is_empty() {
                // An alternative with no test we can check: it may always hold.
                return None;
            }
            alternatives.push(kept);
        }
        Some(Guard { alternatives })
    }

    /// False only if the policy cannot match this request.
    pub fn may_match(
        &self,
        req: &ActionRequest,
        facts: &Facts,
        ctx: &ChainContext,
        ev: &Event,
    ) -> bool {
        self.alternatives.iter().any(|conj| {
            conj.iter().all(|a| match a {
                a if a.is_context() => {
                    matches!(context_test(a, facts, ctx), Tri::True | Tri::Unknown)
                }
                Atom::PrincipalAttr(attr, lit) => {
                    principal_attr(attr, req, ctx, ev).is_none_or(|v| v == *lit)
                }
                a => holds(a, &req.principal, &req.resource),
            })
        })
    }
}

/// An attribute of the principal's entity as the request builder makes it: the
/// agent's first occurrence on the path, else the event process's agent, else an
/// agent with empty attributes. None: not decided here.
fn principal_attr(attr: &str, req: &ActionRequest, ctx: &ChainContext, ev: &Event) -> Option<Lit> {
    let s = |v: &str| Some(Lit::Str(v.to_string()));
    if let Some(a) = ctx.agents.iter().find(|a| a.id == req.principal) {
        return match attr {
            "name" => s(&a.name),
            "owner" => s(&a.owner),
            "kind" => s(&a.kind),
            "declared" => Some(Lit::Bool(a.declared)),
            _ => None,
        };
    }
    let p = ev
        .process
        .as_ref()
        .filter(|p| !p.agent_id.is_empty() && p.agent_id == req.principal);
    match attr {
        "name" => s(p.map_or("", |p| p.agent_name.as_str())),
        "owner" => s(p.map_or("", |p| p.agent_owner.as_str())),
        "kind" => s(p.map_or("", |p| p.agent_kind.as_str())),
        "declared" => Some(Lit::Bool(p.is_some_and(|p| p.agent_kind == "declared"))),
        _ => None,
    }
}

/// The value of a context test as Cedar would compute it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    True,
    False,
    Error,
    Unknown,
}

impl From<bool> for Tri {
    fn from(b: bool) -> Tri {
        if b { Tri::True } else { Tri::False }
    }
}

/// Scalar context attributes, as the request builder sets them.
fn context_value(attr: &str, f: &Facts, ctx: &ChainContext) -> Option<Lit> {
    Some(match attr {
        "chain_id" => Lit::Str(ctx.chain_id.clone()),
        "task" => Lit::Str(ctx.task.clone()),
        "depth" => Lit::Long(f.depth),
        "agent_declared" => Lit::Bool(f.agent_declared),
        "credential_inherited" => Lit::Bool(f.credential_inherited),
        "root_scope_declared" => Lit::Bool(f.scope.is_some()),
        "in_root_scope" => Lit::Bool(f.scope.unwrap_or(true)),
        "succeeded" => Lit::Bool(f.succeeded),
        "context_incomplete" => Lit::Bool(f.incomplete),
        _ => return None,
    })
}

fn context_test(a: &Atom, f: &Facts, ctx: &ChainContext) -> Tri {
    match a {
        Atom::CtxCmp(attr, op, n) => match context_value(attr, f, ctx) {
            Some(Lit::Long(v)) => op.apply(v, *n).into(),
            _ => Tri::Unknown,
        },
        Atom::CtxEq(attr, lit) => match context_value(attr, f, ctx) {
            // `==` across types is false in Cedar, not an error.
            Some(v) => (v == *lit).into(),
            None => Tri::Unknown,
        },
        Atom::CtxLike(attr, pat) => match context_value(attr, f, ctx) {
            Some(Lit::Str(s)) => like(&s, pat).into(),
            _ => Tri::Unknown,
        },
        Atom::CtxHas(attr) => match attr.as_str() {
            "root_human" => ctx.root_human.is_some().into(),
            "credential" => f.has_credential.into(),
            "chain_id"
            | "task"
            | "depth"
            | "agents"
            | "root_agent"
            | "agent_declared"
            | "credential_inherited"
            | "root_scope_declared"
            | "in_root_scope"
            | "succeeded"
            | "context_incomplete"
            | "host" => Tri::True,
            _ => Tri::Unknown,
        },
        Atom::HumanIn(t, id) => match &ctx.root_human {
            None => Tri::Error,
            Some(h) => match t.as_str() {
                "Group" => h.groups.iter().any(|g| g == id).into(),
                "Human" => (h.id == *id).into(),
                _ => Tri::False,
            },
        },
        Atom::HumanEq(t, id) => match &ctx.root_human {
            None => Tri::Error,
            Some(h) => (t == "Human" && h.id == *id).into(),
        },
        Atom::Not(inner) => match context_test(inner, f, ctx) {
            Tri::True => Tri::False,
            Tri::False => Tri::True,
            t => t,
        },
        _ => Tri::Unknown,
    }
}

/// Whether a resource or principal test may hold (true when it cannot be decided).
fn holds(a: &Atom, principal: &str, r: &Resource) -> bool {
    match a {
        Atom::ResIs(t) => r.type_name() == t,
        Atom::ResEq(t, id) => r.type_name() == t && r.entity_id() == *id,
        Atom::ResIn(t, id) => {
            (r.type_name() == t && r.entity_id() == *id)
                || match (r, t.as_str()) {
                    (Resource::File { path }, "Dir") => {
                        path.starts_with('/') && parent_dirs(path).any(|d| d == id)
                    }
                    (
                        Resource::Endpoint {
                            host, addr: None, ..
                        },
                        "Domain",
                    ) if !host.is_empty() => parent_domains(host).any(|d| d == id),
                    _ => false,
                }
        }
        Atom::Attr(attr, lit) => match attr_value(r, attr) {
            Some(v) => v == *lit,
            None => true,
        },
        Atom::AddrIn(net) => match r {
            Resource::Endpoint { addr: Some(a), .. } => net.contains(a),
            Resource::Endpoint { addr: None, .. } => false,
            _ => true,
        },
        Atom::Like(attr, pat) => match attr_value(r, attr) {
            Some(Lit::Str(s)) => like(&s, pat),
            Some(_) => false,
            None => true,
        },
        Atom::PrincipalEq(id) => principal == id,
        _ => true,
    }
}

/// The value of a resource attribute as the request builder sets it; None when
/// not known here (then the test is not decided).
fn attr_value(r: &Resource, attr: &str) -> Option<Lit> {
    let s = |v: &str| Some(Lit::Str(v.to_string()));
    match (r, attr) {
        (Resource::File { path }, "path") => s(path),
        (Resource::File { path }, "name") => s(path.rsplit('/').next().unwrap_or_default()),
        (Resource::Endpoint { host, .. }, "host") => s(host),
        (Resource::Endpoint { port, .. }, "port") => Some(Lit::Long(i64::from(*port))),
        (Resource::Endpoint { protocol, .. }, "protocol") => s(protocol),
        (Resource::Tool { name, .. }, "name") => s(name),
        (Resource::Tool { server, .. }, "server") => s(server),
        (Resource::Model { provider, .. }, "provider") => s(provider),
        (Resource::Model { model, .. }, "name") => s(model),
        (Resource::Credential(c), "kind") => s(&c.kind),
        (Resource::Credential(c), "fingerprint") => s(&c.fingerprint),
        (Resource::Credential(c), "source") => s(&c.source),
        (Resource::Credential(c), "location") => s(&c.location),
        _ => None,
    }
}

/// Cedar `like`: literals and `*` (any run of characters), over the whole text.
///
/// Linear in the text for a given pattern, never backtracking: with only `*` as a
/// metacharacter, matching the literal runs between wildcards leftmost-first is
/// exact (a later match of a run can only leave less text for the runs after it).
/// A recursive matcher that retries every split point is exponential in the number
/// of wildcards, and one long path from an agent pinned the policy thread with it.
pub(crate) fn like(text: &str, pat: &[PatElem]) -> bool {
    // Literal runs between wildcards (adjacent literals joined).
    let mut runs: Vec<String> = vec![String::new()];
    for e in pat {
        match e {
            PatElem::Wildcard => runs.push(String::new()),
            PatElem::Literal(l) => runs.last_mut().expect("never empty").push_str(l),
        }
    }
    let (first, rest) = runs.split_first().expect("never empty");
    let Some((last, middle)) = rest.split_last() else {
        return text == first; // no wildcard
    };
    let Some(after_first) = text.strip_prefix(first.as_str()) else {
        return false;
    };
    let Some(mut window) = after_first.strip_suffix(last.as_str()) else {
        return false;
    };
    // The suffix must not overlap the prefix: strip_suffix on what follows the
    // prefix guarantees that. Middle runs in order, leftmost first.
    for run in middle {
        match window.find(run.as_str()) {
            Some(i) => window = &window[i + run.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<PatElem> {
        let mut out = Vec::new();
        for (i, part) in s.split('*').enumerate() {
            if i > 0 {
                out.push(PatElem::Wildcard);
            }
            if !part.is_empty() {
                out.push(PatElem::Literal(part.into()));
            }
        }
        out
    }

    #[test]
    fn like_matches_like_cedar() {
        assert!(like("/etc/cron.d/x", &p("/etc/cron*")));
        assert!(like("a.bad.org", &p("*.bad.org")));
        assert!(!like("bad.org", &p("*.bad.org")));
        assert!(like("abc", &p("a*c")));
        assert!(like("ac", &p("a*c")));
        assert!(!like("acb", &p("a*c")));
        assert!(like("x", &p("*")));
        assert!(like("", &p("*")));
        assert!(like("aXbYc", &p("a*b*c")));
        assert!(like("héllo", &p("h*o")));
        assert!(!like("abc", &p("abcd")));
        assert!(
            !like("ab", &p("ab*b")),
            "prefix and suffix must not overlap"
        );
        assert!(like("abb", &p("ab*b")));
        assert!(like("aaa", &p("a*a*a")));
        assert!(!like("aa", &p("a*a*a")));
        assert!(like("xyz", &p("**")));
        assert!(like("/a/b/c.csv", &p("*/b/*.csv")));
        assert!(!like("/a/b/c.csvx", &p("*/b/*.csv")));
    }

    /// The attack of the security review: a 19.5 KB path from an agent against a
    /// three-wildcard pattern. The backtracking matcher never returned; this one
    /// must answer (here it takes microseconds; the bound only keeps a regression
    /// from hanging the test run).
    #[test]
    fn a_long_path_against_many_wildcards_is_answered() {
        let path = format!("/{}", "a/".repeat(9_750));
        let pat = p("/*a*a*b/secret");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(like(&path, &pat));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(20));
        assert_eq!(got, Ok(false), "the matcher did not answer");
    }

    /// The linear matcher agrees with the obvious (exponential) definition on every
    /// short text over a small alphabet.
    #[test]
    fn like_agrees_with_the_definition_exhaustively() {
        fn reference(t: &[u8], p: &[u8]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some((b'*', r)) => (0..=t.len()).any(|i| reference(&t[i..], r)),
                Some((c, r)) => t.first() == Some(c) && reference(&t[1..], r),
            }
        }
        let words = |n: usize, alphabet: &[u8]| {
            let mut out = vec![Vec::new()];
            for _ in 0..n {
                let mut next = Vec::new();
                for w in &out {
                    for c in alphabet {
                        let mut w2: Vec<u8> = w.clone();
                        w2.push(*c);
                        next.push(w2);
                    }
                }
                out.extend(next);
                out.sort();
                out.dedup();
            }
            out
        };
        let texts = words(5, b"ab");
        let pats = words(4, b"ab*");
        for pat in &pats {
            let ps = String::from_utf8(pat.clone()).unwrap();
            for t in &texts {
                let ts = String::from_utf8(t.clone()).unwrap();
                assert_eq!(like(&ts, &p(&ps)), reference(t, pat), "{ts:?} like {ps:?}");
            }
        }
    }
}
