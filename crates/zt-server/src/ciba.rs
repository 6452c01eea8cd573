//! Approvals through OpenID Client-Initiated Backchannel Authentication (CIBA Core 1.0), poll
//! mode: the face of approvals for clients that speak OAuth.
//!
//! The agent posts to the backchannel authentication endpoint with its session token (as the
//! client's authentication), the exact action as one RFC 9396 `ztinfra_action` authorization
//! detail (one action, one location, and the context), and a `binding_message` the approvers
//! see. The request is decided like any other; when it needs approval, the approval's id is
//! the `auth_req_id`. The agent polls the token endpoint (`grant_type=
//! urn:openid:params:grant-type:ciba`) and gets `authorization_pending`, `slow_down`, then
//! `access_denied` or `expired_token`, or, once approved, an access token that carries the
//! approval: good for exactly that action, once ([`crate::approvals::token_bound`]).
//!
//! Where this differs from a login-oriented CIBA server: the person asked is chosen by the
//! policy (`@approval`), not by a login hint (hints are accepted and ignored), and the client
//! authenticates with its session's access token (`Authorization: Bearer`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Form;
use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use zt_core::Decision;

use crate::api::AppState;
use crate::auth::Decider;
use crate::identity::oauth_error;
use crate::problem::Problem;

/// CIBA's grant type.
pub const GRANT: &str = "urn:openid:params:grant-type:ciba";
/// The backchannel authentication endpoint.
pub const PATH: &str = "/oauth2/bc-authorize";
/// Seconds a client waits between polls.
pub const INTERVAL_SECS: u64 = 2;
/// The longest `binding_message`.
const MAX_BINDING_MESSAGE: usize = 256;
/// Most requests whose last poll is remembered (past it, the memory starts again).
const MAX_POLLS: usize = 100_000;

/// When each `auth_req_id` was last polled, to answer `slow_down`.
#[derive(Debug, Default)]
pub struct Polls(Mutex<HashMap<String, Instant>>);

impl Polls {
    /// Records a poll; `false` when it comes sooner than the interval after the last.
    fn poll(&self, id: &str) -> bool {
        let Ok(mut polls) = self.0.lock() else {
            return true;
        };
        let now = Instant::now();
        if polls.len() >= MAX_POLLS {
            polls.clear();
        }
        let early = polls
            .get(id)
            .is_some_and(|last| now.duration_since(*last) < Duration::from_secs(INTERVAL_SECS));
        if !early {
            polls.insert(id.to_owned(), now);
        }
        !early
    }
}

/// A backchannel authentication request (a form). Unknown parameters (`scope`, the login
/// hints, `requested_expiry`) are ignored: the policy names who approves, and for how long.
#[derive(Debug, Deserialize)]
pub(crate) struct BackchannelRequest {
    /// The exact action: a JSON array of one `ztinfra_action` detail.
    #[serde(default)]
    authorization_details: Option<String>,
    /// Shown to the approvers with the request.
    #[serde(default)]
    binding_message: Option<String>,
}

/// The action a CIBA request asks for, from its one authorization detail.
#[derive(Debug, PartialEq)]
struct Asked {
    action: String,
    resource: String,
    context: Map<String, Value>,
}

/// `[{"type": "ztinfra_action", "actions": [<one>], "locations": [<one>], "context": {...}}]`.
fn parse_details(text: &str) -> Result<Asked, String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("`authorization_details` is not JSON: {e}"))?;
    let [Value::Object(detail)] = value.as_array().map(Vec::as_slice).unwrap_or_default() else {
        return Err(
            "`authorization_details` is an array of one object: the action to approve".into(),
        );
    };
    if detail.get("type").and_then(Value::as_str) != Some(zt_identity::delegation::DETAIL_TYPE) {
        return Err(format!(
            "the authorization detail's `type` is `{}`",
            zt_identity::delegation::DETAIL_TYPE
        ));
    }
    if let Some(unknown) = detail
        .keys()
        .find(|k| !["type", "actions", "locations", "context"].contains(&k.as_str()))
    {
        return Err(format!(
            "the authorization detail has `{unknown}`: it holds `type`, `actions`, `locations` and `context` only"
        ));
    }
    let one = |name: &str| match detail
        .get(name)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        Some([Value::String(one)]) if !one.is_empty() => Ok(one.clone()),
        _ => Err(format!(
            "the authorization detail's `{name}` holds exactly one string: CIBA asks for one action on one resource"
        )),
    };
    let context = match detail.get("context") {
        None => Map::new(),
        Some(Value::Object(context)) => context.clone(),
        Some(_) => return Err("the authorization detail's `context` is an object".into()),
    };
    Ok(Asked {
        action: one("actions")?,
        resource: one("locations")?,
        context,
    })
}

