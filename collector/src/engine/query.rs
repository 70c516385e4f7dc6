//! Read side of the engine: events by filter, chains as graphs, fleet inventory —
//! already in the admin API's message types.

use std::collections::{BTreeSet, HashSet};

use anyhow::Result;
use custody_proto::admin::v1 as admin;
use custody_proto::sensor::v1::Event;

use crate::chain::ChainIndex;
use crate::clock::now_ns;
use crate::engine::Placement;
use crate::engine::{Engine, StoredEvent};
use crate::event_key::EventKey;
use crate::event_key::{id_to_key, key_to_id};
use crate::event_kind::describe;
use crate::signal;
use crate::store::block::BlockMeta;
use crate::store::{BlockCache, EntryFilter, TimeScan};

const MAX_ACTIONS_PER_NODE: usize = 50;
/// Events read per process to find its first significant actions: an interpreter
/// reads several hundred files before its first request (most processes have far
/// fewer events, so this is what a busy one costs at most).
const ACTION_SCAN_PER_NODE: usize = 2000;
/// Events read at a time in that scan.
const ACTION_SCAN_SLICE: usize = 200;

pub fn to_proto(se: &StoredEvent) -> admin::StoredEvent {
    admin::StoredEvent {
        event_id: key_to_id(&se.key),
        chain_id: se.chain_id.clone(),
        event: Some(se.event.clone()),
    }
}

/// Whether an event passes a filter (used by the tail; list queries use indexes).
pub fn matches(f: &admin::EventFilter, chains: &ChainIndex, se: &StoredEvent) -> bool {
    let ev = &se.event;
    let p = ev.process.as_ref();
    (f.host.is_empty() || ev.host == f.host)
        && (f.kind.is_empty() || ev.kind_name() == f.kind)
        && (f.exec_id.is_empty() || p.is_some_and(|p| p.exec_id == f.exec_id))
        && (f.agent_id.is_empty() || p.is_some_and(|p| p.agent_id == f.agent_id))
        && (f.chain_id.is_empty()
            || se.chain_id == f.chain_id
            || p.and_then(|p| chains.chain_of(&p.exec_id)) == Some(f.chain_id.as_str()))
        && (f.since_ns == 0 || ev.time_ns >= f.since_ns)
        && (f.until_ns == 0 || ev.time_ns <= f.until_ns)
}

fn stored(event: Event, key: EventKey, chains: &ChainIndex) -> StoredEvent {
    let chain_id = event
        .process
        .as_ref()
        .and_then(|p| chains.chain_of(&p.exec_id))
        .unwrap_or("")
        .to_owned();
    StoredEvent {
        key,
        chain_id,
        event,
    }
}

impl Engine {
    fn load(
        cache: &mut BlockCache<'_>,
        k: &EventKey,
        chains: &ChainIndex,
    ) -> Result<Option<StoredEvent>> {
        Ok(cache.event(k)?.map(|event| stored(event, *k, chains)))
    }

