//! Rule reading (the contract's JSON rendering of `HostRules`, as custodyd keeps
//! the rules in its state dir) and compilation to kernel map entries. The kernel
//! side is tested end to end in tests/tests/policy_kernel.rs.

use std::collections::BTreeMap;
use std::net::IpAddr;

use agent_ebpf::policy;

use super::compile::{Net, Plan, normalize, path_matches};
use custody_proto::enums::WireEnum;

use super::rules::{EndpointRule, Enforcement, HostRules, HostRulesExt, PathMatch, PathRule};

/// Rules the collector compiled from a sample policy set, in the contract's JSON
/// rendering (what `policy::parse` reads back from the state dir).
const FIXTURE: &str = include_str!("../../tests/fixtures/host_rules.json");

fn fixture() -> HostRules {
    let (rules, _) = super::parse(FIXTURE).expect("the sample host rules parse");
    rules
}

fn resolved(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<IpAddr>> {
    let mut m: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for (n, a) in pairs {
        m.entry(n.to_string()).or_default().push(a.parse().unwrap());
    }
    m
}

fn slots(id: &str) -> Option<u32> {
    match id {
        "x" => Some(1),
        "y" => Some(2),
        _ => None,
    }
}

#[test]
fn stored_rules_json_parses_field_for_field() {
    let r = fixture();
    let x = &r.agents["x"];
    let exfil = &x.deny_endpoints[0];
    assert_eq!(
        (
            exfil.policy.as_str(),
            exfil.response().name(),
            exfil.cidr.as_deref(),
            exfil.port
        ),
        ("no-exfil", "alert", Some("10.231.7.3/32"), Some(9999))
    );
    let secret = &x.forbidden_paths[0];
    assert_eq!(
        (
            secret.path.as_str(),
            secret.r#match(),
            secret.read,
            secret.write
        ),
        ("/srv/secret", PathMatch::Dir, true, true)
    );
    assert!(
        r.every_agent()
            .forbidden_paths
            .iter()
            .any(|p| p.path == "/etc/cron" && p.r#match() == PathMatch::Prefix && p.write)
    );
    assert_eq!(
        r.agents["y"].forbidden_credentials[0].response().name(),
        "revoke_credential"
    );
    let ssh: Vec<_> = r.agents["undeclared:python3"]
        .deny_endpoints
        .iter()
        .filter(|e| e.policy == "no-ssh-undeclared")
        .map(|e| (e.port, e.protocol.as_deref()))
        .collect();
    assert_eq!(ssh, [(Some(22), Some("tcp")), (Some(2222), Some("tcp"))]);
    assert!(
        r.policies
            .iter()
            .any(|p| p.id == "deep-shells" && p.enforcement() == Enforcement::Collector)
    );
    assert_eq!(r.names(), ["evil.example", "pastebin.com"]);
    // Unknown fields (a newer collector) are ignored.
    let mut v: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    v["something_new"] = serde_json::json!(1);
    v["all_agents"]["deny_endpoints"][0]["weight"] = serde_json::json!(2);
    assert!(serde_json::from_value::<HostRules>(v).is_ok());
}

#[test]
fn fixture_compiles_to_map_entries() {
    let r = fixture();
    let plan = Plan::new(
        &r,
        &resolved(&[
            ("pastebin.com", "104.20.1.2"),
            ("evil.example", "2001:db8::7"),
        ]),
    );
    // The *.bad.example suffix cannot be resolved ahead; pastebin.com's subdomains
    // are left to the collector too.
    assert!(
        plan.not_kernel
            .iter()
            .any(|n| n.contains("no-bad-hosts") && n.contains(".bad.example")),
        "{:?}",
        plan.not_kernel
    );
    assert!(
        plan.not_kernel
            .iter()
            .any(|n| n.contains("names below pastebin.com"))
    );
    assert_eq!(plan.collector_only, 1);
    // Rules for every agent are not repeated per agent.
    assert_eq!(
        plan.net
            .iter()
            .filter(|e| plan.rules[e.rule as usize].policy == "no-metadata")
            .count(),
        1
    );
    let e = plan.entries(&slots);
    assert_eq!(
        e.waiting.iter().map(String::as_str).collect::<Vec<_>>(),
        ["undeclared:python3"]
    );
    // x: 10.231.7.3/32 port 9999, as ::ffff:10.231.7.3/128 under slot 1.
    let exfil = Net::parse("10.231.7.3").unwrap();
    assert_eq!(exfil.len, 128);
    let v = e.net[&(1, exfil)];
    assert_eq!(v.count, 1);
    assert_eq!((v.rules[0].port, v.rules[0].proto), (9999, 0));
    assert_eq!(plan.rules[v.rules[0].rule as usize].policy, "no-exfil");
    // Every agent: metadata range, the resolved names.
    for (net, pol) in [
        ("169.254.0.0/16", "no-metadata"),
        ("104.20.1.2", "no-paste"),
        ("2001:db8::7", "no-bad-hosts"),
    ] {
        let v = e.net[&(policy::ANY_AGENT, Net::parse(net).unwrap())];
        assert_eq!(plan.rules[v.rules[0].rule as usize].policy, pol, "{net}");
    }
    // Paths: /srv/secret (dir, x) read+write; /etc/shadow exact read; /etc/cron
    // prefix write, for every agent.
    let key = |slot: u32, p: &str| (slot, p.len() as u32, policy::path_hash(p.as_bytes()));
    let secret = e.paths[&key(1, "/srv/secret")];
    assert_eq!((secret.read, secret.write), (policy::DIR, policy::DIR));
    let shadow = e.paths[&key(policy::ANY_AGENT, "/etc/shadow")];
    assert_eq!((shadow.read, shadow.write), (policy::EXACT, 0));
    let cron = e.paths[&key(policy::ANY_AGENT, "/etc/cron")];
    assert_eq!((cron.read, cron.write), (0, policy::PREFIX));
    let lens = &e.meta.path_lens[..e.meta.nlens as usize];
    assert_eq!(lens, [9, 11], "distinct lengths, shortest first");
    assert_eq!(e.meta.flags, policy::HAS_NET | policy::HAS_PATH);
    // Credentials: y only.
    assert!(
        plan.credential(
            Some("y"),
            "hmac-sha256:00000000000000000000000000000000000000000000000000000000000000aa"
        )
        .is_some()
    );
    assert!(
        plan.credential(
            Some("x"),
            "hmac-sha256:00000000000000000000000000000000000000000000000000000000000000aa"
        )
        .is_none()
    );
    assert_eq!(plan.creds[0].action, "kill");
    // Unresolved names stay with the collector.
    let plan = Plan::new(&r, &BTreeMap::new());
    assert!(
        plan.not_kernel
            .iter()
            .any(|n| n.contains("evil.example did not resolve"))
    );
}

fn ep(policy: &str, cidr: Option<&str>, port: Option<u16>) -> EndpointRule {
    EndpointRule {
        policy: policy.into(),
        cidr: cidr.map(str::to_string),
        port: port.map(u32::from),
        ..Default::default()
    }
}

#[test]
fn longer_prefixes_carry_the_rules_of_the_shorter_ones() {
    let mut r = HostRules::default();
    r.all_agents.get_or_insert_default().deny_endpoints = vec![
        ep("wide", Some("10.0.0.0/8"), Some(443)),
        ep("narrow", Some("10.1.2.3/32"), Some(80)),
        ep("everything-ssh", None, Some(22)),
        ep("v6", Some("fd00::/8"), None),
    ];
    r.all_agents.get_or_insert_default().deny_endpoints[1].protocol = Some("tcp".into());
    let plan = Plan::new(&r, &BTreeMap::new());
    let e = plan.entries(&slots);
    let narrow = e.net[&(policy::ANY_AGENT, Net::parse("10.1.2.3/32").unwrap())];
    let got: Vec<(u16, u8, &str)> = narrow.rules[..narrow.count as usize]
        .iter()
        .map(|r| (r.port, r.proto, plan.rules[r.rule as usize].policy.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (80, 6, "narrow"),
            (443, 0, "wide"),
            (22, 0, "everything-ssh")
        ]
    );
    let any = e.net[&(policy::ANY_AGENT, Net::ANY)];
    assert_eq!(any.count, 1, "::/0 covers IPv4 (mapped) and IPv6");
    let v6 = e.net[&(policy::ANY_AGENT, Net::parse("fd00::/8").unwrap())];
    assert_eq!(v6.count, 2);
    assert!(
        Net::parse("10.0.0.0/8")
            .unwrap()
            .contains(&Net::parse("10.9.9.9").unwrap())
    );
    assert!(
        !Net::parse("10.0.0.0/8")
            .unwrap()
            .contains(&Net::parse("11.0.0.1").unwrap())
    );
    assert!(Net::ANY.contains(&Net::parse("fd00::1").unwrap()));
    assert_eq!(Net::parse("10.1.0.0/33"), None);
    assert_eq!(
        Net::parse("10.1.255.255/16").unwrap().to_string(),
        "10.1.0.0/16"
    );
}

#[test]
fn too_many_port_rules_under_one_prefix_are_reported() {
    let mut r = HostRules::default();
    r.all_agents.get_or_insert_default().deny_endpoints = (1..=20)
        .map(|p| ep("ports", Some("10.0.0.1/32"), Some(p)))
        .collect();
    let plan = Plan::new(&r, &BTreeMap::new());
    let e = plan.entries(&slots);
    assert_eq!(
        e.net.values().next().unwrap().count as usize,
        policy::NET_RULES_MAX
    );
    assert_eq!(e.overflow.len(), 20 - policy::NET_RULES_MAX);
}

fn pr(path: &str, m: PathMatch, read: bool, write: bool) -> PathRule {
    PathRule {
        policy: format!("p:{path}"),
        path: path.into(),
        r#match: m.into(),
        read,
        write,
        ..Default::default()
    }
}

#[test]
fn path_rules_match_like_the_kernel() {
    // The kernel's test at a prefix of n bytes, given the next byte.
    assert!(path_matches(b"/srv/secret", policy::DIR, b"/srv/secret"));
    assert!(path_matches(
        b"/srv/secret",
        policy::DIR,
        b"/srv/secret/a/b"
    ));
    assert!(!path_matches(b"/srv/secret", policy::DIR, b"/srv/secrets"));
    assert!(path_matches(b"/etc/shadow", policy::EXACT, b"/etc/shadow"));
    assert!(!path_matches(
        b"/etc/shadow",
        policy::EXACT,
        b"/etc/shadow-"
    ));
    assert!(path_matches(b"/etc/cron", policy::PREFIX, b"/etc/cron.d/x"));
    assert!(path_matches(b"", policy::DIR, b"/anything"));
    assert_eq!(normalize("/srv//secret/./a/../b"), "/srv/secret/b");
    assert_eq!(normalize("/.."), "/");

    let mut r = HostRules::default();
    r.agents.insert(
        "x".into(),
        super::rules::AgentRules {
            forbidden_paths: vec![
                pr("/srv/secret/", PathMatch::Dir, true, true),
                pr("/", PathMatch::Dir, false, true),
                pr("/data/x/", PathMatch::Prefix, true, false),
                pr("relative/path", PathMatch::Dir, true, true),
                pr(&format!("/{}", "a".repeat(300)), PathMatch::Dir, true, true),
            ],
            ..Default::default()
        },
    );
    let plan = Plan::new(&r, &BTreeMap::new());
    assert!(plan.not_kernel.iter().any(|n| n.contains("not absolute")));
    assert!(
        plan.not_kernel
            .iter()
            .any(|n| n.contains("longer than 255"))
    );
    let e = plan.entries(&slots);
    let key = |p: &str| (1, p.len() as u32, policy::path_hash(p.as_bytes()));
    assert!(
        e.paths.contains_key(&key("/srv/secret")),
        "trailing '/' dropped"
    );
    assert_eq!(
        e.paths[&key("")].write,
        policy::DIR,
        "\"/\" is the empty prefix"
    );
    assert_eq!(e.paths[&key("/data/x/")].read, policy::PREFIX);
    assert_eq!(e.paths.len(), 3, "the over-long path is the daemon's only");
    assert_eq!(&e.meta.path_lens[..e.meta.nlens as usize], [0, 8, 11]);
    // The daemon's own check (after the fact): per agent and access.
    assert!(
        plan.path_rule(Some("x"), "/srv/secret/k", true, false)
            .is_some()
    );
    assert!(
        plan.path_rule(Some("y"), "/srv/secret/k", true, false)
            .is_none()
    );
    assert!(
        plan.path_rule(Some("x"), "/tmp/file", false, true)
            .is_some(),
        "\"/\" forbids all writes"
    );
    assert!(
        plan.path_rule(Some("x"), "/tmp/file", true, false)
            .is_none()
    );
    assert!(plan.path_rule(Some("x"), "/data/x", true, false).is_none());
    assert!(
        plan.path_rule(Some("x"), &format!("/{}/f", "a".repeat(300)), true, false)
            .is_some()
    );
}

#[test]
fn rule_lengths_beyond_what_the_kernel_checks_are_left_to_the_daemon() {
    let mut r = HostRules::default();
    r.all_agents.get_or_insert_default().forbidden_paths = (1..=40)
        .map(|n| pr(&format!("/{}", "d".repeat(n)), PathMatch::Dir, true, false))
        .collect();
    let plan = Plan::new(&r, &BTreeMap::new());
    let e = plan.entries(&slots);
    assert_eq!(e.meta.nlens as usize, policy::PATH_LENS_MAX);
    assert_eq!(e.paths.len(), policy::PATH_LENS_MAX);
    assert_eq!(e.path_overflow.len(), 40 - policy::PATH_LENS_MAX);
    // Still the daemon's to check after the open.
    assert!(
        plan.path_rule(Some("x"), &format!("/{}/f", "d".repeat(40)), true, false)
            .is_some()
    );
}

#[test]
fn agents_known_later_get_their_rules() {
    let mut r = HostRules::default();
    r.agents.insert(
        "late".into(),
        super::rules::AgentRules {
            deny_endpoints: vec![ep("p", Some("10.0.0.1/32"), None)],
            ..Default::default()
        },
    );
    let plan = Plan::new(&r, &BTreeMap::new());
    let e = plan.entries(&slots);
    assert!(e.net.is_empty());
    assert_eq!(e.meta.flags, 0, "nothing armed until the agent appears");
    let e = plan.entries(&|id| (id == "late").then_some(7));
    assert!(e.net.contains_key(&(7, Net::parse("10.0.0.1").unwrap())));
    assert!(e.waiting.is_empty());
}

#[test]
fn opens_the_kernel_cannot_match_are_found_after_the_fact() {
    use custody_proto::sensor::v1::{Event, FileOpen, Process, event::Kind};
    let mut r = HostRules::default();
    r.agents.insert(
        "x".into(),
        super::rules::AgentRules {
            forbidden_paths: vec![pr("/srv/secret", PathMatch::Dir, true, false)],
            ..Default::default()
        },
    );
    let mut pol = super::Policy::new(std::path::Path::new("/nonexistent"), None, false, false);
    let ident = crate::identity::Identity::new(
        crate::config::Config::parse("[[agent]]\nid = \"x\"\n[agent.match]\nenv = \"x\"\n", "t")
            .unwrap()
            .agents,
    );
    let (status, msg) = pol.apply(
        super::Pending {
            version: "4".into(),
            command_id: "act-4".into(),
            rules: r,
            raw: serde_json::Value::Null,
            resolved: BTreeMap::new(),
            source: "state_dir".into(),
        },
        &ident,
    );
    // No kernel here (maps absent): said so.
    assert_eq!(status, "partial", "{msg}");
    assert!(
        msg.contains("only checked by the daemon after the open"),
        "{msg}"
    );
    let open = |agent: &str, path: &str, flags: u32| Event {
        process: Some(Process {
            pid: 4242,
            start_ticks: 7,
            agent_id: agent.into(),
            ..Default::default()
        }),
        kind: Some(Kind::FileOpen(FileOpen {
            path: path.into(),
            flags,
            result: -2,
            ..Default::default()
        })),
        ..Default::default()
    };
    // The pipeline made a relative path absolute from the cwd: "/srv/x/../secret/k".
    let v = pol
        .open_violation(&open("x", "/srv/x/../secret/k", 0), 0)
        .expect("found after the fact");
    assert_eq!((v.0, v.1), (4242, 7));
    assert!(v.2.starts_with("policy p:/srv/secret:"), "{}", v.2);
    assert!(
        pol.open_violation(&open("y", "/srv/secret/k", 0), 0)
            .is_none()
    );
    assert!(
        pol.open_violation(&open("x", "/srv/secret/k", 1), 0)
            .is_none(),
        "a write is not forbidden by a read rule"
    );
    assert!(
        pol.open_violation(&open("x", "/srv/public", 0), 0)
            .is_none()
    );
}
