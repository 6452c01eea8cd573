//! Several replicas on one PostgreSQL store, each appending to an evidence log of its own.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly by design"
)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::super::{BIN, Server, client, demo_dir, run, wait_for};

/// A decision as a load worker saw it.
#[derive(Debug)]
struct Answered {
    sent: Instant,
    /// The record's place: log, seq, hash; and the decision's id.
    log: String,
    seq: u64,
    hash: String,
    id: String,
    /// `aws.s3.list_buckets`, which only the second policy version permits.
    listing: bool,
    allowed: bool,
    policy_version: String,
}

/// What a load worker saw of one decision.
#[derive(Debug)]
enum Seen {
    Recorded(Answered),
    /// A denial because the record could not be made: what this design must not produce.
    NotRecorded(usize, String),
    /// The replica was down (killed, or restarting): its own in-flight requests.
    Unreachable(usize),
}

/// Pushes `dir` to the store as its next policy version.
fn push(dir: &std::path::Path, store: &str) {
    let out = run(&["policy", "push", dir.to_str().unwrap(), "--store", store]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `server` has activated pushed version `number`; returns the delay from its push
/// to its activation there, in milliseconds.
fn activation_delay(server: &Server, number: u64) -> i64 {
    let mut status = Value::Null;
    wait_for(&format!("version {number} active"), || {
        status = client().get(&server.url("/v1/policies")).json();
        status["pushed"]["number"].as_u64() >= Some(number)
    });
    status["loaded_at_ms"].as_i64().unwrap() - status["pushed"]["pushed_at_ms"].as_i64().unwrap()
}

/// Three replicas on one database, load spread over all three, and during it: one replica
/// killed with SIGKILL and restarted, a new policy version pushed, an entity edited through
/// another replica. No decision is denied for want of evidence outside the killed replica's
/// own in-flight requests; every acknowledged decision is in exactly one log; every log
/// verifies with its own keys; every replica decides by the new version once it is pushed.
/// A replica joins only explicitly.
#[test]
fn three_replicas_on_postgresql_under_load_and_faults() {
    let Some((_, scoped)) = super::evidence::postgres_schema("replicas3") else {
        return;
    };
    // Version 1: the demo set. Version 2 adds a permit for listing buckets.
    push(&demo_dir(), &scoped);
    let second = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(demo_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), second.path().join(entry.file_name())).unwrap();
    }
    std::fs::write(
        second.path().join("listing.cedar"),
        "@id(\"s3-list\")\n@reason(\"agents may list buckets\")\npermit(principal, action == Action::\"aws.s3.list_buckets\", resource);\n",
    )
    .unwrap();
    let args = |extra: &[&'static str]| -> Vec<String> {
        ["--policies-from-store", "--store", scoped.as_str()]
            .iter()
            .chain(extra)
            .map(|s| (*s).to_owned())
            .collect()
    };
    let start = |data: &Arc<tempfile::TempDir>, extra: &[&'static str]| {
        let args = args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_in(Arc::clone(data), &args, &[])
    };
    let dirs: Vec<Arc<tempfile::TempDir>> = (0..3)
        .map(|_| Arc::new(tempfile::tempdir().unwrap()))
        .collect();
    let a = start(&dirs[0], &[]);

    // A replica whose key is in no log of the store does not start, and says how to join.
    let stranger = tempfile::tempdir().unwrap();
    let said = refused_start(stranger.path(), &scoped);
    assert!(
        said.contains("ztinfra replicas add") && said.contains("--join"),
        "{said}"
    );
    assert!(
        json_logs(&a).len() == 1,
        "a refused replica changed the store's logs"
    );

    // A copy of a replica's key (a cloned data directory) does not start a second writer of
    // its log.
    let clone = tempfile::tempdir().unwrap();
    std::fs::create_dir(clone.path().join("keys")).unwrap();
    for key in ["signing.key", "session.key"] {
        std::fs::copy(
            dirs[0].path().join("keys").join(key),
            clone.path().join("keys").join(key),
        )
        .unwrap();
    }
    let said = refused_start(clone.path(), &scoped);
    assert!(said.contains("being written by another process"), "{said}");

    // One replica joins by the command line before its first start, one by its start flag.
    let added = run(&[
        "replicas",
        "add",
        "b",
        "--data-dir",
        dirs[1].path().to_str().unwrap(),
        "--store",
        scoped.as_str(),
    ]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let b = start(&dirs[1], &[]);
    let c = start(&dirs[2], &["--join", "c"]);
    let logs = json_logs(&a);
    assert_eq!(logs.len(), 3, "{logs:?}");
    let names: Vec<&str> = logs
        .iter()
        .map(|l| l["replica"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["replica-0", "b", "c"]);
    // Each joined log begins with the act that made it.
    for (server, name) in [(&b, "b"), (&c, "c")] {
        let first = client().get(&server.url("/v1/evidence/0")).json();
        assert_eq!(first["record"]["kind"], "replica.join", "{first}");
        assert_eq!(first["record"]["request"]["replica"], name, "{first}");
    }

    let bases = Arc::new(RwLock::new(vec![
        a.base.clone(),
        b.base.clone(),
        c.base.clone(),
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (bases, stop, sent, seen) = (
                Arc::clone(&bases),
                Arc::clone(&stop),
                Arc::clone(&sent),
                Arc::clone(&seen),
            );
            std::thread::spawn(move || {
                let http = client();
                let mut i = 0usize;
                // Until told to stop, and at most 5,000 requests per worker in any case.
                while !stop.load(Ordering::Relaxed) && i < 5_000 {
                    i += 1;
                    let replica = (w + i) % 3;
                    let base = bases.read().unwrap()[replica].clone();
                    let action = match i % 3 {
                        0 => "aws.ec2.describe_instances",
                        1 => "aws.ec2.terminate_instances",
                        _ => "aws.s3.list_buckets",
                    };
                    let body = json!({"actor": format!("agent-{w}"), "action": action, "resource": format!("i-{i}"), "context": {"env": "prod"}});
                    let request = http
                        .inner()
                        .post(format!("{base}/v1/decide"))
                        .json(&body)
                        .timeout(Duration::from_secs(5));
                    sent.fetch_add(1, Ordering::Relaxed);
                    let at = Instant::now();
                    let outcome = match http.try_send(request) {
                        Err(_) => Seen::Unreachable(replica),
                        Ok(response) if response.status == 200 => {
                            let answer = response.json();
                            let reason = answer["reasons"][0]["message"].as_str().unwrap_or("");
                            if reason.contains("could not be recorded") {
                                Seen::NotRecorded(replica, answer.to_string())
                            } else {
                                let receipt = &answer["evidence"];
                                let allowed = answer["decision"] == "allow";
                                match i % 3 {
                                    0 => assert!(allowed, "{answer}"),
                                    1 => assert!(!allowed, "{answer}"),
                                    _ => {}
                                }
                                Seen::Recorded(Answered {
                                    sent: at,
                                    log: receipt["log"].as_str().unwrap().to_owned(),
                                    seq: receipt["seq"].as_u64().unwrap(),
                                    hash: receipt["hash"].as_str().unwrap().to_owned(),
                                    id: answer["decision_id"].as_str().unwrap().to_owned(),
                                    listing: i % 3 == 2,
                                    allowed,
                                    policy_version: answer["policy_version"].as_str().unwrap().to_owned(),
                                })
                            }
                        }
                        Ok(response) => Seen::NotRecorded(
                            replica,
                            format!("{} {}", response.status, String::from_utf8_lossy(&response.body)),
                        ),
                    };
                    seen.lock().unwrap().push(outcome);
                }
            })
        })
        .collect();

    // A third of the way in, replica b dies without warning, and comes back on its own log.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent.load(Ordering::Relaxed) < 1_200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut b = b;
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let b = start(&dirs[1], &[]);
    bases.write().unwrap()[1] = b.base.clone();

    // Then a new policy version is pushed, and every replica takes it.
    while sent.load(Ordering::Relaxed) < 2_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let first_version = client().get(&a.url("/v1/policies")).json()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    push(second.path(), &scoped);
    let delays: Vec<i64> = [&a, &b, &c]
        .iter()
        .map(|s| activation_delay(s, 2))
        .collect();
    let all_active = Instant::now();
    // And an entity edited through one replica reaches the others as version 3.
    // (The admin credential the first replica made is the store's: good on every replica.)
    let edit = a.admin().post_json(
        &c.url("/v1/entities"),
        &json!({"entities": [{"uid": {"type": "Agent", "id": "agent-new"}, "attrs": {}, "parents": []}]}),
    );
    assert_eq!(edit.status, 200, "{}", String::from_utf8_lossy(&edit.body));
    let edit_delays: Vec<i64> = [&a, &b].iter().map(|s| activation_delay(s, 3)).collect();
    let listed = a.admin().get(&a.url("/v1/entities")).json();
    assert!(listed.to_string().contains("agent-new"), "{listed}");
    eprintln!(
        "push to activation: {delays:?} ms (a, b, c); entity edit on c to activation: {edit_delays:?} ms (a, b)"
    );

    // Some more load on the new versions, then stop.
    let mark = sent.load(Ordering::Relaxed);
    while sent.load(Ordering::Relaxed) < mark + 600 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let spurious: Vec<String> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::NotRecorded(replica, said) => Some(format!("replica {replica}: {said}")),
            _ => None,
        })
        .collect();
    let unreachable: Vec<usize> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Unreachable(r) => Some(*r),
            _ => None,
        })
        .collect();
    let answered: Vec<&Answered> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Recorded(answered) => Some(answered),
            _ => None,
        })
        .collect();
    let recorded: Vec<(&String, u64, &String, &String)> = answered
        .iter()
        .map(|a| (&a.log, a.seq, &a.hash, &a.id))
        .collect();
    // Each decision by the version that made it: listing only from version 2 on, and nothing
    // sent after every replica took version 2 was decided by version 1.
    for a in &answered {
        let old = a.policy_version == first_version;
        if a.listing {
            assert_eq!(a.allowed, !old, "{a:?}");
        }
        assert!(
            !(old && a.sent > all_active),
            "decided by version 1 after the push: {a:?}"
        );
    }
    let after = answered.iter().filter(|a| a.sent > all_active).count();
    assert!(after > 100, "only {after} decisions after the push");
    assert!(
        spurious.is_empty(),
        "{} decisions denied for want of evidence: {:?}",
        spurious.len(),
        spurious.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        unreachable.iter().all(|r| *r == 1),
        "only the killed replica may be unreachable: {unreachable:?}"
    );
    assert!(recorded.len() >= 2_000, "{} recorded", recorded.len());
    let per_log: HashSet<&String> = recorded.iter().map(|r| r.0).collect();
    assert_eq!(per_log.len(), 3, "every replica's log took decisions");

    // Every log verifies with its own keys, and holds exactly the acknowledged decisions.
    let work = tempfile::tempdir().unwrap();
    let export = work.path().join("all.jsonl");
    let keys = work.path().join("keys.json");
    let out = run(&[
        "evidence",
        "export",
        "--store",
        scoped.as_str(),
        "-o",
        export.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["keys", "export", "--store", scoped.as_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keyrings: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keyrings.as_array().unwrap().len(), 3, "{keyrings}");
    std::fs::write(&keys, &out.stdout).unwrap();
    let out = run(&[
        "evidence",
        "verify",
        export.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert_eq!(
        said.lines().filter(|l| l.starts_with("ok: log ")).count(),
        3,
        "{said}"
    );

    // (log, seq) -> (hash, decision id), from the export.
    let mut stored: HashMap<(String, u64), (String, String)> = HashMap::new();
    let mut origin = String::new();
    let mut next = 0u64;
    for line in std::fs::read_to_string(&export).unwrap().lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        match line["type"].as_str().unwrap() {
            "header" => {
                origin = line["origin"].as_str().unwrap().to_owned();
                next = 0;
            }
            "record" => {
                let id = line["record"]["decision_id"].as_str().unwrap().to_owned();
                stored.insert(
                    (origin.clone(), next),
                    (line["hash"].as_str().unwrap().to_owned(), id),
                );
                next += 1;
            }
            _ => {}
        }
    }
    let mut ids = HashSet::new();
    for (log, seq, hash, id) in &recorded {
        let found = stored.get(&((*log).clone(), *seq));
        assert_eq!(
            found.map(|(h, i)| (h, i)),
            Some((*hash, *id)),
            "acknowledged decision {id} is not at {log} #{seq}"
        );
        assert!(ids.insert(*id), "decision {id} acknowledged twice");
    }
    let in_logs: HashSet<&String> = stored.values().map(|(_, id)| id).collect();
    assert_eq!(
        in_logs.len(),
        stored.len(),
        "a decision id is in the logs twice"
    );

    // Any replica serves any log's records and proofs.
    let (b_log, b_seq, b_hash, _) = recorded
        .iter()
        .find(|r| r.0.as_str() == b_origin(&b))
        .unwrap();
    let proof = client().get(&a.url(&format!("/v1/evidence/{b_seq}/proof?log={b_log}")));
    assert_eq!(
        proof.status,
        200,
        "{}",
        String::from_utf8_lossy(&proof.body)
    );
    assert_eq!(proof.json()["record_hash"].as_str(), Some(b_hash.as_str()));
    let checkpoint = client()
        .get(&c.url(&format!("/v1/evidence/checkpoint?log={b_log}")))
        .json();
    assert_eq!(checkpoint["log"].as_str(), Some(b_log.as_str()));
    let missing = client().get(&a.url("/v1/evidence/checkpoint?log=ztinfra/nothing"));
    assert_eq!(missing.status, 404);
    eprintln!(
        "{} recorded over 3 logs, {} unreachable while replica b was down",
        recorded.len(),
        unreachable.len()
    );
    // Each replica stops on SIGTERM (its change feed, which holds a pooled connection, ends
    // with the pool instead of reconnecting forever).
    for mut replica in [a, b, c] {
        assert!(replica.terminate().success(), "{}", replica.logs());
    }
}

/// A first start on a shared store that fails after its evidence log was made (here, a policy
/// set that does not load) keeps the key that log names: once the set is fixed, the replica
/// starts on its log instead of finding itself a stranger to the store.
#[test]
fn a_failed_first_start_keeps_the_key_its_log_names() {
    let Some((_, scoped)) = super::evidence::postgres_schema("failedfirst") else {
        return;
    };
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("broken.cedar"),
        "permit(principal, action, resource) when { nope };",
    )
    .unwrap();
    let data = Arc::new(tempfile::tempdir().unwrap());
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--policies"])
        .arg(policies.path())
        .arg("--data-dir")
        .arg(data.path())
        .args(["--store", scoped.as_str()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        data.path().join("keys/signing.key").exists(),
        "the key its log names was removed"
    );
    std::fs::remove_file(policies.path().join("broken.cedar")).unwrap();
    let policy_dir = policies.path().to_str().unwrap();
    let server = Server::start_in(
        data,
        &["--policies", policy_dir, "--store", scoped.as_str()],
        &[],
    );
    let logs = json_logs(&server);
    assert_eq!(logs.len(), 1, "{logs:?}");
}

/// A pushed version that does not load on a replica (here, written to the store by hand, as a
/// newer build's push might look to an older one) leaves that replica on the version it had,
/// reported in `GET /v1/policies`; the next good version is taken as usual.
#[test]
fn a_pushed_version_that_does_not_load_keeps_the_previous_one() {
    let Some((url, scoped)) = super::evidence::postgres_schema("badversion") else {
        return;
    };
    push(&demo_dir(), &scoped);
    let server = Server::start(&["--policies-from-store", "--store", scoped.as_str()]);
    let before = client().get(&server.url("/v1/policies")).json();
    assert_eq!(before["pushed"]["number"], 1, "{before}");
    let schema = format!("zt_e2e_badversion_{}", std::process::id());
    super::evidence::psql(
        &url,
        &format!(
            "INSERT INTO {schema}.zt_policy_versions (number, digest, files, pushed_by, pushed_at_ms, note) \
             VALUES (2, 'sha256:x', '[{{\"path\": \"p.cedar\", \"text\": \"permit(principal, action, resource) when {{ nope }};\"}}]', 'test', 0, 'broken'); \
             SELECT pg_notify('ztinfra_changes', 'policy.version' || chr(10) || '2')"
        ),
    );
    let mut status = Value::Null;
    wait_for("the failed load reported", || {
        status = client().get(&server.url("/v1/policies")).json();
        status.get("last_reload_error").is_some()
    });
    assert_eq!(status["pushed"]["number"], 1, "{status}");
    assert_eq!(status["version"], before["version"], "{status}");
    let answer = client().post_json(
        &server.url("/v1/decide"),
        &json!({"actor": "demo-agent", "action": "aws.ec2.describe_instances", "resource": "i-1"}),
    );
    assert_eq!(answer.json()["decision"], "allow");
    // A good version after it is taken, and clears the report.
    push(&demo_dir(), &scoped);
    wait_for("version 3 active", || {
        status = client().get(&server.url("/v1/policies")).json();
        status["pushed"]["number"] == 3
    });
    assert!(status.get("last_reload_error").is_none(), "{status}");
}

/// Starts a replica on `data` that must refuse to start; returns what it said.
fn refused_start(data: &std::path::Path, store: &str) -> String {
    let refused = std::process::Command::new(BIN)
        .args(["serve", "--policies-from-store", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .args(["--store", store])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success(), "{said}");
    said
}

fn json_logs(server: &Server) -> Vec<Value> {
    client().get(&server.url("/v1/evidence/logs")).json()["logs"]
        .as_array()
        .unwrap()
        .clone()
}

fn b_origin(b: &Server) -> String {
    client().get(&b.url("/v1/evidence/logs")).json()["own"]
        .as_str()
        .unwrap()
        .to_owned()
}
