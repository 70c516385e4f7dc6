//! The credential watch on sightings the pipeline makes from synthetic kernel
//! records (no kernel needed): revoked credentials in an environment or request
//! headers, credentials a policy forbids to one agent, and the enforcement events
//! reported for them — never with the secret.

use agent_ebpf::{ExecEvent, kind};
use agent_user::credential::FleetKey;

use super::{CredentialWatch, Violation};
use crate::kernel::decode::Raw;
use crate::pipeline::tests::{PID, Recorder, handle, hdr, pipeline, zeroed};
use crate::pipeline::{Pipeline, Sighting};

/// The violations among sightings, as the daemon's drain judges them.
fn judged(w: &CredentialWatch, sightings: &[Sighting]) -> Vec<Violation> {
    sightings.iter().filter_map(|s| w.judge(s)).collect()
}

#[test]
fn revoked_credential_in_env_is_a_violation() {
    let mut p = pipeline("[[agent]]\nid = \"fin\"\n[agent.match]\nenv = \"fin\"\n");
    let secret = "sk-proj-RRRRvvvvKKKKdddd5678aaaa";
    let fp = FleetKey::from_bytes([1; 32]).fingerprint(secret.as_bytes());
    let mut w = CredentialWatch::default();
    w.revoke(fp.clone(), "kill".into(), "cmd-9".into());
    let mut e = zeroed::<ExecEvent>();
    e.hdr = hdr(kind::EXEC, false, 0);
    let env = format!("CUSTODY_AGENT=fin\0OPENAI_API_KEY={secret}\0");
    e.env[..env.len()].copy_from_slice(env.as_bytes());
    e.env_len = env.len() as u32;
    let hit = w
        .revoked_hit(&p.credentials_in_env(env.as_bytes()), "env")
        .expect("revoked in env");
    assert_eq!(
        (hit.fingerprint.as_str(), hit.action.as_str()),
        (fp.as_str(), "kill")
    );
    assert!(
        w.revoked_hit(
            &p.credentials_in_env(b"CUSTODY_AGENT=fin\0HOME=/root\0"),
            "env"
        )
        .is_none()
    );
    let sightings = handle(
        &mut p,
        Raw::Exec(e),
        &mut Recorder::default(),
        &mut Vec::new(),
    );
    let violations = judged(&w, &sightings);
    assert_eq!(violations.len(), 1);
    let v = &violations[0];
    assert_eq!(
        (
            v.tgid,
            v.fingerprint.as_str(),
            v.seen_in.as_str(),
            v.action.as_str(),
            v.command_id.as_str()
        ),
        (PID, fp.as_str(), "env", "kill", "cmd-9")
    );
    assert_eq!(p.holders(std::slice::from_ref(&fp)), vec![PID]);
    let ev = p.enforcement_event(v.tgid, v.tid, v.enforcement(true, String::new()));
    let json = serde_json::to_string(&ev).unwrap();
    assert!(json.contains("\"enforcement\"") && !json.contains(secret));
}

#[test]
fn revoked_credential_in_request_headers_is_found() {
    let mut p = pipeline("[[agent]]\nid = \"fin\"\n[agent.match]\nenv = \"fin\"\n");
    let mut w = CredentialWatch::default();
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW5vdC1yZWFs";
    let fp = FleetKey::from_bytes([1; 32]).fingerprint(token.as_bytes());
    assert!(
        w.revoked_hit(
            &p.credentials_in_headers(&[("Authorization".into(), format!("Bearer {token}"))]),
            "header"
        )
        .is_none(),
        "nothing is revoked yet"
    );
    w.revoke(fp.clone(), "kill".into(), "cmd-h".into());
    let hit = w
        .revoked_hit(
            &p.credentials_in_headers(&[
                ("Host".into(), "api.example.com".into()),
                ("Authorization".into(), format!("Bearer {token}")),
            ]),
            "header",
        )
        .expect("revoked in a header");
    assert_eq!(
        (
            hit.fingerprint.as_str(),
            hit.seen_in.as_str(),
            hit.command_id.as_str()
        ),
        (fp.as_str(), "header", "cmd-h")
    );
    assert!(
        w.revoked_hit(
            &p.credentials_in_headers(&[(
                "Authorization".into(),
                "Bearer other-token-value-123456".into()
            )]),
            "header"
        )
        .is_none()
    );
    let v = Violation {
        tgid: PID,
        tid: PID,
        start_ticks: 0,
        start_boottime: 0,
        fingerprint: fp.clone(),
        seen_in: "header".into(),
        action: "kill".into(),
        command_id: "cmd-h".into(),
        held: true,
        policy: String::new(),
    };
    let ev = p.enforcement_event(v.tgid, v.tid, v.enforcement(true, String::new()));
    let json = serde_json::to_string(&ev).unwrap();
    assert!(json.contains("held before send"), "{json}");
}

