//! Kernel compilation and evaluation: the pre-filtered decisions against the whole
//! set, entities and context as policies see them.

use custody_proto::sensor::v1::event::Kind;
use custody_proto::sensor::v1::{
    Connection, Credential, DnsQuery, FileOpen, LlmRequest, McpMessage, NetSocket, ProcessExec,
};

use super::kernel::PathMatch;
use super::tests::{ev, open, plan, set_of};
use super::*;

#[test]
fn kernel_analysis_reasons() {
    let k = |t: &str| plan(t);
    let (e, why) = k(
        r#"forbid (principal, action == Action::"connect", resource) when { resource.port == 25 };"#,
    );
    assert_eq!(e, Enforcement::Kernel, "{why}");
    let (e, why) = k(r#"forbid (principal, action, resource == Endpoint::"1.2.3.4:80");"#);
    assert_eq!(e, Enforcement::Kernel, "{why}");
    assert!(
        why.contains("dns_query") && why.contains("after the fact"),
        "{why}"
    );
    let (e, why) = k(
        r#"forbid (principal, action == Action::"connect", resource) when { context.depth > 1 && resource.port == 1 };"#,
    );
    assert_eq!(e, Enforcement::Collector);
    assert!(why.contains("context.depth"), "{why}");
    let (e, why) = k(
        r#"forbid (principal, action == Action::"connect", resource) unless { resource.port == 443 };"#,
    );
    assert_eq!(e, Enforcement::Collector);
    assert!(why.contains("unless"), "{why}");
    let (e, why) = k(r#"forbid (principal, action == Action::"exec", resource in Dir::"/tmp");"#);
    assert_eq!(e, Enforcement::Collector);
    assert!(why.starts_with("exec:"), "{why}");
    let (e, why) = k(r#"forbid (principal in Agent::"g", action == Action::"connect", resource);"#);
    assert_eq!(e, Enforcement::Collector);
    assert!(why.contains("principal scope"), "{why}");
    let (e, why) = k(r#"permit (principal, action, resource);"#);
    assert_eq!(e, Enforcement::Collector);
    assert!(why.starts_with("permit"), "{why}");
    let (e, why) = k(
        r#"forbid (principal, action == Action::"use_credential", resource) when { resource.kind == "jwt" };"#,
    );
    assert_eq!(e, Enforcement::Collector);
    assert!(why.contains("fingerprint"), "{why}");
    let (e, why) = k(
        r#"forbid (principal, action == Action::"connect", resource) when { principal.scope.contains("x") };"#,
    );
    assert_eq!(e, Enforcement::Collector);
    assert!(why.contains("principal.scope"), "{why}");
    let (e, why) = k(
        r#"forbid (principal, action == Action::"connect", resource) when { resource.port == 1 && resource.port == 2 };"#,
    );
    assert_eq!(e, Enforcement::Collector);
    assert!(why.contains("two different tests"), "{why}");
}

#[test]
fn kernel_rules_shapes() {
    let s = set_of(
        r#"
@id("p1") @response("kill_process")
forbid (principal, action in [Action::"open_read", Action::"open_write"], resource in Dir::"/secret");
@id("p2")
forbid (principal, action == Action::"open_write", resource) when { resource.path like "/etc/cron*" };
@id("p3") @response("revoke_credential")
forbid (principal, action == Action::"use_credential", resource) when { resource.fingerprint == "hmac-sha256:aa" || resource == Credential::"hmac-sha256:bb" };
@id("p4")
forbid (principal, action == Action::"connect", resource) when { resource in Domain::"evil.com" || resource.host like "*.bad.org" || (resource has addr && resource.addr == ip("9.9.9.9")) };
@id("p5")
forbid (principal, action == Action::"connect", resource) when { principal.owner == "bob" && resource.port == 6667 };
@id("p6")
forbid (principal == Agent::"x", action == Action::"open_read", resource);
"#,
    );
    let agents = [
        AgentInfo {
            id: "bobs".into(),
            owner: "bob".into(),
            ..AgentInfo::default()
        },
        AgentInfo {
            id: "alices".into(),
            owner: "alice".into(),
            ..AgentInfo::default()
        },
    ];
    let r = compile_host_rules(&s, &agents);
    assert!(
        r.policies
            .iter()
            .all(|p| p.enforcement == Enforcement::Kernel),
        "{:?}",
        r.policies
    );
    let all = &r.all_agents;
    let paths: Vec<_> = all
        .forbidden_paths
        .iter()
        .map(|p| {
            (
                p.policy.as_str(),
                p.path.as_str(),
                p.matching,
                p.read,
                p.write,
            )
        })
        .collect();
    assert_eq!(
        paths,
        [
            ("p1", "/secret", PathMatch::Dir, true, true),
            ("p2", "/etc/cron", PathMatch::Prefix, false, true)
        ]
    );
    assert_eq!(all.forbidden_paths[0].response, Response::KillProcess);
    let fps: Vec<_> = all
        .forbidden_credentials
        .iter()
        .map(|c| c.fingerprint.as_str())
        .collect();
    assert_eq!(fps, ["hmac-sha256:aa", "hmac-sha256:bb"]);
    assert_eq!(
        all.forbidden_credentials[0].response,
        Response::RevokeCredential
    );
    let eps: Vec<_> = all
        .deny_endpoints
        .iter()
        .map(|e| {
            (
                e.domain.as_deref(),
                e.host_suffix.as_deref(),
                e.cidr.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        eps,
        [
            (Some("evil.com"), None, None),
            (None, Some(".bad.org"), None),
            (None, None, Some("9.9.9.9/32"))
        ]
    );
    // p5 only for bob's agent; p6 only for agent x (named, not in the list).
    assert_eq!(r.agents["bobs"].deny_endpoints.len(), 4);
    assert_eq!(r.agents["bobs"].deny_endpoints[3].port, Some(6667));
    assert_eq!(r.agents["alices"].deny_endpoints.len(), 3);
    assert_eq!(r.agents["x"].forbidden_paths.last().unwrap().path, "/");
    assert!(
        !r.for_agent("unknown")
            .forbidden_paths
            .iter()
            .any(|p| p.policy == "p6")
    );
}

/// Slicing and guards give exactly the decisions the whole set gives.
#[test]
fn prefiltered_decisions_equal_the_whole_set() {
    let s = set_of(
        r#"
@id("a") forbid (principal == Agent::"a1", action == Action::"open_read", resource in Dir::"/x");
@id("b") forbid (principal, action, resource) when { context.depth > 5 && context.task like "*drop*" };
@id("c") forbid (principal == Agent::"a2", action in [Action::"tool_call", Action::"llm_call"], resource);
@id("d") forbid (principal, action in [Action::"open_read", Action::"connect"], resource)
         when { context.agent_declared };
@id("e") forbid (principal, action, resource is Endpoint) when { resource.port == 22 };
@id("f") forbid (principal, action == Action::"open_write", resource) when { resource.path like "/y/*" && !context.succeeded };
@id("g") forbid (principal, action, resource is File) when { resource.name == "1" || principal == Agent::"a3" } unless { resource in Dir::"/x" };
@id("h") forbid (principal, action in [Action::"connect", Action::"dns_query"], resource)
         when { (resource has addr && resource.addr.isInRange(ip("1.1.0.0/16"))) || resource in Domain::"example.com" };
@id("i") forbid (principal, action == Action::"dns_query", resource) when { resource.host like "*.example.com" && [0, 53].contains(resource.port) };
@id("j") forbid (principal, action == Action::"use_credential", resource) when { resource.kind == "jwt" && resource.hasTag("iss") };
@id("k") forbid (principal, action == Action::"tool_call", resource) when { resource.name == "rm" || resource.server like "evil*" };
@id("l") forbid (principal, action == Action::"llm_call", resource == Model::"openai/gpt-4o");
@id("m") forbid (principal, action == Action::"delegate", resource) when { resource is Agent && resource.declared == false };
@id("n") forbid (principal, action, resource) when { resource in [Dir::"/y", Dir::"/z"] };
@id("o") forbid (principal, action == Action::"exec", resource) when { resource == File::"/bin/sh" || resource.path == "/usr/bin/nc" };
@id("p") forbid (principal, action == Action::"dns_query", resource) when { context.depth >= 6 && !context.agent_declared && !(context.succeeded == false) };
@id("q") forbid (principal, action == Action::"open_read", resource) when { context has root_human && context.root_human in Group::"g1" && context.task like "*drop*" };
@id("r") forbid (principal, action == Action::"tool_call", resource) when { context has root_human && context.root_human == Human::"bob" && 3 > context.depth };
@id("t") forbid (principal, action == Action::"open_write", resource) when { !principal.declared && principal.owner == "" && principal.kind != "discovered" };
@id("s") forbid (principal, action == Action::"connect", resource) when { (context.credential_inherited == false || context.chain_id != "c1") && context.in_root_scope && !context.root_scope_declared };
"#,
    );
    let eval = Evaluator::new(&s);
    let whole = s.to_cedar();
    let auth = cedar_policy::Authorizer::new();
    let net = |op: &str, addr: &str, port| {
        Kind::Net(NetSocket {
            op: op.into(),
            conn: Some(Connection {
                remote_addr: addr.into(),
                remote_port: port,
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    let dns = |n: &str| {
        Kind::Dns(DnsQuery {
            name: n.into(),
            ..Default::default()
        })
    };
    let cred = |kind: &str, iss: bool| {
        Kind::Credential(custody_proto::sensor::v1::CredentialSeen {
            credential: Some(Credential {
                kind: kind.into(),
                fingerprint: "hmac-sha256:77".into(),
                metadata: if iss {
                    [("iss".to_string(), "x".to_string())].into()
                } else {
                    Default::default()
                },
                source: "header".into(),
                ..Default::default()
            }),
        })
    };
    let tool = |n: &str, srv: &str| {
        Kind::Mcp(McpMessage {
            method: "tools/call".into(),
            message_type: "request".into(),
            tool_name: n.into(),
            peer_name: srv.into(),
            ..Default::default()
        })
    };
    let llm = |m: &str| {
        Kind::LlmRequest(LlmRequest {
            provider: "openai".into(),
            model: m.into(),
            ..Default::default()
        })
    };
    let mut failed = Kind::FileOpen(FileOpen {
        path: "/y/z".into(),
        flags: 0o1,
        result: -13,
        ..FileOpen::default()
    });
    if let Kind::FileOpen(f) = &mut failed {
        f.error = "EACCES".into();
    }
    let kinds = || {
        vec![
            open("/x/1", 0, "read"),
            open("/y/1", 0o2, ""),
            open("/z/1", 0o1, ""),
            failed.clone(),
            net("connect", "1.1.1.1", 22),
            net("connect", "1.2.1.1", 443),
            dns("a.example.com"),
            dns("example.com"),
            dns("notexample.com"),
            dns("1.1.2.2"),
            cred("jwt", true),
            cred("jwt", false),
            cred("aws", true),
            tool("rm", "ok"),
            tool("ls", "evil-srv"),
            tool("ls", "good"),
            llm("gpt-4o"),
            llm("o1"),
            Kind::Exec(ProcessExec::default()),
        ]
    };
    let (mut checked, mut denied) = (0, 0);
    let mut fired = std::collections::BTreeSet::new();
    for agent in ["a1", "a2", "a3"] {
        for depth in [1, 6] {
            let ctx = ChainContext {
                depth,
                agents: vec![AgentInfo {
                    id: agent.into(),
                    declared: agent == "a3",
                    ..AgentInfo::default()
                }],
                delegated_by: (agent == "a2").then(|| "a1".to_string()),
                task: if agent == "a1" { "drop tables" } else { "" }.into(),
                chain_id: if agent == "a1" { "c1" } else { "" }.into(),
                root_human: match agent {
                    "a1" => Some(HumanInfo {
                        id: "alice".into(),
                        groups: vec!["g1".into()],
                        via: "login".into(),
                    }),
                    "a2" => Some(HumanInfo {
                        id: "bob".into(),
                        ..HumanInfo::default()
                    }),
                    _ => None,
                },
                ..ChainContext::default()
            };
            for kind in kinds() {
                let mut e = ev(kind);
                e.process.as_mut().unwrap().agent_id = agent.into();
                if agent == "a3" {
                    e.process.as_mut().unwrap().exe = "/bin/sh".into();
                }
                let live = eval.evaluate(&ctx, &e);
                for (i, r) in cedar_requests(&ctx, &e).into_iter().enumerate() {
                    let d = eval.decide(&r);
                    assert_eq!(d, live[i]);
                    let full = auth.is_authorized(&r.request, &whole, &r.entities);
                    let mut ids: Vec<String> = if d.allowed {
                        vec![]
                    } else {
                        full.diagnostics().reason().map(|p| p.to_string()).collect()
                    };
                    ids.sort();
                    let what = format!("{agent} depth {depth} {:?}", r.action);
                    assert_eq!(
                        d.allowed,
                        full.decision() == cedar_policy::Decision::Allow,
                        "{what}"
                    );
                    assert_eq!(d.denied_by, ids, "{what}");
                    assert_eq!(
                        full.diagnostics().errors().count(),
                        0,
                        "{what}: {:?}",
                        full.diagnostics()
                            .errors()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                    );
                    checked += 1;
                    denied += usize::from(!d.allowed);
                    for id in &d.denied_by {
                        fired.insert(id.clone());
                    }
                }
            }
        }
    }
    assert!(
        checked > 100 && denied > 30 && checked - denied > 20,
        "{checked} {denied}"
    );
    // Every policy denied something: the comparison covers each of them.
    assert_eq!(fired.len(), s.len(), "{fired:?}");
}

#[test]
fn entities_carry_hierarchy_and_attributes() {
    let s = set_of(
        r#"
@id("dir") forbid (principal, action == Action::"open_read", resource in Dir::"/data");
@id("dom") forbid (principal, action == Action::"dns_query", resource in Domain::"example.com");
@id("own") forbid (principal, action == Action::"connect", resource) when { principal.owner == "bob" && context.root_agent.declared };
@id("grp") forbid (principal, action == Action::"tool_call", resource) when { context has root_human && context.root_human in Group::"contractors" && context.task like "*payroll*" };
"#,
    );
    let eval = Evaluator::new(&s);
    let ctx = ChainContext {
        root_human: Some(HumanInfo {
            id: "carol".into(),
            groups: vec!["contractors".into()],
            via: "login".into(),
        }),
        task: "fix the payroll export".into(),
        depth: 2,
        agents: vec![
            AgentInfo {
                id: "root".into(),
                declared: true,
                ..AgentInfo::default()
            },
            AgentInfo {
                id: "a1".into(),
                owner: "bob".into(),
                ..AgentInfo::default()
            },
        ],
        ..ChainContext::default()
    };
    let deny = |k: Kind| {
        let d = eval.evaluate(&ctx, &ev(k));
        assert!(d[0].diagnostics.is_empty(), "{d:?}");
        d[0].denied_by.clone()
    };
    assert_eq!(deny(open("/data/a/b", 0, "read")), ["dir"]);
    assert!(deny(open("/datax/a", 0, "read")).is_empty());
    assert_eq!(
        deny(Kind::Dns(DnsQuery {
            name: "a.b.example.com".into(),
            ..Default::default()
        })),
        ["dom"]
    );
    assert!(
        deny(Kind::Dns(DnsQuery {
            name: "notexample.com".into(),
            ..Default::default()
        }))
        .is_empty()
    );
    assert_eq!(
        deny(Kind::Net(NetSocket {
            op: "connect".into(),
            conn: Some(Connection {
                remote_addr: "1.1.1.1".into(),
                remote_port: 1,
                ..Default::default()
            }),
            ..Default::default()
        })),
        ["own"]
    );
    assert_eq!(
        deny(Kind::Mcp(McpMessage {
            method: "tools/call".into(),
            message_type: "request".into(),
            tool_name: "x".into(),
            ..Default::default()
        })),
        ["grp"]
    );
}
