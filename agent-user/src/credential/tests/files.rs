use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::super::{Source, credential_file_kind, scan_file};
use super::{fake, fake_key_id, fake_pem, key, make_jwt, meta};

#[test]
fn file_kinds_by_path_shape() {
    let yes = [
        ("/root/.aws/credentials", "aws_credentials_file"),
        ("/home/x/.aws/credentials", "aws_credentials_file"),
        ("/home/x/.aws/config", "aws_config"),
        ("/home/dev/.kube/config", "kubeconfig"),
        ("/root/.netrc", "netrc"),
        ("/home/a/.git-credentials", "git_credentials"),
        ("/home/a/.docker/config.json", "docker_config"),
        (
            "/home/a/.config/gcloud/application_default_credentials.json",
            "gcloud_credentials",
        ),
        (
            "/home/a/.config/gcloud/credentials.json",
            "gcloud_credentials",
        ),
        (
            "/home/a/.config/gcloud/legacy_credentials/me@example.com/adc.json",
            "gcloud_credentials",
        ),
        ("/srv/app/.env", "dotenv"),
        ("/srv/app/.env.production", "dotenv"),
        (".env", "dotenv"),
        (
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "k8s_service_account_token",
        ),
        (
            "/run/secrets/kubernetes.io/serviceaccount/token",
            "k8s_service_account_token",
        ),
        (
            "/proc/42/root/var/run/secrets/kubernetes.io/serviceaccount/token",
            "k8s_service_account_token",
        ),
        ("/home/a/.ssh/id_rsa", "ssh_private_key"),
        ("/root/.ssh/id_ed25519", "ssh_private_key"),
        ("/root/.ssh/id_ecdsa_sk", "ssh_private_key"),
    ];
    for (path, kind) in yes {
        assert_eq!(credential_file_kind(path), Some(kind), "{path}");
    }
    let no = [
        "/home/a/.ssh/id_rsa.pub",
        "/home/a/.ssh/known_hosts",
        "/home/a/.ssh/config",
        "/home/a/.aws/credentials.bak",
        "/home/a/notaws/credentials",
        "/home/a/x.aws/credentials",
        "/home/a/.kube/cache/discovery",
        "/home/a/.config/gcloud/configurations/config_default",
        "/home/a/.config/gcloud/legacy_credentials/me/other.json",
        "/srv/app/.envrc",
        "/srv/app/.env.",
        "/srv/app/env",
        "/etc/passwd",
        "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
        "",
    ];
    for path in no {
        assert_eq!(credential_file_kind(path), None, "{path}");
    }
}

#[test]
fn aws_credentials_and_config() {
    let (id1, id2) = (fake_key_id("AKIA"), fake_key_id("ASIA"));
    let (s1, s2) = (fake("", 40), fake("x", 40));
    let text = format!(
        "# comment\n[default]\naws_access_key_id = {id1}\naws_secret_access_key = {s1}\n\n\
         [work]\naws_secret_access_key={s2}\naws_access_key_id={id2}\naws_session_token = {}\nregion = eu-west-1\n",
        fake("tok", 200)
    );
    let path = "/home/u/.aws/credentials";
    let creds = scan_file(path, text.as_bytes(), &key());
    assert_eq!(creds.len(), 5, "{creds:#?}");
    assert!(
        creds
            .iter()
            .all(|c| c.source == Source::File && c.location == path)
    );
    let secrets: Vec<_> = creds
        .iter()
        .filter(|c| c.kind == "aws_secret_key")
        .collect();
    assert_eq!(secrets.len(), 2);
    assert_eq!(meta(secrets[0], "key_id"), Some(id1.as_str()));
    assert_eq!(meta(secrets[0], "profile"), Some("default"));
    assert_eq!(secrets[0].fingerprint, key().fingerprint(s1.as_bytes()));
    // The id may follow the secret within a profile.
    assert_eq!(meta(secrets[1], "key_id"), Some(id2.as_str()));
    assert_eq!(meta(secrets[1], "profile"), Some("work"));
    let session = creds
        .iter()
        .find(|c| c.kind == "aws_session_token")
        .unwrap();
    assert_eq!(meta(session, "key_id"), Some(id2.as_str()));

    let config = format!("[profile dev]\nregion = us-east-1\naws_secret_access_key = {s1}\n");
    let creds = scan_file("/root/.aws/config", config.as_bytes(), &key());
    assert_eq!(creds.len(), 1);
    assert_eq!(meta(&creds[0], "profile"), Some("dev"));
}

