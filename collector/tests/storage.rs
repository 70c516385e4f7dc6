//! The block store under the engine: events come back exactly as sent, in key order
//! across blocks, and the in-memory indexes survive a restart and retention.

use std::collections::HashMap;
use std::time::Duration;

use custody_collector::Engine;
use custody_collector::engine::StoredEvent;
use custody_collector::engine::retention::Retention;
use custody_collector::event_key::key_to_id;
use custody_collector::synth::{self, T0};
use custody_proto::admin::v1::{EventFilter, GetChainRequest, get_chain_request::Target};
use custody_proto::sensor::v1::{Event, EventBatch, Process};

/// Deterministic events on `hosts` hosts: per host a few processes (one with a
/// changing record, threads, events without a process), times mostly increasing
/// with some out of order.
fn workload(hosts: usize, per_host: usize, t0: u64) -> Vec<(String, Vec<Event>)> {
    let mut out = vec![];
    for h in 0..hosts {
        let host = format!("h{h}");
        let mut procs: Vec<Process> = (0..5)
            .map(|i| {
                let mut p = synth::process(&host, 100 + i, 1, &format!("/bin/p{i}"), "");
                if i == 0 {
                    p = synth::with_login(p, 1000, "alice");
                }
                p
            })
            .collect();
        let mut evs = vec![];
        for i in 0..per_host {
            let pi = (i * 7 + h) % procs.len();
            if i % 97 == 0 {
                // The record changes (e.g. an agent identity is learned).
                procs[pi].agent_id = format!("agent-{i}");
            }
            let jitter = if i % 13 == 0 { 5_000_000 } else { 0 };
            let t = t0 + (i as u64) * 1_000_000 - jitter + h as u64;
            let mut e = if i % 50 == 0 {
                synth::exec(&procs[pi], &host, t, vec![synth::api_key("k")])
            } else {
                synth::file_open(&procs[pi], &host, t, &format!("/data/{i}"))
            };
            if i % 11 == 0 {
                e.process.as_mut().unwrap().tid = 7000 + i as u32;
            }
            if i % 89 == 0 {
                e.process = None;
            }
            evs.push(e);
        }
        synth::number(&mut evs);
        out.push((host, evs));
    }
    out
}

/// Ingests per-host event lists in groups of `group` batches of `batch` events.
fn ingest(e: &Engine, work: &[(String, Vec<Event>)], batch: usize, group: usize) {
    let mut cursors = vec![0usize; work.len()];
    loop {
        let mut items = vec![];
        for (i, (host, evs)) in work.iter().enumerate() {
            if cursors[i] < evs.len() && items.len() < group {
                let end = (cursors[i] + batch).min(evs.len());
                let events = evs[cursors[i]..end].to_vec();
                cursors[i] = end;
                items.push((
                    host.clone(),
                    EventBatch {
                        first_seq: events[0].seq,
                        events,
                    },
                ));
            }
        }
        if items.is_empty() {
            break;
        }
        for o in e.ingest_group(items).unwrap() {
            assert!(o.rejected.is_none(), "{o:?}");
        }
    }
}

fn list(e: &Engine, f: EventFilter, ascending: bool, limit: usize) -> Vec<StoredEvent> {
    let mut out = vec![];
    let mut page = None;
    loop {
        let (evs, next) = e.list_events(&f, limit, page, ascending).unwrap();
        out.extend(evs);
        match next {
            Some(n) => page = Some(n),
            None => break,
        }
    }
    out
}

fn by_seq(evs: &[StoredEvent]) -> HashMap<(String, u64), Event> {
    evs.iter()
        .map(|s| ((s.event.host.clone(), s.event.seq), s.event.clone()))
        .collect()
}

/// Everything a query can observe about the store, for before/after comparisons.
fn snapshot(e: &Engine, work: &[(String, Vec<Event>)]) -> Vec<String> {
    let mut out = vec![];
    for asc in [true, false] {
        let all = list(e, EventFilter::default(), asc, 333);
        out.push(format!(
            "{asc} {:?}",
            all.iter().map(|s| key_to_id(&s.key)).collect::<Vec<_>>()
        ));
    }
    for (host, evs) in work {
        let f = EventFilter {
            host: host.clone(),
            ..Default::default()
        };
        out.push(format!("{:?}", list(e, f, true, 100).len()));
        for exec in evs
            .iter()
            .filter_map(|e| e.process.as_ref().map(|p| p.exec_id.clone()))
            .collect::<std::collections::BTreeSet<_>>()
        {
            let c = e
                .get_chain(&GetChainRequest {
                    target: Some(Target::ExecId(exec.clone())),
                    event_limit: 20,
                })
                .unwrap()
                .unwrap();
            let node = c.nodes.iter().find(|n| n.exec_id == exec).unwrap();
            out.push(format!(
                "{exec} {} {:?} {:?} {}",
                node.event_count,
                node.actions,
                c.events
                    .iter()
                    .map(|s| s.event_id.clone())
                    .collect::<Vec<_>>(),
                c.events_truncated
            ));
        }
    }
    let st = e.read();
    out.push(format!("{} {}", st.stored_events, st.stored_bytes));
    out
}

