//! From what an operator names (a process, an agent, a chain, a credential) to what
//! each host is told to act on. Sensors know exec ids and agent ids but not chains:
//! a chain becomes the exec ids of its live processes on each host (the sensor adds
//! their descendants, and the kernel adds children forked later).

use std::collections::BTreeMap;

use super::ResponseError;
use crate::engine::State;

/// Per-host targets, plus clear answers about what was left out.
#[derive(Debug, Default)]
pub struct Resolved {
    pub hosts: BTreeMap<String, Vec<String>>,
    pub notes: Vec<String>,
}

/// The host part of an exec id ("HOST:PID:START_TICKS"; host ids never hold ':').
pub fn host_of_exec_id(id: &str) -> Option<&str> {
    let mut parts = id.rsplitn(3, ':');
    let ticks = parts.next()?;
    let pid = parts.next()?;
    let host = parts.next()?;
    (ticks.parse::<u64>().is_ok() && pid.parse::<u32>().is_ok() && !host.is_empty()).then_some(host)
}

fn ago(now: u64, t: u64) -> String {
    let s = now.saturating_sub(t) as f64 / 1e9;
    if s < 120.0 {
        format!("{s:.1} s ago")
    } else {
        format!("{:.0} min ago", s / 60.0)
    }
}

/// One process.
pub fn process(st: &State, exec_id: &str, now: u64) -> Result<Resolved, ResponseError> {
    let host = host_of_exec_id(exec_id).ok_or_else(|| {
        ResponseError::invalid(format!(
            "{exec_id:?} is not an exec id: expected HOST:PID:START_TICKS (see `custodyctl chain`)"
        ))
    })?;
    if !st.fleet.hosts.contains_key(host) {
        return Err(ResponseError::not_found(format!(
            "no host {host:?} is enrolled (see `custodyctl hosts`)"
        )));
    }
    let node = st.chains.node(exec_id).ok_or_else(|| {
        ResponseError::not_found(format!(
            "host {host} never reported process {exec_id} (a process is known once its \
             sensor sees it: is it an agent or part of an agent's chain?)"
        ))
    })?;
    if node.exited_ns != 0 {
        return Err(ResponseError::not_applicable(format!(
            "process {exec_id} already exited ({}); nothing to do",
            ago(now, node.exited_ns)
        )));
    }
    let mut r = Resolved::default();
    r.hosts.insert(host.to_string(), vec![exec_id.to_string()]);
    Ok(r)
}

/// Every live process of a chain, grouped by host.
pub fn chain(st: &State, chain_id: &str) -> Result<Resolved, ResponseError> {
    let members = st.chains.members(chain_id).ok_or_else(|| {
        ResponseError::not_found(format!(
            "no chain {chain_id:?} (chain ids are the root's exec id, see `custodyctl chains`)"
        ))
    })?;
    let mut r = Resolved::default();
    let mut exited = 0usize;
    for id in members {
        let Some(n) = st.chains.node(id) else {
            continue;
        };
        if n.exited_ns != 0 {
            exited += 1;
            continue;
        }
        r.hosts.entry(n.host.clone()).or_default().push(id.clone());
    }
    if r.hosts.is_empty() {
        return Err(ResponseError::not_applicable(format!(
            "every process of chain {chain_id} has exited ({exited} processes); nothing to do"
        )));
    }
    if exited > 0 {
        r.notes.push(format!(
            "{exited} process(es) of the chain had already exited"
        ));
    }
    Ok(r)
}

/// Every host the agent has been seen on; each sensor acts on the agent's live
/// processes there.
pub fn agent(st: &State, agent_id: &str) -> Result<Resolved, ResponseError> {
    let a = st.fleet.agents.get(agent_id).ok_or_else(|| {
        ResponseError::not_found(format!(
            "no agent {agent_id:?} has been reported (see `custodyctl agents`)"
        ))
    })?;
    let mut r = Resolved::default();
    for h in &a.hosts {
        r.hosts.insert(h.clone(), vec![agent_id.to_string()]);
    }
    if r.hosts.is_empty() {
        return Err(ResponseError::not_applicable(format!(
            "agent {agent_id} has no host on record"
        )));
    }
    Ok(r)
}

/// Fleet-wide: every enrolled host gets the revocation, whether or not it has seen
/// the credential, so a later sighting anywhere is stopped.
pub fn credential(st: &State, fp: &str, allow_unknown: bool) -> Result<Resolved, ResponseError> {
    let Some(hex) = fp.strip_prefix("hmac-sha256:") else {
        return Err(ResponseError::invalid(format!(
            "{fp:?} is not a credential fingerprint: expected hmac-sha256:<32 hex digits> \
             (see `custodyctl credentials`)"
        )));
    };
    // Sensors send 128-bit fingerprints (32 hex digits); accept up to the full MAC.
    if !(32..=64).contains(&hex.len()) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ResponseError::invalid(format!(
            "{fp:?} is not a credential fingerprint: expected 32 hex digits after hmac-sha256:"
        )));
    }
    let mut r = Resolved::default();
    if !st.fleet.creds.contains_key(fp) {
        if !allow_unknown {
            return Err(ResponseError::not_found(format!(
                "no sensor has reported credential {fp}; check the fingerprint (`custodyctl \
                 credentials`), or revoke it pre-emptively with --allow-unknown"
            )));
        }
        r.notes
            .push("the credential has not been seen by any sensor (pre-emptive revocation)".into());
    }
    for h in st.fleet.hosts.keys() {
        r.hosts.insert(h.clone(), vec![fp.to_string()]);
    }
    if r.hosts.is_empty() {
        return Err(ResponseError::not_applicable("no host is enrolled"));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_id_host() {
        assert_eq!(host_of_exec_id("h-a:42:1234"), Some("h-a"));
        assert_eq!(host_of_exec_id("h.example.com:1:2"), Some("h.example.com"));
        assert_eq!(host_of_exec_id("agent-x"), None);
        assert_eq!(host_of_exec_id(":1:2"), None);
        assert_eq!(host_of_exec_id("h:x:2"), None);
    }
}
