//! Chains as OpenTelemetry traces, sent over OTLP/gRPC, following the GenAI
//! semantic conventions.
//!
//! - One trace per chain: the trace id is derived from the chain id (SHA-256,
//!   first 16 bytes), so spans made from several hosts' events join one trace.
//! - One span per process, emitted when the process exits (its `exit` event):
//!   `invoke_agent {agent}` for an agent (`gen_ai.operation.name` = "invoke_agent",
//!   `gen_ai.agent.id`, `gen_ai.agent.name`), `process {name}` for anything else in
//!   the chain. The span id is derived from the exec id and the parent span is the
//!   process's upstream hop in the chain — its fork parent, the MCP client of a
//!   stdio server, or the process on another host that connected to it — so the
//!   spans form the chain's tree however the events arrived. A process still running
//!   has no span yet (its children's spans already point at it).
//! - `execute_tool {tool}` for each MCP `tools/call` request (`gen_ai.tool.name`,
//!   `gen_ai.tool.call.id`) and `chat {model}` for each LLM API request
//!   (`gen_ai.request.model`, `gen_ai.provider.name`, `gen_ai.system`), children of
//!   their process's span, emitted when seen; each ends at its response when the
//!   response is exported in the same batch, else it has no duration.
//! - Resource: the process (`service.name` = the agent id, or the executable's
//!   name; `service.namespace` = "custody", `host.name`, `process.pid`,
//!   `process.executable.path`, `custody.exec_id`), so a trace view shows agents as
//!   services and where each ran. Scope: `custody-collector`.
//!
//! The chain is read when the batch is shaped, after the export's settle time (2 s
//! by default), so the other host's half of a connection has usually arrived.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use custody_proto::sensor::v1::{Event, Process, event::Kind};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::Sent;
use super::config::ExportConfig;
use crate::chain::ChainIndex;
use crate::engine::Engine;
use crate::engine::Numbered;

/// The trace id of a chain.
pub fn trace_id(chain_id: &str) -> Vec<u8> {
    Sha256::digest(format!("custody-trace:{chain_id}").as_bytes())[..16].to_vec()
}

/// The span id of a process.
pub fn span_id(exec_id: &str) -> Vec<u8> {
    Sha256::digest(format!("custody-span:{exec_id}").as_bytes())[..8].to_vec()
}

fn sub_span_id(exec_id: &str, key: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"custody-span:");
    h.update(exec_id.as_bytes());
    h.update(b"/");
    h.update(key);
    h.finalize()[..8].to_vec()
}

fn kv(k: &str, v: impl Into<any_value::Value>) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(v.into()),
        }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_string())
}

fn i(v: i64) -> any_value::Value {
    any_value::Value::IntValue(v)
}

fn strings(v: &[String]) -> any_value::Value {
    any_value::Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
        values: v.iter().map(|x| AnyValue { value: Some(s(x)) }).collect(),
    })
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn agent_name(p: &Process) -> &str {
    if p.agent_name.is_empty() {
        &p.agent_id
    } else {
        &p.agent_name
    }
}

/// Spans of one batch, grouped by process (resource).
#[derive(Clone, Default)]
pub struct Spans {
    pub count: usize,
    pub resource_spans: Vec<ResourceSpans>,
}

fn resource(p: &Process, host: &str) -> Resource {
    let service = if p.agent_id.is_empty() {
        let b = basename(&p.exe);
        if b.is_empty() {
            p.comm.clone()
        } else {
            b.to_string()
        }
    } else {
        p.agent_id.clone()
    };
    Resource {
        attributes: vec![
            kv("service.name", s(&service)),
            kv("service.namespace", s("custody")),
            kv("host.name", s(host)),
            kv("process.pid", i(p.pid as i64)),
            kv("process.executable.path", s(&p.exe)),
            kv("custody.exec_id", s(&p.exec_id)),
        ],
        ..Default::default()
    }
}

