//! Secrets in request targets (path and query of an HTTP request): redacted before the
//! target is put in any event, and fingerprinted as credentials the request used.
//!
//! Many APIs take their key in the URL: Gemini `?key=AIza…`, OAuth `access_token=`,
//! `api_key=`, and some put the whole secret in the path: Slack incoming webhooks
//! (`/services/T…/B…/<secret>`), Telegram bots (`/bot<id>:<secret>/…`), Discord
//! webhooks (`/api/webhooks/<id>/<secret>`). A target is redacted by parameter name
//! (whatever the value looks like), by those path shapes, and by any query value or
//! path segment that is a known token format; the rest of the target (which says what
//! was called) is kept as sent.

use super::formats::{classify_whole, percent_decode, token_credential};
use super::{Credential, FleetKey, Source};

/// Query parameters whose value is a reusable secret, with the kind used when the
/// value has no recognisable format of its own.
const SECRET_PARAMS: &[(&str, &str)] = &[
    ("key", "api_key"),
    ("api_key", "api_key"),
    ("apikey", "api_key"),
    ("api-key", "api_key"),
    ("x-goog-api-key", "google_api_key"),
    ("access_token", "bearer_token"),
    ("accesstoken", "bearer_token"),
    ("token", "bearer_token"),
    ("auth", "generic_secret"),
    ("auth_token", "bearer_token"),
    ("id_token", "bearer_token"),
    ("refresh_token", "refresh_token"),
    ("private_token", "gitlab_token"),
    ("client_secret", "client_secret"),
    ("secret", "generic_secret"),
    ("password", "password"),
    ("passwd", "password"),
    ("pwd", "password"),
    ("x-amz-security-token", "aws_session_token"),
    ("code", "oauth_code"),
];

/// Query parameters that carry a per-request signature: not reusable, so redacted
/// but not fingerprinted (as SigV4 `Authorization` signatures are not).
const SIGNATURE_PARAMS: &[&str] = &["sig", "signature", "x-amz-signature", "x-goog-signature"];

/// Where in the request a credential was seen (`Credential::location`).
const IN_QUERY: &str = "url-query";
const IN_PATH: &str = "url-path";

/// A request target with its secrets replaced by `[REDACTED:<kind>]`, and the
/// credentials found in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedactedTarget {
    pub target: String,
    pub credentials: Vec<Credential>,
}

/// Redacts the request target `target` (origin form, or an absolute URL); see the
/// module documentation.
pub fn redact_target(target: &str, key: &FleetKey) -> RedactedTarget {
    let (before_frag, fragment) = match target.split_once('#') {
        Some((a, f)) => (a, Some(f)),
        None => (target, None),
    };
    let (path, query) = match before_frag.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (before_frag, None),
    };
    let mut creds = Vec::new();
    let mut out = redact_path(path, key, &mut creds);
    if let Some(q) = query {
        out.push('?');
        out.push_str(&redact_query(q, key, &mut creds));
    }
    if let Some(f) = fragment {
        // Implicit-grant tokens travel in fragments (`#access_token=…`).
        out.push('#');
        out.push_str(&redact_query(f, key, &mut creds));
    }
    RedactedTarget {
        target: out,
        credentials: super::dedupe(creds),
    }
}

fn placeholder(kind: &str) -> String {
    format!("[REDACTED:{kind}]")
}

fn redact_query(query: &str, key: &FleetKey, creds: &mut Vec<Credential>) -> String {
    let mut parts = Vec::new();
    for pair in query.split('&') {
        let (name, value) = match pair.split_once('=') {
            Some((n, v)) => (n, v),
            None => {
                parts.push(pair.to_string());
                continue;
            }
        };
        let decoded_name = percent_decode(name).to_ascii_lowercase();
        let decoded = percent_decode(value);
        if value.is_empty() || value.starts_with("[REDACTED:") {
            parts.push(pair.to_string());
            continue;
        }
        let by_name = SECRET_PARAMS
            .iter()
            .find(|(n, _)| *n == decoded_name)
            .map(|(_, k)| *k);
        let kind = if let Some(tok) = classify_whole(&decoded) {
            creds.push(token_credential(&tok, key, Source::Header, IN_QUERY).with("param", name));
            Some(tok.kind)
        } else if let Some(k) = by_name {
            creds.push(
                Credential::new(k, decoded.as_bytes(), key, Source::Header, IN_QUERY)
                    .with("param", name),
            );
            Some(k)
        } else if SIGNATURE_PARAMS.contains(&decoded_name.as_str()) {
            Some("signature")
        } else {
            None
        };
        match kind {
            Some(k) => parts.push(format!("{name}={}", placeholder(k))),
            None => parts.push(pair.to_string()),
        }
    }
    parts.join("&")
}

