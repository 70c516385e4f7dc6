//! Shared helpers: a real collector on 127.0.0.1 with a temp data dir, real
//! enrollment through the shipper library, real mTLS clients.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agent_user::shipper::{self, EnrolledPaths, ShipperConfig};
use custody_collector::auth::{Role, TokenStore};
use custody_collector::{Collector, CollectorConfig};
use custody_proto::admin::v1::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub async fn start_collector(dir: &Path) -> Collector {
    init_tracing();
    let cfg = CollectorConfig::new(dir, "127.0.0.1:0".parse::<SocketAddr>().unwrap());
    Collector::start(cfg).await.expect("collector starts")
}

pub fn enroll_token(c: &Collector, ttl: Duration) -> String {
    c.tokens
        .mint_enroll(&c.ca_fingerprint, ttl, None)
        .unwrap()
        .0
}

pub fn operator(dir: &Path, role: Role) -> String {
    TokenStore::open(dir)
        .unwrap()
        .mint_operator(role.as_str(), role)
        .unwrap()
}

pub async fn enroll_host(addr: &str, token: &str, host: &str, state: &Path) -> EnrolledPaths {
    shipper::enroll(addr, token, host, state, &state.join("fleet.key"))
        .await
        .expect("enrollment succeeds")
}

pub fn shipper_config(
    addr: &str,
    paths: &EnrolledPaths,
    spool: &Path,
    host: &str,
) -> ShipperConfig {
    let mut cfg = ShipperConfig::from_enrollment(addr, paths, spool, host, "boot-1");
    cfg.heartbeat_every = Duration::from_millis(200);
    cfg
}

pub async fn admin(addr: &str, ca_pem: &str) -> AdminServiceClient<Channel> {
    let ch = shipper::tls::channel(addr, ca_pem, None).await.unwrap();
    AdminServiceClient::new(ch)
}

pub fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Polls `f` every 50 ms until it returns true or `secs` pass.
pub async fn wait_for<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Starts the real collector binary on `dir` (the tests that stop or kill the
/// process need their own); returns it and the address it listens on.
pub fn spawn_collector(dir: &Path, listen: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_custody-collector"))
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "serve",
            "--listen",
            listen,
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .strip_prefix("listening on ")
        .expect(&first)
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}
