//! The mapping from sensor events to Custody actions — the one table.
//!
//! | event kind            | condition                                   | action(s)                         | principal            | resource |
//! |-----------------------|---------------------------------------------|-----------------------------------|----------------------|----------|
//! | `exec`                | always                                      | `exec`                            | acting agent         | `File` (the new program's exe) |
//! | `exec`                | per `env_credentials` entry                 | `use_credential`                  | acting agent         | `Credential` (source "env": given by the parent) |
//! | `exec`                | [`ChainContext::delegated_by`] set          | `delegate`                        | the delegating agent | `Agent` (the acting agent) |
//! | `file_open`           | access "read", or flags `O_RDONLY`/`O_RDWR` | `open_read`                       | acting agent         | `File` |
//! | `file_open`           | access "write", or flags `O_WRONLY`/`O_RDWR`/`O_CREAT`/`O_TRUNC` | `open_write` | acting agent  | `File` |
//! | `file_unlink`         | always                                      | `unlink`                          | acting agent         | `File` |
//! | `file_rename`         | always                                      | `unlink` (from) + `open_write` (to) | acting agent       | `File`s |
//! | `net`                 | op "connect" (accept/bind/listen: none)     | `connect`                         | acting agent         | `Endpoint` (remote address and port) |
//! | `dns`                 | always                                      | `dns_query`                       | acting agent         | `Endpoint` (the name, port 0) |
//! | `credential`          | always                                      | `use_credential`                  | acting agent         | `Credential` |
//! | `http_request`        | direction "sent" carrying a delegation token (JWT sub / act) | `delegate` | acting agent       | `Endpoint` (Host header) |
//! | `llm_request`         | always                                      | `llm_call`                        | acting agent         | `Model` (provider/model) |
//! | `mcp`                 | method "tools/call", type "request"         | `tool_call`                       | acting agent         | `Tool` (tool name, server = peer name) |
//! | fork, exit, http_response, llm_response, agent_discovered, warning, enforcement | — | none | | |
//!
//! The acting agent is the event process's agent id, else the last agent of the
//! chain's path, else `Agent::""` (unattributed; the request is marked incomplete).
//! Failed syscalls are evaluated too (an attempt is an action); `context.succeeded`
//! tells them apart. Tool calls an LLM *proposes* (`llm_response.tool_calls`) are
//! intent signals, not actions: the MCP `tools/call` that follows is the action.
//! Paths are normalised lexically ("..", "." and "//" resolved) before matching;
//! a relative path is joined to the process's cwd when known, else the request is
//! marked incomplete.

use std::net::IpAddr;

use custody_proto::enums::WireEnum;
use custody_proto::sensor::v1::event::Kind;
use custody_proto::sensor::v1::{Event, FileAccess, FileOpen, Process};
use serde::{Deserialize, Serialize};

use super::Action;
use super::context::{ChainContext, CredentialInfo, normalize_path};

/// A resource of a Custody action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Resource {
    File {
        path: String,
    },
    Endpoint {
        /// DNS name when known, else "".
        host: String,
        addr: Option<IpAddr>,
        /// 0 when unknown.
        port: u16,
        /// "tcp", "udp", "dns", "https", "http" or "".
        protocol: String,
    },
    Tool {
        name: String,
        server: String,
    },
    Model {
        provider: String,
        model: String,
    },
    Credential(CredentialInfo),
    Agent {
        id: String,
    },
}

impl Resource {
    /// Cedar entity type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Resource::File { .. } => "File",
            Resource::Endpoint { .. } => "Endpoint",
            Resource::Tool { .. } => "Tool",
            Resource::Model { .. } => "Model",
            Resource::Credential(_) => "Credential",
            Resource::Agent { .. } => "Agent",
        }
    }

    /// Cedar entity id (see the schema's header for the formats).
    pub fn entity_id(&self) -> String {
        match self {
            Resource::File { path } => path.clone(),
            Resource::Endpoint {
                host, addr, port, ..
            } => {
                let h = match (host.is_empty(), addr) {
                    (false, _) => host.clone(),
                    (true, Some(IpAddr::V6(a))) if *port != 0 => format!("[{a}]"),
                    (true, Some(a)) => a.to_string(),
                    (true, None) => String::new(),
                };
                if *port == 0 { h } else { format!("{h}:{port}") }
            }
            Resource::Tool { name, .. } => name.clone(),
            Resource::Model { provider, model } => format!("{provider}/{model}"),
            Resource::Credential(c) => c.fingerprint.clone(),
            Resource::Agent { id } => id.clone(),
        }
    }

    /// `Type::"id"`, as Cedar prints an entity uid.
    pub fn uid_text(&self) -> String {
        format!("{}::{:?}", self.type_name(), self.entity_id())
    }
}

