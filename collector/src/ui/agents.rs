//! Agents: declared (from sensor configs) and discovered ("shadow") ones, with their
//! owner, hosts, credentials, recent chains and alerts.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use custody_proto::admin::v1 as admin;
use maud::{Markup, html};
use serde::Deserialize;

use super::chains::{chain_rows, chain_table};
use super::layout::{self, Nav, PER_PAGE, badge, pager, paginate, when};
use super::session::Op;
use super::{Params, Seg, Ui, UiError};

pub fn origin_badge(origin: &str) -> Markup {
    match origin {
        "discovered" => html! { (badge("shadow", "warn")) " " span.muted { "discovered" } },
        "declared" => badge("declared", "neutral"),
        o => badge(o, "neutral"),
    }
}

/// Owner and scope of declared agents, from the processes the sensors reported.
fn owners(ui: &Ui) -> HashMap<String, (String, String)> {
    let st = ui.engine.read();
    let mut m: HashMap<String, (String, String)> = HashMap::new();
    for (_, n) in st.chains.nodes() {
        let p = &n.process;
        if !p.agent_id.is_empty() && !p.agent_owner.is_empty() {
            m.entry(p.agent_id.clone())
                .or_insert_with(|| (p.agent_owner.clone(), p.agent_scope.clone()));
        }
    }
    m
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsQuery {
    q: String,
    origin: String,
    page: Option<usize>,
}

pub async fn agents(
    State(ui): State<Arc<Ui>>,
    op: Op,
    Params(f): Params<AgentsQuery>,
) -> Result<Response, UiError> {
    let live_tag = super::live::chains(&ui);
    if !matches!(f.origin.as_str(), "" | "declared" | "discovered") {
        return Err(UiError::bad_request(format!(
            "unknown origin {:?}: expected declared or discovered",
            f.origin
        )));
    }
    let page = f.page.unwrap_or(1).max(1);
    let owners = owners(&ui);
    let open = ui.alerts.open_counts().1;
    let q = f.q.to_lowercase();
    let list: Vec<admin::Agent> = ui
        .engine
        .list_agents()
        .into_iter()
        .filter(|a| f.origin.is_empty() || a.origin == f.origin)
        .filter(|a| {
            q.is_empty()
                || a.agent_id.to_lowercase().contains(&q)
                || a.name.to_lowercase().contains(&q)
                || a.hosts.iter().any(|h| h.to_lowercase().contains(&q))
                || owners
                    .get(&a.agent_id)
                    .is_some_and(|o| o.0.to_lowercase().contains(&q))
        })
        .collect();
    let (rows, total) = paginate(list, page, PER_PAGE);
    let body = html! {
        h1 { "Agents" }
        (layout::filter_form("/agents", html! {
            (layout::text_field("q", "Agent, owner or host", &f.q))
            (layout::select_field("origin", "Origin", &f.origin, &[
                ("", "any"), ("declared", "declared"), ("discovered", "discovered (shadow)"),
            ]))
        }))
        section #agents data-region aria-label="Agents" {
            @if rows.is_empty() { p.empty { "No agent matches." } }
            @else {
                table {
                    thead { tr {
                        th scope="col" { "Agent" } th scope="col" { "Name" } th scope="col" { "Origin" }
                        th scope="col" { "Owner" } th scope="col" { "Hosts" } th scope="col" { "Processes" }
                        th scope="col" { "Last seen" } th scope="col" { "Open alerts" }
                    } }
                    tbody { @for a in &rows {
                        @let alerts = open.get(&a.agent_id).copied().unwrap_or(0);
                        tr data-agent=(a.agent_id) {
                            th scope="row" { (layout::agent_link(&a.agent_id)) }
                            td { (a.name) }
                            td { (origin_badge(&a.origin)) }
                            td { @if let Some((o, _)) = owners.get(&a.agent_id) { (o) } @else { span.muted { "—" } } }
                            td { (a.hosts.len()) }
                            td { (a.process_count) }
                            td { (when(a.last_seen_ns)) }
                            td class=[(alerts > 0).then_some("bad")] { (alerts) }
                        }
                    } }
                }
            }
            (pager("/agents", &[("q", &f.q), ("origin", &f.origin)], page, PER_PAGE, total))
        }
    };
    Ok(layout::page(
        &op,
        Nav::Agents,
        "Agents",
        Some(&live_tag),
        body,
    ))
}

