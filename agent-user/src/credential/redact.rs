//! Redaction of free text (captured HTTP headers and bodies, JSON, argv) before it
//! leaves the daemon. It errs towards removing too much: a redacted word of prose
//! costs little, a leaked key is an incident.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

use super::env::secret_name_kind;
use super::escape::escape_bytes;
use super::formats::{
    URL_USERINFO_RE, classify_whole, decode_basic, find_tokens, preceded_by_word,
};
use super::headers::COOKIE_HEADERS;
use super::pem::PEM_RE;

/// Headers whose entire value is secret.
const SECRET_HEADERS: &[&str] = &[
    "proxy-authorization",
    "authorization",
    "x-api-key",
    "api-key",
    "apikey",
    "x-goog-api-key",
    "anthropic-api-key",
    "x-anthropic-api-key",
    "openai-api-key",
    "x-openai-api-key",
    "x-auth-token",
    "x-access-token",
    "x-vault-token",
    "private-token",
    "x-gitlab-token",
    "x-amz-security-token",
];

static HEADER_RE: LazyLock<Regex> = LazyLock::new(|| {
    let names: Vec<String> = SECRET_HEADERS
        .iter()
        .chain(COOKIE_HEADERS)
        .map(|h| regex::escape(h))
        .collect();
    Regex::new(&format!(
        r"(?i)(?:^|[^A-Za-z0-9_\-]|\\x[0-9a-f]{{2}})({})[ \t]*:[ \t]*",
        names.join("|")
    ))
    .expect("header regex")
});

/// A quoted key (JSON, Python and JS literals) followed by a quoted string value.
static QUOTED_KV_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"["']([A-Za-z0-9_.\-]{1,64})["'][ \t]*:[ \t]*(?:"((?:[^"\\\n]|\\.)*)"|'((?:[^'\\\n]|\\.)*)')"#,
    )
    .expect("quoted kv regex")
});

/// `name=` and `name:` (env dumps, query strings, YAML, INI). The value is measured
/// by hand, only for secret names, which keeps the scan linear.
static KV_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"([A-Za-z_][A-Za-z0-9_.\-]*)[ \t]*[=:][ \t]*").expect("kv regex"));

/// `--password value` in argv.
static FLAG_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?:^|[\s"'])--?([A-Za-z][A-Za-z0-9_\-]*)[ \t]+("[^"\n]*"|'[^'\n]*'|[^\s"'\-][^\s"']*)"#,
    )
    .expect("flag regex")
});

static SCHEME_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(bearer|basic)[ \t]+([A-Za-z0-9\-._~+/]+=*)").expect("scheme regex")
});

/// JWT-shaped text that does not decode (cut off, or mangled) is still a token.
static LOOSE_JWT_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"eyJ[A-Za-z0-9_\-]{8,}(?:\.[A-Za-z0-9_\-]*){0,2}").expect("jwt regex")
});

/// A vendor-prefixed token cut off by the end of an excerpt, too short for the full
/// patterns but still the secret's leading bytes.
static TRUNCATED_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?:sk-ant-|sk-(?:proj|svcacct|admin)-|gh[pousr]_|github_pat_|",
        r"gl(?:pat|dt|rt|ptt|ft|cbt|soat)-|xox[abprs]-|AIza|hf_|npm_|hv[sbr]\.)",
        r"[A-Za-z0-9_\-]{4,}\z|(?:AKIA|ASIA)[A-Z0-9]{4,}\z"
    ))
    .expect("truncated regex")
});

static PLACEHOLDER_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\[REDACTED:[a-z0-9_\-]+\]$").expect("placeholder regex"));

/// Passes are repeated until nothing changes, which makes `redact` idempotent even
/// where one rule's output could give an earlier rule a new match. Fuzzing has not
/// found an input needing a third pass; the bound only guards against a loop.
const MAX_PASSES: usize = 4;

/// Replaces every secret value in `text` with `[REDACTED:<kind>]`.
pub fn redact(text: &str) -> String {
    // Text without secrets (the common case) costs a single pass.
    let mut cur = match redact_pass(text) {
        Cow::Borrowed(_) => return text.to_string(),
        Cow::Owned(s) => s,
    };
    for _ in 1..MAX_PASSES {
        match redact_pass(&cur) {
            Cow::Owned(next) if next != cur => cur = next,
            _ => break,
        }
    }
    cur
}

/// Redacts arbitrary bytes; invalid UTF-8 is escaped as `\xNN` (see [`escape_bytes`])
/// rather than replaced, so the excerpt stays faithful.
pub fn redact_bytes(data: &[u8]) -> String {
    redact(&escape_bytes(data))
}