/// One Custody action extracted from an event, before it becomes a Cedar request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRequest {
    pub action: Action,
    /// Agent id of the principal ("" when unattributed).
    pub principal: String,
    pub resource: Resource,
    /// The syscall / operation succeeded (true where the event has no result).
    pub succeeded: bool,
    /// The credential this request is about (`use_credential`); other requests use
    /// the chain's credential in use.
    pub credential: Option<CredentialInfo>,
    /// The event itself lacked something (no process, truncated or relative path,
    /// no agent identity).
    pub incomplete: bool,
}

const O_ACCMODE: u32 = 0o3;
const O_WRONLY: u32 = 0o1;
const O_RDWR: u32 = 0o2;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;

/// (read, write) for a file open: the sensor's `access` when set, else the flags;
/// `O_CREAT` and `O_TRUNC` always count as writing.
pub(crate) fn open_access(f: &FileOpen) -> (bool, bool) {
    let acc = f.flags & O_ACCMODE;
    let (mut read, mut write) = match FileAccess::known(f.access) {
        Some(FileAccess::Read) => (true, false),
        Some(FileAccess::Write) => (false, true),
        Some(FileAccess::ReadWrite) => (true, true),
        Some(FileAccess::Unspecified) | None => (acc != O_WRONLY, acc == O_WRONLY || acc == O_RDWR),
    };
    if f.flags & (O_CREAT | O_TRUNC) != 0 {
        write = true;
    }
    if !read && !write {
        read = true;
    }
    (read, write)
}

/// The file path as a resource path: normalised, joined to the cwd when relative.
/// Returns (path, complete).
fn file_path(p: Option<&Process>, path: &str) -> (String, bool) {
    if path.starts_with('/') {
        return (normalize_path(path), true);
    }
    match p.map(|p| p.cwd.as_str()).filter(|c| c.starts_with('/')) {
        Some(cwd) => (normalize_path(&format!("{cwd}/{path}")), true),
        None => (normalize_path(path), false),
    }
}

fn parse_addr(a: &str) -> Option<IpAddr> {
    a.strip_prefix("::ffff:")
        .and_then(|v4| v4.parse().ok())
        .or_else(|| a.parse().ok())
}

/// Splits "host:port" / "[v6]:port" / "host".
fn split_host_port(h: &str) -> (&str, Option<u16>) {
    if let Some(rest) = h.strip_prefix('[')
        && let Some((a, tail)) = rest.split_once(']')
    {
        return (a, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (h, None),
        },
        _ => (h, None),
    }
}

