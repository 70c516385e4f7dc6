//! Page frame, navigation and small rendering helpers shared by the pages. Every
//! value from events is spliced with maud's `(…)`, which HTML-escapes it.

use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::live::Tag;
use super::session::Op;
use super::{UiError, asset_version, enc, link};
use crate::clock::now_ns;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Fleet,
    Agents,
    Chains,
    Alerts,
    Credentials,
    Actions,
}

const NAV: [(Nav, &str, &str); 6] = [
    (Nav::Fleet, "/fleet", "Fleet"),
    (Nav::Agents, "/agents", "Agents"),
    (Nav::Chains, "/chains", "Chains"),
    (Nav::Alerts, "/alerts", "Alerts"),
    (Nav::Credentials, "/credentials", "Credentials"),
    (Nav::Actions, "/actions", "Actions"),
];

fn head(title: &str) -> Markup {
    let v = asset_version();
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            link rel="icon" href="data:,";
            title { (title) " · Custody" }
            link rel="stylesheet" href=(format!("/static/style.css?v={v}"));
            script src=(format!("/static/app.js?v={v}")) defer {}
        }
    }
}

/// A page without navigation (sign-in, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main #main { (body) }
            }
        }
    }
}

pub fn error_page(e: &UiError) -> Markup {
    bare(
        &e.title,
        html! {
            section.error-page aria-labelledby="err-h" {
                h1 #err-h { (e.status.as_u16()) " — " (e.title) }
                p.error role="alert" { (e.detail) }
                p { a href="/fleet" { "Back to the fleet" } " · " a href="/login" { "Sign in" } }
            }
        },
    )
}

/// A full page for a signed-in operator. `live` names the server-sent-events topic
/// whose messages refresh the page's `data-region` elements, and the digest the page
/// was rendered at.
pub fn page(op: &Op, nav: Nav, title: &str, live: Option<&Tag>, body: Markup) -> Response {
    respond_html(html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body data-live=[live.map(|l| &l.topic)] data-live-version=[live.map(|l| l.version)] {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/fleet" { "Custody" }
                    nav aria-label="Main" {
                        ul {
                            @for (n, href, label) in NAV {
                                li { a href=(href) aria-current=[(n == nav).then_some("page")] { (label) } }
                            }
                        }
                    }
                    div.who {
                        span { (op.name) " " span.role { "(" (op.role.as_str()) ")" } }
                        @if live.is_some() {
                            span.live-state #live-state role="status" aria-live="polite" { "live" }
                        }
                        form method="post" action="/logout" {
                            (csrf(op))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    })
}

/// An HTML response.
pub fn respond_html(m: Markup) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

pub fn csrf(op: &Op) -> Markup {
    html! { input type="hidden" name="csrf" value=(op.csrf); }
}

/// "2026-01-02 03:04:05 UTC".
pub fn ts(ns: u64) -> String {
    if ns == 0 {
        return "—".into();
    }
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// "3.2 s", "4 min", "2 h", "5 d".
pub fn span(ns: u64) -> String {
    let s = ns as f64 / 1e9;
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.0} h", s / 3600.0)
    } else {
        format!("{:.0} d", s / 86400.0)
    }
}

pub fn ms(ns: u64) -> String {
    format!("{:.1} ms", ns as f64 / 1e6)
}

/// A time shown as "12 s ago" with the absolute time as a tooltip.
pub fn when(ns: u64) -> Markup {
    if ns == 0 {
        return html! { span.muted { "never" } };
    }
    let now = now_ns();
    let rel = if ns > now {
        "just now".to_string()
    } else {
        format!("{} ago", span(now - ns))
    };
    html! { time title=(ts(ns)) { (rel) } }
}

/// At most `n` characters, with an ellipsis when cut.
pub fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut o: String = s.chars().take(n.saturating_sub(1)).collect();
        o.push('…');
        o
    }
}

pub fn badge(text: &str, class: &str) -> Markup {
    html! { span class=(format!("badge {class}")) { (text) } }
}

