//! Pins in bpffs: what the daemon leaves in force across restarts (the enforcement
//! maps and the links that keep its hooks attached) lives under a directory named
//! after the map layout.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::programs::links::{FdLink, PinnedLink};

/// Bumped whenever a pinned map's layout changes: stale pins are then replaced.
pub const PIN_LAYOUT: &str = "custody-enforce-v1";

/// The pin directory for this layout: the layout version is part of the path (bpffs
/// holds only maps, programs and links), so a daemon with a new map layout never
/// reuses an incompatible pinned map.
pub fn prepare_pin_dir(base: &Path) -> Result<PathBuf> {
    let dir = base.join(PIN_LAYOUT);
    std::fs::create_dir_all(dir.join("links")).with_context(|| {
        format!(
            "creating pin dir {} (is bpffs mounted at /sys/fs/bpf?)",
            dir.display()
        )
    })?;
    Ok(dir)
}

/// Replace a pinned link: the new link is already attached (held by its fd) when
/// the previous daemon's pinned one is detached, so enforcement has no gap.
pub fn pin_replacing(link: FdLink, path: &Path) -> Result<()> {
    if let Ok(old) = PinnedLink::from_pin(path) {
        drop(old.unpin()?); // detaches the previous link
    }
    let _ = std::fs::remove_file(path);
    link.pin(path)
        .with_context(|| format!("pinning {}", path.display()))?;
    Ok(())
}
