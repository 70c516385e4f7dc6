use serde_json::json;

use super::super::{Source, scan_env};
use super::{env_block, fake, fake_key_id, find, key, make_jwt, meta};

/// A value with no recognisable format, so only the name can classify it.
const OPAQUE: &str = "opaque-value-0123456789";

#[test]
fn known_names_give_their_kind() {
    let table = [
        ("OPENAI_API_KEY", "openai_api_key"),
        ("ANTHROPIC_API_KEY", "anthropic_api_key"),
        ("AWS_ACCESS_KEY_ID", "aws_access_key"),
        ("AWS_SECRET_ACCESS_KEY", "aws_secret_key"),
        ("AWS_SESSION_TOKEN", "aws_session_token"),
        ("GITHUB_TOKEN", "github_token"),
        ("GH_TOKEN", "github_token"),
        ("GITLAB_TOKEN", "gitlab_token"),
        ("SLACK_BOT_TOKEN", "slack_token"),
        ("GOOGLE_API_KEY", "google_api_key"),
        ("GEMINI_API_KEY", "google_api_key"),
        ("HF_TOKEN", "huggingface_token"),
        ("HUGGING_FACE_HUB_TOKEN", "huggingface_token"),
        ("VAULT_TOKEN", "vault_token"),
    ];
    let k = key();
    for (name, kind) in table {
        let value = format!("{OPAQUE}-{name}");
        let creds = scan_env(&env_block(&[(name, &value)]), &k);
        assert_eq!(creds.len(), 1, "{name}: {creds:?}");
        let c = &creds[0];
        assert_eq!(c.kind, kind, "{name}");
        assert_eq!(c.location, name);
        assert_eq!(c.source, Source::Env);
        assert_eq!(c.fingerprint, k.fingerprint(value.as_bytes()));
        assert!(
            !c.metadata.values().any(|v| v.contains(OPAQUE)),
            "secret leaked into metadata: {c:?}"
        );
    }
}

#[test]
fn value_formats_are_detected_under_any_name() {
    let jwt = make_jwt(&json!({"iss": "https://idp.example", "sub": "svc"}));
    let table: Vec<(String, &str, Option<&str>)> = vec![
        (fake("sk-", 48), "openai_api_key", Some("sk")),
        (fake("sk-proj-", 80), "openai_api_key", Some("sk-proj")),
        (
            fake("sk-ant-api03-", 90),
            "anthropic_api_key",
            Some("sk-ant-api03"),
        ),
        (fake_key_id("AKIA"), "aws_access_key", Some("AKIA")),
        (fake_key_id("ASIA"), "aws_access_key", Some("ASIA")),
        (fake("ghp_", 36), "github_token", Some("ghp_")),
        (fake("gho_", 36), "github_token", Some("gho_")),
        (fake("ghu_", 36), "github_token", Some("ghu_")),
        (fake("ghs_", 36), "github_token", Some("ghs_")),
        (fake("ghr_", 36), "github_token", Some("ghr_")),
        (fake("github_pat_", 82), "github_token", Some("github_pat_")),
        (fake("glpat-", 20), "gitlab_token", Some("glpat-")),
        (fake("xoxb-", 40), "slack_token", Some("xoxb-")),
        (fake("xoxp-", 40), "slack_token", Some("xoxp-")),
        (fake("AIza", 35), "google_api_key", Some("AIza")),
        (fake("hf_", 34), "huggingface_token", Some("hf_")),
        (fake("hvs.", 90), "vault_token", Some("hvs.")),
        (fake("hvb.", 90), "vault_token", Some("hvb.")),
        (fake("s.", 24), "vault_token", Some("s.")),
        (jwt, "jwt", None),
    ];
    let k = key();
    for (value, kind, prefix) in table {
        let creds = scan_env(&env_block(&[("SOME_SETTING", &value)]), &k);
        assert_eq!(creds.len(), 1, "{value}: {creds:?}");
        let c = &creds[0];
        assert_eq!(c.kind, kind, "{value}");
        assert_eq!(meta(c, "prefix"), prefix, "{value}");
        assert_eq!(c.fingerprint, k.fingerprint(value.as_bytes()));
    }
}

