//! rustls in Rust binaries, stripped or not (Codex's static-pie musl build; reqwest/rustls
//! agents): detected by the panic-location strings Rust keeps even in stripped release
//! builds (`…/rustls-0.23.27/src/…`), with the crypto provider beside it (ring, aws-lc-rs).
//!
//! rustls has no plaintext function of its own to hook: `Writer::write` and the record layer
//! are generic and inlined. What every record does pass through is the provider's AEAD: with
//! the `ring` provider, one call of the algorithm's `seal` per record sent and of its `open`
//! per record received, reached through ring's algorithm tables (`static AES_128_GCM:
//! Algorithm = { init, seal, open, key_len, id }`, and AES_256_GCM, CHACHA20_POLY1305).
//! Because they are called through function pointers, these functions exist even when
//! everything around them is inlined, and the tables are in the file's data for the
//! analysis to find, symbols or not:
//! 1. find every 40-byte record in non-executable data whose first three words are code
//!    addresses (read through the dynamic relocations where a RELA PIE keeps them) and
//!    whose last two are a key length (16 or 32) and an algorithm id (0, 1 or 2);
//! 2. ring's three: two AES-GCM records (key 16, id 0; key 32, id 1) that share `seal` and
//!    `open`, and one ChaCha20-Poly1305 record (key 32, id 2) with others — exactly one such
//!    set, or nothing is hooked;
//! 3. verify each `seal`/`open`: a function start in the unwind index, a plausible entry,
//!    and code that has the ABI the kernel programs read — it checks the `KeyInner` enum
//!    behind RSI (`cmp [rsi], imm`) and loads its 7th argument (`in_out.len`) from the
//!    caller's stack slot (and `open` its 8th, `src.start`), tracked through the prologue's
//!    pushes and frame pointer.
//!
//! With the aws-lc-rs provider the records go through aws-lc's C `EVP_AEAD_CTX_seal` /
//! `_open` instead, found by [`aws_lc`](super::aws_lc). A binary may link both providers;
//! both are hooked then.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, Register};
use object::Object;
use std::collections::HashMap;

use super::elf::Image;
use super::unwind::FunctionStarts;
use super::versions;
use super::{Evidence, Finding, HookPoint, HookSite, TlsFunction, TlsStack};

/// Size of ring's `Algorithm` (three fn pointers, `key_len: usize`, `id` padded).
const RECORD: usize = 40;
/// How many instructions from an entry the ABI check decodes.
const ABI_WINDOW: usize = 32;

pub(crate) fn find(image: &Image, anomalies: &mut Vec<String>) -> Option<Finding> {
    let rustls = versions::crate_versions(image.bytes, "rustls");
    if rustls.is_empty() {
        return None;
    }
    let mut finding = Finding::new(TlsStack::Rustls);
    finding.versions = rustls;
    let ring = versions::crate_versions(image.bytes, "ring");
    finding.versions.extend(ring.iter().cloned());
    for provider in ["aws-lc-rs", "aws-lc-sys"] {
        finding
            .versions
            .extend(versions::crate_versions(image.bytes, provider));
    }
    finding
        .tried
        .push("rustls panic-location strings (crate version)".into());
    // Both providers may be linked (Codex has both): hook every one found, since which
    // one a connection uses is the program's choice at run time.
    if finding.versions.iter().any(|v| v.starts_with("aws-lc-rs ")) {
        match super::aws_lc::find(image, anomalies) {
            Ok(hooks) => {
                finding.tried.push(
                    "aws-lc-rs provider: EVP_AEAD_CTX_seal/open found by aws-lc's error sites"
                        .into(),
                );
                finding.hooks.extend(hooks);
            }
            Err(why) => finding.tried.push(format!("aws-lc-rs provider: {why}")),
        }
    }
    if !ring.is_empty() {
        ring_hooks(image, &mut finding, anomalies);
    }
    Some(finding)
}

