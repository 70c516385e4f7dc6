//! What an LLM answered: tool calls, text and why it stopped, from complete JSON bodies
//! and from streams (SSE, Gemini's JSON array, NDJSON).
//!
//! Recognition is by shape rather than by the provider argument, because most
//! providers speak one of these dialects (OpenAI chat completions being the lingua
//! franca of gateways); the provider only breaks the tie for an Anthropic message body
//! that lacks its "type". Streams are folded chunk by chunk into one accumulator, so a
//! tool call's name and arguments spread over many deltas come out whole.
//!
//! Compressed bodies (Content-Encoding gzip/br/deflate) are not decoded: there is no
//! decompressor among the crate's dependencies, so they yield None.

use serde_json::Value;

use super::super::http::HttpResponse;
use super::super::json::{first_byte, get_arr, get_str, parse_lenient};
use super::super::sse;
use super::super::text::{Excerpt, excerpt, json_excerpt, name, utf8_prefix};
use super::push_content;

/// Most tool calls kept from one response.
const MAX_CALLS: usize = 128;
/// Raw argument text kept per call while deltas accumulate; the excerpt needs less.
const MAX_ARGS: usize = 4096;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// Arguments as JSON text, ≤ 512 chars.
    pub arguments_excerpt: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LlmResponse {
    pub model: String,
    pub tool_calls: Vec<ToolCall>,
    pub content_excerpt: String,
    /// finish_reason / stop_reason / finishReason / status; "error" for an API error,
    /// whose message is then the content excerpt.
    pub finish_reason: String,
}

/// Parses a response body of an LLM API (OpenAI chat completions and Responses API,
/// Anthropic messages, Gemini, Bedrock Converse; plain or streamed). None when the body
/// is none of these.
pub fn parse_llm_response(provider: &str, resp: &HttpResponse) -> Option<LlmResponse> {
    if resp
        .header("content-encoding")
        .is_some_and(|e| !e.trim().is_empty() && !e.trim().eq_ignore_ascii_case("identity"))
    {
        return None;
    }
    let mut acc = Acc::new(provider);
    let event_stream = resp
        .header("content-type")
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("event-stream"));
    if event_stream || sse::looks_like_sse(&resp.body) {
        sse::for_each_data(&resp.body, |data| {
            if data.trim() != "[DONE]" {
                if let Some((v, _)) = parse_lenient(data.as_bytes()) {
                    acc.chunk(&v);
                }
            }
        });
    } else {
        match first_byte(&resp.body) {
            Some(b'{' | b'[') => {}
            _ => return None,
        }
        match serde_json::from_slice::<Value>(&resp.body) {
            Ok(Value::Array(items)) => items.iter().for_each(|v| acc.chunk(v)),
            Ok(v) => acc.chunk(&v),
            // One JSON object per line (Ollama-style NDJSON streams), or a cut body.
            Err(_) => {
                let text = utf8_prefix(&resp.body);
                let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
                let ndjson = lines
                    .clone()
                    .next()
                    .is_some_and(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v.is_object()));
                let docs: Vec<&str> = if ndjson {
                    lines.by_ref().collect()
                } else {
                    vec![text.trim()]
                };
                for doc in docs {
                    match parse_lenient(doc.as_bytes()) {
                        Some((Value::Array(items), _)) => items.iter().for_each(|v| acc.chunk(v)),
                        Some((v, _)) => acc.chunk(&v),
                        None => {}
                    }
                }
            }
        }
    }
    acc.finish()
}

struct CallAcc {
    key: u64,
    id: String,
    name: String,
    args: String,
}

struct Acc<'p> {
    provider: &'p str,
    model: String,
    content: Excerpt,
    finish: String,
    calls: Vec<CallAcc>,
    next_key: u64,
    recognized: bool,
}

/// Keys for calls that carry no index of their own, away from provider indexes.
const UNINDEXED: u64 = 1 << 40;

impl<'p> Acc<'p> {
    fn new(provider: &'p str) -> Self {
        Acc {
            provider,
            model: String::new(),
            content: Excerpt::new(),
            finish: String::new(),
            calls: Vec::new(),
            next_key: UNINDEXED,
            recognized: false,
        }
    }

