//! The information model of the OpenID AuthZEN Authorization API 1.0, mapped onto the engine's
//! request.
//!
//! An AuthZEN evaluation names a `subject {type, id, properties}`, an `action {name,
//! properties}`, a `resource {type, id, properties}` and a `context`. It becomes a
//! [`ValidRequest`] as follows:
//!
//! - the subject becomes the Cedar principal `<type>::"<id>"`, the resource the Cedar resource
//!   `<type>::"<id>"`; their `properties` become attributes of those entities, overriding the
//!   attributes of the same name that the entity store holds for them (the PEP is trusted, as
//!   the specification's trust model says);
//! - the action becomes `Action::"<name>"` (a dotted name, with the dotted hierarchy of the
//!   ZT-Infra contract);
//! - the context becomes the Cedar context, and the action's `properties` are added to it as
//!   `context.action` (Cedar actions carry no attributes), so a request's own context may not
//!   use the key `action`.
//!
//! The mapping is the same for single evaluations, batches and searches; the search endpoints
//! fill in the searched-for entity and evaluate each candidate as one evaluation.

use serde_json::{Map, Value, json};

use crate::contract::{
    ActionName, FieldError, Limits, Party, ValidRequest, cedar_context, drop_nulls_and_check,
    entity_type,
};

/// The context key under which a request's action properties reach the policies.
pub const ACTION_PROPERTIES_KEY: &str = "action";

/// One access evaluation, as received: each member is the JSON value of that key, or `None`
/// when the key is absent (or `null`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    pub subject: Option<Value>,
    pub action: Option<Value>,
    pub resource: Option<Value>,
    pub context: Option<Value>,
    /// Set when the evaluation is a candidate of a search (`subject`, `resource` or
    /// `action`); recorded as `search` in the evidence record.
    pub search: Option<&'static str>,
}

fn member(object: &Map<String, Value>, key: &str) -> Option<Value> {
    object.get(key).filter(|v| !v.is_null()).cloned()
}

impl Evaluation {
    /// The four members of `object`; other keys are ignored, as the specification asks.
    pub fn from_object(object: &Map<String, Value>) -> Self {
        Self {
            subject: member(object, "subject"),
            action: member(object, "action"),
            resource: member(object, "resource"),
            context: member(object, "context"),
            search: None,
        }
    }

    /// Fills every member this evaluation lacks from `defaults`. A member that is present
    /// replaces the default whole: there is no merging inside an entity.
    pub fn or_defaults(self, defaults: &Evaluation) -> Self {
        Self {
            subject: self.subject.or_else(|| defaults.subject.clone()),
            action: self.action.or_else(|| defaults.action.clone()),
            resource: self.resource.or_else(|| defaults.resource.clone()),
            context: self.context.or_else(|| defaults.context.clone()),
            search: self.search.or(defaults.search),
        }
    }

    /// Checks the evaluation and maps it onto a [`ValidRequest`]; every problem is reported
    /// with a pointer relative to the evaluation object.
    pub fn validate(self, limits: &Limits) -> Result<ValidRequest, Vec<FieldError>> {
        let mut errors = Vec::new();
        let subject = entity("/subject", self.subject, Need::Id, limits, &mut errors);
        let resource = entity("/resource", self.resource, Need::Id, limits, &mut errors);
        let action = action("/action", self.action, limits, &mut errors);
        let mut context = match self.context {
            None => Map::new(),
            Some(Value::Object(object)) => object,
            Some(_) => {
                errors.push(FieldError::new("/context", "must be an object"));
                Map::new()
            }
        };
        drop_nulls_and_check(&mut context, "/context", 1, limits, &mut errors);
        if context.contains_key(ACTION_PROPERTIES_KEY) {
            errors.push(FieldError::new(
                format!("/context/{ACTION_PROPERTIES_KEY}"),
                format!("is reserved: the action's properties reach policies as `context.{ACTION_PROPERTIES_KEY}`"),
            ));
        }
        let (Some(subject), Some(resource), Some(action), true) =
            (subject, resource, action, errors.is_empty())
        else {
            return Err(errors);
        };

        let principal = subject.party("/subject").map_err(|e| vec![e])?;
        let target = resource.party("/resource").map_err(|e| vec![e])?;
        let mut record = Map::new();
        record.insert("subject".into(), subject.value);
        record.insert("action".into(), action.value);
        record.insert("resource".into(), resource.value);
        record.insert("context".into(), Value::Object(context.clone()));
        if let Some(search) = self.search {
            record.insert("search".into(), json!(search));
        }
        if let Some(properties) = action.properties {
            context.insert(ACTION_PROPERTIES_KEY.into(), Value::Object(properties));
        }
        let cedar_context = cedar_context(&context).map_err(|e| vec![e])?;
        Ok(ValidRequest::from_parts(
            Value::Object(record),
            principal,
            action.name,
            target,
            cedar_context,
        ))
    }
}

