//! Well-known credential files: recognising them by path and extracting each secret.

use super::env::{link_aws_key_id, looks_like_key_id};
use super::formats::{
    find_tokens, find_url_userinfo, password_credential, percent_decode, token_credential,
    trim_value,
};
use super::jwt::{claims_metadata, decode_jwt};
use super::pem::private_key_credentials;
use super::{Credential, FleetKey, Source, dedupe, dotenv, json_files, kubeconfig};

/// Path suffixes (whole components) and the kind of file they name. Matching on the
/// tail means any home directory, and paths seen through /proc/<pid>/root, match.
const SUFFIXES: &[(&str, &str)] = &[
    (".aws/credentials", "aws_credentials_file"),
    (".aws/config", "aws_config"),
    (".kube/config", "kubeconfig"),
    (".netrc", "netrc"),
    ("_netrc", "netrc"),
    (".git-credentials", "git_credentials"),
    (".config/git/credentials", "git_credentials"),
    (".docker/config.json", "docker_config"),
    (
        "run/secrets/kubernetes.io/serviceaccount/token",
        "k8s_service_account_token",
    ),
    (
        "run/secrets/eks.amazonaws.com/serviceaccount/token",
        "k8s_service_account_token",
    ),
];

/// Which credential file `path` is, judged by its shape alone.
pub fn credential_file_kind(path: &str) -> Option<&'static str> {
    if let Some((_, kind)) = SUFFIXES.iter().find(|(s, _)| ends_with_components(path, s)) {
        return Some(kind);
    }
    let (dir, base) = path.rsplit_once('/').unwrap_or(("", path));
    if base == ".env" || (base.starts_with(".env.") && base.len() > ".env.".len()) {
        return Some("dotenv");
    }
    if let Some(i) = find_component(path, ".config/gcloud/") {
        let rest = &path[i + ".config/gcloud/".len()..];
        let gcloud_json = base.ends_with(".json")
            && (base.contains("credentials")
                || (base == "adc.json" && rest.starts_with("legacy_credentials/")));
        if gcloud_json {
            return Some("gcloud_credentials");
        }
    }
    if base.starts_with("id_")
        && !base.ends_with(".pub")
        && (dir.ends_with("/.ssh") || dir == ".ssh" || dir == "~/.ssh")
    {
        return Some("ssh_private_key");
    }
    None
}

fn ends_with_components(path: &str, suffix: &str) -> bool {
    path.strip_suffix(suffix)
        .is_some_and(|head| head.is_empty() || head.ends_with('/') || head == "~")
}

fn find_component(path: &str, needle: &str) -> Option<usize> {
    path.match_indices(needle)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || path.as_bytes()[i - 1] == b'/')
}

/// Every secret in the contents of a credential file. Files that are not a known kind
/// still get the value-format scan, since the caller saw a reason to read them.
/// Unparseable content yields nothing rather than an error.
pub fn scan_file(path: &str, contents: &[u8], key: &FleetKey) -> Vec<Credential> {
    let text = String::from_utf8_lossy(contents);
    let creds = match credential_file_kind(path) {
        Some("aws_credentials_file" | "aws_config") => aws_ini(path, &text, key),
        Some("kubeconfig") => kubeconfig::scan(path, &text, key),
        Some("netrc") => netrc(path, &text, key),
        Some("git_credentials") => git_credentials(path, &text, key),
        Some("docker_config") => json_files::docker(path, &text, key),
        Some("gcloud_credentials") => json_files::gcloud(path, &text, key),
        Some("dotenv") => dotenv::scan(path, contents, key),
        Some("k8s_service_account_token") => service_account_token(path, &text, key),
        Some("ssh_private_key") => private_key_credentials(&text, key, Source::File, path),
        _ => generic(path, &text, key),
    };
    dedupe(creds)
}

fn generic(path: &str, text: &str, key: &FleetKey) -> Vec<Credential> {
    let mut out: Vec<Credential> = find_tokens(text)
        .iter()
        .map(|t| token_credential(t, key, Source::File, path))
        .collect();
    out.extend(private_key_credentials(text, key, Source::File, path));
    out
}

