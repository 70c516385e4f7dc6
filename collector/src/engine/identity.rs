//! Host identity: which client certificate speaks for a host id.
//!
//! The CA signs a certificate per enrollment and the TLS layer accepts any
//! certificate it signed, so the CN alone does not say which one is the host's.
//! The engine records the certificate issued at the host's last enrollment (serial
//! and key hash) and sensor streams are accepted with that one only: an older
//! certificate, or one someone else obtained for the same host id, is refused.
//! Enrolling an id that is already enrolled needs a token bound to it (an admin's
//! re-enroll) unless an admin retired the identity first; a retired identity's
//! certificate is refused while its data stays readable.

use std::sync::atomic::Ordering;

use anyhow::Result;
use custody_proto::admin::v1::AuditEntry;

use super::Engine;
use crate::clock::now_ns;
use crate::fleet::{CurrentCert, Retirement};
use crate::pki::CertIdentity;

/// Why a sensor's certificate was refused; the message goes back to the sensor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertRefusal {
    #[error(
        "host {host:?} is not enrolled at this collector: its certificate was signed by this CA \
         but no enrollment of it is on record; enroll the host (`custodyd enroll`)"
    )]
    NotEnrolled { host: String },
    #[error(
        "the identity of host {host:?} was retired by {by} (certificate serial {serial} is no \
         longer accepted); enroll the host again (`custodyd enroll`) to give it a new identity"
    )]
    Retired {
        host: String,
        by: String,
        serial: String,
    },
    #[error(
        "certificate serial {serial} is not the current certificate of host {host:?}: a later \
         enrollment replaced it. If this is the real host, re-enroll it with a token bound to it \
         (`custody-collector enroll-token --host {host}`)"
    )]
    Superseded { host: String, serial: String },
}

impl CertRefusal {
    /// Metric labels, indexed as [`CertRefusal::index`].
    pub const REASONS: [&'static str; 3] = ["not_enrolled", "retired", "superseded"];

    pub fn index(&self) -> usize {
        match self {
            CertRefusal::NotEnrolled { .. } => 0,
            CertRefusal::Retired { .. } => 1,
            CertRefusal::Superseded { .. } => 2,
        }
    }
}

/// Why `custodyctl host retire` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetireError {
    #[error("no host {0:?}: `custodyctl hosts` lists the enrolled ones")]
    Unknown(String),
    #[error("host {host:?} was already retired by {by}")]
    AlreadyRetired { host: String, by: String },
    #[error("recording the retirement failed: {0}")]
    Store(String),
}

/// What the engine says about a presented certificate before anything changes.
enum Verdict {
    Current,
    /// A host enrolled before certificates were recorded: the first certificate
    /// its sensor streams with becomes its current one.
    Adopt,
    Refused(CertRefusal),
}

fn judge(h: Option<&crate::fleet::HostRecord>, c: &CertIdentity) -> Verdict {
    let Some(h) = h.filter(|h| h.enrolled_at_ns > 0 || h.cert.is_some()) else {
        return Verdict::Refused(CertRefusal::NotEnrolled {
            host: c.host.clone(),
        });
    };
    if let Some(r) = &h.retired {
        return Verdict::Refused(CertRefusal::Retired {
            host: c.host.clone(),
            by: r.by.clone(),
            serial: c.serial.clone(),
        });
    }
    match &h.cert {
        None => Verdict::Adopt,
        Some(cur) if cur.serial == c.serial && cur.spki_sha256 == c.spki_sha256 => Verdict::Current,
        Some(_) => Verdict::Refused(CertRefusal::Superseded {
            host: c.host.clone(),
            serial: c.serial.clone(),
        }),
    }
}

