use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::super::{redact, redact_bytes};
use super::{fake, fake_key_id, fake_pem, make_jwt};

fn assert_gone(out: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!out.contains(s), "secret {s:?} survived in:\n{out}");
    }
}

fn assert_kept(out: &str, keep: &[&str]) {
    for k in keep {
        assert!(out.contains(k), "non-secret {k:?} lost in:\n{out}");
    }
}

#[test]
fn http_request_headers() {
    let jwt = make_jwt(&json!({"sub": "u"}));
    let basic = STANDARD.encode("user:pa55word");
    let text = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer {jwt}\r\n\
         Cookie: session=s3ss10n-value; theme=dark\r\nx-api-key: opaque-key-value\r\n\
         Proxy-Authorization: Basic {basic}\r\nContent-Type: application/json\r\n\r\n{{\"model\":\"m\"}}"
    );
    let out = redact(&text);
    assert_gone(
        &out,
        &[
            &jwt,
            "s3ss10n-value",
            "opaque-key-value",
            &basic,
            "theme=dark",
        ],
    );
    assert_kept(
        &out,
        &[
            "POST /v1/messages HTTP/1.1\r\n",
            "Host: api.example.com\r\n",
            "Authorization: [REDACTED:authorization]\r\n",
            "Cookie: [REDACTED:cookie]\r\n",
            "x-api-key: [REDACTED:x-api-key]\r\n",
            "Content-Type: application/json",
            "{\"model\":\"m\"}",
        ],
    );
}

#[test]
fn every_token_format_in_prose() {
    let tokens = [
        (fake("sk-", 48), "openai_api_key"),
        (fake("sk-proj-", 100), "openai_api_key"),
        (fake("sk-ant-api03-", 90), "anthropic_api_key"),
        (fake_key_id("AKIA"), "aws_access_key"),
        (fake_key_id("ASIA"), "aws_access_key"),
        (fake("ghp_", 36), "github_token"),
        (fake("ghs_", 36), "github_token"),
        (fake("github_pat_", 82), "github_token"),
        (fake("glpat-", 20), "gitlab_token"),
        (fake("xoxb-", 40), "slack_token"),
        (fake("xoxa-", 40), "slack_token"),
        (fake("AIza", 35), "google_api_key"),
        (fake("hf_", 34), "huggingface_token"),
        (fake("hvs.", 90), "vault_token"),
        (fake("s.", 24), "vault_token"),
        (make_jwt(&json!({"sub": "x"})), "jwt"),
    ];
    for (tok, kind) in &tokens {
        let text = format!("the value ({tok}) was printed, then \"{tok}\" again; end");
        let out = redact(&text);
        assert_gone(&out, &[tok]);
        assert_eq!(
            out,
            format!(
                "the value ([REDACTED:{kind}]) was printed, then \"[REDACTED:{kind}]\" again; end"
            )
        );
    }
}

#[test]
fn json_secret_keys() {
    let body = json!({
        "password": "pw-value-1",
        "apiKey": "api-value-2",
        "api_key": "api-value-3",
        "access_token": "at-value-4",
        "refresh_token": "rt-value-5",
        "client_secret": "cs-value-6",
        "secret": "s-value-7",
        "token": "t-value-8",
        "nested": {"db_password": "pw \\\"quoted\\\" value-9"},
        "model": "gpt-4o",
        "max_tokens": 1024,
        "token_type": "Bearer",
        "user": "alice"
    })
    .to_string();
    let out = redact(&body);
    assert_gone(
        &out,
        &[
            "pw-value-1",
            "api-value-2",
            "api-value-3",
            "at-value-4",
            "rt-value-5",
            "cs-value-6",
            "s-value-7",
            "t-value-8",
            "value-9",
        ],
    );
    assert_kept(
        &out,
        &[
            "\"model\":\"gpt-4o\"",
            "\"max_tokens\":1024",
            "\"token_type\":\"Bearer\"",
            "\"user\":\"alice\"",
        ],
    );
    assert!(
        out.contains("\"password\":\"[REDACTED:password]\""),
        "{out}"
    );
    // Still valid JSON.
    serde_json::from_str::<serde_json::Value>(&out).expect("valid json");
    let py = "{'password': 'py-secret-1', 'name': 'bob'}";
    let out = redact(py);
    assert_gone(&out, &["py-secret-1"]);
    assert_kept(&out, &["'name': 'bob'"]);
}

#[test]
fn url_userinfo_passwords() {
    let text = "connect postgres://admin:S3cret%2Fpw@db.internal:5432/app and redis://:r3dis-pw@cache:6379 now";
    let out = redact(text);
    assert_gone(&out, &["S3cret%2Fpw", "r3dis-pw"]);
    assert_kept(
        &out,
        &[
            "postgres://admin:",
            "@db.internal:5432/app",
            "redis://:",
            "@cache:6379 now",
        ],
    );
}

#[test]
fn pem_blocks_complete_and_truncated() {
    let pem = fake_pem("RSA ");
    let out = redact(&format!("key:\n{pem}after"));
    assert_gone(&out, &["RkFLRS1LRVk", "BEGIN RSA PRIVATE KEY"]);
    assert_kept(&out, &["[REDACTED:private_key]", "after"]);
    let cut = &pem[..pem.len() / 2];
    let out = redact(&format!("excerpt: {cut}"));
    assert_gone(&out, &["RkFLRS1LRVk"]);
    // JSON-escaped newlines, as in a gcloud key file.
    let escaped = json!({"private_key": pem, "type": "service_account"}).to_string();
    let out = redact(&escaped);
    assert_gone(&out, &["RkFLRS1LRVk"]);
    assert_kept(&out, &["\"type\":\"service_account\""]);
}

#[test]
fn key_value_pairs_and_argv() {
    let secret = fake("", 40);
    let text = format!(
        "AWS_SECRET_ACCESS_KEY={secret}\nDB_PASSWORD=\"quoted pw\"\nHOME=/root\nMAX_TOKENS=4096\n\
         GET /cb?code=abc&access_token=tok-123&state=xyz\npassword: yaml-pw\n"
    );
    let out = redact(&text);
    assert_gone(&out, &[&secret, "quoted pw", "tok-123", "yaml-pw"]);
    assert_kept(
        &out,
        &[
            "HOME=/root",
            "MAX_TOKENS=4096",
            "code=abc&",
            "&state=xyz",
            "DB_PASSWORD=\"[REDACTED:password]\"",
        ],
    );

    let argv =
        "curl -s -H \"Authorization: Bearer opaque-tok-123\" https://api.example.com/v1 --data x";
    let out = redact(argv);
    assert_gone(&out, &["opaque-tok-123"]);
    assert_kept(
        &out,
        &[
            "curl -s -H \"Authorization: ",
            "\" https://api.example.com/v1 --data x",
        ],
    );

    let argv = "mysql --password hunter22 -h db.internal --api-key=k3y-value app";
    let out = redact(argv);
    assert_gone(&out, &["hunter22", "k3y-value"]);
    assert_kept(
        &out,
        &["mysql --password ", " -h db.internal --api-key=", " app"],
    );
}

#[test]
fn plain_text_is_untouched() {
    for s in [
        "",
        "The quick brown fox jumps over the lazy dog.",
        "Use basic authentication, the bearer of this letter knows.",
        "risk-assessment-framework-v2 lives in files.abcdefghijklmnopqrstuvwx",
        "GET /index.html HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
        "{\"model\":\"claude\",\"max_tokens\":100,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        "PATH=/usr/bin:/bin HOME=/root",
        "ünïcödé ✓ text",
    ] {
        assert_eq!(redact(s), s);
    }
}

#[test]
fn truncated_token_at_end_of_excerpt() {
    let tok = fake("ghp_", 36);
    let cut = &tok[..16];
    let out = redact(&format!("header value {cut}"));
    assert_gone(&out, &[cut]);
    assert_kept(&out, &["header value "]);
}

#[test]
fn idempotent_on_a_corpus() {
    let jwt = make_jwt(&json!({"sub": "x"}));
    let corpus = [
        format!("Authorization: Bearer {jwt}\nCookie: a=b"),
        format!("password=[REDACTED:password], token: {}", fake("ghp_", 36)),
        "https://token:abc@host/x?password=p&secret='q r'".to_string(),
        format!("{}\n{}", fake_pem(""), fake_pem("OPENSSH ")),
        "\"authorization\": \"Bearer abc.def-123\"".to_string(),
        format!("api_key={}", fake("sk-", 48)),
        "x-api-key:\nset-cookie: id=1; Path=/".to_string(),
        "[REDACTED:x] [REDACTED:] [REDACTED:authorization]y".to_string(),
    ];
    for text in &corpus {
        let once = redact(text);
        assert_eq!(redact(&once), once, "input: {text:?}");
    }
}

#[test]
fn redact_bytes_escapes_invalid_utf8() {
    let tok = fake("ghp_", 36);
    let mut data = b"\xff\xfebinary ".to_vec();
    data.extend_from_slice(tok.as_bytes());
    data.extend_from_slice(b" tail \\x41 \xc3");
    let out = redact_bytes(&data);
    assert_gone(&out, &[&tok]);
    assert_eq!(
        out,
        "\\xff\\xfebinary [REDACTED:github_token] tail \\\\x41 \\xc3"
    );
}

#[test]
fn repeated_scheme_word_does_not_hide_the_token() {
    let out = redact("note: Bearer Bearer opaque-Tok3n-value here");
    assert_gone(&out, &["opaque-Tok3n-value"]);
    assert_kept(&out, &["note: Bearer Bearer ", " here"]);
}

#[test]
fn binary_bytes_glued_to_secrets_do_not_hide_them() {
    let tok = fake("ghp_", 36);
    let mut data = b"\x00\x8f".to_vec();
    data.extend_from_slice(tok.as_bytes());
    data.extend_from_slice(
        b"\x9fCookie: sid=c00kie-value\r\n\xa0Authorization: Bearer opaque-value-1\r\n",
    );
    let out = redact_bytes(&data);
    assert_gone(&out, &[&tok, "c00kie-value", "opaque-value-1"]);
    assert!(
        out.starts_with("\0\\x8f[REDACTED:github_token]\\x9fCookie: "),
        "{out}"
    );
}
