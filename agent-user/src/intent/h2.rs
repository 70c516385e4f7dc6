//! HTTP/2 of one direction of one connection, from TLS plaintext captures: frames,
//! header blocks (HEADERS + CONTINUATION, PUSH_PROMISE) decoded with the connection's
//! HPACK state, and per-stream headers and bodies turned into the same
//! [`HttpMessage`]s HTTP/1.1 gives, so everything after framing is shared.
//!
//! HPACK has a dynamic table that every header block updates, so a direction can only
//! be decoded from its first byte and without holes: a stream that does not start with
//! the connection preface (client side) or a SETTINGS frame (server side) is not taken
//! for HTTP/2 at all, and a hole outside a DATA payload, a malformed frame or an HPACK
//! error is a *desync*: counted, the messages under way are emitted as partial, and the
//! direction is ignored from then on (a wrong header is worse than none). A hole
//! inside a DATA payload only costs that stream's body its completeness.
//!
//! Memory is bounded: non-DATA frames are buffered up to [`MAX_FRAME`], a header block
//! up to [`MAX_BLOCK`], the HPACK table up to [`MAX_TABLE`], at most [`MAX_STREAMS`]
//! streams are followed, and each body keeps at most the per-message cap (DATA is
//! consumed as it arrives, whatever the frame size).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use loona_hpack::Decoder;

use super::http::{HttpMessage, HttpRequest, HttpResponse, find_header};
use super::stream::MAX_BUFFERED;

/// The client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
/// Largest non-DATA frame buffered (HEADERS, CONTINUATION, SETTINGS …).
const MAX_FRAME: usize = 256 * 1024;
/// Largest header block (HEADERS plus its CONTINUATIONs).
const MAX_BLOCK: usize = 256 * 1024;
/// Largest HPACK dynamic table a sender may ask for (peers advertise 4 KiB by default).
const MAX_TABLE: usize = 64 * 1024;
/// Streams followed at once per direction; more are dropped oldest first.
const MAX_STREAMS: usize = 128;
/// Body bytes held across all streams of the direction.
const MAX_TOTAL_BODY: usize = 1024 * 1024;
/// Header fields kept per message.
const MAX_FIELDS: usize = 128;

mod frame {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const CONTINUATION: u8 = 0x9;
}

mod flags {
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// What went wrong on HTTP/2 connections, per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct H2Stats {
    pub frames: u64,
    /// Framing lost (a hole outside a DATA payload, a malformed frame, a header block
    /// that is too large or out of place): the direction is no longer decoded.
    pub desyncs: u64,
    /// Header blocks HPACK could not decode (also a desync).
    pub hpack_errors: u64,
    /// Streams given up because too many were open at once.
    pub streams_dropped: u64,
}

/// Totals over every connection of the daemon, for its metrics.
static TOTALS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// Frames, desyncs, HPACK errors and dropped streams of every HTTP/2 direction so far.
pub fn h2_totals() -> H2Stats {
    let t = |i: usize| TOTALS[i].load(Ordering::Relaxed);
    H2Stats {
        frames: t(0),
        desyncs: t(1),
        hpack_errors: t(2),
        streams_dropped: t(3),
    }
}

/// Whether `data` starts the client side of an HTTP/2 connection (or is a prefix of
/// the preface, when the first write was cut very short).
pub(crate) fn starts_client(data: &[u8]) -> bool {
    let n = data.len().min(PREFACE.len());
    n >= 4 && data[..n] == PREFACE[..n]
}

/// Whether `data` starts the server side: a SETTINGS frame on stream 0 (the first
/// thing a server sends, RFC 9113 §3.4), which no HTTP/1 response starts with.
pub(crate) fn starts_server(data: &[u8]) -> bool {
    let Some(h) = data.get(..FRAME_HEADER) else {
        return false;
    };
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
    h[3] == frame::SETTINGS
        && h[4] == 0
        && h[5..9] == [0; 4]
        && len.is_multiple_of(6)
        && len <= 6 * 64
}

#[derive(Clone, Copy, Debug)]
struct FrameHead {
    len: u32,
    ty: u8,
    flags: u8,
    stream: u32,
}

#[derive(Debug)]
enum State {
    /// Skipping the client preface: this many bytes of it are still to come.
    Preface(usize),
    /// Collecting a frame header in `buf`.
    Head,
    /// Collecting a whole non-DATA frame's payload in `buf`.
    Payload(FrameHead),
    /// Consuming a DATA payload as it arrives.
    Data(DataState),
    /// Desynced: nothing more is decoded.
    Dead,
}

#[derive(Clone, Copy, Debug)]
struct DataState {
    stream: u32,
    end_stream: bool,
    /// The pad-length octet is still to come.
    need_pad: bool,
    /// Payload bytes of the frame not consumed yet (data plus padding).
    left: u32,
    /// Trailing padding bytes within `left`.
    pad: u32,
}