impl Engine {
    /// Whether `host` may be enrolled with a token that is (`bound`) or is not bound
    /// to it. `Err` holds the message for the enrolling host.
    pub fn may_enroll(&self, host: &str, bound: bool) -> Result<(), String> {
        let st = self.read();
        let Some(h) = st.fleet.hosts.get(host) else {
            return Ok(());
        };
        if bound || h.retired.is_some() || (h.enrolled_at_ns == 0 && h.cert.is_none()) {
            return Ok(());
        }
        Err(format!(
            "host {host:?} is already enrolled; a token that is not bound to it cannot take \
             over its identity. To re-enroll this host, have an admin mint a token bound to it \
             (`custody-collector enroll-token --host {host}`); if the host is lost or rebuilt, \
             an admin retires its identity first (`custodyctl host retire {host}`)"
        ))
    }

    /// Records an enrollment: `cert` becomes the host's only accepted certificate
    /// and a retirement is lifted. Durable before returning. Returns the
    /// certificate it replaced, if any.
    pub fn enrolled(&self, cert: &CertIdentity, not_after_ns: u64) -> Result<Option<CurrentCert>> {
        let _gate = self.gate();
        let mut st = self.write();
        let h = st.fleet.host_mut(&cert.host);
        let now = now_ns();
        h.enrolled_at_ns = now;
        h.retired = None;
        let old = h.cert.replace(CurrentCert {
            serial: cert.serial.clone(),
            spki_sha256: cert.spki_sha256.clone(),
            issued_at_ns: now,
            not_after_ns,
        });
        self.persist_now(&mut st)?;
        drop(st);
        self.store.flush()?;
        Ok(old)
    }

    /// Accepts `cert` only if it is its host's current certificate. Refusals are
    /// counted (collector-wide by reason, and per host).
    pub fn check_sensor_cert(&self, cert: &CertIdentity) -> Result<(), CertRefusal> {
        let verdict = judge(self.read().fleet.hosts.get(&cert.host), cert);
        let verdict = match verdict {
            Verdict::Adopt => self.adopt_cert(cert),
            v => v,
        };
        match verdict {
            Verdict::Current | Verdict::Adopt => Ok(()),
            Verdict::Refused(r) => {
                self.metrics.certs_refused[r.index()].fetch_add(1, Ordering::Relaxed);
                if !matches!(r, CertRefusal::NotEnrolled { .. }) {
                    // Persisted with the next commit that touches the fleet.
                    self.write().fleet.host_mut(&cert.host).certs_refused += 1;
                }
                Err(r)
            }
        }
    }

    /// Makes `cert` the current certificate of a host enrolled before they were
    /// recorded, unless another certificate got there first.
    fn adopt_cert(&self, cert: &CertIdentity) -> Verdict {
        let _gate = self.gate();
        let mut st = self.write();
        let verdict = judge(st.fleet.hosts.get(&cert.host), cert);
        if !matches!(verdict, Verdict::Adopt) {
            return verdict;
        }
        st.fleet.host_mut(&cert.host).cert = Some(CurrentCert {
            serial: cert.serial.clone(),
            spki_sha256: cert.spki_sha256.clone(),
            issued_at_ns: 0,
            not_after_ns: 0,
        });
        if let Err(e) = self.persist_now(&mut st) {
            tracing::error!(host = %cert.host, "recording the adopted certificate failed: {e:#}");
        }
        drop(st);
        tracing::warn!(host = %cert.host, serial = %cert.serial,
            "host enrolled before certificates were recorded: its certificate is now the only one accepted");
        let _ = self.audit(AuditEntry {
            actor: format!("host:{}", cert.host),
            action: "adopt certificate".into(),
            target: cert.host.clone(),
            result: "ok".into(),
            details: [("cert_serial".to_owned(), cert.serial.clone())].into(),
            ..Default::default()
        });
        Verdict::Adopt
    }

