//! Where the gateway's decisions are made: in process, with the same engine, policies and
//! evidence log as `ztinfra serve`, or by a remote ZT-Infra service over HTTP.
//!
//! Architecture invariant: a decision that cannot be obtained is a deny. Every failure to reach
//! or understand the decision service becomes [`Outcome::Denied`] with an error reason.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use zt_core::{Decision, DecisionRequest, FieldError, Reason, ReasonKind};
use zt_server::api::{DecisionResponse, PossibleActions, PossibleQuery};

/// The decision point behind the gateway.
#[derive(Debug, Clone)]
pub enum Decider {
    /// The embedded service: policies, engine and evidence log in this process.
    InProcess(Arc<zt_server::App>),
    /// A ZT-Infra service, asked at `POST <base>/v1/decide`.
    Remote {
        base: String,
        client: reqwest::Client,
    },
}

/// The answer to one decision request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A decision, with its id and evidence when the service gave them.
    Decided(DecisionResponse),
    /// The request itself is invalid (bad tool name, oversize argument): the call is malformed.
    Invalid(Vec<FieldError>),
}

/// How long a remote decision may take before the call is denied.
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(5);

impl Decider {
    /// A remote decider for the service at `base` (`http://host:port`, or `https://` with
    /// `tls`), presenting `token` (the gateway's `pep` credential) with every request.
    pub fn remote(
        base: &str,
        token: Option<&str>,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, String> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| "the decision service credential is not a valid token".to_owned())?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(REMOTE_TIMEOUT);
        if let Some(tls) = tls {
            builder = builder.tls_backend_preconfigured(tls);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self::Remote {
            base: base.trim_end_matches('/').to_owned(),
            client,
        })
    }

    /// Decides `request`, for the agent session of `session_token` if there is one, as the
    /// next step of `plan` if there is one, presenting `approval` if there is one. Never fails
    /// open: what cannot be decided is denied.
    pub async fn decide(
        &self,
        request: DecisionRequest,
        session_token: Option<&str>,
        plan: Option<&str>,
        approval: Option<&str>,
    ) -> Outcome {
        match self {
            Self::InProcess(app) => {
                if let Some(token) = session_token
                    && let Err(reason) = app.session_agent(token)
                {
                    return Outcome::Decided(denied(format!(
                        "the agent session token is refused: {reason}; denied"
                    )));
                }
                match app
                    .decide(request, "mcp", session_token, plan, approval)
                    .await
                {
                    Ok(response) => Outcome::Decided(response),
                    Err(errors) => Outcome::Invalid(errors),
                }
            }
            Self::Remote { base, client } => {
                remote(client, base, &request, session_token, plan, approval).await
            }
        }
    }

    /// The agent of an agent session's access token, verified by the decision service (in
    /// process, or by RFC 7662 introspection with the gateway's credential), or why not.
    pub async fn session_agent(&self, token: &str) -> Result<String, String> {
        match self {
            Self::InProcess(app) => app.session_agent(token),
            Self::Remote { base, client } => {
                let url = format!("{base}/oauth2/introspect");
                let response = client
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!("token={token}"))
                    .send()
                    .await
                    .map_err(|e| zt_server::error_chain(&e))?;
                if !response.status().is_success() {
                    return Err(format!(
                        "the decision service answered HTTP {} to introspection",
                        response.status()
                    ));
                }
                let answer: Value = response.json().await.map_err(|e| e.to_string())?;
                match (answer.get("active"), answer.get("client_id")) {
                    (Some(Value::Bool(true)), Some(Value::String(agent))) => Ok(agent.clone()),
                    _ => Err(
                        "the token is not active (expired, revoked or not this service's)".into(),
                    ),
                }
            }
        }
    }

    /// The actions among `actions` that the policies could ever allow `actor` to take. Fails
    /// closed: when the answer cannot be obtained, none could.
    pub async fn possible(
        &self,
        actor: &str,
        actions: Vec<String>,
        session_token: Option<&str>,
    ) -> Vec<String> {
        let query = PossibleQuery {
            actor: actor.to_owned(),
            actions,
        };
        let answer = match self {
            Self::InProcess(app) => app
                .possible_actions(query)
                .map_err(|errors| crate::gateway::joined(&errors)),
            Self::Remote { base, client } => {
                let url = format!("{base}/v1/actions/possible");
                let mut asked = client.post(&url).json(&query);
                if let Some(token) = session_token {
                    asked = asked.header(zt_server::auth::AGENT_TOKEN_HEADER, token);
                }
                match asked.send().await {
                    Ok(response) if response.status().is_success() => response
                        .json::<PossibleActions>()
                        .await
                        .map_err(|e| format!("its answer is not a list of actions: {e}")),
                    Ok(response) => Err(format!("it answered HTTP {}", response.status())),
                    Err(e) => Err(zt_server::error_chain(&e)),
                }
            }
        };
        answer.map(|possible| possible.actions).unwrap_or_else(|e| {
            tracing::warn!(actor, error = %e, "cannot tell which tools could be allowed; listing none");
            Vec::new()
        })
    }
}

