//! Go `crypto/tls` in Go binaries, stripped or not: Go keeps its function table
//! (`.gopclntab`) in every binary because the runtime needs it for stack walks and panics,
//! so `strip` and `-ldflags=-s -w` leave the names and entry points of
//! `crypto/tls.(*Conn).Write` / `(*Conn).Read` readable.
//!
//! Hook points are the entry (arguments in ABIInternal registers: receiver RAX, buffer
//! pointer RBX, length RCX; the goroutine's `g` in R14) and every `RET` of each function
//! (return value `n` in RAX, R14 still the same `g`, so entry and return pair up by `g`).
//! A uretprobe is never used: it overwrites the return address on the goroutine stack, and
//! Go moves stacks, so the kernel's saved copy goes stale and the program crashes.
//!
//! The table is found by section name or, when section headers are gone, by its magic in
//! the data segments; formats of Go 1.18–1.19 (`0xfffffff0`) and 1.20+ (`0xfffffff1`) are
//! read, older ones are reported as unsupported. The Go version comes from the buildinfo
//! blob (`\xff Go buildinf:`).

use super::elf::Image;
use super::{Evidence, Finding, HookPoint, HookSite, TlsFunction, TlsStack, x86};

const MAGIC_118: u32 = 0xffff_fff0;
const MAGIC_120: u32 = 0xffff_fff1;
/// Go 1.2, 1.16: recognised so the report can name them.
const MAGIC_OLD: [u32; 2] = [0xffff_fffb, 0xffff_fffa];
const HEADER_LEN: usize = 8 + 8 * 8;
/// More functions than any real binary holds; a bigger count means a corrupt header.
const MAX_FUNCS: u64 = 10_000_000;
const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";

const TARGETS: [(&str, TlsFunction); 2] = [
    ("crypto/tls.(*Conn).Write", TlsFunction::GoConnWrite),
    ("crypto/tls.(*Conn).Read", TlsFunction::GoConnRead),
];

/// Why a Go function table could not be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PclntabError {
    #[error("pclntab truncated: {0}")]
    Truncated(&'static str),
    #[error("pclntab inconsistent: {0}")]
    Inconsistent(String),
    #[error("pclntab format {0:#x} (Go before 1.18) is not supported")]
    Unsupported(u32),
}

/// A function found in the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoFunc {
    pub name: String,
    pub entry: u64,
    /// Bytes up to the next function's entry (includes trailing `int3` padding).
    pub size: u64,
}

/// A parsed `.gopclntab` (only what the TLS analysis needs).
pub struct Pclntab<'a> {
    data: &'a [u8],
    nfunc: usize,
    text_start: u64,
    funcname_off: usize,
    functab_off: usize,
}

fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(d: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

impl<'a> Pclntab<'a> {
    /// Parses the header at the start of `data`. `text_relocated` is used when the header's
    /// text start is zero: in a PIE the loader fills it in, from a relocation's addend.
    pub fn parse(data: &'a [u8], text_relocated: Option<u64>) -> Result<Self, PclntabError> {
        let magic = u32_at(data, 0).ok_or(PclntabError::Truncated("header"))?;
        if MAGIC_OLD.contains(&magic) {
            return Err(PclntabError::Unsupported(magic));
        }
        if magic != MAGIC_118 && magic != MAGIC_120 {
            return Err(PclntabError::Inconsistent(format!("magic {magic:#x}")));
        }
        if data.len() < HEADER_LEN {
            return Err(PclntabError::Truncated("header"));
        }
        if data[4] != 0 || data[5] != 0 || data[6] != 1 || data[7] != 8 {
            return Err(PclntabError::Inconsistent(format!(
                "header pad/quantum/pointer size {:?} (want 0,0,1,8: amd64)",
                &data[4..8]
            )));
        }
        let word = |i: usize| u64_at(data, 8 + 8 * i).unwrap_or(u64::MAX);
        let nfunc = word(0);
        let mut text_start = word(2);
        let (funcname_off, functab_off) = (word(3), word(7));
        if nfunc == 0 || nfunc > MAX_FUNCS {
            return Err(PclntabError::Inconsistent(format!("{nfunc} functions")));
        }
        if text_start == 0 {
            text_start = text_relocated.ok_or_else(|| {
                PclntabError::Inconsistent("text start 0 and no relocation fills it".into())
            })?;
        }
        let in_data = |off: u64| off < data.len() as u64;
        if !in_data(funcname_off) || !in_data(functab_off) {
            return Err(PclntabError::Truncated(
                "name or function table offset past the end",
            ));
        }
        let nfunc = nfunc as usize;
        let functab_off = functab_off as usize;
        // nfunc + 1 (entry, funcoff) pairs of u32; the last entry holds the end of text.
        let table_end = functab_off
            .checked_add((nfunc + 1) * 8)
            .ok_or(PclntabError::Truncated("function table"))?;
        if table_end > data.len() {
            return Err(PclntabError::Truncated("function table"));
        }
        Ok(Pclntab {
            data,
            nfunc,
            text_start,
            funcname_off: funcname_off as usize,
            functab_off,
        })
    }

    pub fn len(&self) -> usize {
        self.nfunc
    }

    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    fn entry_off(&self, i: usize) -> Option<u32> {
        u32_at(self.data, self.functab_off + 8 * i)
    }

    /// The `i`th function, checked: its `_func` record must repeat the table's entry offset
    /// and its name must be a NUL-terminated string inside the name table.
    pub fn func(&self, i: usize) -> Result<GoFunc, PclntabError> {
        let bad = |what: String| PclntabError::Inconsistent(what);
        let entry_off = self
            .entry_off(i)
            .ok_or(PclntabError::Truncated("function table"))?;
        let next_off = self
            .entry_off(i + 1)
            .ok_or(PclntabError::Truncated("function table"))?;
        if next_off <= entry_off {
            return Err(bad(format!("function {i}: entries not increasing")));
        }
        let func_off = u32_at(self.data, self.functab_off + 8 * i + 4)
            .ok_or(PclntabError::Truncated("function table"))? as usize;
        let rec = self
            .functab_off
            .checked_add(func_off)
            .ok_or(PclntabError::Truncated("_func"))?;
        let rec_entry = u32_at(self.data, rec).ok_or(PclntabError::Truncated("_func"))?;
        if rec_entry != entry_off {
            return Err(bad(format!(
                "function {i}: _func entry {rec_entry:#x} != {entry_off:#x}"
            )));
        }
        let name_off = u32_at(self.data, rec + 4).ok_or(PclntabError::Truncated("_func"))?;
        let name_start = self.funcname_off.saturating_add(name_off as usize);
        let rest = self
            .data
            .get(name_start..)
            .ok_or(PclntabError::Truncated("name table"))?;
        let len = rest.iter().take(4096).position(|&b| b == 0);
        let name = len
            .and_then(|n| std::str::from_utf8(&rest[..n]).ok())
            .ok_or_else(|| bad(format!("function {i}: name not a terminated UTF-8 string")))?;
        Ok(GoFunc {
            name: name.to_string(),
            entry: self.text_start + entry_off as u64,
            size: (next_off - entry_off) as u64,
        })
    }

    /// Looks functions up by exact name. Names are not sorted, so this is one pass over the
    /// table; malformed records are skipped and counted in the returned error list.
    pub fn find(&self, names: &[&str]) -> (Vec<Option<GoFunc>>, Vec<PclntabError>) {
        let mut found = vec![None; names.len()];
        let mut errors = Vec::new();
        for i in 0..self.nfunc {
            match self.func(i) {
                Ok(f) => {
                    if let Some(k) = names.iter().position(|n| *n == f.name) {
                        found[k] = Some(f);
                    }
                }
                Err(e) if errors.len() < 8 => errors.push(e),
                Err(_) => {}
            }
        }
        (found, errors)
    }
}

/// The pclntab of an image: its section (by name), else the first block with a valid
/// header among the non-executable segments' bytes (section headers stripped).
fn locate<'a>(image: &Image<'a>) -> Option<Result<Pclntab<'a>, PclntabError>> {
    // The header's text-start word sits at offset 24.
    let text_relocated = |table_vaddr: u64| image.relative_addend(table_vaddr + 24);
    // A PIE's table is in `.data.rel.ro.gopclntab` (it holds a relocated word).
    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        if let Some(s) = image.section(name) {
            return Some(Pclntab::parse(
                image.section_bytes(&s),
                text_relocated(s.vaddr),
            ));
        }
    }
    let mut first_err = None;
    for seg in image.segments.iter().filter(|s| !s.executable) {
        let start = seg.file_offset as usize;
        let bytes = &image.bytes[start..start + seg.file_size as usize];
        for magic in [MAGIC_120, MAGIC_118] {
            let mut pattern = magic.to_le_bytes().to_vec();
            pattern.extend_from_slice(&[0, 0, 1, 8]);
            for at in memchr::memmem::find_iter(bytes, &pattern) {
                let relocated = text_relocated(seg.vaddr + at as u64);
                match Pclntab::parse(&bytes[at..], relocated) {
                    Ok(t) if t.func(0).is_ok() && t.func(t.len() - 1).is_ok() => {
                        return Some(Ok(t));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
    }
    first_err.map(Err)
}

/// The Go version recorded by the linker (`go1.19.8`), from the buildinfo blob.
pub(crate) fn go_version(image: &Image) -> Option<String> {
    let blob = match image.section(".go.buildinfo") {
        Some(s) => image.section_bytes(&s),
        None => &image.bytes[memchr::memmem::find(image.bytes, BUILDINFO_MAGIC)?..],
    };
    if !blob.starts_with(BUILDINFO_MAGIC) || blob.len() < 32 {
        return None;
    }
    let (ptr_size, flags) = (blob[14] as usize, blob[15]);
    let version = if flags & 2 != 0 {
        // Go 1.18+: length-prefixed strings inline after the 32-byte header.
        let (len, n) = uvarint(&blob[32..])?;
        let start = 32 + n;
        blob.get(start..start.checked_add(usize::try_from(len).ok()?)?)?
            .to_vec()
    } else {
        // Older: a pointer to a Go string header (pointer, length).
        if ptr_size != 8 || flags & 1 != 0 {
            return None;
        }
        let hdr = image.bytes_at(u64_at(blob, 16)?, 16, false)?;
        let (ptr, len) = (u64_at(hdr, 0)?, u64_at(hdr, 8)?);
        if len > 64 {
            return None;
        }
        image.bytes_at(ptr, len, false)?.to_vec()
    };
    let v = String::from_utf8(version).ok()?;
    (v.starts_with("go") && v.len() <= 64).then_some(v)
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The Go TLS finding of an image: `Ok(None)` when it is not a Go binary (no pclntab) or
/// does not link `crypto/tls`; `Err` when a pclntab is there but unusable.
pub(crate) fn find(image: &Image) -> Result<Option<Finding>, PclntabError> {
    let Some(table) = locate(image) else {
        return Ok(None);
    };
    let version = go_version(image);
    let mut finding = Finding::new(TlsStack::GoCryptoTls);
    finding.versions.extend(version);
    finding
        .tried
        .push("Go pclntab: crypto/tls.(*Conn).Write/Read".into());
    let table = match table {
        Ok(t) => t,
        Err(e) => {
            // A Go binary whose table we cannot read: uncovered if it does TLS; say so only
            // when crypto/tls is visibly linked in.
            if memchr::memmem::find(image.bytes, b"crypto/tls.(*Conn)").is_some() {
                finding.tried.push(format!("pclntab unusable: {e}"));
                return Ok(Some(finding));
            }
            return Err(e);
        }
    };
    let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    let (found, errors) = table.find(&names);
    if found.iter().all(Option::is_none) {
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
        return Ok(None); // a Go program without crypto/tls
    }
    for ((name, function), func) in TARGETS.iter().zip(found) {
        let Some(func) = func else {
            finding.tried.push(format!("{name}: not in pclntab"));
            continue;
        };
        match hook_points(image, &func, *function) {
            Ok(points) => finding.hooks.extend(points),
            Err(why) => finding
                .tried
                .push(format!("{name} at {:#x} rejected: {why}", func.entry)),
        }
    }
    Ok(Some(finding))
}

/// Entry plus every `RET` of one Go function, all verified by decoding the whole body.
fn hook_points(image: &Image, f: &GoFunc, function: TlsFunction) -> Result<Vec<HookPoint>, String> {
    let code = image
        .bytes_at(f.entry, f.size, true)
        .ok_or("body not inside an executable segment's file bytes")?;
    if !x86::plausible_entry(code, f.entry) {
        return Err("entry does not decode as a function start".into());
    }
    let rets = x86::return_sites(code, f.entry)?;
    if rets.is_empty() {
        return Err("no RET instruction in the body".into());
    }
    let point = |vaddr: u64, site| HookPoint {
        function,
        site,
        // In range: `bytes_at` checked the whole body.
        file_offset: image.offset_of(vaddr, 1, true).unwrap_or_default(),
        vaddr,
        evidence: Evidence::GoPclntab,
    };
    let mut points = vec![point(f.entry, HookSite::Entry)];
    points.extend(rets.into_iter().map(|r| point(r, HookSite::Return)));
    Ok(points)
}
