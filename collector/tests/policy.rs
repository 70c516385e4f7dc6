//! Custody policies end to end through the library API: loading and its errors, the
//! finance intent-drift example, kernel compilation, dry runs.

use std::path::PathBuf;

use custody_policy::{
    Action, AgentInfo, ChainContext, CredentialInfo, Enforcement, ErrorKind, Evaluator, HostRules,
    HumanInfo, PolicySet, Response, Severity, compile_host_rules, dry_run,
};
use custody_proto::sensor::v1::{
    Connection, Credential, CredentialSeen, DnsQuery, Event, FileAccess, FileOpen, McpMessage,
    NetSocket, Process, event::Kind,
};

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn agent(id: &str, owner: &str, declared: bool, scope: &[&str]) -> AgentInfo {
    AgentInfo {
        id: id.into(),
        name: id.into(),
        owner: owner.into(),
        declared,
        kind: if declared { "declared" } else { "discovered" }.into(),
        scope: scope.iter().map(|s| s.to_string()).collect(),
    }
}

/// alice → supervisor (declared, scope /data/finance) → worker → worker's MCP tool
/// server: the chain as the collector would know it for an event of the MCP server.
fn finance_chain() -> ChainContext {
    ChainContext {
        chain_id: "h1:100:1".into(),
        root_human: Some(HumanInfo {
            id: "alice".into(),
            groups: vec!["finance".into()],
            via: "login".into(),
        }),
        task: "Summarise Q3 revenue from /data/finance".into(),
        depth: 3,
        agents: vec![
            agent("supervisor", "alice", true, &["/data/finance"]),
            agent("worker", "alice", false, &[]),
            agent("mcp-files", "", false, &[]),
        ],
        host: "h1".into(),
        credential: None,
        inherited_credentials: vec![],
        delegated_by: None,
        incomplete: false,
    }
}

fn process(agent_id: &str) -> Process {
    Process {
        exec_id: "h1:300:7".into(),
        parent_exec_id: "h1:200:5".into(),
        pid: 300,
        agent_id: agent_id.into(),
        agent_kind: "discovered".into(),
        exe: "/usr/bin/python3".into(),
        cwd: "/srv/mcp".into(),
        ..Process::default()
    }
}

fn event(seq: u64, kind: Kind) -> Event {
    Event {
        host: "h1".into(),
        time_ns: 1_700_000_000_000_000_000 + seq,
        seq,
        process: Some(process("mcp-files")),
        kind: Some(kind),
    }
}

fn read(seq: u64, path: &str) -> Event {
    event(
        seq,
        Kind::FileOpen(FileOpen {
            path: path.into(),
            flags: 0,
            access: FileAccess::Read.into(),
            result: 3,
            ..FileOpen::default()
        }),
    )
}

fn connect(seq: u64, addr: &str, port: u32) -> Event {
    event(
        seq,
        Kind::Net(NetSocket {
            op: "connect".into(),
            conn: Some(Connection {
                protocol: "tcp".into(),
                family: "ipv4".into(),
                local_addr: "10.0.0.5".into(),
                local_port: 40000,
                remote_addr: addr.into(),
                remote_port: port,
            }),
            result: 0,
            error: String::new(),
        }),
    )
}

const FINANCE_POLICY: &str = r#"
// Reads outside the root's scope, by anyone the root handed work to.
@id("reads-outside-root-scope")
@response("kill_chain")
@severity("critical")
forbid (principal, action == Action::"open_read", resource in Dir::"/data")
when { context.depth >= 2 && context.root_scope_declared && !context.in_root_scope };
"#;

