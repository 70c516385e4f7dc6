use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Clone, Copy)]
pub enum Which {
    /// Syscall overhead (untracked / tracked vs floor), daemon events/s and RSS.
    Sensor,
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Sensor => anyhow::bail!("sensor bench not built yet"),
    }
}
