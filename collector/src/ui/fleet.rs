//! The fleet (every host and its sensor's health) and one host's page (its agents
//! and live processes).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use custody_proto::admin::v1 as admin;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Nav, PER_PAGE, badge, pager, paginate, short, when};
use super::session::Op;
use super::{Params, Seg, Ui, UiError, enc};

/// Kernel counters of events lost (ring buffer or maps full).
const LOST_COUNTERS: [&str; 3] = ["ringbuf_full", "pending_full", "tracked_full"];
/// A connected host whose newest event is older than this is shown as lagging.
const LAG_WARN_NS: u64 = 60 * 1_000_000_000;

pub fn lost_events(h: &admin::Host) -> u64 {
    h.spool_dropped
        + LOST_COUNTERS
            .iter()
            .map(|k| h.counters.get(*k).copied().unwrap_or(0))
            .sum::<u64>()
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FleetQuery {
    q: String,
    state: String,
    page: Option<usize>,
}

/// Connected, disconnected, or retired (an identity an admin retired is not
/// expected back, so it is not shown as a failure).
fn sensor_state(h: &admin::Host) -> Markup {
    if h.retired {
        badge("retired", "neutral")
    } else if h.connected {
        badge("connected", "good")
    } else {
        badge("disconnected", "bad")
    }
}

fn matches(h: &admin::Host, f: &FleetQuery) -> bool {
    let q = f.q.to_lowercase();
    (q.is_empty()
        || h.host_id.to_lowercase().contains(&q)
        || h.kernel_release.to_lowercase().contains(&q)
        || h.sensor_version.to_lowercase().contains(&q))
        && match f.state.as_str() {
            "connected" => h.connected,
            "disconnected" => !h.connected && !h.retired,
            "retired" => h.retired,
            "lossy" => lost_events(h) > 0,
            "lagging" => h.connected && h.lag_ns > LAG_WARN_NS,
            _ => true,
        }
}

pub async fn fleet(
    State(ui): State<Arc<Ui>>,
    op: Op,
    Params(f): Params<FleetQuery>,
) -> Result<Response, UiError> {
    if !matches!(
        f.state.as_str(),
        "" | "connected" | "disconnected" | "lossy" | "lagging" | "retired"
    ) {
        return Err(UiError::bad_request(format!(
            "unknown state {:?}: expected connected, disconnected, lossy, lagging or retired",
            f.state
        )));
    }
    let page = f.page.unwrap_or(1).max(1);
    let live_tag = super::live::fleet(&ui);
    let hosts = ui.engine.list_hosts();
    let connected = hosts.iter().filter(|h| h.connected).count();
    let total_hosts = hosts.len();
    let (chains, live_chains) = {
        let st = ui.engine.read();
        let mut live = 0;
        let mut n = 0;
        for id in st.chains.chain_ids() {
            n += 1;
            if st.chains.members(id).is_some_and(|m| {
                m.iter()
                    .any(|e| st.chains.node(e).is_some_and(|n| n.exited_ns == 0))
            }) {
                live += 1;
            }
        }
        (n, live)
    };
    let open_alerts: u64 = ui.alerts.open_counts().0.values().sum();
    let active_actions = ui.responder.list(usize::MAX, true).len();
    let shown: Vec<admin::Host> = hosts.into_iter().filter(|h| matches(h, &f)).collect();
    let (rows, total) = paginate(shown, page, PER_PAGE);
    let body = html! {
        h1 { "Fleet" }
        section #summary data-region aria-label="Summary" {
            ul.cards {
                li { span.n { (total_hosts) } " hosts" }
                li { span.n { (connected) } " connected" }
                li { a href="/chains" { span.n { (chains) } " chains" } }
                li { a href="/chains?state=live" { span.n { (live_chains) } " live" } }
                li { a href="/alerts?status=open" { span.n { (open_alerts) } " open alerts" } }
                li { a href="/actions?active=1" { span.n { (active_actions) } " actions in force" } }
            }
        }
        (layout::filter_form("/fleet", html! {
            (layout::text_field("q", "Host, kernel or version", &f.q))
            (layout::select_field("state", "Sensor", &f.state, &[
                ("", "any"), ("connected", "connected"), ("disconnected", "disconnected"),
                ("lagging", "lagging"), ("lossy", "losing events"), ("retired", "retired"),
            ]))
        }))
        section #hosts data-region aria-label="Hosts" {
            (host_table(&rows))
            (pager("/fleet", &[("q", &f.q), ("state", &f.state)], page, PER_PAGE, total))
        }
    };
    Ok(layout::page(
        &op,
        Nav::Fleet,
        "Fleet",
        Some(&live_tag),
        body,
    ))
}

