//! rustls in Rust binaries, stripped or not (Codex's static-pie musl build; reqwest/rustls
//! agents): detected by the panic-location strings Rust keeps even in stripped release
//! builds (`…/rustls-0.23.27/src/…`), with the crypto provider beside it (ring, aws-lc-rs).
//!
//! rustls has no stable exported plaintext API: its plaintext passes through generic,
//! monomorphised and usually inlined code (`Writer::write` → `CommonState::buffer_plaintext`
//! → the record layer's `encrypt_outgoing` → the provider's AEAD seal). No hook point is
//! offered for it yet, so the finding carries the version and what was tried, and the
//! daemon reports such a binary as uncovered TLS (opaque egress) instead of staying silent.

use super::elf::Image;
use super::versions;
use super::{Finding, TlsStack};

pub(crate) fn find(image: &Image) -> Option<Finding> {
    let rustls = versions::crate_versions(image.bytes, "rustls");
    if rustls.is_empty() {
        return None;
    }
    let mut finding = Finding::new(TlsStack::Rustls);
    finding.versions = rustls;
    for provider in ["ring", "aws-lc-rs", "aws-lc-sys"] {
        finding
            .versions
            .extend(versions::crate_versions(image.bytes, provider));
    }
    finding
        .tried
        .push("rustls panic-location strings (crate version)".into());
    finding.tried.push(
        "no plaintext hook for rustls: its write/read path is monomorphised and inlined, \
         with no symbol or stable code shape to verify"
            .into(),
    );
    Some(finding)
}
