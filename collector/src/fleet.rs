//! The fleet inventory the collector derives from what sensors report: hosts (and
//! sensor health), agents (declared and discovered) and credentials (by
//! fingerprint: never a secret).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use custody_proto::sensor::v1::{Credential, Event, event::Kind};
use serde::{Deserialize, Serialize};

/// Bounds on per-record sets, so a noisy credential or agent cannot grow a record
/// without limit.
const MAX_SET: usize = 200;
const MAX_EVIDENCE: usize = 20;
/// Longest credential metadata value kept (a JWT claim, a key id).
const METADATA_VALUE_MAX: usize = 256;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HostRecord {
    pub host_id: String,
    pub enrolled_at_ns: u64,
    pub last_seen_ns: u64,
    pub boot_id: String,
    pub sensor_version: String,
    pub kernel_release: String,
    pub features: Vec<String>,
    /// Highest stored sequence number: everything at or below it is stored or was
    /// lost before reaching us, so re-sent events at or below it are duplicates.
    pub last_seq: u64,
    pub events_stored: u64,
    pub duplicates: u64,
    pub batches_rejected: u64,
    /// Single events refused (they named another host's process).
    pub events_refused: u64,
    /// Fields this host sent over their caps (cut at ingest).
    pub fields_truncated: u64,
    pub spool_dropped: u64,
    pub spool_depth: u64,
    pub counters: BTreeMap<String, u64>,
    pub newest_event_ns: u64,
    pub clock_skewed: u64,
    /// The certificate issued at the host's last enrollment: the only one its
    /// streams are accepted with (`None` for a host enrolled before certificates
    /// were recorded; its first stream's certificate is adopted).
    pub cert: Option<CurrentCert>,
    /// Set when an admin retired the identity (`custodyctl host retire`): no
    /// certificate of it is accepted, its data stays, and the id may be enrolled
    /// again with any token. Cleared by that enrollment.
    pub retired: Option<Retirement>,
    /// Streams refused because they presented another or an older certificate for
    /// this host, or the certificate of its retired identity.
    pub certs_refused: u64,
    /// Catch-up lag, as of the sensor's last heartbeat.
    pub lag: HostLag,
}

/// How far behind a host is and whether it is catching up, from its heartbeats
/// (the sensor's newest sequence number against our stored high-water mark).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostLag {
    /// When this was computed (the heartbeat's arrival).
    pub at_ns: u64,
    /// The sensor's newest sequence number and our `last_seq` at that moment.
    pub sensor_seq: u64,
    pub stored_seq: u64,
    /// Event time of the oldest event the sensor still spools (0: none).
    pub oldest_unacked_ns: u64,
    /// Events stored and produced per second since the previous heartbeat.
    pub drain_rate: u64,
    pub produce_rate: u64,
    /// The backlog grew since the previous heartbeat.
    pub growing: bool,
}

impl HostLag {
    pub fn events_behind(&self) -> u64 {
        self.sensor_seq.saturating_sub(self.stored_seq)
    }

    /// The next lag, from a heartbeat at `now` saying the sensor's newest seq is
    /// `sensor_seq` while we have stored up to `stored_seq`.
    pub fn next(
        &self,
        now: u64,
        sensor_seq: u64,
        stored_seq: u64,
        oldest_unacked_ns: u64,
    ) -> HostLag {
        let dt = now.saturating_sub(self.at_ns);
        let per_s = |a: u64, b: u64| {
            if self.at_ns == 0 || dt == 0 {
                0
            } else {
                (a.saturating_sub(b) as u128 * 1_000_000_000 / dt as u128) as u64
            }
        };
        let next = HostLag {
            at_ns: now,
            sensor_seq,
            stored_seq,
            oldest_unacked_ns,
            drain_rate: per_s(stored_seq, self.stored_seq),
            produce_rate: per_s(sensor_seq, self.sensor_seq),
            growing: false,
        };
        HostLag {
            growing: self.at_ns != 0 && next.events_behind() > self.events_behind(),
            ..next
        }
    }

    /// Seconds to caught-up at the current net rate; None when not catching up.
    pub fn eta_s(&self) -> Option<u64> {
        let behind = self.events_behind();
        if behind == 0 {
            return Some(0);
        }
        let net = self
            .drain_rate
            .checked_sub(self.produce_rate)
            .filter(|n| *n > 0)?;
        Some(behind.div_ceil(net))
    }

