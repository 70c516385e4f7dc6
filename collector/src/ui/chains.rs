//! Chains: the list (filtered and paged on the server), one chain as a graph with
//! its processes and timeline, and one process with its details and intent.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use custody_proto::admin::v1::{self as admin, get_chain_request::Target};
use custody_proto::sensor::v1::event::Kind;
use maud::{Markup, html};
use serde::Deserialize;

use super::graph::{self, View};
use super::layout::{self, Nav, PER_PAGE, badge, pager, paginate, short, when};
use super::session::Op;
use super::{Params, Seg, Ui, UiError, blocking, enc, link};
use crate::engine::{Engine, State as EngineState};
use crate::event_key::{id_to_key, key_to_id};
use crate::event_kind::describe;
use crate::signal;
use custody_proto::sensor::v1::EventKind;

pub struct ChainRow {
    pub summary: admin::ChainSummary,
    pub live: usize,
    pub depth: usize,
    pub alerts: u64,
}

/// Fills in the depth of the rows about to be shown (walking every member's
/// upstream links is the expensive part of a chain's row).
pub fn set_depths(st: &EngineState, rows: &mut [ChainRow]) {
    for r in rows {
        r.depth = st
            .chains
            .members(&r.summary.chain_id)
            .into_iter()
            .flatten()
            .map(|m| st.chains.depth(m))
            .max()
            .unwrap_or(0);
    }
}

/// Every chain, most recently active first (depth left at 0: see [`set_depths`]).
pub fn chain_rows(
    engine: &Engine,
    st: &EngineState,
    open: &BTreeMap<String, u64>,
) -> Vec<ChainRow> {
    let mut v: Vec<ChainRow> = st
        .chains
        .chain_ids()
        .filter_map(|id| {
            let summary = engine.chain_summary(&st.chains, id)?;
            let members = st.chains.members(id)?;
            let live = members
                .iter()
                .filter(|m| st.chains.node(m).is_some_and(|n| n.exited_ns == 0))
                .count();
            Some(ChainRow {
                alerts: open.get(id).copied().unwrap_or(0),
                summary,
                live,
                depth: 0,
            })
        })
        .collect();
    v.sort_by(|a, b| {
        b.summary
            .last_seen_ns
            .cmp(&a.summary.last_seen_ns)
            .then(a.summary.chain_id.cmp(&b.summary.chain_id))
    });
    v
}

fn list_some(items: &[String], f: fn(&str) -> Markup) -> Markup {
    html! {
        @for (i, x) in items.iter().take(3).enumerate() {
            @if i > 0 { ", " }
            (f(x))
        }
        @if items.len() > 3 { " " span.muted { "+" (items.len() - 3) } }
    }
}

