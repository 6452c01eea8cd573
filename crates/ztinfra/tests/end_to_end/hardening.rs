//! Hostile and careless clients, and a store altered behind the service's back: real sockets
//! against the real binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::super::{Server, client, decide, demo_dir, run, wait_for};

/// The `host:port` of a server.
fn addr(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(addr(server)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    stream
}

/// Reads until the server closes the connection (or 8 s pass); what was read.
fn read_to_close(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the connection stayed open: {e}"),
        }
    }
    (
        String::from_utf8_lossy(&text).into_owned(),
        started.elapsed(),
    )
}

/// Reads one HTTP response head and its `Content-Length` body.
fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut text = Vec::new();
    let mut buf = [0u8; 1];
    while !text.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut buf).unwrap(), 1, "closed mid-response");
        text.push(buf[0]);
    }
    let head = String::from_utf8(text).unwrap();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (status, head + &String::from_utf8_lossy(&body))
}

#[test]
fn slow_clients_are_cut_off() {
    let server = Server::start(&[
        "--demo",
        "--header-timeout-secs",
        "1",
        "--body-timeout-secs",
        "1",
        "--max-body-bytes",
        "4096",
    ]);
    // Half a request line, a header dripped a byte at a time, and an idle keep-alive
    // connection: each is closed once the header timeout passes.
    let mut half_line = connect(&server);
    half_line.write_all(b"POST /v1/dec").unwrap();
    let mut drip = connect(&server);
    drip.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .unwrap();
    let mut idle = connect(&server);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle).0, 200);
    let dripping = std::thread::spawn(move || {
        for _ in 0..20 {
            if drip.write_all(b"a").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        read_to_close(&mut drip)
    });
    for stream in [&mut half_line, &mut idle] {
        let (_, waited) = read_to_close(stream);
        assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    }
    let (_, waited) = dripping.join().unwrap();
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");

    // Half a body: 408 once the body timeout passes, as problem details.
    let mut half_body = connect(&server);
    half_body
        .write_all(b"POST /v1/decide HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"actor\":")
        .unwrap();
    let (status, text) = read_response(&mut half_body);
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("application/problem+json"), "{text}");

    // A body announced over the limit is refused before it is sent, with or without
    // `Expect: 100-continue` (which must not get its `100 Continue`).
    for expect in ["", "Expect: 100-continue\r\n"] {
        let mut big = connect(&server);
        write!(
            big,
            "POST /v1/decide HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\n{expect}\r\n"
        )
        .unwrap();
        let (status, text) = read_response(&mut big);
        assert_eq!(status, 413, "{text}");
        assert!(text.contains("body-too-large"), "{text}");
    }
    // A head over 32 KiB is refused (by hyper, 431) rather than buffered. The server answers
    // as soon as it has read past the limit and closes: if the rest of the head was still on
    // its way, the client's write fails and the close may reset the connection before the
    // answer is read. A transport failure is retried (a few times); any answer must be 431.
    let huge_head = format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let answered = (0..5).find_map(|_| {
        let mut huge = connect(&server);
        // A refused write means the server already answered and closed: read that answer.
        let _ = huge.write_all(huge_head.as_bytes());
        let mut status_line = [0u8; 12];
        huge.read_exact(&mut status_line).ok()?;
        String::from_utf8_lossy(&status_line[9..12])
            .parse::<u16>()
            .ok()
    });
    assert_eq!(answered, Some(431));
    // And the service still decides.
    let c = client();
    let allowed =
        json!({"actor": "demo-agent", "action": "aws.ec2.describe_instances", "resource": "i-1"});
    assert_eq!(decide(&c, &server, allowed)["decision"], "allow");
}

