//! Credentials by fingerprint (never a secret): kind, metadata, who held or used it
//! where, and whether a revocation is in force.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use custody_proto::admin::v1 as admin;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Nav, PER_PAGE, badge, pager, paginate, short, when};
use super::session::Op;
use super::{Params, Seg, Ui, UiError};

/// Fingerprints with a revocation in force → the action.
pub fn revoked_set(ui: &Ui) -> HashMap<String, String> {
    ui.responder
        .list(usize::MAX, true)
        .into_iter()
        .filter(|a| a.kind == "revoke_credential")
        .map(|a| (a.target, a.id))
        .collect()
}

fn metadata(m: &HashMap<String, String>, n: usize) -> Markup {
    let mut kv: Vec<(&String, &String)> = m.iter().collect();
    kv.sort();
    html! {
        ul.tags { @for (k, v) in kv.iter().take(n) { li { (k) "=" (short(v, 40)) } }
            @if kv.len() > n { li.muted { "+" (kv.len() - n) } } }
    }
}

pub fn cred_table(rows: &[admin::CredentialSummary], revoked: &HashMap<String, String>) -> Markup {
    html! {
        table.creds {
            thead { tr {
                th scope="col" { "Fingerprint" } th scope="col" { "Kind" } th scope="col" { "Metadata" }
                th scope="col" { "Hosts" } th scope="col" { "Agents" } th scope="col" { "Held / used by" }
                th scope="col" { "Revoked" } th scope="col" { "Last seen" }
            } }
            tbody { @for c in rows { tr data-fingerprint=(c.fingerprint) {
                th scope="row" { (layout::cred_link(&c.fingerprint)) }
                td { (c.kind) }
                td { (metadata(&c.metadata, 3)) }
                td { (c.hosts.len()) }
                td { @for (i, a) in c.agents.iter().take(3).enumerate() { @if i > 0 { ", " } (layout::agent_link(a)) }
                    @if c.agents.len() > 3 { " +" (c.agents.len() - 3) } }
                td { (c.held_by.len()) " / " (c.used_by.len()) }
                td { @match revoked.get(&c.fingerprint) {
                    Some(id) => { (badge("revoked", "bad")) " " (layout::action_link(id)) }
                    None => { span.muted { "no" } }
                } }
                td { (when(c.last_seen_ns)) }
            } } }
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CredsQuery {
    q: String,
    kind: String,
    revoked: String,
    page: Option<usize>,
}

pub async fn credentials(
    State(ui): State<Arc<Ui>>,
    op: Op,
    Params(f): Params<CredsQuery>,
) -> Result<Response, UiError> {
    let live_tag = super::live::actions(&ui);
    if !matches!(f.revoked.as_str(), "" | "yes" | "no") {
        return Err(UiError::bad_request(format!(
            "unknown revoked filter {:?}: expected yes or no",
            f.revoked
        )));
    }
    let page = f.page.unwrap_or(1).max(1);
    let revoked = revoked_set(&ui);
    let q = f.q.to_lowercase();
    let all = ui.engine.list_credentials();
    let mut kinds: Vec<String> = all.iter().map(|c| c.kind.clone()).collect();
    kinds.sort();
    kinds.dedup();
    let rows: Vec<admin::CredentialSummary> = all
        .into_iter()
        .filter(|c| f.kind.is_empty() || c.kind == f.kind)
        .filter(|c| match f.revoked.as_str() {
            "yes" => revoked.contains_key(&c.fingerprint),
            "no" => !revoked.contains_key(&c.fingerprint),
            _ => true,
        })
        .filter(|c| {
            q.is_empty()
                || c.fingerprint.to_lowercase().contains(&q)
                || c.metadata.values().any(|v| v.to_lowercase().contains(&q))
                || c.hosts.iter().any(|h| h.to_lowercase().contains(&q))
                || c.agents.iter().any(|a| a.to_lowercase().contains(&q))
        })
        .collect();
    let (rows, total) = paginate(rows, page, PER_PAGE);
    let mut kind_opts: Vec<(&str, &str)> = vec![("", "any")];
    kind_opts.extend(kinds.iter().map(|k| (k.as_str(), k.as_str())));
    let body = html! {
        h1 { "Credentials" }
        p.note { "Fingerprints are keyed HMACs computed on the hosts: no secret reaches the collector." }
        (layout::filter_form("/credentials", html! {
            (layout::text_field("q", "Fingerprint, metadata, host, agent", &f.q))
            (layout::select_field("kind", "Kind", &f.kind, &kind_opts))
            (layout::select_field("revoked", "Revoked", &f.revoked, &[("", "any"), ("yes", "revoked"), ("no", "not revoked")]))
        }))
        section #creds data-region aria-label="Credentials" {
            @if rows.is_empty() { p.empty { "No credential matches." } } @else { (cred_table(&rows, &revoked)) }
            (pager("/credentials", &[("q", &f.q), ("kind", &f.kind), ("revoked", &f.revoked)], page, PER_PAGE, total))
        }
    };
    Ok(layout::page(
        &op,
        Nav::Credentials,
        "Credentials",
        Some(&live_tag),
        body,
    ))
}

fn holders(ui: &Ui, ids: &[String]) -> Markup {
    let st = ui.engine.read();
    html! {
        @if ids.is_empty() { span.muted { "none" } }
        ul.plain { @for e in ids {
            @let live = st.chains.node(e).is_some_and(|n| n.exited_ns == 0);
            li data-exec=(e) { (layout::process_link(e)) " "
                @if live { (badge("live", "good")) } @else { (badge("ended", "neutral")) }
                @if let Some(n) = st.chains.node(e) { " " span.muted { (n.process.comm) } } }
        } }
    }
}

pub async fn credential(
    State(ui): State<Arc<Ui>>,
    op: Op,
    Seg(fp): Seg,
) -> Result<Response, UiError> {
    let live_tag = super::live::actions(&ui);
    let c = ui
        .engine
        .list_credentials()
        .into_iter()
        .find(|c| c.fingerprint == fp);
    let actions: Vec<admin::Action> = ui
        .responder
        .list(usize::MAX, false)
        .into_iter()
        .filter(|a| a.kind == "revoke_credential" && a.target == fp)
        .collect();
    if c.is_none() && actions.is_empty() {
        return Err(UiError::not_found(format!(
            "no sensor has reported credential {fp:?}"
        )));
    }
    let active = actions.iter().find(|a| a.active);
    let verbs: Vec<(&str, &str)> = if active.is_some() || c.is_none() {
        vec![]
    } else {
        vec![("revoke", "Revoke everywhere")]
    };
    let body = html! {
        h1 { "Credential " code { (fp) } }
        (layout::respond_buttons(&op, "credential", &fp, &verbs))
        dl.facts {
            dt { "Revocation" } dd { @match active {
                Some(a) => { (badge("revoked", "bad")) " by " (a.operator) " " (when(a.issued_at_ns)) " — " (layout::action_link(&a.id)) }
                None => { span.muted { "not revoked" } }
            } }
            @if let Some(c) = &c {
                dt { "Kind" } dd { (c.kind) }
                dt { "Metadata" } dd { (metadata(&c.metadata, usize::MAX)) }
                dt { "Hosts" } dd { ul.tags { @for h in &c.hosts { li { (layout::host_link(h)) } } } }
                dt { "Agents" } dd { ul.tags { @for a in &c.agents { li { (layout::agent_link(a)) } } } }
                dt { "First seen" } dd { (when(c.first_seen_ns)) }
                dt { "Last seen" } dd { (when(c.last_seen_ns)) }
            }
        }
        @if let Some(c) = &c {
            section aria-labelledby="held-h" {
                h2 #held-h { "Held by" } p.note { "Processes that had it in their environment or opened a file holding it." }
                (holders(&ui, &c.held_by))
                h2 { "Used by" } p.note { "Processes that sent it in a request header." }
                (holders(&ui, &c.used_by))
            }
        }
        section aria-labelledby="rev-h" {
            h2 #rev-h { "Revocations" }
            @if actions.is_empty() { p.empty { "None." } } @else { (super::respond::action_table(&actions)) }
        }
    };
    Ok(layout::page(
        &op,
        Nav::Credentials,
        &format!("Credential {fp}"),
        Some(&live_tag),
        body,
    ))
}
