//! One check: Envoy's `CheckRequest` in, a decision, a `CheckResponse` out.
//!
//! Architecture invariant: only a decision of `allow` on record answers OK. Every other
//! outcome (a deny, an approval still needed, a request no route takes, an agent that cannot
//! be named, a decision that could not be made) answers with a denied response carrying a
//! problem document (RFC 9457), and Envoy does not forward the request.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::google::rpc;
use serde_json::{Map, Value, json};
use tonic::{Code, Request, Response, Status};
use zt_core::{Decision, DecisionRequest};
use zt_identity::svid::X509Svid;
use zt_server::Ask;
use zt_server::api::DecisionResponse;

use crate::ExtAuthz;
use crate::routes::{self, Matched};

/// The endpoint ext_authz decisions are counted and recorded under.
pub const ENDPOINT: &str = "ext_authz";

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // The enforcement point (Envoy) authenticates with its credential in the call's
        // metadata; what it passes on of the client is read only once it has.
        let credential = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes().to_vec());
        let pep = self
            .decisions
            .enforcement_point(credential.as_deref())
            .await
            .map_err(|problem| {
                tracing::warn!(status = problem.status, detail = %problem.detail, "ext_authz: the enforcement point's call is refused");
                let code = match problem.status {
                    401 => Code::Unauthenticated,
                    403 => Code::PermissionDenied,
                    _ => Code::Unavailable,
                };
                Status::new(code, problem.detail)
            })?;
        Ok(Response::new(self.answer(pep, request.into_inner()).await))
    }
}

/// Why a request was refused before or instead of a decision.
struct Refusal {
    status: u16,
    slug: &'static str,
    title: &'static str,
    detail: String,
}

impl Refusal {
    fn new(
        status: u16,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
        }
    }
}

/// Who the request is for, and how that is known.
struct Identity<'a> {
    /// Empty when the session names it.
    actor: String,
    how: &'static str,
    token: Option<&'a str>,
    holder: Option<Arc<X509Svid>>,
    /// The client's SPIFFE ID, when its certificate verified (or Envoy's check is trusted).
    peer: Option<String>,
}

impl ExtAuthz {
    async fn answer(&self, pep: Option<zt_identity::Caller>, check: CheckRequest) -> CheckResponse {
        let attributes = check.attributes.unwrap_or_default();
        let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
        let source = attributes.source.unwrap_or_default();
        let headers = header_map(&http);
        match self.decide(pep, &http, &headers, &source).await {
            Ok((response, token_to_remove)) => self.respond(&response, token_to_remove),
            Err(refusal) => {
                metrics::counter!("ztinfra_ext_authz_refusals_total", "reason" => refusal.slug)
                    .increment(1);
                tracing::info!(status = refusal.status, detail = %refusal.detail, method = %http.method, path = %routes::path_of(&http.path), "ext_authz: refused");
                denied(
                    refusal.status,
                    &problem(refusal.slug, refusal.title, refusal.status, &refusal.detail),
                    Vec::new(),
                )
            }
        }
    }

    async fn decide(
        &self,
        pep: Option<zt_identity::Caller>,
        http: &HttpRequest,
        headers: &BTreeMap<String, String>,
        source: &envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer,
    ) -> Result<(DecisionResponse, bool), Refusal> {
        let config = &*self.config;
        let matched = config.routes.find(&http.method, &http.path).map_err(|e| {
            Refusal::new(
                403,
                "no-route",
                "no route takes this request",
                e.to_string(),
            )
        })?;
        let identity = self.identity(&matched, headers, source)?;
        let context = context(config, http, headers, &matched, &identity);
        let request = DecisionRequest {
            actor: identity.actor,
            action: matched.action,
            resource: matched.resource,
            context,
        };
        let ask = Ask {
            endpoint: ENDPOINT,
            pep,
            session_token: identity.token,
            holder: identity.holder,
            step: headers.get(crate::STEP_HEADER).map(String::as_str),
            approval: headers.get(crate::APPROVAL_HEADER).map(String::as_str),
        };
        let remove_token = identity.token.is_some() && !config.forward_token;
        match self.decisions.decide(request, ask).await {
            Ok(response) => Ok((response, remove_token)),
            Err(problem) => Err(Refusal {
                status: problem.status,
                slug: problem.kind,
                title: problem.title,
                detail: problem.detail,
            }),
        }
    }

