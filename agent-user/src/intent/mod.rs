//! Intent signals from captured plaintext: what an agent asks of LLM APIs and MCP
//! servers and which hosts it reaches, reconstructed from the sensor's captures (TLS
//! plaintext per SSL_read/SSL_write call, pipe writes carrying MCP stdio, DNS queries).
//!
//! All input is attacker-influenced and often truncated, so every parser here is total
//! (no panics on any bytes), bounded in memory and output size (excerpts are at most
//! 512 characters, cut on character boundaries), and prefers a partial answer to none
//! when a capture was cut.
//!
//! * `capture`/`conn`: chunk records of TLS calls joined into one stream per connection
//!   direction, and the HTTP version it speaks recognised from its first bytes.
//! * `http`/`stream`: HTTP/1.x messages reassembled per connection direction.
//! * `h2`: HTTP/2 frames and HPACK, per-stream messages.
//! * `encoding`: gzip/deflate/br/zstd bodies, decoded with a bound.
//! * `llm`: provider by host, LLM API requests and responses (incl. streams).
//! * `mcp`: JSON-RPC 2.0 / MCP messages from pipes and HTTP bodies.
//! * `dns`, `trace`: DNS query names and W3C traceparent.
//! * `tls_hello`: SNI and ALPN of a TLS ClientHello (the first write on a connection).

mod capture;
mod conn;
mod dns;
mod encoding;
mod h2;
mod http;
mod json;
mod llm;
mod mcp;
mod sse;
mod stream;
mod text;
mod tls_hello;
mod trace;

pub use capture::{CallJoin, Chunk, Piece};
pub use conn::TlsStream;
pub use dns::parse_dns_query;
pub use encoding::{
    DecodeError as ContentDecodeError, MAX_DECODED, decode_body, decoded_request, decoded_response,
};
pub use h2::{H2Stats, H2Stream, h2_totals};
pub use http::{HttpMessage, HttpRequest, HttpResponse, RequestHead, request_head};
pub use llm::{
    LlmRequest, LlmResponse, ToolCall, llm_provider_for_host, parse_llm_request, parse_llm_response,
};
pub use mcp::{McpMessage, is_mcp, parse_jsonrpc, with_mcp_headers};
pub use stream::HttpStream;
pub use tls_hello::{ClientHello, looks_like_tls, parse_client_hello};
pub use trace::parse_traceparent;

#[cfg(test)]
mod robustness;
