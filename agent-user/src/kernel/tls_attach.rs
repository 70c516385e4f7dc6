//! Attaching the TLS plaintext programs to one inspected file, by file offset.
//!
//! The analysis (`tls_stack`) says where a binary's TLS functions are; this module puts
//! the uprobes there. A uprobe belongs to a file (an inode), so each file is attached
//! once, whatever the number of processes running it or paths reaching it, and the
//! attach covers the processes already running it.
//!
//! A uprobe at a wrong address corrupts the traced program, so nothing is attached
//! unless the file is still the one analysed ([`FileStamp`]: same device, inode, size
//! and mtime) and every offset lies inside an executable `PT_LOAD` segment of the file
//! as it is now (its program headers are read again).
//!
//! Which programs go on a hook point is a table by `(TlsFunction, HookSite)`
//! ([`programs_for`]): the OpenSSL/BoringSSL entry points take the OpenSSL programs
//! (same ABI for both) plus the shared return probe; Go's points slot in beside them.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use aya::Ebpf;
use aya::programs::{UProbe, uprobe::UProbeScope};
use object::read::elf::{FileHeader, ProgramHeader};

use super::loader::Links;
use agent_user::tls_stack::{HookPoint, HookSite, Inspection, TlsFunction, TlsStack};

/// Where a file is: the pair a uprobe is keyed by in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// A file's identity and version as `stat` gives it: when any of these moved since the
/// analysis, the offsets found may no longer be code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileStamp {
    pub id: FileId,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileStamp {
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        Ok(Self::from_metadata(&std::fs::metadata(path)?))
    }

    pub fn from_metadata(m: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            id: FileId {
                dev: m.dev(),
                ino: m.ino(),
            },
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }
}

/// The programs one hook point takes: the entry (or return-site) program and, for
/// functions whose result is read at return, the uretprobe at the same offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Programs {
    pub probe: &'static str,
    pub ret: Option<&'static str>,
}

/// The dispatch table from a hook point's kind to the kernel programs that serve it;
/// `None` for points no program serves here (they are counted as skipped).
pub fn programs_for(function: TlsFunction, site: HookSite, floor: bool) -> Option<Programs> {
    use TlsFunction::*;
    let ssl = |probe: &'static str| ssl_like(floor, probe, "custody_ssl_ret");
    match (function, site) {
        (SslWrite, HookSite::Entry) => ssl("custody_ssl_write"),
        (SslWriteEx, HookSite::Entry) => ssl("custody_ssl_write_ex"),
        (SslRead, HookSite::Entry) => ssl("custody_ssl_read"),
        (SslReadEx, HookSite::Entry) => ssl("custody_ssl_read_ex"),
        // SSL_get_fd / SSL_set_fd: found, not needed by the programs (the fd comes
        // from the socket syscalls).
        (SslGetFd | SslSetFd, _) => None,
        // Go crypto/tls: entry and return-site programs of their own, attached as a
        // whole by go_attach (see TlsAttacher::attach).
        (GoConnWrite | GoConnRead, _) => None,
        // rustls (ring's or aws-lc's AEAD): the record sealed is read at entry, the record
        // opened at return; the socket tracepoints that bind them to connections come
        // with them.
        (RustlsSeal, HookSite::Entry) => entry_only(floor, "custody_rustls_seal"),
        (RustlsOpen, HookSite::Entry) => {
            ssl_like(floor, "custody_rustls_open", "custody_rustls_open_ret")
        }
        (AwsLcSeal, HookSite::Entry) => entry_only(floor, "custody_awslc_seal"),
        (AwsLcOpen, HookSite::Entry) => {
            ssl_like(floor, "custody_awslc_open", "custody_awslc_open_ret")
        }
        (
            SslWrite | SslWriteEx | SslRead | SslReadEx | RustlsSeal | RustlsOpen | AwsLcSeal
            | AwsLcOpen,
            HookSite::Return,
        ) => None,
    }
}

/// An entry program alone (what it reads is there at entry), or the benchmark's empty one.
fn entry_only(floor: bool, probe: &'static str) -> Option<Programs> {
    Some(Programs {
        probe: if floor { "custody_floor_uprobe" } else { probe },
        ret: None,
    })
}

