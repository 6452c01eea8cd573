//! The standard interfaces, end to end: the AuthZEN certification scenario at every level, the
//! entity store API, and the ZT-Infra reference `/actions` contract.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Value, json};

use super::super::{Server, client, http};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/authzen-fixture")
}

/// A copy of the fixture, for tests that edit it.
fn fixture_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn cases() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/authzen-certification.json");
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    file["cases"].as_array().unwrap().clone()
}

/// What the harness checks of every successful decision: a boolean `decision`, and a
/// `context` that is an object if present.
fn check_decision(case: &str, answer: &Value, expected: &Value) {
    let decision = answer["decision"]
        .as_bool()
        .unwrap_or_else(|| panic!("{case}: `decision` is not a boolean in {answer}"));
    if let Some(context) = answer.get("context") {
        assert!(context.is_object(), "{case}: `context` is not an object");
    }
    if let Some(expected) = expected.as_bool() {
        assert_eq!(decision, expected, "{case}: {answer}");
    }
}

/// The names of a search answer's results, after checking their shape.
fn result_names(case: &str, answer: &Value, search_type: &str) -> Vec<String> {
    let results = answer["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{case}: `results` is not an array in {answer}"));
    if let Some(page) = answer.get("page") {
        assert!(page.is_object(), "{case}: `page` is not an object");
        if let Some(token) = page.get("next_token") {
            assert!(token.is_string(), "{case}: `next_token` is not a string");
        }
    }
    results
        .iter()
        .map(|r| {
            if search_type == "action" {
                r["name"].as_str().unwrap().to_owned()
            } else {
                assert_eq!(r["type"], search_type, "{case}: {r}");
                r["id"].as_str().unwrap().to_owned()
            }
        })
        .collect()
}

fn send(c: &http::sync::Client, server: &Server, case: &Value) -> http::sync::Response {
    let url = server.url(case["endpoint"].as_str().unwrap());
    match case.get("raw") {
        Some(raw) => {
            let content_type = match case.get("content_type") {
                None => Some("application/json"),
                Some(Value::Null) => None,
                Some(v) => v.as_str(),
            };
            c.post_raw(
                &url,
                content_type,
                raw.as_str().unwrap().as_bytes().to_vec(),
            )
        }
        None => c.post_json(&url, &case["body"]),
    }
}

