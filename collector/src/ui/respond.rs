//! Response from the UI: a confirmation that states the blast radius (hosts and
//! processes affected, computed from the chain / agent / credential data) and asks
//! for a reason; the action page with per-host confirmations and timings, live; and
//! the list of actions with the audit trail.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use custody_proto::admin::v1::{self as admin, RespondRequest, respond_request::Target};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Nav, PER_PAGE, badge, csrf, ms, pager, short, state_badge, when};
use super::session::Op;
use super::{FormData, Params, Seg, Ui, UiError, enc, link};
use crate::auth::Role;
use crate::clock::now_ns;
use crate::engine::State as EngineState;
use crate::response::{Issuer, ResponseError, resolve};

/// The verbs a page offers for a target: kill, and quarantine or (when one is in
/// force) release.
pub fn offered(ui: &Ui, scope: &str, target: &str) -> Vec<(&'static str, &'static str)> {
    let quarantined = ui
        .responder
        .list(usize::MAX, true)
        .iter()
        .any(|a| a.kind == "quarantine" && a.scope == scope && a.target == target);
    let kill = match scope {
        "chain" => "Kill chain",
        "agent" => "Kill agent",
        _ => "Kill process",
    };
    vec![
        ("kill", kill),
        if quarantined {
            ("release", "Release quarantine")
        } else {
            ("quarantine", "Quarantine")
        },
    ]
}

fn valid(verb: &str, scope: &str) -> bool {
    matches!(
        (verb, scope),
        (
            "kill" | "quarantine" | "release",
            "process" | "agent" | "chain"
        ) | ("release", "action")
            | ("revoke", "credential")
    )
}

fn target_of(scope: &str, t: String) -> Target {
    match scope {
        "process" => Target::Process(t),
        "agent" => Target::Agent(t),
        "chain" => Target::Chain(t),
        "credential" => Target::Credential(t),
        _ => Target::Action(t),
    }
}

pub fn target_link(scope: &str, target: &str) -> Markup {
    match scope {
        "process" => layout::process_link(target),
        "agent" => layout::agent_link(target),
        "chain" => layout::chain_link(target),
        "credential" => layout::cred_link(target),
        "action" => layout::action_link(target),
        _ => html! { code { (target) } },
    }
}

struct Proc {
    exec: String,
    comm: String,
    agent: String,
}

/// Who an action reaches: per host, the live processes it acts on now.
struct Blast {
    hosts: BTreeMap<String, Vec<Proc>>,
    notes: Vec<String>,
}

fn proc_of(st: &EngineState, exec: &str) -> Option<(String, Proc)> {
    let n = st.chains.node(exec)?;
    (n.exited_ns == 0).then(|| {
        (
            n.host.clone(),
            Proc {
                exec: exec.to_string(),
                comm: n.process.comm.clone(),
                agent: n.process.agent_id.clone(),
            },
        )
    })
}

/// `roots` and their live descendants on the same host (fork and stdio links: what a
/// sensor kills with its process).
fn with_descendants(st: &EngineState, roots: &[String]) -> Vec<String> {
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, n) in st.chains.nodes() {
        if let Some(u) = &n.upstream
            && (u.kind == "fork" || u.kind == "stdio")
        {
            children.entry(u.exec_id.as_str()).or_default().push(id);
        }
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut todo: Vec<String> = roots.to_vec();
    while let Some(x) = todo.pop() {
        if !seen.insert(x.clone()) {
            continue;
        }
        for c in children.get(x.as_str()).into_iter().flatten() {
            todo.push(c.to_string());
        }
    }
    let mut v: Vec<String> = seen.into_iter().collect();
    v.sort();
    v
}

