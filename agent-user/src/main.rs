//! custodyd — Custody's host sensor.
//!
//! Loads the kernel programs, follows agent processes (declared in the config, or
//! discovered by what they do), and reports their exec, file, network, DNS, TLS
//! (LLM / MCP / HTTP) activity with agent identities, human principals and credential
//! fingerprints.

mod bench;
mod cli;
mod clock;
mod config;
mod daemon;
mod detach;
mod enforce;
mod enrollment;
mod hold;
mod identity;
mod kernel;
mod kill_tree;
mod pipeline;
mod policy;
mod proctable;
mod report;
mod response;
mod revocation;
mod routine;
mod sighting;
mod users;
mod watch;

use clap::Parser;

fn main() {
    // Everything custodyd writes (state, spool, status, outputs, enrolled keys) is
    // for root only, whatever umask it was started with: the packaged unit sets
    // UMask=0077, a shell or another service manager may not.
    // SAFETY: umask only sets this process's file mode mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CUSTODY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = cli::Cli::parse();
    let code = match cli::run_cli(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("custodyd: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
