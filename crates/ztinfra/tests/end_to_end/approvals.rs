//! Approvals across replicas on one PostgreSQL store: asked on one replica, approved on the
//! other, and used once in all when both replicas are sent the approved retry at once.

use serde_json::{Value, json};

use super::super::http::sync::Client;

const POLICIES: &str = r#"
@id("drop-needs-sre") @approval("sre")
permit (principal == Agent::"ops-bot", action == Action::"db.tables.drop", resource);
"#;

#[test]
fn an_approval_asked_on_one_replica_is_answered_on_another_and_used_once_in_all() {
    let Some(pair) = super::evidence::ReplicaPair::start(
        "approvals",
        POLICIES,
        "[approvals.groups.sre]\nmembers = [\"alice\"]\n",
    ) else {
        return;
    };
    let (a, b) = (&pair.a, &pair.b);
    let (broker, alice) = (
        pair.credential("launcher", "broker"),
        pair.credential("alice", "approver"),
    );
    let added = a.admin().post_json(
        &a.url("/v1/agents"),
        &json!({"name": "ops-bot", "owner": "sre"}),
    );
    assert_eq!(added.status, 201);
    let started = broker.post_json(
        &a.url("/v1/sessions"),
        &json!({"agent": "ops-bot", "on_behalf_of": "frank"}),
    );
    assert_eq!(started.status, 201);
    let token = started.json()["access_token"].as_str().unwrap().to_owned();
    let agent = Client::with_token(&token);
    let drop = json!({"action": "db.tables.drop", "resource": "db://prod/orders"});

    let asked = agent.post_json(&a.url("/v1/decide"), &drop).json();
    assert_eq!(asked["decision"], "approval_required", "{asked}");
    let id = asked["approval"]["id"].as_str().unwrap().to_owned();
    // B knows it (the store is shared), and names the same one when asked again.
    let again = agent.post_json(&b.url("/v1/decide"), &drop).json();
    assert_eq!(again["approval"]["id"], id.as_str(), "{again}");
    let approved = alice.post_json(
        &b.url(&format!("/v1/approvals/{id}/approve")),
        &json!({"reason": "OPS-42"}),
    );
    assert_eq!(approved.status, 200);
    assert_eq!(approved.json()["status"], "approved");

    // Ten retries on each replica at once: one allow in all.
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let workers: Vec<_> = [a, b]
            .into_iter()
            .map(|server| {
                let (token, drop, id) = (token.clone(), drop.clone(), id.clone());
                scope.spawn(move || {
                    let client = Client::with_token(&token);
                    (0..10)
                        .map(|_| {
                            let request = client
                                .inner()
                                .post(server.url("/v1/decide"))
                                .header("zt-approval", &id)
                                .json(&drop);
                            client.send(request).json()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let allowed: Vec<&Value> = answers
        .iter()
        .filter(|a| a["decision"] == "allow")
        .collect();
    assert_eq!(allowed.len(), 1, "{answers:?}");
    let used_by = allowed[0]["decision_id"].as_str().unwrap();
    for denied in answers.iter().filter(|a| a["decision"] != "allow") {
        assert_eq!(denied["decision"], "deny", "{denied}");
        let message = denied["reasons"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("used already") && message.contains(used_by),
            "{message}"
        );
    }
}
