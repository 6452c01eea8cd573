//! Plan-then-Execute: a planner session submits an ordered list of steps and the executor
//! session(s) that will run them; each step is decided at submission, and an accepted plan's
//! steps become single-use capabilities. An executor uses one by presenting its own session
//! token and `ZT-Plan-Step: <plan id>/<index>`; the decision is then allowed only for exactly
//! that step ([`bound`]), and using it is marked in the store once, across replicas.
//!
//! The plan's id is the SHA-256 of its canonical JSON (RFC 8785, as evidence records are
//! encoded), which its submission record holds: nothing an executor sends can alter it, and
//! each step's decision record names the plan and the step, so an execution can be replayed from
//! the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::Digest as _;
use utoipa::ToSchema;
use zt_core::{Decision, Reason, ReasonKind, ValidRequest, Verdict};

use crate::api::AppState;
use crate::auth::{Admin, Decider, Reader};
use crate::body::JsonBody;
use crate::problem::Problem;

/// The header by which an executor presents a step capability.
pub const STEP_HEADER: &str = "zt-plan-step";
/// Most steps in one plan.
pub const MAX_STEPS: usize = 64;
/// A plan's life when `ttl` is not asked (cut to the planner's session).
const DEFAULT_TTL: i64 = 900;
/// Plans kept in memory (they never change, revocation aside, which the store checks).
const MAX_CACHED: usize = 4096;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/plans", post(submit))
        .route("/v1/plans/{id}", get(show))
}

pub(crate) fn admin_routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/plans/{id}/revoke", post(revoke))
}

/// One step as submitted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub action: String,
    pub resource: String,
    /// `sha256` (hex) of the RFC 8785 form of the call's arguments: the step is then only for
    /// a call with exactly these (compared with `context.mcp.arguments_sha256` or
    /// `context.arguments_sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_sha256: Option<String>,
    /// Context for deciding the step at submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub context: Option<Map<String, Value>>,
    /// The session that runs this step, if not the plan's `executor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
}

/// A plan as submitted.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanSubmission {
    /// The session that runs the steps (each step may name another).
    #[serde(default)]
    pub executor: Option<String>,
    pub steps: Vec<StepSpec>,
    /// Whether each step may be used only after the ones before it (default `true`).
    #[serde(default = "yes")]
    pub ordered: bool,
    /// Seconds the plan may be executed for (default 900, at most the planner's session).
    #[serde(default)]
    pub ttl: Option<i64>,
}

fn yes() -> bool {
    true
}

/// The plan as stored and hashed: what was asked, by whom, for whom, until when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanonicalPlan {
    pub planner: String,
    pub ordered: bool,
    pub expires_at: i64,
    pub steps: Vec<StepSpec>,
}

/// One step's outcome at submission.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepOutcome {
    pub index: usize,
    pub action: String,
    pub resource: String,
    pub executor: String,
    pub decision: Decision,
    pub decision_id: String,
    pub reasons: Vec<Reason>,
    /// With `approval_required`: the approval the step waits for (its executor then uses the
    /// step once it is approved, without presenting the approval).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<Box<crate::approvals::ApprovalTicket>>,
}

/// The answer to a submission.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanAnswer {
    /// SHA-256 (hex) of the plan's canonical JSON.
    pub plan: String,
    /// `accepted` (every step allowed: its steps are capabilities now), `pending_approval`
    /// (accepted, but some steps wait for a person's approval: each is a capability once
    /// approved) or `rejected` (the steps denied are named, with their reasons; nothing can be
    /// executed under it).
    pub status: &'static str,
    pub steps: Vec<StepOutcome>,
    pub expires_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<crate::evidence::Receipt>,
}

/// Plans read, by id.
#[derive(Debug, Default)]
pub struct Plans {
    cache: Mutex<HashMap<String, Arc<CanonicalPlan>>>,
}

impl Plans {
    async fn get(&self, app: &AppState, id: &str) -> Result<Option<Arc<CanonicalPlan>>, String> {
        if let Some(plan) = self.cache.lock().ok().and_then(|c| c.get(id).cloned()) {
            return Ok(Some(plan));
        }
        let Some(stored) = app
            .store
            .plan(id)
            .await
            .map_err(|e| crate::error_chain(&e))?
        else {
            return Ok(None);
        };
        let plan: CanonicalPlan = serde_json::from_str(&stored.canonical)
            .map_err(|e| format!("the stored plan `{id}` does not read: {e}"))?;
        let plan = Arc::new(plan);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(id.to_owned(), Arc::clone(&plan));
        }
        Ok(Some(plan))
    }
}