    /// The agent: of the session token, else of the verified client certificate, else (on a
    /// route that trusts it) the declared one.
    fn identity<'h>(
        &self,
        matched: &Matched<'_>,
        headers: &'h BTreeMap<String, String>,
        source: &envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer,
    ) -> Result<Identity<'h>, Refusal> {
        let config = &*self.config;
        let unauthenticated = |detail: String| {
            Refusal::new(401, "unauthenticated", "authentication required", detail)
        };
        let token = match headers.get(&config.token_header) {
            None => None,
            Some(value) => Some(bearer(value).ok_or_else(|| {
                unauthenticated(format!(
                    "the `{}` header carries an agent session token (bare, or `Bearer <token>`)",
                    config.token_header
                ))
            })?),
        };
        let has_peer = !source.principal.is_empty();
        if token.is_some() {
            // The token names the agent; a certificate that verifies is what a bound token
            // must be presented with (one that does not is no holder: a bound token fails).
            let (holder, peer) = match has_peer.then(|| self.peer(source)) {
                Some(Ok(holder)) => (holder, Some(source.principal.clone())),
                _ => (None, None),
            };
            return Ok(Identity {
                actor: String::new(),
                how: "session",
                token,
                holder,
                peer,
            });
        }
        if has_peer {
            let holder = self.peer(source)?;
            let agent = self
                .decisions
                .workload_agent(&source.principal)
                .map_err(|e| {
                    Refusal::new(403, "unmapped-workload", "the client is no agent here", e)
                })?;
            return Ok(Identity {
                actor: agent,
                how: "spiffe",
                token: None,
                holder,
                peer: Some(source.principal.clone()),
            });
        }
        if matched.trust_declared_actor
            && let Some(actor) = headers.get(&config.declared_actor_header)
            && !actor.trim().is_empty()
        {
            return Ok(Identity {
                actor: actor.trim().to_owned(),
                how: "declared",
                token: None,
                holder: None,
                peer: None,
            });
        }
        Err(unauthenticated(format!(
            "the request names no agent: send its session token in the `{}` header{}",
            config.token_header,
            if matched.trust_declared_actor {
                format!(", or its name in `{}`", config.declared_actor_header)
            } else {
                ", or come with a client certificate (X.509-SVID) of an agent".to_owned()
            }
        )))
    }

    /// The client certificate Envoy passed on, verified against the service's trust bundles
    /// and naming the client Envoy names; `None` when Envoy's check is trusted instead.
    fn peer(
        &self,
        source: &envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer,
    ) -> Result<Option<Arc<X509Svid>>, Refusal> {
        if !self.config.verify_peer_certificate {
            return Ok(None);
        }
        let refused = |detail: String| {
            Refusal::new(
                403,
                "unverified-peer",
                "the client certificate does not verify",
                detail,
            )
        };
        if source.certificate.is_empty() {
            return Err(refused(
                "the request came with a client certificate, but Envoy did not pass it on to be verified: set `include_peer_certificate: true` in its ext_authz filter (or `verify_peer_certificate = false` under `[ext_authz]` to trust Envoy's check)".into(),
            ));
        }
        let pem = routes::percent_decode(source.certificate.as_bytes())
            .ok_or_else(|| refused("the certificate passed on is not URL-encoded PEM".into()))?;
        let svid = self.decisions.workload_certificate(&pem).map_err(refused)?;
        if svid.id.as_str() != source.principal {
            return Err(refused(format!(
                "Envoy names the client `{}`, its certificate `{}`",
                source.principal, svid.id
            )));
        }
        Ok(Some(svid))
    }

    fn respond(&self, response: &DecisionResponse, remove_token: bool) -> CheckResponse {
        let config = &*self.config;
        let id_header = |id: &str| {
            config
                .decision_header
                .iter()
                .map(|name| header(name, id))
                .collect::<Vec<_>>()
        };
        match response.decision {
            Decision::Allow => CheckResponse {
                status: Some(rpc::Status {
                    code: Code::Ok.into(),
                    ..rpc::Status::default()
                }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: id_header(&response.decision_id),
                    headers_to_remove: if remove_token {
                        vec![config.token_header.clone()]
                    } else {
                        Vec::new()
                    },
                    response_headers_to_add: id_header(&response.decision_id),
                    ..OkHttpResponse::default()
                })),
                ..CheckResponse::default()
            },
            Decision::Deny => {
                let mut body = problem("denied", "denied by policy", 403, &reasons_text(response));
                merge(&mut body, response);
                denied(403, &body, id_header(&response.decision_id))
            }
            Decision::ApprovalRequired => {
                let mut headers = id_header(&response.decision_id);
                let detail = match &response.approval {
                    Some(ticket) => {
                        headers.push(header("zt-approval-required", &ticket.id));
                        format!(
                            "this request waits for approval `{}` (group `{}`); once it is approved, send it again with the header `ZT-Approval: {}`",
                            ticket.id, ticket.group, ticket.id
                        )
                    }
                    None => reasons_text(response),
                };
                let mut body = problem("approval-required", "approval required", 403, &detail);
                merge(&mut body, response);
                denied(403, &body, headers)
            }
        }
    }
}

