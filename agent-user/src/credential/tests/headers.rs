use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::super::{Source, scan_headers};
use super::{fake, fake_key_id, key, make_jwt, meta};

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn bearer_jwt_has_claims() {
    let t = make_jwt(&json!({
        "iss": "https://idp.example", "sub": "u1", "aud": "api",
        "act": {"sub": "agent-a", "act": {"sub": "agent-b"}}
    }));
    let creds = scan_headers(&h(&[("Authorization", &format!("Bearer {t}"))]), &key());
    assert_eq!(creds.len(), 1);
    let c = &creds[0];
    assert_eq!(c.kind, "jwt");
    assert_eq!(c.source, Source::Header);
    assert_eq!(c.location, "authorization");
    assert_eq!(c.fingerprint, key().fingerprint(t.as_bytes()));
    assert_eq!(meta(c, "sub"), Some("u1"));
    assert_eq!(meta(c, "act"), Some("agent-a,agent-b"));
}

#[test]
fn bearer_vendor_and_opaque_tokens() {
    let oa = fake("sk-proj-", 100);
    let creds = scan_headers(&h(&[("authorization", &format!("Bearer {oa}"))]), &key());
    assert_eq!(creds[0].kind, "openai_api_key");
    assert_eq!(meta(&creds[0], "prefix"), Some("sk-proj"));
    assert_eq!(creds[0].fingerprint, key().fingerprint(oa.as_bytes()));

    let creds = scan_headers(
        &h(&[("AUTHORIZATION", "bearer some-opaque-session-id")]),
        &key(),
    );
    assert_eq!(creds[0].kind, "bearer_token");
    assert_eq!(
        creds[0].fingerprint,
        key().fingerprint(b"some-opaque-session-id")
    );

    let gh = fake("gho_", 36);
    let creds = scan_headers(&h(&[("Authorization", &format!("token {gh}"))]), &key());
    assert_eq!(creds[0].kind, "github_token");
    assert_eq!(meta(&creds[0], "scheme"), Some("token"));
}

#[test]
fn basic_auth_fingerprints_the_password() {
    let v = format!("Basic {}", STANDARD.encode("alice:open-sesame"));
    let creds = scan_headers(
        &h(&[
            ("Authorization", &v),
            ("Proxy-Authorization", &v.replace("alice", "proxyuser")),
        ]),
        &key(),
    );
    assert_eq!(creds.len(), 1, "same password, deduped: {creds:#?}");
    assert_eq!(creds[0].kind, "password");
    assert_eq!(creds[0].fingerprint, key().fingerprint(b"open-sesame"));
    assert_eq!(meta(&creds[0], "username"), Some("alice"));

    let v = format!("Basic {}", STANDARD.encode("bob:other-pw"));
    let creds = scan_headers(&h(&[("Proxy-Authorization", &v)]), &key());
    assert_eq!(creds[0].location, "proxy-authorization");
    assert_eq!(meta(&creds[0], "username"), Some("bob"));
}

#[test]
fn api_key_headers() {
    let ant = fake("sk-ant-api03-", 90);
    let goog = fake("AIza", 35);
    let creds = scan_headers(
        &h(&[
            ("X-Api-Key", &ant),
            ("x-goog-api-key", &goog),
            ("api-key", "azure-style-opaque-key"),
            ("X-Auth-Token", "opaque-auth-token-1"),
            ("X-Vault-Token", "opaque-vault-token"),
        ]),
        &key(),
    );
    let kinds: Vec<(&str, &str)> = creds
        .iter()
        .map(|c| (c.location.as_str(), c.kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("x-api-key", "anthropic_api_key"),
            ("x-goog-api-key", "google_api_key"),
            ("api-key", "generic_secret"),
            ("x-auth-token", "generic_secret"),
            ("x-vault-token", "vault_token"),
        ]
    );
}

#[test]
fn cookie_is_one_credential_with_names() {
    let v = "session=abc123; csrftoken=def456; theme=dark";
    let creds = scan_headers(&h(&[("Cookie", v)]), &key());
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].kind, "cookie");
    assert_eq!(creds[0].fingerprint, key().fingerprint(v.as_bytes()));
    assert_eq!(meta(&creds[0], "names"), Some("session,csrftoken,theme"));
}

#[test]
fn sigv4_records_the_access_key_id() {
    let id = fake_key_id("AKIA");
    let v = format!(
        "AWS4-HMAC-SHA256 Credential={id}/20250101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=0123abcd"
    );
    let creds = scan_headers(&h(&[("Authorization", &v)]), &key());
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].kind, "aws_access_key");
    assert_eq!(meta(&creds[0], "key_id"), Some(id.as_str()));
}

#[test]
fn other_headers_only_by_format() {
    let gh = fake("ghp_", 36);
    let creds = scan_headers(
        &h(&[
            ("Content-Type", "application/json"),
            ("User-Agent", "curl/8.0"),
            ("Host", "api.example.com"),
            ("X-Custom", &format!("prefix {gh}")),
            ("Authorization", ""),
        ]),
        &key(),
    );
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].kind, "github_token");
    assert_eq!(creds[0].location, "x-custom");
}
