//! ZT-Infra's MCP gateway: it stands between an MCP client and its MCP servers, and no
//! `tools/call` reaches a server without an allow on record.
//!
//! The gateway is an MCP server to its client and an MCP client to each upstream server, both
//! through the official Rust SDK (`rmcp`). [`gateway::Gateway`] is the server handler: it
//! turns each `tools/call` into a decision request (action `mcp.<server>.<tool>`, a resource
//! taken from the arguments, their digest in the context), asks the [`decide::Decider`] (in
//! process or a remote service), and forwards the call only on allow. `tools/list` leaves out
//! (or marks) the tools the caller could never be allowed to call. Resources, prompts and
//! completions pass through.
//!
//! Two ways to run: stdio ([`run`] without `listen`: one upstream, one client on standard
//! input and output) and streamable HTTP ([`http`]: each upstream under `/mcp/<name>`, clients
//! authenticated by session token).

pub mod config;
pub mod decide;
pub mod gateway;
pub mod http;

use std::sync::Arc;

use rmcp::ServiceExt;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation};
use sha2::Digest;

pub use config::GatewayConfig;

use crate::config::ServerConfig;
use crate::gateway::{Gateway, Identity, Policy, Upstream};

/// What can stop the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Server(#[from] zt_server::ServerError),
    #[error("cannot start the upstream MCP server `{name}` (`{command}`): {message}")]
    Spawn {
        name: String,
        command: String,
        message: String,
    },
    #[error("cannot connect to the upstream MCP server `{name}`: {message}")]
    Connect { name: String, message: String },
    #[error("the MCP session with the client failed: {0}")]
    Session(String),
    #[error("{0}")]
    Decider(String),
}

/// The caller of a stdio gateway: the agent session of `session_token` when it is an access
/// token (verified now, and by the service again at every decision), the actor a `[[client]]`
/// token stands for, or the configured actor.
async fn stdio_caller(
    config: &GatewayConfig,
    decider: &decide::Decider,
    session_token: Option<String>,
    plan: Option<String>,
) -> Result<gateway::Caller, GatewayError> {
    if let Some(plan) = &plan
        && zt_server::plans::parse_step(&format!("{plan}/next")).is_none()
    {
        return Err(config::ConfigError::Invalid(
            "ZTINFRA_PLAN is a plan id: 64 hex digits".into(),
        )
        .into());
    }
    let Some(token) = session_token else {
        let actor = config.actor.clone().ok_or_else(|| {
            config::ConfigError::Invalid("no actor: set `actor` in the config (or `--actor`), or give a session token in ZTINFRA_SESSION_TOKEN".into())
        })?;
        return Ok(gateway::Caller {
            actor,
            session_token: None,
            plan,
        });
    };
    if zt_identity::session::UnverifiedToken::looks_like_jwt(&token) {
        let actor = decider.session_agent(&token).await.map_err(|reason| {
            config::ConfigError::Invalid(format!(
                "ZTINFRA_SESSION_TOKEN is an agent session token the decision service refuses: {reason}"
            ))
        })?;
        return Ok(gateway::Caller {
            actor,
            session_token: Some(token),
            plan,
        });
    }
    let actor = config
        .actor_for_token(&token)
        .ok_or_else(|| {
            config::ConfigError::Invalid(
                "ZTINFRA_SESSION_TOKEN is neither an agent session token nor a configured client token".into(),
            )
        })?
        .to_owned();
    Ok(gateway::Caller {
        actor,
        session_token: None,
        plan,
    })
}

/// SHA-256, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Starts the decision point the config names: a remote service, or the embedded one.
pub async fn decider(config: &GatewayConfig) -> Result<decide::Decider, GatewayError> {
    if let Some(url) = &config.decide_url {
        let token = match (&config.decide_token, &config.decide_token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        GatewayError::Decider(format!(
                            "cannot read the decision service credential `{}`: {e}",
                            path.display()
                        ))
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => {
                if config.decide_tls_cert.is_none() {
                    tracing::warn!(url = %url, "no credential for the decision service (decide_token_file, ZTINFRA_PEP_TOKEN, or an X.509-SVID in decide_tls_cert): it must run with `--callers open`, or every call is denied");
                }
                None
            }
        };
        let tls = match &config.decide_tls_ca {
            Some(ca) => Some(
                zt_server::workloads::client_tls(
                    ca,
                    config
                        .decide_tls_cert
                        .as_deref()
                        .zip(config.decide_tls_key.as_deref()),
                )
                .map_err(|e| GatewayError::Decider(zt_server::error_chain(&e)))?,
            ),
            None => None,
        };
        return decide::Decider::remote(url, token.as_deref(), tls).map_err(GatewayError::Decider);
    }
    let defaults = zt_server::defaults::DATA_DIR;
    let data_dir = config
        .data_dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from(defaults));
    let policy_dir = config
        .policies
        .clone()
        .unwrap_or_else(|| data_dir.join("policies"));
    let store = config
        .store
        .as_deref()
        .map(zt_store::Location::parse)
        .transpose()
        .map_err(|e| GatewayError::Decider(e.to_string()))?;
    let server = zt_server::Config {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir,
        policy_dir,
        store,
        limits: zt_core::Limits::default(),
        conn_limits: zt_server::conn::ConnLimits::default(),
        allowed_hosts: Vec::new(),
        allowed_origins: Vec::new(),
        watch: true,
        max_evidence_batch: zt_server::defaults::MAX_EVIDENCE_BATCH,
        record_evidence: true,
        public_url: None,
        // Not served over HTTP: the gateway decides in process, as the enforcement point.
        callers: zt_server::auth::CallerMode::Authenticated,
        sessions: zt_server::sessions::SessionSettings::default(),
        admin_listen: None,
        join: None,
        policies_from_store: false,
        workloads: zt_server::workloads::WorkloadSettings::default(),
        delegation: zt_server::delegation::DelegationSettings::default(),
        approvals: zt_server::approvals::ApprovalSettings::default(),
        behaviour: zt_server::behaviour::BehaviourSettings::default(),
    };
    let app = zt_server::App::start(&server).await?;
    Ok(decide::Decider::InProcess(Arc::new(app)))
}

