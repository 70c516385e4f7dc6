//! Connections seen by their ClientHello: SNI as discovery evidence, and opaque egress.
//!
//! The kernel reports the first write after a connect when it starts like a TLS
//! handshake (`TLS_HELLO`), for every process in scope, and the close of a tracked
//! process's TLS connection with its byte counts (`SOCK_CLOSE`). Here a hello whose
//! server name is an LLM API host (the built-in list or the configured
//! `discovery.llm_hosts`) makes an untracked process a discovered agent with evidence
//! `sni <name>`; a tracked process's hello opens an entry in a bounded table (SNI,
//! ALPN, open time, 4-tuple) that its close turns into an `OpaqueEgress` event when
//! the process's TLS cannot be read (`ProcTable::tls_uncovered`). The connect event
//! itself goes out before the hello exists, so the SNI travels on the close.
//!
//! A process that exits first keeps its entries: its sockets are closed by the
//! kernel right after the exit record, and their close records still carry the byte
//! counts. The process's proto form and stack are kept from the exit for that.

use agent_ebpf::{CloseEvent, EventHeader, HelloEvent, flag};
use agent_user::intent::{llm_provider_for_host, parse_client_hello};
use custody_proto::sensor::v1::{self as pb, Connection, OpaqueEgress, event::Kind};

use super::resources::addr;
use super::{Output, Pipeline, Tracker};

/// Connections followed at once; beyond it the oldest entry is dropped (counted).
pub const CONNS_MAX: usize = 4096;

/// What became of the ClientHellos the kernel reported (status and metrics).
#[derive(Default, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HelloStats {
    /// Hello records received.
    pub hellos_seen: u64,
    /// Of those, ClientHellos parsed (SNI and ALPN read).
    pub hellos_parsed: u64,
    /// Records that did not parse as a ClientHello (garbage, or cut before it began).
    pub hellos_unparseable: u64,
    /// ClientHellos cut by the capture bound before their end (what came first is kept).
    pub hellos_truncated: u64,
    /// `OpaqueEgress` events emitted.
    pub opaque_egress: u64,
    /// Close records with no hello entry (the daemon started after the hello, or the
    /// entry was dropped): reported without SNI.
    pub closes_without_hello: u64,
    /// Entries dropped because the table was full.
    pub conns_dropped: u64,
}

/// One followed connection, from its hello to its close.
#[derive(Clone, Debug)]
pub(super) struct Conn {
    tgid: u32,
    sni: String,
    alpn: Vec<String>,
    opened_ns: u64,
    /// Set when the process exited before the connection closed.
    gone: Option<Gone>,
}

#[derive(Clone, Debug)]
struct Gone {
    process: Option<pb::Process>,
    stack: Option<i32>,
}

/// The 4-tuple of a hello or close record.
fn connection(family: u16, la: &[u8; 16], lp: u16, ra: &[u8; 16], rp: u16) -> Connection {
    Connection {
        protocol: "tcp".into(),
        family: if family == 2 { "ipv4" } else { "ipv6" }.into(),
        local_addr: addr(family, la),
        local_port: lp.into(),
        remote_addr: addr(family, ra),
        remote_port: rp.into(),
    }
}

/// The configured extra LLM API hosts match exactly or as a parent domain.
fn configured_host<'a>(hosts: &'a [String], sni: &str) -> Option<&'a str> {
    hosts
        .iter()
        .find(|h| {
            sni == h.as_str()
                || (sni.ends_with(h.as_str()) && sni[..sni.len() - h.len()].ends_with('.'))
        })
        .map(String::as_str)
}

impl Pipeline {
    /// Extra host names (besides the built-in LLM API hosts) whose SNI makes a process a
    /// discovered agent (`discovery.llm_hosts` in the config), lower-cased.
    pub fn set_llm_hosts(&mut self, hosts: Vec<String>) {
        self.llm_hosts = hosts
            .into_iter()
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
    }

