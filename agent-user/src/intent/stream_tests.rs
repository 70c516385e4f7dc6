use super::*;
use crate::intent::{HttpRequest, HttpResponse, parse_llm_response};

fn feed(s: &mut HttpStream, data: &[u8]) -> Vec<HttpMessage> {
    s.feed(data, data.len() as u64)
}

fn request(m: &HttpMessage) -> &HttpRequest {
    match m {
        HttpMessage::Request(r) => r,
        other => panic!("expected request, got {other:?}"),
    }
}

fn response(m: &HttpMessage) -> &HttpResponse {
    match m {
        HttpMessage::Response(r) => r,
        other => panic!("expected response, got {other:?}"),
    }
}

/// Encodes `parts` as HTTP chunks.
fn chunked(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(format!("{:x}\r\n{p}\r\n", p.len()).as_bytes());
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

fn post(body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn headers_and_body_in_separate_feeds() {
    let mut s = HttpStream::new();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: {}\r\n\r\n",
        BODY.len()
    );
    assert!(feed(&mut s, head.as_bytes()).is_empty());
    let (a, b) = BODY.split_at(20);
    assert!(feed(&mut s, a.as_bytes()).is_empty());
    let out = feed(&mut s, b.as_bytes());
    assert_eq!(out.len(), 1);
    let r = request(&out[0]);
    assert_eq!(
        (r.method.as_str(), r.path.as_str(), r.host.as_str()),
        ("POST", "/v1/chat/completions", "api.openai.com")
    );
    assert_eq!(r.body, BODY.as_bytes());
    assert_eq!(r.content_length, Some(BODY.len() as u64));
    assert!(r.body_complete);
    assert_eq!(s.buffered_len(), 0);
}

#[test]
fn head_split_mid_line() {
    let mut s = HttpStream::new();
    let full = post(BODY);
    let (a, b) = full.split_at(30);
    assert!(feed(&mut s, a.as_bytes()).is_empty());
    assert_eq!(feed(&mut s, b.as_bytes()).len(), 1);
}

#[test]
fn pipelined_messages_in_one_feed() {
    let mut s = HttpStream::new();
    let data = format!(
        "GET /a HTTP/1.1\r\nHost: h\r\n\r\n{}\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
        post(BODY)
    );
    let out = feed(&mut s, data.as_bytes());
    let paths: Vec<&str> = out.iter().map(|m| request(m).path.as_str()).collect();
    assert_eq!(paths, ["/a", "/v1/chat/completions", "/b"]);
    assert!(request(&out[0]).body.is_empty() && request(&out[0]).body_complete);
    assert_eq!(request(&out[1]).body, BODY.as_bytes());
}

#[test]
fn responses_without_body_and_with_length() {
    let mut s = HttpStream::new();
    let data = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let out = feed(&mut s, data);
    let statuses: Vec<u16> = out.iter().map(|m| response(m).status).collect();
    assert_eq!(statuses, [204, 304, 200]);
    assert_eq!(response(&out[2]).body, b"ok");
}

#[test]
fn chunked_response_is_dechunked() {
    let mut s = HttpStream::new();
    let head =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n";
    assert!(feed(&mut s, head).is_empty());
    let body = chunked(&["{\"a\":", "1}"]);
    // Split inside the chunk-size line and inside the data.
    let (x, y) = body.split_at(4);
    assert!(feed(&mut s, x).is_empty());
    let out = feed(&mut s, y);
    assert_eq!(out.len(), 1);
    let r = response(&out[0]);
    assert_eq!(r.body, b"{\"a\":1}");
    assert!(r.body_complete);
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn chunk_extensions_and_trailers() {
    let mut s = HttpStream::new();
    let data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: y\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    let out = feed(&mut s, data);
    assert_eq!(out.len(), 2);
    assert_eq!(response(&out[0]).body, b"abc");
    assert_eq!(response(&out[1]).status, 204);
}

#[test]
fn sse_stream_with_tool_call_deltas() {
    let events = [
        r#"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_abc","type":"function","function":{"name":"read_file","arguments":""}}]},"finish_reason":null}]}"#,
        r#"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"pa"}}]},"finish_reason":null}]}"#,
        r#"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"th\": \"/etc/passwd\"}"}}]},"finish_reason":null}]}"#,
        r#"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        "data: [DONE]",
    ];
    let mut s = HttpStream::new();
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(feed(&mut s, head).is_empty());
    for (i, e) in events.iter().enumerate() {
        let chunk = chunked(&[&format!("{e}\n\n")]);
        let chunk = &chunk[..chunk.len() - 5]; // without the final 0-chunk
        if i == 1 {
            // One HTTP chunk split over two reads, mid-event.
            let (a, b) = chunk.split_at(chunk.len() / 2);
            assert!(feed(&mut s, a).is_empty());
            assert!(feed(&mut s, b).is_empty());
        } else {
            assert!(feed(&mut s, chunk).is_empty());
        }
    }
    let out = feed(&mut s, b"0\r\n\r\n");
    assert_eq!(out.len(), 1);
    let r = response(&out[0]);
    assert!(r.body_complete);
    let llm = parse_llm_response("openai", r).unwrap();
    assert_eq!(llm.model, "gpt-4o-2024-08-06");
    assert_eq!(llm.finish_reason, "tool_calls");
    assert_eq!(llm.tool_calls.len(), 1);
    assert_eq!(llm.tool_calls[0].id, "call_abc");
    assert_eq!(llm.tool_calls[0].name, "read_file");
    assert_eq!(
        llm.tool_calls[0].arguments_excerpt,
        r#"{"path": "/etc/passwd"}"#
    );
}

#[test]
fn truncated_capture_then_next_request() {
    let mut s = HttpStream::new();
    let big = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(10_000)
    );
    let first = post(&big);
    // The sensor kept 4096 bytes of a write that moved the whole message.
    let out = s.feed(&first.as_bytes()[..4096], first.len() as u64);
    assert_eq!(out.len(), 1);
    let r = request(&out[0]);
    assert!(!r.body_complete);
    assert_eq!(r.content_length, Some(big.len() as u64));
    assert_eq!(r.body.len(), 4096 - (first.len() - big.len()));
    // The next request on the connection parses normally.
    let out = feed(&mut s, post(BODY).as_bytes());
    assert_eq!(out.len(), 1);
    assert_eq!(request(&out[0]).body, BODY.as_bytes());
    assert!(request(&out[0]).body_complete);
}

#[test]
fn truncated_body_write_accounted_toward_length() {
    let mut s = HttpStream::new();
    let body = "y".repeat(9000);
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        body.len() + 10
    );
    assert!(feed(&mut s, head.as_bytes()).is_empty());
    // Body written in two calls; the first is cut by the capture.
    assert!(
        s.feed(&body.as_bytes()[..4096], body.len() as u64)
            .is_empty()
    );
    let out = feed(&mut s, b"0123456789");
    assert_eq!(out.len(), 1);
    let r = request(&out[0]);
    assert!(!r.body_complete);
    assert_eq!(r.body.len(), 4096 + 10);
    assert!(r.body.ends_with(b"0123456789"));
    assert_eq!(
        request(&feed(&mut s, b"GET /next HTTP/1.1\r\n\r\n")[0]).path,
        "/next"
    );
}

