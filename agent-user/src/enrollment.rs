//! The host's enrollment with a collector: which collector, which host identity. The
//! certificate and key live next to it in the state directory (0600), written by
//! `custodyd enroll`.

use std::path::{Path, PathBuf};

use agent_user::shipper::{self, EnrolledPaths};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Enrollment {
    pub collector: String,
    pub host_id: String,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("enrollment.toml")
}

impl Enrollment {
    pub fn load(state_dir: &Path) -> Result<Option<Enrollment>> {
        let p = path(state_dir);
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(toml::from_str(&s).with_context(|| {
                format!("{} is corrupt; re-run `custodyd enroll`", p.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    pub fn paths(state_dir: &Path) -> EnrolledPaths {
        EnrolledPaths::in_dir(state_dir)
    }
}

/// `custodyd enroll`: exchange a one-time token for this host's client certificate.
pub async fn enroll(
    collector: &str,
    token: &str,
    host_id: &str,
    state_dir: &Path,
    fleet_key: &Path,
) -> Result<()> {
    if host_id.is_empty() || host_id.contains(':') || host_id.contains(char::is_whitespace) {
        bail!(
            "host id {host_id:?} must be non-empty with no ':' or spaces (it prefixes every exec id)"
        );
    }
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating state dir {}", state_dir.display()))?;
    let paths = shipper::enroll(collector, token, host_id, state_dir, fleet_key).await?;
    let e = Enrollment {
        collector: collector.to_string(),
        host_id: host_id.to_string(),
    };
    std::fs::write(path(state_dir), toml::to_string(&e)?)?;
    println!(
        "enrolled host {host_id:?} with collector {collector}\n  client certificate {}\n  collector CA {}\n  fleet key {}\nnext: systemctl enable --now custodyd (or run custodyd without --standalone)",
        paths.cert_pem.display(),
        paths.ca_pem.display(),
        fleet_key.display()
    );
    Ok(())
}
