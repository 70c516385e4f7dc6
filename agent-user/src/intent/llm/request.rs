//! Recognition of LLM API requests by body shape and path, independent of the host,
//! since agents are often pointed at local gateways or proxies.
//!
//! Bodies are often captured partially (only the first bytes of each write are kept);
//! they go through the tolerant JSON parser, which closes a cut document at the last
//! complete value or inside a cut string value. So a cut request still yields the
//! model, the tools and the messages that fit, the last of them possibly cut short;
//! "last user message" then means the last one captured. When too little of the body
//! survives, the path alone still gives the shape, hence the provider (and for Gemini,
//! Azure deployments and Bedrock, the model).

use serde_json::Value;

use super::super::http::HttpRequest;
use super::super::json::{first_byte, get_arr, get_str, parse_lenient};
use super::super::text::{EXCERPT_CHARS, Excerpt, NAME_CHARS, excerpt, excerpt_n, name};
use super::{llm_provider_for_host, push_block, push_content};

/// Most tool names kept from one request.
const MAX_TOOLS: usize = 128;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LlmRequest {
    pub provider: String,
    pub model: String,
    pub system_excerpt: String,
    /// Text of the last user message (≤ 512 chars, whitespace collapsed).
    pub user_excerpt: String,
    /// Names of the tools offered to the model (built-in tools by their type).
    pub tools: Vec<String>,
    pub stream: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    OpenAiChat,
    OpenAiResponses,
    Anthropic,
    Gemini,
    /// Bedrock InvokeModel/Converse: Anthropic-like bodies, model in the path.
    Bedrock,
}

impl Shape {
    fn provider(self) -> &'static str {
        match self {
            Shape::OpenAiChat | Shape::OpenAiResponses => "openai",
            Shape::Anthropic => "anthropic",
            Shape::Gemini => "google",
            Shape::Bedrock => "bedrock",
        }
    }
}

/// Recognises an LLM API request (OpenAI chat completions and responses, Anthropic
/// messages, Gemini generateContent, Bedrock). None when it is not one.
pub fn parse_llm_request(req: &HttpRequest) -> Option<LlmRequest> {
    if !req.method.eq_ignore_ascii_case("POST") {
        return None;
    }
    let path = req
        .path
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .trim_end_matches('/');
    let body = match first_byte(&req.body) {
        Some(b'{') => parse_lenient(&req.body).filter(|(v, _)| v.is_object()),
        None if !req.body_complete => None,
        // A complete empty body, or one that is not a JSON object.
        _ => return None,
    };
    let partial = !req.body_complete || body.as_ref().is_some_and(|(_, repaired)| *repaired);
    let empty = Value::Object(Default::default());
    let v = body.as_ref().map_or(&empty, |(v, _)| v);

    let shape = match shape_from_path(path) {
        // A complete body must confirm the path: "/messages" also ends OpenAI Assistants
        // thread URLs, whose bodies look nothing like a chat request.
        Some(s) if partial || body_matches(s, v) => s,
        Some(_) => return None,
        None => shape_from_body(req, v)?,
    };

    let provider = llm_provider_for_host(&req.host).unwrap_or(shape.provider());
    let mut out = LlmRequest {
        provider: provider.to_string(),
        model: get_str(v, "model").map(name).unwrap_or_default(),
        stream: v.get("stream").and_then(Value::as_bool).unwrap_or(false) || path_streams(path),
        ..Default::default()
    };
    if out.model.is_empty() {
        out.model = model_from_path(path)
            .map(|m| name(&percent_decode(m)))
            .unwrap_or_default();
    }
    let (system, user) = match shape {
        Shape::OpenAiChat => (
            role_text(get_arr(v, "messages"), &["system", "developer"]),
            last_user(get_arr(v, "messages"), false),
        ),
        Shape::OpenAiResponses => responses_text(v),
        Shape::Anthropic | Shape::Bedrock => {
            let mut sys = Excerpt::new();
            if let Some(s) = v.get("system") {
                push_content(s, &mut sys);
            }
            (sys.finish(), last_user(get_arr(v, "messages"), false))
        }
        Shape::Gemini => {
            let mut sys = Excerpt::new();
            if let Some(s) = v
                .get("systemInstruction")
                .or_else(|| v.get("system_instruction"))
            {
                push_content(s, &mut sys);
            }
            (sys.finish(), last_user(get_arr(v, "contents"), true))
        }
    };
    out.system_excerpt = system;
    out.user_excerpt = user;
    out.tools = tool_names(v);
    Some(out)
}

