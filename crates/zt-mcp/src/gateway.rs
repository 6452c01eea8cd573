//! The gateway in front of one upstream MCP server: an MCP server to its client, an MCP client
//! to the upstream, and a decision before every `tools/call`.
//!
//! Architecture invariant: a `tools/call` reaches the upstream server only after an allow for
//! exactly that call (actor, tool, resource, argument digest) is on record; anything else
//! (deny, an invalid call, an unreachable decision service) answers the client without
//! touching the upstream.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    ContentBlock, ErrorCode, GetPromptRequestParams, GetPromptResponse, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ResultType, ServerConfig,
};
use rmcp::service::{RequestContext, RunningService, ServiceError};
use rmcp::{ErrorData as McpError, Peer, RoleClient, RoleServer, ServerHandler};
use serde_json::{Map, Value, json};
use zt_core::{Decision, DecisionRequest};

use crate::config::{ToolMapping, ToolsList};
use crate::decide::{Decider, Outcome};

/// Who the client is, as the transport established it.
#[derive(Debug, Clone)]
pub enum Identity {
    /// One caller for the whole connection (stdio: the agent session of
    /// `ZTINFRA_SESSION_TOKEN`, the actor a `[[client]]` token stands for, or the configured
    /// actor).
    Fixed(Caller),
    /// Each HTTP request carries its own verified [`Caller`], put there by the authentication
    /// layer.
    PerRequest,
}

/// The actor a client's token stands for, and the token itself when it is an agent session's
/// (passed on with every decision, so that the service checks the session each time).
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: String,
    pub session_token: Option<String>,
    /// The accepted plan the caller executes (`ZT-Plan` on HTTP, `ZTINFRA_PLAN` on stdio):
    /// each call is decided as its next step, and uses it.
    pub plan: Option<String>,
}

/// The gateway's view of one upstream server.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub service: RunningService<RoleClient, rmcp::model::ClientConfig>,
    pub tools: BTreeMap<String, ToolMapping>,
    /// What the gateway tells its clients about this server.
    pub info: ServerConfig,
}

impl Upstream {
    /// The upstream's name, capabilities and instructions as the gateway offers them: only
    /// what it forwards (tools, resources, prompts, completions, logging).
    pub fn offered(peer: &Peer<RoleClient>) -> ServerConfig {
        let mut info = ServerConfig::default();
        if let Some(upstream) = peer.peer_info() {
            info.capabilities = upstream.capabilities.clone();
            info.capabilities.experimental = None;
            info.capabilities.extensions = None;
            info.instructions = upstream.instructions.clone();
            if let Some(server_info) = &upstream.server_info {
                info.server_info = server_info.clone();
            }
        }
        info
    }

    fn peer(&self) -> &Peer<RoleClient> {
        self.service.peer()
    }
}

/// Settings every upstream shares.
#[derive(Debug, Clone)]
pub struct Policy {
    pub decider: Decider,
    pub tools_list: ToolsList,
    pub decide_resource_reads: bool,
    /// The approvals calls wait for, by the call (caller, tool, arguments): the same call made
    /// again presents its approval.
    pub approvals: Arc<Waiting>,
}

/// The approval each waiting call was answered with, so that the call repeated presents it.
#[derive(Debug, Default)]
pub struct Waiting(std::sync::Mutex<std::collections::HashMap<String, String>>);

/// Most calls remembered as waiting; past it the oldest half is forgotten (those calls then
/// ask again, and are named the same open approval).
const MAX_WAITING: usize = 4096;

impl Waiting {
    /// The key of a call: who, which tool, which arguments (canonical JSON), hashed.
    fn key(caller: &Caller, tool: &str, arguments: &Map<String, Value>) -> String {
        use sha2::Digest as _;
        let text = zt_evidence::canonical::to_string(&json!([
            caller.actor,
            caller.session_token,
            tool,
            arguments
        ]));
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    }

    fn get(&self, key: &str) -> Option<String> {
        self.0.lock().ok()?.get(key).cloned()
    }

    /// Remembers (`Some`) or forgets (`None`) the approval a call waits for.
    fn set(&self, key: String, approval: Option<String>) {
        let Ok(mut map) = self.0.lock() else { return };
        match approval {
            Some(id) => {
                if map.len() >= MAX_WAITING {
                    map.clear();
                }
                map.insert(key, id);
            }
            None => {
                map.remove(&key);
            }
        }
    }
}