/// ~/.aws/credentials and ~/.aws/config share the INI syntax and the key names.
fn aws_ini(path: &str, text: &str, key: &FleetKey) -> Vec<Credential> {
    let mut out = Vec::new();
    let mut section_start = 0;
    let mut profile = String::new();
    let mut key_id: Option<String> = None;
    let close = |out: &mut Vec<Credential>, start: usize, key_id: &Option<String>| {
        link_aws_key_id(&mut out[start..], key_id.as_deref());
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            close(&mut out, section_start, &key_id);
            section_start = out.len();
            key_id = None;
            let name = name.trim();
            profile = name
                .strip_prefix("profile ")
                .unwrap_or(name)
                .trim()
                .to_string();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = trim_value(v);
        if v.is_empty() {
            continue;
        }
        let kind = match k.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => {
                key_id = looks_like_key_id(v).then(|| v.to_string());
                "aws_access_key"
            }
            "aws_secret_access_key" => "aws_secret_key",
            "aws_session_token" | "aws_security_token" => "aws_session_token",
            _ => continue,
        };
        let mut c = Credential::new(kind, v.as_bytes(), key, Source::File, path);
        if kind == "aws_access_key" && key_id.is_some() {
            c.set("key_id", v);
            c.set("prefix", &v[..4]);
        }
        c.set("profile", &profile);
        out.push(c);
    }
    close(&mut out, section_start, &key_id);
    out
}

/// netrc is a stream of whitespace-separated tokens, not lines; `macdef` bodies run
/// to the next blank line and are skipped.
fn netrc(path: &str, text: &str, key: &FleetKey) -> Vec<Credential> {
    let mut out = Vec::new();
    let mut machine = String::new();
    let mut login = String::new();
    let mut lines = text.lines();
    let mut pending: Option<&str> = None;
    let flush = |out: &mut Vec<Credential>, pw: Option<&str>, machine: &str, login: &str| {
        if let Some(pw) = pw {
            let mut c = password_credential(pw, key, Source::File, path, "password");
            c.set("host", machine);
            c.set("username", login);
            out.push(c);
        }
    };
    while let Some(line) = lines.next() {
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            match word {
                "machine" | "default" => {
                    flush(&mut out, pending.take(), &machine, &login);
                    machine = if word == "default" {
                        "default".to_string()
                    } else {
                        words.next().unwrap_or_default().to_string()
                    };
                    login.clear();
                }
                "login" => login = words.next().unwrap_or_default().to_string(),
                "password" => pending = words.next(),
                "account" => {
                    words.next();
                }
                "macdef" => {
                    for body in lines.by_ref() {
                        if body.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                _ => {}
            }
        }
    }
    flush(&mut out, pending.take(), &machine, &login);
    out
}

/// One `scheme://user:password@host` URL per line.
fn git_credentials(path: &str, text: &str, key: &FleetKey) -> Vec<Credential> {
    let mut out = Vec::new();
    for line in text.lines() {
        for u in find_url_userinfo(line.trim()) {
            if u.password.is_empty() {
                continue;
            }
            let password = percent_decode(u.password);
            let mut c = password_credential(&password, key, Source::File, path, "password");
            c.set("username", &percent_decode(u.username));
            c.set("host", &u.host.to_ascii_lowercase());
            c.set("scheme", &u.scheme.to_ascii_lowercase());
            out.push(c);
        }
    }
    out
}

fn service_account_token(path: &str, text: &str, key: &FleetKey) -> Vec<Credential> {
    let token = text.trim();
    if token.is_empty() {
        return Vec::new();
    }
    match decode_jwt(token) {
        Some(claims) => {
            let mut c = Credential::new("jwt", token.as_bytes(), key, Source::File, path);
            c.extend(&claims_metadata(&claims));
            vec![c]
        }
        None => vec![Credential::new(
            "kube_token",
            token.as_bytes(),
            key,
            Source::File,
            path,
        )],
    }
}
