//! Secrets that let someone in: one-time enrollment tokens for hosts and operator
//! tokens (with a role) for the admin API.
//!
//! Both are kept as small files under the data dir, named by the SHA-256 of the
//! secret, rather than in sled: sled holds an exclusive lock on its directory while
//! the collector runs, and `custody-collector enroll-token` / `operator-token` must
//! work next to a running collector. Single use of an enrollment token is enforced
//! by atomically creating a `.used` marker (O_EXCL), which is race-free across
//! processes. Only hashes are stored; a token is printed once, by the mint command.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::clock::now_ns;
use crate::secret::{random_bytes, sha256_hex, write_private};

const ENROLL_PREFIX: &str = "cst1";
const OPERATOR_PREFIX: &str = "cso1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Responder,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Responder => "responder",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "responder" => Ok(Role::Responder),
            "admin" => Ok(Role::Admin),
            _ => bail!("unknown role {s:?}: expected viewer, responder or admin"),
        }
    }
}

/// An authenticated operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub role: Role,
}

#[derive(Serialize, Deserialize)]
struct OperatorRecord {
    name: String,
    role: Role,
    created_at_ns: u64,
}

#[derive(Serialize, Deserialize)]
struct EnrollRecord {
    created_at_ns: u64,
    expires_at_ns: u64,
    /// When set, only this host id may enroll with the token.
    host_id: Option<String>,
}

/// Why an enrollment token was refused; the message goes back to the host.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnrollTokenError {
    #[error("malformed enrollment token (expected cst1.<ca-fingerprint>.<secret>)")]
    Malformed,
    #[error(
        "enrollment token was issued by a different collector CA (token pins {token_fp}, this collector's CA is {ca_fp})"
    )]
    WrongCa { token_fp: String, ca_fp: String },
    #[error("unknown enrollment token; mint one with `custody-collector enroll-token`")]
    Unknown,
    #[error("enrollment token expired; mint a new one with `custody-collector enroll-token`")]
    Expired,
    #[error("enrollment token was already used; tokens are single-use, mint a new one")]
    AlreadyUsed,
    #[error("enrollment token is bound to host {bound:?}, not {requested:?}")]
    WrongHost { bound: String, requested: String },
    #[error("token store error: {0}")]
    Store(String),
}

/// An enrollment token that passed [`TokenStore::check_enroll`], not yet used up.
#[derive(Debug)]
pub struct EnrollGrant {
    /// The token was minted for this host id (an admin's enrollment or re-enrollment
    /// of that host), not for any host.
    pub bound: bool,
    hash: String,
}

/// Token files under a collector data dir.
#[derive(Clone, Debug)]
pub struct TokenStore {
    enroll_dir: PathBuf,
    operator_dir: PathBuf,
}

