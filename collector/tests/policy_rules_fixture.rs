//! The host rules JSON a collector sends sensors (`policy_update`), as produced by
//! `compile_host_rules`, pinned in `agent-user/tests/fixtures/host_rules.json`:
//! custodyd parses that fixture in its own tests (it does not depend on this crate),
//! so a change of the format on this side fails here until the fixture — and the
//! sensor's parser — follow. `CUSTODY_UPDATE_FIXTURES=1` rewrites the fixture.

use std::path::PathBuf;

use custody_policy::{AgentInfo, HostRules, PolicySet, compile_host_rules};

const POLICIES: &str = r#"
@id("no-exfil") @response("alert")
forbid (principal == Agent::"x", action == Action::"connect", resource)
when { resource has addr && resource.addr == ip("10.231.7.3") && resource.port == 9999 };

@id("no-metadata") @response("kill_process") @severity("high")
forbid (principal, action == Action::"connect", resource)
when { resource has addr && resource.addr.isInRange(ip("169.254.0.0/16")) };

@id("no-paste") @response("alert")
forbid (principal, action == Action::"connect", resource in Domain::"pastebin.com");

@id("no-bad-hosts")
forbid (principal, action == Action::"connect", resource)
when { resource.host like "*.bad.example" || resource.host == "evil.example" };

@id("no-ssh-undeclared") @response("quarantine")
forbid (principal, action == Action::"connect", resource)
when { !principal.declared && [22, 2222].contains(resource.port) && resource.protocol == "tcp" };

@id("no-secrets") @response("kill_process") @severity("critical")
forbid (principal == Agent::"x", action in [Action::"open_read", Action::"open_write"], resource in Dir::"/srv/secret");

@id("no-shadow")
forbid (principal, action == Action::"open_read", resource == File::"/etc/shadow");

@id("no-cron-writes")
forbid (principal, action == Action::"open_write", resource) when { resource.path like "/etc/cron*" };

@id("leaked-key") @response("revoke_credential")
forbid (principal == Agent::"y", action == Action::"use_credential",
        resource == Credential::"hmac-sha256:00000000000000000000000000000000000000000000000000000000000000aa");

@id("deep-shells") @response("kill_process")
forbid (principal, action == Action::"exec", resource) when { context.depth >= 3 };
"#;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../agent-user/tests/fixtures/host_rules.json")
}

fn agent(id: &str, declared: bool) -> AgentInfo {
    AgentInfo {
        id: id.into(),
        name: id.into(),
        owner: "fleet-test@example.com".into(),
        declared,
        kind: if declared { "declared" } else { "discovered" }.into(),
        scope: Vec::new(),
    }
}

#[test]
fn sensor_fixture_matches_what_the_collector_sends() {
    let set = PolicySet::from_sources([("fixture.cedar".to_string(), POLICIES.to_string())])
        .expect("fixture policies load");
    let agents = [
        agent("x", true),
        agent("y", true),
        agent("undeclared:python3", false),
    ];
    let rules = compile_host_rules(&set, &agents);
    let json = rules.to_json();
    // What goes over the wire parses back (the collector's own round trip).
    assert_eq!(HostRules::from_json(&json).unwrap(), rules);
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&json).unwrap())
            .unwrap()
            + "\n";
    let path = fixture();
    if std::env::var("CUSTODY_UPDATE_FIXTURES").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &pretty).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with CUSTODY_UPDATE_FIXTURES=1 to create it)",
            path.display()
        )
    });
    let want: serde_json::Value = serde_json::from_str(&on_disk).unwrap();
    let got: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        got, want,
        "the host rules format changed: update the sensor's parser (agent-user/src/policy/rules.rs) and rerun with CUSTODY_UPDATE_FIXTURES=1"
    );
}
