//! Reassembly of HTTP/1.x messages from per-call TLS plaintext captures of one
//! direction of one connection.
//!
//! Captures keep only the head of each SSL_read/SSL_write, so the stream has holes of
//! known size. A hole inside a length-delimited body (or a chunk's data) is accounted
//! toward the remaining length: the message is emitted as partial at the right point
//! and the next message is parsed at its true boundary. A hole anywhere else (in a head,
//! in a chunk-size line) loses framing; the stream then drops everything until a capture
//! that starts like an HTTP/1 message, which in practice is the next request or
//! response, since clients and servers start each message with a new write.

use std::mem;

use super::http::{
    BodyKind, Head, HttpMessage, find_head_end, is_head_byte, looks_like_start, parse_head,
};

/// Most body bytes held for one message before it is emitted as partial.
pub(crate) const MAX_BUFFERED: usize = 256 * 1024;
/// Longest head accepted; longer ones are dropped as not worth the memory.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 4 * 1024;

/// Reassembles HTTP/1.1 messages of one direction of one connection. See the module
/// documentation for how truncated captures are handled.
///
/// A response to HEAD cannot be told from one with a body without seeing the request:
/// its Content-Length is believed until a capture starting with "HTTP/1." arrives
/// before any body byte, which then ends it as bodiless.
#[derive(Debug, Default)]
pub struct HttpStream {
    /// Bytes not yet consumed: a partial head, chunk-size line or trailer line.
    buf: Vec<u8>,
    /// Prefix of `buf` already searched for the end of the head.
    head_scanned: usize,
    state: State,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Head,
    Body(Box<Pending>),
}

#[derive(Debug)]
struct Pending {
    head: Head,
    framing: Framing,
    body: Vec<u8>,
    /// False once any body byte was not captured or not kept.
    complete: bool,
    /// Set once a partial message was emitted because the body reached the cap.
    overflowed: bool,
    /// Event streams are emitted in successive capped segments instead of once:
    /// they can run for minutes and later events matter as much as the first ones.
    segmenting: bool,
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl HttpStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes currently held (partial head or line plus partial body).
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
            + match &self.state {
                State::Head => 0,
                State::Body(p) => p.body.len(),
            }
    }

    /// Feeds one capture: `captured` are the bytes kept, `true_len` the bytes the call
    /// really moved. Returns every message this capture completed.
    pub fn feed(&mut self, captured: &[u8], true_len: u64) -> Vec<HttpMessage> {
        let mut out = Vec::new();
        let missing = true_len.saturating_sub(captured.len() as u64);
        self.end_bodiless_response(captured, &mut out);
        if matches!(self.state, State::Head) && self.buf.is_empty() {
            let start = captured
                .iter()
                .position(|b| !matches!(b, b'\r' | b'\n'))
                .unwrap_or(captured.len());
            // Not the start of a message: HTTP/2, TLS noise, the rest of a message whose
            // beginning was lost. Dropped before it costs any memory.
            if start == captured.len() || !looks_like_start(&captured[start..]) {
                return out;
            }
        }
        self.buf.extend_from_slice(captured);
        self.process(&mut out);
        if missing > 0 {
            self.skip_missing(missing, &mut out);
        }
        out
    }

    /// Emits a message still waiting for its end (call when the connection closes):
    /// a close-delimited response is then complete, anything else partial.
    pub fn flush(&mut self) -> Option<HttpMessage> {
        self.buf.clear();
        self.head_scanned = 0;
        match mem::take(&mut self.state) {
            State::Head => None,
            State::Body(p) => {
                let done = matches!(p.framing, Framing::UntilClose);
                let mut v = Vec::new();
                finish(*p, done, &mut v);
                v.pop()
            }
        }
    }

    fn process(&mut self, out: &mut Vec<HttpMessage>) {
        let mut pos = 0;
        loop {
            let rest = &self.buf[pos..];
            if rest.is_empty() {
                break;
            }
            match &mut self.state {
                State::Head => {
                    let skip = rest
                        .iter()
                        .position(|b| !matches!(b, b'\r' | b'\n'))
                        .unwrap_or(rest.len());
                    if skip > 0 {
                        pos += skip;
                        self.head_scanned = 0;
                        continue;
                    }
                    if !looks_like_start(rest) {
                        pos = self.buf.len();
                        break;
                    }
                    let scanned = self.head_scanned.min(rest.len());
                    let end = find_head_end(rest, scanned);
                    let head_len = end.unwrap_or(rest.len());
                    let head_ok = head_len <= MAX_HEAD
                        && rest[scanned.min(head_len)..head_len]
                            .iter()
                            .copied()
                            .all(is_head_byte);
                    if !head_ok {
                        pos = self.buf.len();
                        break;
                    }
                    let Some(end) = end else {
                        self.head_scanned = rest.len();
                        break;
                    };
                    self.head_scanned = 0;
                    pos += end;
                    let Some(head) = parse_head(&rest[..end]) else {
                        continue;
                    };
                    let framing = match head.body_kind() {
                        BodyKind::None => {
                            out.push(head.into_message(Vec::new(), true));
                            continue;
                        }
                        BodyKind::Length(n) => Framing::Length(n),
                        BodyKind::Chunked => Framing::Chunked(Chunk::Size),
                        BodyKind::UntilClose => Framing::UntilClose,
                    };
                    let segmenting = head.is_event_stream();
                    self.state = State::Body(Box::new(Pending {
                        head,
                        framing,
                        body: Vec::new(),
                        complete: true,
                        overflowed: false,
                        segmenting,
                    }));
                }
                State::Body(p) => {
                    let (used, step) = body_step(p, rest, out);
                    pos += used;
                    match step {
                        Step::More => {}
                        Step::NeedInput => break,
                        Step::Done(complete) => self.end_message(complete, out),
                    }
                }
            }
        }
        self.buf.drain(..pos);
    }

    /// A capture starting with a status line while a response body is awaited means the
    /// awaited body does not exist: a response to HEAD (its Content-Length describes the
    /// GET) or a close-delimited body from a server that kept the connection anyway.
    fn end_bodiless_response(&mut self, captured: &[u8], out: &mut Vec<HttpMessage>) {
        let State::Body(p) = &self.state else { return };
        if !self.buf.is_empty()
            || !captured.starts_with(b"HTTP/1.")
            || !matches!(p.head, Head::Response(_))
        {
            return;
        }
        let awaited_nothing =
            matches!(p.framing, Framing::Length(_)) && p.body.is_empty() && !p.overflowed;
        if awaited_nothing || matches!(p.framing, Framing::UntilClose) {
            let complete = p.complete;
            self.end_message(complete, out);
        }
    }

    fn end_message(&mut self, complete: bool, out: &mut Vec<HttpMessage>) {
        if let State::Body(p) = mem::take(&mut self.state) {
            finish(*p, complete, out);
        }
    }

    /// Accounts bytes the call moved but the capture did not keep.
    fn skip_missing(&mut self, missing: u64, out: &mut Vec<HttpMessage>) {
        let framing_lost = !self.buf.is_empty();
        let State::Body(p) = &mut self.state else {
            // A lost head (or the lost start of the next message): wait for a new start.
            self.buf.clear();
            self.head_scanned = 0;
            return;
        };
        p.complete = false;
        let ended = framing_lost
            || match p.framing {
                Framing::UntilClose => false,
                Framing::Length(rem) => {
                    // Bytes past the body belonged to a next message, lost with them.
                    let left = rem.saturating_sub(missing);
                    p.framing = Framing::Length(left);
                    left == 0
                }
                Framing::Chunked(Chunk::Data(rem)) if missing <= rem => {
                    let left = rem - missing;
                    p.framing = Framing::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    false
                }
                Framing::Chunked(_) => true,
            };
        if ended {
            self.buf.clear();
            self.end_message(false, out);
        }
    }
}