/// The MCP server the client talks to, for one upstream. Cheap to clone: one per session.
#[derive(Debug, Clone)]
pub struct Gateway {
    upstream: Arc<Upstream>,
    policy: Arc<Policy>,
    identity: Identity,
}

/// The JSON-RPC error code of a call the policy denied outside `tools/call` (which answers
/// denials as tool results).
pub const DENIED: ErrorCode = ErrorCode(-32003);

impl Gateway {
    pub fn new(upstream: Arc<Upstream>, policy: Arc<Policy>, identity: Identity) -> Self {
        Self {
            upstream,
            policy,
            identity,
        }
    }

    fn caller(&self, context: &RequestContext<RoleServer>) -> Result<Caller, McpError> {
        match &self.identity {
            Identity::Fixed(caller) => Ok(caller.clone()),
            Identity::PerRequest => context
                .extensions
                .get::<axum::http::request::Parts>()
                .and_then(|parts| parts.extensions.get::<Caller>())
                .cloned()
                .ok_or_else(|| {
                    McpError::invalid_request("the request carries no verified session", None)
                }),
        }
    }

    /// The action a tool call is decided as: `mcp.<server>.<tool>`, with every character
    /// outside `[A-Za-z0-9_.-]` replaced by `_`.
    pub fn action(&self, tool: &str) -> String {
        format!("mcp.{}.{}", self.upstream.name, sanitize(tool))
    }

    fn request_for(
        &self,
        actor: String,
        tool: &str,
        arguments: &Map<String, Value>,
    ) -> Result<DecisionRequest, McpError> {
        let mapping = self.upstream.tools.get(tool);
        let mut fields = Map::new();
        let mut parts = Vec::new();
        for pointer in mapping.map(|m| m.resource.as_slice()).unwrap_or_default() {
            let value = arguments_value(arguments, pointer).ok_or_else(|| {
                McpError::invalid_params(
                    format!("tool `{tool}` needs the argument `{pointer}`: the gateway names the call's resource by it"),
                    None,
                )
            })?;
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(McpError::invalid_params(
                        format!(
                            "tool `{tool}`: the argument `{pointer}` names the call's resource and must be a string, number or boolean"
                        ),
                        None,
                    ));
                }
            };
            fields.insert(field_name(pointer), Value::String(text.clone()));
            parts.push(text);
        }
        let resource = if parts.is_empty() {
            self.upstream.name.clone()
        } else {
            parts.join("/")
        };
        let digest = crate::sha256_hex(
            zt_evidence::canonical::to_string(&Value::Object(arguments.clone())).as_bytes(),
        );
        let context = json!({
            "mcp": {
                "server": self.upstream.name,
                "tool": tool,
                "arguments_sha256": digest,
                "fields": fields,
            }
        });
        Ok(DecisionRequest {
            actor,
            action: self.action(tool),
            resource,
            context: context.as_object().cloned().unwrap_or_default(),
        })
    }

    /// The tools among `tools` that `caller` could ever be allowed to call.
    async fn callable(&self, caller: &Caller, tools: &[rmcp::model::Tool]) -> BTreeSet<String> {
        // A name that is no valid action can never be decided, so never allowed.
        let actions: Vec<String> = tools
            .iter()
            .map(|tool| self.action(&tool.name))
            .filter(|action| zt_core::ActionName::parse(action).is_ok())
            .collect();
        let possible: BTreeSet<String> = self
            .policy
            .decider
            .possible(&caller.actor, actions, caller.session_token.as_deref())
            .await
            .into_iter()
            .collect();
        tools
            .iter()
            .filter(|tool| possible.contains(&self.action(&tool.name)))
            .map(|tool| tool.name.to_string())
            .collect()
    }
}

/// `[A-Za-z0-9_.-]` kept, anything else `_`.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Field errors as one line.
pub(crate) fn joined(errors: &[zt_core::FieldError]) -> String {
    let detail: Vec<String> = errors.iter().map(ToString::to_string).collect();
    detail.join("; ")
}

/// `/owner` → `owner`, `/a/b` → `a.b`.
fn field_name(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

fn arguments_value<'a>(arguments: &'a Map<String, Value>, pointer: &str) -> Option<&'a Value> {
    let (first, rest) = pointer
        .strip_prefix('/')
        .map(|p| p.split_once('/').map_or((p, ""), |(a, b)| (a, b)))?;
    let first = first.replace("~1", "/").replace("~0", "~");
    let value = arguments.get(&first)?;
    if rest.is_empty() {
        Some(value)
    } else {
        value.pointer(&format!("/{rest}"))
    }
}

