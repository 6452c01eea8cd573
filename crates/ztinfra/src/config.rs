//! `ztinfra serve` settings: flags, then environment variables, then the optional config file,
//! then defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Deserialize;
use zt_core::Limits;
use zt_server::defaults;
use zt_store::Location;

use crate::LogFormat;

/// The bundled demo policy set, written to `<data-dir>/demo-policies` by `--demo`.
const DEMO_FILES: &[(&str, &str)] = &[
    (
        "schema.cedarschema",
        include_str!("../../../examples/demo/schema.cedarschema"),
    ),
    (
        "policies.cedar",
        include_str!("../../../examples/demo/policies.cedar"),
    ),
    (
        "demo.tests.json",
        include_str!("../../../examples/demo/demo.tests.json"),
    ),
];

#[derive(Debug, Args)]
#[command(
    after_help = "Settings come from flags, then ZTINFRA_* environment variables, then the config file (--config), then defaults.\n\nConfig file (TOML), every key optional:\n  listen = \"127.0.0.1:8181\"\n  data_dir = \".ztinfra\"            # relative paths: from the config file's directory\n  policies = \"policies\"\n  store = \"postgres://user@host/db\"\n  demo = false\n  no_watch = false                # or: watch = true\n  log_format = \"json\"\n  max_body_bytes = 1048576\n  max_batch = 100\n  max_context_depth = 32\n  max_id_bytes = 1024\n  public_url = \"https://pdp.example.com\"\n  header_timeout_secs = 10\n  body_timeout_secs = 10\n  max_connections = 1024\n  max_pending_body_bytes = 67108864\n  allowed_hosts = [\"pdp.internal\"]\n  allowed_origins = [\"https://console.example.com\"]\n  callers = \"authenticated\"        # or \"open\" (the default with demo = true)\n  allow_open_callers_on_network = false\n  admin_listen = \"127.0.0.1:8182\"   # policy reload, entity edits, agents, revocation: only here\n  join = \"replica-b\"              # a replica joining a shared store: its name\n  policies_from_store = false     # true: the set pushed with `ztinfra policy push`\n  trust_domain = \"ztinfra.local\"\n  session_ttl_secs = 900\n  max_session_ttl_secs = 3600\n  tls_cert = \"server.crt\"          # TLS 1.3 on every listener; clients may present X.509-SVIDs\n  tls_key = \"server.key\"\n  tls_client_auth = \"optional\"     # or \"required\"\n\n  [workloads]                     # SPIFFE workload identity (README, \"Workload identity\")\n  audience = \"ztinfra\"            # what a JWT-SVID's aud must contain\n  [[workloads.trust_domains]]\n  name = \"example.org\"\n  bundle = \"example.org.bundle.json\"   # SPIFFE bundle (JSON) or PEM CA certificates; re-read on change\n  [[workloads.agents]]\n  spiffe_id = \"spiffe://example.org/agents/*\"   # exact, or a prefix ending /*\n  agent = \"triage-bot\"\n  may_claim = [\"model\", \"workflow\"]\n  [[workloads.callers]]\n  spiffe_id = \"spiffe://example.org/gateway\"\n  name = \"gateway\"\n  role = \"pep\"                   # pep, admin, auditor or broker\n\n  [delegation]                    # token exchange (README, \"Least agency\")\n  max_depth = 4                   # most delegations from the origin\n  default_ttl_secs = 900\n  [[delegation.issuers]]          # a person's tokens from this OpenID issuer may be delegated\n  issuer = \"https://idp.example.com\"\n  jwks_uri = \"https://idp.example.com/jwks\"   # or jwks_file = \"idp.jwks.json\" (re-read on change)\n  audiences = [\"ztinfra-console\"]  # its tokens' aud must hold one\n\n  [approvals.groups.sre-oncall]   # approvers for policies marked @approval(\"sre-oncall\") (README, \"Human approval\")\n  members = [\"alice\", \"bob\"]     # names of approver credentials\n  webhook = \"https://chat.example.com/hooks/sre\"   # each new approval is posted here, signed\n  webhook_secret_file = \"sre-webhook.secret\"      # HMAC-SHA256 key, at least 32 bytes\n\n  [behaviour]                     # context.behaviour and quarantine (README, \"Behaviour and quarantine\")\n  enabled = true\n  window_hours = 168              # the baseline: average decisions per hour over this window\n  recent_secs = 300               # denies_recent, distinct_resources_recent\n  share_secs = 10                 # replicas write and read each other's counts this often\n  min_baseline_per_hour = 60      # rate_percent divides by at least this\n  max_agents = 10000\n  max_sessions = 100000\n  metrics_agents = [\"triage-bot\"] # per-agent Prometheus counters for these agents only\n\n  [ext_authz]                     # Envoy's ext_authz gRPC service (README, \"Behind Envoy\")\n  listen = \"127.0.0.1:9191\"      # or --ext-authz-listen\n  service = \"invoices\"           # default actions: http.<service>.<method>\n  token_header = \"zt-agent-token\" # the agent session token (bare or Bearer); removed before the upstream\n  forward_token = false\n  declared_actor_header = \"zt-actor\"   # read only on routes with trust_declared_actor\n  context_headers = [\"x-ticket\"]  # into context.http.headers\n  decision_header = \"zt-decision-id\"   # an allow's decision id, to the upstream and back (\"\": none)\n  verify_peer_certificate = true  # check the client certificate Envoy passes on (include_peer_certificate)\n  [[ext_authz.routes]]            # the first that takes a request names its action and resource\n  path = \"/v1/invoices/{id}\"      # {name}: one segment; a last {name...}: the rest\n  methods = [\"GET\", \"DELETE\"]    # default: any\n  action = \"http.invoices.{method}\"    # default: http.<service>.{method}\n  resource = \"invoice/{id}\"\n  trust_declared_actor = false\n\nLog level: ZTINFRA_LOG (for example `info`, `debug`, `zt_server=debug`)."
)]
pub struct ServeArgs {
    /// Address to listen on, IP:PORT; a bare PORT or localhost:PORT means 127.0.0.1:PORT
    /// [default: 127.0.0.1:8181].
    #[arg(long, env = "ZTINFRA_LISTEN")]
    listen: Option<String>,
    /// Directory for state: the SQLite store and the signing key [default: ./.ztinfra].
    #[arg(long, env = "ZTINFRA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Policy directory: *.cedar policies, *.cedarschema schema, *.tests.json tests
    /// [default: <data-dir>/policies, or <data-dir>/demo-policies with --demo].
    #[arg(long, env = "ZTINFRA_POLICIES")]
    policies: Option<PathBuf>,
    /// Load the bundled demo policy set (written to <data-dir>/demo-policies if missing).
    #[arg(long, env = "ZTINFRA_DEMO")]
    demo: bool,
    /// Take the policy set (and its entities) from the versions pushed to the store
    /// (`ztinfra policy push`), activating each new one as it is pushed, instead of from a
    /// directory: what replicas sharing a PostgreSQL store do. Entity edits become new versions.
    #[arg(long, env = "ZTINFRA_POLICIES_FROM_STORE", conflicts_with_all = ["policies", "demo"])]
    policies_from_store: bool,
    /// Store: a path to an SQLite file or a postgres:// URL [default: <data-dir>/ztinfra.db].
    #[arg(long, env = "ZTINFRA_STORE")]
    store: Option<String>,
    /// Do not reload when the policy directory changes (POST /v1/policies/reload still works).
    #[arg(long, env = "ZTINFRA_NO_WATCH")]
    no_watch: bool,
    /// Log format on standard error [default: text].
    #[arg(long, env = "ZTINFRA_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Largest request body, in bytes [default: 1048576].
    #[arg(long, env = "ZTINFRA_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Most requests in one batch [default: 100].
    #[arg(long, env = "ZTINFRA_MAX_BATCH")]
    max_batch: Option<usize>,
    /// Deepest nesting of the context [default: 32].
    #[arg(long, env = "ZTINFRA_MAX_CONTEXT_DEPTH")]
    max_context_depth: Option<usize>,
    /// Longest actor, action or resource, in bytes [default: 1024].
    #[arg(long, env = "ZTINFRA_MAX_ID_BYTES")]
    max_id_bytes: Option<usize>,
    /// The public base URL of the service, such as https://pdp.example.com, named in the AuthZEN
    /// metadata [default: http://<Host header of each request>].
    #[arg(long, env = "ZTINFRA_PUBLIC_URL")]
    public_url: Option<String>,
    /// Seconds a connection may take to send a request's head, counted from when the server
    /// starts waiting for it; an idle keep-alive connection is closed after as long
    /// [default: 10].
    #[arg(long, env = "ZTINFRA_HEADER_TIMEOUT_SECS")]
    header_timeout_secs: Option<u64>,
    /// Seconds a request's body may take to arrive after its head (408 after that) [default: 10].
    #[arg(long, env = "ZTINFRA_BODY_TIMEOUT_SECS")]
    body_timeout_secs: Option<u64>,
    /// Most connections served at once; more are answered 503 and closed (lowered to fit the
    /// open file limit) [default: 1024].
    #[arg(long, env = "ZTINFRA_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most bytes held by request bodies not yet received whole, all connections together
    /// (503 beyond) [default: 67108864].
    #[arg(long, env = "ZTINFRA_MAX_PENDING_BODY_BYTES")]
    max_pending_body_bytes: Option<usize>,
    /// A host name the API answers for (the `Host` header), besides loopback names and the
    /// public URL's; repeat for more; `*` for any [env: comma-separated].
    #[arg(
        long = "allowed-host",
        env = "ZTINFRA_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    allowed_hosts: Vec<String>,
    /// A web origin (`https://console.example.com`) allowed to send requests that change
    /// state, besides the public URL's; repeat for more [env: comma-separated].
    #[arg(
        long = "allowed-origin",
        env = "ZTINFRA_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// Who may ask for decisions: `authenticated` (an enforcement point's credential; evidence
    /// reads need an auditor's or admin's) or `open` (anyone, with the actor they declare; for
    /// demos and loopback) [default: authenticated; open with --demo].
    #[arg(long, env = "ZTINFRA_CALLERS", value_enum)]
    callers: Option<Callers>,
    /// Allow `--callers open` on an address other than loopback (anyone who reaches it may ask
    /// for decisions as any actor and read all evidence).
    #[arg(long, env = "ZTINFRA_ALLOW_OPEN_CALLERS_ON_NETWORK")]
    allow_open_callers_on_network: bool,
    /// Serve the endpoints that change what is allowed (policy reload, entity edits, agents,
    /// session revocation) on this address only, IP:PORT (or a bare PORT for loopback), and
    /// not on `--listen` [default: with the rest].
    #[arg(long, env = "ZTINFRA_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// On a shared (PostgreSQL) store that other replicas write: join it as the replica NAME,
    /// with an evidence log and key of its own, recorded as that log's first record. Without
    /// it, a replica whose key is in no log of such a store refuses to start. Later starts
    /// with the flag change nothing.
    #[arg(long, env = "ZTINFRA_JOIN", value_name = "NAME")]
    join: Option<String>,
    /// The SPIFFE trust domain of agent sessions' IDs
    /// (`spiffe://<trust-domain>/agent/<agent>/session/<id>`) [default: ztinfra.local].
    #[arg(long, env = "ZTINFRA_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Seconds an agent session lives when its start asks for no `ttl` [default: 900].
    #[arg(long, env = "ZTINFRA_SESSION_TTL_SECS")]
    session_ttl_secs: Option<u64>,
    /// The longest an agent session may live, in seconds [default: 3600].
    #[arg(long, env = "ZTINFRA_MAX_SESSION_TTL_SECS")]
    max_session_ttl_secs: Option<u64>,
    /// Serve TLS 1.3 on every listener with this certificate chain (PEM); clients may then
    /// present X.509-SVIDs (`ztinfra ca server-cert` makes one from the service's CA).
    #[arg(long, env = "ZTINFRA_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM, mode 0600).
    #[arg(long, env = "ZTINFRA_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Whether TLS clients must present a certificate: `optional` (clients without one may
    /// still use bearer credentials) or `required` [default: optional].
    #[arg(long, env = "ZTINFRA_TLS_CLIENT_AUTH", value_enum)]
    tls_client_auth: Option<ClientAuth>,
    /// Serve Envoy's ext_authz gRPC service (`envoy.service.auth.v3.Authorization`) on this
    /// address, IP:PORT (or a bare PORT for loopback), with the routes of `[ext_authz]` in the
    /// config file [default: not served].
    #[arg(long, env = "ZTINFRA_EXT_AUTHZ_LISTEN")]
    ext_authz_listen: Option<String>,
    /// A TOML config file; relative paths in it are read from its own directory.
    #[arg(long, env = "ZTINFRA_CONFIG")]
    config: Option<PathBuf>,
    /// Benchmarks only: answer decisions without recording evidence, to measure what evidence
    /// costs. Never in production: nothing is on record. (A flag only, not a config key.)
    #[arg(long)]
    unsafe_no_evidence: bool,
}

