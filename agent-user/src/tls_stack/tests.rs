//! Tests of the TLS-stack analysis against real binaries (system node and libssl, a Go
//! client built here, Claude Code's Bun executable, this test binary's own rustls) and
//! against bad input: malformed and truncated ELF, a corrupt pclntab, a BoringSSL decoy.

use super::cache::InspectionCache;
use super::test_support::*;
use super::*;
use std::path::Path;

const NODE: &str = "/usr/bin/node";
const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

fn hook(i: &Inspection, f: TlsFunction, site: HookSite) -> Vec<&HookPoint> {
    i.hooks()
        .filter(|h| h.function == f && h.site == site)
        .collect()
}

fn entry(i: &Inspection, f: TlsFunction) -> &HookPoint {
    let found = hook(i, f, HookSite::Entry);
    assert_eq!(found.len(), 1, "one entry hook for {f:?} in {i:#?}");
    found[0]
}

fn present(name: &str, path: &str) -> bool {
    let ok = Path::new(path).is_file();
    if !ok {
        skip(name, &format!("{path} is not installed"));
    }
    ok
}

#[test]
fn openssl_symbols_in_node_and_libssl_and_a_copy_of_node_under_nvm() {
    let name = "openssl_symbols_in_node_and_libssl_and_a_copy_of_node_under_nvm";
    if !present(name, NODE) || !present(name, LIBSSL) {
        return;
    }
    let node = inspect(Path::new(NODE)).unwrap();
    let f = node
        .finding(TlsStack::OpenSsl)
        .expect("node carries OpenSSL");
    assert!(f.covered(), "{f:#?}");
    assert!(
        f.versions.iter().any(|v| v.starts_with("OpenSSL 3.")),
        "{:?}",
        f.versions
    );
    let bytes = std::fs::read(NODE).unwrap();
    for func in [
        TlsFunction::SslWrite,
        TlsFunction::SslRead,
        TlsFunction::SslWriteEx,
        TlsFunction::SslReadEx,
    ] {
        let h = entry(&node, func);
        assert_eq!(h.evidence, Evidence::DynamicSymbol);
        // Same bytes at the file offset as at the address (node maps its text at offset ==
        // vaddr - 0x400000 here, but derive it from the program headers independently).
        let off = independent_offset(&bytes, h.vaddr);
        assert_eq!(h.file_offset, off, "{func:?}");
    }
    assert!(node.uncovered().next().is_none());

    let ssl = inspect(Path::new(LIBSSL)).unwrap();
    let f = ssl.finding(TlsStack::OpenSsl).expect("libssl is OpenSSL");
    assert!(f.covered(), "{f:#?}");
    let ssl_bytes = std::fs::read(LIBSSL).unwrap();
    for h in &f.hooks {
        assert_eq!(
            h.file_offset,
            independent_offset(&ssl_bytes, h.vaddr),
            "{h:?}"
        );
    }

    // An nvm-style install of the same node: a different file (inode), the same offsets.
    let dir = tempfile::tempdir().unwrap();
    let nvm = dir.path().join(".nvm/versions/node/v20.19.2/bin/node");
    std::fs::create_dir_all(nvm.parent().unwrap()).unwrap();
    std::fs::copy(NODE, &nvm).unwrap();
    assert_eq!(inspect(&nvm).unwrap(), node);
}

/// File offset of `vaddr` by walking the program headers by hand (not through `object`).
fn independent_offset(elf: &[u8], vaddr: u64) -> u64 {
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap());
        let (off, va, filesz) = (u64_at(ph + 8), u64_at(ph + 16), u64_at(ph + 32));
        if p_type == 1 && vaddr >= va && vaddr < va + filesz {
            return off + (vaddr - va);
        }
    }
    panic!("{vaddr:#x} not in any PT_LOAD");
}