/// An entry program with a return probe, or the benchmark's empty pair.
fn ssl_like(floor: bool, probe: &'static str, ret: &'static str) -> Option<Programs> {
    Some(if floor {
        Programs {
            probe: "custody_floor_uprobe",
            ret: Some("custody_floor_uretprobe"),
        }
    } else {
        Programs {
            probe,
            ret: Some(ret),
        }
    })
}

/// The socket tracepoints rustls connections need (see `probes/rustls.rs`): attached with
/// the first rustls binary, so hosts without one never pay for them.
const RUSTLS_SOCKET_HOOKS: [(&str, &str); 2] = [
    ("custody_rustls_send", "sock_send_length"),
    ("custody_rustls_recv", "sock_recv_length"),
];

/// What one file got: for `custodyd status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttachedFile {
    pub path: String,
    /// Stacks whose hook points were attached ("openssl", "boringssl", …).
    pub stacks: Vec<String>,
    /// Uprobes attached (entry and return probes count one each).
    pub probes: usize,
    /// Hook points the analysis verified that no program here serves (`SSL_get_fd`, Go
    /// before its programs exist).
    pub skipped: usize,
}

/// The files attached so far, by [`FileId`]: an attach is made once per file.
#[derive(Default)]
pub struct TlsAttacher {
    floor: bool,
    attached: HashMap<FileId, AttachedFile>,
    /// Whether [`RUSTLS_SOCKET_HOOKS`] are attached.
    rustls_sockets: bool,
}

/// Why a file was not attached.
#[derive(Debug, thiserror::Error)]
pub enum RefusedAttach {
    #[error("{0} changed since it was analysed (device, inode, size or mtime differ)")]
    Changed(String),
    #[error("{path}: offset {offset:#x} of {function} is not in an executable segment")]
    NotCode {
        path: String,
        offset: u64,
        function: &'static str,
    },
    #[error("{0}")]
    Other(#[from] anyhow::Error),
}

impl TlsAttacher {
    /// `floor`: attach the benchmark's empty programs instead (same attach points).
    pub fn new(floor: bool) -> Self {
        TlsAttacher {
            floor,
            attached: HashMap::new(),
            rustls_sockets: false,
        }
    }