#[test]
fn finance_reads_outside_root_scope_kill_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir, "finance.cedar", FINANCE_POLICY);
    let set = PolicySet::load_dir(dir.path()).unwrap();
    let eval = Evaluator::new(&set);
    let ctx = finance_chain();

    let ds = eval.evaluate(&ctx, &read(1, "/data/hr/salaries.csv"));
    assert_eq!(ds.len(), 1, "{ds:?}");
    let d = &ds[0];
    assert_eq!(d.action, Action::OpenRead);
    assert_eq!(d.principal, "mcp-files");
    assert_eq!(d.resource, r#"File::"/data/hr/salaries.csv""#);
    assert!(!d.allowed);
    assert_eq!(d.denied_by, ["reads-outside-root-scope"]);
    assert_eq!(d.response, Some(Response::KillChain));
    assert_eq!(d.severity, Some(Severity::Critical));
    assert!(!d.context_incomplete);
    assert!(d.diagnostics.is_empty(), "{:?}", d.diagnostics);

    let ok = eval.evaluate(&ctx, &read(2, "/data/finance/q3.csv"));
    assert_eq!(ok.len(), 1);
    assert!(ok[0].allowed, "{ok:?}");
    assert!(ok[0].denied_by.is_empty() && ok[0].response.is_none());

    // ".." does not smuggle a path into the scope.
    let sneaky = eval.evaluate(&ctx, &read(3, "/data/finance/../hr/salaries.csv"));
    assert!(!sneaky[0].allowed);
    assert_eq!(sneaky[0].resource, r#"File::"/data/hr/salaries.csv""#);

    // The root agent itself (depth 1) is not drifting.
    let mut root = ctx.clone();
    root.depth = 1;
    root.agents.truncate(1);
    let mut ev = read(4, "/data/hr/salaries.csv");
    ev.process = Some(process("supervisor"));
    assert!(eval.evaluate(&root, &ev)[0].allowed);
}

#[test]
fn builtin_intent_drift_flags_the_finance_example() {
    let eval = Evaluator::new(&PolicySet::builtin());
    let ctx = finance_chain();
    let d = &eval.evaluate(&ctx, &read(1, "/data/hr/salaries.csv"))[0];
    assert!(!d.allowed);
    assert_eq!(d.denied_by, ["intent-drift-file-outside-root-scope"]);
    assert_eq!(d.response, Some(Response::Alert));
    assert!(eval.evaluate(&ctx, &read(2, "/data/finance/q3.csv"))[0].allowed);
    // Libraries are outside the scope but exempt.
    assert!(eval.evaluate(&ctx, &read(3, "/usr/lib/python3.12/os.py"))[0].allowed);
    // A tool call and a connect: the root declares no tools or endpoints.
    let tool = event(
        4,
        Kind::Mcp(McpMessage {
            transport: "stdio".into(),
            message_type: "request".into(),
            method: "tools/call".into(),
            tool_name: "read_file".into(),
            ..McpMessage::default()
        }),
    );
    let d = eval.evaluate(&ctx, &tool);
    assert_eq!(
        (d.len(), d[0].action, d[0].allowed),
        (1, Action::ToolCall, true)
    );
    assert!(eval.evaluate(&ctx, &connect(5, "93.184.216.34", 443))[0].allowed);
}

#[test]
fn builtin_credential_inheritance() {
    let eval = Evaluator::new(&PolicySet::builtin());
    let fp = "hmac-sha256:00ff";
    let cred = |source: &str| {
        event(
            1,
            Kind::Credential(CredentialSeen {
                credential: Some(Credential {
                    kind: "aws_access_key".into(),
                    fingerprint: fp.into(),
                    metadata: [("key_id_prefix".to_string(), "AKIA".to_string())].into(),
                    source: source.into(),
                    location: "/home/alice/.aws/credentials".into(),
                }),
            }),
        )
    };
    let mut ctx = finance_chain();
    // Read from a file nobody above it held: flagged.
    let d = &eval.evaluate(&ctx, &cred("file"))[0];
    assert_eq!(d.action, Action::UseCredential);
    assert_eq!(d.resource, format!("Credential::{fp:?}"));
    assert_eq!(d.denied_by, ["credential-not-inherited"]);
    // Given in the environment by its parent: fine.
    assert!(eval.evaluate(&ctx, &cred("env"))[0].allowed);
    // Held upstream: fine.
    ctx.inherited_credentials = vec![fp.into()];
    assert!(eval.evaluate(&ctx, &cred("file"))[0].allowed);
}

#[test]
fn endpoint_deny_list_compiles_to_host_rules() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir,
        "net.cedar",
        r#"
@id("deny-exfil-host")
@response("kill_process")
@severity("high")
forbid (principal, action == Action::"connect", resource)
when { resource has addr && resource.addr.isInRange(ip("203.0.113.0/24")) && resource.port == 443 };

@id("supervisor-no-ssh")
forbid (principal == Agent::"supervisor", action == Action::"connect", resource)
when { [22, 2222].contains(resource.port) };

@id("deep-hops-no-network")
@response("quarantine")
forbid (principal, action == Action::"connect", resource)
when { context.depth >= 3 };
"#,
    );
    let set = PolicySet::load_dir(dir.path()).unwrap();
    let agents = [
        agent("supervisor", "alice", true, &["/data/finance"]),
        agent("worker", "alice", false, &[]),
    ];
    let rules = compile_host_rules(&set, &agents);

    let deny = &rules.all_agents.deny_endpoints;
    assert_eq!(deny.len(), 1, "{deny:?}");
    assert_eq!(deny[0].policy, "deny-exfil-host");
    assert_eq!(deny[0].cidr.as_deref(), Some("203.0.113.0/24"));
    assert_eq!(deny[0].port, Some(443));
    assert_eq!(deny[0].response, Response::KillProcess);
    let sup = &rules.agents["supervisor"].deny_endpoints;
    let ports: Vec<_> = sup.iter().filter_map(|r| r.port).collect();
    assert_eq!(ports, [443, 22, 2222]);
    assert_eq!(rules.agents["worker"].deny_endpoints.len(), 1);

    let info = |id: &str| rules.policies.iter().find(|p| p.id == id).unwrap().clone();
    assert_eq!(info("deny-exfil-host").enforcement, Enforcement::Kernel);
    let deep = info("deep-hops-no-network");
    assert_eq!(deep.enforcement, Enforcement::Collector);
    assert!(deep.why.contains("context.depth"), "{}", deep.why);
    // The same in the list.
    let listed = set.list();
    let l = listed
        .iter()
        .find(|p| p.id == "deep-hops-no-network")
        .unwrap();
    assert_eq!(l.enforcement, Enforcement::Collector);
    assert!(l.why.contains("context.depth"));

    // Wire round trip (travels as a PolicyUpdate's HostRules).
    let wire = rules.to_wire();
    let json = serde_json::to_string(&wire).unwrap();
    assert!(json.contains("203.0.113.0/24"), "{json}");
    let bytes = prost::Message::encode_to_vec(&wire);
    assert_eq!(
        <custody_proto::sensor::v1::HostRules as prost::Message>::decode(&bytes[..]).unwrap(),
        wire
    );

    // The collector agrees with the kernel rule.
    let eval = Evaluator::new(&set);
    let d = &eval.evaluate(&finance_chain(), &connect(1, "203.0.113.9", 443))[0];
    assert_eq!(d.denied_by, ["deep-hops-no-network", "deny-exfil-host"]);
    assert_eq!(d.response, Some(Response::KillProcess));
    let d = &eval.evaluate(&finance_chain(), &connect(2, "203.0.113.9", 80))[0];
    assert_eq!(d.denied_by, ["deep-hops-no-network"]);
}

