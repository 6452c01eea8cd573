//! The decision contract: what a caller asks and what it is told.
//!
//! A request arrives as [`DecisionRequest`] (the wire shape, deserialized as is) and becomes a
//! [`ValidRequest`] only through [`DecisionRequest::validate`], which checks it against
//! [`Limits`] and converts its context into a Cedar context. The engine takes only
//! `ValidRequest`s, so nothing unchecked reaches policy evaluation.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Typed limits on what a single request may carry. Every limit is a configuration value with
/// a safe default; the server passes its configured copy to [`DecisionRequest::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest `actor`, `action` or `resource`, in bytes.
    pub max_id_bytes: usize,
    /// Deepest nesting of objects and arrays inside `context` (the context object itself is
    /// depth 1).
    pub max_context_depth: usize,
    /// Most requests in one batch.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_id_bytes: 1024,
            max_context_depth: 32,
            max_batch: 100,
        }
    }
}

/// A decision request as it arrives on the wire.
///
/// Unknown top-level fields are ignored, so that newer clients can talk to older servers. Later
/// fields (session lineage, delegation chain, approval, plan step) join this struct as optional
/// members.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(example = json!({"actor": "demo-agent", "action": "aws.ec2.terminate_instances", "resource": "i-demo", "context": {"env": "prod"}}))]
pub struct DecisionRequest {
    /// Who acts: the agent (or agent session) asking to act. Becomes the Cedar principal
    /// `Agent::"<actor>"`. May be left out when the request carries an agent session token:
    /// the session's agent is the actor.
    pub actor: String,
    /// What it attempts, as a dotted name such as `aws.ec2.terminate_instances`. Becomes
    /// `Action::"<action>"`, a member of `Action::"aws.ec2"`, itself a member of `Action::"aws"`.
    pub action: String,
    /// What it acts on. Becomes the Cedar resource `Resource::"<resource>"`.
    pub resource: String,
    /// Any JSON object; becomes the Cedar context. Integers, strings, booleans, arrays and
    /// objects map directly; `null` members are dropped; other numbers are rejected.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub context: Map<String, Value>,
}

/// Reads a request from a JSON object only. (serde's derived implementation would also take an
/// array of the field values in order, a shape no client means to send.)
impl<'de> Deserialize<'de> for DecisionRequest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RequestVisitor {
            resource_optional: false,
        })
    }
}

/// A decision request of the reference contract (`POST /actions`), where `resource` may be
/// left out: it then stands for no particular resource, the empty string, which becomes the
/// Cedar resource `Resource::""` and is recorded as `"resource": ""` (see
/// [`DecisionRequest::validate_reference`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceRequest(pub DecisionRequest);

impl<'de> Deserialize<'de> for ReferenceRequest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(RequestVisitor {
                resource_optional: true,
            })
            .map(ReferenceRequest)
    }
}

struct RequestVisitor {
    resource_optional: bool,
}

impl<'de> serde::de::Visitor<'de> for RequestVisitor {
    type Value = DecisionRequest;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a decision request object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let (mut actor, mut action, mut resource, mut context) = (None, None, None, None);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let slot = match key.as_ref() {
                "actor" => &mut actor,
                "action" => &mut action,
                "resource" => &mut resource,
                "context" => {
                    if context.is_some() {
                        return Err(A::Error::duplicate_field("context"));
                    }
                    context = Some(map.next_value()?);
                    continue;
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(A::Error::custom(format_args!("duplicate field `{key}`")));
            }
            *slot = Some(map.next_value()?);
        }
        Ok(DecisionRequest {
            // Left out, it is the actor of the caller's agent session, or else an error of
            // `validate`.
            actor: actor.unwrap_or_default(),
            action: action.ok_or_else(|| A::Error::missing_field("action"))?,
            resource: match resource {
                Some(resource) => resource,
                None if self.resource_optional => String::new(),
                None => return Err(A::Error::missing_field("resource")),
            },
            context: context.unwrap_or_default(),
        })
    }
}

