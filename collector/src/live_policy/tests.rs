//! The chain context policies see, built from the chain index.

use custody_proto::sensor::v1::{LlmRequest, event::Kind};

use super::build_context::from_index;
use crate::chain::ChainIndex;
use crate::synth;

#[test]
fn context_names_human_path_depth_task_and_upstream_credentials() {
    let s = synth::three_hosts(["h-a", "h-b", "h-c"], synth::T0);
    let mut idx = ChainIndex::default();
    for e in s.a.iter().chain(&s.b).chain(&s.c) {
        idx.observe(e);
    }
    // A's process asks an LLM: that becomes the chain's task.
    let a1 = synth::with_login(
        synth::process("h-a", 4100, 4000, "/usr/bin/python3", ""),
        1000,
        "alice",
    );
    idx.observe(&synth::event(
        &a1,
        "h-a",
        synth::T0 + 10,
        Kind::LlmRequest(LlmRequest {
            user_excerpt: "summarise the october ledger".into(),
            ..Default::default()
        }),
    ));
    let open = s.c.last().expect("C opens the report");
    let ctx = from_index(&idx, open);
    assert_eq!(ctx.chain_id, s.a1);
    let human = ctx.root_human.as_ref().expect("human");
    assert_eq!((human.id.as_str(), human.via.as_str()), ("alice", "login"));
    assert_eq!(ctx.task, "summarise the october ledger");
    // Agents on the path: B's research agent only (A's client and C's service are
    // not agents), so depth 1; C's service acts under it.
    let ids: Vec<&str> = ctx.agents.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, vec!["research-agent"]);
    assert_eq!(ctx.depth, 1);
    // Credentials held upstream (A's key, B's key) count as given down the chain.
    assert!(
        ctx.inherited_credentials
            .contains(&"hmac-sha256:aa11".to_string())
    );
    assert!(
        ctx.inherited_credentials
            .contains(&"hmac-sha256:bb22".to_string())
    );
    assert!(!ctx.incomplete, "{ctx:?}");

    // An event of a process the index has never seen is judged alone, marked.
    let stranger = synth::process("h-z", 1, 0, "/bin/sh", "x");
    let ctx = from_index(
        &idx,
        &synth::file_open(&stranger, "h-z", synth::T0, "/etc/passwd"),
    );
    assert!(ctx.incomplete);
    assert_eq!(ctx.depth, 1);
}