fn blast(ui: &Ui, scope: &str, target: &str) -> Result<Blast, UiError> {
    let st_err = |e: ResponseError| UiError::from_response(&e);
    let mut b = Blast {
        hosts: BTreeMap::new(),
        notes: vec![],
    };
    let add = |b: &mut Blast, st: &EngineState, ids: &[String]| {
        for e in ids {
            if let Some((h, p)) = proc_of(st, e) {
                b.hosts.entry(h).or_default().push(p);
            }
        }
    };
    if scope == "action" {
        let a = ui
            .responder
            .get(target)
            .ok_or_else(|| UiError::not_found(format!("no action {target:?}")))?;
        if a.kind != "quarantine" || !a.active {
            return Err(UiError::new(
                axum::http::StatusCode::CONFLICT,
                "Refused",
                format!(
                    "action {target} is not a quarantine in force (kind {}, active {})",
                    a.kind, a.active
                ),
            ));
        }
        let st = ui.engine.read();
        for d in &a.hosts {
            b.hosts.entry(d.host.clone()).or_default();
            let ids: Vec<String> = d
                .targets
                .iter()
                .chain(&d.affected_exec_ids)
                .cloned()
                .collect();
            add(&mut b, &st, &ids);
        }
        return Ok(b);
    }
    let st = ui.engine.read();
    let r = match scope {
        "process" => resolve::process(&st, target, now_ns()).map_err(st_err)?,
        "chain" => resolve::chain(&st, target).map_err(st_err)?,
        "agent" => resolve::agent(&st, target).map_err(st_err)?,
        _ => resolve::credential(&st, target, false).map_err(st_err)?,
    };
    b.notes = r.notes;
    for h in r.hosts.keys() {
        b.hosts.entry(h.clone()).or_default();
    }
    let ids: Vec<String> = match scope {
        "process" => with_descendants(&st, &[target.to_string()]),
        "chain" => r.hosts.values().flatten().cloned().collect(),
        "agent" => {
            let mine: Vec<String> = st
                .chains
                .nodes()
                .filter(|(_, n)| n.process.agent_id == target)
                .map(|(k, _)| k.clone())
                .collect();
            with_descendants(&st, &mine)
        }
        _ => st
            .fleet
            .creds
            .get(target)
            .map(|c| c.held_by.iter().chain(&c.used_by).cloned().collect())
            .unwrap_or_default(),
    };
    let mut ids = ids;
    ids.sort();
    ids.dedup();
    add(&mut b, &st, &ids);
    Ok(b)
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ConfirmQuery {
    verb: String,
    scope: String,
    target: String,
}

fn verb_phrase(verb: &str, scope: &str) -> &'static str {
    match (verb, scope) {
        ("kill", "chain") => "Kill this chain on every host",
        ("kill", "agent") => "Kill this agent on every host",
        ("kill", _) => "Kill this process",
        ("quarantine", _) => "Quarantine: cut the network (all but the collector)",
        ("release", _) => "Release the quarantine",
        _ => "Revoke this credential fleet-wide",
    }
}

pub async fn confirm(
    State(ui): State<Arc<Ui>>,
    op: Op,
    Params(q): Params<ConfirmQuery>,
) -> Result<Response, UiError> {
    op.require(
        &ui,
        Role::Responder,
        &format!("{} (confirmation page)", q.verb),
    )?;
    if !valid(&q.verb, &q.scope) {
        return Err(UiError::bad_request(format!(
            "{:?} cannot target a {:?}: kill/quarantine take a process, agent or chain; \
             release also takes an action; revoke takes a credential",
            q.verb, q.scope
        )));
    }
    if q.target.trim().is_empty() {
        return Err(UiError::bad_request("no target named"));
    }
    let b = blast(&ui, &q.scope, &q.target)?;
    let procs: usize = b.hosts.values().map(Vec::len).sum();
    let offline: Vec<&String> = b
        .hosts
        .keys()
        .filter(|h| !ui.engine.is_connected(h))
        .collect();
    let back = match q.scope.as_str() {
        "process" => format!("/processes/{}", enc(&q.target)),
        "agent" => format!("/agents/{}", enc(&q.target)),
        "chain" => format!("/chains/{}", enc(&q.target)),
        "credential" => format!("/credentials/{}", enc(&q.target)),
        _ => format!("/actions/{}", enc(&q.target)),
    };
    let effect = match q.verb.as_str() {
        "kill" => format!(
            "kills {procs} live process(es) on {} host(s) (and what they spawn); kills \
             follow the {} for 10 minutes, so processes that join later die too.",
            b.hosts.len(),
            q.scope
        ),
        "quarantine" => format!(
            "cuts the network of {procs} live process(es) on {} host(s), except towards \
             the collector, until released; new processes of the {} are quarantined too.",
            b.hosts.len(),
            q.scope
        ),
        "release" => format!(
            "lifts the quarantine on {} host(s) ({procs} live process(es)).",
            b.hosts.len()
        ),
        _ => format!(
            "sends the revocation to all {} enrolled host(s); {procs} live process(es) hold or \
             used it now; any process that shows it later is stopped on sight.",
            b.hosts.len()
        ),
    };
    let body = html! {
        h1 { (verb_phrase(&q.verb, &q.scope)) "?" }
        p { "Target: " (q.scope) " " (target_link(&q.scope, &q.target)) }
        section.blast aria-labelledby="blast-h" {
            h2 #blast-h { "Blast radius" }
            p.blast-summary data-hosts=(b.hosts.len()) data-processes=(procs) { "This " (effect) }
            @if !offline.is_empty() {
                p.warn { (offline.len()) " host(s) offline (" (offline.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", "))
                    "): they get the command when they reconnect." }
            }
            @for n in &b.notes { p.note { (n) } }
            table.blast-hosts {
                thead { tr { th scope="col" { "Host" } th scope="col" { "Sensor" } th scope="col" { "Processes affected now" } } }
                tbody { @for (h, ps) in &b.hosts { tr data-host=(h) data-processes=(ps.len()) {
                    th scope="row" { (layout::host_link(h)) }
                    td { @if ui.engine.is_connected(h) { (badge("connected", "good")) } @else { (badge("offline", "bad")) } }
                    td { @if ps.is_empty() { span.muted { "none known now" } }
                        ul.plain { @for p in ps.iter().take(20) { li { (layout::process_link(&p.exec)) " " (p.comm)
                            @if !p.agent.is_empty() { " " span.muted { "(" (p.agent) ")" } } } } }
                        @if ps.len() > 20 { span.muted { "+" (ps.len() - 20) " more" } } }
                } } }
            }
        }
        form.confirm method="post" action="/respond" {
            (csrf(&op))
            input type="hidden" name="verb" value=(q.verb);
            input type="hidden" name="scope" value=(q.scope);
            input type="hidden" name="target" value=(q.target);
            @if q.verb == "revoke" {
                fieldset {
                    legend { "Processes that hold it" }
                    label { input type="radio" name="revoke_mode" value="kill" checked; " kill them" }
                    label { input type="radio" name="revoke_mode" value="quarantine"; " quarantine them" }
                }
            }
            label for="reason" { "Reason (goes to the audit log)" }
            textarea #reason name="reason" required maxlength="1000" rows="3" {}
            div.actions {
                button.danger type="submit" { "Confirm: " (q.verb) " " (q.scope) }
                a.button.secondary href=(back) { "Cancel" }
            }
        }
    };
    Ok(layout::page(&op, Nav::Actions, "Confirm", None, body))
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RespondForm {
    csrf: String,
    verb: String,
    scope: String,
    target: String,
    reason: String,
    revoke_mode: String,
}

