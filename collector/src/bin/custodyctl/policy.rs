//! `custodyctl policy validate|apply|list|test`: policy directories of `*.cedar`
//! files. `validate` runs locally (same loader as the collector); the others talk to
//! the collector.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use custody_collector::client::AdminClient;
use custody_policy::{PolicyLoadError, PolicySet};
use custody_proto::admin::v1 as admin;

use crate::{explain, json, table, ts};

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Check a directory of *.cedar files against Custody's schema, locally; errors
    /// name file, line and column. Exits 1 if anything is wrong.
    Validate { dir: PathBuf },
    /// Validate and activate a directory on the collector (role admin); an invalid
    /// set is refused and the previous one stays in force.
    Apply { dir: PathBuf },
    /// The policies in force, with where each is enforced (kernel or collector).
    List,
    /// Dry run: what DIR (default: the set in force) would have denied over stored
    /// events, without acting.
    Test {
        dir: Option<PathBuf>,
        /// How far back, e.g. 24h, 30m, 7d.
        #[arg(long, default_value = "24h")]
        since: String,
        /// Print every denied decision, not just the per-policy counts.
        #[arg(long)]
        decisions: bool,
    },
}

/// The directory's policy files as (name, text), sorted by name.
fn read_dir(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut files = vec![];
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "cedar") && p.is_file() {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            files.push((p.display().to_string(), text));
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("{}: no *.cedar files", dir.display());
    }
    Ok(files)
}

fn to_proto(files: Vec<(String, String)>) -> Vec<admin::PolicyFile> {
    files
        .into_iter()
        .map(|(name, text)| admin::PolicyFile { name, text })
        .collect()
}

pub fn validate(dir: &Path, as_json: bool) -> Result<()> {
    match PolicySet::load_dir(dir) {
        Ok(set) => {
            if as_json {
                return json(&set.list());
            }
            println!("{}: {} policies, valid", dir.display(), set.len());
            for w in set.warnings() {
                println!("warning: {w}");
            }
            Ok(())
        }
        Err(PolicyLoadError::Invalid(errors)) => {
            for e in &errors {
                eprintln!("{e}");
            }
            bail!("{} problem(s); nothing would be applied", errors.len())
        }
        Err(e) => Err(e.into()),
    }
}

fn print_info(info: &admin::PolicySetInfo) {
    println!(
        "policy set v{} applied by {} at {} ({} files){}",
        info.version,
        info.applied_by,
        ts(info.applied_ns),
        info.files.len(),
        if info.rules_action_id.is_empty() {
            String::new()
        } else {
            format!(", host rules sent as {}", info.rules_action_id)
        }
    );
    table(
        &[
            "id", "effect", "response", "severity", "enforced", "why", "file",
        ],
        info.policies
            .iter()
            .map(|p| {
                vec![
                    p.id.clone(),
                    p.effect.clone(),
                    p.response.clone(),
                    p.severity.clone(),
                    p.enforcement.clone(),
                    p.why.clone(),
                    format!("{}:{}", p.file, p.line),
                ]
            })
            .collect(),
    );
    for w in &info.warnings {
        println!("warning: {w}");
    }
}

pub async fn run(c: &mut AdminClient, cmd: &PolicyCmd, as_json: bool) -> Result<()> {
    match cmd {
        PolicyCmd::Validate { dir } => validate(dir, as_json),
        PolicyCmd::Apply { dir } => {
            let files = read_dir(dir)?;
            let info = c
                .apply_policies(admin::ApplyPoliciesRequest {
                    files: to_proto(files),
                })
                .await
                .map_err(explain)?
                .into_inner();
            if as_json {
                return json(&info);
            }
            print_info(&info);
            Ok(())
        }
        PolicyCmd::List => {
            let info = c
                .list_policies(admin::ListPoliciesRequest {})
                .await
                .map_err(explain)?
                .into_inner();
            if as_json {
                return json(&info);
            }
            print_info(&info);
            Ok(())
        }
        PolicyCmd::Test {
            dir,
            since,
            decisions,
        } => {
            let files = match dir {
                Some(d) => read_dir(d)?,
                None => vec![],
            };
            let back = custody_collector::units::parse_duration(since)?;
            let since_ns =
                custody_collector::clock::now_ns().saturating_sub(back.as_nanos() as u64);
            let r = c
                .dry_run_policies(admin::DryRunPoliciesRequest {
                    files: to_proto(files),
                    since_ns,
                    until_ns: 0,
                    max_events: 0,
                })
                .await
                .map_err(explain)?
                .into_inner();
            if as_json {
                return json(&r);
            }
            println!(
                "dry run over {} events since {}: {} decisions, {} denied{}",
                r.events,
                ts(since_ns),
                r.requests,
                r.denied,
                if r.truncated { " (truncated)" } else { "" }
            );
            let mut per: Vec<(&String, &u64)> = r.per_policy.iter().collect();
            per.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            table(
                &["policy", "would deny"],
                per.iter()
                    .map(|(p, n)| vec![p.to_string(), n.to_string()])
                    .collect(),
            );
            if *decisions {
                println!();
                table(
                    &[
                        "time", "host", "exec id", "action", "resource", "policy", "response",
                    ],
                    r.decisions
                        .iter()
                        .map(|d| {
                            vec![
                                ts(d.time_ns),
                                d.host.clone(),
                                d.exec_id.clone(),
                                d.action.clone(),
                                d.resource.clone(),
                                d.denied_by.join(","),
                                d.response.clone(),
                            ]
                        })
                        .collect(),
                );
            }
            Ok(())
        }
    }
}
