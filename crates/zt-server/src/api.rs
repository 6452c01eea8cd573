//! The HTTP API: handlers, router and OpenAPI document.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;
use zt_core::{
    Decision, DecisionRequest, FieldError, Limits, Reason, ReasonKind, ValidRequest, Verdict,
};
use zt_evidence::{Keyring, PendingRecord};
use zt_store::Store;

use crate::auth::{Admin, Callers, Decider, Reader};
use crate::body::JsonBody;
use crate::evidence::{
    ConsistencyProof, Durable, EvidenceError, EvidenceLog, InclusionProof, LogView, Receipt,
};
use crate::now_ms;
use crate::policies::{Policies, PolicyStatus, ReloadFailure, Reloaded};
use crate::problem::Problem;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub policies: Arc<Policies>,
    pub limits: Limits,
    pub store: Store,
    pub evidence: EvidenceLog,
    /// Off only for benchmarks: see [`crate::Config::record_evidence`].
    pub record_evidence: bool,
    pub metrics: Option<PrometheusHandle>,
    /// Cleared when shutdown begins, so that load balancers stop sending.
    pub ready: AtomicBool,
    /// The service's public base URL (for AuthZEN metadata); `None`: from the `Host` header.
    pub public_url: Option<String>,
    /// Who may call what.
    pub callers: Callers,
    /// Agents and their sessions.
    pub sessions: Arc<crate::sessions::Sessions>,
    /// Trust bundles, SPIFFE ID mappings and the CA.
    pub workloads: Arc<crate::workloads::Workloads>,
    /// Delegation limits, and the external issuers whose users' tokens may be delegated.
    pub delegation: crate::delegation::DelegationSettings,
    pub issuers: crate::delegation::Issuers,
    /// Accepted plans read so far.
    pub plans: crate::plans::Plans,
    /// Delegated uses spent, plan steps and approvals marked, batched.
    pub uses: crate::uses::Uses,
    /// Approver groups, and the console's sign-in lifetime.
    pub approvals: crate::approvals::ApprovalSettings,
    /// What each agent and session has done: `context.behaviour`.
    pub behaviour: Arc<crate::behaviour::Behaviour>,
    /// Whether the listeners speak TLS (the console cookie is then `Secure`).
    pub tls: bool,
    /// When each CIBA request was last polled.
    pub ciba: crate::ciba::Polls,
    /// The approver groups' webhooks.
    pub webhooks: crate::webhooks::Webhooks,
}

/// The answer to a decision request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecisionResponse {
    pub decision: Decision,
    /// A UUIDv7, unique to this decision.
    pub decision_id: String,
    pub reasons: Vec<Reason>,
    /// `sha256:<hex>` of the policy set that decided.
    pub policy_version: String,
    /// With `approval_required`: the approval the request waits for. Repeat the request with
    /// the header `ZT-Approval: <id>` once it is approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Box<crate::approvals::ApprovalTicket>>,
    /// Where the decision's record is in the evidence log. Absent only when the record could
    /// not be made durable, and then the decision is `deny`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Receipt>,
    /// The decision time, milliseconds since the Unix epoch (as recorded).
    #[serde(skip)]
    pub time_ms: i64,
}

/// A batch of decision requests.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchRequest {
    pub requests: Vec<DecisionRequest>,
}

/// The answers to a batch, in the order of the requests.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    pub decisions: Vec<DecisionResponse>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(OpenApi)]
#[openapi(
    modifiers(&BearerScheme),
    info(
        title = "ZT-Infra decision service",
        description = "Policy decisions for autonomous agents: deny by default, fail closed."
    ),
    paths(
        decide,
        decide_batch,
        possible_actions,
        policies,
        reload,
        healthz,
        readyz,
        evidence_record,
        evidence_proof,
        evidence_consistency,
        evidence_checkpoint,
        evidence_keys,
        evidence_logs,
        evidence_search,
        entities,
        replace_entities,
        upsert_entities,
        crate::authzen::evaluation,
        crate::authzen::evaluations,
        crate::authzen::search_subject,
        crate::authzen::search_resource,
        crate::authzen::search_action,
        crate::authzen::metadata,
        crate::reference::actions,
        crate::reference::health,
        crate::identity::agents,
        crate::identity::add_agent,
        crate::identity::disable_agent,
        crate::identity::start_session,
        crate::identity::revoke_session,
        crate::identity::revoke_delegation,
        crate::plans::submit,
        crate::plans::show,
        crate::plans::revoke,
        crate::approvals::list,
        crate::approvals::show,
        crate::approvals::approve,
        crate::approvals::deny_approval,
        crate::behaviour::behaviour,
        crate::behaviour::quarantines,
        crate::behaviour::quarantine_agent,
        crate::behaviour::release_agent,
        crate::behaviour::quarantine_session,
        crate::behaviour::release_session
    ),
    components(schemas(
        EvidenceLogs,
        crate::evidence::LogInfo,
        DecisionRequest,
        DecisionResponse,
        BatchRequest,
        BatchResponse,
        PossibleQuery,
        PossibleActions,
        Decision,
        Reason,
        ReasonKind,
        Problem,
        FieldError,
        zt_core::PolicyError,
        PolicyStatus,
        ReloadFailure,
        Reloaded,
        zt_core::FileInfo,
        zt_core::FileKind,
        Health,
        EntityList,
        EntityEdit,
        crate::authzen::AuthzenDecision,
        crate::authzen::AuthzenDecisions,
        crate::authzen::SearchResults,
        crate::authzen::Page,
        crate::reference::ActionAnswer,
        crate::reference::Audit,
        crate::reference::KmsSignature,
        crate::reference::ReferenceHealth,
        crate::sessions::AgentInfo,
        crate::sessions::SessionStart,
        crate::approvals::ApprovalTicket,
        crate::approvals::ApprovalView,
        crate::approvals::AnswerView,
        crate::approvals::ApprovalList,
        crate::approvals::AnswerBody,
        crate::plans::PlanSubmission,
        crate::plans::StepSpec,
        crate::plans::PlanAnswer,
        crate::plans::StepOutcome,
        crate::sessions::StartedSession,
        crate::identity::AgentList,
        crate::identity::Revocation,
        crate::behaviour::Signals,
        crate::behaviour::BehaviourView,
        crate::behaviour::QuarantineRequest,
        crate::behaviour::QuarantineList,
        crate::sessions::Quarantine
    ))
)]
struct ApiDoc;

