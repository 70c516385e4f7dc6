//! What the unit tests that load the real eBPF programs share: skipping (or failing
//! under CUSTODY_REQUIRE_BPF=1) when they cannot, and cleaning up pins and
//! attachments when they end.

use std::path::PathBuf;

use crate::kernel::loader;

/// True when the kernel programs can be loaded here; otherwise says why and returns
/// false, or fails the test when CUSTODY_REQUIRE_BPF=1.
pub(crate) fn root_or_skip(name: &str) -> bool {
    let required = std::env::var("CUSTODY_REQUIRE_BPF").as_deref() == Ok("1");
    // SAFETY: no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        "needs root to load eBPF"
    } else if !loader::has_programs() {
        "was built with AYA_BUILD_SKIP=1 (no kernel programs)"
    } else {
        return true;
    };
    assert!(
        !required,
        "{name} {why}, and CUSTODY_REQUIRE_BPF=1 forbids skipping"
    );
    eprintln!("skipping {name}: {why}");
    false
}

/// Removes a test's pin directory when dropped.
pub(crate) struct PinCleanup(pub(crate) PathBuf);

impl Drop for PinCleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tracing attachments (the exit program clears kill marks), released in
/// parallel when the test ends.
pub(crate) struct Attached(pub(crate) loader::Links);

impl Drop for Attached {
    fn drop(&mut self) {
        loader::release(std::mem::take(&mut self.0));
    }
}
