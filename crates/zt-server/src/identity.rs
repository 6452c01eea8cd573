//! The identity endpoints: agents, sessions, token revocation and introspection (RFC 7009,
//! RFC 7662), the JWKS and the authorization server metadata (RFC 8414).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use zt_identity::Permission;

use crate::api::AppState;
use crate::auth::{Admin, Reader, SessionStarter};
use crate::body::JsonBody;
use crate::conn::Peer;
use crate::problem::Problem;
use crate::sessions::{AgentInfo, SessionError, SessionStart, StartedSession, Starter};

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/agents", get(agents))
        .route("/v1/sessions", post(start_session))
        .route("/oauth2/token", post(token))
        .route(crate::ciba::PATH, post(crate::ciba::backchannel))
        .route("/v1/bundle", get(bundle))
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
        .route("/v1/delegations/{id}/revoke", post(revoke_delegation))
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
        Problem::unavailable(
            "the sessions are revoked, but the revocation could not be put on record",
        )
    })
}

pub(crate) fn session_problem(e: SessionError) -> Problem {
    match e {
        SessionError::Invalid(detail) => Problem::invalid(detail, Vec::new()),
        SessionError::NoAgent(_) | SessionError::NoSession(_) | SessionError::NoGrant(_) => {
            Problem::not_found(e.to_string())
        }
        SessionError::AgentExists(_) => {
            Problem::new(StatusCode::CONFLICT, "conflict", "conflict", e.to_string())
        }
        SessionError::AgentDisabled(_)
        | SessionError::Revoked(_)
        | SessionError::GrantRevoked(_) => Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "forbidden",
            e.to_string(),
        ),
        SessionError::Token(_) | SessionError::Unknown(_) | SessionError::WrongHolder(_) => {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "authentication required",
                e.to_string(),
            )
        }
        SessionError::Stale => Problem::unavailable(e.to_string()),
        SessionError::Store(source) => {
            tracing::error!(error = %crate::error_chain(&source), "identity store write failed");
            Problem::unavailable("the store could not be written; see the service's log")
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
    let started = start_recorded(&app, start, starter, caller, &by).await?;
    Ok((StatusCode::CREATED, Json(started)))
}

/// Starts a session, issues its X.509-SVID when one is asked for, and puts the start on record
/// (or takes the session back when it cannot be).
async fn start_recorded(
    app: &AppState,
    mut start: SessionStart,
    starter: Starter<'_>,
    caller: Value,
    by: &str,
) -> Result<StartedSession, Problem> {
    let svid_key = match start.svid.take() {
        Some(request) => Some(svid_key(app, &request)?),
        None => None,
    };
    let mut started = app
        .sessions
        .start(start, starter, crate::now_ms(), crate::random16())
        .await
        .map_err(session_problem)?;
    let mut act = serde_json::to_value(&started.claim).unwrap_or_default();
    if let Some((public_key, private_key)) = svid_key {
        match issue_svid(app, &started, &public_key, private_key) {
            Ok(svid) => started.svid = Some(svid),
            Err(problem) => {
                let _ = app
                    .sessions
                    .revoke(&started.session_id, crate::now_ms())
                    .await;
                return Err(problem);
            }
        }
    }
    if let Some(members) = act.as_object_mut() {
        members.insert("spiffe_id".into(), started.spiffe_id.clone().into());
        members.insert(
            "expires_at".into(),
            crate::reference::rfc3339_utc(started.expires_at.saturating_mul(1000)).into(),
        );
        if let Some(cnf) = &started.cnf {
            members.insert("cnf".into(), json!({"x5t#S256": cnf.x5t_s256}));
        }
        if let Some(svid) = &started.svid {
            members.insert(
                "x509_svid".into(),
                json!({"x5t#S256": svid.thumbprint, "expires_at": crate::reference::rfc3339_utc(svid.expires_at.saturating_mul(1000))}),
            );
        }
    }
    match crate::api::record_act(
        app,
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
            return Err(Problem::unavailable(
                "the session could not be put on record, so it was revoked; nothing can act under it",
            ));
        }
    }
    tracing::info!(by = %by, session = %started.spiffe_id, bound = started.cnf.is_some(), svid = started.svid.is_some(), "session started");
    Ok(started)
}