pub async fn respond(
    State(ui): State<Arc<Ui>>,
    op: Op,
    FormData(f): FormData<RespondForm>,
) -> Result<Response, UiError> {
    op.check_csrf(&f.csrf)?;
    op.require(&ui, Role::Responder, &f.verb)?;
    if !valid(&f.verb, &f.scope) {
        return Err(UiError::bad_request(format!(
            "{:?} cannot target a {:?}",
            f.verb, f.scope
        )));
    }
    if f.reason.len() > 1000 {
        return Err(UiError::bad_request("reason too long (1000 bytes at most)"));
    }
    let req = RespondRequest {
        verb: f.verb.clone(),
        target: Some(target_of(&f.scope, f.target.clone())),
        reason: f.reason.clone(),
        revoke_mode: f.revoke_mode.clone(),
        allow_unknown: false,
    };
    let who = Issuer {
        name: op.name.clone(),
        role: op.role.as_str().into(),
    };
    match ui.responder.respond(who, req).await {
        Ok(a) => Ok(Redirect::to(&format!("/actions/{}", enc(&a.id))).into_response()),
        Err(e) => {
            let _ = ui.engine.audit(admin::AuditEntry {
                actor: op.name.clone(),
                role: op.role.as_str().into(),
                action: f.verb,
                target: f.target,
                reason: f.reason,
                result: format!("refused: {e} (web UI)"),
                ..Default::default()
            });
            Err(UiError::from_response(&e))
        }
    }
}

fn slowest(a: &admin::Action) -> u64 {
    a.hosts.iter().map(|h| h.effect_ns).max().unwrap_or(0)
}

pub fn action_table(rows: &[admin::Action]) -> Markup {
    html! {
        table.actions {
            thead { tr {
                th scope="col" { "Action" } th scope="col" { "Kind" } th scope="col" { "Target" }
                th scope="col" { "Operator" } th scope="col" { "Reason" } th scope="col" { "Issued" }
                th scope="col" { "Status" } th scope="col" { "Hosts confirmed" } th scope="col" { "Slowest" }
                th scope="col" { "In force" }
            } }
            tbody { @for a in rows {
                @let main: Vec<&admin::HostDelivery> = a.hosts.iter().filter(|h| !h.follow_up).collect();
                @let ok = main.iter().filter(|h| h.state == "ok").count();
                tr data-action=(a.id) data-status=(a.status) {
                    th scope="row" { (layout::action_link(&a.id)) }
                    td { (a.kind) }
                    td { (target_link(&a.scope, &a.target)) }
                    td { (a.operator) " " span.muted { "(" (a.role) ")" } }
                    td { (short(&a.reason, 60)) }
                    td { (when(a.issued_at_ns)) }
                    td { (state_badge(&a.status)) }
                    td { (ok) " / " (main.len()) }
                    td { @let s = slowest(a); @if s > 0 { (ms(s)) } }
                    td { @if a.active { (badge("yes", "warn")) } @else { span.muted { "no" } } }
                }
            } }
        }
    }
}

