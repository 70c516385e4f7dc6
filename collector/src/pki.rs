//! The collector's certificate authority: created on first start in the data dir,
//! it signs the collector's server certificate and every enrolled host's client
//! certificate. Sensors pin it by the SHA-256 of its DER, which enrollment tokens carry.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::secret::{sha256_hex, write_private};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
/// Client certificates are re-issued by re-enrolling; a year keeps hosts from
/// silently dropping off while limiting the life of a stolen key.
const CLIENT_CERT_DAYS: i64 = 365;

pub struct Pki {
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    /// Hex SHA-256 of the CA certificate DER: what enrollment tokens pin.
    pub ca_fingerprint: String,
    /// Server certificate followed by the CA certificate, so a client that pins the
    /// CA fingerprint finds it in the presented chain.
    pub server_chain_pem: String,
    pub server_key_pem: String,
    /// The fleet key handed to sensors at enrollment (see [`load_or_create_fleet_key`]).
    pub fleet_key: [u8; FLEET_KEY_LEN],
    issuer: Issuer<'static, KeyPair>,
    issued: std::sync::atomic::AtomicU64,
}

/// A CSR that parsed (see [`Pki::check_csr`]); only its public key is used.
pub struct Csr(CertificateSigningRequestParams);

/// A CSR is a few hundred bytes; anything much larger is not one.
const CSR_MAX_BYTES: usize = 16 * 1024;

pub const FLEET_KEY_LEN: usize = 32;
const FLEET_KEY: &str = "fleet.key";

/// The fleet's credential-fingerprint key, `DATA_DIR/fleet.key` (32 random bytes,
/// 0600), created on first start. Every sensor gets it at enrollment so that a secret
/// has the same fingerprint on every host; losing it means re-enrolling every host.
pub fn load_or_create_fleet_key(data_dir: &Path) -> Result<[u8; FLEET_KEY_LEN]> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = data_dir.join(FLEET_KEY);
    match std::fs::read(&path) {
        Ok(b) => {
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "{} has mode {mode:04o}: it must be readable by the collector only (chmod 600)",
                    path.display()
                );
            }
            b.try_into().map_err(|b: Vec<u8>| {
                anyhow::anyhow!(
                    "{} holds {} bytes, not {FLEET_KEY_LEN}: restore it from a backup (a new key \
                     changes every fingerprint; hosts would have to re-enroll)",
                    path.display(),
                    b.len()
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = crate::secret::random_bytes::<FLEET_KEY_LEN>();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(&key)?;
            f.sync_all()?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn random_serial() -> SerialNumber {
    let mut b = crate::secret::random_bytes::<16>();
    b[0] &= 0x7f; // positive INTEGER
    SerialNumber::from_slice(&b)
}

impl Pki {
    /// Loads the CA from `data_dir`, creating it on first start, and issues a fresh
    /// server certificate for `server_names` (DNS names or IP addresses).
    pub fn load_or_create(data_dir: &Path, server_names: &[String]) -> Result<Pki> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        let (cert_path, key_path) = (data_dir.join(CA_CERT), data_dir.join(CA_KEY));
        let (ca_pem, ca_key) = match (cert_path.exists(), key_path.exists()) {
            (true, true) => load_ca(&cert_path, &key_path)?,
            (false, false) => create_ca(&cert_path, &key_path)?,
            _ => bail!(
                "{} has only one of {CA_CERT} and {CA_KEY}; restore the missing file or \
                 remove both to create a new CA (every host must then re-enroll)",
                data_dir.display()
            ),
        };
        let ca_der = pem_to_der(&ca_pem).context("CA certificate is not valid PEM")?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
            .with_context(|| format!("cannot use {} as CA", cert_path.display()))?;

        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        for n in server_names {
            if !n.is_empty() && !names.contains(n) {
                names.push(n.clone());
            }
        }
        let mut params = CertificateParams::new(names).context("invalid server name (--san)")?;
        params
            .distinguished_name
            .push(DnType::CommonName, "custody-collector");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(CLIENT_CERT_DAYS);
        params.serial_number = Some(random_serial());
        let server_key = KeyPair::generate()?;
        let server_cert = params.signed_by(&server_key, &issuer)?;
        Ok(Pki {
            ca_fingerprint: sha256_hex(&ca_der),
            server_chain_pem: format!("{}{}", server_cert.pem(), ca_pem),
            server_key_pem: server_key.serialize_pem(),
            fleet_key: load_or_create_fleet_key(data_dir)?,
            issued: Default::default(),
            ca_pem,
            ca_der,
            issuer,
        })
    }

    /// Reads a sensor's CSR without signing anything: enrollment checks the CSR,
    /// then the token, and only then spends a signature (so the unauthenticated
    /// cannot make the collector sign at will, and a bad CSR does not burn a token).
    pub fn check_csr(csr_pem: &str) -> Result<Csr> {
        if csr_pem.len() > CSR_MAX_BYTES {
            bail!("invalid CSR: {} bytes, over {CSR_MAX_BYTES}", csr_pem.len());
        }
        CertificateSigningRequestParams::from_pem(csr_pem)
            .map(Csr)
            .map_err(|e| anyhow::anyhow!("invalid CSR: {e}"))
    }

    /// Certificates signed since start (status and tests).
    pub fn issued(&self) -> u64 {
        self.issued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Issues a client certificate for `host_id` over the public key of `csr`. The
    /// CSR's own subject and extensions are ignored: the collector alone decides
    /// which identity a host gets. Returns the PEM, its expiry (Unix ns) and the
    /// identity the collector records as the host's current certificate.
    pub fn sign_client(&self, host_id: &str, csr: Csr) -> Result<(String, u64, CertIdentity)> {
        let csr = csr.0;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, host_id);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "custody-sensor");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(CLIENT_CERT_DAYS);
        params.serial_number = Some(random_serial());
        let not_after_ns = params.not_after.unix_timestamp_nanos().max(0) as u64;
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        self.issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let identity = cert_identity(signed.der())?;
        Ok((signed.pem(), not_after_ns, identity))
    }
}

fn load_ca(cert_path: &PathBuf, key_path: &PathBuf) -> Result<(String, KeyPair)> {
    let ca_pem = std::fs::read_to_string(cert_path)
        .with_context(|| format!("cannot read {}", cert_path.display()))?;
    let key_pem = std::fs::read_to_string(key_path)
        .with_context(|| format!("cannot read {}", key_path.display()))?;
    let key = KeyPair::from_pem(&key_pem)
        .with_context(|| format!("{} is not a valid private key", key_path.display()))?;
    Ok((ca_pem, key))
}

fn create_ca(cert_path: &Path, key_path: &Path) -> Result<(String, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Custody collector CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    write_private(key_path, key.serialize_pem().as_bytes())?;
    write_private(cert_path, cert.pem().as_bytes())?;
    tracing::info!(path = %cert_path.display(), "created collector CA");
    Ok((cert.pem(), key))
}

pub fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    let (_, doc) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("bad PEM: {e}"))?;
    Ok(doc.contents)
}

