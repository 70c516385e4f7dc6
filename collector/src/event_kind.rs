//! The event-kind table: the names of the `Event.kind` oneof as every reader of the
//! collector spells them (`custodyctl events --kind`, the UI's filter, metrics
//! labels, exports), and a one-line description of an event by kind.
//!
//! A leaf: it knows only the protobuf types, so the engine (which counts stored
//! events by kind) and the read side both use it without importing each other.

use custody_proto::sensor::v1::{Event, event::Kind};

/// Event kind names (the `Event.kind` oneof), as `custodyctl events --kind`, the UI's
/// filter and `custody_collector_events_total{kind}` use them; "unknown" (no kind)
/// last.
pub const EVENT_KINDS: [&str; 18] = [
    "exec",
    "fork",
    "exit",
    "file_open",
    "file_unlink",
    "file_rename",
    "net",
    "dns",
    "credential",
    "http_request",
    "http_response",
    "llm_request",
    "llm_response",
    "mcp",
    "agent_discovered",
    "warning",
    "enforcement",
    "unknown",
];

/// Index of an event's kind in [`EVENT_KINDS`].
pub fn kind_index(k: &Option<Kind>) -> usize {
    match k {
        Some(Kind::Exec(_)) => 0,
        Some(Kind::Fork(_)) => 1,
        Some(Kind::Exit(_)) => 2,
        Some(Kind::FileOpen(_)) => 3,
        Some(Kind::FileUnlink(_)) => 4,
        Some(Kind::FileRename(_)) => 5,
        Some(Kind::Net(_)) => 6,
        Some(Kind::Dns(_)) => 7,
        Some(Kind::Credential(_)) => 8,
        Some(Kind::HttpRequest(_)) => 9,
        Some(Kind::HttpResponse(_)) => 10,
        Some(Kind::LlmRequest(_)) => 11,
        Some(Kind::LlmResponse(_)) => 12,
        Some(Kind::Mcp(_)) => 13,
        Some(Kind::AgentDiscovered(_)) => 14,
        Some(Kind::Warning(_)) => 15,
        Some(Kind::Enforcement(_)) => 16,
        None => 17,
    }
}

pub fn kind_name(k: &Option<Kind>) -> &'static str {
    EVENT_KINDS[kind_index(k)]
}

/// One line describing what an event did, for chain trees and tables.
pub fn describe(ev: &Event) -> String {
    match &ev.kind {
        Some(Kind::Exec(_)) => {
            let argv = ev
                .process
                .as_ref()
                .map(|p| p.argv.join(" "))
                .unwrap_or_default();
            format!("exec {argv}")
        }
        Some(Kind::Fork(f)) => format!("fork {}", f.child_exec_id),
        Some(Kind::Exit(x)) => format!("exit code={} signal={}", x.exit_code, x.signal),
        Some(Kind::FileOpen(f)) => format!("open {} ({}) -> {}", f.path, f.access, f.result),
        Some(Kind::FileUnlink(f)) => format!("unlink {}", f.path),
        Some(Kind::FileRename(f)) => format!("rename {} -> {}", f.from, f.to),
        Some(Kind::Net(n)) => match &n.conn {
            Some(c) => format!(
                "{} {}:{} -> {}:{}",
                n.op, c.local_addr, c.local_port, c.remote_addr, c.remote_port
            ),
            None => n.op.clone(),
        },
        Some(Kind::Dns(d)) => format!("dns {} {}", d.qtype, d.name),
        Some(Kind::Credential(c)) => match &c.credential {
            Some(c) => format!(
                "credential {} {} ({} {})",
                c.kind, c.fingerprint, c.source, c.location
            ),
            None => "credential".into(),
        },
        Some(Kind::HttpRequest(h)) => format!("http {} {}{}", h.method, h.host, h.path),
        Some(Kind::HttpResponse(h)) => format!("http response {}", h.status),
        Some(Kind::LlmRequest(l)) => format!("llm {} {}", l.provider, l.model),
        Some(Kind::LlmResponse(l)) => {
            format!("llm response {} {} tool calls", l.model, l.tool_calls.len())
        }
        Some(Kind::Mcp(m)) => format!("mcp {} {} {}", m.transport, m.method, m.tool_name),
        Some(Kind::AgentDiscovered(a)) => format!("agent discovered ({}) {}", a.reason, a.evidence),
        Some(Kind::Warning(w)) => format!("warning {}", w.message),
        Some(Kind::Enforcement(e)) => format!(
            "{} ({}){}",
            e.action,
            e.reason,
            if e.applied {
                String::new()
            } else {
                format!(" NOT APPLIED: {}", e.error)
            }
        ),
        None => "unknown event".into(),
    }
}
