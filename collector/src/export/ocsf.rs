//! OCSF 1.3.0 shapes of stored events and policy alerts, for SIEMs.
//!
//! | Custody | OCSF class | activity |
//! |---|---|---|
//! | exec | Process Activity (1007) | 1 Launch (`actor.process` = the parent) |
//! | exit | Process Activity (1007) | 2 Terminate (`exit_code`) |
//! | file_open | File System Activity (1001) | 2 Read; 3 Update (write access); 1 Create (O_CREAT\|O_EXCL) |
//! | file_unlink | File System Activity (1001) | 4 Delete |
//! | file_rename | File System Activity (1001) | 5 Rename (`file` → `file_result`) |
//! | net connect / accept | Network Activity (4001) | 1 Open (4 Fail when the call failed); direction from the side |
//! | net listen / bind | Network Activity (4001) | 7 Listen / 99 Other ("Bind") |
//! | dns | DNS Activity (4003) | 1 Query (the sensor sees queries, not answers) |
//! | policy alert | Detection Finding (2004) | 1 Create |
//!
//! Not mapped (they are in the JSON-lines and OTLP exports): fork (the child's exec
//! is its launch), credential sightings (their fingerprints are attached to every
//! event of the process instead), HTTP/LLM/MCP messages, discovery, warnings and
//! sensor enforcement reports.
//!
//! Every event claims the `host` profile (`device`, `actor`), findings also
//! `security_control` (`action_id`, `disposition_id`). Custody's own context —
//! chain, exec ids, agent, human principal, credential fingerprints — is in
//! `unmapped.custody`; no secret is ever there (sensors send fingerprints only).
//! `metadata.uid` is the event id of the admin API, `metadata.sequence` the store's
//! event number, `metadata.correlation_uid` the chain id.

use custody_proto::admin::v1::Alert;
use custody_proto::sensor::v1::{Event, FileAccess, Process, event::Kind};
use serde_json::{Map, Value, json};

use super::Line;
use crate::chain::ChainIndex;
use crate::engine::Engine;
use crate::engine::Numbered;
use crate::event_key::key_to_id;
use crate::event_kind::describe;

pub const OCSF_VERSION: &str = "1.3.0";

pub const PROCESS_ACTIVITY: u32 = 1007;
pub const FILE_ACTIVITY: u32 = 1001;
pub const NETWORK_ACTIVITY: u32 = 4001;
pub const DNS_ACTIVITY: u32 = 4003;
pub const DETECTION_FINDING: u32 = 2004;

const DIRECTIONS: [&str; 3] = ["Unknown", "Inbound", "Outbound"];
const SEVERITIES: [&str; 7] = [
    "Unknown",
    "Informational",
    "Low",
    "Medium",
    "High",
    "Critical",
    "Fatal",
];
const O_CREAT: u32 = 0o100;
const O_EXCL: u32 = 0o200;
const O_DIRECTORY: u32 = 0o200000;

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn product() -> Value {
    json!({
        "name": "Custody",
        "vendor_name": "Custody",
        "version": env!("CARGO_PKG_VERSION"),
        "uid": "custody-collector",
    })
}

