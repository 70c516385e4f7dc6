//! Tolerant JSON: the sensor keeps only the first bytes of each write, so request bodies
//! and JSON-RPC lines are often cut mid-document. Instead of giving up, a truncated
//! document is closed at the last point where what precedes it is a valid prefix:
//!
//! * a single byte-level pass tracks the open containers and what each expects next
//!   (key, colon, value, comma);
//! * "safe" cut points are right after a complete value or an opening bracket — there,
//!   appending the closing brackets of the open containers gives valid JSON;
//! * if the cut fell inside a string *value* (typically a long prompt), that string is
//!   closed instead, after dropping a partial escape sequence, so the captured part of
//!   the text survives; it ends with `CUT_MARK` so that a cut identifier ("read" of
//!   "read_file") is never mistaken for a whole one;
//! * a cut inside a key, a number or a literal falls back to the last safe point, so no
//!   invented value ever appears (a cut "12" could have been "1234").
//!
//! The repaired text is then parsed by serde_json, which stays the only judge of
//! validity; the scanner only decides where to cut.

use serde_json::Value;

use super::text::utf8_prefix;

/// Appended to a string value closed by the repair.
pub(crate) const CUT_MARK: char = '…';

/// Deeper documents are not repaired (serde_json refuses beyond 128 anyway).
const MAX_DEPTH: usize = 128;

/// Parses `bytes` as one JSON value, repairing a truncated document. Returns the value
/// and whether it had to be repaired (i.e. it is partial).
pub(crate) fn parse_lenient(bytes: &[u8]) -> Option<(Value, bool)> {
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return Some((v, false));
    }
    let text = utf8_prefix(bytes);
    let s: &str = &text;
    let scan = scan(s);
    if let Some(cut) = scan.open_value_string {
        let mut fixed = String::with_capacity(cut + 1 + scan.stack.len());
        fixed.push_str(&s[..cut]);
        fixed.push(CUT_MARK);
        fixed.push('"');
        push_closers(&mut fixed, &scan.stack);
        if let Ok(v) = serde_json::from_str(&fixed) {
            return Some((v, true));
        }
    }
    if scan.last_safe == 0 {
        return None;
    }
    let prefix = &s[..scan.last_safe];
    // The containers open at the safe point are not those open at the end of the
    // input; a second pass over the prefix gives them without per-value snapshots.
    let stack = self::scan(prefix).stack;
    let mut fixed = String::with_capacity(prefix.len() + stack.len());
    fixed.push_str(prefix);
    push_closers(&mut fixed, &stack);
    serde_json::from_str(&fixed).ok().map(|v| (v, true))
}

/// First non-whitespace byte of `bytes`.
pub(crate) fn first_byte(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

pub(crate) fn get_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)?.as_str()
}