async fn remote(
    client: &reqwest::Client,
    base: &str,
    request: &DecisionRequest,
    session_token: Option<&str>,
    plan: Option<&str>,
    approval: Option<&str>,
) -> Outcome {
    let url = format!("{base}/v1/decide");
    let deny = |why: String| {
        tracing::warn!(url = %url, error = %why, "no decision from the decision service; denied");
        Outcome::Decided(denied(format!(
            "no decision could be obtained from the decision service: {why}; denied (fail closed)"
        )))
    };
    let mut asked = client.post(&url).json(request);
    if let Some(token) = session_token {
        asked = asked.header(zt_server::auth::AGENT_TOKEN_HEADER, token);
    }
    if let Some(plan) = plan {
        asked = asked.header(zt_server::plans::STEP_HEADER, format!("{plan}/next"));
    }
    if let Some(approval) = approval {
        asked = asked.header(zt_server::approvals::APPROVAL_HEADER, approval);
    }
    let response = match asked.send().await {
        Ok(response) => response,
        Err(e) => return deny(zt_server::error_chain(&e)),
    };
    let status = response.status();
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(e) => return deny(zt_server::error_chain(&e)),
    };
    if status.is_success() {
        return match serde_json::from_slice::<DecisionResponse>(&body) {
            Ok(decided) => Outcome::Decided(decided),
            Err(e) => deny(format!("its answer is not a decision: {e}")),
        };
    }
    if matches!(status.as_u16(), 401 | 403)
        && let Ok(problem) = serde_json::from_slice::<Value>(&body)
    {
        let detail = problem.get("detail").and_then(Value::as_str).unwrap_or("");
        return deny(format!(
            "it refused the gateway's credential or the agent's session (HTTP {status}: {detail})"
        ));
    }
    if status == reqwest::StatusCode::BAD_REQUEST
        && let Ok(problem) = serde_json::from_slice::<Value>(&body)
    {
        let errors: Vec<FieldError> = problem
            .get("errors")
            .and_then(|e| serde_json::from_value(e.clone()).ok())
            .unwrap_or_default();
        if !errors.is_empty() {
            return Outcome::Invalid(errors);
        }
    }
    deny(format!("it answered HTTP {status}"))
}

/// A deny made by the gateway itself, without a decision id or evidence.
pub fn denied(message: String) -> DecisionResponse {
    DecisionResponse {
        decision: Decision::Deny,
        decision_id: String::new(),
        reasons: vec![Reason {
            approval: None,
            quarantine: None,
            kind: ReasonKind::Error,
            policy: None,
            message,
        }],
        policy_version: String::new(),
        approval: None,
        evidence: None,
        time_ms: 0,
    }
}

/// The decision as the client sees it in `structuredContent`.
/// With `approval_required`, `approval` names the approval the call waits for.
pub fn to_json(response: &DecisionResponse) -> Value {
    let mut value = json!({
        "decision": response.decision,
        "decision_id": (!response.decision_id.is_empty()).then_some(&response.decision_id),
        "reasons": response.reasons,
        "policy_version": (!response.policy_version.is_empty()).then_some(&response.policy_version),
        "evidence": response.evidence,
    });
    if let (Some(ticket), Some(members)) = (&response.approval, value.as_object_mut()) {
        members.insert("approval".into(), json!(ticket));
    }
    value
}
