//! Connection limits at the collector's port, global and per peer address.
//!
//! The gRPC services and the web UI share one TLS port. tonic gives no header-read
//! timeout for HTTP/1.1, so a client that opens connections and sends requests a
//! byte at a time holds each one open. Without a cap, one peer can take every file
//! descriptor and the fleet's sensors with them. A connection over a limit is closed
//! at accept (before TLS, so it costs nothing) and counted. A sensor needs one
//! connection, a browser six or so, custodyctl one per call: the per-peer default
//! is far above that, and far below what exhausts the process.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::log_throttle::LogThrottle;

/// How many connections the port holds at once.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub total: usize,
    pub per_peer: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            total: 4096,
            per_peer: 256,
        }
    }
}

#[derive(Default)]
struct Open {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

/// The open connections, and how many were refused.
#[derive(Default)]
pub struct Gate {
    open: Mutex<Open>,
    refused: AtomicU64,
    warnings: LogThrottle,
}

impl Gate {
    /// Connections refused at accept since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn admit(self: &Arc<Self>, limits: ConnLimits, peer: IpAddr) -> Option<Ticket> {
        let mut o = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mine = o.by_peer.get(&peer).copied().unwrap_or(0);
        if o.total >= limits.total || mine >= limits.per_peer {
            self.refused.fetch_add(1, Ordering::Relaxed);
            // A flood must not become a flood of log lines.
            if self.warnings.allow().is_some() {
                tracing::warn!(
                    %peer, open = o.total, from_peer = mine, refused = self.refused(),
                    "connection limit reached (total {}, per peer {}): closing new connections",
                    limits.total, limits.per_peer
                );
            }
            return None;
        }
        o.total += 1;
        *o.by_peer.entry(peer).or_default() += 1;
        Some(Ticket {
            gate: self.clone(),
            peer,
        })
    }
}

/// One admitted connection's place; given back when the connection is dropped.
struct Ticket {
    gate: Arc<Gate>,
    peer: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut o = self.gate.open.lock().unwrap_or_else(|e| e.into_inner());
        o.total = o.total.saturating_sub(1);
        if let Some(n) = o.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                o.by_peer.remove(&self.peer);
            }
        }
    }
}

/// An admitted TCP connection.
pub struct Limited {
    stream: TcpStream,
    _ticket: Ticket,
}

/// The accepted connections within `limits`; the others are closed as they come.
pub fn limit<S>(
    incoming: S,
    limits: ConnLimits,
    gate: Arc<Gate>,
) -> impl Stream<Item = io::Result<Limited>>
where
    S: Stream<Item = io::Result<TcpStream>>,
{
    incoming.filter_map(move |r| match r {
        Err(e) => Some(Err(e)),
        Ok(stream) => {
            let peer = stream.peer_addr().ok()?.ip();
            // Dropping `stream` here closes the refused connection.
            let ticket = gate.admit(limits, peer)?;
            Some(Ok(Limited {
                stream,
                _ticket: ticket,
            }))
        }
    })
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
