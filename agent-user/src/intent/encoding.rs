//! Content codings of HTTP bodies (gzip, deflate, br, zstd), undone with a bound.
//!
//! Clients compress requests (Codex sends zstd) and ask servers for compressed
//! answers. A body is decoded only up to a cap on its output, so a decompression bomb
//! costs at most the cap (plus the decoder's window: zstd windows above 8 MiB, which
//! RFC 9659 lets HTTP decoders refuse, are refused). A body cut by the capture bound
//! decodes as far as it goes.

use std::borrow::Cow;
use std::io::Read;

use super::http::{HttpRequest, HttpResponse};

/// Most decoded bytes kept of one body.
pub const MAX_DECODED: usize = 1024 * 1024;
/// Largest zstd window accepted (RFC 9659 §3: HTTP encoders stay within 8 MB).
const ZSTD_MAX_WINDOW: u64 = 8 << 20;

/// Why a body could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A coding this daemon does not know (the body is left as it is).
    Unknown(String),
    /// The coded data is invalid before any output was produced.
    Invalid(&'static str),
}

/// The body with the codings of a `Content-Encoding` value undone (applied in the
/// order listed, so undone in reverse), at most `cap` bytes of it. `Ok(None)`: no
/// coding to undo.
pub fn decode_body(
    content_encoding: &str,
    body: &[u8],
    cap: usize,
) -> Result<Option<Vec<u8>>, DecodeError> {
    let codings: Vec<String> = content_encoding
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    if codings.is_empty() {
        return Ok(None);
    }
    if codings.len() > 4 {
        return Err(DecodeError::Invalid("more than four content codings"));
    }
    let mut data = body.to_vec();
    for c in codings.iter().rev() {
        data = decode_one(c, &data, cap)?;
    }
    Ok(Some(data))
}

/// The request with its body decoded when it was sent with a content coding (Codex
/// compresses its requests); unchanged when there is none or it cannot be undone.
pub fn decoded_request(r: HttpRequest) -> HttpRequest {
    let Some(enc) = r.header("content-encoding").map(str::to_string) else {
        return r;
    };
    match decode_body(&enc, &r.body, MAX_DECODED) {
        Ok(Some(body)) => {
            let mut r = r;
            r.body = body;
            r.headers
                .retain(|(k, _)| !k.eq_ignore_ascii_case("content-encoding"));
            r
        }
        _ => r,
    }
}

/// The response with its body decoded when it came with a content coding.
pub fn decoded_response(r: &HttpResponse) -> Cow<'_, HttpResponse> {
    let Some(enc) = r.header("content-encoding") else {
        return Cow::Borrowed(r);
    };
    match decode_body(enc, &r.body, MAX_DECODED) {
        Ok(Some(body)) => {
            let mut d = r.clone();
            d.body = body;
            d.headers
                .retain(|(k, _)| !k.eq_ignore_ascii_case("content-encoding"));
            Cow::Owned(d)
        }
        _ => Cow::Borrowed(r),
    }
}

fn decode_one(coding: &str, body: &[u8], cap: usize) -> Result<Vec<u8>, DecodeError> {
    let reader: Box<dyn Read + '_> = match coding {
        "gzip" | "x-gzip" => Box::new(flate2::read::GzDecoder::new(body)),
        "deflate" => {
            // "deflate" is zlib-wrapped by the RFC, raw deflate by some servers.
            if body.first().is_some_and(|b| b & 0x0f == 8) {
                Box::new(flate2::read::ZlibDecoder::new(body))
            } else {
                Box::new(flate2::read::DeflateDecoder::new(body))
            }
        }
        "br" => Box::new(brotli_decompressor::Decompressor::new(body, 4096)),
        "zstd" => {
            let d =
                ruzstd::decoding::StreamingDecoder::new_with_max_window_size(body, ZSTD_MAX_WINDOW)
                    .map_err(|_| DecodeError::Invalid("bad zstd frame header"))?;
            Box::new(d)
        }
        other => return Err(DecodeError::Unknown(other.to_string())),
    };
    read_bounded(reader, cap)
}

/// Reads until the end, an error (a cut body) or `cap` bytes.
fn read_bounded(reader: impl Read, cap: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let mut limited = reader.take(cap as u64);
    let mut buf = [0u8; 8192];
    loop {
        match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) if out.is_empty() => return Err(DecodeError::Invalid("undecodable body")),
            Err(_) => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    /// Brotli from node's zlib (the tests' node is the one agents run on).
    fn brotli(data: &[u8]) -> Vec<u8> {
        use std::process::{Command, Stdio};
        let mut child = Command::new("node")
            .args([
                "-e",
                "const z=require('zlib');const c=[];process.stdin.on('data',d=>c.push(d));process.stdin.on('end',()=>process.stdout.write(z.brotliCompressSync(Buffer.concat(c))))",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node (for a brotli encoder) is needed by this test");
        let mut stdin = child.stdin.take().unwrap();
        let input = data.to_vec();
        let w = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        w.join().unwrap().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    #[test]
    fn every_coding_round_trips_and_stacked_codings_undo_in_reverse() {
        let body = br#"{"model":"gpt-5","input":"list the files"}"#.repeat(100);
        for (name, coded) in [
            ("gzip", gzip(&body)),
            ("zstd", zstd(&body)),
            ("br", brotli(&body)),
        ] {
            assert_eq!(
                decode_body(name, &coded, MAX_DECODED).unwrap().as_deref(),
                Some(&body[..]),
                "{name}"
            );
        }
        let stacked = zstd(&gzip(&body));
        assert_eq!(
            decode_body("gzip, zstd", &stacked, MAX_DECODED).unwrap(),
            Some(body.clone())
        );
        assert_eq!(decode_body("identity", &body, MAX_DECODED), Ok(None));
        assert_eq!(
            decode_body("compress", &body, MAX_DECODED),
            Err(DecodeError::Unknown("compress".into()))
        );
        assert!(matches!(
            decode_body("zstd", b"not zstd at all", MAX_DECODED),
            Err(DecodeError::Invalid(_))
        ));
        // Cut by the capture bound: decodes as far as it goes.
        let coded = gzip(&body);
        let part = decode_body("gzip", &coded[..coded.len() / 2], MAX_DECODED)
            .unwrap()
            .unwrap();
        assert!(
            !part.is_empty() && body.starts_with(&part),
            "{}",
            part.len()
        );
    }

    #[test]
    fn bombs_stop_at_the_cap() {
        let zeros = vec![0u8; 16 << 20];
        for (name, coded) in [
            ("gzip", gzip(&zeros)),
            ("zstd", zstd(&zeros)),
            ("br", brotli(&zeros)),
        ] {
            assert!(coded.len() < 1 << 20, "{name}: {}", coded.len());
            let out = decode_body(name, &coded, MAX_DECODED).unwrap().unwrap();
            assert_eq!(out.len(), MAX_DECODED, "{name}");
        }
    }
}