/// One thing wrong with a request, located by a JSON pointer (RFC 6901) into the request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// Where in the body, for example `/context/amount`. Empty for the body as a whole.
    pub pointer: String,
    /// What is wrong there.
    pub detail: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pointer.is_empty() {
            f.write_str(&self.detail)
        } else {
            write!(f, "`{}`: {}", self.pointer, self.detail)
        }
    }
}

/// A request that passed validation: its ids are within limits, its action name is a proper
/// dotted name, its principal and resource are typed Cedar entities, and its context is already
/// a Cedar context.
///
/// Every interface (the ZT-Infra contract, AuthZEN, the `/actions` reference contract) turns
/// its own wire shape into this one type, so the engine and the evidence log see one request.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    /// The request as it enters the evidence record: the interface's own shape, as received
    /// (defaults resolved, `null` members dropped).
    record: Value,
    principal: Party,
    action: ActionName,
    resource: Party,
    cedar_context: CedarContext,
}

/// A valid request's context as Cedar will see it. Plain JSON is kept as Cedar expressions,
/// made into a Cedar context once, when the request is decided, so that what the service adds
/// after validation (`behaviour`) costs no second conversion of the rest; a context with
/// Cedar's `__entity` or `__extn` escapes is Cedar's own reading of it, made at validation (so
/// that its errors are the caller's, 400).
#[derive(Debug, Clone)]
pub(crate) enum CedarContext {
    Plain(Vec<(String, cedar_policy::RestrictedExpression)>),
    Read(cedar_policy::Context),
}

impl CedarContext {
    /// The Cedar context.
    pub(crate) fn build(&self) -> Result<cedar_policy::Context, String> {
        match self {
            Self::Plain(pairs) => cedar_policy::Context::from_pairs(pairs.iter().cloned())
                .map_err(|e| format!("the context cannot be read by Cedar: {e}")),
            Self::Read(context) => Ok(context.clone()),
        }
    }
}

/// The principal or the resource of a valid request.
#[derive(Debug, Clone)]
pub(crate) struct Party {
    pub(crate) uid: cedar_policy::EntityUid,
    /// Attributes sent with the request. They override the attributes of the same name that
    /// the entity store holds for this entity.
    pub(crate) attrs: Option<std::collections::HashMap<String, cedar_policy::RestrictedExpression>>,
}

impl Party {
    /// `type_name::"id"` with the attributes in `properties` (a JSON object already checked by
    /// [`drop_nulls_and_check`]); `pointer` locates `properties` in the request for errors.
    pub(crate) fn new(
        type_name: cedar_policy::EntityTypeName,
        id: &str,
        properties: Option<&Map<String, Value>>,
        pointer: &str,
    ) -> Result<Self, FieldError> {
        let uid = cedar_policy::EntityUid::from_type_name_and_id(
            type_name,
            cedar_policy::EntityId::new(id),
        );
        let attrs = match properties {
            Some(properties) if !properties.is_empty() => {
                if let Some(attrs) = plain_attributes(properties) {
                    return Ok(Self {
                        uid,
                        attrs: Some(attrs.collect()),
                    });
                }
                let entity = cedar_policy::Entity::from_json_value(
                    serde_json::json!({
                        "uid": {"__entity": {"type": uid.type_name().to_string(), "id": id}},
                        "attrs": properties,
                        "parents": []
                    }),
                    None,
                )
                .map_err(|e| FieldError::new(pointer, e.to_string()))?;
                Some(entity.into_inner().1)
            }
            _ => None,
        };
        Ok(Self { uid, attrs })
    }
}

/// A checked context (see [`drop_nulls_and_check`]) as Cedar's.
pub(crate) fn cedar_context(context: &Map<String, Value>) -> Result<CedarContext, FieldError> {
    match plain_attributes(context) {
        Some(pairs) => Ok(CedarContext::Plain(pairs.collect())),
        None => cedar_policy::Context::from_json_value(Value::Object(context.clone()), None)
            .map(CedarContext::Read)
            .map_err(|e| FieldError::new("/context", e.to_string())),
    }
}