/// A step capability as presented: `<plan id>/<index>`, or `<plan id>/next` for the first
/// step not used yet (what an enforcement point that follows a plan, such as the MCP gateway,
/// sends), which [`resolve`] turns into an index before anything is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRef {
    pub plan: String,
    pub index: usize,
}

/// `<plan id>/<index>` or `<plan id>/next` (`None`).
pub fn parse_step(text: &str) -> Option<(String, Option<usize>)> {
    let (plan, index) = text.trim().split_once('/')?;
    if plan.len() != 64 || !plan.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let index = match index {
        "next" => None,
        n => Some(n.parse().ok()?),
    };
    Some((plan.to_ascii_lowercase(), index))
}

/// The step a capability names: its index, or for `next`, the first step not used yet (the
/// last, when every one is: its use is then refused as a replay).
pub async fn resolve(
    app: &AppState,
    plan: String,
    index: Option<usize>,
) -> Result<StepRef, Problem> {
    if let Some(index) = index {
        return Ok(StepRef { plan, index });
    }
    let steps = app.store.plan_steps(&plan).await.map_err(|e| {
        tracing::error!(error = %crate::error_chain(&e), "plan steps could not be read");
        Problem::unavailable("the plan's steps could not be read")
    })?;
    let index = steps
        .iter()
        .find(|s| s.used_at_ms.is_none())
        .or(steps.last())
        .and_then(|s| usize::try_from(s.index).ok())
        .unwrap_or(0);
    Ok(StepRef { plan, index })
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::invalid(detail, Vec::new())
}

