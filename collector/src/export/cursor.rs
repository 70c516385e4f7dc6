//! Where each export has got to, persisted in the store so that a restarted
//! collector resumes there: events are numbered in arrival order (the store's
//! event ids), alerts are ordered by id. A cursor moves only after its records
//! were delivered, so delivery is at-least-once.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::store::{self, Store};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The next event id to export.
    pub next_event_id: u64,
    /// The last alert exported ("" before the first).
    pub last_alert_id: String,
}

fn key(name: &str) -> Vec<u8> {
    store::prefixed(store::META, &[b"export", name.as_bytes()])
}

impl Cursor {
    pub fn load(store: &Store, name: &str) -> Result<Option<Cursor>> {
        match store.get(&key(name))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Written to sled (made durable by sled's periodic flush or the collector's
    /// flush at shutdown; after a crash an export may repeat up to a second).
    pub fn save(&self, store: &Store, name: &str) -> Result<()> {
        store.insert(key(name), serde_json::to_vec(self)?)
    }
}