#[test]
fn kubeconfig_yaml_and_json() {
    let pem = fake_pem("RSA ");
    let key_data = STANDARD.encode(&pem);
    let sa = make_jwt(
        &json!({"iss": "kubernetes/serviceaccount", "sub": "system:serviceaccount:ns:sa"}),
    );
    let yaml = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: Q0FEQVRB\n    server: https://k8s.example:6443\n  name: prod\n\
         contexts:\n- context:\n    cluster: prod\n    user: admin\n  name: prod\ncurrent-context: prod\nkind: Config\n\
         users:\n- name: admin\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: {key_data}\n\
         - name: robot\n  user:\n    token: {sa}\n\
         - name: basic\n  user:\n    password: \"kube-pass-123\"\n    username: alice\n"
    );
    let creds = scan_file("/home/u/.kube/config", yaml.as_bytes(), &key());
    assert_eq!(creds.len(), 3, "{creds:#?}");
    let pk = creds.iter().find(|c| c.kind == "private_key").unwrap();
    assert_eq!(meta(pk, "kube_user"), Some("admin"));
    assert_eq!(meta(pk, "key_type"), Some("rsa"));
    // Same fingerprint as the same key found as a plain file.
    let as_file = scan_file("/root/.ssh/id_rsa", pem.as_bytes(), &key());
    assert_eq!(as_file[0].fingerprint, pk.fingerprint);
    let tok = creds.iter().find(|c| c.kind == "kube_token").unwrap();
    assert_eq!(meta(tok, "kube_user"), Some("robot"));
    assert_eq!(meta(tok, "sub"), Some("system:serviceaccount:ns:sa"));
    let pw = creds.iter().find(|c| c.kind == "password").unwrap();
    assert_eq!(pw.fingerprint, key().fingerprint(b"kube-pass-123"));
    assert_eq!(meta(pw, "username"), Some("alice"));
    assert_eq!(meta(pw, "kube_user"), Some("basic"));

    let json_cfg = json!({
        "apiVersion": "v1",
        "users": [
            {"name": "a", "user": {"token": "opaque-kube-token-1"}},
            {"name": "b", "user": {"auth-provider": {"name": "oidc", "config": {
                "id-token": sa, "refresh-token": "refresh-123", "client-id": "kubectl"}}}}
        ]
    });
    let creds = scan_file(
        "/root/.kube/config",
        json_cfg.to_string().as_bytes(),
        &key(),
    );
    assert_eq!(creds.len(), 3, "{creds:#?}");
    assert!(
        creds
            .iter()
            .any(|c| c.kind == "jwt" && meta(c, "kube_user") == Some("b"))
    );
}

#[test]
fn netrc_entries() {
    let text = "machine api.example.com login alice password pw-one\n\
                macdef init\n  password not-a-real-entry\n\n\
                machine git.example.org\n  login bob\n  password pw-two\n\
                default login anon password pw-three\n";
    let creds = scan_file("/home/u/.netrc", text.as_bytes(), &key());
    assert_eq!(creds.len(), 3, "{creds:#?}");
    assert_eq!(meta(&creds[0], "host"), Some("api.example.com"));
    assert_eq!(meta(&creds[0], "username"), Some("alice"));
    assert_eq!(creds[0].fingerprint, key().fingerprint(b"pw-one"));
    assert_eq!(meta(&creds[1], "host"), Some("git.example.org"));
    assert_eq!(meta(&creds[1], "username"), Some("bob"));
    assert_eq!(meta(&creds[2], "host"), Some("default"));
}

#[test]
fn git_credentials_lines() {
    let gh = fake("ghp_", 36);
    let text = format!(
        "https://alice:pa%24%24word@github.example.com\nhttps://x-access-token:{gh}@github.com/org\n\nnot a url\n"
    );
    let creds = scan_file("/home/u/.git-credentials", text.as_bytes(), &key());
    assert_eq!(creds.len(), 2, "{creds:#?}");
    assert_eq!(creds[0].kind, "password");
    assert_eq!(creds[0].fingerprint, key().fingerprint(b"pa$$word"));
    assert_eq!(meta(&creds[0], "username"), Some("alice"));
    assert_eq!(meta(&creds[0], "host"), Some("github.example.com"));
    assert_eq!(creds[1].kind, "github_token");
    assert_eq!(meta(&creds[1], "prefix"), Some("ghp_"));
    assert_eq!(meta(&creds[1], "username"), Some("x-access-token"));
}

