//! The one build every task shares: all of the workspace's binaries for a profile,
//! selected the same way each time.
//!
//! Cargo resolves dependency features over the packages a command selects, so
//! `cargo build -p agent-user` and `cargo build -p agent-user -p collector` compile many
//! shared crates (tokio, tonic, rustls …) twice over, with different features. When the
//! demo, the benchmarks and the packaging each picked their own packages, going from
//! one task to the next rebuilt ~300 crates in the same release profile. Here every
//! task builds the same selection (the workspace but the eBPF crate, which
//! agent-user's build script builds for its own target) and the same targets (`--bins`:
//! custodyd, custody-collector, custodyctl, collector-bench, policy-bench, xtask,
//! syscall-loop), so whichever task runs second finds everything built.
//!
//! `cargo test` over the same selection adds only the test targets: the dev-dependency
//! features it turns on are already on in this build (see docs/testing.md).

use std::path::PathBuf;

use anyhow::Result;

use crate::setup;
use crate::util::{cargo, exec, target_dir};

/// A cargo profile: `dev` (target/debug) or `release`, or a custom one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Profile<'a>(&'a str);

impl<'a> Profile<'a> {
    pub const DEV: Profile<'static> = Profile("dev");
    pub const RELEASE: Profile<'static> = Profile("release");

    /// A profile by name; `debug` is accepted for `dev`, as in the target directory.
    pub fn named(name: &'a str) -> Profile<'a> {
        match name {
            "debug" => Profile::DEV,
            n => Profile(n),
        }
    }

    pub fn name(self) -> &'a str {
        self.0
    }

    /// Where cargo puts this profile's binaries.
    pub fn bin_dir(self) -> PathBuf {
        target_dir().join(match self.0 {
            "dev" => "debug",
            n => n,
        })
    }
}

/// The package selection every task builds and tests with (the eBPF crate only builds
/// for bpfel-unknown-none, inside agent-user's build script).
pub const WORKSPACE: [&str; 3] = ["--workspace", "--exclude", "agent-ebpf"];

/// Build every binary of the workspace in `profile` (after the machine set-up, which
/// provides the eBPF toolchain) and return the directory they are in.
pub fn build(profile: Profile) -> Result<PathBuf> {
    setup::once()?;
    exec(
        cargo()
            // Every task's binaries run the sensor: a custodyd built without its kernel
            // programs is never what a task wants (and would be rebuilt next time).
            .env_remove("AYA_BUILD_SKIP")
            .args(["build", "--profile", profile.name()])
            .args(WORKSPACE)
            .arg("--bins"),
    )?;
    Ok(profile.bin_dir())
}