/// The `bearer` security scheme the protected endpoints name: an operator's or enforcement
/// point's credential, or an agent session's access token.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description = Some("A credential (`ztinfra credentials add`: admin, broker, auditor or pep, each for its own endpoints) or an agent session's access token (a JWT). Without one: 401 with `WWW-Authenticate: Bearer`; with one of the wrong role: 403; both as problem details. Decisions and evidence reads need none when callers are open.".into());
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(http));
    }
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The API. With `admin_apart`, the endpoints that change what is allowed ([`admin_router`])
/// are left out: they are served on the admin address only.
pub fn router(state: Arc<AppState>, admin_apart: bool) -> Router {
    let routes = Router::new()
        .route("/v1/decide", post(decide))
        .route("/v1/decide/batch", post(decide_batch))
        .route("/v1/actions/possible", post(possible_actions))
        .route("/v1/policies", get(policies))
        .route("/v1/evidence/checkpoint", get(evidence_checkpoint))
        .route("/v1/evidence/keys", get(evidence_keys))
        .route("/v1/evidence/logs", get(evidence_logs))
        .route("/v1/evidence", get(evidence_search))
        .route("/v1/evidence/consistency", get(evidence_consistency))
        .route("/v1/evidence/{seq}", get(evidence_record))
        .route("/v1/evidence/{seq}/proof", get(evidence_proof))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/entities", get(entities))
        .merge(crate::authzen::routes())
        .merge(crate::identity::routes())
        .merge(crate::plans::routes())
        .merge(crate::approvals::routes())
        .merge(crate::behaviour::routes())
        .merge(crate::console::routes())
        .merge(crate::reference::routes());
    let routes = if admin_apart {
        routes
    } else {
        routes.merge(admin_routes())
    };
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The endpoints that change what is allowed (each needs an admin credential).
fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/policies/reload", post(reload))
        .route(
            "/v1/entities",
            axum::routing::put(replace_entities).post(upsert_entities),
        )
        .merge(crate::identity::admin_routes())
        .merge(crate::plans::admin_routes())
        .merge(crate::behaviour::admin_routes())
}

/// The admin address's API (`--admin-listen`): the endpoints that change what is allowed, and
/// liveness.
pub fn admin_router(state: Arc<AppState>) -> Router {
    admin_routes()
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Which endpoint decides, for whom, and when its handler began: the labels and clock of the
/// decision metrics, and the caller its evidence records name.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub endpoint: &'static str,
    pub started: Instant,
    /// The verified caller as records name it (`None`: callers are open).
    pub caller: Option<serde_json::Value>,
    /// The caller's delegated token, whose authority bounds every allow
    /// ([`crate::delegation::bound`]).
    pub delegated: Option<Arc<zt_identity::session::AccessClaims>>,
    /// The plan step the caller presents, and the session presenting it
    /// ([`crate::plans::bound`]).
    pub step: Option<(crate::plans::StepRef, Option<String>)>,
    /// The caller's live session, whose id and lineage an approval is bound to.
    pub session: Option<Arc<zt_identity::session::AccessClaims>>,
    /// The approval the caller presents (`ZT-Approval`), for a request that needs one.
    pub approval: Option<String>,
    /// The plan being submitted, when these are its steps' decisions: its id and each step's
    /// executor session (a step that needs an approval asks for one bound to the step).
    pub submitting: Option<Arc<(String, Vec<String>)>>,
    /// What the agent asks approvers to see with an approval it asks for (a CIBA
    /// `binding_message`).
    pub note: Option<String>,
    /// The approval the caller's token carries (a CIBA token): every decision made with it
    /// must be exactly that approval's action, allowed by it, once.
    pub approval_token: Option<String>,
    /// These are an agent's attempts to act (not a search, a plan submission or a token
    /// exchange): given `context.behaviour`, and counted in it.
    pub acts: bool,
}

impl Origin {
    pub fn now(endpoint: &'static str, caller: Option<serde_json::Value>) -> Self {
        Self {
            endpoint,
            started: Instant::now(),
            caller,
            delegated: None,
            step: None,
            session: None,
            approval: None,
            submitting: None,
            note: None,
            approval_token: None,
            acts: false,
        }
    }
}

