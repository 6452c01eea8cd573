//! Human approvals: the third outcome of a decision, the people who answer it, and its single
//! use.
//!
//! A permit marked `@approval("<group>")` permits only with an approval. When the engine says
//! `approval_required`, [`ask`] binds an approval to the SHA-256 of the exact request (as the
//! evidence record holds it: verified actor, action, resource, and the context with the
//! session the service bound into it) and to the requesting session, and stores it pending
//! (asking again while it is open names the same one). Approvers of the group answer it
//! (`/v1/approvals/{id}/approve`, `/deny`); the agent repeats the request with the
//! `ZT-Approval: <id>` header: [`ask`] checks, reading only, that the approval was given for
//! exactly this request, session and a policy that still asks for it, and [`mark`] uses it,
//! once, after every other bound held (one conditional statement in the store). The request,
//! each answer and the use are evidence records that carry the approval id.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest as _;
use utoipa::ToSchema;
use zt_core::{Decision, Reason, ReasonKind, ValidRequest, Verdict};
use zt_store::{Answered, ApprovalAnswer, ApprovalRefusal, StoredApproval};

use crate::api::{AppState, Origin};
use crate::auth::{ApprovalReader, Approver};
use crate::body::JsonBody;
use crate::problem::Problem;

/// The header that presents an approval when a request is repeated.
pub const APPROVAL_HEADER: &str = "zt-approval";

/// The approver group that means "the person the session acts for".
pub const ON_BEHALF_OF: &str = "on_behalf_of";

/// The longest a status request waits for an answer.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// `[approvals]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSettings {
    /// The approver groups by name, as policies name them in `@approval`.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupSettings>,
    /// How long a console sign-in lasts (default 8 hours).
    #[serde(default = "default_console_ttl")]
    pub console_session_ttl_secs: u64,
}

fn default_console_ttl() -> u64 {
    8 * 3600
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        Self {
            groups: BTreeMap::new(),
            console_session_ttl_secs: default_console_ttl(),
        }
    }
}

