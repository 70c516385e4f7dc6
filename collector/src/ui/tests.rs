//! The UI without a browser: requests through the router against a real engine,
//! responder and alert store on a temporary directory.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use custody_proto::admin::v1::Alert;
use custody_proto::sensor::v1::{Event, EventBatch};
use tower::ServiceExt;

use super::{SessionStore, Ui, router};
use crate::alerts::Alerts;
use crate::auth::{Role, TokenStore};
use crate::engine::Engine;
use crate::response::Responder;
use crate::sensor_streams::SensorStreams;
use crate::synth;

struct T {
    _dir: tempfile::TempDir,
    ui: Arc<Ui>,
    app: Router,
    _stop: tokio::sync::watch::Sender<bool>,
}

fn setup_with(sessions: SessionStore) -> T {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(&dir.path().join("store")).unwrap());
    let responder =
        Responder::open(engine.clone(), Arc::new(SensorStreams::default()), vec![]).unwrap();
    let alerts = Alerts::open(engine.store_handle()).unwrap();
    let tokens = TokenStore::open(dir.path()).unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let ui = Arc::new(Ui {
        engine,
        responder,
        alerts,
        tokens,
        sessions,
        shutdown,
    });
    T {
        app: router(ui.clone()),
        ui,
        _dir: dir,
        _stop: stop,
    }
}