/// Submit a plan (a planner session, with its own token).
#[utoipa::path(
    post, path = "/v1/plans",
    security(("bearer" = [])),
    request_body = PlanSubmission,
    responses(
        (status = 201, description = "Accepted: every step allowed", body = PlanAnswer),
        (status = 200, description = "Rejected: the denied steps and their reasons", body = PlanAnswer),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn submit(
    State(app): State<Arc<AppState>>,
    decider: Decider,
    JsonBody(submission): JsonBody<PlanSubmission>,
) -> Result<(StatusCode, Json<PlanAnswer>), Problem> {
    let Some(planner) = decider.session.as_ref().filter(|_| decider.pep.is_none()) else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "forbidden",
            "a plan is submitted by the planner's agent session, with its own token in `Authorization`",
        ));
    };
    if planner.claims.delegation.is_some() {
        return Err(invalid(
            "a plan is submitted with the planner session's own token, not a delegated one",
        ));
    }
    if submission.steps.is_empty() || submission.steps.len() > MAX_STEPS {
        return Err(invalid(format!(
            "`steps` holds {}; a plan has 1 to {MAX_STEPS}",
            submission.steps.len()
        )));
    }
    let now_ms = crate::now_ms();
    let now = now_ms / 1000;
    let ttl = submission.ttl.unwrap_or(DEFAULT_TTL);
    if ttl < 1 {
        return Err(invalid("`ttl` is at least 1 second"));
    }
    if submission.ttl.is_some() && now.saturating_add(ttl) > planner.claims.exp {
        return Err(invalid(format!(
            "`ttl` of {ttl} seconds would outlive the planner's session, which ends in {} seconds",
            planner.claims.exp - now
        )));
    }
    let expires_at = now.saturating_add(ttl).min(planner.claims.exp);

    // Each step's executor, live now.
    let mut steps = submission.steps;
    let mut executors = HashMap::new();
    for (n, step) in steps.iter_mut().enumerate() {
        let Some(executor) = step
            .executor
            .clone()
            .or_else(|| submission.executor.clone())
        else {
            return Err(invalid(format!(
                "`steps/{n}` names no executor, and the plan has no `executor`"
            )));
        };
        if let Some(digest) = &step.arguments_sha256
            && (digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid(format!(
                "`steps/{n}/arguments_sha256` is 64 hex digits"
            )));
        }
        if step.context.as_ref().is_some_and(|c| {
            [
                "session",
                "delegation",
                "plan",
                crate::behaviour::CONTEXT_MEMBER,
            ]
            .iter()
            .any(|k| c.contains_key(*k))
        }) {
            return Err(invalid(format!(
                "`steps/{n}/context` cannot hold `session`, `delegation`, `plan` or `behaviour`: the service sets them"
            )));
        }
        if !executors.contains_key(&executor) {
            let claim = crate::auth::live_claim(&app, &executor)
                .await
                .map_err(|e| invalid(format!("`steps/{n}` executor `{executor}`: {e}")))?;
            executors.insert(executor.clone(), claim);
        }
        step.executor = Some(executor);
    }
    let plan = CanonicalPlan {
        planner: planner.claims.session.session_id.clone(),
        ordered: submission.ordered,
        expires_at,
        steps,
    };
    let canonical = zt_evidence::canonical::to_string(
        &serde_json::to_value(&plan).map_err(|e| Problem::internal(e.to_string()))?,
    );
    let id = hex::encode(sha2::Sha256::digest(canonical.as_bytes()));

    // Each step decided as its executor would ask it, with `context.plan` set.
    let mut requests = Vec::with_capacity(plan.steps.len());
    for (n, step) in plan.steps.iter().enumerate() {
        let executor = step.executor.as_deref().unwrap_or_default();
        let claim = executors
            .get(executor)
            .ok_or_else(|| Problem::internal("an executor was lost"))?;
        let mut context = step.context.clone().unwrap_or_default();
        context.insert(
            "session".into(),
            Value::Object(crate::sessions::claim_view(claim, false)),
        );
        context.insert("plan".into(), json!({"id": id, "step": n}));
        let request = zt_core::DecisionRequest {
            actor: claim.agent.clone(),
            action: step.action.clone(),
            resource: step.resource.clone(),
            context,
        };
        requests.push(request.validate(&app.limits).map_err(|errors| {
            Problem::invalid_fields(
                errors
                    .into_iter()
                    .map(|e| zt_core::FieldError::new(format!("/steps/{n}{}", e.pointer), e.detail))
                    .collect(),
            )
        })?);
    }
    let caller = json!({"kind": "session", "name": planner.claims.sub, "session": planner.claims.session.session_id});
    let engine = app.policies.engine();
    let decided = requests.iter().map(|r| (r, engine.decide(r))).collect();
    let executors = plan
        .steps
        .iter()
        .map(|s| s.executor.clone().unwrap_or_default())
        .collect();
    let origin = crate::api::Origin {
        submitting: Some(Arc::new((id.clone(), executors))),
        ..crate::api::Origin::now("plans", Some(caller.clone()))
    };
    let answers = crate::api::answer(&app, origin, decided, None).await;
    let outcomes: Vec<StepOutcome> = plan
        .steps
        .iter()
        .zip(answers)
        .enumerate()
        .map(|(index, (step, answer))| StepOutcome {
            index,
            action: step.action.clone(),
            resource: step.resource.clone(),
            executor: step.executor.clone().unwrap_or_default(),
            decision: answer.decision,
            decision_id: answer.decision_id,
            reasons: answer.reasons,
            approval: answer.approval,
        })
        .collect();
    let accepted = outcomes
        .iter()
        .all(|o| matches!(o.decision, Decision::Allow | Decision::ApprovalRequired));
    let waiting = outcomes
        .iter()
        .any(|o| o.decision == Decision::ApprovalRequired);
    if accepted {
        let stored = app
            .store
            .add_plan(&zt_store::StoredPlan {
                id: id.clone(),
                planner_session: plan.planner.clone(),
                canonical: canonical.clone(),
                ordered: plan.ordered,
                steps: i64::try_from(plan.steps.len()).unwrap_or(i64::MAX),
                created_at_ms: now_ms,
                expires_at_ms: expires_at.saturating_mul(1000),
                revoked_at_ms: None,
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %crate::error_chain(&e), "a plan could not be stored");
                Problem::unavailable("the store could not be written; see the service's log")
            })?;
        if !stored {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                "conflict",
                format!("the plan `{id}` was submitted already (the same steps, planner and end)"),
            ));
        }
    }
    let status = match (accepted, waiting) {
        (false, _) => "rejected",
        (true, true) => "pending_approval",
        (true, false) => "accepted",
    };
    let record = json!({
        "plan": id,
        "status": status,
        "canonical": canonical,
        "steps": outcomes.iter().map(|o| json!({"index": o.index, "decision": o.decision, "decision_id": o.decision_id, "approval": o.approval.as_ref().map(|t| &t.id)})).collect::<Vec<_>>(),
    });
    let evidence = crate::api::record_act(
        &app,
        "plan.submit",
        Some(caller),
        record,
        format!("plan {status}"),
    )
    .await
    .map_err(|e| {
        tracing::error!(error = %e, plan = %id, "a plan could not be recorded");
        Problem::unavailable("the plan could not be put on record")
    });
    let evidence = match evidence {
        Ok(receipt) => receipt,
        Err(problem) => {
            if accepted {
                let _ = app.store.revoke_plan(&id, crate::now_ms()).await;
            }
            return Err(problem);
        }
    };
    tracing::info!(plan = %id, status, steps = outcomes.len(), "plan submitted");
    Ok((
        if accepted {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(PlanAnswer {
            plan: id,
            status,
            steps: outcomes,
            expires_at,
            evidence,
        }),
    ))
}

