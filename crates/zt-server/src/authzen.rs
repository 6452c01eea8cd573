//! The OpenID AuthZEN Authorization API 1.0: access evaluation, access evaluations, the three
//! search APIs, and PDP metadata.
//!
//! The mapping of AuthZEN's subject, action, resource and context onto Cedar is
//! [`zt_core::authzen`]'s. Every evaluation, including each candidate a search evaluates, is a
//! decision of the engine and leaves an evidence record, as any decision does; its id, reasons
//! and evidence receipt come back in the decision's `context`.
//!
//! Where the specification and this service's conventions differ, the specification wins on
//! its endpoints: a body that is not `application/json` is a 400 (not a 415), and a failed
//! item of a batch is `"decision": false` with the error in its context.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use zt_core::authzen::{self, Evaluation, Need};
use zt_core::{Decision, FieldError};

use crate::api::{AppState, DecisionResponse, Origin, answer, answer_one};
use crate::auth::Decider;
use crate::body::JsonBody;
use crate::problem::Problem;

/// Most candidates one search request evaluates. A search over more candidates returns a page
/// and a `next_token` to go on from.
pub const MAX_SEARCH_CANDIDATES: usize = 1000;

/// The AuthZEN routes, at the specification's default paths.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/access/v1/evaluation", post(evaluation))
        .route("/access/v1/evaluations", post(evaluations))
        .route("/access/v1/search/subject", post(search_subject))
        .route("/access/v1/search/resource", post(search_resource))
        .route("/access/v1/search/action", post(search_action))
        .route("/.well-known/authzen-configuration", get(metadata))
}

/// An AuthZEN decision.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuthzenDecision {
    pub decision: bool,
    /// For a decision of the engine: `decision_id`, `reasons`, `policy_version` and the
    /// `evidence` receipt. For an item that could not be evaluated: `error {status, message}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub context: Option<Value>,
}

impl From<DecisionResponse> for AuthzenDecision {
    fn from(answered: DecisionResponse) -> Self {
        let mut context = json!({
            "decision_id": answered.decision_id,
            "reasons": answered.reasons,
            "policy_version": answered.policy_version,
            "evidence": answered.evidence,
        });
        // AuthZEN has two outcomes: a request that waits for an approval is `false`, with the
        // approval to wait for in the context.
        if let (Some(ticket), Some(members)) = (answered.approval, context.as_object_mut()) {
            members.insert("approval_required".into(), true.into());
            members.insert("approval".into(), json!(ticket));
        }
        Self {
            decision: answered.decision == Decision::Allow,
            context: Some(context),
        }
    }
}

impl AuthzenDecision {
    fn error(errors: &[FieldError]) -> Self {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            decision: false,
            context: Some(json!({"error": {"status": 400, "message": message}})),
        }
    }
}

/// The body of an AuthZEN request: a JSON object. The specification asks for 400 where this
/// service's own endpoints answer 415, for a body that is not declared as JSON.
fn object(
    body: Result<JsonBody<Map<String, Value>>, Problem>,
) -> Result<Map<String, Value>, Problem> {
    body.map(|JsonBody(object)| object).map_err(|problem| {
        if problem.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            Problem::invalid(problem.detail, Vec::new())
        } else {
            problem
        }
    })
}

/// Binds an AuthZEN request object (or, `top` false, an item of a batch at `pointer`) to its
/// caller: with an agent session, the subject is `Agent::"<agent>"` (filled in at the top when
/// left out; any other is refused), and `context.session` is the service's (see
/// [`Decider::bind_context`]).
fn bind(
    decider: &Decider,
    object: &mut Map<String, Value>,
    pointer: &str,
    top: bool,
) -> Result<(), FieldError> {
    if let Some(session) = &decider.session {
        let agent = &session.claims.session.agent;
        match object.get("subject") {
            None | Some(Value::Null) => {
                if top {
                    object.insert("subject".into(), json!({"type": "Agent", "id": agent}));
                }
            }
            Some(subject) => {
                if subject.get("type").and_then(Value::as_str) != Some("Agent")
                    || subject.get("id").and_then(Value::as_str) != Some(agent)
                {
                    return Err(FieldError::new(
                        format!("{pointer}/subject"),
                        format!(
                            "the agent session token is for `Agent::\"{agent}\"`; the subject must be that agent"
                        ),
                    ));
                }
            }
        }
    }
    let context_pointer = format!("{pointer}/context");
    match object.get_mut("context") {
        Some(Value::Object(context)) => decider.bind_context(context, &context_pointer),
        None | Some(Value::Null) if top => {
            let mut context = Map::new();
            decider.bind_context(&mut context, &context_pointer)?;
            if !context.is_empty() {
                object.insert("context".into(), Value::Object(context));
            }
            Ok(())
        }
        // Absent from an item (it inherits the default), or not an object (an error of its
        // own, reported by validation).
        _ => Ok(()),
    }
}

