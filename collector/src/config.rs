//! The collector's config file (`custody-collector serve --config FILE`, TOML). Its
//! keys mirror the `serve` flags; a flag given on the command line wins over the
//! file, and what neither sets takes the built-in default. Unknown keys are refused,
//! naming the key, the file and the line.
//!
//! ```toml
//! data_dir = "/var/lib/custody-collector"
//! listen = "0.0.0.0:7443"
//! san = ["collector.example.com", "10.0.0.5"]
//! retention_age = "30d"            # "0" keeps events forever
//! retention_max_bytes = "50GiB"    # optional
//! retention_interval = "60s"
//! revocation_hooks = "/etc/custody/revocation-hooks.toml"   # relative: to this file
//! metrics_listen = "127.0.0.1:9465"                          # optional
//!
//! [[export]]                       # see collector/src/export
//! kind = "jsonl"
//! path = "/var/log/custody/events.jsonl"
//! ```

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::engine::retention::Retention;
use crate::units::{parse_bytes, parse_duration};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/custody-collector";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";
pub const DEFAULT_RETENTION_AGE: &str = "30d";
pub const DEFAULT_RETENTION_INTERVAL: &str = "60s";

/// A size as a string with a unit ("50GiB") or a plain number of bytes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn text(&self) -> String {
        match self {
            Size::Bytes(n) => n.to_string(),
            Size::Text(s) => s.clone(),
        }
    }
}

/// The file as written. Every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub san: Option<Vec<String>>,
    pub retention_age: Option<String>,
    pub retention_max_bytes: Option<Size>,
    pub retention_interval: Option<String>,
    pub revocation_hooks: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    /// `[[export]]` tables (see `export::ExportConfig`).
    #[serde(default)]
    pub export: Vec<crate::export::ExportConfig>,
}

impl FileConfig {
    /// Reads and parses `path`; errors name the file, the key and its line.
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut cfg: FileConfig = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        // Relative paths in the file are relative to the file.
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(p) = &cfg.revocation_hooks
            && p.is_relative()
        {
            cfg.revocation_hooks = Some(base.join(p));
        }
        if let Some(p) = &cfg.data_dir
            && p.is_relative()
        {
            cfg.data_dir = Some(base.join(p));
        }
        for e in &mut cfg.export {
            for p in [&mut e.path, &mut e.ca].into_iter().flatten() {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        Ok(cfg)
    }
}

/// `serve` flags as given on the command line (`None`: not given).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    /// Replaces the file's list when non-empty.
    pub san: Vec<String>,
    pub retention_age: Option<String>,
    pub retention_max_bytes: Option<String>,
    pub retention_interval: Option<String>,
    pub revocation_hooks: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
}

/// The settings in force: flags over the file over the defaults, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub san: Vec<String>,
    /// As written (for printing) and parsed.
    pub retention_age: String,
    pub retention_max_bytes: Option<String>,
    pub retention_interval: String,
    pub retention: Retention,
    pub retention_every: Duration,
    pub revocation_hooks: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub export: Vec<crate::export::ExportConfig>,
    /// The file the settings came from, if any.
    pub file: Option<PathBuf>,
}

fn addr(key: &str, v: &str, src: &str) -> Result<SocketAddr> {
    v.parse()
        .with_context(|| format!("{src}: {key} = {v:?} is not an address like 0.0.0.0:7443"))
}

impl Settings {
    /// Merges `flags` over `file` (loaded from `path`) over the defaults.
    pub fn resolve(flags: Flags, file: FileConfig, path: Option<&Path>) -> Result<Settings> {
        let src = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults".into());
        let listen = match (flags.listen, &file.listen) {
            (Some(a), _) => a,
            (None, Some(v)) => addr("listen", v, &src)?,
            (None, None) => DEFAULT_LISTEN.parse()?,
        };
        let metrics_listen = match (flags.metrics_listen, &file.metrics_listen) {
            (Some(a), _) => Some(a),
            (None, Some(v)) => Some(addr("metrics_listen", v, &src)?),
            (None, None) => None,
        };
        let retention_age = flags
            .retention_age
            .or(file.retention_age)
            .unwrap_or_else(|| DEFAULT_RETENTION_AGE.into());
        let retention_max_bytes = flags
            .retention_max_bytes
            .or(file.retention_max_bytes.as_ref().map(Size::text));
        let retention_interval = flags
            .retention_interval
            .or(file.retention_interval)
            .unwrap_or_else(|| DEFAULT_RETENTION_INTERVAL.into());
        let age = parse_duration(&retention_age)
            .with_context(|| format!("{src}: retention_age = {retention_age:?}"))?;
        let max_bytes = retention_max_bytes
            .as_deref()
            .map(|b| parse_bytes(b).with_context(|| format!("{src}: retention_max_bytes = {b:?}")))
            .transpose()?;
        let every = parse_duration(&retention_interval)
            .with_context(|| format!("{src}: retention_interval = {retention_interval:?}"))?;
        if every.is_zero() {
            anyhow::bail!("{src}: retention_interval must be more than 0");
        }
        Ok(Settings {
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            listen,
            san: if flags.san.is_empty() {
                file.san.unwrap_or_default()
            } else {
                flags.san
            },
            retention: Retention {
                max_age: (!age.is_zero()).then_some(age),
                max_bytes,
            },
            retention_age,
            retention_max_bytes,
            retention_interval,
            retention_every: every,
            revocation_hooks: flags.revocation_hooks.or(file.revocation_hooks),
            metrics_listen,
            export: file.export,
            file: path.map(Path::to_path_buf),
        })
    }