/// `--tls-client-auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ClientAuth {
    Optional,
    Required,
}

/// `[workloads]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadsConfig {
    audience: Option<String>,
    #[serde(default)]
    trust_domains: Vec<zt_server::workloads::TrustDomainSource>,
    #[serde(default)]
    agents: Vec<zt_server::workloads::AgentMapping>,
    #[serde(default)]
    callers: Vec<zt_server::workloads::CallerMapping>,
}

/// `--callers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Callers {
    Open,
    Authenticated,
}

/// The config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    policies: Option<PathBuf>,
    demo: Option<bool>,
    policies_from_store: Option<bool>,
    store: Option<String>,
    watch: Option<bool>,
    /// The flag's own name; `watch = false` says the same.
    no_watch: Option<bool>,
    header_timeout_secs: Option<u64>,
    body_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    max_pending_body_bytes: Option<usize>,
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    log_format: Option<LogFormat>,
    max_body_bytes: Option<usize>,
    max_batch: Option<usize>,
    max_context_depth: Option<usize>,
    max_id_bytes: Option<usize>,
    public_url: Option<String>,
    callers: Option<Callers>,
    allow_open_callers_on_network: Option<bool>,
    trust_domain: Option<String>,
    session_ttl_secs: Option<u64>,
    max_session_ttl_secs: Option<u64>,
    admin_listen: Option<String>,
    join: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_auth: Option<ClientAuth>,
    workloads: Option<WorkloadsConfig>,
    delegation: Option<zt_server::delegation::DelegationSettings>,
    approvals: Option<zt_server::approvals::ApprovalSettings>,
    behaviour: Option<zt_server::behaviour::BehaviourSettings>,
    ext_authz: Option<zt_extauthz::Settings>,
}

