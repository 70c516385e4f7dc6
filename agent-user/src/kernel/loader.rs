//! Loading and attaching the kernel programs, with a per-feature report: a missing
//! attach point degrades that feature instead of stopping the sensor. The TLS uprobes
//! are not attached here: they go on each analysed binary by offset (`tls_attach`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use agent_user::tls_stack::Inspection;
use agent_user::tls_stack::cache::InspectionCache;

use agent_ebpf::{Config as ProbeConfig, Tracked};
use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};

use super::mounts::ensure_mounts;
use super::tls_attach::{AttachedFile, FileStamp, TlsAttacher};
use super::{Feature, btf, pins};

static PROBES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/custody-probes"));

pub struct Options {
    pub observe_all: bool,
    /// Attach empty programs at the same points (benchmark floor).
    pub floor: bool,
    /// Binaries analysed and attached at load, besides the system's libssl (always
    /// tried): see [`preanalysed_tls_binaries`].
    pub tls_binaries: Vec<PathBuf>,
    /// Only report processes in this network namespace (inode); 0 for all.
    pub netns: u32,
    /// bpffs directory for the enforcement maps and links (None: no enforcement).
    pub pin_dir: Option<PathBuf>,
}

/// Attachments owned by the daemon, released together at shutdown.
pub type Links = Vec<Box<dyn Send>>;

pub struct Loaded {
    pub ebpf: Ebpf,
    /// Every attachment: each detach waits for an RCU grace period in the kernel, so
    /// [`release`] drops them in parallel rather than one by one.
    pub links: Links,
    pub events: RingBuf<MapData>,
    pub tracked: BpfHashMap<MapData, u32, Tracked>,
    pub counters: PerCpuArray<MapData, u64>,
    pub features: Vec<Feature>,
    /// The TLS attachments made so far (one per file), for the daemon to go on with.
    pub tls: TlsAttacher,
    /// What the analysis of each binary attached at load said.
    pub tls_start: Vec<StartTls>,
}

/// One binary analysed and attached at load.
pub struct StartTls {
    pub path: PathBuf,
    pub stamp: Option<FileStamp>,
    pub inspection: Result<Arc<Inspection>, String>,
    pub attached: Option<AttachedFile>,
    pub analysis: std::time::Duration,
}

/// Whether this binary carries the kernel programs (not built with AYA_BUILD_SKIP=1).
pub fn has_programs() -> bool {
    !PROBES.is_empty()
}

/// Syscall tracepoints: (program, [tracepoint names under `syscalls/`]).
const SYSCALL_HOOKS: &[(&str, &str, &[&str])] = &[
    ("files", "custody_openat_enter", &["sys_enter_openat"]),
    ("files", "custody_openat2_enter", &["sys_enter_openat2"]),
    ("files", "custody_unlink_enter", &["sys_enter_unlink"]),
    ("files", "custody_unlinkat_enter", &["sys_enter_unlinkat"]),
    ("files", "custody_rename_enter", &["sys_enter_rename"]),
    ("files", "custody_renameat_enter", &["sys_enter_renameat"]),
    ("files", "custody_renameat2_enter", &["sys_enter_renameat2"]),
    (
        "files",
        "custody_file_exit",
        &[
            "sys_exit_openat",
            "sys_exit_openat2",
            "sys_exit_unlink",
            "sys_exit_unlinkat",
            "sys_exit_rename",
            "sys_exit_renameat",
            "sys_exit_renameat2",
        ],
    ),
    ("network", "custody_connect_enter", &["sys_enter_connect"]),
    ("network", "custody_bind_enter", &["sys_enter_bind"]),
    ("network", "custody_listen_enter", &["sys_enter_listen"]),
    (
        "network",
        "custody_sock_exit",
        &["sys_exit_connect", "sys_exit_bind", "sys_exit_listen"],
    ),
    (
        "network",
        "custody_accept_exit",
        &["sys_exit_accept", "sys_exit_accept4"],
    ),
    ("dns", "custody_sendto_enter", &["sys_enter_sendto"]),
    ("dns", "custody_sendmsg_enter", &["sys_enter_sendmsg"]),
    ("dns", "custody_sendmmsg_enter", &["sys_enter_sendmmsg"]),
    ("stdio_jsonrpc", "custody_write_enter", &["sys_enter_write"]),
    ("stdio_jsonrpc", "custody_write_exit", &["sys_exit_write"]),
    // write, sendto and sendmsg hooks above also take the first write after a
    // connect; writev is the remaining way a TLS library sends one (libuv).
    ("tls_hello", "custody_writev_enter", &["sys_enter_writev"]),
];

