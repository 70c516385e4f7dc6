//! The durable, bounded spool between the daemon and the collector: events get
//! their per-host sequence number here and stay until the collector acks them.
//! When the spool is full the oldest events are dropped and counted (reported in
//! heartbeats), never silently.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use custody_proto::sensor::v1::Event;
use prost::Message;

const NEXT_SEQ: &[u8] = b"next_seq";
const LAST_ACKED: &[u8] = b"last_acked";
const DROPPED: &[u8] = b"dropped";
const REJECTED: &[u8] = b"rejected";
/// Set once a collector has told us where to resume: before that, our sequence
/// numbers may collide with what the collector stored from a previous spool.
const SYNCED: &[u8] = b"synced";

struct Inner {
    next_seq: u64,
    bytes: u64,
    /// Events in the tree, kept here because sled's `len()` walks the whole tree
    /// (a third of a second for 100 k events in a debug build, asked every tick).
    count: u64,
    dropped: u64,
}

pub struct Spool {
    db: sled::Db,
    events: sled::Tree,
    meta: sled::Tree,
    max_bytes: u64,
    inner: Mutex<Inner>,
}

fn get_u64(t: &sled::Tree, k: &[u8]) -> Result<u64> {
    Ok(t.get(k)?
        .map(|v| u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8])))
        .unwrap_or(0))
}

fn seq_of(k: &[u8]) -> u64 {
    u64::from_be_bytes(k[..8].try_into().unwrap_or([0; 8]))
}