pub fn chain_table(rows: &[ChainRow]) -> Markup {
    html! {
        @if rows.is_empty() { p.empty { "No chain matches." } }
        @else {
            table.chains {
                thead { tr {
                    th scope="col" { "Chain" } th scope="col" { "Human" } th scope="col" { "Agents" }
                    th scope="col" { "Hosts" } th scope="col" { "Processes" } th scope="col" { "Depth" }
                    th scope="col" { "Open alerts" } th scope="col" { "State" } th scope="col" { "Last activity" }
                } }
                tbody { @for c in rows {
                    @let s = &c.summary;
                    tr data-chain=(s.chain_id) {
                        th scope="row" { (layout::chain_link(&s.chain_id)) }
                        td { @if s.human.is_empty() { span.muted { "unknown" } } @else { (s.human) } }
                        td { (list_some(&s.agents, layout::agent_link)) }
                        td { (list_some(&s.hosts, layout::host_link)) }
                        td { (s.process_count) }
                        td { (c.depth) }
                        td class=[(c.alerts > 0).then_some("bad")] { (c.alerts) }
                        td { @if c.live > 0 { (badge("live", "good")) } @else { (badge("ended", "neutral")) } }
                        td { (when(s.last_seen_ns)) }
                    }
                } }
            }
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ChainsQuery {
    q: String,
    human: String,
    host: String,
    agent: String,
    state: String,
    alerts: String,
    page: Option<usize>,
}

pub async fn chains(
    State(ui): State<Arc<Ui>>,
    op: Op,
    Params(f): Params<ChainsQuery>,
) -> Result<Response, UiError> {
    let live_tag = super::live::chains(&ui);
    if !matches!(f.state.as_str(), "" | "live" | "ended") {
        return Err(UiError::bad_request(format!(
            "unknown state {:?}: expected live or ended",
            f.state
        )));
    }
    if !matches!(f.alerts.as_str(), "" | "open") {
        return Err(UiError::bad_request(format!(
            "unknown alerts filter {:?}: expected open",
            f.alerts
        )));
    }
    let page = f.page.unwrap_or(1).max(1);
    let open = ui.alerts.open_counts().0;
    let engine = ui.engine.clone();
    let (rows, total) = {
        let q = f.q.to_lowercase();
        let (human, host, agent, state, alerts) = (
            f.human.clone(),
            f.host.clone(),
            f.agent.clone(),
            f.state.clone(),
            f.alerts.clone(),
        );
        blocking(move || {
            let st = engine.read();
            let rows: Vec<ChainRow> = chain_rows(&engine, &st, &open)
                .into_iter()
                .filter(|c| {
                    let s = &c.summary;
                    (human.is_empty() || s.human == human)
                        && (host.is_empty() || s.hosts.contains(&host))
                        && (agent.is_empty() || s.agents.contains(&agent))
                        && match state.as_str() {
                            "live" => c.live > 0,
                            "ended" => c.live == 0,
                            _ => true,
                        }
                        && (alerts.is_empty() || c.alerts > 0)
                        && (q.is_empty()
                            || s.chain_id.to_lowercase().contains(&q)
                            || s.human.to_lowercase().contains(&q)
                            || s.agents.iter().any(|a| a.to_lowercase().contains(&q))
                            || s.hosts.iter().any(|h| h.to_lowercase().contains(&q)))
                })
                .collect();
            let (mut rows, total) = paginate(rows, page, PER_PAGE);
            set_depths(&st, &mut rows);
            Ok((rows, total))
        })
        .await?
    };
    let params = [
        ("q", f.q.as_str()),
        ("human", &f.human),
        ("host", &f.host),
        ("agent", &f.agent),
        ("state", &f.state),
        ("alerts", &f.alerts),
    ];
    let body = html! {
        h1 { "Chains" }
        (layout::filter_form("/chains", html! {
            (layout::text_field("q", "Search", &f.q))
            (layout::text_field("human", "Human", &f.human))
            (layout::text_field("host", "Host", &f.host))
            (layout::text_field("agent", "Agent", &f.agent))
            (layout::select_field("state", "State", &f.state, &[("", "any"), ("live", "live"), ("ended", "ended")]))
            (layout::select_field("alerts", "Alerts", &f.alerts, &[("", "any"), ("open", "with open alerts")]))
        }))
        section #chains data-region aria-label="Chains" {
            (chain_table(&rows))
            (pager("/chains", &params, page, PER_PAGE, total))
        }
    };
    Ok(layout::page(
        &op,
        Nav::Chains,
        "Chains",
        Some(&live_tag),
        body,
    ))
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ChainQuery {
    view: String,
    node: String,
    q: String,
    page: Option<usize>,
    /// Timeline page: the id of the last event shown.
    after: String,
    /// Timeline: only events of this kind.
    kind: String,
    /// Timeline: "1" shows every event, routine reads unfolded.
    all: String,
}

/// Event kinds, as the timeline filter offers them (not "unknown": no event kind).
const KINDS: &[&str] = EventKind::NAMES.split_last().unwrap().1;

async fn load_chain(ui: &Ui, target: Target) -> Result<Option<admin::Chain>, UiError> {
    let engine = ui.engine.clone();
    blocking(move || {
        engine.get_chain(&admin::GetChainRequest {
            target: Some(target),
            event_limit: 1000,
        })
    })
    .await
}

fn exited_of(ui: &Ui, chain: &admin::Chain) -> HashSet<String> {
    let st = ui.engine.read();
    chain
        .nodes
        .iter()
        .filter(|n| st.chains.node(&n.exec_id).is_none_or(|x| x.exited_ns != 0))
        .map(|n| n.exec_id.clone())
        .collect()
}

pub async fn chain(
    State(ui): State<Arc<Ui>>,
    op: Op,
    Seg(id): Seg,
    Params(f): Params<ChainQuery>,
) -> Result<Response, UiError> {
    let live_tag = super::live::chain(&ui, &id);
    let view = View::parse(&f.view).map_err(UiError::bad_request)?;
    if !f.kind.is_empty() && !KINDS.contains(&f.kind.as_str()) {
        return Err(UiError::bad_request(format!(
            "unknown event kind {:?}",
            f.kind
        )));
    }
    let after = match f.after.as_str() {
        "" => None,
        a => Some(
            id_to_key(a)
                .ok_or_else(|| UiError::bad_request(format!("bad timeline position {a:?}")))?,
        ),
    };
    let page = f.page.unwrap_or(1).max(1);
    let chain = load_chain(&ui, Target::ChainId(id.clone()))
        .await?
        .ok_or_else(|| UiError::not_found(format!("no chain {id:?}")))?;
    let summary = chain.summary.clone().unwrap_or_default();
    let view = view.unwrap_or_else(|| View::default_for(&chain));
    let alerts = ui.alerts.list(usize::MAX, &id, "", "");
    let open_alerts = alerts.iter().filter(|a| a.status == "open").count();
    let exited = exited_of(&ui, &chain);
    let live = chain.nodes.len() - exited.len();
    let depth = chain.nodes.iter().map(|n| n.depth).max().unwrap_or(0);
    let base = format!("/chains/{}", enc(&id));
    let details = if f.node.is_empty() {
        None
    } else {
        let n = chain
            .nodes
            .iter()
            .find(|n| n.exec_id == f.node)
            .ok_or_else(|| {
                UiError::not_found(format!("process {:?} is not part of chain {id}", f.node))
            })?;
        let evs: Vec<&admin::StoredEvent> = chain
            .events
            .iter()
            .filter(|e| proc_of(e) == Some(n.exec_id.as_str()))
            .collect();
        Some(node_details(
            &ui,
            &op,
            n,
            exited.contains(&n.exec_id),
            &evs,
            &alerts,
        ))
    };
    let q = f.q.to_lowercase();
    let nodes: Vec<&admin::ChainNode> = chain
        .nodes
        .iter()
        .filter(|n| {
            q.is_empty()
                || [
                    &n.exec_id,
                    &n.host,
                    &n.comm,
                    &n.exe,
                    &n.agent_id,
                    &n.agent_name,
                ]
                .iter()
                .any(|s| s.to_lowercase().contains(&q))
                || graph::display_name(n).to_lowercase() == q
        })
        .collect();
    let (nodes, total_nodes) = paginate(nodes, page, PER_PAGE);
    let engine = ui.engine.clone();
    let cid = id.clone();
    let kind = f.kind.clone();
    let everything = parse_all(&f.all)?;
    let keep = policy_paths(&alerts);
    let (timeline, next, egress) = blocking(move || {
        let filter = admin::EventFilter {
            chain_id: cid,
            kind,
            ..Default::default()
        };
        let egress = opaque_egress(&engine, filter.clone())?;
        if everything {
            let (evs, next) = engine.list_events(&filter, PER_PAGE, after, true)?;
            Ok((Timeline::All(evs), next, egress))
        } else {
            let page = folded_page(&engine, &filter, after, &keep)?;
            let next = page.next;
            Ok((Timeline::Folded(page), next, egress))
        }
    })
    .await?;
    let verbs = super::respond::offered(&ui, "chain", &id);
    let g = graph::render(&graph::Input {
        chain: &chain,
        alerts: &alerts,
        exited: &exited,
        view,
        base: &base,
        selected: &f.node,
    });
    let mut kind_opts: Vec<(&str, &str)> = vec![("", "any")];
    kind_opts.extend(KINDS.iter().map(|k| (*k, *k)));
    let views = [
        (View::Full, "All processes"),
        (View::Agent, "By agent"),
        (View::Host, "By host"),
    ];
    let body = html! {
        h1 { "Chain " code { (id) } }
        (layout::respond_buttons(&op, "chain", &id, &verbs))
        section #chain-summary data-region aria-label="Summary" {
            dl.facts {
                dt { "Human" } dd { @if summary.human.is_empty() { span.muted { "unknown" } } @else {
                    (summary.human) " " span.muted { "(" (summary.human_source) ")" } } }
                dt { "Root" } dd { (layout::process_link(&summary.root_exec_id)) }
                dt { "Agents" } dd { ul.tags { @for a in &summary.agents { li { (layout::agent_link(a)) } } } }
                dt { "Hosts" } dd { ul.tags { @for h in &summary.hosts { li { (layout::host_link(h)) } } } }
                dt { "Processes" } dd { (chain.nodes.len()) " (" (live) " live) · depth " (depth) }
                dt { "State" } dd { @if live > 0 { (badge("live", "good")) } @else { (badge("ended", "neutral")) } }
                dt { "Alerts" } dd class=[(open_alerts > 0).then_some("bad")] {
                    a href=(link("/alerts", &[("chain", &id)])) { (open_alerts) " open, " (alerts.len()) " in all" } }
                dt { "Active" } dd { (when(summary.first_seen_ns)) " → " (when(summary.last_seen_ns)) }
                @if let Some(s) = signal::opaque_sentence(summary.opaque_connections, summary.opaque_processes) {
                    dt { "Not seen" } dd.bad #opaque-summary { a href="#opaque" { (s) } }
                }
            }
        }
        section #graph data-region aria-labelledby="graph-h" {
            h2 #graph-h { "Graph" }
            nav.views aria-label="Graph view" {
                @for (v, label) in views {
                    a href=(link(&base, &[("view", v.as_str())])) aria-current=[(v == view).then_some("true")] { (label) }
                }
                @if chain.nodes.len() > graph::FULL_LIMIT && view == View::Full {
                    span.note { " " (chain.nodes.len()) " processes: grouping by agent or host reads better." }
                }
            }
            p.legend {
                span.key.human { "human" } span.key.agent { "agent" } span.key.tool { "tool (MCP)" }
                span.key.proc { "process" } span.key.res { "resource" } span.key.denied { "denied" } span.key.ended { "ended" }
            }
            div.graph-scroll tabindex="0" aria-label="Chain graph (scrollable)" { (g) }
        }
        @if let Some(d) = details {
            section #details aria-labelledby="details-h" {
                h2 #details-h { "Process " code { (f.node) } }
                p { a href=(format!("/processes/{}", enc(&f.node))) { "Open the process page" } " · "
                    a href=(link(&base, &[("view", view.as_str())])) { "Close" } }
                (d)
            }
        }
        section #nodes aria-labelledby="nodes-h" {
            h2 #nodes-h { "Processes" }
            (layout::filter_form(&base, html! {
                input type="hidden" name="view" value=(view.as_str());
                (layout::text_field("q", "Process, host, command or agent", &f.q))
            }))
            (node_table(&nodes, &exited, &base, view))
            (pager(&base, &[("view", view.as_str()), ("q", &f.q)], page, PER_PAGE, total_nodes))
        }
        @if summary.opaque_processes > 0 {
            section #opaque aria-labelledby="opaque-h" {
                h2 #opaque-h { "What Custody could not see" }
                (opaque_section(&chain.nodes, &egress, Some(&base)))
            }
        }
        section #alerts aria-labelledby="calerts-h" {
            h2 #calerts-h { "Alerts" }
            (super::alerts::alert_table(&op, &alerts))
        }
        section #timeline aria-labelledby="tl-h" {
            h2 #tl-h { "Timeline" }
            (layout::filter_form(&base, html! {
                input type="hidden" name="view" value=(view.as_str());
                (layout::select_field("kind", "Event kind", &f.kind, &kind_opts))
                (layout::select_field("all", "Show", &f.all, &[("", "significant first"), ("1", "everything")]))
            }))
            @match &timeline {
                Timeline::All(evs) => { (event_table(evs, Some(&base))) }
                Timeline::Folded(page) => { (folded_table(page, Some(&base))) }
            }
            nav.pager aria-label="Timeline pages" {
                @if after.is_some() { a href=(link(&base, &[("view", view.as_str()), ("kind", &f.kind), ("all", &f.all)]) + "#timeline") { "← From the start" } }
                @if let Some(n) = next {
                    a href=(link(&base, &[("view", view.as_str()), ("kind", &f.kind), ("all", &f.all), ("after", &key_to_id(&n))]) + "#timeline") rel="next" { "Later events →" }
                }
            }
        }
    };
    Ok(layout::page(
        &op,
        Nav::Chains,
        &format!("Chain {id}"),
        Some(&live_tag),
        body,
    ))
}

