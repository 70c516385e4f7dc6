use custody_proto::enums::WireEnum;
use custody_proto::sensor::v1::event::Kind;
use custody_proto::sensor::v1::{
    Connection, Credential, DnsQuery, Event, FileAccess, FileOpen, FileRename, FileUnlink,
    HttpRequest, LlmRequest, McpMessage, NetSocket, Principal, Process, ProcessExec,
};

use super::context::{IpNet, normalize_path, path_under};
use super::load::line_col;
use super::request::open_access;
use super::*;

pub(super) fn ev(kind: Kind) -> Event {
    Event {
        host: "h1".into(),
        time_ns: 1,
        seq: 1,
        process: Some(Process {
            exec_id: "h1:10:1".into(),
            agent_id: "a1".into(),
            agent_kind: "declared".into(),
            agent_scope: "/data/finance, api.openai.com:443".into(),
            exe: "/usr/bin/python3".into(),
            cwd: "/work".into(),
            ..Process::default()
        }),
        kind: Some(kind),
    }
}

fn actions(e: &Event, ctx: &ChainContext) -> Vec<(Action, String)> {
    requests_for(e, ctx)
        .into_iter()
        .map(|r| (r.action, r.resource.uid_text()))
        .collect()
}

pub(super) fn open(path: &str, flags: u32, access: &str) -> Kind {
    Kind::FileOpen(FileOpen {
        path: path.into(),
        flags,
        access: FileAccess::from_name(access).map_or(0, i32::from),
        result: 3,
        ..FileOpen::default()
    })
}