/// Connects to one upstream server: starts its command (stdio) or reaches its URL.
pub async fn connect(server: &ServerConfig) -> Result<Upstream, GatewayError> {
    let client = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("ztinfra-mcp-gateway", env!("CARGO_PKG_VERSION")),
    );
    let service = if let Some(url) = &server.url {
        let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(url.as_str());
        client
            .serve(transport)
            .await
            .map_err(|e| GatewayError::Connect {
                name: server.name.clone(),
                message: e.to_string(),
            })?
    } else {
        let spawn_error = |message: String| GatewayError::Spawn {
            name: server.name.clone(),
            command: server.command.join(" "),
            message,
        };
        let (program, args) = server
            .command
            .split_first()
            .ok_or_else(|| spawn_error("no command".into()))?;
        let mut command = tokio::process::Command::new(program);
        // The server inherits the environment, except the gateway's own settings: the session
        // token and a store URL with its password are not the tool's business.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ZTINFRA_") {
                command.env_remove(key);
            }
        }
        command.args(args).envs(&server.env);
        let (transport, _stderr) = rmcp::transport::TokioChildProcess::builder(command)
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .map_err(|e| spawn_error(e.to_string()))?;
        client
            .serve(transport)
            .await
            .map_err(|e| spawn_error(e.to_string()))?
    };
    let info = Upstream::offered(service.peer());
    tracing::info!(
        server = %server.name,
        upstream = %info.server_info.name,
        "upstream MCP server connected"
    );
    Ok(Upstream {
        name: server.name.clone(),
        service,
        tools: server.tools.clone(),
        info,
    })
}

/// Runs the gateway as the config says: on HTTP when it has `listen`, otherwise on standard
/// input and output for one client, whose actor is the one `session_token` stands for, or the
/// configured actor. Returns when the client goes away (stdio) or `shutdown` resolves (HTTP).
pub async fn run(
    config: GatewayConfig,
    session_token: Option<String>,
    plan: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    config.check()?;
    if config.listen.is_some() {
        if config.clients.is_empty() {
            return Err(config::ConfigError::Invalid("streamable HTTP mode authenticates every client: configure at least one `[[client]]` with `token_sha256` and `actor`".into()).into());
        }
    } else if config.servers.len() != 1 {
        return Err(config::ConfigError::Invalid(format!(
            "stdio mode serves one upstream server; {} are configured (use `--listen` for several)",
            config.servers.len()
        ))
        .into());
    }
    let decider = decider(&config).await?;
    let identity = if config.listen.is_some() {
        Identity::PerRequest
    } else {
        Identity::Fixed(stdio_caller(&config, &decider, session_token, plan).await?)
    };
    let policy = Arc::new(Policy {
        decider: decider.clone(),
        tools_list: config.tools_list,
        decide_resource_reads: config.decide_resource_reads,
        approvals: Default::default(),
    });
    let mut upstreams = Vec::with_capacity(config.servers.len());
    for server in &config.servers {
        upstreams.push(Arc::new(connect(server).await?));
    }
    let result = match config.listen {
        Some(listen) => http::serve(&config, listen, upstreams, policy, shutdown).await,
        None => {
            let upstream = upstreams
                .pop()
                .ok_or_else(|| GatewayError::Session("no upstream server".into()))?;
            let gateway = Gateway::new(upstream, policy, identity);
            let running = gateway
                .serve(rmcp::transport::stdio())
                .await
                .map_err(|e| GatewayError::Session(e.to_string()))?;
            tokio::select! {
                quit = running.waiting() => {
                    tracing::info!(reason = ?quit, "the MCP client went away");
                }
                () = shutdown => {}
            }
            Ok(())
        }
    };
    if let decide::Decider::InProcess(app) = &decider {
        app.close().await;
    }
    result
}