#[test]
fn go_crypto_tls_in_a_stripped_go_client_hooks_entry_and_every_ret() {
    let name = "go_crypto_tls_in_a_stripped_go_client_hooks_entry_and_every_ret";
    let dir = tempfile::tempdir().unwrap();
    let Some(go) = go_clients(name, dir.path()) else {
        return;
    };
    let mut without_sections = std::fs::read(&go.stripped).unwrap();
    drop_section_headers(&mut without_sections);
    let headless = dir.path().join("go_client_no_sections");
    std::fs::write(&headless, &without_sections).unwrap();

    for (bin, reference) in [
        (&go.no_symbols, &go.with_symbols),
        (&go.stripped, &go.with_symbols),
        (&headless, &go.with_symbols),
        (&go.pie, &go.pie_with_symbols),
    ] {
        let i = inspect(bin).unwrap();
        assert!(i.anomalies.is_empty(), "{:?}", i.anomalies);
        let f = i
            .finding(TlsStack::GoCryptoTls)
            .unwrap_or_else(|| panic!("{bin:?}: {i:#?}"));
        assert!(f.covered(), "{f:#?}");
        assert!(
            f.versions.iter().any(|v| v.starts_with("go1.")),
            "{:?}",
            f.versions
        );
        let bytes = std::fs::read(bin).unwrap();
        for (func, go_name) in [
            (TlsFunction::GoConnWrite, "crypto/tls.(*Conn).Write"),
            (TlsFunction::GoConnRead, "crypto/tls.(*Conn).Read"),
        ] {
            let e = entry(&i, func);
            assert_eq!(e.evidence, Evidence::GoPclntab);
            // Go's own tool agrees on where the function is (it needs the symbol table, so
            // ask it about the build that kept one: -s -w changes no code address).
            let (addr, size) = go_nm(reference, go_name).expect("go tool nm lists it");
            assert_eq!(e.vaddr, addr, "{go_name}");
            let rets = hook(&i, func, HookSite::Return);
            assert!(!rets.is_empty(), "{go_name} has RET sites");
            for r in rets {
                assert!(
                    r.vaddr > addr && r.vaddr < addr + size,
                    "{r:?} inside {go_name}"
                );
                assert_eq!(bytes[r.file_offset as usize], 0xc3, "a RET at {r:?}");
                assert_eq!(r.file_offset, independent_offset(&bytes, r.vaddr));
            }
        }
    }
}

#[test]
fn a_corrupt_or_truncated_pclntab_is_reported_and_never_hooked() {
    let name = "a_corrupt_or_truncated_pclntab_is_reported_and_never_hooked";
    let dir = tempfile::tempdir().unwrap();
    let Some(go) = go_clients(name, dir.path()) else {
        return;
    };
    let good = std::fs::read(&go.no_symbols).unwrap();
    let image = elf::Image::parse(&good).unwrap();
    let tab = image.section(".gopclntab").unwrap();
    let at = tab.file_offset as usize;
    drop(image);

    // The header claims more functions than the table holds.
    let mut bad = good.clone();
    bad[at + 8..at + 16].copy_from_slice(&(5_000_000u64).to_le_bytes());
    let i = inspect_bytes(&bad).unwrap();
    let f = i
        .finding(TlsStack::GoCryptoTls)
        .expect("still known as Go TLS");
    assert!(f.hooks.is_empty() && !f.covered(), "{f:#?}");
    assert!(
        f.tried.iter().any(|t| t.contains("pclntab unusable")),
        "{:?}",
        f.tried
    );

    // Every function record's entry disagrees with the table: nothing is trusted.
    let table = elf::Image::parse(&good).unwrap();
    let pcln = go::Pclntab::parse(table.section_bytes(&tab), None).unwrap();
    assert!(pcln.func(0).is_ok());
    let functab = u64::from_le_bytes(good[at + 64..at + 72].try_into().unwrap()) as usize;
    let mut bad = good.clone();
    for k in 0..pcln.len() {
        let e = at + functab + 8 * k;
        bad[e] ^= 0x01;
    }
    let i = inspect_bytes(&bad).unwrap();
    assert_eq!(i.hooks().count(), 0, "{i:#?}");
    assert!(
        !i.anomalies.is_empty() || i.uncovered().count() > 0,
        "{i:#?}"
    );

    // The pclntab cut short: a cut header is an error; a cut table is an error for every
    // function whose record or name is gone, never a panic.
    let whole = table.section_bytes(&tab);
    for keep in [0usize, 7, 40, 71] {
        assert!(go::Pclntab::parse(&whole[..keep], None).is_err(), "{keep}");
    }
    for keep in [
        72usize,
        1000,
        whole.len() / 3,
        whole.len() / 2,
        whole.len() - 1,
    ] {
        if let Ok(t) = go::Pclntab::parse(&whole[..keep], None) {
            let (found, _) = t.find(&["crypto/tls.(*Conn).Write"]);
            if let Some(f) = &found[0] {
                assert_eq!(
                    Some(f),
                    pcln.find(&["crypto/tls.(*Conn).Write"]).0[0].as_ref()
                );
            }
        }
    }
}