fn node_table(
    nodes: &[&admin::ChainNode],
    exited: &HashSet<String>,
    base: &str,
    view: View,
) -> Markup {
    html! {
        @if nodes.is_empty() { p.empty { "No process matches." } }
        @else { table.nodes {
            thead { tr { th scope="col" { "Process" } th scope="col" { "Host" } th scope="col" { "Depth" }
                th scope="col" { "Command" } th scope="col" { "Agent" } th scope="col" { "Credentials" }
                th scope="col" { "Events" } th scope="col" { "State" } } }
            tbody { @for n in nodes { tr data-exec=(n.exec_id) {
                th scope="row" { a href=(link(base, &[("view", view.as_str()), ("node", &n.exec_id)]) + "#details") { code { (n.exec_id) } }
                    @if !n.tls_uncovered.is_empty() { br; span.uncovered { (n.tls_uncovered) } } }
                td { (layout::host_link(&n.host)) }
                td { (n.depth) }
                td title=(n.argv.join(" ")) { (short(&n.argv.join(" "), 60)) }
                td { @if !n.agent_id.is_empty() { (layout::agent_link(&n.agent_id)) } }
                td { (n.credentials.len()) }
                td { (n.event_count) }
                td { @if exited.contains(&n.exec_id) { (badge("ended", "neutral")) } @else { (badge("live", "good")) } }
            } } }
        } }
    }
}

