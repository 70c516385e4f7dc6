//! Kernel-facing code, where an event starts: what the running kernel supports
//! (probed before anything is loaded), loading and attaching the programs, the BTF
//! offsets patched into them, the ring-buffer record decoder, and the tracefs /
//! bpffs / cgroup mounts and bpffs pins they rely on. Nothing here knows about
//! agents, credentials or the collector.

pub mod btf;
pub mod decode;
// Called by the daemon's per-binary TLS analysis once that is wired in; until then
// only its tests use it. Remove this allow when the daemon calls `attach_go`.
pub mod go_attach;
#[cfg(test)]
mod hello_tests;
pub mod loader;
pub mod mounts;
pub mod pins;
pub mod support;
#[cfg(test)]
pub(crate) mod test_support;
pub mod tls_attach;

/// One part of what the kernel offers (a probe at start) or of what the sensor runs
/// (an attached feature): `active` is false when it is missing or degraded, and
/// `detail` says where it was found or what goes without it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Feature {
    pub name: String,
    pub active: bool,
    pub detail: String,
}
