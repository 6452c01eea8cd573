//! `ztinfra credentials`: operator and enforcement-point credentials, written to the store
//! directly (a running service sees a change within a second, `zt_server::auth::FRESH`).

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use zt_identity::{CredentialName, Role};
use zt_store::{Revoked, StoreError};

use crate::evidence::StoreArgs;

#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Make a credential and print its token, once: the store keeps only its SHA-256 digest.
    Add {
        /// Its name: 1 to 64 letters, digits, `.`, `_` or `-`.
        name: String,
        /// admin (policies, entities; reads evidence), broker (starts agent sessions), auditor
        /// (reads evidence), approver (reserved), or pep (an enforcement point: asks for
        /// decisions).
        #[arg(long)]
        role: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List credentials: name, role, when made, and when revoked.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a credential: the service refuses it from then on (within a second).
    Revoke {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn run(command: CredentialsCommand) -> ExitCode {
    crate::evidence::run_command(execute(command))
}

async fn execute(command: CredentialsCommand) -> anyhow::Result<()> {
    match command {
        CredentialsCommand::Add { name, role, store } => {
            let name = CredentialName::parse(&name).map_err(anyhow::Error::msg)?;
            let role: Role = role.parse().map_err(anyhow::Error::msg)?;
            let opened = store.open_or(true).await?;
            let secret = zt_server::auth::new_secret();
            match opened
                .add_credential(&name, role, secret.digest(), zt_server::now_ms())
                .await
            {
                Err(StoreError::Exists(_)) => {
                    bail!(
                        "a credential named `{name}` exists already (revoked ones keep their names); choose another name"
                    )
                }
                other => other?,
            }
            opened.close().await;
            eprintln!(
                "credential `{name}` ({role}) made; its token follows, shown this once: keep it secret"
            );
            println!("{}", secret.token());
            Ok(())
        }
        CredentialsCommand::List { store } => {
            let opened = store.open().await?;
            let list = opened.credentials().await?;
            opened.close().await;
            println!("{:<24} {:<9} {:<26} REVOKED", "NAME", "ROLE", "CREATED");
            for credential in list {
                println!(
                    "{:<24} {:<9} {:<26} {}",
                    credential.record.name.as_str(),
                    credential.record.role.as_str(),
                    time(credential.created_at_ms),
                    credential
                        .revoked_at_ms
                        .map(time)
                        .unwrap_or_else(|| "-".into())
                );
            }
            Ok(())
        }
        CredentialsCommand::Revoke { name, store } => {
            let name = CredentialName::parse(&name).map_err(anyhow::Error::msg)?;
            let opened = store.open().await?;
            let outcome = opened.revoke_credential(&name, zt_server::now_ms()).await?;
            opened.close().await;
            match outcome {
                Revoked::Now => eprintln!("credential `{name}` revoked"),
                Revoked::Already => eprintln!("credential `{name}` was revoked already"),
                Revoked::NoSuchCredential => bail!("there is no credential named `{name}`"),
            }
            Ok(())
        }
    }
}

pub(crate) fn time(ms: i64) -> String {
    zt_server::reference::rfc3339_utc(ms)
}
