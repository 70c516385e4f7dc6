//! Tests for the credential module. Every token here is built at run time from an
//! obviously fake body, so no literal in the source looks like a live secret.

mod env;
mod escape;
mod files;
mod fingerprint;
mod fuzz;
mod headers;
mod jwt;
mod redact;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{Credential, FleetKey};

pub(super) fn key() -> FleetKey {
    FleetKey::from_bytes([7u8; 32])
}

/// `prefix` followed by `n` characters of a fake body that mixes upper case, lower
/// case and digits (as random keys do).
pub(super) fn fake(prefix: &str, n: usize) -> String {
    const BODY: &str = "Fake0Test1Dummy2Sample3NotReal4Placeholder5Example6";
    let body: String = BODY.chars().cycle().take(n).collect();
    format!("{prefix}{body}")
}

/// An AWS-shaped access key id (upper case and digits only).
pub(super) fn fake_key_id(prefix: &str) -> String {
    format!("{prefix}FAKE0TEST1DUMMY2")
}

pub(super) fn make_jwt(payload: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(payload.to_string());
    let sig = URL_SAFE_NO_PAD.encode(b"not-a-real-signature");
    format!("{header}.{body}.{sig}")
}

/// A fake PEM block of the given label ("RSA ", "", "OPENSSH ").
pub(super) fn fake_pem(label: &str) -> String {
    format!(
        "-----BEGIN {label}PRIVATE KEY-----\nRkFLRS1LRVktTUFURVJJQUwtRk9SLVRFU1RTLU9OTFk=\nTk9ULUEtUkVBTC1LRVk=\n-----END {label}PRIVATE KEY-----\n"
    )
}

pub(super) fn env_block(vars: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in vars {
        b.extend_from_slice(k.as_bytes());
        b.push(b'=');
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    b
}

pub(super) fn find<'a>(creds: &'a [Credential], location: &str) -> &'a Credential {
    creds
        .iter()
        .find(|c| c.location == location)
        .unwrap_or_else(|| panic!("no credential at {location}: {creds:#?}"))
}

pub(super) fn meta<'a>(c: &'a Credential, name: &str) -> Option<&'a str> {
    c.metadata.get(name).map(String::as_str)
}

/// Deterministic xorshift so the fuzz-style tests are reproducible.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub(super) fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}