/// Records decisions in the evidence log and answers them once the records are durable. If
/// the records cannot be made durable, every decision becomes a deny without evidence: nothing
/// is allowed that is not on record. Every interface decides through here, so each answered
/// decision is also counted in the metrics, under its endpoint.
pub(crate) async fn answer(
    app: &AppState,
    origin: Origin,
    decided: Vec<(&ValidRequest, Verdict)>,
    announced: Option<crate::evidence::Announcement>,
) -> Vec<DecisionResponse> {
    let time_ms = now_ms();
    let mut responses: Vec<DecisionResponse> = Vec::with_capacity(decided.len());
    let mut pending = Vec::with_capacity(decided.len());
    let requests: Vec<&ValidRequest> = decided.iter().map(|(request, _)| *request).collect();
    let mut quarantines = Vec::new();
    for (index, (request, mut verdict)) in decided.into_iter().enumerate() {
        let decision_id = Uuid::now_v7().to_string();
        // A quarantined agent or session is denied whatever the policies said.
        if let Some(held) = crate::behaviour::held(app, &origin, request, &verdict) {
            verdict = held;
        }
        // A plan step presented must be exactly the step, whatever the policies said (this
        // writes nothing), before any approval is asked for it.
        if let Some((step, session)) = &origin.step {
            verdict = crate::plans::check(app, step, session.as_deref(), request, verdict).await;
        }
        // A request that needs a person's approval names the one it waits for, or presents
        // one that holds for exactly it.
        let mut approval = None;
        let mut using = None;
        if verdict.decision == Decision::ApprovalRequired {
            let asked = crate::approvals::ask(
                app,
                &origin,
                (index, request),
                verdict,
                &decision_id,
                time_ms,
            )
            .await;
            (verdict, approval, using) = (asked.verdict, asked.ticket, asked.using);
        }
        // The bounds that write (a delegated use spent, a plan step used, an approval used)
        // write last, and only for what every other bound let through.
        if let Some(claims) = &origin.delegated {
            verdict = crate::delegation::bound(app, claims, request, verdict).await;
        }
        if let Some((step, _)) = &origin.step {
            verdict = crate::plans::mark(app, step, verdict, &decision_id).await;
        }
        if let Some(using) = &using {
            verdict = crate::approvals::mark(app, using, verdict, &decision_id).await;
        }
        if let Some(bound) = &origin.approval_token {
            verdict = crate::approvals::token_bound(bound, using.as_ref(), verdict);
        }
        if verdict.decision != Decision::ApprovalRequired {
            approval = None;
        }
        // A forbid marked `@quarantine` holds its session or agent from now on.
        if let Some(quarantine) =
            crate::behaviour::asked(&origin, request, &verdict, &decision_id, time_ms)
        {
            app.sessions.hold(quarantine.clone());
            quarantines.push(quarantine);
        }
        pending.push(PendingRecord {
            time_ms,
            caller: origin.caller.clone(),
            kind: None,
            decision_id: decision_id.clone(),
            request: request.record().clone(),
            decision: verdict.decision.as_str().to_owned(),
            reasons: serde_json::to_value(&verdict.reasons).unwrap_or_default(),
            policy_version: verdict.policy_version.clone(),
        });
        responses.push(DecisionResponse {
            decision: verdict.decision,
            decision_id,
            reasons: verdict.reasons,
            policy_version: verdict.policy_version,
            approval,
            evidence: None,
            time_ms,
        });
    }
    if !app.record_evidence {
        drop((pending, announced));
        settle(app, &origin, &requests, &responses, quarantines, time_ms).await;
        return responses;
    }
    let recorded = app
        .evidence
        .append(pending, announced)
        .await
        .map_err(|e| crate::error_chain(&e))
        .and_then(|receipts| {
            // Every answer carries its own receipt, or none is allowed.
            if receipts.len() == responses.len() {
                Ok(receipts)
            } else {
                Err(format!(
                    "{} receipts for {} decisions",
                    receipts.len(),
                    responses.len()
                ))
            }
        });
    match recorded {
        Ok(receipts) => {
            for (response, receipt) in responses.iter_mut().zip(receipts) {
                response.evidence = Some(receipt);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "decisions denied: their evidence could not be recorded");
            for response in &mut responses {
                response.decision = Decision::Deny;
                response.approval = None;
                response.reasons = vec![Reason {
                    approval: None,
                    quarantine: None,
                    kind: ReasonKind::Error,
                    policy: None,
                    message: "the decision could not be recorded as evidence; denied (fail closed)"
                        .into(),
                }];
            }
        }
    }
    settle(app, &origin, &requests, &responses, quarantines, time_ms).await;
    responses
}

/// What follows answered decisions: the quarantines they imposed stored and recorded, each
/// counted in the agent's behaviour and in the metrics.
async fn settle(
    app: &AppState,
    origin: &Origin,
    requests: &[&ValidRequest],
    responses: &[DecisionResponse],
    quarantines: Vec<crate::sessions::Quarantine>,
    time_ms: i64,
) {
    for quarantine in quarantines {
        crate::behaviour::impose(app, quarantine).await;
    }
    let session = origin
        .session
        .as_ref()
        .map(|c| c.session.session_id.as_str());
    if origin.acts {
        for (request, response) in requests.iter().zip(responses) {
            app.behaviour
                .observe(request, session, response.decision, time_ms);
        }
    }
    count(origin, responses);
}

/// Records an act of the service itself (`kind`: `session.start`, `session.revoke`) as a
/// record of the log: allowed, by `caller`, with `request` describing it. The act stands only
/// once its record is durable; the caller undoes it (or reports it) otherwise.
pub(crate) async fn record_act(
    app: &AppState,
    kind: &str,
    caller: Option<serde_json::Value>,
    request: serde_json::Value,
    message: String,
) -> Result<Option<Receipt>, String> {
    record_act_as(
        app,
        &Uuid::now_v7().to_string(),
        kind,
        caller,
        request,
        message,
    )
    .await
}

