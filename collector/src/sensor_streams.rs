//! The open sensor streams, by host: where a command for a host is handed over
//! while its sensor is connected (the response code pushes commands here; the
//! sensor gRPC service registers each stream after its hello and removes it when
//! the stream ends).
//!
//! A leaf that knows nothing of gRPC: a stream is a [`CommandSink`], which the
//! service implements over its response channel, so response and the service do
//! not import each other.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use custody_proto::sensor::v1::Command;

/// Where commands for one connected host go.
pub trait CommandSink: Send + Sync {
    /// Queues `cmd` on the stream; false if the stream has ended.
    fn push(&self, cmd: Command) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;
}

/// A registered stream: its registration id and where its commands go.
type Registered = (u64, Arc<dyn CommandSink>);

/// Open sensor streams, by host; a host's newest stream wins.
#[derive(Default)]
pub struct SensorStreams {
    by_host: Mutex<HashMap<String, Registered>>,
    next: AtomicU64,
}

impl SensorStreams {
    /// Records `host`'s stream; the id returned unregisters exactly this one.
    pub fn register(&self, host: &str, sink: Arc<dyn CommandSink>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.by_host
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_owned(), (id, sink));
        id
    }

    /// Forgets `host`'s stream `id`, unless a newer stream replaced it.
    pub fn unregister(&self, host: &str, id: u64) {
        let mut m = self.by_host.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(host).is_some_and(|(i, _)| *i == id) {
            m.remove(host);
        }
    }

    /// Pushes a command to a connected host; false if it has no open stream.
    pub async fn send_command(&self, host: &str, cmd: Command) -> bool {
        let sink = self
            .by_host
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .map(|(_, s)| s.clone());
        match sink {
            Some(s) => s.push(cmd).await,
            None => false,
        }
    }
}