#[test]
fn events_come_back_exactly_and_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path()).unwrap();
    let work = workload(3, 2000, T0);
    // Small batches and groups: the open block is appended to many times.
    ingest(&e, &work, 37, 2);
    let all = list(&e, EventFilter::default(), true, 500);
    assert_eq!(all.len(), 6000);
    let got = by_seq(&all);
    for (_, evs) in &work {
        for ev in evs {
            assert_eq!(&got[&(ev.host.clone(), ev.seq)], ev);
        }
    }
    // Key order across blocks (times are out of order at places).
    let keys: Vec<[u8; 16]> = all.iter().map(|s| s.key).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    let mut desc = list(&e, EventFilter::default(), false, 499);
    desc.reverse();
    assert_eq!(desc.iter().map(|s| s.key).collect::<Vec<_>>(), keys);
    assert!(e.read().block_count() > 6000 / custody_collector::store::block::BLOCK_MAX_EVENTS);

    // Time ranges, by host, by process.
    let (since, until) = (T0 + 500_000_000, T0 + 900_000_000);
    let ranged = list(
        &e,
        EventFilter {
            since_ns: since,
            until_ns: until,
            ..Default::default()
        },
        false,
        100,
    );
    let want = all
        .iter()
        .filter(|s| (since..=until).contains(&s.event.time_ns))
        .count();
    assert_eq!(ranged.len(), want);
    let host1 = list(
        &e,
        EventFilter {
            host: "h1".into(),
            ..Default::default()
        },
        true,
        64,
    );
    assert_eq!(host1.len(), 2000);
    assert!(host1.iter().all(|s| s.event.host == "h1"));
    let exec = work[0].1[1].process.as_ref().unwrap().exec_id.clone();
    let of_exec = list(
        &e,
        EventFilter {
            exec_id: exec.clone(),
            ..Default::default()
        },
        true,
        50,
    );
    let want: Vec<&Event> = all
        .iter()
        .map(|s| &s.event)
        .filter(|ev| ev.process.as_ref().is_some_and(|p| p.exec_id == exec))
        .collect();
    assert_eq!(of_exec.iter().map(|s| &s.event).collect::<Vec<_>>(), want);

    // A chain query by event: counts and first events come from the indexes.
    let c = e
        .get_chain(&GetChainRequest {
            target: Some(Target::EventId(key_to_id(&of_exec[3].key))),
            event_limit: 10,
        })
        .unwrap()
        .unwrap();
    let node = c.nodes.iter().find(|n| n.exec_id == exec).unwrap();
    assert_eq!(node.event_count, want.len() as u64);
    assert_eq!(node.actions.len(), 50);
    assert_eq!(c.events.len(), 10);
    assert!(c.events_truncated);
    let chain_events: Vec<String> = list(
        &e,
        EventFilter {
            chain_id: c.summary.as_ref().unwrap().chain_id.clone(),
            ..Default::default()
        },
        true,
        10,
    )
    .iter()
    .take(10)
    .map(|s| key_to_id(&s.key))
    .collect();
    assert_eq!(
        c.events
            .iter()
            .map(|s| s.event_id.clone())
            .collect::<Vec<_>>(),
        chain_events
    );
}