impl TokenStore {
    pub fn open(data_dir: &Path) -> Result<TokenStore> {
        let s = TokenStore {
            enroll_dir: data_dir.join("enroll-tokens"),
            operator_dir: data_dir.join("operators"),
        };
        for d in [&s.enroll_dir, &s.operator_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(s)
    }

    /// Mints a one-time enrollment token valid for `ttl`, pinned to the CA fingerprint.
    pub fn mint_enroll(
        &self,
        ca_fingerprint: &str,
        ttl: std::time::Duration,
        host_id: Option<&str>,
    ) -> Result<(String, u64)> {
        let secret = hex::encode(random_bytes::<32>());
        let now = now_ns();
        let rec = EnrollRecord {
            created_at_ns: now,
            expires_at_ns: now.saturating_add(ttl.as_nanos() as u64),
            host_id: host_id.filter(|h| !h.is_empty()).map(str::to_owned),
        };
        let path = self
            .enroll_dir
            .join(format!("{}.json", sha256_hex(secret.as_bytes())));
        write_private(&path, &serde_json::to_vec(&rec)?)?;
        Ok((
            format!("{ENROLL_PREFIX}.{ca_fingerprint}.{secret}"),
            rec.expires_at_ns,
        ))
    }

    /// Checks and consumes an enrollment token. Consumption happens before the
    /// certificate is issued so that two concurrent uses cannot both succeed.
    pub fn consume_enroll(
        &self,
        token: &str,
        ca_fingerprint: &str,
        host_id: &str,
    ) -> Result<(), EnrollTokenError> {
        let grant = self.check_enroll(token, ca_fingerprint, host_id)?;
        self.consume(&grant, host_id)
    }

    /// Checks an enrollment token without using it up: the caller may still refuse
    /// the enrollment (an enrolled host id) and the token stays usable.
    pub fn check_enroll(
        &self,
        token: &str,
        ca_fingerprint: &str,
        host_id: &str,
    ) -> Result<EnrollGrant, EnrollTokenError> {
        let (fp, secret) = parse_enroll_token(token).ok_or(EnrollTokenError::Malformed)?;
        if !fp.eq_ignore_ascii_case(ca_fingerprint) {
            return Err(EnrollTokenError::WrongCa {
                token_fp: fp.to_owned(),
                ca_fp: ca_fingerprint.to_owned(),
            });
        }
        let hash = sha256_hex(secret.as_bytes());
        let path = self.enroll_dir.join(format!("{hash}.json"));
        let raw = match std::fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(EnrollTokenError::Unknown);
            }
            Err(e) => return Err(EnrollTokenError::Store(e.to_string())),
        };
        let rec: EnrollRecord =
            serde_json::from_slice(&raw).map_err(|e| EnrollTokenError::Store(e.to_string()))?;
        if now_ns() > rec.expires_at_ns {
            return Err(EnrollTokenError::Expired);
        }
        if let Some(bound) = &rec.host_id
            && bound != host_id
        {
            return Err(EnrollTokenError::WrongHost {
                bound: bound.clone(),
                requested: host_id.to_owned(),
            });
        }
        if self.enroll_dir.join(format!("{hash}.used")).exists() {
            return Err(EnrollTokenError::AlreadyUsed);
        }
        Ok(EnrollGrant {
            bound: rec.host_id.is_some(),
            hash,
        })
    }

    /// Uses up a checked token. Race-free across processes: of two concurrent uses
    /// one gets `AlreadyUsed`.
    pub fn consume(&self, grant: &EnrollGrant, host_id: &str) -> Result<(), EnrollTokenError> {
        let hash = &grant.hash;
        let marker = self.enroll_dir.join(format!("{hash}.used"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
        {
            Ok(mut f) => {
                use std::io::Write;
                let _ = writeln!(f, "{host_id} {}", now_ns());
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(EnrollTokenError::AlreadyUsed)
            }
            Err(e) => Err(EnrollTokenError::Store(e.to_string())),
        }
    }

    pub fn mint_operator(&self, name: &str, role: Role) -> Result<String> {
        if name.is_empty() {
            bail!("operator name must not be empty");
        }
        let token = format!("{OPERATOR_PREFIX}.{}", hex::encode(random_bytes::<32>()));
        let rec = OperatorRecord {
            name: name.to_owned(),
            role,
            created_at_ns: now_ns(),
        };
        let path = self
            .operator_dir
            .join(format!("{}.json", sha256_hex(token.as_bytes())));
        write_private(&path, &serde_json::to_vec(&rec)?)?;
        Ok(token)
    }

    /// Looks an operator token up; `None` when unknown.
    pub fn operator(&self, token: &str) -> Option<Operator> {
        if !token.starts_with(OPERATOR_PREFIX) || token.len() > 256 {
            return None;
        }
        let path = self
            .operator_dir
            .join(format!("{}.json", sha256_hex(token.as_bytes())));
        let rec: OperatorRecord = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        Some(Operator {
            name: rec.name,
            role: rec.role,
        })
    }
}

/// Splits "cst1.<fp>.<secret>" into (fp, secret).
pub fn parse_enroll_token(token: &str) -> Option<(&str, &str)> {
    let mut parts = token.trim().splitn(3, '.');
    let (p, fp, secret) = (parts.next()?, parts.next()?, parts.next()?);
    let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (p == ENROLL_PREFIX && hex64(fp) && hex64(secret)).then_some((fp, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "aa00000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn enroll_token_is_single_use_and_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let s = TokenStore::open(dir.path()).unwrap();
        let (t, _) = s
            .mint_enroll(FP, std::time::Duration::from_secs(60), None)
            .unwrap();
        let other = "bb".repeat(32);
        assert!(matches!(
            s.consume_enroll(&t, &other, "h"),
            Err(EnrollTokenError::WrongCa { .. })
        ));
        s.consume_enroll(&t, FP, "h").unwrap();
        assert_eq!(
            s.consume_enroll(&t, FP, "h"),
            Err(EnrollTokenError::AlreadyUsed)
        );
        assert_eq!(
            s.consume_enroll("cst1.x.y", FP, "h"),
            Err(EnrollTokenError::Malformed)
        );
        // No file holds the raw secret.
        let secret = t.rsplit('.').next().unwrap();
        for e in std::fs::read_dir(dir.path().join("enroll-tokens")).unwrap() {
            let e = e.unwrap();
            assert!(!e.file_name().to_string_lossy().contains(secret));
            assert!(!std::fs::read_to_string(e.path()).unwrap().contains(secret));
        }
    }

    #[test]
    fn expired_and_bound_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let s = TokenStore::open(dir.path()).unwrap();
        let (t, _) = s.mint_enroll(FP, std::time::Duration::ZERO, None).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(
            s.consume_enroll(&t, FP, "h"),
            Err(EnrollTokenError::Expired)
        );
        let (t, _) = s
            .mint_enroll(FP, std::time::Duration::from_secs(60), Some("a"))
            .unwrap();
        assert!(matches!(
            s.consume_enroll(&t, FP, "b"),
            Err(EnrollTokenError::WrongHost { .. })
        ));
        // Checking does not use a token up; consuming does, once.
        let grant = s.check_enroll(&t, FP, "a").unwrap();
        assert!(grant.bound);
        assert!(s.check_enroll(&t, FP, "a").is_ok());
        s.consume(&grant, "a").unwrap();
        assert_eq!(s.consume(&grant, "a"), Err(EnrollTokenError::AlreadyUsed));
        assert_eq!(
            s.check_enroll(&t, FP, "a").unwrap_err(),
            EnrollTokenError::AlreadyUsed
        );
        let (any, _) = s
            .mint_enroll(FP, std::time::Duration::from_secs(60), None)
            .unwrap();
        assert!(!s.check_enroll(&any, FP, "a").unwrap().bound);
    }

    #[test]
    fn operator_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let s = TokenStore::open(dir.path()).unwrap();
        let t = s.mint_operator("bob", Role::Responder).unwrap();
        assert_eq!(
            s.operator(&t),
            Some(Operator {
                name: "bob".into(),
                role: Role::Responder
            })
        );
        assert_eq!(s.operator("cso1.nope"), None);
        assert!(Role::Viewer < Role::Responder && Role::Responder < Role::Admin);
    }
}
