//! The in-process decision path: `DecisionRequest` validation and `Engine::decide`, with 10 and
//! 1,000 policies, for an action a policy names (allow) and one none names (deny by default),
//! beside raw Cedar `is_authorized` over the whole set.
//!
//! Run: `cargo bench -p zt-core --bench decide`.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark set-up fails loudly on a broken fixture"
)]

use std::str::FromStr;

use divan::Bencher;
use serde_json::json;
use zt_core::{DecisionRequest, Engine, Limits, SourceFile};

fn main() {
    divan::main();
}

/// `n` policies over `n` actions in 10 services, half permits for one agent each, half forbids
/// with a condition, as a mid-size deployment might write them.
fn policies(n: usize) -> String {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                format!(
                    "@id(\"p{i}\") @reason(\"agent {a} may call op{i}\")\npermit(principal == Agent::\"agent-{a}\", action == Action::\"svc{s}.op{i}\", resource);\n",
                    a = i % 50,
                    s = i % 10
                )
            } else {
                format!(
                    "@id(\"p{i}\")\nforbid(principal, action in Action::\"svc{s}.op{i}\", resource) when {{ resource == Resource::\"locked-{i}\" }};\n",
                    s = i % 10
                )
            }
        })
        .collect()
}

fn engine(n: usize) -> Engine {
    Engine::load(&[SourceFile {
        path: "bench.cedar".into(),
        text: policies(n),
    }])
    .unwrap_or_else(|e| panic!("{e:?}"))
}

fn request(action: &str) -> DecisionRequest {
    DecisionRequest {
        actor: "agent-0".into(),
        action: action.into(),
        resource: "res-1".into(),
        context: json!({"env": "prod", "ticket": "CHG-1", "risk": 3})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    }
}

const SIZES: [usize; 2] = [10, 1000];

/// Validation of a request (ids, action name, context conversion to Cedar).
#[divan::bench]
fn validate(bencher: Bencher) {
    let limits = Limits::default();
    bencher
        .with_inputs(|| request("svc0.op0"))
        .bench_values(|r| r.validate(&limits).map(|_| ()).is_ok());
}

/// A request that a permit policy allows.
#[divan::bench(args = SIZES)]
fn decide_allow(bencher: Bencher, n: usize) {
    let engine = engine(n);
    let request = request("svc0.op0")
        .validate(&Limits::default())
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(engine.decide(&request).decision, zt_core::Decision::Allow);
    bencher.bench(|| engine.decide(&request));
}

/// A request that no policy names: deny by default.
#[divan::bench(args = SIZES)]
fn decide_default_deny(bencher: Bencher, n: usize) {
    let engine = engine(n);
    let request = request("other.op")
        .validate(&Limits::default())
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(engine.decide(&request).decision, zt_core::Decision::Deny);
    bencher.bench(|| engine.decide(&request));
}