#[test]
fn credential_forbidden_by_a_policy_is_stopped_for_its_agent_only() {
    let mut p = pipeline(
        "[[agent]]\nid = \"fin\"\n[agent.match]\nenv = \"fin\"\n\
         [[agent]]\nid = \"ops\"\n[agent.match]\nenv = \"ops\"\n",
    );
    let secret = "sk-proj-PPPPoooollllIIIIcccc9999";
    let fp = FleetKey::from_bytes([1; 32]).fingerprint(secret.as_bytes());
    let mut w = CredentialWatch::default();
    w.set_policy(
        vec![crate::policy::compile::CredEntry {
            agent: Some("fin".into()),
            fingerprint: fp.clone(),
            policy: "leaked-key".into(),
            action: "kill".into(),
        }],
        "act-p".into(),
    );
    // The hold's check (as the daemon's judge makes it): by the agent of the process.
    let forbidden_in_env = |p: &Pipeline, env: &[u8]| {
        w.forbidden_hit(
            p.agent_of(PID, Some(env)).as_deref(),
            &p.credentials_in_env(env),
            "env",
        )
    };
    let env = |agent: &str| format!("CUSTODY_AGENT={agent}\0OPENAI_API_KEY={secret}\0");
    // The hold's check: by the agent of the process (here from the env marker).
    let hit = forbidden_in_env(&p, env("fin").as_bytes()).expect("forbidden to fin");
    assert_eq!(
        (
            hit.policy.as_str(),
            hit.action.as_str(),
            hit.command_id.as_str(),
            hit.seen_in.as_str()
        ),
        ("leaked-key", "kill", "act-p", "env")
    );
    assert!(forbidden_in_env(&p, env("ops").as_bytes()).is_none());
    assert!(
        w.revoked_hit(&p.credentials_in_env(env("fin").as_bytes()), "env")
            .is_none(),
        "not a revocation"
    );
    // Seen at exec by the pipeline: a violation naming the policy.
    let mut e = zeroed::<ExecEvent>();
    e.hdr = hdr(kind::EXEC, false, 0);
    let block = env("fin");
    e.env[..block.len()].copy_from_slice(block.as_bytes());
    e.env_len = block.len() as u32;
    let sightings = handle(
        &mut p,
        Raw::Exec(e),
        &mut Recorder::default(),
        &mut Vec::new(),
    );
    let violations = judged(&w, &sightings);
    assert_eq!(violations.len(), 1);
    let v = violations[0].clone();
    assert_eq!(
        (v.policy.as_str(), v.command_id.as_str(), v.seen_in.as_str()),
        ("leaked-key", "act-p", "env")
    );
    assert_eq!(
        w.policy_holders(&p.table).len(),
        1,
        "a holder when the rules arrive"
    );
    let ev = p.enforcement_event(v.tgid, v.tid, v.enforcement(true, String::new()));
    let json = serde_json::to_string(&ev).unwrap();
    assert!(
        json.contains("policy leaked-key: credential forbidden"),
        "{json}"
    );
    assert!(!json.contains(secret));
    // The same credential under another agent is not a violation.
    let mut q = pipeline("[[agent]]\nid = \"ops\"\n[agent.match]\nenv = \"ops\"\n");
    let mut e = zeroed::<ExecEvent>();
    e.hdr = hdr(kind::EXEC, false, 0);
    let block = env("ops");
    e.env[..block.len()].copy_from_slice(block.as_bytes());
    e.env_len = block.len() as u32;
    let sightings = handle(
        &mut q,
        Raw::Exec(e),
        &mut Recorder::default(),
        &mut Vec::new(),
    );
    assert!(!sightings.is_empty(), "the credential is seen");
    assert!(judged(&w, &sightings).is_empty());
}