fn proc_of(e: &admin::StoredEvent) -> Option<&str> {
    e.event
        .as_ref()
        .and_then(|ev| ev.process.as_ref())
        .map(|p| p.exec_id.as_str())
}

/// Events as a table; `chain_base` links processes to the chain page's details.
pub fn event_table(events: &[crate::engine::StoredEvent], chain_base: Option<&str>) -> Markup {
    html! {
        @if events.is_empty() { p.empty { "No events." } }
        @else { table.events {
            (event_head())
            tbody { @for se in events { (event_row(se, chain_base)) } }
        } }
    }
}

fn event_head() -> Markup {
    html! {
        thead { tr { th scope="col" { "Time" } th scope="col" { "Host" } th scope="col" { "Process" }
            th scope="col" { "Kind" } th scope="col" { "What" } } }
    }
}

fn event_row(se: &crate::engine::StoredEvent, chain_base: Option<&str>) -> Markup {
    let ev = &se.event;
    let exec = ev
        .process
        .as_ref()
        .map(|p| p.exec_id.as_str())
        .unwrap_or("");
    let comm = ev.process.as_ref().map(|p| p.comm.as_str()).unwrap_or("");
    html! {
        tr data-kind=(ev.kind_name()) {
            td { (layout::ts(ev.time_ns)) }
            td { (ev.host) }
            td { (proc_cell(exec, comm, chain_base)) }
            td { (ev.kind_name()) }
            td.what { (short(&describe(ev), 200)) }
        }
    }
}

