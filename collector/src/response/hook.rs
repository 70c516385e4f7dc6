//! Issuer hooks: after a credential is revoked in the fleet, an HTTP call per
//! credential kind tells the issuer too (an OAuth token revocation endpoint, a
//! Vault lease revoke, an IdP session kill). Raw credentials never leave their
//! hosts, so a hook can only send what the collector knows: the fingerprint, the
//! kind and non-secret metadata (JWT `iss`/`sub`/`jti`, an AWS key id...). The
//! outcome of every call is recorded on the action and audited; failures are
//! reported, never hidden.
//!
//! ```toml
//! [[revocation_hook]]
//! name = "idp"
//! kinds = ["jwt"]                       # credential kinds, or ["*"]
//! url = "https://idp.example/oauth2/revoke"
//! method = "POST"                       # default POST
//! form = { token_type_hint = "jti", token = "{meta.jti}" }
//! # or: json = '{"sub": "{meta.sub}", "reason": "{reason}"}'
//! headers = { authorization = "Bearer ${IDP_ADMIN_TOKEN}" }
//! timeout_ms = 5000
//! ```
//!
//! Placeholders: `{fingerprint}`, `{kind}`, `{reason}`, `{action_id}`, `{meta.KEY}`;
//! `${VAR}` in header values is read from the collector's environment at load.
//!
//! Metadata is chosen by whoever minted the credential (a JWT's `jti` is any string),
//! so a value is data wherever it lands: percent-encoded in the URL (a `jti` of
//! `x/../../admin/delete?all=1` stays one path segment), JSON-escaped in a JSON body,
//! form-encoded in a form, refused in a header if it holds a control character; and
//! the URL's scheme and authority may not contain a placeholder at all (the hook's
//! host is the operator's choice, never the credential's).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use custody_proto::admin::v1::HookResult;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub name: String,
    pub kinds: Vec<String>,
    pub url: String,
    #[serde(default = "post")]
    pub method: String,
    #[serde(default)]
    pub form: BTreeMap<String, String>,
    #[serde(default)]
    pub json: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "five_seconds")]
    pub timeout_ms: u64,
}

fn post() -> String {
    "POST".into()
}
fn five_seconds() -> u64 {
    5000
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HooksFile {
    #[serde(default)]
    revocation_hook: Vec<Hook>,
}

/// What a hook may say about the credential.
pub struct Subject<'a> {
    pub fingerprint: &'a str,
    pub kind: &'a str,
    pub metadata: &'a BTreeMap<String, String>,
    pub reason: &'a str,
    pub action_id: &'a str,
}

fn expand_env(v: &str, what: &str) -> Result<String> {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 2..];
        let end = tail
            .find('}')
            .with_context(|| format!("{what}: unterminated ${{ in {v:?}"))?;
        let name = &tail[..end];
        let val = std::env::var(name)
            .with_context(|| format!("{what}: environment variable {name} is not set"))?;
        out.push_str(&val);
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Loads hooks from a TOML file; errors name the file and the position.
pub fn load(path: &Path) -> Result<Vec<Hook>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let f: HooksFile = toml::from_str(&text).map_err(|e| {
        let pos = e
            .span()
            .map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                let col = s.start - text[..s.start].rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(":{line}:{col}")
            })
            .unwrap_or_default();
        anyhow::anyhow!("{}{pos}: {}", path.display(), e.message())
    })?;
    let mut hooks = f.revocation_hook;
    for (i, h) in hooks.iter_mut().enumerate() {
        let what = format!("{} revocation_hook #{} ({})", path.display(), i + 1, h.name);
        if h.kinds.is_empty() {
            bail!("{what}: kinds is empty (use [\"*\"] for every kind)");
        }
        if authority(&h.url).contains('{') {
            bail!("{what}: a placeholder in the url's scheme or host is not allowed");
        }
        let url = h
            .url
            .parse::<reqwest::Url>()
            .with_context(|| format!("{what}: bad url {:?}", h.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!("{what}: url must be http or https");
        }
        reqwest::Method::from_bytes(h.method.as_bytes())
            .with_context(|| format!("{what}: bad method {:?}", h.method))?;
        if h.json.is_some() && !h.form.is_empty() {
            bail!("{what}: give either form or json, not both");
        }
        for v in h.headers.values_mut() {
            *v = expand_env(v, &what)?;
        }
    }
    Ok(hooks)
}

