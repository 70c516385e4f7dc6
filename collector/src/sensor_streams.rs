//! The open sensor streams, by host: where a command for a host is handed over
//! while its sensor is connected (the response code pushes commands here; the
//! sensor gRPC service registers each stream after its hello and removes it when
//! the stream ends).
//!
//! Every open stream also gets a close signal: when a host's identity changes
//! (re-enrollment, retirement) its streams are told to end, so a stream opened with
//! a certificate that is no longer the host's stops receiving its commands at once.
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

/// One open stream as [`SensorStreams::register`] hands it out.
pub struct Registration {
    /// Unregisters exactly this stream.
    pub id: u64,
    /// Notified when the stream must end (its host's identity changed).
    pub closed: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct Streams {
    /// Where a host's commands go: its newest stream.
    by_host: HashMap<String, Registered>,
    /// Every open stream (older ones of a host included): host and close signal.
    open: HashMap<u64, (String, Arc<tokio::sync::Notify>)>,
}

/// Open sensor streams, by host; a host's newest stream wins.
#[derive(Default)]
pub struct SensorStreams {
    inner: Mutex<Streams>,
    next: AtomicU64,
}

impl SensorStreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `host`'s stream.
    pub fn register(&self, host: &str, sink: Arc<dyn CommandSink>) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let closed = Arc::new(tokio::sync::Notify::new());
        let mut s = self.lock();
        s.by_host.insert(host.to_owned(), (id, sink));
        s.open.insert(id, (host.to_owned(), closed.clone()));
        Registration { id, closed }
    }

    /// Forgets `host`'s stream `id` (commands stay with a newer stream).
    pub fn unregister(&self, host: &str, id: u64) {
        let mut s = self.lock();
        s.open.remove(&id);
        if s.by_host.get(host).is_some_and(|(i, _)| *i == id) {
            s.by_host.remove(host);
        }
    }

    /// Ends every open stream of `host`: no command goes to them from now on and
    /// each is told to close. Returns how many there were.
    pub fn close_host(&self, host: &str) -> usize {
        let mut s = self.lock();
        s.by_host.remove(host);
        let ids: Vec<u64> = s
            .open
            .iter()
            .filter(|(_, (h, _))| h == host)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some((_, n)) = s.open.remove(id) {
                // A permit is stored if the stream is not waiting yet.
                n.notify_one();
            }
        }
        ids.len()
    }

    /// Pushes a command to a connected host; false if it has no open stream.
    pub async fn send_command(&self, host: &str, cmd: Command) -> bool {
        let sink = self.lock().by_host.get(host).map(|(_, s)| s.clone());
        match sink {
            Some(s) => s.push(cmd).await,
            None => false,
        }
    }
}