/// Offset of `field` in the record of tracepoint `sched/event`, from its tracefs format
/// file; `None` when this kernel's record has no such field.
fn sched_field_offset(event: &str, field: &str) -> Result<Option<u64>> {
    let needle = format!(" {field}");
    for base in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        let p = format!("{base}/events/sched/{event}/format");
        if let Ok(s) = std::fs::read_to_string(&p) {
            for line in s.lines() {
                if line
                    .split(';')
                    .next()
                    .is_some_and(|decl| decl.ends_with(&needle))
                {
                    let off = line
                        .split(';')
                        .find_map(|f| f.trim().strip_prefix("offset:"))
                        .and_then(|v| v.trim().parse().ok())
                        .with_context(|| format!("{p}: cannot parse {line:?}"))?;
                    return Ok(Some(off));
                }
            }
            return Ok(None);
        }
    }
    bail!(
        "tracefs not mounted (neither /sys/kernel/tracing nor /sys/kernel/debug/tracing): run `mount -t tracefs tracefs /sys/kernel/tracing`"
    )
}

/// Offset of the `filename` field in the sched_process_exec record.
fn exec_filename_offset() -> Result<u64> {
    sched_field_offset("sched_process_exec", "filename")?
        .context("sched_process_exec record has no filename field")
}

/// Offset of `group_dead` in the sched_process_exit record (kernel 6.16+), 0 when
/// absent: the exit program then asks `task->signal->live` whether the group is dead.
fn exit_group_dead_offset() -> Result<u64> {
    Ok(sched_field_offset("sched_process_exit", "group_dead")?.unwrap_or(0))
}

/// The system's libssl.so.3, by the usual library directories.
pub fn find_libssl() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/lib/x86_64-linux-gnu/libssl.so.3",
        "/usr/lib/aarch64-linux-gnu/libssl.so.3",
        "/usr/lib64/libssl.so.3",
        "/usr/lib/libssl.so.3",
        "/lib64/libssl.so.3",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn feature(features: &mut Vec<Feature>, name: &str, result: Result<()>) {
    match result {
        Ok(()) => {
            if !features.iter().any(|f| f.name == name) {
                features.push(Feature {
                    name: name.into(),
                    active: true,
                    detail: String::new(),
                });
            }
        }
        Err(e) => {
            let detail = format!("{e:#}");
            match features.iter_mut().find(|f| f.name == name) {
                Some(f) => {
                    f.active = false;
                    if !f.detail.is_empty() {
                        f.detail.push_str("; ");
                    }
                    f.detail.push_str(&detail);
                }
                None => features.push(Feature {
                    name: name.into(),
                    active: false,
                    detail,
                }),
            }
        }
    }
}

/// Loads `prog` (once) and attaches it to `category/name` for each name.
pub(super) fn tracepoint(
    ebpf: &mut Ebpf,
    links: &mut Links,
    prog: &str,
    category: &str,
    names: &[&str],
) -> Result<()> {
    let p: &mut TracePoint = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing from the object"))?
        .try_into()?;
    if p.fd().is_err() {
        p.load().with_context(|| format!("loading {prog}"))?;
    }
    for n in names {
        let id = p
            .attach(category, n)
            .with_context(|| format!("attaching {prog} to {category}/{n}"))?;
        links.push(Box::new(p.take_link(id)?));
    }
    Ok(())
}

/// Analyses (through `cache`) and attaches one binary at load; the feature
/// `tls:<path>` says whether its TLS is hooked.
fn start_tls(
    ebpf: &mut Ebpf,
    links: &mut Links,
    tls: &mut TlsAttacher,
    cache: &InspectionCache,
    path: &Path,
) -> (StartTls, Result<()>) {
    let t = Instant::now();
    let stamp = FileStamp::of(path).ok();
    let inspection = cache.inspect(path).map_err(|e| e.to_string());
    let mut out = StartTls {
        path: path.to_path_buf(),
        stamp,
        inspection,
        attached: None,
        analysis: t.elapsed(),
    };
    let result = (|| -> Result<()> {
        let i = out
            .inspection
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let stamp = stamp.context("stat failed")?;
        let a = tls.attach(ebpf, links, path, stamp, i)?;
        let probes = a.probes;
        out.attached = Some(a);
        if probes == 0 {
            let stacks: Vec<&str> = i.findings.iter().map(|f| f.stack.name()).collect();
            bail!("no TLS hook point found (stacks {stacks:?})");
        }
        Ok(())
    })();
    (out, result)
}

/// [`load_with`] and a memory-only analysis cache (the kernel tests).
#[cfg(test)]
pub fn load(opts: &Options) -> Result<Loaded> {
    load_with(opts, &InspectionCache::new(None))
}

