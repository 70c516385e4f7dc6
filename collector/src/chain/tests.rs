use super::*;
use crate::synth::{self, T0};

fn feed(ix: &mut ChainIndex, evs: &[Event]) {
    for e in evs {
        ix.observe(e);
    }
}

fn check_one_chain(ix: &ChainIndex, s: &synth::Scenario) {
    for id in [&s.a1, &s.b1, &s.b2, &s.c1] {
        assert_eq!(ix.chain_of(id), Some(s.a1.as_str()), "chain of {id}");
    }
    assert_eq!(
        ix.path_from_root(&s.c1),
        vec![s.a1.clone(), s.b1.clone(), s.b2.clone(), s.c1.clone()]
    );
    assert_eq!(ix.human_of(&s.a1), Some(("alice".to_string(), "login")));
    let kinds: Vec<(String, String)> = ix
        .path_from_root(&s.c1)
        .iter()
        .filter_map(|id| ix.node(id).unwrap().upstream.clone())
        .map(|u| (u.exec_id, u.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (s.a1.clone(), "net".to_string()),
            (s.b1.clone(), "stdio".to_string()),
            (s.b2.clone(), "net".to_string()),
        ]
    );
    let edges = ix.chain_edges(&s.a1);
    assert_eq!(edges.len(), 3, "{edges:?}");
}

#[test]
fn in_order() {
    let s = synth::three_hosts(["a", "b", "c"], T0);
    let mut ix = ChainIndex::default();
    feed(&mut ix, &s.a);
    feed(&mut ix, &s.b);
    feed(&mut ix, &s.c);
    check_one_chain(&ix, &s);
}

#[test]
fn accept_before_connect_and_reverse_hosts() {
    let s = synth::three_hosts(["a", "b", "c"], T0);
    let mut ix = ChainIndex::default();
    feed(&mut ix, &s.c);
    feed(&mut ix, &s.b);
    // Before A reports, B and C form a chain of their own with no human.
    assert_eq!(ix.chain_of(&s.c1), Some(s.b1.as_str()));
    assert_eq!(ix.human_of(&s.b1), None);
    feed(&mut ix, &s.a);
    check_one_chain(&ix, &s);
    assert!(ix.members(&s.b1).is_none());
}

#[test]
fn child_before_parent() {
    let s = synth::three_hosts(["a", "b", "c"], T0);
    let mut ix = ChainIndex::default();
    feed(&mut ix, &s.a);
    // b2's events, then C, then b1's.
    let (b1_evs, b2_evs): (Vec<Event>, Vec<Event>) =
        s.b.iter()
            .cloned()
            .partition(|e| e.process.as_ref().unwrap().exec_id == s.b1);
    feed(&mut ix, &b2_evs);
    feed(&mut ix, &s.c);
    assert_eq!(ix.chain_of(&s.c1), Some(s.b2.as_str()));
    feed(&mut ix, &b1_evs);
    check_one_chain(&ix, &s);
}

#[test]
fn connect_outside_window_does_not_match() {
    let s = synth::three_hosts(["a", "b", "c"], T0);
    let mut ix = ChainIndex::default();
    let mut a = s.a.clone();
    a[1].time_ns += NET_MATCH_WINDOW_NS + 10_000_000_000;
    feed(&mut ix, &a);
    feed(&mut ix, &s.b);
    assert_eq!(ix.chain_of(&s.b1), Some(s.b1.as_str()));
}

#[test]
fn loopback_does_not_pair_across_hosts() {
    let p1 = synth::process("x", 10, 0, "/bin/client", "");
    let p2 = synth::process("y", 20, 0, "/bin/server", "");
    let mut ix = ChainIndex::default();
    ix.observe(&synth::net(
        &p1,
        "x",
        T0,
        "connect",
        ("127.0.0.1", 5000),
        ("127.0.0.1", 80),
    ));
    ix.observe(&synth::net(
        &p2,
        "y",
        T0,
        "accept",
        ("127.0.0.1", 80),
        ("127.0.0.1", 5000),
    ));
    assert_eq!(ix.chain_of(&p2.exec_id), Some(p2.exec_id.as_str()));
    let p3 = synth::process("x", 30, 0, "/bin/server", "");
    ix.observe(&synth::net(
        &p3,
        "x",
        T0,
        "accept",
        ("127.0.0.1", 80),
        ("127.0.0.1", 5000),
    ));
    assert_eq!(ix.chain_of(&p3.exec_id), Some(p1.exec_id.as_str()));
}

