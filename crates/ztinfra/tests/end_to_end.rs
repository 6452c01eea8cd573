//! End-to-end tests: the real `ztinfra` binary, started on an ephemeral loopback port.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers outside #[test] functions fail loudly by design"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_ztinfra");

fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo")
}

/// A running server, killed when dropped.
struct Server {
    child: Child,
    base: String,
    data: std::sync::Arc<tempfile::TempDir>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_in(std::sync::Arc::new(tempfile::tempdir().unwrap()), args, env)
    }

    /// Starts a server on an existing data directory (to restart one).
    fn start_in(
        data: std::sync::Arc<tempfile::TempDir>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(args);
        // Most tests are about something else than callers: they declare their actors, as open
        // callers do. The tests of authenticated callers say so (`identity.rs`).
        if !args.contains(&"--callers") {
            command.args(["--callers", "open"]);
        }
        for (k, v) in env {
            command.env(k, v);
        }
        Self::launch(command, data)
    }

    /// Starts a server by `command` (`ztinfra serve ...`), whose state is in `data`.
    fn launch(mut command: Command, data: std::sync::Arc<tempfile::TempDir>) -> Self {
        command
            .env_remove("ZTINFRA_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = std::sync::Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the server exited: {}", stderr.lock().unwrap()))
            .unwrap();
        let base = line
            .strip_prefix("ztinfra listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self {
            child,
            base,
            data,
            stderr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The admin token the first start wrote.
    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A client that presents the admin token with every request.
    fn admin(&self) -> http::sync::Client {
        http::sync::Client::with_token(&self.admin_token())
    }

    /// A client that presents `token` (another replica's admin token, say).
    fn admin_with(&self, token: &str) -> http::sync::Client {
        http::sync::Client::with_token(token)
    }

    /// The keys of the session tokens' JWKS.
    fn get_keys(&self) -> Vec<serde_json::Value> {
        client().get(&self.url("/.well-known/jwks.json")).json()["keys"]
            .as_array()
            .unwrap()
            .clone()
    }

    fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> http::sync::Client {
    http::sync::Client::new()
}

mod end_to_end {
    mod approvals;
    mod authzen;
    mod behaviour;
    mod delegation;
    mod evidence;
    mod hardening;
    mod identity;
    mod replicas;
    mod workloads;
}

/// A tiny synchronous HTTP helper over reqwest's async client, on a private runtime.
mod http {
    pub mod sync {
        pub struct Client {
            runtime: tokio::runtime::Runtime,
            inner: reqwest::Client,
        }

        pub struct Response {
            pub status: u16,
            pub content_type: String,
            pub headers: reqwest::header::HeaderMap,
            pub body: Vec<u8>,
        }

        impl Response {
            pub fn json(&self) -> serde_json::Value {
                serde_json::from_slice(&self.body).unwrap_or_else(|e| {
                    panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body))
                })
            }
        }

        impl Client {
            pub fn new() -> Self {
                Self::with_headers(reqwest::header::HeaderMap::new())
            }

            /// A client that sends `Authorization: Bearer <token>` with every request.
            pub fn with_token(token: &str) -> Self {
                let mut headers = reqwest::header::HeaderMap::new();
                headers.insert(
                    reqwest::header::AUTHORIZATION,
                    format!("Bearer {token}").parse().unwrap(),
                );
                Self::with_headers(headers)
            }

            fn with_headers(headers: reqwest::header::HeaderMap) -> Self {
                // The client's TLS backend has no crypto provider of its own (ring, as the
                // binary installs it).
                let _ = rustls::crypto::ring::default_provider().install_default();
                Self {
                    runtime: tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap(),
                    inner: reqwest::Client::builder()
                        .default_headers(headers)
                        .build()
                        .unwrap(),
                }
            }

            pub fn send(&self, request: reqwest::RequestBuilder) -> Response {
                self.try_send(request).unwrap()
            }

            /// Like `send`, but a transport error is returned, not a panic.
            pub fn try_send(
                &self,
                request: reqwest::RequestBuilder,
            ) -> Result<Response, reqwest::Error> {
                self.runtime.block_on(async {
                    let response = request.send().await?;
                    let status = response.status().as_u16();
                    let content_type = response
                        .headers()
                        .get("content-type")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    let headers = response.headers().clone();
                    let body = response.bytes().await?.to_vec();
                    Ok(Response {
                        status,
                        content_type,
                        headers,
                        body,
                    })
                })
            }

            pub fn inner(&self) -> &reqwest::Client {
                &self.inner
            }

            pub fn get(&self, url: &str) -> Response {
                self.send(self.inner.get(url))
            }

            pub fn post_json(&self, url: &str, body: &serde_json::Value) -> Response {
                self.send(self.inner.post(url).json(body))
            }

            pub fn put_json(&self, url: &str, body: &serde_json::Value) -> Response {
                self.send(self.inner.put(url).json(body))
            }

            /// A GET that may fail to connect.
            pub fn try_get(&self, url: &str) -> Option<Response> {
                self.try_send(self.inner.get(url)).ok()
            }

            pub fn post_raw(
                &self,
                url: &str,
                content_type: Option<&str>,
                body: Vec<u8>,
            ) -> Response {
                let mut request = self.inner.post(url).body(body);
                if let Some(ct) = content_type {
                    request = request.header("content-type", ct);
                }
                self.send(request)
            }
        }
    }
}

