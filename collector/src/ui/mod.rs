//! The collector's web UI: server-rendered HTML (maud) with a little JavaScript for
//! live updates, served by the collector itself on its own TLS port next to the
//! gRPC services (browsers negotiate HTTP/2 with ALPN; HTTP/1.1 without ALPN is
//! accepted too). Everything is in this binary: the stylesheet and script are
//! embedded with `include_str!`.
//!
//! Operators sign in with the same operator tokens custodyctl uses; a signed-in
//! browser holds only a random session id (cookie `__Host-custody`: HttpOnly,
//! Secure, SameSite=Strict), sessions live in memory with an idle and an absolute
//! expiry, and every state-changing request carries the session's CSRF token.
//! Viewers see everything; acting needs responder (the buttons are not rendered for
//! viewers, and the server refuses with 403 and audits the attempt).
//!
//! Pages: fleet and hosts, agents, chains (list and graph), processes, alerts,
//! credentials, response (confirmation with blast radius, then the action's per-host
//! confirmations, live), actions and the audit trail. Live regions refresh over
//! server-sent events (`/live/...`).

mod agents;
mod alerts;
mod chains;
mod creds;
mod fleet;
mod graph;
mod layout;
mod live;
mod respond;
mod session;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::alerts::Alerts;
use crate::auth::TokenStore;
use crate::engine::Engine;
use crate::response::{Responder, ResponseError};

pub use session::{COOKIE, SessionStore};

/// What the UI reads and acts through.
pub struct Ui {
    pub engine: Arc<Engine>,
    pub responder: Arc<Responder>,
    pub alerts: Arc<Alerts>,
    pub tokens: TokenStore,
    pub sessions: SessionStore,
    /// Turns true when the collector shuts down: live streams end.
    pub shutdown: watch::Receiver<bool>,
}

impl Ui {
    pub fn new(
        engine: Arc<Engine>,
        responder: Arc<Responder>,
        alerts: Arc<Alerts>,
        tokens: TokenStore,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Ui> {
        Arc::new(Ui {
            engine,
            responder,
            alerts,
            tokens,
            sessions: SessionStore::default(),
            shutdown,
        })
    }
}

/// The address to print for operators: the listen address, with an unspecified IP
/// replaced by 127.0.0.1 (the server certificate always names it).
pub fn url(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("https://{ip}:{}/", addr.port())
}

/// The UI's routes, with a fallback that answers gRPC requests for unknown services
/// the way tonic does and everything else with an error page. The gRPC services are
/// added to the result (see `server.rs`).
pub fn router(ui: Arc<Ui>) -> Router {
    Router::new()
        .route("/", get(session::home))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/static/{file}", get(static_file))
        .route("/fleet", get(fleet::fleet))
        .route("/hosts/{host}", get(fleet::host))
        .route("/agents", get(agents::agents))
        .route("/agents/{id}", get(agents::agent))
        .route("/chains", get(chains::chains))
        .route("/chains/{id}", get(chains::chain))
        .route("/processes/{id}", get(chains::process))
        .route("/alerts", get(alerts::alerts))
        .route("/alerts/{id}", post(alerts::update))
        .route("/credentials", get(creds::credentials))
        .route("/credentials/{fp}", get(creds::credential))
        .route("/respond", get(respond::confirm).post(respond::respond))
        .route("/actions", get(respond::actions))
        .route("/actions/{id}", get(respond::action))
        .route("/live/{topic}", get(live::stream))
        .route("/live/{topic}/{id}", get(live::stream_one))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(ui)
}

const STYLE: &str = include_str!("../../ui/style.css");
const SCRIPT: &str = include_str!("../../ui/app.js");

/// A short content hash, so a new binary's assets are never served from a stale cache.
pub(crate) fn asset_version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        crate::secret::sha256_hex(format!("{STYLE}{SCRIPT}").as_bytes())[..12].to_string()
    })
}

async fn static_file(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, ty) = match file.as_str() {
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return UiError::not_found(format!("no static file {file:?}")).into_response(),
    };
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    r
}

