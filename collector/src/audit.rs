//! The audit log: append-only, one record per key in sequence order, each record
//! carrying the hash of the one before it. Editing, removing or reordering a stored
//! record breaks the chain at that record, which [`AuditLog::verify`] reports.
//!
//! The hash covers a canonical encoding of the record (fixed field order, details
//! sorted by key), not the protobuf bytes: protobuf map order is not stable.

use std::sync::Mutex;

use anyhow::{Context, Result};
use custody_proto::admin::v1::{AuditEntry, VerifyAuditResponse};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::clock::now_ns;
use crate::store::Store;

/// The previous-hash of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 over the record with `hash` left out, hex.
pub fn record_hash(e: &AuditEntry) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    field(b"custody.audit.v1");
    field(&e.seq.to_be_bytes());
    field(e.prev_hash.as_bytes());
    field(&e.time_ns.to_be_bytes());
    for s in [
        &e.actor,
        &e.role,
        &e.action,
        &e.target,
        &e.reason,
        &e.result,
        &e.action_id,
    ] {
        field(s.as_bytes());
    }
    let mut details: Vec<(&String, &String)> = e.details.iter().collect();
    details.sort();
    field(&(details.len() as u64).to_be_bytes());
    for (k, v) in details {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    hex::encode(h.finalize())
}

pub struct AuditLog {
    /// (next seq, hash of the last record), held across the write so records are
    /// chained in the order they are stored.
    head: Mutex<(u64, String)>,
}

impl AuditLog {
    /// Finds the head of the chain; records from before the chain existed (keyed by
    /// time) are re-appended in order, so an older store keeps its history.
    pub fn open(store: &dyn Store) -> Result<AuditLog> {
        let mut legacy = vec![];
        let mut last: Option<AuditEntry> = None;
        for r in store.audit_records(false) {
            let r = r?;
            let e = AuditEntry::decode(&*r.bytes).context("audit record does not decode")?;
            if r.seq != 0 {
                last = Some(e);
            } else {
                legacy.push(e);
            }
        }
        let head = match last {
            Some(e) => (e.seq + 1, e.hash),
            None => (1, GENESIS.to_string()),
        };
        let log = AuditLog {
            head: Mutex::new(head),
        };
        if !legacy.is_empty() {
            for mut e in legacy {
                e.seq = 0;
                log.append(store, e)?;
            }
            store.remove_unchained_audit()?;
        }
        Ok(log)
    }

    /// Chains and stores a record durably; returns it as stored.
    pub fn append(&self, store: &dyn Store, mut e: AuditEntry) -> Result<AuditEntry> {
        if e.time_ns == 0 {
            e.time_ns = now_ns();
        }
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        e.seq = head.0;
        e.prev_hash = head.1.clone();
        e.hash = String::new();
        e.hash = record_hash(&e);
        store.audit_append(e.seq, e.encode_to_vec())?;
        *head = (e.seq + 1, e.hash.clone());
        Ok(e)
    }

    /// Newest first, down to `since_ns`.
    pub fn list(store: &dyn Store, since_ns: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut out = vec![];
        for r in store.audit_records(true) {
            let e = AuditEntry::decode(&*r?.bytes)?;
            if e.time_ns < since_ns {
                break;
            }
            out.push(e);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Records of one response action, oldest first.
    pub fn of_action(store: &dyn Store, action_id: &str) -> Result<Vec<AuditEntry>> {
        let mut out = vec![];
        for r in store.audit_records(false) {
            let e = AuditEntry::decode(&*r?.bytes)?;
            if e.action_id == action_id {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Walks the whole chain: every record must decode, sit at its own sequence
    /// number with no gap, link to its predecessor's hash and hash to what it says.
    pub fn verify(store: &dyn Store) -> Result<VerifyAuditResponse> {
        let mut prev = GENESIS.to_string();
        let mut n = 0u64;
        let bad = |seq: u64, n: u64, problem: String| VerifyAuditResponse {
            records: n,
            intact: false,
            first_bad_seq: seq,
            problem,
            head_hash: String::new(),
        };
        for (expect, r) in (1u64..).zip(store.audit_records(false)) {
            let r = r?;
            let key_seq = r.seq;
            let e = match AuditEntry::decode(&*r.bytes) {
                Ok(e) => e,
                Err(err) => {
                    return Ok(bad(key_seq, n, format!("record does not decode: {err}")));
                }
            };
            n += 1;
            if key_seq != expect || e.seq != expect {
                return Ok(bad(
                    expect,
                    n,
                    format!(
                        "expected record {expect}, found key {key_seq} holding record {} \
                         (a record was removed or moved)",
                        e.seq
                    ),
                ));
            }
            if e.prev_hash != prev {
                return Ok(bad(
                    e.seq,
                    n,
                    format!(
                        "record {} links to {} but record {} hashes to {prev}",
                        e.seq,
                        e.prev_hash,
                        e.seq - 1
                    ),
                ));
            }
            let h = record_hash(&e);
            if h != e.hash {
                return Ok(bad(
                    e.seq,
                    n,
                    format!(
                        "record {} was altered: its content hashes to {h}, it says {}",
                        e.seq, e.hash
                    ),
                ));
            }
            prev = e.hash;
        }
        Ok(VerifyAuditResponse {
            records: n,
            intact: true,
            first_bad_seq: 0,
            problem: String::new(),
            head_hash: prev,
        })
    }
}
