//! Conversion of the ZT-Infra reference implementation's JSON policy into Cedar.
//!
//! The reference format is
//! `{"defaultDecision": "deny", "allow": [{"action", "reason"}], "deny": [{"action", "reason"}]}`:
//! a rule matches an action by exact name, or, when its action ends with `*`, by prefix; a
//! matching deny rule wins over any allow rule, and the default applies when nothing matches.
//!
//! Cedar has the same precedence (forbid wins, nothing permitted means deny), so each allow
//! rule becomes a `permit` and each deny rule a `forbid`. A prefix ending at a dot, `aws.ec2.*`,
//! is the dotted subtree `action in Action::"aws.ec2"` less the group name itself; `*` alone is
//! every action. A prefix that ends inside a segment (`aws.ec*`) has no Cedar equivalent,
//! because Cedar cannot look inside an entity id, and is refused rather than approximated.

use serde::Deserialize;

use crate::contract::ActionName;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReferencePolicy {
    #[serde(default)]
    default_decision: Option<String>,
    #[serde(default)]
    allow: Vec<Rule>,
    #[serde(default)]
    deny: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    action: String,
    #[serde(default)]
    reason: Option<String>,
}

/// Why a reference policy could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not a ZT-Infra JSON policy: {0}")]
    Json(#[from] serde_json::Error),
    #[error("`defaultDecision` must be `allow` or `deny`, not `{0}`")]
    Default(String),
    #[error("{list}[{index}]: {why}")]
    Rule {
        list: &'static str,
        index: usize,
        why: String,
    },
}

/// Converts a reference JSON policy into an equivalent Cedar policy set, as text.
pub fn zt_json_to_cedar(json: &str) -> Result<String, ImportError> {
    let policy: ReferencePolicy = serde_json::from_str(json)?;
    let default_allow = match policy.default_decision.as_deref() {
        None | Some("deny") => false,
        Some("allow") => true,
        Some(other) => return Err(ImportError::Default(other.to_owned())),
    };
    let mut out = String::from(
        "// Converted by `ztinfra policy import-zt-json` from a ZT-Infra reference JSON policy.\n\
         // Deny rules are `forbid` policies, which win over any `permit`, as in the reference.\n",
    );
    if default_allow {
        out.push_str(
            "\n@id(\"zt-default-allow\")\n@reason(\"allowed by the default decision\")\npermit(principal, action, resource);\n",
        );
    }
    for (list, effect, rules) in [
        ("allow", "permit", &policy.allow),
        ("deny", "forbid", &policy.deny),
    ] {
        for (index, rule) in rules.iter().enumerate() {
            let (scope, unless) =
                scope(&rule.action).map_err(|why| ImportError::Rule { list, index, why })?;
            out.push_str(&format!("\n@id(\"zt-{list}-{index}\")\n"));
            if let Some(reason) = &rule.reason {
                out.push_str(&format!("@reason({})\n", cedar_string(reason)));
            }
            out.push_str(&format!("{effect}(principal, {scope}, resource)"));
            if let Some(group) = unless {
                out.push_str(&format!(
                    "\nunless {{ action == Action::{} }}",
                    cedar_string(&group)
                ));
            }
            out.push_str(";\n");
        }
    }
    Ok(out)
}

/// The Cedar action scope of a rule, and the group to exclude for a dotted prefix.
fn scope(action: &str) -> Result<(String, Option<String>), String> {
    let Some(prefix) = action.strip_suffix('*') else {
        ActionName::parse(action).map_err(|why| format!("action `{action}` {why}"))?;
        return Ok((format!("action == Action::{}", cedar_string(action)), None));
    };
    if prefix.is_empty() {
        return Ok(("action".to_owned(), None));
    }
    let Some(group) = prefix.strip_suffix('.') else {
        return Err(format!(
            "prefix `{action}` ends inside a name segment, which Cedar cannot express; rewrite it to end at a dot (`{}*`) or list the actions",
            prefix
                .rfind('.')
                .and_then(|i| prefix.get(..=i))
                .unwrap_or("")
        ));
    };
    ActionName::parse(group).map_err(|why| format!("prefix `{action}`: {why}"))?;
    Ok((
        format!("action in Action::{}", cedar_string(group)),
        Some(group.to_owned()),
    ))
}

