//! Streamable HTTP mode: each upstream server at `/mcp/<name>`, every request authenticated by
//! its session token (`Authorization: Bearer ...`), and the OAuth protected resource metadata
//! (RFC 9728) the MCP authorization specification asks for.
//!
//! Architecture invariant: no request reaches an MCP session without a verified token; the
//! verified actor travels with the request to the gateway, which decides as that actor.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;

use crate::GatewayError;
use crate::config::GatewayConfig;
use crate::gateway::{Caller, Gateway, Identity, Policy, Upstream};

/// What the authentication layer of one server's path needs.
#[derive(Debug)]
struct Guard {
    config: Arc<GatewayConfig>,
    /// Verifies agent session tokens.
    decider: crate::decide::Decider,
    /// Where the server's protected resource metadata is.
    metadata_url: String,
}

/// Serves every upstream on `listen` until `shutdown` resolves.
pub async fn serve(
    config: &GatewayConfig,
    listen: SocketAddr,
    upstreams: Vec<Arc<Upstream>>,
    policy: Arc<Policy>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let (listener, addr) = zt_server::bind(listen).await?;
    let base = config.public_url.as_deref().map_or_else(
        || format!("http://{addr}"),
        |u| u.trim_end_matches('/').to_owned(),
    );
    let shared = Arc::new(config.clone());
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut allowed_hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Some(authority) = base
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
    {
        allowed_hosts.push(authority.to_owned());
        if let Some((host, _port)) = authority.rsplit_once(':') {
            allowed_hosts.push(host.to_owned());
        }
    }
    let mut router = Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    for upstream in upstreams {
        let name = upstream.name.clone();
        let resource = format!("{base}/mcp/{name}");
        let metadata_path = format!("/.well-known/oauth-protected-resource/mcp/{name}");
        let metadata = json!({
            "resource": resource,
            "resource_name": format!("ZT-Infra MCP gateway: {name}"),
            "bearer_methods_supported": ["header"],
            "authorization_servers": config.authorization_servers,
        });
        let guard = Arc::new(Guard {
            config: Arc::clone(&shared),
            decider: policy.decider.clone(),
            metadata_url: format!("{base}{metadata_path}"),
        });
        let gateway = Gateway::new(upstream, Arc::clone(&policy), Identity::PerRequest);
        let service = StreamableHttpService::new(
            move || Ok(gateway.clone()),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default()
                .with_cancellation_token(cancel.child_token())
                .with_allowed_hosts(allowed_hosts.clone()),
        );
        let mcp = Router::new()
            .fallback_service(service)
            .layer(axum::middleware::from_fn(one_meaning))
            .layer(axum::middleware::from_fn_with_state(guard, authenticate));
        router = router.nest(&format!("/mcp/{name}"), mcp).route(
            &metadata_path,
            axum::routing::get(move || {
                let metadata = metadata.clone();
                async move { axum::Json(metadata) }
            }),
        );
    }
    tracing::info!(%addr, "MCP gateway listening");
    // One line on standard output, for scripts and tests that listen on port 0.
    println!("ztinfra mcp-gateway listening on http://{addr}");
    // The service's bounds on slow and greedy clients; MCP messages (a file written by a tool,
    // say) may be larger than decision requests.
    let limits = zt_server::conn::ConnLimits {
        max_body_bytes: MAX_MESSAGE_BYTES,
        ..zt_server::conn::ConnLimits::default()
    };
    zt_server::conn::serve(listener, router, limits, None, async move {
        shutdown.await;
        cancel.cancel();
    })
    .await;
    Ok(())
}

/// The largest MCP message a client may send over HTTP.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Lets a request through only with a known session token, carrying its actor along.
async fn authenticate(
    State(guard): State<Arc<Guard>>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = presented else {
        return unauthorized(&guard, None);
    };
    // The plan the client executes, if it says so: each call is then its next step.
    let plan = match request.headers().get(PLAN_HEADER) {
        None => None,
        Some(value) => match value
            .to_str()
            .ok()
            .filter(|p| zt_server::plans::parse_step(&format!("{p}/next")).is_some())
        {
            Some(plan) => Some(plan.to_owned()),
            None => {
                return zt_server::problem::Problem::invalid(
                    "the `ZT-Plan` header is a plan id: 64 hex digits",
                    Vec::new(),
                )
                .into_response();
            }
        },
    };
    // An agent session's access token, verified by the decision service (and again at every
    // decision, so that a revocation stops the next call).
    if zt_identity::session::UnverifiedToken::looks_like_jwt(token) {
        let token = token.to_owned();
        return match guard.decider.session_agent(&token).await {
            Ok(actor) => {
                request.extensions_mut().insert(Caller {
                    actor,
                    session_token: Some(token),
                    plan,
                });
                next.run(request).await
            }
            Err(reason) => {
                tracing::warn!(reason = %reason, "MCP request refused: agent session token not valid");
                unauthorized(&guard, Some("the agent session token is not valid"))
            }
        };
    }
    // A `[[client]]` token: the actor it stands for is asserted by the gateway's config.
    match guard.config.actor_for_token(token) {
        Some(actor) => {
            request.extensions_mut().insert(Caller {
                actor: actor.to_owned(),
                session_token: None,
                plan,
            });
            next.run(request).await
        }
        None => unauthorized(&guard, Some("the session token is not recognized")),
    }
}

/// Refuses a message that repeats a member name of one of its objects (400, problem details),
/// before the MCP SDK reads it: its JSON parser keeps the last occurrence, a proxy in front
/// may have checked the first, and the decision must see what the upstream server will.
async fn one_meaning(request: Request, next: Next) -> Response {
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_MESSAGE_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) => return zt_server::body::body_problem(&e).into_response(),
    };
    if let Ok(text) = std::str::from_utf8(&bytes)
        && let Err(problem) = zt_server::body::one_meaning(text)
    {
        return problem.into_response();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// The header by which an HTTP client names the plan it executes.
pub const PLAN_HEADER: &str = "zt-plan";

/// 401 with the challenge that points the client at the protected resource metadata.
fn unauthorized(guard: &Guard, error: Option<&str>) -> Response {
    let mut challenge = format!("Bearer resource_metadata=\"{}\"", guard.metadata_url);
    if let Some(description) = error {
        challenge.push_str(&format!(
            ", error=\"invalid_token\", error_description=\"{description}\""
        ));
    }
    let body = json!({
        "type": "urn:zt-infra:problem:unauthorized",
        "title": "unauthorized",
        "status": 401,
        "detail": error.unwrap_or("a session token is required: `Authorization: Bearer <token>`"),
    });
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        headers.insert(header::WWW_AUTHENTICATE, value);
    }
    response
}
