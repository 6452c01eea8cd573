//! Policy tests: request/expected-decision cases kept beside the policies, in `*.tests.json`
//! files, run by `ztinfra policy check` (in the spirit of `opa test`).
//!
//! ```json
//! {"cases": [
//!   {"name": "terminate is denied by default",
//!    "request": {"actor": "demo-agent", "action": "aws.ec2.terminate_instances", "resource": "i-1"},
//!    "expect": "deny"},
//!   {"name": "iam is forbidden by its own policy",
//!    "request": {"actor": "demo-agent", "action": "aws.iam.create_user", "resource": "u"},
//!    "expect": "deny", "policies": ["no-iam"]}
//! ]}
//! ```
//! `policies`, when given, lists the ids of the policies that must determine the decision.

use serde::Deserialize;

use crate::contract::{Decision, DecisionRequest, Limits};
use crate::engine::Engine;
use crate::policy::{PolicyError, SourceFile};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    cases: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    request: DecisionRequest,
    expect: Decision,
    #[serde(default)]
    policies: Option<Vec<String>>,
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseOutcome {
    pub file: String,
    pub name: String,
    /// `None` when the case passed; otherwise what went wrong.
    pub failure: Option<String>,
}

/// Runs the cases of one test file against `engine`. A file that cannot be read as test cases
/// is an error; a case whose request is invalid fails.
pub fn run(engine: &Engine, file: &SourceFile) -> Result<Vec<CaseOutcome>, PolicyError> {
    let tests: TestFile = serde_json::from_str(&file.text).map_err(|e| PolicyError {
        file: file.path.clone(),
        line: Some(e.line()),
        column: Some(e.column()),
        message: format!("not a test file: {e}"),
    })?;
    let limits = Limits::default();
    Ok(tests
        .cases
        .into_iter()
        .map(|case| {
            let failure = check(engine, case.request, case.expect, case.policies, &limits);
            CaseOutcome {
                file: file.path.clone(),
                name: case.name,
                failure,
            }
        })
        .collect())
}

fn check(
    engine: &Engine,
    request: DecisionRequest,
    expect: Decision,
    policies: Option<Vec<String>>,
    limits: &Limits,
) -> Option<String> {
    let request = match request.validate(limits) {
        Ok(r) => r,
        Err(errors) => {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Some(format!("invalid request: {}", errors.join("; ")));
        }
    };
    let verdict = engine.decide(&request);
    let reasons: Vec<String> = verdict.reasons.iter().map(|r| r.message.clone()).collect();
    if verdict.decision != expect {
        return Some(format!(
            "expected {expect}, got {} ({})",
            verdict.decision,
            reasons.join("; ")
        ));
    }
    if let Some(mut expected) = policies {
        let mut got: Vec<String> = verdict
            .reasons
            .iter()
            .filter_map(|r| r.policy.clone())
            .collect();
        got.sort();
        expected.sort();
        if got != expected {
            return Some(format!(
                "expected determining policies {expected:?}, got {got:?}"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        Engine::load(&[SourceFile {
            path: "p.cedar".into(),
            text: "@id(\"r\") permit(principal, action in Action::\"read\", resource);".into(),
        }])
        .unwrap()
    }

    fn tests(text: &str) -> SourceFile {
        SourceFile {
            path: "p.tests.json".into(),
            text: text.into(),
        }
    }

    #[test]
    fn passing_and_failing_cases_are_reported() {
        let outcomes = run(
            &engine(),
            &tests(
                r#"{"cases": [
                {"name": "read ok", "request": {"actor": "a", "action": "read.file", "resource": "f"}, "expect": "allow", "policies": ["r"]},
                {"name": "wrong", "request": {"actor": "a", "action": "write", "resource": "f"}, "expect": "allow"},
                {"name": "wrong policy", "request": {"actor": "a", "action": "read", "resource": "f"}, "expect": "allow", "policies": ["x"]},
                {"name": "bad request", "request": {"actor": "", "action": "read", "resource": "f"}, "expect": "deny"}
            ]}"#,
            ),
        )
        .unwrap();
        let failures: Vec<_> = outcomes.iter().map(|o| o.failure.is_some()).collect();
        assert_eq!(failures, [false, true, true, true]);
        assert!(
            outcomes[1]
                .failure
                .as_deref()
                .unwrap()
                .starts_with("expected allow, got deny")
        );
        assert!(outcomes[3].failure.as_deref().unwrap().contains("/actor"));
    }

    #[test]
    fn a_malformed_test_file_is_an_error_with_a_line() {
        let err = run(&engine(), &tests("{\"cases\": [\n{\"nam\": 1}]}")).unwrap_err();
        assert_eq!(err.file, "p.tests.json");
        assert_eq!(err.line, Some(2));
    }
}