#[test]
fn syntax_error_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "broken.cedar",
        "// comment\n@id(\"ok\")\nforbid (principal, action, resource)\nwhen { resource.port = 3 };\n",
    );
    let err = PolicySet::load_dir(dir.path()).unwrap_err();
    let e = &err.errors()[0];
    assert_eq!(e.kind, ErrorKind::Syntax);
    assert_eq!(e.file, p.display().to_string());
    assert_eq!((e.line, e.column), (4, 8), "{e}");
    assert!(err.to_string().contains("broken.cedar:4:8"), "{err}");
}

#[test]
fn validation_error_is_located_and_nothing_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir, "a-good.cedar", FINANCE_POLICY);
    let p = write(
        &dir,
        "b-typo.cedar",
        concat!(
            "@id(\"typo\")\n",
            "forbid (principal, action == Action::\"open_read\", resource)\n",
            "when { resource.pth like \"/secret/*\" };\n",
        ),
    );
    // The caller keeps its previous set: loading returns no set at all.
    let old = PolicySet::builtin();
    let err = PolicySet::load_dir(dir.path()).unwrap_err();
    assert_eq!(err.errors().len(), 1, "{err}");
    let e = &err.errors()[0];
    assert_eq!(e.kind, ErrorKind::Validation);
    assert_eq!(e.file, p.display().to_string());
    assert_eq!((e.line, e.column), (3, 8), "{e}");
    assert!(e.message.contains("pth"), "{e}");
    assert_eq!(old.len(), PolicySet::builtin().len());
}