fn redact_path(path: &str, key: &FleetKey, creds: &mut Vec<Credential>) -> String {
    let segs: Vec<&str> = path.split('/').collect();
    let mut out: Vec<String> = segs.iter().map(|s| s.to_string()).collect();
    let mut tokens = Vec::new();
    let mut found = |kind: &str, value: &str| {
        let decoded = percent_decode(value);
        creds.push(Credential::new(
            kind,
            decoded.as_bytes(),
            key,
            Source::Header,
            IN_PATH,
        ));
        placeholder(kind)
    };
    for i in 0..segs.len() {
        let s = segs[i];
        let next = |n: usize| segs.get(i + n).copied().unwrap_or_default();
        // Slack incoming webhook: /services/T<team>/B<bot>/<secret>.
        if s == "services"
            && slack_id(next(1), 'T')
            && slack_id(next(2), 'B')
            && next(3).len() >= 16
        {
            out[i + 3] = found("slack_webhook", next(3));
        }
        // Discord webhooks: /api/webhooks/<id>/<secret>.
        if s == "webhooks"
            && i > 0
            && segs[i - 1] == "api"
            && next(1).len() >= 5
            && next(1).bytes().all(|b| b.is_ascii_digit())
            && next(2).len() >= 16
        {
            out[i + 2] = found("discord_webhook", next(2));
        }
        // Telegram Bot API: /bot<id>:<secret>/<method> (also /file/bot…).
        if let Some(tok) = s.strip_prefix("bot").filter(|t| telegram_token(t)) {
            let id = tok.split(':').next().unwrap_or_default();
            out[i] = format!("bot{id}:{}", found("telegram_bot_token", tok));
            continue;
        }
        // Any segment that is a known token by itself (`/v1/keys/sk-…`).
        if out[i] == s && !s.is_empty() {
            let decoded = percent_decode(s);
            if let Some(tok) = classify_whole(&decoded) {
                tokens.push(token_credential(&tok, key, Source::Header, IN_PATH));
                out[i] = placeholder(tok.kind);
            }
        }
    }
    creds.extend(tokens);
    out.join("/")
}

/// `T0123ABCD` / `B0123ABCD`: Slack team and bot ids.
fn slack_id(s: &str, lead: char) -> bool {
    s.starts_with(lead)
        && s.len() >= 8
        && s.len() <= 16
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// `<digits>:<30+ chars of [A-Za-z0-9_-]>`: a Telegram bot token.
fn telegram_token(s: &str) -> bool {
    let Some((id, secret)) = s.split_once(':') else {
        return false;
    };
    id.len() >= 5
        && id.bytes().all(|b| b.is_ascii_digit())
        && secret.len() >= 30
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FleetKey {
        FleetKey::from_bytes([3; 32])
    }

    const GEMINI: &str = "AIzaSyD3m0Fake0Key0For0Tests0Only012345";

    #[test]
    fn query_secrets_are_redacted_by_name_and_by_format() {
        let t =
            format!("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key={GEMINI}");
        let r = redact_target(&t, &key());
        assert_eq!(
            r.target,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=[REDACTED:google_api_key]"
        );
        assert_eq!(r.credentials.len(), 1);
        assert_eq!(r.credentials[0].kind, "google_api_key");
        assert_eq!(
            r.credentials[0].fingerprint,
            key().fingerprint(GEMINI.as_bytes())
        );
        assert_eq!(r.credentials[0].location, "url-query");

        let r = redact_target(
            "/me?fields=id&access_token=EAAB0123456789abcdef&api_key=abc%2Fdef123&sig=00ff&page=2",
            &key(),
        );
        assert_eq!(
            r.target,
            "/me?fields=id&access_token=[REDACTED:bearer_token]&api_key=[REDACTED:api_key]&sig=[REDACTED:signature]&page=2"
        );
        let fps: Vec<_> = r
            .credentials
            .iter()
            .map(|c| c.fingerprint.clone())
            .collect();
        assert_eq!(
            fps,
            vec![
                key().fingerprint(b"EAAB0123456789abcdef"),
                // Percent-decoded before fingerprinting: the same key as elsewhere.
                key().fingerprint(b"abc/def123"),
            ]
        );
        // A token-shaped value under any name, and in a fragment.
        let r = redact_target(
            "/cb?state=xyz&q=ghp_0123456789abcdefghijABCDEFGHIJ0123#access_token=tok123456",
            &key(),
        );
        assert_eq!(
            r.target,
            "/cb?state=xyz&q=[REDACTED:github_token]#access_token=[REDACTED:bearer_token]"
        );
        // Nothing secret: unchanged, borrowed meaning intact.
        let plain = "/v1/messages?beta=true";
        assert_eq!(redact_target(plain, &key()).target, plain);
        assert!(redact_target(plain, &key()).credentials.is_empty());
    }

    #[test]
    fn secret_bearing_paths_are_redacted_by_shape() {
        let slack = "/services/T0ABCDEF12/B0ABCDEF34/abcdefABCDEF0123456789xy";
        let r = redact_target(slack, &key());
        assert_eq!(
            r.target,
            "/services/T0ABCDEF12/B0ABCDEF34/[REDACTED:slack_webhook]"
        );
        assert_eq!(
            r.credentials[0].fingerprint,
            key().fingerprint(b"abcdefABCDEF0123456789xy")
        );
        let tg = "/bot123456789:AAHfakeTelegramTokenForTests_0123456789/sendMessage";
        let r = redact_target(tg, &key());
        assert_eq!(
            r.target,
            "/bot123456789:[REDACTED:telegram_bot_token]/sendMessage"
        );
        assert_eq!(
            r.credentials[0].fingerprint,
            key().fingerprint(b"123456789:AAHfakeTelegramTokenForTests_0123456789")
        );
        let discord = "/api/webhooks/123456789012345678/abcdefghijklmnopqrstuvwxyz0123456789";
        assert_eq!(
            redact_target(discord, &key()).target,
            "/api/webhooks/123456789012345678/[REDACTED:discord_webhook]"
        );
        let seg = "/v1/keys/sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345/usage";
        assert_eq!(
            redact_target(seg, &key()).target,
            "/v1/keys/[REDACTED:anthropic_api_key]/usage"
        );
        // Look-alikes of the shapes without a secret stay.
        for ok in [
            "/services/health",
            "/bot/status",
            "/api/webhooks/abc",
            "/a//b/",
        ] {
            assert_eq!(redact_target(ok, &key()).target, ok);
        }
    }
}
