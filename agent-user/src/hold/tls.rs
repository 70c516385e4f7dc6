//! Holds before a TLS send: every in-flight write of the held process is vetted by
//! its HTTP/1 request head (followed into the connection's next write when the head
//! is split) before it is encrypted.

use std::time::{Duration, Instant};

use agent_ebpf::{Held, TlsCall, direction};
use agent_user::intent::request_head;

use super::process::{boot_ns, read_mem, threads_quiet};
use super::{Hit, Holds, Judge, Outcome, UNREADABLE_GIVE_UP, Verdict};

/// Bytes of a held write vetted (read from the process when the record has less): a
/// request head longer than this is vetted as far as this goes.
const VET_MAX: u64 = 64 << 10;

/// A held process with a thread still running after this long is vetted anyway.
const QUIET_GIVE_UP: Duration = Duration::from_secs(1);

/// A head left unfinished by a held write is kept this long for the write that
/// continues it.
const PARTIAL_TTL: Duration = Duration::from_secs(30);

/// The write a held TLS record carries (the kernel emits it at SSL_write's entry).
#[derive(Clone, Debug)]
pub struct HeldWrite {
    /// Thread that called SSL_write.
    pub tid: u32,
    /// The `SSL *`.
    pub conn: u64,
    /// The buffer in the process and its length.
    pub buf: u64,
    pub len: u64,
    /// What the kernel captured of it (at most `TLS_MAX`).
    pub data: Vec<u8>,
}

/// One write of a held process, with what could be read of it.
struct Write {
    tid: u32,
    call: TlsCall,
    /// The bytes to vet; None when unreadable.
    bytes: Option<Vec<u8>>,
    from_memory: bool,
}

impl Holds {
    /// TLS hold: every in-flight write of the process (all its threads are stopped,
    /// and all of them go on when it is continued), from the held record when it
    /// has the whole write, else from the process's memory.
    pub(super) fn vet_writes(
        &mut self,
        tgid: u32,
        held: Held,
        record: Option<&HeldWrite>,
        judge: &mut dyn Judge,
    ) -> Result<Verdict, Outcome> {
        // A thread still running may be inside a uprobe handler of this hold (its
        // write not yet in TLS_CALLS, its SIGSTOP not yet sent, which a SIGCONT now
        // would cancel): wait briefly until the group stop has reached every thread,
        // else retry on the daemon's next poll (a thread waiting for a CPU on a
        // loaded host). Past QUIET_GIVE_UP it is vetted as it stands.
        let t = Instant::now();
        let age = Duration::from_nanos(boot_ns().saturating_sub(held.held_ns));
        while !threads_quiet(tgid) {
            if age > QUIET_GIVE_UP {
                tracing::debug!(
                    pid = tgid,
                    "held process still not quiet: vetting it as it stands"
                );
                break;
            }
            if t.elapsed() > Duration::from_millis(2) {
                tracing::debug!(pid = tgid, "held process not quiet yet: retried shortly");
                self.deferred.insert(tgid, held);
                return Err(Outcome::Deferred);
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        let mut writes: Vec<Write> = self
            .calls
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, c)| (k >> 32) as u32 == tgid && c.direction == direction::WRITE)
            .map(|(k, call)| Write {
                tid: k as u32,
                call,
                bytes: None,
                from_memory: false,
            })
            .collect();
        if let Some(r) = record {
            if !writes.iter().any(|w| w.tid == r.tid && w.call.buf == r.buf) {
                // Not in TLS_CALLS (insert failed or evicted): the record still has it.
                writes.push(Write {
                    tid: r.tid,
                    call: TlsCall {
                        ssl: r.conn,
                        buf: r.buf,
                        len: r.len,
                        direction: direction::WRITE,
                        ..Default::default()
                    },
                    bytes: None,
                    from_memory: false,
                });
            }
        }
        // Whether `data` (after what a previous write left of its head) holds all
        // of the head there is to vet: then the record's capture is enough.
        let head_in = |tgid: u32, ssl: u64, data: &[u8]| {
            let mut joined = self
                .partial
                .get(&(tgid, ssl))
                .map(|(p, _)| p.clone())
                .unwrap_or_default();
            joined.extend_from_slice(data);
            request_head(&joined).is_none_or(|h| h.complete)
        };
        for w in &mut writes {
            let want = w.call.len.min(VET_MAX);
            let rec = record.filter(|r| r.tid == w.tid && r.buf == w.call.buf);
            if let Some(r) =
                rec.filter(|r| r.data.len() as u64 >= want || head_in(tgid, w.call.ssl, &r.data))
            {
                w.bytes = Some(r.data[..(want as usize).min(r.data.len())].to_vec());
            } else if let Some(b) = read_mem(tgid, w.call.buf, want as usize) {
                w.bytes = Some(b);
                w.from_memory = true;
            } else if let Some(r) = rec {
                // Memory unreadable: the record's capture is what can be vetted.
                w.bytes = Some(r.data.clone());
            } else if !std::path::Path::new(&format!("/proc/{tgid}/task/{}", w.tid)).exists() {
                // A thread that died inside SSL_write: nothing of it will be sent.
                w.bytes = Some(Vec::new());
            }
        }
        if writes.iter().any(|w| w.from_memory) {
            self.stats.tls.vetted_from_memory += 1;
        }
        let now = Instant::now();
        self.partial
            .retain(|_, (_, since)| now.duration_since(*since) < PARTIAL_TTL);
        let mut unvettable = writes.is_empty();
        let mut heads_to_follow = Vec::new();
        for w in &writes {
            let Some(bytes) = &w.bytes else {
                unvettable = true;
                continue;
            };
            let key = (tgid, w.call.ssl);
            let mut joined = match self.partial.get(&key) {
                Some((p, _)) => p.clone(),
                None => Vec::new(),
            };
            joined.extend_from_slice(bytes);
            let Some(head) = request_head(&joined) else {
                continue; // not a request head (a body, or not HTTP/1): nothing to vet
            };
            if let Some(hit) = judge.revoked_headers(tgid, &head.headers) {
                self.partial.remove(&key);
                return Ok(Verdict::Revoked(hit));
            }
            let whole = bytes.len() as u64 == w.call.len;
            if !head.complete && whole && (joined.len() as u64) < VET_MAX {
                heads_to_follow.push((key, joined));
            } else {
                self.partial.remove(&key);
            }
        }
        if unvettable {
            let age = Duration::from_nanos(boot_ns().saturating_sub(held.held_ns));
            if record.is_none() && age < UNREADABLE_GIVE_UP {
                return Err(Outcome::Deferred);
            }
            tracing::warn!(
                pid = tgid,
                "a write held before send could not be vetted (record lost, buffer unreadable): quarantining the process (fail-closed)"
            );
            return Ok(Verdict::Unvettable(Hit {
                fingerprint: String::new(),
                action: "quarantine".into(),
                command_id: String::new(),
                seen_in: "header".into(),
                policy: String::new(),
            }));
        }
        for ((t, ssl), joined) in heads_to_follow {
            // The rest of the head comes in the connection's next write: hold it too.
            if self.hold_conn.insert(ssl, t, 0).is_ok() {
                self.partial.insert((t, ssl), (joined, now));
                self.stats.tls.continued_heads += 1;
            }
        }
        Ok(Verdict::Clean)
    }
}