fn sorted_details(e: &admin::AuditEntry) -> Vec<(&String, &String)> {
    let mut d: Vec<(&String, &String)> = e.details.iter().collect();
    d.sort();
    d
}

fn audit_table(rows: &[admin::AuditEntry]) -> Markup {
    html! {
        @if rows.is_empty() { p.empty { "No audit records." } }
        @else { table.audit {
            thead { tr {
                th scope="col" { "#" } th scope="col" { "Time" } th scope="col" { "Actor" } th scope="col" { "Action" }
                th scope="col" { "Target" } th scope="col" { "Reason" } th scope="col" { "Result" } th scope="col" { "Details" }
            } }
            tbody { @for e in rows { tr data-seq=(e.seq) {
                td { (e.seq) }
                td { (layout::ts(e.time_ns)) }
                td { (e.actor) @if !e.role.is_empty() { " " span.muted { "(" (e.role) ")" } } }
                td { (e.action) @if !e.action_id.is_empty() { br; (layout::action_link(&e.action_id)) } }
                td { code { (short(&e.target, 60)) } }
                td { (short(&e.reason, 80)) }
                td { (e.result) }
                td { @let d = sorted_details(e);
                    ul.plain { @for (k, v) in d { li { span.k { (k) } " " (short(v, 80)) } } } }
            } } }
        } }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ActionsQuery {
    active: String,
    page: Option<usize>,
    audit_page: Option<usize>,
}

/// The audit log is read newest first; this many records at most are paged through.
const AUDIT_WINDOW: usize = 10_000;

pub async fn actions(
    State(ui): State<Arc<Ui>>,
    op: Op,
    Params(f): Params<ActionsQuery>,
) -> Result<Response, UiError> {
    let live_tag = super::live::actions(&ui);
    if !matches!(f.active.as_str(), "" | "1") {
        return Err(UiError::bad_request("active must be 1 or absent"));
    }
    let page = f.page.unwrap_or(1).max(1);
    let apage = f.audit_page.unwrap_or(1).max(1);
    let all = ui.responder.list(usize::MAX, f.active == "1");
    let (rows, total) = layout::paginate(all, page, PER_PAGE);
    let want = (apage * PER_PAGE).min(AUDIT_WINDOW);
    let engine = ui.engine.clone();
    let audit = super::blocking(move || engine.audit_log(0, want + 1)).await?;
    let more = audit.len() > want;
    let audit: Vec<admin::AuditEntry> = audit
        .into_iter()
        .take(want)
        .skip((apage - 1) * PER_PAGE)
        .collect();
    let ps = page.to_string();
    let body = html! {
        h1 { "Actions" }
        nav.views aria-label="Which actions" {
            a href="/actions" aria-current=[(f.active.is_empty()).then_some("true")] { "All" }
            a href="/actions?active=1" aria-current=[(f.active == "1").then_some("true")] { "In force" }
        }
        section #action-list data-region aria-label="Actions" {
            @if rows.is_empty() { p.empty { "No actions." } } @else { (action_table(&rows)) }
            (pager("/actions", &[("active", &f.active)], page, PER_PAGE, total))
        }
        section #audit data-region aria-labelledby="audit-h" {
            h2 #audit-h { "Audit trail" }
            p.note { "Append-only and hash-chained; " code { "custodyctl audit --verify" } " checks it." }
            (audit_table(&audit))
            nav.pager aria-label="Audit pages" {
                @if apage > 1 { a href=(link("/actions", &[("active", &f.active), ("page", &ps), ("audit_page", &(apage - 1).to_string())]) + "#audit") { "← Newer" } }
                @if more && want < AUDIT_WINDOW { a href=(link("/actions", &[("active", &f.active), ("page", &ps), ("audit_page", &(apage + 1).to_string())]) + "#audit") { "Older →" } }
            }
        }
    };
    Ok(layout::page(
        &op,
        Nav::Actions,
        "Actions",
        Some(&live_tag),
        body,
    ))
}