    /// Loads `path` (if any) and resolves.
    pub fn load(flags: Flags, path: Option<&Path>) -> Result<Settings> {
        let file = match path {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        Settings::resolve(flags, file, path)
    }

    /// The collector configuration these settings make (loads the hook file).
    pub fn collector_config(&self) -> Result<crate::CollectorConfig> {
        let mut cfg = crate::CollectorConfig::new(&self.data_dir, self.listen);
        cfg.sans = self.san.clone();
        cfg.retention = self.retention.clone();
        cfg.retention_interval = self.retention_every;
        cfg.metrics_listen = self.metrics_listen;
        crate::export::config::check_all(&self.export)?;
        cfg.exports = self.export.clone();
        if let Some(p) = &self.revocation_hooks {
            cfg.revocation_hooks = crate::response::hook::load(p)?;
        }
        Ok(cfg)
    }

    /// The effective settings as TOML (what `check-config` prints).
    pub fn to_toml(&self) -> String {
        let mut o = String::new();
        if let Some(f) = &self.file {
            let _ = writeln!(o, "# effective settings from {}", f.display());
        } else {
            let _ = writeln!(o, "# effective settings (built-in defaults)");
        }
        let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let _ = writeln!(o, "data_dir = {}", q(&self.data_dir.display().to_string()));
        let _ = writeln!(o, "listen = {}", q(&self.listen.to_string()));
        let sans: Vec<String> = self.san.iter().map(|s| q(s)).collect();
        let _ = writeln!(o, "san = [{}]", sans.join(", "));
        let _ = writeln!(o, "retention_age = {}", q(&self.retention_age));
        match &self.retention_max_bytes {
            Some(b) => {
                let _ = writeln!(o, "retention_max_bytes = {}", q(b));
            }
            None => {
                let _ = writeln!(o, "# retention_max_bytes: unbounded");
            }
        }
        let _ = writeln!(o, "retention_interval = {}", q(&self.retention_interval));
        match &self.revocation_hooks {
            Some(p) => {
                let _ = writeln!(o, "revocation_hooks = {}", q(&p.display().to_string()));
            }
            None => {
                let _ = writeln!(o, "# revocation_hooks: none");
            }
        }
        match &self.metrics_listen {
            Some(a) => {
                let _ = writeln!(o, "metrics_listen = {}", q(&a.to_string()));
            }
            None => {
                let _ = writeln!(o, "# metrics_listen: off");
            }
        }
        for e in &self.export {
            let t = toml::to_string(e).unwrap_or_default();
            let _ = writeln!(o, "\n[[export]]\n{}", t.trim_end());
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("collector.toml");
        std::fs::write(&p, text).unwrap();
        FileConfig::load(&p)
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = parse("listen = \"127.0.0.1:1\"\nretention_days = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("collector.toml"), "{e}");
        assert!(e.contains("retention_days"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn flags_win_over_file_over_defaults() {
        let file = parse(
            "listen = \"127.0.0.1:9000\"\nsan = [\"a.example\"]\nretention_max_bytes = 1024\n\
             metrics_listen = \"127.0.0.1:9465\"\nrevocation_hooks = \"hooks.toml\"\n\
             [[export]]\nkind = \"jsonl\"\npath = \"/tmp/x\"\n",
        )
        .unwrap();
        assert!(file.revocation_hooks.as_ref().unwrap().is_absolute());
        let s = Settings::resolve(
            Flags {
                listen: Some("127.0.0.1:9001".parse().unwrap()),
                ..Default::default()
            },
            file,
            Some(Path::new("/etc/custody/collector.toml")),
        )
        .unwrap();
        assert_eq!(s.listen.port(), 9001);
        assert_eq!(s.san, vec!["a.example"]);
        assert_eq!(s.retention.max_bytes, Some(1024));
        assert_eq!(s.retention.max_age, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(s.metrics_listen.unwrap().port(), 9465);
        assert_eq!(s.export.len(), 1);
        let t = s.to_toml();
        assert!(t.contains("listen = \"127.0.0.1:9001\""), "{t}");
        assert!(t.contains("[[export]]\nkind = \"jsonl\""), "{t}");
        let d = Settings::resolve(Flags::default(), FileConfig::default(), None).unwrap();
        assert_eq!(d.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(d.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(d.metrics_listen.is_none());
    }

    #[test]
    fn bad_values_are_located() {
        let e = Settings::resolve(
            Flags::default(),
            FileConfig {
                retention_age: Some("soon".into()),
                ..Default::default()
            },
            Some(Path::new("c.toml")),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("c.toml: retention_age"), "{e:#}");
    }
}
