//! Synthetic but realistic sensor events, shaped like the daemon's output, for tests
//! and the benchmark.

use custody_proto::sensor::v1::{
    Connection, Credential, Event, FileAccess, FileOpen, LlmRequest, LlmResponse, McpMessage,
    NetSocket, OpaqueEgress, Principal, Process, ProcessExec, ProcessExit, ProcessFork, TlsStack,
    TlsStackFinding, TlsUncovered, ToolCall, event::Kind,
};

pub const T0: u64 = 1_700_000_000_000_000_000;

/// A process as the sensor describes it.
pub fn process(host: &str, pid: u32, parent_pid: u32, exe: &str, agent: &str) -> Process {
    Process {
        exec_id: format!("{host}:{pid}:{}", 1000 + pid),
        parent_exec_id: if parent_pid == 0 {
            String::new()
        } else {
            format!("{host}:{parent_pid}:{}", 1000 + parent_pid)
        },
        pid,
        ppid: parent_pid,
        tid: pid,
        exe: exe.into(),
        comm: exe
            .rsplit('/')
            .next()
            .unwrap_or(exe)
            .chars()
            .take(15)
            .collect(),
        argv: vec![exe.into()],
        agent_id: agent.into(),
        agent_name: agent.into(),
        agent_kind: if agent.is_empty() { "" } else { "declared" }.into(),
        start_ticks: 1000 + pid as u64,
        principal: Some(Principal {
            login_uid: u32::MAX,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn with_login(mut p: Process, uid: u32, user: &str) -> Process {
    p.auid = uid;
    p.uid = uid;
    p.user = user.into();
    p.principal = Some(Principal {
        login_uid: uid,
        login_user: user.into(),
        ..Default::default()
    });
    p
}

pub fn event(p: &Process, host: &str, time_ns: u64, kind: Kind) -> Event {
    Event {
        host: host.into(),
        time_ns,
        seq: 0,
        process: Some(p.clone()),
        kind: Some(kind),
    }
}

pub fn exec(p: &Process, host: &str, t: u64, creds: Vec<Credential>) -> Event {
    event(
        p,
        host,
        t,
        Kind::Exec(ProcessExec {
            env_credentials: creds,
            env_truncated: false,
        }),
    )
}

pub fn net(
    p: &Process,
    host: &str,
    t: u64,
    op: &str,
    local: (&str, u32),
    remote: (&str, u32),
) -> Event {
    event(
        p,
        host,
        t,
        Kind::Net(NetSocket {
            op: op.into(),
            conn: Some(Connection {
                protocol: "tcp".into(),
                family: "ipv4".into(),
                local_addr: local.0.into(),
                local_port: local.1,
                remote_addr: remote.0.into(),
                remote_port: remote.1,
            }),
            result: 0,
            error: String::new(),
        }),
    )
}

pub fn file_open(p: &Process, host: &str, t: u64, path: &str) -> Event {
    event(
        p,
        host,
        t,
        Kind::FileOpen(FileOpen {
            path: path.into(),
            result: 3,
            access: custody_proto::sensor::v1::FileAccess::Read.into(),
            ..Default::default()
        }),
    )
}

pub fn api_key(fp: &str) -> Credential {
    Credential {
        kind: "openai_api_key".into(),
        fingerprint: format!("hmac-sha256:{fp}"),
        source: "env".into(),
        location: "OPENAI_API_KEY".into(),
        ..Default::default()
    }
}

/// The three-host story. Host A (10.0.0.1): alice's client `a1` connects
/// to B:8080. Host B (10.0.0.2): agent service `b1` accepts, spawns the stdio MCP
/// server `b2`, which connects to C:9000. Host C (10.0.0.3): service `c1` accepts
/// and opens /srv/data/report.csv. Returns events per host, in per-host order.
pub struct Scenario {
    pub a: Vec<Event>,
    pub b: Vec<Event>,
    pub c: Vec<Event>,
    pub a1: String,
    pub b1: String,
    pub b2: String,
    pub c1: String,
}

pub fn three_hosts(hosts: [&str; 3], t0: u64) -> Scenario {
    let [ha, hb, hc] = hosts;
    let s = 1_000_000_000;
    let a1 = with_login(
        process(ha, 4100, 4000, "/usr/bin/python3", ""),
        1000,
        "alice",
    );
    let b1 = process(hb, 5100, 1, "/opt/agent/bin/agent-svc", "research-agent");
    let mut b2 = process(hb, 5200, 5100, "/usr/local/bin/mcp-files", "");
    b2.argv = vec!["mcp-files".into(), "--stdio".into()];
    let c1 = process(hc, 6100, 1, "/usr/bin/data-svc", "");

    let a = vec![
        exec(&a1, ha, t0, vec![api_key("aa11")]),
        net(
            &a1,
            ha,
            t0 + s,
            "connect",
            ("10.0.0.1", 40000),
            ("10.0.0.2", 8080),
        ),
    ];
    let b = vec![
        exec(&b1, hb, t0 - 60 * s, vec![api_key("bb22")]),
        net(
            &b1,
            hb,
            t0 + s + 1000,
            "accept",
            ("10.0.0.2", 8080),
            ("10.0.0.1", 40000),
        ),
        event(
            &b1,
            hb,
            t0 + 2 * s,
            Kind::Fork(ProcessFork {
                child_exec_id: b2.exec_id.clone(),
                child_pid: b2.pid,
            }),
        ),
        exec(&b2, hb, t0 + 2 * s + 10, vec![]),
        event(
            &b2,
            hb,
            t0 + 2 * s + 20,
            Kind::Mcp(McpMessage {
                transport: "stdio".into(),
                message_type: "request".into(),
                method: "tools/call".into(),
                tool_name: "read_report".into(),
                ..Default::default()
            }),
        ),
        // The server answers on its stdout: this makes it a stdio hop of b1.
        event(
            &b2,
            hb,
            t0 + 2 * s + 30,
            Kind::Mcp(McpMessage {
                transport: "stdio".into(),
                message_type: "response".into(),
                method: "tools/call".into(),
                tool_name: "read_report".into(),
                ..Default::default()
            }),
        ),
        net(
            &b2,
            hb,
            t0 + 3 * s,
            "connect",
            ("10.0.0.2", 50000),
            ("10.0.0.3", 9000),
        ),
    ];
    let c = vec![
        exec(&c1, hc, t0 - 120 * s, vec![]),
        net(
            &c1,
            hc,
            t0 + 3 * s + 500,
            "accept",
            ("10.0.0.3", 9000),
            ("10.0.0.2", 50000),
        ),
        file_open(&c1, hc, t0 + 3 * s + 900, "/srv/data/report.csv"),
    ];
    Scenario {
        a,
        b,
        c,
        a1: a1.exec_id,
        b1: b1.exec_id,
        b2: b2.exec_id,
        c1: c1.exec_id,
    }
}

/// Numbers events 1.. in order (what the daemon's shipper does).
pub fn number(events: &mut [Event]) {
    for (i, e) in events.iter_mut().enumerate() {
        e.seq = i as u64 + 1;
    }
}

fn open_as(p: &Process, host: &str, t: u64, path: &str, access: FileAccess, result: i64) -> Event {
    let mut f = FileOpen {
        path: path.into(),
        result,
        error: if result < 0 {
            "EACCES".into()
        } else {
            String::new()
        },
        ..Default::default()
    };
    f.set_access(access);
    event(p, host, t, Kind::FileOpen(f))
}

/// The responder's story ([`responder_story`]): its events and the exec ids of its
/// processes (the agent is the chain root).
pub struct Story {
    pub events: Vec<Event>,
    pub agent: String,
    pub helper: String,
    pub blind: String,
}

/// The routine path under /usr/lib the story's agent reads successfully that a
/// policy watches: folded unless an alert names it.
pub const STORY_WATCHED: &str = "/usr/lib/python3.11/policy-watched.py";

/// The responder's view in one chain (issues 14, 17). An agent on Python: 400 loader/interpreter reads, 200 site-packages reads, an
/// LLM request, a tool call, a denied read of /etc/shadow, a write, a successful
/// read of a path a policy matched (under /usr/lib), a `uname -p` helper, and a
/// child whose rustls TLS is unreadable with three opaque connections.
pub fn responder_story(host: &str, t0: u64) -> Story {
    let agent = with_login(
        process(host, 100, 1, "/usr/bin/python3", "story-agent"),
        1000,
        "alice",
    );
    let helper = process(host, 200, 100, "/usr/bin/uname", "");
    let blind = process(host, 300, 100, "/usr/local/bin/codex", "");
    let mut ev = vec![exec(&agent, host, t0, vec![])];
    let mut t_ = t0;
    let mut tick = || {
        t_ += 1000;
        t_
    };
    for i in 0..400 {
        ev.push(open_as(
            &agent,
            host,
            tick(),
            &format!("/usr/lib/python3.11/mod{i}.py"),
            FileAccess::Read,
            3,
        ));
    }
    for i in 0..200 {
        ev.push(open_as(
            &agent,
            host,
            tick(),
            &format!("/home/alice/.venv/lib/python3.11/site-packages/openai/m{i}.py"),
            FileAccess::Read,
            3,
        ));
    }
    ev.push(event(
        &agent,
        host,
        tick(),
        Kind::LlmRequest(LlmRequest {
            provider: "openai".into(),
            model: "gpt-story".into(),
            user_excerpt: "summarise the host".into(),
            host: "api.openai.com".into(),
            path: "/v1/chat/completions".into(),
            ..Default::default()
        }),
    ));
    ev.push(event(
        &agent,
        host,
        tick(),
        Kind::LlmResponse(LlmResponse {
            provider: "openai".into(),
            model: "gpt-story".into(),
            tool_calls: vec![ToolCall {
                name: "read_file".into(),
                arguments_excerpt: "{\"path\":\"/etc/shadow\"}".into(),
                id: "c1".into(),
            }],
            ..Default::default()
        }),
    ));
    ev.push(open_as(
        &agent,
        host,
        tick(),
        "/etc/shadow",
        FileAccess::Read,
        -13,
    ));
    ev.push(open_as(
        &agent,
        host,
        tick(),
        STORY_WATCHED,
        FileAccess::Read,
        3,
    ));
    ev.push(open_as(
        &agent,
        host,
        tick(),
        "/usr/lib/python3.11/written.py",
        FileAccess::Write,
        3,
    ));
    // More routine reads after the significant ones: same fold lines.
    for i in 0..50 {
        ev.push(open_as(
            &agent,
            host,
            tick(),
            &format!("/usr/lib/python3.11/late{i}.py"),
            FileAccess::Read,
            3,
        ));
    }
    // The SDK's `uname -p`: exec, the loader's reads, exit.
    ev.push(event(
        &agent,
        host,
        tick(),
        Kind::Fork(ProcessFork {
            child_exec_id: helper.exec_id.clone(),
            child_pid: 200,
        }),
    ));
    ev.push(exec(&helper, host, tick(), vec![]));
    ev.push(open_as(
        &helper,
        host,
        tick(),
        "/etc/ld.so.cache",
        FileAccess::Read,
        3,
    ));
    ev.push(open_as(
        &helper,
        host,
        tick(),
        "/lib/x86_64-linux-gnu/libc.so.6",
        FileAccess::Read,
        3,
    ));
    ev.push(event(
        &helper,
        host,
        tick(),
        Kind::Exit(ProcessExit {
            exit_code: 0,
            signal: 0,
        }),
    ));
    // A child with TLS Custody cannot read.
    ev.push(event(
        &agent,
        host,
        tick(),
        Kind::Fork(ProcessFork {
            child_exec_id: blind.exec_id.clone(),
            child_pid: 300,
        }),
    ));
    ev.push(exec(&blind, host, tick(), vec![]));
    ev.push(event(
        &blind,
        host,
        tick(),
        Kind::TlsUncovered(TlsUncovered {
            path: "/usr/local/bin/codex".into(),
            build_id: "abcd".into(),
            stacks: vec![TlsStackFinding {
                stack: TlsStack::Rustls as i32,
                versions: vec!["rustls 0.23.20".into()],
                tried: vec!["exported symbols".into(), "prologue scan".into()],
            }],
            anomalies: vec![],
        }),
    ));
    for (i, sni) in ["api.openai.com", "chatgpt.com", ""].iter().enumerate() {
        let opened = tick();
        ev.push(event(
            &blind,
            host,
            tick(),
            Kind::OpaqueEgress(OpaqueEgress {
                conn: Some(Connection {
                    protocol: "tcp".into(),
                    family: "ipv4".into(),
                    local_addr: "10.0.0.5".into(),
                    local_port: 40000 + i as u32,
                    remote_addr: "203.0.113.7".into(),
                    remote_port: 443,
                }),
                sni: sni.to_string(),
                alpn: vec!["h2".into(), "http/1.1".into()],
                bytes_sent: 1000 + i as u64,
                bytes_received: 90_000 + i as u64,
                opened_ns: opened,
                stack: TlsStack::Rustls as i32,
            }),
        ));
    }
    Story {
        events: ev,
        agent: agent.exec_id,
        helper: helper.exec_id,
        blind: blind.exec_id,
    }
}
