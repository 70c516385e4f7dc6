//! Hello and close records → pipeline: SNI discovery by a configured host, opaque
//! egress of a process that exited before its connection closed, nothing for a
//! process whose TLS is read, and garbage or cut hellos counted without a panic.

use std::sync::Arc;

use agent_ebpf::{CloseEvent, EventHeader, HELLO_MAX, HelloEvent, Tracked, flag, kind};
use agent_user::credential::FleetKey;
use custody_proto::sensor::v1::{Event, TlsStack, event::Kind};

use super::super::{Pipeline, Tracker};
use crate::config::Config;
use crate::identity::Identity;
use crate::kernel::decode::Raw;

struct NoTracker;
impl Tracker for NoTracker {
    fn track(&mut self, _: u32, _: Tracked) {}
}

const PID: u32 = 3_999_301;
const SOCK: u64 = 0xffff_8880_1234_5600;

fn hdr(k: u32, tracked: bool) -> EventHeader {
    EventHeader {
        kind: k,
        flags: if tracked { flag::TRACKED } else { 0 },
        ktime_ns: 5_000_000_000,
        tgid: PID,
        pid: PID,
        ppid: 1,
        uid: 1000,
        gid: 1000,
        auid: 1000,
        netns: 4026531840,
        agent: 0,
        cgroup_id: 1,
        start_boottime: 4_000_000_000,
        parent_start_boottime: 0,
        comm: *b"codex\0\0\0\0\0\0\0\0\0\0\0",
    }
}

fn rustls_hello(sni: &str) -> Vec<u8> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut c = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    out
}

fn hello(tracked: bool, sock: u64, data: &[u8]) -> Raw {
    // SAFETY: the record is plain integers and byte arrays.
    let mut e: Box<HelloEvent> = Box::new(unsafe { std::mem::zeroed() });
    e.hdr = hdr(kind::TLS_HELLO, tracked);
    e.sock = sock;
    e.opened_ns = 4_900_000_000;
    e.fd = 5;
    e.len = data.len() as u32;
    let n = data.len().min(HELLO_MAX);
    e.captured = n as u32;
    e.data[..n].copy_from_slice(&data[..n]);
    e.family = 2;
    e.local_port = 40000;
    e.remote_port = 443;
    e.local_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
    e.remote_addr[..4].copy_from_slice(&[203, 0, 113, 9]);
    Raw::Hello(e)
}

fn close(sock: u64) -> Raw {
    // SAFETY: as above.
    let mut e: CloseEvent = unsafe { std::mem::zeroed() };
    e.hdr.kind = kind::SOCK_CLOSE;
    e.hdr.flags = flag::TRACKED;
    e.hdr.ktime_ns = 9_000_000_000;
    e.hdr.tgid = PID;
    e.hdr.pid = PID;
    e.sock = sock;
    e.opened_ns = 4_900_000_000;
    e.bytes_acked = 1234;
    e.bytes_received = 56789;
    e.family = 2;
    e.local_port = 40000;
    e.remote_port = 443;
    e.local_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
    e.remote_addr[..4].copy_from_slice(&[203, 0, 113, 9]);
    Raw::Close(e)
}

fn exit() -> Raw {
    // SAFETY: as above.
    let mut e: agent_ebpf::ExitEvent = unsafe { std::mem::zeroed() };
    e.hdr = hdr(kind::EXIT, true);
    Raw::Exit(e)
}

fn pipeline() -> Pipeline {
    let cfg = Config::parse("[discovery]\nllm_hosts = [\"LLM.corp.example.\"]\n", "t").unwrap();
    assert_eq!(cfg.llm_hosts, vec!["llm.corp.example".to_string()]);
    let mut p = Pipeline::new(
        "t-host".into(),
        Identity::new(cfg.agents),
        FleetKey::from_bytes([3; 32]),
        false,
    );
    p.set_llm_hosts(cfg.llm_hosts);
    p
}

fn run(p: &mut Pipeline, records: Vec<Raw>) -> Vec<Event> {
    let mut out = Vec::new();
    for r in records {
        crate::pipeline::tests::handle(p, r, &mut NoTracker, &mut out);
    }
    out
}

