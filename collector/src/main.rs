//! `custody-collector`: the collector server, and the commands that mint secrets
//! for it (enrollment tokens for hosts, operator tokens for people).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use custody_collector::auth::{Role, TokenStore};
use custody_collector::pki::Pki;
use custody_collector::retention::Retention;
use custody_collector::units::{parse_bytes, parse_duration};
use custody_collector::{Collector, CollectorConfig};

#[derive(Parser)]
#[command(name = "custody-collector", version, about = "Custody collector")]
struct Cli {
    /// Data directory: CA, token records and the sled store.
    #[arg(
        long,
        global = true,
        env = "CUSTODY_DATA_DIR",
        default_value = "/var/lib/custody-collector"
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the collector (sensor ingest and admin API on one mTLS port).
    Serve {
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: SocketAddr,
        /// Extra DNS name or IP address for the server certificate (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Delete events older than this (e.g. 30d); "0" keeps them forever.
        #[arg(long, default_value = "30d")]
        retention_age: String,
        /// Delete the oldest events while stored events exceed this size (e.g. 50GiB).
        #[arg(long)]
        retention_max_bytes: Option<String>,
        #[arg(long, default_value = "60s")]
        retention_interval: String,
        /// TOML file of issuer hooks called when a credential is revoked
        /// ([[revocation_hook]] tables: name, kinds, url, method, form|json, headers).
        #[arg(long)]
        revocation_hooks: Option<PathBuf>,
    },
    /// Check the audit log's hash chain offline (the collector must be stopped);
    /// exits 1 and names the first broken record if it was tampered with.
    VerifyAudit,
    /// Print a one-time enrollment token for a host.
    EnrollToken {
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Only this host id may enroll with the token.
        #[arg(long)]
        host: Option<String>,
    },
    /// Print a new operator token for the admin API and custodyctl.
    OperatorToken {
        #[arg(long)]
        role: Role,
        #[arg(long)]
        name: String,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            listen,
            sans,
            retention_age,
            retention_max_bytes,
            retention_interval,
            revocation_hooks,
        } => {
            let age = parse_duration(&retention_age)?;
            let mut cfg = CollectorConfig::new(&cli.data_dir, listen);
            cfg.sans = sans;
            cfg.retention = Retention {
                max_age: (!age.is_zero()).then_some(age),
                max_bytes: retention_max_bytes
                    .as_deref()
                    .map(parse_bytes)
                    .transpose()?,
            };
            cfg.retention_interval = parse_duration(&retention_interval)?;
            if let Some(p) = &revocation_hooks {
                cfg.revocation_hooks = custody_collector::response::hook::load(p)?;
            }
            let mut c = Collector::start(cfg).await?;
            // Tests and scripts read these lines.
            println!("listening on {}", c.addr);
            println!("ca fingerprint {}", c.ca_fingerprint);
            println!("ui on {}", custody_collector::ui::url(c.addr));
            tokio::select! {
                r = c.wait() => r?,
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("shutting down");
                    c.shutdown().await?;
                }
            }
        }
        Cmd::EnrollToken { ttl, host } => {
            let pki = Pki::load_or_create(&cli.data_dir, &[])?;
            let tokens = TokenStore::open(&cli.data_dir)?;
            let (token, _) = tokens
                .mint_enroll(&pki.ca_fingerprint, parse_duration(&ttl)?, host.as_deref())
                .context("minting enrollment token")?;
            println!("{token}");
        }
        Cmd::VerifyAudit => {
            let store = custody_collector::store::Store::open(
                &custody_collector::server::store_dir(&cli.data_dir),
            )?;
            let r = custody_collector::audit::AuditLog::verify(&store)?;
            if r.intact {
                println!(
                    "audit log intact: {} records, head {}",
                    r.records, r.head_hash
                );
            } else {
                println!(
                    "audit log BROKEN at record {}: {} ({} records read)",
                    r.first_bad_seq, r.problem, r.records
                );
                std::process::exit(1);
            }
        }
        Cmd::OperatorToken { role, name } => {
            let tokens = TokenStore::open(&cli.data_dir)?;
            println!("{}", tokens.mint_operator(&name, role)?);
        }
    }
    Ok(())
}
