//! Enrollment: exchange a one-time token for a client certificate naming the host.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use custody_proto::sensor::v1::{EnrollRequest, sensor_service_client::SensorServiceClient};
use rcgen::{CertificateParams, DnType, KeyPair};

use super::tls;

/// Where enrollment leaves the host's credentials (all 0600).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledPaths {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

impl EnrolledPaths {
    pub fn in_dir(state_dir: &Path) -> EnrolledPaths {
        EnrolledPaths {
            ca_pem: state_dir.join("collector-ca.pem"),
            cert_pem: state_dir.join("client.pem"),
            key_pem: state_dir.join("client.key"),
        }
    }
}

/// The CA fingerprint a token pins ("cst1.<sha256 hex>.<secret>").
pub fn token_fingerprint(token: &str) -> Result<String> {
    let mut p = token.trim().splitn(3, '.');
    match (p.next(), p.next(), p.next()) {
        (Some("cst1"), Some(fp), Some(secret))
            if fp.len() == 64
                && fp.bytes().all(|b| b.is_ascii_hexdigit())
                && !secret.is_empty() =>
        {
            Ok(fp.to_ascii_lowercase())
        }
        _ => bail!(
            "malformed enrollment token: expected cst1.<ca-fingerprint>.<secret> as printed by \
             `custody-collector enroll-token`"
        ),
    }
}

pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Enrolls this host with the collector at `collector_addr` ("host:port"):
/// fetches the collector CA over TLS pinned to the fingerprint in `token`, sends a
/// CSR for a fresh key, and stores CA, certificate and key in `state_dir` (0600),
/// and the fleet's fingerprint key at `fleet_key` (0600) so this host's credential
/// fingerprints match every other host's.
pub async fn enroll(
    collector_addr: &str,
    token: &str,
    host_id: &str,
    state_dir: &Path,
    fleet_key: &Path,
) -> Result<EnrolledPaths> {
    let fp = token_fingerprint(token)?;
    let addr = collector_addr.to_owned();
    let fp2 = fp.clone();
    let ca_pem = tokio::task::spawn_blocking(move || tls::fetch_pinned_ca(&addr, &fp2))
        .await
        .context("enrollment task failed")??;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, host_id);
    let csr = params.serialize_request(&key)?.pem()?;

    let ch = tls::channel(collector_addr, &ca_pem, None).await?;
    let resp = SensorServiceClient::new(ch)
        .enroll(EnrollRequest {
            token: token.trim().to_owned(),
            host_id: host_id.to_owned(),
            csr_pem: csr,
        })
        .await
        .map_err(|s| anyhow!("collector refused enrollment: {}", s.message()))?
        .into_inner();
    // The CA the collector names must be the one we pinned.
    let doc = pem_cert_der(&resp.ca_cert_pem)?;
    if tls::sha256_hex(&doc) != fp {
        bail!("collector returned a CA that does not match the token's fingerprint");
    }
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    let paths = EnrolledPaths::in_dir(state_dir);
    write_private(&paths.ca_pem, resp.ca_cert_pem.as_bytes())?;
    write_private(&paths.cert_pem, resp.client_cert_pem.as_bytes())?;
    write_private(&paths.key_pem, key.serialize_pem().as_bytes())?;
    match resp.fleet_key.len() {
        32 => {
            if let Some(parent) = fleet_key.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            write_private(fleet_key, &resp.fleet_key)?;
        }
        0 => tracing::warn!(
            "the collector sent no fleet key (older collector): this host keeps its own, so \
             its credential fingerprints will not match other hosts'"
        ),
        n => bail!("collector sent a fleet key of {n} bytes, not 32"),
    }
    tracing::info!(host = host_id, dir = %state_dir.display(), "enrolled with collector");
    Ok(paths)
}

fn pem_cert_der(pem: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| anyhow!("collector returned an unreadable CA certificate"))?;
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_parsing() {
        let fp = "ab".repeat(32);
        assert_eq!(token_fingerprint(&format!("cst1.{fp}.s3cr3t")).unwrap(), fp);
        assert!(token_fingerprint("cst1.short.x").is_err());
        assert!(token_fingerprint("nonsense").is_err());
    }

    #[test]
    fn pem_roundtrip() {
        let der = vec![1u8, 2, 3, 250];
        let pem = tls::der_to_pem(&der);
        assert_eq!(pem_cert_der(&pem).unwrap(), der);
    }
}