#[test]
fn bad_response_and_severity_are_rejected() {
    let src = |ann: &str| {
        vec![(
            "x.cedar".to_string(),
            format!("@id(\"p\")\n{ann}\nforbid (principal, action, resource);\n"),
        )]
    };
    let err = PolicySet::from_sources(src("@response(\"nuke\")")).unwrap_err();
    let e = &err.errors()[0];
    assert_eq!(e.kind, ErrorKind::Annotation);
    assert_eq!((e.line, e.column), (2, 1));
    assert!(
        e.message.contains("nuke") && e.message.contains("kill_chain"),
        "{e}"
    );
    let err = PolicySet::from_sources(src("@severity(\"meh\")")).unwrap_err();
    assert_eq!(err.errors()[0].kind, ErrorKind::Annotation);
    for r in Response::ALL {
        PolicySet::from_sources(src(&format!("@response({:?})", r.as_str()))).unwrap();
    }
    // Duplicate ids, across files too.
    let dup = vec![
        (
            "a.cedar".to_string(),
            "@id(\"same\")\nforbid (principal, action, resource);".to_string(),
        ),
        (
            "b.cedar".to_string(),
            "\n@id(\"same\")\nforbid (principal, action, resource);".to_string(),
        ),
    ];
    let err = PolicySet::from_sources(dup).unwrap_err();
    let e = &err.errors()[0];
    assert_eq!((e.file.as_str(), e.line, e.column), ("b.cedar", 2, 1));
}

#[test]
fn builtin_files_are_the_default_set_and_load_from_disk() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies");
    let from_disk = PolicySet::load_dir(&dir).unwrap();
    let builtin = PolicySet::builtin();
    let ids = |s: &PolicySet| s.list().into_iter().map(|p| p.id).collect::<Vec<_>>();
    assert_eq!(ids(&from_disk), ids(&builtin));
    assert!(builtin.len() >= 4);
    for p in builtin.list().iter().skip(1) {
        assert_eq!(p.effect, "forbid");
        assert_eq!(p.enforcement, Enforcement::Collector, "{p:?}");
        assert!(
            p.why.contains("context.") || p.why.contains("sensors enforce only"),
            "{p:?}"
        );
    }
    assert_eq!(builtin.list()[0].id, custody_policy::BASE_PERMIT_ID);
    // The examples are valid too, and say where they are enforced.
    let ex = PolicySet::load_dir(dir.join("examples")).unwrap();
    let where_ = |id: &str| {
        let p = ex.get(id).unwrap_or_else(|| panic!("{id}"));
        (p.enforcement, p.why.clone())
    };
    for id in [
        "deny-cloud-metadata",
        "deny-paste-sites",
        "undeclared-agents-no-ssh",
        "no-ssh-keys",
        "no-shadow",
        "leaked-deploy-key",
    ] {
        assert_eq!(where_(id).0, Enforcement::Kernel, "{id}: {}", where_(id).1);
    }
    assert!(
        where_("deny-paste-sites")
            .1
            .contains("dns_query: evaluated by the collector")
    );
    for id in [
        "no-shells-deep-in-chains",
        "finance-reads-outside-root-scope",
        "finance-models-for-finance-humans",
    ] {
        assert_eq!(where_(id).0, Enforcement::Collector, "{id}");
    }
    let rules = compile_host_rules(&ex, &[agent("bot", "", false, &[])]);
    let bot = &rules.agents["bot"];
    assert!(bot.deny_endpoints.iter().any(|e| e.port == Some(22)));
    assert!(
        !rules
            .all_agents
            .deny_endpoints
            .iter()
            .any(|e| e.port == Some(22))
    );
    assert!(
        bot.deny_endpoints
            .iter()
            .any(|e| e.domain.as_deref() == Some("pastebin.com"))
    );
    assert!(
        bot.forbidden_paths
            .iter()
            .any(|p| p.path == "/root/.ssh" && p.read && p.write)
    );
    assert_eq!(bot.forbidden_credentials.len(), 1);
}