    /// Attaches the hook points of `inspection` to the file at `path`, which must still
    /// be the file `stamp` describes (taken when it was analysed). Returns what was
    /// attached, or the already attached record of that file. Links go to `links`.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        links: &mut Links,
        path: &Path,
        stamp: FileStamp,
        inspection: &Inspection,
    ) -> Result<AttachedFile, RefusedAttach> {
        if let Some(done) = self.attached.get(&stamp.id) {
            return Ok(done.clone());
        }
        let shown = path.display().to_string();
        let points: Vec<(&HookPoint, Programs)> = inspection
            .findings
            .iter()
            .flat_map(|f| f.hooks.iter())
            .filter_map(|h| Some((h, programs_for(h.function, h.site, self.floor)?)))
            .collect();
        // Go's entry and return sites have programs of their own, attached together
        // by go_attach (which re-decodes every RET site before attaching).
        let go = inspection
            .finding(TlsStack::GoCryptoTls)
            .filter(|f| f.covered());
        let go_points = go.map_or(0, |f| f.hooks.len());
        let skipped = inspection.hooks().count() - points.len() - go_points;
        if points.is_empty() && go.is_none() {
            return Ok(AttachedFile {
                path: shown,
                skipped,
                ..Default::default()
            });
        }
        verify_unchanged(
            path,
            stamp,
            points
                .iter()
                .map(|(h, _)| *h)
                .chain(go.iter().flat_map(|f| f.hooks.iter())),
        )?;
        let mut probes = 0;
        let rustls = points.iter().any(|(h, _)| h.function.is_rustls_aead());
        if rustls && !self.rustls_sockets {
            for (prog, event) in RUSTLS_SOCKET_HOOKS {
                let prog = if self.floor { "custody_floor_tp" } else { prog };
                super::loader::tracepoint(ebpf, links, prog, "sock", &[event])
                    .with_context(|| format!("attaching {prog} to sock/{event}"))?;
            }
            self.rustls_sockets = true;
        }
        if go.is_some() {
            let go_links = super::go_attach::attach_go(ebpf, path, inspection, self.floor)
                .with_context(|| format!("attaching Go crypto/tls in {shown}"))?;
            probes += go_links.len();
            links.extend(go_links);
        }
        for (h, progs) in &points {
            for name in std::iter::once(progs.probe).chain(progs.ret) {
                attach_one(ebpf, links, name, h.file_offset, path).with_context(|| {
                    format!(
                        "attaching {name} to {} at {:#x} in {shown}",
                        h.function.name(),
                        h.file_offset
                    )
                })?;
                probes += 1;
            }
        }
        let mut stacks: Vec<String> = inspection
            .findings
            .iter()
            .filter(|f| {
                f.hooks
                    .iter()
                    .any(|h| programs_for(h.function, h.site, self.floor).is_some())
            })
            .map(|f| f.stack.name().to_string())
            .collect();
        if go.is_some() {
            stacks.push(TlsStack::GoCryptoTls.name().to_string());
        }
        stacks.dedup();
        let done = AttachedFile {
            path: shown,
            stacks,
            probes,
            skipped,
        };
        self.attached.insert(stamp.id, done.clone());
        Ok(done)
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    links: &mut Links,
    prog: &str,
    offset: u64,
    path: &Path,
) -> Result<()> {
    let p: &mut UProbe = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing from the object"))?
        .try_into()?;
    if p.fd().is_err() {
        p.load()?;
    }
    let id = p.attach(offset, path, UProbeScope::AllProcesses)?;
    links.push(Box::new(p.take_link(id)?));
    Ok(())
}

/// The file at `path` is still the one analysed, and each hook point's offset lies in
/// an executable `PT_LOAD` segment's file bytes as its program headers say now.
pub fn verify_unchanged<'a>(
    path: &Path,
    stamp: FileStamp,
    points: impl Iterator<Item = &'a HookPoint>,
) -> Result<(), RefusedAttach> {
    let shown = || path.display().to_string();
    let file = File::open(path).with_context(|| format!("opening {}", shown()))?;
    let now = FileStamp::from_metadata(&file.metadata().context("stat")?);
    if now != stamp {
        return Err(RefusedAttach::Changed(shown()));
    }
    let code = executable_ranges(&file).with_context(|| format!("reading {}", shown()))?;
    for h in points {
        let inside = code
            .iter()
            .any(|&(start, end)| h.file_offset >= start && h.file_offset < end);
        if !inside {
            return Err(RefusedAttach::NotCode {
                path: shown(),
                offset: h.file_offset,
                function: h.function.name(),
            });
        }
    }
    Ok(())
}

