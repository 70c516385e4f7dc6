//! LLM API traffic: which provider a host belongs to, what a request asks for (model,
//! prompts, tools offered) and what the answer does (tool calls, text).

mod request;
mod response;

pub use request::{LlmRequest, parse_llm_request};
pub use response::{LlmResponse, ToolCall, parse_llm_response};

use serde_json::Value;

use super::json::get_str;
use super::text::Excerpt;

/// LLM provider serving a host name (port and trailing dot ignored, case-insensitive).
pub fn llm_provider_for_host(host: &str) -> Option<&'static str> {
    let host = strip_port(host.trim())
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let exact = match host.as_str() {
        "api.openai.com" => Some("openai"),
        "api.anthropic.com" => Some("anthropic"),
        "generativelanguage.googleapis.com" | "aiplatform.googleapis.com" => Some("google"),
        "api.mistral.ai" => Some("mistral"),
        "api.groq.com" => Some("groq"),
        "api.cohere.ai" | "api.cohere.com" => Some("cohere"),
        "api.together.xyz" | "api.together.ai" => Some("together"),
        "api.deepseek.com" => Some("deepseek"),
        "openrouter.ai" => Some("openrouter"),
        "api.x.ai" => Some("xai"),
        _ => None,
    };
    exact.or_else(|| {
        if host.ends_with(".openai.azure.com") {
            Some("azure_openai")
        } else if host.ends_with("-aiplatform.googleapis.com") {
            Some("google")
        } else if host.starts_with("bedrock-runtime") && host.ends_with(".amazonaws.com") {
            // bedrock-runtime.<region>.amazonaws.com and its -fips variant.
            Some("bedrock")
        } else {
            None
        }
    })
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        // More than one colon: a bare IPv6 address, no port.
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Appends the text of a message `content` in any of the providers' shapes: a string,
/// or blocks/parts carrying "text" (OpenAI parts, Anthropic and Bedrock blocks, Gemini
/// parts), including the content of Anthropic tool results (tool output reaching the
/// model is where prompt injection comes from, so it is worth seeing).
fn push_content(v: &Value, ex: &mut Excerpt) {
    match v {
        Value::String(s) => {
            ex.gap();
            ex.push(s);
        }
        Value::Array(items) => {
            for item in items {
                if ex.is_full() {
                    return;
                }
                push_block(item, ex);
            }
        }
        Value::Object(_) => push_block(v, ex),
        _ => {}
    }
}

fn push_block(item: &Value, ex: &mut Excerpt) {
    if let Value::String(s) = item {
        ex.gap();
        ex.push(s);
    } else if item.get("thought").and_then(Value::as_bool) == Some(true) {
        // Gemini reasoning summaries are not part of the conversation.
    } else if let Some(t) = get_str(item, "text") {
        ex.gap();
        ex.push(t);
    } else if let Some(parts) = item.get("parts") {
        push_content(parts, ex);
    } else if matches!(get_str(item, "type"), Some("tool_result")) {
        if let Some(c) = item.get("content") {
            push_content(c, ex);
        }
    }
}

#[cfg(test)]
mod tests;
