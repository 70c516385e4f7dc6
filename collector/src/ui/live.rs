//! Live updates: server-sent events telling a page to refresh its live regions.
//!
//! Each topic has a cheap digest of what its pages show (the host list, the stored
//! event count, a chain's members and their event counts, alerts, actions). A page
//! carries the digest it was rendered at (`data-live-version`) and opens its stream
//! with it, so a change between rendering and subscribing is not lost; the stream
//! polls the digest (at once when an alert is raised) and sends "refresh" when it
//! moves, at most once per topic's interval. Messages carry no data: the page
//! fetches itself again, so what it shows is always rendered (and escaped) by the
//! server.
//!
//! A stream ends when its session does, when the collector shuts down, and after ten
//! minutes (the browser reconnects on its own).

use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use custody_proto::admin::v1::Alert;
use tokio::sync::broadcast;

use serde::Deserialize;

use super::session::Op;
use super::{Params, Seg, Ui, UiError, enc};

const TICK: Duration = Duration::from_millis(200);
const KEEPALIVE: Duration = Duration::from_secs(15);
const MAX_LIFE: Duration = Duration::from_secs(600);

#[derive(Clone, Debug, PartialEq)]
enum Source {
    Fleet,
    Chains,
    Alerts,
    Actions,
    Chain(String),
    Action(String),
}

impl Source {
    /// Least time between two refreshes.
    fn gap(&self) -> Duration {
        match self {
            Source::Action(_) => Duration::from_millis(250),
            Source::Chain(_) | Source::Alerts | Source::Actions => Duration::from_secs(1),
            Source::Fleet | Source::Chains => Duration::from_secs(2),
        }
    }
    /// Ticks between polls.
    fn poll_every(&self) -> u32 {
        match self {
            Source::Action(_) => 1,
            Source::Actions | Source::Chain(_) | Source::Alerts => 3,
            Source::Fleet | Source::Chains => 5,
        }
    }

    fn topic(&self) -> String {
        match self {
            Source::Fleet => "fleet".into(),
            Source::Chains => "chains".into(),
            Source::Alerts => "alerts".into(),
            Source::Actions => "actions".into(),
            Source::Chain(id) => format!("chain/{}", enc(id)),
            Source::Action(id) => format!("action/{}", enc(id)),
        }
    }
}

/// What a page needs to go live: its topic and the digest it was rendered at.
/// Take it before reading what the page shows.
pub struct Tag {
    pub topic: String,
    pub version: u64,
}

fn tag(ui: &Ui, src: Source) -> Tag {
    Tag {
        topic: src.topic(),
        version: digest(ui, &src),
    }
}

pub fn fleet(ui: &Ui) -> Tag {
    tag(ui, Source::Fleet)
}
pub fn chains(ui: &Ui) -> Tag {
    tag(ui, Source::Chains)
}
pub fn alerts(ui: &Ui) -> Tag {
    tag(ui, Source::Alerts)
}
pub fn actions(ui: &Ui) -> Tag {
    tag(ui, Source::Actions)
}
pub fn chain(ui: &Ui, id: &str) -> Tag {
    tag(ui, Source::Chain(id.to_string()))
}
pub fn action(ui: &Ui, id: &str) -> Tag {
    tag(ui, Source::Action(id.to_string()))
}

struct Feed {
    ui: Arc<Ui>,
    sid: String,
    src: Source,
    alerts: Option<broadcast::Receiver<Alert>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    tick: tokio::time::Interval,
    ticks: u32,
    digest: u64,
    /// Poll at the next tick (an alert was raised or changed).
    kick: bool,
    dirty: bool,
    last_sent: Instant,
    last_any: Instant,
    started: Instant,
    hello: bool,
}

fn hash_of(f: impl FnOnce(&mut DefaultHasher)) -> u64 {
    let mut h = DefaultHasher::new();
    f(&mut h);
    h.finish()
}

/// A digest of what the source's pages show.
fn digest(ui: &Ui, src: &Source) -> u64 {
    match src {
        Source::Fleet => hash_of(|h| {
            for x in ui.engine.list_hosts() {
                (
                    x.host_id,
                    x.connected,
                    x.last_seen_ns / 1_000_000_000,
                    x.events_stored,
                    x.spool_dropped,
                    (x.retired, x.cert_serial, x.certs_refused),
                )
                    .hash(h);
                let mut c: Vec<_> = x.counters.into_iter().collect();
                c.sort();
                c.hash(h);
            }
        }),
        Source::Chains => hash_of(|h| {
            ui.engine
                .metrics
                .events_stored
                .load(std::sync::atomic::Ordering::Relaxed)
                .hash(h);
            ui.alerts.open_counts().0.hash(h);
        }),
        Source::Alerts => hash_of(|h| {
            for a in ui.alerts.list(200, "", "", "") {
                (a.id, a.status, a.assignee, a.response_action_id).hash(h);
            }
            ui.alerts.open_counts().0.hash(h);
        }),
        Source::Actions => hash_of(|h| {
            for a in ui.responder.list(50, false) {
                (a.id, a.status, a.active).hash(h);
                for d in a.hosts {
                    (d.state, d.confirmed_ns).hash(h);
                }
            }
        }),
        Source::Action(id) => hash_of(|h| {
            if let Some(a) = ui.responder.get(id) {
                (a.status, a.active, a.hosts.len()).hash(h);
                for d in a.hosts {
                    (d.host, d.state, d.confirmed_ns, d.affected_exec_ids).hash(h);
                }
            }
        }),
        Source::Chain(id) => hash_of(|h| {
            {
                let st = ui.engine.read();
                for m in st.chains.members(id).into_iter().flatten() {
                    m.hash(h);
                    st.exec_event_count(m).hash(h);
                    st.chains.node(m).map(|n| n.exited_ns).hash(h);
                }
            }
            for a in ui.alerts.list(usize::MAX, id, "", "") {
                (a.id, a.status, a.assignee).hash(h);
            }
        }),
    }
}