/// One application of every rule; `Borrowed` means nothing was redacted.
fn redact_pass(text: &str) -> Cow<'_, str> {
    let rules: [fn(&str) -> Cow<'_, str>; 8] = [
        pem_blocks,
        headers,
        scheme_tokens,
        quoted_kv,
        url_passwords,
        kv,
        flags,
        tokens,
    ];
    let mut cur = Cow::Borrowed(text);
    for rule in rules {
        if let Cow::Owned(next) = rule(&cur) {
            cur = Cow::Owned(next);
        }
    }
    cur
}

fn is_placeholder(v: &str) -> bool {
    v.starts_with("[REDACTED:") && PLACEHOLDER_RE.is_match(v)
}

fn placeholder(kind: &str) -> String {
    format!("[REDACTED:{kind}]")
}

/// A value's own token kind when it has one, else the kind implied by its context.
fn kind_for(value: &str, fallback: &'static str) -> &'static str {
    classify_whole(value).map_or(fallback, |t| t.kind)
}

/// Rewrites `text` with each (start, end, replacement) applied. Spans must be sorted
/// and disjoint, which every rule guarantees by construction.
fn splice<'a>(text: &'a str, spans: Vec<(usize, usize, String)>) -> Cow<'a, str> {
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (s, e, rep) in spans {
        debug_assert!(s >= last && e >= s);
        out.push_str(&text[last..s]);
        out.push_str(&rep);
        last = e;
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

fn pem_blocks(text: &str) -> Cow<'_, str> {
    let spans = PEM_RE
        .find_iter(text)
        .map(|m| (m.start(), m.end(), placeholder("private_key")))
        .collect();
    splice(text, spans)
}

/// The whole value after the colon, to the end of the line; when the header sits in
/// a quoted argument (`-H "Authorization: …"`) the closing quote ends it instead.
fn headers(text: &str) -> Cow<'_, str> {
    let mut spans = Vec::new();
    let mut last_end = 0;
    for c in HEADER_RE.captures_iter(text) {
        let (Some(all), Some(name)) = (c.get(0), c.get(1)) else {
            continue;
        };
        let start = all.end();
        if start < last_end {
            continue;
        }
        let quote = text[..name.start()]
            .chars()
            .next_back()
            .filter(|q| *q == '"' || *q == '\'');
        let end = text[start..]
            .find(|ch: char| ch == '\n' || Some(ch) == quote)
            .map_or(text.len(), |i| start + i);
        let value = text[start..end].trim_end();
        if value.is_empty() || is_placeholder(value) {
            continue;
        }
        spans.push((
            start,
            start + value.len(),
            placeholder(&name.as_str().to_ascii_lowercase()),
        ));
        last_end = start + value.len();
    }
    splice(text, spans)
}

/// `Bearer <token>` and `Basic <base64>` outside of a recognised header line. Basic
/// needs a value that decodes to `user:password`, so the English word "basic" stays.
fn scheme_tokens(text: &str) -> Cow<'_, str> {
    let mut spans = Vec::new();
    let mut pos = 0;
    while let Some(c) = SCHEME_RE.captures_at(text, pos) {
        let (Some(scheme), Some(tok)) = (c.get(1), c.get(2)) else {
            break;
        };
        let v = tok.as_str();
        let kind = if scheme.as_str().eq_ignore_ascii_case("basic") {
            decode_basic(v).map(|_| "basic_auth")
        } else {
            looks_like_token(v).then(|| kind_for(v, "bearer_token"))
        };
        match kind {
            Some(kind) => {
                spans.push((tok.start(), tok.end(), placeholder(kind)));
                pos = tok.end();
            }
            // "Bearer Bearer <token>": the rejected word may itself start the real match.
            None => pos = tok.start(),
        }
    }
    splice(text, spans)
}

/// Random tokens are long or mix character classes; "bearer of bad news" is neither.
fn looks_like_token(v: &str) -> bool {
    let classes = [
        v.bytes().any(|b| b.is_ascii_lowercase()),
        v.bytes().any(|b| b.is_ascii_uppercase()),
        v.bytes().any(|b| b.is_ascii_digit()),
        v.bytes().any(|b| !b.is_ascii_alphanumeric()),
    ];
    v.len() >= 8 && (v.len() >= 24 || classes.iter().filter(|c| **c).count() >= 2)
}

fn secret_key_kind(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if lower == "authorization" || lower == "proxy-authorization" {
        return Some("authorization");
    }
    if COOKIE_HEADERS.contains(&lower.as_str()) {
        return Some("cookie");
    }
    secret_name_kind(name)
}

fn quoted_kv(text: &str) -> Cow<'_, str> {
    let mut spans = Vec::new();
    for c in QUOTED_KV_RE.captures_iter(text) {
        let (Some(name), Some(val)) = (c.get(1), c.get(2).or_else(|| c.get(3))) else {
            continue;
        };
        let Some(kind) = secret_key_kind(name.as_str()) else {
            continue;
        };
        let v = val.as_str();
        if v.is_empty() || is_placeholder(v) {
            continue;
        }
        spans.push((val.start(), val.end(), placeholder(kind_for(v, kind))));
    }
    splice(text, spans)
}

