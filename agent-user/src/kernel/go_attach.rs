//! Attaching the Go `crypto/tls` programs (`agent-ebpf`'s `probes/go_tls.rs`) to one Go
//! binary, at the file offsets its [`Inspection`] verified: the entry and every `RET` of
//! `(*Conn).Write` and `(*Conn).Read`.
//!
//! A uprobe at a wrong byte corrupts the program that runs it (the kernel replaces the
//! instruction there with a breakpoint), so the offsets are checked again against the
//! file as it is now, before anything is attached: the file still has the inspected length,
//! each function's entry decodes into a run of instructions on which every `RET` site falls
//! on an instruction boundary and is a `RET`. A mismatch attaches nothing (the binary may
//! have been replaced since it was inspected). A uprobe is per file, so one attach covers
//! every process of the binary, present and future.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use iced_x86::{Decoder, DecoderOptions, Mnemonic};

use super::loader::Links;
use agent_user::tls_stack::{HookPoint, HookSite, Identity, Inspection, TlsFunction, TlsStack};

/// Longest Go function body decoded to check its `RET` sites (`(*Conn).Read`/`Write` are
/// a few hundred bytes; anything this large is not what was inspected).
const MAX_BODY: u64 = 1 << 20;

/// The program for one hook point (the floor's empty uprobe in floor mode).
fn program(function: TlsFunction, site: HookSite, floor: bool) -> Option<&'static str> {
    if floor {
        return Some("custody_floor_uprobe");
    }
    Some(match (function, site) {
        (TlsFunction::GoConnWrite, HookSite::Entry) => "custody_go_write",
        (TlsFunction::GoConnWrite, HookSite::Return) => "custody_go_write_ret",
        (TlsFunction::GoConnRead, HookSite::Entry) => "custody_go_read_entry",
        (TlsFunction::GoConnRead, HookSite::Return) => "custody_go_read_ret",
        _ => return None,
    })
}

/// Attaches the Go TLS programs to `target` at the hook points of `inspection`'s Go
/// finding. Fails, attaching nothing, when the inspection has no covered Go finding or
/// the file no longer matches it; on success the links keep the probes attached.
pub fn attach_go(
    ebpf: &mut Ebpf,
    target: &Path,
    inspection: &Inspection,
    floor: bool,
) -> Result<Links> {
    let finding = inspection
        .finding(TlsStack::GoCryptoTls)
        .context("no Go crypto/tls in this inspection")?;
    ensure!(
        finding.covered(),
        "Go crypto/tls found but not hookable: {}",
        finding.tried.join("; ")
    );
    let bytes = std::fs::read(target).with_context(|| format!("reading {}", target.display()))?;
    verify(&bytes, &inspection.identity, &finding.hooks)
        .with_context(|| format!("{} no longer matches its inspection", target.display()))?;

    let mut links: Links = Vec::new();
    for h in &finding.hooks {
        let Some(name) = program(h.function, h.site, floor) else {
            continue;
        };
        let p: &mut UProbe = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()?;
        if p.fd().is_err() {
            p.load().with_context(|| format!("loading {name}"))?;
        }
        let id = p
            .attach(
                UProbeAttachLocation::AbsoluteOffset(h.file_offset),
                target,
                UProbeScope::AllProcesses,
            )
            .with_context(|| {
                format!(
                    "attaching {name} to {} {:?} at file offset {:#x} of {}",
                    h.function.name(),
                    h.site,
                    h.file_offset,
                    target.display()
                )
            })?;
        links.push(Box::new(p.take_link(id)?));
    }
    Ok(links)
}

/// The decoy rule, checked on the file's current bytes: every `Return` site of a
/// function is a `RET` instruction reached by decoding that function from its entry.
fn verify(bytes: &[u8], identity: &Identity, hooks: &[HookPoint]) -> Result<()> {
    let len = match identity {
        Identity::BuildId { len, .. } | Identity::Sha256 { len, .. } => *len,
    };
    ensure!(
        bytes.len() as u64 == len,
        "file is {} bytes, inspected as {len}",
        bytes.len()
    );
    let mut by_function: BTreeMap<&str, (Option<&HookPoint>, Vec<&HookPoint>)> = BTreeMap::new();
    for h in hooks {
        let slot = by_function.entry(h.function.name()).or_default();
        match h.site {
            HookSite::Entry => {
                ensure!(slot.0.is_none(), "{}: two entries", h.function.name());
                slot.0 = Some(h);
            }
            HookSite::Return => slot.1.push(h),
        }
    }
    for (name, (entry, rets)) in by_function {
        let entry = entry.with_context(|| format!("{name}: RET sites without an entry"))?;
        ensure!(!rets.is_empty(), "{name}: no RET site");
        let mut want = Vec::with_capacity(rets.len());
        for r in &rets {
            ensure!(
                r.vaddr > entry.vaddr
                    && r.file_offset > entry.file_offset
                    && r.vaddr - entry.vaddr == r.file_offset - entry.file_offset,
                "{name}: RET site {:#x} is not inside the function's bytes",
                r.vaddr
            );
            want.push(r.file_offset - entry.file_offset);
        }
        want.sort_unstable();
        let last = *want.last().expect("not empty");
        ensure!(
            last < MAX_BODY,
            "{name}: RET site {last:#x} bytes past the entry"
        );
        let start = usize::try_from(entry.file_offset)?;
        let end = start
            .checked_add(usize::try_from(last)? + 1)
            .filter(|&e| e <= bytes.len())
            .with_context(|| format!("{name}: body past the end of the file"))?;
        check_rets(&bytes[start..end], entry.vaddr, &want)
            .with_context(|| format!("{name} at {:#x}", entry.vaddr))?;
    }
    Ok(())
}

/// Decodes `code` (a function from its entry through its last `RET` site) and checks that
/// each offset in `rets` (sorted) starts a `RET` instruction.
fn check_rets(code: &[u8], ip: u64, rets: &[u64]) -> Result<()> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut next = rets.iter().copied().peekable();
    while decoder.can_decode() {
        let at = decoder.position() as u64;
        let insn = decoder.decode();
        if insn.is_invalid() {
            bail!("undecodable instruction at +{at:#x}");
        }
        match next.peek() {
            Some(&r) if r == at => {
                ensure!(
                    insn.mnemonic() == Mnemonic::Ret && insn.len() == 1,
                    "RET site +{at:#x} is a {:?}, not a one-byte RET",
                    insn.mnemonic()
                );
                next.next();
            }
            Some(&r) if r < at => bail!("RET site +{r:#x} falls inside an instruction"),
            _ => {}
        }
    }
    match next.next() {
        None => Ok(()),
        Some(r) => bail!("RET site +{r:#x} not reached by decoding"),
    }
}

#[cfg(test)]
mod tests;
