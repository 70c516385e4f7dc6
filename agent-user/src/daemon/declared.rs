//! The kernel's declared-agent maps (`DECLARED_ENV`, `DECLARED_EXE`), filled from the
//! config at start so the exec program tracks those agents at the exec itself (no
//! start-up gap for what they fork before the daemon reads the exec record).

use agent_ebpf::policy::path_hash;
use anyhow::{Context, Result};
use aya::maps::HashMap as BpfHashMap;

use crate::identity::KernelSelectors;

/// `BPF_NOEXIST`: the first declaration of a value wins, as in user-space matching.
const NOEXIST: u64 = 1;

/// Write the selectors into the kernel maps; returns how many entries were written.
pub fn fill(ebpf: &mut aya::Ebpf, k: &KernelSelectors) -> Result<usize> {
    let mut n = 0;
    for (name, list) in [("DECLARED_ENV", &k.env), ("DECLARED_EXE", &k.exe)] {
        // A map the kernel programs do not use is not in the object (DECLARED_ENV
        // until the kernel scans the environment).
        let Some(m) = ebpf.map_mut(name) else {
            continue;
        };
        let mut map: BpfHashMap<_, u64, u32> = BpfHashMap::try_from(m)?;
        for (value, slot) in list {
            match map.insert(path_hash(value.as_bytes()), slot, NOEXIST) {
                Ok(()) => n += 1,
                // Already there: an earlier declaration of the same value.
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e).with_context(|| format!("{name}: {value}")),
            }
        }
    }
    Ok(n)
}
