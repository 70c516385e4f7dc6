//! Reading a policy's Cedar JSON form (`Policy::to_json`) into disjunctive normal
//! form over simple tests ("atoms"). Shared by kernel compilation (which needs every
//! test understood) and the evaluator's pre-filter (which only needs the resource
//! tests it understands; anything else counts as "may hold").

use std::net::IpAddr;

use serde_json::Value;

use super::context::IpNet;

/// Upper bound on the alternatives one policy may expand to.
const MAX_CONJUNCTIONS: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Str(String),
    Long(i64),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PatElem {
    Wildcard,
    Literal(String),
}

/// One test of a conjunction.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Atom {
    /// `resource == T::"id"`
    ResEq(String, String),
    /// `resource in T::"id"`
    ResIn(String, String),
    /// `resource is T`
    ResIs(String),
    /// `resource.attr == literal`
    Attr(String, Lit),
    /// `resource.addr == ip(..)` / `resource.addr.isInRange(ip(..))`
    AddrIn(IpNet),
    /// `resource.attr like "..."`
    Like(String, Vec<PatElem>),
    /// `resource has attr`
    Has,
    /// `principal == Agent::"id"`
    PrincipalEq(String),
    /// `principal.attr == literal` (a bare `principal.attr`: == true; negated: == false)
    PrincipalAttr(String, Lit),
    /// `context.<attr> <op> <long>` (`<`, `<=`, `>`, `>=`, `==`, `!=`).
    CtxCmp(String, CmpOp, i64),
    /// `context.<attr> == literal`; a bare `context.<attr>` is `== true`.
    CtxEq(String, Lit),
    /// `context.<attr> like "..."`
    CtxLike(String, Vec<PatElem>),
    /// `context has <attr>`
    CtxHas(String),
    /// `context.root_human in T::"id"`
    HumanIn(String, String),
    /// `context.root_human == T::"id"`
    HumanEq(String, String),
    /// Negation of a context test (`!`, `!=`).
    Not(Box<Atom>),
    /// Anything else (tolerant mode only), with why it is not understood.
    Unknown(String),
}

