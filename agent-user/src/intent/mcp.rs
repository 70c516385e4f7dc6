//! JSON-RPC 2.0 as carried by MCP: newline-delimited over stdio pipes, or as HTTP
//! bodies and SSE events in the streamable HTTP transport.
//!
//! Pipe captures keep the first 2048 bytes of each write, so the last line of a buffer
//! is often cut. That line goes through the tolerant JSON parser. The official Python
//! SDK serialises requests as {"method","params",...,"jsonrpc","id"}, so a cut
//! tools/call usually still has its method and tool name but has lost "jsonrpc" and
//! "id": for such a cut line (and only there) a missing "jsonrpc" is accepted when a
//! method is present, and a missing id makes it a request unless the method is a
//! notification's.

use serde_json::Value;

use super::json::{get_str, parse_lenient};
use super::text::{Excerpt, excerpt, json_excerpt, name, utf8_prefix};

/// Most messages returned from one buffer.
const MAX_MESSAGES: usize = 256;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct McpMessage {
    /// "request", "response", "notification" or "error".
    pub message_type: String,
    pub method: String,
    /// Number or string id rendered as a string; empty when absent or null.
    pub id: String,
    /// params.name of tools/call.
    pub tool_name: String,
    /// params.arguments as JSON (≤ 512 chars); for other requests with params but no
    /// arguments (resources/read, notifications/cancelled...), the params.
    pub arguments_excerpt: String,
    /// initialize params.clientInfo.name or result.serverInfo.name.
    pub peer_name: String,
    pub protocol_version: String,
    /// ≤ 512 chars: tool names (comma-joined) of a tools/list result, text of a
    /// tools/call or resources/read result, "code: message" of an error, else the
    /// result as JSON.
    pub result_excerpt: String,
}

/// MCP's stateless HTTP form (2026-07-28) names the method and target in headers
/// (`Mcp-Method`, `Mcp-Name`) so gateways can route without reading the body. They
/// complete what the body gave (a body cut before its method still has a method), or
/// stand for the request when the body gave nothing (not captured, compressed beyond
/// reach). A body whose method disagrees with its header is reported with both, since a
/// router that trusts one and a server that executes the other is how requests are
/// smuggled past policy.
pub fn with_mcp_headers(
    method: Option<&str>,
    target: Option<&str>,
    mut messages: Vec<McpMessage>,
) -> Vec<McpMessage> {
    let Some(method) = method.map(str::trim).filter(|m| !m.is_empty()) else {
        return messages;
    };
    let target = target.map(str::trim).unwrap_or_default();
    let request = messages
        .iter_mut()
        .find(|m| m.message_type == "request" || m.message_type == "notification");
    match request {
        Some(m) => {
            if m.method.is_empty() {
                m.method = excerpt(method);
            } else if m.method != method {
                m.method = excerpt(&format!("{} (Mcp-Method header: {method})", m.method));
            }
            if m.tool_name.is_empty() && method == "tools/call" {
                m.tool_name = name(target);
            }
        }
        None => messages.push(McpMessage {
            message_type: "request".into(),
            method: excerpt(method),
            tool_name: if method == "tools/call" {
                name(target)
            } else {
                String::new()
            },
            // The name of what else it targets (a resource URI, a prompt).
            arguments_excerpt: if method == "tools/call" || target.is_empty() {
                String::new()
            } else {
                excerpt(target)
            },
            ..Default::default()
        }),
    }
    messages
}

/// Parses JSON-RPC 2.0 messages from newline-delimited JSON (last line possibly cut),
/// a single object or batch array (HTTP body), or SSE "data:" lines.
pub fn parse_jsonrpc(data: &[u8]) -> Vec<McpMessage> {
    let mut out = Vec::new();
    let text = utf8_prefix(data);
    let trimmed = text.trim();
    if trimmed.starts_with(['{', '[']) {
        if let Ok(v) = serde_json::from_str::<Value>(trimmed) {
            collect(&v, false, &mut out);
            return out;
        }
    }
    // Only the final line can have been cut by the capture; elsewhere a line that does
    // not parse is not JSON-RPC.
    let cut_line = if text.ends_with('\n') {
        None
    } else {
        text.rfind('\n').map_or(Some(0), |i| Some(i + 1))
    };
    let mut offset = 0;
    for raw in text.split('\n') {
        let start = offset;
        offset += raw.len() + 1;
        if out.len() >= MAX_MESSAGES {
            break;
        }
        let line = raw.trim();
        let line = line.strip_prefix("data:").map_or(line, str::trim_start);
        if !line.starts_with(['{', '[']) {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v) => collect(&v, false, &mut out),
            Err(_) if cut_line == Some(start) => {
                if let Some((v, repaired)) = parse_lenient(line.as_bytes()) {
                    collect(&v, repaired, &mut out);
                }
            }
            Err(_) => {}
        }
    }
    out
}

/// True if these messages show MCP: an initialize request or result, or one of the
/// MCP-specific methods.
pub fn is_mcp(msgs: &[McpMessage]) -> bool {
    msgs.iter().any(|m| {
        let init_request =
            m.method == "initialize" && (!m.protocol_version.is_empty() || !m.peer_name.is_empty());
        // peer_name of a response only comes from serverInfo, protocol_version from an
        // initialize result that also had capabilities.
        let init_result = m.message_type == "response"
            && !m.peer_name.is_empty()
            && !m.protocol_version.is_empty();
        init_request
            || init_result
            || matches!(
                m.method.as_str(),
                "tools/call"
                    | "tools/list"
                    | "resources/read"
                    | "prompts/get"
                    | "notifications/initialized"
            )
    })
}