/// [`record_act`] under a decision id the caller chose (to name the record before it exists).
pub(crate) async fn record_act_as(
    app: &AppState,
    decision_id: &str,
    kind: &str,
    caller: Option<serde_json::Value>,
    request: serde_json::Value,
    message: String,
) -> Result<Option<Receipt>, String> {
    if !app.record_evidence {
        return Ok(None);
    }
    let pending = PendingRecord {
        time_ms: now_ms(),
        caller,
        kind: Some(kind.to_owned()),
        decision_id: decision_id.to_owned(),
        request,
        decision: Decision::Allow.as_str().to_owned(),
        reasons: serde_json::json!([{"kind": "act", "message": message}]),
        policy_version: app.policies.with_engine(|e| e.version().to_owned()),
    };
    app.evidence
        .append(vec![pending], None)
        .await
        .map_err(|e| crate::error_chain(&e))?
        .pop()
        .map(Some)
        .ok_or_else(|| "no receipt".to_owned())
}

/// Counts answered decisions in the metrics, under their endpoint.
fn count(origin: &Origin, responses: &[DecisionResponse]) {
    for response in responses {
        metrics::counter!("ztinfra_decisions_total", "decision" => response.decision.as_str(), "endpoint" => origin.endpoint)
            .increment(1);
        metrics::histogram!("ztinfra_decision_duration_seconds").record(origin.started.elapsed());
    }
}

/// Decides one valid request and answers it once its record is durable (see [`answer`]).
pub(crate) async fn answer_one(
    app: &AppState,
    origin: Origin,
    request: &mut ValidRequest,
    announced: crate::evidence::Announcement,
) -> Result<DecisionResponse, Problem> {
    crate::behaviour::inform_all(app, &origin, [&mut *request])
        .map_err(|e| Problem::invalid_fields(vec![e]))?;
    let request = &*request;
    let verdict = app.policies.with_engine(|engine| engine.decide(request));
    tracing::debug!(endpoint = origin.endpoint, actor = request.actor(), action = %request.action(), decision = %verdict.decision, "decided");
    answer(app, origin, vec![(request, verdict)], Some(announced))
        .await
        .pop()
        .ok_or_else(|| Problem::internal("no answer was produced"))
}

