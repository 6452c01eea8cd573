//! ZT-Infra's HTTP decision service: configuration, start-up, the API and graceful shutdown.
//!
//! Only this crate (and the CLI) touches the network, the disk and the clock; the decision
//! core stays pure.

pub mod api;
pub mod approvals;
pub mod auth;
pub mod authzen;
pub mod behaviour;
pub mod body;
pub mod ciba;
pub mod conn;
pub mod console;
pub mod delegation;
pub mod evidence;
pub mod identity;
pub mod keys;
pub mod plans;
pub mod policies;
pub mod problem;
pub mod reach;
pub mod reference;
pub mod sessions;
pub mod telemetry;
pub mod uses;
pub mod webhooks;
pub mod workloads;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use tower_http::catch_panic::CatchPanicLayer;
use zt_core::{Limits, PolicyError};
use zt_store::{Location, Store, StoreError};

use crate::api::AppState;
use crate::policies::Policies;
use crate::problem::Problem;

/// The defaults of `ztinfra serve`.
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:8181";
    pub const DATA_DIR: &str = ".ztinfra";
    pub const MAX_BODY_BYTES: usize = 1024 * 1024;
    /// Most records in one evidence commit.
    pub const MAX_EVIDENCE_BATCH: usize = 1024;
    /// The longest a connection may take to send a request's head, counted from when the
    /// server starts waiting for it (so also the longest a keep-alive connection stays idle).
    pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
    /// The longest a request's body may take to arrive, counted from its head.
    pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
    /// Most connections served at once (lowered to fit the open file limit).
    pub const MAX_CONNECTIONS: usize = 1024;
    /// Most bytes held by request bodies not yet received whole, all connections together.
    pub const MAX_PENDING_BODY_BYTES: usize = 64 * 1024 * 1024;
}

/// The latest checkpoint, kept in the data directory outside the store (see
/// [`evidence::EvidenceLog::open`]).
pub const LOCAL_CHECKPOINT_FILE: &str = "evidence.checkpoint";

/// Creates the data directory readable by its owner only, or makes an existing one so.
pub fn private_dir(dir: &std::path::Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let error = |source| ServerError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(error)?;
    let mode = std::fs::metadata(dir).map_err(error)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(error)?;
        tracing::warn!(dir = %dir.display(), "the data directory was readable by others; made private (0700)");
    }
    Ok(())
}

