//! Workload identity across replicas on one PostgreSQL store: each replica has a CA of its own,
//! and every replica trusts (and serves in its bundle) the others', learnt through the store.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly by design"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::super::{Server, demo_dir, run};

/// A request over TLS, trusting the CAs in `ca`, presenting `identity` if given: the status and
/// the JSON answer, or why the connection failed.
fn https(
    method: reqwest::Method,
    url: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = zt_server::workloads::client_tls(ca, identity).map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut request = client.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| zt_server::error_chain(&e))?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    })
}

/// A data directory with a CA of its own and a server certificate from it.
fn with_ca() -> Arc<tempfile::TempDir> {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for args in [
        vec!["ca", "init", "--data-dir", data],
        vec![
            "ca",
            "server-cert",
            "--data-dir",
            data,
            "--name",
            "127.0.0.1",
        ],
    ] {
        let out = run(&args);
        assert!(out.status.success(), "{out:?}");
    }
    Arc::new(dir)
}

fn keys(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("keys")
}

/// The `x509-svid` authorities of a bundle, as base64 DER.
fn x509_authorities(bundle: &Value) -> Vec<String> {
    bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .map(|k| k["x5c"][0].as_str().unwrap().to_owned())
        .collect()
}

/// Starts a session of `agent` on `server`, with an X.509-SVID made there; writes its chain and
/// key into `dir` and returns their paths.
fn session_svid(
    server: &Server,
    ca: &Path,
    broker: &str,
    dir: &Path,
    name: &str,
) -> (PathBuf, PathBuf) {
    let (status, started) = https(
        reqwest::Method::POST,
        &server.url("/v1/sessions"),
        ca,
        None,
        Some(broker),
        Some(json!({"agent": "svc-agent", "on_behalf_of": "alice", "svid": {"generate": true}})),
    )
    .unwrap();
    assert_eq!(status, 201, "{started}");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(
        &cert,
        started["svid"]["certificate_chain"].as_str().unwrap(),
    )
    .unwrap();
    zt_server::write_private_file(
        &key,
        started["svid"]["private_key"].as_str().unwrap().as_bytes(),
    )
    .unwrap();
    (cert, key)
}

#[test]
fn every_replica_trusts_the_svids_any_replica_issued() {
    let Some((_, scoped)) = super::evidence::postgres_schema("catrust") else {
        return;
    };
    let (a_dir, b_dir) = (with_ca(), with_ca());
    let tls = |dir: &tempfile::TempDir| {
        let keys = keys(dir);
        [
            "--tls-cert".to_owned(),
            keys.join("server.crt").display().to_string(),
            "--tls-key".to_owned(),
            keys.join("server.key").display().to_string(),
        ]
    };
    let demo = demo_dir().display().to_string();
    let start = |dir: &Arc<tempfile::TempDir>, join: &[&str]| {
        let mut args: Vec<String> = vec![
            "--store".into(),
            scoped.clone(),
            "--policies".into(),
            demo.clone(),
        ];
        args.extend(tls(dir));
        args.extend(join.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_in(Arc::clone(dir), &args, &[])
    };
    let a = start(&a_dir, &[]);
    let b = start(&b_dir, &["--join", "b"]);
    assert!(a.base.starts_with("https://") && b.base.starts_with("https://"));

    // A client that trusts both replicas' CAs (each signed its own server certificate).
    let work = tempfile::tempdir().unwrap();
    let both = work.path().join("both.pem");
    let pem = |dir: &tempfile::TempDir| std::fs::read_to_string(keys(dir).join("ca.crt")).unwrap();
    std::fs::write(&both, pem(&a_dir) + &pem(&b_dir)).unwrap();
    let bundle = |server: &Server| {
        let (status, bundle) = https(
            reqwest::Method::GET,
            &server.url("/v1/bundle"),
            &both,
            None,
            None,
            None,
        )
        .unwrap();
        assert_eq!(status, 200);
        x509_authorities(&bundle)
    };
    // B read A's CA from the store when it started; A hears of B's through the change feed.
    assert_eq!(bundle(&b).len(), 2, "B's bundle: its CA and A's");
    let deadline = Instant::now() + Duration::from_secs(10);
    while bundle(&a).len() < 2 {
        assert!(Instant::now() < deadline, "A never learnt B's CA");
        std::thread::sleep(Duration::from_millis(100));
    }
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(bundle(&a)), sorted(bundle(&b)));

    // A session SVID issued by one replica opens a mutual TLS connection to the other.
    let (status, _) = https(
        reqwest::Method::POST,
        &a.url("/v1/agents"),
        &both,
        None,
        Some(&a.admin_token()),
        Some(json!({"name": "svc-agent", "owner": "team"})),
    )
    .unwrap();
    assert_eq!(status, 201);
    let out = run(&[
        "credentials",
        "add",
        "launcher",
        "--role",
        "broker",
        "--store",
        &scoped,
    ]);
    assert!(out.status.success(), "{out:?}");
    let broker = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let from_a = session_svid(&a, &both, &broker, work.path(), "from-a");
    let from_b = session_svid(&b, &both, &broker, work.path(), "from-b");
    for (server, svid) in [(&b, &from_a), (&a, &from_b)] {
        let answer = https(
            reqwest::Method::GET,
            &server.url("/v1/bundle"),
            &both,
            Some((&svid.0, &svid.1)),
            None,
            None,
        );
        assert_eq!(answer.unwrap().0, 200, "{}", server.logs());
    }

    // A certificate from a CA that no replica recorded is refused at the handshake.
    let stranger = with_ca();
    let stranger_keys = keys(&stranger);
    let refused = https(
        reqwest::Method::GET,
        &b.url("/v1/bundle"),
        &both,
        Some((
            &stranger_keys.join("server.crt"),
            &stranger_keys.join("server.key"),
        )),
        None,
        None,
    );
    assert!(refused.is_err(), "{refused:?}");
}
