//! The identity endpoints: agents, sessions, token revocation and introspection (RFC 7009,
//! RFC 7662), the JWKS and the authorization server metadata (RFC 8414).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use zt_identity::Permission;

use crate::api::AppState;
use crate::auth::{Admin, Reader, SessionStarter};
use crate::body::JsonBody;
use crate::problem::Problem;
use crate::sessions::{AgentInfo, SessionError, SessionStart, StartedSession, Starter};

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/agents", get(agents))
        .route("/v1/sessions", post(start_session))
        .route("/oauth2/revoke", post(revoke_token))
        .route("/oauth2/introspect", post(introspect))
        .route("/.well-known/jwks.json", get(jwks))
        .route(crate::sessions::STATUS_LIST_PATH, get(status_list))
        .route("/.well-known/oauth-authorization-server", get(metadata))
}

/// The identity endpoints that need an admin credential (served on the admin address when
/// there is one).
pub(crate) fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/agents", post(add_agent))
        .route("/v1/agents/{name}/disable", post(disable_agent))
        .route("/v1/sessions/{id}/revoke", post(revoke_session))
}

fn unrecorded(detail: &str) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "service unavailable",
        detail,
    )
}

/// Records a revocation (done already: it stands whether or not its record can be made, and
/// the answer says so).
async fn record_revocation(
    app: &AppState,
    caller: Option<Value>,
    revoked: &[String],
    why: &str,
) -> Result<(), Problem> {
    let act = json!({"sessions": revoked, "reason": why});
    crate::api::record_act(
        app,
        "session.revoke",
        caller,
        act,
        format!("sessions revoked: {why}"),
    )
    .await
    .map(drop)
    .map_err(|e| {
        tracing::error!(error = %e, "a revocation could not be recorded (it stands)");
        unrecorded("the sessions are revoked, but the revocation could not be put on record")
    })
}

fn session_problem(e: SessionError) -> Problem {
    match e {
        SessionError::Invalid(detail) => Problem::invalid(detail, Vec::new()),
        SessionError::NoAgent(_) | SessionError::NoSession(_) => Problem::not_found(e.to_string()),
        SessionError::AgentExists(_) => {
            Problem::new(StatusCode::CONFLICT, "conflict", "conflict", e.to_string())
        }
        SessionError::AgentDisabled(_) | SessionError::Revoked(_) => Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "forbidden",
            e.to_string(),
        ),
        SessionError::Token(_) | SessionError::Unknown(_) => Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "authentication required",
            e.to_string(),
        ),
        SessionError::Stale => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "service unavailable",
            e.to_string(),
        ),
        SessionError::Store(source) => {
            tracing::error!(error = %crate::error_chain(&source), "identity store write failed");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "service unavailable",
                "the store could not be written; see the service's log",
            )
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentInfo>,
}

/// Registered agents.
#[utoipa::path(get, path = "/v1/agents", security(("bearer" = [])), responses((status = 200, body = AgentList)))]
pub(crate) async fn agents(State(app): State<Arc<AppState>>, _: Reader) -> Json<AgentList> {
    Json(AgentList {
        agents: app.sessions.agents(),
    })
}