    /// Events matching `f`, `limit` at most, after `page` (exclusive) in the chosen
    /// order; returns the page and the token of the next one.
    pub fn list_events(
        &self,
        f: &admin::EventFilter,
        limit: usize,
        page: Option<EventKey>,
        ascending: bool,
    ) -> Result<(Vec<StoredEvent>, Option<EventKey>)> {
        let limit = limit.clamp(1, 10_000);
        let st = self.read();
        let in_range = |k: &EventKey| {
            let t = crate::event_key::event_key_time(k);
            (f.since_ns == 0 || t >= f.since_ns) && (f.until_ns == 0 || t <= f.until_ns)
        };
        let after_page = |k: &EventKey| match page {
            None => true,
            Some(p) if ascending => *k > p,
            Some(p) => *k < p,
        };
        // Which blocks can hold matching events, and which of their entries.
        let mut execs: HashSet<&str> = HashSet::new();
        let mut places: Vec<&Placement> = vec![];
        let filter = if !f.exec_id.is_empty() {
            execs.insert(&f.exec_id);
            Some(EntryFilter::Execs(&execs))
        } else if !f.chain_id.is_empty() {
            execs.extend(
                st.chains
                    .members(&f.chain_id)
                    .into_iter()
                    .flatten()
                    .map(String::as_str),
            );
            Some(EntryFilter::Execs(&execs))
        } else if !f.agent_id.is_empty() {
            execs.extend(
                st.chains
                    .nodes()
                    .filter(|(_, n)| n.process.agent_id == f.agent_id)
                    .map(|(k, _)| k.as_str()),
            );
            Some(EntryFilter::Execs(&execs))
        } else if !f.host.is_empty() {
            places.extend(st.host_placement(&f.host));
            Some(EntryFilter::Host(&f.host))
        } else {
            None
        };
        places.extend(execs.iter().filter_map(|e| st.exec_placement(e)));
        let candidates: Vec<(u64, &BlockMeta)> = match filter {
            None => st.blocks.iter().map(|(id, m)| (*id, m)).collect(),
            Some(_) => {
                let ids: BTreeSet<u64> = places
                    .iter()
                    .flat_map(|p| p.blocks.iter().map(|b| b.0))
                    .collect();
                ids.into_iter()
                    .filter_map(|id| st.blocks.get(&id).map(|m| (id, m)))
                    .collect()
            }
        };
        // The time range is applied to the storage key (the event time, or the
        // arrival time for clock-skewed events), so drop it from the per-event check.
        let g = admin::EventFilter {
            since_ns: 0,
            until_ns: 0,
            ..f.clone()
        };
        let mut out = vec![];
        let mut accept = |se: StoredEvent| -> bool {
            if matches(&g, &st.chains, &se) {
                out.push(se);
            }
            out.len() >= limit
        };
        let start = page.or_else(|| {
            if ascending && f.since_ns > 0 {
                Some(crate::event_key::event_key(f.since_ns, 0))
            } else if !ascending && f.until_ns > 0 {
                Some(crate::event_key::event_key(f.until_ns, u64::MAX))
            } else {
                None
            }
        });
        let scan = TimeScan::new(
            &*self.store,
            candidates.into_iter(),
            start,
            ascending,
            filter.unwrap_or(EntryFilter::All),
        );
        for r in scan {
            let (b, i) = r?;
            let k = b.entries[i].key();
            if !after_page(&k) {
                continue;
            }
            if !in_range(&k) {
                let t = crate::event_key::event_key_time(&k);
                let past_end = if ascending {
                    f.until_ns > 0 && t > f.until_ns
                } else {
                    f.since_ns > 0 && t < f.since_ns
                };
                if past_end {
                    break;
                }
                continue;
            }
            if accept(stored(b.event(i)?, k, &st.chains)) {
                break;
            }
        }
        let next = (out.len() >= limit)
            .then(|| out.last().map(|e| e.key))
            .flatten();
        Ok((out, next))
    }

    pub fn chain_summary(
        &self,
        chains: &ChainIndex,
        chain_id: &str,
    ) -> Option<admin::ChainSummary> {
        let members = chains.members(chain_id)?;
        let (mut hosts, mut agents) = (BTreeSet::new(), BTreeSet::new());
        let (mut first, mut last) = (u64::MAX, 0);
        let (mut opaque, mut opaque_procs) = (0, 0);
        for m in members {
            let n = chains.node(m)?;
            opaque += n.opaque_egress;
            if n.opaque_egress > 0 || !n.tls_uncovered.is_empty() {
                opaque_procs += 1;
            }
            hosts.insert(n.host.clone());
            if !n.process.agent_id.is_empty() {
                agents.insert(n.process.agent_id.clone());
            }
            first = first.min(n.first_seen_ns);
            last = last.max(n.last_seen_ns);
        }
        let (human, source) = chains.human_of(chain_id).unwrap_or_default();
        Some(admin::ChainSummary {
            chain_id: chain_id.to_owned(),
            root_exec_id: chain_id.to_owned(),
            human,
            human_source: source.to_owned(),
            hosts: hosts.into_iter().collect(),
            agents: agents.into_iter().collect(),
            process_count: members.len() as u64,
            first_seen_ns: if first == u64::MAX { 0 } else { first },
            last_seen_ns: last,
            opaque_connections: opaque,
            opaque_processes: opaque_procs,
        })
    }

    pub fn list_chains(&self, req: &admin::ListChainsRequest) -> Vec<admin::ChainSummary> {
        let st = self.read();
        let mut out: Vec<admin::ChainSummary> = st
            .chains
            .chain_ids()
            .filter_map(|c| self.chain_summary(&st.chains, c))
            .filter(|s| req.human.is_empty() || s.human == req.human)
            .filter(|s| req.host.is_empty() || s.hosts.contains(&req.host))
            .collect();
        out.sort_by(|a, b| {
            b.last_seen_ns
                .cmp(&a.last_seen_ns)
                .then(a.chain_id.cmp(&b.chain_id))
        });
        let limit = if req.limit == 0 {
            100
        } else {
            req.limit as usize
        };
        out.truncate(limit);
        out
    }

