//! Folding of routine reads and the "could not see" texts: exact counts, and what
//! must never fold.

use std::collections::HashSet;

use custody_proto::sensor::v1::{
    Event, FileAccess, FileOpen, FileUnlink, Process, RoutineReads, TlsStackFinding, TlsUncovered,
    event::Kind,
};

use super::*;

fn open(exec: &str, path: &str, access: FileAccess, result: i64, t: u64) -> Event {
    let mut f = FileOpen {
        path: path.into(),
        result,
        ..Default::default()
    };
    f.set_access(access);
    Event {
        time_ns: t,
        process: Some(Process {
            exec_id: exec.into(),
            comm: "python3".into(),
            ..Default::default()
        }),
        kind: Some(Kind::FileOpen(f)),
        ..Default::default()
    }
}

#[test]
fn groups_are_the_prefix_and_one_component() {
    assert_eq!(
        routine_group("/usr/lib/python3.11/json/decoder.py").as_deref(),
        Some("/usr/lib/python3.11")
    );
    assert_eq!(
        routine_group("/home/a/.venv/lib/python3.11/site-packages/openai/x.py").as_deref(),
        Some("/home/a/.venv/lib/python3.11/site-packages")
    );
    assert_eq!(routine_group("/etc/ld.so.cache").as_deref(), Some("/etc"));
    assert_eq!(
        routine_group("/proc/self/maps").as_deref(),
        Some("/proc/self")
    );
    assert_eq!(routine_group("/home/a/.ssh/id_rsa"), None);
    assert_eq!(routine_group("/etc/shadow"), None);
}

#[test]
fn routine_reads_fold_with_exact_counts_and_the_rest_stays() {
    let mut evs = vec![];
    for i in 0..412 {
        evs.push(open(
            "h:1:1",
            &format!("/usr/lib/python3.11/m{i}.py"),
            FileAccess::Read,
            3,
            i,
        ));
    }
    // Same directory, another process: its own line.
    evs.push(open(
        "h:2:2",
        "/usr/lib/python3.11/os.py",
        FileAccess::Read,
        3,
        500,
    ));
    // A write, a failed open and a denied-by-policy read under the same prefix.
    evs.push(open(
        "h:1:1",
        "/usr/lib/python3.11/w.py",
        FileAccess::Write,
        3,
        501,
    ));
    evs.push(open(
        "h:1:1",
        "/usr/lib/python3.11/gone.py",
        FileAccess::Read,
        -2,
        502,
    ));
    evs.push(open(
        "h:1:1",
        "/usr/lib/python3.11/secret.py",
        FileAccess::Read,
        3,
        503,
    ));
    evs.push(Event {
        kind: Some(Kind::FileUnlink(FileUnlink {
            path: "/usr/lib/python3.11/m1.py".into(),
            ..Default::default()
        })),
        ..evs[0].clone()
    });
    // More routine reads of process 1 after the others: same fold line.
    for i in 0..10 {
        evs.push(open(
            "h:1:1",
            &format!("/usr/lib/python3.11/late{i}.py"),
            FileAccess::Read,
            3,
            600 + i,
        ));
    }
    let keep: HashSet<String> = ["/usr/lib/python3.11/secret.py".to_owned()].into();
    let (rows, consumed) = fold(&evs, &keep, 100);
    assert_eq!(consumed, evs.len());
    assert_eq!(rows.len(), 6, "{rows:?}");
    match &rows[0] {
        Row::Fold {
            exec_id,
            dir,
            events,
            first_ns,
            last_ns,
            ..
        } => {
            assert_eq!(exec_id, "h:1:1");
            assert_eq!(dir, "/usr/lib/python3.11");
            assert_eq!(events.len(), 422);
            assert_eq!((*first_ns, *last_ns), (0, 609));
        }
        r => panic!("expected a fold, got {r:?}"),
    }
    assert_eq!(
        rows[0].fold_text().unwrap(),
        "422 routine reads under /usr/lib/python3.11"
    );
    assert!(
        matches!(&rows[1], Row::Fold { exec_id, events, .. } if exec_id == "h:2:2" && events.len() == 1)
    );
    assert_eq!(
        rows[1].fold_text().unwrap(),
        "1 routine read under /usr/lib/python3.11"
    );
    // The write, the failed open, the policy-matched path and the unlink, in order.
    assert_eq!(
        rows[2..].to_vec(),
        vec![
            Row::Event(413),
            Row::Event(414),
            Row::Event(415),
            Row::Event(416)
        ]
    );
}

#[test]
fn what_the_sensor_summarised_counts_in_the_same_line() {
    let py = "/usr/lib/python3.11";
    let repeated = open("h:1:1", &format!("{py}/os.py"), FileAccess::Read, 3, 10);
    let summary = Event {
        kind: Some(Kind::RoutineReads(RoutineReads {
            dir: py.into(),
            count: 400,
            failed: 12,
            total: 400,
            total_failed: 12,
            ..Default::default()
        })),
        ..open("h:1:1", "", FileAccess::Read, 0, 20)
    };
    let evs = vec![
        open("h:1:1", &format!("{py}/os.py"), FileAccess::Read, 3, 0),
        repeated,
        summary,
    ];
    let (rows, consumed) = fold(&evs, &HashSet::new(), 10);
    assert_eq!(consumed, 3);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0].fold_text().unwrap(),
        "402 routine reads under /usr/lib/python3.11 (12 failed)"
    );
    // An open of the agent's own file is not routine: shown as it is.
    let own = open("h:1:1", "/home/a/data.csv", FileAccess::Read, 3, 30);
    let (rows, _) = fold(&[own], &HashSet::new(), 10);
    assert_eq!(rows, vec![Row::Event(0)]);
}

#[test]
fn a_page_ends_where_its_rows_end() {
    let mut evs = vec![];
    for i in 0..5 {
        evs.push(open(
            "h:1:1",
            &format!("/home/a/f{i}"),
            FileAccess::Read,
            3,
            i,
        ));
        evs.push(open(
            "h:1:1",
            &format!("/lib/x{i}.so"),
            FileAccess::Read,
            3,
            i,
        ));
    }
    let (rows, consumed) = fold(&evs, &HashSet::new(), 3);
    // f0, the /lib fold, f1 — and the /lib reads up to f2, which does not fit.
    assert_eq!(rows.len(), 3);
    assert_eq!(consumed, 4);
    assert!(matches!(&rows[1], Row::Fold { events, .. } if events == &vec![1, 3]));
}

#[test]
fn uncovered_note_and_opaque_sentence() {
    let t = TlsUncovered {
        path: "/usr/bin/codex".into(),
        stacks: vec![TlsStackFinding {
            stack: custody_proto::sensor::v1::TlsStack::Rustls as i32,
            versions: vec!["rustls 0.23.20".into()],
            tried: vec!["exported symbols".into(), "prologue scan".into()],
        }],
        ..Default::default()
    };
    assert_eq!(
        uncovered_note(&t),
        "TLS not readable: rustls 0.23.20 — tried exported symbols; prologue scan"
    );
    assert_eq!(
        uncovered_note(&TlsUncovered::default()),
        "TLS not readable: unknown TLS"
    );
    assert_eq!(opaque_sentence(0, 0), None);
    assert_eq!(
        opaque_sentence(3, 2).unwrap(),
        "3 opaque TLS connections from 2 processes whose TLS Custody cannot read"
    );
    assert_eq!(
        opaque_sentence(1, 1).unwrap(),
        "1 opaque TLS connection from 1 process whose TLS Custody cannot read"
    );
}
