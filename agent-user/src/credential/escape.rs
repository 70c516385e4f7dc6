//! Lossless text form of arbitrary bytes (paths, argv, payload excerpts).
//!
//! Valid UTF-8 passes through unchanged so that ordinary paths stay readable; each
//! byte that is not part of valid UTF-8 becomes `\xNN`. To keep that reversible, a
//! run of literal backslashes that would otherwise be followed by an `x` in the
//! output (a literal "x", or an escaped byte) is doubled. Decoding then only has to
//! look at runs of backslashes before an `x`: an even run is literal backslashes and
//! a literal "x", an odd run ends in an escaped byte.

use std::fmt::Write;

pub fn escape_bytes(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len());
    for chunk in data.utf8_chunks() {
        push_valid(&mut out, chunk.valid(), !chunk.invalid().is_empty());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn push_valid(out: &mut String, valid: &str, escape_follows: bool) {
    let mut run = 0;
    for ch in valid.chars() {
        if ch == '\\' {
            run += 1;
            continue;
        }
        push_run(out, run, ch == 'x');
        run = 0;
        out.push(ch);
    }
    push_run(out, run, escape_follows);
}

fn push_run(out: &mut String, run: usize, double: bool) {
    let n = if double { run * 2 } else { run };
    out.extend(std::iter::repeat_n('\\', n));
}

/// Inverse of [`escape_bytes`]. Text not produced by it is decoded leniently: a
/// malformed escape is kept literally.
pub fn unescape_bytes(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let run = b[i..].iter().take_while(|&&c| c == b'\\').count();
        let after = i + run;
        if b.get(after) != Some(&b'x') {
            out.extend(std::iter::repeat_n(b'\\', run));
            i = after;
            continue;
        }
        if run % 2 == 0 {
            out.extend(std::iter::repeat_n(b'\\', run / 2));
            out.push(b'x');
            i = after + 1;
            continue;
        }
        let hex = b
            .get(after + 1..after + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match hex {
            Some(byte) => {
                out.extend(std::iter::repeat_n(b'\\', run / 2));
                out.push(byte);
                i = after + 3;
            }
            None => {
                out.extend(std::iter::repeat_n(b'\\', run));
                out.push(b'x');
                i = after + 1;
            }
        }
    }
    out
}