/// Decide one request.
#[utoipa::path(
    post, path = "/v1/decide",
    security(("bearer" = [])),
    request_body = DecisionRequest,
    responses(
        (status = 200, description = "The decision (allow or deny: a deny is data, not an error)", body = DecisionResponse),
        (status = 400, description = "Malformed or invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the configured limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn decide(
    State(app): State<Arc<AppState>>,
    decider: Decider,
    JsonBody(mut request): JsonBody<DecisionRequest>,
) -> Result<Json<DecisionResponse>, Problem> {
    let origin = decider.origin("decide");
    decider
        .bind(&mut request, "")
        .map_err(|e| Problem::invalid_fields(vec![e]))?;
    let announced = app.evidence.announce();
    let mut request = request
        .validate(&app.limits)
        .map_err(Problem::invalid_fields)?;
    answer_one(&app, origin, &mut request, announced)
        .await
        .map(Json)
}

/// Decide several requests at once, answered in order.
#[utoipa::path(
    post, path = "/v1/decide/batch",
    security(("bearer" = [])),
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One decision per request, in order", body = BatchResponse),
        (status = 400, description = "Malformed request, an invalid item (named by pointer), or more items than the limit", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn decide_batch(
    State(app): State<Arc<AppState>>,
    decider: Decider,
    JsonBody(batch): JsonBody<BatchRequest>,
) -> Result<Json<BatchResponse>, Problem> {
    let origin = decider.origin("batch");
    if batch.requests.len() > app.limits.max_batch {
        return Err(Problem::invalid_fields(vec![FieldError::new(
            "/requests",
            format!(
                "holds {} requests; the limit is {}",
                batch.requests.len(),
                app.limits.max_batch
            ),
        )]));
    }
    let mut valid: Vec<ValidRequest> = Vec::with_capacity(batch.requests.len());
    let mut errors = Vec::new();
    for (i, mut request) in batch.requests.into_iter().enumerate() {
        if let Err(e) = decider.bind(&mut request, &format!("/requests/{i}")) {
            errors.push(e);
            continue;
        }
        match request.validate(&app.limits) {
            Ok(v) => valid.push(v),
            Err(errs) => errors.extend(
                errs.into_iter()
                    .map(|e| FieldError::new(format!("/requests/{i}{}", e.pointer), e.detail)),
            ),
        }
    }
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    crate::behaviour::inform_all(&app, &origin, valid.iter_mut())
        .map_err(|e| Problem::invalid_fields(vec![e]))?;
    let engine = app.policies.engine();
    let decided = valid.iter().map(|r| (r, engine.decide(r))).collect();
    let decisions = answer(&app, origin, decided, None).await;
    Ok(Json(BatchResponse { decisions }))
}

/// Most actions one possible-actions query may ask about.
pub const MAX_POSSIBLE_ACTIONS: usize = 1000;

/// Which of some actions an actor could ever be allowed to take.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"actor": "demo-agent", "actions": ["mcp.time.get_current_time", "mcp.time.convert_time"]}))]
pub struct PossibleQuery {
    pub actor: String,
    pub actions: Vec<String>,
}

/// The actions of a query that some permit policy could allow the actor, in query order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PossibleActions {
    pub actions: Vec<String>,
}

/// The actions some permit policy of the active set could allow `actor` to take, whatever the
/// resource, context and conditions (see [`zt_core::Engine::could_allow`]). Not a decision:
/// nothing is recorded, and an action listed here is still decided when attempted.
pub(crate) fn possible(
    app: &AppState,
    query: PossibleQuery,
) -> Result<PossibleActions, Vec<FieldError>> {
    if query.actions.len() > MAX_POSSIBLE_ACTIONS {
        return Err(vec![FieldError::new(
            "/actions",
            format!(
                "holds {} actions; the limit is {MAX_POSSIBLE_ACTIONS}",
                query.actions.len()
            ),
        )]);
    }
    let engine = app.policies.engine();
    let mut errors = Vec::new();
    let mut actions = Vec::new();
    for (i, action) in query.actions.into_iter().enumerate() {
        let request = DecisionRequest {
            actor: query.actor.clone(),
            action,
            // Scopes only are read: any valid resource will do.
            resource: "*".into(),
            context: serde_json::Map::new(),
        };
        match request.validate(&app.limits) {
            Ok(request) => {
                if engine.could_allow(&request) {
                    actions.push(request.action().to_string());
                }
            }
            Err(errs) => errors.extend(errs.into_iter().map(|e| match e.pointer.as_str() {
                "/action" => FieldError::new(format!("/actions/{i}"), e.detail),
                _ => e,
            })),
        }
    }
    errors.dedup_by(|a, b| a.pointer == b.pointer && a.detail == b.detail);
    if errors.is_empty() {
        Ok(PossibleActions { actions })
    } else {
        Err(errors)
    }
}

/// Which of some actions an actor could ever be allowed to take: for tool discovery (the MCP
/// gateway hides the rest). Not a decision, and not recorded.
#[utoipa::path(
    post, path = "/v1/actions/possible",
    security(("bearer" = [])),
    request_body = PossibleQuery,
    responses(
        (status = 200, description = "The actions some permit policy could allow, in query order", body = PossibleActions),
        (status = 400, description = "Malformed query, an invalid actor or action (named by pointer), or more actions than the limit", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn possible_actions(
    State(app): State<Arc<AppState>>,
    decider: Decider,
    JsonBody(mut query): JsonBody<PossibleQuery>,
) -> Result<Json<PossibleActions>, Problem> {
    decider
        .bind_actor(&mut query.actor, "")
        .map_err(|e| Problem::invalid_fields(vec![e]))?;
    possible(&app, query)
        .map(Json)
        .map_err(Problem::invalid_fields)
}

/// The active policy set: version, files, warnings, and the last reload error if any.
#[utoipa::path(get, path = "/v1/policies", responses((status = 200, body = PolicyStatus)))]
async fn policies(State(app): State<Arc<AppState>>) -> Json<PolicyStatus> {
    Json(app.policies.status())
}

/// Reload the policy set from its directory. On failure the previous set stays active.
#[utoipa::path(
    post, path = "/v1/policies/reload",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Reloaded (or unchanged)", body = Reloaded),
        (status = 422, description = "The set on disk is invalid; every error is listed with file and line, and the previous set stays active", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn reload(
    State(app): State<Arc<AppState>>,
    Admin(admin): Admin,
) -> Result<Json<Reloaded>, Problem> {
    tracing::info!(credential = %admin.name(), "policy reload asked");
    app.policies.reload().await.map(Json).map_err(|errors| {
        let detail = format!(
            "the policy set has {} error(s); the previous set (version {}) stays active. First: {}",
            errors.len(),
            app.policies.engine().version(),
            errors.first().map(ToString::to_string).unwrap_or_default()
        );
        Problem {
            policy_errors: errors,
            ..Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-policy-set",
                "invalid policy set",
                detail,
            )
        }
    })
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: a policy set is active, the store answers and takes evidence, and shutdown has
/// not begun.
#[utoipa::path(
    get, path = "/readyz",
    responses(
        (status = 200, body = Health),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn readyz(State(app): State<Arc<AppState>>) -> Result<Json<Health>, Problem> {
    let unavailable = |detail: String| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "not ready",
            detail,
        )
    };
    if !app.ready.load(Ordering::Relaxed) {
        return Err(unavailable("shutting down".into()));
    }
    if let Err(e) = app.store.ping().await {
        // The cause may name internal hosts: it goes to the log, not to the caller.
        tracing::warn!(error = %crate::error_chain(&e), "readiness check: the store does not answer");
        return Err(unavailable("the store does not answer".into()));
    }
    if app.record_evidence && !app.evidence.writable().await {
        return Err(unavailable(
            "evidence cannot be written, so every decision is denied; see the service's log".into(),
        ));
    }
    Ok(Json(Health {
        status: "ready".into(),
    }))
}

/// A record of the evidence log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EvidenceRecord {
    /// The log's origin.
    pub log: String,
    pub seq: u64,
    /// SHA-256 (hex) of the record's canonical encoding.
    pub hash: String,
    #[schema(value_type = Object)]
    pub record: serde_json::Value,
}

fn evidence_problem(e: EvidenceError) -> Problem {
    match e {
        EvidenceError::NoRecord(seq) => {
            Problem::not_found(format!("record {seq} is not in the log"))
        }
        EvidenceError::NoLog(log) => Problem::not_found(format!(
            "there is no evidence log `{log}` in this store (GET /v1/evidence/logs lists them)"
        )),
        EvidenceError::Tree(e) => Problem::invalid(e.to_string(), Vec::new()),
        // Already logged and counted (`ztinfra_evidence_corrupt_total`) where it was found.
        EvidenceError::Inconsistent(_) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "evidence-corrupt",
            "evidence store corrupt",
            "the stored evidence does not match the log's hashes: the store was altered; nothing is served from it (see the service's log, and run `ztinfra evidence verify` on an export)",
        ),
        other => {
            tracing::error!(error = %crate::error_chain(&other), "evidence read failed");
            Problem::internal("the evidence log could not be read")
        }
    }
}

fn parse_number(name: &str, value: Option<&str>) -> Result<Option<u64>, Problem> {
    value
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                Problem::invalid_fields(vec![FieldError::new(
                    format!("/{name}"),
                    format!("`{v}` is not a non-negative integer"),
                )])
            })
        })
        .transpose()
}

