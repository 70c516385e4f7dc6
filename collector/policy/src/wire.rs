//! The compiled host rules as the sensor protocol carries them: [`HostRules`] to
//! `custody.sensor.v1.HostRules` (the `PolicyUpdate` command). The only place the
//! policy side knows that message; the sensor reads the same message, so there is
//! one definition of the format, in `proto/`.

use custody_proto::sensor::v1 as wire;

use super::kernel::{
    AgentRules, CredentialRule, EndpointRule, HostRules, PathMatch, PathRule, PolicyEnforcement,
};
use super::{Enforcement, Response, Severity};

impl HostRules {
    /// The rules as a `PolicyUpdate` carries them.
    pub fn to_wire(&self) -> wire::HostRules {
        wire::HostRules {
            all_agents: Some(agent_rules(&self.all_agents)),
            agents: self
                .agents
                .iter()
                .map(|(id, r)| (id.clone(), agent_rules(r)))
                .collect(),
            policies: self.policies.iter().map(policy).collect(),
        }
    }
}

fn agent_rules(r: &AgentRules) -> wire::AgentRules {
    wire::AgentRules {
        deny_endpoints: r.deny_endpoints.iter().map(endpoint).collect(),
        forbidden_paths: r.forbidden_paths.iter().map(path).collect(),
        forbidden_credentials: r.forbidden_credentials.iter().map(credential).collect(),
    }
}

fn endpoint(e: &EndpointRule) -> wire::EndpointRule {
    wire::EndpointRule {
        policy: e.policy.clone(),
        response: response(e.response).into(),
        severity: severity(e.severity).into(),
        cidr: e.cidr.clone(),
        port: e.port.map(u32::from),
        protocol: e.protocol.clone(),
        host: e.host.clone(),
        host_suffix: e.host_suffix.clone(),
        domain: e.domain.clone(),
    }
}

fn path(p: &PathRule) -> wire::PathRule {
    wire::PathRule {
        policy: p.policy.clone(),
        response: response(p.response).into(),
        severity: severity(p.severity).into(),
        path: p.path.clone(),
        r#match: match p.matching {
            PathMatch::Exact => wire::PathMatch::Exact,
            PathMatch::Dir => wire::PathMatch::Dir,
            PathMatch::Prefix => wire::PathMatch::Prefix,
        }
        .into(),
        read: p.read,
        write: p.write,
    }
}

fn credential(c: &CredentialRule) -> wire::CredentialRule {
    wire::CredentialRule {
        policy: c.policy.clone(),
        response: response(c.response).into(),
        severity: severity(c.severity).into(),
        fingerprint: c.fingerprint.clone(),
    }
}

fn policy(p: &PolicyEnforcement) -> wire::PolicyEnforcement {
    wire::PolicyEnforcement {
        id: p.id.clone(),
        enforcement: match p.enforcement {
            Enforcement::Kernel => wire::Enforcement::Kernel,
            Enforcement::Collector => wire::Enforcement::Collector,
        }
        .into(),
        why: p.why.clone(),
    }
}

fn response(r: Response) -> wire::PolicyResponse {
    match r {
        Response::Alert => wire::PolicyResponse::Alert,
        Response::RevokeCredential => wire::PolicyResponse::RevokeCredential,
        Response::Quarantine => wire::PolicyResponse::Quarantine,
        Response::KillProcess => wire::PolicyResponse::KillProcess,
        Response::KillChain => wire::PolicyResponse::KillChain,
    }
}

fn severity(s: Severity) -> wire::Severity {
    match s {
        Severity::Low => wire::Severity::Low,
        Severity::Medium => wire::Severity::Medium,
        Severity::High => wire::Severity::High,
        Severity::Critical => wire::Severity::Critical,
    }
}
