//! Secrets in process environments, recognised by variable name and by value format.
//! Also used for .env files, which are the same thing at rest.

use super::formats::{find_tokens, token_credential, trim_value, url_credentials};
use super::pem::private_key_credentials;
use super::{Credential, FleetKey, Source, dedupe};

/// Variables that never hold secrets and are present in nearly every process; skipping
/// them keeps the per-exec cost down (LS_COLORS alone can be kilobytes).
const IGNORED: &[&str] = &[
    "CUSTODY_AGENT",
    "PATH",
    "HOME",
    "PWD",
    "OLDPWD",
    "SHELL",
    "USER",
    "LOGNAME",
    "TERM",
    "LANG",
    "LANGUAGE",
    "DISPLAY",
    "HOSTNAME",
    "SHLVL",
    "MAIL",
    "EDITOR",
    "VISUAL",
    "PAGER",
    "TZ",
    "_",
    "LS_COLORS",
    "LD_LIBRARY_PATH",
    "MANPATH",
    "INFOPATH",
    "SSH_AUTH_SOCK",
    "SSH_CONNECTION",
    "SSH_CLIENT",
    "SSH_TTY",
    "DBUS_SESSION_BUS_ADDRESS",
    "TOKENIZERS_PARALLELISM",
];

const IGNORED_PREFIXES: &[&str] = &["LC_", "XDG_"];

/// Names whose value is a known kind of credential whatever it looks like.
const KNOWN_NAMES: &[(&str, &str)] = &[
    ("OPENAI_API_KEY", "openai_api_key"),
    ("ANTHROPIC_API_KEY", "anthropic_api_key"),
    ("AWS_ACCESS_KEY_ID", "aws_access_key"),
    ("AWS_SECRET_ACCESS_KEY", "aws_secret_key"),
    ("AWS_SESSION_TOKEN", "aws_session_token"),
    ("AWS_SECURITY_TOKEN", "aws_session_token"),
    ("GITHUB_TOKEN", "github_token"),
    ("GH_TOKEN", "github_token"),
    ("GH_ENTERPRISE_TOKEN", "github_token"),
    ("GITHUB_PAT", "github_token"),
    ("GITLAB_TOKEN", "gitlab_token"),
    ("GITLAB_PRIVATE_TOKEN", "gitlab_token"),
    ("CI_JOB_TOKEN", "gitlab_token"),
    ("SLACK_BOT_TOKEN", "slack_token"),
    ("SLACK_TOKEN", "slack_token"),
    ("SLACK_APP_TOKEN", "slack_token"),
    ("SLACK_USER_TOKEN", "slack_token"),
    ("GOOGLE_API_KEY", "google_api_key"),
    ("GEMINI_API_KEY", "google_api_key"),
    ("HF_TOKEN", "huggingface_token"),
    ("HUGGING_FACE_HUB_TOKEN", "huggingface_token"),
    ("HUGGINGFACE_TOKEN", "huggingface_token"),
    ("VAULT_TOKEN", "vault_token"),
];

/// Suffixes naming something about a secret (where it lives, what type it is) rather
/// than the secret: GOOGLE_APPLICATION_CREDENTIALS_FILE, TOKEN_URL, SECRET_NAME.
const COMPANION_SUFFIXES: &[&str] = &[
    "_FILE",
    "_FILES",
    "_PATH",
    "_DIR",
    "_SOCK",
    "_SOCKET",
    "_TYPE",
    "_URL",
    "_URI",
    "_ENDPOINT",
    "_HOST",
    "_PORT",
    "_USER",
    "_USERNAME",
    "_NAME",
    "_EXPIRY",
    "_EXPIRES_AT",
    "_TTL",
    "_LIMIT",
    "_COUNT",
    "_HEADER",
    "_ENABLED",
];

/// Minimum length for a value under a merely secret-sounding name; shorter values
/// are flags and counts far more often than secrets.
const GENERIC_MIN_LEN: usize = 8;

/// Parses an exec-time environment block (NUL-separated `KEY=VALUE`, possibly cut off
/// at the end) and returns one credential per distinct secret.
pub fn scan_env(env: &[u8], key: &FleetKey) -> Vec<Credential> {
    let mut out = Vec::new();
    let mut aws_key_id = None;
    for entry in env.split(|&b| b == 0) {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            // Includes the cut-off tail without '=': only a name fragment remains.
            continue;
        };
        let Ok(name) = std::str::from_utf8(&entry[..eq]) else {
            continue;
        };
        let value = &entry[eq + 1..];
        if name.eq_ignore_ascii_case("AWS_ACCESS_KEY_ID") {
            aws_key_id = std::str::from_utf8(value)
                .ok()
                .filter(|v| looks_like_key_id(v));
        }
        out.extend(scan_var(name, value, Source::Env, name, key));
    }
    link_aws_key_id(&mut out, aws_key_id);
    dedupe(out)
}

