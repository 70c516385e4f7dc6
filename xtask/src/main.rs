//! Project tasks: `cargo xtask setup | build | test | demo | package | bench`.
//!
//! Every task installs what it needs itself, so the README's two commands work on a
//! fresh machine and in CI without anything installed by hand, and every task builds
//! through binaries.rs, so going from one task to another rebuilds nothing.

mod bench;
mod binaries;
mod demo;
mod package;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Custody build, test and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Make this machine ready to build and run Custody (idempotent).
    Setup,
    /// Set up and build every binary of the workspace (the build all tasks share);
    /// prints the directory the binaries are in.
    Build {
        /// The release profile (what the demo, benchmarks and packages use).
        #[arg(long, conflicts_with = "profile")]
        release: bool,
        /// Any cargo profile.
        #[arg(long, default_value = "dev")]
        profile: String,
    },
    /// Set up, build, lint and run every test (eBPF tests need root).
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The main job: three hosts (network namespaces), a collector, an enrolled
    /// custodyd per host and the finance story on the openai/mcp SDKs (needs root);
    /// prints the web UI address and what to look at, Ctrl-C tears down.
    Demo {
        /// Leave the collector and sensors up with no agents, for trying things by hand.
        #[arg(long)]
        no_scenario: bool,
        /// Collector port (on the demo bridge's address).
        #[arg(long, default_value_t = 7443)]
        port: u16,
        /// Use the debug binaries already built instead of building release ones (tests).
        #[arg(long, hide = true)]
        dev: bool,
    },
    /// Build the Debian packages custodyd and custody-collector (and, with --tarball,
    /// a custodyd tarball for other distributions) into target/packages.
    Package(package::Args),
    /// Run a benchmark and print ratios measured side by side.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::run(),
        Task::Build { release, profile } => {
            let profile = if release {
                binaries::Profile::RELEASE
            } else {
                binaries::Profile::named(&profile)
            };
            let dir = binaries::build(profile)?;
            println!("{}", dir.display());
            Ok(())
        }
        Task::Test { no_lint, args } => test::run(!no_lint, &args),
        Task::Bench { which } => bench::run(which),
        Task::Package(a) => package::run(a),
        Task::Demo {
            no_scenario,
            port,
            dev,
        } => demo::run(no_scenario, port, dev),
    }
}
