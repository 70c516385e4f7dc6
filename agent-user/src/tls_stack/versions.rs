//! Version strings a TLS library leaves in the binaries that carry it: OpenSSL's banner,
//! Cargo registry paths in Rust panic locations (`rustls-0.23.27/src/…`), Bun's own
//! version. They name what was found in the uncovered-TLS report; nothing is hooked on
//! their strength alone.

use regex::bytes::Regex;
use std::sync::LazyLock;

/// At most this many distinct versions are reported per pattern (a binary can carry several
/// copies of a crate; more than a handful means noise).
const MAX_VERSIONS: usize = 4;

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

fn collect(re: &Regex, bytes: &[u8], prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for caps in re.captures_iter(bytes) {
        let Some(v) = caps
            .get(1)
            .and_then(|m| std::str::from_utf8(m.as_bytes()).ok())
        else {
            continue;
        };
        let v = format!("{prefix}{v}");
        if !out.contains(&v) {
            out.push(v);
            if out.len() == MAX_VERSIONS {
                break;
            }
        }
    }
    out
}

/// `OpenSSL 3.0.19 27 Jan 2026` → `OpenSSL 3.0.19`.
pub(crate) fn openssl(bytes: &[u8]) -> Vec<String> {
    static RE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"OpenSSL (\d{1,2}\.\d{1,2}\.\d{1,3}[a-z]{0,2}) +\d{1,2} [A-Z][a-z]{2} \d{4}")
            .expect("static regex")
    });
    collect(&RE, bytes, "OpenSSL ")
}

/// Crate versions from Cargo registry paths (`/rustls-0.23.27/src/`).
pub(crate) fn crate_versions(bytes: &[u8], krate: &str) -> Vec<String> {
    let pattern = format!(
        r"[/\\]{}-(\d{{1,3}}\.\d{{1,3}}\.\d{{1,4}})[/\\]src[/\\]",
        regex::escape(krate)
    );
    let re = Regex::new(&pattern).expect("crate name is escaped");
    collect(&re, bytes, &format!("{krate} "))
}

/// `Bun v1.4.0` (the runtime that embeds BoringSSL in Claude Code's binary).
pub(crate) fn bun(bytes: &[u8]) -> Vec<String> {
    static RE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"Bun v(\d{1,2}\.\d{1,3}\.\d{1,3})[ \x00]").expect("static regex")
    });
    collect(&RE, bytes, "Bun ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_their_usual_strings() {
        let blob = b"..OpenSSL 3.0.19 27 Jan 2026\0..OpenSSL 3.0.19 27 Jan 2026\0\
            /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rustls-0.23.27/src/conn.rs\0\
            Bun v1.4.0 (63bb0ca0d)\0";
        assert_eq!(openssl(blob), vec!["OpenSSL 3.0.19"]);
        assert_eq!(crate_versions(blob, "rustls"), vec!["rustls 0.23.27"]);
        assert_eq!(crate_versions(blob, "ring"), Vec::<String>::new());
        assert_eq!(bun(blob), vec!["Bun 1.4.0"]);
    }
}