/// `POST /oauth2/bc-authorize`: decide the action; when it needs a person's approval, answer
/// the `auth_req_id` to poll for.
pub(crate) async fn backchannel(
    axum::extract::State(app): axum::extract::State<Arc<AppState>>,
    decider: Result<Decider, Problem>,
    form: Result<Form<BackchannelRequest>, axum::extract::rejection::FormRejection>,
) -> Response {
    let bad =
        |error: &'static str, detail: String| oauth_error(StatusCode::BAD_REQUEST, error, detail);
    let decider = match decider {
        Ok(decider) if decider.session.is_some() => decider,
        Ok(_) => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "the client authenticates with its agent session's access token (`Authorization: Bearer`)",
            );
        }
        Err(problem) => {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", problem.detail);
        }
    };
    if decider
        .session
        .as_ref()
        .is_some_and(|s| s.claims.approval.is_some() || s.claims.delegation.is_some())
    {
        return bad(
            "unauthorized_client",
            "a backchannel request comes with the session's own token, not a delegated or approval token"
                .into(),
        );
    }
    let Form(form) = match form {
        Ok(form) => form,
        Err(e) => {
            return bad(
                "invalid_request",
                format!("a backchannel request is a form: {}", e.body_text()),
            );
        }
    };
    let Some(details) = form.authorization_details.as_deref() else {
        return bad(
            "invalid_request",
            "`authorization_details` names the action to approve".into(),
        );
    };
    let asked = match parse_details(details) {
        Ok(asked) => asked,
        Err(e) => return bad("invalid_request", e),
    };
    let note = form.binding_message.unwrap_or_default();
    if note.chars().count() > MAX_BINDING_MESSAGE || note.chars().any(char::is_control) {
        return bad(
            "invalid_binding_message",
            format!(
                "`binding_message` is at most {MAX_BINDING_MESSAGE} characters, without control characters"
            ),
        );
    }
    let mut request = zt_core::DecisionRequest {
        actor: String::new(),
        action: asked.action,
        resource: asked.resource,
        context: asked.context,
    };
    if let Err(e) = decider.bind(&mut request, "/authorization_details/0") {
        return bad("invalid_request", e.to_string());
    }
    let mut request = match request.validate(&app.limits) {
        Ok(request) => request,
        Err(errors) => {
            let detail = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return bad("invalid_request", detail);
        }
    };
    let origin = crate::api::Origin {
        note: (!note.is_empty()).then_some(note),
        ..decider.origin("ciba")
    };
    if let Err(e) = crate::behaviour::inform_all(&app, &origin, [&mut request]) {
        return bad("invalid_request", e.to_string());
    }
    let verdict = app.policies.with_engine(|engine| engine.decide(&request));
    let Some(answered) = crate::api::answer(&app, origin, vec![(&request, verdict)], None)
        .await
        .pop()
    else {
        return oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "no answer",
        );
    };
    let why = answered
        .reasons
        .iter()
        .map(|r| r.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    match (answered.decision, answered.approval) {
        (Decision::ApprovalRequired, Some(ticket)) => {
            let expires_in = (ticket.expires_at - crate::now_ms() / 1000).max(1);
            let mut response = Json(json!({
                "auth_req_id": ticket.id,
                "expires_in": expires_in,
                "interval": INTERVAL_SECS,
            }))
            .into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            response
        }
        (Decision::Allow, _) => bad(
            "invalid_request",
            format!(
                "the policies allow this action without a person's approval (decision {}): ask for the decision itself",
                answered.decision_id
            ),
        ),
        _ => oauth_error(
            StatusCode::FORBIDDEN,
            "access_denied",
            format!("denied: {why} (decision {})", answered.decision_id),
        ),
    }
}

