//! A one-line description of an event by kind, for chain trees, tables and exports.
//! The kinds themselves and their names are one table in `custody_proto`
//! (`EventKind::ALL`/`NAMES`, `Event::kind_name`).
//!
//! A leaf: it knows only the protobuf types.

use custody_proto::enums::WireEnum;
use custody_proto::sensor::v1::{Event, TlsStack, event::Kind};

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
        Some(Kind::FileOpen(f)) => {
            format!("open {} ({}) -> {}", f.path, f.access().name(), f.result)
        }
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
        Some(Kind::TlsUncovered(t)) => format!(
            "TLS not readable in {} ({})",
            t.path,
            t.stacks
                .iter()
                .map(|f| custody_proto::enums::name_of::<TlsStack>(f.stack).unwrap_or("unknown"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(Kind::OpaqueEgress(o)) => {
            let to = o
                .conn
                .as_ref()
                .map(|c| format!("{}:{}", c.remote_addr, c.remote_port))
                .unwrap_or_default();
            let sni = if o.sni.is_empty() {
                String::new()
            } else {
                format!(" ({})", o.sni)
            };
            format!(
                "opaque TLS to {to}{sni}: {} B sent, {} B received",
                o.bytes_sent, o.bytes_received
            )
        }
        Some(Kind::RoutineReads(r)) => {
            let failed = if r.failed > 0 {
                format!(" ({} failed)", r.failed)
            } else {
                String::new()
            };
            format!("{} routine reads under {}{failed}", r.count, r.dir)
        }
        None => "unknown event".into(),
    }
}
