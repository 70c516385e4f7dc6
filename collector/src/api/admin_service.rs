//! The operator API (custodyctl, web UI). Every call authenticates an operator token
//! from `authorization: Bearer <token>` and checks the caller's role with
//! [`require`]: viewer for reads, responder or admin for anything that changes
//! state. Denied state changes are audited.

use std::pin::Pin;
use std::sync::Arc;

use custody_proto::admin::v1::{self as admin, admin_service_server::AdminService};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{Operator, Role, TokenStore};
use crate::engine::Engine;
use crate::engine::query::{matches, to_proto};
use crate::event_key::{id_to_key, key_to_id};
use crate::pki::Pki;
use crate::response::Responder;

pub struct AdminSvc {
    pub engine: Arc<Engine>,
    pub tokens: TokenStore,
    pub pki: Arc<Pki>,
    /// Open sensor streams: a retired host's are ended.
    pub streams: Arc<crate::sensor_streams::SensorStreams>,
    pub responder: Arc<Responder>,
    pub alerts: Arc<crate::alerts::Alerts>,
    pub policy: Arc<crate::live_policy::LivePolicy>,
    pub telemetry: Arc<crate::metrics::Telemetry>,
}

/// Authenticates the caller of any admin request.
pub fn authenticate<T>(tokens: &TokenStore, req: &Request<T>) -> Result<Operator, Status> {
    let raw = req
        .metadata()
        .get("authorization")
        .ok_or_else(|| {
            Status::unauthenticated(
                "missing operator token: send `authorization: Bearer <token>` (custodyctl: \
                 --token or CUSTODY_TOKEN; mint one with `custody-collector operator-token`)",
            )
        })?
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization header is not text"))?;
    let token = raw
        .strip_prefix("Bearer ")
        .or_else(|| raw.strip_prefix("bearer "))
        .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?
        .trim();
    tokens
        .operator(token)
        .ok_or_else(|| Status::unauthenticated("unknown operator token"))
}

impl AdminSvc {
    /// Authenticates and checks that the operator's role is at least `min`. Denials
    /// of state-changing actions (min above viewer) are audited.
    pub fn require<T>(
        &self,
        req: &Request<T>,
        min: Role,
        action: &str,
    ) -> Result<Operator, Status> {
        let op = authenticate(&self.tokens, req)?;
        if op.role < min {
            if min > Role::Viewer {
                let _ = self.engine.audit(admin::AuditEntry {
                    actor: op.name.clone(),
                    role: op.role.as_str().into(),
                    action: action.into(),
                    result: format!("denied: needs role {}", min.as_str()),
                    ..Default::default()
                });
            }
            return Err(Status::permission_denied(format!(
                "{action} needs role {} or higher; operator {:?} has role {}",
                min.as_str(),
                op.name,
                op.role.as_str()
            )));
        }
        Ok(op)
    }
}

fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

#[tonic::async_trait]
impl AdminService for AdminSvc {
    async fn who_am_i(
        &self,
        req: Request<admin::WhoAmIRequest>,
    ) -> Result<Response<admin::WhoAmIResponse>, Status> {
        let op = self.require(&req, Role::Viewer, "whoami")?;
        Ok(Response::new(admin::WhoAmIResponse {
            name: op.name,
            role: op.role.as_str().into(),
        }))
    }

    async fn list_hosts(
        &self,
        req: Request<admin::ListHostsRequest>,
    ) -> Result<Response<admin::ListHostsResponse>, Status> {
        self.require(&req, Role::Viewer, "list hosts")?;
        Ok(Response::new(admin::ListHostsResponse {
            hosts: self.engine.list_hosts(),
        }))
    }

    async fn list_agents(
        &self,
        req: Request<admin::ListAgentsRequest>,
    ) -> Result<Response<admin::ListAgentsResponse>, Status> {
        self.require(&req, Role::Viewer, "list agents")?;
        Ok(Response::new(admin::ListAgentsResponse {
            agents: self.engine.list_agents(),
        }))
    }

