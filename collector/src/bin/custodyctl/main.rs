//! `custodyctl`: the operator CLI for the collector's admin API.
//!
//! Connection settings come from flags, then environment (CUSTODY_COLLECTOR,
//! CUSTODY_TOKEN, CUSTODY_CA), then a TOML config file (--config / CUSTODY_CONFIG,
//! default ~/.config/custody/custodyctl.toml) with keys `collector`, `token`
//! (or `token_file`) and `ca`.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use custody_collector::client::{AdminClient, connect_admin};
use custody_proto::admin::v1 as admin;
use serde::Deserialize;

mod host;
mod policy;
mod read;
mod response;
mod status;

#[derive(Parser)]
#[command(name = "custodyctl", version, about = "Custody operator CLI")]
struct Cli {
    /// Collector address, host:port.
    #[arg(
        long,
        global = true,
        help_heading = "Connection (every command)",
        env = "CUSTODY_COLLECTOR"
    )]
    collector: Option<String>,
    /// Operator token (from `custody-collector operator-token`). On the command line
    /// it shows in every user's process list: prefer CUSTODY_TOKEN or --token-file.
    #[arg(
        long,
        global = true,
        help_heading = "Connection (every command)",
        env = "CUSTODY_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// File holding the operator token (keep it 0600).
    #[arg(
        long,
        global = true,
        help_heading = "Connection (every command)",
        env = "CUSTODY_TOKEN_FILE"
    )]
    token_file: Option<PathBuf>,
    /// The collector's CA certificate (its data dir's ca.pem).
    #[arg(
        long,
        global = true,
        help_heading = "Connection (every command)",
        env = "CUSTODY_CA"
    )]
    ca: Option<PathBuf>,
    /// TOML file with `collector`, `token` (or `token_file`) and `ca`, used for what
    /// the flags and environment do not set [default: ~/.config/custody/custodyctl.toml].
    #[arg(
        long,
        global = true,
        help_heading = "Connection (every command)",
        env = "CUSTODY_CONFIG"
    )]
    config: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true, help_heading = "Connection (every command)")]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hosts and sensor health.
    Hosts,
    /// Host identities: retire a lost or rebuilt host (role admin).
    Host {
        #[command(subcommand)]
        cmd: host::HostCmd,
    },
    /// Declared and discovered agents.
    Agents,
    /// Credentials seen (fingerprints only).
    Credentials,
    /// Stored events, newest first; --follow streams new ones.
    Events {
        /// Only this host's events (its host id).
        #[arg(long)]
        host: Option<String>,
        /// Only events of processes of this agent (agent id).
        #[arg(long)]
        agent: Option<String>,
        /// Only events of this chain (a chain id, or any exec id in it).
        #[arg(long)]
        chain: Option<String>,
        /// Only events of this process (exec id host:pid:start_ticks).
        #[arg(long)]
        exec: Option<String>,
        /// Event kind: exec, file_open, net, http_request, mcp, ...
        #[arg(long)]
        kind: Option<String>,
        /// Only events newer than this (e.g. 15m, 2h, 1d).
        #[arg(long)]
        since: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Keep printing new events as they are stored (Ctrl-C to stop).
        #[arg(long, short)]
        follow: bool,
        /// Every event: routine reads (loader, interpreter, package trees) are not
        /// folded into one line per process and directory.
        #[arg(long)]
        all: bool,
    },
    /// Chains, most recently active first.
    Chains {
        /// Only chains started by this human (login user or delegated subject).
        #[arg(long)]
        human: Option<String>,
        /// Only chains with a process on this host.
        #[arg(long)]
        host: Option<String>,
        /// At most this many chains.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One chain as a tree; ID is a chain id, an exec id or an event id.
    Chain {
        /// A chain id, an exec id (host:pid:start_ticks) or an event id.
        id: String,
    },
    /// The audit log, newest first; --verify checks its hash chain.
    Audit {
        /// At most this many records.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Recompute the hash chain and report the first altered or missing record.
        #[arg(long)]
        verify: bool,
    },
    /// Kill a process, an agent or a chain on every host (role responder).
    Kill {
        #[command(flatten)]
        scope: response::Scope,
        /// Why: recorded in the audit log and sent to the hosts.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        wait: response::Wait,
    },
    /// Cut the network of a process, an agent or a chain except to the collector,
    /// until released (role responder).
    Quarantine {
        #[command(flatten)]
        scope: response::Scope,
        /// Why: recorded in the audit log and sent to the hosts.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        wait: response::Wait,
    },
    /// Lift a quarantine (role responder).
    Release {
        #[command(flatten)]
        scope: response::ReleaseScope,
        /// Why: recorded in the audit log.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        wait: response::Wait,
    },
    /// Revoke a credential fleet-wide by fingerprint: holders are stopped now and
    /// any later sighting is stopped on sight (role responder).
    Revoke {
        /// hmac-sha256:... (see `custodyctl credentials`).
        #[arg(long)]
        credential: String,
        /// Why: recorded in the audit log, sent to the hosts and to issuer hooks.
        #[arg(long)]
        reason: String,
        /// Kill processes holding it (the default).
        #[arg(long, conflicts_with = "quarantine")]
        kill: bool,
        /// Quarantine processes holding it instead of killing them.
        #[arg(long)]
        quarantine: bool,
        /// Revoke a fingerprint no sensor has reported yet.
        #[arg(long)]
        allow_unknown: bool,
        #[command(flatten)]
        wait: response::Wait,
    },
    /// Response actions, newest first, with per-host confirmation.
    Actions {
        /// Only actions still in force.
        #[arg(long)]
        active: bool,
        /// At most this many actions.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One action in detail: per-host state, affected processes, timings.
    Action {
        /// The action id (act-…, from `custodyctl actions`).
        id: String,
    },
    /// Policies: validate (locally), apply, list, test (dry run).
    Policy {
        #[command(subcommand)]
        cmd: policy::PolicyCmd,
    },
    /// Policy alerts, newest first.
    Alerts {
        /// Only open (unacknowledged) alerts.
        #[arg(long)]
        open: bool,
        /// Only alerts of this chain.
        #[arg(long)]
        chain: Option<String>,
        /// At most this many alerts.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Acknowledge an alert, optionally assigning it (role responder).
    Ack {
        /// The alert id (al-…, from `custodyctl alerts`).
        id: String,
        /// Assign it to this person.
        #[arg(long)]
        assign: Option<String>,
    },
    /// Who the token belongs to.
    Whoami,
    /// Is the collector and its fleet healthy, and if not, what to do (exit code 0
    /// healthy, 1 degraded, 2 collector unreachable).
    Status,
}

#[derive(Deserialize, Default)]
struct FileConfig {
    collector: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
}

fn ts(ns: u64) -> String {
    if ns == 0 {
        return "-".into();
    }
    time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map(|s| s.chars().take(19).collect::<String>().replace('T', " "))
        .unwrap_or_else(|| ns.to_string())
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count()).min(60);
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let c: String = c.chars().take(60).collect();
                format!("{c:<width$}", width = w[i])
            })
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r);
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Whether the token was given as an argument (`--token T` or `--token=T`), not
/// through the environment or a file.
fn token_on_command_line() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--token" || a.to_string_lossy().starts_with("--token="))
}