/// Everything the service needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub policy_dir: PathBuf,
    /// `None`: SQLite in the data directory.
    pub store: Option<Location>,
    pub limits: Limits,
    /// Timeouts and bounds of connections and request bodies (`conn_limits.max_body_bytes`
    /// is `--max-body-bytes`).
    pub conn_limits: conn::ConnLimits,
    /// Host names the API answers for, besides loopback ones and the public URL's (`*`: any).
    pub allowed_hosts: Vec<String>,
    /// Web origins allowed to send requests that change state, besides the public URL's.
    pub allowed_origins: Vec<String>,
    /// Reload when the policy directory changes.
    pub watch: bool,
    /// Most records in one evidence commit.
    pub max_evidence_batch: usize,
    /// `false` only to measure what evidence costs (`--unsafe-no-evidence`): decisions are then
    /// answered without being recorded.
    pub record_evidence: bool,
    /// The public base URL (`https://pdp.example.com`), for AuthZEN metadata; `None`: taken
    /// from each request's `Host` header, as `http://<host>`.
    pub public_url: Option<String>,
    /// Who may ask for decisions and read evidence (`--callers`).
    pub callers: auth::CallerMode,
    /// Agent sessions: trust domain, token audience, lifetimes.
    pub sessions: sessions::SessionSettings,
    /// Where the endpoints that change what is allowed are served instead of on `listen`
    /// (`--admin-listen`); `None`: on `listen`, with the rest.
    pub admin_listen: Option<SocketAddr>,
    /// Join a store whose evidence logs are other replicas', under this name, with an evidence
    /// log of its own (`--join`); without it, a replica whose key is in no log of a store that
    /// has logs refuses to start.
    pub join: Option<String>,
    /// Take the policy set from the versions pushed to the store (`ztinfra policy push`),
    /// following each new one, instead of `policy_dir` (`--policies-from-store`).
    pub policies_from_store: bool,
    /// Trust bundles, SPIFFE ID mappings and the TLS listener.
    pub workloads: workloads::WorkloadSettings,
    /// Delegation limits and trusted external issuers (`[delegation]`).
    pub delegation: delegation::DelegationSettings,
    /// Approver groups (`[approvals]`).
    pub approvals: approvals::ApprovalSettings,
    /// Behaviour signals (`[behaviour]`).
    pub behaviour: behaviour::BehaviourSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the data directory `{path}`")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot open the evidence log")]
    Evidence(#[from] evidence::EvidenceError),
    #[error("the policy set from `{dir}` does not load:\n{}", .errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Policies {
        dir: String,
        errors: Vec<PolicyError>,
    },
    #[error("cannot watch `{dir}` for changes")]
    Watch { dir: PathBuf, source: notify::Error },
    #[error(
        "cannot write the first admin token to `{path}` (the credential made for it was revoked; make another with `ztinfra credentials add NAME --role admin`)"
    )]
    AdminToken {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Workloads(#[from] workloads::WorkloadError),
    #[error("invalid `[delegation]` settings: {0}")]
    Delegation(String),
    #[error("invalid `[approvals]` settings: {0}")]
    Approvals(String),
    #[error("invalid `[behaviour]` settings: {0}")]
    Behaviour(String),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started service, not yet listening.
#[derive(Debug)]
pub struct App {
    state: Arc<AppState>,
    conn_limits: conn::ConnLimits,
    reach: Arc<reach::Reach>,
    /// The admin address's own `Host` check, when the admin endpoints are served apart.
    admin_reach: Option<Arc<reach::Reach>>,
    /// Every listener is TLS when the service has a certificate.
    tls: Option<conn::Tls>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl App {
    /// Prepares the data directory, keys, store and policies.
    ///
    /// A start that fails removes the signing key and the SQLite store it created, so that a
    /// mistake (a policy set that does not load, say) leaves nothing behind to be reused later;
    /// but a key that a store it keeps now names as an evidence log's key stays, so that the
    /// next start writes that log rather than finding itself a stranger to the store.
    pub async fn start(config: &Config) -> Result<Self, ServerError> {
        private_dir(&config.data_dir)?;
        let key_dir = config.data_dir.join("keys");
        let key_file = key_dir.join(keys::KEY_FILE);
        let db_file = match &config.store {
            None => Some(config.data_dir.join(zt_store::SQLITE_FILE)),
            Some(Location::Sqlite(path)) => Some(path.clone()),
            Some(Location::Postgres(_)) => None,
        };
        let mut created: Vec<PathBuf> = Vec::new();
        for file in [key_file, key_dir.join(keys::SESSION_KEY_FILE)] {
            if !file.exists() {
                created.push(file);
            }
        }
        if let Some(db) = db_file.filter(|db| !db.exists()) {
            created.extend(zt_store::sqlite_files(&db));
        }
        let admin_token = config.data_dir.join(auth::ADMIN_TOKEN_FILE);
        if !admin_token.exists() {
            created.push(admin_token);
        }
        let started = Self::start_in(config, &key_dir, &mut created).await;
        if started.is_err() {
            for path in &created {
                let _ = std::fs::remove_file(path);
            }
        }
        started
    }

    async fn start_in(
        config: &Config,
        key_dir: &std::path::Path,
        created: &mut Vec<PathBuf>,
    ) -> Result<Self, ServerError> {
        let issuers =
            delegation::Issuers::new(&config.delegation).map_err(ServerError::Delegation)?;
        config.approvals.check().map_err(ServerError::Approvals)?;
        config.behaviour.check().map_err(ServerError::Behaviour)?;
        let webhooks =
            webhooks::Webhooks::start(&config.approvals).map_err(ServerError::Approvals)?;
        let workloads = Arc::new(workloads::Workloads::load(
            config.workloads.clone(),
            &config.sessions.trust_domain,
            key_dir,
        )?);
        let tls = workloads.tls_acceptor()?.map(|acceptor| conn::Tls {
            acceptor,
            workloads: Arc::clone(&workloads),
        });
        workloads.watch();
        let signer = keys::load_or_generate(key_dir)?;
        tracing::info!(key_id = %signer.info().key_id, "signing key ready");
        let store = match &config.store {
            Some(location) => Store::open(location).await?,
            None => Store::open_in(&config.data_dir).await?,
        };
        tracing::info!(store = %store.location(), "store open");
        if let Some(path) = auth::first_admin(&store, &config.data_dir, now_ms()).await? {
            tracing::info!(file = %path.display(), "the store had no admin: an admin credential was made, its token is in this file (readable by its owner only)");
        }
        let session_key = keys::load_or_generate_file(key_dir, keys::SESSION_KEY_FILE)?;
        let issuer = config.public_url.clone().unwrap_or_else(|| {
            let scheme = if tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{}", config.listen)
        });
        let sessions = sessions::Sessions::load(
            config.sessions.clone(),
            issuer,
            session_key.token_signer(),
            store.clone(),
            now_ms(),
        )
        .await?;
        tracing::info!(issuer = %sessions.issuer(), key_id = %session_key.info().key_id, "session tokens ready");
        let sessions = Arc::new(sessions);
        // Replicas on one PostgreSQL store learn of each other's sessions, revocations and
        // agents through its change feed. (One SQLite store has one service.)
        if matches!(store.location(), Location::Postgres(_)) {
            Arc::clone(&sessions).follow().await?;
            Arc::clone(&workloads).follow(store.clone()).await?;
        }
        // Every replica's CA is trusted by every replica (and served in its bundle).
        workloads.share(&store).await?;
        let signer = Arc::new(signer);
        if let Some(name) = &config.join
            && evidence::log_of(&store, &signer).await?.is_none()
        {
            evidence::join(&store, Arc::clone(&signer), name, "ztinfra serve --join").await?;
        }
        let evidence = evidence::EvidenceLog::open(
            store.clone(),
            signer,
            config.max_evidence_batch,
            Some(config.data_dir.join(LOCAL_CHECKPOINT_FILE)),
        )
        .await?;
        // The store names this key now: unless the store itself goes with a failed start
        // (an SQLite file made by it), the key stays.
        let store_goes = match store.location() {
            Location::Sqlite(path) => created.contains(path),
            Location::Postgres(_) => false,
        };
        if !store_goes {
            let key_file = key_dir.join(keys::KEY_FILE);
            created.retain(|path| *path != key_file);
        }
        if !config.record_evidence {
            tracing::warn!(
                "evidence is OFF (--unsafe-no-evidence): decisions are not recorded; for benchmarks only"
            );
        }
        let behaviour = Arc::new(behaviour::Behaviour::new(
            config.behaviour.clone(),
            evidence.own().origin().to_owned(),
        ));
        Arc::clone(&behaviour).share(store.clone()).await?;
        let metrics = telemetry::handle();
        let source = if config.policies_from_store {
            policies::PolicySource::Store
        } else {
            policies::PolicySource::Dir(config.policy_dir.clone())
        };
        let policies = Policies::start(source.clone(), store.clone())
            .await
            .map_err(|errors| ServerError::Policies {
                dir: source.to_string(),
                errors,
            })?;
        let policies = Arc::new(policies);
        let status = policies.status();
        tracing::info!(dir = %config.policy_dir.display(), version = %status.version, policies = status.policies, "policy set active");
        if status.policies == 0 {
            tracing::warn!(dir = %config.policy_dir.display(), "the policy set has no policies: every decision is denied");
        }
        for warning in &status.warnings {
            tracing::warn!(warning = %warning, "policy warning");
        }
        if config.policies_from_store {
            Arc::clone(&policies).follow().await?;
        }
        let watcher = if config.watch && !config.policies_from_store {
            Some(
                policies
                    .watch(Duration::from_millis(200))
                    .map_err(|source| ServerError::Watch {
                        dir: config.policy_dir.clone(),
                        source,
                    })?,
            )
        } else {
            None
        };
        Ok(Self {
            state: Arc::new(AppState {
                policies,
                limits: config.limits,
                store: store.clone(),
                evidence,
                record_evidence: config.record_evidence,
                metrics,
                ready: AtomicBool::new(true),
                public_url: config.public_url.clone(),
                callers: auth::Callers::new(config.callers, store.clone(), Arc::clone(&workloads)),
                sessions,
                workloads,
                delegation: config.delegation.clone(),
                approvals: config.approvals.clone(),
                behaviour,
                tls: config.workloads.tls.is_some(),
                ciba: ciba::Polls::default(),
                webhooks,
                issuers,
                plans: plans::Plans::default(),
                uses: uses::Uses::start(store.clone()),
            }),
            conn_limits: config.conn_limits,
            reach: Arc::new(reach::Reach::new(
                config.listen,
                config.public_url.as_deref(),
                &config.allowed_hosts,
                &config.allowed_origins,
            )),
            admin_reach: config.admin_listen.map(|admin| {
                Arc::new(reach::Reach::new(
                    admin,
                    None,
                    &config.allowed_hosts,
                    &config.allowed_origins,
                ))
            }),
            tls,
            _watcher: watcher,
        })
    }

    pub fn router(&self) -> axum::Router {
        self.layered(
            api::router(Arc::clone(&self.state), self.admin_reach.is_some()),
            &self.reach,
        )
    }

    /// The layers every listener's router gets: the `Host` and `Origin` check, body limit,
    /// problem details, request ids, and panics as problems.
    fn layered(&self, router: axum::Router, reach: &Arc<reach::Reach>) -> axum::Router {
        router
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(reach),
                reach::check,
            ))
            .layer(DefaultBodyLimit::max(self.conn_limits.max_body_bytes))
            .layer(axum::middleware::map_response(api::problem_details))
            .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
            .layer(CatchPanicLayer::custom(
                |_: Box<dyn std::any::Any + Send>| {
                    use axum::response::IntoResponse;
                    Problem::internal("the request could not be completed").into_response()
                },
            ))
    }

    /// Whether the listeners are TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn policies(&self) -> &Arc<Policies> {
        &self.state.policies
    }

    /// A handle on this service's decisions, for an enforcement point embedded in the process
    /// (the MCP gateway, the ext_authz listener): it stays usable while [`App::serve`] runs.
    pub fn decisions(&self) -> Decisions {
        Decisions(Arc::clone(&self.state))
    }

    /// Decides one request in process, as `POST /v1/decide` would (see [`Decisions::decide`]),
    /// with the problem that refuses it as field errors. With `plan`, the decision uses that
    /// plan's next step (as `ZT-Plan-Step: <plan>/next` would).
    pub async fn decide(
        &self,
        request: zt_core::DecisionRequest,
        endpoint: &'static str,
        session_token: Option<&str>,
        plan: Option<&str>,
        approval: Option<&str>,
    ) -> Result<api::DecisionResponse, Vec<zt_core::FieldError>> {
        let step = plan.map(|plan| format!("{plan}/next"));
        let ask = Ask {
            endpoint,
            pep: None,
            session_token,
            holder: None,
            step: step.as_deref(),
            approval,
        };
        self.decisions()
            .decide(request, ask)
            .await
            .map_err(|problem| {
                if problem.errors.is_empty() {
                    vec![zt_core::FieldError::new("", problem.detail)]
                } else {
                    problem.errors
                }
            })
    }

    /// The agent of a live session's access token, or why it is refused.
    pub fn session_agent(&self, token: &str) -> Result<String, String> {
        self.decisions().session_agent(token)
    }

    /// The actions the active policy set could ever allow an actor to take, as
    /// `POST /v1/actions/possible` answers.
    pub fn possible_actions(
        &self,
        query: api::PossibleQuery,
    ) -> Result<api::PossibleActions, Vec<zt_core::FieldError>> {
        api::possible(&self.state, query)
    }

    /// Closes the store, after the last decision.
    pub async fn close(&self) {
        self.state.store.close().await;
    }

    /// Serves on `listener` until `shutdown` resolves, then finishes in-flight requests.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        admin_listener: Option<tokio::net::TcpListener>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let state = Arc::clone(&self.state);
        let router = self.router();
        // Both listeners stop together, on the one shutdown signal.
        let (stopping, stopped) = tokio::sync::watch::channel(false);
        let admin = match (admin_listener, &self.admin_reach) {
            (Some(admin_listener), Some(reach)) => {
                let admin_router = self.layered(api::admin_router(Arc::clone(&self.state)), reach);
                let mut stopped = stopped.clone();
                Some(tokio::spawn(conn::serve(
                    admin_listener,
                    admin_router,
                    self.conn_limits,
                    self.tls.clone(),
                    async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    },
                )))
            }
            _ => None,
        };
        if let Ok(addr) = listener.local_addr()
            && !addr.ip().is_loopback()
            && state.callers.mode() == auth::CallerMode::Open
        {
            tracing::warn!(
                %addr,
                "listening on a non-loopback address with open callers: anyone who can reach this address may ask for decisions as any actor and read the evidence"
            );
        }
        conn::serve(
            listener,
            router,
            self.conn_limits,
            self.tls.clone(),
            async move {
                shutdown.await;
                state.ready.store(false, Ordering::Relaxed);
                let _ = stopping.send(true);
                tracing::info!("shutting down: finishing in-flight requests");
            },
        )
        .await;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        drop(stopped);
        self.state.store.close().await;
    }
}

