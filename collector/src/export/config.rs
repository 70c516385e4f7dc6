//! What an export is: one `[[export]]` table of the collector's config file, or one
//! `serve --export SPEC` argument.
//!
//! ```toml
//! [[export]]
//! kind = "jsonl"                      # "jsonl" | "ocsf" | "otlp"
//! path = "/var/log/custody/events.jsonl"
//!
//! [[export]]
//! kind = "ocsf"
//! url = "https://siem.example/ingest"  # HTTP POST of application/x-ndjson batches
//! headers = { authorization = "Bearer ${SIEM_TOKEN}" }   # ${VAR} from the environment
//! ca = "/etc/custody/siem-ca.pem"      # trust only this CA (PEM bundle) for the endpoint
//! batch = 500
//!
//! [[export]]
//! kind = "otlp"
//! url = "http://127.0.0.1:4317"        # OTLP/gRPC; https:// with `ca` for TLS
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// What is exported, and how it is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportKind {
    /// Every stored event (and every policy alert) as one JSON object per line.
    Jsonl,
    /// OCSF 1.3 events (process, file, network, DNS activity; detection findings).
    Ocsf,
    /// Chains as OpenTelemetry traces over OTLP/gRPC (GenAI semantic conventions).
    Otlp,
}

impl ExportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportKind::Jsonl => "jsonl",
            ExportKind::Ocsf => "ocsf",
            ExportKind::Otlp => "otlp",
        }
    }
}

/// Where a new export (one with no stored cursor) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// Everything still stored (default).
    #[default]
    Beginning,
    /// Only events stored from now on.
    Now,
}

/// One export. `kind` plus exactly one of `path` (a file; jsonl and ocsf) or `url`
/// (HTTP(S) POST for jsonl and ocsf, an OTLP/gRPC endpoint for otlp).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    pub kind: ExportKind,
    /// Names the export in metrics and keys its persisted cursor; by default
    /// "KIND:PATH" or "KIND:URL". Renaming an export (or changing its default name)
    /// starts it again from `start`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub url: Option<String>,
    /// Records per write / request (default 500, at most 10 000).
    #[serde(default)]
    pub batch: Option<usize>,
    /// Extra request headers (HTTP) or gRPC metadata (OTLP); `${VAR}` in a value is
    /// read from the collector's environment when the config is loaded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// PEM file of the CA(s) to trust for an https:// endpoint instead of the
    /// system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Per-request timeout (default 10 000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub start: StartAt,
    /// How long an event waits before it is exported, so that links arriving a
    /// little later (the other host's half of a connection) are known when it is
    /// shaped. Default 0, except 2000 for otlp (a span's trace and parent come from
    /// the chain).
    #[serde(default)]
    pub settle_ms: Option<u64>,
}

pub const DEFAULT_BATCH: usize = 500;
pub const MAX_BATCH: usize = 10_000;

impl ExportConfig {
    pub fn new(kind: ExportKind) -> ExportConfig {
        ExportConfig {
            kind,
            name: None,
            path: None,
            url: None,
            batch: None,
            headers: BTreeMap::new(),
            ca: None,
            timeout_ms: None,
            start: StartAt::Beginning,
            settle_ms: None,
        }
    }

    /// `KIND:file:PATH`, `KIND:PATH` (absolute), `KIND:http(s)://URL` or
    /// `otlp:http(s)://HOST:PORT`, e.g. `jsonl:file:/var/log/custody.jsonl`,
    /// `ocsf:https://siem.example/ingest`, `otlp:http://127.0.0.1:4317`.
    pub fn parse_spec(spec: &str) -> Result<ExportConfig> {
        let (kind, rest) = spec
            .split_once(':')
            .with_context(|| format!("export {spec:?}: expected KIND:TARGET"))?;
        let kind = match kind {
            "jsonl" => ExportKind::Jsonl,
            "ocsf" => ExportKind::Ocsf,
            "otlp" => ExportKind::Otlp,
            k => bail!("export {spec:?}: unknown kind {k:?} (jsonl, ocsf or otlp)"),
        };
        let mut c = ExportConfig::new(kind);
        if let Some(p) = rest.strip_prefix("file:") {
            c.path = Some(PathBuf::from(p));
        } else if let Some(u) = rest.strip_prefix("http:").or(rest.strip_prefix("grpc:"))
            && !u.starts_with("//")
        {
            // "ocsf:http:https://…" — the transport named explicitly.
            c.url = Some(u.to_string());
        } else if rest.starts_with("http://") || rest.starts_with("https://") {
            c.url = Some(rest.to_string());
        } else if rest.starts_with('/') {
            c.path = Some(PathBuf::from(rest));
        } else {
            bail!(
                "export {spec:?}: the target must be file:PATH, an absolute path or an http(s):// URL"
            );
        }
        c.check()?;
        Ok(c)
    }