/// Collector address, CA PEM and operator token from flags, environment and file.
fn settings(cli: &Cli) -> Result<(String, String, String)> {
    let cfg_path = cli.config.clone().or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/custody/custodyctl.toml"))
    });
    let file: FileConfig = match &cfg_path {
        Some(p) if p.exists() => toml::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        )
        .with_context(|| format!("{} is not valid custodyctl TOML", p.display()))?,
        Some(p) if cli.config.is_some() => bail!("config file {} does not exist", p.display()),
        _ => FileConfig::default(),
    };
    let where_ = cfg_path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the config file".into());
    let collector = cli.collector.clone().or(file.collector).ok_or_else(|| {
        anyhow!("no collector address: pass --collector HOST:PORT, set CUSTODY_COLLECTOR, or add `collector = \"HOST:PORT\"` to {where_}")
    })?;
    if token_on_command_line() {
        eprintln!(
            "custodyctl: warning: --token puts the operator token in the process list, where \
             every user of this machine can read it; use CUSTODY_TOKEN, --token-file or \
             `token_file` in {where_}"
        );
    }
    let token = match cli.token.clone().or(file.token) {
        Some(t) => t,
        None => match cli.token_file.clone().or(file.token_file) {
            Some(f) => std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read token_file {}", f.display()))?
                .trim()
                .to_owned(),
            None => bail!(
                "no operator token: set CUSTODY_TOKEN, pass --token-file PATH, or add `token_file = \"PATH\"` to {where_} \
                 (mint one with `custody-collector operator-token --role viewer --name NAME`)"
            ),
        },
    };
    let ca = cli.ca.clone().or(file.ca).ok_or_else(|| {
        anyhow!("no collector CA: pass --ca PATH, set CUSTODY_CA, or add `ca = \"PATH\"` to {where_} (it is ca.pem in the collector's data dir)")
    })?;
    let ca_pem = std::fs::read_to_string(&ca)
        .with_context(|| format!("cannot read CA file {}", ca.display()))?;
    Ok((collector, ca_pem, token))
}

