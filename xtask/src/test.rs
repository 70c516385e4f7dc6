use std::process::Command;

use anyhow::Result;

use crate::util::{exec, root};

pub fn run(lint: bool, extra: &[String]) -> Result<()> {
    crate::setup::run()?;
    let root = root();
    if lint {
        exec(Command::new("cargo").current_dir(&root).args(["fmt", "--all", "--", "--check"]))?;
        exec(Command::new("cargo")
            .current_dir(&root)
            .args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    }
    exec(Command::new("cargo")
        .current_dir(&root)
        .args(["test", "--workspace", "--exclude", "agent-ebpf", "--"])
        .args(extra))?;
    Ok(())
}