fn decide(c: &http::sync::Client, server: &Server, body: Value) -> Value {
    let response = c.post_json(&server.url("/v1/decide"), &body);
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    response.json()
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn demo_denies_by_default_and_allows_by_policy() {
    let server = Server::start(&["--demo"]);
    let c = client();
    let deny = decide(
        &c,
        &server,
        json!({"actor": "demo-agent", "action": "aws.ec2.terminate_instances", "resource": "i-demo"}),
    );
    assert_eq!(deny["decision"], "deny");
    assert_eq!(deny["reasons"][0]["kind"], "default_deny");
    let allow = decide(
        &c,
        &server,
        json!({"actor": "demo-agent", "action": "aws.ec2.describe_instances", "resource": "i-demo", "context": {"env": "prod"}}),
    );
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["reasons"][0]["policy"], "ec2-read");
    let forbid = decide(
        &c,
        &server,
        json!({"actor": "demo-agent", "action": "aws.iam.create_user", "resource": "u"}),
    );
    assert_eq!(
        forbid["reasons"][0]["message"],
        "IAM changes always need a human"
    );

    // Decision ids are distinct UUIDv7s; the policy version is the active set's.
    let id = deny["decision_id"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "7", "UUID version 7: {id}");
    assert_ne!(deny["decision_id"], allow["decision_id"]);
    let status = c.get(&server.url("/v1/policies")).json();
    assert_eq!(deny["policy_version"], status["version"]);
    assert_eq!(status["policies"], 5);

    // State: the signing key is private, the SQLite store exists.
    use std::os::unix::fs::PermissionsExt;
    let key = server.data.path().join("keys/signing.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(server.data.path().join("ztinfra.db").exists());
    assert!(
        !server
            .logs()
            .contains(&std::fs::read_to_string(&key).unwrap().trim().to_owned())
    );
}

#[test]
fn bad_input_gets_problem_details_never_a_500() {
    let server = Server::start(&[
        "--demo",
        "--max-body-bytes",
        "4096",
        "--max-context-depth",
        "8",
    ]);
    let c = client();
    let url = server.url("/v1/decide");
    let deep = format!(
        r#"{{"actor": "a", "action": "x", "resource": "r", "context": {{"a": {}1{}}}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    let nested_context = json!({"actor": "a", "action": "x", "resource": "r",
        "context": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}}});
    // (body, content type, status, pointer or detail fragment)
    let cases: Vec<(Vec<u8>, Option<&str>, u16, &str)> = vec![
        (
            b"{\"actor\": ".to_vec(),
            Some("application/json"),
            400,
            "malformed JSON",
        ),
        (b"{}".to_vec(), Some("text/plain"), 415, "application/json"),
        (b"{}".to_vec(), None, 415, "Content-Type"),
        (
            br#"{"actor": "a", "action": "x"}"#.to_vec(),
            Some("application/json"),
            400,
            "/resource",
        ),
        (
            br#"{"actor": ["a"], "action": "x", "resource": "r"}"#.to_vec(),
            Some("application/json"),
            400,
            "/actor",
        ),
        (
            br#"{"actor": "", "action": "x", "resource": "r"}"#.to_vec(),
            Some("application/json"),
            400,
            "/actor",
        ),
        (
            br#"{"actor": "a", "action": "x..y", "resource": "r"}"#.to_vec(),
            Some("application/json"),
            400,
            "/action",
        ),
        (
            br#"{"actor": "a", "action": "x", "resource": "r", "context": 5}"#.to_vec(),
            Some("application/json"),
            400,
            "/context",
        ),
        (
            br#"{"actor": "a", "action": "x", "resource": "r", "context": {"n": 1.5}}"#.to_vec(),
            Some("application/json"),
            400,
            "/context/n",
        ),
        (
            nested_context.to_string().into_bytes(),
            Some("application/json"),
            400,
            "/context/a/b/c/d/e/f/g",
        ),
        (
            deep.into_bytes(),
            Some("application/json"),
            400,
            "recursion limit",
        ),
        (
            b"{\"actor\": \"\xc3\x28\", \"action\": \"x\", \"resource\": \"r\"}".to_vec(),
            Some("application/json"),
            400,
            "UTF-8",
        ),
        (vec![b' '; 5000], Some("application/json"), 413, "limit"),
        (
            br#"["a", "x", "r"]"#.to_vec(),
            Some("application/json"),
            400,
            "must be a JSON object",
        ),
        (
            br#"{"actor": "a", "actor": "b", "action": "x", "resource": "r"}"#.to_vec(),
            Some("application/json"),
            400,
            "duplicate field",
        ),
    ];
    for (body, content_type, status, fragment) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let response = c.post_raw(&url, content_type, body);
        assert_eq!(
            response.status,
            status,
            "{shown}: {}",
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(response.content_type, "application/problem+json", "{shown}");
        let problem = response.json();
        assert_eq!(problem["status"], status);
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:zt-infra:problem:")
        );
        assert!(problem["title"].is_string());
        let text = problem.to_string();
        assert!(
            text.contains(fragment),
            "{shown}: {fragment:?} not in {text}"
        );
    }
    // Unknown top-level fields are ignored.
    let ok = decide(
        &c,
        &server,
        json!({"actor": "a", "action": "x", "resource": "r", "future_field": {"x": 1}}),
    );
    assert_eq!(ok["decision"], "deny");
    // The server is still healthy.
    assert_eq!(c.get(&server.url("/healthz")).status, 200);
}

