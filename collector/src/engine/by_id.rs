//! Stored events by id, for exports: the engine numbers events 1, 2, … in arrival
//! order and a block holds a contiguous range of ids, so reading in id order
//! (rather than time order) follows the stored stream exactly once, and a cursor
//! is one number.

use anyhow::Result;

use super::{Engine, StoredEvent};

/// One stored event with its id.
pub struct Numbered {
    pub id: u64,
    pub se: StoredEvent,
}

impl Engine {
    /// The id after the last event of the store (1 for an empty store). Only called
    /// before ingest starts, when everything in the store is durable.
    pub fn end_event_id(&self) -> Result<u64> {
        let last = self.read().blocks.keys().next_back().copied();
        let Some(b) = last else { return Ok(1) };
        Ok(match self.store.block(b)? {
            Some(block) => block.entries.iter().map(|e| e.id + 1).max().unwrap_or(b),
            None => b,
        })
    }

    /// The first stored event id (for exports that start at the beginning).
    pub fn first_event_id(&self) -> u64 {
        self.read().blocks.keys().next().copied().unwrap_or(1)
    }

    /// Events with ids in `from..until`, in id order, at most `limit`; and the id to
    /// read from next. Ids that are gone (retention) are skipped.
    pub fn events_by_id(
        &self,
        from: u64,
        until: u64,
        limit: usize,
    ) -> Result<(Vec<Numbered>, u64)> {
        if from >= until {
            return Ok((vec![], from));
        }
        let blocks: Vec<u64> = {
            let st = self.read();
            let first = st.blocks.range(..=from).next_back().map(|(b, _)| *b);
            first
                .into_iter()
                .chain(st.blocks.range(from + 1..until).map(|(b, _)| *b))
                .collect()
        };
        let mut out: Vec<(
            u64,
            String,
            custody_proto::sensor::v1::Event,
            crate::event_key::EventKey,
        )> = vec![];
        let mut next = until;
        for b in blocks {
            let Some(block) = self.store.block(b)? else {
                continue;
            };
            let mut idx: Vec<usize> = (0..block.entries.len())
                .filter(|&i| (from..until).contains(&block.entries[i].id))
                .collect();
            idx.sort_unstable_by_key(|&i| block.entries[i].id);
            for i in idx {
                if out.len() >= limit {
                    next = out.last().map(|o| o.0 + 1).unwrap_or(from);
                    break;
                }
                let e = &block.entries[i];
                out.push((e.id, block.exec_id(i).to_owned(), block.event(i)?, e.key()));
            }
            if out.len() >= limit {
                if next == until {
                    next = out.last().map(|o| o.0 + 1).unwrap_or(from);
                }
                break;
            }
        }
        // The chain as it is known now (it may have been joined since ingest).
        let st = self.read();
        let events = out
            .into_iter()
            .map(|(id, exec, event, key)| Numbered {
                id,
                se: StoredEvent {
                    key,
                    chain_id: st.chains.chain_of(&exec).unwrap_or("").to_owned(),
                    event,
                },
            })
            .collect();
        Ok((events, next))
    }
}