/// Access Evaluation API: one decision.
#[utoipa::path(
    post, path = "/access/v1/evaluation",
    security(("bearer" = [])),
    request_body(content = Object, description = "`{subject, action, resource, context?}`"),
    responses(
        (status = 200, body = AuthzenDecision),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn evaluation(
    State(app): State<Arc<AppState>>,
    decider: Decider,
    body: Result<JsonBody<Map<String, Value>>, Problem>,
) -> Result<Json<AuthzenDecision>, Problem> {
    let origin = decider.origin("authzen.evaluation");
    let mut body = object(body)?;
    bind(&decider, &mut body, "", true).map_err(|e| Problem::invalid_fields(vec![e]))?;
    let announced = app.evidence.announce();
    let mut request = Evaluation::from_object(&body)
        .validate(&app.limits)
        .map_err(Problem::invalid_fields)?;
    answer_one(&app, origin, &mut request, announced)
        .await
        .map(|answered| Json(answered.into()))
}

/// The `evaluations_semantic` option of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Semantic {
    ExecuteAll,
    DenyOnFirstDeny,
    PermitOnFirstPermit,
}

impl Semantic {
    fn of(body: &Map<String, Value>) -> Result<Self, FieldError> {
        let options = match body.get("options") {
            None | Some(Value::Null) => return Ok(Self::ExecuteAll),
            Some(Value::Object(options)) => options,
            Some(_) => return Err(FieldError::new("/options", "must be an object")),
        };
        match options.get("evaluations_semantic") {
            None | Some(Value::Null) => Ok(Self::ExecuteAll),
            Some(Value::String(s)) if s == "execute_all" => Ok(Self::ExecuteAll),
            Some(Value::String(s)) if s == "deny_on_first_deny" => Ok(Self::DenyOnFirstDeny),
            Some(Value::String(s)) if s == "permit_on_first_permit" => {
                Ok(Self::PermitOnFirstPermit)
            }
            Some(_) => Err(FieldError::new(
                "/options/evaluations_semantic",
                "must be `execute_all`, `deny_on_first_deny` or `permit_on_first_permit`",
            )),
        }
    }

    /// Whether the batch stops after an item with this outcome.
    fn stops_after(self, allowed: bool) -> bool {
        match self {
            Self::ExecuteAll => false,
            Self::DenyOnFirstDeny => !allowed,
            Self::PermitOnFirstPermit => allowed,
        }
    }
}

/// The answer of the Access Evaluations API.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuthzenDecisions {
    pub evaluations: Vec<AuthzenDecision>,
}