/// The `scheme://authority` part of a URL template (up to the first `/`, `?` or `#`
/// after `://`).
fn authority(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    &url[..end]
}

/// How a filled-in value is written where it lands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Inside a URL: percent-encoded (every byte but unreserved ones).
    Url,
    /// Inside a JSON string: escaped.
    Json,
    /// A form value or a header value: as is (a form is encoded as a whole later;
    /// a header refuses control characters).
    Plain,
}

fn fill(template: &str, s: &Subject<'_>, into: Placement) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        let Some(end) = tail.find('}') else {
            out.push_str(&rest[i..]);
            return Ok(out);
        };
        let name = &tail[..end];
        let val = match name {
            "fingerprint" => Some(s.fingerprint.to_string()),
            "kind" => Some(s.kind.to_string()),
            "reason" => Some(s.reason.to_string()),
            "action_id" => Some(s.action_id.to_string()),
            _ => match name.strip_prefix("meta.") {
                Some(k) => Some(
                    s.metadata
                        .get(k)
                        .cloned()
                        .ok_or_else(|| format!("the credential has no metadata {k:?}"))?,
                ),
                None => None,
            },
        };
        match val {
            // JSON templates get the value as a string body (quotes come from the template).
            Some(v) if into == Placement::Json => {
                let q = serde_json::to_string(&v).unwrap_or_default();
                out.push_str(&q[1..q.len() - 1]);
            }
            Some(v) if into == Placement::Url => out.push_str(&urlencode(&v)),
            Some(v) => out.push_str(&v),
            // Not a placeholder (e.g. a JSON brace): keep it.
            None => out.push('{'),
        }
        rest = if val_is_placeholder(name) {
            &tail[end + 1..]
        } else {
            tail
        };
    }
    out.push_str(rest);
    Ok(out)
}

fn val_is_placeholder(name: &str) -> bool {
    matches!(name, "fingerprint" | "kind" | "reason" | "action_id") || name.starts_with("meta.")
}

impl Hook {
    pub fn applies_to(&self, kind: &str) -> bool {
        self.kinds.iter().any(|k| k == "*" || k == kind)
    }

    /// Makes the call; every outcome becomes a [`HookResult`].
    pub async fn call(&self, client: &reqwest::Client, s: &Subject<'_>) -> HookResult {
        let start = Instant::now();
        let mut r = HookResult {
            url: self.url.clone(),
            ..Default::default()
        };
        let outcome = self.send(client, s).await;
        r.duration_ns = start.elapsed().as_nanos() as u64;
        match outcome {
            Ok((code, body)) => {
                r.http_status = u32::from(code);
                let ok = (200..300).contains(&code);
                r.status = if ok { "ok" } else { "failed" }.into();
                let body: String = body.chars().take(200).collect();
                r.message = format!("{}: HTTP {code} {}", self.name, body.trim());
            }
            Err(e) => {
                r.status = "failed".into();
                r.message = format!("{}: {e}", self.name);
            }
        }
        r
    }