fn host_table(rows: &[admin::Host]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.empty { "No host matches." }
        } @else {
            table.hosts {
                thead { tr {
                    th scope="col" { "Host" } th scope="col" { "Sensor" } th scope="col" { "Last seen" }
                    th scope="col" { "Event lag" } th scope="col" { "Lost events" } th scope="col" { "Kernel" }
                    th scope="col" { "Version" } th scope="col" { "Features" } th scope="col" { "Events" }
                } }
                tbody {
                    @for h in rows {
                        @let lost = lost_events(h);
                        tr data-host=(h.host_id) data-connected=(h.connected) {
                            th scope="row" { (layout::host_link(&h.host_id)) }
                            td { (sensor_state(h)) }
                            td { (when(h.last_seen_ns)) }
                            td class=[(h.connected && (h.lag_ns > LAG_WARN_NS || h.lag_growing)).then_some("warn")] {
                                @if h.lag_ns == 0 { span.muted { "—" } } @else { (layout::span(h.lag_ns)) }
                                @if h.events_behind > 0 {
                                    " · " (h.events_behind) " behind"
                                    @if h.lag_growing { " (growing)" }
                                    @else if h.catch_up_eta_s > 0 { ", ~" (h.catch_up_eta_s) " s to catch up" }
                                }
                            }
                            td class=[(lost > 0).then_some("bad")] { (lost) }
                            td { (h.kernel_release) }
                            td { (h.sensor_version) }
                            td title=(h.features.join(", ")) { (h.features.len()) }
                            td { (h.events_stored) }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct HostQuery {
    q: String,
    page: Option<usize>,
}

struct ProcRow {
    exec_id: String,
    pid: u32,
    comm: String,
    exe: String,
    agent: String,
    chain: String,
    start: u64,
}

pub async fn host(
    State(ui): State<Arc<Ui>>,
    op: Op,
    Seg(host): Seg,
    Params(f): Params<HostQuery>,
) -> Result<Response, UiError> {
    let page = f.page.unwrap_or(1).max(1);
    let live_tag = super::live::fleet(&ui);
    let h = ui
        .engine
        .list_hosts()
        .into_iter()
        .find(|h| h.host_id == host)
        .ok_or_else(|| UiError::not_found(format!("no host {host:?} is enrolled")))?;
    let agents: Vec<admin::Agent> = ui
        .engine
        .list_agents()
        .into_iter()
        .filter(|a| a.hosts.contains(&host))
        .collect();
    let q = f.q.to_lowercase();
    let mut procs: Vec<ProcRow> = {
        let st = ui.engine.read();
        st.chains
            .nodes()
            .filter(|(_, n)| n.host == host && n.exited_ns == 0)
            .map(|(id, n)| ProcRow {
                exec_id: id.clone(),
                pid: n.process.pid,
                comm: n.process.comm.clone(),
                exe: n.process.exe.clone(),
                agent: n.process.agent_id.clone(),
                chain: n.chain.clone(),
                start: n.process.start_time_ns.max(n.first_seen_ns),
            })
            .filter(|p| {
                q.is_empty()
                    || [&p.exec_id, &p.comm, &p.exe, &p.agent]
                        .iter()
                        .any(|s| s.to_lowercase().contains(&q))
            })
            .collect()
    };
    procs.sort_by(|a, b| b.start.cmp(&a.start).then(a.exec_id.cmp(&b.exec_id)));
    let (procs, total) = paginate(procs, page, PER_PAGE);
    let actions: Vec<admin::Action> = ui
        .responder
        .list(500, false)
        .into_iter()
        .filter(|a| a.hosts.iter().any(|d| d.host == host))
        .take(10)
        .collect();
    let lost = lost_events(&h);
    let path = format!("/hosts/{}", enc(&host));
    let body = html! {
        h1 { "Host " (host) }
        section #health data-region aria-labelledby="health-h" {
            h2 #health-h { "Sensor" }
            dl.facts {
                dt { "State" } dd { (sensor_state(&h)) }
                dt { "Last seen" } dd { (when(h.last_seen_ns)) }
                dt { "Event lag" } dd { @if h.lag_ns == 0 { "—" } @else { (layout::span(h.lag_ns)) } }
                dt { "Lost events" } dd class=[(lost > 0).then_some("bad")] { (lost)
                    " (spool dropped " (h.spool_dropped) ", spool depth " (h.spool_depth) ")" }
                dt { "Sensor version" } dd { (h.sensor_version) }
                dt { "Kernel" } dd { (h.kernel_release) }
                dt { "Boot id" } dd { code { (h.boot_id) } }
                dt { "Enrolled" } dd { (when(h.enrolled_at_ns)) }
                @if h.retired {
                    dt { "Retired" } dd { (when(h.retired_at_ns)) " by " (h.retired_by)
                        @if !h.retired_reason.is_empty() { ": " (h.retired_reason) }
                        " — its certificate is refused; enrolling the host again gives it a new identity" }
                }
                dt { "Certificate" } dd {
                    @if h.cert_serial.is_empty() { span.muted { "not recorded yet (adopted at its next connection)" } }
                    @else { "serial " code { (h.cert_serial) } @if h.cert_not_after_ns > 0 { ", expires " (when(h.cert_not_after_ns)) } }
                    @if h.certs_refused > 0 {
                        span.bad { " — " (h.certs_refused) " streams refused for another or an older certificate of this host" }
                    }
                }
                dt { "Events stored" } dd { (h.events_stored) " (last seq " (h.last_seq) ", duplicates dropped "
                    (h.duplicates_dropped) ", batches rejected " (h.batches_rejected) ", events refused " (h.events_refused)
                    ", fields cut " (h.fields_truncated) ", clock-skewed " (h.clock_skewed) ")" }
                dt { "Kernel features" } dd {
                    @if h.features.is_empty() { span.muted { "none reported" } }
                    ul.tags { @for f in &h.features { li { (f) } } }
                }
                @if !h.counters.is_empty() {
                    dt { "Counters" } dd {
                        ul.tags { @for (k, v) in &h.counters { li { (k) " " (v) } } }
                    }
                }
            }
        }
        section aria-labelledby="agents-h" {
            h2 #agents-h { "Agents on this host" }
            @if agents.is_empty() { p.empty { "No agent seen on this host." } }
            @else {
                table {
                    thead { tr { th scope="col" { "Agent" } th scope="col" { "Origin" } th scope="col" { "Kind" } th scope="col" { "Last seen" } } }
                    tbody { @for a in &agents { tr {
                        th scope="row" { (layout::agent_link(&a.agent_id)) }
                        td { (super::agents::origin_badge(&a.origin)) }
                        td { (a.kind) }
                        td { (when(a.last_seen_ns)) }
                    } } }
                }
            }
        }
        section #procs data-region aria-labelledby="procs-h" {
            h2 #procs-h { "Live processes" }
            (layout::filter_form(&path, layout::text_field("q", "Exec id, command or agent", &f.q)))
            @if procs.is_empty() { p.empty { "No live tracked process." } }
            @else {
                table.procs {
                    thead { tr { th scope="col" { "Process" } th scope="col" { "pid" } th scope="col" { "Command" }
                        th scope="col" { "Agent" } th scope="col" { "Chain" } th scope="col" { "Started" } } }
                    tbody { @for p in &procs { tr data-exec=(p.exec_id) {
                        th scope="row" { (layout::process_link(&p.exec_id)) }
                        td { (p.pid) }
                        td title=(p.exe) { (short(&p.comm, 40)) }
                        td { @if !p.agent.is_empty() { (layout::agent_link(&p.agent)) } }
                        td { (layout::chain_link(&p.chain)) }
                        td { (when(p.start)) }
                    } } }
                }
                (pager(&path, &[("q", &f.q)], page, PER_PAGE, total))
            }
        }
        section aria-labelledby="hacts-h" {
            h2 #hacts-h { "Recent actions on this host" }
            @if actions.is_empty() { p.empty { "None." } }
            @else { (super::respond::action_table(&actions)) }
        }
    };
    Ok(layout::page(
        &op,
        Nav::Fleet,
        &format!("Host {host}"),
        Some(&live_tag),
        body,
    ))
}