/// A JSON object's members as Cedar values, built directly when every value is plain JSON
/// (strings, booleans, 64-bit integers, arrays and objects without `__` keys): Cedar's own JSON
/// reader tries each of its value forms in turn, at about 3 µs per attribute here, and an 8 KB
/// context made it most of a decision's cost. `None` when some value needs Cedar's reader (an
/// `__entity` or `__extn` escape, or a value Cedar rejects), which then gives the same result or
/// the same error as before.
fn plain_attributes(
    object: &Map<String, Value>,
) -> Option<impl Iterator<Item = (String, cedar_policy::RestrictedExpression)>> {
    if object.keys().any(|k| k.starts_with("__")) {
        return None;
    }
    let values = object
        .values()
        .map(plain_value)
        .collect::<Option<Vec<_>>>()?;
    Some(object.keys().cloned().zip(values))
}

fn plain_value(value: &Value) -> Option<cedar_policy::RestrictedExpression> {
    use cedar_policy::RestrictedExpression as R;
    Some(match value {
        Value::Bool(b) => R::new_bool(*b),
        Value::String(s) => R::new_string(s.clone()),
        Value::Number(n) => R::new_long(n.as_i64()?),
        Value::Array(items) => {
            R::new_set(items.iter().map(plain_value).collect::<Option<Vec<_>>>()?)
        }
        Value::Object(members) => R::new_record(plain_attributes(members)?).ok()?,
        Value::Null => return None,
    })
}

/// The context member the service sets from what it observed of the agent and its session.
pub const BEHAVIOUR: &str = "behaviour";

/// The Cedar type of the ZT-Infra contract's actors, `Agent`.
pub const AGENT_TYPE: &str = "Agent";
/// The Cedar type of the ZT-Infra contract's resources, `Resource`.
pub const RESOURCE_TYPE: &str = "Resource";

/// `Agent` and `Resource`, parsed once.
static CONTRACT_TYPES: std::sync::LazyLock<
    Result<(cedar_policy::EntityTypeName, cedar_policy::EntityTypeName), String>,
> = std::sync::LazyLock::new(|| Ok((entity_type(AGENT_TYPE)?, entity_type(RESOURCE_TYPE)?)));

/// Parses a Cedar entity type name, such as `user` or `Docs::Folder`.
pub(crate) fn entity_type(name: &str) -> Result<cedar_policy::EntityTypeName, String> {
    name.parse().map_err(|_| {
        format!("`{name}` is not a Cedar entity type name (letters, digits and `_`, optionally namespaced with `::`)")
    })
}

impl ValidRequest {
    /// The request as it enters the evidence record.
    pub fn record(&self) -> &Value {
        &self.record
    }

    /// The principal's id (without its type).
    pub fn actor(&self) -> &str {
        self.principal.uid.id().unescaped()
    }

    pub fn action(&self) -> &ActionName {
        &self.action
    }

    /// The resource's id (without its type).
    pub fn resource(&self) -> &str {
        self.resource.uid.id().unescaped()
    }

