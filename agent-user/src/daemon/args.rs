//! How the sensor is run: the flags of `custodyd` without a subcommand (the command
//! line flattens them into its top level).

use std::path::PathBuf;

use crate::report::status;

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Run without a collector: report locally only.
    #[arg(long)]
    pub(crate) standalone: bool,
    /// Write one JSON object per event, one per line (to stdout unless --output).
    #[arg(long)]
    pub(crate) json: bool,
    /// Write the JSON lines to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Report every process on the host, not only agents and their descendants.
    #[arg(long)]
    pub(crate) observe_all: bool,
    /// Configuration file (TOML): sensor settings and declared agents. Without it,
    /// built-in defaults; the packaged unit passes /etc/custody/custodyd.toml.
    #[arg(long, short, value_name = "FILE", env = "CUSTODYD_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Where the status snapshot for `custodyd status` is written.
    #[arg(long, value_name = "FILE", default_value = status::DEFAULT_PATH)]
    pub(crate) status_file: PathBuf,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464) at /metrics.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    /// Benchmarking only: attach empty programs at the same points and report nothing.
    #[arg(long, hide = true)]
    pub(crate) floor: bool,
}