#[test]
fn mapping_table() {
    let ctx = ChainContext::default();
    let a = |k| actions(&ev(k), &ctx);
    assert_eq!(
        a(open("/x/y", 0, "read")),
        [(Action::OpenRead, r#"File::"/x/y""#.into())]
    );
    assert_eq!(
        a(open("rel/f", 0o1, "")),
        [(Action::OpenWrite, r#"File::"/work/rel/f""#.into())]
    );
    assert_eq!(a(open("/f", 0o2, "")).len(), 2);
    assert_eq!(
        a(Kind::FileUnlink(FileUnlink {
            path: "/t/x".into(),
            ..Default::default()
        })),
        [(Action::Unlink, r#"File::"/t/x""#.into())]
    );
    assert_eq!(
        a(Kind::FileRename(FileRename {
            from: "/a".into(),
            to: "/b".into(),
            ..Default::default()
        })),
        [
            (Action::Unlink, r#"File::"/a""#.into()),
            (Action::OpenWrite, r#"File::"/b""#.into())
        ]
    );
    let net = |op: &str, addr: &str| {
        Kind::Net(NetSocket {
            op: op.into(),
            conn: Some(Connection {
                protocol: "tcp".into(),
                remote_addr: addr.into(),
                remote_port: 443,
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    assert_eq!(
        a(net("connect", "::ffff:1.2.3.4")),
        [(Action::Connect, r#"Endpoint::"1.2.3.4:443""#.into())]
    );
    assert_eq!(
        a(net("connect", "2001:db8::1")),
        [(Action::Connect, r#"Endpoint::"[2001:db8::1]:443""#.into())]
    );
    assert!(a(net("accept", "1.2.3.4")).is_empty());
    assert_eq!(
        a(Kind::Dns(DnsQuery {
            name: "API.OpenAI.com.".into(),
            ..Default::default()
        })),
        [(Action::DnsQuery, r#"Endpoint::"api.openai.com""#.into())]
    );
    assert_eq!(
        a(Kind::LlmRequest(LlmRequest {
            provider: "anthropic".into(),
            model: "claude".into(),
            ..Default::default()
        })),
        [(Action::LlmCall, r#"Model::"anthropic/claude""#.into())]
    );
    let mcp = |method: &str, t: &str| {
        Kind::Mcp(McpMessage {
            method: method.into(),
            message_type: t.into(),
            tool_name: "query_db".into(),
            ..Default::default()
        })
    };
    assert_eq!(
        a(mcp("tools/call", "request")),
        [(Action::ToolCall, r#"Tool::"query_db""#.into())]
    );
    assert!(a(mcp("tools/call", "response")).is_empty());
    assert!(a(mcp("initialize", "request")).is_empty());
    let http = |dir: &str, sub: &str| {
        Kind::HttpRequest(HttpRequest {
            host: "agents.example.com:8443".into(),
            direction: dir.into(),
            transport: "tls".into(),
            delegation: Some(Principal {
                delegated_sub: sub.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    assert_eq!(
        a(http("sent", "alice")),
        [(
            Action::Delegate,
            r#"Endpoint::"agents.example.com:8443""#.into()
        )]
    );
    assert!(a(http("sent", "")).is_empty());
    assert!(a(http("received", "alice")).is_empty());
    // exec: the program, its environment's credentials, and a delegation when the
    // process starts a new agent hop.
    let exec = Kind::Exec(ProcessExec {
        env_credentials: vec![Credential {
            kind: "openai_api_key".into(),
            fingerprint: "hmac-sha256:01".into(),
            source: "env".into(),
            location: "OPENAI_API_KEY".into(),
            ..Default::default()
        }],
        env_truncated: false,
    });
    let hop = ChainContext {
        delegated_by: Some("sup".into()),
        ..ChainContext::default()
    };
    let rs = requests_for(&ev(exec), &hop);
    let got: Vec<_> = rs
        .iter()
        .map(|r| (r.action, r.principal.as_str(), r.resource.uid_text()))
        .collect();
    assert_eq!(
        got,
        [
            (
                Action::Exec,
                "a1",
                r#"File::"/usr/bin/python3""#.to_string()
            ),
            (
                Action::UseCredential,
                "a1",
                r#"Credential::"hmac-sha256:01""#.to_string()
            ),
            (Action::Delegate, "sup", r#"Agent::"a1""#.to_string()),
        ]
    );
    // Not actions.
    assert!(a(Kind::Fork(Default::default())).is_empty());
    assert!(a(Kind::LlmResponse(Default::default())).is_empty());
}

#[test]
fn principal_falls_back_to_the_path_then_unattributed() {
    let mut e = ev(open("/x", 0, "read"));
    e.process.as_mut().unwrap().agent_id.clear();
    let ctx = ChainContext {
        agents: vec![AgentInfo {
            id: "w".into(),
            ..AgentInfo::default()
        }],
        ..ChainContext::default()
    };
    let r = &requests_for(&e, &ctx)[0];
    assert_eq!((r.principal.as_str(), r.incomplete), ("w", false));
    let r = &requests_for(&e, &ChainContext::default())[0];
    assert_eq!((r.principal.as_str(), r.incomplete), ("", true));
}

#[test]
fn open_flags() {
    let f = |flags, access: &str| {
        open_access(&FileOpen {
            flags,
            access: FileAccess::from_name(access).map_or(0, i32::from),
            ..Default::default()
        })
    };
    assert_eq!(f(0, ""), (true, false));
    assert_eq!(f(0o1, ""), (false, true));
    assert_eq!(f(0o2, ""), (true, true));
    assert_eq!(f(0o100, ""), (true, true)); // O_RDONLY|O_CREAT
    assert_eq!(f(0o1 | 0o1000, ""), (false, true));
    assert_eq!(f(0o2, "read"), (true, false));
    assert_eq!(f(0, "read_write"), (true, true));
}

#[test]
fn paths_and_scopes() {
    assert_eq!(normalize_path("/a//b/./c/../d/"), "/a/b/d");
    assert_eq!(normalize_path("/../.."), "/");
    assert_eq!(normalize_path("/data/finance"), "/data/finance");
    assert!(path_under("/data/finance/q3.csv", "/data/finance"));
    assert!(path_under("/data/finance", "/data/finance"));
    assert!(!path_under("/data/finance2/x", "/data/finance"));
    assert!(path_under("/x", "/"));

    let s = Scope::parse(&parse_scope(
        "/data/finance/, *.openai.com:443; 10.0.0.0/8 tool:read_file model:anthropic [::1]:8080",
    ));
    assert_eq!(s.dirs, ["/data/finance"]);
    assert_eq!(
        (s.endpoints.len(), s.tools.len(), s.models.len()),
        (3, 1, 1)
    );
    let file = |p: &str| Resource::File { path: p.into() };
    assert_eq!(s.contains(&file("/data/finance/a")), Some(true));
    assert_eq!(s.contains(&file("/data/hr/a")), Some(false));
    let ep = |host: &str, addr: Option<&str>, port| Resource::Endpoint {
        host: host.into(),
        addr: addr.map(|a| a.parse().unwrap()),
        port,
        protocol: String::new(),
    };
    assert_eq!(s.contains(&ep("api.openai.com", None, 443)), Some(true));
    assert_eq!(s.contains(&ep("openai.com", None, 0)), Some(true));
    assert_eq!(s.contains(&ep("api.openai.com", None, 80)), Some(false));
    assert_eq!(s.contains(&ep("evil.com", None, 443)), Some(false));
    assert_eq!(s.contains(&ep("", Some("10.9.8.7"), 5432)), Some(true));
    assert_eq!(s.contains(&ep("", Some("::1"), 8080)), Some(true));
    assert_eq!(s.contains(&ep("", Some("8.8.8.8"), 53)), Some(false));
    // Only host-name patterns: a bare address cannot be judged.
    let names = Scope::parse(&["api.openai.com"]);
    assert_eq!(names.contains(&ep("", Some("8.8.8.8"), 443)), None);
    let tool = |n: &str| Resource::Tool {
        name: n.into(),
        server: String::new(),
    };
    assert_eq!(s.contains(&tool("read_file")), Some(true));
    assert_eq!(s.contains(&tool("rm")), Some(false));
    let model = |p: &str, m: &str| Resource::Model {
        provider: p.into(),
        model: m.into(),
    };
    assert_eq!(s.contains(&model("Anthropic", "x")), Some(true));
    assert_eq!(s.contains(&model("openai", "x")), Some(false));
    assert_eq!(Scope::parse(&["/x"]).contains(&tool("t")), None);

    let n = IpNet::parse("192.168.0.0/16").unwrap();
    assert!(n.contains(&"192.168.3.4".parse().unwrap()));
    assert!(n.contains(&"::ffff:192.168.3.4".parse().unwrap()));
    assert!(!n.contains(&"192.169.0.1".parse().unwrap()));
    assert!(
        IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains(&"1.1.1.1".parse().unwrap())
    );
    assert!(IpNet::parse("1.2.3.4/33").is_none());
}

#[test]
fn line_and_column() {
    let t = "ab\ncdé f\n";
    assert_eq!(line_col(t, 0), (1, 1));
    assert_eq!(line_col(t, 3), (2, 1));
    assert_eq!(line_col(t, 8), (2, 5)); // after "cdé " (é is 2 bytes)
    assert_eq!(line_col(t, 100), (3, 1));
}

pub(super) fn set_of(text: &str) -> PolicySet {
    PolicySet::from_sources([("t.cedar".to_string(), text.to_string())])
        .unwrap_or_else(|e| panic!("{e}"))
}

pub(super) fn plan(text: &str) -> (Enforcement, String) {
    let s = set_of(text);
    let p = &s.list()[1];
    (p.enforcement, p.why.clone())
}

#[test]
fn warnings_and_templates() {
    let err = PolicySet::from_sources([(
        "t.cedar".to_string(),
        "\n\npermit (principal == ?principal, action, resource);".to_string(),
    )])
    .unwrap_err();
    let e = &err.errors()[0];
    assert_eq!((e.kind, e.line, e.column), (ErrorKind::Unsupported, 3, 1));
    // Policy ids default to <file>#<n>.
    let s = PolicySet::from_sources([(
        "/etc/custody/policies/x.cedar".to_string(),
        "forbid (principal, action, resource) when { context.depth > 9 };\nforbid (principal, action, resource) when { context.depth > 8 };".to_string(),
    )])
    .unwrap();
    let ids: Vec<_> = s
        .list()
        .into_iter()
        .skip(1)
        .map(|p| (p.id, p.line))
        .collect();
    assert_eq!(
        ids,
        [("x.cedar#0".to_string(), 1), ("x.cedar#1".to_string(), 2)]
    );
}
