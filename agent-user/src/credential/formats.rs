//! Secret formats that are recognisable by their value alone (vendor prefixes, JWTs),
//! plus URL userinfo, which every scanner and the redactor share.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use regex::Regex;

use super::jwt;
use super::{Credential, FleetKey, Source};

/// One alternation so that a value is scanned once, not once per vendor. Patterns
/// carry no boundaries (the regex crate has no look-around); [`find_tokens`] checks
/// the character before a match and each format's exact length instead.
static TOKEN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"sk-ant-[A-Za-z0-9_\-]{20,}",
        r"|sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{20,}",
        r"|sk-[A-Za-z0-9]{32,}",
        r"|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}",
        r"|(?:AKIA|ASIA)[A-Z0-9]{16,}",
        r"|gh[pousr]_[A-Za-z0-9]{30,}",
        r"|github_pat_[A-Za-z0-9_]{40,}",
        r"|gl(?:pat|dt|rt|ptt|ft|cbt|soat)-[A-Za-z0-9_\-]{20,}",
        r"|xox[abprs]-[A-Za-z0-9\-]{10,}",
        r"|AIza[A-Za-z0-9_\-]{35,}",
        r"|hf_[A-Za-z0-9]{30,}",
        r"|npm_[A-Za-z0-9]{36,}",
        r"|hv[sbr]\.[A-Za-z0-9_\-]{24,}",
        r"|s\.[A-Za-z0-9]{24,}",
        r"|eyJ[A-Za-z0-9_\-]{2,}={0,2}\.eyJ[A-Za-z0-9_\-]{2,}={0,2}\.[A-Za-z0-9_\-]*",
    ))
    .expect("token regex")
});

/// A recognised token inside some text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Token<'a> {
    pub kind: &'static str,
    pub value: &'a str,
    pub start: usize,
    pub end: usize,
    pub metadata: BTreeMap<String, String>,
}

/// Every well-formed token in `text`, in order.
pub(crate) fn find_tokens(text: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    for m in TOKEN_RE.find_iter(text) {
        // "task-…" or "files.…" must not read as "sk-…" or a Vault "s.…" token.
        if preceded_by_word(text, m.start()) {
            continue;
        }
        if let Some((kind, metadata)) = classify_match(m.as_str()) {
            out.push(Token {
                kind,
                value: m.as_str(),
                start: m.start(),
                end: m.end(),
                metadata,
            });
        }
    }
    out
}

/// Whether the character before `start` continues a word. An `\xNN` escape (see
/// `escape_bytes`) ends in hex digits but is a boundary: binary framing right before
/// a token must not hide it from redaction.
pub(crate) fn preceded_by_word(text: &str, start: usize) -> bool {
    let before = &text.as_bytes()[..start];
    let escaped = before.len() >= 4
        && before[before.len() - 4] == b'\\'
        && before[before.len() - 3] == b'x'
        && before[before.len() - 2..].iter().all(u8::is_ascii_hexdigit);
    !escaped && before.last().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// The token kind if the whole of `value` (surrounding whitespace and quotes aside)
/// is one recognised token.
pub(crate) fn classify_whole(value: &str) -> Option<Token<'_>> {
    let v = trim_value(value);
    let mut tokens = find_tokens(v);
    if tokens.len() == 1 && tokens[0].start == 0 && tokens[0].end == v.len() {
        tokens.pop()
    } else {
        None
    }
}

/// Strips whitespace and one layer of matching quotes, as shells and .env files write
/// values.
pub(crate) fn trim_value(value: &str) -> &str {
    let v = value.trim();
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].trim();
        }
    }
    v
}

fn classify_match(t: &str) -> Option<(&'static str, BTreeMap<String, String>)> {
    let mut meta = BTreeMap::new();
    let mut prefix = |p: &str| {
        meta.insert("prefix".to_string(), p.to_string());
    };
    let kind = if let Some(rest) = t.strip_prefix("sk-ant-") {
        // "sk-ant-api03-…": the key-type segment is public and tells admin keys apart.
        match rest.split_once('-') {
            Some((seg, _))
                if seg.len() <= 8
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) =>
            {
                prefix(&format!("sk-ant-{seg}"))
            }
            _ => prefix("sk-ant"),
        }
        if !looks_random(rest) {
            return None;
        }
        "anthropic_api_key"
    } else if let Some(rest) = t.strip_prefix("sk-") {
        let (p, body) = match rest.split_once('-') {
            Some((seg @ ("proj" | "svcacct" | "admin"), body)) => (seg, body),
            _ => ("", rest),
        };
        if !looks_random(body) {
            return None;
        }
        prefix(&if p.is_empty() {
            "sk".to_string()
        } else {
            format!("sk-{p}")
        });
        "openai_api_key"
    } else if t.starts_with("sk_") || t.starts_with("rk_") {
        prefix(&t[..t.find('_').map_or(0, |i| i + 1) + 4]);
        "stripe_key"
    } else if t.starts_with("AKIA") || t.starts_with("ASIA") {
        if t.len() != 20 {
            return None;
        }
        prefix(&t[..4]);
        meta.insert("key_id".to_string(), t.to_string());
        "aws_access_key"
    } else if t.starts_with("github_pat_") {
        prefix("github_pat_");
        "github_token"
    } else if t.starts_with("gh") {
        prefix(&t[..4]);
        "github_token"
    } else if t.starts_with("gl") {
        prefix(&t[..t.find('-')? + 1]);
        "gitlab_token"
    } else if t.starts_with("xox") {
        prefix(&t[..5]);
        "slack_token"
    } else if t.starts_with("AIza") {
        if t.len() != 39 {
            return None;
        }
        prefix("AIza");
        "google_api_key"
    } else if let Some(body) = t.strip_prefix("hf_") {
        if !looks_random(body) {
            return None;
        }
        prefix("hf_");
        "huggingface_token"
    } else if let Some(body) = t.strip_prefix("npm_") {
        if !looks_random(body) {
            return None;
        }
        prefix("npm_");
        "npm_token"
    } else if t.starts_with("hv") {
        prefix(&t[..4]);
        "vault_token"
    } else if let Some(body) = t.strip_prefix("s.") {
        // Legacy Vault service tokens are exactly 24 random characters; anything else
        // after "s." is far more likely to be code or prose.
        if body.len() != 24 || !looks_random(body) {
            return None;
        }
        prefix("s.");
        "vault_token"
    } else if t.starts_with("eyJ") {
        let claims = jwt::decode_jwt(t)?;
        meta.extend(jwt::claims_metadata(&claims));
        "jwt"
    } else {
        return None;
    };
    Some((kind, meta))
}

