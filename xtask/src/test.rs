use std::process::Command;

use anyhow::Result;

use crate::util::{exec, root};

pub fn run(lint: bool, extra: &[String]) -> Result<()> {
    crate::setup::run()?;
    let root = root();
    let cargo = || {
        let mut c = Command::new("cargo");
        c.current_dir(&root);
        c
    };
    if lint {
        exec(cargo().args(["fmt", "--all", "--", "--check"]))?;
        exec(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    }
    // End-to-end tests run the daemons as separate processes: build them first.
    exec(cargo().args(["build", "--bins"]))?;
    exec(
        cargo()
            .args(["test", "--workspace", "--exclude", "agent-ebpf", "--"])
            .args(extra),
    )?;
    Ok(())
}
