//! Alerts raised by policies, newest first; responders acknowledge and assign them.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use custody_proto::admin::v1 as admin;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Nav, PER_PAGE, csrf, pager, state_badge, when};
use super::session::Op;
use super::{FormData, Params, Seg, Ui, UiError, enc};
use crate::auth::Role;

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsQuery {
    status: String,
    severity: String,
    chain: String,
    q: String,
    page: Option<usize>,
}

pub async fn alerts(
    State(ui): State<Arc<Ui>>,
    op: Op,
    Params(f): Params<AlertsQuery>,
) -> Result<Response, UiError> {
    let live_tag = super::live::alerts(&ui);
    if !matches!(f.status.as_str(), "" | "open" | "acknowledged") {
        return Err(UiError::bad_request(format!(
            "unknown status {:?}: expected open or acknowledged",
            f.status
        )));
    }
    if !matches!(
        f.severity.as_str(),
        "" | "low" | "medium" | "high" | "critical"
    ) {
        return Err(UiError::bad_request(format!(
            "unknown severity {:?}: expected low, medium, high or critical",
            f.severity
        )));
    }
    let page = f.page.unwrap_or(1).max(1);
    let q = f.q.to_lowercase();
    let all: Vec<admin::Alert> = ui
        .alerts
        .list(usize::MAX, &f.chain, &f.status, &f.severity)
        .into_iter()
        .filter(|a| {
            q.is_empty()
                || [
                    &a.policy_id,
                    &a.resource,
                    &a.action,
                    &a.host,
                    &a.agent_id,
                    &a.human,
                    &a.assignee,
                ]
                .iter()
                .any(|s| s.to_lowercase().contains(&q))
        })
        .collect();
    let (rows, total) = layout::paginate(all, page, PER_PAGE);
    let params = [
        ("status", f.status.as_str()),
        ("severity", &f.severity),
        ("chain", &f.chain),
        ("q", &f.q),
    ];
    let body = html! {
        h1 { "Alerts" }
        (layout::filter_form("/alerts", html! {
            (layout::text_field("q", "Policy, resource, host, agent", &f.q))
            (layout::select_field("status", "Status", &f.status, &[("", "any"), ("open", "open"), ("acknowledged", "acknowledged")]))
            (layout::select_field("severity", "Severity", &f.severity, &[("", "any"), ("critical", "critical"), ("high", "high"), ("medium", "medium"), ("low", "low")]))
            @if !f.chain.is_empty() { input type="hidden" name="chain" value=(f.chain); }
        }))
        @if !f.chain.is_empty() { p { "Chain " (layout::chain_link(&f.chain)) } }
        section #alert-list data-region aria-label="Alerts" {
            (alert_table(&op, &rows))
            (pager("/alerts", &params, page, PER_PAGE, total))
        }
    };
    Ok(layout::page(
        &op,
        Nav::Alerts,
        "Alerts",
        Some(&live_tag),
        body,
    ))
}

pub fn alert_table(op: &Op, rows: &[admin::Alert]) -> Markup {
    html! {
        @if rows.is_empty() { p.empty { "No alerts." } }
        @else { table.alerts {
            thead { tr {
                th scope="col" { "Time" } th scope="col" { "Severity" } th scope="col" { "Policy" }
                th scope="col" { "Denied" } th scope="col" { "Chain" } th scope="col" { "Where" }
                th scope="col" { "Enforced" } th scope="col" { "Status" } th scope="col" { "Response" }
            } }
            tbody { @for a in rows { tr data-alert=(a.id) data-status=(a.status) {
                td { (when(a.time_ns)) }
                td { (state_badge(&a.severity)) }
                td { (a.policy_id) @if !a.policy_file.is_empty() { br; span.muted { (a.policy_file) } } }
                td { b { (a.action) } " " code { (a.resource) }
                    @if !a.diagnostics.is_empty() { details { summary { "why" } ul { @for d in &a.diagnostics { li { (d) } } } } } }
                td { @if !a.chain_id.is_empty() { (layout::chain_link(&a.chain_id)) }
                    @if !a.human.is_empty() { br; span.muted { "for " (a.human) } } }
                td { @if !a.host.is_empty() { (layout::host_link(&a.host)) }
                    @if !a.agent_id.is_empty() { br; (layout::agent_link(&a.agent_id)) }
                    @if !a.exec_id.is_empty() { br; (layout::process_link(&a.exec_id)) } }
                td { (a.enforced) @if a.context_incomplete { br; span.muted { "context incomplete" } } }
                td { (state_badge(&a.status))
                    @if !a.assignee.is_empty() { br; "assigned to " (a.assignee) }
                    @if !a.acknowledged_by.is_empty() { br; span.muted { "ack " (a.acknowledged_by) " " (when(a.acknowledged_ns)) } }
                    @if op.can_act() {
                        @if a.status == "open" {
                            form.inline method="post" action=(format!("/alerts/{}", enc(&a.id))) {
                                (csrf(op)) input type="hidden" name="acknowledge" value="1";
                                button type="submit" { "Acknowledge" }
                            }
                        }
                        form.inline method="post" action=(format!("/alerts/{}", enc(&a.id))) {
                            (csrf(op))
                            label.sr-only for=(format!("assign-{}", a.id)) { "Assign alert to" }
                            input id=(format!("assign-{}", a.id)) type="text" name="assignee" size="10" placeholder="assignee" required;
                            button type="submit" { "Assign" }
                        }
                    }
                }
                td { @if !a.response.is_empty() { (a.response) }
                    @if !a.response_action_id.is_empty() { br; (layout::action_link(&a.response_action_id)) } }
            } } }
        } }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateForm {
    csrf: String,
    acknowledge: String,
    assignee: String,
}

pub async fn update(
    State(ui): State<Arc<Ui>>,
    op: Op,
    Seg(id): Seg,
    FormData(f): FormData<UpdateForm>,
) -> Result<Response, UiError> {
    op.check_csrf(&f.csrf)?;
    op.require(&ui, Role::Responder, "update alert")?;
    let ack = !f.acknowledge.is_empty();
    let assignee = f.assignee.trim();
    if !ack && assignee.is_empty() {
        return Err(UiError::bad_request(
            "nothing to do: acknowledge and/or name an assignee",
        ));
    }
    if assignee.len() > 200 {
        return Err(UiError::bad_request("assignee name too long"));
    }
    ui.alerts
        .update(&id, &op.name, ack, assignee)
        .map_err(UiError::internal)?
        .ok_or_else(|| UiError::not_found(format!("no alert {id:?}")))?;
    let mut what = vec![];
    if ack {
        what.push("acknowledged".to_string());
    }
    if !assignee.is_empty() {
        what.push(format!("assigned to {assignee}"));
    }
    let _ = ui.engine.audit(admin::AuditEntry {
        actor: op.name.clone(),
        role: op.role.as_str().into(),
        action: "update alert".into(),
        target: id,
        result: what.join(", "),
        ..Default::default()
    });
    Ok(Redirect::to("/alerts").into_response())
}