#[test]
fn batches_answer_in_order_within_the_limit() {
    let server = Server::start(&["--demo", "--max-batch", "3"]);
    let c = client();
    let url = server.url("/v1/decide/batch");
    let item = |action: &str| json!({"actor": "demo-agent", "action": action, "resource": "i-1"});
    let response = c.post_json(
        &url,
        &json!({"requests": [item("aws.ec2.describe_instances"), item("aws.ec2.terminate_instances"), item("aws.s3.get_object")]}),
    );
    assert_eq!(response.status, 200);
    let decisions: Vec<_> = response.json()["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["decision"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(decisions, ["allow", "deny", "allow"]);

    let four = json!({"requests": [item("a"), item("b"), item("c"), item("d")]});
    let response = c.post_json(&url, &four);
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["errors"][0]["pointer"], "/requests");

    let bad = json!({"requests": [item("a"), {"actor": "", "action": "b", "resource": "r"}]});
    let response = c.post_json(&url, &bad);
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["errors"][0]["pointer"], "/requests/1/actor");
}

#[test]
fn possible_actions_follow_policy_scopes_and_record_nothing() {
    let server = Server::start(&["--demo"]);
    let c = client();
    let url = server.url("/v1/actions/possible");
    let actions = [
        "aws.ec2.describe_instances",
        "aws.iam.create_user",
        "aws.s3.get_object",
        "aws.ec2.terminate_instances",
        "aws.s3.delete_object",
    ];
    let possible = |actor: &str| {
        let response = c.post_json(&url, &json!({"actor": actor, "actions": actions}));
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        response.json()["actions"].clone()
    };
    // `staging-ec2` names demo-agent: it could terminate (in staging); nobody could touch IAM
    // beyond what a permit scope covers, and no permit covers s3 deletes.
    assert_eq!(
        possible("demo-agent"),
        json!([
            "aws.ec2.describe_instances",
            "aws.s3.get_object",
            "aws.ec2.terminate_instances"
        ])
    );
    assert_eq!(
        possible("other-agent"),
        json!(["aws.ec2.describe_instances", "aws.s3.get_object"])
    );
    // Not a decision: the evidence log stays empty.
    let checkpoint = c.get(&server.url("/v1/evidence/checkpoint")).json();
    assert_eq!(checkpoint["tree_size"], 0, "{checkpoint}");

    let bad = c.post_json(&url, &json!({"actor": "a", "actions": ["ok", "a..b"]}));
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["errors"][0]["pointer"], "/actions/1");
    let too_many: Vec<String> = (0..1001).map(|i| format!("a{i}")).collect();
    let bad = c.post_json(&url, &json!({"actor": "a", "actions": too_many}));
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["errors"][0]["pointer"], "/actions");
}

