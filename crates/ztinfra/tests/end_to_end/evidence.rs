//! The evidence log, end to end: every decision on record, exported, verified offline,
//! tampered with; key rotation; `kill -9` under load; a failing store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zt_evidence::checkpoint::{Keyring, verify_note};
use zt_evidence::merkle::{Hash, verify_inclusion};

use super::super::http::sync::Client;
use super::super::{Server, client, decide, run, wait_for};

pub(super) fn export(server_data: &std::path::Path, extra: &[&str], out: &std::path::Path) {
    let mut args = vec![
        "evidence",
        "export",
        "--data-dir",
        server_data.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let output = run(&args);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub(super) fn verify(export: &std::path::Path, keys: &std::path::Path) -> (i32, String) {
    let output = run(&[
        "evidence",
        "verify",
        export.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
    ]);
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    )
}

/// Rewrites the export file with `edit` applied to its lines.
fn tamper(from: &std::path::Path, to: &std::path::Path, edit: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = std::fs::read_to_string(from)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    edit(&mut lines);
    std::fs::write(to, lines.join("\n") + "\n").unwrap();
}

fn record_index(lines: &[String], seq: u64) -> usize {
    lines
        .iter()
        .position(|l| {
            l.starts_with("{\"type\":\"record\"") && l.contains(&format!(",\"seq\":{seq},"))
        })
        .unwrap()
}

#[test]
fn decisions_are_on_record_and_the_exported_log_verifies_and_exposes_tampering() {
    let server = Server::start(&["--demo"]);
    let c = client();
    let mut seen = Vec::new();
    for i in 0..20 {
        let action = if i % 2 == 0 {
            "aws.ec2.describe_instances"
        } else {
            "aws.iam.create_user"
        };
        let answer = decide(
            &c,
            &server,
            json!({"actor": "demo-agent", "action": action, "resource": format!("r-{i}")}),
        );
        seen.push(answer);
    }
    let item = |i: u64| json!({"actor": "demo-agent", "action": "aws.s3.get_object", "resource": format!("b-{i}")});
    let batch = c
        .post_json(
            &server.url("/v1/decide/batch"),
            &json!({"requests": [item(0), item(1), item(2)]}),
        )
        .json();
    seen.extend(batch["decisions"].as_array().unwrap().iter().cloned());

    // Every answer names its record; the record holds the request and the decision.
    for (i, answer) in seen.iter().enumerate() {
        assert_eq!(answer["evidence"]["seq"], i as u64, "{answer}");
        let record = c.get(&server.url(&format!("/v1/evidence/{i}"))).json();
        assert_eq!(record["hash"], answer["evidence"]["hash"]);
        assert_eq!(record["record"]["decision_id"], answer["decision_id"]);
        assert_eq!(record["record"]["decision"], answer["decision"]);
        assert_eq!(record["record"]["policy_version"], answer["policy_version"]);
    }
    let first = c.get(&server.url("/v1/evidence/1")).json();
    assert_eq!(first["record"]["request"]["resource"], "r-1");
    assert_eq!(first["record"]["reasons"][0]["policy"], "no-iam");

    // An inclusion proof, checked here with only the public keys.
    let keyring: Keyring =
        serde_json::from_slice(&c.get(&server.url("/v1/evidence/keys")).body).unwrap();
    let checkpoint = c.get(&server.url("/v1/evidence/checkpoint")).json();
    assert_eq!(checkpoint["tree_size"], 23);
    let verified = verify_note(checkpoint["note"].as_str().unwrap(), &keyring).unwrap();
    let proof = c.get(&server.url("/v1/evidence/5/proof")).json();
    let hash = |v: &Value| Hash::from_hex(v.as_str().unwrap()).unwrap();
    let path: Vec<Hash> = proof["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(hash)
        .collect();
    assert!(verify_inclusion(
        5,
        23,
        &hash(&proof["leaf_hash"]),
        &path,
        &verified.checkpoint.root
    ));
    assert_eq!(proof["checkpoint"], checkpoint["note"]);
    let consistency = c
        .get(&server.url("/v1/evidence/consistency?from=7&to=23"))
        .json();
    let path: Vec<Hash> = consistency["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(hash)
        .collect();
    assert!(zt_evidence::merkle::verify_consistency(
        7,
        23,
        &hash(&consistency["from_root"]),
        &verified.checkpoint.root,
        &path
    ));
    assert_eq!(
        c.get(&server.url("/v1/evidence/5/proof?size=99")).status,
        400
    );
    assert_eq!(c.get(&server.url("/v1/evidence/99")).status, 404);

    // Export and verify offline.
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    std::fs::write(&keys, c.get(&server.url("/v1/evidence/keys")).body).unwrap();
    let log = dir.path().join("log.jsonl");
    export(server.data.path(), &[], &log);
    let (code, out) = verify(&log, &keys);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: 23 records (seq 0..=22)"), "{out}");

    // A partial export verifies too.
    let part = dir.path().join("part.jsonl");
    export(server.data.path(), &["--from", "10", "--to", "15"], &part);
    let (code, out) = verify(&part, &keys);
    assert_eq!(code, 0, "{out}");

    // One byte of one record changed: the verifier names the record.
    let bad = dir.path().join("bad.jsonl");
    tamper(&log, &bad, |lines| {
        let i = record_index(lines, 7);
        lines[i] = lines[i].replacen("\"resource\":\"r-7\"", "\"resource\":\"r-8\"", 1);
    });
    assert_eq!(
        verify(&bad, &keys),
        (
            1,
            "FAILED at seq 7: modified: the record's content does not match its hash".into()
        )
    );
    tamper(&log, &bad, |lines| {
        lines.remove(record_index(lines, 9));
    });
    assert!(
        verify(&bad, &keys)
            .1
            .starts_with("FAILED at seq 9: missing")
    );
    tamper(&log, &bad, |lines| {
        let (a, b) = (record_index(lines, 3), record_index(lines, 4));
        lines.swap(a, b);
    });
    assert!(
        verify(&bad, &keys)
            .1
            .starts_with("FAILED at seq 3: reordered")
    );
    // The last records cut off, the checkpoint that signed them kept.
    tamper(&log, &bad, |lines| {
        for seq in (20..23).rev() {
            let i = record_index(lines, seq);
            lines.remove(i);
        }
    });
    assert!(
        verify(&bad, &keys)
            .1
            .starts_with("FAILED at seq 20: truncated"),
        "{}",
        verify(&bad, &keys).1
    );
    // A keyring of another log is refused.
    let other = dir.path().join("other.json");
    std::fs::write(
        &other,
        json!({"origin": "someone/else", "keys": []}).to_string(),
    )
    .unwrap();
    assert!(verify(&log, &other).1.starts_with("FAILED"));
    assert_eq!(
        run(&[
            "evidence",
            "verify",
            "/nonexistent",
            "--keys",
            keys.to_str().unwrap()
        ])
        .status
        .code(),
        Some(2)
    );
}

#[test]
fn a_rotated_key_keeps_the_whole_log_verifiable() {
    let mut server = Server::start(&["--demo"]);
    let c = client();
    for i in 0..5 {
        decide(
            &c,
            &server,
            json!({"actor": "a", "action": "x", "resource": format!("r{i}")}),
        );
    }
    let old_keys = c.get(&server.url("/v1/evidence/keys")).body;
    assert!(server.terminate().success());
    let data = Arc::clone(&server.data);
    drop(server);

    let rotate = run(&[
        "keys",
        "rotate",
        "--data-dir",
        data.path().to_str().unwrap(),
    ]);
    assert_eq!(
        rotate.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    assert!(String::from_utf8_lossy(&rotate.stdout).starts_with("rotated:"));

    let server = Server::start_in(Arc::clone(&data), &["--demo"], &[]);
    // The first record the new key signs is the rotation itself.
    let rotation = c.get(&server.url("/v1/evidence/5")).json();
    assert_eq!(rotation["record"]["kind"], "key.rotate", "{rotation}");
    let new_key = String::from_utf8_lossy(&rotate.stdout)
        .split_whitespace()
        .nth(6)
        .unwrap()
        .to_owned();
    assert_eq!(
        rotation["record"]["request"]["key_id"],
        new_key.as_str(),
        "{rotation}"
    );
    let answer = decide(
        &c,
        &server,
        json!({"actor": "a", "action": "x", "resource": "after"}),
    );
    assert_eq!(answer["evidence"]["seq"], 6);
    let keyring: Keyring =
        serde_json::from_slice(&c.get(&server.url("/v1/evidence/keys")).body).unwrap();
    assert_eq!(keyring.keys.len(), 2);
    assert!(keyring.keys[0].retired_at_ms.is_some());

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    export(data.path(), &[], &log);
    let keys = dir.path().join("keys.json");
    let exported = run(&[
        "keys",
        "export",
        "--data-dir",
        data.path().to_str().unwrap(),
    ]);
    std::fs::write(&keys, &exported.stdout).unwrap();
    let (code, out) = verify(&log, &keys);
    assert_eq!(code, 0, "{out}");
    let signers: Vec<&str> = out
        .rsplit("signed by ")
        .next()
        .unwrap()
        .split(", ")
        .collect();
    let mut expected: Vec<&str> = keyring.keys.iter().map(|k| k.key_id.as_str()).collect();
    expected.sort();
    assert_eq!(signers, expected, "{out}");
    // With only the old key, the new checkpoints are by an unknown key.
    std::fs::write(&keys, old_keys).unwrap();
    let (code, out) = verify(&log, &keys);
    assert_eq!(code, 1);
    assert!(out.contains("unknown_key"), "{out}");
    // The private key never reaches an export or the keyring.
    let private = std::fs::read_to_string(data.path().join("keys/signing.key")).unwrap();
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap()
            .contains(private.trim())
    );
    assert!(!String::from_utf8_lossy(&exported.stdout).contains(private.trim()));
}

#[test]
fn a_stored_log_that_does_not_match_its_checkpoint_stops_start_up() {
    let mut server = Server::start(&["--demo"]);
    let c = client();
    for i in 0..3 {
        decide(
            &c,
            &server,
            json!({"actor": "a", "action": "x", "resource": format!("r{i}")}),
        );
    }
    assert!(server.terminate().success());
    let data = Arc::clone(&server.data);
    drop(server);
    // Someone rewrites a stored record's hash behind the service's back.
    let db = data.path().join("ztinfra.db");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
            .await
            .unwrap();
        sqlx::query("UPDATE zt_evidence_records SET hash = ? WHERE seq = 1")
            .bind("00".repeat(32))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
    let output = std::process::Command::new(super::super::BIN)
        .args(["serve", "--demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does not match the 3 stored records"),
        "{stderr}"
    );
}

/// Loads the server from several threads, SIGKILLs it mid-load, restarts it, and checks that
/// every decision a client received is in the log, at its place, and that the log verifies.
fn kill_9_loses_nothing_acknowledged(args: &[&str]) {
    let mut server = Server::start(args);
    let base = server.base.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<HashMap<u64, String>>> = Arc::new(Mutex::new(HashMap::new()));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (base, stop, acknowledged) = (base.clone(), Arc::clone(&stop), Arc::clone(&acknowledged));
            std::thread::spawn(move || {
                let c = client();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let body = json!({"actor": format!("agent-{w}"), "action": "aws.ec2.describe_instances", "resource": format!("i-{i}")});
                    let request = c.inner().post(format!("{base}/v1/decide")).json(&body).timeout(Duration::from_secs(5));
                    let Ok(response) = c.try_send(request) else { break };
                    if response.status != 200 {
                        break;
                    }
                    let answer = response.json();
                    let seq = answer["evidence"]["seq"].as_u64().unwrap();
                    let id = answer["decision_id"].as_str().unwrap().to_owned();
                    acknowledged.lock().unwrap().insert(seq, id);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while acknowledged.lock().unwrap().len() < 300 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL while requests are in flight.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 300,
        "only {} decisions before the kill",
        acknowledged.len()
    );

    let data = Arc::clone(&server.data);
    drop(server);
    let server = Server::start_in(Arc::clone(&data), args, &[]);
    let c = client();
    let after = decide(
        &c,
        &server,
        json!({"actor": "a", "action": "x", "resource": "after-restart"}),
    );
    let next = after["evidence"]["seq"].as_u64().unwrap();
    assert!(next >= acknowledged.len() as u64);

    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    std::fs::write(&keys, c.get(&server.url("/v1/evidence/keys")).body).unwrap();
    let log = dir.path().join("log.jsonl");
    let mut export_args = vec![
        "evidence",
        "export",
        "--data-dir",
        data.path().to_str().unwrap(),
        "-o",
        log.to_str().unwrap(),
    ];
    let store: Option<&str> = args.windows(2).find(|w| w[0] == "--store").map(|w| w[1]);
    if let Some(store) = store {
        export_args.extend(["--store", store]);
    }
    let exported = run(&export_args);
    assert_eq!(
        exported.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let (code, out) = verify(&log, &keys);
    assert_eq!(code, 0, "{out}");

    let mut logged = HashMap::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["type"] == "record" {
            logged.insert(
                v["record"]["seq"].as_u64().unwrap(),
                v["record"]["decision_id"].as_str().unwrap().to_owned(),
            );
        }
    }
    for (seq, id) in &acknowledged {
        assert_eq!(
            logged.get(seq),
            Some(id),
            "acknowledged decision {id} at seq {seq} is not in the log"
        );
    }
    assert_eq!(logged.len() as u64, next + 1);
}

#[test]
fn kill_9_loses_no_acknowledged_decision_on_sqlite() {
    kill_9_loses_nothing_acknowledged(&["--demo"]);
}

/// A PostgreSQL URL whose connections use a new schema of their own; `None` (skip) when
/// `ZTINFRA_TEST_POSTGRES_URL` is unset outside CI.
pub(crate) fn postgres_schema(name: &str) -> Option<(String, String)> {
    let url = match std::env::var("ZTINFRA_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("ZTINFRA_TEST_POSTGRES_URL is unset, and CI requires the PostgreSQL tests")
        }
        _ => {
            eprintln!("skipped: set ZTINFRA_TEST_POSTGRES_URL to run the PostgreSQL tests");
            return None;
        }
    };
    let schema = format!("zt_e2e_{name}_{}", std::process::id());
    psql(
        &url,
        &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"),
    );
    let scoped = format!(
        "{url}{}options=-c%20search_path%3D{schema}",
        if url.contains('?') { "&" } else { "?" }
    );
    Some((url, scoped))
}

/// Two replicas on a PostgreSQL schema of their own (`a`, then `b`, joined), authenticated
/// callers, the policy text `policies` and the config file text `config`; `None` (the test is
/// skipped) without a database.
pub(crate) struct ReplicaPair {
    pub a: Server,
    pub b: Server,
    pub store: String,
    _dir: tempfile::TempDir,
}

impl ReplicaPair {
    pub(crate) fn start(name: &str, policies: &str, config: &str) -> Option<Self> {
        let (_url, store) = postgres_schema(name)?;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policies.cedar"), policies).unwrap();
        let config_file = dir.path().join("ztinfra.toml");
        std::fs::write(&config_file, config).unwrap();
        let args = [
            "--callers",
            "authenticated",
            "--config",
            config_file.to_str().unwrap(),
            "--policies",
            dir.path().to_str().unwrap(),
            "--store",
            store.as_str(),
            "--public-url",
            "http://pdp.test",
        ];
        let a = Server::start(&args);
        let b = Server::start(&[&args[..], &["--join", "b"]].concat());
        Some(Self {
            a,
            b,
            store,
            _dir: dir,
        })
    }

    /// A client presenting a new credential of `role` named `name`.
    pub(crate) fn credential(&self, name: &str, role: &str) -> Client {
        let out = run(&[
            "credentials",
            "add",
            name,
            "--role",
            role,
            "--store",
            &self.store,
        ]);
        assert!(out.status.success());
        Client::with_token(String::from_utf8(out.stdout).unwrap().trim())
    }
}

pub(crate) fn psql(url: &str, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use sqlx::Executor;
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        pool.execute(sqlx::AssertSqlSafe(sql.to_owned()))
            .await
            .unwrap();
        pool.close().await;
    });
}

#[test]
fn kill_9_loses_no_acknowledged_decision_on_postgres() {
    let Some((_, scoped)) = postgres_schema("kill") else {
        return;
    };
    kill_9_loses_nothing_acknowledged(&["--demo", "--store", &scoped]);
}

#[test]
fn a_decision_that_cannot_be_recorded_is_denied() {
    let Some((url, scoped)) = postgres_schema("fail") else {
        return;
    };
    let server = Server::start(&["--demo", "--store", &scoped]);
    let c = client();
    let allowed =
        json!({"actor": "demo-agent", "action": "aws.ec2.describe_instances", "resource": "i-1"});
    assert_eq!(decide(&c, &server, allowed.clone())["decision"], "allow");
    let authzen = json!({
        "subject": {"type": "Agent", "id": "demo-agent"},
        "action": {"name": "aws.ec2.describe_instances"},
        "resource": {"type": "Resource", "id": "i-1"},
    });
    let evaluate = || c.post_json(&server.url("/access/v1/evaluation"), &authzen);
    assert_eq!(evaluate().json()["decision"], true);
    assert_eq!(c.post_json(&server.url("/actions"), &allowed).status, 200);
    assert_eq!(c.get(&server.url("/readyz")).status, 200);
    // The evidence table goes away under the running server (renamed, to come back later).
    let schema = scoped.rsplit("%3D").next().unwrap();
    psql(
        &url,
        &format!("ALTER TABLE {schema}.zt_evidence_records RENAME TO hidden_records"),
    );
    let answer = decide(&c, &server, allowed.clone());
    assert_eq!(answer["decision"], "deny", "{answer}");
    assert_eq!(answer["reasons"][0]["kind"], "error");
    assert!(answer["evidence"].is_null());
    // Every interface fails closed the same way: the reference contract answers 403 with no
    // audit, AuthZEN answers `false`.
    let response = c.post_json(&server.url("/actions"), &allowed);
    assert_eq!(response.status, 403);
    let answer = response.json();
    assert_eq!(
        (answer["ok"].clone(), answer["audit"].clone()),
        (json!(false), Value::Null)
    );
    let response = evaluate();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["decision"], false);
    // The log is read as the server writes it: wait for the line rather than race it.
    wait_for("the commit failure in the log", || {
        server.logs().contains("evidence commit failed")
    });
    // While evidence cannot be written the service is not ready, and it is again once writes
    // succeed, without a decision having to come first.
    let readyz = c.get(&server.url("/readyz"));
    assert_eq!(readyz.status, 503);
    assert!(
        readyz.json()["detail"]
            .as_str()
            .unwrap()
            .contains("evidence cannot be written")
    );
    psql(
        &url,
        &format!("ALTER TABLE {schema}.hidden_records RENAME TO zt_evidence_records"),
    );
    assert_eq!(c.get(&server.url("/readyz")).status, 200);
    assert_eq!(decide(&c, &server, allowed)["decision"], "allow");
    psql(&url, &format!("DROP SCHEMA {schema} CASCADE"));
}