#[cfg(test)]
mod tests {
    //! Real kernel and the system libssl: writes held at SSL_write's entry are vetted
    //! by the sweep, and only clean requests are sent.
    use std::io::{BufRead, BufReader, Write};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use agent_ebpf::{Tracked, hold};
    use agent_user::credential::FleetKey;

    use super::super::Holds;
    use super::super::test_support::{Attached, PinCleanup, TestJudge, root_or_skip, wait_state};
    use crate::kernel::loader;

    /// A Python TLS client (system libssl) that waits for one stdin line, connects to
    /// 127.0.0.1:PORT and sends each further argument with its own `sendall` (one
    /// SSL_write_ex each), then prints the response's status line.
    struct TlsClient {
        child: Child,
    }

    impl TlsClient {
        fn start(port: u16, parts: &[&str]) -> TlsClient {
            let child = Command::new("python3")
                .args([
                    "-c",
                    "import socket, ssl, sys\nsys.stdin.readline()\nctx = ssl._create_unverified_context()\ns = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))))\nfor p in sys.argv[2:]:\n    s.sendall(p.encode())\nprint(s.recv(4096).decode().split('\\r\\n')[0], flush=True)",
                    &port.to_string(),
                ])
                .args(parts)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            TlsClient { child }
        }

        fn go(&mut self) {
            let stdin = self.child.stdin.as_mut().unwrap();
            writeln!(stdin, "go").unwrap();
            stdin.flush().unwrap();
        }

        fn line(&mut self) -> String {
            let mut l = String::new();
            let _ = BufReader::new(self.child.stdout.take().unwrap()).read_line(&mut l);
            l.trim().to_string()
        }
    }