    fn call(&mut self, key: u64) -> Option<&mut CallAcc> {
        if let Some(i) = self.calls.iter().position(|c| c.key == key) {
            return self.calls.get_mut(i);
        }
        if self.calls.len() >= MAX_CALLS {
            return None;
        }
        self.calls.push(CallAcc {
            key,
            id: String::new(),
            name: String::new(),
            args: String::new(),
        });
        self.calls.last_mut()
    }

    /// Key for a call that has no index of its own (each is a separate call).
    fn fresh_key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    fn set_model(&mut self, v: &Value) {
        let m = get_str(v, "model").or_else(|| get_str(v, "modelVersion"));
        if let Some(m) = m.filter(|m| !m.is_empty() && self.model.is_empty()) {
            self.model = name(m);
        }
    }

    fn set_finish(&mut self, f: Option<&str>) {
        if let Some(f) = f.filter(|f| !f.is_empty()) {
            self.finish = name(f);
        }
    }

    fn chunk(&mut self, v: &Value) {
        if !v.is_object() {
            return;
        }
        self.set_model(v);
        let ty = get_str(v, "type").unwrap_or_default();
        if let Some(choices) = v.get("choices").and_then(Value::as_array) {
            self.openai_choices(choices);
        } else if ty.starts_with("response.") {
            self.responses_event(ty, v);
        } else if get_str(v, "object") == Some("response")
            || v.get("output").is_some_and(Value::is_array)
        {
            self.responses_full(v);
        } else if ty.starts_with("message_") || ty.starts_with("content_block_") || ty == "ping" {
            self.anthropic_event(ty, v);
        } else if v.get("content").is_some_and(Value::is_array)
            && (ty == "message" || matches!(self.provider, "anthropic" | "bedrock"))
        {
            self.anthropic_message(v);
        } else if let Some(cands) = v.get("candidates").and_then(Value::as_array) {
            self.gemini(cands);
        } else if let Some(msg) = v.get("output").and_then(|o| o.get("message")) {
            // Bedrock Converse.
            self.blocks(get_arr(msg, "content"), false);
            self.set_finish(get_str(v, "stopReason"));
            self.recognized = true;
        } else if let Some(msg) = v.get("message").filter(|m| m.is_object()) {
            // Cohere v2 and Ollama: an OpenAI-like message at top level.
            self.openai_message(0, msg);
            self.set_finish(get_str(v, "finish_reason").or_else(|| get_str(v, "done_reason")));
        } else if let Some(err) = v.get("error") {
            self.error(err);
        } else if ty == "error" {
            // Responses API stream error: message and code at top level.
            self.error(v);
        }
    }

    fn error(&mut self, err: &Value) {
        let msg = get_str(err, "message")
            .or_else(|| err.as_str())
            .unwrap_or_default();
        self.content.gap();
        self.content.push(msg);
        self.finish = "error".to_string();
        self.recognized = true;
    }

    fn openai_choices(&mut self, choices: &[Value]) {
        self.recognized = true;
        for (pos, ch) in choices.iter().enumerate() {
            let idx = ch
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(pos as u64)
                .min(1 << 20);
            if let Some(msg) = ch
                .get("message")
                .or_else(|| ch.get("delta"))
                .filter(|m| m.is_object())
            {
                self.openai_message(idx, msg);
            } else if let Some(t) = get_str(ch, "text") {
                self.content.push(t);
            }
            self.set_finish(get_str(ch, "finish_reason"));
        }
    }

    /// A chat message or stream delta; tool calls of choice `choice` are keyed by their
    /// own index so that deltas of the same call land together.
    fn openai_message(&mut self, choice: u64, msg: &Value) {
        self.recognized = true;
        match msg.get("content") {
            // Deltas are pieces of one text: no separator between them.
            Some(Value::String(s)) => self.content.push(s),
            Some(c @ Value::Array(_)) => push_content(c, &mut self.content),
            _ => {}
        }
        for (pos, tc) in get_arr(msg, "tool_calls").iter().enumerate() {
            let idx = tc
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(pos as u64)
                & 0xFFFFF;
            let f = tc.get("function").unwrap_or(tc);
            self.merge_call(
                choice << 20 | idx,
                get_str(tc, "id"),
                get_str(f, "name"),
                f.get("arguments"),
            );
        }
        if let Some(f) = msg.get("function_call") {
            self.merge_call(
                choice << 20 | 0xFFFFF,
                None,
                get_str(f, "name"),
                f.get("arguments"),
            );
        }
    }

