//! HTTP/1.x message types and parsing of a message head (start line + header fields).
//! Framing across captures lives in `stream.rs`.

/// At most this many header fields are kept per message; the rest are ignored.
const MAX_HEADERS: usize = 128;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct HttpRequest {
    pub method: String,
    /// Request target as sent (origin form: path and query); for absolute-form targets
    /// (proxies) the path and query part only.
    pub path: String,
    /// Host header, or the authority of an absolute-form target.
    pub host: String,
    /// Header fields in order, names in their original case.
    pub headers: Vec<(String, String)>,
    /// Body bytes as captured (de-chunked); partial when `body_complete` is false.
    pub body: Vec<u8>,
    pub content_length: Option<u64>,
    pub body_complete: bool,
}

impl HttpRequest {
    /// First header field of that name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Body bytes as captured, de-chunked if chunked.
    pub body: Vec<u8>,
    pub body_complete: bool,
}

impl HttpResponse {
    /// First header field of that name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum HttpMessage {
    Request(HttpRequest),
    Response(HttpResponse),
}

pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// How the body of a message is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    None,
    Length(u64),
    Chunked,
    /// Response delimited by connection close.
    UntilClose,
}

/// A parsed message head: the message without its body.
#[derive(Clone, Debug)]
pub(crate) enum Head {
    Request(HttpRequest),
    Response(HttpResponse),
}

impl Head {
    pub(crate) fn headers(&self) -> &[(String, String)] {
        match self {
            Head::Request(r) => &r.headers,
            Head::Response(r) => &r.headers,
        }
    }

    pub(crate) fn body_kind(&self) -> BodyKind {
        let headers = self.headers();
        let chunked = find_header(headers, "transfer-encoding").map(|te| {
            // Only a final "chunked" coding frames the message (RFC 9112 §6.3).
            te.rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        });
        let length = find_header(headers, "content-length").and_then(parse_content_length);
        match self {
            Head::Response(r) if matches!(r.status, 100..=199 | 204 | 304) => BodyKind::None,
            _ if chunked == Some(true) => BodyKind::Chunked,
            Head::Response(_) if chunked == Some(false) => BodyKind::UntilClose,
            _ => match (length, self) {
                (Some(0), _) => BodyKind::None,
                (Some(n), _) => BodyKind::Length(n),
                // A request with neither header has no body (RFC 9112 §6.3 rule 6).
                (None, Head::Request(_)) => BodyKind::None,
                (None, Head::Response(_)) => BodyKind::UntilClose,
            },
        }
    }

    pub(crate) fn is_event_stream(&self) -> bool {
        find_header(self.headers(), "content-type").is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
    }

    /// Completes the head into a message.
    pub(crate) fn into_message(self, body: Vec<u8>, body_complete: bool) -> HttpMessage {
        match self {
            Head::Request(mut r) => {
                r.body = body;
                r.body_complete = body_complete;
                HttpMessage::Request(r)
            }
            Head::Response(mut r) => {
                r.body = body;
                r.body_complete = body_complete;
                HttpMessage::Response(r)
            }
        }
    }
}

/// Identical repeated values ("10, 10") are allowed by RFC 9110; anything else is not a
/// usable length.
fn parse_content_length(v: &str) -> Option<u64> {
    let mut parts = v.split(',').map(str::trim);
    let first = parts.next()?;
    if first.is_empty() || first.len() > 19 || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if parts.any(|p| p != first) {
        return None;
    }
    first.parse().ok()
}

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"PROPFIND ",
    b"PROPPATCH ",
    b"MKCOL ",
    b"COPY ",
    b"MOVE ",
    b"LOCK ",
    b"UNLOCK ",
    b"REPORT ",
    b"SEARCH ",
    b"QUERY ",
];
const RESPONSE_START: &[u8] = b"HTTP/1.";