/// Whether an entity must carry its `id`: the searched-for entity of a search needs only its
/// `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Id,
    TypeOnly,
}

/// A subject or resource that passed its checks.
#[derive(Debug, Clone)]
pub struct CheckedEntity {
    pub type_name: String,
    /// Absent only for [`Need::TypeOnly`].
    pub id: Option<String>,
    properties: Option<Map<String, Value>>,
    /// The entity as received, with `null` members dropped.
    value: Value,
}

impl CheckedEntity {
    fn party(&self, pointer: &str) -> Result<Party, FieldError> {
        let type_name = entity_type(&self.type_name)
            .map_err(|e| FieldError::new(format!("{pointer}/type"), e))?;
        Party::new(
            type_name,
            self.id.as_deref().unwrap_or_default(),
            self.properties.as_ref(),
            &format!("{pointer}/properties"),
        )
    }
}

fn string_member(
    object: &Map<String, Value>,
    key: &str,
    pointer: &str,
    limits: &Limits,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let at = format!("{pointer}/{key}");
    match object.get(key) {
        None | Some(Value::Null) => {
            errors.push(FieldError::new(at, "is required"));
            None
        }
        Some(Value::String(s)) if s.is_empty() => {
            errors.push(FieldError::new(at, "must not be empty"));
            None
        }
        Some(Value::String(s)) if s.len() > limits.max_id_bytes => {
            errors.push(FieldError::new(
                at,
                format!(
                    "is {} bytes long; the limit is {} bytes",
                    s.len(),
                    limits.max_id_bytes
                ),
            ));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(FieldError::new(at, "must be a string"));
            None
        }
    }
}

fn properties(
    object: &mut Map<String, Value>,
    pointer: &str,
    limits: &Limits,
    errors: &mut Vec<FieldError>,
) -> Option<Map<String, Value>> {
    match object.get_mut("properties") {
        None => None,
        Some(Value::Null) => {
            object.remove("properties");
            None
        }
        Some(Value::Object(properties)) => {
            // Properties are one level below the entity, as a context is below the request.
            drop_nulls_and_check(
                properties,
                &format!("{pointer}/properties"),
                1,
                limits,
                errors,
            );
            Some(properties.clone())
        }
        Some(_) => {
            errors.push(FieldError::new(
                format!("{pointer}/properties"),
                "must be an object",
            ));
            None
        }
    }
}