#[test]
fn a_broken_policy_keeps_the_previous_set_and_is_reported() {
    let policies = tempfile::tempdir().unwrap();
    let file = policies.path().join("p.cedar");
    std::fs::write(
        &file,
        "@id(\"read\") permit(principal, action in Action::\"read\", resource);\n",
    )
    .unwrap();
    let server = Server::start(&["--policies", policies.path().to_str().unwrap()]);
    let c = server.admin();
    let ask = |action: &str| {
        decide(
            &c,
            &server,
            json!({"actor": "a", "action": action, "resource": "r"}),
        )
    };
    let first = ask("read.file");
    assert_eq!(first["decision"], "allow");
    let version = first["policy_version"].clone();

    // Break the set on disk: the watcher reloads, fails, keeps the old set and says why.
    std::fs::write(
        &file,
        "@id(\"read\") permit(principal, action in Action::\"read\", resource);\n@id(\"write\") permit(principal, action in Action::\"write\" resource);\n",
    )
    .unwrap();
    wait_for("the failed reload to be reported", || {
        !c.get(&server.url("/v1/policies")).json()["last_reload_error"].is_null()
    });
    let status = c.get(&server.url("/v1/policies")).json();
    assert_eq!(status["version"], version);
    let error = &status["last_reload_error"]["errors"][0];
    assert_eq!(error["file"], "p.cedar");
    assert_eq!(error["line"], 2);
    let still = ask("read.file");
    assert_eq!(still["decision"], "allow");
    assert_eq!(still["policy_version"], version);
    assert_eq!(ask("write.file")["decision"], "deny");

    let reload = c.post_raw(&server.url("/v1/policies/reload"), None, Vec::new());
    assert_eq!(reload.status, 422);
    assert_eq!(reload.content_type, "application/problem+json");
    let problem = reload.json();
    assert_eq!(problem["policy_errors"][0]["file"], "p.cedar");
    assert_eq!(problem["policy_errors"][0]["line"], 2);
    assert!(
        server.logs().contains("policy reload failed"),
        "{}",
        server.logs()
    );
    let metrics = String::from_utf8(c.get(&server.url("/metrics")).body).unwrap();
    assert!(
        metrics.contains("ztinfra_policy_reloads_total{outcome=\"error\"}"),
        "{metrics}"
    );

    // Fix it: the watcher activates the new set.
    std::fs::write(
        &file,
        "@id(\"read\") permit(principal, action in Action::\"read\", resource);\n@id(\"write\") permit(principal, action in Action::\"write\", resource);\n",
    )
    .unwrap();
    wait_for("the fixed set to activate", || {
        ask("write.file")["decision"] == "allow"
    });
    let status = c.get(&server.url("/v1/policies")).json();
    assert_ne!(status["version"], version);
    assert!(status["last_reload_error"].is_null());
    let reload = c.post_raw(&server.url("/v1/policies/reload"), None, Vec::new());
    assert_eq!(reload.status, 200);
    assert_eq!(reload.json()["changed"], false);
}

