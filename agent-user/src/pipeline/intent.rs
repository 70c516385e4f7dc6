//! TLS plaintext and pipe JSON → HTTP, LLM and MCP events, credential sightings,
//! delegation identities, and discovery of undeclared agents (by what they send, or
//! at exec when they run a known agent program).

use agent_ebpf::{EventHeader, PipeEvent, TLS_MAX, TlsEvent, Tracked, direction, flag, track};
use agent_user::credential::{self, decode_jwt, redact_bytes, redact_target, scan_headers};
use agent_user::intent::{
    Chunk, HttpMessage, HttpRequest, HttpResponse, McpMessage as Mcp, decoded_request,
    decoded_response, is_mcp, llm_provider_for_host, parse_jsonrpc, parse_llm_request,
    parse_llm_response, with_mcp_headers,
};
use agent_user::known_agents::KnownAgent;
use custody_proto::sensor::v1::{
    self as pb, AgentDiscovered, CredentialSeen, LlmRequest, LlmResponse, McpMessage, Principal,
    ToolCall, event::Kind,
};

use super::{Output, Pipeline, Tracker, is_tracked};

const EXCERPT: usize = 1024;

fn request_text(r: &HttpRequest) -> Vec<u8> {
    let mut t = format!("{} {} HTTP/1.1\r\n", r.method, r.path).into_bytes();
    for (k, v) in &r.headers {
        t.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    t.extend_from_slice(b"\r\n");
    t.extend_from_slice(&r.body[..r.body.len().min(EXCERPT)]);
    t
}

fn response_text(r: &HttpResponse) -> Vec<u8> {
    let mut t = format!("HTTP/1.1 {}\r\n", r.status).into_bytes();
    for (k, v) in &r.headers {
        t.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    t.extend_from_slice(b"\r\n");
    t.extend_from_slice(&r.body[..r.body.len().min(EXCERPT)]);
    t
}

/// Cut to at most `n` bytes on a char boundary.
fn cut(mut s: String, n: usize) -> String {
    if s.len() > n {
        let mut i = n;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        s.truncate(i);
    }
    s
}

fn mcp_pb(m: Mcp, transport: &str) -> McpMessage {
    McpMessage {
        transport: transport.into(),
        message_type: m.message_type,
        method: m.method,
        id: m.id,
        tool_name: m.tool_name,
        arguments_excerpt: credential::redact(&m.arguments_excerpt),
        peer_name: m.peer_name,
        result_excerpt: credential::redact(&m.result_excerpt),
    }
}

impl Pipeline {
    pub(super) fn tls(&mut self, e: &TlsEvent, tracker: &mut dyn Tracker, out: &mut Vec<Output>) {
        let tgid = e.hdr.tgid;
        let data = &e.data[..(e.captured as usize).min(e.data.len())];
        let key = (tgid, e.conn, e.direction);
        // The kernel fills every chunk but the last; a short one without a failed read
        // ends its call (see `TlsEvent`).
        let last = e.hdr.flags & flag::DATA_TRUNCATED != 0
            || (data.len() < TLS_MAX && e.hdr.flags & flag::READ_FAILED == 0);
        let chunk = Chunk {
            call_id: e.call_id,
            offset: u64::from(e.offset),
            call_len: u64::from(e.len),
            data,
            last,
        };
        let msgs = self.streams.entry(key).or_default().feed_chunk(chunk);
        for m in msgs {
            match m {
                HttpMessage::Request(r) => {
                    self.http_request(&e.hdr, e.conn, e.direction, r, tracker, out)
                }
                HttpMessage::Response(r) => self.http_response(&e.hdr, e.conn, e.direction, r, out),
            }
        }
    }

    /// A process exited: what its TLS streams still hold is emitted as the messages it
    /// makes (partial ones marked so by the parsers). Clients often drop a connection
    /// without reading its last frames (Codex closes an HTTP/2 stream once the SSE body
    /// says `response.completed`, before the END_STREAM frame is decrypted), so waiting
    /// for the end of each message would lose the response that carried the tool call.
    pub(super) fn flush_streams(
        &mut self,
        h: &EventHeader,
        tracker: &mut dyn Tracker,
        out: &mut Vec<Output>,
    ) {
        let mut keys: Vec<_> = self
            .streams
            .keys()
            .filter(|k| k.0 == h.tgid)
            .copied()
            .collect();
        // Requests before responses: a response is read against its connection's request.
        keys.sort_by_key(|k| (k.1, k.2 != direction::WRITE));
        for key in keys {
            let Some(mut stream) = self.streams.remove(&key) else {
                continue;
            };
            for m in stream.flush() {
                match m {
                    HttpMessage::Request(r) => self.http_request(h, key.1, key.2, r, tracker, out),
                    HttpMessage::Response(r) => self.http_response(h, key.1, key.2, r, out),
                }
            }
        }
    }

    /// Track a process as a discovered agent and report why.
    pub(super) fn discover(
        &mut self,
        h: &EventHeader,
        reason: &str,
        evidence: String,
        tracker: &mut dyn Tracker,
        out: &mut Vec<Output>,
    ) {
        let tgid = h.tgid;
        let Some(p) = self.table.get(tgid) else {
            return;
        };
        if p.discovered_reported {
            return;
        }
        let (exe, argv, has_own) = (p.exe.clone(), p.argv.clone(), p.own_identity);
        let agent = if has_own { p.agent.clone() } else { None };
        let agent = match agent {
            Some(a) => a,
            None => {
                let a = self.identity.discovered(tgid, &exe, &argv);
                self.stats.discovered_agents += 1;
                a
            }
        };
        if !is_tracked(h) || !has_own {
            tracker.track(tgid, Tracked::new(agent.slot, track::DISCOVERED));
        }
        let p = self.table.get_mut(tgid).expect("present");
        p.discovered_reported = true;
        if !has_own {
            p.agent = Some(agent);
            p.own_identity = true;
        }
        let ev = self.event(
            h,
            Kind::AgentDiscovered(AgentDiscovered {
                reason: reason.into(),
                evidence,
            }),
        );
        out.push(Output::Event(ev));
    }

    /// At exec: a process that runs a known agent program becomes a discovered agent
    /// of its own, tracked from this exec on, unless it is already that program's (a
    /// relaunch, the native binary under its node shim: its parent is the same program)
    /// or was declared by this exec. Returns the match, reported after the exec event.
    pub(super) fn adopt_known_program(
        &mut self,
        h: &EventHeader,
        declared: bool,
        tracker: &mut dyn Tracker,
    ) -> Option<KnownAgent> {
        if declared {
            return None;
        }
        let p = self.table.get(h.tgid)?;
        let k = crate::identity::known_program(h.tgid, &p.exe, &p.argv)?;
        if p.agent.as_ref().is_some_and(|a| a.id == k.agent_id()) {
            return None;
        }
        if let Some(pp) = self.table.get(h.ppid) {
            let parent = crate::identity::known_program(h.ppid, &pp.exe, &pp.argv);
            if parent.is_some_and(|pk| pk.name == k.name) {
                return None;
            }
        }
        let agent = self.identity.discovered_known(&k);
        self.stats.discovered_agents += 1;
        tracker.track(h.tgid, Tracked::new(agent.slot, track::DISCOVERED));
        let p = self.table.get_mut(h.tgid)?;
        p.agent = Some(agent);
        p.own_identity = true;
        p.discovered_reported = true;
        Some(k)
    }

    /// The `agent_discovered` event of a known agent program found at exec.
    pub(super) fn known_program_event(&mut self, h: &EventHeader, k: &KnownAgent) -> pb::Event {
        self.event(
            h,
            Kind::AgentDiscovered(AgentDiscovered {
                reason: "known_agent".into(),
                evidence: k.evidence(),
            }),
        )
    }

    fn http_request(
        &mut self,
        h: &EventHeader,
        conn: u64,
        dir: u32,
        r: HttpRequest,
        tracker: &mut dyn Tracker,
        out: &mut Vec<Output>,
    ) {
        let tgid = h.tgid;
        let sent = dir == direction::WRITE;
        // Secrets in the target never reach an event (path, LLM path, discovery
        // evidence); what was recognised is a credential the request used.
        let target = redact_target(&r.path, &self.key);
        let mut r = decoded_request(r);
        r.path = target.target;
        let llm = if sent { parse_llm_request(&r) } else { None };
        let mcp = with_mcp_headers(
            r.header("mcp-method"),
            r.header("mcp-name"),
            parse_jsonrpc(&r.body),
        );
        let host_provider = llm_provider_for_host(&r.host);
        let untracked = !is_tracked(h) && !self.observe_all;
        if sent && !self.table.get(tgid).is_some_and(|p| p.discovered_reported) {
            if let Some(l) = &llm {
                let ev = format!(
                    "{} request to {}{} (model {})",
                    l.provider, r.host, r.path, l.model
                );
                self.discover(h, "llm_api", ev, tracker, out);
            } else if let Some(p) = host_provider {
                self.discover(
                    h,
                    "llm_api",
                    format!("{p} API host {}", r.host),
                    tracker,
                    out,
                );
            } else if is_mcp(&mcp) {
                self.discover(
                    h,
                    "mcp",
                    format!("MCP over HTTP to {}{}", r.host, r.path),
                    tracker,
                    out,
                );
            }
        }
        if untracked && !self.table.get(tgid).is_some_and(|p| p.discovered_reported) {
            return; // an ordinary untracked HTTPS client: report nothing
        }

        let mut creds = scan_headers(&r.headers, &self.key);
        creds.extend(target.credentials);
        // The same key in a header and the query is one credential.
        let mut seen = std::collections::HashSet::new();
        creds.retain(|c| seen.insert(c.fingerprint.clone()));
        let fingerprints: Vec<String> = creds.iter().map(|c| c.fingerprint.clone()).collect();
        let mut delegation = None;
        if let Some(auth) = r.header("authorization") {
            let token = auth
                .trim()
                .strip_prefix("Bearer ")
                .or_else(|| auth.trim().strip_prefix("bearer "));
            if let Some(claims) = token.and_then(|t| decode_jwt(t.trim())) {
                if let Some(sub) = claims.sub.clone() {
                    let d = Principal {
                        login_uid: 0,
                        login_user: String::new(),
                        delegated_sub: sub,
                        act: claims.act.clone(),
                        delegated_iss: claims.iss.clone().unwrap_or_default(),
                    };
                    if let Some(p) = self.table.get_mut(tgid) {
                        p.delegation = Some(d.clone());
                    }
                    delegation = Some(d);
                }
            }
        }
        for c in self.note_credentials(tgid, creds, out) {
            let ev = self.event(
                h,
                Kind::Credential(CredentialSeen {
                    credential: Some(c),
                }),
            );
            out.push(Output::Event(ev));
        }
        let conn_id = format!("{tgid}:{conn:x}");
        let req = pb::HttpRequest {
            conn_id: conn_id.clone(),
            method: r.method.clone(),
            host: r.host.clone(),
            path: r.path.clone(),
            traceparent: r.header("traceparent").unwrap_or_default().to_string(),
            excerpt: cut(redact_bytes(&request_text(&r)), EXCERPT),
            body_len: r.content_length.unwrap_or(r.body.len() as u64),
            delegation,
            credential_fingerprints: fingerprints,
            transport: "tls".into(),
            direction: if sent { "sent" } else { "received" }.into(),
        };
        let ev = self.event(h, Kind::HttpRequest(req));
        out.push(Output::Event(ev));
        if let Some(l) = llm {
            self.conn_llm.insert((tgid, conn), l.provider.clone());
            let ev = self.event(
                h,
                Kind::LlmRequest(LlmRequest {
                    conn_id,
                    provider: l.provider,
                    model: l.model,
                    system_excerpt: credential::redact(&l.system_excerpt),
                    user_excerpt: credential::redact(&l.user_excerpt),
                    tools: l.tools,
                    host: r.host.clone(),
                    path: r.path.clone(),
                    stream: l.stream,
                }),
            );
            out.push(Output::Event(ev));
        } else if let Some(p) = host_provider.filter(|_| sent) {
            self.conn_llm.insert((tgid, conn), p.to_string());
        }
        for m in mcp {
            let ev = self.event(h, Kind::Mcp(mcp_pb(m, "http")));
            out.push(Output::Event(ev));
        }
    }

    fn http_response(
        &mut self,
        h: &EventHeader,
        conn: u64,
        dir: u32,
        r: HttpResponse,
        out: &mut Vec<Output>,
    ) {
        let tgid = h.tgid;
        if !is_tracked(h)
            && !self.observe_all
            && !self.table.get(tgid).is_some_and(|p| p.discovered_reported)
        {
            return;
        }
        let r = decoded_response(&r);
        let conn_id = format!("{tgid}:{conn:x}");
        let ev = self.event(
            h,
            Kind::HttpResponse(pb::HttpResponse {
                conn_id: conn_id.clone(),
                status: r.status.into(),
                excerpt: cut(redact_bytes(&response_text(r.as_ref())), EXCERPT),
                direction: if dir == direction::READ {
                    "received"
                } else {
                    "sent"
                }
                .into(),
            }),
        );
        out.push(Output::Event(ev));
        if let Some(provider) = self.conn_llm.get(&(tgid, conn)).cloned() {
            if let Some(l) = parse_llm_response(&provider, r.as_ref()) {
                let ev = self.event(
                    h,
                    Kind::LlmResponse(LlmResponse {
                        conn_id,
                        provider,
                        model: l.model,
                        tool_calls: l
                            .tool_calls
                            .into_iter()
                            .map(|t| ToolCall {
                                name: t.name,
                                arguments_excerpt: credential::redact(&t.arguments_excerpt),
                                id: t.id,
                            })
                            .collect(),
                        content_excerpt: credential::redact(&l.content_excerpt),
                        finish_reason: l.finish_reason,
                    }),
                );
                out.push(Output::Event(ev));
            }
            return;
        }
        for m in parse_jsonrpc(&r.body) {
            let ev = self.event(h, Kind::Mcp(mcp_pb(m, "http")));
            out.push(Output::Event(ev));
        }
    }

    pub(super) fn pipe(&mut self, e: &PipeEvent, tracker: &mut dyn Tracker, out: &mut Vec<Output>) {
        let data = &e.data[..(e.captured as usize).min(e.data.len())];
        let msgs = parse_jsonrpc(data);
        if msgs.is_empty() {
            return;
        }
        // A process answering `initialize` with serverInfo is an MCP server: a hop of
        // its own in the chain, not just part of the agent that spawned it.
        if let Some(server) = msgs
            .iter()
            .find(|m| m.message_type == "response" && !m.peer_name.is_empty())
        {
            let evidence = format!("MCP server {:?} over stdio", server.peer_name);
            let name = server.peer_name.clone();
            if let Some(p) = self.table.get_mut(e.hdr.tgid) {
                if !p.own_identity {
                    let a = self.identity.discovered_named(&format!("mcp:{name}"));
                    p.agent = Some(a.clone());
                    p.own_identity = true;
                    tracker.track(e.hdr.tgid, Tracked::new(a.slot, track::DISCOVERED));
                }
            }
            self.discover(&e.hdr, "mcp_server", evidence, tracker, out);
        }
        for m in msgs {
            let ev = self.event(&e.hdr, Kind::Mcp(mcp_pb(m, "stdio")));
            out.push(Output::Event(ev));
        }
    }
}

#[cfg(test)]
#[path = "intent_tests.rs"]
mod tests;