/// Who asks an embedded enforcement point's decision, besides the request itself.
#[derive(Debug, Default)]
pub struct Ask<'a> {
    /// The name the decision is counted under in the metrics and recorded with.
    pub endpoint: &'static str,
    /// The enforcement point that asks, as [`Decisions::enforcement_point`] verified it
    /// (`None` with open callers, or in process): it asserts the actor when no session does.
    pub pep: Option<zt_identity::Caller>,
    /// The agent session the request is for: its token, which must be live; one bound to a
    /// certificate only with `holder`.
    pub session_token: Option<&'a str>,
    /// The client certificate the request came with, verified
    /// ([`Decisions::workload_certificate`]): the holder a bound session token must match.
    pub holder: Option<Arc<zt_identity::svid::X509Svid>>,
    /// A plan step capability, as the `ZT-Plan-Step` header names one: `<plan id>/<index>` or
    /// `<plan id>/next`.
    pub step: Option<&'a str>,
    /// The approval presented (as `ZT-Approval` would): an approval id.
    pub approval: Option<&'a str>,
}

/// The running service's decisions, for enforcement points in the same process: the same
/// path from request to durable record as `POST /v1/decide`, so that sessions, plan steps,
/// approvals and behaviour are handled once, whichever way a request arrives.
#[derive(Debug, Clone)]
pub struct Decisions(Arc<AppState>);

