//! Credentials in HTTP request headers seen in TLS plaintext.

use super::formats::{
    classify_whole, decode_basic, find_tokens, password_credential, token_credential, trim_value,
};
use super::jwt::{claims_metadata, decode_jwt};
use super::{Credential, FleetKey, Source, dedupe};

/// Headers whose whole value is a key, with the kind to use when the value has no
/// recognisable format.
const KEY_HEADERS: &[(&str, &str)] = &[
    ("x-api-key", "generic_secret"),
    ("api-key", "generic_secret"),
    ("apikey", "generic_secret"),
    ("x-goog-api-key", "google_api_key"),
    ("anthropic-api-key", "anthropic_api_key"),
    ("x-anthropic-api-key", "anthropic_api_key"),
    ("openai-api-key", "openai_api_key"),
    ("x-openai-api-key", "openai_api_key"),
    ("x-auth-token", "generic_secret"),
    ("x-access-token", "generic_secret"),
    ("x-vault-token", "vault_token"),
    ("private-token", "gitlab_token"),
    ("x-gitlab-token", "gitlab_token"),
    ("x-amz-security-token", "aws_session_token"),
];

pub(crate) const COOKIE_HEADERS: &[&str] = &["cookie", "set-cookie"];

pub fn scan_headers(headers: &[(String, String)], key: &FleetKey) -> Vec<Credential> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        match name.as_str() {
            "authorization" | "proxy-authorization" => {
                out.extend(authorization(value, key, &name));
            }
            n if COOKIE_HEADERS.contains(&n) => out.push(cookie(value, key, &name)),
            n => {
                if let Some((_, kind)) = KEY_HEADERS.iter().find(|(h, _)| *h == n) {
                    out.push(bare_token(value, kind, key, &name));
                } else {
                    // Any other header still gets the value-format scan: custom headers
                    // carrying vendor keys are common.
                    out.extend(
                        find_tokens(value)
                            .iter()
                            .map(|t| token_credential(t, key, Source::Header, &name)),
                    );
                }
            }
        }
    }
    dedupe(out)
}

fn authorization(value: &str, key: &FleetKey, location: &str) -> Vec<Credential> {
    let (scheme, param) = match value.split_once(char::is_whitespace) {
        Some((s, p)) => (s, p.trim()),
        None => ("", value),
    };
    let lower = scheme.to_ascii_lowercase();
    match lower.as_str() {
        "bearer" => vec![bearer(param, key, location)],
        "basic" => vec![basic(param, key, location)],
        "aws4-hmac-sha256" => aws_sigv4(param, key, location),
        _ => {
            // "token ghp_…", or a bare key with no scheme at all.
            let c = bare_token(param, "generic_secret", key, location);
            if scheme.is_empty() {
                vec![c]
            } else {
                vec![c.with("scheme", &lower)]
            }
        }
    }
}

fn bearer(token: &str, key: &FleetKey, location: &str) -> Credential {
    let mut c = bare_token(token, "bearer_token", key, location);
    if c.kind == "bearer_token" {
        if let Some(claims) = decode_jwt(token) {
            c.kind = "jwt".to_string();
            c.extend(&claims_metadata(&claims));
        }
    }
    c.with("scheme", "bearer")
}

/// The password is fingerprinted, not the base64 blob, so the same password matches
/// wherever else it is seen (URLs, .netrc, docker config).
fn basic(param: &str, key: &FleetKey, location: &str) -> Credential {
    match decode_basic(param) {
        Some((user, pass)) => password_credential(&pass, key, Source::Header, location, "password")
            .with("username", &user)
            .with("scheme", "basic"),
        None => Credential::new(
            "generic_secret",
            param.as_bytes(),
            key,
            Source::Header,
            location,
        )
        .with("scheme", "basic"),
    }
}

/// SigV4 requests carry only a per-request signature, which is not a reusable
/// secret; the access key id in the Credential scope is what identifies the key.
fn aws_sigv4(param: &str, key: &FleetKey, location: &str) -> Vec<Credential> {
    let key_id = param
        .split(',')
        .filter_map(|p| p.trim().strip_prefix("Credential="))
        .filter_map(|scope| scope.split('/').next())
        .next();
    match key_id {
        Some(id) if !id.is_empty() => {
            let mut c = Credential::new(
                "aws_access_key",
                id.as_bytes(),
                key,
                Source::Header,
                location,
            )
            .with("key_id", id)
            .with("scheme", "aws4-hmac-sha256");
            if id.len() >= 4 {
                c.set("prefix", id.get(..4).unwrap_or_default());
            }
            vec![c]
        }
        _ => Vec::new(),
    }
}

/// The value is one secret: its vendor kind if it has a known format, else `fallback`.
fn bare_token(value: &str, fallback: &str, key: &FleetKey, location: &str) -> Credential {
    let v = trim_value(value);
    match classify_whole(v) {
        Some(tok) => token_credential(&tok, key, Source::Header, location),
        None => Credential::new(fallback, v.as_bytes(), key, Source::Header, location),
    }
}

/// The whole cookie header is one credential (sessions are usually several cookies
/// together); the cookie names are kept since they say which service it is.
fn cookie(value: &str, key: &FleetKey, location: &str) -> Credential {
    let pairs: Vec<&str> = if location == "set-cookie" {
        value.split(';').take(1).collect()
    } else {
        value.split(';').collect()
    };
    let names: Vec<&str> = pairs
        .iter()
        .filter_map(|p| p.split_once('=').map(|(n, _)| n.trim()))
        .filter(|n| !n.is_empty())
        .collect();
    Credential::new("cookie", value.as_bytes(), key, Source::Header, location)
        .with("names", &names.join(","))
}