type Params = axum::extract::Query<std::collections::HashMap<String, String>>;

/// The log a request names (`?log=`, an origin or a replica's name): this replica's when none.
async fn log_view(app: &AppState, params: &Params) -> Result<LogView, Problem> {
    app.evidence
        .view(params.get("log").map(String::as_str))
        .await
        .map_err(evidence_problem)
}

/// The `log` parameter of the evidence endpoints.
const LOG_PARAM_DOC: &str = "the log: its origin (or its replica's name), as `GET /v1/evidence/logs` lists them; this replica's own log by default";

/// A record of the evidence log, by sequence number.
#[utoipa::path(
    get, path = "/v1/evidence/{seq}",
    security(("bearer" = [])),
    params(("seq" = u64, Path, description = "sequence number"), ("log" = Option<String>, Query, description = LOG_PARAM_DOC)),
    responses((status = 200, body = EvidenceRecord), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn evidence_record(
    State(app): State<Arc<AppState>>,
    _: Reader,
    axum::extract::Path(seq): axum::extract::Path<String>,
    params: Params,
) -> Result<Json<EvidenceRecord>, Problem> {
    let seq = parse_number("seq", Some(&seq))?.unwrap_or_default();
    let log = log_view(&app, &params).await?;
    let stored = log.record(seq).await.map_err(evidence_problem)?;
    let record = serde_json::from_str(&stored.body).map_err(|_| {
        evidence_problem(EvidenceError::Inconsistent(format!(
            "record {seq} is unreadable"
        )))
    })?;
    Ok(Json(EvidenceRecord {
        log: log.origin().to_owned(),
        seq,
        hash: stored.hash,
        record,
    }))
}

/// The inclusion proof of a record in the tree of `size` records (default: the latest checkpoint).
#[utoipa::path(
    get, path = "/v1/evidence/{seq}/proof",
    params(("seq" = u64, Path, description = "sequence number"), ("size" = Option<u64>, Query, description = "tree size"), ("log" = Option<String>, Query, description = LOG_PARAM_DOC)),
    responses((status = 200, body = InclusionProof), (status = 400, body = Problem, content_type = "application/problem+json"))
)]
async fn evidence_proof(
    State(app): State<Arc<AppState>>,
    axum::extract::Path(seq): axum::extract::Path<String>,
    params: Params,
) -> Result<Json<InclusionProof>, Problem> {
    let seq = parse_number("seq", Some(&seq))?.unwrap_or_default();
    let size = parse_number("size", params.get("size").map(String::as_str))?;
    log_view(&app, &params)
        .await?
        .inclusion(seq, size)
        .await
        .map(Json)
        .map_err(evidence_problem)
}

/// The consistency proof between two tree sizes.
#[utoipa::path(
    get, path = "/v1/evidence/consistency",
    params(("from" = u64, Query, description = "older tree size"), ("to" = Option<u64>, Query, description = "newer tree size (default: latest)"), ("log" = Option<String>, Query, description = LOG_PARAM_DOC)),
    responses((status = 200, body = ConsistencyProof), (status = 400, body = Problem, content_type = "application/problem+json"))
)]
async fn evidence_consistency(
    State(app): State<Arc<AppState>>,
    params: Params,
) -> Result<Json<ConsistencyProof>, Problem> {
    let from = parse_number("from", params.get("from").map(String::as_str))?
        .ok_or_else(|| Problem::invalid_fields(vec![FieldError::new("/from", "is required")]))?;
    let log = log_view(&app, &params).await?;
    let to = parse_number("to", params.get("to").map(String::as_str))?
        .unwrap_or(log.checkpoint().tree_size);
    log.consistency(from, to)
        .await
        .map(Json)
        .map_err(evidence_problem)
}

/// The latest signed checkpoint (C2SP signed note).
#[utoipa::path(get, path = "/v1/evidence/checkpoint", params(("log" = Option<String>, Query, description = LOG_PARAM_DOC)), responses((status = 200, body = Durable), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn evidence_checkpoint(
    State(app): State<Arc<AppState>>,
    params: Params,
) -> Result<Json<Durable>, Problem> {
    Ok(Json((*log_view(&app, &params).await?.checkpoint()).clone()))
}

/// A log's public keys: all a verifier needs (`ztinfra evidence verify --keys`).
#[utoipa::path(get, path = "/v1/evidence/keys", params(("log" = Option<String>, Query, description = LOG_PARAM_DOC)), responses((status = 200, description = "the keyring: origin and public keys"), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn evidence_keys(
    State(app): State<Arc<AppState>>,
    params: Params,
) -> Result<Json<Keyring>, Problem> {
    app.evidence
        .keyring(params.get("log").map(String::as_str))
        .await
        .map(Json)
        .map_err(evidence_problem)
}

/// A record as a search lists it: what it is about, not all of it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecordSummary {
    pub seq: u64,
    pub time_ms: i64,
    /// `decision` for a decision on a request, else the act (`session.start`, `approval.approve`).
    pub kind: String,
    pub decision: String,
    pub actor: String,
    pub action: String,
    pub resource: String,
    /// The approval the record is linked to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecordSearch {
    pub log: String,
    /// Newest first.
    pub records: Vec<RecordSummary>,
    /// Where to continue (`?before=`), when records older than these were not searched yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<u64>,
}

/// Most records one search reads.
const MAX_SCANNED: u64 = 10_000;