#[test]
fn connections_and_unfinished_bodies_are_bounded() {
    let server = Server::start(&[
        "--demo",
        "--max-connections",
        "8",
        "--max-body-bytes",
        "65536",
        "--max-pending-body-bytes",
        "100000",
    ]);
    // Two bodies of 60,000 bytes, each sent but for its last byte: the second does not fit in
    // the budget and is refused, 503, while the first waits.
    let head = "POST /v1/decide HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n";
    let bodies: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = connect(&server);
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&[b' '; 59_999]).unwrap();
            stream
        })
        .collect();
    // Whichever reached the server second is refused (the other waits for its last byte).
    let deadline = Instant::now() + Duration::from_secs(8);
    let refused = 'wait: loop {
        for (i, stream) in bodies.iter().enumerate() {
            stream
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut byte = [0u8; 1];
            if let Ok(1) = stream.peek(&mut byte) {
                break 'wait i;
            }
        }
        assert!(Instant::now() < deadline, "neither body was refused");
    };
    let mut bodies = bodies;
    let waiting = bodies.remove(1 - refused);
    let mut refused = bodies.remove(0);
    refused
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let (status, text) = read_response(&mut refused);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("busy"), "{text}");
    // Both end, and the server closes them, before the next part counts connections.
    for mut stream in [refused, waiting] {
        stream
            .set_read_timeout(Some(Duration::from_secs(8)))
            .unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        read_to_close(&mut stream);
    }

    // Eight connections held open, each served once (so each is known to hold its place):
    // the ninth is answered 503 and closed at once.
    let held: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut stream = connect(&server);
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            assert_eq!(read_response(&mut stream).0, 200);
            stream
        })
        .collect();
    let mut ninth = connect(&server);
    let (text, waited) = read_to_close(&mut ninth);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("too-many-connections"), "{text}");
    assert!(waited < Duration::from_secs(2));
    // Once they go, decisions are served again.
    drop(held);
    let c = client();
    wait_for("a free connection", || {
        c.try_get(&server.url("/healthz"))
            .is_some_and(|r| r.status == 200)
    });
    let allowed =
        json!({"actor": "demo-agent", "action": "aws.ec2.describe_instances", "resource": "i-1"});
    assert_eq!(decide(&c, &server, allowed)["decision"], "allow");
    let metrics = String::from_utf8(c.get(&server.url("/metrics")).body).unwrap();
    assert!(
        metrics.contains("ztinfra_connections_refused_total"),
        "{metrics}"
    );
}

/// A raw request with the given `Host` and `Origin`; the status.
fn raw_status(server: &Server, method: &str, path: &str, headers: &str, body: &str) -> u16 {
    let mut stream = connect(server);
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_response(&mut stream).0
}

#[test]
fn a_web_page_cannot_reach_the_api_through_dns_rebinding() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(demo_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let policies = dir.path().to_str().unwrap();
    let server = Server::start(&[
        "--policies",
        policies,
        "--allowed-origin",
        "https://console.example.com",
    ]);
    let edit = r#"{"entities": [{"uid": {"type": "Agent", "id": "new-agent"}, "attrs": {}, "parents": []}]}"#;
    let rebinding = "Host: attacker.example:8181\r\nOrigin: http://attacker.example:8181\r\n";
    // The browser-shaped edit through a rebound name: refused, nothing written.
    assert_eq!(
        raw_status(&server, "POST", "/v1/entities", rebinding, edit),
        421
    );
    assert_eq!(
        raw_status(
            &server,
            "GET",
            "/v1/entities",
            "Host: attacker.example\r\n",
            ""
        ),
        421
    );
    // The right host but a foreign origin: refused too.
    let foreign = "Host: localhost\r\nOrigin: http://attacker.example\r\n";
    assert_eq!(
        raw_status(&server, "POST", "/v1/entities", foreign, edit),
        403
    );
    assert!(!dir.path().join("entities.json").exists());
    // Reads from any origin are fine; so are writes from an allowed origin, or from clients
    // that send no origin.
    assert_eq!(
        raw_status(
            &server,
            "GET",
            "/healthz",
            "Host: 127.0.0.1\r\nOrigin: http://attacker.example\r\n",
            ""
        ),
        200
    );
    let admin = format!("Authorization: Bearer {}\r\n", server.admin_token());
    assert_eq!(
        raw_status(
            &server,
            "POST",
            "/v1/entities",
            &format!("Host: localhost\r\nOrigin: https://console.example.com\r\n{admin}"),
            edit
        ),
        200
    );
    // The service's own pages (the console) send the origin they were served from: the `Host`.
    assert_eq!(
        raw_status(
            &server,
            "POST",
            "/v1/entities",
            &format!("Host: localhost:9\r\nOrigin: http://localhost:9\r\n{admin}"),
            edit
        ),
        200
    );
    assert_eq!(
        raw_status(
            &server,
            "POST",
            "/v1/entities",
            &format!("Host: localhost:9\r\nOrigin: http://localhost:10\r\n{admin}"),
            edit
        ),
        403
    );
    assert_eq!(
        raw_status(
            &server,
            "POST",
            "/v1/entities",
            &format!("Host: [::1]:1\r\n{admin}"),
            edit
        ),
        200
    );
}

