//! Links between processes that are not parent and child: a connect paired with its
//! accept, a request sent paired with the same request received. Each side waits as a
//! pending half until the other arrives (in any order) or expires.
//!
//! Halves pair up by the sensors' times (within the window, so a host catching up
//! from its spool still links), but a link between two hosts is timed by when the
//! collector received its later half: neither host can make its link look older
//! than it is (the earliest inbound link decides a process's chain).

use super::{ChainIndex, Edge, Half, NET_MATCH_WINDOW_NS, PENDING_TTL_NS};

/// One half of a link to pair (see `ChainIndex::pair`).
pub(super) struct Link<'a> {
    /// "net" or "http".
    pub(super) kind: &'static str,
    pub(super) mine: &'a str,
    pub(super) theirs: &'a str,
    /// This half is the connecting / sending side.
    pub(super) origin: bool,
    pub(super) id: &'a str,
    /// The sensor's time, clamped to the arrival.
    pub(super) t: u64,
    /// When the collector received this half.
    pub(super) arrival_ns: u64,
    pub(super) detail: &'a str,
}

/// The host part of an exec id ("HOST:PID:START_TICKS").
fn host_of(exec_id: &str) -> &str {
    exec_id.split(':').next().unwrap_or_default()
}

/// Pending-half keys of a request identified by `value` (a traceparent or a token
/// fingerprint): (this side's, the other side's).
pub(super) fn request_keys(prefix: &str, value: &str, received: bool) -> (String, String) {
    let sent = format!("{prefix}s|{value}");
    let recv = format!("{prefix}r|{value}");
    if received { (recv, sent) } else { (sent, recv) }
}

pub(super) fn normalize_addr(a: &str) -> &str {
    a.strip_prefix("::ffff:").unwrap_or(a)
}

pub(super) fn is_loopback(a: &str) -> bool {
    a.starts_with("127.") || a == "::1" || a == "localhost"
}

impl ChainIndex {
    /// Pairs one half of a link with its other half: a connect with its accept, a
    /// request sent with the same request received. If the other half is waiting
    /// (within the window, from another process) the edge is added from the origin
    /// (the connecting or sending side); else this half waits for it.
    pub(super) fn pair(&mut self, l: Link<'_>, relink: &mut Vec<String>) {
        let found = self.pending.get_mut(l.theirs).and_then(|v| {
            let i = v.iter().position(|h| {
                h.exec_id != l.id && h.time_ns.abs_diff(l.t) <= NET_MATCH_WINDOW_NS
            })?;
            Some(v.remove(i))
        });
        match found {
            Some(other) => {
                if self.pending.get(l.theirs).is_some_and(|v| v.is_empty()) {
                    self.pending.remove(l.theirs);
                }
                self.changes.pending.insert(l.theirs.to_owned());
                let t = if host_of(l.id) == host_of(&other.exec_id) {
                    // One host ordering its own processes: its clock is the best there is.
                    l.t.min(other.time_ns)
                } else {
                    let theirs = if other.arrival_ns == 0 {
                        other.time_ns
                    } else {
                        other.arrival_ns
                    };
                    l.arrival_ns.max(theirs)
                };
                let (from, to) = if l.origin {
                    (l.id.to_owned(), other.exec_id)
                } else {
                    (other.exec_id, l.id.to_owned())
                };
                self.add_edge(from, to, l.kind, l.detail, t, relink);
            }
            // The same process reporting the same half twice is not a second link.
            None if self
                .pending
                .get(l.mine)
                .is_some_and(|v| v.iter().any(|h| h.exec_id == l.id)) => {}
            None => self.push_half(l.mine, l.id, l.t, l.arrival_ns, l.detail),
        }
    }

    pub(super) fn push_half(&mut self, key: &str, id: &str, t: u64, arrival_ns: u64, detail: &str) {
        self.pending.entry(key.to_owned()).or_default().push(Half {
            exec_id: id.to_owned(),
            time_ns: t,
            detail: detail.to_owned(),
            arrival_ns,
        });
        self.changes.pending.insert(key.to_owned());
    }

    pub(super) fn add_edge(
        &mut self,
        from: String,
        to: String,
        kind: &str,
        detail: &str,
        t: u64,
        relink: &mut Vec<String>,
    ) {
        if from == to {
            return;
        }
        let e = Edge {
            from: from.clone(),
            to: to.clone(),
            kind: kind.into(),
            detail: detail.into(),
            time_ns: t,
        };
        if self.inbound.get(&to).is_some_and(|v| v.contains(&e)) {
            return;
        }
        self.inbound.entry(to.clone()).or_default().push(e.clone());
        self.outbound.entry(from).or_default().push(e.clone());
        self.changes.new_edges.push(e);
        relink.push(to);
    }

    /// Forgets halves that waited longer than [`PENDING_TTL_NS`] before `now_ns`.
    pub fn expire_pending(&mut self, now_ns: u64) -> usize {
        let cutoff = now_ns.saturating_sub(PENDING_TTL_NS);
        let mut dropped = 0;
        let keys: Vec<String> = self.pending.keys().cloned().collect();
        for k in keys {
            let v = self.pending.get_mut(&k).expect("listed");
            let before = v.len();
            v.retain(|h| h.time_ns >= cutoff);
            if v.len() != before {
                dropped += before - v.len();
                self.changes.pending.insert(k.clone());
            }
            if v.is_empty() {
                self.pending.remove(&k);
            }
        }
        dropped
    }
}
