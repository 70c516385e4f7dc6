//! `custodyctl host retire HOST`: the identity of a lost or rebuilt host (role
//! admin). Its certificate is refused from then on, so whoever holds it (a thief,
//! the old disk image) can no longer speak for the host or receive its commands;
//! the host's events stay readable, and the id may be enrolled again with any token.

use anyhow::Result;
use clap::Subcommand;
use custody_collector::client::AdminClient;
use custody_proto::admin::v1 as admin;

use crate::{explain, json, ts};

#[derive(Subcommand)]
pub enum HostCmd {
    /// Retire a host's identity: its certificate is refused, its data stays, and
    /// the host id can be enrolled again (role admin).
    Retire {
        /// The host id (see `custodyctl hosts`).
        host: String,
        /// Why: recorded in the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

pub async fn run(c: &mut AdminClient, cmd: &HostCmd, as_json: bool) -> Result<()> {
    match cmd {
        HostCmd::Retire { host, reason } => {
            let h = c
                .retire_host(admin::RetireHostRequest {
                    host_id: host.clone(),
                    reason: reason.clone(),
                })
                .await
                .map_err(explain)?
                .into_inner();
            if as_json {
                return json(&h);
            }
            println!(
                "host {} retired at {} by {}: its certificate is refused from now on and its \
                 events stay readable; enroll the host again (any enrollment token) to give it \
                 a new identity",
                h.host_id,
                ts(h.retired_at_ns),
                h.retired_by
            );
        }
    }
    Ok(())
}