fn setup() -> T {
    setup_with(SessionStore::default())
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    cookie: Option<&str>,
    form: Option<&str>,
    extra: &[(&str, &str)],
) -> Resp {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    if form.is_some() {
        b = b.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let req = b
        .body(form.map(|f| Body::from(f.to_string())).unwrap_or_default())
        .unwrap();
    let r = app.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = axum::body::to_bytes(r.into_body(), 16 << 20).await.unwrap();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn get(t: &T, uri: &str, cookie: &str) -> Resp {
    call(&t.app, "GET", uri, Some(cookie), None, &[]).await
}

async fn post(t: &T, uri: &str, cookie: &str, form: &str) -> Resp {
    call(&t.app, "POST", uri, Some(cookie), Some(form), &[]).await
}

/// Signs in with a new token of `role`: (cookie header value, CSRF token).
async fn sign_in(t: &T, role: Role) -> (String, String) {
    let token = t.ui.tokens.mint_operator(role.as_str(), role).unwrap();
    let r = call(
        &t.app,
        "POST",
        "/login",
        None,
        Some(&format!("token={token}&next=%2Ffleet")),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let set = r.headers[header::SET_COOKIE].to_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let page = get(t, "/fleet", &cookie).await;
    assert_eq!(page.status, StatusCode::OK);
    (cookie, csrf_of(&page.body))
}

fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("page has a CSRF field")
        + 19;
    html[at..at + 64].to_string()
}

fn ingest(t: &T, host: &str, mut events: Vec<Event>) {
    synth::number(&mut events);
    let out =
        t.ui.engine
            .ingest(
                host,
                EventBatch {
                    first_seq: 1,
                    events,
                },
            )
            .unwrap();
    assert!(out.rejected.is_none(), "{out:?}");
}

/// The three-host scenario with attacker-controlled strings in argv, agent id and a
/// file path; returns the chain id.
fn hostile_chain(t: &T) -> (String, synth::Scenario) {
    let mut s = synth::three_hosts(["h-a", "h-b", "h-c"], crate::clock::now_ns());
    for e in &mut s.a {
        let p = e.process.as_mut().unwrap();
        p.argv = vec![
            "python3".into(),
            "<script>alert(1)</script>".into(),
            "\"><img src=x onerror=alert(2)>".into(),
        ];
    }
    for e in &mut s.c {
        if let Some(custody_proto::sensor::v1::event::Kind::FileOpen(f)) = &mut e.kind {
            f.path = "/srv/</text><script>alert(3)</script>".into();
        }
    }
    ingest(t, "h-a", s.a.clone());
    ingest(t, "h-b", s.b.clone());
    ingest(t, "h-c", s.c.clone());
    let chains = t.ui.engine.list_chains(&Default::default());
    let c = chains
        .iter()
        .find(|c| c.hosts.len() == 3)
        .expect("a chain across the three hosts");
    (c.chain_id.clone(), s)
}

fn assert_escaped(what: &str, body: &str) {
    for bad in ["<script>alert", "<img src=x", "</text><script>"] {
        assert!(!body.contains(bad), "{what}: raw {bad:?} in the page");
    }
}

/// The review's open redirect: `next=/\t/evil.example` became `//evil.example` in
/// the browser; a CR/LF in `next` answered 500 with a session cookie set.
#[tokio::test]
async fn sign_in_never_redirects_off_site_nor_breaks_on_crlf() {
    let t = setup();
    for next in [
        "%2F%09%2Fevil.example",
        "%2F%5Cevil.example",
        "%2Ffleet%0D%0ASet-Cookie%3A%20x%3Dy",
    ] {
        let token = t.ui.tokens.mint_operator("alice", Role::Responder).unwrap();
        let r = call(
            &t.app,
            "POST",
            "/login",
            None,
            Some(&format!("token={token}&next={next}")),
            &[],
        )
        .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{next}");
        assert_eq!(r.headers[header::LOCATION], "/fleet", "{next}");
    }
}

#[tokio::test]
async fn session_cookie_flags_expiry_and_sign_out() {
    let t = setup();
    // Not signed in: pages redirect to sign-in, remembering where to go.
    let r = call(&t.app, "GET", "/chains?state=live", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers[header::LOCATION],
        "/login?next=%2Fchains%3Fstate%3Dlive"
    );
    // A wrong token: 401, no cookie.
    let r = call(&t.app, "POST", "/login", None, Some("token=cso1.nope"), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.headers.get(header::SET_COOKIE).is_none());
    assert!(r.body.contains("Unknown operator token"));

    let token = t.ui.tokens.mint_operator("alice", Role::Responder).unwrap();
    let r = call(
        &t.app,
        "POST",
        "/login",
        None,
        Some(&format!("token={token}&next=https%3A%2F%2Fevil.example%2F")),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    // An off-site `next` is ignored.
    assert_eq!(r.headers[header::LOCATION], "/fleet");
    let set = r.headers[header::SET_COOKIE].to_str().unwrap();
    let parts: Vec<&str> = set.split(';').map(str::trim).collect();
    assert!(parts[0].starts_with("__Host-custody="), "{set}");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(parts.contains(&flag), "{flag} missing in {set}");
    }
    assert!(!set.contains("Domain") && !set.contains("Expires") && !set.contains("Max-Age"));
    // The cookie holds a random id, never the token.
    let sid = parts[0].trim_start_matches("__Host-custody=");
    assert_eq!(sid.len(), 64);
    assert!(!set.contains(&token));
    let cookie = parts[0].to_string();
    let page = get(&t, "/fleet", &cookie).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("alice"));
    // Security headers.
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");
    // Signing out clears the cookie and ends the session on the server: the old
    // cookie no longer works.
    let csrf = csrf_of(&page.body);
    let r = post(&t, "/logout", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(
        r.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let r = get(&t, "/fleet", &cookie).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(t.ui.sessions.is_empty());
    // A withdrawn token ends its sessions at the next request.
    let (cookie, _) = sign_in(&t, Role::Viewer).await;
    for e in std::fs::read_dir(t._dir.path().join("operators")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    assert_eq!(
        get(&t, "/fleet", &cookie).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn sessions_expire_when_idle() {
    let t = setup_with(SessionStore::with_expiry(
        Duration::from_millis(200),
        Duration::from_secs(60),
    ));
    let (cookie, _) = sign_in(&t, Role::Viewer).await;
    assert_eq!(get(&t, "/fleet", &cookie).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = get(&t, "/fleet", &cookie).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    // Live streams need a session too.
    let r = get(&t, "/live/fleet", &cookie).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn state_changes_without_the_csrf_token_are_refused() {
    let t = setup();
    let (chain, _) = hostile_chain(&t);
    let (cookie, csrf) = sign_in(&t, Role::Responder).await;
    let form = format!(
        "verb=kill&scope=chain&target={}&reason=test",
        super::enc(&chain)
    );
    for f in [
        form.clone(),
        format!("{form}&csrf="),
        format!("{form}&csrf={}", "0".repeat(64)),
    ] {
        let r = post(&t, "/respond", &cookie, &f).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{f}: {}", r.body);
        assert!(r.body.contains("CSRF"), "{}", r.body);
    }
    assert!(
        t.ui.responder.list(10, false).is_empty(),
        "nothing was issued"
    );
    // Alert updates and sign-out are checked the same way.
    let a = t.ui.alerts.raise(Alert::default()).unwrap();
    let r = post(&t, &format!("/alerts/{}", a.id), &cookie, "acknowledge=1").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(t.ui.alerts.get(&a.id).unwrap().status, "open");
    let r = post(&t, "/logout", &cookie, "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(get(&t, "/fleet", &cookie).await.status, StatusCode::OK);
    // A cross-site form is refused by its Origin, sign-in included.
    let r = call(
        &t.app,
        "POST",
        &format!("/alerts/{}", a.id),
        Some(&cookie),
        Some(&format!("csrf={csrf}&acknowledge=1")),
        &[
            ("origin", "https://evil.example"),
            ("host", "collector:7443"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(
        &t.app,
        "POST",
        "/login",
        None,
        Some("token=x"),
        &[
            ("origin", "https://evil.example"),
            ("host", "collector:7443"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    for site in [
        &[("sec-fetch-site", "cross-site")][..],
        &[("origin", "null")][..],
    ] {
        let r = call(
            &t.app,
            "POST",
            &format!("/alerts/{}", a.id),
            Some(&cookie),
            Some(&format!("csrf={csrf}&acknowledge=1")),
            site,
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{site:?}");
    }
    // With the token (and a same-origin Origin) it works.
    let r = call(
        &t.app,
        "POST",
        &format!("/alerts/{}", a.id),
        Some(&cookie),
        Some(&format!("csrf={csrf}&acknowledge=1")),
        &[
            ("origin", "https://collector:7443"),
            ("host", "collector:7443"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(t.ui.alerts.get(&a.id).unwrap().status, "acknowledged");
}

#[tokio::test]
async fn viewers_see_no_buttons_and_are_refused_with_403() {
    let t = setup();
    let (chain, s) = hostile_chain(&t);
    let a =
        t.ui.alerts
            .raise(Alert {
                chain_id: chain.clone(),
                severity: "high".into(),
                ..Default::default()
            })
            .unwrap();
    let (viewer, vcsrf) = sign_in(&t, Role::Viewer).await;
    let (responder, _) = sign_in(&t, Role::Responder).await;
    let chain_page = format!("/chains/{}", super::enc(&chain));
    let pages = [
        chain_page.clone(),
        format!("/processes/{}", super::enc(&s.a1)),
        format!("/agents/{}", super::enc("research-agent")),
        "/alerts".to_string(),
    ];
    for p in &pages {
        let v = get(&t, p, &viewer).await;
        assert_eq!(v.status, StatusCode::OK, "{p}");
        assert!(!v.body.contains("data-verb="), "{p}: viewer sees an action");
        assert!(
            !v.body.contains("Acknowledge"),
            "{p}: viewer sees an action"
        );
        let r = get(&t, p, &responder).await;
        assert!(
            r.body.contains("data-verb=\"kill\"") || r.body.contains("Acknowledge"),
            "{p}: responder sees actions"
        );
    }
    let confirm = format!(
        "/respond?verb=kill&scope=chain&target={}",
        super::enc(&chain)
    );
    assert_eq!(
        get(&t, &confirm, &viewer).await.status,
        StatusCode::FORBIDDEN
    );
    let r = post(
        &t,
        "/respond",
        &viewer,
        &format!(
            "csrf={vcsrf}&verb=kill&scope=chain&target={}&reason=forged",
            super::enc(&chain)
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("needs role responder"), "{}", r.body);
    let r = post(
        &t,
        &format!("/alerts/{}", a.id),
        &viewer,
        &format!("csrf={vcsrf}&acknowledge=1"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(t.ui.responder.list(10, false).is_empty());
    assert_eq!(t.ui.alerts.get(&a.id).unwrap().status, "open");
    // The refusals are audited.
    let audit = t.ui.engine.audit_log(0, 100).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "kill" && e.result.starts_with("denied")),
        "{audit:?}"
    );
}

#[tokio::test]
async fn hostile_strings_from_events_are_escaped_everywhere() {
    let t = setup();
    let (chain, s) = hostile_chain(&t);
    t.ui.alerts
        .raise(Alert {
            chain_id: chain.clone(),
            exec_id: s.c1.clone(),
            host: "h-c".into(),
            severity: "critical".into(),
            action: "open_read".into(),
            resource: "File::\"<script>alert(4)</script>\"".into(),
            policy_id: "<img src=x onerror=alert(5)>".into(),
            ..Default::default()
        })
        .unwrap();
    let (cookie, _) = sign_in(&t, Role::Responder).await;
    let c = super::enc(&chain);
    let pages = [
        "/fleet".to_string(),
        "/hosts/h-a".into(),
        "/agents".into(),
        "/agents/research-agent".into(),
        "/chains".into(),
        format!("/chains/{c}"),
        format!("/chains/{c}?view=full&node={}", super::enc(&s.a1)),
        format!("/chains/{c}?view=agent"),
        format!("/chains/{c}?view=host"),
        format!("/processes/{}", super::enc(&s.a1)),
        format!("/processes/{}", super::enc(&s.c1)),
        "/alerts".into(),
        "/credentials".into(),
        format!("/respond?verb=kill&scope=chain&target={c}"),
    ];
    for p in &pages {
        let r = get(&t, p, &cookie).await;
        assert_eq!(r.status, StatusCode::OK, "{p}: {}", r.body);
        assert_escaped(p, &r.body);
    }
    let node = get(
        &t,
        &format!("/chains/{c}?view=full&node={}", super::enc(&s.a1)),
        &cookie,
    )
    .await;
    assert!(node.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(
        node.body
            .contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;")
    );
    let graph = get(&t, &format!("/chains/{c}"), &cookie).await;
    // The denied read is drawn, escaped, in the SVG.
    assert!(graph.body.contains("denied open_read"), "no denied leaf");
    assert!(graph.body.contains("&lt;script&gt;alert(4)"));
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_page() {
    let t = setup();
    let (chain, _) = hostile_chain(&t);
    let (cookie, csrf) = sign_in(&t, Role::Responder).await;
    let c = super::enc(&chain);
    for (uri, code) in [
        ("/chains/no-such-chain".to_string(), StatusCode::NOT_FOUND),
        ("/hosts/nope".into(), StatusCode::NOT_FOUND),
        ("/agents/nope".into(), StatusCode::NOT_FOUND),
        ("/processes/h-a:1:2".into(), StatusCode::NOT_FOUND),
        ("/actions/act-nope".into(), StatusCode::NOT_FOUND),
        ("/credentials/hmac-sha256:00".into(), StatusCode::NOT_FOUND),
        ("/fleet?page=-1".into(), StatusCode::BAD_REQUEST),
        ("/fleet?state=sideways".into(), StatusCode::BAD_REQUEST),
        ("/chains?unknown=1".into(), StatusCode::BAD_REQUEST),
        (format!("/chains/{c}?view=3d"), StatusCode::BAD_REQUEST),
        (format!("/chains/{c}?after=zz"), StatusCode::BAD_REQUEST),
        (format!("/chains/{c}?node=h-a:9:9"), StatusCode::NOT_FOUND),
        ("/alerts?severity=meh".into(), StatusCode::BAD_REQUEST),
        (
            "/respond?verb=explode&scope=chain&target=x".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/respond?verb=kill&scope=chain&target=nope".into(),
            StatusCode::NOT_FOUND,
        ),
        (
            "/respond?verb=kill&scope=process&target=bad".into(),
            StatusCode::BAD_REQUEST,
        ),
        ("/live/nope".into(), StatusCode::NOT_FOUND),
        ("/live/chain/nope".into(), StatusCode::NOT_FOUND),
        ("/static/secret".into(), StatusCode::NOT_FOUND),
        ("/nothing/here".into(), StatusCode::NOT_FOUND),
        ("/chains/%FF%FE".into(), StatusCode::BAD_REQUEST),
    ] {
        let r = get(&t, &uri, &cookie).await;
        assert_eq!(r.status, code, "{uri}: {}", r.body);
        assert!(
            r.body.contains(&format!("{} — ", code.as_u16())),
            "{uri}: {}",
            r.body
        );
        assert_eq!(
            r.headers[header::CONTENT_TYPE],
            "text/html; charset=utf-8",
            "{uri}"
        );
    }
    // Bad forms.
    let r = call(
        &t.app,
        "POST",
        "/respond",
        Some(&cookie),
        None,
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = post(&t, "/respond", &cookie, &format!("csrf={csrf}&bogus=1")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post(
        &t,
        "/respond",
        &cookie,
        &format!("csrf={csrf}&verb=kill&scope=chain&target={c}&reason=%20"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("reason is required"), "{}", r.body);
    let r = call(&t.app, "DELETE", "/fleet", Some(&cookie), None, &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    // An unknown gRPC method gets tonic's answer, not a page.
    let r = call(
        &t.app,
        "POST",
        "/custody.nope.v1.Nope/Call",
        None,
        None,
        &[("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(r.headers["grpc-status"], "12");
}

#[tokio::test]
async fn kill_from_the_ui_shows_the_blast_radius_then_the_action() {
    let t = setup();
    let (chain, s) = hostile_chain(&t);
    let (cookie, csrf) = sign_in(&t, Role::Responder).await;
    let c = super::enc(&chain);
    let r = get(
        &t,
        &format!("/respond?verb=kill&scope=chain&target={c}"),
        &cookie,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // Three hosts, four live processes; every host is offline here.
    assert!(
        r.body.contains("data-hosts=\"3\" data-processes=\"4\""),
        "{}",
        r.body
    );
    for id in [&s.a1, &s.b1, &s.b2, &s.c1] {
        assert!(r.body.contains(id.as_str()), "{id} not in the blast radius");
    }
    assert!(r.body.contains("3 host(s) offline"));
    let r = post(
        &t,
        "/respond",
        &cookie,
        &format!("csrf={csrf}&verb=kill&scope=chain&target={c}&reason=exfiltration"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let loc = r.headers[header::LOCATION].to_str().unwrap().to_string();
    assert!(loc.starts_with("/actions/act-"), "{loc}");
    let a = get(&t, &loc, &cookie).await;
    assert_eq!(a.status, StatusCode::OK);
    for h in ["h-a", "h-b", "h-c"] {
        assert!(
            a.body
                .contains(&format!("data-host=\"{h}\" data-state=\"pending\"")),
            "{h}: {}",
            a.body
        );
    }
    assert!(a.body.contains("exfiltration"));
    // The same kill again is refused with a clear answer.
    let r = post(
        &t,
        "/respond",
        &cookie,
        &format!("csrf={csrf}&verb=kill&scope=chain&target={c}&reason=again"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(r.body.contains("identical to action"));
    let list = get(&t, "/actions", &cookie).await;
    assert!(list.body.contains("kill_chain") && list.body.contains("issued"));
}

#[tokio::test]
async fn a_chain_of_500_processes_is_collapsed_and_stays_small() {
    use custody_proto::sensor::v1::{ProcessFork, event::Kind};
    let t = setup();
    let t0 = crate::clock::now_ns();
    let root = synth::with_login(
        synth::process("h-a", 100, 1, "/usr/bin/agent", "big-agent"),
        1000,
        "bob",
    );
    let mut events = vec![synth::exec(&root, "h-a", t0, vec![])];
    // 20 workers of the agent, each with 24 children running one of a few tools.
    let mut pid = 1000;
    for w in 0..20 {
        pid += 1;
        let worker = synth::process("h-a", pid, 100, "/usr/bin/agent", "big-agent");
        events.push(synth::event(
            &root,
            "h-a",
            t0 + 1 + w,
            Kind::Fork(ProcessFork {
                child_exec_id: worker.exec_id.clone(),
                child_pid: pid,
            }),
        ));
        events.push(synth::exec(&worker, "h-a", t0 + 2 + w, vec![]));
        let wpid = pid;
        for k in 0..24 {
            pid += 1;
            let tool = ["/usr/bin/curl", "/usr/bin/grep", "/usr/bin/sleep"][k % 3];
            let child = synth::process("h-a", pid, wpid, tool, "");
            events.push(synth::exec(&child, "h-a", t0 + 100 + pid as u64, vec![]));
        }
    }
    ingest(&t, "h-a", events);
    let chain = synth::process("h-a", 100, 1, "", "").exec_id;
    let n = t.ui.engine.read().chains.members(&chain).map(|m| m.len());
    assert_eq!(n, Some(501));
    let (cookie, _) = sign_in(&t, Role::Viewer).await;
    let c = super::enc(&chain);
    let r = get(&t, &format!("/chains/{c}"), &cookie).await;
    assert_eq!(r.status, StatusCode::OK);
    let boxes = r.body.matches("class=\"node ").count();
    assert!(boxes < 12, "collapsed view has {boxes} boxes");
    assert!(
        r.body.contains("×480") || r.body.contains("×160"),
        "group counts shown"
    );
    // The node table is paged.
    assert_eq!(r.body.matches("<tr data-exec=").count(), 50);
    let full = get(&t, &format!("/chains/{c}?view=full"), &cookie).await;
    assert_eq!(full.status, StatusCode::OK);
    // Inside <svg> nothing may rely on HTML void elements: every element is closed.
    for el in ["rect", "path", "text", "g"] {
        assert_eq!(
            full.body.matches(&format!("<{el} ")).count(),
            full.body.matches(&format!("</{el}>")).count(),
            "<{el}> not closed"
        );
    }
    assert_eq!(full.body.matches("class=\"node ").count(), 502);
    let host = get(&t, &format!("/chains/{c}?view=host"), &cookie).await;
    assert!(host.body.matches("class=\"node ").count() <= 3);
}

mod signal_view;
