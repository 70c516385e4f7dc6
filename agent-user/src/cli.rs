//! The command line: `custodyd` runs the sensor; its subcommands check, enroll,
//! report status and clean up.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::daemon::{self, RunArgs};
use crate::report::status;
use crate::{bench, detach, enrollment, kernel};

#[derive(Parser)]
#[command(
    name = "custodyd",
    version,
    about = "Custody host sensor: traces agent processes with eBPF and reports their activity",
    long_about = "Custody host sensor.\n\n\
        Traces AI agent processes (declared in the config, or discovered because they call \
        an LLM API or speak MCP) and everything they spawn: exec, files, network, DNS and the \
        TLS plaintext of their HTTP/LLM/MCP calls. Credentials are reported only as keyed \
        fingerprints; payload excerpts are redacted.\n\n\
        Without a subcommand it runs the sensor: enrolled hosts ship to their collector \
        (see `custodyd enroll --help`), --standalone writes JSON lines locally. It checks \
        the kernel first and reports, per feature, what is active and what is degraded \
        (`custodyd check-kernel` shows the same report without starting).\n\n\
        Runs as root with these capabilities (the packaged unit allows no others): \
        CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE (load programs and maps, attach \
        tracepoints), CAP_SYS_ADMIN (uprobes on OpenSSL for TLS plaintext — the kernel \
        asks it for uprobe perf events — and mounting tracefs/bpffs where missing), \
        CAP_NET_ADMIN (the cgroup connect/sendmsg hooks), CAP_SYS_PTRACE and \
        CAP_DAC_READ_SEARCH (read /proc/PID/environ, cwd and exe of every user's \
        processes; take a quarantined process's sockets to shut them down), CAP_KILL \
        (kill, hold and continue processes). Without CAP_SYS_ADMIN everything but TLS \
        plaintext works.\n\n\
        Files: /etc/custody/custodyd.toml (config), /var/lib/custody (enrollment, keys, \
        spool, cached revocations and policy), /run/custody/custodyd-status.json (status), \
        /sys/fs/bpf/custody/HOST (pinned enforcement).\n\n\
        Environment: CUSTODYD_CONFIG (config file), CUSTODY_LOG (log filter, e.g. debug).",
    after_help = "Exit status: 0 after a clean stop (SIGTERM/SIGINT), 1 on an error.",
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Show whether the running sensor is healthy, and what to do if not.
    #[command(
        after_help = "Exit status: 0 healthy, 1 degraded (features missing, events lost, collector unreachable), 2 not running."
    )]
    Status {
        /// Status snapshot written by the daemon every second.
        #[arg(long, value_name = "FILE", default_value = status::DEFAULT_PATH)]
        status_file: PathBuf,
        /// Print the raw status JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark: replay synthetic records through the pipeline on one core.
    #[command(hide = true)]
    BenchPipeline {
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
    },
    /// Enroll this host with a collector (once per host, as root).
    #[command(
        long_about = "Enroll this host with a collector, once per host, as root.\n\n\
            The token comes from `custody-collector enroll-token` on the collector and is \
            single-use; it carries the fingerprint of the collector's CA, which is pinned \
            before anything else is trusted. The collector then issues this host a client \
            certificate for its host id (the config's [sensor] host_id, or the hostname). \
            The certificate, its key (0600) and the pinned CA are written to the state \
            directory (default /var/lib/custody); start the daemon afterwards \
            (systemctl enable --now custodyd).",
        after_help = "Example:\n  custodyd enroll --collector collector.example:7443 --token cst1.… --config /etc/custody/custodyd.toml"
    )]
    Enroll {
        /// Collector address, host:port (the port sensors and custodyctl use, 7443 by default).
        #[arg(long, value_name = "ADDR")]
        collector: String,
        /// One-time enrollment token (cst1.…); prefer the environment variable, which
        /// keeps it out of the process list.
        #[arg(
            long,
            value_name = "TOKEN",
            env = "CUSTODY_ENROLL_TOKEN",
            hide_env_values = true
        )]
        token: String,
        /// Configuration file (host id and state directory come from it), e.g.
        /// /etc/custody/custodyd.toml; without it, built-in defaults.
        #[arg(long, short, value_name = "FILE", env = "CUSTODYD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and exit (1 with file:line:column on an error).
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Report what this kernel offers custodyd (BTF, tracefs, bpffs, cgroup v2,
    /// program and map types, helpers, lockdown) without starting it.
    #[command(
        after_help = "Exit status: 0 everything available, 1 some parts would be degraded, 2 custodyd cannot run on this kernel."
    )]
    CheckKernel,
    /// Remove what a stopped sensor left pinned in bpffs (enforcement maps and hooks).
    #[command(
        long_about = "Remove what a stopped sensor left pinned in bpffs: the enforcement maps \
            and the links that keep the quarantine (cgroup connect/sendmsg) and kill hooks \
            attached under the config's pin_dir (default /sys/fs/bpf/custody/HOST). Used by \
            the package's removal; stops nothing else.\n\n\
            Refuses while a custodyd runs with the same state directory, and while \
            enforcement is in force — a network quarantine, a pending kill, or a process \
            held for vetting — naming the processes, unless --force.",
        after_help = "Exit status: 0 removed (or nothing was pinned), 1 error, 2 a custodyd is running, 3 enforcement in force (refused without --force)."
    )]
    Detach {
        /// Remove the pins even with enforcement in force: lifts the quarantine, drops
        /// pending kills, and kills processes still held for vetting (fail-closed).
        #[arg(long)]
        force: bool,
        /// Configuration file the sensor ran with (state directory, host id and
        /// pin_dir come from it), e.g. /etc/custody/custodyd.toml.
        #[arg(long, short, value_name = "FILE", env = "CUSTODYD_CONFIG")]
        config: Option<PathBuf>,
    },
}

pub(crate) fn run_cli(cli: Cli) -> Result<i32> {
    match cli.command {
        Some(Command::Status { status_file, json }) => status::show(&status_file, json),
        Some(Command::BenchPipeline { events }) => {
            bench::pipeline(events)?;
            Ok(0)
        }
        Some(Command::Enroll {
            collector,
            token,
            config,
        }) => {
            let cfg = match &config {
                Some(p) => Config::load(p)?,
                None => Config::default_config(),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(enrollment::enroll(
                &collector,
                &token,
                &cfg.host_id,
                &cfg.state_dir,
                &cfg.fleet_key,
            ))?;
            Ok(0)
        }
        Some(Command::CheckKernel) => Ok(kernel::support::check()),
        Some(Command::Detach { force, config }) => {
            let cfg = match &config {
                Some(p) => Config::load(p)?,
                None => Config::default_config(),
            };
            detach::run(&cfg, force)
        }
        Some(Command::CheckConfig { file }) => {
            let c = Config::load(&file)?;
            println!(
                "{}: ok ({} declared agents, host id {})",
                file.display(),
                c.agents.len(),
                c.host_id
            );
            Ok(0)
        }
        None => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(daemon::run(cli.run))?;
            Ok(0)
        }
    }
}