/// Whether `data` can be the start of an HTTP/1 message (a known method followed by a
/// space, or "HTTP/1."), also when `data` is only a prefix of such a start. HTTP/2
/// ("PRI * HTTP/2.0") and binary data are not.
pub(crate) fn looks_like_start(data: &[u8]) -> bool {
    METHODS
        .iter()
        .chain(std::iter::once(&RESPONSE_START))
        .any(|p| {
            if data.len() >= p.len() {
                data.starts_with(p)
            } else {
                p.starts_with(data)
            }
        })
}

/// Bytes that never occur in a message head; seeing one means this is not HTTP/1.
pub(crate) fn is_head_byte(b: u8) -> bool {
    b >= 0x20 && b != 0x7f || b == b'\r' || b == b'\n' || b == b'\t'
}

/// Offset just past the blank line ending a head, searching from `from` (bytes before
/// it were already searched).
pub(crate) fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    let mut i = start;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1) {
                Some(b'\n') => return Some(i + 2),
                Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Parses a complete head (ending with the blank line). None if it is not HTTP/1.
pub(crate) fn parse_head(bytes: &[u8]) -> Option<Head> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start = lines.next()?;
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            // Obsolete line folding continues the previous value.
            if let Some((_, v)) = headers.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || headers.len() >= MAX_HEADERS {
            continue;
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }

    if let Some(rest) = start.strip_prefix("HTTP/1.") {
        let mut parts = rest.split_whitespace();
        let _minor = parts.next()?;
        let code = parts.next()?;
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let status = code.parse().ok().filter(|s| *s >= 100)?;
        return Some(Head::Response(HttpResponse {
            status,
            headers,
            ..Default::default()
        }));
    }

    let mut parts = start.split(' ').filter(|p| !p.is_empty());
    let method = parts.next()?;
    let target = parts.next()?;
    if !parts.next()?.starts_with("HTTP/1.") || !looks_like_start(format!("{method} ").as_bytes()) {
        return None;
    }
    let (authority, path) = split_target(method, target);
    let host = find_header(&headers, "host")
        .map(str::to_string)
        .or(authority)
        .unwrap_or_default();
    let content_length = find_header(&headers, "content-length").and_then(parse_content_length);
    Some(Head::Request(HttpRequest {
        method: method.to_string(),
        path,
        host,
        headers,
        content_length,
        ..Default::default()
    }))
}

/// The header fields of an HTTP/1 request head at the start of `data`, which may end
/// before the head does (a head written in several calls, or cut short).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestHead {
    /// Every complete header line, in order (no cap: a credential must not hide
    /// behind many fields); an unfinished last line is left out.
    pub headers: Vec<(String, String)>,
    /// The blank line ending the head was seen.
    pub complete: bool,
}

/// Header fields of the request head `data` starts with, for vetting a request before
/// it is sent: None when `data` does not start with a request line (a known method
/// and a space). Total on any bytes.
pub fn request_head(data: &[u8]) -> Option<RequestHead> {
    let first = data.iter().position(|&b| b == b' ')?;
    if !METHODS
        .iter()
        .any(|m| m.len() == first + 1 && data.starts_with(m))
    {
        return None;
    }
    let mut out = RequestHead::default();
    let mut lines = data.split_inclusive(|&b| b == b'\n');
    lines.next(); // the request line
    for line in lines {
        let Some(line) = line.strip_suffix(b"\n") else {
            break; // unfinished: the rest of the head is still to come
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            out.complete = true;
            break;
        }
        let text = String::from_utf8_lossy(line);
        if text.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.headers.last_mut() {
                v.push(' ');
                v.push_str(text.trim());
            }
            continue;
        }
        if let Some((name, value)) = text.split_once(':') {
            if !name.trim().is_empty() {
                out.headers
                    .push((name.trim().to_string(), value.trim().to_string()));
            }
        }
    }
    Some(out)
}