    async fn list_credentials(
        &self,
        req: Request<admin::ListCredentialsRequest>,
    ) -> Result<Response<admin::ListCredentialsResponse>, Status> {
        self.require(&req, Role::Viewer, "list credentials")?;
        Ok(Response::new(admin::ListCredentialsResponse {
            credentials: self.engine.list_credentials(),
        }))
    }

    async fn list_events(
        &self,
        req: Request<admin::ListEventsRequest>,
    ) -> Result<Response<admin::ListEventsResponse>, Status> {
        self.require(&req, Role::Viewer, "list events")?;
        let r = req.into_inner();
        let page = if r.page_token.is_empty() {
            None
        } else {
            Some(
                id_to_key(&r.page_token)
                    .ok_or_else(|| Status::invalid_argument("bad page_token"))?,
            )
        };
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let engine = self.engine.clone();
        let (events, next) = tokio::task::spawn_blocking(move || {
            engine.list_events(&r.filter.unwrap_or_default(), limit, page, r.ascending)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(internal)?;
        Ok(Response::new(admin::ListEventsResponse {
            events: events.iter().map(to_proto).collect(),
            next_page_token: next.map(|k| key_to_id(&k)).unwrap_or_default(),
        }))
    }

    type TailEventsStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<admin::StoredEvent, Status>> + Send>>;

    async fn tail_events(
        &self,
        req: Request<admin::TailEventsRequest>,
    ) -> Result<Response<Self::TailEventsStream>, Status> {
        self.require(&req, Role::Viewer, "tail events")?;
        let filter = req.into_inner().filter.unwrap_or_default();
        let mut sub = self.engine.subscribe();
        let engine = self.engine.clone();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                match sub.recv().await {
                    Ok(se) => {
                        let pass = matches(&filter, &engine.read().chains, &se);
                        if pass && tx.send(Ok(to_proto(&se))).await.is_err() {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // A slow reader skips events rather than slowing ingest.
                        tracing::warn!(skipped = n, "tail subscriber lagged");
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_chains(
        &self,
        req: Request<admin::ListChainsRequest>,
    ) -> Result<Response<admin::ListChainsResponse>, Status> {
        self.require(&req, Role::Viewer, "list chains")?;
        Ok(Response::new(admin::ListChainsResponse {
            chains: self.engine.list_chains(req.get_ref()),
        }))
    }

    async fn get_chain(
        &self,
        req: Request<admin::GetChainRequest>,
    ) -> Result<Response<admin::Chain>, Status> {
        self.require(&req, Role::Viewer, "get chain")?;
        let r = req.into_inner();
        let engine = self.engine.clone();
        let chain = tokio::task::spawn_blocking(move || engine.get_chain(&r))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(internal)?;
        chain
            .map(Response::new)
            .ok_or_else(|| Status::not_found("no such chain, process or event"))
    }

    async fn get_audit(
        &self,
        req: Request<admin::GetAuditRequest>,
    ) -> Result<Response<admin::GetAuditResponse>, Status> {
        self.require(&req, Role::Viewer, "get audit")?;
        let r = req.into_inner();
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        Ok(Response::new(admin::GetAuditResponse {
            entries: self.engine.audit_log(r.since_ns, limit).map_err(internal)?,
        }))
    }

    async fn create_enroll_token(
        &self,
        req: Request<admin::CreateEnrollTokenRequest>,
    ) -> Result<Response<admin::CreateEnrollTokenResponse>, Status> {
        let op = self.require(&req, Role::Admin, "create enroll token")?;
        let r = req.into_inner();
        let ttl = std::time::Duration::from_secs(if r.ttl_seconds == 0 {
            3600
        } else {
            r.ttl_seconds
        });
        let (token, expires_at_ns) = self
            .tokens
            .mint_enroll(&self.pki.ca_fingerprint, ttl, Some(&r.host_id))
            .map_err(internal)?;
        let _ = self.engine.audit(admin::AuditEntry {
            actor: op.name,
            role: op.role.as_str().into(),
            action: "create enroll token".into(),
            target: r.host_id,
            result: "ok".into(),
            ..Default::default()
        });
        Ok(Response::new(admin::CreateEnrollTokenResponse {
            token,
            expires_at_ns,
        }))
    }

    async fn retire_host(
        &self,
        req: Request<admin::RetireHostRequest>,
    ) -> Result<Response<admin::Host>, Status> {
        let op = self.require(&req, Role::Admin, "retire host")?;
        let r = req.into_inner();
        let reason: String = r.reason.chars().take(1000).collect();
        let audit = |result: String, details| {
            let _ = self.engine.audit(admin::AuditEntry {
                actor: op.name.clone(),
                role: op.role.as_str().into(),
                action: "retire host".into(),
                target: r.host_id.clone(),
                reason: reason.clone(),
                result,
                details,
                ..Default::default()
            });
        };
        if let Err(e) = self.engine.retire_host(&r.host_id, &op.name, &reason) {
            audit(format!("refused: {e}"), Default::default());
            return Err(match e {
                crate::engine::RetireError::Unknown(_) => Status::not_found(e.to_string()),
                crate::engine::RetireError::AlreadyRetired { .. } => {
                    Status::failed_precondition(e.to_string())
                }
                crate::engine::RetireError::Store(_) => Status::internal(e.to_string()),
            });
        }
        let closed = self.streams.close_host(&r.host_id);
        audit(
            "ok".into(),
            [("streams_ended".to_owned(), closed.to_string())].into(),
        );
        tracing::warn!(host = %r.host_id, by = %op.name, "host identity retired");
        self.engine
            .list_hosts()
            .into_iter()
            .find(|h| h.host_id == r.host_id)
            .map(Response::new)
            .ok_or_else(|| Status::internal("retired host vanished"))
    }

    async fn respond(
        &self,
        req: Request<admin::RespondRequest>,
    ) -> Result<Response<admin::Action>, Status> {
        let what = format!("respond ({})", req.get_ref().verb);
        let op = self.require(&req, Role::Responder, &what)?;
        let r = req.into_inner();
        match self.responder.respond((&op).into(), r.clone()).await {
            Ok(a) => Ok(Response::new(a)),
            Err(e) => {
                // Refusals are audited too: who tried what, and why it was refused.
                let target = match &r.target {
                    Some(admin::respond_request::Target::Process(t))
                    | Some(admin::respond_request::Target::Agent(t))
                    | Some(admin::respond_request::Target::Chain(t))
                    | Some(admin::respond_request::Target::Credential(t))
                    | Some(admin::respond_request::Target::Action(t)) => t.clone(),
                    None => String::new(),
                };
                let _ = self.engine.audit(admin::AuditEntry {
                    actor: op.name,
                    role: op.role.as_str().into(),
                    action: r.verb,
                    target,
                    reason: r.reason,
                    result: format!("refused: {e}"),
                    ..Default::default()
                });
                Err(e.into())
            }
        }
    }

    async fn list_actions(
        &self,
        req: Request<admin::ListActionsRequest>,
    ) -> Result<Response<admin::ListActionsResponse>, Status> {
        self.require(&req, Role::Viewer, "list actions")?;
        let r = req.into_inner();
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        Ok(Response::new(admin::ListActionsResponse {
            actions: self.responder.list(limit, r.active_only),
        }))
    }

    async fn get_action(
        &self,
        req: Request<admin::GetActionRequest>,
    ) -> Result<Response<admin::Action>, Status> {
        self.require(&req, Role::Viewer, "get action")?;
        let id = req.into_inner().id;
        self.responder
            .get(&id)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no action {id:?}")))
    }

    async fn verify_audit(
        &self,
        req: Request<admin::VerifyAuditRequest>,
    ) -> Result<Response<admin::VerifyAuditResponse>, Status> {
        self.require(&req, Role::Viewer, "verify audit")?;
        let engine = self.engine.clone();
        let r = tokio::task::spawn_blocking(move || crate::audit::AuditLog::verify(engine.store()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(internal)?;
        Ok(Response::new(r))
    }

    async fn list_alerts(
        &self,
        req: Request<admin::ListAlertsRequest>,
    ) -> Result<Response<admin::ListAlertsResponse>, Status> {
        self.require(&req, Role::Viewer, "list alerts")?;
        let r = req.into_inner();
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        Ok(Response::new(admin::ListAlertsResponse {
            alerts: self.alerts.list(limit, &r.chain_id, &r.status, &r.severity),
        }))
    }

    async fn update_alert(
        &self,
        req: Request<admin::UpdateAlertRequest>,
    ) -> Result<Response<admin::Alert>, Status> {
        let op = self.require(&req, Role::Responder, "update alert")?;
        let r = req.into_inner();
        let a = self
            .alerts
            .update(&r.id, &op.name, r.acknowledge, &r.assignee)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no alert {:?}", r.id)))?;
        let mut what = vec![];
        if r.acknowledge {
            what.push("acknowledged".to_string());
        }
        if !r.assignee.is_empty() {
            what.push(format!("assigned to {}", r.assignee));
        }
        let _ = self.engine.audit(admin::AuditEntry {
            actor: op.name,
            role: op.role.as_str().into(),
            action: "update alert".into(),
            target: r.id,
            result: what.join(", "),
            ..Default::default()
        });
        Ok(Response::new(a))
    }

    async fn apply_policies(
        &self,
        req: Request<admin::ApplyPoliciesRequest>,
    ) -> Result<Response<admin::PolicySetInfo>, Status> {
        let op = self.require(&req, Role::Admin, "apply policies")?;
        let files: Vec<(String, String)> = req
            .into_inner()
            .files
            .into_iter()
            .map(|f| (f.name, f.text))
            .collect();
        if files.is_empty() {
            return Err(Status::invalid_argument(
                "no policy files: an empty set would allow everything (send the built-in \
                 files to keep them)",
            ));
        }
        match self.policy.apply((&op).into(), files).await {
            Ok(info) => Ok(Response::new(info)),
            Err(e) => {
                let _ = self.engine.audit(admin::AuditEntry {
                    actor: op.name,
                    role: op.role.as_str().into(),
                    action: "policy apply".into(),
                    result: "refused: invalid policy set; the previous set stays".into(),
                    reason: e.to_string().chars().take(2000).collect(),
                    ..Default::default()
                });
                Err(Status::invalid_argument(format!(
                    "policy set not applied (the previous set stays in force):\n{e}"
                )))
            }
        }
    }

    async fn list_policies(
        &self,
        req: Request<admin::ListPoliciesRequest>,
    ) -> Result<Response<admin::PolicySetInfo>, Status> {
        self.require(&req, Role::Viewer, "list policies")?;
        Ok(Response::new(self.policy.info()))
    }

    async fn dry_run_policies(
        &self,
        req: Request<admin::DryRunPoliciesRequest>,
    ) -> Result<Response<admin::DryRunReport>, Status> {
        self.require(&req, Role::Viewer, "dry-run policies")?;
        let r = req.into_inner();
        let files: Vec<(String, String)> = r.files.into_iter().map(|f| (f.name, f.text)).collect();
        let policy = self.policy.clone();
        let report = tokio::task::spawn_blocking(move || {
            policy.dry_run(files, r.since_ns, r.until_ns, r.max_events)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::invalid_argument(format!("policy set does not load:\n{e}")))?;
        Ok(Response::new(report))
    }

    async fn get_status(
        &self,
        req: Request<admin::GetStatusRequest>,
    ) -> Result<Response<admin::CollectorStatus>, Status> {
        self.require(&req, Role::Viewer, "status")?;
        let t = self.telemetry.clone();
        let s = tokio::task::spawn_blocking(move || t.status())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(s))
    }
}
