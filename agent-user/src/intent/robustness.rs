//! Every parser against random and mangled input: no panics, bounded output and memory.
//! Deterministic (fixed seed) so a failure reproduces.

use super::*;

/// xorshift64*: no dependency needed for reproducible pseudo-random bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Realistic inputs to mutate, so that mutations reach deep parser states.
const SEEDS: &[&str] = &[
    "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nContent-Length: 120\r\n\r\n{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"héllo 漢字\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"x\"}}]}",
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n2a\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\r\n0\r\n\r\n",
    "{\"method\":\"tools/call\",\"params\":{\"name\":\"read_file\",\"arguments\":{\"path\":\"/data/x\"}},\"jsonrpc\":\"2.0\",\"id\":2}\n",
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"a\"},{\"name\":\"b\"}]}}\n",
    "event: message\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\"\"}}\r\n\r\n",
    "{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\",\"args\":{\"q\":\"\\ud83d\\ude00\"}}}]}}]}",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(6) {
        match rng.below(4) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            1 if !v.is_empty() => v.truncate(rng.below(v.len())),
            2 => {
                let i = rng.below(v.len());
                let junk = rng.bytes(8);
                v.splice(i..i, junk);
            }
            _ if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            _ => {}
        }
    }
    v
}

fn all_parsers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let req = HttpRequest {
        method: "POST".into(),
        path: "/v1beta/models/gemini-pro:streamGenerateContent".into(),
        host: text.chars().take(40).collect(),
        body: data.to_vec(),
        body_complete: data.len().is_multiple_of(2),
        ..Default::default()
    };
    for path in [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/responses",
        "/x",
    ] {
        let r = HttpRequest {
            path: path.into(),
            ..req.clone()
        };
        if let Some(l) = parse_llm_request(&r) {
            assert!(
                l.user_excerpt.chars().count() <= 512 && l.system_excerpt.chars().count() <= 512
            );
        }
    }
    let _ = parse_llm_request(&req);
    let resp = HttpResponse {
        status: 200,
        body: data.to_vec(),
        ..Default::default()
    };
    for provider in ["openai", "anthropic", "google", ""] {
        if let Some(r) = parse_llm_response(provider, &resp) {
            assert!(r.content_excerpt.chars().count() <= 512);
            assert!(
                r.tool_calls
                    .iter()
                    .all(|c| c.arguments_excerpt.chars().count() <= 512)
            );
        }
    }
    let msgs = parse_jsonrpc(data);
    assert!(msgs.len() <= 256);
    let _ = is_mcp(&msgs);
    let _ = parse_dns_query(data);
    let _ = parse_traceparent(&text);
    let _ = llm_provider_for_host(&text);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5eed_c0de_1234_5678);
    for _ in 0..3000 {
        let data = rng.bytes(600);
        all_parsers(&data);
    }
}

#[test]
fn mutated_inputs_never_panic() {
    let mut rng = Rng(42);
    for i in 0..4000 {
        let seed = SEEDS[i % SEEDS.len()].as_bytes();
        let data = mutate(&mut rng, seed);
        all_parsers(&data);
    }
}

#[test]
fn http_stream_survives_random_feeds_with_bounded_memory() {
    let mut rng = Rng(7);
    let mut stream = HttpStream::new();
    for i in 0..6000 {
        let seed = SEEDS[i % 2].as_bytes();
        let chunk = match rng.below(3) {
            0 => rng.bytes(300),
            1 => mutate(&mut rng, seed),
            _ => seed.to_vec(),
        };
        let cut = rng.below(chunk.len() + 1);
        let true_len = (chunk.len()
            + if rng.below(4) == 0 {
                rng.below(100_000)
            } else {
                0
            }) as u64;
        let captured = if rng.below(3) == 0 {
            &chunk[..cut]
        } else {
            &chunk[..]
        };
        for m in stream.feed(captured, true_len.max(captured.len() as u64)) {
            let body = match &m {
                HttpMessage::Request(r) => &r.body,
                HttpMessage::Response(r) => &r.body,
            };
            assert!(body.len() <= 256 * 1024);
        }
        assert!(stream.buffered_len() <= 256 * 1024 + 64 * 1024);
    }
    let _ = stream.flush();
    assert_eq!(stream.buffered_len(), 0);
}