#[test]
fn truncated_and_bit_flipped_elf_files_never_panic_nor_hook_a_non_instruction() {
    let name = "truncated_and_bit_flipped_elf_files_never_panic_nor_hook_a_non_instruction";
    let dir = tempfile::tempdir().unwrap();
    let Some(go) = go_clients(name, dir.path()) else {
        return;
    };
    let good = std::fs::read(&go.no_symbols).unwrap();
    assert!(matches!(inspect_bytes(b""), Err(InspectError::NotElf)));
    assert!(matches!(
        inspect_bytes(b"#!/bin/sh\necho hi\n"),
        Err(InspectError::NotElf)
    ));
    assert!(inspect_bytes(&good[..64]).is_err());
    let len = good.len();
    // Truncations: in the header, the program headers, and at 24 points through the file.
    let cuts = (1..64)
        .chain((0..40).map(|k| k * len / 40 + 13))
        .filter(|&c| c < len);
    for cut in cuts {
        if let Ok(i) = inspect_bytes(&good[..cut]) {
            check_hooks_are_instructions(&good[..cut], &i);
        }
    }
    // Bit flips spread over the file (a cheap deterministic fuzz).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..24 {
        let mut bad = good.clone();
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x % len as u64) as usize;
            bad[at] ^= 1 << (x % 8);
        }
        if let Ok(i) = inspect_bytes(&bad) {
            check_hooks_are_instructions(&bad, &i);
        }
    }
}

fn check_hooks_are_instructions(bytes: &[u8], i: &Inspection) {
    for h in i.hooks() {
        let b = bytes.get(h.file_offset as usize).copied();
        match h.site {
            HookSite::Return => assert_eq!(b, Some(0xc3), "{h:?}"),
            HookSite::Entry => {
                let code = &bytes[h.file_offset as usize..];
                assert!(
                    x86::plausible_entry(&code[..code.len().min(64)], h.vaddr),
                    "{h:?}"
                );
            }
        }
    }
}

/// The address of the function symbol whose demangled path contains `needle`.
fn symbol_address(bytes: &[u8], needle: &str) -> Option<u64> {
    use object::{Object, ObjectSymbol};
    let file = object::File::parse(bytes).ok()?;
    file.symbols()
        .find(|s| s.name().is_ok_and(|n| n.contains(needle)))
        .map(|s| s.address())
}

#[test]
fn rustls_on_ring_in_a_stripped_rust_binary_is_hooked_at_ring_s_seal_and_open() {
    // This test binary links rustls with the ring provider (through the shipper's TLS):
    // its symbols say where ring's seal/open are; a stripped copy must be found the same.
    let name = "rustls_on_ring_in_a_stripped_rust_binary";
    let dir = tempfile::tempdir().unwrap();
    let me = std::env::current_exe().unwrap();
    let unstripped = std::fs::read(&me).unwrap();
    let copy = dir.path().join("rust_client");
    std::fs::copy(&me, &copy).unwrap();
    match std::process::Command::new("strip").arg(&copy).status() {
        Ok(s) => assert!(s.success()),
        Err(e) => return skip(name, &format!("no strip: {e}")),
    }
    let i = inspect(&copy).unwrap();
    let f = i
        .finding(TlsStack::Rustls)
        .unwrap_or_else(|| panic!("{i:#?}"));
    assert!(
        f.versions.iter().any(|v| v.starts_with("rustls 0.23.")),
        "{:?}",
        f.versions
    );
    assert!(f.covered(), "{f:#?}");
    assert_eq!(f.hooks.len(), 4, "{f:#?}");
    let want =
        |sym: &str| symbol_address(&unstripped, sym).unwrap_or_else(|| panic!("no symbol {sym}"));
    let vaddrs = |function| -> Vec<u64> {
        let mut v: Vec<u64> = f
            .hooks
            .iter()
            .filter(|h| h.function == function)
            .map(|h| h.vaddr)
            .collect();
        v.sort();
        v
    };
    let mut seals = vec![
        want("9algorithm12aes_gcm_seal"),
        want("9algorithm22chacha20_poly1305_seal"),
    ];
    let mut opens = vec![
        want("9algorithm12aes_gcm_open"),
        want("9algorithm22chacha20_poly1305_open"),
    ];
    seals.sort();
    opens.sort();
    assert_eq!(vaddrs(TlsFunction::RustlsSeal), seals);
    assert_eq!(vaddrs(TlsFunction::RustlsOpen), opens);
    for h in &f.hooks {
        assert_eq!(h.evidence, Evidence::RingAeadTable);
        assert_eq!(h.file_offset, independent_offset(&unstripped, h.vaddr));
    }
    assert!(i.uncovered().all(|u| u.stack != TlsStack::Rustls));
}

