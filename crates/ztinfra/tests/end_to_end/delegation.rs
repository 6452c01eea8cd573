//! Delegation across replicas on one PostgreSQL store: a delegated token's counted uses are
//! spent once in all, whichever replica decides, and revoking a link on one replica voids what
//! was delegated from it on the others.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::super::http::sync::Client;
use super::super::{Server, run};

const POLICIES: &str = r#"
@id("anyone-delegates") permit (principal, action == Action::"ztinfra.token.exchange", resource);
@id("crm-under-delegation") permit (principal, action in Action::"crm", resource)
when { context has delegation };
"#;

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

/// An `application/x-www-form-urlencoded` body.
fn urlencoded(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn exchange(server: &Server, subject: &str, actor: &str, details: &Value) -> (u16, Value) {
    let client = Client::new();
    let form = [
        ("grant_type", EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", ACCESS),
        ("actor_token", actor),
        ("actor_token_type", ACCESS),
        ("authorization_details", &details.to_string()),
    ];
    let response = client.post_raw(
        &server.url("/oauth2/token"),
        Some("application/x-www-form-urlencoded"),
        urlencoded(&form).into_bytes(),
    );
    (response.status, response.json())
}

#[test]
fn counted_uses_are_spent_once_across_replicas_and_revocations_reach_every_replica() {
    let Some((_url, scoped)) = super::evidence::postgres_schema("delegation") else {
        return;
    };
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("policies.cedar"), POLICIES).unwrap();
    let args = [
        "--callers",
        "authenticated",
        "--policies",
        policies.path().to_str().unwrap(),
        "--store",
        scoped.as_str(),
        "--public-url",
        "http://pdp.test",
    ];
    let a = Server::start(&args);
    let b = Server::start(&[&args[..], &["--join", "b"]].concat());
    let out = run(&[
        "credentials",
        "add",
        "launcher",
        "--role",
        "broker",
        "--store",
        &scoped,
    ]);
    assert!(out.status.success());
    let broker = Client::with_token(String::from_utf8(out.stdout).unwrap().trim());
    let admin = a.admin();
    for agent in ["orchestrator", "retrieval"] {
        let added = admin.post_json(
            &a.url("/v1/agents"),
            &json!({"name": agent, "owner": "team-ai"}),
        );
        assert_eq!(added.status, 201);
    }
    let session = |agent: &str| {
        let started = broker.post_json(
            &a.url("/v1/sessions"),
            &json!({"agent": agent, "on_behalf_of": "alice"}),
        );
        assert_eq!(started.status, 201);
        started.json()["access_token"].as_str().unwrap().to_owned()
    };
    let (orchestrator, retrieval) = (session("orchestrator"), session("retrieval"));

    // Six reads for the orchestrator (from its own session, on A); two of them handed on to
    // the retrieval agent on B, which leaves the orchestrator four.
    let (status, parent) = exchange(
        &a,
        &orchestrator,
        &orchestrator,
        &json!([{"type": "ztinfra_action", "actions": ["crm.invoices.read"], "max_uses": 6}]),
    );
    assert_eq!(status, 200, "{parent}");
    let parent_token = parent["access_token"].as_str().unwrap().to_owned();
    let (status, child) = exchange(
        &b,
        &parent_token,
        &retrieval,
        &json!([{"type": "ztinfra_action", "actions": ["crm.invoices.read"], "max_uses": 2}]),
    );
    assert_eq!(status, 200, "{child}");
    let child_token = child["access_token"].as_str().unwrap().to_owned();

    // Both replicas spend the parent's four at once, ten attempts each.
    let read = json!({"action": "crm.invoices.read", "resource": "crm://invoices/1"});
    let allowed: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = [&a, &b]
            .into_iter()
            .map(|server| {
                let (token, read) = (parent_token.clone(), read.clone());
                scope.spawn(move || {
                    let client = Client::with_token(&token);
                    (0..10)
                        .filter(|_| {
                            let answer = client.post_json(&server.url("/v1/decide"), &read);
                            assert_eq!(answer.status, 200);
                            answer.json()["decision"] == "allow"
                        })
                        .count()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_eq!(allowed, 4, "the parent's four uses, spent once in all");
    let spent = Client::with_token(&parent_token)
        .post_json(&b.url("/v1/decide"), &read)
        .json();
    assert_eq!(spent["reasons"][0]["kind"], "delegation", "{spent}");
    // The child's two are its own: on A, then none.
    let child_client = Client::with_token(&child_token);
    for expected in ["allow", "allow", "deny"] {
        let answer = child_client.post_json(&a.url("/v1/decide"), &read).json();
        assert_eq!(answer["decision"], expected, "{answer}");
    }

    // Spent, the child has no use left to hand down either.
    let (status, refused) = exchange(
        &a,
        &child_token,
        &orchestrator,
        &json!([{"type": "ztinfra_action", "actions": ["crm.invoices.read"], "max_uses": 1}]),
    );
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error_description"]
            .as_str()
            .unwrap()
            .contains("fewer uses left"),
        "{refused}"
    );

    // The parent revoked by its holder on B: A refuses the child, one link below, as soon as
    // the revocation is announced.
    let revoked_at = Instant::now();
    let client = Client::new();
    let revoked = client.post_raw(
        &b.url("/oauth2/revoke"),
        Some("application/x-www-form-urlencoded"),
        urlencoded(&[("token", parent_token.as_str())]).into_bytes(),
    );
    assert_eq!(revoked.status, 200);
    loop {
        let answer = child_client.post_json(&a.url("/v1/decide"), &read);
        if answer.status == 401 {
            assert!(
                String::from_utf8_lossy(&answer.body).contains("revoked"),
                "{}",
                String::from_utf8_lossy(&answer.body)
            );
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "A still accepts a token delegated from one revoked on B"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "a revocation on B voided the delegated token on A in {:?}",
        revoked_at.elapsed()
    );
}
