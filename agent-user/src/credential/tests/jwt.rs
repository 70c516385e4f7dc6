use serde_json::json;

use super::super::{JwtClaims, decode_jwt};
use super::make_jwt;

#[test]
fn decodes_all_claims_including_nested_act_chain() {
    let t = make_jwt(&json!({
        "iss": "https://issuer.example",
        "sub": "user-1",
        "aud": ["api-a", "api-b"],
        "exp": 1_900_000_000,
        "scope": "read write",
        "jti": "tok-42",
        "act": {"sub": "agent-1", "act": {"sub": "agent-2", "act": {"sub": "agent-3"}}}
    }));
    let c = decode_jwt(&t).expect("jwt");
    assert_eq!(
        c,
        JwtClaims {
            iss: Some("https://issuer.example".into()),
            sub: Some("user-1".into()),
            aud: Some("api-a,api-b".into()),
            exp: Some(1_900_000_000),
            scope: Some("read write".into()),
            act: vec!["agent-1".into(), "agent-2".into(), "agent-3".into()],
            jti: Some("tok-42".into()),
        }
    );
}

#[test]
fn scp_array_is_space_joined_and_scope_wins_over_scp() {
    let c = decode_jwt(&make_jwt(&json!({"scp": ["a", "b", "c"], "aud": "one"}))).unwrap();
    assert_eq!(c.scope.as_deref(), Some("a b c"));
    assert_eq!(c.aud.as_deref(), Some("one"));
    assert!(c.act.is_empty());
    let c = decode_jwt(&make_jwt(&json!({"scope": "x", "scp": ["y"]}))).unwrap();
    assert_eq!(c.scope.as_deref(), Some("x"));
}

#[test]
fn tolerates_padding_and_surrounding_whitespace() {
    let t = make_jwt(&json!({"sub": "ab"}));
    let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
    while !parts[1].len().is_multiple_of(4) {
        parts[1].push('=');
    }
    let padded = format!("  {}\n", parts.join("."));
    assert_eq!(decode_jwt(&padded).unwrap().sub.as_deref(), Some("ab"));
}

#[test]
fn rejects_non_jwts() {
    let good = make_jwt(&json!({"sub": "x"}));
    let (h, rest) = good.split_once('.').unwrap();
    for bad in [
        String::new(),
        "abc".into(),
        "a.b.c".into(),
        h.to_string(),
        format!("{h}.{rest}.extra.parts"),
        format!("{h}.bm90IGpzb24.sig"), // payload "not json"
        format!("{h}.WzEsMl0.sig"),     // payload is an array
        format!("{h}.{}", rest.replace('.', "!")), // two parts
        format!("{}.{rest}", "eyJub3RoaW5nIjoxfQ"), // header without alg/typ
    ] {
        assert_eq!(decode_jwt(&bad), None, "{bad}");
    }
}