#[test]
fn docker_config_auths() {
    let doc = json!({
        "auths": {
            "https://index.docker.io/v1/": {"auth": STANDARD.encode("dockeruser:docker-pw-1")},
            "registry.example.com": {"auth": STANDARD.encode("robot$ci:docker-pw-2")},
            "ghcr.io": {"identitytoken": "opaque-identity-token"}
        },
        "credsStore": "desktop"
    });
    let creds = scan_file(
        "/home/u/.docker/config.json",
        doc.to_string().as_bytes(),
        &key(),
    );
    assert_eq!(creds.len(), 3, "{creds:#?}");
    assert!(creds.iter().all(|c| c.kind == "docker_auth"));
    let hub = creds
        .iter()
        .find(|c| meta(c, "host") == Some("index.docker.io"))
        .unwrap();
    assert_eq!(meta(hub, "username"), Some("dockeruser"));
    assert_eq!(hub.fingerprint, key().fingerprint(b"docker-pw-1"));
    let r = creds
        .iter()
        .find(|c| meta(c, "host") == Some("registry.example.com"))
        .unwrap();
    assert_eq!(meta(r, "username"), Some("robot$ci"));
}

#[test]
fn gcloud_service_account_and_authorized_user() {
    let sa = json!({
        "type": "service_account",
        "project_id": "proj",
        "private_key_id": "0123abcd",
        "private_key": fake_pem(""),
        "client_email": "sa@proj.iam.gserviceaccount.com",
        "client_id": "1234"
    });
    let path = "/home/u/.config/gcloud/legacy_credentials/sa@proj.iam.gserviceaccount.com/adc.json";
    let creds = scan_file(path, sa.to_string().as_bytes(), &key());
    assert_eq!(creds.len(), 1, "{creds:#?}");
    assert_eq!(creds[0].kind, "private_key");
    assert_eq!(meta(&creds[0], "key_type"), Some("pkcs8"));
    assert_eq!(
        meta(&creds[0], "client_email"),
        Some("sa@proj.iam.gserviceaccount.com")
    );
    assert_eq!(meta(&creds[0], "private_key_id"), Some("0123abcd"));

    let user = json!({
        "type": "authorized_user",
        "client_id": "cid.apps.example",
        "client_secret": "fake-client-secret",
        "refresh_token": "1//fake-refresh-token"
    });
    let path = "/root/.config/gcloud/application_default_credentials.json";
    let creds = scan_file(path, user.to_string().as_bytes(), &key());
    assert_eq!(creds.len(), 2, "{creds:#?}");
    let rt = creds
        .iter()
        .find(|c| c.kind == "oauth_refresh_token")
        .unwrap();
    assert_eq!(rt.fingerprint, key().fingerprint(b"1//fake-refresh-token"));
    assert_eq!(meta(rt, "client_id"), Some("cid.apps.example"));
    assert!(creds.iter().any(|c| c.kind == "oauth_client_secret"));
}

#[test]
fn dotenv_uses_env_rules_with_file_source() {
    let id = fake_key_id("AKIA");
    let secret = fake("", 40);
    let oa = fake("sk-proj-", 60);
    let text = format!(
        "# settings\nexport OPENAI_API_KEY=\"{oa}\"\nAWS_ACCESS_KEY_ID={id}\nAWS_SECRET_ACCESS_KEY='{secret}'\n\
         DB_PASSWORD=hunter2-long # trailing comment\nDEBUG=true\nPORT=8080\n\
         TLS_KEY=\"{}\"\nNOT AN ASSIGNMENT\n",
        fake_pem("EC ").trim_end()
    );
    let path = "/srv/app/.env.local";
    let creds = scan_file(path, text.as_bytes(), &key());
    let mut kinds: Vec<&str> = creds.iter().map(|c| c.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            "aws_access_key",
            "aws_secret_key",
            "openai_api_key",
            "password",
            "private_key"
        ],
        "{creds:#?}"
    );
    assert!(
        creds
            .iter()
            .all(|c| c.source == Source::File && c.location == path)
    );
    let pw = creds.iter().find(|c| c.kind == "password").unwrap();
    assert_eq!(pw.fingerprint, key().fingerprint(b"hunter2-long"));
    assert_eq!(meta(pw, "variable"), Some("DB_PASSWORD"));
    let sk = creds.iter().find(|c| c.kind == "aws_secret_key").unwrap();
    assert_eq!(sk.fingerprint, key().fingerprint(secret.as_bytes()));
    assert_eq!(meta(sk, "key_id"), Some(id.as_str()));
    let pk = creds.iter().find(|c| c.kind == "private_key").unwrap();
    assert_eq!(meta(pk, "key_type"), Some("ec"));
}

