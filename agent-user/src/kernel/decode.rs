//! Ring-buffer records → typed kernel events, with the length checked against the
//! kind first. A record of the wrong size is counted and skipped, never trusted.

use agent_ebpf::{
    CloseEvent, DnsEvent, EventHeader, ExecEvent, ExitEvent, FileEvent, ForkEvent, HelloEvent,
    NetEvent, PipeEvent, PolicyEvent, TlsEvent, kind,
};

pub enum Raw {
    Exec(Box<ExecEvent>),
    Fork(ForkEvent),
    Exit(ExitEvent),
    File(Box<FileEvent>),
    Net(NetEvent),
    Dns(Box<DnsEvent>),
    Tls(Box<TlsEvent>),
    Pipe(Box<PipeEvent>),
    Policy(Box<PolicyEvent>),
    Hello(Box<HelloEvent>),
    Close(CloseEvent),
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short(usize),
    UnknownKind(u32),
    BadSize { kind: u32, got: usize, want: usize },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short(n) => write!(f, "record of {n} bytes is shorter than a header"),
            DecodeError::UnknownKind(k) => write!(f, "unknown record kind {k}"),
            DecodeError::BadSize { kind, got, want } => {
                write!(f, "record kind {kind} has {got} bytes, expected {want}")
            }
        }
    }
}