/// A Cedar string literal.
fn cedar_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Decision, DecisionRequest, Limits};
    use crate::engine::Engine;
    use crate::policy::SourceFile;
    use proptest::prelude::*;

    fn engine(cedar: &str) -> Engine {
        Engine::load(&[SourceFile {
            path: "imported.cedar".into(),
            text: cedar.into(),
        }])
        .unwrap()
    }

    fn decide(engine: &Engine, action: &str) -> Decision {
        let request = DecisionRequest {
            actor: "agent".into(),
            action: action.into(),
            resource: "r".into(),
            context: Default::default(),
        };
        engine
            .decide(&request.validate(&Limits::default()).unwrap())
            .decision
    }

    /// The reference semantics, written from its description.
    fn reference(default_allow: bool, allow: &[String], deny: &[String], action: &str) -> Decision {
        let matches = |rule: &String| match rule.strip_suffix('*') {
            Some(prefix) => action.starts_with(prefix),
            None => rule == action,
        };
        if deny.iter().any(matches) {
            Decision::Deny
        } else if default_allow || allow.iter().any(matches) {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }

    #[test]
    fn reasons_and_special_characters_survive() {
        let cedar = zt_json_to_cedar(
            r#"{"defaultDecision": "deny",
                "allow": [{"action": "github.repos.*", "reason": "read \"repos\"\n"}],
                "deny": [{"action": "github.repos.delete", "reason": "never delete"}]}"#,
        )
        .unwrap();
        let e = engine(&cedar);
        let request = DecisionRequest {
            actor: "a".into(),
            action: "github.repos.get".into(),
            resource: "r".into(),
            context: Default::default(),
        };
        let v = e.decide(&request.validate(&Limits::default()).unwrap());
        assert_eq!(v.decision, Decision::Allow);
        assert_eq!(v.reasons[0].message, "read \"repos\"\n");
        assert_eq!(decide(&e, "github.repos.delete"), Decision::Deny);
        // `github.repos.*` does not cover `github.repos` itself.
        assert_eq!(decide(&e, "github.repos"), Decision::Deny);
    }

    #[test]
    fn unexpressible_prefixes_and_bad_defaults_are_refused() {
        let err = zt_json_to_cedar(r#"{"allow": [{"action": "aws.ec*"}]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "allow[0]: prefix `aws.ec*` ends inside a name segment, which Cedar cannot express; rewrite it to end at a dot (`aws.*`) or list the actions"
        );
        let err = zt_json_to_cedar(r#"{"defaultDecision": "maybe"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`defaultDecision` must be `allow` or `deny`, not `maybe`"
        );
        assert!(zt_json_to_cedar("[1]").is_err());
    }

    fn arb_action() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..4)
            .prop_map(|s| s.join("."))
    }

    fn arb_rule() -> impl Strategy<Value = String> {
        prop_oneof![
            arb_action(),
            arb_action().prop_map(|a| format!("{a}.*")),
            Just("*".to_owned()),
        ]
    }

    proptest! {
        /// The converted Cedar set decides every action as the reference semantics do.
        #[test]
        fn converted_policies_decide_like_the_reference(
            default_allow in any::<bool>(),
            allow in prop::collection::vec(arb_rule(), 0..5),
            deny in prop::collection::vec(arb_rule(), 0..5),
            actions in prop::collection::vec(arb_action(), 1..8),
        ) {
            let rules = |rules: &[String]| rules.iter().map(|a| serde_json::json!({"action": a, "reason": "r"})).collect::<Vec<_>>();
            let json = serde_json::json!({
                "defaultDecision": if default_allow { "allow" } else { "deny" },
                "allow": rules(&allow),
                "deny": rules(&deny),
            });
            let e = engine(&zt_json_to_cedar(&json.to_string()).unwrap());
            for action in &actions {
                prop_assert_eq!(decide(&e, action), reference(default_allow, &allow, &deny, action), "action {}", action);
            }
        }
    }
}
