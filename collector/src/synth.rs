//! Synthetic but realistic sensor events, shaped like the daemon's output, for tests
//! and the benchmark.

use custody_proto::sensor::v1::{
    Connection, Credential, Event, FileOpen, McpMessage, NetSocket, Principal, Process,
    ProcessExec, ProcessFork, event::Kind,
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
