//! `custodyctl`: the operator CLI for the collector's admin API.
//!
//! Connection settings come from flags, then environment (CUSTODY_COLLECTOR,
//! CUSTODY_TOKEN, CUSTODY_CA), then a TOML config file (--config / CUSTODY_CONFIG,
//! default ~/.config/custody/custodyctl.toml) with keys `collector`, `token`
//! (or `token_file`) and `ca`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use custody_collector::client::{AdminClient, connect_admin};
use custody_proto::admin::v1::{self as admin, get_chain_request::Target};
use serde::Deserialize;

mod policy;
mod response;

#[derive(Parser)]
#[command(name = "custodyctl", version, about = "Custody operator CLI")]
struct Cli {
    /// Collector address, host:port.
    #[arg(long, global = true, env = "CUSTODY_COLLECTOR")]
    collector: Option<String>,
    /// Operator token (from `custody-collector operator-token`).
    #[arg(long, global = true, env = "CUSTODY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The collector's CA certificate (its data dir's ca.pem).
    #[arg(long, global = true, env = "CUSTODY_CA")]
    ca: Option<PathBuf>,
    #[arg(long, global = true, env = "CUSTODY_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hosts and sensor health.
    Hosts,
    /// Declared and discovered agents.
    Agents,
    /// Credentials seen (fingerprints only).
    Credentials,
    /// Stored events, newest first; --follow streams new ones.
    Events {
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        chain: Option<String>,
        #[arg(long)]
        exec: Option<String>,
        /// Event kind: exec, file_open, net, http_request, mcp, ...
        #[arg(long)]
        kind: Option<String>,
        /// Only events newer than this (e.g. 15m, 2h, 1d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, short)]
        follow: bool,
    },
    /// Chains, most recently active first.
    Chains {
        #[arg(long)]
        human: Option<String>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One chain as a tree; ID is a chain id, an exec id or an event id.
    Chain { id: String },
    /// The audit log, newest first; --verify checks its hash chain.
    Audit {
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
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        wait: response::Wait,
    },
    /// Lift a quarantine (role responder).
    Release {
        #[command(flatten)]
        scope: response::ReleaseScope,
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
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One action in detail: per-host state, affected processes, timings.
    Action { id: String },
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
        #[arg(long)]
        chain: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Acknowledge an alert, optionally assigning it (role responder).
    Ack {
        id: String,
        #[arg(long)]
        assign: Option<String>,
    },
    /// Who the token belongs to.
    Whoami,
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

async fn connect(cli: &Cli) -> Result<AdminClient> {
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
    let token = match cli.token.clone().or(file.token) {
        Some(t) => t,
        None => match file.token_file {
            Some(f) => std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read token_file {}", f.display()))?
                .trim()
                .to_owned(),
            None => bail!(
                "no operator token: pass --token, set CUSTODY_TOKEN, or add `token_file = \"PATH\"` to {where_} \
                 (mint one with `custody-collector operator-token --role viewer --name NAME`)"
            ),
        },
    };
    let ca = cli.ca.clone().or(file.ca).ok_or_else(|| {
        anyhow!("no collector CA: pass --ca PATH, set CUSTODY_CA, or add `ca = \"PATH\"` to {where_} (it is ca.pem in the collector's data dir)")
    })?;
    let ca_pem = std::fs::read_to_string(&ca)
        .with_context(|| format!("cannot read CA file {}", ca.display()))?;
    connect_admin(&collector, &ca_pem, &token).await
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

fn event_row(e: &admin::StoredEvent) -> Vec<String> {
    let ev = e.event.clone().unwrap_or_default();
    let p = ev.process.clone().unwrap_or_default();
    vec![
        ts(ev.time_ns),
        ev.host.clone(),
        ev.seq.to_string(),
        custody_collector::query::kind_name(&ev.kind).to_owned(),
        if p.agent_id.is_empty() {
            p.comm.clone()
        } else {
            format!("{} ({})", p.comm, p.agent_id)
        },
        custody_collector::query::describe(&ev),
        e.chain_id.clone(),
    ]
}

const EVENT_HEADERS: [&str; 7] = ["time", "host", "seq", "kind", "process", "what", "chain"];

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
    let mut c = connect(&cli).await?;
    match &cli.cmd {
        Cmd::Hosts => {
            let hosts = c
                .list_hosts(admin::ListHostsRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .hosts;
            if cli.json {
                return json(&hosts);
            }
            table(
                &[
                    "host",
                    "connected",
                    "last seen",
                    "events",
                    "last seq",
                    "lag s",
                    "spool",
                    "dropped",
                    "rejected",
                    "version",
                ],
                hosts
                    .iter()
                    .map(|h| {
                        vec![
                            h.host_id.clone(),
                            if h.connected { "yes" } else { "no" }.into(),
                            ts(h.last_seen_ns),
                            h.events_stored.to_string(),
                            h.last_seq.to_string(),
                            (h.lag_ns / 1_000_000_000).to_string(),
                            h.spool_depth.to_string(),
                            h.spool_dropped.to_string(),
                            h.batches_rejected.to_string(),
                            h.sensor_version.clone(),
                        ]
                    })
                    .collect(),
            );
        }
        Cmd::Agents => {
            let agents = c
                .list_agents(admin::ListAgentsRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .agents;
            if cli.json {
                return json(&agents);
            }
            table(
                &[
                    "agent",
                    "name",
                    "origin",
                    "hosts",
                    "processes",
                    "last seen",
                    "evidence",
                ],
                agents
                    .iter()
                    .map(|a| {
                        vec![
                            a.agent_id.clone(),
                            a.name.clone(),
                            a.origin.clone(),
                            a.hosts.join(","),
                            a.process_count.to_string(),
                            ts(a.last_seen_ns),
                            a.evidence.first().cloned().unwrap_or_default(),
                        ]
                    })
                    .collect(),
            );
        }
        Cmd::Credentials => {
            let creds = c
                .list_credentials(admin::ListCredentialsRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .credentials;
            if cli.json {
                return json(&creds);
            }
            table(
                &[
                    "fingerprint",
                    "kind",
                    "hosts",
                    "agents",
                    "held by",
                    "used by",
                    "last seen",
                ],
                creds
                    .iter()
                    .map(|k| {
                        vec![
                            k.fingerprint.clone(),
                            k.kind.clone(),
                            k.hosts.join(","),
                            k.agents.join(","),
                            k.held_by.len().to_string(),
                            k.used_by.len().to_string(),
                            ts(k.last_seen_ns),
                        ]
                    })
                    .collect(),
            );
        }
        Cmd::Events {
            host,
            agent,
            chain,
            exec,
            kind,
            since,
            limit,
            follow,
        } => {
            let since_ns = match since {
                Some(s) => custody_collector::auth::now_ns()
                    .saturating_sub(custody_collector::units::parse_duration(s)?.as_nanos() as u64),
                None => 0,
            };
            let filter = admin::EventFilter {
                host: host.clone().unwrap_or_default(),
                agent_id: agent.clone().unwrap_or_default(),
                chain_id: chain.clone().unwrap_or_default(),
                exec_id: exec.clone().unwrap_or_default(),
                kind: kind.clone().unwrap_or_default(),
                since_ns,
                until_ns: 0,
            };
            let mut tail = if *follow {
                Some(
                    c.tail_events(admin::TailEventsRequest {
                        filter: Some(filter.clone()),
                    })
                    .await
                    .map_err(explain)?
                    .into_inner(),
                )
            } else {
                None
            };
            let mut evs = c
                .list_events(admin::ListEventsRequest {
                    filter: Some(filter),
                    limit: *limit,
                    page_token: String::new(),
                    ascending: false,
                })
                .await
                .map_err(explain)?
                .into_inner()
                .events;
            evs.reverse();
            if cli.json {
                for e in &evs {
                    println!("{}", serde_json::to_string(e)?);
                }
            } else {
                table(&EVENT_HEADERS, evs.iter().map(event_row).collect());
            }
            if let Some(tail) = tail.as_mut() {
                while let Some(e) = tail.message().await.map_err(explain)? {
                    if cli.json {
                        println!("{}", serde_json::to_string(&e)?);
                    } else {
                        println!("{}", event_row(&e).join("  "));
                    }
                }
            }
        }
        Cmd::Chains { human, host, limit } => {
            let chains = c
                .list_chains(admin::ListChainsRequest {
                    limit: *limit,
                    human: human.clone().unwrap_or_default(),
                    host: host.clone().unwrap_or_default(),
                })
                .await
                .map_err(explain)?
                .into_inner()
                .chains;
            if cli.json {
                return json(&chains);
            }
            table(
                &[
                    "chain",
                    "human",
                    "hosts",
                    "agents",
                    "processes",
                    "last active",
                ],
                chains
                    .iter()
                    .map(|s| {
                        vec![
                            s.chain_id.clone(),
                            if s.human.is_empty() {
                                "?".into()
                            } else {
                                format!("{} ({})", s.human, s.human_source)
                            },
                            s.hosts.join(","),
                            s.agents.join(","),
                            s.process_count.to_string(),
                            ts(s.last_seen_ns),
                        ]
                    })
                    .collect(),
            );
        }
        Cmd::Chain { id } => {
            let target = if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                Target::EventId(id.clone())
            } else {
                Target::ExecId(id.clone())
            };
            // Chain ids are root exec ids, so the exec-id lookup finds both.
            let chain = c
                .get_chain(admin::GetChainRequest {
                    target: Some(target),
                    event_limit: 1000,
                })
                .await
                .map_err(explain)?
                .into_inner();
            if cli.json {
                return json(&chain);
            }
            print_tree(&chain);
        }
        Cmd::Audit { verify: true, .. } => {
            let r = c
                .verify_audit(admin::VerifyAuditRequest {})
                .await
                .map_err(explain)?
                .into_inner();
            if cli.json {
                json(&r)?;
            } else if r.intact {
                println!(
                    "audit log intact: {} records, head hash {}",
                    r.records, r.head_hash
                );
            }
            if !r.intact {
                bail!(
                    "audit log broken at record {}: {}",
                    r.first_bad_seq,
                    r.problem
                );
            }
        }
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
        Cmd::Alerts { open, chain, limit } => {
            let alerts = c
                .list_alerts(admin::ListAlertsRequest {
                    limit: *limit,
                    chain_id: chain.clone().unwrap_or_default(),
                    status: if *open { "open".into() } else { String::new() },
                    severity: String::new(),
                })
                .await
                .map_err(explain)?
                .into_inner()
                .alerts;
            if cli.json {
                return json(&alerts);
            }
            table(
                &[
                    "id", "time", "severity", "policy", "action", "resource", "chain", "human",
                    "response", "enforced", "status",
                ],
                alerts
                    .iter()
                    .map(|a| {
                        vec![
                            a.id.clone(),
                            ts(a.time_ns),
                            a.severity.clone(),
                            a.policy_id.clone(),
                            a.action.clone(),
                            a.resource.clone(),
                            a.chain_id.clone(),
                            a.human.clone(),
                            if a.response_action_id.is_empty() {
                                a.response.clone()
                            } else {
                                format!("{} ({})", a.response, a.response_action_id)
                            },
                            a.enforced.clone(),
                            a.status.clone(),
                        ]
                    })
                    .collect(),
            );
        }
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
        Cmd::Audit { limit, .. } => {
            let entries = c
                .get_audit(admin::GetAuditRequest {
                    limit: *limit,
                    since_ns: 0,
                })
                .await
                .map_err(explain)?
                .into_inner()
                .entries;
            if cli.json {
                return json(&entries);
            }
            table(
                &[
                    "seq",
                    "time",
                    "actor",
                    "role",
                    "action",
                    "target",
                    "result",
                    "reason",
                    "action id",
                ],
                entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.seq.to_string(),
                            ts(e.time_ns),
                            e.actor.clone(),
                            e.role.clone(),
                            e.action.clone(),
                            e.target.clone(),
                            e.result.clone(),
                            e.reason.clone(),
                            e.action_id.clone(),
                        ]
                    })
                    .collect(),
            );
        }
        Cmd::Whoami => {
            let me = c
                .who_am_i(admin::WhoAmIRequest {})
                .await
                .map_err(explain)?
                .into_inner();
            if cli.json {
                return json(&me);
            }
            println!("{} ({})", me.name, me.role);
        }
    }
    Ok(())
}

/// Prints a chain as a tree: hosts, processes, agents, credentials, actions, and
/// the kind of each hop.
fn print_tree(chain: &admin::Chain) {
    let s = chain.summary.clone().unwrap_or_default();
    println!(
        "chain {}\n  human: {}\n  hosts: {}\n  agents: {}",
        s.chain_id,
        if s.human.is_empty() {
            "unknown".into()
        } else {
            format!("{} ({})", s.human, s.human_source)
        },
        s.hosts.join(", "),
        if s.agents.is_empty() {
            "-".into()
        } else {
            s.agents.join(", ")
        },
    );
    if !chain.path_from_root.is_empty() {
        println!("  path: {}", chain.path_from_root.join(" -> "));
    }
    let mut kids: HashMap<&str, Vec<&admin::ChainNode>> = HashMap::new();
    for n in &chain.nodes {
        kids.entry(n.upstream.as_str()).or_default().push(n);
    }
    let edge = |from: &str, to: &str| {
        chain
            .edges
            .iter()
            .find(|e| e.from_exec_id == from && e.to_exec_id == to)
            .map(|e| {
                if e.detail.is_empty() {
                    e.kind.clone()
                } else {
                    format!("{} {}", e.kind, e.detail)
                }
            })
            .unwrap_or_default()
    };
    fn walk(
        n: &admin::ChainNode,
        prefix: &str,
        last: bool,
        kids: &HashMap<&str, Vec<&admin::ChainNode>>,
        edge: &dyn Fn(&str, &str) -> String,
    ) {
        let branch = if last { "└─" } else { "├─" };
        let via = if n.upstream.is_empty() {
            String::new()
        } else {
            format!("[{}] ", edge(&n.upstream, &n.exec_id))
        };
        let agent = if n.agent_id.is_empty() {
            String::new()
        } else {
            format!(" agent={}", n.agent_id)
        };
        let who = n
            .principal
            .as_ref()
            .filter(|p| !p.login_user.is_empty())
            .map(|p| format!(" user={}", p.login_user))
            .unwrap_or_default();
        println!(
            "{prefix}{branch}{via}{} {} {}{agent}{who}",
            n.host, n.exec_id, n.exe
        );
        let inner = format!("{prefix}{}", if last { "   " } else { "│  " });
        for c in &n.credentials {
            println!(
                "{inner}  credential {} {} ({} {} {})",
                c.kind, c.fingerprint, c.usage, c.source, c.location
            );
        }
        for a in &n.actions {
            println!("{inner}  · {a}");
        }
        let children = kids.get(n.exec_id.as_str()).cloned().unwrap_or_default();
        for (i, c) in children.iter().enumerate() {
            walk(c, &inner, i + 1 == children.len(), kids, edge);
        }
    }
    let roots = kids.get("").cloned().unwrap_or_default();
    for (i, r) in roots.iter().enumerate() {
        walk(r, "  ", i + 1 == roots.len(), &kids, &edge);
    }
    if chain.events_truncated {
        println!("  (events truncated)");
    }
}