/// The Custody actions an event stands for (see the module table). Pure.
pub fn requests_for(ev: &Event, ctx: &ChainContext) -> Vec<ActionRequest> {
    let Some(kind) = &ev.kind else {
        return Vec::new();
    };
    let p = ev.process.as_ref();
    let (principal, attributed) = match p.map(|p| p.agent_id.as_str()) {
        Some(a) if !a.is_empty() => (a.to_string(), true),
        _ => match ctx.acting_agent() {
            Some(a) => (a.id.clone(), true),
            None => (String::new(), false),
        },
    };
    let base_incomplete = p.is_none() || !attributed;
    let mut out = Vec::new();
    let mut push = |action, resource, succeeded, credential, incomplete: bool| {
        out.push(ActionRequest {
            action,
            principal: principal.clone(),
            resource,
            succeeded,
            credential,
            incomplete: base_incomplete || incomplete,
        })
    };
    match kind {
        Kind::Exec(x) => {
            let exe = p.map(|p| p.exe.as_str()).unwrap_or_default();
            let (path, complete) = file_path(p, exe);
            push(
                Action::Exec,
                Resource::File { path },
                true,
                None,
                !complete || exe.is_empty(),
            );
            for c in &x.env_credentials {
                let c = CredentialInfo::from_proto(c);
                push(
                    Action::UseCredential,
                    Resource::Credential(c.clone()),
                    true,
                    Some(c),
                    false,
                );
            }
            if let Some(from) = ctx.delegated_by.as_ref().filter(|f| **f != principal) {
                out.push(ActionRequest {
                    action: Action::Delegate,
                    principal: from.clone(),
                    resource: Resource::Agent {
                        id: principal.clone(),
                    },
                    succeeded: true,
                    credential: None,
                    incomplete: base_incomplete,
                });
            }
        }
        Kind::FileOpen(f) => {
            let (path, complete) = file_path(p, &f.path);
            let incomplete = !complete || f.path_truncated;
            let (read, write) = open_access(f);
            let ok = f.result >= 0;
            if read {
                let r = Resource::File { path: path.clone() };
                push(Action::OpenRead, r, ok, None, incomplete);
            }
            if write {
                push(
                    Action::OpenWrite,
                    Resource::File { path },
                    ok,
                    None,
                    incomplete,
                );
            }
        }
        Kind::FileUnlink(f) => {
            let (path, complete) = file_path(p, &f.path);
            push(
                Action::Unlink,
                Resource::File { path },
                f.result >= 0,
                None,
                !complete,
            );
        }
        Kind::FileRename(f) => {
            let ok = f.result >= 0;
            let (from, c1) = file_path(p, &f.from);
            let (to, c2) = file_path(p, &f.to);
            push(Action::Unlink, Resource::File { path: from }, ok, None, !c1);
            push(
                Action::OpenWrite,
                Resource::File { path: to },
                ok,
                None,
                !c2,
            );
        }
        Kind::Net(n) if n.op == "connect" => {
            let conn = n.conn.clone().unwrap_or_default();
            let addr = parse_addr(&conn.remote_addr);
            push(
                Action::Connect,
                Resource::Endpoint {
                    host: String::new(),
                    addr,
                    port: u16::try_from(conn.remote_port).unwrap_or(0),
                    protocol: conn.protocol.clone(),
                },
                n.result >= 0,
                None,
                addr.is_none(),
            );
        }
        Kind::Dns(d) => {
            let name = d.name.trim_end_matches('.').to_ascii_lowercase();
            let addr = name.parse().ok();
            push(
                Action::DnsQuery,
                Resource::Endpoint {
                    host: name,
                    addr,
                    port: 0,
                    protocol: "dns".into(),
                },
                true,
                None,
                false,
            );
        }
        Kind::Credential(c) => {
            let c = CredentialInfo::from_proto(&c.credential.clone().unwrap_or_default());
            push(
                Action::UseCredential,
                Resource::Credential(c.clone()),
                true,
                Some(c),
                false,
            );
        }
        Kind::HttpRequest(h) if h.direction == "sent" => {
            let delegated = h
                .delegation
                .as_ref()
                .is_some_and(|d| !d.delegated_sub.is_empty() || !d.act.is_empty());
            if delegated {
                let (host, port) = split_host_port(&h.host);
                let tls = h.transport == "tls";
                let addr = parse_addr(host);
                push(
                    Action::Delegate,
                    Resource::Endpoint {
                        host: if addr.is_some() {
                            String::new()
                        } else {
                            host.to_ascii_lowercase()
                        },
                        addr,
                        port: port.unwrap_or(if tls { 443 } else { 80 }),
                        protocol: if tls { "https" } else { "http" }.into(),
                    },
                    true,
                    None,
                    host.is_empty(),
                );
            }
        }
        Kind::LlmRequest(l) => {
            push(
                Action::LlmCall,
                Resource::Model {
                    provider: l.provider.clone(),
                    model: l.model.clone(),
                },
                true,
                None,
                l.model.is_empty(),
            );
        }
        Kind::Mcp(m) if m.method == "tools/call" && m.message_type == "request" => {
            push(
                Action::ToolCall,
                Resource::Tool {
                    name: m.tool_name.clone(),
                    server: m.peer_name.clone(),
                },
                true,
                None,
                m.tool_name.is_empty(),
            );
        }
        _ => {}
    }
    out
}
