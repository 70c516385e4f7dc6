//! aws-lc's AEAD in Rust binaries on rustls with the aws-lc-rs provider (rustls 0.23's
//! default provider; Codex runs on it): `EVP_AEAD_CTX_seal` and `EVP_AEAD_CTX_open`, the
//! C functions aws-lc-rs calls once per TLS record sealed or opened, found without symbols
//! by aws-lc's own error sites.
//!
//! aws-lc keeps BoringSSL's `OPENSSL_PUT_ERROR(CIPHER, reason)`: a call with the library
//! (`ERR_LIB_CIPHER` = 30), the reason and the line as immediates and the source file's
//! name string (`…/crypto/fipsmodule/cipher/aead.c`) by address, exactly the shape
//! [`boringssl`](super::boringssl) reads for `ssl_lib.cc`. In line order:
//! - `EVP_AEAD_CTX_seal`: too large, buffer too small, output aliases input;
//! - `EVP_AEAD_CTX_open`: output aliases input, bad decrypt, buffer too small (then
//!   `EVP_AEAD_CTX_open_gather`'s two when the compiler inlined it).
//!
//! `_seal_scatter` / `_open_gather` have shapes of their own, so none is taken for
//! another. Each must be unique, a function start of the unwind index and a plausible
//! entry; the arguments the kernel programs read are the platform C ABI's.

use super::boringssl::{group_by_function, lib_error_sites, source_file_strings};
use super::elf::Image;
use super::unwind::FunctionStarts;
use super::{Evidence, HookPoint, HookSite, TlsFunction};

const ERR_LIB_CIPHER: u32 = 30;
const CIPHER_R_BAD_DECRYPT: u32 = 101;
const CIPHER_R_BUFFER_TOO_SMALL: u32 = 103;
const CIPHER_R_CTRL_NOT_IMPLEMENTED: u32 = 104;
const CIPHER_R_OUTPUT_ALIASES_INPUT: u32 = 115;
const CIPHER_R_TOO_LARGE: u32 = 117;

const SEAL_SHAPE: &[u32] = &[
    CIPHER_R_TOO_LARGE,
    CIPHER_R_BUFFER_TOO_SMALL,
    CIPHER_R_OUTPUT_ALIASES_INPUT,
];
const OPEN_SHAPE: &[u32] = &[
    CIPHER_R_OUTPUT_ALIASES_INPUT,
    CIPHER_R_BAD_DECRYPT,
    CIPHER_R_BUFFER_TOO_SMALL,
];
/// `EVP_AEAD_CTX_open_gather`'s sites, which follow `OPEN_SHAPE` when it is inlined.
const OPEN_GATHER_SHAPE: &[u32] = &[CIPHER_R_OUTPUT_ALIASES_INPUT, CIPHER_R_CTRL_NOT_IMPLEMENTED];

/// The verified seal/open hook points, or what was tried (for the finding's report).
pub(crate) fn find(image: &Image, anomalies: &mut Vec<String>) -> Result<Vec<HookPoint>, String> {
    let files = source_file_strings(image, &[b"cipher/aead.c\0", b"cipher/aead.cc\0"]);
    if files.is_empty() {
        return Err("no aws-lc cipher/aead.c name string to find error sites by".into());
    }
    let starts = FunctionStarts::from_image(image)
        .map_err(|e| format!("unwind index unusable ({e}): function starts unknown"))?;
    let sites: Vec<_> = files
        .iter()
        .flat_map(|&f| lib_error_sites(image, f, ERR_LIB_CIPHER))
        .collect();
    let by_function = group_by_function(&sites, &starts);
    let seal: Vec<u64> = by_function
        .iter()
        .filter(|(_, r)| r.as_slice() == SEAL_SHAPE)
        .map(|(&s, _)| s)
        .collect();
    let open: Vec<u64> = by_function
        .iter()
        .filter(|(_, r)| {
            r.as_slice() == OPEN_SHAPE
                || (r.starts_with(OPEN_SHAPE) && &r[OPEN_SHAPE.len()..] == OPEN_GATHER_SHAPE)
        })
        .map(|(&s, _)| s)
        .collect();
    let mut hooks = Vec::new();
    for (function, candidates) in [
        (TlsFunction::AwsLcSeal, seal),
        (TlsFunction::AwsLcOpen, open),
    ] {
        let [at] = candidates.as_slice() else {
            return Err(format!(
                "{}: {} functions with its error sites in {} aead.c sites: none hooked",
                function.name(),
                candidates.len(),
                sites.len()
            ));
        };
        let Some(file_offset) = super::symbols::verify_entry(image, *at) else {
            anomalies.push(format!(
                "aws-lc: {} candidate at {at:#x} does not decode as a function start",
                function.name()
            ));
            return Err(format!("{} candidate rejected", function.name()));
        };
        hooks.push(HookPoint {
            function,
            site: HookSite::Entry,
            file_offset,
            vaddr: *at,
            evidence: Evidence::AwsLcErrorSites,
        });
    }
    Ok(hooks)
}