    /// The resource's Cedar type name (`Resource` for the ZT-Infra contract).
    pub fn resource_type(&self) -> std::borrow::Cow<'_, str> {
        let name = self.resource.uid.type_name();
        if name.namespace().is_empty() {
            name.basename().into()
        } else {
            name.to_string().into()
        }
    }

    /// A member of the request's context, as recorded.
    pub fn context_member(&self, name: &str) -> Option<&Value> {
        self.record.get("context")?.get(name)
    }

    /// Adds a member the service sets (such as `behaviour`) to the context, both as Cedar
    /// sees it and as it is recorded. The value must be plain JSON (no `__` escapes, integers
    /// only); a member already there is an error: what the service sets, the caller cannot send.
    pub fn add_context(&mut self, name: &str, value: Value) -> Result<(), String> {
        if self.context_member(name).is_some() {
            return Err(format!("the context already has `{name}`"));
        }
        let converted = plain_value(&value).ok_or_else(|| format!("`{name}` is not plain JSON"))?;
        match &mut self.cedar_context {
            CedarContext::Plain(pairs) => pairs.push((name.to_owned(), converted)),
            CedarContext::Read(context) => {
                *context = context
                    .clone()
                    .merge([(name.to_owned(), converted)])
                    .map_err(|e| format!("`{name}` cannot join the context: {e}"))?;
            }
        }
        let Some(record) = self.record.as_object_mut() else {
            return Err("the recorded request is not an object".into());
        };
        match record
            .entry("context")
            .or_insert_with(|| Value::Object(Map::new()))
        {
            Value::Object(context) => {
                context.insert(name.to_owned(), value);
                Ok(())
            }
            _ => Err("the recorded context is not an object".into()),
        }
    }

    pub(crate) fn principal(&self) -> &Party {
        &self.principal
    }

    pub(crate) fn resource_party(&self) -> &Party {
        &self.resource
    }

    pub(crate) fn cedar_context(&self) -> &CedarContext {
        &self.cedar_context
    }

    /// Assembles a request from parts an interface has already checked.
    pub(crate) fn from_parts(
        record: Value,
        principal: Party,
        action: ActionName,
        resource: Party,
        cedar_context: CedarContext,
    ) -> Self {
        Self {
            record,
            principal,
            action,
            resource,
            cedar_context,
        }
    }
}

/// A dotted action name with no empty segment, such as `aws.ec2.terminate_instances`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActionName(String);