#[test]
fn login_shell_is_not_the_root() {
    let shell = synth::with_login(synth::process("a", 50, 0, "/bin/bash", ""), 1000, "alice");
    let t1 = synth::with_login(
        synth::process("a", 60, 50, "/usr/bin/claude", "claude"),
        1000,
        "alice",
    );
    let t2 = synth::with_login(
        synth::process("a", 70, 50, "/usr/bin/codex", "codex"),
        1000,
        "alice",
    );
    let mut ix = ChainIndex::default();
    for p in [&shell, &t1, &t2] {
        ix.observe(&synth::exec(p, "a", T0, vec![]));
    }
    assert_eq!(ix.chain_of(&t1.exec_id), Some(t1.exec_id.as_str()));
    assert_eq!(ix.chain_of(&t2.exec_id), Some(t2.exec_id.as_str()));
    // A shell an agent spawns is part of the agent's chain.
    let sub = synth::with_login(synth::process("a", 80, 60, "/bin/bash", ""), 1000, "alice");
    let cat = synth::with_login(synth::process("a", 90, 80, "/bin/cat", ""), 1000, "alice");
    ix.observe(&synth::exec(&sub, "a", T0, vec![]));
    ix.observe(&synth::exec(&cat, "a", T0, vec![]));
    assert_eq!(ix.chain_of(&cat.exec_id), Some(t1.exec_id.as_str()));
}

#[test]
fn traceparent_links_sender_to_receiver() {
    use custody_proto::sensor::v1::HttpRequest;
    let c = synth::with_login(synth::process("a", 10, 0, "/bin/client", ""), 1000, "alice");
    let s = synth::process("b", 20, 0, "/bin/server", "srv");
    let req = |p: &Process, h: &str, t, direction: &str| {
        synth::event(
            p,
            h,
            t,
            Kind::HttpRequest(HttpRequest {
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                method: "POST".into(),
                direction: direction.into(),
                ..Default::default()
            }),
        )
    };
    let mut ix = ChainIndex::default();
    // Another client sending the same trace id is not the server's upstream.
    let other = synth::with_login(synth::process("c", 30, 0, "/bin/client", ""), 1001, "bob");
    ix.observe(&req(&other, "c", T0 - 1, "sent"));
    ix.observe(&req(&s, "b", T0 + 5, "received"));
    assert_eq!(
        ix.chain_of(&s.exec_id),
        Some(other.exec_id.as_str()),
        "received pairs with a sender"
    );
    let mut ix = ChainIndex::default();
    ix.observe(&req(&s, "b", T0 + 5, "received"));
    ix.observe(&req(&c, "a", T0, "sent"));
    ix.observe(&req(&other, "c", T0 + 6, "sent"));
    assert_eq!(ix.chain_of(&s.exec_id), Some(c.exec_id.as_str()));
    assert_ne!(
        ix.chain_of(&other.exec_id),
        Some(c.exec_id.as_str()),
        "two senders are unrelated"
    );
    assert_eq!(
        ix.node(&s.exec_id).unwrap().upstream.as_ref().unwrap().kind,
        "http"
    );
}