enum Step {
    /// Progress made; keep going.
    More,
    /// The rest of the buffer is an incomplete line: wait for the next capture.
    NeedInput,
    /// The message ended (complete or, on a framing error, partial).
    Done(bool),
}

fn body_step(p: &mut Pending, rest: &[u8], out: &mut Vec<HttpMessage>) -> (usize, Step) {
    let clamp = |rem: u64| usize::try_from(rem).unwrap_or(usize::MAX).min(rest.len());
    match p.framing {
        Framing::UntilClose => {
            take_body(p, rest, out);
            (rest.len(), Step::NeedInput)
        }
        Framing::Length(rem) => {
            let n = clamp(rem);
            let left = rem - n as u64;
            p.framing = Framing::Length(left);
            take_body(p, &rest[..n], out);
            (
                n,
                if left == 0 {
                    Step::Done(p.complete)
                } else {
                    Step::More
                },
            )
        }
        Framing::Chunked(Chunk::Data(rem)) => {
            let n = clamp(rem);
            let left = rem - n as u64;
            p.framing = Framing::Chunked(if left == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(left)
            });
            take_body(p, &rest[..n], out);
            (n, Step::More)
        }
        Framing::Chunked(Chunk::DataEnd) => match rest {
            [b'\n', ..] => (1, next_chunk(p)),
            [b'\r', b'\n', ..] => (2, next_chunk(p)),
            [b'\r'] => (0, Step::NeedInput),
            _ => (0, Step::Done(false)),
        },
        Framing::Chunked(line_state) => {
            let Some(nl) = rest.iter().take(MAX_LINE).position(|&b| b == b'\n') else {
                return (
                    0,
                    if rest.len() >= MAX_LINE {
                        Step::Done(false)
                    } else {
                        Step::NeedInput
                    },
                );
            };
            let line = &rest[..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if matches!(line_state, Chunk::Trailers) {
                return (
                    nl + 1,
                    if line.is_empty() {
                        Step::Done(p.complete)
                    } else {
                        Step::More
                    },
                );
            }
            p.framing = Framing::Chunked(match parse_chunk_size(line) {
                Some(0) => Chunk::Trailers,
                Some(n) => Chunk::Data(n),
                None => return (0, Step::Done(false)),
            });
            (nl + 1, Step::More)
        }
    }
}

fn next_chunk(p: &mut Pending) -> Step {
    p.framing = Framing::Chunked(Chunk::Size);
    Step::More
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let digits = line[..end].trim_ascii();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// Appends body bytes, emitting a partial message whenever the cap is reached.
fn take_body(p: &mut Pending, mut bytes: &[u8], out: &mut Vec<HttpMessage>) {
    while !bytes.is_empty() {
        if p.overflowed && !p.segmenting {
            // Already emitted: keep following the framing, drop the content.
            return;
        }
        let room = MAX_BUFFERED - p.body.len();
        let n = room.min(bytes.len());
        p.body.extend_from_slice(&bytes[..n]);
        bytes = &bytes[n..];
        if p.body.len() >= MAX_BUFFERED {
            p.complete = false;
            p.overflowed = true;
            out.push(p.head.clone().into_message(mem::take(&mut p.body), false));
        }
    }
}

fn finish(p: Pending, complete: bool, out: &mut Vec<HttpMessage>) {
    if p.overflowed && (!p.segmenting || p.body.is_empty()) {
        return;
    }
    let complete = complete && p.complete && !p.overflowed;
    out.push(p.head.into_message(p.body, complete));
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
