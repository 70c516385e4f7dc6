//! `cargo xtask test`: set-up, `cargo fmt --check`, the shared dev build of every
//! binary (the end-to-end tests run custodyd, custody-collector, custodyctl and xtask as
//! processes), clippy, then `cargo test` over the same package selection, so the test
//! build adds only test targets to what `cargo xtask package --profile dev` or
//! `cargo xtask demo --dev` use. Which test goes where: docs/testing.md.

use anyhow::Result;

use crate::binaries::{self, Profile, WORKSPACE};
use crate::util::{cargo, exec};

pub fn run(lint: bool, extra: &[String]) -> Result<()> {
    if lint {
        // First: it needs no build and fails in a second.
        exec(cargo().args(["fmt", "--all", "--", "--check"]))?;
    }
    binaries::build(Profile::DEV)?;
    if lint {
        exec(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    }
    exec(
        cargo()
            // As in the build: the tests load the real kernel programs.
            .env_remove("AYA_BUILD_SKIP")
            .arg("test")
            .args(WORKSPACE)
            .arg("--")
            .args(extra),
    )?;
    Ok(())
}
