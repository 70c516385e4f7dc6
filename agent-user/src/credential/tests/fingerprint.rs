use std::os::unix::fs::PermissionsExt;

use super::super::FleetKey;

#[test]
fn fingerprint_matches_hmac_sha256_vector() {
    let mut b = [0u8; 32];
    for (i, x) in b.iter_mut().enumerate() {
        *x = i as u8;
    }
    // Computed independently with Python's hmac module.
    assert_eq!(
        FleetKey::from_bytes(b).fingerprint(b"custody-test-secret"),
        "hmac-sha256:0ac5d3550bfd1fb000345ce703e56585"
    );
}

#[test]
fn fingerprint_format_stability_and_key_dependence() {
    let k1 = FleetKey::from_bytes([1u8; 32]);
    let k2 = FleetKey::from_bytes([2u8; 32]);
    let fp = k1.fingerprint(b"secret-a");
    let hexpart = fp.strip_prefix("hmac-sha256:").expect("prefix");
    assert_eq!(hexpart.len(), 32);
    assert!(
        hexpart
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(fp, k1.fingerprint(b"secret-a"));
    assert_eq!(fp, k1.clone().fingerprint(b"secret-a"));
    assert_ne!(fp, k1.fingerprint(b"secret-b"));
    assert_ne!(fp, k2.fingerprint(b"secret-a"));
}

#[test]
fn debug_does_not_reveal_key() {
    let k = FleetKey::from_bytes([0xab; 32]);
    let dbg = format!("{k:?} {k:#?}");
    assert!(!dbg.contains("abab"), "{dbg}");
    assert!(!dbg.contains("171"), "{dbg}");
    assert!(!dbg.to_lowercase().contains("[171"), "{dbg}");
    assert!(dbg.contains("FleetKey"));
}

#[test]
fn creates_key_with_parents_and_0600_then_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/fleet.key");
    let k = FleetKey::load_or_create(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 32);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let again = FleetKey::load_or_create(&path).unwrap();
    assert_eq!(k.fingerprint(b"x"), again.fingerprint(b"x"));
    // Two fresh keys differ (they come from /dev/urandom).
    let other = FleetKey::load_or_create(&dir.path().join("other.key")).unwrap();
    assert_ne!(k.fingerprint(b"x"), other.fingerprint(b"x"));
}

fn write_key(path: &std::path::Path, contents: &[u8], mode: u32) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn loads_raw_and_hex_keys() {
    let dir = tempfile::tempdir().unwrap();
    let expected = FleetKey::from_bytes([0x5a; 32]).fingerprint(b"s");

    let raw = dir.path().join("raw.key");
    write_key(&raw, &[0x5a; 32], 0o600);
    assert_eq!(
        FleetKey::load_or_create(&raw).unwrap().fingerprint(b"s"),
        expected
    );

    for (name, text) in [
        ("hex.key", "5a".repeat(32)),
        ("hexnl.key", format!("{}\n", "5a".repeat(32))),
        ("HEX.key", "5A".repeat(32)),
    ] {
        let p = dir.path().join(name);
        write_key(&p, text.as_bytes(), 0o400);
        assert_eq!(
            FleetKey::load_or_create(&p).unwrap().fingerprint(b"s"),
            expected,
            "{name}"
        );
    }
}

#[test]
fn rejects_wrong_length_and_bad_hex_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    write_key(&short, b"too short\n", 0o600);
    let err = format!("{:#}", FleetKey::load_or_create(&short).unwrap_err());
    assert!(err.contains(&short.display().to_string()), "{err}");
    assert!(err.contains("wrong length"), "{err}");

    let bad = dir.path().join("bad.key");
    write_key(&bad, "zz".repeat(32).as_bytes(), 0o600);
    let err = format!("{:#}", FleetKey::load_or_create(&bad).unwrap_err());
    assert!(
        err.contains(&bad.display().to_string()) && err.contains("hex"),
        "{err}"
    );
}

#[test]
fn rejects_permissions_wider_than_0600() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o644, 0o640, 0o604, 0o700, 0o660] {
        let p = dir.path().join(format!("k{mode:o}.key"));
        write_key(&p, &[1u8; 32], mode);
        let err = format!("{:#}", FleetKey::load_or_create(&p).unwrap_err());
        assert!(err.contains(&p.display().to_string()), "{err}");
        assert!(err.contains("permissions"), "{mode:o}: {err}");
    }
}

#[test]
fn rejects_a_directory_in_place_of_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("keydir");
    std::fs::create_dir(&p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = format!("{:#}", FleetKey::load_or_create(&p).unwrap_err());
    assert!(err.contains(&p.display().to_string()), "{err}");
}