    impl Drop for TlsClient {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The tests' HTTPS server (tests/agents/tls_server.py) on a throwaway certificate,
    /// logging the request lines it receives.
    struct TlsServer {
        child: Child,
        port: u16,
        log: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl TlsServer {
        fn start() -> TlsServer {
            let dir = tempfile::tempdir().unwrap();
            let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
            let st = Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ])
                .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "openssl req");
            let log = dir.path().join("requests.log");
            let mut child = Command::new("python3")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../tests/agents/tls_server.py"
                ))
                .args([&cert, &key, &log])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut l = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut l)
                .unwrap();
            TlsServer {
                child,
                port: l.trim().parse().unwrap(),
                log,
                _dir: dir,
            }
        }

        fn received(&self) -> String {
            std::fs::read_to_string(&self.log).unwrap_or_default()
        }
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The TLS hold with its record lost (the test never reads the ring buffer): the
    /// sweep vets every held write from the process's memory, a head written in two
    /// calls is followed into its second write, and only clean processes go on.
    #[test]
    fn held_before_send_and_vetted_from_memory_when_the_record_is_lost() {
        if !root_or_skip("held_before_send_and_vetted_from_memory_when_the_record_is_lost") {
            return;
        }
        let base = PathBuf::from(format!(
            "/sys/fs/bpf/custody-test-tlshold-{}",
            std::process::id()
        ));
        let _cleanup = PinCleanup(base.clone());
        let l = loader::load(&loader::Options {
            observe_all: false,
            floor: false,
            tls_binaries: Vec::new(),
            netns: 0,
            pin_dir: Some(base.clone()),
        })
        .expect("load programs");
        if !l
            .features
            .iter()
            .any(|f| f.name.starts_with("tls:") && f.active)
        {
            assert!(
                std::env::var("CUSTODY_REQUIRE_BPF").as_deref() != Ok("1"),
                "no libssl to hook"
            );
            eprintln!("skipping: no libssl hooked on this host");
            return;
        }
        let mut ebpf = l.ebpf;
        let _links = Attached(l.links);
        let mut tracked = l.tracked;
        let mut holds = Holds::attach(&mut ebpf, hold::TRACKED).unwrap();
        holds.arm(true).unwrap();
        let server = TlsServer::start();

        let revoked = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyZXZva2VkIn0.bm90LWEtcmVhbC1zaWduYXR1cmU";
        let fp = FleetKey::from_bytes([9; 32]).fingerprint(revoked.as_bytes());
        let head = |path: &str, token: &str| {
            format!(
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            )
        };
        let clean_req = head("/clean", "some-other-token-0123456789abcdef");
        let bad_req = head("/revoked", revoked);
        let split_first = "GET /split HTTP/1.1\r\nHost: localhost\r\n";
        let split_rest = format!("Authorization: Bearer {revoked}\r\nConnection: close\r\n\r\n");
        let mut clean = TlsClient::start(server.port, &[&clean_req]);
        let mut bad = TlsClient::start(server.port, &[&bad_req]);
        let mut split = TlsClient::start(server.port, &[split_first, &split_rest]);
        let mut untracked = TlsClient::start(server.port, &[&bad_req]);
        for c in [&clean, &bad, &split] {
            tracked.insert(c.child.id(), Tracked::new(1, 0), 0).unwrap();
        }
        untracked.go();
        assert!(
            untracked.line().starts_with("HTTP/1.1 200"),
            "an untracked process is not held in the tracked scope"
        );
        for c in [&mut clean, &mut bad, &mut split] {
            c.go();
        }
        for c in [&clean, &bad, &split] {
            assert_eq!(
                wait_state(c.child.id(), 'T', Duration::from_secs(20)),
                Some('T'),
                "held at SSL_write"
            );
        }
        let mut judge = TestJudge {
            key: FleetKey::from_bytes([9; 32]),
            revoked: fp,
            enforced: Vec::new(),
        };
        assert!(
            holds.entries().iter().all(|(_, h)| h.is_tls()),
            "TLS holds are marked as such"
        );
        assert_eq!(holds.sweep(Duration::ZERO, &mut judge), 3);
        assert_eq!(judge.enforced, vec![bad.child.id()]);
        assert!(clean.line().starts_with("HTTP/1.1 200"), "clean: continued");
        // The split head: its first write is clean but unfinished, so the
        // connection's next write is held too, and it carries the revoked token.
        assert_eq!(
            wait_state(split.child.id(), 'T', Duration::from_secs(20)),
            Some('T'),
            "the rest of the head is held"
        );
        assert_eq!(holds.sweep(Duration::ZERO, &mut judge), 1);
        assert_eq!(judge.enforced, vec![bad.child.id(), split.child.id()]);
        use std::os::unix::process::ExitStatusExt;
        for c in [&mut bad, &mut split] {
            assert_eq!(c.child.wait().unwrap().signal(), Some(libc::SIGKILL));
        }
        std::thread::sleep(Duration::from_millis(300));
        let seen = server.received();
        assert!(seen.contains("GET /clean"), "{seen:?}");
        assert_eq!(
            seen.matches("GET /revoked").count(),
            1,
            "only the untracked sender's request arrived: {seen:?}"
        );
        let t = &holds.stats.tls;
        assert_eq!((t.resumed, t.killed, t.unvetted), (2, 2, 0));
        assert_eq!(t.continued_heads, 1);
        assert!(t.vetted_from_memory >= 4, "{t:?}");
        assert!(holds.entries().is_empty());
    }
}
