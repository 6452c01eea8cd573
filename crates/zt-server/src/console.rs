//! The approvals console: a page for approvers and auditors, served by the binary at
//! `/console` from files embedded at build time (no CDN, no framework), and its sign-in.
//!
//! A person signs in with their credential (`POST /console/session`); the answer sets an
//! `HttpOnly`, `SameSite=Strict` cookie (`Secure` over TLS) that stands for the credential, and
//! gives a CSRF token that the page sends as `X-CSRF-Token` with every API request: the API
//! takes the cookie only with it ([`crate::auth::Callers::verify`]). Signing out ends the
//! sign-in. The page then uses the ordinary API: approvals, and evidence records with their
//! proofs, which it verifies itself (WebCrypto Ed25519 and SHA-256).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use crate::api::AppState;
use crate::auth::{CONSOLE_COOKIE, console_cookie, refusal_problem};
use crate::body::JsonBody;
use crate::problem::Problem;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// What the page may load and talk to: itself only.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/console",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/console/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route(
            "/console/session",
            get(whoami).post(sign_in).delete(sign_out),
        )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    response
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// The person's credential (approver, auditor or admin).
    token: String,
}

fn set_cookie(app: &AppState, value: &str, max_age: u64) -> HeaderValue {
    let secure = if app.tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{CONSOLE_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("zt_console=; Path=/; Max-Age=0"))
}

/// Sign in: sets the console cookie, answers who and the CSRF token.
async fn sign_in(
    State(app): State<Arc<AppState>>,
    JsonBody(body): JsonBody<SignIn>,
) -> Result<Response, Problem> {
    let ttl = app.approvals.console_session_ttl_secs;
    let signed = app
        .callers
        .sign_in(&body.token, Duration::from_secs(ttl))
        .await
        .map_err(refusal_problem)?;
    tracing::info!(who = %signed.caller.name(), role = %signed.caller.role(), "console sign-in");
    let mut response = (
        StatusCode::CREATED,
        Json(json!({
            "name": signed.caller.name().as_str(),
            "role": signed.caller.role().as_str(),
            "csrf": signed.csrf,
            "expires_in": ttl,
        })),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&app, &signed.cookie, ttl));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn signed_out() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "authentication required",
        "not signed in to the console, or the sign-in expired or was ended: sign in again",
    )
}

/// Who the cookie signs in, and its CSRF token (the page reads it back after a reload; another
/// site's page cannot read this answer).
async fn whoami(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, Problem> {
    let cookie = console_cookie(&headers).ok_or_else(signed_out)?;
    let (caller, csrf) = app
        .callers
        .console_caller(cookie)
        .await
        .ok_or_else(signed_out)?;
    let mut response = Json(json!({
        "name": caller.name().as_str(),
        "role": caller.role().as_str(),
        "csrf": csrf,
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Sign out: the sign-in ends (with the CSRF token, like every console change).
async fn sign_out(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let cookie = console_cookie(&headers).ok_or_else(signed_out)?;
    // The CSRF check is the API's own: the cookie must verify with its header.
    app.callers
        .verify(&headers, None)
        .await
        .map_err(refusal_problem)?;
    app.callers.sign_out(cookie);
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&app, "", 0));
    Ok(response)
}