impl Decisions {
    /// Decides `request` for `ask`: the answer comes once its evidence is durable; a record
    /// that could not be made durable makes it a deny. A request that cannot be decided at all
    /// (invalid, a session token refused, a plan step unknown) is the problem that says why,
    /// with the status the HTTP API would answer.
    pub async fn decide(
        &self,
        mut request: zt_core::DecisionRequest,
        ask: Ask<'_>,
    ) -> Result<api::DecisionResponse, Problem> {
        let app = &*self.0;
        let step = match ask.step {
            None => None,
            Some(text) => {
                let (plan, index) = plans::parse_step(text).ok_or_else(|| {
                    Problem::invalid(
                        "a plan step is `<plan id>/<step index>` or `<plan id>/next`: 64 hex digits, `/`, a number or `next`",
                        Vec::new(),
                    )
                })?;
                Some(plans::resolve(app, plan, index).await?)
            }
        };
        let approval = match ask.approval {
            Some(id) if uuid::Uuid::parse_str(id).is_err() => {
                return Err(Problem::invalid(
                    "an approval is named by its id (a UUID)",
                    Vec::new(),
                ));
            }
            other => other.map(str::to_owned),
        };
        let session = match ask.session_token {
            Some(token) => {
                let holder = conn::Peer(ask.holder);
                Some(auth::live_session(app, token, Some(&holder)).await?)
            }
            None => None,
        };
        let decider = auth::Decider {
            pep: ask.pep,
            session,
            step,
            transaction: None,
            approval,
        };
        decider
            .bind(&mut request, "")
            .map_err(|e| Problem::invalid_fields(vec![e]))?;
        let origin = decider.origin(ask.endpoint);
        let announced = app.evidence.announce();
        let mut request = request
            .validate(&app.limits)
            .map_err(Problem::invalid_fields)?;
        api::answer_one(app, origin, &mut request, announced).await
    }

