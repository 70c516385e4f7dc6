use super::super::{escape_bytes, unescape_bytes};
use super::Rng;

#[test]
fn valid_utf8_is_kept_and_invalid_bytes_are_escaped() {
    assert_eq!(escape_bytes(b"/tmp/a b/\xc3\xa9t\xc3\xa9"), "/tmp/a b/été");
    assert_eq!(escape_bytes(b"a\xffb\xfe"), "a\\xffb\\xfe");
    assert_eq!(escape_bytes(b"\xc3"), "\\xc3");
    assert_eq!(escape_bytes(b"C:\\dir"), "C:\\dir");
}

#[test]
fn literal_backslash_x_is_doubled() {
    assert_eq!(escape_bytes(b"\\x41"), "\\\\x41");
    assert_eq!(escape_bytes(b"\\\\x"), "\\\\\\\\x");
    // A backslash right before an escaped byte is doubled too, or "\\xff" would be
    // ambiguous.
    assert_eq!(escape_bytes(b"\\\xff"), "\\\\\\xff");
}

#[test]
fn round_trips_tricky_inputs() {
    let cases: &[&[u8]] = &[
        b"",
        b"\\",
        b"\\x",
        b"x\\",
        b"\\\\x41",
        b"\\\xff",
        b"\\\\\xff\\x",
        b"\xff\\x00",
        b"\\xff",
        b"\\xZZ",
        b"\xe2\x82",
        b"ok \xf0\x9f\x98\x80 done",
    ];
    for &c in cases {
        let e = escape_bytes(c);
        assert_eq!(unescape_bytes(&e), c, "{e:?}");
    }
}

#[test]
fn round_trips_random_bytes() {
    let mut rng = Rng::new(0x5eed_0001);
    for _ in 0..2000 {
        let mut data = rng.bytes(48);
        // Make backslashes and 'x' frequent enough to exercise the doubling rule.
        for b in data.iter_mut() {
            match *b % 7 {
                0 => *b = b'\\',
                1 => *b = b'x',
                _ => {}
            }
        }
        let e = escape_bytes(&data);
        assert_eq!(unescape_bytes(&e), data, "{e:?}");
    }
}

#[test]
fn unescape_is_lenient_on_foreign_text() {
    assert_eq!(unescape_bytes("\\xg1"), b"\\xg1");
    assert_eq!(unescape_bytes("\\x4"), b"\\x4");
    assert_eq!(unescape_bytes("plain"), b"plain");
}