fn collect(v: &Value, repaired: bool, out: &mut Vec<McpMessage>) {
    match v {
        Value::Array(batch) => {
            for item in batch.iter().take(MAX_MESSAGES.saturating_sub(out.len())) {
                out.extend(message(item, repaired));
            }
        }
        _ => out.extend(message(v, repaired)),
    }
}

fn message(v: &Value, repaired: bool) -> Option<McpMessage> {
    let method = get_str(v, "method");
    match v.get("jsonrpc") {
        Some(Value::String(s)) if s == "2.0" => {}
        None if repaired && method.is_some() => {}
        _ => return None,
    }
    let mut m = McpMessage {
        id: render_id(v.get("id")),
        ..Default::default()
    };
    let has_id = v.get("id").is_some_and(|id| !id.is_null());
    if let Some(method) = method {
        m.method = name(method);
        let request = has_id || (repaired && !method.starts_with("notifications/"));
        m.message_type = if request { "request" } else { "notification" }.to_string();
        if let Some(params) = v.get("params") {
            request_params(&mut m, params);
        }
    } else if let Some(err) = v.get("error") {
        m.message_type = "error".to_string();
        let code = err.get("code").map(|c| c.to_string()).unwrap_or_default();
        let msg = get_str(err, "message").unwrap_or_default();
        m.result_excerpt = excerpt(&format!("{code}: {msg}"));
    } else if let Some(result) = v.get("result") {
        m.message_type = "response".to_string();
        result_fields(&mut m, result);
    } else if repaired && has_id {
        // Cut before the result arrived.
        m.message_type = "response".to_string();
    } else {
        return None;
    }
    Some(m)
}

fn render_id(id: Option<&Value>) -> String {
    match id {
        Some(Value::String(s)) => name(s),
        Some(n @ Value::Number(_)) => n.to_string(),
        _ => String::new(),
    }
}

fn request_params(m: &mut McpMessage, params: &Value) {
    if m.method == "tools/call" {
        m.tool_name = get_str(params, "name").map(name).unwrap_or_default();
    }
    if m.method == "initialize" {
        m.protocol_version = get_str(params, "protocolVersion")
            .map(name)
            .unwrap_or_default();
        m.peer_name = params
            .get("clientInfo")
            .and_then(|c| get_str(c, "name"))
            .map(name)
            .unwrap_or_default();
    } else if let Some(args) = params.get("arguments") {
        m.arguments_excerpt = json_excerpt(args);
    } else if params.as_object().is_some_and(|o| !o.is_empty()) {
        m.arguments_excerpt = json_excerpt(params);
    }
}

fn result_fields(m: &mut McpMessage, result: &Value) {
    if let Some(server) = result.get("serverInfo") {
        m.peer_name = get_str(server, "name").map(name).unwrap_or_default();
        if result.get("capabilities").is_some_and(Value::is_object) {
            m.protocol_version = get_str(result, "protocolVersion")
                .map(name)
                .unwrap_or_default();
        }
    }
    let mut ex = Excerpt::new();
    if let Some(Value::Array(tools)) = result.get("tools") {
        for t in tools {
            if ex.is_full() {
                break;
            }
            if let Some(n) = get_str(t, "name") {
                ex.sep(",");
                ex.push(n);
            }
        }
    } else if let Some(Value::Array(content)) =
        result.get("content").or_else(|| result.get("contents"))
    {
        if result.get("isError").and_then(Value::as_bool) == Some(true) {
            ex.push("error:");
        }
        for c in content {
            if ex.is_full() {
                break;
            }
            ex.gap();
            if let Some(t) = get_str(c, "text") {
                ex.push(t);
            } else if let Some(r) = c.get("resource") {
                ex.push(
                    get_str(r, "text")
                        .or_else(|| get_str(r, "uri"))
                        .unwrap_or_default(),
                );
            } else if let Some(uri) = get_str(c, "uri") {
                ex.push(uri);
            } else if let Some(ty) = get_str(c, "type") {
                ex.push(&format!("[{ty}]"));
            }
        }
    } else if let Some(Value::Array(messages)) = result.get("messages") {
        for msg in messages {
            ex.gap();
            if let Some(c) = msg.get("content") {
                ex.push(get_str(c, "text").unwrap_or_default());
            }
        }
    }
    m.result_excerpt = if ex.is_empty() && !result.is_null() {
        json_excerpt(result)
    } else {
        ex.finish()
    };
}

#[cfg(test)]
#[path = "mcp_tests.rs"]
mod tests;

#[cfg(test)]
mod header_tests {
    use super::*;

    #[test]
    fn stateless_mcp_headers_name_the_call_when_the_body_does_not() {
        let got = with_mcp_headers(Some("tools/call"), Some("read_file"), Vec::new());
        assert_eq!(got.len(), 1);
        assert_eq!(
            (
                got[0].message_type.as_str(),
                got[0].method.as_str(),
                got[0].tool_name.as_str()
            ),
            ("request", "tools/call", "read_file")
        );
        // A body cut before its params: the header supplies the tool.
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"argu"#;
        let got = with_mcp_headers(Some("tools/call"), Some("read_file"), parse_jsonrpc(body));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].tool_name, "read_file");
        // No header: the body alone, unchanged.
        assert_eq!(
            with_mcp_headers(None, Some("x"), parse_jsonrpc(body)),
            parse_jsonrpc(body)
        );
    }

    #[test]
    fn a_body_that_disagrees_with_its_mcp_method_header_shows_both() {
        let body =
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_repo"}}"#;
        let got = with_mcp_headers(Some("tools/list"), None, parse_jsonrpc(body));
        assert_eq!(got[0].method, "tools/call (Mcp-Method header: tools/list)");
        assert_eq!(got[0].tool_name, "delete_repo");
    }
}