/// The public key an X.509-SVID is to be issued for (and its private key, when made here),
/// checked before the session starts.
fn svid_key(
    app: &AppState,
    request: &crate::sessions::SvidRequest,
) -> Result<(rcgen::SubjectPublicKeyInfo, Option<String>), Problem> {
    if app.workloads.ca().is_none() {
        return Err(Problem::invalid(
            "this service has no CA to issue X.509-SVIDs with; its operator makes one with `ztinfra ca init`",
            Vec::new(),
        ));
    }
    match (&request.csr, request.generate) {
        (Some(csr), false) => {
            let key = zt_identity::svid::csr_public_key(csr)
                .map_err(|e| Problem::invalid(e.to_string(), Vec::new()))?;
            let public = rcgen::SubjectPublicKeyInfo::from_der(
                rcgen::PublicKeyData::subject_public_key_info(&key).as_slice(),
            )
            .map_err(|e| Problem::invalid(format!("the CSR's key: {e}"), Vec::new()))?;
            Ok((public, None))
        }
        (None, true) => {
            let key = rcgen::KeyPair::generate()
                .map_err(|e| Problem::internal(format!("no key could be made: {e}")))?;
            let public = rcgen::SubjectPublicKeyInfo::from_der(
                rcgen::PublicKeyData::subject_public_key_info(&key).as_slice(),
            )
            .map_err(|e| Problem::internal(format!("no key could be made: {e}")))?;
            Ok((public, Some(key.serialize_pem())))
        }
        _ => Err(Problem::invalid(
            "`svid` takes either `csr` (a PEM certificate signing request) or `generate: true`",
            Vec::new(),
        )),
    }
}

fn issue_svid(
    app: &AppState,
    started: &StartedSession,
    public_key: &rcgen::SubjectPublicKeyInfo,
    private_key: Option<String>,
) -> Result<crate::sessions::IssuedSvid, Problem> {
    let ca = app
        .workloads
        .ca()
        .ok_or_else(|| Problem::internal("the CA is gone"))?;
    let id = zt_identity::svid::SpiffeId::parse(&started.spiffe_id)
        .map_err(|e| Problem::internal(e.to_string()))?;
    let now = crate::now_ms() / 1000;
    let cert = ca
        .issue(&id, public_key, now, started.expires_at, crate::random16())
        .map_err(|e| Problem::internal(e.to_string()))?;
    let expires_at = started
        .expires_at
        .min(now + zt_identity::svid::MAX_SVID_SECS);
    let mut chain = zt_identity::svid::pem_certificate(&cert);
    chain.push_str(&ca.cert_pem());
    Ok(crate::sessions::IssuedSvid {
        spiffe_id: started.spiffe_id.clone(),
        certificate_chain: chain,
        bundle: ca.cert_pem(),
        thumbprint: zt_identity::svid::thumbprint(&cert),
        private_key,
        expires_at,
    })
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

/// Revoke a delegation and every token delegated from it (admin). The sessions involved stay.
#[utoipa::path(
    post, path = "/v1/delegations/{id}/revoke",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "delegation id (the delegated token's `jti`)")),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn revoke_delegation(
    State(app): State<Arc<AppState>>,
    Admin(admin): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    crate::delegation::revoke(
        &app,
        &id,
        Some(crate::auth::record_caller(&admin)),
        "revoked by an admin",
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
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
    // A token that verifies (even revoked already) names its session, or its delegation: a
    // delegated token revokes its grant (and what was delegated from it), not the session
    // that holds it.
    let Ok(claims) = app.sessions.claims_of(&form.token, crate::now_ms()) else {
        return Ok(StatusCode::OK);
    };
    if let Some(delegation) = &claims.delegation {
        return crate::delegation::revoke(
            &app,
            &delegation.id,
            None,
            "revoked by the holder of its token (RFC 7009)",
        )
        .await
        .map(|_| StatusCode::OK);
    }
    let session = claims.session.session_id;
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
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Result<Json<Value>, Problem> {
    let caller = app
        .callers
        .verify(&headers, peer.as_ref().map(|p| &p.0))
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
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "token_endpoint_auth_methods_supported": ["tls_client_auth", "none"],
        "tls_client_certificate_bound_access_tokens": true,
        "response_types_supported": [],
        "grant_types_supported": [TOKEN_EXCHANGE, "client_credentials", crate::ciba::GRANT],
        "backchannel_authentication_endpoint": format!("{issuer}{}", crate::ciba::PATH),
        "backchannel_token_delivery_modes_supported": ["poll"],
        "backchannel_user_code_parameter_supported": false,
        "authorization_details_types_supported": [zt_identity::delegation::DETAIL_TYPE],
        "ztinfra_bundle_endpoint": format!("{issuer}/v1/bundle"),
        "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
        "ztinfra_session_endpoint": format!("{issuer}/v1/sessions"),
        "ztinfra_agents_endpoint": format!("{issuer}/v1/agents"),
        "ztinfra_access_token_audience": app.sessions.audience(),
        "ztinfra_status_list_uri": format!("{issuer}{}", crate::sessions::STATUS_LIST_PATH),
    }))
}