#[test]
fn restart_restores_the_in_memory_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let work = workload(3, 1500, T0);
    let before = {
        let e = Engine::open(dir.path()).unwrap();
        ingest(&e, &work, 100, 3);
        snapshot(&e, &work)
    };
    let e = Engine::open(dir.path()).unwrap();
    assert_eq!(snapshot(&e, &work), before);
    // Ingest continues after the restart (into a new block) and re-sent events are
    // still duplicates.
    let more = workload(3, 1600, T0);
    let tail: Vec<(String, Vec<Event>)> = more
        .iter()
        .map(|(h, evs)| (h.clone(), evs[1400..].to_vec()))
        .collect();
    ingest(&e, &tail, 50, 2);
    assert_eq!(e.read().stored_events, 3 * 1600);
    drop(e);
    let e = Engine::open(dir.path()).unwrap();
    assert_eq!(e.read().stored_events, 3 * 1600);
    let all = list(&e, EventFilter::default(), true, 1000);
    assert_eq!(all.len(), 3 * 1600);
    let got = by_seq(&all);
    for (_, evs) in &more {
        for ev in evs {
            assert_eq!(&got[&(ev.host.clone(), ev.seq)], ev);
        }
    }
}

#[test]
fn retention_cuts_through_blocks_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let now = custody_collector::clock::now_ns();
    let hour = 3_600_000_000_000u64;
    let t0 = now - 10 * hour;
    let work = workload(2, 3000, t0);
    let e = Engine::open(dir.path()).unwrap();
    ingest(&e, &work, 200, 2);
    // Events are 1 ms apart: keep those of the last 1.5 s of the workload.
    let cutoff = t0 + 1_500_000_000;
    let age = Duration::from_nanos(now - cutoff);
    let r = e
        .enforce_retention(
            &Retention {
                max_age: Some(age),
                max_bytes: None,
            },
            now,
        )
        .unwrap();
    let kept: Vec<&Event> = work
        .iter()
        .flat_map(|(_, evs)| evs)
        .filter(|ev| ev.time_ns >= cutoff)
        .collect();
    assert_eq!(r.events_deleted as usize, 6000 - kept.len());
    let check = |e: &Engine| {
        let all = list(e, EventFilter::default(), true, 700);
        assert_eq!(all.len(), kept.len());
        let got = by_seq(&all);
        for ev in &kept {
            assert_eq!(&got[&(ev.host.clone(), ev.seq)], *ev);
        }
        let st = e.read();
        assert_eq!(st.stored_events as usize, kept.len());
        assert_eq!(
            st.stored_bytes,
            kept.iter()
                .map(|ev| prost::Message::encoded_len(*ev) as u64)
                .sum::<u64>()
        );
        drop(st);
        // Per-process counts follow the deletions.
        for ev in kept.iter().filter(|ev| ev.process.is_some()).take(20) {
            let exec = &ev.process.as_ref().unwrap().exec_id;
            let n = kept
                .iter()
                .filter(|k| k.process.as_ref().is_some_and(|p| &p.exec_id == exec))
                .count();
            assert_eq!(e.read().exec_event_count(exec), n as u64, "{exec}");
        }
    };
    check(&e);
    // The open block lost events: later ingest must not bring them back.
    let more = workload(2, 3100, t0);
    let tail: Vec<(String, Vec<Event>)> = more
        .iter()
        .map(|(h, evs)| (h.clone(), evs[3000..].to_vec()))
        .collect();
    ingest(&e, &tail, 100, 1);
    let all = list(&e, EventFilter::default(), true, 1000);
    assert_eq!(all.len(), kept.len() + 200);
    assert!(all.iter().all(|s| s.event.time_ns >= cutoff));
    let before = list(&e, EventFilter::default(), true, 1000);
    drop(e);
    let e = Engine::open(dir.path()).unwrap();
    let after = list(&e, EventFilter::default(), true, 1000);
    assert_eq!(
        after.iter().map(|s| s.key).collect::<Vec<_>>(),
        before.iter().map(|s| s.key).collect::<Vec<_>>()
    );
    // A backlog of old events lands in the open block; retention removes them
    // from it, and later ingest must not bring them back.
    let p = synth::process("h0", 999, 1, "/bin/late", "");
    let mut late: Vec<Event> = (0..30)
        .map(|i| synth::file_open(&p, "h0", t0 + i, "/late"))
        .chain((0..30).map(|i| synth::file_open(&p, "h0", now - hour + i, "/new")))
        .collect();
    for (i, ev) in late.iter_mut().enumerate() {
        ev.seq = 3101 + i as u64;
    }
    ingest(&e, &[("h0".to_string(), late[..40].to_vec())], 40, 1);
    let r = e
        .enforce_retention(
            &Retention {
                max_age: Some(age),
                max_bytes: None,
            },
            now,
        )
        .unwrap();
    assert_eq!(r.events_deleted, 30);
    ingest(&e, &[("h0".to_string(), late[40..].to_vec())], 20, 1);
    let all = list(&e, EventFilter::default(), true, 1000);
    assert_eq!(all.len(), kept.len() + 200 + 30);
    assert!(all.iter().all(|s| s.event.time_ns >= cutoff));
    assert_eq!(e.read().stored_events as usize, all.len());
    assert_eq!(e.read().exec_event_count(&p.exec_id), 30);

    // Size retention down to nothing removes every block.
    e.enforce_retention(
        &Retention {
            max_age: None,
            max_bytes: Some(0),
        },
        now,
    )
    .unwrap();
    assert_eq!(e.read().stored_events, 0);
    assert_eq!(e.read().block_count(), 0);
    assert!(list(&e, EventFilter::default(), true, 10).is_empty());
}