/// An upstream failure as the client sees it: the upstream's own JSON-RPC errors pass through;
/// a broken connection is an internal error naming the server.
fn upstream_error(name: &str, error: ServiceError) -> McpError {
    match error {
        ServiceError::McpError(error) => error,
        other => {
            tracing::warn!(server = name, error = %other, "upstream MCP server failed");
            McpError::internal_error(
                format!("the upstream MCP server `{name}` failed: {other}"),
                None,
            )
        }
    }
}

fn refusal(
    action: &str,
    resource: &str,
    decided: &zt_server::api::DecisionResponse,
) -> (String, Value) {
    let why: Vec<&str> = decided.reasons.iter().map(|r| r.message.as_str()).collect();
    let mut text = match &decided.approval {
        Some(ticket) => format!(
            "waits for a person's approval ({} of group `{}`; approval {}, status at {}): make the same call again once it is approved: {action} on {resource}",
            ticket.needed, ticket.group, ticket.id, ticket.status_url
        ),
        None => format!("denied by policy: {action} on {resource}"),
    };
    if !why.is_empty() {
        text.push_str(": ");
        text.push_str(&why.join("; "));
    }
    if !decided.decision_id.is_empty() {
        text.push_str(&format!(" (decision {}", decided.decision_id));
        if let Some(evidence) = &decided.evidence {
            text.push_str(&format!(", evidence #{}", evidence.seq));
        }
        text.push(')');
    }
    let mut structured = crate::decide::to_json(decided);
    if let Some(object) = structured.as_object_mut() {
        object.insert("action".into(), json!(action));
        object.insert("resource".into(), json!(resource));
    }
    (text, structured)
}

/// A list request forwarded as it is. A result from a server that negotiated an older protocol
/// lacks what 2026-07-28 clients require (`resultType`, `ttlMs`, `cacheScope`): the defaults
/// fill in, and a result the upstream may have tailored to the gateway is not shared.
macro_rules! forward_list {
    ($method:ident, $result:ty) => {
        async fn $method(
            &self,
            request: Option<PaginatedRequestParams>,
            _context: RequestContext<RoleServer>,
        ) -> Result<$result, McpError> {
            self.upstream
                .peer()
                .$method(request)
                .await
                .map(|mut listed| {
                    listed.result_type.get_or_insert(ResultType::COMPLETE);
                    listed.ttl_ms.get_or_insert(0);
                    listed
                        .cache_scope
                        .get_or_insert(rmcp::model::CacheScope::Private);
                    listed
                })
                .map_err(|e| upstream_error(&self.upstream.name, e))
        }
    };
}