fn read<T: Copy>(buf: &[u8], kind: u32) -> Result<T, DecodeError> {
    let want = size_of::<T>();
    if buf.len() < want {
        return Err(DecodeError::BadSize {
            kind,
            got: buf.len(),
            want,
        });
    }
    // SAFETY: length checked; T is a plain repr(C) struct of integers and byte arrays,
    // valid for any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

fn boxed<T: Copy>(buf: &[u8], kind: u32) -> Result<Box<T>, DecodeError> {
    read(buf, kind).map(Box::new)
}

pub fn decode(buf: &[u8]) -> Result<Raw, DecodeError> {
    if buf.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(buf.len()));
    }
    let k = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes"));
    Ok(match k {
        kind::EXEC => Raw::Exec(boxed(buf, k)?),
        kind::FORK => Raw::Fork(read(buf, k)?),
        kind::EXIT => Raw::Exit(read(buf, k)?),
        kind::FILE_OPEN | kind::FILE_UNLINK | kind::FILE_RENAME => Raw::File(boxed(buf, k)?),
        kind::NET_CONNECT | kind::NET_ACCEPT | kind::NET_BIND | kind::NET_LISTEN => {
            Raw::Net(read(buf, k)?)
        }
        kind::DNS_QUERY => Raw::Dns(boxed(buf, k)?),
        kind::TLS_DATA => Raw::Tls(boxed(buf, k)?),
        kind::PIPE_WRITE => Raw::Pipe(boxed(buf, k)?),
        kind::POLICY => Raw::Policy(boxed(buf, k)?),
        kind::TLS_HELLO => Raw::Hello(boxed(buf, k)?),
        kind::SOCK_CLOSE => Raw::Close(read(buf, k)?),
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_sizes_and_kinds() {
        assert_eq!(decode(&[0u8; 8]).err(), Some(DecodeError::Short(8)));
        let mut b = vec![0u8; size_of::<EventHeader>()];
        b[..4].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(decode(&b).err(), Some(DecodeError::UnknownKind(99)));
        b[..4].copy_from_slice(&kind::EXEC.to_ne_bytes());
        assert!(matches!(
            decode(&b),
            Err(DecodeError::BadSize { kind: 1, .. })
        ));
        let mut b = vec![0u8; size_of::<ForkEvent>()];
        b[..4].copy_from_slice(&kind::FORK.to_ne_bytes());
        b[size_of::<EventHeader>()..size_of::<EventHeader>() + 4]
            .copy_from_slice(&77u32.to_ne_bytes());
        match decode(&b).unwrap() {
            Raw::Fork(f) => assert_eq!(f.child_tgid, 77),
            _ => panic!("wrong kind"),
        }
    }
}

#[cfg(test)]
mod tls_kernel_tests {
    //! Real kernel and the system libssl: one SSL_write of ~100 KB by a tracked Python
    //! process arrives whole, as chunk records of one call that reassemble into the
    //! request; the same write by an untracked process costs one record.
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use agent_ebpf::{TLS_MAX, Tracked, direction, flag};
    use agent_user::intent::{Chunk, HttpMessage, TlsStream, parse_llm_request};

    use super::{Raw, decode};
    use crate::kernel::loader;
    use crate::kernel::test_support::{Attached, PinCleanup, root_or_skip};

    /// Sends one POST of a ~100 KB chat-completions body in a single `sendall` (one
    /// SSL_write_ex) once a line arrives on stdin, then prints the status line.
    const CLIENT: &str = r#"
import json, socket, ssl, sys
sys.stdin.readline()
body = json.dumps({"model": "gpt-4o", "messages": [
    {"role": "system", "content": "You are careful. " * 6000},
    {"role": "user", "content": "FINDME-KERNEL list the ledger files"}],
    "tools": [{"type": "function", "function": {"name": "read_ledger", "parameters": {}}}]}).encode()
head = ("POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        "Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)).encode()
ctx = ssl._create_unverified_context()
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))))
s.sendall(head + body)
print(s.recv(4096).decode().split("\r\n")[0], flush=True)
"#;

    struct Proc(Child);

    impl Drop for Proc {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn server(dir: &std::path::Path) -> (Proc, u16) {
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        let st = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "openssl req");
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/agents/tls_server.py"
            ))
            .args([&cert, &key])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut l = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut l)
            .unwrap();
        (Proc(child), l.trim().parse().unwrap())
    }

    fn client(port: u16) -> Proc {
        Proc(
            Command::new("python3")
                .args(["-c", CLIENT, &port.to_string()])
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    fn go(c: &mut Proc) -> String {
        let stdin = c.0.stdin.as_mut().unwrap();
        writeln!(stdin, "go").unwrap();
        stdin.flush().unwrap();
        let mut l = String::new();
        let _ = BufReader::new(c.0.stdout.take().unwrap()).read_line(&mut l);
        l.trim().to_string()
    }

    #[test]
    fn a_100_kb_ssl_write_arrives_whole_and_untracked_ones_cost_one_record() {
        if !root_or_skip("a_100_kb_ssl_write_arrives_whole_and_untracked_ones_cost_one_record") {
            return;
        }
        let pins = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/custody-test-tlswhole-{}",
            std::process::id()
        ));
        let _cleanup = PinCleanup(pins.clone());
        let l = loader::load(&loader::Options {
            observe_all: false,
            floor: false,
            tls_binaries: Vec::new(),
            netns: 0,
            pin_dir: Some(pins),
        })
        .expect("load programs");
        if !l
            .features
            .iter()
            .any(|f| f.name.starts_with("tls:") && f.active)
        {
            let why: Vec<_> = l
                .features
                .iter()
                .filter(|f| !f.active)
                .map(|f| format!("{}: {}", f.name, &f.detail[..f.detail.len().min(300)]))
                .collect();
            let tail: Vec<_> = l
                .features
                .iter()
                .filter(|f| !f.active)
                .map(|f| f.detail[f.detail.len().saturating_sub(1500)..].to_string())
                .collect();
            assert!(
                std::env::var("CUSTODY_REQUIRE_BPF").as_deref() != Ok("1"),
                "no libssl to hook: {why:?} {tail:?}"
            );
            eprintln!("skipping: no libssl hooked on this host");
            return;
        }
        let _links = Attached(l.links);
        let mut tracked = l.tracked;
        let mut events = l.events;
        let dir = tempfile::tempdir().unwrap();
        let (_server, port) = server(dir.path());
        let mut agent = client(port);
        let mut other = client(port);
        let (agent_pid, other_pid) = (agent.0.id(), other.0.id());
        tracked.insert(agent_pid, Tracked::new(1, 0), 0).unwrap();
        assert!(go(&mut agent).starts_with("HTTP/1.1 200"));
        assert!(go(&mut other).starts_with("HTTP/1.1 200"));

        let mut agent_writes = Vec::new();
        let mut other_writes = 0usize;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            while let Some(item) = events.next() {
                let Ok(Raw::Tls(e)) = decode(&item) else {
                    continue;
                };
                if e.direction != direction::WRITE || e.hdr.flags & flag::HELD != 0 {
                    continue;
                }
                if e.hdr.tgid == agent_pid {
                    agent_writes.push(e);
                } else if e.hdr.tgid == other_pid {
                    other_writes += 1;
                    assert!(e.captured as usize <= TLS_MAX);
                }
            }
            if !agent_writes.is_empty() && other_writes > 0 {
                // Give the rest of the agent's chunks a moment to land.
                std::thread::sleep(Duration::from_millis(200));
                while let Some(item) = events.next() {
                    if let Ok(Raw::Tls(e)) = decode(&item) {
                        if e.hdr.tgid == agent_pid && e.direction == direction::WRITE {
                            agent_writes.push(e);
                        }
                    }
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(other_writes, 1, "an untracked request costs one record");
        let big = agent_writes
            .iter()
            .find(|e| e.len > 100_000)
            .map(|e| e.call_id);
        let call: Vec<_> = agent_writes
            .iter()
            .filter(|e| Some(e.call_id) == big)
            .collect();
        assert!(!call.is_empty(), "no 100 KB write seen");
        let total = call[0].len as usize;
        assert_eq!(
            call.len(),
            total.div_ceil(TLS_MAX),
            "one record per TLS_MAX bytes"
        );
        for (i, e) in call.iter().enumerate() {
            assert_eq!(e.offset as usize, i * TLS_MAX, "chunks in order");
            assert_eq!(e.hdr.flags & flag::DATA_TRUNCATED, 0);
        }
        assert_eq!(
            call.iter().map(|e| e.captured as usize).sum::<usize>(),
            total,
            "every byte captured"
        );

        let mut s = TlsStream::new();
        let mut msgs = Vec::new();
        for e in &agent_writes {
            let data = &e.data[..e.captured as usize];
            msgs.extend(s.feed_chunk(Chunk {
                call_id: e.call_id,
                offset: u64::from(e.offset),
                call_len: u64::from(e.len),
                data,
                last: data.len() < TLS_MAX,
            }));
        }
        let req = msgs
            .iter()
            .find_map(|m| match m {
                HttpMessage::Request(r) => Some(r),
                _ => None,
            })
            .expect("the request");
        assert!(req.body_complete && req.body.len() > 100_000);
        let llm = parse_llm_request(req).expect("a chat-completions request");
        assert!(
            llm.user_excerpt.contains("FINDME-KERNEL"),
            "{}",
            llm.user_excerpt
        );
        assert_eq!(llm.tools, vec!["read_ledger".to_string()]);
    }
}