fn proc_cell(exec: &str, comm: &str, chain_base: Option<&str>) -> Markup {
    html! { @match chain_base {
        Some(b) => { a href=(link(b, &[("node", exec)]) + "#details") title=(exec) { (comm) } }
        None => { (layout::process_link(exec)) }
    } }
}

/// A timeline page with routine reads folded ([`signal::fold`]): at most
/// `PER_PAGE` lines, each fold a `<details>` that expands to its reads.
pub struct Folded {
    pub events: Vec<crate::engine::StoredEvent>,
    pub rows: Vec<signal::Row>,
    /// Where the next page starts (the last event this one consumed).
    pub next: Option<crate::event_key::EventKey>,
}

/// Events read to form one folded page: enough that an interpreter's start-up
/// folds into a line or two, bounded so a page costs the same on any chain.
const FOLD_WINDOW: usize = 5000;

/// Reads up to [`FOLD_WINDOW`] events matching `filter` after `after` and folds
/// them into one page; `keep` are paths a policy matched (never folded).
pub fn folded_page(
    engine: &Engine,
    filter: &admin::EventFilter,
    after: Option<crate::event_key::EventKey>,
    keep: &HashSet<String>,
) -> anyhow::Result<Folded> {
    let (mut events, window_next) = engine.list_events(filter, FOLD_WINDOW, after, true)?;
    let (rows, consumed) = signal::fold(events.iter().map(|s| &s.event), keep, PER_PAGE);
    let next = if consumed < events.len() {
        events.get(consumed.wrapping_sub(1)).map(|s| s.key)
    } else {
        window_next
    };
    events.truncate(consumed);
    Ok(Folded { events, rows, next })
}

/// Paths the chain's alerts name: a policy matched them, so they never fold.
pub fn policy_paths(alerts: &[admin::Alert]) -> HashSet<String> {
    alerts.iter().map(|a| a.resource.clone()).collect()
}

/// A folded page as a table: significant events one per line, routine reads one
/// line per process and directory ("412 routine reads under /usr/lib/python3.11 —
/// show").
pub fn folded_table(page: &Folded, chain_base: Option<&str>) -> Markup {
    html! {
        @if page.rows.is_empty() { p.empty { "No events." } }
        @else { table.events {
            (event_head())
            tbody { @for r in &page.rows { @match r {
                signal::Row::Event(i) => { (event_row(&page.events[*i], chain_base)) }
                signal::Row::Fold { exec_id, comm, events, first_ns, last_ns, reads, .. } => {
                    @let host = page.events[events[0]].event.host.as_str();
                    tr.fold data-kind="routine" data-count=(reads) {
                        td { (layout::ts(*first_ns)) @if last_ns > first_ns { " – " (layout::ts(*last_ns)) } }
                        td { (host) }
                        td { (proc_cell(exec_id, comm, chain_base)) }
                        td { "routine" }
                        td.what { details.fold {
                            summary { (r.fold_text().unwrap_or_default()) " — " span.show { "show" } }
                            table.events.folded { tbody { @for i in events { (event_row(&page.events[*i], chain_base)) } } }
                        } }
                    }
                }
            } } }
        } }
    }
}

