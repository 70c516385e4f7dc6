//! .env files: the dotenv dialect (optional `export`, quoting, `#` comments,
//! double-quoted values spanning lines) feeding the same rules as live environments.

use super::env::{link_aws_key_id, looks_like_key_id, scan_var};
use super::{Credential, FleetKey, Source};

pub(crate) fn scan(path: &str, contents: &[u8], key: &FleetKey) -> Vec<Credential> {
    let mut out = Vec::new();
    let mut aws_key_id = None;
    for (name, value) in parse(contents) {
        if name.eq_ignore_ascii_case("AWS_ACCESS_KEY_ID") {
            aws_key_id = std::str::from_utf8(&value)
                .ok()
                .filter(|v| looks_like_key_id(v))
                .map(str::to_string);
        }
        out.extend(scan_var(&name, &value, Source::File, path, key));
    }
    link_aws_key_id(&mut out, aws_key_id.as_deref());
    out
}

/// `(name, value)` pairs with quoting removed. Lines that are not assignments are
/// ignored rather than rejected; real .env files are full of near-misses.
pub(crate) fn parse(contents: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = contents;
    while !rest.is_empty() {
        let (line, after) = split_line(rest);
        rest = after;
        let line = trim_ascii_start(line);
        let line = line.strip_prefix(b"export ").map_or(line, trim_ascii_start);
        if line.starts_with(b"#") {
            continue;
        }
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        let name = String::from_utf8_lossy(line[..eq].trim_ascii()).into_owned();
        if name.is_empty() || name.contains(char::is_whitespace) {
            continue;
        }
        let raw = trim_ascii_start(&line[eq + 1..]);
        let value = match raw.first() {
            Some(&q @ (b'"' | b'\'' | b'`')) => {
                let body = &raw[1..];
                match find_close(body, q) {
                    Some(end) => unquote(&body[..end], q),
                    None => {
                        // The value continues on following lines up to the closing quote
                        // (how PEM keys are usually put into .env files).
                        let mut value = body.to_vec();
                        loop {
                            if rest.is_empty() {
                                break;
                            }
                            let (next, after) = split_line(rest);
                            rest = after;
                            value.push(b'\n');
                            if let Some(end) = find_close(next, q) {
                                value.extend_from_slice(&next[..end]);
                                break;
                            }
                            value.extend_from_slice(next);
                        }
                        unquote(&value, q)
                    }
                }
            }
            _ => strip_comment(raw).trim_ascii().to_vec(),
        };
        out.push((name, value));
    }
    out
}

fn split_line(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == b'\n') {
        Some(i) => {
            let line = &b[..i];
            (line.strip_suffix(b"\r").unwrap_or(line), &b[i + 1..])
        }
        None => (b, &[]),
    }
}

/// The closing quote; inside double quotes a backslash escapes the next byte.
fn find_close(b: &[u8], q: u8) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        if q == b'"' && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == q {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn trim_ascii_start(b: &[u8]) -> &[u8] {
    b.trim_ascii_start()
}

/// An unquoted value ends at ` #`; a '#' inside a word belongs to the value.
fn strip_comment(v: &[u8]) -> &[u8] {
    let mut prev_space = false;
    for (i, &b) in v.iter().enumerate() {
        if b == b'#' && prev_space {
            return &v[..i];
        }
        prev_space = b == b' ' || b == b'\t';
    }
    v
}

/// Double quotes interpret `\n` and friends, single and back quotes are literal.
fn unquote(body: &[u8], quote: u8) -> Vec<u8> {
    if quote != b'"' {
        return body.to_vec();
    }
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\\' && i + 1 < body.len() {
            out.push(match body[i + 1] {
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                other => other,
            });
            i += 2;
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}