/// ring's seal/open through its algorithm tables, all four verified or none.
fn ring_hooks(image: &Image, finding: &mut Finding, anomalies: &mut Vec<String>) {
    let tables = aead_tables(image);
    finding.tried.push(format!(
        "ring AEAD tables: {} candidate records in data",
        tables.len()
    ));
    let Some(ring) = ring_algorithms(&tables) else {
        finding.tried.push(
            "ring's AES-GCM/ChaCha20-Poly1305 tables not found exactly once: none hooked".into(),
        );
        return;
    };
    let starts = match FunctionStarts::from_image(image) {
        Ok(s) => s,
        Err(e) => {
            finding.tried.push(format!(
                "unwind index unusable ({e}): function starts unknown"
            ));
            return;
        }
    };
    let mut verified = Vec::new();
    for (function, at) in [
        (TlsFunction::RustlsSeal, ring.aes_seal),
        (TlsFunction::RustlsOpen, ring.aes_open),
        (TlsFunction::RustlsSeal, ring.chacha_seal),
        (TlsFunction::RustlsOpen, ring.chacha_open),
    ] {
        match verify(image, &starts, function, at) {
            Ok(file_offset) => verified.push(HookPoint {
                function,
                site: HookSite::Entry,
                file_offset,
                vaddr: at,
                evidence: Evidence::RingAeadTable,
            }),
            Err(why) => {
                anomalies.push(format!("rustls: {} at {at:#x}: {why}", function.name()));
                finding
                    .tried
                    .push(format!("{} at {at:#x} rejected: {why}", function.name()));
            }
        }
    }
    // All four or none: a connection negotiates one cipher, and a half-hooked binary
    // would read as covered while missing every ChaCha (or AES) connection.
    if verified.len() == 4 {
        finding.hooks.extend(verified);
    } else {
        finding
            .tried
            .push("not every ring seal/open verified: none hooked".into());
    }
}

/// One candidate `Algorithm` record: its three code pointers, key length and id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AeadRecord {
    pub at: u64,
    pub init: u64,
    pub seal: u64,
    pub open: u64,
    pub key_len: u64,
    pub id: u64,
}

/// ring's seal/open pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RingAead {
    pub aes_seal: u64,
    pub aes_open: u64,
    pub chacha_seal: u64,
    pub chacha_open: u64,
}