impl RecordSummary {
    fn of(seq: u64, record: &serde_json::Value) -> Self {
        let text = |v: Option<&serde_json::Value>| {
            v.map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .unwrap_or_default()
        };
        let request = record.get("request");
        let field = |name: &str, inner: &str| {
            let value = request.and_then(|r| r.get(name));
            match value {
                Some(serde_json::Value::Object(o)) => text(o.get(inner)),
                other => text(other),
            }
        };
        let actor = match request.and_then(|r| r.get("actor")) {
            Some(actor) => text(Some(actor)),
            None => field("subject", "id"),
        };
        Self {
            seq,
            time_ms: record
                .get("time_ms")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(0),
            kind: record
                .get("kind")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("decision")
                .to_owned(),
            decision: text(record.get("decision")),
            actor,
            action: field("action", "name"),
            resource: field("resource", "id"),
            approval: record
                .get("reasons")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .find_map(|r| r.get("approval").and_then(serde_json::Value::as_str))
                .or_else(|| {
                    request
                        .and_then(|r| r.get("approval"))
                        .and_then(serde_json::Value::as_str)
                })
                .map(str::to_owned),
        }
    }
}

/// Recent records, newest first, filtered (readers): by `actor`, `action` (exact, or a
/// dotted prefix ending `.*`), `decision`, `kind` and time (`since`, `until`: milliseconds
/// since the Unix epoch). At most 10,000 records are read per call; `next_before` continues.
#[utoipa::path(
    get, path = "/v1/evidence",
    security(("bearer" = [])),
    params(
        ("actor" = Option<String>, Query, description = "the acting agent (or AuthZEN subject id)"),
        ("action" = Option<String>, Query, description = "an action, or a prefix ending `.*`"),
        ("decision" = Option<String>, Query, description = "allow, deny or approval_required"),
        ("kind" = Option<String>, Query, description = "`decision`, or an act such as `approval.approve`"),
        ("since" = Option<i64>, Query, description = "milliseconds since the Unix epoch"),
        ("until" = Option<i64>, Query, description = "milliseconds since the Unix epoch"),
        ("before" = Option<u64>, Query, description = "only records before this sequence number"),
        ("limit" = Option<u64>, Query, description = "1 to 200 (default 50)"),
        ("log" = Option<String>, Query, description = LOG_PARAM_DOC),
    ),
    responses((status = 200, body = RecordSearch), (status = 400, body = Problem, content_type = "application/problem+json"))
)]
async fn evidence_search(
    State(app): State<Arc<AppState>>,
    _: Reader,
    params: Params,
) -> Result<Json<RecordSearch>, Problem> {
    const KNOWN: [&str; 9] = [
        "actor", "action", "decision", "kind", "since", "until", "before", "limit", "log",
    ];
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(Problem::invalid(
            format!(
                "`{}` is not a search parameter: one of {}",
                unknown.escape_debug(),
                KNOWN.join(", ")
            ),
            Vec::new(),
        ));
    }
    let time = |name: &str| {
        parse_number(name, params.get(name).map(String::as_str))
            .map(|t| t.map(|t| i64::try_from(t).unwrap_or(i64::MAX)))
    };
    let (since, until) = (time("since")?, time("until")?);
    let limit = parse_number("limit", params.get("limit").map(String::as_str))?.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Problem::invalid("`limit` is from 1 to 200", Vec::new()));
    }
    let wanted = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let action = wanted("action");
    let matches = |s: &RecordSummary| {
        wanted("actor").is_none_or(|a| s.actor == a)
            && wanted("decision").is_none_or(|d| s.decision == d)
            && wanted("kind").is_none_or(|k| s.kind == k)
            && action.is_none_or(|a| match a.strip_suffix(".*") {
                Some(prefix) => s
                    .action
                    .strip_prefix(prefix)
                    .is_some_and(|r| r.starts_with('.')),
                None => s.action == a,
            })
            && since.is_none_or(|t| s.time_ms >= t)
            && until.is_none_or(|t| s.time_ms <= t)
    };
    let log = log_view(&app, &params).await?;
    let end = log.checkpoint().tree_size;
    let before = parse_number("before", params.get("before").map(String::as_str))?
        .unwrap_or(end)
        .min(end);
    let floor = before.saturating_sub(MAX_SCANNED);
    let limit = usize::try_from(limit).unwrap_or(50);
    let mut records = Vec::new();
    // `to`: every record from it up to `before` has been read.
    let mut to = before;
    while to > floor && records.len() < limit {
        let from = to.saturating_sub(500).max(floor);
        let page = log.records(from, to).await.map_err(evidence_problem)?;
        for stored in page.iter().rev() {
            if records.len() == limit {
                break;
            }
            to = stored.seq;
            if let Ok(record) = serde_json::from_str::<serde_json::Value>(&stored.body) {
                let summary = RecordSummary::of(stored.seq, &record);
                if matches(&summary) {
                    records.push(summary);
                }
            }
        }
        if page.is_empty() {
            to = from;
        }
    }
    Ok(Json(RecordSearch {
        log: log.origin().to_owned(),
        records,
        next_before: (to > 0).then_some(to),
    }))
}

/// Every evidence log of the store: one per replica, each with its own origin and keys.
#[utoipa::path(get, path = "/v1/evidence/logs", responses((status = 200, body = EvidenceLogs)))]
async fn evidence_logs(State(app): State<Arc<AppState>>) -> Result<Json<EvidenceLogs>, Problem> {
    let logs = app.evidence.logs().await.map_err(evidence_problem)?;
    Ok(Json(EvidenceLogs {
        own: app.evidence.own().origin().to_owned(),
        logs,
    }))
}