#[test]
fn json_means_one_thing_and_every_error_is_problem_details() {
    let server = Server::start(&["--demo"]);
    let c = client();
    for (path, body, pointer) in [
        (
            "/access/v1/evaluation",
            r#"{"subject": {"type": "Agent", "id": "bob", "id": "demo-agent"}, "action": {"name": "aws.ec2.describe_instances"}, "resource": {"type": "Resource", "id": "i-1"}}"#,
            "/subject/id",
        ),
        (
            "/v1/decide",
            r#"{"actor": "a", "action": "x", "resource": "r", "context": {"env": "prod", "env": "staging"}}"#,
            "/context/env",
        ),
        (
            "/actions",
            r#"{"actor": "a", "action": "x", "context": {"a": [{"k": 1, "k": 2}]}}"#,
            "/context/a/0/k",
        ),
    ] {
        let response = c.post_raw(
            &server.url(path),
            Some("application/json"),
            body.as_bytes().to_vec(),
        );
        assert_eq!(response.status, 400, "{path}");
        assert_eq!(response.json()["errors"][0]["pointer"], pointer, "{path}");
    }
    // A path that is not UTF-8, and a sequence number beyond any log: problem details, and
    // no alarm about corruption.
    let bad = c.get(&server.url("/v1/evidence/%FF"));
    assert_eq!(bad.status, 400);
    assert!(bad.content_type.starts_with("application/problem+json"));
    for seq in ["9223372036854775807", "18446744073709551615", "5"] {
        let missing = c.get(&server.url(&format!("/v1/evidence/{seq}")));
        assert_eq!(missing.status, 404, "{seq}");
        assert!(missing.content_type.starts_with("application/problem+json"));
    }
    assert!(!server.logs().contains("corrupt"), "{}", server.logs());
}

