//! DNS queries seen leaving the host: which name an agent is about to talk to.

/// Longest name on the wire (RFC 1035 §3.1).
const MAX_NAME_WIRE: usize = 255;
/// Compression pointers followed per name; legitimate names need a handful.
const MAX_JUMPS: usize = 16;

/// Parses a DNS query (UDP payload) into (qname without trailing dot, qtype name).
/// Responses, non-QUERY opcodes and malformed packets give None. Names are lowercased;
/// bytes other than letters, digits, '-', '_' and '*' are rendered as `\DDD` so that a
/// hostile label cannot smuggle dots or control characters into logs.
pub fn parse_dns_query(data: &[u8]) -> Option<(String, String)> {
    let header = data.get(..12)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let is_response = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xF;
    let qdcount = u16::from_be_bytes([header[4], header[5]]);
    if is_response || opcode != 0 || qdcount == 0 {
        return None;
    }
    let (name, end) = read_name(data, 12)?;
    let qtype = data
        .get(end..end + 4)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))?;
    Some((name, qtype_name(qtype)))
}

/// Reads a possibly compressed name at `start`; returns it and the offset after it.
/// Every pointer must go strictly below the lowest offset read so far, so a chain of
/// pointers always terminates (no loops, however crafted).
fn read_name(msg: &[u8], start: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut pos = start;
    let mut lowest = start;
    let mut end = None;
    let mut wire_len = 1;
    let mut jumps = 0;
    loop {
        let len = usize::from(*msg.get(pos)?);
        match len & 0xC0 {
            0x00 if len == 0 => break,
            0x00 => {
                let label = msg.get(pos + 1..pos + 1 + len)?;
                wire_len += len + 1;
                if wire_len > MAX_NAME_WIRE {
                    return None;
                }
                if !name.is_empty() {
                    name.push('.');
                }
                for &b in label {
                    match b {
                        b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'*' => name.push(char::from(b)),
                        b'A'..=b'Z' => name.push(char::from(b.to_ascii_lowercase())),
                        _ => name.push_str(&format!("\\{b:03}")),
                    }
                }
                pos += 1 + len;
            }
            0xC0 => {
                let target = (len & 0x3F) << 8 | usize::from(*msg.get(pos + 1)?);
                jumps += 1;
                if target >= lowest || jumps > MAX_JUMPS {
                    return None;
                }
                end.get_or_insert(pos + 2);
                lowest = target;
                pos = target;
            }
            // 0x40 and 0x80 label types are obsolete or reserved.
            _ => return None,
        }
    }
    Some((name, end.unwrap_or(pos + 1)))
}

fn qtype_name(t: u16) -> String {
    let known = match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        _ => return format!("TYPE{t}"),
    };
    known.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.').filter(|l| !l.is_empty()) {
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        p
    }

    #[test]
    fn parses_queries() {
        assert_eq!(
            parse_dns_query(&query("API.OpenAI.com.", 1)),
            Some(("api.openai.com".into(), "A".into()))
        );
        assert_eq!(parse_dns_query(&query("x.io", 28)).unwrap().1, "AAAA");
        assert_eq!(parse_dns_query(&query("x.io", 65)).unwrap().1, "HTTPS");
        assert_eq!(parse_dns_query(&query("x.io", 99)).unwrap().1, "TYPE99");
        assert_eq!(
            parse_dns_query(&query("", 2)),
            Some((String::new(), "NS".into()))
        );
        // EDNS OPT record after the question is fine.
        let mut p = query("a.b", 16);
        p[11] = 1;
        p.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse_dns_query(&p), Some(("a.b".into(), "TXT".into())));
    }

    #[test]
    fn escapes_odd_label_bytes() {
        let mut p = query("ab", 1);
        p[13] = b'.';
        p[14] = 0x1b;
        assert_eq!(parse_dns_query(&p).unwrap().0, "\\046\\027");
    }

    #[test]
    fn follows_backward_pointers() {
        // A question can only point before itself; here into header bytes that happen
        // to spell the label "x" (offset 6), then the real end of the question.
        let mut p = vec![0, 1, 0x01, 0, 0, 1, 1, b'x', 0, 0, 0, 0];
        p.extend_from_slice(b"\x03WWW\xc0\x06\x00\x1c\x00\x01");
        assert_eq!(parse_dns_query(&p), Some(("www.x".into(), "AAAA".into())));
        // Forward pointers are rejected.
        let mut q = vec![0, 1, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x03www\xc0\x16\x00\x01\x00\x01\x01a\x00");
        assert_eq!(parse_dns_query(&q), None);
    }

    #[test]
    fn rejects_malformed_and_loops() {
        assert_eq!(parse_dns_query(&[]), None);
        assert_eq!(parse_dns_query(&[0; 11]), None);
        let mut resp = query("a.b", 1);
        resp[2] |= 0x80;
        assert_eq!(parse_dns_query(&resp), None);
        let cut = query("abc.def", 1);
        for n in 0..cut.len() {
            assert_eq!(parse_dns_query(&cut[..n]), None, "prefix {n}");
        }
        // Self-pointer and two-pointer cycle.
        let mut p = vec![0, 1, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1];
        assert_eq!(parse_dns_query(&p), None);
        p = vec![
            0, 1, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0xC0, 12, 0, 1, 0, 1,
        ];
        assert_eq!(parse_dns_query(&p), None);
        // Label longer than the packet; reserved label type; overlong name.
        assert_eq!(
            parse_dns_query(&[0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 60, b'a', 0]),
            None
        );
        assert_eq!(
            parse_dns_query(&[0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 1, 0, 1]),
            None
        );
        let long = vec!["a".repeat(63); 5].join(".");
        assert_eq!(parse_dns_query(&query(&long, 1)), None);
    }
}
