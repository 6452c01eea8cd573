//! The HTTP client of the commands that talk to a running service (`decide`, `agents`,
//! `approvals`), over TLS when the service's URL is `https://`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// How to reach a service that speaks TLS (`serve --tls-cert`).
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// The CA certificate(s) that signed the service's TLS certificate (PEM), for an
    /// `https://` server (`ztinfra ca show` prints the service's own).
    #[arg(long, env = "ZTINFRA_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate to present (PEM: an X.509-SVID the service maps to a caller), for
    /// mutual TLS.
    #[arg(long, env = "ZTINFRA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM, mode 0600).
    #[arg(long, env = "ZTINFRA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// A client for `server`, with `timeout`.
    pub fn client(&self, server: &str, timeout: Duration) -> Result<reqwest::Client, String> {
        let builder = reqwest::Client::builder().timeout(timeout);
        let builder = match (&self.tls_ca, server.starts_with("https://")) {
            (Some(ca), _) => {
                let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
                let config = zt_server::workloads::client_tls(ca, identity)
                    .map_err(|e| zt_server::error_chain(&e))?;
                builder.tls_backend_preconfigured(config)
            }
            (None, true) => {
                return Err(format!(
                    "`{server}` is https: give the CA that signed its certificate with `--tls-ca` (or ZTINFRA_TLS_CA)"
                ));
            }
            (None, false) => builder,
        };
        builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))
    }
}

/// Calls `server` + `path` with a bearer `token` and an optional JSON body, waiting at most
/// `timeout`; the JSON answer, or an error naming the problem the service answered with.
pub async fn call_json(
    tls: &TlsArgs,
    server: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context as _;
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let client = tls
        .client(server, timeout)
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut request = client.request(method, &url).bearer_auth(token.trim());
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach {url} (is `ztinfra serve` running there?)"))?;
    let status = response.status();
    let answer: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let detail = answer
            .get("detail")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("no detail");
        anyhow::bail!("{url} answered {status}: {detail}");
    }
    Ok(answer)
}
