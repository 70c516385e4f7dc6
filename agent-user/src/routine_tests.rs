//! Routine read summaries: what is summarised under which directory, what never is,
//! and that counts go on across windows and end at the process's exit.

use custody_proto::sensor::v1::{Event, FileOpen, Process, ProcessExit, RoutineReads, event::Kind};

use super::*;

fn open(exec_id: &str, t: u64, path: &str, flags: u32, result: i64) -> Event {
    Event {
        host: "h".into(),
        time_ns: t,
        seq: 0,
        process: Some(Process {
            exec_id: exec_id.into(),
            pid: 7,
            ..Default::default()
        }),
        kind: Some(Kind::FileOpen(FileOpen {
            path: path.into(),
            flags,
            result,
            ..Default::default()
        })),
    }
}

fn exit(exec_id: &str, t: u64) -> Event {
    Event {
        kind: Some(Kind::Exit(ProcessExit::default())),
        ..open(exec_id, t, "", 0, 0)
    }
}

fn summaries(out: &[Event]) -> Vec<(&str, RoutineReads)> {
    out.iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::RoutineReads(r)) => {
                Some((e.process.as_ref().unwrap().exec_id.as_str(), r.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn directories_of_routine_paths() {
    let r = RoutineRules::default();
    let d = |p: &str| r.dir_of(p);
    assert_eq!(
        d("/usr/lib/python3.11/encodings/utf_8.py").as_deref(),
        Some("/usr/lib/python3.11")
    );
    assert_eq!(
        d("/usr/lib/x86_64-linux-gnu/libssl.so.3").as_deref(),
        Some("/usr/lib/x86_64-linux-gnu")
    );
    assert_eq!(
        d("/home/u/.venv/lib/python3.11/site-packages/openai/__init__.py").as_deref(),
        Some("/home/u/.venv/lib/python3.11/site-packages")
    );
    assert_eq!(
        d("/srv/app/node_modules/left-pad/index.js").as_deref(),
        Some("/srv/app/node_modules")
    );
    assert_eq!(d("/etc/ld.so.cache").as_deref(), Some("/etc"));
    assert_eq!(d("/proc/self/maps").as_deref(), Some("/proc/self"));
    // Not routine: the agent's own files, a component that only starts like one,
    // relative and `..` paths.
    assert_eq!(d("/home/u/project/main.py"), None);
    assert_eq!(d("/srv/app/node_modules_backup/x.js"), None);
    assert_eq!(d("notes/site-packages/x"), None);
    assert_eq!(d("/usr/lib/../../etc/shadow"), None);
}

#[test]
fn configured_prefixes_replace_the_defaults_and_bad_ones_are_refused() {
    let r = RoutineRules::parse(["/opt/runtime/".to_string(), "vendor".to_string()]).unwrap();
    assert_eq!(
        r.dir_of("/opt/runtime/v2/lib.so").as_deref(),
        Some("/opt/runtime/v2")
    );
    assert_eq!(r.dir_of("/x/vendor/a/b.php").as_deref(), Some("/x/vendor"));
    assert_eq!(r.dir_of("/usr/lib/python3.11/os.py"), None);
    assert!(RoutineRules::parse(["/".to_string()]).is_err());
    assert!(RoutineRules::parse(["".to_string()]).is_err());
    assert!(RoutineRules::parse(["lib/python".to_string()]).is_err());
}

#[test]
fn reads_under_one_directory_become_one_record_at_exit_with_failures() {
    let mut r = Routine::new(RoutineRules::default(), 60);
    let mut out = Vec::new();
    let py = "/usr/lib/python3.11";
    for i in 0..410u64 {
        r.absorb(
            open("p1", 1_000 + i, &format!("{py}/m{i}.py"), 0, 3),
            &mut out,
        );
    }
    // Searching the path: failed opens.
    r.absorb(open("p1", 2_000, &format!("{py}/nope.py"), 0, -2), &mut out);
    // The same file twice: two reads.
    r.absorb(open("p1", 2_001, &format!("{py}/os.py"), 0, 3), &mut out);
    r.absorb(open("p1", 2_002, &format!("{py}/os.py"), 0, 3), &mut out);
    // Another process's reads stay its own.
    r.absorb(open("p2", 2_003, &format!("{py}/os.py"), 0, 3), &mut out);
    assert!(
        out.is_empty(),
        "nothing reported before the window or the exit"
    );
    r.absorb(exit("p1", 3_000), &mut out);
    let s = summaries(&out);
    assert_eq!(s.len(), 1, "{s:?}");
    let (who, rr) = &s[0];
    assert_eq!(*who, "p1");
    assert_eq!(rr.dir, py);
    assert_eq!((rr.count, rr.failed), (412, 1));
    assert_eq!((rr.total, rr.total_failed), (412, 1));
    assert_eq!((rr.first_ns, rr.last_ns), (1_000, 2_002));
    assert!(
        matches!(out.last().unwrap().kind, Some(Kind::Exit(_))),
        "summary before the exit"
    );
    // p2's summary waits for p2.
    let mut rest = Vec::new();
    r.flush_all(&mut rest);
    assert_eq!(summaries(&rest).len(), 1);
    assert_eq!(summaries(&rest)[0].1.count, 1);
}

#[test]
fn counts_survive_the_restart_of_the_summary_window() {
    let mut r = Routine::new(RoutineRules::default(), 1);
    let mut out = Vec::new();
    let s = 1_000_000_000u64;
    for i in 0..3 {
        r.absorb(
            open("p", s + i, "/usr/lib/locale/C.utf8/LC_CTYPE", 0, 3),
            &mut out,
        );
    }
    r.due(s + s / 2, &mut out);
    assert!(out.is_empty(), "the window is still open");
    r.due(2 * s + 10, &mut out);
    let first = summaries(&out);
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].1.count, first[0].1.total), (3, 3));
    out.clear();
    // A quiet window sends nothing; the next reads open a new window.
    r.due(4 * s, &mut out);
    assert!(out.is_empty());
    for i in 0..2 {
        r.absorb(
            open("p", 5 * s + i, "/usr/lib/locale/C.utf8/LC_TIME", 0, 3),
            &mut out,
        );
    }
    r.absorb(exit("p", 5 * s + 10), &mut out);
    let second = summaries(&out);
    assert_eq!(second.len(), 1);
    let rr = &second[0].1;
    assert_eq!(
        (rr.count, rr.total),
        (2, 5),
        "the total goes on across windows"
    );
    assert_eq!(rr.first_ns, s, "first read ever");
    assert_eq!(rr.dir, "/usr/lib/locale");
}

#[test]
fn writes_credential_files_and_other_paths_are_reported_in_full() {
    let mut r = Routine::new(RoutineRules::default(), 60);
    let mut out = Vec::new();
    let o_wronly = 1;
    let o_rdonly_creat = 0o100;
    let o_rdonly_trunc = 0o1000;
    r.absorb(
        open("p", 1, "/usr/lib/python3.11/x.py", o_wronly, 3),
        &mut out,
    );
    r.absorb(
        open("p", 2, "/usr/lib/python3.11/y.py", o_rdonly_creat, 3),
        &mut out,
    );
    r.absorb(
        open("p", 3, "/usr/lib/python3.11/z.py", o_rdonly_trunc, 3),
        &mut out,
    );
    r.absorb(open("p", 4, "/home/u/.aws/credentials", 0, 3), &mut out);
    r.absorb(open("p", 5, "/srv/node_modules/pkg/.env", 0, 3), &mut out);
    r.absorb(open("p", 6, "/home/u/report.txt", 0, 3), &mut out);
    assert_eq!(out.len(), 6, "every one of them is reported as it is");
    assert!(summaries(&out).is_empty());
}