/// Random keys mix character classes; identifiers and prose that happen to follow a
/// vendor prefix ("sk-assessment-framework") usually do not.
fn looks_random(body: &str) -> bool {
    let lower = body.bytes().any(|b| b.is_ascii_lowercase());
    let upper = body.bytes().any(|b| b.is_ascii_uppercase());
    let digit = body.bytes().any(|b| b.is_ascii_digit());
    (lower as u8 + upper as u8 + digit as u8) >= 2
}

/// Builds the credential for a recognised token.
pub(crate) fn token_credential(
    tok: &Token<'_>,
    key: &FleetKey,
    source: Source,
    location: &str,
) -> Credential {
    let mut c = Credential::new(tok.kind, tok.value.as_bytes(), key, source, location);
    c.extend(&tok.metadata);
    c
}

/// A password that may itself be a vendor token (GitHub accepts `x-access-token:ghs_…`
/// as Basic auth); recording the vendor kind says more than "password".
pub(crate) fn password_credential(
    secret: &str,
    key: &FleetKey,
    source: Source,
    location: &str,
    fallback_kind: &str,
) -> Credential {
    match classify_whole(secret) {
        Some(tok) if tok.value.len() == secret.len() => {
            token_credential(&tok, key, source, location)
        }
        _ => Credential::new(fallback_kind, secret.as_bytes(), key, source, location),
    }
}

/// The parts of `scheme://user:password@host…`.
pub(crate) struct UrlUserinfo<'a> {
    pub scheme: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    pub host: &'a str,
}

/// The password runs to the last '@' before the host so that an unencoded '@' inside
/// it does not leave a tail of the password behind.
pub(crate) static URL_USERINFO_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"([A-Za-z][A-Za-z0-9+.\-]{0,30})://([^\s/:@"'<>\[\]]*):([^\s/"'<>]+)@([A-Za-z0-9.\-_]*|\[[0-9A-Fa-f:.]+\])"#,
    )
    .expect("url userinfo regex")
});

pub(crate) fn find_url_userinfo(text: &str) -> Vec<UrlUserinfo<'_>> {
    if !text.contains("://") {
        return Vec::new();
    }
    URL_USERINFO_RE
        .captures_iter(text)
        .filter_map(|c| {
            let pw = c.get(3)?;
            Some(UrlUserinfo {
                scheme: c.get(1)?.as_str(),
                username: c.get(2)?.as_str(),
                password: pw.as_str(),
                host: c.get(4)?.as_str(),
            })
        })
        .collect()
}

/// Credentials for every URL with a password in `text`. The decoded password is what
/// gets fingerprinted, so the same password typed elsewhere (a .netrc, a Basic header)
/// yields the same fingerprint.
pub(crate) fn url_credentials(
    text: &str,
    key: &FleetKey,
    source: Source,
    location: &str,
) -> Vec<Credential> {
    find_url_userinfo(text)
        .into_iter()
        .filter(|u| !u.password.is_empty())
        .map(|u| {
            let password = percent_decode(u.password);
            let mut c = password_credential(&password, key, source, location, "password");
            c.set("scheme", &u.scheme.to_ascii_lowercase());
            c.set("host", &u.host.to_ascii_lowercase());
            c.set("username", &percent_decode(u.username));
            c
        })
        .collect()
}

/// Percent-decoding, lossy on invalid UTF-8 (only used for usernames and for
/// passwords that are fingerprinted, never shown).
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes base64("user:password"); shared with Basic auth headers.
pub(crate) fn decode_basic(b64: &str) -> Option<(String, String)> {
    let bytes = B64_LENIENT.decode(b64.trim().as_bytes()).ok()?;
    let s = String::from_utf8(bytes).ok()?;
    let (user, pass) = s.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}