    /// The export's name (see [`ExportConfig::name`]).
    pub fn display_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        match (&self.path, &self.url) {
            (Some(p), _) => format!("{}:{}", self.kind.as_str(), p.display()),
            (_, Some(u)) => format!("{}:{u}", self.kind.as_str()),
            _ => self.kind.as_str().to_string(),
        }
    }

    pub fn batch_size(&self) -> usize {
        self.batch.unwrap_or(DEFAULT_BATCH).clamp(1, MAX_BATCH)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(10_000).max(1))
    }

    pub fn settle(&self) -> Duration {
        let default = if self.kind == ExportKind::Otlp {
            2000
        } else {
            0
        };
        Duration::from_millis(self.settle_ms.unwrap_or(default))
    }

    /// Checks the combination of fields (what serde cannot).
    pub fn check(&self) -> Result<()> {
        let name = self.display_name();
        match (&self.path, &self.url) {
            (Some(_), Some(_)) => bail!("export {name}: set either path or url, not both"),
            (None, None) => bail!("export {name}: set path (a file) or url"),
            (Some(p), None) => {
                if self.kind == ExportKind::Otlp {
                    bail!("export {name}: otlp needs a url (an OTLP/gRPC endpoint)");
                }
                if !p.is_absolute() {
                    bail!("export {name}: path must be absolute");
                }
                if self.ca.is_some() || !self.headers.is_empty() {
                    bail!("export {name}: ca and headers apply to url exports only");
                }
            }
            (None, Some(u)) => {
                let parsed = u
                    .parse::<reqwest::Url>()
                    .with_context(|| format!("export {name}: bad url {u:?}"))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    bail!("export {name}: url must be http:// or https://");
                }
                if self.ca.is_some() && parsed.scheme() != "https" {
                    bail!("export {name}: ca is set but the url is not https://");
                }
            }
        }
        if self.batch == Some(0) || self.batch.is_some_and(|b| b > MAX_BATCH) {
            bail!("export {name}: batch must be 1..={MAX_BATCH}");
        }
        for k in self.headers.keys() {
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                bail!("export {name}: bad header name {k:?}");
            }
        }
        Ok(())
    }

    /// Header values with `${VAR}` read from the environment.
    pub fn resolved_headers(&self) -> Result<Vec<(String, String)>> {
        self.headers
            .iter()
            .map(|(k, v)| Ok((k.to_ascii_lowercase(), expand_env(v, &self.display_name())?)))
            .collect()
    }
}

fn expand_env(v: &str, what: &str) -> Result<String> {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..]
            .find('}')
            .with_context(|| format!("export {what}: unterminated ${{ in a header"))?;
        let var = &rest[i + 2..i + end];
        out.push_str(&std::env::var(var).with_context(|| {
            format!("export {what}: environment variable {var} (used in a header) is not set")
        })?);
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks a list of exports as a whole (names must be unique: they key cursors).
pub fn check_all(exports: &[ExportConfig]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for e in exports {
        e.check()?;
        if !seen.insert(e.display_name()) {
            bail!(
                "export {}: two exports have this name; give one a distinct `name`",
                e.display_name()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let c = ExportConfig::parse_spec("jsonl:file:/tmp/x.jsonl").unwrap();
        assert_eq!(
            (c.kind, c.path.as_deref()),
            (
                ExportKind::Jsonl,
                Some(std::path::Path::new("/tmp/x.jsonl"))
            )
        );
        let c = ExportConfig::parse_spec("ocsf:http:https://siem.example/in").unwrap();
        assert_eq!(c.url.as_deref(), Some("https://siem.example/in"));
        let c = ExportConfig::parse_spec("otlp:http://127.0.0.1:4317").unwrap();
        assert_eq!(
            (c.kind, c.url.as_deref()),
            (ExportKind::Otlp, Some("http://127.0.0.1:4317"))
        );
        assert_eq!(c.settle(), Duration::from_secs(2));
        assert!(ExportConfig::parse_spec("otlp:file:/tmp/x").is_err());
        assert!(ExportConfig::parse_spec("csv:/tmp/x").is_err());
        assert!(ExportConfig::parse_spec("jsonl:relative.jsonl").is_err());
    }

    #[test]
    fn toml_tables() {
        #[derive(Deserialize)]
        struct F {
            export: Vec<ExportConfig>,
        }
        let f: F = toml::from_str(
            r#"
            [[export]]
            kind = "ocsf"
            url = "https://siem.example/x"
            headers = { authorization = "Bearer t" }
            batch = 100
            [[export]]
            kind = "jsonl"
            path = "/var/log/c.jsonl"
            start = "now"
            "#,
        )
        .unwrap();
        assert_eq!(f.export.len(), 2);
        assert_eq!(f.export[1].start, StartAt::Now);
        check_all(&f.export).unwrap();
        let bad: Result<F, _> = toml::from_str("[[export]]\nkind = \"jsonl\"\npth = \"/x\"\n");
        assert!(bad.is_err(), "unknown fields are refused");
        let twice = vec![f.export[1].clone(), f.export[1].clone()];
        assert!(check_all(&twice).is_err());
    }
}
