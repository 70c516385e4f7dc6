//! Kernel-facing code, where an event starts: what the running kernel supports
//! (probed before anything is loaded), loading and attaching the programs, the BTF
//! offsets patched into them, the ring-buffer record decoder, and the tracefs /
//! bpffs / cgroup mounts and bpffs pins they rely on. Nothing here knows about
//! agents, credentials or the collector.

pub mod btf;
pub mod decode;
pub mod loader;
pub mod support;
#[cfg(test)]
pub(crate) mod test_support;
