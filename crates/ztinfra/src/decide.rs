//! `ztinfra decide`: ask a running service, for scripts. Exit code 0 on allow, 1 on deny, 2 on
//! any error (which a guarded step must treat as deny), 3 when the action waits for a person's
//! approval (not an allow either: ask again with `--approval <id>` once it is approved).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The acting agent.
    #[arg(long)]
    actor: String,
    /// The dotted action name, such as aws.ec2.terminate_instances.
    #[arg(long)]
    action: String,
    /// The resource acted on.
    #[arg(long)]
    resource: String,
    /// The context, as a JSON object.
    #[arg(long)]
    context: Option<String>,
    /// The service's base URL.
    #[arg(long, env = "ZTINFRA_SERVER", default_value = "http://127.0.0.1:8181")]
    server: String,
    /// The credential to present (`Authorization: Bearer`): an enforcement point's token, for
    /// a service whose callers are authenticated.
    #[arg(long, env = "ZTINFRA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding that credential (instead of `--token`/ZTINFRA_TOKEN, which other users
    /// of the machine may see in the process list).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<std::path::PathBuf>,
    /// Present this approval (the id an earlier `approval_required` answer named).
    #[arg(long)]
    approval: Option<String>,
    /// Print the service's JSON answer instead of a summary.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    #[command(flatten)]
    tls: crate::client::TlsArgs,
}

const ALLOW: u8 = 0;
const DENY: u8 = 1;
const ERROR: u8 = 2;
const APPROVAL_REQUIRED: u8 = 3;

pub fn run(args: DecideArgs) -> ExitCode {
    match ask(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(ERROR)
        }
    }
}

fn ask(args: &DecideArgs) -> Result<u8, String> {
    let context: Value = match &args.context {
        Some(text) => {
            serde_json::from_str(text).map_err(|e| format!("`--context` is not JSON: {e}"))?
        }
        None => json!({}),
    };
    if !context.is_object() {
        return Err("`--context` must be a JSON object".into());
    }
    let body = json!({
        "actor": args.actor,
        "action": args.action,
        "resource": args.resource,
        "context": context,
    });
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => Some(token.trim().to_owned()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let url = format!("{}/v1/decide", args.server.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (status, text) = runtime.block_on(async {
        let client = args
            .tls
            .client(&args.server, Duration::from_secs(args.timeout))?;
        let mut request = client.post(&url).json(&body);
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        if let Some(approval) = &args.approval {
            request = request.header(zt_server::approvals::APPROVAL_HEADER, approval.trim());
        }
        let response = request
            .send()
            .await
            .map_err(|e| {
                let cause = zt_server::error_chain(&e);
                if e.is_connect() && cause.contains("refused") {
                    format!("cannot reach {url}: the connection was refused (is `ztinfra serve` running there?)")
                } else if e.is_timeout() {
                    format!("cannot reach {url}: no answer within {} s", args.timeout)
                } else {
                    format!("cannot reach {url}: {cause}")
                }
            })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((status, text))
    })?;
    let answer: Value = serde_json::from_str(&text)
        .map_err(|_| format!("{url} answered {status} with a body that is not JSON"))?;
    if !status.is_success() {
        let detail = text_field(&answer, "detail").unwrap_or("no detail");
        return Err(format!("{url} answered {status}: {detail}"));
    }
    let decision = text_field(&answer, "decision").unwrap_or("");
    if args.json {
        println!("{answer}");
    } else {
        let reasons: Vec<&str> = answer
            .get("reasons")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| text_field(r, "message"))
            .collect();
        println!(
            "{decision}: {} (decision {})",
            reasons.join("; "),
            text_field(&answer, "decision_id").unwrap_or("?")
        );
    }
    match decision {
        "allow" => Ok(ALLOW),
        "deny" => Ok(DENY),
        "approval_required" => {
            if let Some(approval) = answer.get("approval") {
                eprintln!(
                    "waits for approval {} ({} of group `{}`); ask again with --approval {} once it is approved",
                    text_field(approval, "id").unwrap_or("?"),
                    approval.get("needed").and_then(Value::as_i64).unwrap_or(1),
                    text_field(approval, "group").unwrap_or("?"),
                    text_field(approval, "id").unwrap_or("?"),
                );
            }
            Ok(APPROVAL_REQUIRED)
        }
        other => Err(format!("unexpected decision `{other}`")),
    }
}

fn text_field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}