pub async fn action(State(ui): State<Arc<Ui>>, op: Op, Seg(id): Seg) -> Result<Response, UiError> {
    let live_tag = super::live::action(&ui, &id);
    let a = ui
        .responder
        .get(&id)
        .ok_or_else(|| UiError::not_found(format!("no action {id:?}")))?;
    let engine = ui.engine.clone();
    let since = a.issued_at_ns.saturating_sub(1);
    let aid = id.clone();
    let audit: Vec<admin::AuditEntry> = super::blocking(move || {
        Ok(engine
            .audit_log(since, AUDIT_WINDOW)?
            .into_iter()
            .filter(|e| e.action_id == aid)
            .collect())
    })
    .await?;
    let main: Vec<&admin::HostDelivery> = a.hosts.iter().filter(|h| !h.follow_up).collect();
    let confirmed = main.iter().filter(|h| h.confirmed_ns > 0).count();
    let after = |t: u64| {
        if t == 0 {
            html! { span.muted { "—" } }
        } else {
            html! { "+" (ms(t.saturating_sub(a.issued_at_ns))) }
        }
    };
    let release = a.kind == "quarantine" && a.active && op.can_act();
    let body = html! {
        h1 { "Action " code { (a.id) } }
        @if release {
            div.actions { a.button.secondary href=(link("/respond", &[("verb", "release"), ("scope", "action"), ("target", &a.id)])) data-verb="release" { "Release this quarantine" } }
        }
        dl.facts {
            dt { "Kind" } dd { (a.kind) }
            dt { "Target" } dd { (a.scope) " " (target_link(&a.scope, &a.target)) }
            dt { "Reason" } dd { (a.reason) }
            dt { "Operator" } dd { (a.operator) " (" (a.role) ")" }
            dt { "Issued" } dd { (layout::ts(a.issued_at_ns)) " (" (when(a.issued_at_ns)) ")" }
            dt { "In force" } dd { @if a.active { "yes" } @else { "no" }
                @if !a.released_by_action.is_empty() { " — released by " (layout::action_link(&a.released_by_action)) } }
            @for (k, v) in &a.params { dt { (k) } dd { (v) } }
        }
        section #deliveries data-region aria-labelledby="del-h" {
            h2 #del-h { "Per-host confirmations" }
            p.status-line data-status=(a.status) { "Status " (state_badge(&a.status)) " — " (confirmed) " of " (main.len()) " hosts confirmed"
                @let s = slowest(&a); @if s > 0 { "; slowest command-to-effect " (ms(s)) } }
            @for n in &a.notes { p.note { (n) } }
            table.deliveries {
                thead { tr {
                    th scope="col" { "Host" } th scope="col" { "State" } th scope="col" { "Targets" }
                    th scope="col" { "Affected" } th scope="col" { "Sent" } th scope="col" { "Confirmed" }
                    th scope="col" { "Command to effect" } th scope="col" { "Message" }
                } }
                tbody { @for d in &a.hosts { tr data-host=(d.host) data-state=(d.state) data-follow-up=(d.follow_up) {
                    th scope="row" { (layout::host_link(&d.host)) @if d.follow_up { " " span.muted { "(follow-up)" } } }
                    td { (state_badge(&d.state)) }
                    td { details { summary { (d.targets.len()) } ul.plain { @for t in &d.targets { li { code { (t) } } } } } }
                    td { details { summary { (d.affected_exec_ids.len()) } ul.plain { @for t in &d.affected_exec_ids { li { (layout::process_link(t)) } } } } }
                    td { (after(d.sent_ns)) }
                    td { (after(d.confirmed_ns)) }
                    td { @if d.effect_ns > 0 { (ms(d.effect_ns)) } @else { span.muted { "—" } } }
                    td { (d.message) }
                } } }
            }
            @if !a.hooks.is_empty() {
                h3 { "Issuer hooks" }
                table { thead { tr { th scope="col" { "URL" } th scope="col" { "Status" } th scope="col" { "HTTP" } th scope="col" { "Duration" } th scope="col" { "Message" } } }
                    tbody { @for h in &a.hooks { tr { td { code { (h.url) } } td { (state_badge(&h.status)) } td { (h.http_status) } td { (ms(h.duration_ns)) } td { (h.message) } } } } }
            }
            h3 { "Audit records" }
            (audit_table(&audit))
        }
    };
    Ok(layout::page(
        &op,
        Nav::Actions,
        &format!("Action {id}"),
        Some(&live_tag),
        body,
    ))
}
