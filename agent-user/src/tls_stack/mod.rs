//! Which TLS stack one ELF file carries, and at which *verified* file offsets its plaintext
//! read/write functions can be hooked.
//!
//! A uprobe attaches to a file (an inode) at a file offset, so the question "can Custody read
//! this process's TLS" is a question about each binary it maps, not about a path: a node under
//! nvm, a vendored libssl or a copied executable needs the same analysis as `/usr/bin/node`.
//! [`inspect`] answers it for one file, with no kernel access, as a plain synchronous function
//! the daemon runs off its event loop (`spawn_blocking`); [`cache::InspectionCache`] makes sure
//! each binary (by build id or content hash) is analysed once.
//!
//! Per stack:
//! - OpenSSL / BoringSSL with symbols ([`symbols`]): `SSL_write`, `SSL_read`, `*_ex`, entry.
//! - Go `crypto/tls` ([`go`]): `(*Conn).Write` / `(*Conn).Read` from `.gopclntab` (kept by
//!   stripped Go binaries), hooked at entry and at every `RET` inside them: goroutine stacks
//!   move, so a uretprobe (which rewrites the return address on the stack) is never used.
//! - BoringSSL without symbols, as in Bun ([`boringssl`]): found by the library's own
//!   `OPENSSL_PUT_ERROR` call sites (file string + reason codes) and confirmed by the
//!   unwind table, or reported as uncovered.
//! - rustls with the ring provider ([`rustls`]): ring's AEAD `seal`/`open`, found through
//!   ring's algorithm tables in data and checked for the ABI the programs read; with the
//!   aws-lc-rs provider ([`aws_lc`]), aws-lc's `EVP_AEAD_CTX_seal`/`_open` found by their
//!   error sites.
//!
//! Nothing here trusts the file: every offset is bounds-checked, every candidate decoded,
//! and anything odd becomes an [`Inspection::anomalies`] entry, never a panic or a hook.

pub mod aws_lc;
pub mod boringssl;
pub mod cache;
mod elf;
pub mod go;
pub mod rustls;
pub mod symbols;
mod unwind;
mod versions;
mod x86;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use std::path::Path;

pub use elf::Identity;

/// Bumped whenever the analysis changes what it finds, so cached results from an older
/// analyser are not reused.
pub const ANALYSIS_VERSION: u32 = 3;

/// Files larger than this are not read (the largest real agent binary seen, Claude Code's
/// Bun executable, is ~245 MB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// A TLS implementation recognised in a binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsStack {
    OpenSsl,
    BoringSsl,
    Rustls,
    GoCryptoTls,
}

impl TlsStack {
    pub fn name(self) -> &'static str {
        match self {
            TlsStack::OpenSsl => "openssl",
            TlsStack::BoringSsl => "boringssl",
            TlsStack::Rustls => "rustls",
            TlsStack::GoCryptoTls => "go-crypto-tls",
        }
    }
}

/// The plaintext function a hook point belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsFunction {
    /// `int SSL_write(SSL *ssl, const void *buf, int num)`
    SslWrite,
    /// `int SSL_read(SSL *ssl, void *buf, int num)`
    SslRead,
    /// `int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)`
    SslWriteEx,
    /// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`
    SslReadEx,
    /// `int SSL_get_fd(const SSL *ssl)`: ties an `SSL *` to its socket.
    SslGetFd,
    /// `int SSL_set_fd(SSL *ssl, int fd)`: ties an `SSL *` to its socket.
    SslSetFd,
    /// `func (c *crypto/tls.Conn) Write(b []byte) (int, error)`
    GoConnWrite,
    /// `func (c *crypto/tls.Conn) Read(b []byte) (int, error)`
    GoConnRead,
    /// ring's AEAD `seal(key, nonce, aad, in_out, cpu)`: one rustls record sent.
    RustlsSeal,
    /// ring's AEAD `open(key, nonce, aad, in_out, src, cpu)`: one rustls record received.
    RustlsOpen,
    /// aws-lc's `int EVP_AEAD_CTX_seal(ctx, out, out_len, max_out_len, nonce, nonce_len,
    /// in, in_len, ad, ad_len)`: one rustls record sent (aws-lc-rs provider).
    AwsLcSeal,
    /// aws-lc's `EVP_AEAD_CTX_open`, same arguments: one rustls record received.
    AwsLcOpen,
}

impl TlsFunction {
    /// A crypto provider's AEAD under rustls (ring's or aws-lc's): it sees no socket, so
    /// its records are tied to connections by the socket tracepoints that come with it.
    pub fn is_rustls_aead(self) -> bool {
        matches!(
            self,
            TlsFunction::RustlsSeal
                | TlsFunction::RustlsOpen
                | TlsFunction::AwsLcSeal
                | TlsFunction::AwsLcOpen
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            TlsFunction::SslWrite => "SSL_write",
            TlsFunction::SslRead => "SSL_read",
            TlsFunction::SslWriteEx => "SSL_write_ex",
            TlsFunction::SslReadEx => "SSL_read_ex",
            TlsFunction::SslGetFd => "SSL_get_fd",
            TlsFunction::SslSetFd => "SSL_set_fd",
            TlsFunction::GoConnWrite => "crypto/tls.(*Conn).Write",
            TlsFunction::GoConnRead => "crypto/tls.(*Conn).Read",
            TlsFunction::RustlsSeal => "ring aead seal (rustls)",
            TlsFunction::RustlsOpen => "ring aead open (rustls)",
            TlsFunction::AwsLcSeal => "EVP_AEAD_CTX_seal (aws-lc, rustls)",
            TlsFunction::AwsLcOpen => "EVP_AEAD_CTX_open (aws-lc, rustls)",
        }
    }
}