    /// A chain as a graph, found by chain id, by a process in it, or by one of its
    /// events (then `path_from_root` walks back from that event's process).
    ///
    /// The work is bounded by the chain's size, not the store's: per process, the
    /// event count comes from memory and only its first events are read (the
    /// actions shown, and candidates for the first `event_limit` of the chain).
    pub fn get_chain(&self, req: &admin::GetChainRequest) -> Result<Option<admin::Chain>> {
        use admin::get_chain_request::Target;
        let st = self.read();
        let mut cache = BlockCache::new(&*self.store, &st.blocks);
        let focus: Option<String> = match &req.target {
            Some(Target::ChainId(_)) | None => None,
            Some(Target::ExecId(e)) => Some(e.clone()),
            Some(Target::EventId(id)) => {
                let Some(k) = id_to_key(id) else {
                    return Ok(None);
                };
                let Some(ev) = cache.event(&k)? else {
                    return Ok(None);
                };
                ev.process.map(|p| p.exec_id)
            }
        };
        let chain_id = match (&req.target, &focus) {
            (Some(Target::ChainId(c)), _) => c.clone(),
            (_, Some(exec)) => match st.chains.chain_of(exec) {
                Some(c) => c.to_owned(),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let Some(summary) = self.chain_summary(&st.chains, &chain_id) else {
            return Ok(None);
        };
        let Some(members) = st.chains.members(&chain_id) else {
            return Ok(None);
        };
        let event_limit = if req.event_limit == 0 {
            1000
        } else {
            req.event_limit as usize
        };
        let per_node = event_limit.max(MAX_ACTIONS_PER_NODE);
        let mut nodes = Vec::with_capacity(members.len());
        let mut first_keys = vec![];
        let mut total_events = 0u64;
        for id in members {
            let n = st.chains.node(id).expect("member exists");
            // The first events of this process: the chain's first `event_limit`
            // events are among the union of its members' first `event_limit`.
            let keys = st.first_exec_keys(&mut cache, id, per_node.max(ACTION_SCAN_PER_NODE))?;
            // Significant events first: routine reads fold into one line per
            // directory (crate::signal), so an interpreter's start-up does not fill
            // the list; a bounded scan keeps the cost per process fixed.
            // Events are read a slice at a time, and reading stops once the list
            // is full: a chain page costs what its processes' first significant
            // actions cost, not ACTION_SCAN_PER_NODE reads for every process.
            let scan = keys.len().min(ACTION_SCAN_PER_NODE);
            let mut scanned = Vec::new();
            let mut rows = Vec::new();
            let mut read = 0;
            while read < scan {
                let end = (read + ACTION_SCAN_SLICE).min(scan);
                for k in &keys[read..end] {
                    if let Some(ev) = cache.event(k)? {
                        scanned.push(ev);
                    }
                }
                read = end;
                (rows, _) = signal::fold(&scanned, &HashSet::new(), MAX_ACTIONS_PER_NODE);
                if rows.len() >= MAX_ACTIONS_PER_NODE {
                    break;
                }
            }
            let actions: Vec<String> = rows
                .iter()
                .map(|r| match r {
                    signal::Row::Event(i) => describe(&scanned[*i]),
                    fold => fold.fold_text().unwrap_or_default(),
                })
                .collect();
            let event_count = st.exec_event_count(id);
            total_events += event_count;
            let p = &n.process;
            nodes.push(admin::ChainNode {
                exec_id: id.clone(),
                host: n.host.clone(),
                pid: p.pid,
                exe: p.exe.clone(),
                argv: p.argv.clone(),
                comm: p.comm.clone(),
                user: p.user.clone(),
                agent_id: p.agent_id.clone(),
                agent_name: p.agent_name.clone(),
                agent_kind: p.agent_kind.clone(),
                principal: p.principal.clone(),
                credentials: n
                    .creds
                    .iter()
                    .map(|c| admin::CredentialUse {
                        fingerprint: c.fingerprint.clone(),
                        kind: c.kind.clone(),
                        usage: c.usage.clone(),
                        source: c.source.clone(),
                        location: c.location.clone(),
                    })
                    .collect(),
                start_time_ns: p.start_time_ns,
                depth: st.chains.depth(id) as u32,
                upstream: n
                    .upstream
                    .as_ref()
                    .map(|u| u.exec_id.clone())
                    .unwrap_or_default(),
                event_count,
                actions,
                tls_uncovered: n.tls_uncovered.clone(),
                opaque_connections: n.opaque_egress,
            });
            first_keys.extend(keys.into_iter().take(event_limit));
        }
        nodes.sort_by(|a, b| {
            (a.depth, a.start_time_ns, &a.exec_id).cmp(&(b.depth, b.start_time_ns, &b.exec_id))
        });
        first_keys.sort_unstable();
        let truncated = total_events > event_limit as u64;
        let mut events = Vec::with_capacity(first_keys.len().min(event_limit));
        for k in first_keys.iter().take(event_limit) {
            if let Some(se) = Self::load(&mut cache, k, &st.chains)? {
                events.push(to_proto(&se));
            }
        }
        let edges = st
            .chains
            .chain_edges(&chain_id)
            .into_iter()
            .map(|e| admin::ChainEdge {
                from_exec_id: e.from,
                to_exec_id: e.to,
                kind: e.kind,
                detail: e.detail,
                time_ns: e.time_ns,
            })
            .collect();
        Ok(Some(admin::Chain {
            summary: Some(summary),
            nodes,
            edges,
            path_from_root: focus
                .map(|f| st.chains.path_from_root(&f))
                .unwrap_or_default(),
            events,
            events_truncated: truncated,
        }))
    }

    pub fn list_hosts(&self) -> Vec<admin::Host> {
        let st = self.read();
        let now = now_ns();
        let mut out: Vec<admin::Host> = st
            .fleet
            .hosts
            .values()
            .map(|h| admin::Host {
                host_id: h.host_id.clone(),
                connected: self.is_connected(&h.host_id),
                last_seen_ns: h.last_seen_ns,
                enrolled_at_ns: h.enrolled_at_ns,
                boot_id: h.boot_id.clone(),
                sensor_version: h.sensor_version.clone(),
                kernel_release: h.kernel_release.clone(),
                features: h.features.clone(),
                last_seq: h.last_seq,
                events_stored: h.events_stored,
                duplicates_dropped: h.duplicates,
                batches_rejected: h.batches_rejected,
                spool_dropped: h.spool_dropped,
                spool_depth: h.spool_depth,
                counters: h.counters.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                lag_ns: if h.newest_event_ns == 0 {
                    0
                } else {
                    now.saturating_sub(h.newest_event_ns)
                },
                clock_skewed: h.clock_skewed,
                events_behind: h.lag.events_behind(),
                time_behind_ns: h.lag.time_behind_ns(now),
                drain_rate: h.lag.drain_rate,
                produce_rate: h.lag.produce_rate,
                catch_up_eta_s: h.lag.eta_s().unwrap_or(0),
                lag_growing: h.lag.growing,
                retired: h.retired.is_some(),
                retired_at_ns: h.retired.as_ref().map_or(0, |r| r.at_ns),
                retired_by: h.retired.as_ref().map(|r| r.by.clone()).unwrap_or_default(),
                retired_reason: h
                    .retired
                    .as_ref()
                    .map(|r| r.reason.clone())
                    .unwrap_or_default(),
                cert_serial: h
                    .cert
                    .as_ref()
                    .map(|c| c.serial.clone())
                    .unwrap_or_default(),
                cert_not_after_ns: h.cert.as_ref().map_or(0, |c| c.not_after_ns),
                certs_refused: h.certs_refused,
                events_refused: h.events_refused,
                fields_truncated: h.fields_truncated,
            })
            .collect();
        out.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        out
    }

    pub fn list_agents(&self) -> Vec<admin::Agent> {
        let st = self.read();
        let mut out: Vec<admin::Agent> = st
            .fleet
            .agents
            .values()
            .map(|a| admin::Agent {
                agent_id: a.agent_id.clone(),
                name: a.name.clone(),
                kind: a.kind.clone(),
                origin: a.origin.clone(),
                hosts: a.hosts.iter().cloned().collect(),
                evidence: a.evidence.clone(),
                first_seen_ns: a.first_seen_ns,
                last_seen_ns: a.last_seen_ns,
                process_count: a.processes,
            })
            .collect();
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        out
    }

    pub fn list_credentials(&self) -> Vec<admin::CredentialSummary> {
        let st = self.read();
        let mut out: Vec<admin::CredentialSummary> = st
            .fleet
            .creds
            .values()
            .map(|c| admin::CredentialSummary {
                fingerprint: c.fingerprint.clone(),
                kind: c.kind.clone(),
                metadata: c
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                hosts: c.hosts.iter().cloned().collect(),
                agents: c.agents.iter().cloned().collect(),
                held_by: c.held_by.iter().cloned().collect(),
                used_by: c.used_by.iter().cloned().collect(),
                first_seen_ns: c.first_seen_ns,
                last_seen_ns: c.last_seen_ns,
            })
            .collect();
        out.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        out
    }
}
