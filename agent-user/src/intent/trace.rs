//! W3C Trace Context: agents and frameworks propagate `traceparent`, which ties an
//! intercepted request to the caller's distributed trace.

/// Validates a `traceparent` header value (W3C Trace Context level 1) and returns
/// (trace_id, parent_span_id). Version "ff", uppercase hex, all-zero ids and a
/// version-00 value with extra fields are rejected; future versions may carry more
/// fields after the flags, as the spec allows.
pub fn parse_traceparent(v: &str) -> Option<(String, String)> {
    let b = v.trim_matches([' ', '\t']).as_bytes();
    let field = |from: usize, len: usize| {
        b.get(from..from + len)
            .filter(|f| f.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
    };
    let version = field(0, 2)?;
    let trace_id = field(3, 32)?;
    let parent_id = field(36, 16)?;
    field(53, 2)?;
    if version == b"ff" || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let extra_ok = if version == b"00" {
        b.len() == 55
    } else {
        b.len() == 55 || b[55] == b'-'
    };
    let all_zero = |f: &[u8]| f.iter().all(|&c| c == b'0');
    if !extra_ok || all_zero(trace_id) || all_zero(parent_id) {
        return None;
    }
    // Only ASCII hex digits passed the checks above.
    let s = |f: &[u8]| f.iter().map(|&c| char::from(c)).collect::<String>();
    Some((s(trace_id), s(parent_id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const P: &str = "00f067aa0ba902b7";

    #[test]
    fn accepts_valid() {
        let v = format!("00-{T}-{P}-01");
        assert_eq!(parse_traceparent(&v), Some((T.to_string(), P.to_string())));
        assert!(parse_traceparent(&format!(" {v} ")).is_some());
        assert!(parse_traceparent(&format!("01-{T}-{P}-00-future")).is_some());
        assert!(parse_traceparent(&format!("01-{T}-{P}-00")).is_some());
    }

    #[test]
    fn rejects_invalid() {
        let zeros32 = "0".repeat(32);
        for bad in [
            String::new(),
            format!("ff-{T}-{P}-01"),
            format!("00-{}-{P}-01", T.to_uppercase()),
            format!("00-{zeros32}-{P}-01"),
            format!("00-{T}-0000000000000000-01"),
            format!("00-{T}-{P}-01-extra"),
            format!("01-{T}-{P}-00x"),
            format!("00_{T}-{P}-01"),
            format!("00-{T}-{P}-0"),
            format!("00-{}é-{P}-01", &T[..31]),
            "00-é".repeat(20),
        ] {
            assert_eq!(parse_traceparent(&bad), None, "{bad}");
        }
    }
}
