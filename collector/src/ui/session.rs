//! Sign-in with an operator token, server-side sessions, CSRF and role checks.
//!
//! The browser holds only a random session id in `__Host-custody` (HttpOnly, Secure,
//! SameSite=Strict, Path=/; the `__Host-` prefix makes the browser refuse it from
//! anything but this origin over HTTPS). The session, kept in memory, holds the
//! operator token, which is checked again on every request, so a deleted token or a
//! changed role applies at once. Sessions end after an hour idle or twelve hours in
//! all, at sign-out, and when the collector restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header, request::Parts};
use axum::response::{IntoResponse, Redirect, Response};
use custody_proto::admin::v1::AuditEntry;
use maud::html;
use serde::Deserialize;

use super::{FormData, Params, Ui, UiError, layout, link};
use crate::auth::Role;
use crate::secret::random_bytes;

pub const COOKIE: &str = "__Host-custody";
const MAX_SESSIONS: usize = 10_000;

struct Session {
    token: String,
    csrf: String,
    created: Instant,
    last: Instant,
}

pub struct SessionStore {
    map: Mutex<HashMap<String, Session>>,
    idle: Duration,
    absolute: Duration,
}

impl Default for SessionStore {
    fn default() -> Self {
        Self::with_expiry(Duration::from_secs(3600), Duration::from_secs(12 * 3600))
    }
}

impl SessionStore {
    /// Sessions that end after `idle` without use or `absolute` in all.
    pub fn with_expiry(idle: Duration, absolute: Duration) -> SessionStore {
        SessionStore {
            map: Mutex::default(),
            idle,
            absolute,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last) > self.idle || now.duration_since(s.created) > self.absolute
    }

    /// A new session for `token`: (session id, CSRF token).
    pub fn create(&self, token: &str) -> (String, String) {
        let now = Instant::now();
        let sid = hex::encode(random_bytes::<32>());
        let csrf = hex::encode(random_bytes::<32>());
        let mut m = self.lock();
        m.retain(|_, s| !self.expired(s, now));
        if m.len() >= MAX_SESSIONS {
            // Full of live sessions: the least recently used one goes.
            if let Some(k) = m.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| k.clone()) {
                m.remove(&k);
            }
        }
        m.insert(
            sid.clone(),
            Session {
                token: token.to_string(),
                csrf: csrf.clone(),
                created: now,
                last: now,
            },
        );
        (sid, csrf)
    }

    /// The live session's (token, CSRF token); touches it. Expired ones are removed.
    fn get(&self, sid: &str) -> Option<(String, String)> {
        let now = Instant::now();
        let mut m = self.lock();
        let s = m.get_mut(sid)?;
        if self.expired(s, now) {
            m.remove(sid);
            return None;
        }
        s.last = now;
        Some((s.token.clone(), s.csrf.clone()))
    }

    /// Whether a session id is live (without touching it), for long-lived streams.
    pub fn is_live(&self, sid: &str) -> bool {
        let now = Instant::now();
        self.lock().get(sid).is_some_and(|s| !self.expired(s, now))
    }

    pub fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value of cookie `name` from the request's Cookie headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn set_cookie(sid: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={sid}; Path=/; Secure; HttpOnly; SameSite=Strict"
    ))
    .expect("hex session id is a valid header")
}

fn clear_cookie() -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
    ))
    .expect("valid header")
}

/// Constant-time equality of two secrets.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A browser says where a POST comes from (Origin, and Sec-Fetch-Site in current
/// browsers); one from another site is refused. This guards sign-in, which has no
/// session to hold a CSRF token yet, and backs the token up everywhere else.
fn check_origin(headers: &HeaderMap, uri: &Uri) -> Result<(), UiError> {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if let Some(s) = site
        && s != "same-origin"
        && s != "none"
    {
        return Err(UiError::forbidden(format!(
            "cross-origin request refused (Sec-Fetch-Site {s})"
        )));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("null");
    if origin == "null" {
        // Sent for privacy reasons by some requests; trusted only with the browser's
        // own statement that the request is same-origin.
        return if site == Some("same-origin") {
            Ok(())
        } else {
            Err(UiError::forbidden(
                "cross-origin request refused (Origin null)",
            ))
        };
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()));
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(&h) => Ok(()),
        _ => Err(UiError::forbidden(format!(
            "cross-origin request refused (Origin {origin})"
        ))),
    }
}

/// A signed-in operator, for every page but sign-in.
pub struct Op {
    pub name: String,
    pub role: Role,
    pub csrf: String,
    pub sid: String,
}

impl Op {
    pub fn can_act(&self) -> bool {
        self.role >= Role::Responder
    }

    /// Refuses a state change whose form does not carry this session's CSRF token.
    pub fn check_csrf(&self, token: &str) -> Result<(), UiError> {
        if same_secret(token, &self.csrf) {
            Ok(())
        } else {
            Err(UiError::forbidden(
                "CSRF check failed: the form's token is missing or belongs to another \
                 session; reload the page and try again",
            ))
        }
    }

    /// Refuses (403, audited) an operator whose role is below `min`.
    pub fn require(&self, ui: &Ui, min: Role, action: &str) -> Result<(), UiError> {
        if self.role >= min {
            return Ok(());
        }
        let _ = ui.engine.audit(AuditEntry {
            actor: self.name.clone(),
            role: self.role.as_str().into(),
            action: action.into(),
            result: format!("denied: needs role {} (web UI)", min.as_str()),
            ..Default::default()
        });
        Err(UiError::forbidden(format!(
            "{action} needs role {} or higher; operator {:?} has role {}",
            min.as_str(),
            self.name,
            self.role.as_str()
        )))
    }
}

