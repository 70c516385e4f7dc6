//! The responder's view of a story-like chain (issues 14 and 17): hundreds of
//! routine reads fold into a few lines so the LLM request, the tool call and the
//! denied read are on the first page; a short-lived helper folds into its parent's
//! node; a process whose TLS Custody cannot read is marked, its opaque connections
//! are listed, and the chain's summary says what was not seen.

use custody_proto::admin::v1::{Alert, GetChainRequest, get_chain_request::Target};

use super::*;

const H: &str = "h-story";

struct Story {
    chain: String,
    agent: String,
    helper: String,
    blind: String,
}

fn story(t: &T) -> Story {
    let s = synth::responder_story(H, crate::clock::now_ns());
    ingest(t, H, s.events);
    t.ui.alerts
        .raise(Alert {
            chain_id: s.agent.clone(),
            exec_id: s.agent.clone(),
            severity: "high".into(),
            action: "read".into(),
            resource: synth::STORY_WATCHED.into(),
            policy_id: "watch-lib".into(),
            ..Default::default()
        })
        .unwrap();
    Story {
        chain: s.agent.clone(),
        agent: s.agent,
        helper: s.helper,
        blind: s.blind,
    }
}

/// The timeline section of a page.
fn section<'a>(body: &'a str, id: &str) -> &'a str {
    let at = body
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} section"));
    let rest = &body[at..];
    &rest[..rest.find("</section>").unwrap()]
}

#[tokio::test]
async fn routine_reads_fold_and_what_custody_could_not_see_is_said() {
    let t = setup();
    let s = story(&t);

    // Query side: the summary counts what was not seen.
    let chain =
        t.ui.engine
            .get_chain(&GetChainRequest {
                target: Some(Target::ChainId(s.chain.clone())),
                event_limit: 1000,
            })
            .unwrap()
            .unwrap();
    let sum = chain.summary.clone().unwrap();
    assert_eq!((sum.opaque_connections, sum.opaque_processes), (3, 1));
    let blind = chain.nodes.iter().find(|n| n.exec_id == s.blind).unwrap();
    assert_eq!(blind.opaque_connections, 3);
    assert_eq!(
        blind.tls_uncovered,
        "TLS not readable: rustls 0.23.20 — tried exported symbols; prologue scan"
    );
    // The agent's actions start with what it did, not with its library loads.
    let agent = chain.nodes.iter().find(|n| n.exec_id == s.agent).unwrap();
    assert!(
        agent
            .actions
            .iter()
            .any(|a| a.starts_with("llm openai gpt-story")),
        "{:?}",
        agent.actions
    );
    assert!(agent.actions.len() < 12, "{:?}", agent.actions);

    let (cookie, _) = sign_in(&t, Role::Viewer).await;
    let c = super::super::enc(&s.chain);
    let r = get(&t, &format!("/chains/{c}?view=full"), &cookie).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let summary = section(&r.body, "chain-summary");
    assert!(
        summary.contains("3 opaque TLS connections from 1 process whose TLS Custody cannot read"),
        "{summary}"
    );

    let tl = section(&r.body, "timeline");
    let rows: Vec<&str> = tl.split("<tr ").skip(1).collect();
    // The top-level rows: folded lines carry their exact count.
    let folds: Vec<&str> = rows
        .iter()
        .copied()
        .filter(|r| r.starts_with("class=\"fold\""))
        .collect();
    let counts: Vec<&str> = folds
        .iter()
        .map(|f| {
            f.split("data-count=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
        })
        .collect();
    // Agent: /usr/lib/python3.11 (400 + 50 late), site-packages (200); helper:
    // /etc (ld.so.cache) and /lib/x86_64-linux-gnu.
    assert_eq!(counts, vec!["450", "200", "1", "1"], "{folds:?}");
    assert!(tl.contains("450 routine reads under /usr/lib/python3.11 — "));
    assert!(tl.contains("200 routine reads under /home/alice/.venv/lib/python3.11/site-packages"));
    // What the responder looks for, each on its own line, none folded.
    let top: String = tl
        .split("<details")
        .map(|p| p.split("</details>").last().unwrap())
        .collect();
    for want in [
        "llm openai gpt-story",
        "llm response gpt-story 1 tool calls",
        "open /etc/shadow (read) -&gt; -13",
        "open /usr/lib/python3.11/policy-watched.py",
        "open /usr/lib/python3.11/written.py (write)",
        "opaque TLS to 203.0.113.7:443 (api.openai.com)",
        "TLS not readable in /usr/local/bin/codex",
    ] {
        assert!(
            top.contains(want),
            "{want:?} not a timeline line of its own:\n{top}"
        );
    }
    // Fewer lines than one page: 660 events read as a page of about 20.
    assert!(
        tl.matches("<tr data-kind=").count() > 600,
        "folded reads are in the page, to expand"
    );
    assert!(
        !tl.contains("rel=\"next\""),
        "one page holds the whole story"
    );

    // Show everything: no folding, paged.
    let all = get(&t, &format!("/chains/{c}?view=full&all=1"), &cookie).await;
    let atl = section(&all.body, "timeline");
    assert!(!atl.contains("routine reads under"));
    assert_eq!(atl.matches("<tr data-kind=").count(), 50);
    assert!(atl.contains("rel=\"next\""));

    // The graph: scaled to its container; the helper folded into the agent's node;
    // the blind process marked.
    let g = section(&r.body, "graph");
    assert!(g.contains("<svg class=\"chain-graph\"") && g.contains("width=\"100%\""));
    assert!(
        !g.contains(&format!("data-exec=\"{}\"", s.helper)),
        "the helper has no box of its own"
    );
    assert!(g.contains("+1 helpers"), "the parent counts its helper");
    assert!(g.contains("node proc uncovered") && g.contains("TLS not readable"));
    // The node list marks it too; the opaque section lists its connections.
    let nodes = section(&r.body, "nodes");
    assert!(nodes.contains("class=\"uncovered\">TLS not readable: rustls 0.23.20"));
    let op = section(&r.body, "opaque");
    assert_eq!(op.matches("class=\"opaque-conn\"").count(), 3, "{op}");
    for want in [
        "api.openai.com",
        "chatgpt.com",
        "203.0.113.7:443",
        "h2, http/1.1",
        "1000 B",
        "90002 B",
    ] {
        assert!(op.contains(want), "{want} in {op}");
    }

    // The process page says the same.
    let p = get(
        &t,
        &format!("/processes/{}", super::super::enc(&s.blind)),
        &cookie,
    )
    .await;
    assert_eq!(p.status, StatusCode::OK);
    let op = section(&p.body, "opaque");
    assert!(op.contains("3 opaque TLS connections from 1 process whose TLS Custody cannot read"));
    assert_eq!(op.matches("class=\"opaque-conn\"").count(), 3);
    let a = get(
        &t,
        &format!("/processes/{}", super::super::enc(&s.agent)),
        &cookie,
    )
    .await;
    let ev = section(&a.body, "events");
    assert!(ev.contains("450 routine reads under /usr/lib/python3.11"));
    assert!(ev.contains("open /etc/shadow (read) -&gt; -13"));
    // A bad switch value is a clear error.
    let bad = get(&t, &format!("/chains/{c}?all=yes"), &cookie).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}