/// What Custody could not see in these processes: their opaque TLS connections
/// (OpaqueEgress), grouped by process, with the uncovered-TLS note of each.
fn opaque_section(
    nodes: &[admin::ChainNode],
    egress: &[crate::engine::StoredEvent],
    chain_base: Option<&str>,
) -> Markup {
    let blind: Vec<&admin::ChainNode> = nodes
        .iter()
        .filter(|n| !n.tls_uncovered.is_empty() || n.opaque_connections > 0)
        .collect();
    html! {
        @if blind.is_empty() { p.empty { "Custody read the TLS of every process it saw here." } }
        @else { @for n in blind {
            @let mine: Vec<&crate::engine::StoredEvent> = egress.iter()
                .filter(|e| e.event.process.as_ref().is_some_and(|p| p.exec_id == n.exec_id)).collect();
            div.opaque-proc data-exec=(n.exec_id) {
                h3 { (proc_cell(&n.exec_id, &n.comm, chain_base)) " " code { (n.exe) } }
                @if !n.tls_uncovered.is_empty() { p.uncovered { (n.tls_uncovered) } }
                @if mine.is_empty() { p.empty { "No opaque TLS connection reported yet." } }
                @else { table.opaque {
                    thead { tr { th scope="col" { "Opened" } th scope="col" { "Destination" } th scope="col" { "SNI" }
                        th scope="col" { "ALPN" } th scope="col" { "Sent" } th scope="col" { "Received" } th scope="col" { "Closed" } } }
                    tbody { @for e in mine { @if let Some(Kind::OpaqueEgress(o)) = &e.event.kind {
                        tr.opaque-conn {
                            td { @if o.opened_ns == 0 { span.muted { "?" } } @else { (layout::ts(o.opened_ns)) } }
                            td { code { @if let Some(c) = &o.conn { (c.remote_addr) ":" (c.remote_port) } } }
                            td { @if o.sni.is_empty() { span.muted { "none" } } @else { (o.sni) } }
                            td { (o.alpn.join(", ")) }
                            td { (o.bytes_sent) " B" }
                            td { (o.bytes_received) " B" }
                            td { (layout::ts(e.event.time_ns)) }
                        }
                    } } }
                } }
            }
        } }
    }
}

/// The opaque TLS connections of a chain or a process (bounded: the section lists
/// them, the summary counts them all from the index).
fn opaque_egress(
    engine: &Engine,
    mut filter: admin::EventFilter,
) -> anyhow::Result<Vec<crate::engine::StoredEvent>> {
    filter.kind = "opaque_egress".into();
    Ok(engine.list_events(&filter, 500, None, true)?.0)
}

/// Intent signals of one process: LLM requests and responses, MCP tool calls, HTTP.
fn intents<'a>(events: impl Iterator<Item = &'a custody_proto::sensor::v1::Event>) -> Markup {
    let items: Vec<Markup> = events
        .filter_map(|ev| {
            let t = layout::ts(ev.time_ns);
            Some(match &ev.kind {
                Some(Kind::LlmRequest(l)) => html! {
                    li { span.muted { (t) } " LLM request " b { (l.provider) " " (l.model) } " to " (l.host) (l.path)
                        @if !l.system_excerpt.is_empty() { div.excerpt { span.k { "system" } pre { (l.system_excerpt) } } }
                        @if !l.user_excerpt.is_empty() { div.excerpt { span.k { "user" } pre { (l.user_excerpt) } } }
                        @if !l.tools.is_empty() { div { "tools offered: " (l.tools.join(", ")) } } }
                },
                Some(Kind::LlmResponse(l)) if !l.tool_calls.is_empty() || !l.content_excerpt.is_empty() => html! {
                    li { span.muted { (t) } " LLM response " (l.model)
                        @for c in &l.tool_calls { div.excerpt { span.k { "tool call " (c.name) } pre { (c.arguments_excerpt) } } }
                        @if !l.content_excerpt.is_empty() { div.excerpt { span.k { "content" } pre { (l.content_excerpt) } } } }
                },
                Some(Kind::Mcp(m)) if !m.method.is_empty() => html! {
                    li { span.muted { (t) } " MCP " (m.transport) " " (m.message_type) " " b { (m.method) } " " (m.tool_name)
                        @if !m.arguments_excerpt.is_empty() { div.excerpt { span.k { "arguments" } pre { (m.arguments_excerpt) } } }
                        @if !m.result_excerpt.is_empty() { div.excerpt { span.k { "result" } pre { (m.result_excerpt) } } } }
                },
                Some(Kind::HttpRequest(h)) => html! {
                    li { span.muted { (t) } " HTTP " (h.direction) " " b { (h.method) " " (h.host) (h.path) }
                        @if !h.excerpt.is_empty() { div.excerpt { pre { (h.excerpt) } } } }
                },
                _ => return None,
            })
        })
        .take(30)
        .collect();
    html! {
        @if items.is_empty() { p.empty { "No LLM, MCP or HTTP activity seen." } }
        @else { ul.intents { @for i in items { (i) } } }
    }
}

