//! `custody-collector`: the collector server, and the commands that mint secrets
//! for it (enrollment tokens for hosts, operator tokens for people).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use custody_collector::Collector;
use custody_collector::auth::{Role, TokenStore};
use custody_collector::config::{DEFAULT_DATA_DIR, Flags, Settings};
use custody_collector::pki::Pki;
use custody_collector::units::parse_duration;

#[derive(Parser)]
#[command(
    name = "custody-collector",
    version,
    about = "Custody collector: joins every host's sensor events into chains of custody, \
             evaluates policy, serves the web UI and carries out responses fleet-wide",
    long_about = "Custody collector.\n\n\
        Sensors (custodyd) enroll with a one-time token and stream their events over mTLS; \
        the collector stores them (sled, in the data directory), joins them across hosts \
        into chains rooted at a human, evaluates the Cedar policies on every action, and \
        carries out kill / quarantine / revoke on every host. One port serves the sensors, \
        the admin API used by custodyctl, and the web UI (https://ADDR:PORT/).\n\n\
        Typical use: `custody-collector serve --config /etc/custody/collector.toml`, then \
        `custody-collector enroll-token` per host and `custody-collector operator-token` per \
        person."
)]
struct Cli {
    /// Data directory: CA, token records and the sled store [default:
    /// /var/lib/custody-collector, or `data_dir` in the serve config file].
    #[arg(long, global = true, env = "CUSTODY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the collector (sensor ingest and admin API on one mTLS port).
    Serve {
        /// TOML config file; its keys mirror these flags, and a flag given here wins
        /// over the file (see `check-config`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address for sensors, custodyctl and the web UI (one mTLS port)
        /// [default: 0.0.0.0:7443].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Extra DNS name or IP address for the server certificate (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Delete events older than this (e.g. 30d); "0" keeps them forever [default: 30d].
        #[arg(long)]
        retention_age: Option<String>,
        /// Delete the oldest events while stored events exceed this size (e.g. 50GiB).
        #[arg(long)]
        retention_max_bytes: Option<String>,
        /// How often retention runs [default: 60s].
        #[arg(long)]
        retention_interval: Option<String>,
        /// TOML file of issuer hooks called when a credential is revoked
        /// ([[revocation_hook]] tables: name, kinds, url, method, form|json, headers).
        #[arg(long)]
        revocation_hooks: Option<PathBuf>,
        /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP; keep it local
        /// or firewalled).
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Export events (repeatable; adds to the config file's [[export]] tables):
        /// jsonl:file:PATH, ocsf:file:PATH, jsonl:https://URL, ocsf:https://URL (POST
        /// of JSON lines), otlp:http://HOST:4317 (chains as OTLP/gRPC traces).
        #[arg(long = "export", value_name = "SPEC")]
        export: Vec<String>,
    },
    /// Validate a serve config file and print the settings it gives (defaults
    /// filled in); exits 1 naming the problem if it is invalid.
    CheckConfig { file: PathBuf },
    /// Check the audit log's hash chain offline (the collector must be stopped);
    /// exits 1 and names the first broken record if it was tampered with.
    VerifyAudit,
    /// Print a one-time enrollment token for a host.
    EnrollToken {
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Only this host id may enroll with the token. Needed to re-enroll a host
        /// that is already enrolled (a token for any host cannot take it over).
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

// The ingest and policy threads allocate and free the same events; glibc's arenas
// serialised them on a lock (a third of the evaluation thread's time in malloc/free
// and futex waits when measured).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    match cli.cmd {
        Cmd::Serve {
            config,
            listen,
            sans,
            retention_age,
            retention_max_bytes,
            retention_interval,
            revocation_hooks,
            metrics_listen,
            export,
        } => {
            let flags = Flags {
                data_dir: cli.data_dir.clone(),
                listen,
                san: sans,
                retention_age,
                retention_max_bytes,
                retention_interval,
                revocation_hooks,
                metrics_listen,
            };
            let settings = Settings::load(flags, config.as_deref())?;
            let mut cfg = settings.collector_config()?;
            for spec in &export {
                cfg.exports
                    .push(custody_collector::export::ExportConfig::parse_spec(spec)?);
            }
            custody_collector::export::config::check_all(&cfg.exports)?;
            // systemd stops services with SIGTERM, a terminal with SIGINT: both flush
            // the store and stop exports before exiting. Installed before the first
            // line is printed, so a signal sent on seeing it is never the default one.
            use tokio::signal::unix::{SignalKind, signal};
            let mut term =
                signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
            let mut int =
                signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
            let mut c = Collector::start(cfg).await?;
            // Tests and scripts read these lines.
            println!("listening on {}", c.addr);
            println!("ca fingerprint {}", c.ca_fingerprint);
            println!("ui on {}", custody_collector::ui::url(c.addr));
            if let Some(m) = c.metrics_addr {
                println!("metrics on http://{m}/metrics");
            }
            tokio::select! {
                r = c.wait() => r?,
                _ = int.recv() => {
                    tracing::info!("SIGINT: shutting down");
                    c.shutdown().await?;
                }
                _ = term.recv() => {
                    tracing::info!("SIGTERM: shutting down");
                    c.shutdown().await?;
                }
            }
        }
        Cmd::CheckConfig { file } => {
            let flags = Flags {
                data_dir: cli.data_dir.clone(),
                ..Default::default()
            };
            let settings = Settings::load(flags, Some(&file))?;
            // Loads the hook file too, so a broken one is caught here.
            settings.collector_config()?;
            print!("{}", settings.to_toml());
        }
        Cmd::EnrollToken { ttl, host } => {
            let pki = Pki::load_or_create(&data_dir, &[])?;
            let tokens = TokenStore::open(&data_dir)?;
            let (token, _) = tokens
                .mint_enroll(&pki.ca_fingerprint, parse_duration(&ttl)?, host.as_deref())
                .context("minting enrollment token")?;
            println!("{token}");
        }
        Cmd::VerifyAudit => {
            let store = custody_collector::store::SledStore::open(
                &custody_collector::server::store_dir(&data_dir),
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
            let tokens = TokenStore::open(&data_dir)?;
            println!("{}", tokens.mint_operator(&name, role)?);
        }
    }
    Ok(())
}
