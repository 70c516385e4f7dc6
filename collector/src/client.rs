//! Connecting to a collector as an operator (custodyctl, scripts): TLS verified by
//! the collector CA, operator token on every request.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use custody_proto::admin::v1::admin_service_client::AdminServiceClient;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

#[derive(Clone)]
pub struct BearerToken(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type AdminClient = AdminServiceClient<InterceptedService<Channel, BearerToken>>;

/// "host:port" or "https://host:port" -> (uri, host).
fn parse_addr(addr: &str) -> Result<(String, String)> {
    let hp = addr
        .trim()
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let (host, port) = hp.rsplit_once(':').ok_or_else(|| {
        anyhow!("collector address {addr:?} needs a port, e.g. collector.example:7443")
    })?;
    port.parse::<u16>()
        .map_err(|_| anyhow!("bad port in collector address {addr:?}"))?;
    Ok((
        format!("https://{hp}"),
        host.trim_matches(['[', ']']).to_owned(),
    ))
}

pub async fn connect_admin(addr: &str, ca_pem: &str, token: &str) -> Result<AdminClient> {
    let (uri, host) = parse_addr(addr)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(host);
    let ch = Endpoint::from_shared(uri)?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot connect to collector at {addr}: check the address, that custody-collector \
                 is running, and that the CA file is the collector's ca.pem"
            )
        })?;
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| anyhow!("operator token contains characters not allowed in a header"))?;
    Ok(AdminServiceClient::with_interceptor(ch, BearerToken(value)))
}
