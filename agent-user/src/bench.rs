//! `custodyd bench-pipeline`: the daemon's user-space cost per event, on one core.
//!
//! Replays synthetic kernel records of a tracked process (file opens with distinct
//! paths, the most common record) through decode → pipeline → JSON serialisation into
//! a null sink, and reports events per second. Kernel-side cost is measured separately
//! by the syscall benchmark (`cargo xtask bench sensor`).

use std::io::Write;
use std::time::Instant;

use agent_ebpf::{EventHeader, FileEvent, PATH_MAX, Tracked, flag, kind};
use agent_user::credential::FleetKey;
use anyhow::Result;

use crate::identity::Identity;
use crate::pipeline::{Pipeline, Tracker};

struct NoTrack;
impl Tracker for NoTrack {
    fn track(&mut self, _: u32, _: Tracked) {}
}

fn record(tgid: u32, start_ns: u64, ppid: u32, i: u64) -> Vec<u8> {
    // SAFETY: all-zero is a valid FileEvent (integers and byte arrays).
    let mut e: FileEvent = unsafe { std::mem::zeroed() };
    e.hdr = EventHeader {
        kind: kind::FILE_OPEN,
        flags: flag::TRACKED,
        ktime_ns: 1_000_000 + i,
        tgid,
        pid: tgid,
        ppid,
        uid: 0,
        gid: 0,
        auid: u32::MAX,
        netns: 4026531840,
        agent: 0,
        cgroup_id: 1,
        start_boottime: start_ns,
        parent_start_boottime: 0,
        comm: *b"bench\0\0\0\0\0\0\0\0\0\0\0",
    };
    let path = format!("/srv/data/finance/ledger-{}.csv", i % 1000);
    e.path[..path.len()].copy_from_slice(path.as_bytes());
    e.path_len = path.len() as u32;
    e.ret = 3;
    e.dirfd = -100;
    debug_assert!(path.len() < PATH_MAX);
    // SAFETY: viewing a repr(C) struct as bytes.
    unsafe {
        std::slice::from_raw_parts(
            (&e as *const FileEvent).cast::<u8>(),
            size_of::<FileEvent>(),
        )
    }
    .to_vec()
}

pub fn pipeline(n: u64) -> Result<()> {
    let mut pipe = Pipeline::new(
        "bench-host".into(),
        Identity::new(Vec::new()),
        FleetKey::from_bytes([7; 32]),
        false,
    );
    let me = std::process::id();
    let p = pipe
        .table
        .scan_one(me)
        .ok_or_else(|| anyhow::anyhow!("cannot read /proc/self"))?;
    let (ticks, ppid) = (p.start_ticks, p.ppid);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let start_ns = ticks * (1_000_000_000 / hz);
    let records: Vec<Vec<u8>> = (0..1000).map(|i| record(me, start_ns, ppid, i)).collect();
    let mut sink = std::io::BufWriter::with_capacity(1 << 16, std::io::sink());
    let mut out = Vec::with_capacity(16);
    let mut bytes = 0u64;
    let t = Instant::now();
    for i in 0..n {
        let raw = crate::kernel::decode::decode(&records[(i % 1000) as usize])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        pipe.handle(raw, &mut NoTrack, &mut out);
        for o in out.drain(..) {
            // Synthetic exec records carry no credentials: every output is an event.
            let crate::pipeline::Output::Event(ev) = o else {
                continue;
            };
            let line = serde_json::to_vec(&ev)?;
            bytes += line.len() as u64 + 1;
            sink.write_all(&line)?;
            sink.write_all(b"\n")?;
        }
    }
    sink.flush()?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "events": n,
            "seconds": secs,
            "events_per_sec": n as f64 / secs,
            "json_bytes_per_event": bytes / n.max(1),
        })
    );
    Ok(())
}
