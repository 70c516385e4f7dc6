//! The sled store: one tree, keys prefixed by record type, so that everything one
//! ingest group changes (events, indexes, processes, edges, host high-water marks)
//! is written by one atomic `apply_batch` and made durable by one flush before any
//! sensor is acked.
//!
//! Layout (all integers big-endian, so byte order is numeric order):
//! - `E` time_ns:8 id:8            -> Event (protobuf)         time-ordered scans
//! - `S` host 0x00 seq:8           -> event key (16 bytes)     events by host
//! - `X` exec_id 0x00 time:8 id:8  -> ()                       events by process
//! - `P` exec_id                   -> chain::Node (JSON)       process table
//! - `G` to 0x00 from 0x00 kind    -> chain::Edge (JSON)       net/http edges
//! - `N` pending key               -> Vec<chain::Half> (JSON)  half-matched edges
//! - `H` host / `A` agent / `K` fingerprint -> fleet records (JSON)
//! - `U` time_ns:8 id:8            -> AuditEntry (protobuf)
//! - `M` name                      -> u64 counters
//!
//! Events of a chain are found through its processes (`X`), since chain membership
//! of a process can change when late events arrive; see chain.rs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use custody_proto::sensor::v1::Event;
use prost::Message;
use serde::{Serialize, de::DeserializeOwned};

pub const EVENT: u8 = b'E';
pub const HOST_SEQ: u8 = b'S';
pub const EXEC: u8 = b'X';
pub const PROCESS: u8 = b'P';
pub const EDGE: u8 = b'G';
pub const PENDING: u8 = b'N';
pub const HOST: u8 = b'H';
pub const AGENT: u8 = b'A';
pub const CREDENTIAL: u8 = b'K';
pub const AUDIT: u8 = b'U';
pub const META: u8 = b'M';

/// time_ns:8 ++ id:8 — identifies a stored event and orders events by time.
pub type EventKey = [u8; 16];

pub fn event_key(time_ns: u64, id: u64) -> EventKey {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&time_ns.to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

pub fn event_key_time(k: &EventKey) -> u64 {
    u64::from_be_bytes(k[..8].try_into().expect("8 bytes"))
}

pub fn prefixed(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 1).sum::<usize>());
    v.push(prefix);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            v.push(0);
        }
        v.extend_from_slice(p);
    }
    v
}

pub fn e_key(k: &EventKey) -> Vec<u8> {
    prefixed(EVENT, &[k])
}
pub fn s_key(host: &str, seq: u64) -> Vec<u8> {
    prefixed(HOST_SEQ, &[host.as_bytes(), &seq.to_be_bytes()])
}
pub fn x_key(exec_id: &str, k: &EventKey) -> Vec<u8> {
    prefixed(EXEC, &[exec_id.as_bytes(), k])
}
pub fn edge_key(e: &crate::chain::Edge) -> Vec<u8> {
    prefixed(
        EDGE,
        &[e.to.as_bytes(), e.from.as_bytes(), e.kind.as_bytes()],
    )
}

pub struct Store {
    db: sled::Db,
    dir: PathBuf,
}