/// RFC 8693's grant type.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The subject token type of a JWT-SVID (RFC 8693 section 3: a JWT).
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The issued token type.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// `POST /oauth2/token`: a workload's SVID for a session token. Unknown parameters are
/// ignored, as RFC 6749 asks.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenRequest {
    grant_type: String,
    #[serde(default)]
    pub subject_token: Option<String>,
    #[serde(default)]
    pub subject_token_type: Option<String>,
    #[serde(default)]
    pub requested_token_type: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    /// RFC 8707: where the token is to be used (this service's issuer URL, or absent).
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub actor_token: Option<String>,
    /// The CIBA grant: the backchannel request polled for.
    #[serde(default)]
    auth_req_id: Option<String>,
    #[serde(default)]
    pub actor_token_type: Option<String>,
    /// Delegation: action names handed on, on any resource.
    #[serde(default)]
    pub scope: Option<String>,
    /// Delegation: the authority handed on (RFC 9396), a JSON array.
    #[serde(default)]
    pub authorization_details: Option<String>,
    #[serde(default)]
    workflow: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    tool_manifest: Option<String>,
    #[serde(default)]
    sandbox: Option<String>,
    #[serde(default)]
    on_behalf_of: Option<String>,
    #[serde(default)]
    ticket: Option<String>,
    #[serde(default)]
    pub ttl: Option<i64>,
    /// A PEM certificate signing request: issue the session an X.509-SVID for its key.
    #[serde(default)]
    svid_csr: Option<String>,
    /// `generate`: issue the session an X.509-SVID with a key made here.
    #[serde(default)]
    svid: Option<String>,
}

/// The RFC 8693 answer, with the session it started.
#[derive(Debug, Serialize)]
pub(crate) struct TokenResponse {
    access_token: String,
    issued_token_type: &'static str,
    token_type: &'static str,
    expires_in: i64,
    session_id: String,
    spiffe_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<zt_identity::session::Confirmation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    svid: Option<crate::sessions::IssuedSvid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    evidence: Option<crate::evidence::Receipt>,
}

/// An OAuth error (RFC 6749 section 5.2) as problem details: `error` and `error_description`
/// beside the problem's own members.
pub(crate) fn oauth_error(
    status: StatusCode,
    error: &'static str,
    detail: impl Into<String>,
) -> Response {
    oauth_problem(
        Problem::new(status, "oauth", "token request refused", detail),
        error,
    )
}