fn shape_from_path(path: &str) -> Option<Shape> {
    let last = path.rsplit('/').next().unwrap_or_default();
    if last.contains(":generateContent") || last.contains(":streamGenerateContent") {
        Some(Shape::Gemini)
    } else if path.ends_with("/chat/completions") {
        Some(Shape::OpenAiChat)
    } else if path.ends_with("/responses") {
        Some(Shape::OpenAiResponses)
    } else if path.ends_with("/messages") {
        Some(Shape::Anthropic)
    } else if path.starts_with("/model/")
        && matches!(
            last,
            "invoke" | "invoke-with-response-stream" | "converse" | "converse-stream"
        )
    {
        Some(Shape::Bedrock)
    } else {
        None
    }
}

fn body_matches(shape: Shape, v: &Value) -> bool {
    let has = |k: &str| v.get(k).is_some();
    match shape {
        Shape::OpenAiChat | Shape::Anthropic => v.get("messages").is_some_and(Value::is_array),
        Shape::OpenAiResponses => {
            has("input") || has("instructions") || has("previous_response_id")
        }
        Shape::Gemini => has("contents"),
        Shape::Bedrock => has("messages") || has("prompt") || has("inputText"),
    }
}

/// For hosts that are not recognised and paths that say nothing (custom gateways).
fn shape_from_body(req: &HttpRequest, v: &Value) -> Option<Shape> {
    if v.get("contents").is_some_and(Value::is_array) {
        return Some(Shape::Gemini);
    }
    if v.get("messages").is_some_and(Value::is_array) {
        let anthropic = req.header("anthropic-version").is_some()
            || v.get("anthropic_version").is_some()
            || v.get("system")
                .is_some_and(|s| s.is_string() || s.is_array());
        return Some(if anthropic {
            Shape::Anthropic
        } else {
            Shape::OpenAiChat
        });
    }
    // Embeddings and moderation requests also have "model" and "input": demand what
    // only the Responses API has, conversation items or its own parameters.
    let items = get_arr(v, "input")
        .iter()
        .any(|i| i.get("role").is_some() || i.get("type").is_some());
    let own_params = ["instructions", "previous_response_id", "tools", "reasoning"]
        .iter()
        .any(|k| v.get(k).is_some());
    let text_input = v.get("input").is_some_and(Value::is_string);
    if v.get("model").is_some() && (items || (text_input && own_params)) {
        return Some(Shape::OpenAiResponses);
    }
    None
}

fn path_streams(path: &str) -> bool {
    path.contains(":streamGenerateContent")
        || path.ends_with("-stream")
        || path.ends_with("/invoke-with-response-stream")
}

/// Model named in the path: Gemini ".../models/<m>:generateContent", Azure OpenAI
/// "/openai/deployments/<deployment>/...", Bedrock "/model/<id>/invoke".
fn model_from_path(path: &str) -> Option<&str> {
    if let Some(i) = path.rfind("models/") {
        let rest = &path[i + "models/".len()..];
        return Some(rest.split([':', '/']).next().unwrap_or(rest)).filter(|m| !m.is_empty());
    }
    for prefix in ["/deployments/", "/model/"] {
        if let Some(i) = path.find(prefix) {
            let rest = &path[i + prefix.len()..];
            return rest.split('/').next().filter(|m| !m.is_empty());
        }
    }
    None
}

/// Bedrock model ids contain ':' and are percent-encoded in the path.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Text of all messages with one of `roles` (system prompts may be split in several).
fn role_text(messages: &[Value], roles: &[&str]) -> String {
    let mut ex = Excerpt::new();
    for m in messages {
        if ex.is_full() {
            break;
        }
        if get_str(m, "role").is_some_and(|r| roles.contains(&r)) {
            if let Some(c) = m.get("content") {
                push_content(c, &mut ex);
            }
        }
    }
    ex.finish()
}