/// Every 8-aligned record in non-executable data shaped like ring's `Algorithm`.
pub(crate) fn aead_tables(image: &Image) -> Vec<AeadRecord> {
    let relocated = relative_relocations(image);
    let is_code = |v: u64| image.offset_of(v, 1, true).is_some();
    let mut out = Vec::new();
    for seg in image.segments.iter().filter(|s| !s.executable) {
        let start = seg.file_offset as usize;
        let Some(bytes) = image.bytes.get(start..start + seg.file_size as usize) else {
            continue;
        };
        // Segment starts are page-aligned in practice; align the scan to the addresses.
        let skew = ((8 - (seg.vaddr % 8)) % 8) as usize;
        let word = |i: usize, vaddr: u64| -> u64 {
            if let Some(&v) = relocated.get(&vaddr) {
                return v;
            }
            bytes
                .get(i..i + 8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        let mut i = skew;
        while i + RECORD <= bytes.len() {
            let at = seg.vaddr + i as u64;
            let key_len = word(i + 24, at + 24);
            let id = word(i + 32, at + 32);
            if matches!(key_len, 16 | 32) && id <= 2 {
                let (init, seal, open) = (word(i, at), word(i + 8, at + 8), word(i + 16, at + 16));
                if is_code(init) && is_code(seal) && is_code(open) {
                    out.push(AeadRecord {
                        at,
                        init,
                        seal,
                        open,
                        key_len,
                        id,
                    });
                }
            }
            i += 8;
        }
    }
    out
}

/// The values `R_X86_64_RELATIVE` relocations store, by address: a RELA PIE keeps data
/// pointers as zero in the file (a RELR one keeps them in place, read as they are).
fn relative_relocations(image: &Image) -> HashMap<u64, u64> {
    let Some(relocs) = image.object().dynamic_relocations() else {
        return HashMap::new();
    };
    relocs
        .filter(|(_, r)| {
            matches!(
                r.flags(),
                object::RelocationFlags::Elf { r_type } if r_type == object::elf::R_X86_64_RELATIVE
            )
        })
        .map(|(at, r)| (at, r.addend() as u64))
        .collect()
}

/// ring's set among the candidates: AES-128 and AES-256 sharing seal/open, ChaCha with its
/// own; `None` unless exactly one such set exists.
pub(crate) fn ring_algorithms(records: &[AeadRecord]) -> Option<RingAead> {
    let mut found = Vec::new();
    for a128 in records.iter().filter(|r| r.key_len == 16 && r.id == 0) {
        let a256 = records.iter().filter(|r| {
            r.key_len == 32
                && r.id == 1
                && r.seal == a128.seal
                && r.open == a128.open
                && r.init != a128.init
        });
        for _ in a256 {
            for c in records.iter().filter(|r| {
                r.key_len == 32
                    && r.id == 2
                    && r.seal != a128.seal
                    && r.open != a128.open
                    && r.seal != r.open
            }) {
                let set = RingAead {
                    aes_seal: a128.seal,
                    aes_open: a128.open,
                    chacha_seal: c.seal,
                    chacha_open: c.open,
                };
                if !found.contains(&set) {
                    found.push(set);
                }
            }
        }
    }
    match found.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// A `seal`/`open` the kernel programs can read: the file offset to attach at.
fn verify(
    image: &Image,
    starts: &FunctionStarts,
    function: TlsFunction,
    at: u64,
) -> Result<u64, String> {
    if !starts.is_start(at) {
        return Err("not a function start in the unwind index".into());
    }
    let offset = super::symbols::verify_entry(image, at)
        .ok_or_else(|| "does not decode as a function entry".to_string())?;
    let code = &image.bytes[offset as usize..];
    let code = &code[..code.len().min(ABI_WINDOW * 15)];
    let abi = entry_abi(code, at);
    if !abi.checks_key_enum {
        return Err("no check of the key enum behind RSI: not ring's ABI".into());
    }
    let want: &[i64] = match function {
        TlsFunction::RustlsOpen => &[8, 16],
        _ => &[8],
    };
    for slot in want {
        if !abi.stack_args.contains(slot) {
            return Err(format!(
                "does not load its stack argument at [rsp+{slot}] of the entry"
            ));
        }
    }
    Ok(offset)
}

/// What the first instructions of a function show about its arguments.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct EntryAbi {
    /// A `cmp` of memory at `[rsi]` (the `KeyInner` discriminant) with an immediate.
    pub checks_key_enum: bool,
    /// Caller stack slots read, as offsets from the entry's RSP (8 = first stack argument).
    pub stack_args: Vec<i64>,
}

/// Decodes up to [`ABI_WINDOW`] instructions (stopping at the first call, jump or return),
/// tracking how far RSP moved (`push`, `sub`/`add rsp, imm`) and where RBP points
/// (`mov rbp, rsp`), and records reads of the caller's stack slots.
pub(crate) fn entry_abi(code: &[u8], vaddr: u64) -> EntryAbi {
    let mut decoder = Decoder::with_ip(64, code, vaddr, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    let mut abi = EntryAbi::default();
    // Bytes below the entry RSP; None once RSP is realigned (`and rsp, -64`).
    let mut rsp: Option<i64> = Some(0);
    let mut rbp: Option<i64> = None;
    let mut rsi_intact = true;
    for _ in 0..ABI_WINDOW {
        if !decoder.can_decode() {
            break;
        }
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            break;
        }
        // Memory operands: stack-argument reads and the key check.
        for op in 0..instr.op_count() {
            if instr.op_kind(op) != OpKind::Memory || instr.memory_index() != Register::None {
                continue;
            }
            let disp = instr.memory_displacement64() as i64;
            let slot = match instr.memory_base() {
                Register::RSP => rsp.map(|d| disp - d),
                Register::RBP => rbp.map(|d| disp - d),
                _ => None,
            };
            if let Some(s) = slot.filter(|&s| s > 0) {
                if !abi.stack_args.contains(&s) {
                    abi.stack_args.push(s);
                }
            }
            if rsi_intact
                && instr.mnemonic() == Mnemonic::Cmp
                && instr.memory_base() == Register::RSI
                && disp == 0
                && instr.op_count() == 2
                && matches!(
                    instr.op1_kind(),
                    OpKind::Immediate8
                        | OpKind::Immediate8to32
                        | OpKind::Immediate8to64
                        | OpKind::Immediate32
                        | OpKind::Immediate32to64
                )
            {
                abi.checks_key_enum = true;
            }
        }
        // Register effects, after the operands were read with the old values.
        match instr.mnemonic() {
            Mnemonic::Push => rsp = rsp.map(|d| d + 8),
            Mnemonic::Pop => rsp = rsp.map(|d| d - 8),
            Mnemonic::Sub | Mnemonic::Add
                if instr.op0_register() == Register::RSP
                    && matches!(
                        instr.op1_kind(),
                        OpKind::Immediate8to64 | OpKind::Immediate32to64
                    ) =>
            {
                let imm = instr.immediate(1) as i64;
                rsp = rsp.map(|d| {
                    if instr.mnemonic() == Mnemonic::Sub {
                        d + imm
                    } else {
                        d - imm
                    }
                });
            }
            Mnemonic::Mov
                if instr.op0_register() == Register::RBP
                    && instr.op1_kind() == OpKind::Register
                    && instr.op1_register() == Register::RSP =>
            {
                rbp = rsp;
            }
            _ => {
                let w = instr.op0_register();
                if instr.op_count() > 0 && instr.op0_kind() == OpKind::Register {
                    match w {
                        Register::RSP | Register::ESP => rsp = None,
                        Register::RBP | Register::EBP => rbp = None,
                        Register::RSI | Register::ESI => rsi_intact = false,
                        _ => {}
                    }
                }
            }
        }
        if matches!(
            instr.flow_control(),
            FlowControl::Call
                | FlowControl::IndirectCall
                | FlowControl::Return
                | FlowControl::UnconditionalBranch
                | FlowControl::IndirectBranch
        ) {
            break;
        }
    }
    abi
}