/// A plan and the state of its steps (readers).
#[utoipa::path(
    get, path = "/v1/plans/{id}",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "plan id")),
    responses((status = 200, body = Object), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn show(
    State(app): State<Arc<AppState>>,
    _: Reader,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let unavailable = |e: zt_store::StoreError| {
        tracing::error!(error = %crate::error_chain(&e), "plans could not be read");
        Problem::unavailable("the store could not be read")
    };
    let stored = app
        .store
        .plan(&id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Problem::not_found(format!("there is no accepted plan `{id}`")))?;
    let steps = app.store.plan_steps(&id).await.map_err(unavailable)?;
    let plan: Value = serde_json::from_str(&stored.canonical).unwrap_or_default();
    Ok(Json(json!({
        "plan": id,
        "canonical": stored.canonical,
        "ordered": stored.ordered,
        "expires_at": stored.expires_at_ms / 1000,
        "revoked": stored.revoked_at_ms.is_some(),
        "steps": steps.iter().map(|s| json!({
            "index": s.index,
            "step": plan.get("steps").and_then(|all| all.get(usize::try_from(s.index).unwrap_or(usize::MAX))),
            "used": s.used_at_ms.is_some(),
            "decision_id": s.decision_id,
        })).collect::<Vec<_>>(),
    })))
}

/// Revoke a plan (admin): none of its unused steps can be used after this.
#[utoipa::path(
    post, path = "/v1/plans/{id}/revoke",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "plan id")),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn revoke(
    State(app): State<Arc<AppState>>,
    Admin(admin): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let found = app
        .store
        .revoke_plan(&id, crate::now_ms())
        .await
        .map_err(|e| {
            tracing::error!(error = %crate::error_chain(&e), "a plan could not be revoked");
            Problem::unavailable("the store could not be written")
        })?;
    if !found {
        return Err(Problem::not_found(format!(
            "there is no accepted plan `{id}`"
        )));
    }
    crate::api::record_act(
        &app,
        "plan.revoke",
        Some(crate::auth::record_caller(&admin)),
        json!({"plan": id}),
        "plan revoked by an admin".into(),
    )
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "a plan revocation could not be recorded (it stands)");
        Problem::unavailable("the plan is revoked, but the revocation could not be put on record")
    })?;
    Ok(StatusCode::NO_CONTENT)
}

fn denied(verdict: &Verdict, message: String, kind: ReasonKind) -> Verdict {
    Verdict {
        decision: Decision::Deny,
        reasons: vec![Reason {
            approval: None,
            quarantine: None,
            kind,
            policy: None,
            message,
        }],
        policy_version: verdict.policy_version.clone(),
    }
}

