//! PEM private key blocks: locating them, fingerprinting them the same way wherever
//! they appear, and describing them without revealing them.

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use regex::Regex;

use super::{Credential, FleetKey, Source};

/// A complete block, or a block cut off by the end of a captured excerpt (which is
/// still secret material). The body also matches JSON-escaped newlines ("\n").
pub(crate) static PEM_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----(?s:.*?)(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\z)",
    )
    .expect("pem regex")
});

pub(crate) struct PemKey<'a> {
    pub block: &'a str,
    /// The words before "PRIVATE KEY" in the BEGIN line ("RSA", "OPENSSH", "").
    pub label: &'a str,
}

pub(crate) fn find_private_keys(text: &str) -> Vec<PemKey<'_>> {
    // Cheap pre-check: this runs on every environment variable of every exec.
    if !text.contains("-----BEGIN ") {
        return Vec::new();
    }
    PEM_RE
        .captures_iter(text)
        .filter_map(|c| {
            let m = c.get(0)?;
            Some(PemKey {
                block: m.as_str(),
                label: c.get(1).map_or("", |l| l.as_str().trim_end()),
            })
        })
        .collect()
}

/// Line endings are normalised so that the same key read from a CRLF file, a JSON
/// string or a kubeconfig's base64 blob gets one fingerprint.
pub(crate) fn canonical_block(block: &str) -> String {
    block.trim().replace("\r\n", "\n").replace("\\n", "\n")
}

/// A credential for each private key block in `text`.
pub(crate) fn private_key_credentials(
    text: &str,
    key: &FleetKey,
    source: Source,
    location: &str,
) -> Vec<Credential> {
    find_private_keys(text)
        .iter()
        .map(|k| {
            let canon = canonical_block(k.block);
            let mut c = Credential::new("private_key", canon.as_bytes(), key, source, location);
            let (key_type, encrypted) = describe(k.label, &canon);
            c.set("key_type", &key_type);
            c.set("encrypted", if encrypted { "true" } else { "false" });
            c
        })
        .collect()
}

/// Key algorithm and whether the key is passphrase-protected. OpenSSH keys name the
/// algorithm only inside the (unencrypted) public part of the blob, so that is parsed.
pub(crate) fn describe(label: &str, canon: &str) -> (String, bool) {
    match label {
        "OPENSSH" => openssh_key_type(canon).unwrap_or_else(|| ("openssh".to_string(), false)),
        "RSA" | "EC" | "DSA" => (
            label.to_ascii_lowercase(),
            canon.contains("Proc-Type: 4,ENCRYPTED"),
        ),
        "ENCRYPTED" => ("pkcs8".to_string(), true),
        "" => ("pkcs8".to_string(), false),
        other => (other.to_ascii_lowercase().replace(' ', "_"), false),
    }
}

fn openssh_key_type(canon: &str) -> Option<(String, bool)> {
    let body: String = canon
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.trim().chars())
        .collect();
    let blob = STANDARD.decode(body.as_bytes()).ok()?;
    let mut r = blob.strip_prefix(b"openssh-key-v1\0")?;
    let cipher = read_string(&mut r)?;
    let _kdf = read_string(&mut r)?;
    let _kdf_options = read_string(&mut r)?;
    let nkeys = read_u32(&mut r)?;
    if nkeys == 0 {
        return None;
    }
    let mut public = read_string(&mut r)?;
    let key_type = read_string(&mut public)?;
    let key_type = std::str::from_utf8(key_type).ok()?;
    if key_type.is_empty() || key_type.len() > 64 || !key_type.is_ascii() {
        return None;
    }
    Some((key_type.to_string(), cipher != b"none"))
}

fn read_u32(r: &mut &[u8]) -> Option<u32> {
    let (head, rest) = r.split_at_checked(4)?;
    *r = rest;
    Some(u32::from_be_bytes(head.try_into().ok()?))
}

fn read_string<'a>(r: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = read_u32(r)? as usize;
    let (s, rest) = r.split_at_checked(len)?;
    *r = rest;
    Some(s)
}