/// The OCSF `process` object of a sensor's process record.
pub fn process_obj(p: &Process, chains: &ChainIndex) -> Value {
    let mut o = Map::new();
    o.insert("pid".into(), json!(p.pid));
    if !p.exec_id.is_empty() {
        o.insert("uid".into(), json!(p.exec_id));
    }
    let name = if p.comm.is_empty() {
        basename(&p.exe)
    } else {
        p.comm.as_str()
    };
    if !name.is_empty() {
        o.insert("name".into(), json!(name));
    }
    if !p.argv.is_empty() {
        o.insert("cmd_line".into(), json!(p.argv.join(" ")));
    }
    if !p.exe.is_empty() {
        o.insert(
            "file".into(),
            json!({"path": p.exe, "name": basename(&p.exe), "type_id": 1, "type": "Regular File"}),
        );
    }
    if p.tid != 0 {
        o.insert("tid".into(), json!(p.tid));
    }
    if p.start_time_ns != 0 {
        o.insert("created_time".into(), json!(ms(p.start_time_ns)));
    }
    let mut user = Map::new();
    user.insert("uid".into(), json!(p.uid.to_string()));
    if !p.user.is_empty() {
        user.insert("name".into(), json!(p.user));
    }
    let (tid, tname) = if p.uid == 0 {
        (2, "Admin")
    } else {
        (1, "User")
    };
    user.insert("type_id".into(), json!(tid));
    user.insert("type".into(), json!(tname));
    o.insert("user".into(), Value::Object(user));
    if !p.parent_exec_id.is_empty() || p.ppid != 0 {
        let parent = match chains.node(&p.parent_exec_id) {
            Some(n) => {
                let mut pp = n.process.clone();
                pp.parent_exec_id.clear(); // one level is enough
                pp.ppid = 0;
                process_obj(&pp, chains)
            }
            None => {
                let mut pp = Map::new();
                pp.insert("pid".into(), json!(p.ppid));
                if !p.parent_exec_id.is_empty() {
                    pp.insert("uid".into(), json!(p.parent_exec_id));
                }
                Value::Object(pp)
            }
        };
        o.insert("parent_process".into(), parent);
    }
    Value::Object(o)
}

/// Custody's context of an event's process (`unmapped.custody`).
fn custody_ctx(p: &Process, chain_id: &str, chains: &ChainIndex) -> Value {
    let mut c = Map::new();
    c.insert("chain_id".into(), json!(chain_id));
    c.insert("exec_id".into(), json!(p.exec_id));
    c.insert("parent_exec_id".into(), json!(p.parent_exec_id));
    if !p.agent_id.is_empty() {
        c.insert(
            "agent".into(),
            json!({"id": p.agent_id, "name": p.agent_name, "kind": p.agent_kind, "owner": p.agent_owner}),
        );
    }
    if let Some(pr) = &p.principal {
        c.insert(
            "principal".into(),
            json!({"login_user": pr.login_user, "delegated_sub": pr.delegated_sub, "act": pr.act}),
        );
    }
    if let Some((human, source)) = chains.human_of(chain_id) {
        c.insert("human".into(), json!({"id": human, "source": source}));
    }
    if let Some(n) = chains.node(&p.exec_id) {
        if let Some(u) = &n.upstream {
            c.insert(
                "upstream".into(),
                json!({"exec_id": u.exec_id, "kind": u.kind}),
            );
        }
        if !n.creds.is_empty() {
            let creds: Vec<Value> = n
                .creds
                .iter()
                .map(|k| json!({"fingerprint": k.fingerprint, "kind": k.kind, "usage": k.usage, "source": k.source}))
                .collect();
            c.insert("credentials".into(), Value::Array(creds));
        }
        c.insert("depth".into(), json!(chains.depth(&p.exec_id)));
    }
    Value::Object(c)
}

fn status(o: &mut Map<String, Value>, ok: bool, detail: &str) {
    o.insert("status_id".into(), json!(if ok { 1 } else { 2 }));
    o.insert(
        "status".into(),
        json!(if ok { "Success" } else { "Failure" }),
    );
    if !detail.is_empty() {
        o.insert("status_detail".into(), json!(detail));
    }
}

fn ip_version(addr: &str) -> u32 {
    if addr.contains(':') { 6 } else { 4 }
}

fn endpoint(addr: &str, port: u32) -> Value {
    let mut e = Map::new();
    if addr.is_empty() {
        e.insert("name".into(), json!("unknown"));
    } else {
        e.insert("ip".into(), json!(addr));
    }
    if port != 0 {
        e.insert("port".into(), json!(port));
    }
    Value::Object(e)
}