/// Credentials in one variable. `location` is the variable name for a live
/// environment and the file path for a .env file.
pub(crate) fn scan_var(
    name: &str,
    value: &[u8],
    source: Source,
    location: &str,
    key: &FleetKey,
) -> Vec<Credential> {
    let upper = name.trim().to_ascii_uppercase();
    if value.is_empty()
        || IGNORED.contains(&upper.as_str())
        || IGNORED_PREFIXES.iter().any(|p| upper.starts_with(p))
    {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(value);
    let mut out: Vec<Credential> = find_tokens(&text)
        .iter()
        .map(|t| token_credential(t, key, source, location))
        .collect();
    out.extend(private_key_credentials(&text, key, source, location));
    out.extend(url_credentials(&text, key, source, location));

    // A recognised format is more specific than the name, and fingerprinting the
    // whole value as well would only add a second record for the same secret.
    if out.is_empty() {
        let kind = KNOWN_NAMES
            .iter()
            .find(|(n, _)| *n == upper)
            .map(|(_, k)| *k)
            .or_else(|| {
                secret_name_kind(&upper).filter(|_| {
                    plausible_secret_value(&text, GENERIC_MIN_LEN)
                        && !(upper.contains("CREDENTIAL") && looks_like_path(&text))
                })
            })
            .or_else(|| key_named_random(&upper, &text).then_some("generic_secret"));
        if let Some(kind) = kind {
            if !trim_value(&text).is_empty() {
                let mut c = Credential::new(kind, value, key, source, location);
                if kind == "aws_access_key" && looks_like_key_id(&text) {
                    c.set("key_id", &text);
                }
                out.push(c);
            }
        }
    }
    if source != Source::Env {
        for c in &mut out {
            c.set("variable", name);
        }
    }
    out
}

/// The kind for a name that merely sounds secret (DB_PASSWORD, MY_API_KEY,
/// client.secret), or `None`. Shared with the redactor, hence the separator folding.
pub(crate) fn secret_name_kind(name: &str) -> Option<&'static str> {
    let n: String = name
        .chars()
        .map(|c| match c {
            '-' | '.' | ' ' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    // Tokenizer settings and token counts are the common false friends of "TOKEN".
    if COMPANION_SUFFIXES.iter().any(|s| n.ends_with(s))
        || IGNORED.contains(&n.as_str())
        || n.contains("TOKENIZER")
        || n.ends_with("TOKENS")
    {
        return None;
    }
    if n.contains("PASSWORD") || n.contains("PASSWD") || n.ends_with("_PASS") || n == "PASS" {
        return Some("password");
    }
    if n.contains("PRIVATE_KEY") || n.contains("PRIVATEKEY") {
        return Some("private_key");
    }
    const GENERIC: &[&str] = &[
        "API_KEY",
        "APIKEY",
        "SECRET",
        "TOKEN",
        "CREDENTIAL",
        "ACCESS_KEY",
        "AUTH_KEY",
        "SIGNING_KEY",
        "ENCRYPTION_KEY",
    ];
    GENERIC
        .iter()
        .any(|g| n.contains(g))
        .then_some("generic_secret")
}

/// `*_KEY` names hold secrets (signing, HMAC, delegation keys) as often as identifiers
/// (SORT_KEY, PRIMARY_KEY, CACHE_KEY): only a value shaped like key material counts —
/// letters of both cases and digits, or a long hex string — with no spaces.
fn key_named_random(name: &str, value: &str) -> bool {
    let v = trim_value(value);
    let classes = [
        v.bytes().any(|b| b.is_ascii_lowercase()),
        v.bytes().any(|b| b.is_ascii_uppercase()),
        v.bytes().any(|b| b.is_ascii_digit()),
    ];
    let hex = v.len() >= 32 && v.bytes().all(|b| b.is_ascii_hexdigit());
    (name.ends_with("_KEY") || name == "KEY")
        && v.len() >= 16
        && !v.contains(char::is_whitespace)
        && !looks_like_path(v)
        && (classes.iter().all(|c| *c) || hex)
}

/// False for values that are flags, counts or placeholders rather than secrets.
pub(crate) fn plausible_secret_value(value: &str, min_len: usize) -> bool {
    let v = trim_value(value);
    if v.len() < min_len.max(1) || v.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    !matches!(
        v.to_ascii_lowercase().as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "none" | "nil" | "undefined"
    )
}

fn looks_like_path(v: &str) -> bool {
    let v = trim_value(v);
    (v.starts_with('/') || v.starts_with("~/") || v.starts_with("./"))
        && !v.contains(char::is_whitespace)
}

pub(crate) fn looks_like_key_id(v: &str) -> bool {
    (16..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// A secret key is only useful to an investigator next to the id it belongs to, and
/// the id is not secret.
pub(crate) fn link_aws_key_id(creds: &mut [Credential], key_id: Option<&str>) {
    let Some(id) = key_id else { return };
    for c in creds.iter_mut() {
        if matches!(c.kind.as_str(), "aws_secret_key" | "aws_session_token")
            && !c.metadata.contains_key("key_id")
        {
            c.set("key_id", id);
        }
    }
}
