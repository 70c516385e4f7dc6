//! custodyctl's response commands: kill, quarantine, release, revoke, and the
//! action list. An action waits (by default) for every connected host to confirm,
//! then prints what each host did and how long it took.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use custody_collector::client::AdminClient;
use custody_proto::admin::v1::{self as admin, respond_request::Target};

use crate::{explain, json, table, ts};

/// What an action is aimed at; exactly one.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct Scope {
    /// A process: its exec id, HOST:PID:START_TICKS (see `custodyctl chain`).
    #[arg(long)]
    process: Option<String>,
    /// Every process of this agent id on every host.
    #[arg(long)]
    agent: Option<String>,
    /// Every live process of this chain on every host.
    #[arg(long)]
    chain: Option<String>,
}

#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct ReleaseScope {
    #[arg(long)]
    process: Option<String>,
    #[arg(long)]
    agent: Option<String>,
    #[arg(long)]
    chain: Option<String>,
    /// Lift everything this quarantine action put in force.
    #[arg(long)]
    action: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct Wait {
    /// Return once the action is recorded, without waiting for hosts to confirm.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for confirmations, seconds.
    #[arg(long, default_value_t = 15)]
    wait: u64,
}

impl Scope {
    pub fn target(&self) -> Target {
        match (&self.process, &self.agent, &self.chain) {
            (Some(p), _, _) => Target::Process(p.clone()),
            (_, Some(a), _) => Target::Agent(a.clone()),
            (_, _, Some(c)) => Target::Chain(c.clone()),
            _ => unreachable!("clap requires one of --process, --agent, --chain"),
        }
    }
}

impl ReleaseScope {
    pub fn target(&self) -> Target {
        match (&self.process, &self.agent, &self.chain, &self.action) {
            (Some(p), ..) => Target::Process(p.clone()),
            (_, Some(a), ..) => Target::Agent(a.clone()),
            (_, _, Some(c), _) => Target::Chain(c.clone()),
            (.., Some(a)) => Target::Action(a.clone()),
            _ => unreachable!("clap requires one of the scopes"),
        }
    }
}

/// Issues an action and reports it.
pub async fn act(
    c: &mut AdminClient,
    req: admin::RespondRequest,
    wait: &Wait,
    as_json: bool,
) -> Result<()> {
    let started = Instant::now();
    let mut a = c.respond(req).await.map_err(explain)?.into_inner();
    if !wait.no_wait {
        let deadline = started + Duration::from_secs(wait.wait);
        // Hosts offline at issue time stay pending until they reconnect: waiting
        // for them here would only hide the answer from the others.
        while a.hosts.iter().any(|h| h.state == "sent") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            a = c
                .get_action(admin::GetActionRequest { id: a.id.clone() })
                .await
                .map_err(explain)?
                .into_inner();
        }
    }
    if as_json {
        json(&a)?;
    } else {
        print_action(&a);
    }
    match a.status.as_str() {
        "failed" => bail!("action {} failed on every host", a.id),
        "partial" => bail!("action {} only partly applied (see the hosts above)", a.id),
        _ => Ok(()),
    }
}

fn ms(ns: u64) -> String {
    if ns == 0 {
        "-".into()
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

pub fn print_action(a: &admin::Action) {
    println!(
        "action {}  {} {}={}  by {} ({}) at {}",
        a.id,
        a.kind,
        a.scope,
        a.target,
        a.operator,
        a.role,
        ts(a.issued_at_ns)
    );
    println!("  reason: {}", a.reason);
    let mut status = a.status.clone();
    if a.active {
        status.push_str(", in force");
    }
    if !a.released_by_action.is_empty() {
        status.push_str(&format!(", released by {}", a.released_by_action));
    }
    println!("  status: {status}");
    for n in &a.notes {
        println!("  note: {n}");
    }
    for h in &a.hooks {
        println!(
            "  issuer hook {}: {} ({}, {})",
            h.url,
            h.status,
            h.message,
            ms(h.duration_ns)
        );
    }
    let pending: Vec<&str> = a
        .hosts
        .iter()
        .filter(|h| h.state == "pending")
        .map(|h| h.host.as_str())
        .collect();
    if !pending.is_empty() {
        println!(
            "  pending (host offline; delivered when it reconnects): {}",
            pending.join(", ")
        );
    }
    table(
        &[
            "host",
            "state",
            "affected",
            "command→effect",
            "round trip",
            "message",
        ],
        a.hosts
            .iter()
            .map(|h| {
                vec![
                    if h.follow_up {
                        format!("{} (follow-up)", h.host)
                    } else {
                        h.host.clone()
                    },
                    h.state.clone(),
                    h.affected_exec_ids.len().to_string(),
                    ms(h.effect_ns),
                    ms(h.confirmed_ns.saturating_sub(h.sent_ns)),
                    h.message.clone(),
                ]
            })
            .collect(),
    );
}

pub async fn list(c: &mut AdminClient, active: bool, limit: u32, as_json: bool) -> Result<()> {
    let actions = c
        .list_actions(admin::ListActionsRequest {
            limit,
            active_only: active,
        })
        .await
        .map_err(explain)?
        .into_inner()
        .actions;
    if as_json {
        return json(&actions);
    }
    table(
        &[
            "id", "time", "kind", "target", "by", "status", "hosts", "slowest", "reason",
        ],
        actions
            .iter()
            .map(|a| {
                let main: Vec<&admin::HostDelivery> =
                    a.hosts.iter().filter(|h| !h.follow_up).collect();
                let done = main.iter().filter(|h| h.confirmed_ns > 0).count();
                let slowest = main.iter().map(|h| h.effect_ns).max().unwrap_or(0);
                let mut status = a.status.clone();
                if a.active {
                    status.push_str(" (in force)");
                }
                vec![
                    a.id.clone(),
                    ts(a.issued_at_ns),
                    a.kind.clone(),
                    format!("{}={}", a.scope, a.target),
                    a.operator.clone(),
                    status,
                    format!("{done}/{}", main.len()),
                    ms(slowest),
                    a.reason.clone(),
                ]
            })
            .collect(),
    );
    Ok(())
}
