//! Where each export has got to, persisted in the store so that a restarted
//! collector resumes there: events are numbered in arrival order (the store's
//! event ids), alerts are ordered by id. A cursor moves only after its records
//! were delivered, so delivery is at-least-once.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::store::Store;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The next event id to export.
    pub next_event_id: u64,
    /// The last alert exported ("" before the first).
    pub last_alert_id: String,
}

/// The setting holding one export's cursor ("export" NUL name, as layout 2 keys it).
fn setting(name: &str) -> String {
    format!("export\0{name}")
}

impl Cursor {
    pub fn load(store: &dyn Store, name: &str) -> Result<Option<Cursor>> {
        match store.setting(&setting(name))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Written to sled (made durable by sled's periodic flush or the collector's
    /// flush at shutdown; after a crash an export may repeat up to a second).
    pub fn save(&self, store: &dyn Store, name: &str) -> Result<()> {
        store.put_setting(&setting(name), serde_json::to_vec(self)?)
    }
}