/// Resolved settings.
#[derive(Debug)]
pub struct Settings {
    pub server: zt_server::Config,
    pub log_format: LogFormat,
    /// The ext_authz listener's address and routes, when it is served.
    pub ext_authz: Option<(SocketAddr, zt_extauthz::Config)>,
}

impl Settings {
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Self> {
        let mut file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the config file `{}`", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid config file `{}`", path.display()))?
            }
            None => FileConfig::default(),
        };
        // Paths in the file are the file's: relative ones are read from its directory.
        if let Some(base) = args.config.as_deref().and_then(Path::parent) {
            let bundles = file
                .workloads
                .iter_mut()
                .flat_map(|w| w.trust_domains.iter_mut())
                .map(|d| &mut d.bundle);
            let jwks = file
                .delegation
                .iter_mut()
                .flat_map(|d| d.issuers.iter_mut())
                .filter_map(|i| i.jwks_file.as_mut());
            let secrets = file
                .approvals
                .iter_mut()
                .flat_map(|a| a.groups.values_mut())
                .filter_map(|g| g.webhook_secret_file.as_mut());
            for path in [
                &mut file.data_dir,
                &mut file.policies,
                &mut file.tls_cert,
                &mut file.tls_key,
            ]
            .into_iter()
            .flatten()
            .chain(bundles)
            .chain(jwks)
            .chain(secrets)
            {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
            if let Some(store) = &mut file.store
                && let Ok(Location::Sqlite(path)) = Location::parse(store)
                && path.is_relative()
            {
                *store = base.join(path).display().to_string();
            }
        }
        let default_limits = Limits::default();
        let listen = parse_listen(
            args.listen
                .or(file.listen)
                .as_deref()
                .unwrap_or(defaults::LISTEN),
        )?;
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(defaults::DATA_DIR));
        let demo = args.demo || file.demo.unwrap_or(false);
        let policies_from_store =
            args.policies_from_store || file.policies_from_store.unwrap_or(false);
        let named_policies = args.policies.or(file.policies);
        if policies_from_store && (demo || named_policies.is_some()) {
            bail!(
                "`policies_from_store` takes the policy set from the store: `policies` and `demo` do not apply with it"
            );
        }
        let explicit = named_policies.is_some();
        let policy_dir = match named_policies {
            Some(dir) => dir,
            None if demo => data_dir.join("demo-policies"),
            None => data_dir.join("policies"),
        };
        let store = args
            .store
            .or(file.store)
            .map(|s| Location::parse(&s))
            .transpose()?;
        let max_body_bytes = args
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(defaults::MAX_BODY_BYTES);
        let conn_defaults = zt_server::conn::ConnLimits::default();
        let secs = |flag: Option<u64>, key: Option<u64>, default: std::time::Duration| {
            flag.or(key).map_or(default, std::time::Duration::from_secs)
        };
        let conn_limits = zt_server::conn::ConnLimits {
            header_timeout: secs(
                args.header_timeout_secs,
                file.header_timeout_secs,
                conn_defaults.header_timeout,
            ),
            body_timeout: secs(
                args.body_timeout_secs,
                file.body_timeout_secs,
                conn_defaults.body_timeout,
            ),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(conn_defaults.max_connections),
            max_body_bytes,
            max_pending_body_bytes: args
                .max_pending_body_bytes
                .or(file.max_pending_body_bytes)
                .unwrap_or(conn_defaults.max_pending_body_bytes),
        };
        let limits = Limits {
            max_id_bytes: args
                .max_id_bytes
                .or(file.max_id_bytes)
                .unwrap_or(default_limits.max_id_bytes),
            max_context_depth: args
                .max_context_depth
                .or(file.max_context_depth)
                .unwrap_or(default_limits.max_context_depth),
            max_batch: args
                .max_batch
                .or(file.max_batch)
                .unwrap_or(default_limits.max_batch),
        };
        for (name, value) in [
            ("max_body_bytes", max_body_bytes),
            ("max_batch", limits.max_batch),
            ("max_context_depth", limits.max_context_depth),
            ("max_id_bytes", limits.max_id_bytes),
            ("max_connections", conn_limits.max_connections),
            ("max_pending_body_bytes", conn_limits.max_pending_body_bytes),
            (
                "header_timeout_secs",
                conn_limits.header_timeout.as_secs() as usize,
            ),
            (
                "body_timeout_secs",
                conn_limits.body_timeout.as_secs() as usize,
            ),
        ] {
            if value == 0 {
                bail!("`{name}` must be at least 1");
            }
        }
        if conn_limits.max_pending_body_bytes < max_body_bytes {
            bail!(
                "`max_pending_body_bytes` ({}) must be at least `max_body_bytes` ({max_body_bytes}), or no body of the largest size could ever be received",
                conn_limits.max_pending_body_bytes
            );
        }
        if u32::try_from(conn_limits.max_pending_body_bytes).is_err() {
            bail!("`max_pending_body_bytes` must be below 4 GiB");
        }
        let public_url = args
            .public_url
            .or(file.public_url)
            .map(|url| check_public_url(&url))
            .transpose()?;
        let callers = match args.callers.or(file.callers) {
            Some(Callers::Open) => zt_server::auth::CallerMode::Open,
            Some(Callers::Authenticated) => zt_server::auth::CallerMode::Authenticated,
            None if demo => zt_server::auth::CallerMode::Open,
            None => zt_server::auth::CallerMode::Authenticated,
        };
        let open_on_network =
            args.allow_open_callers_on_network || file.allow_open_callers_on_network == Some(true);
        if callers == zt_server::auth::CallerMode::Open
            && !listen.ip().is_loopback()
            && !open_on_network
        {
            bail!(
                "refusing to listen on {listen} with open callers: anyone who reaches it could ask for decisions as any actor and read every evidence record. Use `--callers authenticated` (enforcement points then need a credential: `ztinfra credentials add NAME --role pep`), listen on loopback, or accept the risk with `--allow-open-callers-on-network`"
            );
        }
        let session_defaults = zt_server::sessions::SessionSettings::default();
        let sessions = zt_server::sessions::SessionSettings {
            trust_domain: args
                .trust_domain
                .or(file.trust_domain)
                .unwrap_or(session_defaults.trust_domain),
            default_ttl: args
                .session_ttl_secs
                .or(file.session_ttl_secs)
                .map_or(session_defaults.default_ttl, |s| s as i64),
            max_ttl: args
                .max_session_ttl_secs
                .or(file.max_session_ttl_secs)
                .map_or(session_defaults.max_ttl, |s| s as i64),
            ..session_defaults
        };
        check_trust_domain(&sessions.trust_domain)?;
        let join = args.join.or(file.join);
        if let Some(name) = &join {
            zt_server::evidence::check_replica_name(name)?;
        }
        let admin_listen = args
            .admin_listen
            .or(file.admin_listen)
            .map(|a| parse_listen(&a))
            .transpose()?;
        if admin_listen.is_some_and(|a| a == listen && a.port() != 0) {
            bail!("`admin_listen` must be another address than `listen` ({listen})");
        }
        if sessions.default_ttl < 1 || sessions.default_ttl > sessions.max_ttl {
            bail!(
                "`session_ttl_secs` ({}) must be at least 1 and at most `max_session_ttl_secs` ({})",
                sessions.default_ttl,
                sessions.max_ttl
            );
        }
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(zt_server::workloads::TlsSettings {
                cert,
                key,
                client_auth_required: args.tls_client_auth.or(file.tls_client_auth)
                    == Some(ClientAuth::Required),
            }),
            (None, None) => None,
            _ => bail!("`tls_cert` and `tls_key` go together: set both, or neither"),
        };
        if tls.is_none() && (args.tls_client_auth.or(file.tls_client_auth)).is_some() {
            bail!("`tls_client_auth` needs `tls_cert` and `tls_key`");
        }
        let delegation = file.delegation.unwrap_or_default();
        let approvals = file.approvals.unwrap_or_default();
        approvals
            .check()
            .map_err(|e| anyhow::anyhow!("invalid `[approvals]` settings: {e}"))?;
        let behaviour = file.behaviour.unwrap_or_default();
        behaviour
            .check()
            .map_err(|e| anyhow::anyhow!("invalid `[behaviour]` settings: {e}"))?;
        let ext_authz = match (
            args.ext_authz_listen
                .or(file.ext_authz.as_ref().and_then(|e| e.listen.clone())),
            file.ext_authz,
        ) {
            (None, None) => None,
            (None, Some(_)) => bail!(
                "`[ext_authz]` is configured, but no address to serve it on: set its `listen`, or `--ext-authz-listen`"
            ),
            (Some(_), None) => bail!(
                "`--ext-authz-listen` needs `[ext_authz]` in the config file (`--config`), with the routes that name each request's action and resource"
            ),
            (Some(addr), Some(settings)) => {
                let addr = parse_listen(&addr)?;
                if (addr == listen || admin_listen == Some(addr)) && addr.port() != 0 {
                    bail!(
                        "the ext_authz address ({addr}) must be another than the service's other listeners"
                    );
                }
                if callers == zt_server::auth::CallerMode::Open
                    && !addr.ip().is_loopback()
                    && !open_on_network
                {
                    bail!(
                        "refusing to serve ext_authz on {addr} with open callers: anyone who reaches it could have requests decided as any agent. Use `--callers authenticated` (Envoy then sends a `pep` credential in its gRPC metadata: `initial_metadata`), listen on loopback, or accept the risk with `--allow-open-callers-on-network`"
                    );
                }
                let config = zt_extauthz::Config::new(&settings)
                    .map_err(|e| anyhow::anyhow!("invalid `[ext_authz]` settings: {e}"))?;
                Some((addr, config))
            }
        };
        let workload_file = file.workloads.unwrap_or_default();
        let workloads = zt_server::workloads::WorkloadSettings {
            audience: workload_file.audience,
            trust_domains: workload_file.trust_domains,
            agents: workload_file.agents,
            callers: workload_file.callers,
            tls,
        };
        // The data directory first, private, before anything is written into it.
        zt_server::private_dir(&data_dir)?;
        if policies_from_store {
            // The set comes from the store: no directory is read or written.
        } else if explicit && !policy_dir.is_dir() {
            bail!(
                "the policy directory `{}` does not exist (or is not a directory); create it, or correct `--policies`",
                policy_dir.display()
            );
        } else if demo {
            write_demo(&policy_dir)?;
        } else if !policy_dir.exists() {
            // An empty set denies everything: a safe start that the operator fills.
            std::fs::create_dir_all(&policy_dir).with_context(|| {
                format!(
                    "cannot create the policy directory `{}`",
                    policy_dir.display()
                )
            })?;
        }
        Ok(Self {
            server: zt_server::Config {
                listen,
                data_dir,
                policy_dir,
                store,
                limits,
                conn_limits,
                allowed_hosts: if args.allowed_hosts.is_empty() {
                    file.allowed_hosts.unwrap_or_default()
                } else {
                    args.allowed_hosts
                },
                allowed_origins: if args.allowed_origins.is_empty() {
                    file.allowed_origins.unwrap_or_default()
                } else {
                    args.allowed_origins
                },
                watch: !(args.no_watch || file.watch == Some(false) || file.no_watch == Some(true)),
                max_evidence_batch: defaults::MAX_EVIDENCE_BATCH,
                record_evidence: !args.unsafe_no_evidence,
                public_url,
                callers,
                sessions,
                admin_listen,
                join,
                policies_from_store,
                workloads,
                delegation,
                approvals,
                behaviour,
            },
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            ext_authz,
        })
    }
}