pub fn state_badge(state: &str) -> Markup {
    let class = match state {
        "ok" | "done" | "connected" | "live" => "good",
        "pending" | "sent" | "partial" | "open" => "warn",
        "failed" | "unsupported" | "disconnected" | "critical" | "high" => "bad",
        _ => "neutral",
    };
    badge(state, class)
}

pub const PER_PAGE: usize = 50;

/// One page (1-based) of `items`, and how many there were.
pub fn paginate<T>(items: Vec<T>, page: usize, per: usize) -> (Vec<T>, usize) {
    let total = items.len();
    let start = page.saturating_sub(1).saturating_mul(per);
    (items.into_iter().skip(start).take(per).collect(), total)
}

/// Previous/next links keeping the other parameters.
pub fn pager(path: &str, params: &[(&str, &str)], page: usize, per: usize, total: usize) -> Markup {
    let page = page.max(1);
    let pages = total.div_ceil(per).max(1);
    let first = if total == 0 { 0 } else { (page - 1) * per + 1 };
    let last = (page * per).min(total);
    let at = |p: usize| {
        let ps = p.to_string();
        let mut v: Vec<(&str, &str)> = params.to_vec();
        v.push(("page", &ps));
        link(path, &v)
    };
    html! {
        nav.pager aria-label="Pages" {
            span { (first) "–" (last) " of " (total) }
            @if page > 1 { a href=(at(page - 1)) rel="prev" { "← Previous" } }
            @if page < pages { a href=(at(page + 1)) rel="next" { "Next →" } }
        }
    }
}

/// The response verbs offered for a target, as links to the confirmation page
/// (rendered only for operators who may act).
pub fn respond_buttons(op: &Op, scope: &str, target: &str, verbs: &[(&str, &str)]) -> Markup {
    if !op.can_act() {
        return html! {};
    }
    html! {
        div.actions role="group" aria-label="Response" {
            @for (verb, label) in verbs {
                a class=(format!("button {}", if *verb == "release" { "secondary" } else { "danger" }))
                    href=(link("/respond", &[("verb", verb), ("scope", scope), ("target", target)]))
                    data-verb=(verb) { (label) }
            }
        }
    }
}

pub fn host_link(h: &str) -> Markup {
    html! { a href=(format!("/hosts/{}", enc(h))) { (h) } }
}

pub fn agent_link(a: &str) -> Markup {
    html! { a href=(format!("/agents/{}", enc(a))) { (a) } }
}

pub fn chain_link(c: &str) -> Markup {
    html! { a href=(format!("/chains/{}", enc(c))) { code { (c) } } }
}

pub fn process_link(e: &str) -> Markup {
    html! { a href=(format!("/processes/{}", enc(e))) { code { (e) } } }
}

pub fn cred_link(fp: &str) -> Markup {
    html! { a href=(format!("/credentials/{}", enc(fp))) { code { (short(fp, 30)) } } }
}

pub fn action_link(id: &str) -> Markup {
    html! { a href=(format!("/actions/{}", enc(id))) { code { (id) } } }
}

/// A filter form (GET) with the given fields; `hidden` keeps other parameters.
pub fn filter_form(action: &str, fields: Markup) -> Markup {
    html! {
        form.filters method="get" action=(action) role="search" {
            (fields)
            button type="submit" { "Filter" }
            a href=(action) { "Clear" }
        }
    }
}

pub fn text_field(name: &str, label: &str, value: &str) -> Markup {
    let id = format!("f-{name}");
    html! {
        label for=(id) { (label) }
        input id=(id) type="search" name=(name) value=(value);
    }
}

pub fn select_field(name: &str, label: &str, value: &str, options: &[(&str, &str)]) -> Markup {
    let id = format!("f-{name}");
    html! {
        label for=(id) { (label) }
        select id=(id) name=(name) {
            @for (v, l) in options {
                option value=(v) selected[*v == value] { (l) }
            }
        }
    }
}
