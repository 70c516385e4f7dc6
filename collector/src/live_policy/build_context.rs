//! The chain an incoming event belongs to, as the policy engine sees it, built from
//! the collector's chain index: the root human, the agents on the path from the
//! root to the acting process, the depth, and the credentials upstream hops held.

use std::collections::HashSet;

use custody_proto::sensor::v1::Event;

use crate::chain::ChainIndex;
use crate::engine::State;
use custody_policy::{AgentInfo, ChainContext, HumanInfo};

/// Builds the context of `ev` from what the collector knows now.
pub fn chain_context(st: &State, ev: &Event) -> ChainContext {
    from_index(&st.chains, ev)
}

pub fn from_index(chains: &ChainIndex, ev: &Event) -> ChainContext {
    let mut ctx = ChainContext {
        host: ev.host.clone(),
        ..Default::default()
    };
    let Some(p) = ev.process.as_ref() else {
        ctx.incomplete = true;
        return ctx;
    };
    let Some(chain_id) = chains.chain_of(&p.exec_id) else {
        // Not indexed yet (should not happen after ingest); judge the event alone.
        ctx.incomplete = true;
        if let Some(a) = AgentInfo::from_process(p) {
            ctx.depth = 1;
            ctx.agents.push(a);
        }
        return ctx;
    };
    ctx.chain_id = chain_id.to_string();
    match chains.human_of(chain_id) {
        Some((id, via)) => {
            ctx.root_human = Some(HumanInfo {
                id,
                groups: vec![],
                via: via.to_string(),
            })
        }
        None => ctx.incomplete = true,
    }
    let path = chains.path_from_root(&p.exec_id);
    if path.is_empty() {
        ctx.incomplete = true;
    }
    // The root of the path should be where the chain starts: a root with a parent
    // the collector has not seen means part of the chain is missing.
    if let Some(root) = path.first().and_then(|id| chains.node(id))
        && root.upstream.is_none()
        && !root.process.parent_exec_id.is_empty()
        && chains.node(&root.process.parent_exec_id).is_some()
    {
        ctx.incomplete = true;
    }
    let mut held_upstream: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let last = path.len().saturating_sub(1);
    for (i, id) in path.iter().enumerate() {
        let Some(n) = chains.node(id) else {
            ctx.incomplete = true;
            continue;
        };
        // The event's own process is described by the event (newest identity).
        let proc_ = if i == last { p } else { &n.process };
        if let Some(a) = AgentInfo::from_process(proc_)
            && ctx.agents.last().is_none_or(|l| l.id != a.id)
        {
            ctx.agents.push(a);
        }
        // The task of the chain: the first one given along the path from the root.
        if ctx.task.is_empty() && !n.task.is_empty() {
            ctx.task = n.task.clone();
        }
        if i < last {
            for c in &n.creds {
                if seen.insert(c.fingerprint.clone()) {
                    held_upstream.push(c.fingerprint.clone());
                }
            }
        }
    }
    // An exec of an agent below another agent is also a delegation from it.
    if let Some(up) = path
        .len()
        .checked_sub(2)
        .and_then(|i| chains.node(&path[i]))
        && !up.process.agent_id.is_empty()
        && up.process.agent_id != p.agent_id
    {
        ctx.delegated_by = Some(up.process.agent_id.clone());
    }
    ctx.depth = ctx.agents.len() as u32;
    ctx.inherited_credentials = held_upstream;
    ctx
}
