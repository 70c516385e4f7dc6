//! The read-only commands: hosts, agents, credentials, events, chains, chain,
//! audit, alerts, whoami.

use std::collections::HashMap;

use anyhow::{Result, bail};
use custody_proto::admin::v1::{self as admin, get_chain_request::Target};

use custody_collector::signal;

use crate::{AdminClient, Cli, Cmd, explain, json, table, ts};

fn event_row(e: &admin::StoredEvent) -> Vec<String> {
    let ev = e.event.clone().unwrap_or_default();
    let p = ev.process.clone().unwrap_or_default();
    vec![
        ts(ev.time_ns),
        ev.host.clone(),
        ev.seq.to_string(),
        ev.kind_name().to_owned(),
        if p.agent_id.is_empty() {
            p.comm.clone()
        } else {
            format!("{} ({})", p.comm, p.agent_id)
        },
        custody_collector::event_kind::describe(&ev),
        e.chain_id.clone(),
    ]
}

/// Events with routine reads folded into one row per process and directory
/// ("412 routine reads under /usr/lib/python3.11"), at the first one's place.
fn folded_rows(evs: &[admin::StoredEvent]) -> Vec<Vec<String>> {
    let none = std::collections::HashSet::new();
    let plain: Vec<custody_proto::sensor::v1::Event> = evs
        .iter()
        .map(|e| e.event.clone().unwrap_or_default())
        .collect();
    let (rows, _) = signal::fold(&plain, &none, usize::MAX);
    rows.iter()
        .map(|r| match r {
            signal::Row::Event(i) => event_row(&evs[*i]),
            signal::Row::Fold { events, .. } => {
                let mut row = event_row(&evs[events[0]]);
                row[2] = String::new();
                row[3] = "routine".into();
                row[5] = format!("{} (--all shows them)", r.fold_text().unwrap_or_default());
                row
            }
        })
        .collect()
}

const EVENT_HEADERS: [&str; 7] = ["time", "host", "seq", "kind", "process", "what", "chain"];

/// Runs `cli.cmd` if it is a read-only command; false if it is not one.
pub async fn run(c: &mut AdminClient, cli: &Cli) -> Result<bool> {
    match &cli.cmd {
        Cmd::Hosts => {
            let hosts = c
                .list_hosts(admin::ListHostsRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .hosts;
            if cli.json {
                return json(&hosts).map(|()| true);
            }
            table(
                &[
                    "host",
                    "identity",
                    "connected",
                    "last seen",
                    "events",
                    "last seq",
                    "lag s",
                    "behind",
                    "behind s",
                    "drain/s",
                    "eta s",
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
                            if h.retired {
                                "retired".into()
                            } else if h.certs_refused > 0 {
                                format!("ok ({} refused)", h.certs_refused)
                            } else {
                                "ok".to_string()
                            },
                            if h.connected { "yes" } else { "no" }.into(),
                            ts(h.last_seen_ns),
                            h.events_stored.to_string(),
                            h.last_seq.to_string(),
                            (h.lag_ns / 1_000_000_000).to_string(),
                            format!(
                                "{}{}",
                                h.events_behind,
                                if h.lag_growing { " GROWING" } else { "" }
                            ),
                            (h.time_behind_ns / 1_000_000_000).to_string(),
                            h.drain_rate.to_string(),
                            if h.events_behind > 0 && h.catch_up_eta_s == 0 {
                                "-".into()
                            } else {
                                h.catch_up_eta_s.to_string()
                            },
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
                return json(&agents).map(|()| true);
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
                return json(&creds).map(|()| true);
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
            all,
        } => {
            let since_ns = match since {
                Some(s) => custody_collector::clock::now_ns()
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
                // Machine output is every event: a consumer folds as it likes.
                for e in &evs {
                    println!("{}", serde_json::to_string(e)?);
                }
            } else if *all {
                table(&EVENT_HEADERS, evs.iter().map(event_row).collect());
            } else {
                table(&EVENT_HEADERS, folded_rows(&evs));
            }
            // Following: the first routine read of a process under a directory says
            // that more are folded; the rest are not printed (--all prints them).
            let mut seen_routine = std::collections::HashSet::new();
            let none = std::collections::HashSet::new();
            if let Some(tail) = tail.as_mut() {
                while let Some(e) = tail.message().await.map_err(explain)? {
                    let routine = e
                        .event
                        .as_ref()
                        .and_then(|ev| signal::routine_read(ev, &none).map(|d| (ev, d)));
                    if !cli.json
                        && !*all
                        && let Some((ev, dir)) = routine
                    {
                        let exec = ev
                            .process
                            .as_ref()
                            .map(|p| p.exec_id.clone())
                            .unwrap_or_default();
                        if seen_routine.insert((exec, dir.clone())) {
                            let mut row = event_row(&e);
                            row[3] = "routine".into();
                            row[5] =
                                format!("routine reads under {dir} (folded; --all shows them)");
                            println!("{}", row.join("  "));
                        }
                        continue;
                    }
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
                return json(&chains).map(|()| true);
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
                return json(&chain).map(|()| true);
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
                return json(&alerts).map(|()| true);
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
                return json(&entries).map(|()| true);
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
                return json(&me).map(|()| true);
            }
            println!("{} ({})", me.name, me.role);
        }
        _ => return Ok(false),
    }
    Ok(true)
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
    if let Some(s) = signal::opaque_sentence(s.opaque_connections, s.opaque_processes) {
        println!("  not seen: {s}");
    }
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
        if !n.tls_uncovered.is_empty() {
            println!("{inner}  ! {}", n.tls_uncovered);
        }
        if n.opaque_connections > 0 {
            println!(
                "{inner}  ! {} opaque TLS connection{}",
                n.opaque_connections,
                if n.opaque_connections == 1 { "" } else { "s" }
            );
        }
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