/// A header block being collected across HEADERS/PUSH_PROMISE and CONTINUATION.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    /// A PUSH_PROMISE block: decoded to keep HPACK in step, then dropped.
    promise: bool,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct Stream {
    head: Option<Head>,
    body: Vec<u8>,
    complete: bool,
    /// The body passed the cap; later bytes are dropped (event streams: emitted in
    /// segments instead).
    overflowed: bool,
    event_stream: bool,
}

#[derive(Debug)]
enum Head {
    Request(HttpRequest),
    Response(HttpResponse),
}

/// HTTP/2 decoder of one direction of one connection; see the module documentation.
pub struct H2Stream {
    state: State,
    buf: Vec<u8>,
    hpack: Decoder<'static>,
    block: Option<Block>,
    streams: BTreeMap<u32, Stream>,
    body_total: usize,
    stats: H2Stats,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("state", &self.state)
            .field("streams", &self.streams.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl H2Stream {
    /// The sending side of a client (its first bytes are the preface).
    pub fn client() -> Self {
        Self::with_state(State::Preface(PREFACE.len()))
    }

    /// The sending side of a server (its first bytes are a SETTINGS frame).
    pub fn server() -> Self {
        Self::with_state(State::Head)
    }

    fn with_state(state: State) -> Self {
        let mut hpack = Decoder::new();
        hpack.set_max_allowed_table_size(MAX_TABLE);
        H2Stream {
            state,
            buf: Vec::new(),
            hpack,
            block: None,
            streams: BTreeMap::new(),
            body_total: 0,
            stats: H2Stats::default(),
        }
    }

    pub fn stats(&self) -> H2Stats {
        self.stats
    }

    pub fn is_dead(&self) -> bool {
        matches!(self.state, State::Dead)
    }

    pub fn buffered_len(&self) -> usize {
        self.buf.len() + self.body_total + self.block.as_ref().map_or(0, |b| b.bytes.len())
    }

    /// Feeds one capture: the bytes kept, then `true_len - captured.len()` bytes the
    /// call moved that were not captured. Returns the messages completed.
    pub fn feed(&mut self, captured: &[u8], true_len: u64) -> Vec<HttpMessage> {
        let mut out = Vec::new();
        self.input(captured, &mut out);
        let missing = true_len.saturating_sub(captured.len() as u64);
        if missing > 0 {
            self.hole(missing, &mut out);
        }
        out
    }

    /// The connection closed: streams under way are emitted as partial.
    pub fn flush(&mut self) -> Vec<HttpMessage> {
        let mut out = Vec::new();
        for (_, s) in std::mem::take(&mut self.streams) {
            finish(s, false, &mut out);
        }
        self.body_total = 0;
        out
    }

    fn bump(&mut self, i: usize) {
        TOTALS[i].fetch_add(1, Ordering::Relaxed);
    }

    fn desync(&mut self, out: &mut Vec<HttpMessage>) {
        self.stats.desyncs += 1;
        self.bump(1);
        self.state = State::Dead;
        self.buf = Vec::new();
        self.block = None;
        out.extend(self.flush());
    }

    fn hole(&mut self, missing: u64, out: &mut Vec<HttpMessage>) {
        match &mut self.state {
            State::Dead => {}
            State::Data(d) if !d.need_pad && missing <= u64::from(d.left) => {
                // Within the DATA payload: the body is incomplete, framing holds.
                let data_left = d.left.saturating_sub(d.pad);
                let lost = missing.min(u64::from(data_left)) as u32;
                d.left -= missing as u32;
                d.pad = d.pad.min(d.left);
                let (stream, end, left) = (d.stream, d.end_stream, d.left);
                if lost > 0 {
                    if let Some(s) = self.streams.get_mut(&stream) {
                        s.complete = false;
                    }
                }
                if left == 0 {
                    self.state = State::Head;
                    if end {
                        self.end_stream(stream, out);
                    }
                }
            }
            _ => self.desync(out),
        }
    }

    fn input(&mut self, mut data: &[u8], out: &mut Vec<HttpMessage>) {
        while !data.is_empty() {
            match self.state {
                State::Dead => return,
                State::Preface(left) => {
                    let n = left.min(data.len());
                    let at = PREFACE.len() - left;
                    if data[..n] != PREFACE[at..at + n] {
                        self.desync(out);
                        return;
                    }
                    data = &data[n..];
                    self.state = if n == left {
                        State::Head
                    } else {
                        State::Preface(left - n)
                    };
                }
                State::Head => {
                    let n = (FRAME_HEADER - self.buf.len()).min(data.len());
                    self.buf.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.buf.len() == FRAME_HEADER {
                        let h = &self.buf;
                        let head = FrameHead {
                            len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
                            ty: h[3],
                            flags: h[4],
                            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                        };
                        self.buf.clear();
                        self.frame_start(head, out);
                    }
                }
                State::Payload(head) => {
                    let want = head.len as usize - self.buf.len();
                    let n = want.min(data.len());
                    self.buf.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.buf.len() == head.len as usize {
                        let payload = std::mem::take(&mut self.buf);
                        self.state = State::Head;
                        self.frame(head, &payload, out);
                    }
                }
                State::Data(mut d) => {
                    if d.need_pad {
                        d.pad = u32::from(data[0]);
                        d.left -= 1;
                        d.need_pad = false;
                        data = &data[1..];
                        if d.pad > d.left {
                            self.desync(out);
                            return;
                        }
                    }
                    let data_left = (d.left - d.pad) as usize;
                    let n = data_left.min(data.len());
                    self.body(d.stream, &data[..n], out);
                    let skip = (d.left as usize - data_left).min(data.len() - n);
                    data = &data[n + skip..];
                    d.left -= (n + skip) as u32;
                    if d.left == 0 {
                        self.state = State::Head;
                        if d.end_stream {
                            self.end_stream(d.stream, out);
                        }
                    } else {
                        self.state = State::Data(d);
                    }
                }
            }
        }
    }

    fn frame_start(&mut self, head: FrameHead, out: &mut Vec<HttpMessage>) {
        self.stats.frames += 1;
        self.bump(0);
        // A header block must be continued by CONTINUATION frames of its stream only.
        if self.block.is_some() && head.ty != frame::CONTINUATION {
            self.desync(out);
            return;
        }
        if head.ty == frame::DATA {
            if head.stream == 0 {
                self.desync(out);
                return;
            }
            let padded = head.flags & flags::PADDED != 0;
            let d = DataState {
                stream: head.stream,
                end_stream: head.flags & flags::END_STREAM != 0,
                need_pad: padded,
                left: head.len,
                pad: 0,
            };
            if head.len == 0 {
                if padded {
                    self.desync(out);
                    return;
                }
                self.state = State::Head;
                if d.end_stream {
                    self.end_stream(d.stream, out);
                }
            } else {
                self.state = State::Data(d);
            }
            return;
        }
        if head.len as usize > MAX_FRAME {
            self.desync(out);
            return;
        }
        if head.len == 0 {
            self.frame(head, &[], out);
        } else {
            self.state = State::Payload(head);
        }
    }

    fn frame(&mut self, head: FrameHead, payload: &[u8], out: &mut Vec<HttpMessage>) {
        match head.ty {
            frame::HEADERS | frame::PUSH_PROMISE => {
                if head.stream == 0 {
                    return self.desync(out);
                }
                let promise = head.ty == frame::PUSH_PROMISE;
                let Some(fragment) = block_fragment(head, payload, promise) else {
                    return self.desync(out);
                };
                self.block = Some(Block {
                    stream: head.stream,
                    end_stream: !promise && head.flags & flags::END_STREAM != 0,
                    promise,
                    bytes: fragment.to_vec(),
                });
                if head.flags & flags::END_HEADERS != 0 {
                    self.end_block(out);
                }
            }
            frame::CONTINUATION => {
                let Some(b) = self.block.as_mut().filter(|b| b.stream == head.stream) else {
                    return self.desync(out);
                };
                if b.bytes.len() + payload.len() > MAX_BLOCK {
                    return self.desync(out);
                }
                b.bytes.extend_from_slice(payload);
                if head.flags & flags::END_HEADERS != 0 {
                    self.end_block(out);
                }
            }
            frame::RST_STREAM => {
                if let Some(s) = self.streams.remove(&head.stream) {
                    self.body_total -= s.body.len();
                    finish(s, false, out);
                }
            }
            // SETTINGS, PING, GOAWAY, WINDOW_UPDATE, PRIORITY and extension frames say
            // nothing about what was asked. (A SETTINGS header table size applies to the
            // other direction's encoder; this decoder accepts up to MAX_TABLE anyway.)
            _ => {}
        }
    }

    fn end_block(&mut self, out: &mut Vec<HttpMessage>) {
        let Some(block) = self.block.take() else {
            return;
        };
        let mut fields: Vec<(String, String)> = Vec::new();
        let decoded = self.hpack.decode_with_cb(&block.bytes, |n, v| {
            if fields.len() < MAX_FIELDS {
                fields.push((
                    String::from_utf8_lossy(&n).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                ));
            }
        });
        if decoded.is_err() {
            self.stats.hpack_errors += 1;
            self.bump(2);
            return self.desync(out);
        }
        if block.promise {
            return;
        }
        self.headers(block.stream, fields, block.end_stream, out);
    }

    fn headers(
        &mut self,
        id: u32,
        fields: Vec<(String, String)>,
        end_stream: bool,
        out: &mut Vec<HttpMessage>,
    ) {
        if self.streams.get(&id).is_some_and(|s| s.head.is_some()) {
            // Trailers: nothing to keep, but they may end the stream.
            if end_stream {
                self.end_stream(id, out);
            }
            return;
        }
        let pseudo = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let headers: Vec<(String, String)> = fields
            .iter()
            .filter(|(n, _)| !n.starts_with(':'))
            .cloned()
            .collect();
        let head = if let Some(method) = pseudo(":method") {
            let host = pseudo(":authority")
                .or_else(|| find_header(&headers, "host").map(str::to_string))
                .unwrap_or_default();
            let content_length =
                find_header(&headers, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
            Head::Request(HttpRequest {
                method,
                path: pseudo(":path").unwrap_or_default(),
                host,
                headers,
                body: Vec::new(),
                content_length,
                body_complete: false,
            })
        } else if let Some(status) = pseudo(":status").and_then(|s| s.parse::<u16>().ok()) {
            if (100..200).contains(&status) {
                // Informational: the final response comes in a later block.
                return;
            }
            Head::Response(HttpResponse {
                status,
                headers,
                body: Vec::new(),
                body_complete: false,
            })
        } else {
            // No usable pseudo-headers: a malformed block; HPACK stays in step.
            return;
        };
        let event_stream = matches!(&head, Head::Response(r)
            if r.header("content-type").is_some_and(|c| c.trim_start().to_ascii_lowercase().starts_with("text/event-stream")));
        if self.streams.len() >= MAX_STREAMS && !self.streams.contains_key(&id) {
            if let Some((_, old)) = self.streams.pop_first() {
                self.body_total -= old.body.len();
                self.stats.streams_dropped += 1;
                self.bump(3);
            }
        }
        let s = self.streams.entry(id).or_insert_with(|| Stream {
            head: None,
            body: Vec::new(),
            complete: true,
            overflowed: false,
            event_stream: false,
        });
        s.head = Some(head);
        s.event_stream = event_stream;
        if end_stream {
            self.end_stream(id, out);
        }
    }

    fn body(&mut self, id: u32, mut bytes: &[u8], out: &mut Vec<HttpMessage>) {
        let Some(s) = self.streams.get_mut(&id) else {
            return; // DATA of a stream whose head was not seen (or was dropped)
        };
        while !bytes.is_empty() {
            if s.overflowed && !s.event_stream {
                return;
            }
            let room = (MAX_BUFFERED - s.body.len()).min(MAX_TOTAL_BODY - self.body_total);
            if room == 0 {
                // The direction's total is spent on other streams: this one loses bytes.
                s.complete = false;
                return;
            }
            let n = room.min(bytes.len());
            s.body.extend_from_slice(&bytes[..n]);
            self.body_total += n;
            bytes = &bytes[n..];
            if s.body.len() >= MAX_BUFFERED {
                s.overflowed = true;
                s.complete = false;
                if let Some(h) = &s.head {
                    let body = std::mem::take(&mut s.body);
                    self.body_total -= body.len();
                    out.push(message(h, body, false));
                }
            }
        }
    }

    fn end_stream(&mut self, id: u32, out: &mut Vec<HttpMessage>) {
        if let Some(s) = self.streams.remove(&id) {
            self.body_total -= s.body.len();
            let complete = s.complete;
            finish(s, complete, out);
        }
    }
}

/// The header block fragment of a HEADERS or PUSH_PROMISE payload (padding, priority
/// and promised stream id removed); None when the payload is too short for its flags.
fn block_fragment(head: FrameHead, payload: &[u8], promise: bool) -> Option<&[u8]> {
    let mut p = payload;
    let mut pad = 0usize;
    if head.flags & flags::PADDED != 0 {
        pad = usize::from(*p.first()?);
        p = &p[1..];
    }
    if promise {
        p = p.get(4..)?;
    } else if head.flags & flags::PRIORITY != 0 {
        p = p.get(5..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

fn message(h: &Head, body: Vec<u8>, complete: bool) -> HttpMessage {
    match h {
        Head::Request(r) => {
            let mut r = r.clone();
            r.body = body;
            r.body_complete = complete;
            HttpMessage::Request(r)
        }
        Head::Response(r) => {
            let mut r = r.clone();
            r.body = body;
            r.body_complete = complete;
            HttpMessage::Response(r)
        }
    }
}

fn finish(s: Stream, complete: bool, out: &mut Vec<HttpMessage>) {
    let Some(h) = &s.head else { return };
    if s.overflowed && (!s.event_stream || s.body.is_empty()) {
        return; // already emitted when the body reached the cap
    }
    out.push(message(h, s.body, complete && !s.overflowed));
}

#[cfg(test)]
#[path = "h2_tests.rs"]
mod tests;