fn url_passwords(text: &str) -> Cow<'_, str> {
    let mut spans = Vec::new();
    for c in URL_USERINFO_RE.captures_iter(text) {
        let Some(pw) = c.get(3) else { continue };
        if is_placeholder(pw.as_str()) {
            continue;
        }
        spans.push((pw.start(), pw.end(), placeholder("password")));
    }
    splice(text, spans)
}

fn kv(text: &str) -> Cow<'_, str> {
    let mut spans = Vec::new();
    let mut skip_until = 0;
    for c in KV_RE.captures_iter(text) {
        let (Some(all), Some(name)) = (c.get(0), c.get(1)) else {
            continue;
        };
        if all.start() < skip_until {
            continue;
        }
        let Some(kind) = secret_key_kind(name.as_str()) else {
            continue;
        };
        let (vs, ve, end) = value_span(text, all.end());
        let v = &text[vs..ve];
        if v.is_empty() || is_placeholder(v) || is_flag_value(v) {
            continue;
        }
        spans.push((vs, ve, placeholder(kind_for(v, kind))));
        skip_until = end;
    }
    splice(text, spans)
}

/// The value starting at `start`: inside its quotes if quoted (so the quotes
/// survive), else up to whitespace, a quote, '&' or '<'/'>'. Returns the value span
/// and where the value ends including any closing quote.
fn value_span(text: &str, start: usize) -> (usize, usize, usize) {
    let rest = &text[start..];
    match rest.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let body = &rest[1..];
            let mut escaped = false;
            for (i, ch) in body.char_indices() {
                if ch == '\n' {
                    break;
                }
                if q == '"' && ch == '\\' && !escaped {
                    escaped = true;
                    continue;
                }
                if ch == q && !escaped {
                    return (start + 1, start + 1 + i, start + 2 + i);
                }
                escaped = false;
            }
            // Unterminated quote: redact to the end of the line, quote excluded.
            let len = body.find('\n').unwrap_or(body.len());
            (start + 1, start + 1 + len, start + 1 + len)
        }
        _ => {
            let len = rest
                .find(|ch: char| ch.is_whitespace() || matches!(ch, '"' | '\'' | '&' | '<' | '>'))
                .unwrap_or(rest.len());
            (start, start + len, start + len)
        }
    }
}

/// Counts and booleans under secret-sounding names (`max_tokens=1024`) are not secret.
fn is_flag_value(v: &str) -> bool {
    v.bytes().all(|b| b.is_ascii_digit())
        || matches!(
            v.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "none" | "yes" | "no"
        )
}

/// The span inside the quotes of a quoted value, so the quotes survive redaction.
fn unquoted_span(v: &str, start: usize) -> (usize, usize) {
    let quoted = v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')));
    if quoted {
        (start + 1, start + v.len() - 1)
    } else {
        (start, start + v.len())
    }
}

fn flags(text: &str) -> Cow<'_, str> {
    let mut spans = Vec::new();
    for c in FLAG_RE.captures_iter(text) {
        let (Some(name), Some(val)) = (c.get(1), c.get(2)) else {
            continue;
        };
        let Some(kind) = secret_name_kind(name.as_str()) else {
            continue;
        };
        let (vs, ve) = unquoted_span(val.as_str(), val.start());
        let v = &text[vs..ve];
        if v.is_empty() || is_placeholder(v) || is_flag_value(v) {
            continue;
        }
        spans.push((vs, ve, placeholder(kind_for(v, kind))));
    }
    splice(text, spans)
}

fn tokens(text: &str) -> Cow<'_, str> {
    let mut spans: Vec<(usize, usize, String)> = find_tokens(text)
        .iter()
        .map(|t| (t.start, t.end, placeholder(t.kind)))
        .collect();
    for m in LOOSE_JWT_RE.find_iter(text) {
        spans.push((m.start(), m.end(), placeholder("jwt")));
    }
    if let Some(m) = TRUNCATED_RE.find(text) {
        if !preceded_by_word(text, m.start()) {
            spans.push((m.start(), m.end(), placeholder("truncated_token")));
        }
    }
    splice(text, merge(spans))
}

/// Sorts spans and folds overlapping ones into the first, so that two rules matching
/// the same token produce one placeholder.
fn merge(mut spans: Vec<(usize, usize, String)>) -> Vec<(usize, usize, String)> {
    spans.sort_by_key(|s| (s.0, std::cmp::Reverse(s.1)));
    let mut out: Vec<(usize, usize, String)> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if s.0 < last.1 => last.1 = last.1.max(s.1),
            _ => out.push(s),
        }
    }
    out
}