/// Keeps a decision that presents a step capability to exactly that step, writing nothing: the
/// plan is known and unexpired, the caller is the step's executor, the action, resource and
/// (when the step names one) arguments digest are the step's. Each refusal is a deny with its
/// own reason. [`mark`] then uses the step, once every other bound has held.
pub(crate) async fn check(
    app: &AppState,
    step: &StepRef,
    session: Option<&str>,
    request: &ValidRequest,
    verdict: Verdict,
) -> Verdict {
    let deny = |message: String, kind: ReasonKind| denied(&verdict, message, kind);
    let at = format!("step {} of plan `{}`", step.index, step.plan);
    let plan = match app.plans.get(app, &step.plan).await {
        Ok(Some(plan)) => plan,
        Ok(None) => {
            return deny(
                format!("there is no accepted plan `{}`", step.plan),
                ReasonKind::Plan,
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "a plan could not be read; denied");
            return deny(
                "the plan could not be read; denied (fail closed)".into(),
                ReasonKind::Error,
            );
        }
    };
    let Some(spec) = plan.steps.get(step.index) else {
        return deny(
            format!(
                "the plan `{}` has {} steps; there is no step {}",
                step.plan,
                plan.steps.len(),
                step.index
            ),
            ReasonKind::Plan,
        );
    };
    if crate::now_ms() / 1000 >= plan.expires_at {
        return deny(format!("{at}: the plan expired"), ReasonKind::Plan);
    }
    if session != spec.executor.as_deref() {
        return deny(
            format!(
                "{at} is for the executor session `{}`; this request is {}",
                spec.executor.as_deref().unwrap_or_default(),
                session.map_or_else(
                    || "not a session's".to_owned(),
                    |s| format!("session `{s}`'s")
                )
            ),
            ReasonKind::Plan,
        );
    }
    let action = request.action().to_string();
    if action != spec.action {
        return deny(
            format!("{at} is `{}`, not `{action}`", spec.action),
            ReasonKind::Plan,
        );
    }
    if request.resource() != spec.resource {
        return deny(
            format!(
                "{at} is on `{}`, not `{}`",
                spec.resource,
                request.resource()
            ),
            ReasonKind::Plan,
        );
    }
    if let Some(digest) = &spec.arguments_sha256 {
        let context = request.record().get("context");
        let sent = context
            .and_then(|c| c.pointer("/mcp/arguments_sha256"))
            .or_else(|| context.and_then(|c| c.get("arguments_sha256")))
            .and_then(Value::as_str);
        if !sent.is_some_and(|s| s.eq_ignore_ascii_case(digest)) {
            return deny(
                format!("{at} is for other arguments (`arguments_sha256` {digest})"),
                ReasonKind::Plan,
            );
        }
    }
    verdict
}

/// Marks the step an allowed decision uses (only if unused, not revoked, and in order: a
/// replay, an early step or a revoked plan finds it so, and the decision becomes a deny saying
/// which). A deny passes unchanged and uses nothing.
pub(crate) async fn mark(
    app: &AppState,
    step: &StepRef,
    verdict: Verdict,
    decision_id: &str,
) -> Verdict {
    if verdict.decision != Decision::Allow {
        return verdict;
    }
    let deny = |message: String, kind: ReasonKind| denied(&verdict, message, kind);
    let at = format!("step {} of plan `{}`", step.index, step.plan);
    let index = i64::try_from(step.index).unwrap_or(i64::MAX);
    let mark = zt_store::UseOp::Step {
        plan: step.plan.clone(),
        index,
        decision_id: decision_id.to_owned(),
        now_ms: crate::now_ms(),
    };
    let used = match app.uses.apply(mark).await {
        Ok(true) => Ok(zt_store::StepUse::Used),
        Ok(false) => app
            .store
            .step_refusal(&step.plan, index)
            .await
            .map_err(|e| crate::error_chain(&e)),
        Err(e) => Err(e),
    };
    match used {
        Ok(zt_store::StepUse::Used) => verdict,
        Ok(zt_store::StepUse::AlreadyUsed { decision_id }) => deny(
            format!("{at} was used already, by the decision `{decision_id}` (a step is used once)"),
            ReasonKind::Plan,
        ),
        Ok(zt_store::StepUse::Waiting { earlier }) => deny(
            format!("{at} waits for step {earlier}, which is not done (the plan is ordered)"),
            ReasonKind::Plan,
        ),
        Ok(zt_store::StepUse::Revoked) => {
            deny(format!("{at}: the plan was revoked"), ReasonKind::Plan)
        }
        Ok(zt_store::StepUse::Unknown) => deny(format!("{at} is not known"), ReasonKind::Plan),
        Err(e) => {
            tracing::error!(error = %e, "a plan step could not be marked used; denied");
            deny(
                "the use of the plan step could not be recorded; denied (fail closed)".into(),
                ReasonKind::Error,
            )
        }
    }
}
