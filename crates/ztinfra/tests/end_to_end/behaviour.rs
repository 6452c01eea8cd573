//! Behaviour and quarantine across replicas on one PostgreSQL store: a session quarantined by
//! a policy on one replica is held on the other at once (pushed like a revocation), an
//! operator's release on the other frees it everywhere, and what one replica observed of an
//! agent reaches the other's `context.behaviour` within the share interval.

use serde_json::json;

use super::super::Server;
use super::super::http::sync::Client;

const POLICIES: &str = r#"
@id("work") permit (principal == Agent::"files-bot", action == Action::"files.read", resource);
@id("probing") @quarantine("session")
forbid (principal, action, resource)
when { context has behaviour && context.behaviour.denies_recent >= 2 && context.behaviour.novel_action };
"#;

#[test]
fn a_quarantine_made_on_one_replica_holds_on_another_and_observations_are_shared() {
    let Some(pair) =
        super::evidence::ReplicaPair::start("behaviour", POLICIES, "[behaviour]\nshare_secs = 1\n")
    else {
        return;
    };
    let (a, b) = (&pair.a, &pair.b);
    let (broker, auditor) = (
        pair.credential("launcher", "broker"),
        pair.credential("audit", "auditor"),
    );
    let added = a.admin().post_json(
        &a.url("/v1/agents"),
        &json!({"name": "files-bot", "owner": "docs"}),
    );
    assert_eq!(added.status, 201);
    let started = broker.post_json(
        &a.url("/v1/sessions"),
        &json!({"agent": "files-bot", "on_behalf_of": "dana"}),
    );
    assert_eq!(started.status, 201);
    let body = started.json();
    let session = body["session_id"].as_str().unwrap().to_owned();
    let agent = Client::with_token(body["access_token"].as_str().unwrap());
    let decide = |server: &Server, action: &str| {
        agent
            .post_json(
                &server.url("/v1/decide"),
                &json!({"action": action, "resource": "doc/1"}),
            )
            .json()
    };

    assert_eq!(decide(a, "files.read")["decision"], "allow");
    // B learns what A observed within the share interval: files.read is not new to B.
    let mut shared = false;
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let view = auditor.get(&b.url("/v1/agents/files-bot/behaviour"));
        if view.status == 200 && view.json()["known_actions"] == json!(["files.read"]) {
            shared = true;
            break;
        }
    }
    assert!(shared, "replica b never read replica a's observations");

    // Two denies on A, then a new action on A: quarantined; B holds the session at once.
    for action in ["secrets.read", "iam.keys.create"] {
        assert_eq!(decide(a, action)["decision"], "deny");
    }
    let caught = decide(a, "shell.exec");
    assert_eq!(caught["reasons"][0]["policy"], "probing", "{caught}");
    let mut held = serde_json::Value::Null;
    for _ in 0..50 {
        held = decide(b, "files.read");
        if held["reasons"][0]["kind"] == "quarantine" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(held["decision"], "deny", "{held}");
    assert_eq!(held["reasons"][0]["kind"], "quarantine", "{held}");
    assert_eq!(
        held["reasons"][0]["quarantine"],
        format!("session:{session}"),
        "{held}"
    );

    // Released by an operator on B: A allows again.
    let admin = b.admin_with(&a.admin_token());
    let released = admin.send(
        admin
            .inner()
            .delete(b.url(&format!("/v1/sessions/{session}/quarantine"))),
    );
    assert_eq!(released.status, 200);
    let mut again = serde_json::Value::Null;
    for _ in 0..50 {
        again = decide(a, "files.read");
        if again["decision"] == "allow" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(again["decision"], "allow", "{again}");
}