impl Store {
    /// Opens (or creates) the store. A second collector on the same directory, or
    /// a damaged one, is a startup error that names the directory.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create store directory {}", dir.display()))?;
        let cfg = sled::Config::new().path(dir).flush_every_ms(Some(1000));
        // sled can panic on some on-disk damage instead of returning an error.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cfg.open()));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => {
                let hint = match &e {
                    sled::Error::Io(io)
                        if io.kind() == std::io::ErrorKind::WouldBlock
                            || io.to_string().contains("lock") =>
                    {
                        "it is locked: is another custody-collector running with this data dir?"
                    }
                    sled::Error::Corruption { .. } => {
                        "it is corrupted: restore it from a backup or move it aside to start empty \
                         (the CA and tokens live outside it)"
                    }
                    _ => "check that it is a custody store and that its files are readable",
                };
                anyhow::bail!("cannot open store {}: {e}; {hint}", dir.display());
            }
            Err(_) => anyhow::bail!(
                "cannot open store {}: sled failed while reading it (corrupted?); restore it \
                 from a backup or move it aside to start empty",
                dir.display()
            ),
        };
        Ok(Store {
            db,
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn apply(&self, batch: sled::Batch) -> Result<()> {
        self.db
            .apply_batch(batch)
            .with_context(|| format!("write to store {} failed", self.dir.display()))
    }

    pub fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .with_context(|| format!("flush of store {} failed", self.dir.display()))?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    pub fn get_event(&self, k: &EventKey) -> Result<Option<Event>> {
        match self.db.get(e_key(k))? {
            Some(v) => Ok(Some(Event::decode(&*v).context("stored event is corrupt")?)),
            None => Ok(None),
        }
    }

    /// Stored events in key order from `start` (inclusive) or from the beginning.
    pub fn events_from(
        &self,
        start: Option<&EventKey>,
        ascending: bool,
    ) -> impl Iterator<Item = Result<(EventKey, Vec<u8>)>> + '_ {
        let iter = match (start, ascending) {
            (Some(k), true) => self.db.range(e_key(k)..prefixed(EVENT + 1, &[])),
            (Some(k), false) => self.db.range(prefixed(EVENT, &[])..=e_key(k)),
            (None, _) => self
                .db
                .range(prefixed(EVENT, &[])..prefixed(EVENT + 1, &[])),
        };
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if ascending {
            Box::new(iter)
        } else {
            Box::new(iter.rev())
        };
        iter.map(|r| {
            let (k, v) = r?;
            Ok((k[1..17].try_into().context("bad event key")?, v.to_vec()))
        })
    }

    /// Keys of the events of one process, oldest first.
    pub fn exec_event_keys(&self, exec_id: &str) -> impl Iterator<Item = Result<EventKey>> + '_ {
        let p = prefixed(EXEC, &[exec_id.as_bytes(), &[]]);
        let plen = p.len();
        self.db.scan_prefix(p).map(move |r| {
            let (k, _) = r?;
            k[plen..plen + 16].try_into().context("bad exec index key")
        })
    }

    /// Keys of the events of one host, in sequence order.
    pub fn host_event_keys(&self, host: &str) -> impl Iterator<Item = Result<EventKey>> + '_ {
        self.db
            .scan_prefix(prefixed(HOST_SEQ, &[host.as_bytes(), &[]]))
            .map(|r| {
                let (_, v) = r?;
                v[..16].try_into().context("bad host index value")
            })
    }

    pub fn put_json<T: Serialize>(batch: &mut sled::Batch, prefix: u8, key: &[u8], v: &T) {
        let mut k = vec![prefix];
        k.extend_from_slice(key);
        batch.insert(k, serde_json::to_vec(v).expect("records serialize"));
    }

    /// Every record of one type, keyed by the rest of its key.
    pub fn load_json<T: DeserializeOwned>(&self, prefix: u8) -> Result<Vec<(Vec<u8>, T)>> {
        let mut out = vec![];
        for r in self.db.scan_prefix([prefix]) {
            let (k, v) = r?;
            let rec = serde_json::from_slice(&v).with_context(|| {
                format!(
                    "corrupt record {:?} in store {}",
                    String::from_utf8_lossy(&k),
                    self.dir.display()
                )
            })?;
            out.push((k[1..].to_vec(), rec));
        }
        Ok(out)
    }

    pub fn meta(&self, name: &str) -> Result<u64> {
        Ok(self
            .db
            .get(prefixed(META, &[name.as_bytes()]))?
            .map(|v| u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8])))
            .unwrap_or(0))
    }

    pub fn put_meta(batch: &mut sled::Batch, name: &str, v: u64) {
        batch.insert(prefixed(META, &[name.as_bytes()]), &v.to_be_bytes());
    }

    pub fn insert(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.db.insert(key, value)?;
        Ok(())
    }

    /// Raw prefix scan (audit log and the like).
    pub fn scan(
        &self,
        prefix: u8,
        reverse: bool,
    ) -> Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + '_> {
        let it = self.db.scan_prefix([prefix]);
        if reverse {
            Box::new(it.rev())
        } else {
            Box::new(it)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_store_names_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _a = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path())
            .err()
            .expect("second open must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(msg.contains("locked") || msg.contains("lock"), "{msg}");
    }

    #[test]
    fn corrupt_store_names_directory() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.insert(vec![b'Z'; 4], vec![1; 100]).unwrap();
            s.flush().unwrap();
        }
        // Overwrite sled's files with garbage.
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::write(&p, vec![0xAB; 4096]).unwrap();
            }
        }
        let err = Store::open(dir.path())
            .err()
            .expect("corrupt store must not open");
        let msg = format!("{err:#}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }
}
