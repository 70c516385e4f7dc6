//! A process seen with a revoked credential, or one a policy forbids to its agent
//! (a [`Violation`], found by the credential watch): stopped on sight, or — when the
//! kernel held it at exec or before a TLS send — vetted and settled through its
//! hold, reported the same way.

use agent_ebpf::flag;
use custody_proto::sensor::v1::Event;

use crate::kernel::decode;
use crate::pipeline::Pipeline;
use crate::watch::{CredentialWatch, Violation};
use crate::{enforce, hold};

/// The exec record of a process held at exec: what settling needs from it.
pub(crate) struct HeldExec {
    pub(crate) tgid: u32,
    pub(crate) held_ns: u64,
    /// The environment, when the kernel captured all of it.
    pub(crate) env: Option<Vec<u8>>,
}

/// A record that a held process waits for.
pub(crate) enum HeldRecord {
    Exec(HeldExec),
    /// A write held at the entry of SSL_write(_ex): for vetting only (the call's own
    /// record follows when it returns, if it is let go).
    Tls {
        tgid: u32,
        start_boottime: u64,
        write: hold::HeldWrite,
    },
}

pub(crate) fn held_record(raw: &decode::Raw) -> Option<HeldRecord> {
    match raw {
        decode::Raw::Exec(e) if e.hdr.flags & flag::HELD != 0 => {
            let complete = e.hdr.flags & (flag::ENV_TRUNCATED | flag::READ_FAILED) == 0;
            Some(HeldRecord::Exec(HeldExec {
                tgid: e.hdr.tgid,
                held_ns: e.hdr.ktime_ns,
                env: complete.then(|| e.env[..(e.env_len as usize).min(e.env.len())].to_vec()),
            }))
        }
        decode::Raw::Tls(e) if e.hdr.flags & flag::HELD != 0 => Some(HeldRecord::Tls {
            tgid: e.hdr.tgid,
            start_boottime: e.hdr.start_boottime,
            write: hold::HeldWrite {
                tid: e.hdr.pid,
                conn: e.conn,
                buf: e.buf,
                len: u64::from(e.len),
                data: e.data[..(e.captured as usize).min(e.data.len())].to_vec(),
            },
        }),
        _ => None,
    }
}

/// Settles holds for the daemon — the credential watch's checks over what the
/// pipeline fingerprints — and stops violations through [`DaemonJudge::stop`] (so a
/// held process is reported like any sighting). The enforcement events it makes
/// collect in `out`.
pub(crate) struct DaemonJudge<'a> {
    pub(crate) pipe: &'a mut Pipeline,
    pub(crate) watch: &'a mut CredentialWatch,
    pub(crate) enforcer: Option<&'a mut enforce::Enforcer>,
    pub(crate) ebpf: &'a mut aya::Ebpf,
    pub(crate) out: Vec<Event>,
}

impl hold::Judge for DaemonJudge<'_> {
    fn revoked(&self, tgid: u32, env: &[u8]) -> Option<hold::Hit> {
        if !self.watch.is_watching() {
            return None;
        }
        let creds = self.pipe.credentials_in_env(env);
        self.watch.revoked_hit(&creds, "env").or_else(|| {
            let agent = self.pipe.agent_of(tgid, Some(env));
            self.watch.forbidden_hit(agent.as_deref(), &creds, "env")
        })
    }

    fn revoked_headers(&self, tgid: u32, headers: &[(String, String)]) -> Option<hold::Hit> {
        if !self.watch.is_watching() {
            return None;
        }
        let creds = self.pipe.credentials_in_headers(headers);
        self.watch.revoked_hit(&creds, "header").or_else(|| {
            let agent = self.pipe.agent_of(tgid, None);
            self.watch.forbidden_hit(agent.as_deref(), &creds, "header")
        })
    }

    fn enforce(&mut self, tgid: u32, start_ticks: u64, start_boottime: u64, hit: &hold::Hit) {
        if self
            .pipe
            .table
            .get(tgid)
            .is_none_or(|p| p.start_ticks != start_ticks)
        {
            self.pipe.table.scan_one(tgid);
        }
        let v = Violation {
            tgid,
            tid: tgid,
            start_ticks,
            start_boottime,
            fingerprint: hit.fingerprint.clone(),
            seen_in: hit.seen_in.clone(),
            action: hit.action.clone(),
            command_id: hit.command_id.clone(),
            held: true,
            policy: hit.policy.clone(),
        };
        self.stop(&v);
    }
}

impl DaemonJudge<'_> {
    /// Stop a process that just showed a revoked or forbidden credential (kill, or
    /// quarantine, as the revocation or rule says) and report it; returns whether
    /// the stop was applied.
    pub(crate) fn stop(&mut self, v: &Violation) -> bool {
        let (applied, error) = match self.enforcer.as_deref_mut() {
            None => (false, "enforcement is degraded on this host".to_string()),
            Some(en) => {
                let r = if v.action == "quarantine" {
                    en.quarantine(v.tgid, v.start_ticks)
                } else {
                    en.kill(self.ebpf, v.tgid, v.start_boottime, v.start_ticks, 0)
                };
                match r {
                    Ok(done) => (
                        done,
                        if done {
                            String::new()
                        } else {
                            "process already gone".into()
                        },
                    ),
                    Err(e) => (false, format!("{e:#}")),
                }
            }
        };
        if v.policy.is_empty() {
            tracing::warn!(pid = v.tgid, fingerprint = %v.fingerprint, action = %v.action, applied, "revoked credential seen");
        } else {
            self.watch.policy_stops += 1;
            tracing::warn!(pid = v.tgid, fingerprint = %v.fingerprint, action = %v.action, policy = %v.policy, applied, "credential forbidden by a policy seen");
        }
        let ev = self
            .pipe
            .enforcement_event(v.tgid, v.tid, v.enforcement(applied, error));
        self.out.push(ev);
        applied
    }
}
