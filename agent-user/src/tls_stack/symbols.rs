//! OpenSSL / BoringSSL found by symbol name, in any ELF at any path: node under nvm, asdf
//! or volta, a python build, a vendored or system libssl. `.dynsym` first (survives
//! `strip`), then `.symtab`; the symbol's address becomes a file offset through the
//! segment that contains it, and the entry must decode as a function start.
//!
//! Which of the two libraries it is comes from BoringSSL's marker symbol
//! `openssl_is_boringssl` (or its name among the strings); the OpenSSL version from its
//! `OpenSSL x.y.z  dd Mon yyyy` banner.

use super::elf::Image;
use super::versions;
use super::{Evidence, Finding, HookPoint, HookSite, TlsFunction, TlsStack, x86};
use object::{Object, ObjectSymbol, SymbolKind};

const WANTED: [(&str, TlsFunction); 6] = [
    ("SSL_write", TlsFunction::SslWrite),
    ("SSL_read", TlsFunction::SslRead),
    ("SSL_write_ex", TlsFunction::SslWriteEx),
    ("SSL_read_ex", TlsFunction::SslReadEx),
    ("SSL_get_fd", TlsFunction::SslGetFd),
    ("SSL_set_fd", TlsFunction::SslSetFd),
];

pub(crate) fn find(image: &Image) -> Option<Finding> {
    let obj = image.object();
    let mut hooks: Vec<HookPoint> = Vec::new();
    let mut tried = Vec::new();
    let mut boring_marker = false;
    let mut any_ssl_symbol = false;

    let tables = [
        (
            Evidence::DynamicSymbol,
            obj.dynamic_symbols().collect::<Vec<_>>(),
        ),
        (Evidence::StaticSymbol, obj.symbols().collect::<Vec<_>>()),
    ];
    for (evidence, syms) in &tables {
        for sym in syms {
            let Ok(name) = sym.name() else { continue };
            // Versioned names (`SSL_write@@OPENSSL_3.0.0`) appear in some symtabs.
            let name = name.split('@').next().unwrap_or(name);
            if name == "openssl_is_boringssl" {
                boring_marker = true;
            }
            let Some(&(_, function)) = WANTED.iter().find(|(n, _)| *n == name) else {
                continue;
            };
            if !sym.is_definition() || sym.kind() != SymbolKind::Text {
                // An import (`U SSL_write`: libcurl, python's `_ssl`) is the library's
                // job, analysed and hooked as a file of its own; counting it here made
                // every curl "TLS not readable" although libssl was hooked.
                continue;
            }
            any_ssl_symbol = true;
            if hooks.iter().any(|h| h.function == function) {
                continue; // .dynsym already gave it
            }
            let vaddr = sym.address();
            match verify_entry(image, vaddr) {
                Some(file_offset) => hooks.push(HookPoint {
                    function,
                    site: HookSite::Entry,
                    file_offset,
                    vaddr,
                    evidence: *evidence,
                }),
                None => tried.push(format!(
                    "{name} symbol at {vaddr:#x} rejected: not a decodable function start in an \
                     executable segment"
                )),
            }
        }
    }
    if !any_ssl_symbol {
        return None;
    }
    let boring = boring_marker || versions::contains(image.bytes, b"openssl_is_boringssl");
    let stack = if boring {
        TlsStack::BoringSsl
    } else {
        TlsStack::OpenSsl
    };
    let mut finding = Finding::new(stack);
    finding.tried.push("exported/static SSL_* symbols".into());
    finding.tried.extend(tried);
    finding.versions = versions::openssl(image.bytes);
    hooks.sort_by_key(|h| (h.function as u8, h.file_offset));
    finding.hooks = hooks;
    Some(finding)
}

/// The file offset of a function entry at `vaddr`, if it lies in executable file bytes and
/// decodes as a function start.
pub(crate) fn verify_entry(image: &Image, vaddr: u64) -> Option<u64> {
    let offset = image.offset_of(vaddr, 1, true)?;
    let window = image.bytes.get(offset as usize..)?;
    let window = &window[..window.len().min(64)];
    x86::plausible_entry(window, vaddr).then_some(offset)
}