fn opaque(events: &[Event]) -> Vec<&custody_proto::sensor::v1::OpaqueEgress> {
    events
        .iter()
        .filter_map(|e| match e.kind.as_ref()? {
            Kind::OpaqueEgress(o) => Some(o),
            _ => None,
        })
        .collect()
}

#[test]
fn a_configured_host_in_the_sni_makes_a_discovered_agent() {
    let mut p = pipeline();
    let out = run(
        &mut p,
        vec![hello(false, SOCK, &rustls_hello("eu.llm.corp.example"))],
    );
    let d = out
        .iter()
        .find_map(|e| match e.kind.as_ref()? {
            Kind::AgentDiscovered(d) => Some(d),
            _ => None,
        })
        .expect("discovered");
    assert_eq!(
        (d.reason.as_str(), d.evidence.as_str()),
        ("llm_api", "sni eu.llm.corp.example")
    );
    // An ordinary host: nothing, and an untracked connection is not followed.
    let mut p = pipeline();
    let out = run(
        &mut p,
        vec![
            hello(false, SOCK, &rustls_hello("example.org")),
            close(SOCK),
        ],
    );
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_process_that_exits_before_its_connection_closes_still_gets_its_opaque_egress() {
    let mut p = pipeline();
    let mut out = run(
        &mut p,
        vec![hello(true, SOCK, &rustls_hello("chatgpt.com"))],
    );
    p.table.mark_tls_uncovered(PID, TlsStack::Rustls as i32);
    out.extend(run(&mut p, vec![exit(), close(SOCK)]));
    let o = opaque(&out);
    assert_eq!(o.len(), 1, "{out:?}");
    assert_eq!(o[0].sni, "chatgpt.com");
    assert_eq!((o[0].bytes_sent, o[0].bytes_received), (1234, 56789));
    assert_eq!(o[0].stack, TlsStack::Rustls as i32);
    let c = o[0].conn.as_ref().unwrap();
    assert_eq!(
        (c.remote_addr.as_str(), c.remote_port),
        ("203.0.113.9", 443)
    );
    let ev = out
        .iter()
        .find(|e| matches!(e.kind, Some(Kind::OpaqueEgress(_))))
        .unwrap();
    assert_eq!(
        ev.process.as_ref().map(|p| p.pid),
        Some(PID),
        "the process as it was"
    );
}

#[test]
fn a_process_whose_tls_is_read_gets_no_opaque_egress() {
    let mut p = pipeline();
    let out = run(
        &mut p,
        vec![
            hello(true, SOCK, &rustls_hello("api.openai.com")),
            close(SOCK),
        ],
    );
    assert!(opaque(&out).is_empty(), "{out:?}");
    assert_eq!(p.stats.hello.hellos_parsed, 1);
}

#[test]
fn garbage_and_cut_hellos_are_counted_never_a_panic() {
    let mut p = pipeline();
    let real = rustls_hello("api.anthropic.com");
    let mut records = vec![
        hello(true, 1, &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0, 0]),
        hello(true, 2, &[0x16, 0x03, 0x01, 0x00, 0x00, 0x01]),
        hello(true, 3, &[0x16; HELLO_MAX]),
    ];
    // Cut inside the server name: parsed (what came before), marked truncated.
    records.push(hello(true, 4, &real[..60]));
    for n in [0, 5, 9, 43, real.len() - 1] {
        records.push(hello(true, 100 + n as u64, &real[..n]));
    }
    run(&mut p, records);
    let s = &p.stats.hello;
    assert_eq!(s.hellos_seen, 9);
    assert_eq!(s.hellos_parsed + s.hellos_unparseable, 9);
    assert!(s.hellos_unparseable >= 4, "{s:?}");
    assert!(s.hellos_truncated >= 1, "{s:?}");
}

#[test]
fn the_connection_table_is_bounded() {
    let mut p = pipeline();
    let h = rustls_hello("example.org");
    let records = (0..=super::CONNS_MAX as u64)
        .map(|i| hello(true, i + 1, &h))
        .collect();
    run(&mut p, records);
    assert_eq!(p.stats.hello.conns_dropped, 1);
}
