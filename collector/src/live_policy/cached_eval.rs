//! Decisions for stored events: an [`Evaluator`] with a cache of each process's
//! chain context, prepared once and reused while the chain index has not changed in
//! a way that could alter it (its generation), since most events come from
//! processes already seen. (Named for what it is; agent-user's `hold::Judge` is
//! unrelated.)

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::{Engine, StoredEvent};
use custody_policy::{Decision, Evaluator, PreparedChain};

/// Prepared contexts kept at most; the cache starts over beyond it.
const MAX_CACHED: usize = 50_000;

pub struct CachedEvaluator {
    evaluator: Evaluator,
    cache: HashMap<(String, String), Arc<PreparedChain>>,
    generation: u64,
}

impl CachedEvaluator {
    pub fn new(evaluator: Evaluator) -> CachedEvaluator {
        CachedEvaluator {
            evaluator,
            cache: HashMap::new(),
            generation: u64::MAX,
        }
    }

    /// The event's chain context and the decisions for it.
    pub fn decide(
        &mut self,
        engine: &Engine,
        se: &StoredEvent,
    ) -> (Arc<PreparedChain>, Vec<Decision>) {
        let p = se.event.process.as_ref();
        let key = (
            p.map(|p| p.exec_id.clone()).unwrap_or_default(),
            p.map(|p| p.agent_id.clone()).unwrap_or_default(),
        );
        let prepared = {
            let st = engine.read();
            let g = st.chains.generation();
            if g != self.generation || self.cache.len() >= MAX_CACHED {
                self.cache.clear();
                self.generation = g;
            }
            match self.cache.get(&key) {
                Some(c) if !key.0.is_empty() => c.clone(),
                _ => {
                    let ctx = super::build_context::chain_context(&st, &se.event);
                    let c = Arc::new(PreparedChain::new(&ctx));
                    // A context built before the chain's root or links arrived is not
                    // worth keeping: the next event may know more.
                    if !key.0.is_empty() && !ctx.incomplete {
                        self.cache.insert(key, c.clone());
                    }
                    c
                }
            }
        };
        let decisions = self.evaluator.evaluate_prepared(&prepared, &se.event);
        (prepared, decisions)
    }
}
