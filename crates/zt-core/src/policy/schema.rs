//! The Cedar schema of a policy set.
//!
//! The schema declares the entity types `Agent` and `Resource` and the common type `Context`;
//! a policy directory may bring its own (`*.cedarschema`, `*.cedarschema.json`), otherwise
//! [`BUILT_IN`] is used. Actions are open-ended (any dotted name), so they are declared here
//! rather than by hand: every action a policy names, and every dotted ancestor of it, is
//! declared as applying to `Agent` on `Resource` with context `Context`, and as a member of its
//! dotted parent. A schema may declare an action itself, but then its `memberOf` must be its
//! dotted parent, because that is the hierarchy requests are evaluated with.
//!
//! One more action is always declared: [`TYPE_CHECK_ACTION`], `Action::""`, which no request
//! can carry (an action name is never empty). Without it, a set whose policies name no action
//! would declare no action at all, and the validator would have nothing to type-check a policy
//! that applies to every action against.
//!
//! A schema written for other entity types only (for example AuthZEN's `user` and `record`)
//! does not declare `Agent` and `Resource`. Then nothing is generated: the schema declares its
//! actions itself, each with the principal and resource types it applies to, and a policy
//! naming an undeclared action is an error.

use std::collections::{BTreeMap, BTreeSet};

use cedar_policy::{Schema, SchemaFragment};
use serde_json::{Value, json};

use super::PolicyError;
use crate::contract::ActionName;

/// The schema used when a policy directory has none.
pub const BUILT_IN: &str = "\
// ZT-Infra's built-in schema: used when the policy directory has no schema of its own.
entity Agent;
entity Resource;
type Context = {
  session?: Session,
  delegation?: Delegation,
  exchange?: Exchange,
  plan?: Plan,
  transaction?: Transaction,
  behaviour?: Behaviour,
};
type Behaviour = {
  rate_last_minute: Long,
  baseline_per_hour: Long,
  rate_percent: Long,
  denies_recent: Long,
  distinct_resources_recent: Long,
  novel_action: Bool,
  novel_resource_type: Bool,
  session_decisions?: Long,
  session_denies_recent?: Long,
  session_age_s?: Long,
};
type Session = {
  verified: Bool,
  asserted_by?: String,
  via?: String,
  id?: String,
  agent?: String,
  parent?: String,
  depth?: Long,
  on_behalf_of?: String,
  ticket?: String,
  workflow?: String,
  model?: String,
  tool_manifest?: String,
  sandbox?: String,
  broker?: String,
  workload?: String,
  bound?: Bool,
};
type Delegation = {
  id: String,
  depth: Long,
  origin: String,
  origin_kind: String,
  origin_issuer?: String,
  actors: Set<String>,
  delegator: String,
};
type Plan = { id: String, step: Long };
type Transaction = {
  txn: String,
  sub: String,
  req_wl: String,
  scope?: String,
  tctx: TransactionContext,
};
type TransactionContext = {
  session: { id: String, agent: String },
  authorization_details?: Set<AuthorizationDetail>,
  delegation?: Delegation,
};
type AuthorizationDetail = {
  \"type\": String,
  actions: Set<String>,
  locations?: Set<String>,
  max_uses?: Long,
};
type Exchange = {
  action: String,
  from: String,
  from_kind: String,
  locations?: Set<String>,
  max_uses?: Long,
};
";

/// The action declared in every schema so that policies scoped to every action are
/// type-checked; its empty name can never be requested.
pub const TYPE_CHECK_ACTION: &str = "";

const BUILT_IN_NAME: &str = "<built-in schema>";
const WHOLE_SCHEMA: &str = "<schema>";
const SCHEMA_HELP: &str = "a schema for the ZT-Infra contract declares entity types `Agent` and `Resource` and a common type `Context` (a record), and its actions are declared automatically from the policies; a schema without `Agent` and `Resource` declares its actions itself";

pub(super) fn parse_fragment(
    text: &str,
    json: bool,
) -> Result<SchemaFragment, Box<dyn miette::Diagnostic + Send + Sync>> {
    if json {
        SchemaFragment::from_json_str(text).map_err(|e| Box::new(e) as _)
    } else {
        SchemaFragment::from_cedarschema_str(text)
            .map(|(fragment, _warnings)| fragment)
            .map_err(|e| Box::new(e) as _)
    }
}