#[test]
fn shareable_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<PolicySet>();
    send_sync::<Evaluator>();
    send_sync::<custody_policy::PreparedChain>();
    send_sync::<HostRules>();
}

#[test]
fn dry_run_equals_live_evaluation() {
    let mut set_src = PolicySet::builtin_files()
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect::<Vec<_>>();
    set_src.push(("finance.cedar".into(), FINANCE_POLICY.into()));
    let set = PolicySet::from_sources(set_src).unwrap();
    let ctx = finance_chain();
    let mut other = ctx.clone();
    other.root_human = None;
    other.incomplete = true;
    let items: Vec<(ChainContext, Event)> = vec![
        (ctx.clone(), read(1, "/data/hr/salaries.csv")),
        (ctx.clone(), read(2, "/data/finance/q3.csv")),
        (ctx.clone(), connect(3, "10.1.2.3", 5432)),
        (
            ctx.clone(),
            event(
                4,
                Kind::Dns(DnsQuery {
                    name: "pastebin.com.".into(),
                    qtype: "A".into(),
                    server: "10.0.0.2".into(),
                }),
            ),
        ),
        (other.clone(), read(5, "/data/hr/bonus.csv")),
        (ChainContext::default(), read(6, "/etc/shadow")),
    ];
    let report = dry_run(&set, items.clone().into_iter());
    let eval = Evaluator::new(&set);
    let live: Vec<_> = items.iter().map(|(c, e)| eval.evaluate(c, e)).collect();
    assert_eq!(report.decisions, live);
    assert_eq!(report.events, 6);
    assert_eq!(report.decisions_total, 6);
    let count = |id: &str| {
        report
            .per_policy
            .iter()
            .find(|p| p.id == id)
            .unwrap()
            .denied
    };
    assert_eq!(count("reads-outside-root-scope"), 2);
    assert_eq!(count("intent-drift-file-outside-root-scope"), 2);
    assert_eq!(count("credential-not-inherited"), 0);
    assert_eq!(report.denied, 2);
    // Missing context is evaluated and marked.
    assert!(report.decisions[4][0].context_incomplete);
    assert!(report.decisions[5][0].context_incomplete);
    assert!(!report.decisions[0][0].context_incomplete);
}

#[test]
fn credential_in_use_is_context() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir,
        "llm.cedar",
        r#"
@id("no-personal-keys-for-models")
forbid (principal, action == Action::"llm_call", resource)
when { context has credential && context.credential.hasTag("personal") };

@id("only-finance-humans")
forbid (principal, action == Action::"llm_call", resource)
when { context has root_human && !(context.root_human in Group::"finance") };
"#,
    );
    let set = PolicySet::load_dir(dir.path()).unwrap();
    let eval = Evaluator::new(&set);
    let llm = event(
        1,
        Kind::LlmRequest(custody_proto::sensor::v1::LlmRequest {
            provider: "openai".into(),
            model: "gpt-4o".into(),
            ..Default::default()
        }),
    );
    let mut ctx = finance_chain();
    let d = &eval.evaluate(&ctx, &llm)[0];
    assert_eq!(
        (d.action, d.resource.as_str()),
        (Action::LlmCall, r#"Model::"openai/gpt-4o""#)
    );
    assert!(d.allowed, "{d:?}");
    ctx.credential = Some(CredentialInfo {
        kind: "openai_api_key".into(),
        fingerprint: "hmac-sha256:abcd".into(),
        source: "header".into(),
        location: "authorization".into(),
        metadata: [("personal".to_string(), "yes".to_string())].into(),
    });
    ctx.root_human.as_mut().unwrap().groups = vec!["sales".into()];
    let d = &eval.evaluate(&ctx, &llm)[0];
    assert_eq!(
        d.denied_by,
        ["no-personal-keys-for-models", "only-finance-humans"]
    );
}