/// The store's evidence logs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EvidenceLogs {
    /// The origin of the log this replica writes.
    pub own: String,
    pub logs: Vec<crate::evidence::LogInfo>,
}

async fn metrics_text(State(app): State<Arc<AppState>>) -> Response {
    match &app.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => Problem::internal("metrics are not available in this process").into_response(),
    }
}

async fn openapi_json() -> Response {
    match openapi().to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => {
            Problem::internal(format!("cannot render the OpenAPI document: {e}")).into_response()
        }
    }
}

/// Turns an error answer that is not JSON (the router's own plain-text rejections, such as a
/// path that does not decode as UTF-8) into problem details, keeping its status and text.
/// JSON answers (problem details, and the reference contract's 403 deny) pass untouched.
pub(crate) async fn problem_details(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| crate::body::is_json(&crate::body::media_type(v)));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let (slug, title) = if status.is_server_error() {
        ("internal", "internal error")
    } else {
        ("invalid-request", "invalid request")
    };
    Problem::new(status, slug, title, detail).into_response()
}

async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::not_found(format!("no endpoint at `{}`", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "method not allowed",
        format!("`{method}` is not allowed on `{}`", uri.path()),
    )
}

/// The entity store of the active policy set.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EntityList {
    /// `sha256:<hex>` of the active policy set, entity files included.
    #[serde(default)]
    pub version: String,
    /// Entities in Cedar's entity JSON format: `{"uid": {"type", "id"}, "attrs", "parents"}`.
    #[schema(value_type = Vec<Object>)]
    pub entities: Vec<serde_json::Value>,
}

/// Entities to write to the entity file.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EntityEdit {
    /// Entities in Cedar's entity JSON format.
    #[schema(value_type = Vec<Object>)]
    pub entities: Vec<serde_json::Value>,
}

/// Every entity of the entity store (all entity files of the policy directory).
#[utoipa::path(get, path = "/v1/entities", security(("bearer" = [])), responses((status = 200, body = EntityList)))]
async fn entities(State(app): State<Arc<AppState>>, _: Reader) -> Json<EntityList> {
    app.policies.with_engine(|engine| {
        Json(EntityList {
            version: engine.version().to_owned(),
            entities: engine.policies().entities().to_vec(),
        })
    })
}

fn entity_edit_problem(e: crate::policies::EntityEditError) -> Problem {
    use crate::policies::EntityEditError;
    match e {
        EntityEditError::Invalid(detail) => Problem::invalid(detail, Vec::new()),
        EntityEditError::Rejected(errors) => Problem {
            policy_errors: errors.clone(),
            ..Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-entities",
                "invalid entities",
                format!(
                    "the policy set does not load with these entities; nothing was changed. First: {}",
                    errors.first().map(ToString::to_string).unwrap_or_default()
                ),
            )
        },
        other @ EntityEditError::Io { .. } => {
            tracing::error!(error = %other, "entity edit failed");
            Problem::internal("the entity file could not be written")
        }
        EntityEditError::Store(why) => {
            tracing::error!(error = %why, "entity edit failed");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "store unavailable",
                "the edited set could not be stored; nothing was changed",
            )
        }
    }
}

/// Replace the entity file (`entities.json` in the policy directory) and reload. The set is
/// checked with the new entities first; if it does not load, nothing changes.
#[utoipa::path(
    put, path = "/v1/entities",
    security(("bearer" = [])),
    request_body = EntityEdit,
    responses(
        (status = 200, body = Reloaded),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The entities do not match the schema; every error is listed", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn replace_entities(
    State(app): State<Arc<AppState>>,
    Admin(admin): Admin,
    JsonBody(edit): JsonBody<EntityEdit>,
) -> Result<Json<Reloaded>, Problem> {
    tracing::info!(credential = %admin.name(), entities = edit.entities.len(), "entity store replaced");
    app.policies
        .edit_entities(
            admin.name().as_str(),
            Arc::new(move |_| Ok(edit.entities.clone())),
        )
        .await
        .map(Json)
        .map_err(entity_edit_problem)
}

/// The `(type, id)` of an entity in Cedar's entity JSON format.
fn entity_key(entity: &serde_json::Value) -> Option<(String, String)> {
    let uid = entity.get("uid")?;
    let uid = uid.get("__entity").unwrap_or(uid);
    Some((
        uid.get("type")?.as_str()?.to_owned(),
        uid.get("id")?.as_str()?.to_owned(),
    ))
}

/// Add entities to the entity file, replacing those with the same type and id, and reload.
#[utoipa::path(
    post, path = "/v1/entities",
    security(("bearer" = [])),
    request_body = EntityEdit,
    responses(
        (status = 200, body = Reloaded),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The entities do not match the schema; every error is listed", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn upsert_entities(
    State(app): State<Arc<AppState>>,
    Admin(admin): Admin,
    JsonBody(edit): JsonBody<EntityEdit>,
) -> Result<Json<Reloaded>, Problem> {
    tracing::info!(credential = %admin.name(), entities = edit.entities.len(), "entities added");
    app.policies
        .edit_entities(
            admin.name().as_str(),
            Arc::new(move |mut current: Vec<serde_json::Value>| {
                for (i, entity) in edit.entities.iter().cloned().enumerate() {
                    let key = entity_key(&entity).ok_or_else(|| {
                        format!("`/entities/{i}` has no `uid` with string `type` and `id`")
                    })?;
                    current.retain(|e| entity_key(e).as_ref() != Some(&key));
                    current.push(entity);
                }
                Ok(current)
            }),
        )
        .await
        .map(Json)
        .map_err(entity_edit_problem)
}
