//! Event keys: time_ns:8 ++ id:8, big-endian, so that byte order is time order.
//! A key names one stored event in the store, the engine's indexes and the read
//! API; its hex form is the event id operators and exports see.
//!
//! A leaf: the block format, the store and the engine all name events by key
//! without importing one another for it.

/// time_ns:8 ++ id:8 — identifies a stored event and orders events by time.
pub type EventKey = [u8; 16];

pub fn event_key(time_ns: u64, id: u64) -> EventKey {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&time_ns.to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

pub fn event_key_time(k: &EventKey) -> u64 {
    u64::from_be_bytes(k[..8].try_into().expect("8 bytes"))
}

pub fn event_key_id(k: &EventKey) -> u64 {
    u64::from_be_bytes(k[8..].try_into().expect("8 bytes"))
}

/// The event id shown to operators: the key in hex.
pub fn key_to_id(k: &EventKey) -> String {
    hex::encode(k)
}

pub fn id_to_key(id: &str) -> Option<EventKey> {
    hex::decode(id).ok()?.try_into().ok()
}