/// Which certificate a host presents: its host id (subject CN) and what tells one
/// certificate for that host from another. The CA can sign many certificates with
/// the same CN over time; the collector records the one it issued last per host
/// and accepts only that one (see `Engine::check_sensor_cert`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertIdentity {
    pub host: String,
    /// The certificate's serial number, lowercase hex.
    pub serial: String,
    /// Hex SHA-256 of the certificate's SubjectPublicKeyInfo (DER): the host's key.
    pub spki_sha256: String,
}

/// Reads host id, serial and key hash from a client certificate's DER. The TLS
/// layer has already verified the certificate against our CA.
pub fn cert_identity(der: &[u8]) -> Result<CertIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("unparseable client certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let host = match cn {
        Some(cn) if !cn.is_empty() => cn,
        _ => bail!("client certificate has no subject CN"),
    };
    Ok(CertIdentity {
        host,
        serial: hex::encode(cert.raw_serial()),
        spki_sha256: sha256_hex(cert.public_key().raw),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_persists_and_signs_csr() {
        let dir = tempfile::tempdir().unwrap();
        let p1 = Pki::load_or_create(dir.path(), &["collector.example".into()]).unwrap();
        let p2 = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(p1.ca_fingerprint, p2.ca_fingerprint);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "evil");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let (pem, _, issued) = p1
            .sign_client("host-a", Pki::check_csr(&csr).unwrap())
            .unwrap();
        let presented = cert_identity(&pem_to_der(&pem).unwrap()).unwrap();
        assert_eq!(presented, issued);
        assert_eq!(presented.host, "host-a");
        assert_eq!(presented.serial.len(), 32, "16 random bytes");
        // The key hash is over the CSR's key: a second certificate for the same key
        // differs by serial only.
        let (pem2, _, again) = p1
            .sign_client("host-a", Pki::check_csr(&csr).unwrap())
            .unwrap();
        assert_ne!(pem, pem2);
        assert_eq!(again.spki_sha256, issued.spki_sha256);
        assert_ne!(again.serial, issued.serial);
        assert!(Pki::check_csr("garbage").is_err());
        assert!(Pki::check_csr(&"A".repeat(20_000)).is_err());
        assert_eq!(p1.issued(), 2);
    }

    #[test]
    fn half_a_ca_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        Pki::load_or_create(dir.path(), &[]).unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY)).unwrap();
        let err = Pki::load_or_create(dir.path(), &[]).err().unwrap();
        assert!(err.to_string().contains("only one of"), "{err}");
    }
}