/// ring's `aes_gcm_open` and the start of `chacha20_poly1305_open` as Codex 0.169's release
/// build has them, and look-alikes that lack what the kernel programs rely on.
#[test]
fn ring_s_abi_is_checked_on_the_code_and_look_alikes_are_refused() {
    use super::rustls::entry_abi;
    let hex = |s: &str| hex::decode(s).unwrap();
    // push rbx; cmp dword [rsi],5; je; mov rbx,rdi; push [rsp+0x18]; push [rsp+0x18]; call
    let aes_open = hex("53833e0574194889fbff742418ff742418e8aaf2ffff4883c4104889d85bc3");
    let abi = entry_abi(&aes_open, 0x1000);
    assert!(abi.checks_key_enum, "{abi:?}");
    assert_eq!(abi.stack_args, vec![16, 8]);
    // push rbp; mov rbp,rsp; push r15..rbx; and rsp,-64; sub rsp,0x280; cmp dword [rsi],5;
    // …; mov rsi,[rbp+0x18]; mov r10,[rbp+0x10]
    let chacha_open = hex(
        "554889e54157415641554154534883e4c04881ec80020000833e050f85c00500004989f5\
         4889fb488b75184c8b55104929f20f82a40500004d89cb",
    );
    let abi = entry_abi(&chacha_open, 0x2000);
    assert!(abi.checks_key_enum, "{abi:?}");
    assert!(
        abi.stack_args.contains(&8) && abi.stack_args.contains(&16),
        "{abi:?}"
    );
    // The same AES prologue with the stack reads turned into register moves
    // (mov rax,rcx; nop…): no stack argument, so not the seal/open ABI.
    let no_stack = hex("53833e0574194889fb4889c8909090909090e8aaf2ffff5bc3");
    assert!(entry_abi(&no_stack, 0x1000).stack_args.is_empty());
    // A compare through RSI after RSI was overwritten is not the key check.
    let rsi_clobbered = hex("534889fe833e05741948ff742410e800000000");
    assert!(!entry_abi(&rsi_clobbered, 0x1000).checks_key_enum);
}

#[test]
fn boringssl_in_claude_codes_bun_binary_is_found_by_its_error_sites() {
    let name = "boringssl_in_claude_codes_bun_binary_is_found_by_its_error_sites";
    let Some(bin) = agent_binary(name, "CUSTODY_CLAUDE_BIN") else {
        return;
    };
    let i = inspect(&bin).unwrap();
    let f = i
        .finding(TlsStack::BoringSsl)
        .unwrap_or_else(|| panic!("{i:#?}"));
    assert!(
        f.versions.contains(&"Bun 1.4.0".to_string()),
        "{:?}",
        f.versions
    );
    let w = entry(&i, TlsFunction::SslWrite);
    let r = entry(&i, TlsFunction::SslRead);
    assert_eq!(w.evidence, Evidence::BoringSslErrorSites);
    // Checked by hand in the disassembly of 2.1.197: SSL_write tests ssl->quic_method,
    // then do_handshake, loops on write_app_data; SSL_read is SSL_peek inlined (QUIC check,
    // call to ssl_read_impl, memcpy from pending_app_data, consume).
    assert_eq!((w.vaddr, w.file_offset), (0x340e3a0, 0x320d3a0));
    assert_eq!((r.vaddr, r.file_offset), (0x340e010, 0x320d010));
    assert!(f.covered());
}

