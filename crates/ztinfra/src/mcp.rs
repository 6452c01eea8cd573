//! `ztinfra mcp-gateway`: flags on top of the gateway's config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use zt_mcp::config::{GatewayConfig, ServerConfig, ToolsList};

#[derive(Debug, Args)]
#[command(after_help = "\
Stdio mode (no --listen): the gateway starts one upstream MCP server and speaks MCP on its own standard input and output:
  ztinfra mcp-gateway --server-name time --actor demo-agent --policies policies -- python -m mcp_server_time

Streamable HTTP mode (--listen): each upstream is served at /mcp/<name>; clients present a session token (Authorization: Bearer) that a [[client]] entry maps to an actor.

Config file (TOML), every key optional:
  actor = \"demo-agent\"            # the actor of stdio clients without ZTINFRA_SESSION_TOKEN
  tools_list = \"hide\"             # or \"annotate\": what tools/list does with tools never allowed
  decide_resource_reads = false
  decide_url = \"http://127.0.0.1:8181\"   # ask a ZT-Infra service; otherwise decide in process:
  decide_token_file = \"gateway.token\"    # its pep credential (or ZTINFRA_PEP_TOKEN)
  decide_tls_ca = \"ca.crt\"              # an https:// decide_url: its CA; and for mutual TLS
  decide_tls_cert = \"gateway.crt\"       # the gateway's X.509-SVID (then no credential is needed
  decide_tls_key = \"gateway.key\"        # where the service maps it to a pep caller)
  policies = \"policies\"
  data_dir = \".ztinfra-mcp\"
  store = \"postgres://...\"
  listen = \"127.0.0.1:8282\"
  public_url = \"https://mcp.example.com\"
  authorization_servers = [\"https://auth.example.com\"]
  [[server]]
  name = \"fs\"
  command = [\"npx\", \"@modelcontextprotocol/server-filesystem\", \"/srv\"]   # or: url = \"http://...\"
  tools.write_file.resource = \"/path\"     # JSON pointer(s) into the arguments naming the resource
  [[client]]
  token_sha256 = \"<sha256 hex of the session token>\"
  actor = \"agent-1\"

Actions are mcp.<server>.<tool>; the context holds mcp.server, mcp.tool, mcp.arguments_sha256 and mcp.fields.")]
pub struct GatewayArgs {
    /// The gateway's config file (TOML).
    #[arg(long, env = "ZTINFRA_MCP_CONFIG")]
    config: Option<PathBuf>,
    /// The name of the upstream server given after `--` (its actions are `mcp.<name>.<tool>`).
    #[arg(long, requires = "command")]
    server_name: Option<String>,
    /// Listen for MCP clients over streamable HTTP on this address instead of stdio.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The public base URL of the HTTP gateway.
    #[arg(long)]
    public_url: Option<String>,
    /// The actor of a stdio client that presents no session token.
    #[arg(long, env = "ZTINFRA_MCP_ACTOR")]
    actor: Option<String>,
    /// Ask the ZT-Infra service at this URL for decisions, instead of deciding in process.
    #[arg(long, env = "ZTINFRA_DECIDE_URL")]
    decide_url: Option<String>,
    /// With --decide-url: a file holding the gateway's `pep` credential for that service
    /// (or the token itself in ZTINFRA_PEP_TOKEN).
    #[arg(long)]
    decide_token_file: Option<PathBuf>,
    /// With an https:// --decide-url: the CA certificate(s) of the service's TLS certificate.
    #[arg(long)]
    decide_tls_ca: Option<PathBuf>,
    /// The gateway's X.509-SVID (PEM), presented to the service over mutual TLS.
    #[arg(long, requires = "decide_tls_key")]
    decide_tls_cert: Option<PathBuf>,
    /// Its private key (PEM, mode 0600).
    #[arg(long, requires = "decide_tls_cert")]
    decide_tls_key: Option<PathBuf>,
    /// In-process decisions: the policy directory (default `<data-dir>/policies`).
    #[arg(long)]
    policies: Option<PathBuf>,
    /// In-process decisions: the data directory (keys, SQLite evidence log).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// In-process decisions: the store (`postgres://...`); default SQLite in the data directory.
    #[arg(long)]
    store: Option<String>,
    /// What tools/list does with tools the caller could never be allowed to call.
    #[arg(long, value_enum)]
    tools_list: Option<ListMode>,
    /// Decide on resources/read too.
    #[arg(long)]
    decide_resource_reads: bool,
    /// The upstream server's command and arguments (stdio), after `--`.
    #[arg(last = true, id = "command")]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ListMode {
    Hide,
    Annotate,
}

impl GatewayArgs {
    fn into_config(self) -> Result<GatewayConfig, String> {
        let mut config = match &self.config {
            Some(path) => GatewayConfig::read(path).map_err(|e| e.to_string())?,
            None => GatewayConfig::default(),
        };
        if let Some(name) = self.server_name {
            config.servers.push(ServerConfig {
                name,
                command: self.command,
                ..ServerConfig::default()
            });
        } else if !self.command.is_empty() {
            return Err("a command after `--` needs `--server-name NAME`".into());
        }
        config.listen = self.listen.or(config.listen.take());
        config.public_url = self.public_url.or(config.public_url.take());
        config.actor = self.actor.or(config.actor.take());
        config.decide_url = self.decide_url.or(config.decide_url.take());
        config.decide_token_file = self.decide_token_file.or(config.decide_token_file.take());
        config.decide_tls_ca = self.decide_tls_ca.or(config.decide_tls_ca.take());
        config.decide_tls_cert = self.decide_tls_cert.or(config.decide_tls_cert.take());
        config.decide_tls_key = self.decide_tls_key.or(config.decide_tls_key.take());
        config.decide_token = std::env::var("ZTINFRA_PEP_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        config.policies = self.policies.or(config.policies.take());
        config.data_dir = self.data_dir.or(config.data_dir.take());
        config.store = self.store.or(config.store.take());
        if let Some(mode) = self.tools_list {
            config.tools_list = match mode {
                ListMode::Hide => ToolsList::Hide,
                ListMode::Annotate => ToolsList::Annotate,
            };
        }
        config.decide_resource_reads |= self.decide_resource_reads;
        Ok(config)
    }
}

pub fn run(args: GatewayArgs) -> ExitCode {
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let token = std::env::var("ZTINFRA_SESSION_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let plan = std::env::var("ZTINFRA_PLAN").ok().filter(|p| !p.is_empty());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(zt_mcp::run(
        config,
        token,
        plan,
        zt_server::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", zt_server::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
