//! Bounded, seeded random inputs: nothing may panic, redaction must stay idempotent
//! and must remove a planted token wherever it lands.

use serde_json::json;

use super::super::{
    credential_file_kind, decode_jwt, escape_bytes, redact, redact_bytes, scan_env, scan_file,
    scan_headers, unescape_bytes,
};
use super::{Rng, fake, fake_key_id, fake_pem, key, make_jwt};

/// Fragments that steer random input towards the parsers' interesting paths.
const FRAGMENTS: &[&str] = &[
    "=",
    ":",
    "\"",
    "'",
    "\n",
    "\r\n",
    " ",
    "\0",
    "\\",
    "\\x",
    "@",
    "://",
    "/",
    "&",
    "#",
    "password",
    "token",
    "api_key",
    "Authorization: ",
    "Bearer ",
    "Basic ",
    "Cookie: ",
    "sk-",
    "ghp_",
    "eyJ",
    "AKIA",
    "s.",
    "hvs.",
    "-----BEGIN PRIVATE KEY-----",
    "-----END PRIVATE KEY-----",
    "machine ",
    "login ",
    "users:\n- name: ",
    "  token: ",
    "[default]\n",
    "aws_secret_access_key=",
    "{\"auths\":{",
    "\"auth\":\"",
    "export ",
    "[REDACTED:",
    "]",
    "{",
    "}",
    "https://u:p@h",
];

fn random_input(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(24) {
        if rng.below(2) == 0 {
            out.extend_from_slice(FRAGMENTS[rng.below(FRAGMENTS.len())].as_bytes());
        } else {
            out.extend(rng.bytes(8));
        }
    }
    out
}

#[test]
fn nothing_panics_and_redaction_is_idempotent() {
    let mut rng = Rng::new(0xC0FFEE);
    let k = key();
    let paths = [
        "/root/.aws/credentials",
        "/root/.kube/config",
        "/root/.netrc",
        "/root/.git-credentials",
        "/root/.docker/config.json",
        "/root/.config/gcloud/application_default_credentials.json",
        "/app/.env",
        "/run/secrets/kubernetes.io/serviceaccount/token",
        "/root/.ssh/id_rsa",
        "/tmp/other",
    ];
    for i in 0..1500 {
        let data = random_input(&mut rng);
        let text = String::from_utf8_lossy(&data);

        let _ = scan_env(&data, &k);
        let _ = scan_file(paths[i % paths.len()], &data, &k);
        let _ = credential_file_kind(&text);
        let _ = decode_jwt(&text);
        let hv = text
            .split_once(':')
            .map_or(text.to_string(), |(_, v)| v.to_string());
        let _ = scan_headers(
            &[
                ("Authorization".into(), hv.clone()),
                ("Cookie".into(), hv.clone()),
                ("x-api-key".into(), hv.clone()),
                ("X-Other".into(), text.to_string()),
            ],
            &k,
        );

        let escaped = escape_bytes(&data);
        assert_eq!(unescape_bytes(&escaped), data);

        let once = redact_bytes(&data);
        assert_eq!(redact(&once), once, "not idempotent for {data:?}");
        let once = redact(&text);
        assert_eq!(redact(&once), once, "not idempotent for {text:?}");
    }
}

#[test]
fn planted_tokens_never_survive() {
    let secrets = [
        fake("sk-proj-", 90),
        fake("sk-ant-api03-", 90),
        fake("ghp_", 36),
        fake("github_pat_", 82),
        fake("glpat-", 20),
        fake("xoxb-", 30),
        fake("AIza", 35),
        fake("hf_", 34),
        fake("hvs.", 60),
        fake_key_id("ASIA"),
        make_jwt(&json!({"sub": "planted", "act": {"sub": "a"}})),
    ];
    let mut rng = Rng::new(42);
    for i in 0..600 {
        let secret = &secrets[i % secrets.len()];
        let mut data = random_input(&mut rng);
        data.push(b' ');
        data.extend_from_slice(secret.as_bytes());
        data.push(b' ');
        data.extend(random_input(&mut rng));
        let out = redact_bytes(&data);
        assert!(
            !out.contains(secret.as_str()),
            "{secret} survived in {out:?}"
        );
    }
}

#[test]
fn pem_and_large_inputs_stay_bounded() {
    // A long line of separators must not make redaction quadratic in practice.
    let long = "a:".repeat(50_000) + &"cookie:\"".repeat(10_000);
    let start = std::time::Instant::now();
    let out = redact(&long);
    assert_eq!(redact(&out), out);
    let pem = fake_pem("").repeat(200);
    assert!(!redact(&pem).contains("RkFLRS1LRVk"));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}