    /// The enforcement point whose credential is `authorization` (the value of an
    /// `Authorization: Bearer` header), with the role to ask for decisions; `None` without
    /// asking when callers are open. The problem refuses it (401, 403, or 503 when the store
    /// cannot say).
    pub async fn enforcement_point(
        &self,
        authorization: Option<&[u8]>,
    ) -> Result<Option<zt_identity::Caller>, Problem> {
        let mut headers = axum::http::HeaderMap::new();
        if let Some(value) = authorization {
            let value = axum::http::HeaderValue::from_bytes(value).map_err(|_| {
                auth::auth_problem(&zt_identity::AuthError::Malformed(
                    "the credential is not a header value",
                ))
            })?;
            headers.insert(axum::http::header::AUTHORIZATION, value);
        }
        self.0
            .callers
            .unless_open(&headers, None, zt_identity::Permission::Decide)
            .await
    }

    /// The X.509-SVID of a client certificate (PEM, the leaf issued by a trust domain's CA)
    /// that an enforcement point passes on, verified against this service's trust bundles now.
    pub fn workload_certificate(
        &self,
        pem: &[u8],
    ) -> Result<Arc<zt_identity::svid::X509Svid>, String> {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let cert = CertificateDer::from_pem_slice(pem)
            .map_err(|e| format!("the client certificate is not PEM: {e}"))?;
        self.0
            .workloads
            .verify_certificate(&cert, &[])
            .map(Arc::new)
            .map_err(|e| format!("the client certificate does not verify: {e}"))
    }