pub(crate) fn get_arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn push_closers(out: &mut String, stack: &[u8]) {
    for &open in stack.iter().rev() {
        out.push(if open == b'{' { '}' } else { ']' });
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Value,
    FirstValueOrEnd,
    KeyOrEnd,
    Key,
    Colon,
    CommaOrEnd,
    Done,
}

struct Scan {
    /// Byte offset after the last complete value or opening bracket.
    last_safe: usize,
    /// Open containers (`{` or `[`) where scanning stopped.
    stack: Vec<u8>,
    /// Set when the input ends inside a string value: where to close it.
    open_value_string: Option<usize>,
}

fn after_value(stack: &[u8]) -> Expect {
    if stack.is_empty() {
        Expect::Done
    } else {
        Expect::CommaOrEnd
    }
}

fn scan(s: &str) -> Scan {
    let b = s.as_bytes();
    let mut stack: Vec<u8> = Vec::new();
    let mut expect = Expect::Value;
    let mut last_safe = 0;
    let mut i = 0;
    while i < b.len() && expect != Expect::Done {
        let c = b[i];
        let wants_value = matches!(expect, Expect::Value | Expect::FirstValueOrEnd);
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'{' | b'[' if wants_value => {
                if stack.len() >= MAX_DEPTH {
                    break;
                }
                stack.push(c);
                expect = if c == b'{' {
                    Expect::KeyOrEnd
                } else {
                    Expect::FirstValueOrEnd
                };
                i += 1;
                last_safe = i;
            }
            b'}' | b']' => {
                let (open, may_end) = if c == b'}' {
                    (
                        b'{',
                        matches!(expect, Expect::KeyOrEnd | Expect::CommaOrEnd),
                    )
                } else {
                    (
                        b'[',
                        matches!(expect, Expect::FirstValueOrEnd | Expect::CommaOrEnd),
                    )
                };
                if stack.last() != Some(&open) || !may_end {
                    break;
                }
                stack.pop();
                expect = after_value(&stack);
                i += 1;
                last_safe = i;
            }
            b':' if expect == Expect::Colon => {
                expect = Expect::Value;
                i += 1;
            }
            b',' if expect == Expect::CommaOrEnd => {
                expect = if stack.last() == Some(&b'{') {
                    Expect::Key
                } else {
                    Expect::Value
                };
                i += 1;
            }
            b'"' if wants_value || matches!(expect, Expect::Key | Expect::KeyOrEnd) => {
                let is_key = !wants_value;
                match scan_string(b, i + 1) {
                    Ok(end) => {
                        i = end;
                        if is_key {
                            expect = Expect::Colon;
                        } else {
                            expect = after_value(&stack);
                            last_safe = i;
                        }
                    }
                    Err(cut) => {
                        let open_value_string = (!is_key).then_some(cut);
                        return Scan {
                            last_safe,
                            stack,
                            open_value_string,
                        };
                    }
                }
            }
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' if wants_value => {
                let start = i;
                while i < b.len()
                    && !matches!(b[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                {
                    i += 1;
                }
                // A scalar running into the end of input may itself be cut.
                if i == b.len() || !valid_scalar(&b[start..i]) {
                    break;
                }
                expect = after_value(&stack);
                last_safe = i;
            }
            _ => break,
        }
    }
    Scan {
        last_safe,
        stack,
        open_value_string: None,
    }
}

/// Scans a string body starting after its opening quote. `Ok(end)` is the offset after
/// the closing quote; `Err(cut)` means the input ended first and the text can be closed
/// at `cut` (before any partial escape).
fn scan_string(b: &[u8], from: usize) -> Result<usize, usize> {
    let mut j = from;
    while j < b.len() {
        match b[j] {
            b'"' => return Ok(j + 1),
            b'\\' => {
                let Some(&e) = b.get(j + 1) else {
                    return Err(j);
                };
                if e != b'u' {
                    j += 2;
                    continue;
                }
                let Some(code) = b.get(j + 2..j + 6).and_then(hex4) else {
                    return Err(j);
                };
                if (0xD800..0xDC00).contains(&code) && b.get(j + 6) == Some(&b'\\') {
                    // A high surrogate is only valid with its low half; cut before both.
                    if b.get(j + 8..j + 12).and_then(hex4).is_none() {
                        return Err(j);
                    }
                    j += 12;
                } else if (0xD800..0xDC00).contains(&code) && j + 6 >= b.len() {
                    return Err(j);
                } else {
                    j += 6;
                }
            }
            _ => j += 1,
        }
    }
    Err(j)
}

fn hex4(h: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(h).ok()?;
    if s.len() != 4 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

fn valid_scalar(t: &[u8]) -> bool {
    match t {
        b"true" | b"false" | b"null" => true,
        _ => valid_number(t),
    }
}

fn valid_number(t: &[u8]) -> bool {
    let mut i = usize::from(t.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let s = *i;
        while *i < t.len() && t[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > s
    };
    if !digits(&mut i) {
        return false;
    }
    if t.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(t.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(t.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == t.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lenient(s: &str) -> Option<Value> {
        parse_lenient(s.as_bytes()).map(|(v, _)| v)
    }

    #[test]
    fn complete_json_is_not_marked_repaired() {
        assert_eq!(parse_lenient(br#"{"a":1}"#), Some((json!({"a":1}), false)));
    }

    #[test]
    fn closes_cut_string_value() {
        let v = lenient(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello wor"#)
            .unwrap();
        assert_eq!(
            v,
            json!({"model":"gpt-4o","messages":[{"role":"user","content":"hello wor…"}]})
        );
    }

    #[test]
    fn drops_cut_key_number_and_escape() {
        assert_eq!(
            lenient(r#"{"model":"m","mess"#).unwrap(),
            json!({"model":"m"})
        );
        assert_eq!(
            lenient(r#"{"model":"m","n":12"#).unwrap(),
            json!({"model":"m"})
        );
        assert_eq!(lenient(r#"{"a":[1,2,"#).unwrap(), json!({"a":[1,2]}));
        assert_eq!(lenient(r#"{"a":"x\u00"#).unwrap(), json!({"a":"x…"}));
        assert_eq!(lenient(r#"{"a":"x\"#).unwrap(), json!({"a":"x…"}));
        assert_eq!(lenient(r#"{"a":"x\ud83d"#).unwrap(), json!({"a":"x…"}));
        assert_eq!(
            lenient(r#"{"a":"x\ud83d\ude00y"#).unwrap(),
            json!({"a":"x😀y…"})
        );
        assert_eq!(lenient(r#"{"a":"#).unwrap(), json!({}));
        assert_eq!(lenient(r#"{"a":1}garbage"#).unwrap(), json!({"a":1}));
    }

    #[test]
    fn cut_multibyte_text_survives() {
        let full = r#"{"t":"Grüße 漢字"}"#.as_bytes();
        let cut = &full[..full.len() - 4]; // inside 字
        assert_eq!(parse_lenient(cut).unwrap().0, json!({"t":"Grüße 漢…"}));
    }

    #[test]
    fn rejects_non_json() {
        assert!(lenient("hello").is_none());
        assert!(lenient("").is_none());
        assert!(lenient("\u{0}\u{1}").is_none());
        // Deep nesting must neither recurse unboundedly nor panic.
        let _ = lenient(&"[".repeat(10_000));
        let _ = lenient(&"{\"a\":".repeat(5_000));
    }
}