impl FromRequestParts<Arc<Ui>> for Op {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, ui: &Arc<Ui>) -> Result<Op, Response> {
        if parts.method != Method::GET && parts.method != Method::HEAD {
            check_origin(&parts.headers, &parts.uri).map_err(IntoResponse::into_response)?;
        }
        if let Some(sid) = cookie(&parts.headers, COOKIE)
            && let Some((token, csrf)) = ui.sessions.get(&sid)
        {
            match ui.tokens.operator(&token) {
                Some(op) => {
                    return Ok(Op {
                        name: op.name,
                        role: op.role,
                        csrf,
                        sid,
                    });
                }
                // The token was withdrawn: so is the session.
                None => ui.sessions.remove(&sid),
            }
        }
        if parts.method == Method::GET && !parts.uri.path().starts_with("/live/") {
            let next = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            return Err(Redirect::to(&link("/login", &[("next", next)])).into_response());
        }
        Err(UiError::new(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            "sign in first (the session may have expired or been signed out)",
        )
        .into_response())
    }
}

/// Where to go after sign-in: only a path on this site.
///
/// Browsers drop tabs and newlines inside a URL and read `\\` as `/`, so
/// `/\t/evil.example` is `//evil.example` (another site) by the time it is followed:
/// any control character, whitespace or backslash makes the value refused, and so
/// does a second leading slash. A CR/LF would also break the `Location` header.
pub(crate) fn safe_next(next: &str) -> &str {
    let plain = !next
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\');
    if plain && next.starts_with('/') && !next.starts_with("//") {
        next
    } else {
        "/fleet"
    }
}

#[cfg(test)]
#[test]
fn safe_next_refuses_what_a_browser_would_turn_into_another_site() {
    for bad in [
        "https://evil.example/",
        "//evil.example",
        "/\\evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "/\r\n/x",
        "/fleet\r\nSet-Cookie: a=b",
        "/ /evil.example",
        "/\u{85}/evil.example",
        "",
        "fleet",
    ] {
        assert_eq!(safe_next(bad), "/fleet", "{bad:?}");
    }
    for good in ["/fleet", "/chains?state=live", "/chain/a%2Fb#timeline"] {
        assert_eq!(safe_next(good), good);
    }
}

pub async fn home(_op: Op) -> Redirect {
    Redirect::to("/fleet")
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LoginQuery {
    next: String,
    signed_out: String,
}

pub async fn login_page(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    Params(q): Params<LoginQuery>,
) -> Response {
    if let Some(sid) = cookie(&headers, COOKIE)
        && ui.sessions.is_live(&sid)
    {
        return Redirect::to(safe_next(&q.next)).into_response();
    }
    let note = (!q.signed_out.is_empty()).then_some("Signed out.");
    layout::respond_html(login_form(&q.next, note, None))
}

fn login_form(next: &str, note: Option<&str>, error: Option<&str>) -> maud::Markup {
    layout::bare(
        "Sign in",
        html! {
            section.signin aria-labelledby="signin-h" {
                h1 #signin-h { "Custody — sign in" }
                @if let Some(n) = note { p.note role="status" { (n) } }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                form method="post" action="/login" {
                    input type="hidden" name="next" value=(next);
                    label for="token" { "Operator token" }
                    input #token type="password" name="token" required autocomplete="off"
                        autofocus spellcheck="false" placeholder="cso1.…";
                    button type="submit" { "Sign in" }
                }
                p.hint {
                    "The same token custodyctl uses; an admin mints one with "
                    code { "custody-collector operator-token --role viewer|responder|admin --name NAME" } "."
                }
            }
        },
    )
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LoginForm {
    token: String,
    next: String,
}

pub async fn login(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    uri: Uri,
    FormData(f): FormData<LoginForm>,
) -> Response {
    if let Err(e) = check_origin(&headers, &uri) {
        return e.into_response();
    }
    let token = f.token.trim();
    let Some(op) = ui.tokens.operator(token) else {
        let mut r =
            layout::respond_html(login_form(&f.next, None, Some("Unknown operator token.")));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    };
    // A new id at every sign-in: a session id planted before cannot be ridden.
    if let Some(old) = cookie(&headers, COOKIE) {
        ui.sessions.remove(&old);
    }
    let (sid, _) = ui.sessions.create(token);
    let _ = ui.engine.audit(AuditEntry {
        actor: op.name.clone(),
        role: op.role.as_str().into(),
        action: "ui sign-in".into(),
        result: "ok".into(),
        ..Default::default()
    });
    let mut r = Redirect::to(safe_next(&f.next)).into_response();
    r.headers_mut().insert(header::SET_COOKIE, set_cookie(&sid));
    r
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn logout(
    State(ui): State<Arc<Ui>>,
    op: Op,
    FormData(f): FormData<CsrfForm>,
) -> Result<Response, UiError> {
    op.check_csrf(&f.csrf)?;
    ui.sessions.remove(&op.sid);
    let mut r = Redirect::to("/login?signed_out=1").into_response();
    r.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    Ok(r)
}