#[test]
fn service_account_token_is_a_jwt() {
    let t = make_jwt(&json!({
        "iss": "https://kubernetes.default.svc",
        "sub": "system:serviceaccount:default:builder",
        "aud": ["https://kubernetes.default.svc"],
        "exp": 1_800_000_000
    }));
    let path = "/var/run/secrets/kubernetes.io/serviceaccount/token";
    let creds = scan_file(path, format!("{t}\n").as_bytes(), &key());
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].kind, "jwt");
    assert_eq!(creds[0].fingerprint, key().fingerprint(t.as_bytes()));
    assert_eq!(
        meta(&creds[0], "sub"),
        Some("system:serviceaccount:default:builder")
    );
    assert_eq!(meta(&creds[0], "exp"), Some("1800000000"));
}

fn openssh_key(key_type: &str, cipher: &str) -> String {
    fn put(buf: &mut Vec<u8>, s: &[u8]) {
        buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
        buf.extend_from_slice(s);
    }
    let mut public = Vec::new();
    put(&mut public, key_type.as_bytes());
    put(&mut public, b"FAKE-PUBLIC-KEY-BYTES-FOR-TESTS!");
    let mut blob = b"openssh-key-v1\0".to_vec();
    put(&mut blob, cipher.as_bytes());
    put(
        &mut blob,
        if cipher == "none" { b"none" } else { b"bcrypt" },
    );
    put(&mut blob, b"");
    blob.extend_from_slice(&1u32.to_be_bytes());
    put(&mut blob, &public);
    put(&mut blob, b"FAKE-PRIVATE-SECTION");
    let b64 = STANDARD.encode(&blob);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(70)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

#[test]
fn ssh_private_keys() {
    let k = openssh_key("ssh-ed25519", "none");
    let creds = scan_file("/home/u/.ssh/id_ed25519", k.as_bytes(), &key());
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].kind, "private_key");
    assert_eq!(meta(&creds[0], "key_type"), Some("ssh-ed25519"));
    assert_eq!(meta(&creds[0], "encrypted"), Some("false"));
    assert_eq!(creds[0].fingerprint, key().fingerprint(k.trim().as_bytes()));
    // CRLF line endings do not change the fingerprint.
    let crlf = k.replace('\n', "\r\n");
    assert_eq!(
        scan_file("/root/.ssh/id_x", crlf.as_bytes(), &key())[0].fingerprint,
        creds[0].fingerprint
    );

    let enc = openssh_key("ssh-rsa", "aes256-ctr");
    let creds = scan_file("/home/u/.ssh/id_rsa", enc.as_bytes(), &key());
    assert_eq!(meta(&creds[0], "key_type"), Some("ssh-rsa"));
    assert_eq!(meta(&creds[0], "encrypted"), Some("true"));

    let rsa = fake_pem("RSA ");
    let creds = scan_file("/home/u/.ssh/id_rsa", rsa.as_bytes(), &key());
    assert_eq!(meta(&creds[0], "key_type"), Some("rsa"));
}

#[test]
fn unknown_paths_get_the_format_scan() {
    let gh = fake("ghp_", 36);
    let text = format!("config:\n  token: {gh}\n");
    let creds = scan_file("/etc/myapp/config.yaml", text.as_bytes(), &key());
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].kind, "github_token");
}

#[test]
fn garbage_yields_nothing() {
    let paths = [
        "/root/.aws/credentials",
        "/root/.kube/config",
        "/root/.netrc",
        "/root/.git-credentials",
        "/root/.docker/config.json",
        "/root/.config/gcloud/application_default_credentials.json",
        "/app/.env",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "/root/.ssh/id_rsa",
    ];
    for p in paths {
        for junk in [
            &b""[..],
            b"\xff\xfe\x00garbage",
            b"{not json",
            b"[[[",
            b"\n\n   \n",
        ] {
            let creds = scan_file(p, junk, &key());
            // A non-JWT service-account token is still a token.
            if p.ends_with("/token") && !junk.trim_ascii().is_empty() {
                assert_eq!(creds.len(), 1, "{p}");
                assert_eq!(creds[0].kind, "kube_token");
            } else {
                assert!(creds.is_empty(), "{p} {junk:?}: {creds:#?}");
            }
        }
    }
}