/// The token endpoint for the CIBA grant: the polling client (its session token in
/// `Authorization`) learns what became of its request, or gets the token that carries the
/// approval.
pub(crate) async fn token(
    app: &AppState,
    headers: &HeaderMap,
    peer: Option<&crate::conn::Peer>,
    auth_req_id: Option<&str>,
) -> Response {
    let grant =
        |error: &'static str, detail: String| oauth_error(StatusCode::BAD_REQUEST, error, detail);
    let Some(bearer) = crate::auth::bearer_jwt(headers) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "the CIBA grant is asked with the agent session's access token (`Authorization: Bearer`)",
        );
    };
    let live = match crate::auth::live_session(app, bearer, peer).await {
        Ok(live) => live,
        Err(problem) => {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", problem.detail);
        }
    };
    let Some(id) = auth_req_id else {
        return grant(
            "invalid_request",
            "the CIBA grant needs `auth_req_id`".into(),
        );
    };
    if uuid::Uuid::parse_str(id).is_err() {
        return grant(
            "invalid_grant",
            "`auth_req_id` is not one this service issued".into(),
        );
    }
    let found = match app.store.approval(id).await {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(error = %crate::error_chain(&e), "approvals could not be read");
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the store could not be read",
            );
        }
    };
    let Some((approval, _)) = found.filter(|(a, _)| a.session == live.claims.session.session_id)
    else {
        return grant(
            "invalid_grant",
            format!("`{id}` is not a request of this client's session"),
        );
    };
    if !app.ciba.poll(id) {
        return grant(
            "slow_down",
            format!("poll at most every {INTERVAL_SECS} seconds"),
        );
    }
    let now_ms = crate::now_ms();
    if let Some(used_by) = &approval.used_by {
        return grant(
            "invalid_grant",
            format!("the approval was used already, by the decision `{used_by}`"),
        );
    }
    match approval.status_at(now_ms) {
        "pending" => {
            return grant(
                "authorization_pending",
                format!(
                    "waiting for {} of group `{}` to approve",
                    approval.needed, approval.group
                ),
            );
        }
        "denied" => return grant("access_denied", "a person denied the request".into()),
        "expired" => return grant("expired_token", "the request expired unanswered".into()),
        _ => {}
    }
    let mut claims = (*live.claims).clone();
    let now = now_ms / 1000;
    claims.approval = Some(approval.id.clone());
    claims.jti = uuid::Uuid::now_v7().simple().to_string();
    claims.iat = now;
    claims.nbf = now;
    claims.exp = claims.exp.min(approval.expires_at_ms / 1000);
    let token = match app.sessions.sign(&claims) {
        Ok(token) => token,
        Err(e) => {
            tracing::error!(error = %e, "an approval token could not be signed");
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the token could not be signed",
            );
        }
    };
    let request: Value = serde_json::from_str(&approval.request).unwrap_or(Value::Null);
    let recorded = crate::api::record_act(
        app,
        "approval.token",
        Some(json!({"kind": "session", "name": claims.sub, "session": claims.session.session_id})),
        json!({"approval": approval.id, "jti": claims.jti, "expires_at": claims.exp}),
        format!(
            "a token carrying approval `{}` was issued to its session",
            approval.id
        ),
    )
    .await;
    if let Err(e) = recorded {
        tracing::error!(error = %e, "an approval token's issue could not be recorded; not issued");
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the token's issue could not be put on record",
        );
    }
    let mut response = Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": (claims.exp - now).max(0),
        "authorization_details": [{
            "type": zt_identity::delegation::DETAIL_TYPE,
            "actions": [request.get("action")],
            "locations": [request.get("resource")],
            "max_uses": 1,
        }],
    }))
    .into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_exact_action_is_asked() {
        let asked = parse_details(
            r#"[{"type": "ztinfra_action", "actions": ["db.drop"], "locations": ["db://x"], "context": {"n": 1}}]"#,
        )
        .unwrap();
        assert_eq!(
            (asked.action.as_str(), asked.resource.as_str()),
            ("db.drop", "db://x")
        );
        assert_eq!(asked.context.get("n"), Some(&json!(1)));
        for (bad, why) in [
            ("{", "not JSON"),
            ("[]", "array of one"),
            (r#"[{"type": "payment"}]"#, "`type`"),
            (
                r#"[{"type": "ztinfra_action", "actions": ["a", "b"], "locations": ["x"]}]"#,
                "exactly one",
            ),
            (
                r#"[{"type": "ztinfra_action", "actions": ["a"], "locations": []}]"#,
                "exactly one",
            ),
            (
                r#"[{"type": "ztinfra_action", "actions": ["a"], "locations": ["x"], "max_uses": 2}]"#,
                "`max_uses`",
            ),
            (
                r#"[{"type": "ztinfra_action", "actions": ["a"], "locations": ["x"], "context": 1}]"#,
                "an object",
            ),
        ] {
            assert!(parse_details(bad).unwrap_err().contains(why), "{bad}");
        }
    }

    #[test]
    fn polls_faster_than_the_interval_slow_down() {
        let polls = Polls::default();
        assert!(polls.poll("a"));
        assert!(!polls.poll("a"));
        assert!(polls.poll("b"));
    }
}
