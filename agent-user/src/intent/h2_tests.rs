//! HTTP/2 decoding of real HTTP/2 bytes: a client and a server of the `h2` crate talk
//! over an in-memory pipe whose writes are recorded, and the recorded bytes of each
//! direction are fed to the decoder as chunk records of calls (calls of up to
//! 16 KiB, each in 4 KiB chunks: smaller than the kernel's, so joins are exercised).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::*;
use crate::intent::{Chunk, TlsStream, parse_llm_request, parse_llm_response};

/// An IO that records every byte written through it.
struct Rec<T> {
    inner: T,
    log: Arc<Mutex<Vec<u8>>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rec<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rec<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.log.lock().unwrap().extend_from_slice(&buf[..*n]);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct Exchange {
    /// What the client wrote (preface, its frames).
    client: Vec<u8>,
    /// What the server wrote.
    server: Vec<u8>,
}

/// Runs `requests` (head, body) over one HTTP/2 connection, each answered by an SSE
/// response made of `events` (one DATA frame each).
fn exchange(requests: Vec<(http::Request<()>, Vec<u8>)>, events: Vec<String>) -> Exchange {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (a, b) = tokio::io::duplex(1 << 20);
    let client_log = Arc::new(Mutex::new(Vec::new()));
    let server_log = Arc::new(Mutex::new(Vec::new()));
    let (cio, sio) = (
        Rec {
            inner: a,
            log: client_log.clone(),
        },
        Rec {
            inner: b,
            log: server_log.clone(),
        },
    );
    rt.block_on(async move {
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(sio).await.unwrap();
            // The connection is driven by `accept`: each request runs in a task of
            // its own so the loop keeps polling it.
            while let Some(next) = conn.accept().await {
                let (req, mut respond) = next.unwrap();
                let events = events.clone();
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    while let Some(d) = body.data().await {
                        let d = d.unwrap();
                        body.flow_control().release_capacity(d.len()).unwrap();
                    }
                    let resp = http::Response::builder()
                        .status(200)
                        .header("content-type", "text/event-stream")
                        .header("x-request-id", "req_0123")
                        .body(())
                        .unwrap();
                    let mut send = respond.send_response(resp, false).unwrap();
                    for e in &events {
                        send.send_data(Bytes::from(e.clone()), false).unwrap();
                    }
                    send.send_data(Bytes::new(), true).unwrap();
                });
            }
        });
        let (client, conn) = h2::client::handshake(cio).await.unwrap();
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        for (head, body) in requests {
            let mut c = client.clone().ready().await.unwrap();
            let (resp, mut stream) = c.send_request(head, false).unwrap();
            stream.send_data(Bytes::from(body), true).unwrap();
            let mut rb = resp.await.unwrap().into_body();
            while let Some(d) = rb.data().await {
                let d = d.unwrap();
                rb.flow_control().release_capacity(d.len()).unwrap();
            }
        }
        drop(client);
        let _ = driver.await;
        let _ = server.await;
    });
    let client = client_log.lock().unwrap().clone();
    let server = server_log.lock().unwrap().clone();
    Exchange { client, server }
}

/// Feeds `bytes` as calls of `call` bytes, each split into 4 KiB chunk records.
fn feed_as_calls(s: &mut TlsStream, bytes: &[u8], call: usize) -> Vec<HttpMessage> {
    let mut out = Vec::new();
    for (id, c) in bytes.chunks(call).enumerate() {
        for (i, part) in c.chunks(4096).enumerate() {
            out.extend(s.feed_chunk(Chunk {
                call_id: id as u64 + 1,
                offset: (i * 4096) as u64,
                call_len: c.len() as u64,
                data: part,
                last: part.len() < 4096,
            }));
        }
    }
    out
}

const PROMPT: &str = "count the rust files under src and report FINDME-H2";

