//! Block encoding and decoding: round trips, ordering and limits.
use super::*;
use crate::synth;

fn ev(p: &Process, t: u64, seq: u64) -> Event {
    let mut e = synth::file_open(p, "h", t, "/x");
    e.seq = seq;
    e
}

#[test]
fn events_round_trip_exactly() {
    let mut a = synth::process("h", 10, 1, "/bin/a", "agent");
    let b = synth::process("h", 11, 10, "/bin/b", "");
    let mut bb = BlockBuilder::new(100);
    let hi = bb.host_index("h");
    let mut want = vec![];
    for i in 0..20u64 {
        let mut e = if i % 3 == 0 {
            ev(&b, 50 + i, i + 1)
        } else {
            ev(&a, 50 + i, i + 1)
        };
        if i == 7 {
            // A new version of the process (exec), and a thread.
            a.argv.push("--again".into());
            e = synth::exec(&a, "h", 50 + i, vec![synth::api_key("k")]);
            e.seq = i + 1;
        }
        if i == 9 {
            e.process.as_mut().unwrap().tid = 4242;
        }
        if i == 12 {
            e.process = None;
        }
        // One event out of time order.
        let t = if i == 15 { 10 } else { e.time_ns };
        let key = event_key(t, 100 + i);
        bb.push(hi, key, e.encoded_len() as u32, e.clone());
        want.push((key, e));
    }
    let w = bb.take_writes().unwrap();
    assert!(bb.take_writes().is_none(), "nothing changed since");
    assert_eq!(w.summary.meta.count, 20);
    assert_eq!(w.summary.meta.min, event_key(10, 115));
    let blk = Block::decode(100, w.value.into()).unwrap();
    assert_eq!(blk.proc_count(), 3);
    for (k, e) in &want {
        let i = blk.find(k).unwrap();
        assert_eq!(&blk.event(i).unwrap(), e);
        assert_eq!(blk.entries[i].size as usize, e.encoded_len());
    }
    let keys: Vec<EventKey> = blk.entries.iter().map(|e| e.key()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    // The summary the builder kept is the block's; the event without a process
    // counts for its host only.
    let mut s = w.summary.clone();
    s.execs.sort_by(|x, y| x.name.cmp(&y.name));
    let mut of = BlockSummary::of(&blk, |_| true).unwrap();
    of.execs.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(s, of);
    assert_eq!(s.execs.iter().map(|p| p.count).sum::<u32>(), 19);
    assert_eq!(s.hosts[0].count, 20);
    assert_eq!(BlockSummary::decode(&s.encode()).unwrap(), s);
    assert_eq!(blk.keys_of(&b.exec_id).len(), 6);
    // Dropping entries keeps the rest intact.
    let smaller = Block::decode(100, blk.without(|i| i % 2 == 0).into()).unwrap();
    assert_eq!(smaller.entries.len(), 10);
    for i in 0..smaller.entries.len() {
        let k = smaller.entries[i].key();
        let e = &want.iter().find(|(x, _)| *x == k).unwrap().1;
        assert_eq!(&smaller.event(i).unwrap(), e);
    }
    let part = BlockSummary::of(&blk, |i| i % 2 == 1).unwrap();
    assert_eq!(part.meta.count, 10);
    assert!(BlockSummary::of(&blk, |_| false).is_none());
}

#[test]
fn open_block_summary_follows_appends() {
    let a = synth::process("h", 10, 1, "/bin/a", "");
    let b = synth::process("h", 11, 1, "/bin/b", "");
    let mut bb = BlockBuilder::new(1);
    let h = bb.host_index("h");
    bb.push(h, event_key(100, 1), 1, ev(&a, 100, 1));
    bb.push(h, event_key(101, 2), 1, ev(&b, 101, 2));
    let w = bb.take_writes().unwrap();
    assert_eq!(w.summary.execs.len(), 2);
    // An event of `a` older than its others.
    bb.push(h, event_key(50, 3), 1, ev(&a, 50, 3));
    let w = bb.take_writes().unwrap();
    let pa = w
        .summary
        .execs
        .iter()
        .find(|p| p.name == a.exec_id)
        .unwrap();
    assert_eq!((pa.min, pa.count), (event_key(50, 3), 2));
    assert_eq!(w.summary.meta.min, event_key(50, 3));
    assert_eq!(w.summary.meta.max, event_key(101, 2));
}
