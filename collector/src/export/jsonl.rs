//! The JSON-lines shape: one object per stored event or alert.
//!
//! ```json
//! {"record":"event","id":42,"event_id":"17a…","time":"2025-01-01T10:00:00.000000001Z",
//!  "time_ns":1735725600000000001,"host":"host-a","kind":"file_open",
//!  "chain_id":"host-a:4100:5100","exec_id":"host-a:4100:5100","parent_exec_id":"…",
//!  "agent_id":"research-agent","event":{…the stored event, as custodyd --json writes it…}}
//! {"record":"alert","alert_id":"al-…","time":"…","time_ns":…,"host":"host-c",
//!  "chain_id":"…","exec_id":"…","alert":{…the alert, as the admin API returns it…}}
//! ```
//!
//! `id` is the store's event number (arrival order, what an export's cursor
//! counts), `event_id` the id the admin API and custodyctl use. `chain_id` is the
//! chain as known when the event is exported. Credentials appear only as the
//! fingerprints the sensors report; excerpts were redacted on the host.

use custody_proto::admin::v1::Alert;
use serde_json::{Value, json};

use super::Line;
use crate::engine::Numbered;
use crate::event_key::key_to_id;

/// RFC 3339 UTC with nanoseconds.
pub fn rfc3339(ns: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub fn event_json(n: &Numbered) -> Value {
    let ev = &n.se.event;
    let p = ev.process.clone().unwrap_or_default();
    json!({
        "record": "event",
        "id": n.id,
        "event_id": key_to_id(&n.se.key),
        "time": rfc3339(ev.time_ns),
        "time_ns": ev.time_ns,
        "host": ev.host,
        "kind": ev.kind_name(),
        "chain_id": n.se.chain_id,
        "exec_id": p.exec_id,
        "parent_exec_id": p.parent_exec_id,
        "agent_id": p.agent_id,
        "event": serde_json::to_value(ev).unwrap_or(Value::Null),
    })
}

pub fn alert_json(a: &Alert) -> Value {
    json!({
        "record": "alert",
        "alert_id": a.id,
        "time": rfc3339(a.time_ns),
        "time_ns": a.time_ns,
        "host": a.host,
        "chain_id": a.chain_id,
        "exec_id": a.exec_id,
        "alert": serde_json::to_value(a).unwrap_or(Value::Null),
    })
}

pub fn lines(events: &[Numbered], alerts: &[Alert]) -> Vec<Line> {
    events
        .iter()
        .map(|n| Line {
            event_id: Some(n.id),
            alert_id: None,
            text: event_json(n).to_string(),
        })
        .chain(alerts.iter().map(|a| Line {
            event_id: None,
            alert_id: Some(a.id.clone()),
            text: alert_json(a).to_string(),
        }))
        .collect()
}