pub(crate) fn oauth_problem(problem: Problem, error: &'static str) -> Response {
    let mut body = serde_json::to_value(&problem).unwrap_or_default();
    if let Some(members) = body.as_object_mut() {
        members.insert("error".into(), error.into());
        members.insert("error_description".into(), problem.detail.clone().into());
    }
    let mut response = (problem.status(), Json(body)).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(crate::problem::CONTENT_TYPE),
    );
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

/// The token endpoint: a workload proves its SPIFFE ID, with a JWT-SVID (RFC 8693 token
/// exchange) or with its X.509-SVID over mutual TLS (`client_credentials`), and gets a session
/// of the agent its ID is mapped to. Over mutual TLS the token is bound to the client
/// certificate (RFC 8705).
pub(crate) async fn token(
    State(app): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: axum::http::HeaderMap,
    form: Result<Form<TokenRequest>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(form)) => form,
        Err(e) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "a token request is a form (`application/x-www-form-urlencoded`) with `grant_type`: {}",
                    e.body_text()
                ),
            );
        }
    };
    let peer_ext = peer;
    if form.grant_type == crate::ciba::GRANT {
        return crate::ciba::token(
            &app,
            &headers,
            peer_ext.as_ref().map(|Extension(p)| p),
            form.auth_req_id.as_deref(),
        )
        .await;
    }
    let peer = peer_ext.clone().and_then(|Extension(p)| p.0);
    let bad = |detail: String| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", detail);
    if let Some(audience) = &form.audience
        && audience != app.sessions.audience()
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            format!(
                "tokens from here are for `{}` only, not `{audience}`",
                app.sessions.audience()
            ),
        );
    }
    if form.grant_type == TOKEN_EXCHANGE
        && form.requested_token_type.as_deref() == Some(crate::delegation::TXN_TOKEN_TYPE)
    {
        if form.actor_token.is_some() {
            return bad("a Transaction Token is asked without `actor_token`".into());
        }
        return crate::delegation::txn_token(&app, &form, peer_ext.as_ref().map(|Extension(p)| p))
            .await
            .unwrap_or_else(|refusal| refusal);
    }
    // A token exchange that asks for authority is a delegation (`scope` sent with another
    // grant, such as `client_credentials`, is ignored, as before).
    if form.grant_type == TOKEN_EXCHANGE
        && form.actor_token.is_none()
        && (form.actor_token_type.is_some()
            || form.authorization_details.is_some()
            || form.scope.is_some())
    {
        return bad(
            "a delegation (`authorization_details`, `scope`, `actor_token_type`) needs `actor_token`: the token of the session that receives the authority"
                .into(),
        );
    }
    if form.actor_token.is_some() {
        if form.grant_type != TOKEN_EXCHANGE {
            return bad(format!(
                "`actor_token` belongs to token exchange (`{TOKEN_EXCHANGE}`)"
            ));
        }
        return crate::delegation::exchange(&app, &form, peer_ext.as_ref().map(|Extension(p)| p))
            .await
            .unwrap_or_else(|refusal| refusal);
    }
    if form
        .requested_token_type
        .as_deref()
        .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
    {
        return bad(format!(
            "only access tokens are issued: `requested_token_type` is `{ACCESS_TOKEN_TYPE}` or absent"
        ));
    }
    let (id, via) = match form.grant_type.as_str() {
        TOKEN_EXCHANGE => {
            let (Some(subject), Some(kind)) = (&form.subject_token, &form.subject_token_type)
            else {
                return bad("token exchange needs `subject_token` and `subject_token_type`".into());
            };
            if kind != JWT_TOKEN_TYPE {
                return bad(format!(
                    "`subject_token_type` must be `{JWT_TOKEN_TYPE}` (a JWT-SVID)"
                ));
            }
            let verified = zt_identity::svid::UnverifiedJwtSvid(subject).verify(
                &app.workloads.bundles(),
                app.workloads.audience(),
                crate::now_ms() / 1000,
            );
            match verified {
                Ok(svid) => {
                    if let Some(peer) = &peer
                        && peer.id != svid.id
                    {
                        return oauth_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            format!(
                                "the client certificate is `{}` but the JWT-SVID is `{}`: one workload asks for its own session",
                                peer.id, svid.id
                            ),
                        );
                    }
                    (svid.id, "jwt-svid")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a JWT-SVID was refused");
                    metrics::counter!("ztinfra_auth_refusals_total", "reason" => "jwt_svid")
                        .increment(1);
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", e.to_string());
                }
            }
        }
        "client_credentials" => match &peer {
            Some(svid) => (svid.id.clone(), "x509-svid"),
            None => {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "`client_credentials` authenticates the client by its X.509-SVID over mutual TLS; this connection presented none",
                );
            }
        },
        other => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!(
                    "`{other}` is not a grant type here: `{TOKEN_EXCHANGE}` (a JWT-SVID) or `client_credentials` (an X.509-SVID over mutual TLS)"
                ),
            );
        }
    };
    let Some(mapping) = app.workloads.agent_for(&id) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            format!("the SPIFFE ID `{id}` is not mapped to an agent here (`[[workloads.agents]]`)"),
        );
    };
    let svid = match (&form.svid_csr, form.svid.as_deref()) {
        (None, None) => None,
        (csr, Some("generate")) if csr.is_none() => Some(crate::sessions::SvidRequest {
            csr: None,
            generate: true,
        }),
        (Some(csr), None) => Some(crate::sessions::SvidRequest {
            csr: Some(csr.clone()),
            generate: false,
        }),
        _ => {
            return bad(
                "ask for an X.509-SVID with `svid_csr` (a PEM CSR) or `svid=generate`, not both"
                    .into(),
            );
        }
    };
    let start = SessionStart {
        agent: mapping.agent.clone(),
        lineage: zt_identity::session::Lineage {
            workflow: form.workflow,
            model: form.model,
            tool_manifest: form.tool_manifest,
            sandbox: form.sandbox,
            broker: None,
        },
        on_behalf_of: form.on_behalf_of,
        ticket: form.ticket,
        parent_session: None,
        ttl: form.ttl,
        svid,
        bind: peer.as_ref().map(|p| p.thumbprint.clone()),
    };
    let caller = json!({"kind": "workload", "name": id.as_str(), "via": via});
    let starter = Starter::Workload {
        id: id.as_str(),
        may_claim: &mapping.may_claim,
    };
    match start_recorded(&app, start, starter, caller, id.as_str()).await {
        Ok(started) => {
            let mut response = Json(TokenResponse {
                access_token: started.access_token,
                issued_token_type: ACCESS_TOKEN_TYPE,
                token_type: "Bearer",
                expires_in: started.expires_in,
                session_id: started.session_id,
                spiffe_id: started.spiffe_id,
                cnf: started.cnf,
                svid: started.svid,
                evidence: started.evidence,
            })
            .into_response();
            response.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            response
        }
        Err(problem) if problem.status == 400 => oauth_problem(problem, "invalid_request"),
        // The agent it is mapped to is not registered, or is disabled.
        Err(problem) if problem.status == 403 || problem.status == 404 => oauth_problem(
            Problem {
                status: 400,
                ..problem
            },
            "invalid_grant",
        ),
        Err(problem) => problem.into_response(),
    }
}

/// This service's SPIFFE bundle: its CA certificates and its token keys.
pub(crate) async fn bundle(State(app): State<Arc<AppState>>) -> Json<Value> {
    Json(app.workloads.own_bundle(&app.sessions.jwks()))
}
