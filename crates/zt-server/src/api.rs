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
use zt_store::Store;

use crate::body::JsonBody;
use crate::policies::{Policies, PolicyStatus, ReloadFailure, Reloaded};
use crate::problem::Problem;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub policies: Arc<Policies>,
    pub limits: Limits,
    pub store: Store,
    pub metrics: Option<PrometheusHandle>,
    /// Cleared when shutdown begins, so that load balancers stop sending.
    pub ready: AtomicBool,
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
    info(
        title = "ZT-Infra decision service",
        description = "Policy decisions for autonomous agents: deny by default, fail closed."
    ),
    paths(decide, decide_batch, policies, reload, healthz, readyz),
    components(schemas(
        DecisionRequest,
        DecisionResponse,
        BatchRequest,
        BatchResponse,
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
        Health
    ))
)]
struct ApiDoc;

/// The OpenAPI 3.1 document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/decide", post(decide))
        .route("/v1/decide/batch", post(decide_batch))
        .route("/v1/policies", get(policies))
        .route("/v1/policies/reload", post(reload))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

fn respond(verdict: Verdict) -> DecisionResponse {
    DecisionResponse {
        decision: verdict.decision,
        decision_id: Uuid::now_v7().to_string(),
        reasons: verdict.reasons,
        policy_version: verdict.policy_version,
    }
}

fn record(decision: Decision, endpoint: &'static str, started: Instant) {
    metrics::counter!("ztinfra_decisions_total", "decision" => decision.as_str(), "endpoint" => endpoint)
        .increment(1);
    metrics::histogram!("ztinfra_decision_duration_seconds").record(started.elapsed());
}

/// Decide one request.
#[utoipa::path(
    post, path = "/v1/decide",
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
    JsonBody(request): JsonBody<DecisionRequest>,
) -> Result<Json<DecisionResponse>, Problem> {
    let started = Instant::now();
    let request = request
        .validate(&app.limits)
        .map_err(Problem::invalid_fields)?;
    let verdict = app.policies.with_engine(|engine| engine.decide(&request));
    tracing::debug!(actor = request.actor(), action = %request.action(), decision = %verdict.decision, "decided");
    record(verdict.decision, "decide", started);
    Ok(Json(respond(verdict)))
}

/// Decide several requests at once, answered in order.
#[utoipa::path(
    post, path = "/v1/decide/batch",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One decision per request, in order", body = BatchResponse),
        (status = 400, description = "Malformed request, an invalid item (named by pointer), or more items than the limit", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn decide_batch(
    State(app): State<Arc<AppState>>,
    JsonBody(batch): JsonBody<BatchRequest>,
) -> Result<Json<BatchResponse>, Problem> {
    let started = Instant::now();
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
    for (i, request) in batch.requests.into_iter().enumerate() {
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
    let engine = app.policies.engine();
    let decisions = valid
        .iter()
        .map(|request| {
            let verdict = engine.decide(request);
            record(verdict.decision, "batch", started);
            respond(verdict)
        })
        .collect();
    Ok(Json(BatchResponse { decisions }))
}

/// The active policy set: version, files, warnings, and the last reload error if any.
#[utoipa::path(get, path = "/v1/policies", responses((status = 200, body = PolicyStatus)))]
async fn policies(State(app): State<Arc<AppState>>) -> Json<PolicyStatus> {
    Json(app.policies.status())
}

/// Reload the policy set from its directory. On failure the previous set stays active.
#[utoipa::path(
    post, path = "/v1/policies/reload",
    responses(
        (status = 200, description = "Reloaded (or unchanged)", body = Reloaded),
        (status = 422, description = "The set on disk is invalid; every error is listed with file and line, and the previous set stays active", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn reload(State(app): State<Arc<AppState>>) -> Result<Json<Reloaded>, Problem> {
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

/// Readiness: a policy set is active, the store answers, and shutdown has not begun.
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
    Ok(Json(Health {
        status: "ready".into(),
    }))
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