/// Attributes every span of a process carries.
fn common(p: &Process, host: &str, chain: &str, chains: &ChainIndex) -> Vec<KeyValue> {
    let mut a = vec![
        kv("host.name", s(host)),
        kv("process.pid", i(p.pid as i64)),
        kv("custody.exec_id", s(&p.exec_id)),
        kv("custody.chain_id", s(chain)),
    ];
    if !p.agent_id.is_empty() {
        a.push(kv("gen_ai.agent.id", s(&p.agent_id)));
        a.push(kv("gen_ai.agent.name", s(agent_name(p))));
    }
    if let Some((human, _)) = chains.human_of(chain) {
        a.push(kv("custody.principal", s(&human)));
        a.push(kv("enduser.id", s(&human)));
    }
    a
}

fn process_span(
    p: &Process,
    host: &str,
    chain: &str,
    end_ns: u64,
    x: (i32, i32),
    chains: &ChainIndex,
) -> Span {
    let node = chains.node(&p.exec_id);
    let start = match (p.start_time_ns, node) {
        (0, Some(n)) => n.first_seen_ns,
        (t, _) => t,
    };
    let (name, agent) = if p.agent_id.is_empty() {
        let n = if p.comm.is_empty() {
            basename(&p.exe)
        } else {
            &p.comm
        };
        (format!("process {n}"), false)
    } else {
        (format!("invoke_agent {}", agent_name(p)), true)
    };
    let mut attrs = common(p, host, chain, chains);
    if agent {
        attrs.push(kv("gen_ai.operation.name", s("invoke_agent")));
    }
    attrs.push(kv("process.executable.path", s(&p.exe)));
    attrs.push(kv("process.command_args", strings(&p.argv)));
    attrs.push(kv("process.parent_pid", i(p.ppid as i64)));
    attrs.push(kv("process.exit.code", i(x.0 as i64)));
    if !p.user.is_empty() {
        attrs.push(kv("process.owner", s(&p.user)));
    }
    attrs.push(kv("custody.parent_exec_id", s(&p.parent_exec_id)));
    let mut parent = vec![];
    if let Some(n) = node {
        if let Some(u) = &n.upstream {
            parent = span_id(&u.exec_id);
            attrs.push(kv("custody.upstream.kind", s(&u.kind)));
            attrs.push(kv("custody.upstream.exec_id", s(&u.exec_id)));
        }
        let fps: Vec<String> = n.creds.iter().map(|c| c.fingerprint.clone()).collect();
        if !fps.is_empty() {
            attrs.push(kv("custody.credentials", strings(&fps)));
        }
        if !n.task.is_empty() {
            attrs.push(kv("custody.task", s(&n.task)));
        }
    }
    let failed = x.0 != 0 || x.1 != 0;
    Span {
        trace_id: trace_id(chain),
        span_id: span_id(&p.exec_id),
        parent_span_id: parent,
        name,
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: start.min(end_ns),
        end_time_unix_nano: end_ns,
        attributes: attrs,
        status: Some(Status {
            code: if failed {
                status::StatusCode::Error
            } else {
                status::StatusCode::Ok
            } as i32,
            message: if x.1 != 0 {
                format!("killed by signal {}", x.1)
            } else if x.0 != 0 {
                format!("exit code {}", x.0)
            } else {
                String::new()
            },
        }),
        ..Default::default()
    }
}

/// A child span of a process for one request event.
fn request_span(
    n: &Numbered,
    p: &Process,
    chain: &str,
    name: String,
    end_ns: Option<u64>,
    mut attrs: Vec<KeyValue>,
) -> Span {
    let ev = &n.se.event;
    if end_ns.is_none() {
        attrs.push(kv(
            "custody.response_seen",
            any_value::Value::BoolValue(false),
        ));
    }
    Span {
        trace_id: trace_id(chain),
        span_id: sub_span_id(&p.exec_id, &n.se.key),
        parent_span_id: span_id(&p.exec_id),
        name,
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: ev.time_ns,
        end_time_unix_nano: end_ns.unwrap_or(ev.time_ns).max(ev.time_ns),
        attributes: attrs,
        ..Default::default()
    }
}