/// Runs SQL on the server's SQLite store behind its back (with `sha256(text)` at hand).
fn sqlite(server: &Server, sql: &str) {
    let script = "import hashlib, sqlite3, sys\n\
        c = sqlite3.connect(sys.argv[1])\n\
        c.create_function('sha256', 1, lambda s: hashlib.sha256(s.encode()).hexdigest())\n\
        c.executescript(sys.argv[2])\n\
        c.commit()";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(server.data.path().join("ztinfra.db"))
        .arg(sql)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn the_running_server_checks_the_store_it_serves_from() {
    let mut server = Server::start(&["--demo"]);
    let c = client();
    let allowed =
        json!({"actor": "demo-agent", "action": "aws.ec2.describe_instances", "resource": "i-1"});
    for _ in 0..3 {
        assert_eq!(decide(&c, &server, allowed.clone())["decision"], "allow");
    }
    // A record's text edited in the store, its hash left alone: never served as evidence.
    sqlite(
        &server,
        "UPDATE zt_evidence_records SET body = replace(body, '\"allow\"', '\"deny\"') WHERE seq = 1",
    );
    let served = c.get(&server.url("/v1/evidence/1"));
    assert_eq!(served.status, 500);
    assert!(
        served.json()["type"]
            .as_str()
            .unwrap()
            .ends_with("evidence-corrupt")
    );
    let metrics = String::from_utf8(c.get(&server.url("/metrics")).body).unwrap();
    assert!(
        metrics.contains("ztinfra_evidence_corrupt_total"),
        "{metrics}"
    );
    // Its hash edited to match the new text as well: the tree still knows.
    sqlite(
        &server,
        "UPDATE zt_evidence_records SET body = replace(body, '\"allow\"', '\"deny\"'), \
         hash = sha256(replace(body, '\"allow\"', '\"deny\"')) WHERE seq = 2",
    );
    let served = c.get(&server.url("/v1/evidence/2"));
    assert_eq!(served.status, 500);
    wait_for("the tree's verdict in the log", || {
        server
            .logs()
            .contains("record 2 does not match the log's tree")
    });
    // The untouched record is served as before.
    assert_eq!(c.get(&server.url("/v1/evidence/0")).status, 200);

    // The last records and their checkpoints removed while the service is stopped: it refuses
    // to start, rather than hand their sequence numbers to new decisions.
    let kept = server.data.path().join("evidence.checkpoint");
    wait_for("the kept checkpoint of 3 records", || {
        std::fs::read_to_string(&kept).is_ok_and(|note| note.contains("\n3\n"))
    });
    assert!(server.terminate().success());
    sqlite(
        &server,
        "DELETE FROM zt_evidence_records WHERE seq >= 1; DELETE FROM zt_evidence_checkpoints WHERE tree_size >= 2;",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ztinfra"))
        .args(["serve", "--demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(server.data.path())
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("records were removed"), "{stderr}");
}

#[test]
fn entity_edits_never_follow_a_planted_link() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(demo_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let victim = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(victim.path(), "precious").unwrap();
    // The name the temporary file used to have, and the entity file itself, as links.
    std::os::unix::fs::symlink(victim.path(), dir.path().join(".entities.json.tmp")).unwrap();
    let server = Server::start(&["--policies", dir.path().to_str().unwrap()]);
    let c = server.admin();
    let edit = json!({"entities": [{"uid": {"type": "Agent", "id": "new-agent"}, "attrs": {}, "parents": []}]});
    let response = c.post_json(&server.url("/v1/entities"), &edit);
    assert_eq!(response.status, 200);
    assert_eq!(std::fs::read_to_string(victim.path()).unwrap(), "precious");
    let entities = dir.path().join("entities.json");
    assert!(
        !std::fs::symlink_metadata(&entities)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // A link planted at the entity file is replaced, not written through.
    let linked = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(linked.path(), "[]").unwrap();
    std::fs::remove_file(&entities).unwrap();
    std::os::unix::fs::symlink(linked.path(), &entities).unwrap();
    let response = c.put_json(&server.url("/v1/entities"), &edit);
    assert_eq!(response.status, 200);
    assert_eq!(std::fs::read_to_string(linked.path()).unwrap(), "[]");
    assert!(
        !std::fs::symlink_metadata(&entities)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") && n != ".entities.json.tmp")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn the_policy_status_changes_with_the_set_it_describes() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.cedar");
    std::fs::write(&policy, "permit(principal, action, resource);").unwrap();
    let server = Server::start(&["--policies", dir.path().to_str().unwrap(), "--no-watch"]);
    let c = server.admin();
    for round in 0..10 {
        std::fs::write(&policy, "permit(principal, action, resource) when {").unwrap();
        assert_eq!(
            c.post_json(&server.url("/v1/policies/reload"), &json!({}))
                .status,
            422
        );
        let broken: Value = c.get(&server.url("/v1/policies")).json();
        assert!(broken["last_reload_error"].is_object());
        let old_version = broken["version"].as_str().unwrap().to_owned();
        std::fs::write(
            &policy,
            format!("@id(\"r{round}\") permit(principal, action, resource);"),
        )
        .unwrap();
        // Poll while the fixed set activates: the new version never shows with the old error.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller = {
            let stop = std::sync::Arc::clone(&stop);
            let url = server.url("/v1/policies");
            std::thread::spawn(move || {
                let c = client();
                let mut seen = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let status: Value = c.get(&url).json();
                    if status["version"] != old_version.as_str() {
                        assert!(
                            status.get("last_reload_error").is_none(),
                            "a new version with the old error: {status}"
                        );
                        seen += 1;
                    }
                }
                seen
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            c.post_json(&server.url("/v1/policies/reload"), &json!({}))
                .status,
            200
        );
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(poller.join().unwrap() > 0);
    }
    wait_for("the recovery in the log", || {
        server.logs().contains("policy set recovered")
    });
}

#[test]
fn a_newcomers_mistakes_get_clear_answers() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("d");
    let serve = |more: &[&str]| {
        let mut args = vec!["serve", "--data-dir", dir.to_str().unwrap()];
        args.extend(more);
        run(&args)
    };
    // A mistyped policy directory is an error, not an empty set.
    let out = serve(&["--policies", "examples/authzen-fixtur"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!std::path::Path::new("examples/authzen-fixtur").exists());
    // A listen address that is not IP:PORT says what is expected.
    let out = serve(&["--listen", "localhost:http"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("IP:PORT"));
    // A policy set that does not load leaves no key or store behind.
    let broken = data.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("p.cedar"), "permit(").unwrap();
    let out = serve(&[
        "--listen",
        "127.0.0.1:0",
        "--policies",
        broken.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(!dir.join("keys/signing.key").exists());
    assert!(!dir.join("ztinfra.db").exists());
    // Nor does a port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = serve(&["--demo", "--listen", &port]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot listen"),
        "{out:?}"
    );
    assert!(!dir.join("keys/signing.key").exists());
    assert!(!dir.join("ztinfra.db").exists());
    // An empty set starts, denying everything, and says so.
    let empty = Server::start(&[]);
    wait_for("the empty-set warning", || {
        empty.logs().contains("the policy set has no policies")
    });
}

#[test]
fn state_is_private_and_config_paths_are_the_files() {
    use std::os::unix::fs::PermissionsExt as _;
    // A config file in one directory, the server started from another: `state` is the file's.
    let base = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let config = base.path().join("ztinfra.toml");
    std::fs::write(
        &config,
        "data_dir = \"state\"\ndemo = true\nno_watch = true\nlisten = \"localhost:0\"\n",
    )
    .unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ztinfra"));
    command
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(std::env::temp_dir());
    let server = Server::launch(command, std::sync::Arc::clone(&base));
    assert!(
        server.base.starts_with("http://127.0.0.1:"),
        "{}",
        server.base
    );
    let state = base.path().join("state");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // Private from the first write, `--demo` included (its policies are written into it).
    assert_eq!(mode(&state), 0o700);
    for file in ["ztinfra.db", "ztinfra.db-wal", "keys/signing.key"] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }
}

#[test]
fn open_callers_stay_on_loopback_unless_allowed_and_then_warn() {
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    // `--demo` means open callers: refused beyond loopback, before anything is created.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_ztinfra"))
        .args(["serve", "--demo", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 with open callers"),
        "{stderr}"
    );
    assert!(!data.path().join("ztinfra.db").exists());
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ztinfra"));
    command
        .args([
            "serve",
            "--demo",
            "--allow-open-callers-on-network",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(data.path());
    let server = Server::launch(command, data);
    wait_for("the warning", || {
        server
            .logs()
            .contains("non-loopback address with open callers")
    });
    // Reached by an address it was not told is its own, it refuses: names are given with
    // `--allowed-host`.
    let port = server.base.rsplit(':').next().unwrap();
    let c = client();
    let status = c
        .try_get(&format!("http://127.0.0.1:{port}/healthz"))
        .unwrap()
        .status;
    assert_eq!(status, 200);
    assert_eq!(
        raw_status(&server, "GET", "/healthz", "Host: 0.0.0.0\r\n", ""),
        421
    );
}