/// Codex's static-pie musl binary: rustls with both crypto providers (aws-lc-rs, the one
/// its API traffic uses, and ring) and a vendored OpenSSL, all without symbols. rustls is
/// hooked at both providers' seal/open; the OpenSSL, unused for the API, is named with its
/// version and reported uncovered.
#[test]
fn codex_s_rustls_is_hooked_at_both_providers_aead_and_its_stripped_openssl_is_uncovered() {
    let name =
        "codex_s_rustls_is_hooked_at_both_providers_aead_and_its_stripped_openssl_is_uncovered";
    let Some(bin) = agent_binary(name, "CUSTODY_CODEX_BIN") else {
        return;
    };
    let i = inspect(&bin).unwrap();
    let rustls = i
        .finding(TlsStack::Rustls)
        .unwrap_or_else(|| panic!("{i:#?}"));
    assert!(
        rustls
            .versions
            .iter()
            .any(|v| v.starts_with("rustls 0.23.")),
        "{rustls:?}"
    );
    let openssl = i
        .finding(TlsStack::OpenSsl)
        .unwrap_or_else(|| panic!("{i:#?}"));
    assert!(
        openssl.versions.iter().any(|v| v.starts_with("OpenSSL 3.")),
        "{openssl:?}"
    );
    assert!(i.finding(TlsStack::BoringSsl).is_none(), "{i:#?}");
    assert!(rustls.covered(), "{rustls:#?}");
    // Checked by hand in the disassembly of 0.169.0 (a RELR static PIE: the table
    // pointers sit in the file): ring's AES_128_GCM at 0x11719098, AES_256_GCM at
    // 0x117190c0, CHACHA20_POLY1305 at 0x11719118; aws-lc's aead.c error sites
    // (lib 30) group as seal [117, 103, 115] at 0x1125fad0, seal_scatter [115, 112],
    // open [115, 101, 103, 115, 104] (open_gather inlined) at 0x1125fd10, open_gather
    // [115, 104]. Its API traffic goes through aws-lc (rustls's default provider).
    let mut got: Vec<(TlsFunction, u64)> =
        rustls.hooks.iter().map(|h| (h.function, h.vaddr)).collect();
    got.sort_by_key(|g| g.1);
    assert_eq!(
        got,
        vec![
            (TlsFunction::RustlsOpen, 0x100dc0a0),
            (TlsFunction::RustlsSeal, 0x100dc0e0),
            (TlsFunction::RustlsOpen, 0x100dc210),
            (TlsFunction::RustlsSeal, 0x100dc830),
            (TlsFunction::AwsLcSeal, 0x1125fad0),
            (TlsFunction::AwsLcOpen, 0x1125fd10),
        ]
    );
    assert_eq!(i.uncovered().count(), 1);
    assert_eq!(i.uncovered().next().unwrap().stack, TlsStack::OpenSsl);
}