/// The OCSF event for one stored event, if its kind maps to one.
pub fn event(n: &Numbered, chains: &ChainIndex) -> Option<Value> {
    let ev: &Event = &n.se.event;
    let p = ev.process.clone().unwrap_or_default();
    let mut o = Map::new();
    let (class, category, activity, activity_name): (u32, u32, u32, &str) =
        match ev.kind.as_ref()? {
            Kind::Exec(_) => {
                let parent = chains.node(&p.parent_exec_id).map(|n| n.process.clone());
                let actor = match parent {
                    Some(pp) => process_obj(&pp, chains),
                    None => json!({"pid": p.ppid, "uid": p.parent_exec_id}),
                };
                o.insert("actor".into(), json!({"process": actor}));
                o.insert("process".into(), process_obj(&p, chains));
                status(&mut o, true, "");
                (PROCESS_ACTIVITY, 1, 1, "Launch")
            }
            Kind::Exit(x) => {
                o.insert("actor".into(), json!({"process": process_obj(&p, chains)}));
                o.insert("process".into(), process_obj(&p, chains));
                o.insert("exit_code".into(), json!(x.exit_code));
                let detail = if x.signal != 0 {
                    format!("killed by signal {}", x.signal)
                } else {
                    format!("exit code {}", x.exit_code)
                };
                status(&mut o, true, &detail);
                (PROCESS_ACTIVITY, 1, 2, "Terminate")
            }
            Kind::FileOpen(f) => {
                let type_id = if f.flags & O_DIRECTORY != 0 { 2 } else { 0 };
                o.insert(
                    "file".into(),
                    json!({"path": f.path, "name": basename(&f.path), "type_id": type_id}),
                );
                o.insert("actor".into(), json!({"process": process_obj(&p, chains)}));
                status(&mut o, f.result >= 0, &f.error);
                match f.access() {
                    _ if f.flags & (O_CREAT | O_EXCL) == O_CREAT | O_EXCL => {
                        (FILE_ACTIVITY, 1, 1, "Create")
                    }
                    FileAccess::Write | FileAccess::ReadWrite => (FILE_ACTIVITY, 1, 3, "Update"),
                    _ => (FILE_ACTIVITY, 1, 2, "Read"),
                }
            }
            Kind::FileUnlink(f) => {
                o.insert(
                    "file".into(),
                    json!({"path": f.path, "name": basename(&f.path), "type_id": 0}),
                );
                o.insert("actor".into(), json!({"process": process_obj(&p, chains)}));
                status(&mut o, f.result >= 0, &f.error);
                (FILE_ACTIVITY, 1, 4, "Delete")
            }
            Kind::FileRename(f) => {
                o.insert(
                    "file".into(),
                    json!({"path": f.from, "name": basename(&f.from), "type_id": 0}),
                );
                o.insert(
                    "file_result".into(),
                    json!({"path": f.to, "name": basename(&f.to), "type_id": 0}),
                );
                o.insert("actor".into(), json!({"process": process_obj(&p, chains)}));
                status(&mut o, f.result >= 0, &f.error);
                (FILE_ACTIVITY, 1, 5, "Rename")
            }
            Kind::Net(s) => {
                let c = s.conn.clone().unwrap_or_default();
                let local = endpoint(&c.local_addr, c.local_port);
                let remote = endpoint(&c.remote_addr, c.remote_port);
                let ok = s.result >= 0;
                let (src, dst, dir, activity, name) = match s.op.as_str() {
                    "connect" => (
                        local,
                        remote,
                        2,
                        if ok { 1 } else { 4 },
                        if ok { "Open" } else { "Fail" },
                    ),
                    "accept" => (
                        remote,
                        local,
                        1,
                        if ok { 1 } else { 4 },
                        if ok { "Open" } else { "Fail" },
                    ),
                    "listen" => (remote, local, 0, 7, "Listen"),
                    _ => (remote, local, 0, 99, "Bind"),
                };
                if s.op == "connect" || s.op == "accept" {
                    o.insert("src_endpoint".into(), src);
                }
                o.insert("dst_endpoint".into(), dst);
                let proto = if c.protocol.is_empty() {
                    "tcp"
                } else {
                    c.protocol.as_str()
                };
                let ver = if c.family == "ipv6" {
                    6
                } else {
                    ip_version(&c.local_addr)
                };
                o.insert(
                    "connection_info".into(),
                    json!({
                        "direction_id": dir,
                        "direction": DIRECTIONS[dir as usize],
                        "protocol_name": proto,
                        "protocol_num": if proto == "udp" { 17 } else { 6 },
                        "protocol_ver_id": ver,
                    }),
                );
                o.insert("actor".into(), json!({"process": process_obj(&p, chains)}));
                status(&mut o, ok, &s.error);
                (NETWORK_ACTIVITY, 4, activity, name)
            }
            Kind::Dns(d) => {
                let name = d.name.trim_end_matches('.');
                if name.is_empty() {
                    return None;
                }
                let mut q = Map::new();
                q.insert("hostname".into(), json!(name));
                if !d.qtype.is_empty() {
                    q.insert("type".into(), json!(d.qtype));
                }
                q.insert("class".into(), json!("IN"));
                o.insert("query".into(), Value::Object(q));
                if !d.server.is_empty() {
                    o.insert("dst_endpoint".into(), endpoint(&d.server, 53));
                }
                o.insert("actor".into(), json!({"process": process_obj(&p, chains)}));
                status(&mut o, true, "");
                (DNS_ACTIVITY, 4, 1, "Query")
            }
            _ => return None,
        };
    o.insert("activity_name".into(), json!(activity_name));
    o.insert("message".into(), json!(describe(ev)));
    o.insert(
        "device".into(),
        json!({"hostname": ev.host, "type_id": 0, "type": "Unknown"}),
    );
    o.insert(
        "metadata".into(),
        json!({
            "version": OCSF_VERSION,
            "product": product(),
            "profiles": ["host"],
            "uid": key_to_id(&n.se.key),
            "sequence": n.id,
            "correlation_uid": n.se.chain_id,
            "log_name": "custody-events",
        }),
    );
    o.insert(
        "unmapped".into(),
        json!({"custody": custody_ctx(&p, &n.se.chain_id, chains)}),
    );
    Some(finish(o, class, category, activity, ev.time_ns, 1))
}

