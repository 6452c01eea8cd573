//! `ztinfra`: the ZT-Infra command line.

mod agents;
mod approvals;
mod ca;
mod client;
mod config;
mod credentials;
mod decide;
mod evidence;
mod mcp;
mod policy;

use std::process::ExitCode;

/// mimalloc rather than the system allocator: a decision allocates and frees hundreds of small
/// blocks (JSON, Cedar values, the evidence record), and glibc's malloc and free were about 15%
/// of a pinned server core under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "ztinfra",
    version,
    about = "ZT-Infra: policy decisions and evidence for autonomous agents",
    long_about = "ZT-Infra decides, by Cedar policy, whether an agent may take an action, before it takes it: deny by default, fail closed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the decision service.
    Serve(Box<config::ServeArgs>),
    /// Ask a running service for a decision. Exit code: 0 allow, 1 deny, 2 error, 3 approval required.
    Decide(decide::DecideArgs),
    /// Work with policy sets offline.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Export and verify the evidence log.
    #[command(subcommand)]
    Evidence(evidence::EvidenceCommand),
    /// Manage operator and enforcement-point credentials (bearer tokens, stored as digests).
    #[command(subcommand)]
    Credentials(credentials::CredentialsCommand),
    /// Register, list and disable agents (through a running service, with an admin credential).
    #[command(subcommand)]
    Agents(agents::AgentsCommand),
    /// List, show, approve and deny approvals (with an approver's credential).
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCommand),
    /// Manage this replica's evidence signing key.
    #[command(subcommand)]
    Keys(evidence::KeysCommand),
    /// Join replicas to a shared store, each with an evidence log of its own, and list them.
    #[command(subcommand)]
    Replicas(evidence::ReplicasCommand),
    /// The service's own issuing CA for X.509-SVIDs, and its TLS server certificate.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Stand between an MCP client and MCP servers: every tools/call is decided first.
    #[command(name = "mcp-gateway")]
    McpGateway(Box<mcp::GatewayArgs>),
}

/// How logs are written (to standard error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ZTINFRA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    // ring is the one crypto backend: the HTTP clients (ours, and the MCP SDK's for upstream
    // servers) take it as the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let settings = match config::Settings::resolve(*args) {
                Ok(settings) => settings,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            init_logging(settings.log_format, "info");
            match run_serve(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Decide(args) => decide::run(args),
        Command::Policy(command) => policy::run(command),
        Command::Evidence(command) => evidence::run_evidence(command),
        Command::Keys(command) => evidence::run_keys(command),
        Command::Replicas(command) => evidence::run_replicas(command),
        Command::Credentials(command) => credentials::run(command),
        Command::Agents(command) => agents::run(command),
        Command::Approvals(command) => approvals::run(command),
        Command::Ca(command) => ca::run(command),
        Command::McpGateway(args) => {
            // Standard output is the MCP channel in stdio mode: logs go to standard error.
            init_logging(LogFormat::Text, "info,rmcp=warn");
            mcp::run(*args)
        }
    }
}

fn run_serve(settings: config::Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Bound first, so that a port in use stops the start before a key or store is
        // created; listened on once the service is ready, so that no client waits on it.
        let reserved = zt_server::reserve(settings.server.listen)?;
        let admin = settings
            .server
            .admin_listen
            .map(zt_server::reserve)
            .transpose()?;
        let ext_authz = match settings.ext_authz {
            Some((addr, config)) => Some((zt_server::reserve(addr)?, config)),
            None => None,
        };
        // The addresses bound (the ports chosen, for port 0) name the service: its `Host`
        // checks and its tokens' issuer.
        let mut server = settings.server;
        server.listen = reserved.addr;
        server.admin_listen = admin.as_ref().map(|a| a.addr);
        let app = zt_server::App::start(&server).await?;
        let addr = reserved.addr;
        let listener = reserved.listen()?;
        let admin_listener = match admin {
            Some(admin) => {
                let admin_addr = admin.addr;
                let listener = admin.listen()?;
                tracing::info!(addr = %admin_addr, "admin endpoints listening apart");
                Some((admin_addr, listener))
            }
            None => None,
        };
        tracing::info!(%addr, "listening");
        // One line on standard output, for scripts and tests that start the server on port 0
        // (and a second for the admin address, when there is one).
        let scheme = if app.tls() { "https" } else { "http" };
        println!("ztinfra listening on {scheme}://{addr}");
        if let Some((admin_addr, _)) = &admin_listener {
            println!("ztinfra admin listening on {scheme}://{admin_addr}");
        }
        // The ext_authz listener stops first, on the one shutdown signal: its checks in flight
        // are answered before the service stops taking decisions and closes the store.
        let (stop_ext_authz, stopping) = tokio::sync::watch::channel(false);
        let ext_authz = match ext_authz {
            Some((reserved, config)) => {
                let ext_addr = reserved.addr;
                let listener = reserved.listen()?;
                tracing::info!(addr = %ext_addr, "ext_authz listening");
                println!("ztinfra ext_authz listening on grpc://{ext_addr}");
                let service = zt_extauthz::ExtAuthz::new(config, app.decisions());
                let mut stopping = stopping.clone();
                Some(tokio::spawn(async move {
                    let stopped = service.serve(listener, async move {
                        let _ = stopping.wait_for(|s| *s).await;
                    });
                    // Envoy, finding nothing listening, denies (its `failure_mode_allow` off).
                    if let Err(e) = stopped.await {
                        tracing::error!(error = %zt_server::error_chain(&e), "ext_authz stopped: Envoy's checks fail, and it denies");
                    }
                }))
            }
            None => None,
        };
        drop(stopping);
        let shutdown = async move {
            zt_server::shutdown_signal().await;
            let _ = stop_ext_authz.send(true);
            if let Some(ext_authz) = ext_authz {
                let _ = ext_authz.await;
            }
        };
        app.serve(listener, admin_listener.map(|(_, l)| l), shutdown)
            .await;
        tracing::info!("stopped");
        Ok(())
    })
}