async fn fallback(req: Request) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        // What tonic answers for a service it does not have.
        return tonic::Status::unimplemented("").into_http();
    }
    UiError::not_found(format!("no page at {}", req.uri().path())).into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    UiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
    .into_response()
}

/// Headers on every UI response: no framing, no sniffing, no referrer to other
/// sites, scripts and styles only from this origin, and no caching of pages.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "same-origin");
    set(h, "x-frame-options", "DENY");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    r
}

/// An error page with its status code.
#[derive(Debug)]
pub struct UiError {
    pub status: StatusCode,
    pub title: String,
    pub detail: String,
}

impl UiError {
    pub fn new(status: StatusCode, title: &str, detail: impl Into<String>) -> UiError {
        UiError {
            status,
            title: title.to_string(),
            detail: detail.into(),
        }
    }
    pub fn bad_request(detail: impl Into<String>) -> UiError {
        Self::new(StatusCode::BAD_REQUEST, "Bad request", detail)
    }
    pub fn not_found(detail: impl Into<String>) -> UiError {
        Self::new(StatusCode::NOT_FOUND, "Not found", detail)
    }
    pub fn forbidden(detail: impl Into<String>) -> UiError {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", detail)
    }
    pub fn internal(e: impl std::fmt::Display) -> UiError {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error",
            e.to_string(),
        )
    }

    /// A refused response request, with the matching HTTP code.
    pub fn from_response(e: &ResponseError) -> UiError {
        let (status, title) = match e {
            ResponseError::Invalid(_) => (StatusCode::BAD_REQUEST, "Refused"),
            ResponseError::NotFound(_) => (StatusCode::NOT_FOUND, "Not found"),
            ResponseError::Duplicate { .. } | ResponseError::NotApplicable(_) => {
                (StatusCode::CONFLICT, "Refused")
            }
            ResponseError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Failed"),
        };
        Self::new(status, title, e.to_string())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let mut r = layout::respond_html(layout::error_page(&self));
        *r.status_mut() = self.status;
        r
    }
}

impl From<tokio::task::JoinError> for UiError {
    fn from(e: tokio::task::JoinError) -> Self {
        UiError::internal(format!("background task failed: {e}"))
    }
}

/// Runs blocking store work (chain queries, event scans) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, UiError> {
    tokio::task::spawn_blocking(f)
        .await?
        .map_err(|e| UiError::internal(format!("{e:#}")))
}

/// Query parameters, parsed strictly: a malformed or unknown parameter is a 400 page.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = UiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, UiError> {
        serde_urlencoded::from_str(parts.uri.query().unwrap_or(""))
            .map(Params)
            .map_err(|e| UiError::bad_request(format!("bad query parameters: {e}")))
    }
}

/// One path segment, percent-decoded; bad encoding is a 400 page.
pub struct Seg(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Seg {
    type Rejection = UiError;
    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, UiError> {
        axum::extract::Path::<String>::from_request_parts(parts, s)
            .await
            .map(|p| Seg(p.0))
            .map_err(|e| UiError::bad_request(format!("bad path: {e}")))
    }
}

/// Forms are small; anything bigger is refused.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// An urlencoded form body, parsed strictly (400 page on malformed input).
pub struct FormData<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for FormData<T> {
    type Rejection = UiError;
    async fn from_request(req: Request, _: &S) -> Result<Self, UiError> {
        let ty = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ty.starts_with("application/x-www-form-urlencoded") {
            return Err(UiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported form",
                "forms must be sent as application/x-www-form-urlencoded",
            ));
        }
        let body = axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES)
            .await
            .map_err(|_| UiError::bad_request("form too large or cut short"))?;
        serde_urlencoded::from_bytes(&body)
            .map(FormData)
            .map_err(|e| UiError::bad_request(format!("bad form: {e}")))
    }
}

/// Percent-encodes one URL path segment or query value (everything but unreserved
/// characters), so ids with any bytes make safe links.
pub fn enc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Builds `path?k=v&…` from the non-empty pairs.
pub fn link(path: &str, pairs: &[(&str, &str)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", q.join("&"))
    }
}
