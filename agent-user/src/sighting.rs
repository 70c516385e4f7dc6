//! A process seen with a revoked credential, or one a policy forbids to its agent:
//! stopped on sight, or — when the kernel held it at exec or before a TLS send —
//! vetted and settled through its hold, reported the same way.

use agent_ebpf::flag;
use custody_proto::sensor::v1::Event;

use crate::kernel::decode;
use crate::pipeline::{self, Pipeline};
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

/// Settles holds for the daemon: revoked fingerprints from the pipeline, enforcement
/// through [`stop_on_sight`] (so a held process is reported like any sighting).
pub(crate) struct DaemonJudge<'a> {
    pub(crate) pipe: &'a mut Pipeline,
    pub(crate) enforcer: Option<&'a mut enforce::Enforcer>,
    pub(crate) ebpf: &'a mut aya::Ebpf,
    pub(crate) out: Vec<Event>,
}

impl hold::Judge for DaemonJudge<'_> {
    fn revoked(&self, tgid: u32, env: &[u8]) -> Option<hold::Hit> {
        self.pipe
            .revoked_in_env(env)
            .or_else(|| self.pipe.forbidden_in_env(tgid, env))
    }

    fn revoked_headers(&self, tgid: u32, headers: &[(String, String)]) -> Option<hold::Hit> {
        self.pipe
            .revoked_in_headers(headers)
            .or_else(|| self.pipe.forbidden_in_headers(tgid, headers))
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
        let v = pipeline::Violation {
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
        let ev = stop_on_sight(self.pipe, self.enforcer.as_deref_mut(), self.ebpf, &v);
        self.out.push(ev);
    }
}

/// Enforce a cached revocation on a process that just showed the credential.
pub(crate) fn stop_on_sight(
    pipe: &mut Pipeline,
    enforcer: Option<&mut enforce::Enforcer>,
    ebpf: &mut aya::Ebpf,
    v: &pipeline::Violation,
) -> Event {
    let (applied, error) = match enforcer {
        None => (false, "enforcement is degraded on this host".to_string()),
        Some(en) => {
            let r = if v.action == "quarantine" {
                en.quarantine(v.tgid, v.start_ticks)
            } else {
                en.kill(ebpf, v.tgid, v.start_boottime, v.start_ticks, 0)
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
        pipe.stats.policy_credential_stops += 1;
        tracing::warn!(pid = v.tgid, fingerprint = %v.fingerprint, action = %v.action, policy = %v.policy, applied, "credential forbidden by a policy seen");
    }
    pipe.enforcement_event(v, applied, error)
}
