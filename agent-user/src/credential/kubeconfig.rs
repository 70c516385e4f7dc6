//! kubeconfig files (YAML, or the JSON that kubectl also accepts). There is no YAML
//! parser among the daemon's dependencies, and kubeconfigs are machine-written with a
//! regular shape, so the YAML side is a line scanner that only understands the
//! `users:` list.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::formats::{password_credential, trim_value};
use super::jwt::{claims_metadata, decode_jwt};
use super::pem::private_key_credentials;
use super::{Credential, FleetKey, Source};

/// Keys under `users[].user` (including `auth-provider.config`) that hold secrets.
const SECRET_KEYS: &[&str] = &[
    "token",
    "client-key-data",
    "password",
    "id-token",
    "access-token",
    "refresh-token",
    "client-secret",
];

#[derive(Default)]
struct User {
    name: String,
    username: String,
    secrets: Vec<(String, String)>,
}

pub(crate) fn scan(path: &str, text: &str, key: &FleetKey) -> Vec<Credential> {
    let users = if text.trim_start().starts_with('{') {
        parse_json(text)
    } else {
        parse_yaml(text)
    };
    users
        .iter()
        .flat_map(|u| user_credentials(u, path, key))
        .collect()
}

fn parse_yaml(text: &str) -> Vec<User> {
    let mut users = Vec::new();
    let mut in_users = false;
    let mut current: Option<User> = None;
    for raw in text.lines() {
        let line = raw.trim_end();
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        if body.len() == line.len() && !body.starts_with('-') {
            // A top-level key ends the previous section.
            users.extend(current.take());
            in_users = body.starts_with("users:");
            continue;
        }
        if !in_users {
            continue;
        }
        let is_item = body.starts_with("- ");
        let entry = body.trim_start_matches("- ").trim_start();
        let Some((k, v)) = entry.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), trim_value(v));
        // Each list item of `users:` is one user; how deep items are indented varies
        // between writers, but `name` is always a direct key of the item.
        if is_item && line.len() - body.len() <= 2 {
            users.extend(current.take());
            current = Some(User::default());
        }
        let user = current.get_or_insert_with(User::default);
        match k {
            "name" if user.name.is_empty() => user.name = v.to_string(),
            "username" => user.username = v.to_string(),
            k if SECRET_KEYS.contains(&k) && !v.is_empty() => {
                user.secrets.push((k.to_string(), v.to_string()))
            }
            _ => {}
        }
    }
    users.extend(current);
    users
}

fn parse_json(text: &str) -> Vec<User> {
    let Ok(doc) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    let Some(list) = doc.get("users").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .map(|item| {
            let mut u = User {
                name: item
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                ..User::default()
            };
            if let Some(user) = item.get("user") {
                collect_json(user, &mut u, 0);
            }
            u
        })
        .collect()
}

fn collect_json(v: &Value, u: &mut User, depth: usize) {
    let Some(obj) = v.as_object().filter(|_| depth < 8) else {
        return;
    };
    for (k, v) in obj {
        match v {
            Value::String(s) if k == "username" => u.username = s.clone(),
            Value::String(s) if SECRET_KEYS.contains(&k.as_str()) && !s.is_empty() => {
                u.secrets.push((k.clone(), s.clone()))
            }
            Value::Object(_) => collect_json(v, u, depth + 1),
            _ => {}
        }
    }
}

fn user_credentials(u: &User, path: &str, key: &FleetKey) -> Vec<Credential> {
    let mut out = Vec::new();
    for (field, value) in &u.secrets {
        let mut creds = match field.as_str() {
            "client-key-data" => client_key(value, path, key),
            "password" => vec![
                password_credential(value, key, Source::File, path, "password")
                    .with("username", &u.username),
            ],
            "token" | "id-token" | "access-token" => {
                let mut c =
                    Credential::new("kube_token", value.as_bytes(), key, Source::File, path);
                if let Some(claims) = decode_jwt(value) {
                    if field != "token" {
                        c.kind = "jwt".to_string();
                    }
                    c.extend(&claims_metadata(&claims));
                }
                vec![c]
            }
            _ => vec![Credential::new(
                "generic_secret",
                value.as_bytes(),
                key,
                Source::File,
                path,
            )],
        };
        for c in &mut creds {
            c.set("kube_user", &u.name);
            c.set("field", field);
        }
        out.extend(creds);
    }
    out
}

/// The key is stored base64-encoded; fingerprinting the decoded PEM block makes it
/// match the same key found as a plain file.
fn client_key(value: &str, path: &str, key: &FleetKey) -> Vec<Credential> {
    let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    if let Ok(decoded) = STANDARD.decode(compact.as_bytes()) {
        let pem = String::from_utf8_lossy(&decoded);
        let creds = private_key_credentials(&pem, key, Source::File, path);
        if !creds.is_empty() {
            return creds;
        }
    }
    vec![Credential::new(
        "private_key",
        value.as_bytes(),
        key,
        Source::File,
        path,
    )]
}