impl Feed {
    async fn next(&mut self) -> Option<Event> {
        if self.hello {
            self.hello = false;
            return Some(
                Event::default()
                    .retry(Duration::from_secs(2))
                    .comment("live"),
            );
        }
        loop {
            if *self.shutdown.borrow()
                || self.started.elapsed() > MAX_LIFE
                || !self.ui.sessions.is_live(&self.sid)
            {
                return None;
            }
            tokio::select! {
                _ = self.tick.tick() => {
                    self.ticks = self.ticks.wrapping_add(1);
                    if self.kick || self.ticks.is_multiple_of(self.src.poll_every()) {
                        self.kick = false;
                        let d = digest(&self.ui, &self.src);
                        if d != self.digest {
                            self.digest = d;
                            self.dirty = true;
                        }
                    }
                    if self.dirty && self.last_sent.elapsed() >= self.src.gap() {
                        self.dirty = false;
                        self.last_sent = Instant::now();
                        self.last_any = self.last_sent;
                        return Some(Event::default().event("refresh").data("refresh"));
                    }
                    if self.last_any.elapsed() >= KEEPALIVE {
                        self.last_any = Instant::now();
                        return Some(Event::default().comment("keepalive"));
                    }
                }
                r = recv(&mut self.alerts) => match r {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.kick = true,
                    Err(broadcast::error::RecvError::Closed) => self.alerts = None,
                },
                _ = self.shutdown.changed() => {}
            }
        }
    }
}

async fn recv<T: Clone>(
    rx: &mut Option<broadcast::Receiver<T>>,
) -> Result<T, broadcast::error::RecvError> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LiveQuery {
    /// The digest the page was rendered at.
    v: Option<u64>,
}

fn open(ui: Arc<Ui>, op: Op, src: Source, since: Option<u64>) -> Response {
    let alerts = matches!(src, Source::Alerts | Source::Chains | Source::Chain(_))
        .then(|| ui.alerts.subscribe());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let now = digest(&ui, &src);
    // Changed since the page was rendered: refresh at once.
    let dirty = since.is_some_and(|v| v != now);
    let feed = Feed {
        shutdown: ui.shutdown.clone(),
        ui,
        sid: op.sid,
        src,
        alerts,
        tick,
        ticks: 0,
        digest: now,
        kick: false,
        dirty,
        last_sent: Instant::now() - Duration::from_secs(60),
        last_any: Instant::now(),
        started: Instant::now(),
        hello: true,
    };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        f.next().await.map(|e| (Ok::<Event, Infallible>(e), f))
    });
    Sse::new(stream).into_response()
}

pub async fn stream(
    State(ui): State<Arc<Ui>>,
    op: Op,
    Seg(topic): Seg,
    Params(q): Params<LiveQuery>,
) -> Result<Response, UiError> {
    let src = match topic.as_str() {
        "fleet" => Source::Fleet,
        "chains" => Source::Chains,
        "alerts" => Source::Alerts,
        "actions" => Source::Actions,
        t => return Err(UiError::not_found(format!("no live topic {t:?}"))),
    };
    Ok(open(ui, op, src, q.v))
}

/// Two path segments, percent-decoded.
pub struct Seg2(String, String);

impl<S: Send + Sync> FromRequestParts<S> for Seg2 {
    type Rejection = UiError;
    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, UiError> {
        axum::extract::Path::<(String, String)>::from_request_parts(parts, s)
            .await
            .map(|p| Seg2(p.0.0, p.0.1))
            .map_err(|e| UiError::bad_request(format!("bad path: {e}")))
    }
}

pub async fn stream_one(
    State(ui): State<Arc<Ui>>,
    op: Op,
    Seg2(topic, id): Seg2,
    Params(q): Params<LiveQuery>,
) -> Result<Response, UiError> {
    let src = match topic.as_str() {
        "chain" => {
            if ui.engine.read().chains.members(&id).is_none() {
                return Err(UiError::not_found(format!("no chain {id:?}")));
            }
            Source::Chain(id)
        }
        "action" => {
            if ui.responder.get(&id).is_none() {
                return Err(UiError::not_found(format!("no action {id:?}")));
            }
            Source::Action(id)
        }
        t => return Err(UiError::not_found(format!("no live topic {t:?}"))),
    };
    Ok(open(ui, op, src, q.v))
}
