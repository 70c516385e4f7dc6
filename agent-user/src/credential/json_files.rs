//! JSON credential files: Docker's config.json and gcloud's credential files.

use serde_json::{Map, Value};

use super::formats::decode_basic;
use super::pem::{canonical_block, describe, find_private_keys};
use super::{Credential, FleetKey, Source};

/// `auths.<registry>.auth` is base64("user:password"). The password alone is
/// fingerprinted so that it matches the same login sent as HTTP Basic auth.
pub(crate) fn docker(path: &str, text: &str, key: &FleetKey) -> Vec<Credential> {
    let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    let Some(Value::Object(auths)) = doc.get("auths") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (registry, entry) in auths {
        let Value::Object(entry) = entry else {
            continue;
        };
        let host = registry_host(registry);
        if let Some(auth) = str_field(entry, "auth") {
            let c = match decode_basic(auth) {
                Some((user, pass)) => {
                    Credential::new("docker_auth", pass.as_bytes(), key, Source::File, path)
                        .with("username", &user)
                }
                None => Credential::new("docker_auth", auth.as_bytes(), key, Source::File, path),
            };
            out.push(c.with("host", &host));
        } else if let Some(pass) = str_field(entry, "password") {
            let user = str_field(entry, "username").unwrap_or_default();
            let c = Credential::new("docker_auth", pass.as_bytes(), key, Source::File, path);
            out.push(c.with("username", user).with("host", &host));
        }
        for field in ["identitytoken", "registrytoken"] {
            if let Some(tok) = str_field(entry, field) {
                let c = Credential::new("docker_auth", tok.as_bytes(), key, Source::File, path);
                out.push(c.with("host", &host).with("field", field));
            }
        }
    }
    out
}

/// Registry keys are sometimes full URLs ("https://index.docker.io/v1/").
fn registry_host(registry: &str) -> String {
    let r = registry
        .split_once("://")
        .map_or(registry, |(_, rest)| rest);
    r.split('/').next().unwrap_or(r).to_ascii_lowercase()
}

/// gcloud writes one object per file (service account key, authorized_user ADC,
/// external_account); some tools write an array of them.
pub(crate) fn gcloud(path: &str, text: &str, key: &FleetKey) -> Vec<Credential> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(obj)) => gcloud_object(&obj, path, key),
        Ok(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_object)
            .flat_map(|o| gcloud_object(o, path, key))
            .collect(),
        _ => Vec::new(),
    }
}

fn gcloud_object(obj: &Map<String, Value>, path: &str, key: &FleetKey) -> Vec<Credential> {
    let mut out = Vec::new();
    let mut common = Vec::new();
    for (meta, field) in [
        ("type", "type"),
        ("client_id", "client_id"),
        ("client_email", "client_email"),
        ("project_id", "project_id"),
        ("private_key_id", "private_key_id"),
        ("account", "account"),
    ] {
        if let Some(v) = str_field(obj, field) {
            common.push((meta, v));
        }
    }
    if let Some(pk) = str_field(obj, "private_key") {
        let keys = find_private_keys(pk);
        let c = match keys.first() {
            Some(k) => {
                let canon = canonical_block(k.block);
                let (key_type, encrypted) = describe(k.label, &canon);
                Credential::new("private_key", canon.as_bytes(), key, Source::File, path)
                    .with("key_type", &key_type)
                    .with("encrypted", if encrypted { "true" } else { "false" })
            }
            None => Credential::new("private_key", pk.as_bytes(), key, Source::File, path),
        };
        out.push(c.with("field", "private_key"));
    }
    for (field, kind) in [
        ("refresh_token", "oauth_refresh_token"),
        ("client_secret", "oauth_client_secret"),
        ("access_token", "oauth_access_token"),
    ] {
        if let Some(v) = str_field(obj, field) {
            let c = Credential::new(kind, v.as_bytes(), key, Source::File, path);
            out.push(c.with("field", field));
        }
    }
    for c in &mut out {
        for (k, v) in &common {
            c.set(k, v);
        }
    }
    out
}

fn str_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    obj.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}