    /// The agent a SPIFFE ID is mapped to (`[[workloads.agents]]`), if it is a SPIFFE ID and
    /// mapped; the error says which of the two it is not.
    pub fn workload_agent(&self, spiffe_id: &str) -> Result<String, String> {
        let id = zt_identity::svid::SpiffeId::parse(spiffe_id)
            .map_err(|e| format!("`{spiffe_id}` is not a SPIFFE ID: {e}"))?;
        self.0
            .workloads
            .agent_for(&id)
            .map(|mapping| mapping.agent.clone())
            .ok_or_else(|| {
                format!(
                    "the SPIFFE ID `{id}` is not mapped to an agent here (`[[workloads.agents]]`)"
                )
            })
    }

    /// The agent of a live session's access token, or why it is refused.
    pub fn session_agent(&self, token: &str) -> Result<String, String> {
        self.0
            .sessions
            .verify(token, now_ms())
            .map(|live| live.claims.session.agent.clone())
            .map_err(|e| e.to_string())
    }
}

/// Replaces the file at `path` with `bytes`, atomically and durably: written to a new file
/// beside it (created exclusively, under an unpredictable name, so that nothing planted there
/// is followed or overwritten), synced, renamed over `path` (which replaces a link at `path`
/// rather than following it), and the directory synced. The file is readable by its owner only.
pub fn write_private_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".ztinfra-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// 16 bytes from the operating system's random source (session ids, certificate serial
/// numbers).
pub fn random16() -> [u8; 16] {
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// The wall clock, in milliseconds since the Unix epoch: the one place the service reads it.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// An error with its causes, `outer: inner: innermost`, for logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Binds `addr`, returning the listener and the address actually bound (for port 0).
pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServerError> {
    let reserved = reserve(addr)?;
    let local = reserved.addr;
    Ok((reserved.listen()?, local))
}

/// An address bound but not yet listened on: taken (so a port in use is found before anything
/// else is done), while a client that connects is refused rather than left waiting for a
/// service that is still starting.
#[derive(Debug)]
pub struct Reserved {
    socket: tokio::net::TcpSocket,
    /// The address asked for.
    asked: SocketAddr,
    /// The address bound (the port chosen, for port 0).
    pub addr: SocketAddr,
}

/// Binds `addr` without listening (see [`Reserved`]).
pub fn reserve(addr: SocketAddr) -> Result<Reserved, ServerError> {
    let error = |source| ServerError::Listen { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(error)?;
    // As the standard library's listener does: a restarted service rebinds its port at once.
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(addr).map_err(error)?;
    let local = socket.local_addr().map_err(error)?;
    Ok(Reserved {
        socket,
        asked: addr,
        addr: local,
    })
}

impl Reserved {
    /// Starts listening: connections are accepted from here on.
    pub fn listen(self) -> Result<tokio::net::TcpListener, ServerError> {
        let asked = self.asked;
        self.socket
            .listen(1024)
            .map_err(|source| ServerError::Listen {
                addr: asked,
                source,
            })
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