#[test]
fn concurrent_ingest_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = std::sync::Arc::new(Engine::open(dir.path()).unwrap());
    let work = workload(4, 1000, T0);
    let threads: Vec<_> = work
        .clone()
        .into_iter()
        .map(|w| {
            let e = e.clone();
            std::thread::spawn(move || ingest(&e, &[w], 10, 1))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(e);
    let e = Engine::open(dir.path()).unwrap();
    let all = list(&e, EventFilter::default(), true, 1000);
    assert_eq!(all.len(), 4000);
    let got = by_seq(&all);
    for (_, evs) in &work {
        for ev in evs {
            assert_eq!(&got[&(ev.host.clone(), ev.seq)], ev);
        }
    }
}

#[test]
fn store_of_the_old_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"E0123456789abcdef", b"x").unwrap();
        db.flush().unwrap();
    }
    let err = Engine::open(dir.path()).err().expect("old layout refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("layout 1"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
}

#[test]
fn first_events_of_a_process_that_arrive_last() {
    // A host replays its backlog newest first: the process's earliest events are
    // in the newest blocks.
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path()).unwrap();
    let p = synth::process("h", 10, 1, "/bin/p", "");
    let q = synth::process("h", 11, 1, "/bin/q", "");
    let n = 3000u64;
    let mut evs: Vec<Event> = (0..n)
        .map(|i| {
            let who = if i % 3 == 0 { &q } else { &p };
            synth::file_open(who, "h", T0 + (n - i) * 1000, &format!("/{i}"))
        })
        .collect();
    synth::number(&mut evs);
    ingest(&e, &[("h".to_string(), evs)], 100, 1);
    let of_p = list(
        &e,
        EventFilter {
            exec_id: p.exec_id.clone(),
            ..Default::default()
        },
        true,
        100,
    );
    assert_eq!(of_p.len() as u64, 2 * n / 3);
    let c = e
        .get_chain(&GetChainRequest {
            target: Some(Target::ExecId(p.exec_id.clone())),
            event_limit: 70,
        })
        .unwrap()
        .unwrap();
    let node = &c.nodes[0];
    assert_eq!(node.event_count, 2 * n / 3);
    let first: Vec<String> = of_p.iter().take(70).map(|s| key_to_id(&s.key)).collect();
    assert_eq!(
        c.events
            .iter()
            .map(|s| s.event_id.clone())
            .collect::<Vec<_>>(),
        first
    );
    let want_actions: Vec<String> = of_p
        .iter()
        .take(50)
        .map(|s| custody_collector::event_kind::describe(&s.event))
        .collect();
    assert_eq!(node.actions, want_actions);
    assert_eq!(e.first_exec_keys(&p.exec_id, 1).unwrap()[0], of_p[0].key);

    // Blocks overlapping in time: the first block holds the earliest event and then
    // only late ones, the next block the events in between.
    let r = synth::process("g", 10, 1, "/bin/r", "");
    let bs = custody_collector::store::block::BLOCK_MAX_EVENTS as u64;
    let mut evs: Vec<Event> = std::iter::once(1)
        .chain((1..bs).map(|i| 1_000_000 + i))
        .chain((0..100).map(|i| 2 + i))
        .map(|t| synth::file_open(&r, "g", T0 + t, "/r"))
        .collect();
    synth::number(&mut evs);
    ingest(&e, &[("g".to_string(), evs.clone())], bs as usize, 1);
    let c = e
        .get_chain(&GetChainRequest {
            target: Some(Target::ExecId(r.exec_id.clone())),
            event_limit: 70,
        })
        .unwrap()
        .unwrap();
    let times: Vec<u64> = c
        .events
        .iter()
        .map(|s| s.event.as_ref().unwrap().time_ns - T0)
        .collect();
    assert_eq!(times, (1..71).collect::<Vec<u64>>());
}