    /// Adds to a call: id and name are set once, string arguments are appended (they
    /// arrive as deltas), structured arguments replace.
    fn merge_call(&mut self, key: u64, id: Option<&str>, name: Option<&str>, args: Option<&Value>) {
        let Some(call) = self.call(key) else { return };
        if let Some(id) = id.filter(|s| !s.is_empty() && call.id.is_empty()) {
            call.id = id.to_string();
        }
        if let Some(n) = name.filter(|s| !s.is_empty() && call.name.is_empty()) {
            call.name = n.to_string();
        }
        match args {
            Some(Value::String(s)) => push_bounded(&mut call.args, s),
            Some(Value::Null) | None => {}
            Some(v) => call.args = json_excerpt(v),
        }
    }

    fn responses_event(&mut self, ty: &str, v: &Value) {
        self.recognized = true;
        let key = v
            .get("output_index")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(UNINDEXED - 1);
        match ty {
            "response.created" | "response.in_progress" => {
                if let Some(r) = v.get("response") {
                    self.set_model(r);
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                if let Some(r) = v.get("response") {
                    // The final event repeats the whole output: rebuild from it.
                    if !get_arr(r, "output").is_empty() {
                        self.calls.clear();
                        self.content = Excerpt::new();
                    }
                    self.responses_full(r);
                }
            }
            "response.output_item.added" | "response.output_item.done" => {
                if let Some(item) = v.get("item") {
                    self.responses_item(key, item, false);
                }
            }
            "response.output_text.delta" => {
                self.content.push(get_str(v, "delta").unwrap_or_default())
            }
            _ if ty.ends_with(".delta") && (ty.contains("arguments") || ty.contains("input")) => {
                if let (Some(d), Some(call)) = (get_str(v, "delta"), self.call(key)) {
                    push_bounded(&mut call.args, d);
                }
            }
            "response.function_call_arguments.done" => {
                if let (Some(a), Some(call)) = (get_str(v, "arguments"), self.call(key)) {
                    call.args.clear();
                    push_bounded(&mut call.args, a);
                }
            }
            _ => {}
        }
    }

    fn responses_full(&mut self, r: &Value) {
        self.recognized = true;
        self.set_model(r);
        for (i, item) in get_arr(r, "output").iter().enumerate() {
            self.responses_item(i as u64, item, true);
        }
        let reason = r
            .get("incomplete_details")
            .and_then(|d| get_str(d, "reason"));
        self.set_finish(reason.or_else(|| get_str(r, "status")));
        if let Some(err) = r.get("error").filter(|e| e.is_object()) {
            self.error(err);
        }
    }

    /// One output item: messages (text only when `with_text`, since streamed text
    /// already came as deltas) and every kind of "*_call" (function, custom, MCP,
    /// built-ins such as web_search or local_shell, named after their type).
    fn responses_item(&mut self, key: u64, item: &Value, with_text: bool) {
        let ty = get_str(item, "type").unwrap_or_default();
        if ty == "message" {
            if with_text {
                for c in get_arr(item, "content") {
                    self.content.gap();
                    self.content.push(
                        get_str(c, "text")
                            .or_else(|| get_str(c, "refusal"))
                            .unwrap_or_default(),
                    );
                }
            }
            return;
        }
        let Some(kind) = ty.strip_suffix("_call") else {
            return;
        };
        let Some(call) = self.call(key) else { return };
        if let Some(id) = get_str(item, "call_id")
            .or_else(|| get_str(item, "id"))
            .filter(|s| !s.is_empty())
        {
            call.id = id.to_string();
        }
        let n = get_str(item, "name").unwrap_or(if kind == "function" { "" } else { kind });
        if !n.is_empty() {
            call.name = n.to_string();
        }
        match item
            .get("arguments")
            .or_else(|| item.get("input"))
            .or_else(|| item.get("action"))
        {
            Some(Value::String(s)) if !s.is_empty() => {
                call.args.clear();
                push_bounded(&mut call.args, s);
            }
            Some(v @ Value::Object(_)) => call.args = json_excerpt(v),
            _ => {}
        }
    }

    fn anthropic_event(&mut self, ty: &str, v: &Value) {
        self.recognized = true;
        let key = v
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(UNINDEXED - 1);
        match ty {
            "message_start" => {
                if let Some(m) = v.get("message") {
                    self.set_model(m);
                }
            }
            "content_block_start" => {
                if let Some(b) = v.get("content_block") {
                    self.block(key, b, true);
                }
            }
            "content_block_delta" => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                match get_str(d, "type") {
                    Some("text_delta") => self.content.push(get_str(d, "text").unwrap_or_default()),
                    Some("input_json_delta") => {
                        if let (Some(p), Some(call)) = (get_str(d, "partial_json"), self.call(key))
                        {
                            push_bounded(&mut call.args, p);
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                let reason = v.get("delta").and_then(|d| get_str(d, "stop_reason"));
                self.set_finish(reason);
            }
            _ => {}
        }
    }

    fn anthropic_message(&mut self, v: &Value) {
        self.recognized = true;
        self.blocks(get_arr(v, "content"), false);
        self.set_finish(get_str(v, "stop_reason"));
    }

    fn blocks(&mut self, blocks: &[Value], streaming: bool) {
        for b in blocks {
            let key = self.fresh_key();
            self.block(key, b, streaming);
        }
    }

    /// An Anthropic content block (text, tool_use and server-side/MCP variants) or a
    /// Bedrock Converse one ({"text"} or {"toolUse"}).
    fn block(&mut self, key: u64, b: &Value, streaming: bool) {
        let ty = get_str(b, "type").unwrap_or_default();
        let (call, ty) = match b.get("toolUse") {
            Some(t) => (t, "tool_use"),
            None => (b, ty),
        };
        if ty == "text" || (ty.is_empty() && b.get("text").is_some()) {
            self.content.gap();
            self.content.push(get_str(b, "text").unwrap_or_default());
        } else if ty.ends_with("tool_use") {
            let id = get_str(call, "id").or_else(|| get_str(call, "toolUseId"));
            // A streamed block starts with empty input; its JSON follows as deltas.
            let input = call
                .get("input")
                .filter(|i| !streaming || i.as_object().is_some_and(|o| !o.is_empty()));
            self.merge_call(key, id, get_str(call, "name"), input);
        }
    }

    fn gemini(&mut self, cands: &[Value]) {
        self.recognized = true;
        for c in cands {
            let parts = c.get("content").map(|c| get_arr(c, "parts")).unwrap_or(&[]);
            for p in parts {
                if let Some(fc) = p.get("functionCall") {
                    let key = self.fresh_key();
                    self.merge_call(key, get_str(fc, "id"), get_str(fc, "name"), fc.get("args"));
                } else if p.get("thought").and_then(Value::as_bool) != Some(true) {
                    self.content.push(get_str(p, "text").unwrap_or_default());
                }
            }
            self.set_finish(get_str(c, "finishReason"));
        }
    }

    fn finish(self) -> Option<LlmResponse> {
        if !self.recognized {
            return None;
        }
        let tool_calls = self
            .calls
            .into_iter()
            .filter(|c| !c.name.is_empty() || !c.id.is_empty())
            .map(|c| ToolCall {
                id: name(&c.id),
                name: name(&c.name),
                arguments_excerpt: excerpt(&c.args),
            })
            .collect();
        Some(LlmResponse {
            model: self.model,
            tool_calls,
            content_excerpt: self.content.finish(),
            finish_reason: self.finish,
        })
    }
}

fn push_bounded(dst: &mut String, s: &str) {
    for c in s.chars() {
        if dst.len() + c.len_utf8() > MAX_ARGS {
            return;
        }
        dst.push(c);
    }
}