/// [`load`], analysing the TLS binaries through the daemon's `cache`.
pub fn load_with(opts: &Options, cache: &InspectionCache) -> Result<Loaded> {
    if !has_programs() {
        bail!(
            "this custodyd was built with AYA_BUILD_SKIP=1 and has no kernel programs; rebuild without it"
        );
    }
    ensure_mounts();
    let btf = btf::Btf::from_sys()?;
    let offsets = btf::offsets(&btf, exec_filename_offset()?, exit_group_dead_offset()?)?;
    let cfg = ProbeConfig {
        observe_all: u32::from(opts.observe_all),
        self_tgid: std::process::id(),
        netns: opts.netns,
        _pad: 0,
    };
    let mut loader = EbpfLoader::new();
    // The enforcement maps are declared pinned. Without a pin directory (floor mode,
    // tests) they go to a private directory removed right after load, so nothing is
    // shared with (or left for) other runs; the maps live on through their fds.
    let transient = PathBuf::from(format!(
        "/sys/fs/bpf/custody-transient-{}",
        std::process::id()
    ));
    match &opts.pin_dir {
        Some(dir) => {
            let dir = pins::prepare_pin_dir(dir)?;
            loader.default_map_pin_directory(dir);
        }
        None => {
            std::fs::create_dir_all(&transient)
                .with_context(|| format!("creating {} (is bpffs mounted?)", transient.display()))?;
            loader.default_map_pin_directory(&transient);
        }
    }
    let loaded = loader
        .override_global("OFFSETS", &offsets, true)
        .override_global("CONFIG", &cfg, true)
        .load(PROBES)
        .map_err(|e| {
            let hint = if unsafe { libc::geteuid() } != 0 {
                " (custodyd needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_RESOURCE)"
            } else {
                ""
            };
            anyhow::anyhow!("loading the kernel programs failed: {e}{hint}")
        });
    if opts.pin_dir.is_none() {
        let _ = std::fs::remove_dir_all(&transient);
    }
    let mut ebpf = loaded?;
    let kernel_btf = aya::Btf::from_sys_fs().context("reading kernel BTF")?;
    let mut features = Vec::new();
    let mut links: Links = Vec::new();

    if opts.floor {
        {
            let (cat, names) = ("sched", &["sched_process_exec", "sched_process_exit"][..]);
            feature(
                &mut features,
                "process",
                tracepoint(&mut ebpf, &mut links, "custody_floor_tp", cat, names),
            );
        }
        for (feat, _, names) in SYSCALL_HOOKS {
            feature(
                &mut features,
                feat,
                tracepoint(&mut ebpf, &mut links, "custody_floor_tp", "syscalls", names),
            );
        }
    } else {
        feature(
            &mut features,
            "process",
            tracepoint(
                &mut ebpf,
                &mut links,
                "custody_exec",
                "sched",
                &["sched_process_exec"],
            ),
        );
        feature(
            &mut features,
            "process",
            tracepoint(
                &mut ebpf,
                &mut links,
                "custody_exit",
                "sched",
                &["sched_process_exit"],
            ),
        );
        for (feat, prog, names) in SYSCALL_HOOKS {
            feature(
                &mut features,
                feat,
                tracepoint(&mut ebpf, &mut links, prog, "syscalls", names),
            );
        }
    }
    let fork_prog = if opts.floor {
        "custody_floor_fork"
    } else {
        "custody_fork"
    };
    let fork = (|| -> Result<()> {
        let p: &mut BtfTracePoint = ebpf
            .program_mut(fork_prog)
            .context("fork program missing")?
            .try_into()?;
        p.load("sched_process_fork", &kernel_btf)?;
        let id = p.attach()?;
        links.push(Box::new(p.take_link(id)?));
        Ok(())
    })();
    feature(&mut features, "process_fork", fork);
    if !opts.floor {
        // Byte counts of tracked TLS connections at TCP_CLOSE (not a syscall hook:
        // it runs on TCP state changes only, so it has no floor counterpart).
        let close = (|| -> Result<()> {
            let p: &mut BtfTracePoint = ebpf
                .program_mut("custody_sock_state")
                .context("sock state program missing")?
                .try_into()?;
            p.load("inet_sock_set_state", &kernel_btf)?;
            let id = p.attach()?;
            links.push(Box::new(p.take_link(id)?));
            Ok(())
        })();
        feature(&mut features, "tls_connection_close", close);
    }

    let mut tls = TlsAttacher::new(opts.floor);
    let mut tls_start = Vec::new();
    let mut targets: Vec<PathBuf> = find_libssl().into_iter().collect();
    if targets.is_empty() {
        feature(
            &mut features,
            "tls_libssl",
            Err(anyhow::anyhow!("libssl.so.3 not found")),
        );
    }
    targets.extend(opts.tls_binaries.iter().cloned());
    for t in targets {
        let (done, result) = start_tls(&mut ebpf, &mut links, &mut tls, cache, &t);
        feature(&mut features, &format!("tls:{}", t.display()), result);
        tls_start.push(done);
    }

    let events = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
    let tracked = BpfHashMap::try_from(ebpf.take_map("TRACKED").context("TRACKED map missing")?)?;
    let counters =
        PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map missing")?)?;
    Ok(Loaded {
        ebpf,
        links,
        events,
        tracked,
        counters,
        features,
        tls,
        tls_start,
    })
}

/// Binaries analysed (and attached) at start, before any process runs them, so the
/// usual ones need no analysis race: the usual node paths (libssl is always tried).
/// Any other binary (a node under nvm, a vendored libssl) is found by the analysis of
/// what tracked processes exec and map.
pub fn preanalysed_tls_binaries() -> Vec<PathBuf> {
    ["/usr/bin/node", "/usr/local/bin/node"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect()
}

/// Detach everything at once: the kernel waits for a grace period per detach, and
/// concurrent waits share grace periods (seconds sequentially, a fraction in parallel).
pub fn release(links: Links) {
    std::thread::scope(|s| {
        for l in links {
            s.spawn(move || drop(l));
        }
    });
}