/// Where in the function the probe goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookSite {
    /// The function's first instruction: arguments are in their ABI registers.
    Entry,
    /// One `RET` instruction inside the function (Go): the return values are in registers
    /// and the stack has not been touched, unlike a uretprobe's trampoline.
    Return,
}

/// What made a hook point trustworthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// An exported (`.dynsym`) function symbol.
    DynamicSymbol,
    /// A `.symtab` function symbol (unstripped binary).
    StaticSymbol,
    /// Go's own function table (`.gopclntab`), found by section or by its magic.
    GoPclntab,
    /// BoringSSL's own error-reporting call sites inside a function the unwind table
    /// (`.eh_frame_hdr`) says starts there.
    BoringSslErrorSites,
    /// ring's AEAD algorithm tables in data, the functions they point at checked for the
    /// ABI the programs read (see [`rustls`]).
    RingAeadTable,
    /// aws-lc's `OPENSSL_PUT_ERROR(CIPHER, …)` call sites in `cipher/aead.c`, inside a
    /// function the unwind table says starts there (see [`aws_lc`]).
    AwsLcErrorSites,
}

/// One place to attach a uprobe: `file_offset` is what `UProbe::attach` takes for a target
/// file with no symbol; `vaddr` is where it sits in the ELF's address space (for logs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookPoint {
    pub function: TlsFunction,
    pub site: HookSite,
    pub file_offset: u64,
    pub vaddr: u64,
    pub evidence: Evidence,
}

/// One TLS stack found in a binary: its versions, the verified hook points (possibly none)
/// and what was tried, for the "uncovered TLS" report when nothing verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub stack: TlsStack,
    pub versions: Vec<String>,
    pub hooks: Vec<HookPoint>,
    pub tried: Vec<String>,
}

impl Finding {
    fn new(stack: TlsStack) -> Self {
        Finding {
            stack,
            versions: Vec::new(),
            hooks: Vec::new(),
            tried: Vec::new(),
        }
    }

    /// True when both a write and a read function have a hook (the plaintext is readable
    /// both ways).
    pub fn covered(&self) -> bool {
        let has = |fs: &[TlsFunction]| self.hooks.iter().any(|h| fs.contains(&h.function));
        has(&[
            TlsFunction::SslWrite,
            TlsFunction::SslWriteEx,
            TlsFunction::GoConnWrite,
            TlsFunction::RustlsSeal,
            TlsFunction::AwsLcSeal,
        ]) && has(&[
            TlsFunction::SslRead,
            TlsFunction::SslReadEx,
            TlsFunction::GoConnRead,
            TlsFunction::RustlsOpen,
            TlsFunction::AwsLcOpen,
        ])
    }
}

/// Everything known about one binary's TLS. Independent of the path it was read from: two
/// byte-identical copies give equal inspections (same identity, same offsets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspection {
    pub analysis_version: u32,
    pub identity: Identity,
    pub findings: Vec<Finding>,
    /// Things in the file that did not add up (a truncated pclntab, a candidate that failed
    /// verification, …): reported and counted, never hooked.
    pub anomalies: Vec<String>,
}

impl Inspection {
    /// Every verified hook point of every stack.
    pub fn hooks(&self) -> impl Iterator<Item = &HookPoint> {
        self.findings.iter().flat_map(|f| f.hooks.iter())
    }

    /// Stacks found whose plaintext Custody cannot read (no verified write+read hooks):
    /// what the daemon reports as uncovered TLS.
    pub fn uncovered(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| !f.covered())
    }

    pub fn finding(&self, stack: TlsStack) -> Option<&Finding> {
        self.findings.iter().find(|f| f.stack == stack)
    }
}

/// Why a file could not be inspected at all.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes, over the {max}-byte analysis limit")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("not an ELF file")]
    NotElf,
    #[error("malformed ELF: {0}")]
    Malformed(String),
    #[error("unsupported architecture {0} (only x86-64 is analysed)")]
    UnsupportedArch(String),
}

/// Reads and analyses one file. Synchronous and CPU-bound (up to a few seconds for a
/// 245 MB Bun executable): call it from `spawn_blocking`, or through the cache.
pub fn inspect(path: &Path) -> Result<Inspection, InspectError> {
    let bytes = read_file(path)?;
    inspect_bytes(&bytes)
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, InspectError> {
    let io = |source| InspectError::Io {
        path: path.display().to_string(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_FILE_BYTES {
        return Err(InspectError::TooLarge {
            path: path.display().to_string(),
            size,
            max: MAX_FILE_BYTES,
        });
    }
    std::fs::read(path).map_err(io)
}

/// Analyses an ELF image already in memory (the bytes of the whole file).
pub fn inspect_bytes(bytes: &[u8]) -> Result<Inspection, InspectError> {
    Ok(analyse(&elf::Image::parse(bytes)?))
}

fn analyse(image: &elf::Image) -> Inspection {
    let mut anomalies = Vec::new();
    let mut findings = Vec::new();

    if let Some(f) = symbols::find(image) {
        findings.push(f);
    }
    match go::find(image) {
        Ok(Some(f)) => findings.push(f),
        Ok(None) => {}
        Err(e) => anomalies.push(format!("go: {e}")),
    }
    // Stripped BoringSSL only when no SSL_* symbols already gave the answer.
    if !findings
        .iter()
        .any(|f| matches!(f.stack, TlsStack::BoringSsl | TlsStack::OpenSsl))
    {
        if let Some(f) = boringssl::find(image, &mut anomalies) {
            findings.push(f);
        }
    }
    if let Some(f) = rustls::find(image, &mut anomalies) {
        findings.push(f);
    }
    Inspection {
        analysis_version: ANALYSIS_VERSION,
        identity: image.identity(),
        findings,
        anomalies,
    }
}