    pub(super) fn hello(
        &mut self,
        e: &HelloEvent,
        tracker: &mut dyn Tracker,
        out: &mut Vec<Output>,
    ) {
        self.stats.hello.hellos_seen += 1;
        let data = &e.data[..(e.captured as usize).min(e.data.len())];
        let parsed = parse_client_hello(data);
        let (sni, alpn) = match parsed {
            Some(h) => {
                self.stats.hello.hellos_parsed += 1;
                if h.truncated || e.hdr.flags & flag::DATA_TRUNCATED != 0 {
                    self.stats.hello.hellos_truncated += 1;
                }
                (h.sni.unwrap_or_default(), h.alpn)
            }
            None => {
                self.stats.hello.hellos_unparseable += 1;
                (String::new(), Vec::new())
            }
        };
        let followed = self.wanted(&e.hdr);
        let discovered = self
            .table
            .get(e.hdr.tgid)
            .is_some_and(|p| p.discovered_reported);
        let llm = (!sni.is_empty() && !discovered)
            .then(|| {
                llm_provider_for_host(&sni)
                    .map(str::to_string)
                    .or_else(|| configured_host(&self.llm_hosts, &sni).map(|_| "configured".into()))
            })
            .flatten();
        if followed || llm.is_some() {
            self.touch(&e.hdr);
        }
        if llm.is_some() {
            self.discover(&e.hdr, "llm_api", format!("sni {sni}"), tracker, out);
        }
        if !followed {
            return;
        }
        if self.conns.len() >= CONNS_MAX && !self.conns.contains_key(&e.sock) {
            // Drop the oldest: a connection that long open is the likeliest leak.
            if let Some(&k) = self
                .conns
                .iter()
                .min_by_key(|(_, c)| c.opened_ns)
                .map(|(k, _)| k)
            {
                self.conns.remove(&k);
                self.stats.hello.conns_dropped += 1;
            }
        }
        self.conns.insert(
            e.sock,
            Conn {
                tgid: e.hdr.tgid,
                sni,
                alpn,
                opened_ns: e.opened_ns,
                gone: None,
            },
        );
    }

    pub(super) fn close(&mut self, e: &CloseEvent, out: &mut Vec<Output>) {
        let conn = self.conns.remove(&e.sock);
        if conn.as_ref().is_some_and(|c| c.tgid != e.hdr.tgid) {
            return; // a stale entry of a reused socket address: not this connection
        }
        let (stack, process) = match conn.as_ref().and_then(|c| c.gone.clone()) {
            Some(g) => (g.stack, g.process),
            None => (
                self.table.tls_uncovered(e.hdr.tgid),
                self.table
                    .process_proto(e.hdr.tgid, e.hdr.tgid, &mut self.users),
            ),
        };
        let Some(stack) = stack else { return };
        if conn.is_none() {
            self.stats.hello.closes_without_hello += 1;
        }
        let (sni, alpn) = conn.map(|c| (c.sni, c.alpn)).unwrap_or_default();
        self.stats.hello.opaque_egress += 1;
        let kind = Kind::OpaqueEgress(OpaqueEgress {
            conn: Some(connection(
                e.family,
                &e.local_addr,
                e.local_port,
                &e.remote_addr,
                e.remote_port,
            )),
            sni,
            alpn,
            bytes_sent: e.bytes_acked,
            bytes_received: e.bytes_received,
            opened_ns: e.opened_ns,
            stack,
        });
        self.stats.emitted += 1;
        out.push(Output::Event(pb::Event {
            host: self.table.host.clone(),
            time_ns: self.table.wall(e.hdr.ktime_ns),
            seq: 0,
            process,
            kind: Some(kind),
        }));
    }

    /// At a process's exit: its open connections wait for their close records (which
    /// follow as the kernel closes its files) with what is known of it now.
    pub(super) fn hello_exit(&mut self, h: &EventHeader) {
        if !self
            .conns
            .values()
            .any(|c| c.tgid == h.tgid && c.gone.is_none())
        {
            return;
        }
        let gone = Gone {
            process: self.table.process_proto(h.tgid, h.tgid, &mut self.users),
            stack: self.table.tls_uncovered(h.tgid),
        };
        for c in self.conns.values_mut() {
            if c.tgid == h.tgid && c.gone.is_none() {
                c.gone = Some(gone.clone());
            }
        }
    }

    /// The connections table, for pruning in step with the process table.
    pub(super) fn hello_prune(&mut self) {
        let table = &self.table;
        // Entries of processes that vanished without an exit record (lost) and whose
        // close never came would otherwise stay until the table fills.
        self.conns
            .retain(|_, c| c.gone.is_some() || table.get(c.tgid).is_some());
    }
}

#[cfg(test)]
#[path = "egress_tests.rs"]
mod egress_tests;

#[cfg(test)]
mod tests {
    use super::configured_host;

    #[test]
    fn configured_hosts_match_exactly_or_as_parent_domain() {
        let hosts = vec!["llm.corp.example".to_string()];
        assert_eq!(
            configured_host(&hosts, "llm.corp.example"),
            Some("llm.corp.example")
        );
        assert_eq!(
            configured_host(&hosts, "eu.llm.corp.example"),
            Some("llm.corp.example")
        );
        assert_eq!(configured_host(&hosts, "evilllm.corp.example"), None);
        assert_eq!(configured_host(&hosts, "corp.example"), None);
    }
}