#[test]
fn a_set_that_does_not_load_stops_start_up() {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("a.cedar"),
        "permit(principal, action, resource)",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .arg("--policies")
        .arg(policies.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("a.cedar:1:"), "{stderr}");
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn decide_command_exit_codes_guard_shell_steps() {
    let server = Server::start(&["--demo"]);
    let decide = |action: &str, extra: &[&str]| {
        let mut args = vec![
            "decide",
            "--server",
            &server.base,
            "--actor",
            "demo-agent",
            "--action",
            action,
            "--resource",
            "i-1",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let allow = decide("aws.ec2.describe_instances", &[]);
    assert_eq!(allow.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&allow.stdout).starts_with("allow: agents may inspect"));
    let deny = decide("aws.ec2.terminate_instances", &[]);
    assert_eq!(deny.status.code(), Some(1));
    let staging = decide(
        "aws.ec2.terminate_instances",
        &["--context", r#"{"env":"staging"}"#, "--json"],
    );
    assert_eq!(staging.status.code(), Some(0));
    let answer: Value = serde_json::from_slice(&staging.stdout).unwrap();
    assert_eq!(answer["reasons"][0]["policy"], "staging-ec2");
    let bad_context = decide("x", &["--context", "[1]"]);
    assert_eq!(bad_context.status.code(), Some(2));
    let invalid = decide("x..y", &[]);
    assert_eq!(invalid.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("empty segment"));
    // Nothing listens on port 9 of loopback: an error, exit 2, never an allow.
    let down = run(&[
        "decide",
        "--server",
        "http://127.0.0.1:9",
        "--actor",
        "a",
        "--action",
        "x",
        "--resource",
        "r",
    ]);
    assert_eq!(down.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("connection was refused"),
        "{down:?}"
    );
}

#[test]
fn policy_check_validates_and_runs_tests() {
    let demo = demo_dir();
    let ok = run(&["policy", "check", demo.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        stdout.contains("policy tests: 7 passed, 0 failed"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&demo).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    // A failing test case.
    let tests = dir.path().join("demo.tests.json");
    let text = std::fs::read_to_string(&tests).unwrap().replacen(
        "\"expect\": \"deny\"",
        "\"expect\": \"allow\"",
        1,
    );
    std::fs::write(&tests, text).unwrap();
    let failing = run(&["policy", "check", dir.path().to_str().unwrap()]);
    assert_eq!(failing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failing.stdout).contains("6 passed, 1 failed"));

    // A type error, reported with file and line.
    std::fs::write(
        dir.path().join("extra.cedar"),
        "\npermit(principal, action, resource) when { context.nope };\n",
    )
    .unwrap();
    let invalid = run(&["policy", "check", dir.path().to_str().unwrap()]);
    assert_eq!(invalid.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&invalid.stderr);
    assert!(stderr.contains("extra.cedar:2:"), "{stderr}");

    let missing = run(&["policy", "check", "/nonexistent/ztinfra"]);
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn reference_json_policies_import_and_decide_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let json_file = dir.path().join("policy.json");
    std::fs::write(
        &json_file,
        r#"{"defaultDecision": "deny",
            "allow": [{"action": "github.repos.*", "reason": "reading repos is fine"},
                      {"action": "aws.ec2.describe_instances", "reason": "inspection"}],
            "deny": [{"action": "github.repos.delete", "reason": "never delete repos"}]}"#,
    )
    .unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let out = policies.join("imported.cedar");
    let import = run(&[
        "policy",
        "import-zt-json",
        json_file.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        import.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );

    let server = Server::start(&["--policies", policies.to_str().unwrap()]);
    let c = client();
    let ask = |action: &str| {
        decide(
            &c,
            &server,
            json!({"actor": "a", "action": action, "resource": "r"}),
        )
    };
    assert_eq!(
        ask("github.repos.get")["reasons"][0]["message"],
        "reading repos is fine"
    );
    assert_eq!(
        ask("github.repos.delete")["reasons"][0]["message"],
        "never delete repos"
    );
    assert_eq!(ask("aws.ec2.describe_instances")["decision"], "allow");
    assert_eq!(ask("aws.ec2.terminate_instances")["decision"], "deny");

    std::fs::write(&json_file, r#"{"allow": [{"action": "github.re*"}]}"#).unwrap();
    let refused = run(&["policy", "import-zt-json", json_file.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("allow[0]: prefix `github.re*`"));
}

#[test]
fn operations_endpoints() {
    let server = Server::start(&["--demo"]);
    let c = server.admin();
    assert_eq!(c.get(&server.url("/healthz")).json()["status"], "ok");
    assert_eq!(c.get(&server.url("/readyz")).json()["status"], "ready");
    decide(
        &c,
        &server,
        json!({"actor": "a", "action": "x", "resource": "r"}),
    );
    let metrics = c.get(&server.url("/metrics"));
    assert!(metrics.content_type.starts_with("text/plain"));
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.contains("ztinfra_decisions_total{decision=\"deny\",endpoint=\"decide\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ztinfra_decision_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("ztinfra_policies_active 5"), "{text}");
    let openapi = c.get(&server.url("/openapi.json")).json();
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/decide",
        "/v1/decide/batch",
        "/v1/policies",
        "/v1/policies/reload",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} missing");
    }
    assert!(openapi["components"]["schemas"]["DecisionRequest"].is_object());
    // The protected endpoints name the bearer scheme; the public ones do not.
    assert_eq!(
        openapi["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (path, method) in [
        ("/v1/decide", "post"),
        ("/v1/policies/reload", "post"),
        ("/v1/sessions", "post"),
    ] {
        assert_eq!(
            openapi["paths"][path][method]["security"],
            serde_json::json!([{"bearer": []}]),
            "{path}"
        );
    }
    assert!(openapi["paths"]["/v1/policies"]["get"]["security"].is_null());
    let missing = c.get(&server.url("/v1/nothing"));
    assert_eq!(
        (missing.status, missing.content_type.as_str()),
        (404, "application/problem+json")
    );
}

#[test]
fn sigterm_finishes_in_flight_requests() {
    let mut server = Server::start(&["--demo"]);
    let addr = server.base.strip_prefix("http://").unwrap().to_owned();
    let body = br#"{"actor":"demo-agent","action":"aws.ec2.describe_instances","resource":"i-1"}"#;
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /v1/decide HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..10]).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The request is in flight (half its body sent) when the server is told to stop.
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(&body[10..]).unwrap();
    let mut response = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while !response.contains("\"policy_version\"") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed early: {response}");
        response.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"decision\":\"allow\""), "{response}");
    drop(stream);
    let status = server.terminate();
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        server.logs()
    );
    assert!(server.logs().contains("stopped"));
}

#[test]
fn settings_come_from_flags_then_env_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ztinfra.toml");
    std::fs::write(
        &config,
        "demo = true\nmax_batch = 2\nlog_format = \"json\"\n",
    )
    .unwrap();
    let item = json!({"actor": "a", "action": "x", "resource": "r"});
    let batch = |n: usize| json!({"requests": vec![item.clone(); n]});
    let c = client();

    let from_file = Server::start(&["--config", config.to_str().unwrap()]);
    let url = from_file.url("/v1/decide/batch");
    assert_eq!(c.post_json(&url, &batch(2)).status, 200);
    assert_eq!(c.post_json(&url, &batch(3)).status, 400);
    // JSON logs, from the file.
    wait_for("a JSON log line", || {
        from_file.logs().lines().any(|l| l.starts_with('{'))
    });
    drop(from_file);

    let env_over_file = Server::start_with_env(
        &["--config", config.to_str().unwrap()],
        &[("ZTINFRA_MAX_BATCH", "3")],
    );
    let url = env_over_file.url("/v1/decide/batch");
    assert_eq!(c.post_json(&url, &batch(3)).status, 200);
    assert_eq!(c.post_json(&url, &batch(4)).status, 400);
    drop(env_over_file);

    let flag_over_env = Server::start_with_env(
        &["--config", config.to_str().unwrap(), "--max-batch", "4"],
        &[("ZTINFRA_MAX_BATCH", "3")],
    );
    let url = flag_over_env.url("/v1/decide/batch");
    assert_eq!(c.post_json(&url, &batch(4)).status, 200);
    drop(flag_over_env);

    std::fs::write(&config, "max_batchh = 2\n").unwrap();
    let typo = run(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(typo.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&typo.stderr).contains("max_batchh"));
}