impl ApprovalSettings {
    /// Group names as `@approval` takes them (and not `on_behalf_of`, which is the session's
    /// person), members named as credentials are.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=7 * 24 * 3600).contains(&self.console_session_ttl_secs) {
            return Err("`console_session_ttl_secs` is from 1 s to 7 days".into());
        }
        for (name, group) in &self.groups {
            let well_formed = (1..=64).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !well_formed || name == ON_BEHALF_OF {
                return Err(format!(
                    "`{}` is not a group name: 1 to 64 letters, digits, `.`, `_` or `-`, and not `{ON_BEHALF_OF}`",
                    name.escape_debug()
                ));
            }
            if group.members.is_empty() {
                return Err(format!("group `{name}` has no members"));
            }
            for member in &group.members {
                zt_identity::CredentialName::parse(member)
                    .map_err(|e| format!("group `{name}`: {e}"))?;
            }
            match (&group.webhook, &group.webhook_secret_file) {
                (None, None) => {}
                (Some(url), Some(_)) => {
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        return Err(format!(
                            "group `{name}`: `webhook` is an http:// or https:// URL"
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "group `{name}`: `webhook` and `webhook_secret_file` go together"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One approver group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSettings {
    /// The names of the approver credentials that answer for it.
    pub members: Vec<String>,
    /// Where each new approval of the group is posted ([`crate::webhooks`]).
    #[serde(default)]
    pub webhook: Option<String>,
    /// The file holding the secret that signs those posts (at least 32 bytes).
    #[serde(default)]
    pub webhook_secret_file: Option<std::path::PathBuf>,
}

/// What a decision that waits for an approval answers with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApprovalTicket {
    pub id: String,
    /// `pending`, or `approved` when it was given but not presented yet.
    pub status: String,
    /// The approver group, and how many of it must approve.
    pub group: String,
    pub needed: i64,
    /// Seconds since the Unix epoch.
    pub expires_at: i64,
    /// Where its status is read (`?wait=30s` to wait for it).
    pub status_url: String,
}

/// What [`ask`] made of a decision that needs an approval.
pub(crate) struct Asked {
    pub verdict: Verdict,
    pub ticket: Option<Box<ApprovalTicket>>,
    /// An approval presented and found good for this request: [`mark`] uses it.
    pub using: Option<Using>,
}

/// An approval to use once every other bound has held.
pub(crate) struct Using {
    id: String,
    digest: String,
    session: String,
}

/// `sha256:<hex>` of what an approval is bound to: the request as recorded, and its session.
pub fn digest(request: &ValidRequest, session: &str) -> String {
    // What the service observed (`context.behaviour`) changes from one try to the next: the
    // request is what the agent asked.
    let mut asked = request.record().clone();
    if let Some(Value::Object(context)) = asked.get_mut("context") {
        context.remove(crate::behaviour::CONTEXT_MEMBER);
    }
    sha256_of(&json!({"request": asked, "session": session}))
}

/// `sha256:<hex>` of a value's RFC 8785 form.
fn sha256_of(value: &Value) -> String {
    let text = zt_evidence::canonical::to_string(value);
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    )
}

fn deny(verdict: &Verdict, message: String, kind: ReasonKind, approval: Option<&str>) -> Verdict {
    Verdict {
        decision: Decision::Deny,
        reasons: vec![Reason {
            kind,
            policy: None,
            message,
            approval: approval.map(str::to_owned),
            quarantine: None,
        }],
        policy_version: verdict.policy_version.clone(),
    }
}

fn status_url(id: &str) -> String {
    format!("/v1/approvals/{id}")
}

/// `sha256:<hex>` of what a plan step's approval is bound to: the step (whose capability
/// binds the action, resource, arguments and executor already).
pub fn step_digest(plan: &str, index: usize) -> String {
    sha256_of(&json!({"plan": plan, "step": index}))
}

/// What an approval of this decision is bound to: a plan step and its executor (when the
/// request presents a step, or is a step of a plan being submitted), or else the exact
/// request and its session. `true` for a step, whose approval is used without being
/// presented: the step capability is the request.
fn binding(origin: &Origin, index: usize, request: &ValidRequest) -> (String, String, bool) {
    if let Some((step, session)) = &origin.step {
        return (
            step_digest(&step.plan, step.index),
            session.clone().unwrap_or_default(),
            true,
        );
    }
    if let Some(submitting) = &origin.submitting {
        let (plan, executors) = &**submitting;
        let executor = executors.get(index).cloned().unwrap_or_default();
        return (step_digest(plan, index), executor, true);
    }
    let session = origin
        .session
        .as_ref()
        .map(|c| c.session.session_id.clone())
        .unwrap_or_default();
    (digest(request, &session), session, false)
}

/// Takes a verdict of `approval_required`: with an approval presented (or, for a plan step,
/// approved for the step), allows it if the approval holds for exactly this request (to be
/// used by [`mark`]); without one, names the approval it waits for, asking for a new one
/// unless one is open for the same request.
pub(crate) async fn ask(
    app: &AppState,
    origin: &Origin,
    (index, request): (usize, &ValidRequest),
    verdict: Verdict,
    decision_id: &str,
    now_ms: i64,
) -> Asked {
    let (digest, session, step) = binding(origin, index, request);
    let asking: Vec<&str> = verdict
        .reasons
        .iter()
        .filter(|r| r.kind == ReasonKind::Approval)
        .filter_map(|r| r.policy.as_deref())
        .collect();
    let refuse = |message: String, approval: Option<&str>| Asked {
        verdict: deny(&verdict, message, ReasonKind::Approval, approval),
        ticket: None,
        using: None,
    };
    let store_failed = |e: zt_store::StoreError| {
        tracing::error!(error = %crate::error_chain(&e), "approvals could not be read or written; denied");
        Asked {
            verdict: deny(
                &verdict,
                "the approval could not be checked or asked for (the store does not answer); denied (fail closed)".into(),
                ReasonKind::Error,
                None,
            ),
            ticket: None,
            using: None,
        }
    };

    // A plan step presents the approval asked for it by being the step: once answered (or
    // used, or expired), that approval decides; while pending, the step waits for it.
    let presented = match &origin.approval {
        Some(id) => Some(id.clone()),
        None if step => match app.store.latest_approval(&digest, &session).await {
            Ok(Some(latest)) if latest.status_at(now_ms) != "pending" => Some(latest.id),
            Ok(_) => None,
            Err(e) => return store_failed(e),
        },
        None => None,
    };
    if let Some(id) = &presented {
        let found = match app.store.approval(id).await {
            Ok(found) => found,
            Err(e) => return store_failed(e),
        };
        let Some((approval, answers)) = found else {
            return refuse(format!("approval `{id}` is not known"), None);
        };
        let refusal = approval.refusal(&digest, &session, now_ms);
        match refusal {
            // Not answered yet: the request still waits for it (named again below).
            Some(ApprovalRefusal::Pending) => {}
            Some(refusal) => return refuse(refused(id, &refusal), Some(id)),
            None if !asking.contains(&approval.policy.as_str()) => {
                return refuse(
                    format!(
                        "approval `{id}` was given for policy `{}`, which does not ask for an approval of this request now",
                        approval.policy
                    ),
                    Some(id),
                );
            }
            None => {
                let by: Vec<&str> = answers
                    .iter()
                    .filter(|a| a.verdict == "approve")
                    .map(|a| a.approver.as_str())
                    .collect();
                return Asked {
                    verdict: Verdict {
                        decision: Decision::Allow,
                        reasons: vec![Reason {
                            kind: ReasonKind::Approval,
                            policy: Some(approval.policy.clone()),
                            message: format!("approved by {} (approval `{id}`)", by.join(", ")),
                            approval: Some(id.clone()),
                            quarantine: None,
                        }],
                        policy_version: verdict.policy_version.clone(),
                    },
                    ticket: None,
                    using: Some(Using {
                        id: id.clone(),
                        digest,
                        session,
                    }),
                };
            }
        }
    }

    let open = match app.store.open_approval(&digest, &session, now_ms).await {
        Ok(open) => open.filter(|a| asking.contains(&a.policy.as_str())),
        Err(e) => return store_failed(e),
    };
    let approval = match open {
        Some(open) => open,
        None => {
            let Some(policy) = asking.first() else {
                return refuse("no policy names the approval asked for".into(), None);
            };
            let rule = app
                .policies
                .with_engine(|e| e.policies().approval_rule(policy).cloned());
            let Some(rule) = rule else {
                return refuse(
                    format!(
                        "policy `{policy}` no longer asks for an approval; denied (fail closed)"
                    ),
                    None,
                );
            };
            let claims = origin.session.as_deref();
            let on_behalf_of = claims
                .and_then(|c| c.session.on_behalf_of.clone())
                .unwrap_or_default();
            if rule.group == ON_BEHALF_OF && on_behalf_of.is_empty() {
                return refuse(
                    format!(
                        "policy `{policy}` asks the person the session acts for, and it acts for nobody"
                    ),
                    None,
                );
            }
            let approval = StoredApproval {
                id: uuid::Uuid::now_v7().to_string(),
                digest,
                session,
                actor: request.actor().to_owned(),
                on_behalf_of,
                policy: (*policy).to_owned(),
                group: rule.group.clone(),
                needed: i64::from(rule.needed),
                excluded: serde_json::to_string(&excluded(request, claims, &rule))
                    .unwrap_or_default(),
                request: request.record().to_string(),
                note: origin.note.clone().unwrap_or_default(),
                decision_id: decision_id.to_owned(),
                created_at_ms: now_ms,
                expires_at_ms: now_ms.saturating_add(
                    i64::try_from(rule.ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
                ),
                status: "pending".into(),
                answered_at_ms: None,
                used_at_ms: None,
                used_by: None,
            };
            if let Err(e) = app.store.add_approval(&approval).await {
                return store_failed(e);
            }
            metrics::counter!("ztinfra_approvals_asked_total").increment(1);
            if app.webhooks.has(&approval.group) {
                let mut shown = view(approval.clone(), &[], now_ms);
                if let Some(base) = &app.public_url {
                    shown.status_url =
                        format!("{}{}", base.trim_end_matches('/'), shown.status_url);
                }
                app.webhooks
                    .approval_requested(&approval.group, json!(shown));
            }
            approval
        }
    };
    let mut verdict = verdict;
    for reason in &mut verdict.reasons {
        if reason.policy.as_deref() == Some(approval.policy.as_str()) {
            reason.approval = Some(approval.id.clone());
        }
    }
    Asked {
        verdict,
        ticket: Some(Box::new(ApprovalTicket {
            status: approval.status_at(now_ms).to_owned(),
            status_url: status_url(&approval.id),
            group: approval.group,
            needed: approval.needed,
            expires_at: approval.expires_at_ms / 1000,
            id: approval.id,
        })),
        using: None,
    }
}

/// Who may not answer a request's approval: its agent, its session and its parent session,
/// every party of its delegation chain, and, for four eyes, the person it acts for.
fn excluded(
    request: &ValidRequest,
    claims: Option<&zt_identity::session::AccessClaims>,
    rule: &zt_core::ApprovalRule,
) -> Vec<String> {
    let mut out = vec![request.actor().to_owned()];
    if let Some(claims) = claims {
        let session = &claims.session;
        out.push(session.agent.clone());
        out.push(session.session_id.clone());
        out.extend(session.parent.clone());
        if rule.needed >= 2
            && rule.group != ON_BEHALF_OF
            && let Some(person) = &session.on_behalf_of
        {
            out.push(person.clone());
        }
        if claims.delegation.is_some() {
            out.extend(crate::delegation::chain(claims));
            if let Some(act) = &claims.act {
                out.extend(act.chain().iter().map(|a| a.client_id.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn refused(id: &str, refusal: &ApprovalRefusal) -> String {
    match refusal {
        ApprovalRefusal::Unknown => format!("approval `{id}` is not known"),
        ApprovalRefusal::OtherSession => {
            format!("approval `{id}` was asked for by another session")
        }
        ApprovalRefusal::OtherRequest => format!(
            "approval `{id}` was given for another request (the action, resource or context differ)"
        ),
        ApprovalRefusal::Pending => format!("approval `{id}` is not given yet"),
        ApprovalRefusal::Denied => format!("approval `{id}` was denied"),
        ApprovalRefusal::Expired => format!("approval `{id}` expired"),
        ApprovalRefusal::Used { decision_id } => format!(
            "approval `{id}` was used already, by the decision `{decision_id}` (an approval is used once)"
        ),
    }
}

/// Uses the approval [`ask`] found good, once every other bound has held: the decision stays
/// an allow only if the store marks it used now, by this decision.
pub(crate) async fn mark(
    app: &AppState,
    using: &Using,
    verdict: Verdict,
    decision_id: &str,
) -> Verdict {
    if verdict.decision != Decision::Allow {
        return verdict;
    }
    let now_ms = crate::now_ms();
    let op = zt_store::UseOp::Approval {
        id: using.id.clone(),
        digest: using.digest.clone(),
        session: using.session.clone(),
        decision_id: decision_id.to_owned(),
        now_ms,
    };
    let refusal = match app.uses.apply(op).await {
        Ok(true) => return verdict,
        Ok(false) => app
            .store
            .approval_refusal(&using.id, &using.digest, &using.session, now_ms)
            .await
            .map_err(|e| crate::error_chain(&e)),
        Err(e) => Err(e),
    };
    match refusal {
        Ok(refusal) => deny(
            &verdict,
            refused(&using.id, &refusal),
            ReasonKind::Approval,
            Some(&using.id),
        ),
        Err(e) => {
            tracing::error!(error = %e, "an approval could not be marked used; denied");
            deny(
                &verdict,
                "the use of the approval could not be recorded; denied (fail closed)".into(),
                ReasonKind::Error,
                Some(&using.id),
            )
        }
    }
}

/// Keeps a decision made with a token that carries an approval (a CIBA token) only if it is
/// exactly that approval's action, allowed by it now: such a token is good for nothing else.
pub(crate) fn token_bound(bound: &str, using: Option<&Using>, verdict: Verdict) -> Verdict {
    if verdict.decision == Decision::Allow && using.is_some_and(|u| u.id == bound) {
        return verdict;
    }
    if verdict.decision == Decision::Deny
        && verdict
            .reasons
            .iter()
            .any(|r| r.approval.as_deref() == Some(bound))
    {
        // Denied already for a reason about this approval (used, another request, ...).
        return verdict;
    }
    deny(
        &verdict,
        format!(
            "this token carries approval `{bound}`: it is good only for exactly the approved action, once"
        ),
        ReasonKind::Approval,
        Some(bound),
    )
}

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/approvals", get(list))
        .route("/v1/approvals/{id}", get(show))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/deny", post(deny_approval))
}

/// An approval as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApprovalView {
    pub id: String,
    /// `pending`, `approved`, `denied` or `expired`.
    pub status: String,
    pub actor: String,
    /// The requesting session (empty without one).
    pub session: String,
    /// The person the session acts for (empty for nobody).
    pub on_behalf_of: String,
    /// The policy that asked, its group and how many must approve.
    pub policy: String,
    pub group: String,
    pub needed: i64,
    pub approvals: i64,
    pub answers: Vec<AnswerView>,
    /// The request as decided (and recorded), with the context the service bound.
    #[schema(value_type = Object)]
    pub request: Value,
    /// What the agent asked approvers to see (a CIBA `binding_message`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
    pub digest: String,
    /// Where it is read (`?wait=30s` to wait for an answer).
    pub status_url: String,
    /// The decision that asked for it, and the one that used it.
    pub decision_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_by: Option<String>,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    pub expires_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AnswerView {
    pub approver: String,
    /// `approve` or `deny`.
    pub verdict: String,
    pub reason: String,
    pub at: i64,
}

fn view(approval: StoredApproval, answers: &[ApprovalAnswer], now_ms: i64) -> ApprovalView {
    ApprovalView {
        status: approval.status_at(now_ms).to_owned(),
        approvals: answers.iter().filter(|a| a.verdict == "approve").count() as i64,
        answers: answers
            .iter()
            .map(|a| AnswerView {
                approver: a.approver.clone(),
                verdict: a.verdict.clone(),
                reason: a.reason.clone(),
                at: a.at_ms / 1000,
            })
            .collect(),
        request: serde_json::from_str(&approval.request).unwrap_or(Value::Null),
        note: approval.note,
        created_at: approval.created_at_ms / 1000,
        expires_at: approval.expires_at_ms / 1000,
        used_at: approval.used_at_ms.map(|t| t / 1000),
        status_url: status_url(&approval.id),
        id: approval.id,
        actor: approval.actor,
        session: approval.session,
        on_behalf_of: approval.on_behalf_of,
        policy: approval.policy,
        group: approval.group,
        needed: approval.needed,
        digest: approval.digest,
        decision_id: approval.decision_id,
        used_by: approval.used_by,
    }
}

fn unavailable(e: zt_store::StoreError) -> Problem {
    tracing::error!(error = %crate::error_chain(&e), "approvals could not be read");
    Problem::unavailable("the store could not be read")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    limit: Option<String>,
    wait: Option<String>,
    known: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApprovalList {
    pub approvals: Vec<ApprovalView>,
    /// Changes when the list does: give it back as `known` with `wait` to wait for a change.
    pub fingerprint: String,
}

fn fingerprint(approvals: &[ApprovalView]) -> String {
    let mut hasher = sha2::Sha256::new();
    for a in approvals {
        hasher.update(format!("{}/{}/{};", a.id, a.status, a.approvals).as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Approvals, newest first (approvers, auditors and admins).
#[utoipa::path(
    get, path = "/v1/approvals",
    security(("bearer" = [])),
    params(
        ("status" = Option<String>, Query, description = "pending, approved, denied or expired"),
        ("limit" = Option<String>, Query, description = "at most this many (1 to 1000, default 100)"),
        ("wait" = Option<String>, Query, description = "with `known`: wait (at most 60 s) until the list differs from it"),
        ("known" = Option<String>, Query, description = "the `fingerprint` of the list last read"),
    ),
    responses((status = 200, body = ApprovalList), (status = 400, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn list(
    State(app): State<Arc<AppState>>,
    reader: ApprovalReader,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ApprovalList>, Problem> {
    if !reader.is_operator() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "forbidden",
            "an agent session reads its own approvals by id only",
        ));
    }
    let Query(query) = query.map_err(|e| Problem::invalid(e.body_text(), Vec::new()))?;
    let status = query.status.as_deref().filter(|s| *s != "all");
    if let Some(status) = status
        && !matches!(status, "pending" | "approved" | "denied" | "expired")
    {
        return Err(Problem::invalid(
            format!(
                "`status` is one of pending, approved, denied, expired or all, not `{}`",
                status.escape_debug()
            ),
            Vec::new(),
        ));
    }
    let limit = match query.limit.as_deref() {
        None => 100,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| Problem::invalid("`limit` is a number from 1 to 1000", Vec::new()))?,
    };
    let until = deadline(query.wait.as_deref())?;
    loop {
        let now_ms = crate::now_ms();
        let found = app
            .store
            .approvals(status, now_ms, limit)
            .await
            .map_err(unavailable)?;
        let mut approvals = Vec::with_capacity(found.len());
        for approval in found {
            let answers = app
                .store
                .approval(&approval.id)
                .await
                .map_err(unavailable)?
                .map(|(_, answers)| answers)
                .unwrap_or_default();
            approvals.push(view(approval, &answers, now_ms));
        }
        let fingerprint = fingerprint(&approvals);
        if query.known.as_deref() != Some(fingerprint.as_str()) || !waiting(&app, until) {
            return Ok(Json(ApprovalList {
                approvals,
                fingerprint,
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether a long poll waits on: its time is not up, and the service is not shutting down
/// (which waits for requests in flight).
fn waiting(app: &AppState, until: tokio::time::Instant) -> bool {
    tokio::time::Instant::now() < until && app.ready.load(std::sync::atomic::Ordering::Relaxed)
}

/// Until when a long poll with `?wait=` waits (now without one).
fn deadline(wait: Option<&str>) -> Result<tokio::time::Instant, Problem> {
    let wait = match wait {
        None => Duration::ZERO,
        Some(text) => parse_wait(text).ok_or_else(|| {
            Problem::invalid(
                "`wait` is a duration such as `30s` or `1m`, at most 60 s",
                Vec::new(),
            )
        })?,
    };
    Ok(tokio::time::Instant::now() + wait)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowQuery {
    wait: Option<String>,
}

/// An approval id is a UUID: anything else is not one.
fn check_id(id: &str) -> Result<(), Problem> {
    uuid::Uuid::parse_str(id).map(drop).map_err(|_| {
        Problem::invalid(
            format!("`{}` is not an approval id (a UUID)", id.escape_debug()),
            Vec::new(),
        )
    })
}

/// `30s`, `2m` or a number of seconds, at most 60 s.
fn parse_wait(text: &str) -> Option<Duration> {
    let (digits, unit) = match text.strip_suffix('s') {
        Some(d) => (d, 1),
        None => match text.strip_suffix('m') {
            Some(d) => (d, 60),
            None => (text, 1),
        },
    };
    let secs: u64 = digits.parse().ok()?;
    let wait = Duration::from_secs(secs.checked_mul(unit)?);
    (wait <= MAX_WAIT).then_some(wait)
}

/// One approval (approvers, auditors, admins, and the session that asked for it). With
/// `?wait=30s` a pending approval is waited for (at most 60 s) until it is answered or expires.
#[utoipa::path(
    get, path = "/v1/approvals/{id}",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "approval id"),
        ("wait" = Option<String>, Query, description = "wait while pending: `30s`, `1m` (at most 60 s)"),
    ),
    responses((status = 200, body = ApprovalView), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn show(
    State(app): State<Arc<AppState>>,
    reader: ApprovalReader,
    Path(id): Path<String>,
    query: Result<Query<ShowQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ApprovalView>, Problem> {
    check_id(&id)?;
    let Query(query) = query.map_err(|e| Problem::invalid(e.body_text(), Vec::new()))?;
    let until = deadline(query.wait.as_deref())?;
    loop {
        let now_ms = crate::now_ms();
        let (approval, answers) = app
            .store
            .approval(&id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Problem::not_found(format!("there is no approval `{id}`")))?;
        if let Some(session) = reader.session()
            && session != approval.session
        {
            // Another session's approval is not this caller's to see.
            return Err(Problem::not_found(format!("there is no approval `{id}`")));
        }
        if approval.status_at(now_ms) != "pending" || !waiting(&app, until) {
            return Ok(Json(view(approval, &answers, now_ms)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerBody {
    /// Why: required, 1 to 1,000 characters, recorded with the answer.
    pub reason: String,
}

/// Approve (approvers of the approval's group).
#[utoipa::path(
    post, path = "/v1/approvals/{id}/approve",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "approval id")),
    request_body = AnswerBody,
    responses(
        (status = 200, body = ApprovalView),
        (status = 403, description = "Not an approver of its group, or a party to the request", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Answered already, by this approver or finally, or expired", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn approve(
    State(app): State<Arc<AppState>>,
    Approver(approver): Approver,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AnswerBody>,
) -> Result<Json<ApprovalView>, Problem> {
    answer(&app, &approver, &id, "approve", body).await
}

/// Deny (approvers of the approval's group): one denial closes it.
#[utoipa::path(
    post, path = "/v1/approvals/{id}/deny",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "approval id")),
    request_body = AnswerBody,
    responses(
        (status = 200, body = ApprovalView),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn deny_approval(
    State(app): State<Arc<AppState>>,
    Approver(approver): Approver,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AnswerBody>,
) -> Result<Json<ApprovalView>, Problem> {
    answer(&app, &approver, &id, "deny", body).await
}

fn forbidden(detail: String) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "forbidden", detail)
}

fn conflict(detail: String) -> Problem {
    Problem::new(StatusCode::CONFLICT, "conflict", "conflict", detail)
}

/// Whether `approver` may answer `approval`: a member of its group (or, for `on_behalf_of`,
/// the person the session acts for), and no party to the request.
pub fn may_answer(
    settings: &ApprovalSettings,
    approval: &StoredApproval,
    approver: &str,
) -> Result<(), String> {
    if approval.group == ON_BEHALF_OF {
        if approval.on_behalf_of != approver {
            return Err(format!(
                "only `{}`, for whom the session acts, answers this approval",
                approval.on_behalf_of
            ));
        }
    } else if !settings
        .groups
        .get(&approval.group)
        .is_some_and(|g| g.members.iter().any(|m| m == approver))
    {
        return Err(format!(
            "`{approver}` is not an approver of group `{}`",
            approval.group
        ));
    }
    let excluded: Vec<String> = serde_json::from_str(&approval.excluded).unwrap_or_default();
    if excluded.iter().any(|e| e == approver) {
        return Err(format!(
            "`{approver}` is a party to the request (its agent, its session or their parent, its delegation chain, or, for four eyes, the person it acts for) and may not answer it"
        ));
    }
    Ok(())
}

async fn answer(
    app: &AppState,
    approver: &zt_identity::Caller,
    id: &str,
    verdict: &str,
    body: AnswerBody,
) -> Result<Json<ApprovalView>, Problem> {
    check_id(id)?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 1000 {
        return Err(Problem::invalid(
            "`reason` is required: 1 to 1,000 characters",
            Vec::new(),
        ));
    }
    let name = approver.name().as_str();
    let (approval, _) = app
        .store
        .approval(id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Problem::not_found(format!("there is no approval `{id}`")))?;
    if let Err(e) = may_answer(&app.approvals, &approval, name) {
        tracing::warn!(approver = name, approval = id, error = %e, "approval answer refused");
        return Err(forbidden(e));
    }
    let now_ms = crate::now_ms();
    let answered = app
        .store
        .answer_approval(
            id,
            &ApprovalAnswer {
                approver: name.to_owned(),
                verdict: verdict.to_owned(),
                reason: reason.to_owned(),
                at_ms: now_ms,
            },
        )
        .await
        .map_err(unavailable)?;
    let status = match answered {
        Answered::Recorded { status, .. } => status,
        Answered::Closed { status } => {
            return Err(conflict(format!("approval `{id}` is {status} already")));
        }
        Answered::Expired => return Err(conflict(format!("approval `{id}` expired"))),
        Answered::AlreadyAnswered => {
            return Err(conflict(format!(
                "`{name}` has answered approval `{id}` already (an approver counts once)"
            )));
        }
        Answered::Unknown => {
            return Err(Problem::not_found(format!("there is no approval `{id}`")));
        }
    };
    let recorded = crate::api::record_act(
        app,
        &format!("approval.{verdict}"),
        Some(crate::auth::record_caller(approver)),
        json!({
            "approval": id,
            "digest": approval.digest,
            "policy": approval.policy,
            "group": approval.group,
            "decision_id": approval.decision_id,
            "status": status,
            "reason": reason,
        }),
        format!("`{name}` answered approval `{id}`: {verdict} ({status} now)"),
    )
    .await;
    if let Err(e) = recorded {
        // The answer stands in the store; say that its record is missing.
        tracing::error!(error = %e, approval = id, "an approval answer could not be recorded as evidence");
        return Err(Problem::unavailable(format!(
            "the answer to approval `{id}` was stored, but its evidence record could not be made durable"
        )));
    }
    metrics::counter!("ztinfra_approval_answers_total", "verdict" => verdict.to_owned())
        .increment(1);
    let (approval, answers) = app
        .store
        .approval(id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Problem::not_found(format!("there is no approval `{id}`")))?;
    Ok(Json(view(approval, &answers, crate::now_ms())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_short_and_well_formed() {
        assert_eq!(parse_wait("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_wait("5"), Some(Duration::from_secs(5)));
        for bad in ["", "61s", "2m", "-1s", "1h", "s", "1.5s"] {
            assert_eq!(parse_wait(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_members_who_are_no_party_answer() {
        let settings = ApprovalSettings {
            groups: [(
                "sre".to_owned(),
                GroupSettings {
                    members: vec!["alice".into(), "bot".into()],
                    webhook: None,
                    webhook_secret_file: None,
                },
            )]
            .into(),
            ..ApprovalSettings::default()
        };
        let approval = StoredApproval {
            id: "a".into(),
            digest: "d".into(),
            session: "s".into(),
            actor: "bot".into(),
            on_behalf_of: "carol".into(),
            policy: "p".into(),
            group: "sre".into(),
            needed: 1,
            excluded: "[\"bot\", \"s\"]".into(),
            request: "{}".into(),
            note: String::new(),
            decision_id: "d0".into(),
            created_at_ms: 0,
            expires_at_ms: 1,
            status: "pending".into(),
            answered_at_ms: None,
            used_at_ms: None,
            used_by: None,
        };
        assert!(may_answer(&settings, &approval, "alice").is_ok());
        assert!(
            may_answer(&settings, &approval, "mallory")
                .unwrap_err()
                .contains("not an approver")
        );
        assert!(
            may_answer(&settings, &approval, "bot")
                .unwrap_err()
                .contains("a party")
        );
        let mine = StoredApproval {
            group: ON_BEHALF_OF.into(),
            ..approval
        };
        assert!(may_answer(&settings, &mine, "carol").is_ok());
        assert!(may_answer(&settings, &mine, "alice").is_err());
    }
}
