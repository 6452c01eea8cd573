//! `ztinfra approvals`: list, show, approve and deny approvals through a running service, with
//! an approver's (or, to read, an auditor's) credential.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// The service and the person's credential.
#[derive(Debug, Args)]
pub struct Approver {
    /// The service's base URL.
    #[arg(long, env = "ZTINFRA_SERVER", default_value = "http://127.0.0.1:8181")]
    server: String,
    /// A file holding your approver (or auditor) credential.
    #[arg(long, env = "ZTINFRA_TOKEN_FILE")]
    token_file: PathBuf,
    #[command(flatten)]
    tls: crate::client::TlsArgs,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List approvals, newest first.
    List {
        /// pending, approved, denied, expired or all.
        #[arg(long, default_value = "pending")]
        status: String,
        #[command(flatten)]
        service: Approver,
    },
    /// Show one approval: the request as sent, who asked, who answered.
    Show {
        id: String,
        #[command(flatten)]
        service: Approver,
    },
    /// Approve an approval (you must be in its group and no party to the request).
    Approve {
        id: String,
        /// Why (required, recorded as evidence).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        service: Approver,
    },
    /// Deny an approval: the request is not allowed.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        service: Approver,
    },
}

pub fn run(command: ApprovalsCommand) -> ExitCode {
    crate::evidence::run_command(execute(command))
}

impl Approver {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let token = std::fs::read_to_string(&self.token_file).with_context(|| {
            format!("cannot read the credential `{}`", self.token_file.display())
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

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

/// One approval, for a person to read before answering it.
fn describe(approval: &Value) -> String {
    let request = approval.get("request").cloned().unwrap_or(Value::Null);
    let mut out = format!(
        "approval {}\n  status:       {} ({} of {} approvals, group `{}`)\n  agent:        {}\n  session:      {}\n  on behalf of: {}\n  asked by:     policy `{}`\n  request:      {}\n",
        text(approval, "id"),
        text(approval, "status"),
        approval
            .get("approvals")
            .and_then(Value::as_i64)
            .unwrap_or(0),
        approval.get("needed").and_then(Value::as_i64).unwrap_or(0),
        text(approval, "group"),
        text(approval, "actor"),
        text(approval, "session"),
        text(approval, "on_behalf_of"),
        text(approval, "policy"),
        serde_json::to_string_pretty(&request)
            .unwrap_or_default()
            .replace('\n', "\n                "),
    );
    for answer in approval
        .get("answers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "  answer:       {} by {}: {}\n",
            text(answer, "verdict"),
            text(answer, "approver"),
            text(answer, "reason")
        ));
    }
    out
}

async fn execute(command: ApprovalsCommand) -> anyhow::Result<()> {
    match command {
        ApprovalsCommand::List { status, service } => {
            let answer = service
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/approvals?status={status}"),
                    None,
                )
                .await?;
            println!(
                "{:<36} {:<8} {:<20} {:<28} {:<20} GROUP",
                "ID", "STATUS", "AGENT", "ACTION", "RESOURCE"
            );
            for approval in answer
                .get("approvals")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let request = approval.get("request").cloned().unwrap_or(Value::Null);
                let field = |key: &str| {
                    request
                        .get(key)
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .unwrap_or_default()
                };
                println!(
                    "{:<36} {:<8} {:<20} {:<28} {:<20} {}",
                    text(approval, "id"),
                    text(approval, "status"),
                    text(approval, "actor"),
                    field("action"),
                    field("resource"),
                    text(approval, "group")
                );
            }
        }
        ApprovalsCommand::Show { id, service } => {
            let answer = service
                .call(reqwest::Method::GET, &format!("/v1/approvals/{id}"), None)
                .await?;
            print!("{}", describe(&answer));
        }
        ApprovalsCommand::Approve {
            id,
            reason,
            service,
        } => {
            let answer = service
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/approvals/{id}/approve"),
                    Some(json!({"reason": reason})),
                )
                .await?;
            eprintln!(
                "approval {id}: approved by you; it is {} now",
                text(&answer, "status")
            );
        }
        ApprovalsCommand::Deny {
            id,
            reason,
            service,
        } => {
            service
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/approvals/{id}/deny"),
                    Some(json!({"reason": reason})),
                )
                .await?;
            eprintln!("approval {id}: denied");
        }
    }
    Ok(())
}