    /// Age of the oldest unstored event at `now` (0 when caught up).
    pub fn time_behind_ns(&self, now: u64) -> u64 {
        if self.events_behind() == 0 || self.oldest_unacked_ns == 0 {
            0
        } else {
            now.saturating_sub(self.oldest_unacked_ns)
        }
    }
}

/// A host's current client certificate, as issued.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CurrentCert {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Hex SHA-256 of the SubjectPublicKeyInfo (the host's public key).
    pub spki_sha256: String,
    pub issued_at_ns: u64,
    pub not_after_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Retirement {
    pub at_ns: u64,
    /// The operator who retired it.
    pub by: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentRecord {
    pub agent_id: String,
    pub name: String,
    pub kind: String,
    /// "declared" or "discovered".
    pub origin: String,
    pub hosts: BTreeSet<String>,
    pub evidence: Vec<String>,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub processes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CredentialRecord {
    pub fingerprint: String,
    pub kind: String,
    pub metadata: BTreeMap<String, String>,
    pub hosts: BTreeSet<String>,
    pub agents: BTreeSet<String>,
    pub held_by: BTreeSet<String>,
    pub used_by: BTreeSet<String>,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
}

#[derive(Default)]
pub struct Fleet {
    pub hosts: HashMap<String, HostRecord>,
    pub agents: HashMap<String, AgentRecord>,
    pub creds: HashMap<String, CredentialRecord>,
    pub dirty_hosts: HashSet<String>,
    pub dirty_agents: HashSet<String>,
    pub dirty_creds: HashSet<String>,
}

fn bounded_insert(set: &mut BTreeSet<String>, v: &str) -> bool {
    if set.len() >= MAX_SET || set.contains(v) {
        return false;
    }
    set.insert(v.to_owned())
}

impl Fleet {
    pub fn host_mut(&mut self, host: &str) -> &mut HostRecord {
        self.dirty_hosts.insert(host.to_owned());
        self.hosts
            .entry(host.to_owned())
            .or_insert_with(|| HostRecord {
                host_id: host.to_owned(),
                ..Default::default()
            })
    }

    /// Folds a stored event into agents and credentials. `new_process` is true for
    /// the first event of an exec id.
    pub fn observe(&mut self, ev: &Event, new_process: bool) {
        let Some(p) = ev.process.as_ref() else { return };
        let t = ev.time_ns;
        let discovered = match &ev.kind {
            Some(Kind::AgentDiscovered(d)) => Some(format!("{}: {}", d.reason, d.evidence)),
            _ => None,
        };
        let agent_id = if !p.agent_id.is_empty() {
            p.agent_id.clone()
        } else if discovered.is_some() {
            // An undeclared agent the sensor discovered without naming it.
            format!("discovered:{}:{}", ev.host, p.exe)
        } else {
            String::new()
        };
        if !agent_id.is_empty() {
            let known = self.agents.contains_key(&agent_id);
            let a = self
                .agents
                .entry(agent_id.clone())
                .or_insert_with(|| AgentRecord {
                    agent_id: agent_id.clone(),
                    name: if p.agent_name.is_empty() {
                        p.comm.clone()
                    } else {
                        p.agent_name.clone()
                    },
                    kind: p.agent_kind.clone(),
                    origin: if p.agent_kind == "discovered" || discovered.is_some() {
                        "discovered".into()
                    } else {
                        "declared".into()
                    },
                    first_seen_ns: t,
                    ..Default::default()
                });
            let mut dirty = !known || new_process;
            if new_process {
                a.processes += 1;
            }
            dirty |= bounded_insert(&mut a.hosts, &ev.host);
            if let Some(d) = discovered {
                if a.evidence.len() < MAX_EVIDENCE && !a.evidence.contains(&d) {
                    a.evidence.push(d);
                }
                dirty = true;
            }
            // last_seen moves with every event; persist it at most once a second.
            if t > a.last_seen_ns + 1_000_000_000 {
                dirty = true;
            }
            a.last_seen_ns = a.last_seen_ns.max(t);
            if dirty {
                self.dirty_agents.insert(agent_id.clone());
            }
        }
        let mut cred = |c: &Credential, usage: &str| {
            if c.fingerprint.is_empty() {
                return;
            }
            let r = self
                .creds
                .entry(c.fingerprint.clone())
                .or_insert_with(|| CredentialRecord {
                    fingerprint: c.fingerprint.clone(),
                    first_seen_ns: t,
                    ..Default::default()
                });
            if r.kind.is_empty() {
                r.kind = c.kind.clone();
            }
            // First seen wins: metadata reaches issuer hooks, and a later event (from
            // any host, any process that holds the same secret) must not be able to
            // rewrite the `jti` a revocation will name. Values are capped too.
            for (k, v) in &c.metadata {
                if r.metadata.len() < 32 && !r.metadata.contains_key(k) {
                    let v: String = v.chars().take(METADATA_VALUE_MAX).collect();
                    r.metadata.insert(k.chars().take(64).collect(), v);
                }
            }
            bounded_insert(&mut r.hosts, &ev.host);
            if !agent_id.is_empty() {
                bounded_insert(&mut r.agents, &agent_id);
            }
            let set = if usage == "used" {
                &mut r.used_by
            } else {
                &mut r.held_by
            };
            bounded_insert(set, &p.exec_id);
            r.last_seen_ns = r.last_seen_ns.max(t);
            self.dirty_creds.insert(c.fingerprint.clone());
        };
        match &ev.kind {
            Some(Kind::Exec(x)) => x.env_credentials.iter().for_each(|c| cred(c, "held")),
            Some(Kind::Credential(c)) => {
                if let Some(c) = &c.credential {
                    cred(c, if c.source == "header" { "used" } else { "held" });
                }
            }
            Some(Kind::HttpRequest(h)) => {
                for fp in &h.credential_fingerprints {
                    cred(
                        &Credential {
                            fingerprint: fp.clone(),
                            source: "header".into(),
                            ..Default::default()
                        },
                        "used",
                    );
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_from_heartbeats_rates_eta_and_growth() {
        const S: u64 = 1_000_000_000;
        let first = HostLag::default().next(10 * S, 1_000, 400, 5 * S);
        assert_eq!(
            (first.events_behind(), first.drain_rate, first.growing),
            (600, 0, false)
        );
        assert_eq!(first.eta_s(), None, "no rate from a single heartbeat");
        assert_eq!(first.time_behind_ns(12 * S), 7 * S);
        // Ten seconds later: 1000 more produced, 1500 more stored: draining.
        let draining = first.next(20 * S, 2_000, 1_900, 15 * S);
        assert_eq!((draining.drain_rate, draining.produce_rate), (150, 100));
        assert_eq!(draining.events_behind(), 100);
        assert!(!draining.growing);
        assert_eq!(draining.eta_s(), Some(2));
        // Producing faster than stored: falling further behind, no ETA.
        let falling = draining.next(30 * S, 4_000, 2_000, 16 * S);
        assert!(falling.growing);
        assert_eq!(falling.eta_s(), None);
        let caught_up = falling.next(40 * S, 4_100, 4_100, 0);
        assert_eq!(
            (caught_up.eta_s(), caught_up.time_behind_ns(41 * S)),
            (Some(0), 0)
        );
    }
    use custody_proto::sensor::v1::{Credential, CredentialSeen, Process};

    fn seen(host: &str, jti: &str) -> Event {
        Event {
            host: host.into(),
            time_ns: 1,
            process: Some(Process {
                exec_id: format!("{host}:1"),
                ..Default::default()
            }),
            kind: Some(Kind::Credential(CredentialSeen {
                credential: Some(Credential {
                    kind: "jwt".into(),
                    fingerprint: "hmac-sha256:aa".into(),
                    metadata: [("jti".to_string(), jti.to_string())].into(),
                    source: "header".into(),
                    location: String::new(),
                }),
            })),
            ..Default::default()
        }
    }

    /// A second sighting (another host, any process holding the same token) cannot
    /// rewrite the metadata an issuer hook will send; long values are cut.
    #[test]
    fn credential_metadata_keeps_the_first_seen_value_and_is_bounded() {
        let mut f = Fleet::default();
        f.observe(&seen("a", "real-jti"), true);
        f.observe(&seen("b", "../../admin/delete?all=1"), true);
        let r = &f.creds["hmac-sha256:aa"];
        assert_eq!(r.metadata["jti"], "real-jti");
        assert_eq!(r.hosts.len(), 2);
        let mut g = Fleet::default();
        g.observe(&seen("a", &"j".repeat(100_000)), true);
        assert_eq!(
            g.creds["hmac-sha256:aa"].metadata["jti"].len(),
            METADATA_VALUE_MAX
        );
    }
}