/// Builds the schema from the directory's fragments (or the built-in one) plus declarations
/// for every action the policies name.
pub(super) fn build(
    mut fragments: Vec<(String, SchemaFragment)>,
    referenced: &BTreeSet<ActionName>,
) -> Result<Schema, Vec<PolicyError>> {
    if fragments.is_empty() {
        let built_in = parse_fragment(BUILT_IN, false).map_err(|e| {
            vec![PolicyError::from_diagnostic(
                BUILT_IN_NAME,
                Some(BUILT_IN),
                e.as_ref(),
            )]
        })?;
        fragments.push((BUILT_IN_NAME.to_owned(), built_in));
    }
    let mut errors = Vec::new();
    let mut declared = BTreeSet::new();
    let mut entity_types = BTreeSet::new();
    for (file, fragment) in &fragments {
        declarations(
            file,
            fragment,
            &mut declared,
            &mut entity_types,
            &mut errors,
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if !(entity_types.contains("Agent") && entity_types.contains("Resource")) {
        return link(fragments);
    }

    let mut needed: BTreeSet<&str> = BTreeSet::new();
    for name in referenced.iter().chain(&declared) {
        needed.extend(name.self_and_ancestors());
    }
    let declared_names: BTreeSet<&str> = declared.iter().map(ActionName::as_str).collect();
    let mut generated: serde_json::Map<String, Value> = needed
        .iter()
        .filter(|name| !declared_names.contains(*name))
        .filter_map(|name| ActionName::parse(name).ok())
        .map(|name| (name.as_str().to_owned(), action_declaration(name.parent())))
        .collect();
    generated.insert(TYPE_CHECK_ACTION.to_owned(), action_declaration(None));
    {
        let fragment = SchemaFragment::from_json_value(json!({
            "": {"entityTypes": {}, "actions": generated}
        }))
        .map_err(|e| vec![PolicyError::from_diagnostic(WHOLE_SCHEMA, None, &e)])?;
        fragments.push(("<generated actions>".to_owned(), fragment));
    }
    link(fragments)
}

fn link(fragments: Vec<(String, SchemaFragment)>) -> Result<Schema, Vec<PolicyError>> {
    Schema::from_schema_fragments(fragments.into_iter().map(|(_, f)| f)).map_err(|e| {
        let mut error = PolicyError::from_diagnostic(WHOLE_SCHEMA, None, &e);
        error.message.push_str(&format!(" ({SCHEMA_HELP})"));
        vec![error]
    })
}

fn action_declaration(parent: Option<&str>) -> Value {
    let member_of: Vec<Value> = parent
        .map(|parent| json!({"id": parent}))
        .into_iter()
        .collect();
    json!({
        "memberOf": member_of,
        "appliesTo": {
            "principalTypes": ["Agent"],
            "resourceTypes": ["Resource"],
            "context": {"type": "Context"}
        }
    })
}

/// Collects the actions a fragment declares, checking that each is in the empty namespace and
/// a member of its dotted parent only, and the entity types it declares in the empty namespace.
fn declarations(
    file: &str,
    fragment: &SchemaFragment,
    declared: &mut BTreeSet<ActionName>,
    entity_types: &mut BTreeSet<String>,
    errors: &mut Vec<PolicyError>,
) {
    let value: Value = match fragment
        .to_json_string()
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
    {
        Ok(value) => value,
        Err(e) => {
            errors.push(PolicyError::whole_file(file, e));
            return;
        }
    };
    let Some(namespaces) = value.as_object() else {
        return;
    };
    for (namespace, body) in namespaces {
        if namespace.is_empty()
            && let Some(types) = body.get("entityTypes").and_then(Value::as_object)
        {
            entity_types.extend(types.keys().cloned());
        }
        let Some(actions) = body.get("actions").and_then(Value::as_object) else {
            continue;
        };
        if !namespace.is_empty() && !actions.is_empty() {
            errors.push(PolicyError::whole_file(
                file,
                format!("namespace `{namespace}` declares actions: declare actions outside any namespace, or let ZT-Infra declare them"),
            ));
            continue;
        }
        for (name, declaration) in actions {
            let action = match ActionName::parse(name) {
                Ok(action) => action,
                Err(why) => {
                    errors.push(PolicyError::whole_file(
                        file,
                        format!("action `{name}` can never be requested: {why}"),
                    ));
                    continue;
                }
            };
            let parents: BTreeMap<String, ()> = declaration
                .get("memberOf")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|m| m.get("id").and_then(Value::as_str))
                .map(|id| (id.to_owned(), ()))
                .collect();
            let expected: BTreeMap<String, ()> = action
                .parent()
                .map(|p| (p.to_owned(), ()))
                .into_iter()
                .collect();
            if parents != expected {
                let want = action
                    .parent()
                    .map_or("no parent".to_owned(), |p| format!("`{p}` only"));
                errors.push(PolicyError::whole_file(
                    file,
                    format!("action `{name}` must be a member of its dotted parent ({want}), since requests are evaluated with the dotted hierarchy"),
                ));
                continue;
            }
            declared.insert(action);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{SourceFile, load};

    fn file(path: &str, text: &str) -> SourceFile {
        SourceFile {
            path: path.into(),
            text: text.into(),
        }
    }

    #[test]
    fn a_directory_schema_replaces_the_built_in_one() {
        let schema = "entity Agent; entity Resource; type Context = { env?: String };";
        let guarded = "permit(principal, action in Action::\"aws\", resource) when { context has env && context.env == \"prod\" };";
        assert!(load(&[file("s.cedarschema", schema), file("p.cedar", guarded)]).is_ok());
        // Without the directory's schema, `Context` has no `env`.
        let unguarded = "permit(principal, action in Action::\"aws\", resource) when { context.env == \"prod\" };";
        let errs = load(&[file("p.cedar", unguarded)]).unwrap_err();
        assert!(errs[0].message.contains("env"), "{errs:?}");
    }

    #[test]
    fn a_schema_without_context_is_explained() {
        let errs = load(&[
            file("s.cedarschema", "entity Agent; entity Resource;"),
            file(
                "p.cedar",
                "permit(principal, action == Action::\"a\", resource);",
            ),
        ])
        .unwrap_err();
        assert_eq!(errs[0].file, "<schema>");
        assert!(
            errs[0].message.contains("common type `Context`"),
            "{errs:?}"
        );
    }

    #[test]
    fn declared_actions_must_follow_the_dotted_hierarchy() {
        let good = "entity Agent; entity Resource; type Context = {};\naction \"a.b\" in [Action::\"a\"] appliesTo { principal: Agent, resource: Resource, context: Context };";
        assert!(load(&[file("s.cedarschema", good)]).is_ok());
        let bad = "entity Agent; entity Resource; type Context = {};\naction \"a.b\" appliesTo { principal: Agent, resource: Resource, context: Context };";
        let errs = load(&[file("s.cedarschema", bad)]).unwrap_err();
        assert!(
            errs[0].message.contains("dotted parent (`a` only)"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_schema_without_agent_declares_its_own_actions() {
        let schema =
            "entity user; entity doc;\naction view appliesTo { principal: user, resource: doc };";
        let ok = "permit(principal, action == Action::\"view\", resource);";
        assert!(load(&[file("s.cedarschema", schema), file("p.cedar", ok)]).is_ok());
        // Nothing is generated for it: an undeclared action is an error.
        let undeclared = "permit(principal, action == Action::\"edit\", resource);";
        let errs = load(&[file("s.cedarschema", schema), file("p.cedar", undeclared)]).unwrap_err();
        assert!(errs[0].message.contains("edit"), "{errs:?}");
    }

    #[test]
    fn entity_files_are_checked_against_the_schema() {
        let schema = "entity user { role: String }; entity doc;\naction view appliesTo { principal: user, resource: doc };";
        let good =
            r#"[{"uid": {"type": "user", "id": "a"}, "attrs": {"role": "x"}, "parents": []}]"#;
        let set = load(&[file("s.cedarschema", schema), file("entities.json", good)]).unwrap();
        assert_eq!(set.entities().len(), 1);
        assert_eq!(set.files()[0].entities, Some(1));
        let wrong =
            r#"[{"uid": {"type": "user", "id": "a"}, "attrs": {"role": 1}, "parents": []}]"#;
        let errs = load(&[
            file("s.cedarschema", schema),
            file("x.entities.json", wrong),
        ])
        .unwrap_err();
        assert_eq!(errs[0].file, "x.entities.json");
        assert!(errs[0].message.contains("role"), "{errs:?}");
        let errs = load(&[file("s.cedarschema", schema), file("entities.json", "{")]).unwrap_err();
        assert_eq!(errs[0].line, Some(1));
        // The same entity in two files.
        let errs = load(&[
            file("s.cedarschema", schema),
            file("entities.json", good),
            file("more.entities.json", good),
        ])
        .unwrap_err();
        assert_eq!(errs[0].file, "more.entities.json");
        assert!(
            errs[0].message.contains("also in `entities.json`"),
            "{errs:?}"
        );
    }

    #[test]
    fn schema_parse_errors_carry_file_and_line() {
        let errs = load(&[file(
            "s.cedarschema",
            "entity Agent;\nentity Resource\ntype Context = {};",
        )])
        .unwrap_err();
        assert_eq!(errs[0].file, "s.cedarschema");
        assert!(errs[0].line.is_some(), "{errs:?}");
    }
}