/// The file ranges `[start, end)` of the executable `PT_LOAD` segments (only the ELF
/// header and program headers are read, not the whole file).
fn executable_ranges(file: &File) -> Result<Vec<(u64, u64)>> {
    let data = object::ReadCache::new(file);
    let len = file.metadata()?.len();
    let header = object::elf::FileHeader64::<object::Endianness>::parse(&data)
        .map_err(|e| anyhow::anyhow!("not a 64-bit ELF: {e}"))?;
    let endian = header
        .endian()
        .map_err(|e| anyhow::anyhow!("ELF endianness: {e}"))?;
    let phdrs = header
        .program_headers(endian, &data)
        .map_err(|e| anyhow::anyhow!("program headers: {e}"))?;
    let mut out = Vec::new();
    for ph in phdrs {
        if ph.p_type(endian) != object::elf::PT_LOAD || ph.p_flags(endian) & object::elf::PF_X == 0
        {
            continue;
        }
        let start = ph.p_offset(endian);
        let Some(end) = start.checked_add(ph.p_filesz(endian)) else {
            bail!("segment at {start:#x} overflows");
        };
        if end > len {
            bail!("segment at {start:#x} runs past the end of the file");
        }
        out.push((start, end));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_user::tls_stack::Evidence;

    fn point(offset: u64) -> HookPoint {
        HookPoint {
            function: TlsFunction::SslWrite,
            site: HookSite::Entry,
            file_offset: offset,
            vaddr: offset,
            evidence: Evidence::DynamicSymbol,
        }
    }

    /// An offset inside the code of this test binary itself (any executable segment).
    fn code_offset(path: &Path) -> u64 {
        let f = File::open(path).unwrap();
        let (start, end) = executable_ranges(&f).unwrap()[0];
        start + (end - start) / 2
    }

    #[test]
    fn a_file_changed_after_analysis_is_not_attached() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("bin");
        std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
        let stamp = FileStamp::of(&copy).unwrap();
        let off = code_offset(&copy);
        verify_unchanged(&copy, stamp, [point(off)].iter()).expect("unchanged file verifies");

        // Rewritten in place after the analysis (same inode, new bytes and mtime).
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut bytes = std::fs::read(&copy).unwrap();
        bytes.push(0);
        std::fs::write(&copy, &bytes).unwrap();
        let err = verify_unchanged(&copy, stamp, [point(off)].iter()).unwrap_err();
        assert!(matches!(err, RefusedAttach::Changed(_)), "{err}");

        // Replaced by another file at the same path (new inode).
        let other = dir.path().join("other");
        std::fs::write(&other, &bytes).unwrap();
        std::fs::rename(&other, &copy).unwrap();
        let err = verify_unchanged(&copy, stamp, [point(off)].iter()).unwrap_err();
        assert!(matches!(err, RefusedAttach::Changed(_)), "{err}");
    }

    #[test]
    fn an_offset_outside_code_is_not_attached() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("bin");
        std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
        let stamp = FileStamp::of(&copy).unwrap();
        let past_end = stamp.size + 16;
        let err = verify_unchanged(&copy, stamp, [point(past_end)].iter()).unwrap_err();
        assert!(matches!(err, RefusedAttach::NotCode { .. }), "{err}");
        // The ELF header is mapped (first PT_LOAD) but not executable in a PIE.
        let err = verify_unchanged(&copy, stamp, [point(0)].iter()).unwrap_err();
        assert!(matches!(err, RefusedAttach::NotCode { .. }), "{err}");
    }

    #[test]
    fn a_non_elf_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("text");
        std::fs::write(&f, b"#!/bin/sh\necho hi\n").unwrap();
        let stamp = FileStamp::of(&f).unwrap();
        assert!(verify_unchanged(&f, stamp, [point(4)].iter()).is_err());
    }

    #[test]
    fn openssl_entries_take_the_openssl_programs_and_go_waits_for_its_own() {
        let p = programs_for(TlsFunction::SslReadEx, HookSite::Entry, false).unwrap();
        assert_eq!(p.probe, "custody_ssl_read_ex");
        assert_eq!(p.ret, Some("custody_ssl_ret"));
        let f = programs_for(TlsFunction::SslWrite, HookSite::Entry, true).unwrap();
        assert_eq!(f.probe, "custody_floor_uprobe");
        assert!(programs_for(TlsFunction::GoConnWrite, HookSite::Return, false).is_none());
        assert!(programs_for(TlsFunction::SslGetFd, HookSite::Entry, false).is_none());
    }

    /// Both rustls providers' seal/open have programs and bring the socket tracepoints
    /// (an aws-lc-only binary, rustls's default provider, once got no socket binding).
    #[test]
    fn every_rustls_provider_is_served_and_bound_to_sockets() {
        use TlsFunction::*;
        for (f, probe, ret) in [
            (RustlsSeal, "custody_rustls_seal", None),
            (
                RustlsOpen,
                "custody_rustls_open",
                Some("custody_rustls_open_ret"),
            ),
            (AwsLcSeal, "custody_awslc_seal", None),
            (
                AwsLcOpen,
                "custody_awslc_open",
                Some("custody_awslc_open_ret"),
            ),
        ] {
            let p = programs_for(f, HookSite::Entry, false).unwrap();
            assert_eq!((p.probe, p.ret), (probe, ret), "{f:?}");
            assert!(f.is_rustls_aead(), "{f:?} brings the socket tracepoints");
        }
        assert!(!SslWrite.is_rustls_aead() && !GoConnRead.is_rustls_aead());
    }
}