/// Register an agent (admin).
#[utoipa::path(
    post, path = "/v1/agents",
    security(("bearer" = [])),
    request_body = AgentInfo,
    responses(
        (status = 201, body = AgentInfo),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn add_agent(
    State(app): State<Arc<AppState>>,
    Admin(admin): Admin,
    JsonBody(agent): JsonBody<AgentInfo>,
) -> Result<(StatusCode, Json<AgentInfo>), Problem> {
    let agent = app
        .sessions
        .add_agent(agent, crate::now_ms())
        .await
        .map_err(session_problem)?;
    tracing::info!(credential = %admin.name(), agent = %agent.name, "agent registered");
    Ok((StatusCode::CREATED, Json(agent)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Revocation {
    /// Every session revoked: the one named and its descendants.
    pub revoked: Vec<String>,
}

/// Disable an agent (admin): it gets no new sessions, and its sessions (and theirs) are revoked.
#[utoipa::path(
    post, path = "/v1/agents/{name}/disable",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "agent")),
    responses((status = 200, body = Revocation), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn disable_agent(
    State(app): State<Arc<AppState>>,
    Admin(admin): Admin,
    Path(name): Path<String>,
) -> Result<Json<Revocation>, Problem> {
    let revoked = app
        .sessions
        .disable_agent(&name, crate::now_ms())
        .await
        .map_err(session_problem)?;
    tracing::info!(credential = %admin.name(), agent = %name, sessions = revoked.len(), "agent disabled");
    let why = format!("the agent `{name}` was disabled");
    record_revocation(
        &app,
        Some(crate::auth::record_caller(&admin)),
        &revoked,
        &why,
    )
    .await?;
    Ok(Json(Revocation { revoked }))
}

/// Start an agent session (a broker; or, for a child, the parent session's own token).
#[utoipa::path(
    post, path = "/v1/sessions",
    security(("bearer" = [])),
    request_body = SessionStart,
    responses(
        (status = 201, body = StartedSession),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn start_session(
    State(app): State<Arc<AppState>>,
    starter: SessionStarter,
    JsonBody(start): JsonBody<SessionStart>,
) -> Result<(StatusCode, Json<StartedSession>), Problem> {
    use rand_core::RngCore as _;
    let mut random = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut random);
    let (starter, by, caller) = match &starter {
        SessionStarter::Broker(caller) => (
            Starter::Broker(caller.name().as_str()),
            caller.name().to_string(),
            crate::auth::record_caller(caller),
        ),
        SessionStarter::Parent(parent) => (
            Starter::Parent(parent),
            parent.claims.sub.clone(),
            json!({"kind": "session", "name": parent.claims.sub, "session": parent.claims.session.session_id}),
        ),
    };
    let mut started = app
        .sessions
        .start(start, starter, crate::now_ms(), random)
        .await
        .map_err(session_problem)?;
    let mut act = serde_json::to_value(&started.claim).unwrap_or_default();
    if let Some(members) = act.as_object_mut() {
        members.insert("spiffe_id".into(), started.spiffe_id.clone().into());
        members.insert(
            "expires_at".into(),
            crate::reference::rfc3339_utc(started.expires_at.saturating_mul(1000)).into(),
        );
    }
    match crate::api::record_act(
        &app,
        "session.start",
        Some(caller),
        act,
        "session started".into(),
    )
    .await
    {
        Ok(receipt) => started.evidence = receipt,
        Err(e) => {
            // Not on record, so not started: take it back.
            tracing::error!(error = %e, session = %started.session_id, "a session start could not be recorded; the session is revoked");
            let _ = app
                .sessions
                .revoke(&started.session_id, crate::now_ms())
                .await;
            return Err(unrecorded(
                "the session could not be put on record, so it was revoked; nothing can act under it",
            ));
        }
    }
    tracing::info!(by = %by, session = %started.spiffe_id, "session started");
    Ok((StatusCode::CREATED, Json(started)))
}

/// Revoke a session and every session descending from it (admin).
#[utoipa::path(
    post, path = "/v1/sessions/{id}/revoke",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, body = Revocation), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn revoke_session(
    State(app): State<Arc<AppState>>,
    Admin(admin): Admin,
    Path(id): Path<String>,
) -> Result<Json<Revocation>, Problem> {
    let revoked = app
        .sessions
        .revoke(&id, crate::now_ms())
        .await
        .map_err(session_problem)?;
    tracing::info!(credential = %admin.name(), session = %id, revoked = revoked.len(), "sessions revoked");
    record_revocation(
        &app,
        Some(crate::auth::record_caller(&admin)),
        &revoked,
        "revoked by an admin",
    )
    .await?;
    Ok(Json(Revocation { revoked }))
}

/// The form of RFC 7009 and RFC 7662 requests.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenForm {
    token: String,
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "RFC 7009 and 7662 allow the hint; one kind of token is issued here"
    )]
    token_type_hint: Option<String>,
}