/// Turns gRPC errors into advice.
fn explain(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unauthenticated => anyhow!(
            "the collector refused the operator token: {} (check CUSTODY_TOKEN / --token)",
            s.message()
        ),
        tonic::Code::PermissionDenied => anyhow!("not allowed: {}", s.message()),
        tonic::Code::Unavailable => anyhow!(
            "collector unavailable: {} (is custody-collector running, and is the CA right?)",
            s.message()
        ),
        tonic::Code::NotFound => anyhow!("{}", s.message()),
        _ => anyhow!("collector error ({:?}): {}", s.code(), s.message()),
    }
}

#[tokio::main]
async fn main() {
    // Like any Unix filter, stop quietly when the reader goes away (`custodyctl … | head`)
    // instead of failing on EPIPE. SAFETY: set before any other thread writes.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    if let Err(e) = run().await {
        eprintln!("custodyctl: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    let cli = Cli::parse();
    // Validation is local: no collector needed.
    if let Cmd::Policy {
        cmd: policy::PolicyCmd::Validate { dir },
    } = &cli.cmd
    {
        return policy::validate(dir, cli.json);
    }
    let (addr, ca_pem, token) = settings(&cli)?;
    if let Cmd::Status = cli.cmd {
        let code = match connect_admin(&addr, &ca_pem, &token).await {
            Ok(mut c) => status::run(&mut c, &addr, cli.json).await?,
            Err(e) => status::unreachable(&addr, &e, cli.json),
        };
        std::process::exit(code);
    }
    let mut c = connect_admin(&addr, &ca_pem, &token).await?;
    if read::run(&mut c, &cli).await? {
        return Ok(());
    }
    match &cli.cmd {
        Cmd::Kill {
            scope,
            reason,
            wait,
        }
        | Cmd::Quarantine {
            scope,
            reason,
            wait,
        } => {
            let verb = if matches!(cli.cmd, Cmd::Kill { .. }) {
                "kill"
            } else {
                "quarantine"
            };
            let req = admin::RespondRequest {
                verb: verb.into(),
                target: Some(scope.target()),
                reason: reason.clone(),
                ..Default::default()
            };
            response::act(&mut c, req, wait, cli.json).await?;
        }
        Cmd::Release {
            scope,
            reason,
            wait,
        } => {
            let req = admin::RespondRequest {
                verb: "release".into(),
                target: Some(scope.target()),
                reason: reason.clone(),
                ..Default::default()
            };
            response::act(&mut c, req, wait, cli.json).await?;
        }
        Cmd::Revoke {
            credential,
            reason,
            quarantine,
            allow_unknown,
            wait,
            ..
        } => {
            let req = admin::RespondRequest {
                verb: "revoke".into(),
                target: Some(admin::respond_request::Target::Credential(
                    credential.clone(),
                )),
                reason: reason.clone(),
                revoke_mode: if *quarantine { "quarantine" } else { "kill" }.into(),
                allow_unknown: *allow_unknown,
            };
            response::act(&mut c, req, wait, cli.json).await?;
        }
        Cmd::Policy { cmd } => policy::run(&mut c, cmd, cli.json).await?,
        Cmd::Host { cmd } => host::run(&mut c, cmd, cli.json).await?,
        Cmd::Ack { id, assign } => {
            let a = c
                .update_alert(admin::UpdateAlertRequest {
                    id: id.clone(),
                    acknowledge: true,
                    assignee: assign.clone().unwrap_or_default(),
                })
                .await
                .map_err(explain)?
                .into_inner();
            if cli.json {
                return json(&a);
            }
            println!("{} {} by {}", a.id, a.status, a.acknowledged_by);
        }
        Cmd::Actions { active, limit } => response::list(&mut c, *active, *limit, cli.json).await?,
        Cmd::Action { id } => {
            let a = c
                .get_action(admin::GetActionRequest { id: id.clone() })
                .await
                .map_err(explain)?
                .into_inner();
            if cli.json {
                return json(&a);
            }
            response::print_action(&a);
        }
        _ => unreachable!("read-only commands are handled in read.rs"),
    }
    Ok(())
}
