//! BoringSSL linked into a binary without symbols, as in Bun's single-file executables
//! (Claude Code): `SSL_write` / `SSL_read` found by the library's own code and data.
//!
//! Every BoringSSL error is raised by `OPENSSL_PUT_ERROR(SSL, reason)`, which compiles to a
//! call of `ERR_put_error` with the library number (`ERR_LIB_SSL` = 16), the reason code,
//! the source file's name string and the line as immediates. So:
//! 1. find the name string of `ssl/ssl_lib.cc` (or `.c` in old releases);
//! 2. find every instruction in executable code that loads its address (an absolute
//!    `mov r32, imm32` in a non-PIE, a RIP-relative `lea` in a PIE), and decode the few
//!    instructions after it, up to the call, for the other immediates: one *error site*
//!    (reason, line) per load;
//! 3. place each site in its function using the unwind index (`.eh_frame_hdr`);
//! 4. a function is `SSL_write` when its sites, in line order, are exactly the reasons of
//!    `SSL_write`'s body (`ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED` for QUIC,
//!    `SSL_R_UNINITIALIZED`, `SSL_R_SSL_HANDSHAKE_FAILURE`, `SSL_R_BAD_LENGTH`), and
//!    `SSL_read` when it is `SSL_peek`'s QUIC check followed by `ssl_read_impl`'s
//!    (`SSL_R_UNINITIALIZED`, `SSL_R_SSL_HANDSHAKE_FAILURE`), inlined or called directly.
//!
//! Line numbers change with every release, reason codes and the shape of these functions
//! have not in years, which is why the match is on reasons in line order. A match must be
//! unique and its entry must decode as a function start; otherwise nothing is hooked and
//! the inspection says what was found.
//!
//! An `ssl_lib.c` name string without BoringSSL's marker (`openssl_is_boringssl`, a
//! `/boringssl/` path) is a stripped OpenSSL: reported as such, with its version, unhooked.

use super::elf::Image;
use super::unwind::FunctionStarts;
use super::versions;
use super::{Evidence, Finding, HookPoint, HookSite, TlsFunction, TlsStack};
use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, OpKind, Register};
use std::collections::BTreeMap;

const ERR_LIB_SSL: u32 = 16;
const ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED: u32 = 66;
const SSL_R_BAD_LENGTH: u32 = 111;
const SSL_R_SSL_HANDSHAKE_FAILURE: u32 = 215;
const SSL_R_UNINITIALIZED: u32 = 226;

/// `SSL_write`: QUIC check, uninitialised, handshake failure, negative length (current);
/// the same without the QUIC check (BoringSSL before QUIC support).
const WRITE_SHAPES: [&[u32]; 2] = [
    &[
        ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED,
        SSL_R_UNINITIALIZED,
        SSL_R_SSL_HANDSHAKE_FAILURE,
        SSL_R_BAD_LENGTH,
    ],
    &[
        SSL_R_UNINITIALIZED,
        SSL_R_SSL_HANDSHAKE_FAILURE,
        SSL_R_BAD_LENGTH,
    ],
];
/// `ssl_read_impl`: uninitialised, handshake failure.
const READ_IMPL_SHAPE: &[u32] = &[SSL_R_UNINITIALIZED, SSL_R_SSL_HANDSHAKE_FAILURE];
/// `SSL_read` with `SSL_peek` and `ssl_read_impl` inlined.
const READ_INLINED_SHAPE: &[u32] = &[
    ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED,
    SSL_R_UNINITIALIZED,
    SSL_R_SSL_HANDSHAKE_FAILURE,
];
/// `SSL_read` (with `SSL_peek` inlined) calling `ssl_read_impl`.
const READ_OUTER_SHAPE: &[u32] = &[ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED];

/// How many instructions after the file-name load may set up the rest of the call.
const SITE_WINDOW: usize = 8;

/// One `OPENSSL_PUT_ERROR(SSL, reason)` in the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorSite {
    pub at: u64,
    pub reason: u32,
    pub line: u32,
}