fn required_object(
    pointer: &str,
    value: Option<Value>,
    members: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Map<String, Value>> {
    match value {
        Some(Value::Object(object)) => Some(object),
        None => {
            errors.push(FieldError::new(pointer, "is required"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(
                pointer,
                format!("must be an object {members}"),
            ));
            None
        }
    }
}

/// Checks a subject or resource.
pub fn entity(
    pointer: &str,
    value: Option<Value>,
    need: Need,
    limits: &Limits,
    errors: &mut Vec<FieldError>,
) -> Option<CheckedEntity> {
    let mut object = required_object(pointer, value, "with `type` and `id`", errors)?;
    let before = errors.len();
    let type_name = string_member(&object, "type", pointer, limits, errors);
    let id = match need {
        Need::Id => string_member(&object, "id", pointer, limits, errors),
        // The specification says an id sent here must be ignored.
        Need::TypeOnly => None,
    };
    let properties = properties(&mut object, pointer, limits, errors);
    if errors.len() > before {
        return None;
    }
    Some(CheckedEntity {
        type_name: type_name?,
        id,
        properties,
        value: Value::Object(object),
    })
}

/// An action that passed its checks.
#[derive(Debug, Clone)]
pub struct CheckedAction {
    pub name: ActionName,
    properties: Option<Map<String, Value>>,
    value: Value,
}

/// Checks an action.
pub fn action(
    pointer: &str,
    value: Option<Value>,
    limits: &Limits,
    errors: &mut Vec<FieldError>,
) -> Option<CheckedAction> {
    let mut object = required_object(pointer, value, "with `name`", errors)?;
    let before = errors.len();
    let name = string_member(&object, "name", pointer, limits, errors).and_then(|name| {
        ActionName::parse(&name)
            .map_err(|e| errors.push(FieldError::new(format!("{pointer}/name"), e)))
            .ok()
    });
    let properties = properties(&mut object, pointer, limits, errors);
    if errors.len() > before {
        return None;
    }
    Some(CheckedAction {
        name: name?,
        properties,
        value: Value::Object(object),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluation(value: Value) -> Evaluation {
        Evaluation::from_object(value.as_object().unwrap())
    }

    fn pointers(value: Value) -> Vec<String> {
        evaluation(value)
            .validate(&Limits::default())
            .unwrap_err()
            .into_iter()
            .map(|e| e.pointer)
            .collect()
    }

    #[test]
    fn a_full_evaluation_maps_onto_typed_entities() {
        let valid = evaluation(json!({
            "subject": {"type": "user", "id": "alice", "properties": {"role": "admin", "gone": null}},
            "action": {"name": "delete", "properties": {"soft": true}},
            "resource": {"type": "record", "id": "record-1"},
            "context": {"ip": "10.0.0.1"},
            "unknown": 1
        }))
        .validate(&Limits::default())
        .unwrap();
        assert_eq!(valid.principal().uid.to_string(), "user::\"alice\"");
        assert_eq!(
            valid.resource_party().uid.to_string(),
            "record::\"record-1\""
        );
        assert_eq!(valid.action().as_str(), "delete");
        assert!(
            valid
                .principal()
                .attrs
                .as_ref()
                .unwrap()
                .contains_key("role")
        );
        assert!(valid.resource_party().attrs.is_none());
        // The record keeps the request's own shape, without nulls.
        assert_eq!(
            valid.record()["subject"],
            json!({"type": "user", "id": "alice", "properties": {"role": "admin"}})
        );
        assert_eq!(valid.record()["context"], json!({"ip": "10.0.0.1"}));
        assert!(valid.record().get("unknown").is_none());
    }

    #[test]
    fn missing_and_mistyped_members_are_named() {
        assert_eq!(pointers(json!({})), ["/subject", "/resource", "/action"]);
        assert_eq!(
            pointers(json!({
                "subject": {"id": "alice"},
                "action": {"name": 123},
                "resource": {"type": "record"}
            })),
            ["/subject/type", "/resource/id", "/action/name"]
        );
        assert_eq!(
            pointers(json!({
                "subject": "alice",
                "action": {},
                "resource": {"type": "record", "id": "r", "properties": 3},
                "context": []
            })),
            [
                "/subject",
                "/resource/properties",
                "/action/name",
                "/context"
            ]
        );
    }

    #[test]
    fn bad_types_floats_and_the_reserved_key_are_rejected() {
        assert_eq!(
            pointers(json!({
                "subject": {"type": "no spaces", "id": "a"},
                "action": {"name": "read"},
                "resource": {"type": "record", "id": "r"}
            })),
            ["/subject/type"]
        );
        assert_eq!(
            pointers(json!({
                "subject": {"type": "user", "id": "a", "properties": {"score": 0.5}},
                "action": {"name": "read"},
                "resource": {"type": "record", "id": "r"},
                "context": {"action": "x"}
            })),
            ["/subject/properties/score", "/context/action"]
        );
    }

    #[test]
    fn defaults_fill_whole_members_only() {
        let defaults = evaluation(json!({
            "subject": {"type": "user", "id": "alice"},
            "resource": {"type": "record", "id": "r1", "properties": {"status": "active"}}
        }));
        let item = evaluation(json!({"resource": {"type": "record", "id": "r2"}}));
        let merged = item.or_defaults(&defaults);
        assert_eq!(merged.subject, defaults.subject);
        assert_eq!(merged.resource, Some(json!({"type": "record", "id": "r2"})));
        assert_eq!(merged.action, None);
    }
}