#[test]
fn format_beats_name_and_is_found_inside_longer_values() {
    let ant = fake("sk-ant-api03-", 90);
    let gh = fake("ghp_", 36);
    let wrapped = format!("Bearer {gh}");
    let creds = scan_env(
        &env_block(&[("OPENAI_API_KEY", &ant), ("EXTRA_HEADER", &wrapped)]),
        &key(),
    );
    assert_eq!(find(&creds, "OPENAI_API_KEY").kind, "anthropic_api_key");
    let c = find(&creds, "EXTRA_HEADER");
    assert_eq!(c.kind, "github_token");
    assert_eq!(c.fingerprint, key().fingerprint(gh.as_bytes()));
    assert_eq!(creds.len(), 2);
}

#[test]
fn aws_pair_links_key_id() {
    let id = fake_key_id("AKIA");
    let secret = fake("", 40);
    let session = fake("", 300);
    let creds = scan_env(
        &env_block(&[
            ("AWS_SECRET_ACCESS_KEY", &secret),
            ("AWS_ACCESS_KEY_ID", &id),
            ("AWS_SESSION_TOKEN", &session),
        ]),
        &key(),
    );
    assert_eq!(creds.len(), 3, "{creds:#?}");
    let access = find(&creds, "AWS_ACCESS_KEY_ID");
    assert_eq!(access.kind, "aws_access_key");
    assert_eq!(meta(access, "key_id"), Some(id.as_str()));
    let sk = find(&creds, "AWS_SECRET_ACCESS_KEY");
    assert_eq!(sk.kind, "aws_secret_key");
    assert_eq!(meta(sk, "key_id"), Some(id.as_str()));
    assert_eq!(sk.fingerprint, key().fingerprint(secret.as_bytes()));
    assert_eq!(
        meta(find(&creds, "AWS_SESSION_TOKEN"), "key_id"),
        Some(id.as_str())
    );
}

#[test]
fn jwt_claims_and_act_chain_become_metadata() {
    let t = make_jwt(&json!({
        "iss": "https://idp.example",
        "sub": "user@example.com",
        "aud": ["a", "b"],
        "exp": 2_000_000_000u64,
        "scp": ["repo", "read:org"],
        "act": {"sub": "agent-x", "act": {"sub": "agent-y"}}
    }));
    let creds = scan_env(&env_block(&[("ID_TOKEN", &t)]), &key());
    assert_eq!(creds.len(), 1);
    let c = &creds[0];
    assert_eq!(c.kind, "jwt");
    assert_eq!(meta(c, "iss"), Some("https://idp.example"));
    assert_eq!(meta(c, "sub"), Some("user@example.com"));
    assert_eq!(meta(c, "aud"), Some("a,b"));
    assert_eq!(meta(c, "exp"), Some("2000000000"));
    assert_eq!(meta(c, "scope"), Some("repo read:org"));
    assert_eq!(meta(c, "act"), Some("agent-x,agent-y"));
}

#[test]
fn generic_names_need_plausible_values() {
    let creds = scan_env(
        &env_block(&[
            ("DB_PASSWORD", "correct-horse-battery"),
            ("MY_SERVICE_API_KEY", "abcdefgh12345"),
            ("APP_SECRET", "s3cr3t-v4lue"),
            ("REDIS_PASSWD", "passwd-value-1"),
            ("SIGNING_PRIVATE_KEY", "not-pem-but-long"),
            ("SOME_CREDENTIAL", "credential-value"),
            ("SHORT_TOKEN", "abc1234"),
            ("MAX_TOKENS", "4096000000"),
            ("TOKENIZERS_PARALLELISM", "false"),
            ("FEATURE_SECRET_ENABLED", "truefalse"),
            ("GOOGLE_APPLICATION_CREDENTIALS", "/etc/gcp/sa.json"),
            ("VAULT_TOKEN_FILE", "/run/vault/token-file"),
            ("EMPTY_TOKEN", ""),
        ]),
        &key(),
    );
    let mut got: Vec<(&str, &str)> = creds
        .iter()
        .map(|c| (c.location.as_str(), c.kind.as_str()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("APP_SECRET", "generic_secret"),
            ("DB_PASSWORD", "password"),
            ("MY_SERVICE_API_KEY", "generic_secret"),
            ("REDIS_PASSWD", "password"),
            ("SIGNING_PRIVATE_KEY", "private_key"),
            ("SOME_CREDENTIAL", "generic_secret"),
        ]
    );
}