/// Adds the class/type ids, severity and time.
fn finish(
    mut o: Map<String, Value>,
    class: u32,
    category: u32,
    activity: u32,
    t_ns: u64,
    sev: u32,
) -> Value {
    o.insert("class_uid".into(), json!(class));
    o.insert("category_uid".into(), json!(category));
    o.insert("activity_id".into(), json!(activity));
    o.insert(
        "type_uid".into(),
        json!(class as u64 * 100 + activity as u64),
    );
    o.insert("severity_id".into(), json!(sev));
    o.insert("severity".into(), json!(SEVERITIES[sev as usize]));
    o.insert("time".into(), json!(ms(t_ns)));
    o.insert("timezone_offset".into(), json!(0));
    Value::Object(o)
}

/// A policy alert as a Detection Finding.
pub fn finding(a: &Alert, chains: &ChainIndex) -> Value {
    let mut o = Map::new();
    let sev = match a.severity.as_str() {
        "low" => 2,
        "medium" => 3,
        "high" => 4,
        "critical" => 5,
        _ => 0,
    };
    let title = format!(
        "Policy {} denied {} of {}",
        a.policy_id, a.action, a.resource
    );
    let mut desc = format!(
        "Agent {} ({}) on {} tried {} {}; policy {} ({}) denied it",
        if a.agent_id.is_empty() {
            "-"
        } else {
            &a.agent_id
        },
        a.exec_id,
        a.host,
        a.action,
        a.resource,
        a.policy_id,
        a.policy_file,
    );
    if !a.human.is_empty() {
        desc.push_str(&format!(", in a chain acting for {}", a.human));
    }
    desc.push_str(&format!(
        "; response: {} (enforced by the {})",
        a.response, a.enforced
    ));
    let first_policy = a.policy_id.split(',').next().unwrap_or("");
    o.insert(
        "finding_info".into(),
        json!({
            "uid": a.id,
            "title": title,
            "desc": desc,
            "created_time": ms(a.time_ns),
            "types": ["Policy Violation"],
            "analytic": {"uid": first_policy, "name": first_policy, "type_id": 1, "type": "Rule"},
            "related_events": [{"uid": a.event_id}],
        }),
    );
    let (status_id, status) = match a.status.as_str() {
        "acknowledged" => (2, "In Progress"),
        _ => (1, "New"),
    };
    o.insert("status_id".into(), json!(status_id));
    o.insert("status".into(), json!(status));
    // security_control: the action was denied in the kernel, or allowed and then
    // answered by the collector.
    let kernel = a.enforced == "kernel";
    o.insert("action_id".into(), json!(if kernel { 2 } else { 1 }));
    o.insert(
        "action".into(),
        json!(if kernel { "Denied" } else { "Allowed" }),
    );
    let (disp, dname) = match (kernel, a.response.as_str()) {
        (true, _) => (2, "Blocked"),
        (_, "quarantine") => (4, "Isolated"),
        (_, "kill_process" | "kill_chain" | "revoke_credential") => (7, "Custom Action"),
        _ => (1, "Allowed"),
    };
    o.insert("disposition_id".into(), json!(disp));
    o.insert("disposition".into(), json!(dname));
    o.insert("message".into(), json!(title));
    o.insert(
        "device".into(),
        json!({"hostname": a.host, "type_id": 0, "type": "Unknown"}),
    );
    if let Some(n) = chains.node(&a.exec_id) {
        o.insert(
            "actor".into(),
            json!({"process": process_obj(&n.process, chains)}),
        );
        o.insert(
            "evidences".into(),
            json!([{"process": process_obj(&n.process, chains)}]),
        );
    }
    let rtype = a.resource.split("::").next().unwrap_or("");
    o.insert(
        "resources".into(),
        json!([{"uid": a.resource, "name": a.resource.split('"').nth(1).unwrap_or(&a.resource), "type": rtype}]),
    );
    o.insert(
        "metadata".into(),
        json!({
            "version": OCSF_VERSION,
            "product": product(),
            "profiles": ["host", "security_control"],
            "uid": a.id,
            "correlation_uid": a.chain_id,
            "log_name": "custody-alerts",
        }),
    );
    o.insert(
        "unmapped".into(),
        json!({"custody": {
            "chain_id": a.chain_id,
            "exec_id": a.exec_id,
            "agent_id": a.agent_id,
            "human": a.human,
            "policy_id": a.policy_id,
            "policy_file": a.policy_file,
            "action": a.action,
            "resource": a.resource,
            "event_id": a.event_id,
            "diagnostics": a.diagnostics,
            "response": a.response,
            "response_action_id": a.response_action_id,
            "enforced": a.enforced,
            "context_incomplete": a.context_incomplete,
        }}),
    );
    finish(o, DETECTION_FINDING, 2, 1, a.time_ns, sev)
}

/// OCSF lines for a pass: the mapped events, then the findings.
pub fn lines(engine: &Engine, events: &[Numbered], alerts: &[Alert]) -> Vec<Line> {
    let st = engine.read();
    let mut out: Vec<Line> = events
        .iter()
        .filter_map(|n| {
            event(n, &st.chains).map(|v| Line {
                event_id: Some(n.id),
                alert_id: None,
                text: v.to_string(),
            })
        })
        .collect();
    out.extend(alerts.iter().map(|a| Line {
        event_id: None,
        alert_id: Some(a.id.clone()),
        text: finding(a, &st.chains).to_string(),
    }));
    out
}