/// Access Evaluations API: several decisions, with top-level defaults and an evaluation
/// semantic. Without `evaluations` (or with an empty array) it answers as the Access
/// Evaluation API does.
#[utoipa::path(
    post, path = "/access/v1/evaluations",
    security(("bearer" = [])),
    request_body(content = Object, description = "`{subject?, action?, resource?, context?, options?, evaluations: [...]}`"),
    responses(
        (status = 200, body = AuthzenDecisions),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn evaluations(
    State(app): State<Arc<AppState>>,
    decider: Decider,
    body: Result<JsonBody<Map<String, Value>>, Problem>,
) -> Result<Response, Problem> {
    let origin = decider.origin("authzen.evaluations");
    let mut body = object(body)?;
    let mut items = match body.remove("evaluations") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(Problem::invalid_fields(vec![FieldError::new(
                "/evaluations",
                "must be an array",
            )]));
        }
    };
    if items.is_empty() {
        return evaluation(State(app), decider, Ok(JsonBody(body)))
            .await
            .map(IntoResponse::into_response);
    }
    bind(&decider, &mut body, "", true).map_err(|e| Problem::invalid_fields(vec![e]))?;
    for (i, item) in items.iter_mut().enumerate() {
        if let Value::Object(item) = item {
            bind(&decider, item, &format!("/evaluations/{i}"), false)
                .map_err(|e| Problem::invalid_fields(vec![e]))?;
        }
    }
    if items.len() > app.limits.max_batch {
        return Err(Problem::invalid_fields(vec![FieldError::new(
            "/evaluations",
            format!(
                "holds {} evaluations; the limit is {}",
                items.len(),
                app.limits.max_batch
            ),
        )]));
    }
    let semantic = Semantic::of(&body).map_err(|e| Problem::invalid_fields(vec![e]))?;
    let defaults = Evaluation::from_object(&body);
    // A default that is present must be well formed: that is a fault of the whole payload,
    // not of the items that would inherit it.
    let mut errors = Vec::new();
    let limits = &app.limits;
    for (pointer, value) in [
        ("/subject", &defaults.subject),
        ("/resource", &defaults.resource),
    ] {
        if value.is_some() {
            authzen::entity(pointer, value.clone(), Need::Id, limits, &mut errors);
        }
    }
    if defaults.action.is_some() {
        authzen::action("/action", defaults.action.clone(), limits, &mut errors);
    }
    if defaults.context.as_ref().is_some_and(|c| !c.is_object()) {
        errors.push(FieldError::new("/context", "must be an object"));
    }
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }

    // Decide in order, stopping where the semantic says; record what was decided.
    let engine = app.policies.engine();
    let mut outcomes: Vec<Result<usize, Vec<FieldError>>> = Vec::with_capacity(items.len());
    let mut valid = Vec::new();
    let mut verdicts = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let checked = match item {
            Value::Object(item) => Evaluation::from_object(item)
                .or_defaults(&defaults)
                .validate(&app.limits),
            _ => Err(vec![FieldError::new("", "must be an object")]),
        };
        let checked = checked.and_then(|mut request| {
            crate::behaviour::inform_all(&app, &origin, [&mut request]).map_err(|e| vec![e])?;
            Ok(request)
        });
        let allowed = match checked {
            Ok(request) => {
                let verdict = engine.decide(&request);
                let allowed = verdict.decision == Decision::Allow;
                outcomes.push(Ok(valid.len()));
                valid.push(request);
                verdicts.push(verdict);
                allowed
            }
            Err(errors) => {
                outcomes.push(Err(errors
                    .into_iter()
                    .map(|e| FieldError::new(format!("/evaluations/{i}{}", e.pointer), e.detail))
                    .collect()));
                false
            }
        };
        if semantic.stops_after(allowed) {
            break;
        }
    }
    let decided = valid.iter().zip(verdicts).collect();
    let mut answered: Vec<Option<AuthzenDecision>> = answer(&app, origin, decided, None)
        .await
        .into_iter()
        .map(|a| Some(AuthzenDecision::from(a)))
        .collect();
    let evaluations = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Ok(index) => answered
                .get_mut(index)
                .and_then(Option::take)
                .ok_or_else(|| Problem::internal("an evaluation was not answered")),
            Err(errors) => Ok(AuthzenDecision::error(&errors)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(AuthzenDecisions { evaluations }).into_response())
}

/// What a search looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Subject,
    Resource,
    Action,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Resource => "resource",
            Self::Action => "action",
        }
    }

    /// The metrics label of the search endpoint.
    fn endpoint(self) -> &'static str {
        match self {
            Self::Subject => "authzen.search.subject",
            Self::Resource => "authzen.search.resource",
            Self::Action => "authzen.search.action",
        }
    }
}

/// The `page` object of a search answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Page {
    /// Where the next page starts; empty when this page is the last.
    pub next_token: String,
    /// How many results this page holds.
    pub count: usize,
}

/// The answer of a search API.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchResults {
    pub page: Page,
    /// Subjects or resources as `{type, id}`, actions as `{name}`.
    #[schema(value_type = Vec<Object>)]
    pub results: Vec<Value>,
}

