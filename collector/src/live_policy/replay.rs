//! The admin API's dry run: replays stored events through a policy set, oldest first, judged with the same
//! context builder and evaluator as live evaluation, without alerts or responses.
//! Contexts come from the chain index as it is now (chains only grow more complete
//! as late events arrive, so a dry run sees at least what live evaluation saw).
//!
//! Any viewer may dry-run (reviewing a policy before an admin applies it is a
//! viewer's job), so a run is budgeted: at most [`MAX_EVENTS`] events and
//! [`TIME_BUDGET`] of evaluation, then it stops and says it was truncated. Each
//! event's cost is bounded too (fields capped at ingest, Cedar parents
//! depth-capped).

use custody_proto::admin::v1::{DryRunDecision, DryRunReport, EventFilter};

use super::{build_context, is_action};
use crate::engine::Engine;
use crate::event_key::key_to_id;
use custody_policy::{Evaluator, PolicySet};

const PAGE: usize = 2000;
const MAX_LISTED: usize = 1000;
/// Events one dry run reads at most (also when the caller asks for more).
pub const MAX_EVENTS: u64 = 1_000_000;
/// Wall-clock time one dry run may spend.
pub const TIME_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);

pub fn run(
    engine: &Engine,
    set: &PolicySet,
    since_ns: u64,
    until_ns: u64,
    max_events: u64,
) -> DryRunReport {
    let evaluator = Evaluator::new(set);
    let max_events = if max_events == 0 {
        MAX_EVENTS
    } else {
        max_events.min(MAX_EVENTS)
    };
    let started = std::time::Instant::now();
    let filter = EventFilter {
        since_ns,
        until_ns,
        ..Default::default()
    };
    let mut report = DryRunReport::default();
    let mut page = None;
    'pages: loop {
        let Ok((events, next)) = engine.list_events(&filter, PAGE, page, true) else {
            break;
        };
        for se in &events {
            if report.events >= max_events || started.elapsed() > TIME_BUDGET {
                report.truncated = true;
                break 'pages;
            }
            report.events += 1;
            if !is_action(&se.event) {
                continue;
            }
            let ctx = build_context::chain_context(&engine.read(), &se.event);
            for d in evaluator.evaluate(&ctx, &se.event) {
                report.requests += 1;
                if d.allowed {
                    continue;
                }
                report.denied += 1;
                for id in &d.denied_by {
                    *report.per_policy.entry(id.clone()).or_default() += 1;
                }
                if report.decisions.len() >= MAX_LISTED {
                    report.truncated = true;
                    continue;
                }
                let p = se.event.process.clone().unwrap_or_default();
                report.decisions.push(DryRunDecision {
                    event_id: key_to_id(&se.key),
                    time_ns: se.event.time_ns,
                    chain_id: if se.chain_id.is_empty() {
                        ctx.chain_id.clone()
                    } else {
                        se.chain_id.clone()
                    },
                    exec_id: p.exec_id,
                    host: se.event.host.clone(),
                    action: d.action.as_str().into(),
                    principal: d.principal,
                    resource: d.resource,
                    denied_by: d.denied_by,
                    response: d
                        .response
                        .map(|r| r.as_str().to_string())
                        .unwrap_or_default(),
                    severity: d
                        .severity
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                    context_incomplete: d.context_incomplete,
                });
            }
        }
        match next {
            Some(k) => page = Some(k),
            None => break,
        }
    }
    report
}