impl ActionName {
    /// Checks that `name` is a usable action name: not empty, no control characters, and no
    /// empty dot-separated segment.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if name.chars().any(char::is_control) {
            return Err("must not contain control characters".to_owned());
        }
        if name.split('.').any(str::is_empty) {
            return Err(format!(
                "`{name}` has an empty segment: dots separate non-empty names, as in `aws.ec2.terminate_instances`"
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name itself followed by every dotted ancestor, nearest first:
    /// `a.b.c`, `a.b`, `a`.
    pub fn self_and_ancestors(&self) -> impl Iterator<Item = &str> {
        let name = self.0.as_str();
        std::iter::once(name).chain(
            name.char_indices()
                .rev()
                .filter(|&(_, c)| c == '.')
                .filter_map(move |(i, _)| name.get(..i)),
        )
    }

    /// The nearest dotted ancestor, if any: `a.b` for `a.b.c`.
    pub fn parent(&self) -> Option<&str> {
        self.0.rfind('.').and_then(|i| self.0.get(..i))
    }
}

impl std::fmt::Display for ActionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl DecisionRequest {
    /// Checks the request against `limits` and converts its context for Cedar. Every problem
    /// found is reported, each with the pointer to the field it concerns.
    pub fn validate(self, limits: &Limits) -> Result<ValidRequest, Vec<FieldError>> {
        self.check(limits, false)
    }

    /// As [`validate`](Self::validate), but with the reference contract's reading of an empty
    /// `resource`: no particular resource, `Resource::""`, rather than an error.
    pub fn validate_reference(self, limits: &Limits) -> Result<ValidRequest, Vec<FieldError>> {
        self.check(limits, true)
    }

    fn check(
        mut self,
        limits: &Limits,
        empty_resource: bool,
    ) -> Result<ValidRequest, Vec<FieldError>> {
        let mut errors = Vec::new();
        for (field, value) in [
            ("actor", &self.actor),
            ("action", &self.action),
            ("resource", &self.resource),
        ] {
            if value.is_empty() && !(empty_resource && field == "resource") {
                errors.push(FieldError::new(format!("/{field}"), "must not be empty"));
            } else if value.len() > limits.max_id_bytes {
                errors.push(FieldError::new(
                    format!("/{field}"),
                    format!(
                        "is {} bytes long; the limit is {} bytes",
                        value.len(),
                        limits.max_id_bytes
                    ),
                ));
            }
        }
        let action = match ActionName::parse(&self.action) {
            Ok(action) => Some(action),
            Err(detail) => {
                if !self.action.is_empty() {
                    errors.push(FieldError::new("/action", detail));
                }
                None
            }
        };
        drop_nulls_and_check(&mut self.context, "/context", 1, limits, &mut errors);
        let (Some(action), true) = (action, errors.is_empty()) else {
            return Err(errors);
        };
        let (agent, resource_type) = CONTRACT_TYPES
            .clone()
            .map_err(|e| vec![FieldError::new("", e)])?;
        let principal = Party::new(agent, &self.actor, None, "/actor").map_err(|e| vec![e])?;
        let resource =
            Party::new(resource_type, &self.resource, None, "/resource").map_err(|e| vec![e])?;
        let cedar_context = cedar_context(&self.context).map_err(|e| vec![e])?;
        // The record is built from the request's own fields, moved, in the wire shape.
        let mut record = Map::with_capacity(4);
        record.insert("actor".into(), Value::String(self.actor));
        record.insert("action".into(), Value::String(self.action));
        record.insert("resource".into(), Value::String(self.resource));
        record.insert("context".into(), Value::Object(self.context));
        Ok(ValidRequest::from_parts(
            Value::Object(record),
            principal,
            action,
            resource,
            cedar_context,
        ))
    }
}

/// Walks a context object: drops `null` members (absent, for Cedar), and reports nesting
/// deeper than the limit, non-integer numbers, and `null` inside arrays.
pub(crate) fn drop_nulls_and_check(
    object: &mut Map<String, Value>,
    pointer: &str,
    depth: usize,
    limits: &Limits,
    errors: &mut Vec<FieldError>,
) {
    check_object(object, &mut pointer.to_owned(), depth, limits, errors);
}

/// Appends `/key`, escaped (RFC 6901), to a JSON pointer.
fn push_segment(pointer: &mut String, key: &str) {
    pointer.push('/');
    for c in key.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// [`drop_nulls_and_check`] with the pointer in a buffer that grows and shrinks as the walk
/// goes down and up, rather than a new string per member.
fn check_object(
    object: &mut Map<String, Value>,
    pointer: &mut String,
    depth: usize,
    limits: &Limits,
    errors: &mut Vec<FieldError>,
) {
    if depth > limits.max_context_depth {
        errors.push(FieldError::new(
            pointer.as_str(),
            format!(
                "nests deeper than the limit of {} levels",
                limits.max_context_depth
            ),
        ));
        return;
    }
    object.retain(|_, v| !v.is_null());
    for (key, value) in object.iter_mut() {
        let len = pointer.len();
        push_segment(pointer, key);
        check_value(value, pointer, depth, limits, errors);
        pointer.truncate(len);
    }
}

fn check_value(
    value: &mut Value,
    pointer: &mut String,
    depth: usize,
    limits: &Limits,
    errors: &mut Vec<FieldError>,
) {
    match value {
        Value::Object(object) => check_object(object, pointer, depth + 1, limits, errors),
        Value::Array(items) => {
            if depth + 1 > limits.max_context_depth {
                errors.push(FieldError::new(
                    pointer.as_str(),
                    format!(
                        "nests deeper than the limit of {} levels",
                        limits.max_context_depth
                    ),
                ));
                return;
            }
            for (i, item) in items.iter_mut().enumerate() {
                let len = pointer.len();
                push_segment(pointer, &i.to_string());
                if item.is_null() {
                    errors.push(FieldError::new(
                        pointer.as_str(),
                        "`null` is not allowed inside an array",
                    ));
                } else {
                    check_value(item, pointer, depth + 1, limits, errors);
                }
                pointer.truncate(len);
            }
        }
        Value::Number(n) if n.as_i64().is_none() => errors.push(FieldError::new(
            pointer.as_str(),
            format!(
                "`{n}` is not a 64-bit signed integer, and Cedar has no other numbers: send an integer, or a string"
            ),
        )),
        _ => {}
    }
}

/// The outcome of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
    /// Allowed only with a person's approval: the only satisfied permits are marked
    /// `@approval` and no forbid applies. Not an allow: the action waits until the request is
    /// repeated with an approval given for exactly it.
    ApprovalRequired,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::ApprovalRequired => "approval_required",
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a decision came out as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReasonKind {
    /// A permit policy was satisfied.
    Permit,
    /// A forbid policy was satisfied.
    Forbid,
    /// No policy permits the request: denied by default.
    DefaultDeny,
    /// A policy could not be evaluated; when it is a forbid policy the request is denied.
    Error,
    /// The policies allow it, but it lies outside the authority delegated to the caller's
    /// token (its `authorization_details`), or the uses granted are spent.
    Delegation,
    /// The request presents a plan step it is not exactly, or one used already, out of order,
    /// or of a plan revoked or expired.
    Plan,
    /// A permit marked `@approval` was satisfied: the request waits for a person's approval
    /// (`approval_required`), is allowed with the approval it presents, or is denied because
    /// that approval does not hold for it.
    Approval,
    /// The agent or session is quarantined (by an operator, or by a forbid marked
    /// `@quarantine`): every decision is denied until an operator releases it.
    Quarantine,
}

/// One reason for a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Reason {
    pub kind: ReasonKind,
    /// The policy id (its `@id` annotation, or `file#n` for the n-th policy of a file). Absent
    /// for a default deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The policy's `@reason` annotation, or a generated explanation.
    pub message: String,
    /// The approval asked for or used (kind `approval`), linking the records of its request,
    /// its answers and its use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// What a satisfied forbid marked `@quarantine` quarantines (`session` or `agent`), or,
    /// for kind `quarantine`, what was found quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<String>,
}

/// The engine's answer: a decision, its reasons, and the policy set that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Verdict {
    pub decision: Decision,
    pub reasons: Vec<Reason>,
    /// `sha256:<hex>` of the active policy set.
    pub policy_version: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(context: Value) -> DecisionRequest {
        DecisionRequest {
            actor: "a".into(),
            action: "x.y".into(),
            resource: "r".into(),
            context: match context {
                Value::Object(map) => map,
                _ => Map::new(),
            },
        }
    }

    fn errors(r: DecisionRequest) -> Vec<FieldError> {
        match r.validate(&Limits::default()) {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }

    #[test]
    fn requests_are_read_from_objects_only() {
        let parse =
            |text: &str| serde_json::from_str::<DecisionRequest>(text).map_err(|e| e.to_string());
        let ok = parse(
            r#"{"actor": "a", "action": "b", "resource": "c", "extra": [1], "context": {"k": 1}}"#,
        )
        .unwrap();
        assert_eq!((ok.actor.as_str(), ok.context.len()), ("a", 1));
        assert!(
            parse(r#"["a", "b", "c", {}]"#)
                .unwrap_err()
                .starts_with("invalid type: sequence, expected a decision request object")
        );
        assert!(
            parse(r#"{"actor": "a", "actor": "b", "action": "b", "resource": "c"}"#)
                .unwrap_err()
                .starts_with("duplicate field `actor`")
        );
        assert!(
            parse(r#"{"actor": "a", "resource": "c"}"#)
                .unwrap_err()
                .starts_with("missing field `action`")
        );
        assert!(parse(r#"{"actor": "a", "action": "b", "resource": "c", "context": []}"#).is_err());
    }

    #[test]
    fn ancestors_nearest_first() {
        let name = ActionName::parse("aws.ec2.terminate_instances").unwrap();
        let got: Vec<_> = name.self_and_ancestors().collect();
        assert_eq!(got, ["aws.ec2.terminate_instances", "aws.ec2", "aws"]);
        assert_eq!(name.parent(), Some("aws.ec2"));
        let single = ActionName::parse("read").unwrap();
        assert_eq!(single.self_and_ancestors().collect::<Vec<_>>(), ["read"]);
        assert_eq!(single.parent(), None);
    }

    #[test]
    fn action_names_with_empty_segments_are_rejected() {
        for bad in ["", ".a", "a.", "a..b", "a\u{7}"] {
            assert!(ActionName::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn empty_and_oversize_fields_are_named() {
        let mut r = request(json!({}));
        r.actor = String::new();
        r.resource = "x".repeat(2000);
        let pointers: Vec<_> = errors(r).into_iter().map(|e| e.pointer).collect();
        assert_eq!(pointers, ["/actor", "/resource"]);
    }

    #[test]
    fn context_floats_and_array_nulls_are_rejected_with_pointers() {
        let errs = errors(request(
            json!({"amount": 1.5, "tags": ["a", null], "a/b": {"c": 1e300}, "t~": [[2.5]]}),
        ));
        let mut pointers: Vec<_> = errs.iter().map(|e| e.pointer.as_str()).collect();
        pointers.sort();
        assert_eq!(
            pointers,
            [
                "/context/amount",
                "/context/a~1b/c",
                "/context/tags/1",
                "/context/t~0/0/0"
            ]
        );
    }

    /// Cedar's own reading of a context, the reference for [`cedar_context`].
    fn read_by_cedar(context: &Map<String, Value>) -> cedar_policy::Context {
        cedar_policy::Context::from_json_value(Value::Object(context.clone()), None).unwrap()
    }

    #[test]
    fn context_escapes_still_reach_cedar() {
        let context = json!({
            "owner": {"__entity": {"type": "Agent", "id": "a-1"}},
            "from": {"__extn": {"fn": "ip", "arg": "10.0.0.1"}},
            "nested": {"list": [{"__entity": {"type": "Resource", "id": "r"}}]},
            "plain": "text",
        });
        let top = json!({"__entity": {"type": "Agent", "id": "a-1"}});
        let Value::Object(context) = context else {
            unreachable!()
        };
        // Not plain: Cedar's reader takes these, and gives what it always gave.
        assert!(plain_attributes(&context).is_none());
        assert_eq!(
            cedar_context(&context).unwrap().build().unwrap(),
            read_by_cedar(&context)
        );
        let Value::Object(top) = top else {
            unreachable!()
        };
        assert!(plain_attributes(&top).is_none());
        let bad = json!({"x": {"__entity": {"type": "no such::", "id": "a"}}});
        let Value::Object(bad) = bad else {
            unreachable!()
        };
        assert_eq!(cedar_context(&bad).unwrap_err().pointer, "/context");
    }

    fn plain_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
            Just(Value::String("__entity".into())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_~/ ]{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Contexts of plain JSON are converted directly, to exactly what Cedar's reader makes
        /// of them; anything else goes through that reader.
        #[test]
        fn plain_contexts_convert_as_cedar_reads_them(
            members in proptest::collection::btree_map(".{0,10}", plain_json(), 0..8)
        ) {
            let context: Map<String, Value> = members.into_iter().collect();
            proptest::prop_assert_eq!(cedar_context(&context).unwrap().build().unwrap(), read_by_cedar(&context));
        }
    }

    #[test]
    fn null_members_are_dropped() {
        let valid = request(json!({"ticket": null, "env": "prod"}))
            .validate(&Limits::default())
            .unwrap();
        assert_eq!(valid.record()["context"], json!({"env": "prod"}));
    }

    #[test]
    fn depth_limit_is_enforced() {
        let limits = Limits {
            max_context_depth: 3,
            ..Limits::default()
        };
        // The context is level 1, `a` level 2, `b` level 3.
        let ok = request(json!({"a": {"b": {"c": 1}, "d": [1]}}));
        assert!(ok.validate(&limits).is_ok());
        let deep = request(json!({"a": {"b": {"c": {}}}}));
        let errs = deep.validate(&limits).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].pointer, "/context/a/b/c");
        let deep_array = request(json!({"a": {"b": [[1]]}}));
        let errs = deep_array.validate(&limits).unwrap_err();
        assert_eq!(errs[0].pointer, "/context/a/b/0");
    }
}