/// Raw Cedar over the whole set, without the engine's action index, for comparison.
#[divan::bench(args = SIZES)]
fn cedar_whole_set(bencher: Bencher, n: usize) {
    use cedar_policy::{Authorizer, Context, Entities, Entity, EntityUid, PolicySet, Request};
    let set = PolicySet::from_str(&policies(n)).unwrap_or_else(|e| panic!("{e:?}"));
    let uid = |s: &str| EntityUid::from_str(s).unwrap_or_else(|e| panic!("{e:?}"));
    let parent = |s: &str| [uid(s)].into_iter().collect();
    let entities = Entities::from_entities(
        [
            Entity::new_no_attrs(uid("Action::\"svc0.op0\""), parent("Action::\"svc0\"")),
            Entity::new_no_attrs(uid("Action::\"svc0\""), Default::default()),
        ],
        None,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let context =
        Context::from_json_value(json!({"env": "prod", "ticket": "CHG-1", "risk": 3}), None)
            .unwrap_or_else(|e| panic!("{e:?}"));
    let request = Request::new(
        uid("Agent::\"agent-0\""),
        uid("Action::\"svc0.op0\""),
        uid("Resource::\"res-1\""),
        context,
        None,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let authorizer = Authorizer::new();
    bencher.bench(|| authorizer.is_authorized(&request, &set, &entities));
}

/// The whole in-process path from the wire's strings and JSON to a decision, as a caller of the
/// engine has it: `DecisionRequest::validate` then `Engine::decide`. Compare with
/// `raw_cedar_end_to_end`, the same work done with bare Cedar (issue 6: overhead under 1.5x).
#[divan::bench(args = [1, 10, 1000])]
fn zt_end_to_end(bencher: Bencher, n: usize) {
    let engine = engine(n);
    let limits = Limits::default();
    bencher
        .with_inputs(|| request("svc0.op0"))
        .bench_values(|r| {
            let valid = r.validate(&limits).unwrap_or_else(|e| panic!("{e:?}"));
            engine.decide(&valid).decision
        });
}

/// Bare Cedar from the same strings and JSON: entity uids parsed, the context converted, the
/// request built with the action's hierarchy as entities, `is_authorized` over the whole set.
#[divan::bench(args = [1, 10, 1000])]
fn raw_cedar_end_to_end(bencher: Bencher, n: usize) {
    use cedar_policy::{Authorizer, Context, Entities, Entity, EntityUid, PolicySet, Request};
    let set = PolicySet::from_str(&policies(n)).unwrap_or_else(|e| panic!("{e:?}"));
    let authorizer = Authorizer::new();
    let uid = |s: &str| EntityUid::from_str(s).unwrap_or_else(|e| panic!("{e:?}"));
    bencher
        .with_inputs(|| request("svc0.op0"))
        .bench_values(|r| {
            let action = uid(&format!("Action::\"{}\"", r.action));
            let parent = uid("Action::\"svc0\"");
            let entities = Entities::from_entities(
                [
                    Entity::new_no_attrs(action.clone(), [parent.clone()].into_iter().collect()),
                    Entity::new_no_attrs(parent, Default::default()),
                ],
                None,
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
            let context = Context::from_json_value(serde_json::Value::Object(r.context), None)
                .unwrap_or_else(|e| panic!("{e:?}"));
            let request = Request::new(
                uid(&format!("Agent::\"{}\"", r.actor)),
                action,
                uid(&format!("Resource::\"{}\"", r.resource)),
                context,
                None,
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
            authorizer
                .is_authorized(&request, &set, &entities)
                .decision()
        });
}

/// The AuthZEN certification fixture: its entity store puts the principal in a group and gives
/// the resource an attribute, so every request is evaluated with stored entities; `properties`
/// adds attributes sent with the request on top.
fn fixture() -> Engine {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/authzen-fixture");
    let files: Vec<SourceFile> = ["schema.cedarschema", "policies.cedar", "entities.json"]
        .iter()
        .map(|name| SourceFile {
            path: (*name).into(),
            text: std::fs::read_to_string(dir.join(name)).unwrap(),
        })
        .collect();
    Engine::load(&files).unwrap_or_else(|e| panic!("{e:?}"))
}

/// An AuthZEN evaluation against the fixture: validation and decision, without and with sent
/// properties.
#[divan::bench(args = [false, true])]
fn authzen_evaluate(bencher: Bencher, properties: bool) {
    let engine = fixture();
    let limits = Limits::default();
    let subject = if properties {
        json!({"type": "user", "id": "bob", "properties": {"role": "admin", "department": "ops"}})
    } else {
        json!({"type": "user", "id": "bob"})
    };
    let body = json!({
        "subject": subject,
        "action": {"name": "write"},
        "resource": {"type": "record", "id": "record-2"},
    });
    let object = body.as_object().cloned().unwrap_or_default();
    bencher.bench(|| {
        let request = zt_core::authzen::Evaluation::from_object(&object)
            .validate(&limits)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let verdict = engine.decide(&request);
        assert_eq!(verdict.decision, zt_core::Decision::Allow);
        verdict
    });
}

/// The decision alone, for a validated AuthZEN evaluation against the fixture (stored principal
/// and resource, no sent properties): what assembling the request's entities costs.
#[divan::bench]
fn authzen_decide(bencher: Bencher) {
    let engine = fixture();
    let body = json!({
        "subject": {"type": "user", "id": "bob"},
        "action": {"name": "write"},
        "resource": {"type": "record", "id": "record-2"},
    });
    let request = zt_core::authzen::Evaluation::from_object(body.as_object().unwrap())
        .validate(&Limits::default())
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(engine.decide(&request).decision, zt_core::Decision::Allow);
    bencher.bench(|| engine.decide(&request));
}