#[test]
fn database_url_fingerprints_only_the_password() {
    let creds = scan_env(
        &env_block(&[
            (
                "DATABASE_URL",
                "postgres://app_user:p%40ss-w0rd@db.internal:5432/app",
            ),
            ("ANALYTICS_DSN", "mysql://reader:another-pw@10.0.0.5/stats"),
            ("PLAIN_URL", "https://example.com/no/password"),
        ]),
        &key(),
    );
    assert_eq!(creds.len(), 2, "{creds:#?}");
    let db = find(&creds, "DATABASE_URL");
    assert_eq!(db.kind, "password");
    assert_eq!(db.fingerprint, key().fingerprint(b"p@ss-w0rd"));
    assert_eq!(meta(db, "host"), Some("db.internal"));
    assert_eq!(meta(db, "username"), Some("app_user"));
    assert_eq!(meta(db, "scheme"), Some("postgres"));
    let dsn = find(&creds, "ANALYTICS_DSN");
    assert_eq!(dsn.fingerprint, key().fingerprint(b"another-pw"));
    assert_eq!(meta(dsn, "host"), Some("10.0.0.5"));
}

#[test]
fn ignores_non_secrets() {
    let gh = fake("ghp_", 36);
    let creds = scan_env(
        &env_block(&[
            ("PATH", "/usr/local/bin:/usr/bin"),
            ("HOME", "/root"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C.UTF-8"),
            ("CUSTODY_AGENT", &gh),
            ("TERM", "xterm-256color"),
            ("EDITOR", "vim"),
            (
                "NOTES",
                "risk-assessment-framework-v2-final-draft and files.abcdefghijklmnopqrstuvwx",
            ),
            ("CHAT_MODEL", "claude-sonnet-4-5"),
        ]),
        &key(),
    );
    assert!(creds.is_empty(), "{creds:#?}");
}

#[test]
fn dedupes_by_fingerprint_keeping_first_location() {
    let gh = fake("ghp_", 36);
    let creds = scan_env(
        &env_block(&[("GH_TOKEN", &gh), ("GITHUB_TOKEN", &gh)]),
        &key(),
    );
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].location, "GH_TOKEN");
}

#[test]
fn truncated_block_handling() {
    let gh = fake("ghp_", 36);
    let mut block = env_block(&[("GITHUB_TOKEN", &gh)]);
    block.extend_from_slice(b"OPENAI_API_K"); // cut off inside the name: ignored
    assert_eq!(scan_env(&block, &key()).len(), 1);

    let mut block = env_block(&[("GITHUB_TOKEN", &gh)]);
    block.extend_from_slice(b"DB_PASSWORD=long-enough-pw"); // no final NUL but has '='
    let creds = scan_env(&block, &key());
    assert_eq!(creds.len(), 2);
    assert_eq!(
        find(&creds, "DB_PASSWORD").fingerprint,
        key().fingerprint(b"long-enough-pw")
    );

    assert!(scan_env(b"", &key()).is_empty());
    assert!(scan_env(b"\0\0=\0=x\0NOEQUALS\0", &key()).is_empty());
}

#[test]
fn non_utf8_values_are_fingerprinted_raw() {
    let mut block = b"DB_PASSWORD=pw\xff\xfe-long-enough".to_vec();
    block.push(0);
    let creds = scan_env(&block, &key());
    assert_eq!(creds.len(), 1);
    assert_eq!(
        creds[0].fingerprint,
        key().fingerprint(b"pw\xff\xfe-long-enough")
    );
}

#[test]
fn pem_private_key_in_env() {
    let pem = super::fake_pem("RSA ");
    let creds = scan_env(&env_block(&[("TLS_KEY", &pem)]), &key());
    assert_eq!(creds.len(), 1, "{creds:#?}");
    assert_eq!(creds[0].kind, "private_key");
    assert_eq!(meta(&creds[0], "key_type"), Some("rsa"));
}

#[test]
fn key_named_variables_count_only_with_key_material() {
    let k = key();
    let kinds = |env: &str| -> Vec<String> {
        scan_env(env.as_bytes(), &k)
            .into_iter()
            .map(|c| c.kind)
            .collect()
    };
    assert_eq!(
        kinds("FINANCE_DELEGATION_KEY=q8ZtR2vLwX9mKp4sN7yB3cHd6fJ1gT5e\0"),
        ["generic_secret"]
    );
    assert_eq!(
        kinds("WEBHOOK_KEY=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\0"),
        ["generic_secret"]
    );
    for plain in [
        "SORT_KEY=created_at",
        "PRIMARY_KEY=id",
        "CACHE_KEY=user-profile-version2",
        "PARTITION_KEY=tenant_id_and_region",
        "SSH_KEY=/home/alice/.ssh/id_ed25519",
        "KEYBOARD_KEY=Shift Left Control 42",
    ] {
        assert!(kinds(&format!("{plain}\0")).is_empty(), "{plain}");
    }
}