    /// Retires `host`'s identity: its certificate is refused from now on, its data
    /// stays, and the id can be enrolled again with any token.
    pub fn retire_host(&self, host: &str, by: &str, reason: &str) -> Result<(), RetireError> {
        let _gate = self.gate();
        let mut st = self.write();
        match st.fleet.hosts.get(host) {
            None => return Err(RetireError::Unknown(host.to_owned())),
            Some(h) => {
                if let Some(r) = &h.retired {
                    return Err(RetireError::AlreadyRetired {
                        host: host.to_owned(),
                        by: r.by.clone(),
                    });
                }
            }
        }
        st.fleet.host_mut(host).retired = Some(Retirement {
            at_ns: now_ns(),
            by: by.to_owned(),
            reason: reason.to_owned(),
        });
        // Refused in memory from here on even if the write fails; the caller is
        // told it is not durable.
        let store_err = |e: anyhow::Error| RetireError::Store(format!("{e:#}"));
        self.persist_now(&mut st).map_err(store_err)?;
        drop(st);
        self.store.flush().map_err(store_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(host: &str, serial: &str) -> CertIdentity {
        CertIdentity {
            host: host.into(),
            serial: serial.into(),
            spki_sha256: format!("key-of-{serial}"),
        }
    }

    #[test]
    fn only_the_last_enrollment_speaks_for_a_host() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path()).unwrap();
        assert!(e.may_enroll("h", false).is_ok(), "a new id: any token");
        assert!(matches!(
            e.check_sensor_cert(&cert("h", "01")),
            Err(CertRefusal::NotEnrolled { .. })
        ));
        assert_eq!(e.enrolled(&cert("h", "01"), 0).unwrap(), None);
        e.check_sensor_cert(&cert("h", "01")).unwrap();
        let err = e.may_enroll("h", false).unwrap_err();
        assert!(err.contains("already enrolled"), "{err}");
        assert!(e.may_enroll("h", true).is_ok(), "a token bound to it");

        let old = e.enrolled(&cert("h", "02"), 0).unwrap().unwrap();
        assert_eq!(old.serial, "01");
        assert!(matches!(
            e.check_sensor_cert(&cert("h", "01")),
            Err(CertRefusal::Superseded { .. })
        ));
        // Same serial, another key: not the certificate that was issued.
        let mut forged = cert("h", "02");
        forged.spki_sha256 = "other".into();
        assert!(e.check_sensor_cert(&forged).is_err());
        e.check_sensor_cert(&cert("h", "02")).unwrap();

        e.retire_host("h", "root", "lost").unwrap();
        assert!(matches!(
            e.retire_host("h", "root", ""),
            Err(RetireError::AlreadyRetired { .. })
        ));
        assert!(matches!(
            e.retire_host("nope", "root", ""),
            Err(RetireError::Unknown(_))
        ));
        assert!(matches!(
            e.check_sensor_cert(&cert("h", "02")),
            Err(CertRefusal::Retired { .. })
        ));
        assert!(e.may_enroll("h", false).is_ok(), "retired: any token");
        e.enrolled(&cert("h", "03"), 0).unwrap();
        e.check_sensor_cert(&cert("h", "03")).unwrap();
        assert!(e.check_sensor_cert(&cert("h", "02")).is_err());
        let st = e.read();
        let h = &st.fleet.hosts["h"];
        assert!(h.retired.is_none());
        assert_eq!(h.certs_refused, 4);
        drop(st);
        let refused: u64 = e
            .metrics
            .certs_refused
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum();
        assert_eq!(refused, 5);
    }

    #[test]
    fn a_host_enrolled_before_certificates_were_recorded_adopts_its_first() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = Engine::open(dir.path()).unwrap();
            e.enrolled(&cert("h", "01"), 0).unwrap();
            // As an older collector left it: enrolled, no certificate on record.
            let _gate = e.gate();
            let mut st = e.write();
            st.fleet.host_mut("h").cert = None;
            e.persist_now(&mut st).unwrap();
        }
        let e = Engine::open(dir.path()).unwrap();
        e.check_sensor_cert(&cert("h", "07")).unwrap();
        assert!(matches!(
            e.check_sensor_cert(&cert("h", "08")),
            Err(CertRefusal::Superseded { .. })
        ));
        drop(e);
        // Durable.
        let e = Engine::open(dir.path()).unwrap();
        e.check_sensor_cert(&cert("h", "07")).unwrap();
    }
}