/// A Responses API request of ~100 KB whose prompt sits past 21 KB (after the
/// instructions) and whose tools come after that, as Codex sends it.
fn codex_body() -> Vec<u8> {
    let instructions = "You are a coding agent. ".repeat(900);
    let filler: Vec<String> = (0..300)
        .map(|i| format!(r#"{{"type":"function","name":"tool_{i}","description":"{}","parameters":{{"type":"object"}}}}"#, "x".repeat(200)))
        .collect();
    format!(
        r#"{{"model":"gpt-5-codex","instructions":"{instructions}","input":[{{"type":"message","role":"user","content":[{{"type":"input_text","text":"{PROMPT}"}}]}}],"tools":[{{"type":"function","name":"exec_command","parameters":{{"type":"object"}}}},{}],"stream":true}}"#,
        filler.join(",")
    )
    .into_bytes()
}

fn codex_request(n: usize) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri("https://localhost:8443/v1/responses")
        .header(
            "authorization",
            "Bearer sk-proj-h2TestKeyAbcdefghijklmnop0123456789",
        )
        .header("content-type", "application/json")
        .header("session_id", format!("sess-{n}"))
        .body(())
        .unwrap()
}

fn sse_events() -> Vec<String> {
    let evs = [
        r#"{"type":"response.created","response":{"model":"gpt-5-codex"}}"#.to_string(),
        r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","name":"exec_command","call_id":"call_1","arguments":""}}"#.to_string(),
        r#"{"type":"response.function_call_arguments.delta","output_index":0,"delta":"{\"cmd\":"}"#.to_string(),
        r#"{"type":"response.function_call_arguments.delta","output_index":0,"delta":"\"ls src\"}"}"#.to_string(),
    ];
    evs.iter()
        .map(|e| {
            let ty = e.split('"').nth(3).unwrap_or_default().to_string();
            format!("event: {ty}\ndata: {e}\n\n")
        })
        .collect()
}

fn requests(m: &[HttpMessage]) -> Vec<&HttpRequest> {
    m.iter()
        .filter_map(|m| match m {
            HttpMessage::Request(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn responses(m: &[HttpMessage]) -> Vec<&HttpResponse> {
    m.iter()
        .filter_map(|m| match m {
            HttpMessage::Response(r) => Some(r),
            _ => None,
        })
        .collect()
}

#[test]
fn real_h2_requests_and_streamed_responses_are_reassembled() {
    let body = codex_body();
    assert!(body.len() > 90_000, "{}", body.len());
    let ex = exchange(
        vec![
            (codex_request(1), body.clone()),
            (codex_request(2), body.clone()),
        ],
        sse_events(),
    );
    let mut up = TlsStream::new();
    let msgs = feed_as_calls(&mut up, &ex.client, 16384);
    assert_eq!(up.protocol(), "h2");
    let reqs = requests(&msgs);
    assert_eq!(reqs.len(), 2, "{:?}", up.h2_stats());
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/v1/responses")
        );
        assert_eq!(r.host, "localhost:8443");
        assert!(r.body_complete);
        assert_eq!(r.body, body);
        // The second request's headers come from HPACK's dynamic table.
        assert_eq!(
            r.header("authorization"),
            Some("Bearer sk-proj-h2TestKeyAbcdefghijklmnop0123456789")
        );
        assert_eq!(
            r.header("session_id"),
            Some(format!("sess-{}", i + 1).as_str())
        );
        let llm = parse_llm_request(r).expect("an LLM request");
        assert_eq!(llm.model, "gpt-5-codex");
        assert!(
            llm.user_excerpt.contains("FINDME-H2"),
            "{}",
            llm.user_excerpt
        );
        assert_eq!(llm.tools.first().map(String::as_str), Some("exec_command"));
    }
    let stats = up.h2_stats();
    assert_eq!((stats.desyncs, stats.hpack_errors), (0, 0));

    let mut down = TlsStream::new();
    let msgs = feed_as_calls(&mut down, &ex.server, 4096);
    assert_eq!(down.protocol(), "h2");
    let resps = responses(&msgs);
    assert_eq!(resps.len(), 2);
    for r in resps {
        assert_eq!(r.status, 200);
        assert!(r.body_complete);
        let l = parse_llm_response("openai", r).expect("a Responses stream");
        assert_eq!(l.tool_calls.len(), 1);
        assert_eq!(l.tool_calls[0].name, "exec_command");
        assert!(l.tool_calls[0].arguments_excerpt.contains("ls src"));
    }
}

#[test]
fn holes_in_a_body_cost_only_completeness_holes_elsewhere_desync() {
    let body = codex_body();
    let ex = exchange(vec![(codex_request(1), body.clone())], sse_events());
    // Lose the second 4 KiB chunk of a call in the middle of the body (DATA payload).
    let mut s = TlsStream::new();
    let mut out = Vec::new();
    for (id, c) in ex.client.chunks(16384).enumerate() {
        for (i, part) in c.chunks(4096).enumerate() {
            if id == 3 && i == 1 {
                continue;
            }
            out.extend(s.feed_chunk(Chunk {
                call_id: id as u64 + 1,
                offset: (i * 4096) as u64,
                call_len: c.len() as u64,
                data: part,
                last: part.len() < 4096,
            }));
        }
    }
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert!(!reqs[0].body_complete);
    assert_eq!(reqs[0].body.len(), body.len() - 4096);
    assert_eq!(s.h2_stats().desyncs, 0);

    // A hole in the header block (the first call holds preface, SETTINGS, HEADERS).
    let mut s = H2Stream::client();
    let mut out = s.feed(&ex.client[..40], 40 + 30);
    out.extend(s.feed(&ex.client[70..], (ex.client.len() - 70) as u64));
    assert!(out.is_empty());
    assert_eq!(s.stats().desyncs, 1);
    assert!(s.is_dead());
}

#[test]
fn a_stream_seen_from_its_middle_or_garbage_is_never_taken_for_h2_nor_panics() {
    let ex = exchange(vec![(codex_request(1), codex_body())], sse_events());
    // Starting mid-frame (the daemon came up during the connection): not HTTP/2.
    let mut s = TlsStream::new();
    assert!(feed_as_calls(&mut s, &ex.client[5000..], 16384).is_empty());
    assert_ne!(s.protocol(), "h2");
    // Every prefix and every cut of the real bytes, and bytes flipped anywhere:
    // decoded or desynced, never a panic.
    for cut in (0..ex.client.len()).step_by(997) {
        let mut d = H2Stream::client();
        d.feed(&ex.client[..cut], cut as u64);
        d.feed(&[], 10);
        let mut d = H2Stream::client();
        let mut bytes = ex.client.clone();
        bytes[cut] ^= 0x5a;
        d.feed(&bytes, bytes.len() as u64);
    }
    // Garbage after a valid preface.
    let mut d = H2Stream::client();
    let mut g = PREFACE.to_vec();
    g.extend((0..20_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    d.feed(&g, g.len() as u64);
    assert!(d.buffered_len() <= MAX_FRAME + MAX_TOTAL_BODY);
    // A frame header announcing a 16 MiB HEADERS frame is refused, not buffered.
    let mut d = H2Stream::server();
    let out = d.feed(&[0xff, 0xff, 0xff, frame::HEADERS, 0, 0, 0, 0, 1], 9);
    assert!(out.is_empty() && d.is_dead());
}