/// Splits a request target into (authority, path): absolute form ("http://h/p", sent to
/// proxies) and authority form ("h:443", CONNECT) carry the host in the target.
fn split_target(method: &str, target: &str) -> (Option<String>, String) {
    if method.eq_ignore_ascii_case("CONNECT") {
        return (Some(target.to_string()), target.to_string());
    }
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return (None, target.to_string());
    };
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => {
            (Some(rest[..i].to_string()), rest[i..].to_string())
        }
        Some(i) => (Some(rest[..i].to_string()), format!("/{}", &rest[i..])),
        None => (Some(rest.to_string()), "/".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_prefixes() {
        let h = request_head(b"GET /v1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\n\r\nbody")
            .unwrap();
        assert!(h.complete);
        assert_eq!(h.headers.len(), 2);
        assert_eq!(h.headers[1], ("Authorization".into(), "Bearer x".into()));
        let h = request_head(b"POST / HTTP/1.1\r\nHost: a\r\nAuthoriz").unwrap();
        assert!(!h.complete);
        assert_eq!(h.headers, vec![("Host".into(), "a".into())]);
        let many: String = (0..300).map(|i| format!("X-{i}: v\r\n")).collect();
        let h =
            request_head(format!("PUT / HTTP/1.1\r\n{many}Cookie: c\r\n\r\n").as_bytes()).unwrap();
        assert_eq!(h.headers.len(), 301, "no cap on fields when vetting");
        assert!(request_head(b"PRI * HTTP/2.0\r\n\r\n").is_none());
        assert!(request_head(b"{\"a\":1}").is_none());
        assert!(request_head(b"GETX / HTTP/1.1\r\n").is_none());
        assert!(request_head(b"").is_none());
        assert!(request_head(&[0xff, b' ', b'\n']).is_none());
    }

    fn req(head: &str) -> HttpRequest {
        match parse_head(head.as_bytes()) {
            Some(Head::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn parses_request_head() {
        let r = req(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 12\r\nX-Folded: a\r\n  b\r\n\r\n",
        );
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(r.host, "api.openai.com");
        assert_eq!(r.content_length, Some(12));
        assert_eq!(r.header("CONTENT-length"), Some("12"));
        assert_eq!(r.header("x-folded"), Some("a b"));
        assert_eq!(r.header("missing"), None);
    }

    #[test]
    fn absolute_and_connect_targets_give_host() {
        let r = req("GET http://example.com/a?b=1 HTTP/1.1\r\n\r\n");
        assert_eq!(
            (r.host.as_str(), r.path.as_str()),
            ("example.com", "/a?b=1")
        );
        let r = req("GET HTTPS://example.com?q HTTP/1.1\r\n\r\n");
        assert_eq!((r.host.as_str(), r.path.as_str()), ("example.com", "/?q"));
        let r = req("CONNECT api.openai.com:443 HTTP/1.1\r\n\r\n");
        assert_eq!(r.host, "api.openai.com:443");
    }

    #[test]
    fn body_kinds() {
        let kind = |h: &str| parse_head(h.as_bytes()).unwrap().body_kind();
        assert_eq!(kind("GET / HTTP/1.1\r\n\r\n"), BodyKind::None);
        assert_eq!(
            kind("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            BodyKind::Length(5)
        );
        assert_eq!(
            kind("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"),
            BodyKind::Length(5)
        );
        assert_eq!(
            kind("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n"),
            BodyKind::None
        );
        assert_eq!(
            kind(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n"
            ),
            BodyKind::Chunked
        );
        assert_eq!(
            kind("HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n"),
            BodyKind::None
        );
        assert_eq!(kind("HTTP/1.1 304 Not Modified\r\n\r\n"), BodyKind::None);
        assert_eq!(kind("HTTP/1.1 200 OK\r\n\r\n"), BodyKind::UntilClose);
    }

    #[test]
    fn start_detection() {
        assert!(looks_like_start(b"GET / HTTP/1.1"));
        assert!(looks_like_start(b"PO"));
        assert!(looks_like_start(b"HTTP/1.1 200"));
        assert!(!looks_like_start(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!looks_like_start(b"\x16\x03\x01"));
        assert!(!looks_like_start(b"GETX / HTTP/1.1"));
        assert!(parse_head(b"HTTP/2 200\r\n\r\n").is_none());
        assert!(parse_head(b"GET /\r\n\r\n").is_none());
    }

    #[test]
    fn head_end_detection() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody", 0), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nbody", 0), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n", 0), None);
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\n", 17), Some(18));
    }
}
