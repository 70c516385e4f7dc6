//! JWT claim extraction. Signatures are deliberately not verified: the daemon has no
//! issuer keys, and the claims are only used as descriptive metadata of a token that
//! was seen, never to make a trust decision.

use std::collections::BTreeMap;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::Value;

const B64URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Bounds work on hostile input; real delegation chains are a handful deep.
const MAX_ACT_DEPTH: usize = 32;
/// Anything longer is not a token an HTTP client would send.
const MAX_JWT_LEN: usize = 64 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JwtClaims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    /// Comma-joined when the claim is an array.
    pub aud: Option<String>,
    pub exp: Option<i64>,
    /// `scope`, or else `scp`; arrays are joined with spaces (the OAuth scope syntax).
    pub scope: Option<String>,
    /// RFC 8693 delegation chain: `act.sub`, `act.act.sub`, …, outermost actor first.
    pub act: Vec<String>,
    /// The token's id: what an issuer's revocation hook can name it by (not a secret).
    pub jti: Option<String>,
}

/// Decodes the claims of a compact JWS without verifying it. `None` unless the token
/// has three parts whose header and payload are base64url JSON objects.
pub fn decode_jwt(token: &str) -> Option<JwtClaims> {
    let token = token.trim();
    if token.len() > MAX_JWT_LEN {
        return None;
    }
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    if !signature
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
    {
        return None;
    }
    let header = decode_object(header)?;
    if !header.contains_key("alg") && !header.contains_key("typ") {
        return None;
    }
    let claims = decode_object(payload)?;
    Some(JwtClaims {
        iss: string_claim(claims.get("iss")),
        sub: string_claim(claims.get("sub")),
        aud: list_claim(claims.get("aud"), ","),
        exp: claims.get("exp").and_then(int_claim),
        scope: list_claim(claims.get("scope"), " ").or_else(|| list_claim(claims.get("scp"), " ")),
        act: act_chain(claims.get("act")),
        jti: string_claim(claims.get("jti")),
    })
}

fn decode_object(part: &str) -> Option<serde_json::Map<String, Value>> {
    // Some producers use the standard alphabet; mapping it costs nothing and the two
    // alphabets do not collide.
    let part: String = part
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    let bytes = B64URL_LENIENT.decode(part.as_bytes()).ok()?;
    match serde_json::from_slice::<Value>(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fn string_claim(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn list_claim(v: Option<&Value>, sep: &str) -> Option<String> {
    match v? {
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(|i| string_claim(Some(i))).collect();
            (!parts.is_empty()).then(|| parts.join(sep))
        }
        other => string_claim(Some(other)),
    }
}

fn int_claim(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn act_chain(mut act: Option<&Value>) -> Vec<String> {
    let mut chain = Vec::new();
    while let Some(Value::Object(a)) = act {
        if chain.len() >= MAX_ACT_DEPTH {
            break;
        }
        // An actor without a subject still occupies a place in the chain; naming it by
        // client_id (a common non-standard claim) keeps the chain's shape visible.
        let who = string_claim(a.get("sub"))
            .or_else(|| string_claim(a.get("client_id")))
            .unwrap_or_else(|| "?".to_string());
        chain.push(who);
        act = a.get("act");
    }
    chain
}

/// The claims as credential metadata.
pub(crate) fn claims_metadata(c: &JwtClaims) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
            m.insert(k.to_string(), v.clone());
        }
    };
    put("iss", &c.iss);
    put("sub", &c.sub);
    put("aud", &c.aud);
    put("scope", &c.scope);
    put("exp", &c.exp.map(|e| e.to_string()));
    put("jti", &c.jti);
    if !c.act.is_empty() {
        put("act", &Some(c.act.join(",")));
    }
    m
}