/// Subject Search API: the subjects of a type that may perform the action on the resource.
#[utoipa::path(
    post, path = "/access/v1/search/subject",
    security(("bearer" = [])),
    request_body(content = Object, description = "`{subject: {type}, action, resource, context?, page?}`"),
    responses((status = 200, body = SearchResults), (status = 400, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn search_subject(
    State(app): State<Arc<AppState>>,
    decider: Decider,
    body: Result<JsonBody<Map<String, Value>>, Problem>,
) -> Result<Json<SearchResults>, Problem> {
    search(&app, &decider, object(body)?, Target::Subject).await
}

/// Resource Search API: the resources of a type the subject may perform the action on.
#[utoipa::path(
    post, path = "/access/v1/search/resource",
    security(("bearer" = [])),
    request_body(content = Object, description = "`{subject, action, resource: {type}, context?, page?}`"),
    responses((status = 200, body = SearchResults), (status = 400, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn search_resource(
    State(app): State<Arc<AppState>>,
    decider: Decider,
    body: Result<JsonBody<Map<String, Value>>, Problem>,
) -> Result<Json<SearchResults>, Problem> {
    search(&app, &decider, object(body)?, Target::Resource).await
}

/// Action Search API: the actions the subject may perform on the resource.
#[utoipa::path(
    post, path = "/access/v1/search/action",
    security(("bearer" = [])),
    request_body(content = Object, description = "`{subject, resource, context?, page?}`"),
    responses((status = 200, body = SearchResults), (status = 400, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn search_action(
    State(app): State<Arc<AppState>>,
    decider: Decider,
    body: Result<JsonBody<Map<String, Value>>, Problem>,
) -> Result<Json<SearchResults>, Problem> {
    search(&app, &decider, object(body)?, Target::Action).await
}

/// The `page` member of a search request.
#[derive(Debug, Default)]
struct PageRequest {
    token: Option<String>,
    limit: Option<usize>,
}

fn page_request(body: &Map<String, Value>, errors: &mut Vec<FieldError>) -> PageRequest {
    let page = match body.get("page") {
        None | Some(Value::Null) => return PageRequest::default(),
        Some(Value::Object(page)) => page,
        Some(_) => {
            errors.push(FieldError::new("/page", "must be an object"));
            return PageRequest::default();
        }
    };
    let token = match page.get("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(token)) if token.is_empty() => None,
        Some(Value::String(token)) => Some(token.clone()),
        Some(_) => {
            errors.push(FieldError::new("/page/token", "must be a string"));
            None
        }
    };
    let limit = match page.get("limit") {
        None | Some(Value::Null) => None,
        Some(limit) => match limit.as_u64().and_then(|l| usize::try_from(l).ok()) {
            Some(limit) => Some(limit),
            None => {
                errors.push(FieldError::new(
                    "/page/limit",
                    "must be a non-negative integer",
                ));
                None
            }
        },
    };
    PageRequest { token, limit }
}

/// A page token: where the next page starts and the page limit it was issued for, bound to the
/// query it belongs to (`<offset>.<limit or empty>.<query digest>`, base64url).
fn token(offset: usize, limit: Option<usize>, query: &str) -> String {
    let limit = limit.map(|l| l.to_string()).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{offset}.{limit}.{query}"))
}

/// Where a follow-up page starts, and its limit: the token's, which a follow-up may repeat or
/// leave out (as the certification scenario's does) but not change.
fn read_token(
    token: &str,
    limit: Option<usize>,
    query: &str,
) -> Result<(usize, Option<usize>), FieldError> {
    let foreign = || {
        FieldError::new(
            "/page/token",
            "is not a page token of this server: send the `next_token` of the previous page",
        )
    };
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(foreign)?;
    let mut parts = text.splitn(3, '.');
    let (Some(offset), Some(issued), Some(bound)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(foreign());
    };
    let offset = offset.parse().map_err(|_| foreign())?;
    let issued = match issued {
        "" => None,
        l => Some(l.parse().map_err(|_| foreign())?),
    };
    if bound != query {
        return Err(FieldError::new(
            "/page/token",
            "belongs to a different query: the subject, action, resource and context must stay the same from page to page",
        ));
    }
    match limit {
        Some(limit) if Some(limit) != issued => Err(FieldError::new(
            "/page/limit",
            "differs from the limit the page token was issued for: leave it out, or send the same",
        )),
        _ => Ok((offset, issued)),
    }
}

/// The digest a page token is bound to: the query without its token.
fn query_digest(target: Target, body: &Map<String, Value>) -> String {
    use sha2::Digest as _;
    let pick = |key: &str| body.get(key).cloned().unwrap_or(Value::Null);
    let query = json!({
        "search": target.name(),
        "subject": pick("subject"),
        "action": if target == Target::Action { Value::Null } else { pick("action") },
        "resource": pick("resource"),
        "context": pick("context"),
    });
    let digest = sha2::Sha256::digest(zt_evidence::canonical::to_string(&query).as_bytes());
    hex::encode(digest.get(..12).unwrap_or_default())
}

async fn search(
    app: &AppState,
    decider: &Decider,
    mut body: Map<String, Value>,
    target: Target,
) -> Result<Json<SearchResults>, Problem> {
    let started = std::time::Instant::now();
    if decider.session.is_some() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "forbidden",
            "searches are asked by enforcement points: an agent session cannot list what may be done",
        ));
    }
    bind(decider, &mut body, "", true).map_err(|e| Problem::invalid_fields(vec![e]))?;
    let limits = &app.limits;
    let mut errors = Vec::new();
    let need = |t: Target| {
        if t == target {
            Need::TypeOnly
        } else {
            Need::Id
        }
    };
    let subject = authzen::entity(
        "/subject",
        body.get("subject").cloned().filter(|v| !v.is_null()),
        need(Target::Subject),
        limits,
        &mut errors,
    );
    let resource = authzen::entity(
        "/resource",
        body.get("resource").cloned().filter(|v| !v.is_null()),
        need(Target::Resource),
        limits,
        &mut errors,
    );
    if target != Target::Action {
        authzen::action(
            "/action",
            body.get("action").cloned().filter(|v| !v.is_null()),
            limits,
            &mut errors,
        );
    }
    if !matches!(
        body.get("context"),
        None | Some(Value::Null | Value::Object(_))
    ) {
        errors.push(FieldError::new("/context", "must be an object"));
    }
    let page = page_request(&body, &mut errors);
    let (Some(subject), Some(resource), true) = (subject, resource, errors.is_empty()) else {
        return Err(Problem::invalid_fields(errors));
    };
    let query = query_digest(target, &body);
    let (start, limit) = match &page.token {
        Some(token) => {
            read_token(token, page.limit, &query).map_err(|e| Problem::invalid_fields(vec![e]))?
        }
        None => (0, page.limit),
    };

    // The candidates, each as the searched-for member of an evaluation.
    let engine = app.policies.engine();
    let candidates: Vec<Value> = match target {
        Target::Subject | Target::Resource => {
            let type_name = if target == Target::Subject {
                &subject.type_name
            } else {
                &resource.type_name
            };
            engine
                .entities_of_type(type_name)
                .iter()
                .map(|uid| json!({"type": type_name, "id": uid.id().unescaped()}))
                .collect()
        }
        Target::Action => engine
            .actions_for(&subject.type_name, &resource.type_name)
            .iter()
            .map(|name| json!({"name": name.as_str()}))
            .collect(),
    };
    let template = Evaluation {
        search: Some(target.name()),
        ..Evaluation::from_object(&body)
    };
    let wanted = limit.unwrap_or(usize::MAX);
    let mut requests = Vec::new();
    let mut verdicts = Vec::new();
    let mut found = Vec::new();
    let mut cursor = start.min(candidates.len());
    let mut allowed = 0;
    while cursor < candidates.len() && allowed < wanted && requests.len() < MAX_SEARCH_CANDIDATES {
        let Some(candidate) = candidates.get(cursor) else {
            break;
        };
        cursor += 1;
        let mut evaluation = template.clone();
        match target {
            Target::Subject => evaluation.subject = Some(candidate.clone()),
            Target::Resource => evaluation.resource = Some(candidate.clone()),
            Target::Action => evaluation.action = Some(candidate.clone()),
        }
        // A candidate that cannot be evaluated (a stored id over the limits, say) is left out.
        let Ok(request) = evaluation.validate(limits) else {
            continue;
        };
        let verdict = engine.decide(&request);
        if verdict.decision == Decision::Allow {
            allowed += 1;
        }
        found.push(candidate.clone());
        requests.push(request);
        verdicts.push(verdict);
    }
    drop(engine);
    // Only what the evidence log recorded as allowed is a result.
    // A search is not an attempt to act: its candidates are neither informed nor counted.
    let origin = Origin {
        started,
        acts: false,
        ..decider.origin(target.endpoint())
    };
    let answered = answer(app, origin, requests.iter().zip(verdicts).collect(), None).await;
    let results: Vec<Value> = found
        .into_iter()
        .zip(answered)
        .filter(|(_, answer)| answer.decision == Decision::Allow)
        .map(|(candidate, _)| candidate)
        .collect();
    let next_token = if cursor < candidates.len() {
        token(cursor, limit, &query)
    } else {
        String::new()
    };
    Ok(Json(SearchResults {
        page: Page {
            next_token,
            count: results.len(),
        },
        results,
    }))
}

/// PDP metadata (`/.well-known/authzen-configuration`).
#[utoipa::path(get, path = "/.well-known/authzen-configuration", responses((status = 200, description = "the PDP's metadata", body = Object)))]
pub(crate) async fn metadata(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let base = match &app.public_url {
        Some(url) => url.clone(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
                .unwrap_or("localhost");
            format!("http://{host}")
        }
    };
    Json(json!({
        "policy_decision_point": base,
        "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
        "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
        "search_subject_endpoint": format!("{base}/access/v1/search/subject"),
        "search_resource_endpoint": format!("{base}/access/v1/search/resource"),
        "search_action_endpoint": format!("{base}/access/v1/search/action"),
    }))
    .into_response()
}
