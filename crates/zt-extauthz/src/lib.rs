//! ZT-Infra behind Envoy: the ext_authz gRPC service (`envoy.service.auth.v3.Authorization`).
//!
//! Envoy asks [`ExtAuthz`] about each HTTP request before it forwards it. The request's method
//! and path pick a route ([`routes`]), which names the action and resource; the agent is the
//! one of the session token the request carries, or of the client certificate Envoy verified
//! (mapped by its SPIFFE ID), or, on routes that say so, the one a header declares. The
//! decision is the service's own, through [`zt_server::Decisions`]: the same sessions, plan
//! steps, approvals and evidence as `POST /v1/decide`. Only an allow lets the request through;
//! a deny, an approval still needed, or anything that keeps a decision from being made
//! answers the client with a problem document instead (see [`check`]).
//!
//! Heavy dependencies (tonic, the Envoy protos) live here only, in a crate that rarely changes.

pub mod check;
pub mod routes;

use std::future::Future;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use serde::Deserialize;

pub use routes::{RouteConfig, Routes};

/// The default header that carries the agent session's token (as `POST /v1/decide` takes it
/// from an enforcement point).
pub const DEFAULT_TOKEN_HEADER: &str = "zt-agent-token";
/// The default header in which a trusted route's caller names its actor.
pub const DEFAULT_DECLARED_ACTOR_HEADER: &str = "zt-actor";
/// The default header carrying an allowed request's decision id, to the upstream and back.
pub const DEFAULT_DECISION_HEADER: &str = "zt-decision-id";
/// The header in which a client presents an approval it waited for.
pub const APPROVAL_HEADER: &str = "zt-approval";
/// The header in which a client presents a plan step capability.
pub const STEP_HEADER: &str = "zt-plan-step";
/// The largest check request taken (Envoy sends headers only unless told to send the body).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// The longest a check may take before it is answered with an error (Envoy then denies).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// `[ext_authz]` in the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where Envoy dials the gRPC service (`--ext-authz-listen`); without it, no listener.
    pub listen: Option<String>,
    /// The namespace of routes' default actions, `http.<service>.<method>`.
    pub service: Option<String>,
    /// The request header carrying the agent session's token, bare or as `Bearer <token>`
    /// [default: `zt-agent-token`].
    pub token_header: Option<String>,
    /// Pass the session token on to the upstream; by default it is removed from the request
    /// (it is a credential for this service, and the upstream could replay it).
    #[serde(default)]
    pub forward_token: bool,
    /// The header naming the actor on routes with `trust_declared_actor` [default: `zt-actor`].
    pub declared_actor_header: Option<String>,
    /// Request headers copied into `context.http.headers` (part of what an approval is bound
    /// to: leave out headers that change from one try to the next, such as request ids).
    #[serde(default)]
    pub context_headers: Vec<String>,
    /// The header that carries an allowed request's decision id to the upstream and back to
    /// the client; empty for none [default: `zt-decision-id`].
    pub decision_header: Option<String>,
    /// Verify the client certificate Envoy passes on (`include_peer_certificate: true`)
    /// against this service's trust bundles, rather than trusting `source.principal` as Envoy
    /// wrote it [default: true].
    pub verify_peer_certificate: Option<bool>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// [`Settings`], checked: everything but the service to decide with.
#[derive(Debug, Clone)]
pub struct Config {
    pub routes: Routes,
    pub token_header: String,
    pub forward_token: bool,
    pub declared_actor_header: String,
    pub context_headers: Vec<String>,
    pub decision_header: Option<String>,
    pub verify_peer_certificate: bool,
}

impl Config {
    pub fn new(settings: &Settings) -> Result<Self, String> {
        let header = |key: &str, value: Option<&String>, default: &str| {
            let name = value.map_or(default, String::as_str).to_ascii_lowercase();
            if is_header_name(&name) {
                Ok(name)
            } else {
                Err(format!("`{key}`: `{name}` is not a header name"))
            }
        };
        let routes = Routes::new(&settings.routes, settings.service.as_deref())?;
        if routes.is_empty() {
            return Err(
                "`[[ext_authz.routes]]` names no route: every request would be refused".into(),
            );
        }
        let context_headers = settings
            .context_headers
            .iter()
            .map(|h| header("context_headers", Some(h), ""))
            .collect::<Result<Vec<_>, _>>()?;
        let decision_header = match settings.decision_header.as_deref() {
            Some("") => None,
            other => Some(header(
                "decision_header",
                other.map(str::to_owned).as_ref(),
                DEFAULT_DECISION_HEADER,
            )?),
        };
        Ok(Self {
            routes,
            token_header: header(
                "token_header",
                settings.token_header.as_ref(),
                DEFAULT_TOKEN_HEADER,
            )?,
            forward_token: settings.forward_token,
            declared_actor_header: header(
                "declared_actor_header",
                settings.declared_actor_header.as_ref(),
                DEFAULT_DECLARED_ACTOR_HEADER,
            )?,
            context_headers,
            decision_header,
            verify_peer_certificate: settings.verify_peer_certificate.unwrap_or(true),
        })
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The ext_authz service: [`Config`] and the decisions of the service it is part of.
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    config: std::sync::Arc<Config>,
    decisions: zt_server::Decisions,
}

impl ExtAuthz {
    pub fn new(config: Config, decisions: zt_server::Decisions) -> Self {
        Self {
            config: std::sync::Arc::new(config),
            decisions,
        }
    }

    /// Serves gRPC (HTTP/2 without TLS: Envoy dials it, on loopback or a private network) on
    /// `listener` until `shutdown` resolves, then finishes the checks in flight.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let service = AuthorizationServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES);
        tonic::transport::Server::builder()
            .timeout(CHECK_TIMEOUT)
            .max_concurrent_streams(1024)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(service)
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY (which the builder's setting does not give a listener
                // passed in), small answers wait on the peer's delayed ACK: a p99 of 40 ms.
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            service: Some("invoices".into()),
            routes: vec![RouteConfig {
                path: "/v1/invoices/{id}".into(),
                methods: vec![],
                action: None,
                resource: "invoice/{id}".into(),
                trust_declared_actor: false,
            }],
            ..Settings::default()
        }
    }

    #[test]
    fn defaults_and_refusals() {
        let config = Config::new(&settings()).unwrap();
        assert_eq!(config.token_header, DEFAULT_TOKEN_HEADER);
        assert_eq!(
            config.decision_header.as_deref(),
            Some(DEFAULT_DECISION_HEADER)
        );
        assert!(config.verify_peer_certificate);
        assert!(!config.forward_token);
        let none = Settings {
            decision_header: Some(String::new()),
            token_header: Some("Authorization".into()),
            ..settings()
        };
        let config = Config::new(&none).unwrap();
        assert_eq!(config.decision_header, None);
        assert_eq!(config.token_header, "authorization");
        for bad in [
            Settings {
                routes: vec![],
                ..settings()
            },
            Settings {
                token_header: Some("x y".into()),
                ..settings()
            },
            Settings {
                context_headers: vec!["a:b".into()],
                ..settings()
            },
        ] {
            assert!(Config::new(&bad).is_err(), "{bad:?}");
        }
    }
}