impl ServerHandler for Gateway {
    fn get_info(&self) -> ServerConfig {
        self.upstream.info.clone()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = self.caller(&context)?;
        let empty = Map::new();
        let arguments = request.arguments.as_ref().unwrap_or(&empty);
        let decision_request = self.request_for(caller.actor.clone(), &request.name, arguments)?;
        let (action, resource) = (
            decision_request.action.clone(),
            decision_request.resource.clone(),
        );
        let waiting = Waiting::key(&caller, &request.name, arguments);
        let approval = self.policy.approvals.get(&waiting);
        let decided = match self
            .policy
            .decider
            .decide(
                decision_request,
                caller.session_token.as_deref(),
                caller.plan.as_deref(),
                approval.as_deref(),
            )
            .await
        {
            Outcome::Decided(decided) => decided,
            Outcome::Invalid(errors) => {
                return Err(McpError::invalid_params(
                    format!("the call cannot be decided: {}", joined(&errors)),
                    None,
                ));
            }
        };
        tracing::info!(server = %self.upstream.name, tool = %request.name, %resource, decision = %decided.decision, decision_id = %decided.decision_id, "tools/call decided");
        // A call that waits for an approval presents it when it is made again; an approval
        // used, or refused, is forgotten.
        let waits_for = decided.approval.as_ref().map(|ticket| ticket.id.clone());
        if waits_for.is_some() || approval.is_some() {
            self.policy.approvals.set(waiting, waits_for);
        }
        if decided.decision == Decision::Allow {
            return self
                .upstream
                .peer()
                .call_tool_once(request)
                .await
                .map(|mut response| {
                    if let CallToolResponse::Complete(result) = &mut response {
                        result.result_type.get_or_insert(ResultType::COMPLETE);
                    }
                    response
                })
                .map_err(|e| upstream_error(&self.upstream.name, e));
        }
        let (text, structured) = refusal(&action, &resource, &decided);
        let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
        result.structured_content = Some(structured);
        Ok(CallToolResponse::Complete(result))
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let caller = self.caller(&context)?;
        let mut listed = self
            .upstream
            .peer()
            .list_tools(request)
            .await
            .map_err(|e| upstream_error(&self.upstream.name, e))?;
        let callable = self.callable(&caller, &listed.tools).await;
        match self.policy.tools_list {
            ToolsList::Hide => listed
                .tools
                .retain(|tool| callable.contains(tool.name.as_ref())),
            ToolsList::Annotate => {
                for tool in &mut listed.tools {
                    if !callable.contains(tool.name.as_ref()) {
                        let note = "[never allowed by policy for this caller]";
                        tool.description = Some(Cow::Owned(match &tool.description {
                            Some(d) => format!("{note} {d}"),
                            None => note.to_owned(),
                        }));
                        tool.meta
                            .get_or_insert_with(Default::default)
                            .0
                            .insert("io.zt-infra/could-allow".into(), json!(false));
                    }
                }
            }
        }
        // The list depends on the caller and the active policies.
        listed.cache_scope = Some(rmcp::model::CacheScope::Private);
        listed.ttl_ms = Some(0);
        listed.result_type.get_or_insert(ResultType::COMPLETE);
        Ok(listed)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        if self.policy.decide_resource_reads {
            let caller = self.caller(&context)?;
            let action = format!("mcp.{}.resources.read", self.upstream.name);
            let decision_request = DecisionRequest {
                actor: caller.actor.clone(),
                action: action.clone(),
                resource: request.uri.clone(),
                context: json!({"mcp": {"server": self.upstream.name, "uri": request.uri}})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            };
            let decided = match self
                .policy
                .decider
                .decide(
                    decision_request,
                    caller.session_token.as_deref(),
                    caller.plan.as_deref(),
                    None,
                )
                .await
            {
                Outcome::Decided(decided) => decided,
                Outcome::Invalid(errors) => {
                    return Err(McpError::invalid_params(joined(&errors), None));
                }
            };
            if decided.decision != Decision::Allow {
                let (text, structured) = refusal(&action, &request.uri, &decided);
                return Err(McpError::new(DENIED, text, Some(structured)));
            }
        }
        self.upstream
            .peer()
            .read_resource_once(request)
            .await
            .map(|mut response| {
                if let ReadResourceResponse::Complete(result) = &mut response {
                    result.result_type.get_or_insert(ResultType::COMPLETE);
                }
                response
            })
            .map_err(|e| upstream_error(&self.upstream.name, e))
    }

    forward_list!(list_resources, ListResourcesResult);

    forward_list!(list_resource_templates, ListResourceTemplatesResult);

    forward_list!(list_prompts, ListPromptsResult);

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        self.upstream
            .peer()
            .get_prompt_once(request)
            .await
            .map(|mut response| {
                if let GetPromptResponse::Complete(result) = &mut response {
                    result.result_type.get_or_insert(ResultType::COMPLETE);
                }
                response
            })
            .map_err(|e| upstream_error(&self.upstream.name, e))
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        self.upstream
            .peer()
            .complete(request)
            .await
            .map(|mut completed| {
                completed.result_type.get_or_insert(ResultType::COMPLETE);
                completed
            })
            .map_err(|e| upstream_error(&self.upstream.name, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized_into_actions() {
        assert_eq!(sanitize("get_current_time"), "get_current_time");
        assert_eq!(sanitize("read file/x ü"), "read_file_x__");
        assert_eq!(field_name("/owner"), "owner");
        assert_eq!(field_name("/a/b"), "a.b");
    }

    #[test]
    fn pointers_reach_into_arguments() {
        let args = json!({"path": "/tmp/x", "a/b": 1, "repo": {"owner": "o"}});
        let args = args.as_object().unwrap();
        assert_eq!(arguments_value(args, "/path"), Some(&json!("/tmp/x")));
        assert_eq!(arguments_value(args, "/a~1b"), Some(&json!(1)));
        assert_eq!(arguments_value(args, "/repo/owner"), Some(&json!("o")));
        assert_eq!(arguments_value(args, "/missing"), None);
        assert_eq!(arguments_value(args, "path"), None);
    }
}