/// The spans of one batch of events.
pub fn build(engine: &Engine, events: &[Numbered]) -> Spans {
    let st = engine.read();
    let chains = &st.chains;
    // Responses in this batch, to end request spans: MCP by (chain, JSON-RPC id or
    // tool), LLM by (exec id, connection).
    let mut mcp_resp: HashMap<(String, String), Vec<u64>> = HashMap::new();
    let mut llm_resp: HashMap<
        (String, String),
        Vec<(u64, &custody_proto::sensor::v1::LlmResponse)>,
    > = HashMap::new();
    for n in events {
        let p = n.se.event.process.as_ref();
        let exec = p.map(|p| p.exec_id.clone()).unwrap_or_default();
        match &n.se.event.kind {
            Some(Kind::Mcp(m)) if m.message_type == "response" => {
                let k = if m.id.is_empty() {
                    m.tool_name.clone()
                } else {
                    m.id.clone()
                };
                mcp_resp
                    .entry((n.se.chain_id.clone(), k))
                    .or_default()
                    .push(n.se.event.time_ns);
            }
            Some(Kind::LlmResponse(r)) => llm_resp
                .entry((exec, r.conn_id.clone()))
                .or_default()
                .push((n.se.event.time_ns, r)),
            _ => {}
        }
    }
    let mut by_proc: BTreeMap<String, (Resource, Vec<Span>)> = BTreeMap::new();
    let mut count = 0;
    for n in events {
        let ev: &Event = &n.se.event;
        let Some(p) = ev.process.as_ref() else {
            continue;
        };
        let chain = if n.se.chain_id.is_empty() {
            &p.exec_id
        } else {
            &n.se.chain_id
        };
        let span = match &ev.kind {
            Some(Kind::Exit(x)) => {
                // The process record of its exec, when known (the exit's may be thinner).
                let rec = chains
                    .node(&p.exec_id)
                    .map(|n| &n.process)
                    .filter(|r| !r.exe.is_empty())
                    .unwrap_or(p);
                let mut rec = rec.clone();
                if rec.agent_id.is_empty() {
                    rec.agent_id = p.agent_id.clone();
                    rec.agent_name = p.agent_name.clone();
                }
                process_span(
                    &rec,
                    &ev.host,
                    chain,
                    ev.time_ns,
                    (x.exit_code, x.signal),
                    chains,
                )
            }
            Some(Kind::Mcp(m)) if m.method == "tools/call" && m.message_type == "request" => {
                let k = if m.id.is_empty() {
                    m.tool_name.clone()
                } else {
                    m.id.clone()
                };
                let end = mcp_resp
                    .get(&(n.se.chain_id.clone(), k))
                    .and_then(|v| v.iter().copied().find(|t| *t >= ev.time_ns));
                let mut a = common(p, &ev.host, chain, chains);
                a.push(kv("gen_ai.operation.name", s("execute_tool")));
                a.push(kv("gen_ai.tool.name", s(&m.tool_name)));
                a.push(kv("gen_ai.tool.type", s("function")));
                if !m.id.is_empty() {
                    a.push(kv("gen_ai.tool.call.id", s(&m.id)));
                }
                a.push(kv("mcp.method.name", s(&m.method)));
                a.push(kv(
                    "network.transport",
                    s(if m.transport == "stdio" {
                        "pipe"
                    } else {
                        "tcp"
                    }),
                ));
                if !m.arguments_excerpt.is_empty() {
                    a.push(kv("custody.arguments_excerpt", s(&m.arguments_excerpt)));
                }
                request_span(n, p, chain, format!("execute_tool {}", m.tool_name), end, a)
            }
            Some(Kind::LlmRequest(r)) => {
                let resp = llm_resp
                    .get(&(p.exec_id.clone(), r.conn_id.clone()))
                    .and_then(|v| v.iter().find(|(t, _)| *t >= ev.time_ns));
                let mut a = common(p, &ev.host, chain, chains);
                a.push(kv("gen_ai.operation.name", s("chat")));
                a.push(kv("gen_ai.request.model", s(&r.model)));
                a.push(kv("gen_ai.provider.name", s(&r.provider)));
                a.push(kv("gen_ai.system", s(&r.provider)));
                if !r.host.is_empty() {
                    a.push(kv("server.address", s(&r.host)));
                }
                if !r.tools.is_empty() {
                    a.push(kv("custody.tools_offered", strings(&r.tools)));
                }
                if let Some((_, resp)) = resp {
                    if !resp.model.is_empty() {
                        a.push(kv("gen_ai.response.model", s(&resp.model)));
                    }
                    if !resp.finish_reason.is_empty() {
                        a.push(kv(
                            "gen_ai.response.finish_reasons",
                            strings(std::slice::from_ref(&resp.finish_reason)),
                        ));
                    }
                    let calls: Vec<String> =
                        resp.tool_calls.iter().map(|c| c.name.clone()).collect();
                    if !calls.is_empty() {
                        a.push(kv("custody.tool_calls", strings(&calls)));
                    }
                }
                let mut sp = request_span(
                    n,
                    p,
                    chain,
                    format!("chat {}", r.model),
                    resp.map(|r| r.0),
                    a,
                );
                sp.kind = span::SpanKind::Client as i32;
                sp
            }
            _ => continue,
        };
        count += 1;
        by_proc
            .entry(p.exec_id.clone())
            .or_insert_with(|| {
                (
                    resource(
                        chains.node(&p.exec_id).map(|n| &n.process).unwrap_or(p),
                        &ev.host,
                    ),
                    vec![],
                )
            })
            .1
            .push(span);
    }
    let scope = InstrumentationScope {
        name: "custody-collector".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    Spans {
        count,
        resource_spans: by_proc
            .into_values()
            .map(|(res, spans)| ResourceSpans {
                resource: Some(res),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

/// An OTLP/gRPC trace exporter.
pub struct OtlpSink {
    client: TraceServiceClient<Channel>,
    headers: Vec<(
        tonic::metadata::MetadataKey<tonic::metadata::Ascii>,
        tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    )>,
}

impl OtlpSink {
    pub fn new(cfg: &ExportConfig) -> Result<OtlpSink> {
        let name = cfg.display_name();
        let url = cfg.url.clone().context("otlp export without url")?;
        let mut ep = Endpoint::from_shared(url.clone())
            .with_context(|| format!("export {name}: bad url"))?
            .timeout(cfg.timeout())
            .connect_timeout(cfg.timeout().min(std::time::Duration::from_secs(5)));
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match &cfg.ca {
                Some(ca) => {
                    tls.ca_certificate(Certificate::from_pem(std::fs::read(ca).with_context(
                        || format!("export {name}: cannot read CA file {}", ca.display()),
                    )?))
                }
                None => tls.with_native_roots(),
            };
            ep = ep
                .tls_config(tls)
                .with_context(|| format!("export {name}: TLS"))?;
        }
        let mut headers = vec![];
        for (k, v) in cfg.resolved_headers()? {
            headers.push((
                k.parse()
                    .with_context(|| format!("export {name}: header {k}"))?,
                v.parse()
                    .with_context(|| format!("export {name}: value of header {k}"))?,
            ));
        }
        Ok(OtlpSink {
            client: TraceServiceClient::new(ep.connect_lazy()),
            headers,
        })
    }

    pub async fn send(&mut self, spans: Spans) -> Result<Sent> {
        let count = spans.count as u64;
        let mut req = tonic::Request::new(ExportTraceServiceRequest {
            resource_spans: spans.resource_spans,
        });
        for (k, v) in &self.headers {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        let resp = self
            .client
            .export(req)
            .await
            .map_err(|s| anyhow::anyhow!("OTLP export: {} {}", s.code(), s.message()))?
            .into_inner();
        let rejected = resp
            .partial_success
            .map(|p| {
                if p.rejected_spans > 0 {
                    tracing::warn!(
                        rejected = p.rejected_spans,
                        "OTLP receiver rejected spans: {}",
                        p.error_message
                    );
                }
                p.rejected_spans.max(0) as u64
            })
            .unwrap_or(0);
        Ok(Sent {
            delivered: count - rejected.min(count),
            rejected,
        })
    }
}