/// A stripped PIE (`/bin/ls`) made to look like BoringSSL: its name strings in `.rodata`,
/// a `SSL_write` prologue in data, and only half of `SSL_write`'s error sites in a real
/// function. It is reported as BoringSSL, and nothing is hooked.
#[test]
fn a_boringssl_decoy_is_reported_but_not_hooked() {
    let name = "a_boringssl_decoy_is_reported_but_not_hooked";
    if !present(name, "/bin/ls") {
        return;
    }
    let mut bytes = std::fs::read("/bin/ls").unwrap();
    let image = elf::Image::parse(&bytes).unwrap();
    let rodata = image.section(".rodata").unwrap();
    let starts = unwind::FunctionStarts::from_image(&image).unwrap();
    let text = image.section(".text").unwrap();
    // A function well inside .text, with room for our bytes before the next one.
    let (func, next) = (0..)
        .map(|k| starts.containing(text.vaddr + 0x400 + k * 0x40).unwrap())
        .find(|(s, n)| n.is_some_and(|n| n - s > 128) && *s >= text.vaddr)
        .unwrap();
    assert!(next.unwrap() - func > 128);
    let func_off = image.offset_of(func, 128, true).unwrap() as usize;
    drop(image);

    let strings = b"openssl_is_boringssl\0../../vendor/boringssl/ssl/ssl_lib.cc\0";
    let s_off = rodata.file_offset as usize + 0x100;
    bytes[s_off..s_off + strings.len()].copy_from_slice(strings);
    let file_str = (rodata.vaddr + 0x100 + 21) as u32;
    let site = |reason: u32, line: u32| -> Vec<u8> {
        let mut v = vec![0xba];
        v.extend_from_slice(&file_str.to_le_bytes()); // mov edx, file
        v.extend_from_slice(&[0xbf, 16, 0, 0, 0]); // mov edi, ERR_LIB_SSL
        v.push(0xbe);
        v.extend_from_slice(&reason.to_le_bytes()); // mov esi, reason
        v.push(0xb9);
        v.extend_from_slice(&line.to_le_bytes()); // mov ecx, line
        v.extend_from_slice(&[0xe8, 0, 0, 0, 0]); // call
        v
    };
    let prologue = [0x55, 0x48, 0x89, 0xe5, 0x41, 0x57, 0x41, 0x56, 0x41, 0x55];
    // Look-alike SSL_write in data: a prologue and all four sites, never executable.
    let mut fake: Vec<u8> = prologue.to_vec();
    for (r, l) in [(66, 955), (226, 960), (215, 975), (111, 981)] {
        fake.extend(site(r, l));
    }
    let d_off = rodata.file_offset as usize + 0x200;
    bytes[d_off..d_off + fake.len()].copy_from_slice(&fake);
    // Half the sites inside a real function.
    let mut half: Vec<u8> = prologue.to_vec();
    half.extend(site(66, 955));
    half.extend(site(226, 960));
    bytes[func_off..func_off + half.len()].copy_from_slice(&half);

    let i = inspect_bytes(&bytes).unwrap();
    let f = i
        .finding(TlsStack::BoringSsl)
        .unwrap_or_else(|| panic!("{i:#?}"));
    assert_eq!(i.hooks().count(), 0, "{i:#?}");
    assert!(
        f.tried.iter().any(|t| t.contains("2 in")),
        "both code sites seen: {:?}",
        f.tried
    );
    assert!(i.uncovered().any(|u| u.stack == TlsStack::BoringSsl));

    // Control: the same function with all four sites is taken for SSL_write, so the decoy
    // failed for the right reason.
    let mut full: Vec<u8> = prologue.to_vec();
    for (r, l) in [(66, 955), (226, 960), (215, 975), (111, 981)] {
        full.extend(site(r, l));
    }
    assert!(full.len() <= 128);
    bytes[func_off..func_off + full.len()].copy_from_slice(&full);
    let i = inspect_bytes(&bytes).unwrap();
    assert_eq!(entry(&i, TlsFunction::SslWrite).vaddr, func);
}

#[test]
fn the_cache_analyses_a_binary_once_across_paths_and_restarts() {
    let name = "the_cache_analyses_a_binary_once_across_paths_and_restarts";
    if !present(name, LIBSSL) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let copy = dir.path().join("vendored/libssl.so.3");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(LIBSSL, &copy).unwrap();

    let cache = InspectionCache::new(Some(state.clone()));
    let a = cache.inspect(Path::new(LIBSSL)).unwrap();
    let b = cache.inspect(Path::new(LIBSSL)).unwrap();
    let c = cache.inspect(&copy).unwrap();
    assert_eq!(cache.stats().analysed, 1);
    assert_eq!(cache.stats().hits, 2);
    assert!(std::sync::Arc::ptr_eq(&a, &b) && std::sync::Arc::ptr_eq(&a, &c));

    // A restarted daemon reads the state file instead of analysing again.
    let again = InspectionCache::new(Some(state.clone()));
    assert_eq!(*again.inspect(&copy).unwrap(), *a);
    assert_eq!(again.stats().analysed, 0);

    // A corrupt state file is counted and the binary analysed again, to the same answer.
    let file = state.join(format!("{}.json", a.identity.key()));
    std::fs::write(&file, b"{not json").unwrap();
    let third = InspectionCache::new(Some(state));
    assert_eq!(*third.inspect(&copy).unwrap(), *a);
    assert_eq!((third.stats().analysed, third.stats().state_errors), (1, 1));
}

#[test]
fn a_library_that_only_imports_ssl_is_no_tls_stack_of_its_own() {
    // Python's `_ssl` module calls `SSL_write_ex`/`SSL_read_ex` of libssl (`U` symbols):
    // libssl is hooked, so `_ssl` must not be reported as uncovered OpenSSL.
    let name = "a_library_that_only_imports_ssl_is_no_tls_stack_of_its_own";
    let out = std::process::Command::new("python3")
        .args(["-c", "import _ssl; print(_ssl.__file__)"])
        .output()
        .expect("python3 runs");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !present(name, &path) {
        return;
    }
    let i = inspect(Path::new(&path)).unwrap();
    assert!(
        i.finding(TlsStack::OpenSsl).is_none() && i.finding(TlsStack::BoringSsl).is_none(),
        "{path} imports SSL_* only: {i:#?}"
    );
}
