//! `ztinfra agents`: register, list and disable agents, quarantine and release them (or one
//! session), and show what the service observed of one, through a running service's API (so
//! that disabling and quarantine hold on the node at once), with an admin credential.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// The service and the credential to reach it with.
#[derive(Debug, Args)]
pub struct Service {
    /// The service's base URL.
    #[arg(long, env = "ZTINFRA_SERVER", default_value = "http://127.0.0.1:8181")]
    server: String,
    /// A file holding an admin credential [default: <data-dir>/admin.token].
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The service's data directory, where the first start wrote `admin.token`.
    #[arg(long, env = "ZTINFRA_DATA_DIR", default_value = zt_server::defaults::DATA_DIR)]
    data_dir: PathBuf,
    #[command(flatten)]
    tls: crate::client::TlsArgs,
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Register an agent.
    Add {
        name: String,
        /// The person or team responsible for it.
        #[arg(long)]
        owner: String,
        #[arg(long, default_value = "")]
        description: String,
        /// A model its sessions may run on (repeat; none: any).
        #[arg(long = "allowed-model")]
        allowed_models: Vec<String>,
        /// A tool manifest digest (`sha256:<hex>`) its sessions may run with (repeat; none: any).
        #[arg(long = "allowed-tool-manifest")]
        allowed_tool_manifests: Vec<String>,
        #[command(flatten)]
        service: Service,
    },
    /// List agents.
    List {
        #[command(flatten)]
        service: Service,
    },
    /// Disable an agent: no new sessions, and its sessions (and theirs) revoked.
    Disable {
        name: String,
        #[command(flatten)]
        service: Service,
    },
    /// Quarantine an agent, or one session (and the sessions below it): every decision for it
    /// is denied until it is released. Recorded as evidence; on every replica at once.
    Quarantine {
        #[command(flatten)]
        target: Target,
        /// Why (recorded, and given in every deny).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        service: Service,
    },
    /// Release an agent or a session from quarantine.
    Release {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        service: Service,
    },
    /// List the quarantines in force.
    Quarantines {
        #[command(flatten)]
        service: Service,
    },
    /// Show what the service observed of an agent: rate against baseline, recent denies,
    /// known actions (the signals policies see as `context.behaviour`).
    Behaviour {
        name: String,
        #[command(flatten)]
        service: Service,
    },
}

/// An agent by name, or a session by id.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// The agent.
    name: Option<String>,
    /// A session id instead of an agent.
    #[arg(long)]
    session: Option<String>,
}

impl Target {
    /// The API path of its quarantine, and how to name it.
    fn quarantine_path(&self) -> (String, String) {
        match (&self.name, &self.session) {
            (_, Some(id)) => (
                format!("/v1/sessions/{id}/quarantine"),
                format!("session `{id}`"),
            ),
            (Some(name), None) => (
                format!("/v1/agents/{name}/quarantine"),
                format!("agent `{name}`"),
            ),
            (None, None) => (String::new(), String::new()),
        }
    }
}

pub fn run(command: AgentsCommand) -> ExitCode {
    crate::evidence::run_command(execute(command))
}

impl Service {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let file = self
            .token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(zt_server::auth::ADMIN_TOKEN_FILE));
        let token = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "cannot read the admin credential `{}` (use --token-file)",
                file.display()
            )
        })?;
        crate::client::call_json(
            &self.tls,
            &self.server,
            &token,
            method,
            path,
            body,
            Duration::from_secs(10),
        )
        .await
    }
}

async fn execute(command: AgentsCommand) -> anyhow::Result<()> {
    match command {
        AgentsCommand::Add {
            name,
            owner,
            description,
            allowed_models,
            allowed_tool_manifests,
            service,
        } => {
            let nonempty = |list: Vec<String>| (!list.is_empty()).then_some(list);
            let body = json!({
                "name": name,
                "owner": owner,
                "description": description,
                "allowed_models": nonempty(allowed_models),
                "allowed_tool_manifests": nonempty(allowed_tool_manifests),
            });
            service
                .call(reqwest::Method::POST, "/v1/agents", Some(body))
                .await?;
            eprintln!("agent `{name}` registered");
        }
        AgentsCommand::List { service } => {
            let answer = service
                .call(reqwest::Method::GET, "/v1/agents", None)
                .await?;
            println!("{:<24} {:<16} {:<9} DESCRIPTION", "NAME", "OWNER", "STATE");
            for agent in answer
                .get("agents")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let text = |key: &str| {
                    agent
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                };
                let state = if agent.get("disabled") == Some(&Value::Bool(true)) {
                    "disabled"
                } else {
                    "enabled"
                };
                println!(
                    "{:<24} {:<16} {state:<9} {}",
                    text("name"),
                    text("owner"),
                    text("description")
                );
            }
        }
        AgentsCommand::Disable { name, service } => {
            let answer = service
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/agents/{name}/disable"),
                    Some(json!({})),
                )
                .await?;
            let revoked = answer
                .get("revoked")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            eprintln!("agent `{name}` disabled; {revoked} session(s) revoked");
        }
        AgentsCommand::Quarantine {
            target,
            reason,
            service,
        } => {
            let (path, named) = target.quarantine_path();
            let answer = service
                .call(
                    reqwest::Method::POST,
                    &path,
                    Some(json!({"reason": reason})),
                )
                .await?;
            let record = answer
                .get("decision_id")
                .and_then(Value::as_str)
                .unwrap_or("");
            eprintln!("{named} quarantined (record {record})");
        }
        AgentsCommand::Release { target, service } => {
            let (path, named) = target.quarantine_path();
            service.call(reqwest::Method::DELETE, &path, None).await?;
            eprintln!("{named} released");
        }
        AgentsCommand::Quarantines { service } => {
            let answer = service
                .call(reqwest::Method::GET, "/v1/quarantines", None)
                .await?;
            println!("{:<48} {:<24} REASON", "TARGET", "BY");
            for q in answer
                .get("quarantines")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let text = |key: &str| q.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
                println!(
                    "{:<48} {:<24} {}",
                    text("target"),
                    text("by"),
                    text("reason")
                );
            }
        }
        AgentsCommand::Behaviour { name, service } => {
            let answer = service
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/agents/{name}/behaviour"),
                    None,
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
        }
    }
    Ok(())
}