#[test]
fn delegation_token_links_delegator_to_delegate() {
    use custody_proto::sensor::v1::{HttpRequest, Principal};
    let sup = synth::with_login(
        synth::process("a", 11, 0, "/bin/supervisor", "sup"),
        1000,
        "alice",
    );
    let worker = synth::process("b", 21, 0, "/bin/worker", "worker");
    let stranger = synth::process("c", 31, 0, "/bin/other", "other");
    let req = |p: &Process, h: &str, t, direction: &str, fp: &str| {
        synth::event(
            p,
            h,
            t,
            Kind::HttpRequest(HttpRequest {
                method: "POST".into(),
                direction: direction.into(),
                credential_fingerprints: vec![fp.into()],
                delegation: Some(Principal {
                    delegated_sub: "alice@example.com".into(),
                    act: vec!["sup".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
    };
    let mut ix = ChainIndex::default();
    // The worker's receipt arrives first; a different token does not match.
    ix.observe(&req(&worker, "b", T0 + 3, "received", "hmac-sha256:aa"));
    ix.observe(&req(&stranger, "c", T0 + 1, "sent", "hmac-sha256:bb"));
    assert_ne!(
        ix.chain_of(&worker.exec_id),
        Some(stranger.exec_id.as_str())
    );
    ix.observe(&req(&sup, "a", T0, "sent", "hmac-sha256:aa"));
    assert_eq!(ix.chain_of(&worker.exec_id), Some(sup.exec_id.as_str()));
    assert_eq!(
        ix.node(&worker.exec_id)
            .unwrap()
            .upstream
            .as_ref()
            .unwrap()
            .kind,
        "http"
    );
    let edges = ix.inbound.get(&worker.exec_id).expect("inbound edge");
    assert!(
        edges
            .iter()
            .any(|e| e.kind == "http" && e.detail.contains("delegation alice@example.com act sup")),
        "{edges:?}"
    );
}

#[test]
fn restore_and_retention() {
    let s = synth::three_hosts(["a", "b", "c"], T0);
    let mut ix = ChainIndex::default();
    feed(&mut ix, &s.a);
    feed(&mut ix, &s.b);
    feed(&mut ix, &s.c);
    let nodes: Vec<(String, Node)> = ix.nodes().map(|(k, v)| (k.clone(), v.clone())).collect();
    let edges: Vec<Edge> = ix.inbound.values().flatten().cloned().collect();
    let ix2 = ChainIndex::restore(nodes, edges, vec![]);
    check_one_chain(&ix2, &s);

    // Everything but C's service idles out of A's chain.
    let mut ix = ix2;
    ix.take_changes();
    let removed = ix.remove_idle(T0 + 3_000_000_001);
    assert_eq!(removed, 3);
    assert_eq!(ix.chain_of(&s.c1), Some(s.c1.as_str()));
    let ch = ix.take_changes();
    assert_eq!(ch.removed_nodes.len(), 3);
    assert!(ch.nodes.contains(&s.c1));
}

#[test]
fn a_backdated_cross_host_half_is_timed_by_its_arrival() {
    let s = 1_000_000_000u64;
    let now = T0 + 1000 * s;
    let c1 = synth::process("c", 3, 0, "/usr/bin/client", "");
    let b1 = synth::process("b", 2, 0, "/usr/bin/service", "svc");
    let a1 = synth::process("a", 1, 0, "/usr/bin/attacker", "");
    let mut ix = ChainIndex::default();
    let honest = |ix: &mut ChainIndex, e: Event| {
        let t = e.time_ns;
        ix.observe_arrived(&e, t);
    };
    honest(
        &mut ix,
        synth::net(
            &c1,
            "c",
            now - 10 * s,
            "connect",
            ("10.0.0.3", 40000),
            ("10.0.0.2", 80),
        ),
    );
    honest(
        &mut ix,
        synth::net(
            &b1,
            "b",
            now - 10 * s,
            "accept",
            ("10.0.0.2", 80),
            ("10.0.0.3", 40000),
        ),
    );
    honest(
        &mut ix,
        synth::net(
            &b1,
            "b",
            now - 5 * s,
            "accept",
            ("10.0.0.2", 80),
            ("10.0.0.1", 50000),
        ),
    );
    assert_eq!(ix.chain_of(&b1.exec_id), Some(c1.exec_id.as_str()));
    // A claims 100 s ago (within the pairing window of B's accept); it arrives now.
    let backdated = synth::net(
        &a1,
        "a",
        now - 100 * s,
        "connect",
        ("10.0.0.1", 50000),
        ("10.0.0.2", 80),
    );
    ix.observe_arrived(&backdated, now);
    let from_a = ix.outbound[&a1.exec_id][0].clone();
    assert_eq!(from_a.to, b1.exec_id);
    assert_eq!(from_a.time_ns, now, "timed by the later arrival");
    assert_eq!(
        ix.chain_of(&b1.exec_id),
        Some(c1.exec_id.as_str()),
        "the process stays in the chain that put it to work first"
    );
}

#[test]
fn a_fork_names_only_a_child_on_its_own_host() {
    let a1 = synth::process("a", 1, 0, "/usr/bin/agent", "finance");
    let b1 = synth::process("b", 2, 0, "/bin/sh", "");
    let mut ix = ChainIndex::default();
    ix.observe(&synth::exec(&a1, "a", T0, vec![]));
    ix.observe(&synth::event(
        &b1,
        "b",
        T0 + 1,
        Kind::Fork(custody_proto::sensor::v1::ProcessFork {
            child_exec_id: a1.exec_id.clone(),
            child_pid: 1,
        }),
    ));
    assert_eq!(ix.chain_of(&a1.exec_id), Some(a1.exec_id.as_str()));
    assert!(
        ix.node(&a1.exec_id)
            .unwrap()
            .process
            .parent_exec_id
            .is_empty()
    );
}
