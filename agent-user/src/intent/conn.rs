//! The TLS plaintext of one direction of one connection: chunk records joined into a
//! stream ([`super::capture`]), the protocol recognised from its first bytes (HTTP/2
//! by the client preface or the server's SETTINGS frame, HTTP/1.x otherwise) and the
//! messages of that protocol reassembled.

use super::capture::{CallJoin, Chunk};
use super::h2::{self, H2Stats, H2Stream};
use super::http::HttpMessage;
use super::stream::HttpStream;

#[derive(Debug, Default)]
enum Proto {
    /// Nothing seen yet.
    #[default]
    Unknown,
    Http1(HttpStream),
    Http2(Box<H2Stream>),
}

/// Messages of one direction of one TLS connection, whatever HTTP version it speaks.
#[derive(Debug, Default)]
pub struct TlsStream {
    join: CallJoin,
    proto: Proto,
}

impl TlsStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk record of a call; returns the messages it completed.
    pub fn feed_chunk(&mut self, c: Chunk<'_>) -> Vec<HttpMessage> {
        let mut out = Vec::new();
        for p in self.join.push(c) {
            out.extend(self.feed(p.data, p.data.len() as u64 + p.missing));
        }
        out
    }

    /// Feeds bytes kept of the stream, then a hole of `true_len - captured.len()`.
    pub fn feed(&mut self, captured: &[u8], true_len: u64) -> Vec<HttpMessage> {
        if matches!(self.proto, Proto::Unknown) && captured.is_empty() {
            return Vec::new();
        }
        let idle_http1 = matches!(&self.proto, Proto::Http1(s) if s.buffered_len() == 0);
        if matches!(self.proto, Proto::Unknown) || idle_http1 {
            // A connection can be seen from its middle (the daemon started late): only
            // a start that is unmistakably HTTP/2 switches to it.
            if h2::starts_client(captured) {
                self.proto = Proto::Http2(Box::new(H2Stream::client()));
            } else if h2::starts_server(captured) {
                self.proto = Proto::Http2(Box::new(H2Stream::server()));
            } else if !idle_http1 {
                self.proto = Proto::Http1(HttpStream::new());
            }
        }
        match &mut self.proto {
            Proto::Unknown => Vec::new(),
            Proto::Http1(s) => s.feed(captured, true_len),
            Proto::Http2(s) => s.feed(captured, true_len),
        }
    }

    /// The connection closed: what is still under way, as partial (or, for a
    /// close-delimited HTTP/1 response, complete) messages.
    pub fn flush(&mut self) -> Vec<HttpMessage> {
        match &mut self.proto {
            Proto::Unknown => Vec::new(),
            Proto::Http1(s) => s.flush().into_iter().collect(),
            Proto::Http2(s) => s.flush(),
        }
    }

    pub fn buffered_len(&self) -> usize {
        match &self.proto {
            Proto::Unknown => 0,
            Proto::Http1(s) => s.buffered_len(),
            Proto::Http2(s) => s.buffered_len(),
        }
    }

    /// "http/1.1", "h2" or "" (nothing recognised yet).
    pub fn protocol(&self) -> &'static str {
        match self.proto {
            Proto::Unknown => "",
            Proto::Http1(_) => "http/1.1",
            Proto::Http2(_) => "h2",
        }
    }

    /// HTTP/2 framing statistics of this direction (zero for HTTP/1).
    pub fn h2_stats(&self) -> H2Stats {
        match &self.proto {
            Proto::Http2(s) => s.stats(),
            _ => H2Stats::default(),
        }
    }
}
