//! Bounded excerpts of untrusted text. Everything that leaves the parsers as a string
//! goes through here so that events and logs never carry unbounded or control-laden
//! text from a captured stream.

use std::io;

use serde_json::Value;

/// Longest excerpt, in characters (not bytes), carried in an intent signal.
pub(crate) const EXCERPT_CHARS: usize = 512;

/// Longest identifier-like string (model, tool name, method, id) kept.
pub(crate) const NAME_CHARS: usize = 128;

/// Builds an excerpt incrementally: whitespace runs collapse to one space (also across
/// pieces, so streamed deltas read like the whole text), leading/trailing whitespace
/// disappears, control characters become U+FFFD (they could forge log lines), and
/// input past the limit is not even looked at.
pub(crate) struct Excerpt {
    out: String,
    chars: usize,
    limit: usize,
    pending_space: bool,
}

impl Excerpt {
    pub(crate) fn new() -> Self {
        Self::with_limit(EXCERPT_CHARS)
    }

    pub(crate) fn with_limit(limit: usize) -> Self {
        Self {
            out: String::new(),
            chars: 0,
            limit,
            pending_space: false,
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.chars >= self.limit
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    pub(crate) fn push(&mut self, s: &str) {
        for c in s.chars() {
            if self.is_full() {
                return;
            }
            if c.is_whitespace() {
                self.pending_space = true;
                continue;
            }
            if self.pending_space && !self.out.is_empty() {
                // A separator only makes sense if something can follow it.
                if self.chars + 2 > self.limit {
                    self.chars = self.limit;
                    return;
                }
                self.out.push(' ');
                self.chars += 1;
            }
            self.pending_space = false;
            self.out.push(if c.is_control() { '\u{FFFD}' } else { c });
            self.chars += 1;
        }
    }

    /// Separates the next piece from the previous one by a (collapsible) space.
    pub(crate) fn gap(&mut self) {
        self.pending_space = true;
    }

    /// Pushes a literal separator such as "," between list items.
    pub(crate) fn sep(&mut self, s: &str) {
        if !self.out.is_empty() {
            self.pending_space = false;
            self.push(s);
        }
    }

    pub(crate) fn finish(self) -> String {
        self.out
    }
}

pub(crate) fn excerpt(s: &str) -> String {
    excerpt_n(s, EXCERPT_CHARS)
}

pub(crate) fn excerpt_n(s: &str, limit: usize) -> String {
    let mut e = Excerpt::with_limit(limit);
    e.push(s);
    e.finish()
}

/// Short identifier-like field.
pub(crate) fn name(s: &str) -> String {
    excerpt_n(s, NAME_CHARS)
}

/// Compact JSON rendering of `v`, cut to an excerpt. Serialisation stops once enough
/// bytes exist, so a huge value costs no more than the excerpt.
pub(crate) fn json_excerpt(v: &Value) -> String {
    let mut w = Limited {
        buf: Vec::new(),
        limit: EXCERPT_CHARS * 4 + 8,
    };
    // The writer errors out on purpose when full; what was written is what we want.
    let _ = serde_json::to_writer(&mut w, v);
    excerpt(&utf8_prefix(&w.buf))
}

/// Lossy UTF-8 view of bytes whose tail may have been cut mid-character: the cut
/// sequence is dropped rather than turned into U+FFFD.
pub(crate) fn utf8_prefix(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.into(),
        Err(e) if e.error_len().is_none() => {
            // valid_up_to() is a char boundary by construction.
            String::from_utf8_lossy(&bytes[..e.valid_up_to()])
        }
        Err(_) => {
            let cut = incomplete_tail_start(bytes);
            String::from_utf8_lossy(&bytes[..cut])
        }
    }
}

/// Start of a trailing, incomplete UTF-8 sequence (or `bytes.len()` if there is none).
fn incomplete_tail_start(bytes: &[u8]) -> usize {
    let n = bytes.len();
    for back in 1..=3.min(n) {
        let b = bytes[n - back];
        if b & 0xC0 == 0x80 {
            continue;
        }
        let need = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return n,
        };
        return if need > back { n - back } else { n };
    }
    n
}

struct Limited {
    buf: Vec<u8>,
    limit: usize,
}

impl io::Write for Limited {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.limit.saturating_sub(self.buf.len());
        if room == 0 {
            return Err(io::Error::other("excerpt full"));
        }
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_whitespace_and_trims() {
        assert_eq!(excerpt("  hello \n\t world  "), "hello world");
        let mut e = Excerpt::new();
        e.push("a ");
        e.push(" b");
        e.gap();
        e.push("c");
        assert_eq!(e.finish(), "a b c");
    }

    #[test]
    fn multibyte_truncation_is_char_safe() {
        let s = "é漢🦀".repeat(400);
        let out = excerpt(&s);
        assert_eq!(out.chars().count(), EXCERPT_CHARS);
        assert!(out.starts_with("é漢🦀é"));
        let spaced = "漢 ".repeat(600);
        let out = excerpt(&spaced);
        assert!(out.chars().count() <= EXCERPT_CHARS);
        assert!(!out.ends_with(' '));
    }

    #[test]
    fn control_chars_are_neutralised() {
        assert_eq!(excerpt("a\u{1b}[31mb"), "a\u{FFFD}[31mb");
    }

    #[test]
    fn json_excerpt_is_bounded() {
        let big = Value::String("ü".repeat(10_000));
        let out = json_excerpt(&big);
        assert_eq!(out.chars().count(), EXCERPT_CHARS);
        assert!(out.starts_with("\"üü"));
    }

    #[test]
    fn utf8_prefix_drops_cut_character() {
        let s = "ab漢".as_bytes();
        assert_eq!(utf8_prefix(&s[..4]), "ab");
        assert_eq!(utf8_prefix(b"a\xffb"), "a\u{FFFD}b");
    }
}