impl Atom {
    /// A test of the chain context (decided per request by the evaluator's
    /// pre-filter; never compiled for sensors).
    pub fn is_context(&self) -> bool {
        matches!(
            self,
            Atom::CtxCmp(..)
                | Atom::CtxEq(..)
                | Atom::CtxLike(..)
                | Atom::CtxHas(_)
                | Atom::HumanIn(..)
                | Atom::HumanEq(..)
                | Atom::Not(_)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl CmpOp {
    fn parse(op: &str) -> Option<CmpOp> {
        Some(match op {
            "<" => CmpOp::Lt,
            "<=" => CmpOp::Le,
            ">" => CmpOp::Gt,
            ">=" => CmpOp::Ge,
            "==" => CmpOp::Eq,
            "!=" => CmpOp::Ne,
            _ => return None,
        })
    }

    /// `a op b` ⇔ `b flipped(op) a`.
    fn flipped(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            o => o,
        }
    }

    pub fn apply(self, a: i64, b: i64) -> bool {
        match self {
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
        }
    }
}

/// Strict: every test must be understood (kernel compilation). Tolerant: tests
/// that are not become [`Atom::Unknown`] and `unless` clauses are skipped (they only
/// narrow a policy) — for a sound over-approximation of when a policy may match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Strict,
    Tolerant,
}

/// A policy's scope and conditions.
#[derive(Debug, Clone)]
pub(crate) struct PolicyDnf {
    /// `principal == Agent::"id"` in the scope.
    pub principal_agent: Option<String>,
    /// Alternatives, each a conjunction of atoms (the resource scope included).
    pub dnf: Vec<Vec<Atom>>,
}

/// Reads a policy (JSON form) into [`PolicyDnf`], or why it cannot (strict mode).
pub(crate) fn policy_dnf(v: &Value, mode: Mode) -> Result<PolicyDnf, String> {
    let mut principal_agent = None;
    let pr = &v["principal"];
    match pr["op"].as_str() {
        Some("All") => {}
        Some("==") if pr["entity"]["type"] == "Agent" => {
            principal_agent = pr["entity"]["id"].as_str().map(str::to_string);
        }
        Some("is") if pr.get("in").is_none() && pr["entity_type"] == "Agent" => {}
        _ if mode == Mode::Tolerant => {}
        _ => {
            return Err(format!(
                "principal scope {}: only `principal`, `principal is Agent` and `principal == Agent::\"..\"` compile",
                render_scope("principal", pr)
            ));
        }
    }
    let mut scope_atoms = Vec::new();
    let rs = &v["resource"];
    match rs["op"].as_str() {
        Some("All") => {}
        Some("==") => scope_atoms.push(entity_atom(&rs["entity"], Atom::ResEq)?),
        Some("in") => match rs.get("entity") {
            Some(e) => scope_atoms.push(entity_atom(e, Atom::ResIn)?),
            None => return Err("resource scope `in` a slot".into()),
        },
        Some("is") => {
            let t = rs["entity_type"].as_str().unwrap_or_default().to_string();
            scope_atoms.push(Atom::ResIs(t));
            if let Some(e) = rs.get("in") {
                scope_atoms.push(entity_atom(&e["entity"], Atom::ResIn)?);
            }
        }
        _ => return Err("unsupported resource scope".into()),
    }
    let mut dnf: Vec<Vec<Atom>> = vec![scope_atoms];
    for c in v["conditions"].as_array().into_iter().flatten() {
        if c["kind"] != "when" {
            if mode == Mode::Tolerant {
                continue;
            }
            return Err(format!(
                "`unless {{ {} }}`: sensors match positive resource tests only",
                render(&c["body"])
            ));
        }
        dnf = and(dnf, to_dnf(&c["body"], mode)?)?;
    }
    Ok(PolicyDnf {
        principal_agent,
        dnf,
    })
}

pub(crate) fn and(a: Vec<Vec<Atom>>, b: Vec<Vec<Atom>>) -> Result<Vec<Vec<Atom>>, String> {
    if a.len().saturating_mul(b.len()) > MAX_CONJUNCTIONS {
        return Err(format!(
            "conditions expand to more than {MAX_CONJUNCTIONS} alternatives"
        ));
    }
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in &a {
        for y in &b {
            let mut c = x.clone();
            c.extend(y.iter().cloned());
            out.push(c);
        }
    }
    Ok(out)
}

/// Disjunctive normal form of a condition, or why it does not compile.
fn to_dnf(e: &Value, mode: Mode) -> Result<Vec<Vec<Atom>>, String> {
    if let Some(x) = e.get("&&") {
        return and(to_dnf(&x["left"], mode)?, to_dnf(&x["right"], mode)?);
    }
    if let Some(x) = e.get("||") {
        let mut l = to_dnf(&x["left"], mode)?;
        l.extend(to_dnf(&x["right"], mode)?);
        if l.len() > MAX_CONJUNCTIONS {
            return Err(format!(
                "conditions expand to more than {MAX_CONJUNCTIONS} alternatives"
            ));
        }
        return Ok(l);
    }
    match e.get("Value").and_then(Value::as_bool) {
        Some(true) => return Ok(vec![vec![]]),
        Some(false) => return Ok(vec![]),
        None => {}
    }
    // resource in [A, B] / [1, 2].contains(resource.port): alternatives.
    if let Some(x) = e.get("in")
        && is_var(&x["left"], "resource")
        && let Some(set) = x["right"].get("Set").and_then(Value::as_array)
    {
        return set
            .iter()
            .map(|el| {
                Ok(vec![entity_atom(
                    entity_of(el).ok_or_else(|| unsupported(e))?,
                    Atom::ResIn,
                )?])
            })
            .collect();
    }
    if let Some(x) = e.get("contains")
        && let Some(set) = x["left"].get("Set").and_then(Value::as_array)
        && let Some(attr) = attr_of(&x["right"], "resource")
    {
        if let Some(alts) = set
            .iter()
            .map(|el| lit_of(el).map(|l| vec![Atom::Attr(attr.to_string(), l)]))
            .collect::<Option<Vec<_>>>()
        {
            return Ok(alts);
        }
    }
    match (atom(e), mode) {
        // Chain context is not known to sensors.
        (Ok(a), Mode::Strict) if a.is_context() => Err(unsupported(e)),
        (Ok(a), _) => Ok(vec![vec![a]]),
        (Err(why), Mode::Tolerant) => Ok(vec![vec![Atom::Unknown(why)]]),
        (Err(why), Mode::Strict) => Err(why),
    }
}

/// A test of the chain context, if `e` is one the pre-filter understands.
fn context_atom(e: &Value) -> Option<Atom> {
    let Value::Object(m) = e else { return None };
    let (op, x) = m.iter().next()?;
    if let Some(cmp) = CmpOp::parse(op) {
        for (a, b, c) in [
            (&x["left"], &x["right"], cmp),
            (&x["right"], &x["left"], cmp.flipped()),
        ] {
            if is_ctx_human(a) {
                let ent = entity_of(b)?;
                let (t, id) = (ent["type"].as_str()?, ent["id"].as_str()?);
                return match c {
                    CmpOp::Eq => Some(Atom::HumanEq(t.into(), id.into())),
                    CmpOp::Ne => Some(Atom::Not(Box::new(Atom::HumanEq(t.into(), id.into())))),
                    _ => None,
                };
            }
            if let Some(attr) = attr_of(a, "context") {
                let lit = lit_of(b)?;
                return match (lit, c) {
                    (Lit::Long(n), c) => Some(Atom::CtxCmp(attr.to_string(), c, n)),
                    (l, CmpOp::Eq) => Some(Atom::CtxEq(attr.to_string(), l)),
                    (l, CmpOp::Ne) => Some(Atom::Not(Box::new(Atom::CtxEq(attr.to_string(), l)))),
                    _ => None,
                };
            }
        }
        return None;
    }
    match op.as_str() {
        "." if is_var(&x["left"], "context") => Some(Atom::CtxEq(
            x["attr"].as_str()?.to_string(),
            Lit::Bool(true),
        )),
        "!" => match context_atom(&x["arg"])? {
            Atom::Not(inner) => Some(*inner),
            a => Some(Atom::Not(Box::new(a))),
        },
        "has" if is_var(&x["left"], "context") => {
            Some(Atom::CtxHas(x["attr"].as_str()?.to_string()))
        }
        "like" => {
            let attr = attr_of(&x["left"], "context")?;
            Some(Atom::CtxLike(attr.to_string(), pattern(&x["pattern"])?))
        }
        "in" if is_ctx_human(&x["left"]) => {
            let ent = entity_of(&x["right"])?;
            Some(Atom::HumanIn(
                ent["type"].as_str()?.to_string(),
                ent["id"].as_str()?.to_string(),
            ))
        }
        _ => None,
    }
}

/// `context.root_human`
fn is_ctx_human(e: &Value) -> bool {
    attr_of(e, "context") == Some("root_human")
}

/// A `like` pattern (JSON form): literals merged.
fn pattern(pat: &Value) -> Option<Vec<PatElem>> {
    let mut p = Vec::new();
    for el in pat.as_array()? {
        match el {
            Value::String(w) if w == "Wildcard" => p.push(PatElem::Wildcard),
            v => {
                let s = v.get("Literal")?.as_str()?;
                match p.last_mut() {
                    Some(PatElem::Literal(l)) => l.push_str(s),
                    _ => p.push(PatElem::Literal(s.to_string())),
                }
            }
        }
    }
    Some(p)
}

fn atom(e: &Value) -> Result<Atom, String> {
    if let Some(a) = context_atom(e) {
        return Ok(a);
    }
    if let Some(x) = e.get("==") {
        for (a, b) in [(&x["left"], &x["right"]), (&x["right"], &x["left"])] {
            if let Some(attr) = attr_of(a, "resource") {
                if attr == "addr"
                    && let Some(net) = ip_call(b)
                {
                    return Ok(Atom::AddrIn(net));
                }
                if let Some(l) = lit_of(b) {
                    return Ok(Atom::Attr(attr.to_string(), l));
                }
            }
            if let Some(attr) = attr_of(a, "principal")
                && let Some(l) = lit_of(b)
            {
                return Ok(Atom::PrincipalAttr(attr.to_string(), l));
            }
            if is_var(a, "resource")
                && let Some(ent) = entity_of(b)
            {
                return entity_atom(ent, Atom::ResEq);
            }
            if is_var(a, "principal")
                && let Some(ent) = entity_of(b)
                && ent["type"] == "Agent"
            {
                return Ok(Atom::PrincipalEq(
                    ent["id"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    if let Some(args) = e.get("isInRange").and_then(Value::as_array)
        && args.len() == 2
        && attr_of(&args[0], "resource") == Some("addr")
        && let Some(net) = ip_call(&args[1])
    {
        return Ok(Atom::AddrIn(net));
    }
    if let Some(x) = e.get("in")
        && is_var(&x["left"], "resource")
        && let Some(ent) = entity_of(&x["right"])
    {
        return entity_atom(ent, Atom::ResIn);
    }
    if let Some(x) = e.get("is")
        && is_var(&x["left"], "resource")
        && x.get("in").is_none()
    {
        return Ok(Atom::ResIs(
            x["entity_type"].as_str().unwrap_or_default().to_string(),
        ));
    }
    if let Some(x) = e.get("like")
        && let Some(attr) = attr_of(&x["left"], "resource")
    {
        let p = pattern(&x["pattern"]).ok_or_else(|| unsupported(e))?;
        return Ok(Atom::Like(attr.to_string(), p));
    }
    if let Some(x) = e.get("has")
        && is_var(&x["left"], "resource")
    {
        return Ok(Atom::Has);
    }
    if let Some(attr) = attr_of(e, "principal") {
        return Ok(Atom::PrincipalAttr(attr.to_string(), Lit::Bool(true)));
    }
    if let Some(x) = e.get("!")
        && let Some(attr) = attr_of(&x["arg"], "principal")
    {
        return Ok(Atom::PrincipalAttr(attr.to_string(), Lit::Bool(false)));
    }
    Err(unsupported(e))
}

/// "host:port" / "[v6]:port" / "host" / "a.b.c.d:port".
pub(crate) fn split_endpoint_id(id: &str) -> (String, Option<u16>) {
    if let Some(rest) = id.strip_prefix('[')
        && let Some((a, tail)) = rest.split_once(']')
    {
        return (
            a.to_string(),
            tail.strip_prefix(':').and_then(|p| p.parse().ok()),
        );
    }
    if id.parse::<IpAddr>().is_ok() {
        return (id.to_string(), None);
    }
    match id.rsplit_once(':') {
        Some((h, p)) => match p.parse() {
            Ok(p) => (h.to_string(), Some(p)),
            Err(_) => (id.to_string(), None),
        },
        None => (id.to_string(), None),
    }
}

pub(crate) fn is_var(e: &Value, name: &str) -> bool {
    e.get("Var").and_then(Value::as_str) == Some(name)
}

/// `<var>.<attr>` → attr.
pub(crate) fn attr_of<'a>(e: &'a Value, var: &str) -> Option<&'a str> {
    let x = e.get(".")?;
    is_var(&x["left"], var)
        .then(|| x["attr"].as_str())
        .flatten()
}

pub(crate) fn lit_of(e: &Value) -> Option<Lit> {
    match e.get("Value")? {
        Value::String(s) => Some(Lit::Str(s.clone())),
        Value::Bool(b) => Some(Lit::Bool(*b)),
        Value::Number(n) => n.as_i64().map(Lit::Long),
        _ => None,
    }
}

/// An entity literal: {"Value": {"__entity": {"type", "id"}}} (or a bare {"type", "id"}).
pub(crate) fn entity_of(e: &Value) -> Option<&Value> {
    let v = e.get("Value").unwrap_or(e);
    let ent = v.get("__entity").unwrap_or(v);
    (ent.get("type").is_some() && ent.get("id").is_some()).then_some(ent)
}

pub(crate) fn entity_atom(ent: &Value, f: fn(String, String) -> Atom) -> Result<Atom, String> {
    let ent = entity_of(ent).ok_or("entity reference expected")?;
    Ok(f(
        ent["type"].as_str().unwrap_or_default().to_string(),
        ent["id"].as_str().unwrap_or_default().to_string(),
    ))
}

/// `ip("...")` → its network.
pub(crate) fn ip_call(e: &Value) -> Option<IpNet> {
    let args = e.get("ip")?.as_array()?;
    IpNet::parse(args.first()?.get("Value")?.as_str()?)
}

/// Why a condition does not compile: the first chain-context or principal reference
/// it makes, else the condition itself.
pub(crate) fn unsupported(e: &Value) -> String {
    if let Some(attr) = find_var_attr(e, "context") {
        return format!(
            "uses context.{attr} — chain context (depth, root human, task, path, scope) exists only in the collector"
        );
    }
    if let Some(attr) = find_var_attr(e, "principal") {
        return format!(
            "uses principal.{attr} in `{}` — only equality tests of the agent's name, owner, kind and declared compile",
            render(e)
        );
    }
    format!(
        "condition `{}` is not a resource test sensors can make",
        render(e)
    )
}

pub(crate) fn find_var_attr(e: &Value, var: &str) -> Option<String> {
    if let Some(a) = attr_of(e, var) {
        return Some(a.to_string());
    }
    if is_var(e, var) {
        return Some("*".into());
    }
    match e {
        Value::Object(m) => m.values().find_map(|v| find_var_attr(v, var)),
        Value::Array(a) => a.iter().find_map(|v| find_var_attr(v, var)),
        _ => None,
    }
}

pub(crate) fn render_scope(var: &str, s: &Value) -> String {
    match s["op"].as_str() {
        Some("All") => var.to_string(),
        Some(op) => {
            let ent = s.get("entity").and_then(entity_of).map(render_entity);
            let ty = s.get("entity_type").and_then(Value::as_str);
            match (ty, ent) {
                (Some(t), _) => format!("`{var} is {t}`"),
                (None, Some(e)) => format!("`{var} {op} {e}`"),
                _ => format!("`{var} {op} ...`"),
            }
        }
        None => var.to_string(),
    }
}

pub(crate) fn render_entity(e: &Value) -> String {
    format!(
        "{}::{:?}",
        e["type"].as_str().unwrap_or_default(),
        e["id"].as_str().unwrap_or_default()
    )
}

/// Compact Cedar-like text of an expression in JSON form (for messages).
pub(crate) fn render(e: &Value) -> String {
    const BIN: [&str; 13] = [
        "==", "!=", "<", "<=", ">", ">=", "&&", "||", "in", "+", "-", "*", "contains",
    ];
    let Some(m) = e.as_object() else {
        return e.to_string();
    };
    let Some((k, v)) = m.iter().next() else {
        return e.to_string();
    };
    match k.as_str() {
        "Var" => v.as_str().unwrap_or_default().to_string(),
        "Value" => match entity_of(e) {
            Some(ent) => render_entity(ent),
            None => v.to_string(),
        },
        "." => format!(
            "{}.{}",
            render(&v["left"]),
            v["attr"].as_str().unwrap_or("")
        ),
        "has" => format!(
            "{} has {}",
            render(&v["left"]),
            v["attr"].as_str().unwrap_or("")
        ),
        "!" => format!("!{}", render(&v["arg"])),
        "like" => format!("{} like ...", render(&v["left"])),
        "Set" => format!(
            "[{}]",
            v.as_array()
                .into_iter()
                .flatten()
                .map(render)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        op if BIN.contains(&op) && v.get("left").is_some() => {
            format!("{} {op} {}", render(&v["left"]), render(&v["right"]))
        }
        f @ ("ip" | "decimal" | "datetime" | "duration") => format!(
            "{f}({})",
            v.as_array()
                .into_iter()
                .flatten()
                .map(render)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        f => match v.as_array() {
            Some(args) if !args.is_empty() => {
                let a: Vec<String> = args.iter().map(render).collect();
                format!("{}.{f}({})", a[0], a[1..].join(", "))
            }
            _ => e.to_string(),
        },
    }
}