/// Text of the last user message. Gemini may omit the role of user turns
/// (`role_optional`); Responses API items without a role are tool calls and outputs.
fn last_user(messages: &[Value], role_optional: bool) -> String {
    let is_user = |m: &&Value| match get_str(m, "role") {
        Some(r) => r == "user",
        None => role_optional && m.is_object(),
    };
    let user = messages.iter().rev().find(is_user);
    let mut ex = Excerpt::new();
    if let Some(m) = user {
        match m.get("content").or_else(|| m.get("parts")) {
            Some(Value::Array(blocks)) => push_newest_first(blocks, &mut ex),
            Some(c) => push_content(c, &mut ex),
            None => {}
        }
    }
    ex.finish()
}

/// A user turn's blocks, in order when the excerpt holds them all, else with the last
/// text block first: coding agents put what the harness adds (Claude Code's
/// `<system-reminder>`s, Gemini CLI's session context, 20 KB and more) before what the
/// human typed, which an excerpt of the blocks in order would never reach.
fn push_newest_first(blocks: &[Value], ex: &mut Excerpt) {
    fn text(b: &Value) -> Option<&str> {
        get_str(b, "text").filter(|t| {
            b.get("thought").and_then(Value::as_bool) != Some(true) && !t.trim().is_empty()
        })
    }
    let newest = blocks.iter().rposition(|b| text(b).is_some());
    let through_newest: usize = newest.map_or(0, |n| {
        blocks[..=n]
            .iter()
            .filter_map(text)
            .map(|t| t.chars().count() + 1)
            .sum()
    });
    let newest = newest.filter(|_| through_newest > EXCERPT_CHARS);
    if let Some(n) = newest {
        push_block(&blocks[n], ex);
    }
    for (i, b) in blocks.iter().enumerate() {
        if Some(i) != newest && !ex.is_full() {
            push_block(b, ex);
        }
    }
}

/// Responses API: "instructions" plus system/developer items; "input" is a string or
/// a list of items, of which user messages count.
fn responses_text(v: &Value) -> (String, String) {
    let mut sys = Excerpt::new();
    if let Some(s) = get_str(v, "instructions") {
        sys.push(s);
    }
    let (system_items, user) = match v.get("input") {
        Some(Value::String(s)) => (String::new(), excerpt(s)),
        Some(Value::Array(items)) => (
            role_text(items, &["system", "developer"]),
            last_user(items, false),
        ),
        _ => (String::new(), String::new()),
    };
    sys.gap();
    sys.push(&system_items);
    (sys.finish(), user)
}

/// Names of the tools offered, across the providers' declarations: OpenAI chat
/// ({"function":{"name"}}, legacy "functions"), Responses and Anthropic ({"name"},
/// built-ins by "type", remote MCP servers by label), Gemini ("functionDeclarations",
/// built-ins such as "googleSearch" by key), Bedrock Converse ("toolConfig").
fn tool_names(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |s: &str| {
        if out.len() < MAX_TOOLS && !s.is_empty() {
            out.push(excerpt_n(s, NAME_CHARS));
        }
    };
    let bedrock = v
        .get("toolConfig")
        .map(|c| get_arr(c, "tools"))
        .unwrap_or(&[]);
    for t in get_arr(v, "tools").iter().chain(bedrock) {
        let decls = t
            .get("functionDeclarations")
            .or_else(|| t.get("function_declarations"));
        if let Some(Value::Array(decls)) = decls {
            decls
                .iter()
                .filter_map(|d| get_str(d, "name"))
                .for_each(&mut add);
        } else if let Some(n) = get_str(t, "name") {
            add(n);
        } else if let Some(n) = t.get("function").and_then(|f| get_str(f, "name")) {
            add(n);
        } else if let Some(n) = t.get("toolSpec").and_then(|f| get_str(f, "name")) {
            add(n);
        } else if let Some(ty) = get_str(t, "type") {
            match get_str(t, "server_label") {
                Some(label) if ty == "mcp" => add(&format!("mcp:{label}")),
                _ => add(ty),
            }
        } else if let Value::Object(map) = t {
            map.keys().for_each(|k| add(k.as_str()));
        }
    }
    get_arr(v, "functions")
        .iter()
        .filter_map(|f| get_str(f, "name"))
        .for_each(&mut add);
    out
}
