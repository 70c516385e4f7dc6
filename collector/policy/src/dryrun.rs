//! Dry run: a policy set over recorded (chain, event) pairs, through the same
//! [`Evaluator`] the live path uses.

use custody_proto::sensor::v1::Event;
use serde::{Deserialize, Serialize};

use super::context::ChainContext;
use super::eval::{Decision, Evaluator};
use super::load::{BASE_PERMIT_ID, PolicySet};

/// How often one policy denied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyCount {
    pub id: String,
    /// Decisions this policy was among the deniers of.
    pub denied: u64,
    /// Events with at least one decision this policy denied.
    pub events: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Events read.
    pub events: u64,
    /// Decisions made (an event stands for zero or more actions).
    pub decisions_total: u64,
    pub allowed: u64,
    pub denied: u64,
    /// Decisions made from incomplete context.
    pub incomplete: u64,
    /// Decisions with evaluation errors or request problems.
    pub with_diagnostics: u64,
    /// One entry per policy of the set (load order), including those that never denied.
    pub per_policy: Vec<PolicyCount>,
    /// The decisions of each event, in input order (`decisions[i]` belongs to event i).
    pub decisions: Vec<Vec<Decision>>,
}

/// Evaluates every (chain, event) pair with `set` and counts, per policy, what it
/// would have denied.
pub fn dry_run(set: &PolicySet, items: impl Iterator<Item = (ChainContext, Event)>) -> Report {
    let eval = Evaluator::new(set);
    let list = set.list();
    let mut per_policy: Vec<PolicyCount> = list
        .iter()
        .filter(|p| p.id != BASE_PERMIT_ID)
        .map(|p| PolicyCount {
            id: p.id.clone(),
            ..PolicyCount::default()
        })
        .collect();
    let index: std::collections::HashMap<String, usize> = per_policy
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id.clone(), i))
        .collect();
    let mut r = Report::default();
    for (ctx, ev) in items {
        let ds = eval.evaluate(&ctx, &ev);
        r.events += 1;
        let mut seen = std::collections::HashSet::new();
        for d in &ds {
            r.decisions_total += 1;
            if d.allowed {
                r.allowed += 1;
            } else {
                r.denied += 1;
            }
            r.incomplete += u64::from(d.context_incomplete);
            r.with_diagnostics += u64::from(!d.diagnostics.is_empty());
            for id in &d.denied_by {
                if let Some(&i) = index.get(id) {
                    per_policy[i].denied += 1;
                    if seen.insert(i) {
                        per_policy[i].events += 1;
                    }
                }
            }
        }
        r.decisions.push(ds);
    }
    r.per_policy = per_policy;
    r
}
