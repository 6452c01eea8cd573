//! Verified callers: credentials made and revoked from the command line, the first start's
//! admin token, 401 and 403 as problem details, and who asked in every evidence record.

use std::os::unix::fs::PermissionsExt as _;

use serde_json::{Value, json};

use crate::http::sync::Client;
use crate::{BIN, Server, client, demo_dir, run, wait_for};

/// A copy of the demo policy set, served with authenticated callers (the default without
/// `--demo`).
fn authenticated_server() -> (Server, tempfile::TempDir) {
    let policies = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(demo_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), policies.path().join(entry.file_name())).unwrap();
    }
    let server = Server::start(&[
        "--callers",
        "authenticated",
        "--policies",
        policies.path().to_str().unwrap(),
    ]);
    (server, policies)
}

/// `ztinfra credentials ...` on the server's store; the output, checked to have succeeded.
fn credentials(server: &Server, args: &[&str]) -> std::process::Output {
    let mut all = vec!["credentials"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--data-dir", server.data.path().to_str().unwrap()]);
    run(&all)
}

fn add(server: &Server, name: &str, role: &str) -> String {
    let out = credentials(server, &["add", name, "--role", role]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

const ALLOWED: &str = r#"{"actor": "demo-agent", "action": "aws.ec2.describe_instances", "resource": "i-1", "context": {"env": "prod"}}"#;

fn body() -> Value {
    serde_json::from_str(ALLOWED).unwrap()
}

/// Every endpoint that decides, changes state or reads evidence, with a body it takes.
fn guarded() -> Vec<(&'static str, &'static str, Value)> {
    let evaluation = json!({"subject": {"type": "Agent", "id": "demo-agent"}, "action": {"name": "aws.ec2.describe_instances"}, "resource": {"type": "Resource", "id": "i-1"}});
    vec![
        ("POST", "/v1/decide", body()),
        ("POST", "/v1/decide/batch", json!({"requests": [body()]})),
        (
            "POST",
            "/v1/actions/possible",
            json!({"actor": "demo-agent", "actions": ["aws.ec2.describe_instances"]}),
        ),
        ("POST", "/access/v1/evaluation", evaluation.clone()),
        (
            "POST",
            "/access/v1/evaluations",
            json!({"evaluations": [evaluation]}),
        ),
        (
            "POST",
            "/access/v1/search/action",
            json!({"subject": {"type": "Agent", "id": "demo-agent"}, "resource": {"type": "Resource", "id": "i-1"}}),
        ),
        ("POST", "/actions", body()),
        ("PUT", "/v1/entities", json!({"entities": []})),
        ("POST", "/v1/entities", json!({"entities": []})),
        ("POST", "/v1/policies/reload", json!({})),
        ("GET", "/v1/entities", Value::Null),
        ("GET", "/v1/evidence/0", Value::Null),
    ]
}

fn call(
    c: &Client,
    server: &Server,
    method: &str,
    path: &str,
    body: &Value,
) -> (u16, Value, String) {
    let url = server.url(path);
    let request = match method {
        "GET" => c.inner().get(url),
        "PUT" => c.inner().put(url).json(body),
        _ => c.inner().post(url).json(body),
    };
    let response = c.send(request);
    let challenge = response
        .headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let json = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    if response.status >= 400 {
        assert_eq!(response.content_type, "application/problem+json", "{path}");
    }
    (response.status, json, challenge)
}

#[test]
fn without_a_valid_credential_nothing_is_decided_changed_or_read() {
    let (server, _policies) = authenticated_server();
    let anonymous = client();
    let unknown = Client::with_token("zt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    for (method, path, body) in guarded() {
        let (status, problem, challenge) = call(&anonymous, &server, method, path, &body);
        assert_eq!(status, 401, "{method} {path}: {problem}");
        assert_eq!(challenge, "Bearer realm=\"ztinfra\"", "{path}");
        assert_eq!(problem["type"], "urn:zt-infra:problem:unauthenticated");
        let (status, problem, challenge) = call(&unknown, &server, method, path, &body);
        assert_eq!(status, 401, "{method} {path}: {problem}");
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        assert_eq!(
            problem["detail"],
            "the bearer token is not a credential of this service"
        );
    }
    // Another scheme is not a bearer token.
    let basic = anonymous.send(
        anonymous
            .inner()
            .post(server.url("/v1/decide"))
            .header("authorization", "Basic YWRtaW46YWRtaW4=")
            .json(&body()),
    );
    assert_eq!(basic.status, 401);
    assert!(
        basic.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_request")
    );
    // Nothing was decided, so nothing recorded; what is public stays public.
    for path in [
        "/healthz",
        "/readyz",
        "/v1/policies",
        "/v1/evidence/checkpoint",
        "/v1/evidence/keys",
        "/.well-known/authzen-configuration",
        "/openapi.json",
    ] {
        assert_eq!(anonymous.get(&server.url(path)).status, 200, "{path}");
    }
    assert_eq!(
        anonymous.get(&server.url("/v1/evidence/checkpoint")).json()["tree_size"],
        0
    );
    // A body that is not even JSON is refused as unauthenticated first: the body is not read.
    let raw = anonymous.post_raw(
        &server.url("/v1/decide"),
        Some("application/json"),
        b"{not json".to_vec(),
    );
    assert_eq!(raw.status, 401);
}

#[test]
fn roles_separate_duties_and_records_name_who_asked() {
    let (server, _policies) = authenticated_server();
    let pep = Client::with_token(&add(&server, "gateway-1", "pep"));
    let auditor = Client::with_token(&add(&server, "audit", "auditor"));
    let broker = Client::with_token(&add(&server, "launcher", "broker"));
    let admin = server.admin();

    // Each role does its own job, and only that.
    let may =
        |c: &Client, method: &str, path: &str, body: &Value| call(c, &server, method, path, body).0;
    for (method, path, body) in guarded() {
        let decides = !path.starts_with("/v1/entities")
            && !path.starts_with("/v1/policies")
            && !path.starts_with("/v1/evidence");
        let reads = method == "GET";
        let expect = |yes: bool, c: &Client| {
            let status = may(c, method, path, &body);
            if yes {
                assert!(
                    status < 400 || status == 403 && path == "/actions",
                    "{method} {path}: {status}"
                );
            } else {
                assert_eq!(status, 403, "{method} {path}");
            }
        };
        expect(decides, &pep);
        expect(reads, &auditor);
        expect(!decides, &admin);
        expect(false, &broker);
    }
    let (status, problem, challenge) =
        call(&pep, &server, "POST", "/v1/policies/reload", &json!({}));
    assert_eq!(status, 403);
    assert_eq!(problem["type"], "urn:zt-infra:problem:forbidden");
    assert_eq!(
        problem["detail"],
        "the credential `gateway-1` has role `pep`; this needs a credential of role `admin`"
    );
    assert!(challenge.contains("insufficient_scope"));

    // The record of a decision names the enforcement point that asked.
    let decided = pep.post_json(&server.url("/v1/decide"), &body()).json();
    assert_eq!(decided["decision"], "allow");
    let seq = decided["evidence"]["seq"].as_u64().unwrap();
    let record = auditor
        .get(&server.url(&format!("/v1/evidence/{seq}")))
        .json();
    assert_eq!(
        record["record"]["caller"],
        json!({"kind": "pep", "name": "gateway-1"})
    );
    assert_eq!(record["record"]["request"]["actor"], "demo-agent");

    // And the export verifies with it.
    let export = run(&[
        "evidence",
        "export",
        "--data-dir",
        server.data.path().to_str().unwrap(),
    ]);
    assert!(export.status.success());
    let text = String::from_utf8(export.stdout).unwrap();
    assert!(text.contains(r#""caller":{"kind":"pep","name":"gateway-1"}"#));
}

#[test]
fn credentials_are_made_listed_and_revoked_from_the_command_line() {
    let (server, _policies) = authenticated_server();
    // The first start made one admin credential, its token in a private file, named in the
    // log but not shown there.
    let token_file = server.data.path().join("admin.token");
    let admin_token = server.admin_token();
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(admin_token.starts_with("zt_") && admin_token.len() == 46);
    let logs = server.logs();
    assert!(logs.contains("admin.token"), "{logs}");
    assert!(!logs.contains(&admin_token));

    let token = add(&server, "gw", "pep");
    assert!(token.starts_with("zt_") && token.len() == 46);
    assert_ne!(token, admin_token);
    let pep = Client::with_token(&token);
    assert_eq!(
        pep.post_json(&server.url("/v1/decide"), &body()).status,
        200
    );

    // Names are unique, roles and names are checked.
    for (args, message) in [
        (
            vec!["add", "gw", "--role", "auditor"],
            "a credential named `gw` exists already",
        ),
        (vec!["add", "x", "--role", "root"], "`root` is not a role"),
        (
            vec!["add", "a b", "--role", "pep"],
            "is not a credential name",
        ),
        (
            vec!["revoke", "nobody"],
            "there is no credential named `nobody`",
        ),
    ] {
        let out = credentials(&server, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty());
    }

    // Revoked from the command line: refused by the running service within a second.
    let out = credentials(&server, &["revoke", "gw"]);
    assert!(out.status.success());
    wait_for("the revocation to reach the service", || {
        pep.post_json(&server.url("/v1/decide"), &body()).status == 401
    });
    let refused = pep.post_json(&server.url("/v1/decide"), &body()).json();
    assert_eq!(refused["detail"], "the credential `gw` was revoked");
    assert!(server.logs().contains("the credential `gw` was revoked"));

    let list = credentials(&server, &["list"]);
    let text = String::from_utf8(list.stdout).unwrap();
    let gw = text.lines().find(|l| l.starts_with("gw ")).unwrap();
    assert!(
        gw.contains(" pep ") && !gw.trim_end().ends_with('-'),
        "{gw}"
    );
    let admin = text.lines().find(|l| l.starts_with("admin ")).unwrap();
    assert!(admin.trim_end().ends_with('-'), "{admin}");
    // No token is stored or listed: only digests.
    assert!(!text.contains(&token) && !text.contains(&admin_token));
    for file in ["ztinfra.db", "ztinfra.db-wal"] {
        let bytes = std::fs::read(server.data.path().join(file)).unwrap_or_default();
        for secret in [&token, &admin_token] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{file}"
            );
        }
    }
}

#[test]
fn only_the_first_start_makes_an_admin() {
    let (mut server, policies) = authenticated_server();
    let first = server.admin_token();
    // Served once (so that the signal handler is in place), then stopped.
    assert_eq!(server.admin().get(&server.url("/v1/entities")).status, 200);
    assert_eq!(server.terminate().code(), Some(0));
    let data = std::sync::Arc::clone(&server.data);
    drop(server);
    // Restarted, even without the token file: no second admin is made.
    std::fs::remove_file(data.path().join("admin.token")).unwrap();
    let args = [
        "--callers",
        "authenticated",
        "--policies",
        policies.path().to_str().unwrap(),
    ];
    let server = Server::start_in(std::sync::Arc::clone(&data), &args, &[]);
    assert!(!data.path().join("admin.token").exists());
    let admin = Client::with_token(&first);
    assert_eq!(admin.get(&server.url("/v1/entities")).status, 200);
}

#[test]
fn the_decide_command_presents_a_credential() {
    let (server, _policies) = authenticated_server();
    let token = add(&server, "ci", "pep");
    let base = server.base.clone();
    let ask = |extra: &[&str]| {
        let mut args = vec![
            "decide",
            "--server",
            &base,
            "--actor",
            "demo-agent",
            "--action",
            "aws.ec2.describe_instances",
            "--resource",
            "i-1",
            "--context",
            r#"{"env": "prod"}"#,
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(BIN)
            .args(&args)
            .env_remove("ZTINFRA_TOKEN")
            .output()
            .unwrap()
    };
    let refused = ask(&[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    assert_eq!(ask(&["--token", &token]).status.code(), Some(0));
    let file = server.data.path().join("ci.token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    assert_eq!(
        ask(&["--token-file", file.to_str().unwrap()]).status.code(),
        Some(0)
    );
}