    async fn send(
        &self,
        client: &reqwest::Client,
        s: &Subject<'_>,
    ) -> Result<(u16, String), String> {
        let method =
            reqwest::Method::from_bytes(self.method.as_bytes()).map_err(|e| e.to_string())?;
        let url = fill(&self.url, s, Placement::Url)?;
        let mut req = client
            .request(method, &url)
            .timeout(Duration::from_millis(self.timeout_ms));
        for (k, v) in &self.headers {
            let v = fill(v, s, Placement::Plain)?;
            if v.chars().any(|c| c.is_control()) {
                return Err(format!(
                    "header {k}: a placeholder's value has a control character"
                ));
            }
            req = req.header(k.as_str(), v);
        }
        if let Some(j) = &self.json {
            req = req
                .header("content-type", "application/json")
                .body(fill(j, s, Placement::Json)?);
        } else if !self.form.is_empty() {
            let mut pairs = Vec::new();
            for (k, v) in &self.form {
                pairs.push((k.clone(), fill(v, s, Placement::Plain)?));
            }
            let body = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
                .collect::<Vec<_>>()
                .join("&");
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let resp = req.send().await.map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            msg
        })?;
        let code = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Ok((code, body))
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(meta: &BTreeMap<String, String>) -> Subject<'_> {
        Subject {
            fingerprint: "hmac-sha256:ab",
            kind: "jwt",
            metadata: meta,
            reason: "leaked \"token\"",
            action_id: "act-1",
        }
    }

    #[test]
    fn templates_fill_known_placeholders_and_keep_braces() {
        let mut m = BTreeMap::new();
        m.insert("jti".to_string(), "j-1".to_string());
        let s = subject(&m);
        assert_eq!(
            fill("x={meta.jti}&k={kind}", &s, Placement::Plain).unwrap(),
            "x=j-1&k=jwt"
        );
        assert_eq!(
            fill(
                r#"{"r": "{reason}", "fp": "{fingerprint}"}"#,
                &s,
                Placement::Json
            )
            .unwrap(),
            r#"{"r": "leaked \"token\"", "fp": "hmac-sha256:ab"}"#
        );
        let e = fill("{meta.sub}", &s, Placement::Plain).unwrap_err();
        assert!(e.contains("no metadata \"sub\""), "{e}");
    }

    /// The review's attack: a crafted `jti` walking the hook's URL to an IdP admin
    /// endpoint. The value must arrive as one encoded path segment, and a template
    /// that puts a placeholder in the host is refused at load.
    #[tokio::test]
    async fn a_crafted_jti_stays_one_path_segment() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = c.read(&mut buf).await.unwrap();
            c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        });
        let mut m = BTreeMap::new();
        m.insert(
            "jti".to_string(),
            "x/../../admin/tenants/acme/delete?all=1#".to_string(),
        );
        let hook = Hook {
            name: "idp".into(),
            kinds: vec!["*".into()],
            url: format!("http://127.0.0.1:{port}/revoke/{{meta.jti}}"),
            method: "POST".into(),
            form: BTreeMap::new(),
            json: None,
            headers: BTreeMap::new(),
            timeout_ms: 5000,
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let r = hook.call(&reqwest::Client::new(), &subject(&m)).await;
        assert_eq!(r.status, "ok", "{}", r.message);
        let line = server.await.unwrap();
        assert_eq!(
            line,
            "POST /revoke/x%2F..%2F..%2Fadmin%2Ftenants%2Facme%2Fdelete%3Fall%3D1%23 HTTP/1.1"
        );

        // A header value with CR/LF from metadata is refused, not sent.
        m.insert("sub".into(), "a\r\nx-admin: 1".into());
        let mut h2 = hook.clone();
        h2.headers.insert("x-sub".into(), "{meta.sub}".into());
        let r = h2.call(&reqwest::Client::new(), &subject(&m)).await;
        assert_eq!(r.status, "failed");
        assert!(r.message.contains("control character"), "{}", r.message);

        // No placeholder in the scheme or authority.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hooks.toml");
        for url in [
            "https://{meta.iss}/revoke",
            "https://idp.example:{meta.port}/x",
            "https://a{kind}.example/",
        ] {
            std::fs::write(
                &p,
                format!("[[revocation_hook]]\nname = \"x\"\nkinds = [\"*\"]\nurl = \"{url}\"\n"),
            )
            .unwrap();
            let e = format!("{:#}", load(&p).unwrap_err());
            assert!(
                e.contains("placeholder in the url's scheme or host"),
                "{url}: {e}"
            );
        }
    }

    #[test]
    fn bad_files_are_named_with_position() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hooks.toml");
        std::fs::write(
            &p,
            "[[revocation_hook]]\nname = \"x\"\nkinds = [\"*\"]\nurl = 5\n",
        )
        .unwrap();
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(e.contains("hooks.toml:4:7"), "{e}");
        std::fs::write(
            &p,
            "[[revocation_hook]]\nname = \"x\"\nkinds = [\"*\"]\nurl = \"ftp://x\"\n",
        )
        .unwrap();
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(e.contains("http or https"), "{e}");
    }
}