/// The request's headers, by lowercase name (repeated ones joined with `,`), from whichever
/// form Envoy sent them in.
fn header_map(http: &HttpRequest) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = http
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    if let Some(raw) = &http.header_map {
        for h in &raw.headers {
            let value = if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            };
            map.entry(h.key.to_ascii_lowercase())
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(&value);
                })
                .or_insert(value);
        }
    }
    map
}

/// A token from a header value: bare, or after `Bearer `.
fn bearer(value: &str) -> Option<&str> {
    let value = value.trim();
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        Some(_) => return None,
        None if value.eq_ignore_ascii_case("bearer") => return None,
        None => value,
    };
    (!token.is_empty()).then_some(token)
}

/// `context.http`: what the request is, as Envoy saw it.
fn context(
    config: &crate::Config,
    http: &HttpRequest,
    headers: &BTreeMap<String, String>,
    matched: &Matched<'_>,
    identity: &Identity<'_>,
) -> Map<String, Value> {
    let selected: Map<String, Value> = config
        .context_headers
        .iter()
        .filter_map(|name| Some((name.clone(), Value::String(headers.get(name)?.clone()))))
        .collect();
    let mut view = json!({
        "method": http.method.to_ascii_uppercase(),
        "path": routes::path_of(&http.path),
        "query": routes::query_of(&http.path),
        "host": http.host,
        "route": matched.route,
        "params": matched.params,
        "headers": selected,
        "identity": identity.how,
    });
    if let (Some(peer), Some(members)) = (&identity.peer, view.as_object_mut()) {
        members.insert("peer".into(), peer.clone().into());
    }
    let mut context = Map::new();
    context.insert("http".into(), view);
    context
}

fn header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: value.to_owned(),
            ..HeaderValue::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..HeaderValueOption::default()
    }
}

fn problem(slug: &str, title: &str, status: u16, detail: &str) -> Value {
    json!({
        "type": format!("urn:zt-infra:problem:{slug}"),
        "title": title,
        "status": status,
        "detail": detail,
    })
}

/// The decision's own members (`decision`, `decision_id`, `reasons`, `approval`, `evidence`)
/// added to a problem document.
fn merge(body: &mut Value, response: &DecisionResponse) {
    if let (Some(members), Ok(Value::Object(decision))) =
        (body.as_object_mut(), serde_json::to_value(response))
    {
        for (key, value) in decision {
            members.entry(key).or_insert(value);
        }
    }
}

fn reasons_text(response: &DecisionResponse) -> String {
    let reasons: Vec<&str> = response
        .reasons
        .iter()
        .map(|r| r.message.as_str())
        .collect();
    if reasons.is_empty() {
        "denied".to_owned()
    } else {
        reasons.join("; ")
    }
}

/// A denied response: `status`, a problem document, and `headers`.
fn denied(status: u16, body: &Value, mut headers: Vec<HeaderValueOption>) -> CheckResponse {
    headers.push(header("content-type", "application/problem+json"));
    headers.push(header("cache-control", "no-store"));
    let code = match status {
        401 => Code::Unauthenticated,
        503 => Code::Unavailable,
        _ => Code::PermissionDenied,
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: code.into(),
            message: body
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            ..rpc::Status::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers,
            body: body.to_string(),
        })),
        ..CheckResponse::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_bare_or_bearer() {
        assert_eq!(bearer("abc"), Some("abc"));
        assert_eq!(bearer("Bearer abc "), Some("abc"));
        assert_eq!(bearer("bearer  abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer(" "), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn headers_come_from_either_form() {
        let mut http = HttpRequest::default();
        http.headers.insert("X-Ticket".into(), "T-1".into());
        http.header_map = Some(envoy_types::pb::envoy::config::core::v3::HeaderMap {
            headers: vec![
                HeaderValue {
                    key: "x-a".into(),
                    raw_value: b"1".to_vec(),
                    ..HeaderValue::default()
                },
                HeaderValue {
                    key: "x-a".into(),
                    raw_value: b"2".to_vec(),
                    ..HeaderValue::default()
                },
            ],
        });
        let map = header_map(&http);
        assert_eq!(map.get("x-ticket").map(String::as_str), Some("T-1"));
        assert_eq!(map.get("x-a").map(String::as_str), Some("1,2"));
    }
}