pub async fn agent(State(ui): State<Arc<Ui>>, op: Op, Seg(id): Seg) -> Result<Response, UiError> {
    let live_tag = super::live::chains(&ui);
    let a = ui
        .engine
        .list_agents()
        .into_iter()
        .find(|a| a.agent_id == id)
        .ok_or_else(|| UiError::not_found(format!("no agent {id:?} has been reported")))?;
    let owner = owners(&ui).remove(&id);
    let creds: Vec<admin::CredentialSummary> = ui
        .engine
        .list_credentials()
        .into_iter()
        .filter(|c| c.agents.contains(&id))
        .collect();
    let open = ui.alerts.open_counts().0;
    let chains = {
        let st = ui.engine.read();
        let mut v = chain_rows(&ui.engine, &st, &open);
        v.retain(|c| c.summary.agents.contains(&id));
        v.truncate(20);
        super::chains::set_depths(&st, &mut v);
        v
    };
    let live: Vec<(String, String, u32, String)> = {
        let st = ui.engine.read();
        let mut v: Vec<_> = st
            .chains
            .nodes()
            .filter(|(_, n)| n.process.agent_id == id && n.exited_ns == 0)
            .map(|(e, n)| {
                (
                    e.clone(),
                    n.host.clone(),
                    n.process.pid,
                    n.process.comm.clone(),
                )
            })
            .collect();
        v.sort();
        v.truncate(200);
        v
    };
    let alerts: Vec<admin::Alert> = ui
        .alerts
        .list(usize::MAX, "", "", "")
        .into_iter()
        .filter(|x| x.agent_id == id)
        .take(20)
        .collect();
    let actions: Vec<admin::Action> = ui
        .responder
        .list(usize::MAX, false)
        .into_iter()
        .filter(|x| x.scope == "agent" && x.target == id)
        .take(20)
        .collect();
    let verbs = super::respond::offered(&ui, "agent", &id);
    let body = html! {
        h1 { "Agent " (a.agent_id) }
        (layout::respond_buttons(&op, "agent", &id, &verbs))
        dl.facts {
            dt { "Name" } dd { (a.name) }
            dt { "Origin" } dd { (origin_badge(&a.origin)) }
            dt { "Kind" } dd { (a.kind) }
            dt { "Owner" } dd { @if let Some((o, s)) = &owner { (o) @if !s.is_empty() { " · scope " (s) } } @else { span.muted { "unknown" } } }
            dt { "Hosts" } dd { ul.tags { @for h in &a.hosts { li { (layout::host_link(h)) } } } }
            dt { "Processes seen" } dd { (a.process_count) }
            dt { "First seen" } dd { (when(a.first_seen_ns)) }
            dt { "Last seen" } dd { (when(a.last_seen_ns)) }
        }
        @if !a.evidence.is_empty() {
            section aria-labelledby="ev-h" {
                h2 #ev-h { "Evidence" }
                @if a.origin == "discovered" {
                    p.note { "Not declared in any sensor's configuration: recognised from what it did." }
                }
                ul.evidence { @for e in &a.evidence { li { code { (e) } } } }
            }
        }
        section aria-labelledby="creds-h" {
            h2 #creds-h { "Credentials used" }
            @if creds.is_empty() { p.empty { "None seen." } }
            @else { (super::creds::cred_table(&creds, &super::creds::revoked_set(&ui))) }
        }
        section #live data-region aria-labelledby="live-h" {
            h2 #live-h { "Live processes" }
            @if live.is_empty() { p.empty { "None." } }
            @else { table {
                thead { tr { th scope="col" { "Process" } th scope="col" { "Host" } th scope="col" { "pid" } th scope="col" { "Command" } } }
                tbody { @for (e, h, pid, comm) in &live { tr data-exec=(e) {
                    th scope="row" { (layout::process_link(e)) } td { (layout::host_link(h)) } td { (pid) } td { (comm) }
                } } }
            } }
        }
        section #agent-chains data-region aria-labelledby="chains-h" {
            h2 #chains-h { "Recent chains" }
            (chain_table(&chains))
        }
        section aria-labelledby="alerts-h" {
            h2 #alerts-h { "Alerts" }
            (super::alerts::alert_table(&op, &alerts))
        }
        section aria-labelledby="acts-h" {
            h2 #acts-h { "Actions on this agent" }
            @if actions.is_empty() { p.empty { "None." } } @else { (super::respond::action_table(&actions)) }
        }
    };
    Ok(layout::page(
        &op,
        Nav::Agents,
        &format!("Agent {id}"),
        Some(&live_tag),
        body,
    ))
}