fn node_details(
    ui: &Ui,
    op: &Op,
    n: &admin::ChainNode,
    ended: bool,
    events: &[&admin::StoredEvent],
    alerts: &[admin::Alert],
) -> Markup {
    let denied: Vec<&admin::Alert> = alerts.iter().filter(|a| a.exec_id == n.exec_id).collect();
    let verbs = super::respond::offered(ui, "process", &n.exec_id);
    let p = n.principal.clone().unwrap_or_default();
    html! {
        @if !ended { (layout::respond_buttons(op, "process", &n.exec_id, &verbs)) }
        dl.facts {
            dt { "Exec id" } dd { code.exec-id { (n.exec_id) } }
            dt { "Host" } dd { (layout::host_link(&n.host)) }
            dt { "pid" } dd { (n.pid) }
            dt { "Executable" } dd { code { (n.exe) } }
            dt { "Arguments" } dd { ol.argv { @for a in &n.argv { li { code { (a) } } } } }
            dt { "Command" } dd { (n.comm) }
            dt { "User" } dd { (n.user) }
            dt { "Agent" } dd { @if n.agent_id.is_empty() { span.muted { "none" } } @else {
                (layout::agent_link(&n.agent_id)) " " (n.agent_kind) } }
            dt { "Principal" } dd {
                @if !p.login_user.is_empty() { "login " (p.login_user) " (uid " (p.login_uid) ") " }
                @if !p.delegated_sub.is_empty() { "delegated sub " (p.delegated_sub) " iss " (p.delegated_iss) " " }
                @if !p.act.is_empty() { "act " (p.act.join(" → ")) }
            }
            dt { "Upstream" } dd { @if n.upstream.is_empty() { span.muted { "chain root" } } @else { (layout::process_link(&n.upstream)) } }
            dt { "Depth" } dd { (n.depth) }
            dt { "Started" } dd { @if n.start_time_ns == 0 { span.muted { "unknown" } } @else { (when(n.start_time_ns)) } }
            dt { "State" } dd { @if ended { (badge("ended", "neutral")) } @else { (badge("live", "good")) } }
            dt { "Events" } dd { (n.event_count) }
            @if !n.tls_uncovered.is_empty() { dt { "TLS" } dd.uncovered { (n.tls_uncovered) } }
        }
        @if !denied.is_empty() {
            h3 { "Denied" }
            ul.denied { @for a in &denied { li { (layout::state_badge(&a.severity)) " " b { (a.action) } " " code { (a.resource) }
                " — policy " (a.policy_id) } } }
        }
        h3 { "Credentials" }
        @if n.credentials.is_empty() { p.empty { "None seen." } }
        @else { table {
            thead { tr { th scope="col" { "Fingerprint" } th scope="col" { "Kind" } th scope="col" { "Usage" } th scope="col" { "Source" } th scope="col" { "Where" } } }
            tbody { @for c in &n.credentials { tr {
                td { (layout::cred_link(&c.fingerprint)) } td { (c.kind) } td { (c.usage) } td { (c.source) } td { code { (c.location) } }
            } } }
        } }
        h3 { "Intent" }
        (intents(events.iter().filter_map(|e| e.event.as_ref())))
        h3 { "Actions" }
        @if n.actions.is_empty() { p.empty { "None recorded." } }
        @else { ul.node-actions { @for a in &n.actions { li { code { (a) } } } } }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessQuery {
    after: String,
    /// "1" shows every event, routine reads unfolded.
    all: String,
}

/// One timeline page: everything, or significant events with routine reads folded.
enum Timeline {
    All(Vec<crate::engine::StoredEvent>),
    Folded(Folded),
}

fn parse_all(s: &str) -> Result<bool, UiError> {
    match s {
        "" => Ok(false),
        "1" => Ok(true),
        x => Err(UiError::bad_request(format!(
            "unknown show option {x:?}: expected 1 (everything) or nothing"
        ))),
    }
}

pub async fn process(
    State(ui): State<Arc<Ui>>,
    op: Op,
    Seg(exec): Seg,
    Params(f): Params<ProcessQuery>,
) -> Result<Response, UiError> {
    let after = match f.after.as_str() {
        "" => None,
        a => Some(
            id_to_key(a)
                .ok_or_else(|| UiError::bad_request(format!("bad event position {a:?}")))?,
        ),
    };
    let known = ui.engine.read().chains.chain_of(&exec).map(str::to_owned);
    let live_tag = super::live::chain(&ui, known.as_deref().unwrap_or(""));
    let chain = load_chain(&ui, Target::ExecId(exec.clone()))
        .await?
        .ok_or_else(|| UiError::not_found(format!("no process {exec:?} has been reported")))?;
    let n = chain
        .nodes
        .iter()
        .find(|n| n.exec_id == exec)
        .ok_or_else(|| UiError::not_found(format!("no process {exec:?}")))?;
    let chain_id = chain
        .summary
        .as_ref()
        .map(|s| s.chain_id.clone())
        .unwrap_or_default();
    let alerts = ui.alerts.list(usize::MAX, &chain_id, "", "");
    let exited = exited_of(&ui, &chain);
    let engine = ui.engine.clone();
    let e2 = exec.clone();
    let everything = parse_all(&f.all)?;
    let keep = policy_paths(&alerts);
    let (timeline, next, egress) = blocking(move || {
        let filter = admin::EventFilter {
            exec_id: e2,
            ..Default::default()
        };
        let egress = opaque_egress(&engine, filter.clone())?;
        if everything {
            let (evs, next) = engine.list_events(&filter, 200, after, true)?;
            Ok((Timeline::All(evs), next, egress))
        } else {
            let page = folded_page(&engine, &filter, after, &keep)?;
            let next = page.next;
            Ok((Timeline::Folded(page), next, egress))
        }
    })
    .await?;
    let events = match &timeline {
        Timeline::All(e) => e.as_slice(),
        Timeline::Folded(p) => p.events.as_slice(),
    };
    let proto_events: Vec<admin::StoredEvent> =
        events.iter().map(crate::engine::query::to_proto).collect();
    let refs: Vec<&admin::StoredEvent> = proto_events.iter().collect();
    let details = node_details(&ui, &op, n, exited.contains(&exec), &refs, &alerts);
    let path = format!("/processes/{}", enc(&exec));
    let body = html! {
        h1 { "Process " code { (exec) } }
        nav.breadcrumbs aria-label="Path from the chain root" {
            "Chain " (layout::chain_link(&chain_id)) ": "
            @for (i, e) in chain.path_from_root.iter().enumerate() {
                @if i > 0 { " → " }
                @if *e == exec { b { (short(e, 40)) } } @else { a href=(format!("/processes/{}", enc(e))) { (short(e, 40)) } }
            }
        }
        (details)
        @if !n.tls_uncovered.is_empty() || n.opaque_connections > 0 {
            section #opaque aria-labelledby="opaque-h" {
                h2 #opaque-h { "What Custody could not see" }
                @if let Some(s) = signal::opaque_sentence(n.opaque_connections, 1) { p.bad #opaque-summary { (s) } }
                (opaque_section(std::slice::from_ref(n), &egress, None))
            }
        }
        section #events aria-labelledby="pev-h" {
            h2 #pev-h { "Events" }
            nav.views aria-label="Events shown" {
                a href=(path.clone()) aria-current=[(!everything).then_some("true")] { "Significant first" }
                a href=(link(&path, &[("all", "1")])) aria-current=[everything.then_some("true")] { "Show everything" }
            }
            @match &timeline {
                Timeline::All(evs) => { (event_table(evs, None)) }
                Timeline::Folded(page) => { (folded_table(page, None)) }
            }
            @if let Some(k) = next { nav.pager { a href=(link(&path, &[("all", &f.all), ("after", &key_to_id(&k))])) rel="next" { "Later events →" } } }
        }
    };
    Ok(layout::page(
        &op,
        Nav::Chains,
        &format!("Process {exec}"),
        Some(&live_tag),
        body,
    ))
}