#[test]
fn lost_sync_resynchronises_on_next_message() {
    let mut s = HttpStream::new();
    // A cut head: framing is lost, the continuation is ignored.
    let head = b"POST /x HTTP/1.1\r\nHost: h\r\nX-Long: aaaa";
    assert!(s.feed(head, 9000).is_empty());
    assert_eq!(s.buffered_len(), 0);
    assert!(feed(&mut s, b"aaaa\r\nContent-Length: 3\r\n\r\nabc").is_empty());
    // A cut chunked read spanning a chunk boundary: partial response, then resync.
    let out = feed(
        &mut s,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    assert!(out.is_empty());
    let out = s.feed(b"3\r\nab", 500);
    assert_eq!(out.len(), 1);
    assert!(!response(&out[0]).body_complete);
    assert_eq!(response(&out[0]).body, b"helloab");
    assert!(feed(&mut s, b"\r\n0\r\n\r\n").is_empty());
    assert_eq!(
        response(&feed(&mut s, b"HTTP/1.1 204 No Content\r\n\r\n")[0]).status,
        204
    );
}

#[test]
fn garbage_and_http2_are_ignored_without_growth() {
    let mut s = HttpStream::new();
    assert!(feed(&mut s, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").is_empty());
    assert!(
        feed(
            &mut s,
            &[0x00, 0x00, 0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00]
        )
        .is_empty()
    );
    for i in 0..1000u32 {
        let junk: Vec<u8> = (0..4096u32)
            .map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8)
            .collect();
        assert!(s.feed(&junk, 8192).is_empty());
        assert_eq!(s.buffered_len(), 0);
    }
    // A plausible start followed by binary is dropped as soon as it is seen.
    assert!(feed(&mut s, b"GET /x HTTP/1.1\r\nA: \x00\x01\x02").is_empty());
    assert_eq!(s.buffered_len(), 0);
    // Still works afterwards.
    assert_eq!(
        feed(&mut s, b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n").len(),
        1
    );
}

#[test]
fn oversized_body_is_emitted_partial_at_cap() {
    let mut s = HttpStream::new();
    let n = MAX_BUFFERED + 5000;
    let head = format!("POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n");
    assert!(feed(&mut s, head.as_bytes()).is_empty());
    let mut emitted = Vec::new();
    let chunk = vec![b'z'; 4096];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        emitted.extend(feed(&mut s, &chunk[..k]));
        assert!(s.buffered_len() <= MAX_BUFFERED);
        left -= k;
    }
    assert_eq!(emitted.len(), 1);
    let r = request(&emitted[0]);
    assert_eq!(r.body.len(), MAX_BUFFERED);
    assert!(!r.body_complete);
    // Framing was kept: the next request is parsed.
    assert_eq!(
        request(&feed(&mut s, b"GET /after HTTP/1.1\r\n\r\n")[0]).path,
        "/after"
    );
}

#[test]
fn head_response_then_next_response() {
    let mut s = HttpStream::new();
    assert!(feed(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n").is_empty());
    let out = feed(&mut s, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    let statuses: Vec<u16> = out.iter().map(|m| response(m).status).collect();
    assert_eq!(statuses, [200, 201]);
}

#[test]
fn close_delimited_response_is_flushed() {
    let mut s = HttpStream::new();
    assert!(feed(&mut s, b"HTTP/1.0 200 OK\r\n\r\nhello").is_empty());
    let m = s.flush().unwrap();
    assert_eq!(response(&m).body, b"hello");
    assert!(response(&m).body_complete);
    assert!(s.flush().is_none());
}

#[test]
fn long_event_stream_is_emitted_in_capped_segments() {
    let mut s = HttpStream::new();
    let head =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(feed(&mut s, head).is_empty());
    let event = format!("data: {}\n\n", "e".repeat(1000));
    let one = chunked(&[&event]);
    let one = &one[..one.len() - 5];
    let mut out = Vec::new();
    for _ in 0..300 {
        out.extend(feed(&mut s, one));
        assert!(s.buffered_len() <= MAX_BUFFERED);
    }
    assert_eq!(out.len(), 1, "first segment at the cap");
    assert_eq!(response(&out[0]).body.len(), MAX_BUFFERED);
    assert!(!response(&out[0]).body_complete);
    let rest = feed(&mut s, b"0\r\n\r\n");
    assert_eq!(rest.len(), 1, "the remainder when the stream ends");
    assert_eq!(
        response(&rest[0]).body.len(),
        300 * event.len() - MAX_BUFFERED
    );
    assert!(!response(&rest[0]).body_complete);
}
