//! JSON lines POSTed to an HTTP(S) endpoint: one request per batch, body
//! `application/x-ndjson` (one record per line), extra headers from the config
//! (e.g. a bearer token), TLS through rustls with the system's roots or only the
//! configured CA. Any answer but 2xx is a failure and the batch is sent again
//! (with backoff), so the endpoint should accept a repeated batch (records carry
//! stable ids: `id`/`alert_id`, or OCSF `metadata.uid`).

use anyhow::{Context, Result, bail};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::config::ExportConfig;
use super::{Line, Sent};

pub struct HttpSink {
    url: reqwest::Url,
    client: reqwest::Client,
}

/// A reqwest client for an export endpoint (also used for nothing else).
pub fn client(cfg: &ExportConfig) -> Result<reqwest::Client> {
    let name = cfg.display_name();
    // reqwest's TLS uses the process-wide rustls provider (ring, as elsewhere).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = HeaderMap::new();
    for (k, v) in cfg.resolved_headers()? {
        headers.insert(
            HeaderName::from_bytes(k.as_bytes())
                .with_context(|| format!("export {name}: header {k}"))?,
            HeaderValue::from_str(&v)
                .with_context(|| format!("export {name}: value of header {k}"))?,
        );
    }
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("custody-collector/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers)
        .timeout(cfg.timeout())
        .connect_timeout(cfg.timeout().min(std::time::Duration::from_secs(5)));
    if let Some(ca) = &cfg.ca {
        let pem = std::fs::read(ca)
            .with_context(|| format!("export {name}: cannot read CA file {}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("export {name}: {} is not a PEM bundle", ca.display()))?;
        if certs.is_empty() {
            bail!("export {name}: no certificate in {}", ca.display());
        }
        b = b.tls_certs_only(certs);
    }
    b.build()
        .with_context(|| format!("export {name}: HTTP client"))
}

impl HttpSink {
    pub fn new(cfg: &ExportConfig) -> Result<HttpSink> {
        let url = cfg
            .url
            .as_deref()
            .context("http export without url")?
            .parse()
            .context("export url")?;
        Ok(HttpSink {
            url,
            client: client(cfg)?,
        })
    }

    pub async fn post(&mut self, lines: &[Line]) -> Result<Sent> {
        let mut body = String::with_capacity(lines.iter().map(|l| l.text.len() + 1).sum());
        for l in lines {
            body.push_str(&l.text);
            body.push('\n');
        }
        let resp = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {}", self.url))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let excerpt: String = text.chars().take(200).collect();
            bail!("POST {}: HTTP {status} {excerpt}", self.url);
        }
        Ok(Sent {
            delivered: lines.len() as u64,
            rejected: 0,
        })
    }
}