pub(crate) fn find(image: &Image, anomalies: &mut Vec<String>) -> Option<Finding> {
    let marker = versions::contains(image.bytes, b"openssl_is_boringssl")
        || versions::contains(image.bytes, b"/boringssl/");
    let file_strings = file_name_strings(image);
    if !marker && file_strings.is_empty() {
        return None;
    }
    if !marker {
        // OpenSSL's own `ssl/ssl_lib.c` without BoringSSL's marker: a stripped OpenSSL
        // (Codex vendors one). Its error calls (`ERR_set_debug(file, line, func)`, library
        // 20) have another shape; finding its functions without symbols is not done yet.
        let mut finding = Finding::new(TlsStack::OpenSsl);
        finding.versions = versions::openssl(image.bytes);
        finding.tried.push("no SSL_* symbols".into());
        finding.tried.push(
            "stripped OpenSSL: locating SSL_write/SSL_read without symbols is not implemented"
                .into(),
        );
        return Some(finding);
    }
    let mut finding = Finding::new(TlsStack::BoringSsl);
    finding.versions = versions::bun(image.bytes);
    finding.tried.push("no SSL_* symbols".into());
    if file_strings.is_empty() {
        finding
            .tried
            .push("no ssl_lib.cc name string to find error sites by".into());
        return Some(finding);
    }
    let starts = match FunctionStarts::from_image(image) {
        Ok(s) => s,
        Err(e) => {
            finding.tried.push(format!(
                "unwind index unusable ({e}): function starts unknown"
            ));
            return Some(finding);
        }
    };
    let sites: Vec<ErrorSite> = file_strings
        .iter()
        .flat_map(|&s| error_sites(image, s))
        .collect();
    finding.tried.push(format!(
        "ssl_lib error sites: {} in {} unwind-table functions",
        sites.len(),
        starts.len()
    ));
    let by_function = group_by_function(&sites, &starts);
    let shape = |want: &[u32]| -> Vec<u64> {
        by_function
            .iter()
            .filter(|(_, reasons)| reasons.as_slice() == want)
            .map(|(&start, _)| start)
            .collect()
    };

    let writes: Vec<u64> = WRITE_SHAPES.iter().flat_map(|w| shape(w)).collect();
    let read_impls = shape(READ_IMPL_SHAPE);
    let mut reads = shape(READ_INLINED_SHAPE);
    for outer in shape(READ_OUTER_SHAPE) {
        let end = starts.containing(outer).and_then(|(_, end)| end);
        let calls = end
            .map(|end| direct_calls(image, outer, end))
            .unwrap_or_default();
        if calls.iter().any(|c| read_impls.contains(c)) {
            reads.push(outer);
        }
    }
    for (function, candidates) in [
        (TlsFunction::SslWrite, writes),
        (TlsFunction::SslRead, reads),
    ] {
        match candidates.as_slice() {
            [start] => match super::symbols::verify_entry(image, *start) {
                Some(file_offset) => finding.hooks.push(HookPoint {
                    function,
                    site: HookSite::Entry,
                    file_offset,
                    vaddr: *start,
                    evidence: Evidence::BoringSslErrorSites,
                }),
                None => {
                    anomalies.push(format!(
                        "boringssl: {} candidate at {start:#x} does not decode as a function start",
                        function.name()
                    ));
                    finding
                        .tried
                        .push(format!("{} candidate rejected", function.name()));
                }
            },
            [] => finding.tried.push(format!(
                "{}: no function with its error sites",
                function.name()
            )),
            many => finding.tried.push(format!(
                "{}: {} functions with its error sites, ambiguous: none hooked",
                function.name(),
                many.len()
            )),
        }
    }
    Some(finding)
}

/// Addresses of NUL-terminated strings naming `ssl/ssl_lib.cc` (or `.c`), bare or at
/// the end of a path.
fn file_name_strings(image: &Image) -> Vec<u64> {
    // `ssl/ssl_lib.c` alone (OpenSSL's relative names) or at the end of a path.
    source_file_strings(image, &[b"ssl/ssl_lib.cc\0", b"ssl/ssl_lib.c\0"])
}

/// Addresses of NUL-terminated path strings that are one of `suffixes` (each ending in
/// NUL), bare or after a `/`: the `__FILE__` strings error sites pass.
pub(crate) fn source_file_strings(image: &Image, suffixes: &[&[u8]]) -> Vec<u64> {
    let mut out = Vec::new();
    for &suffix in suffixes {
        for end in memchr::memmem::find_iter(image.bytes, suffix) {
            if end > 0 && !matches!(image.bytes[end - 1], 0 | b'/') {
                continue; // `libssl/ssl_lib.c`, `openssl/…`: some other file
            }
            let start = image.bytes[..end]
                .iter()
                .rposition(|&b| b == 0)
                .map_or(0, |p| p + 1);
            if end - start > 512 {
                continue; // not a path string
            }
            if let Some(vaddr) = image.vaddr_of(start as u64) {
                if !out.contains(&vaddr) {
                    out.push(vaddr);
                }
            }
        }
    }
    out
}

/// Every `OPENSSL_PUT_ERROR(SSL, …)` site whose file-name argument is the string at
/// `target`.
pub(crate) fn error_sites(image: &Image, target: u64) -> Vec<ErrorSite> {
    lib_error_sites(image, target, ERR_LIB_SSL)
}

