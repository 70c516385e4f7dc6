//! Credential recognition, fingerprinting and redaction.
//!
//! The daemon sees raw secrets (process environments at exec, credential files being
//! opened, HTTP headers in TLS plaintext). None of them may leave the host or reach a
//! log, so every secret is turned into a [`Credential`] record: what kind it is, a
//! keyed fingerprint (HMAC-SHA256 under the per-fleet key, so fingerprints correlate
//! across hosts of one fleet but cannot be brute-forced by anyone without the key),
//! metadata that is safe to ship, and where it was seen. Free text that does leave
//! the daemon (payload excerpts, argv) goes through [`redact`] first.

mod dotenv;
mod env;
mod escape;
mod files;
mod fingerprint;
mod formats;
mod headers;
mod json_files;
mod jwt;
mod kubeconfig;
mod pem;
mod redact;
mod url;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use env::scan_env;
pub use escape::{escape_bytes, unescape_bytes};
pub use files::{credential_file_kind, scan_file};
pub use fingerprint::FleetKey;
pub use headers::scan_headers;
pub use jwt::{JwtClaims, decode_jwt};
pub use redact::{redact, redact_bytes};
pub use url::{RedactedTarget, redact_target};

/// Where a credential was observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Env,
    File,
    Header,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Env => "env",
            Source::File => "file",
            Source::Header => "header",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One observed secret, reduced to what may leave the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub kind: String,
    pub fingerprint: String,
    /// Non-secret facts only (key ids, token prefixes, JWT claims, usernames, hosts).
    pub metadata: BTreeMap<String, String>,
    pub source: Source,
    pub location: String,
}

/// Metadata values come from attacker-influenced input (JWT claims, file contents);
/// capping them keeps one record from ballooning an event.
const MAX_METADATA_VALUE: usize = 256;

impl Credential {
    pub(crate) fn new(
        kind: &str,
        secret: &[u8],
        key: &FleetKey,
        source: Source,
        location: &str,
    ) -> Credential {
        Credential {
            kind: kind.to_string(),
            fingerprint: key.fingerprint(secret),
            metadata: BTreeMap::new(),
            source,
            location: location.to_string(),
        }
    }

    pub(crate) fn with(mut self, name: &str, value: &str) -> Credential {
        self.set(name, value);
        self
    }

    /// Empty values carry no information, so they are dropped rather than stored.
    pub(crate) fn set(&mut self, name: &str, value: &str) {
        if value.is_empty() {
            return;
        }
        let mut end = value.len().min(MAX_METADATA_VALUE);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        self.metadata
            .insert(name.to_string(), value[..end].to_string());
    }

    pub(crate) fn extend(&mut self, meta: &BTreeMap<String, String>) {
        for (k, v) in meta {
            self.set(k, v);
        }
    }
}

/// The same secret reached through two names (GH_TOKEN and GITHUB_TOKEN) is one
/// credential; the first sighting wins.
pub(crate) fn dedupe(creds: Vec<Credential>) -> Vec<Credential> {
    let mut seen = std::collections::HashSet::new();
    creds
        .into_iter()
        .filter(|c| seen.insert(c.fingerprint.clone()))
        .collect()
}