/// OAuth 2.0 token revocation (RFC 7009): whoever holds an access token may revoke it (and the
/// sessions descending from its session). The answer is 200 whether or not the token was
/// valid, as the RFC asks.
pub(crate) async fn revoke_token(
    State(app): State<Arc<AppState>>,
    Form(form): Form<TokenForm>,
) -> Result<StatusCode, Problem> {
    // A token that verifies (even revoked already, or expired) names its session.
    let Ok(session) = app.sessions.session_of(&form.token, crate::now_ms()) else {
        return Ok(StatusCode::OK);
    };
    match app.sessions.revoke(&session, crate::now_ms()).await {
        Ok(revoked) => {
            tracing::info!(session = %session, revoked = revoked.len(), "sessions revoked by their token");
            record_revocation(
                &app,
                None,
                &revoked,
                "revoked by the holder of its token (RFC 7009)",
            )
            .await?;
            Ok(StatusCode::OK)
        }
        Err(SessionError::NoSession(_)) => Ok(StatusCode::OK),
        Err(e) => Err(session_problem(e)),
    }
}

/// OAuth 2.0 token introspection (RFC 7662), for enforcement points and admins.
pub(crate) async fn introspect(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Result<Json<Value>, Problem> {
    let caller = app
        .callers
        .verify(&headers)
        .await
        .map_err(crate::auth::refusal_problem)?;
    if !(caller.role().grants(Permission::Decide) || caller.role().grants(Permission::Administer)) {
        return Err(crate::auth::auth_problem(
            &zt_identity::AuthError::WrongRole {
                name: caller.name().clone(),
                role: caller.role(),
                needed: Permission::Decide,
            },
        ));
    }
    tracing::debug!(credential = %caller.name(), "token introspected");
    Ok(Json(
        match app.sessions.verify(&form.token, crate::now_ms()) {
            Ok(live) => {
                let mut claims = serde_json::to_value(&*live.claims).unwrap_or_default();
                if let Some(members) = claims.as_object_mut() {
                    members.insert("active".into(), true.into());
                    members.insert("token_type".into(), "Bearer".into());
                }
                claims
            }
            Err(_) => json!({"active": false}),
        },
    ))
}

/// The sessions' Token Status List (draft-ietf-oauth-status-list): a signed JWT whose bit at a
/// token's `status.status_list.idx` is 1 once its session is revoked.
pub(crate) async fn status_list(State(app): State<Arc<AppState>>) -> Response {
    match app.sessions.status_list_token(crate::now_ms()) {
        Ok(token) => (
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "application/statuslist+jwt",
                ),
                (axum::http::header::CACHE_CONTROL, "max-age=15"),
            ],
            token,
        )
            .into_response(),
        Err(e) => {
            Problem::internal(format!("the status list could not be signed: {e}")).into_response()
        }
    }
}

/// The keys that sign access tokens (RFC 7517).
pub(crate) async fn jwks(State(app): State<Arc<AppState>>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/jwk-set+json")],
        Json(app.sessions.jwks()),
    )
        .into_response()
}

/// Authorization server metadata (RFC 8414).
pub(crate) async fn metadata(State(app): State<Arc<AppState>>) -> Json<Value> {
    let issuer = app.sessions.issuer();
    Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
        "revocation_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "response_types_supported": [],
        "grant_types_supported": [],
        "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
        "ztinfra_session_endpoint": format!("{issuer}/v1/sessions"),
        "ztinfra_agents_endpoint": format!("{issuer}/v1/agents"),
        "ztinfra_access_token_audience": app.sessions.audience(),
        "ztinfra_status_list_uri": format!("{issuer}{}", crate::sessions::STATUS_LIST_PATH),
    }))
}