/// Every error site of library `lib` (`ERR_LIB_*`) whose file-name argument is the string
/// at `target`: the same call shape serves every BoringSSL-derived library (aws-lc too).
pub(crate) fn lib_error_sites(image: &Image, target: u64, lib: u32) -> Vec<ErrorSite> {
    let mut sites = Vec::new();
    for (base, code) in image.code() {
        let mut consider = |start: usize| {
            if let Some(site) = site_at(code, base, start, target, lib) {
                if !sites.iter().any(|s: &ErrorSite| s.at == site.at) {
                    sites.push(site);
                }
            }
        };
        // Absolute `mov r32, imm32` (non-PIE): B8+r imm32, or 41 B8+r imm32.
        if let Ok(abs) = u32::try_from(target) {
            for p in memchr::memmem::find_iter(code, &abs.to_le_bytes()) {
                for back in [1, 2] {
                    if let Some(start) = p.checked_sub(back) {
                        consider(start);
                    }
                }
            }
        }
        // RIP-relative `lea r64, [rip+disp32]` (PIE): REX.W, 8D, a ModRM with mod 00 and
        // r/m 101, disp32 ending the 7-byte instruction. Found by its opcode byte (memchr)
        // rather than by trying a displacement at every offset of 100+ MB of code.
        for op in memchr::memchr_iter(0x8d, code) {
            let (Some(start), Some(bytes)) = (op.checked_sub(1), code.get(op + 1..op + 6)) else {
                continue;
            };
            if bytes[0] & 0xc7 != 0x05 || code[start] & 0xf8 != 0x48 {
                continue;
            }
            let disp = i32::from_le_bytes(bytes[1..5].try_into().expect("4 bytes"));
            let next = base + op as u64 + 6;
            if next.wrapping_add_signed(i64::from(disp)) == target {
                consider(start);
            }
        }
    }
    sites.sort_by_key(|s| s.at);
    sites
}

/// Decodes from `start`: the first instruction must load `target` into a register, the
/// next ones (up to the call or jump) supply library, reason and line.
fn site_at(code: &[u8], base: u64, start: usize, target: u64, lib: u32) -> Option<ErrorSite> {
    let at = base + start as u64;
    let mut decoder = Decoder::with_ip(64, &code[start..], at, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    decoder.decode_out(&mut instr);
    let file_reg = loads_address(&instr, target)?;
    let mut imms: BTreeMap<Register, u32> = BTreeMap::new();
    for _ in 0..SITE_WINDOW {
        if !decoder.can_decode() {
            return None;
        }
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            return None;
        }
        if matches!(
            instr.flow_control(),
            FlowControl::Call | FlowControl::UnconditionalBranch
        ) {
            break;
        }
        if let Some((reg, value)) = immediate_load(&instr) {
            imms.insert(reg, value);
        }
    }
    // 4-argument ERR_put_error(lib, reason, file, line) or the older
    // 5-argument ERR_put_error(lib, func, reason, file, line).
    let (reason_reg, line_reg) = match file_reg {
        Register::EDX | Register::RDX => (Register::ESI, Register::ECX),
        Register::ECX | Register::RCX => (Register::EDX, Register::R8D),
        _ => return None,
    };
    if imms.get(&Register::EDI) != Some(&lib) {
        return None;
    }
    Some(ErrorSite {
        at,
        reason: *imms.get(&reason_reg)?,
        line: *imms.get(&line_reg)?,
    })
}

/// The register `instr` loads with the address `target`, if it does.
fn loads_address(instr: &Instruction, target: u64) -> Option<Register> {
    if instr.is_invalid() {
        return None;
    }
    match instr.code() {
        Code::Mov_r32_imm32 if instr.immediate32() as u64 == target => Some(instr.op0_register()),
        Code::Lea_r64_m
            if instr.is_ip_rel_memory_operand() && instr.ip_rel_memory_address() == target =>
        {
            Some(instr.op0_register())
        }
        _ => None,
    }
}

/// `mov r32, imm32` or `xor r32, r32` (zero).
fn immediate_load(instr: &Instruction) -> Option<(Register, u32)> {
    match instr.code() {
        Code::Mov_r32_imm32 if instr.op1_kind() == OpKind::Immediate32 => {
            Some((instr.op0_register(), instr.immediate32()))
        }
        Code::Xor_r32_rm32 | Code::Xor_rm32_r32
            if instr.op0_kind() == OpKind::Register
                && instr.op1_kind() == OpKind::Register
                && instr.op0_register() == instr.op1_register() =>
        {
            Some((instr.op0_register(), 0))
        }
        _ => None,
    }
}

/// Sites grouped by containing function start, reasons in line order.
pub(crate) fn group_by_function(
    sites: &[ErrorSite],
    starts: &FunctionStarts,
) -> BTreeMap<u64, Vec<u32>> {
    let mut by: BTreeMap<u64, Vec<(u32, u32)>> = BTreeMap::new();
    for s in sites {
        if let Some((start, _)) = starts.containing(s.at) {
            by.entry(start).or_default().push((s.line, s.reason));
        }
    }
    by.into_iter()
        .map(|(start, mut v)| {
            v.sort();
            (start, v.into_iter().map(|(_, r)| r).collect())
        })
        .collect()
}

/// Targets of direct `call rel32` instructions in `[start, end)`, decoded linearly from
/// the entry (stops at the first undecodable byte: what came before is still right).
fn direct_calls(image: &Image, start: u64, end: u64) -> Vec<u64> {
    let Some(code) = image.bytes_at(start, end.saturating_sub(start), true) else {
        return Vec::new();
    };
    let mut decoder = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    let mut calls = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            break;
        }
        if instr.code() == Code::Call_rel32_64 {
            calls.push(instr.near_branch_target());
        }
    }
    calls
}
