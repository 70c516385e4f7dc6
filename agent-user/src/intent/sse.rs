//! Server-sent events (text/event-stream), as used by streamed LLM responses and by
//! MCP over HTTP.

use super::text::utf8_prefix;

/// Calls `f` with the data of each event of an SSE body, in order. Multi-line data is
/// joined with '\n' as the spec says; the last event may have been cut and is passed
/// as is. Comments and other fields are skipped.
pub(crate) fn for_each_data(body: &[u8], mut f: impl FnMut(&str)) {
    let text = utf8_prefix(body);
    let mut data = String::new();
    let mut has_data = false;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if has_data {
                f(&data);
            }
            data.clear();
            has_data = false;
        } else if let Some(v) = line.strip_prefix("data") {
            let v = match v.strip_prefix(':') {
                Some(v) => v.strip_prefix(' ').unwrap_or(v),
                None if v.is_empty() => v,
                None => continue,
            };
            if has_data {
                data.push('\n');
            }
            data.push_str(v);
            has_data = true;
        }
    }
    if has_data {
        f(&data);
    }
}

/// Whether a body looks like an event stream even without a Content-Type saying so.
pub(crate) fn looks_like_sse(body: &[u8]) -> bool {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let b = &body[start..];
    b.starts_with(b"data:")
        || b.starts_with(b"event:")
        || b.starts_with(b": ")
        || b.starts_with(b"id:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(body: &str) -> Vec<String> {
        let mut v = Vec::new();
        for_each_data(body.as_bytes(), |d| v.push(d.to_string()));
        v
    }

    #[test]
    fn splits_events_and_joins_lines() {
        let body = ": ping\r\nevent: message\r\ndata: {\"a\":1}\r\n\r\ndata:x\ndata: y\n\ndata: [DONE]\n\ndata: {\"cut";
        assert_eq!(events(body), vec!["{\"a\":1}", "x\ny", "[DONE]", "{\"cut"]);
        assert!(looks_like_sse(b"\ndata: x"));
        assert!(!looks_like_sse(b"{\"data\":1}"));
    }
}