/// A SPIFFE trust domain name: lowercase letters, digits, `.`, `-` and `_` (the SPIFFE ID
/// standard), at most 255 bytes.
fn check_trust_domain(name: &str) -> anyhow::Result<()> {
    if zt_identity::svid::check_trust_domain(name).is_ok() {
        Ok(())
    } else {
        bail!(
            "`trust_domain` must be a SPIFFE trust domain name (lowercase letters, digits, `.`, `-`, `_`), such as `ztinfra.local`; got `{name}`"
        )
    }
}

/// `IP:PORT`; a bare `PORT`, or `localhost:PORT`, is `127.0.0.1:PORT`.
fn parse_listen(value: &str) -> anyhow::Result<SocketAddr> {
    let value = value.trim();
    let port = value
        .strip_prefix("localhost:")
        .unwrap_or(value)
        .parse::<u16>();
    if let Ok(port) = port {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    value.parse().map_err(|_| {
        anyhow::anyhow!(
            "`listen` must be an IP:PORT such as `127.0.0.1:8181` or `[::1]:8181` (or a bare port for loopback); got `{value}`"
        )
    })
}

/// A base URL: `http://` or `https://`, a host, perhaps a path; no query, fragment or
/// trailing slash (one is removed).
fn check_public_url(url: &str) -> anyhow::Result<String> {
    let trimmed = url.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"));
    match rest {
        Some(rest)
            if !rest.is_empty()
                && !rest.starts_with('/')
                && !rest.contains(['?', '#'])
                && !rest.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(trimmed.to_owned())
        }
        _ => bail!(
            "`public_url` must be an http:// or https:// base URL without query or fragment, such as `https://pdp.example.com`; got `{url}`"
        ),
    }
}

/// Writes the demo set to `dir` unless `dir` exists, so that edits to it survive restarts.
fn write_demo(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    for (name, text) in DEMO_FILES {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    eprintln!(
        "demo policies written to {} (edit them: the service reloads on change)",
        dir.display()
    );
    Ok(())
}