#[test]
fn authzen_certification_scenario_passes_at_every_level() {
    let server = Server::start(&["--policies", fixture_dir().to_str().unwrap()]);
    let c = client();
    let mut levels: HashMap<String, usize> = HashMap::new();
    let mut results_of: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut decided = 0;
    for case in cases() {
        let id = case["id"].as_str().unwrap();
        let repeat = case.get("repeat").and_then(Value::as_u64).unwrap_or(1);
        for _ in 0..repeat {
            let response = send(&c, &server, &case);
            let text = String::from_utf8_lossy(&response.body).into_owned();
            assert_eq!(
                u64::from(response.status),
                case["status"].as_u64().unwrap(),
                "{id}: {text}"
            );
            if response.status != 200 {
                assert!(
                    response
                        .content_type
                        .starts_with("application/problem+json"),
                    "{id}: {}",
                    response.content_type
                );
                continue;
            }
            assert!(
                response.content_type.starts_with("application/json"),
                "{id}: {}",
                response.content_type
            );
            let answer = response.json();
            if let Some(expected) = case.get("decision") {
                check_decision(id, &answer, expected);
                decided += 1;
            }
            if let Some(expected) = case.get("decisions").and_then(Value::as_array) {
                let got = answer["evaluations"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{id}: no `evaluations` in {text}"));
                assert_eq!(got.len(), expected.len(), "{id}: {text}");
                for (i, (answer, expected)) in got.iter().zip(expected).enumerate() {
                    check_decision(&format!("{id} #{i}"), answer, expected);
                }
                let errors: Vec<u64> = case
                    .get("error_items")
                    .and_then(Value::as_array)
                    .map(|items| items.iter().map(|i| i.as_u64().unwrap()).collect())
                    .unwrap_or_default();
                for (i, answer) in got.iter().enumerate() {
                    let is_error = answer["context"].get("error").is_some();
                    assert_eq!(
                        is_error,
                        errors.contains(&(i as u64)),
                        "{id} #{i}: {answer}"
                    );
                    if !is_error {
                        // Every decision of the engine carries its evidence receipt.
                        assert!(
                            answer["context"]["evidence"]["seq"].is_u64(),
                            "{id}: {answer}"
                        );
                        decided += 1;
                    }
                }
            }
            if let Some(search_type) = case.get("search_type").and_then(Value::as_str) {
                let names = result_names(id, &answer, search_type);
                for name in case
                    .get("includes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    assert!(
                        names.iter().any(|n| n == name.as_str().unwrap()),
                        "{id}: {name} missing from {text}"
                    );
                }
                for name in case
                    .get("excludes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    assert!(
                        !names.iter().any(|n| n == name.as_str().unwrap()),
                        "{id}: {name} in {text}"
                    );
                }
                if case.get("empty") == Some(&json!(true)) {
                    assert!(names.is_empty(), "{id}: {text}");
                }
                let names: BTreeSet<String> = names.into_iter().collect();
                if let Some(other) = case.get("same_as").and_then(Value::as_str) {
                    assert_eq!(
                        Some(&names),
                        results_of.get(other),
                        "{id} differs from {other}"
                    );
                }
                results_of.insert(id.to_owned(), names);
            }
        }
        *levels
            .entry(case["level"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for level in [
        "basic-core",
        "basic-properties",
        "batch-core",
        "batch-properties",
        "search-core",
        "search-properties",
    ] {
        assert!(
            levels.get(level).copied().unwrap_or(0) > 0,
            "no case at {level}"
        );
    }

    // c-4-5-2: follow the page tokens to the end; the pages hold every result once.
    let query = json!({
        "subject": {"type": "user"},
        "action": {"name": "read"},
        "resource": {"type": "record", "id": "record-1"},
    });
    let mut paged = Vec::new();
    let mut page = json!({"limit": 1});
    for round in 0.. {
        assert!(round < 10, "pagination does not end");
        let mut body = query.clone();
        body["page"] = page.clone();
        let response = c.post_json(&server.url("/access/v1/search/subject"), &body);
        assert_eq!(response.status, 200);
        let answer = response.json();
        let mut names = result_names("c-4-5-2", &answer, "user");
        assert!(names.len() <= 1, "the page limit is ignored: {answer}");
        paged.append(&mut names);
        let token = answer["page"]["next_token"].as_str().unwrap().to_owned();
        if token.is_empty() {
            break;
        }
        // A token is bound to its query: the same token with another action is refused, and
        // so is another page limit than the one it was issued for.
        let mut other = body.clone();
        other["action"]["name"] = json!("write");
        other["page"] = json!({"token": token});
        assert_eq!(
            c.post_json(&server.url("/access/v1/search/subject"), &other)
                .status,
            400
        );
        let mut wider = body.clone();
        wider["page"] = json!({"token": token, "limit": 2});
        let refused = c.post_json(&server.url("/access/v1/search/subject"), &wider);
        assert_eq!(refused.status, 400);
        assert_eq!(refused.json()["errors"][0]["pointer"], "/page/limit");
        // The same limit again is fine; the scenario's follow-up (c-4-5-2) sends the token
        // alone, and every second round here does so.
        page = if round % 2 == 0 {
            json!({"token": token})
        } else {
            json!({"token": token, "limit": 1})
        };
    }
    assert_eq!(
        paged.iter().cloned().collect::<BTreeSet<_>>(),
        results_of["c-4-2-1"],
        "the pages do not add up to the unpaged results"
    );
    assert_eq!(paged.len(), results_of["c-4-2-1"].len(), "a result repeats");

    // c-2-5 and c-5: the request id is echoed; without one, nothing fails.
    let inner = c.inner();
    let body = json!({
        "subject": {"type": "user", "id": "alice"},
        "action": {"name": "read"},
        "resource": {"type": "record", "id": "record-1"},
    });
    for endpoint in ["/access/v1/evaluation", "/access/v1/evaluations"] {
        let response = c.send(
            inner
                .post(server.url(endpoint))
                .header("X-Request-ID", "bfe9eb29-ab87-4ca3-be83-a1d5d8305716")
                .json(&body),
        );
        assert_eq!(response.status, 200);
        assert_eq!(
            response.headers["x-request-id"],
            "bfe9eb29-ab87-4ca3-be83-a1d5d8305716"
        );
        // An error answer echoes it too.
        let response = c.send(
            inner
                .post(server.url(endpoint))
                .header("X-Request-ID", "req-2")
                .header("content-type", "application/json")
                .body("{"),
        );
        assert_eq!(response.status, 400);
        assert_eq!(response.headers["x-request-id"], "req-2");
    }
    decided += 2;

    // c-6: discovery.
    let response = c.get(&server.url("/.well-known/authzen-configuration"));
    assert_eq!(response.status, 200);
    assert!(response.content_type.starts_with("application/json"));
    let metadata = response.json();
    assert_eq!(metadata["policy_decision_point"], server.base.as_str());
    for (key, path) in [
        ("access_evaluation_endpoint", "/access/v1/evaluation"),
        ("access_evaluations_endpoint", "/access/v1/evaluations"),
        ("search_subject_endpoint", "/access/v1/search/subject"),
        ("search_resource_endpoint", "/access/v1/search/resource"),
        ("search_action_endpoint", "/access/v1/search/action"),
    ] {
        assert_eq!(metadata[key], server.url(path), "{key}");
    }

    // Every interface counts its decisions in the metrics, under its own endpoint.
    let metrics = String::from_utf8(c.get(&server.url("/metrics")).body).unwrap();
    for endpoint in [
        "authzen.evaluation",
        "authzen.evaluations",
        "authzen.search.subject",
        "authzen.search.resource",
        "authzen.search.action",
    ] {
        assert!(
            metrics.contains(&format!("endpoint=\"{endpoint}\"")),
            "no decisions counted for {endpoint}"
        );
    }

    // Every AuthZEN decision is on record, and the log verifies offline.
    let size = c.get(&server.url("/v1/evidence/checkpoint")).json()["tree_size"]
        .as_u64()
        .unwrap();
    assert!(
        size >= decided,
        "{size} records for at least {decided} decisions"
    );
    let out = tempfile::tempdir().unwrap();
    let export = out.path().join("log.jsonl");
    let keys = out.path().join("keys.json");
    std::fs::write(&keys, c.get(&server.url("/v1/evidence/keys")).body).unwrap();
    super::evidence::export(server.data.path(), &[], &export);
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(
        text.contains(r#""subject":{"id":"bob","properties":{"role":"admin"},"type":"user"}"#),
        "an AuthZEN request is not recorded as received"
    );
    assert!(
        text.contains(r#""search":"subject""#),
        "search candidates are not recorded"
    );
    let (code, verdict) = super::evidence::verify(&export, &keys);
    assert_eq!(code, 0, "{verdict}");
}

fn search_users(
    c: &http::sync::Client,
    server: &Server,
    action: &str,
    record: &str,
) -> Vec<String> {
    let response = c.post_json(
        &server.url("/access/v1/search/subject"),
        &json!({
            "subject": {"type": "user"},
            "action": {"name": action},
            "resource": {"type": "record", "id": record},
        }),
    );
    assert_eq!(response.status, 200);
    result_names("search", &response.json(), "user")
}

#[test]
fn the_entity_store_is_edited_over_the_api() {
    let dir = fixture_copy();
    let server = Server::start(&["--no-watch", "--policies", dir.path().to_str().unwrap()]);
    let c = server.admin();
    assert_eq!(
        search_users(&c, &server, "read", "record-1"),
        ["alice", "bob"]
    );
    let listed = c.get(&server.url("/v1/entities")).json();
    assert_eq!(listed["entities"].as_array().unwrap().len(), 5);

    // Upsert: carol joins the members; bob's entry is replaced (no longer an admin).
    let response = c.send(
        c.inner().post(server.url("/v1/entities")).json(&json!({"entities": [
            {"uid": {"type": "user", "id": "carol"}, "attrs": {}, "parents": [{"type": "group", "id": "members"}]},
            {"uid": {"type": "user", "id": "bob"}, "attrs": {}, "parents": [{"type": "group", "id": "members"}]},
        ]})),
    );
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.json()["changed"], true);
    assert_eq!(
        search_users(&c, &server, "read", "record-1"),
        ["alice", "bob", "carol"]
    );
    assert!(search_users(&c, &server, "write", "record-2").is_empty());
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("entities.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk.as_array().unwrap().len(), 6);

    // An entity that does not match the schema changes nothing, and says why.
    let before = std::fs::read_to_string(dir.path().join("entities.json")).unwrap();
    let response = c.send(
        c.inner()
            .post(server.url("/v1/entities"))
            .json(&json!({"entities": [
                {"uid": {"type": "user", "id": "dave"}, "attrs": {"role": 7}, "parents": []},
            ]})),
    );
    assert_eq!(response.status, 422);
    let problem = response.json();
    assert!(
        problem["policy_errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("role"),
        "{problem}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("entities.json")).unwrap(),
        before
    );
    let response = c.send(
        c.inner()
            .post(server.url("/v1/entities"))
            .json(&json!({"entities": [{"attrs": {}}]})),
    );
    assert_eq!(response.status, 400);

    // Replace: only alice is left.
    let response = c.send(c.inner().put(server.url("/v1/entities")).json(&json!({"entities": [
        {"uid": {"type": "group", "id": "members"}, "attrs": {}, "parents": []},
        {"uid": {"type": "user", "id": "alice"}, "attrs": {}, "parents": [{"type": "group", "id": "members"}]},
    ]})));
    assert_eq!(response.status, 200);
    assert_eq!(search_users(&c, &server, "read", "record-1"), ["alice"]);
    // The policy version covers the entities, so the evidence tells which entities decided.
    let version = c.get(&server.url("/v1/policies")).json()["version"].clone();
    assert_eq!(
        c.get(&server.url("/v1/entities")).json()["version"],
        version
    );
    assert_ne!(listed["version"], version);
}

fn verifying_key(
    c: &http::sync::Client,
    server: &Server,
    key_id: &str,
) -> ed25519_dalek::VerifyingKey {
    let keyring = c.get(&server.url("/v1/evidence/keys")).json();
    let key = keyring["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == key_id)
        .unwrap_or_else(|| panic!("key {key_id} is not in the keyring {keyring}"));
    let bytes: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(key["public_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).unwrap()
}

#[test]
fn the_reference_actions_contract_answers_with_signed_audit() {
    let server = Server::start(&["--demo"]);
    let c = client();
    let health = c.get(&server.url("/health"));
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["ok"], true);

    let allowed = c.post_json(
        &server.url("/actions"),
        &json!({"actor": "demo-agent", "action": "aws.ec2.describe_instances", "resource": "i-1"}),
    );
    assert_eq!(
        allowed.status,
        200,
        "{}",
        String::from_utf8_lossy(&allowed.body)
    );
    let allowed = allowed.json();
    let denied = c.post_json(
        &server.url("/actions"),
        &json!({"actor": "demo-agent", "action": "aws.iam.create_user", "resource": "user/x"}),
    );
    assert_eq!(denied.status, 403);
    let denied = denied.json();

    for (answer, ok, decision, action) in [
        (&allowed, true, "allow", "aws.ec2.describe_instances"),
        (&denied, false, "deny", "aws.iam.create_user"),
    ] {
        // Exactly the fields the reference's adapters read.
        assert_eq!(answer["ok"], ok);
        assert_eq!(answer["actor"], "demo-agent");
        assert_eq!(answer["action"], action);
        assert!(answer["resource"].is_string());
        assert_eq!(answer["decision"], decision);
        assert!(!answer["reason"].as_str().unwrap().is_empty());
        let audit = &answer["audit"];
        let timestamp = audit["timestamp"].as_str().unwrap();
        assert!(
            timestamp.len() == 24 && timestamp.ends_with('Z') && timestamp.starts_with("20"),
            "{timestamp}"
        );
        let current = audit["current_hash"].as_str().unwrap();
        assert_eq!(current.len(), 64);
        assert_eq!(audit["previous_hash"].as_str().unwrap().len(), 64);
        let signature = &audit["kms_signature"];
        assert_eq!(signature["algorithm"], "ED25519");

        // The hash is the record's, and the signature is the log key's, over that hash.
        let seq = answer["evidence"]["seq"].as_u64().unwrap();
        let record = c.get(&server.url(&format!("/v1/evidence/{seq}"))).json();
        assert_eq!(record["hash"], current);
        assert_eq!(record["record"]["request"]["action"], action);
        assert_eq!(record["record"]["prev_hash"], audit["previous_hash"]);
        let key = verifying_key(&c, &server, signature["key_id"].as_str().unwrap());
        let bytes: [u8; 64] = base64::engine::general_purpose::STANDARD
            .decode(signature["signature"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let hash = hex::decode(current).unwrap();
        key.verify_strict(&hash, &ed25519_dalek::Signature::from_bytes(&bytes))
            .expect("the audit signature verifies over the record hash");
        let mut other = hash.clone();
        other[0] ^= 1;
        assert!(
            key.verify_strict(&other, &ed25519_dalek::Signature::from_bytes(&bytes))
                .is_err()
        );
    }
    // The two records are chained.
    assert_eq!(
        denied["audit"]["previous_hash"],
        allowed["audit"]["current_hash"]
    );

    // The reference client's two request shapes: `decide(actor, action)` sends no
    // `resource` (read as no particular resource, `Resource::""`), and with one it sends it.
    for (body, status) in [
        (
            json!({"actor": "demo-agent", "action": "aws.ec2.describe_instances"}),
            200,
        ),
        (
            json!({"actor": "demo-agent", "action": "aws.iam.create_user"}),
            403,
        ),
        (
            json!({"actor": "demo-agent", "action": "aws.s3.get_object", "resource": "bucket/key"}),
            200,
        ),
    ] {
        let response = c.post_json(&server.url("/actions"), &body);
        assert_eq!(
            response.status,
            status,
            "{body}: {}",
            String::from_utf8_lossy(&response.body)
        );
        let answer = response.json();
        let expected = body.get("resource").cloned().unwrap_or(json!(""));
        assert_eq!(answer["resource"], expected);
        let seq = answer["evidence"]["seq"].as_u64().unwrap();
        let record = c.get(&server.url(&format!("/v1/evidence/{seq}"))).json();
        assert_eq!(record["record"]["request"]["resource"], expected);
    }
    // `/v1/decide` keeps `resource` required.
    assert_eq!(
        c.post_json(
            &server.url("/v1/decide"),
            &json!({"actor": "a", "action": "x"})
        )
        .status,
        400
    );

    // Bad input: a 400 with problem details, never an allow.
    for bad in [
        json!({"actor": "a"}),
        json!({"actor": "a", "action": "x", "resource": 7}),
        json!({"actor": "", "action": "x", "resource": "r"}),
    ] {
        let response = c.post_json(&server.url("/actions"), &bad);
        assert_eq!(response.status, 400);
        assert!(
            response
                .content_type
                .starts_with("application/problem+json")
        );
    }
}