/// Open the spool's sled database. sled's background flusher holds the previous
/// handle's file lock for a moment after that handle is dropped, so reopening right
/// after a close (a restart in the same process) can see the lock still held: retry
/// that case for a bounded time; any other error, or a lock held longer (another
/// custodyd), is returned.
/// A spool dropped a moment ago (a restart in this process, or a custodyd that just
/// exited) may hold sled's lock until its last flush is on disk; with the disk busy
/// that was seen to take over 2 s, so wait up to 10 s before calling it locked.
fn open_db(dir: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(200))
            .open()
        {
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

impl Spool {
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create spool directory {}", dir.display()))?;
        let db = open_db(dir).with_context(|| {
            format!(
                "cannot open spool {} (locked by another custodyd, or damaged: move it aside)",
                dir.display()
            )
        })?;
        let events = db.open_tree("events")?;
        let meta = db.open_tree("meta")?;
        let (mut bytes, mut count) = (0u64, 0u64);
        for r in events.iter() {
            bytes += r?.1.len() as u64;
            count += 1;
        }
        // The persisted counter can lag the events tree by one flush interval.
        let last_key = events.last()?.map(|(k, _)| seq_of(&k)).unwrap_or(0);
        let next_seq = get_u64(&meta, NEXT_SEQ)?
            .max(last_key + 1)
            .max(get_u64(&meta, LAST_ACKED)? + 1);
        Ok(Spool {
            inner: Mutex::new(Inner {
                next_seq,
                bytes,
                count,
                dropped: get_u64(&meta, DROPPED)?,
            }),
            db,
            events,
            meta,
            max_bytes: max_bytes.max(4096),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Assigns the next sequence number and stores the event. Returns the seq.
    pub fn push(&self, mut ev: Event) -> Result<u64> {
        let mut g = self.lock();
        let seq = g.next_seq;
        ev.seq = seq;
        let bytes = ev.encode_to_vec();
        g.bytes += bytes.len() as u64;
        g.count += 1;
        self.events.insert(seq.to_be_bytes(), bytes)?;
        g.next_seq += 1;
        self.meta.insert(NEXT_SEQ, &g.next_seq.to_be_bytes())?;
        // Drop oldest, but never the event just written.
        let mut dropped = 0;
        while g.bytes > self.max_bytes {
            match self.events.pop_min()? {
                Some((k, v)) if seq_of(&k) != seq => {
                    g.bytes -= v.len() as u64;
                    g.count = g.count.saturating_sub(1);
                    dropped += 1;
                }
                Some((k, v)) => {
                    self.events.insert(k, v)?;
                    break;
                }
                None => break,
            }
        }
        if dropped > 0 {
            g.dropped += dropped;
            self.meta.insert(DROPPED, &g.dropped.to_be_bytes())?;
            tracing::warn!(
                dropped,
                total = g.dropped,
                "spool full: dropped oldest events"
            );
        }
        Ok(seq)
    }

    /// Up to `max_events` / about `max_bytes` of events with seq >= `from`.
    pub fn read_from(&self, from: u64, max_events: usize, max_bytes: usize) -> Result<Vec<Event>> {
        let mut out = vec![];
        let mut size = 0;
        for r in self.events.range(from.to_be_bytes()..) {
            let (_, v) = r?;
            size += v.len();
            out.push(Event::decode(&*v).context("corrupt event in spool")?);
            if out.len() >= max_events || size >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Drops everything up to and including `up_to` (the collector has it).
    pub fn ack(&self, up_to: u64) -> Result<()> {
        let mut g = self.lock();
        let mut batch = sled::Batch::default();
        for r in self.events.range(..=up_to.to_be_bytes()) {
            let (k, v) = r?;
            g.bytes = g.bytes.saturating_sub(v.len() as u64);
            g.count = g.count.saturating_sub(1);
            batch.remove(k);
        }
        self.events.apply_batch(batch)?;
        if up_to > get_u64(&self.meta, LAST_ACKED)? {
            self.meta.insert(LAST_ACKED, &up_to.to_be_bytes())?;
        }
        Ok(())
    }

    pub fn count_range(&self, first: u64, last: u64) -> u64 {
        self.events
            .range(first.to_be_bytes()..=last.to_be_bytes())
            .count() as u64
    }

    pub fn add_rejected(&self, n: u64) -> Result<u64> {
        let v = get_u64(&self.meta, REJECTED)? + n;
        self.meta.insert(REJECTED, &v.to_be_bytes())?;
        Ok(v)
    }

    /// Applies the collector's resume point. Everything below it is stored there.
    /// If this spool never synced with a collector, or the collector is ahead of
    /// every sequence number we ever assigned (the spool was wiped), our spooled
    /// events are renumbered from `resume_from`, or the collector would take them
    /// for duplicates. Returns the seq to send from.
    pub fn resume(&self, resume_from: u64) -> Result<u64> {
        let synced = get_u64(&self.meta, SYNCED)? == 1;
        let mut g = self.lock();
        if !synced || resume_from > g.next_seq {
            let old: Vec<(sled::IVec, sled::IVec)> =
                self.events.iter().collect::<Result<_, _>>()?;
            let base = resume_from.max(1);
            let mut batch = sled::Batch::default();
            for (k, _) in &old {
                batch.remove(k.clone());
            }
            for (i, (_, v)) in old.iter().enumerate() {
                let mut ev = Event::decode(&**v)?;
                ev.seq = base + i as u64;
                batch.insert(&ev.seq.to_be_bytes(), ev.encode_to_vec());
            }
            self.events.apply_batch(batch)?;
            g.next_seq = base + old.len() as u64;
            self.meta.insert(NEXT_SEQ, &g.next_seq.to_be_bytes())?;
            self.meta.insert(SYNCED, &1u64.to_be_bytes())?;
            self.meta.insert(LAST_ACKED, &(base - 1).to_be_bytes())?;
            if !old.is_empty() {
                tracing::info!(
                    events = old.len(),
                    from = base,
                    "renumbered spool to the collector's sequence"
                );
            }
            return Ok(base);
        }
        drop(g);
        self.ack(resume_from.saturating_sub(1))?;
        Ok(resume_from)
    }

    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }
    pub fn depth(&self) -> u64 {
        self.lock().count
    }
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
    pub fn rejected(&self) -> u64 {
        get_u64(&self.meta, REJECTED).unwrap_or(0)
    }
    pub fn last_acked(&self) -> u64 {
        get_u64(&self.meta, LAST_ACKED).unwrap_or(0)
    }
    /// Event time of the oldest spooled event (0 when the spool is empty).
    pub fn oldest_time_ns(&self) -> u64 {
        self.events
            .first()
            .ok()
            .flatten()
            .and_then(|(_, v)| Event::decode(&*v).ok())
            .map_or(0, |e| e.time_ns)
    }
    pub fn first_seq(&self) -> u64 {
        self.events
            .first()
            .ok()
            .flatten()
            .map(|(k, _)| seq_of(&k))
            .unwrap_or(0)
    }
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: usize) -> Event {
        Event {
            host: "h".into(),
            time_ns: n as u64,
            ..Default::default()
        }
    }

    #[test]
    fn seq_survives_restart_and_ack() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Spool::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(s.push(ev(1)).unwrap(), 1);
            assert_eq!(s.push(ev(2)).unwrap(), 2);
            assert_eq!(s.resume(1).unwrap(), 1);
            s.ack(1).unwrap();
            s.flush().unwrap();
        }
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.push(ev(3)).unwrap(), 3);
        let evs = s.read_from(0, 100, 1 << 20).unwrap();
        assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(s.last_acked(), 1);
        // The collector already has up to 2.
        assert_eq!(s.resume(3).unwrap(), 3);
        assert_eq!(s.depth(), 1);
    }

    #[test]
    fn full_spool_drops_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 4096).unwrap();
        let big = |n| Event {
            host: "h".into(),
            time_ns: n,
            process: Some(custody_proto::sensor::v1::Process {
                exe: "x".repeat(1000),
                ..Default::default()
            }),
            ..Default::default()
        };
        for n in 0..10 {
            s.push(big(n)).unwrap();
        }
        assert!(s.dropped() >= 6, "dropped {}", s.dropped());
        assert!(s.bytes() <= 4096);
        let evs = s.read_from(0, 100, 1 << 20).unwrap();
        assert_eq!(evs.last().unwrap().seq, 10);
        assert_eq!(evs.len() as u64 + s.dropped(), 10);
    }

    #[test]
    fn fresh_spool_renumbers_after_collector() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        for n in 0..3 {
            s.push(ev(n)).unwrap();
        }
        // The collector stored up to 500 from this host's previous (lost) spool.
        assert_eq!(s.resume(501).unwrap(), 501);
        let seqs: Vec<u64> = s
            .read_from(0, 10, 1 << 20)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![501, 502, 503]);
        assert_eq!(s.push(ev(9)).unwrap(), 504);
    }
}
