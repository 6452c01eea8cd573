"""Workload identity end to end, against parts this project did not write.

A test trust domain (`example.org`) is minted with `cryptography` by the README walkthrough's own
script (examples/workload/mint_test_domain.py): its CA, X.509-SVIDs for an agent and an
enforcement point, certificates that break one SPIFFE rule each, and a JWT key.
PyJWT signs JWT-SVIDs, which the PyPI `spiffe` library checks too. The service runs with TLS from
its own CA (`ztinfra ca init`, `ztinfra ca server-cert`); `curl` and Python's `ssl`/`httpx` are
the TLS clients; `openssl` verifies the X.509-SVIDs the service issues, and `spiffe` parses them
and the service's bundle.
"""

import base64
import datetime
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
import spiffe
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "examples/workload"))
from mint_test_domain import Domain  # noqa: E402  (the walkthrough's own script)

ZTINFRA = os.environ.get("ZTINFRA_BIN", str(Path(__file__).resolve().parents[4] / "target/debug/ztinfra"))
# Bound tokens only: a policy can ask for a token bound to the client certificate.
POLICY = """
@id("bound-tools")
permit (principal, action == Action::"tool.call", resource)
when { context has session && context.session has bound && context.session.bound };

@id("delegation")
permit (principal, action == Action::"ztinfra.token.exchange", resource);

@id("workload-reads")
permit (principal, action == Action::"doc.read", resource)
when { context has session && context.session has workload &&
       context.session.workload like "spiffe://example.org/*" };
"""


class Service:
    def __init__(self, base: str, data: Path, dir: Path):
        self.base = base
        self.data = data
        self.ca = data / "keys/ca.crt"
        self.admin = (data / "admin.token").read_text().strip()
        self.dir = dir

    def client(self, cert: tuple[Path, Path] | None = None) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.ca))
        if cert:
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        return httpx.Client(base_url=self.base, verify=context, timeout=10)

    def curl(self, path: str, *args: str, cert: tuple[Path, Path] | None = None) -> tuple[int, dict]:
        command = ["curl", "-sS", "--cacert", str(self.ca), "-o", "-", "-w", "\n%{http_code}", *args]
        if cert:
            command += ["--cert", str(cert[0]), "--key", str(cert[1])]
        done = subprocess.run(command + [self.base + path], capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr
        body, _, status = done.stdout.rpartition("\n")
        return int(status), json.loads(body or "{}")

    def record(self, seq: int) -> dict:
        with self.client() as c:
            answer = c.get(f"/v1/evidence/{seq}", headers={"authorization": f"Bearer {self.admin}"})
        assert answer.status_code == 200, answer.text
        return answer.json()["record"]


@pytest.fixture(scope="module")
def example():
    return Domain("example.org")


def start(tmp: Path, example: Domain, extra: str = "", required=False):
    data = tmp / "data"
    for command in (["ca", "init"], ["ca", "server-cert", "--name", "localhost", "--name", "127.0.0.1"]):
        subprocess.run([ZTINFRA, *command, "--data-dir", data], check=True, capture_output=True)
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "policies.cedar").write_text(POLICY)
    (tmp / "example.org.bundle.json").write_text(example.bundle_json())
    (tmp / "config.toml").write_text(f"""
data_dir = "data"
policies = "policies"
tls_cert = "data/keys/server.crt"
tls_key = "data/keys/server.key"
tls_client_auth = "{'required' if required else 'optional'}"
[workloads]
[[workloads.trust_domains]]
name = "example.org"
bundle = "example.org.bundle.json"
[[workloads.agents]]
spiffe_id = "spiffe://example.org/agents/*"
agent = "triage-bot"
may_claim = ["model", "on_behalf_of"]
[[workloads.callers]]
spiffe_id = "spiffe://example.org/gateway"
name = "gateway"
role = "pep"
{extra}
""")
    server = subprocess.Popen(
        [ZTINFRA, "serve", "--config", tmp / "config.toml", "--listen", "127.0.0.1:0", "--no-watch"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = server.stdout.readline()
    assert line.startswith("ztinfra listening on https://"), line
    service = Service(line.removeprefix("ztinfra listening on ").strip(), data, tmp)
    if required:
        return server, service
    with service.client() as c:
        answer = c.post("/v1/agents", headers={"authorization": f"Bearer {service.admin}"},
                        json={"name": "triage-bot", "owner": "team-sre"})
        assert answer.status_code == 201, answer.text
    return server, service


@pytest.fixture
def service(tmp_path, example):
    server, service = start(tmp_path, example)
    try:
        yield service
    finally:
        server.terminate()
        server.wait(timeout=10)


def exchange(c: httpx.Client, token: str, **extra) -> httpx.Response:
    return c.post("/oauth2/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": token,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        **extra,
    })


def decide(c: httpx.Client, token: str, action="tool.call") -> httpx.Response:
    return c.post("/v1/decide", headers={"authorization": f"Bearer {token}"},
                  json={"action": action, "resource": "ticket-1"})


def test_a_jwt_svid_is_exchanged_for_a_session_and_its_spiffe_id_is_on_record(service, example):
    token = example.jwt_svid("spiffe://example.org/agents/triage")
    # The token is a JWT-SVID by the SPIFFE library's rules, not only ours.
    # (The library reads every key of a bundle as a JWT authority, so it gets the JWT keys only.)
    jwt_keys = {"keys": [k for k in json.loads(example.bundle_json())["keys"] if k["use"] == "jwt-svid"]}
    bundle = spiffe.JwtBundle.parse(spiffe.TrustDomain("example.org"), json.dumps(jwt_keys).encode())
    assert str(spiffe.JwtSvid.parse_and_validate(token, bundle, {"ztinfra"}).spiffe_id) == \
        "spiffe://example.org/agents/triage"
    with service.client() as c:
        answer = exchange(c, token, model="gpt-5", on_behalf_of="alice")
        assert answer.status_code == 200, answer.text
        issued = answer.json()
        assert issued["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
        assert issued["token_type"] == "Bearer" and "cnf" not in issued
        assert answer.headers["cache-control"] == "no-store"
        claims = jwt.decode(issued["access_token"], options={"verify_signature": False})
        assert claims["client_id"] == "triage-bot"
        assert claims["urn:ztinfra:session"]["workload"] == "spiffe://example.org/agents/triage"
        # The start is on record, naming the workload and how it proved itself.
        start = service.record(issued["evidence"]["seq"])
        assert start["kind"] == "session.start"
        assert start["caller"] == {"kind": "workload", "name": "spiffe://example.org/agents/triage",
                                   "via": "jwt-svid"}

        # Its decisions carry the workload's SPIFFE ID to the policy and into the record.
        read = decide(c, issued["access_token"], "doc.read")
        assert read.json()["decision"] == "allow", read.text
        record = service.record(read.json()["evidence"]["seq"])
        session = record["request"]["context"]["session"]
        assert session["workload"] == "spiffe://example.org/agents/triage"
        assert session["bound"] is False and session["model"] == "gpt-5"
        # Not bound to a certificate: the policy that asks for a bound token denies.
        assert decide(c, issued["access_token"]).json()["decision"] == "deny"

        # The token endpoint issues an X.509-SVID for the session too, from a CSR.
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
               .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
        answer = exchange(c, example.jwt_svid("spiffe://example.org/agents/triage"), svid_csr=csr)
        assert answer.status_code == 200, answer.text
        svid = answer.json()["svid"]
        leaf = x509.load_pem_x509_certificate(svid["certificate_chain"].encode())
        assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [n.value for n in names] == [answer.json()["spiffe_id"]]
        start = service.record(answer.json()["evidence"]["seq"])
        assert start["request"]["x509_svid"]["x5t#S256"] == svid["x5t#S256"]


def test_jwt_svids_that_break_a_rule_are_refused(service, example):
    other = Domain("other.org")
    sub = "spiffe://example.org/agents/triage"
    cases = {
        "wrong audience": example.jwt_svid(sub, aud="someone-else"),
        "expired": example.jwt_svid(sub, lifetime=-10),
        "no exp": example.jwt_svid(sub, lifetime=None),
        "unknown kid": example.jwt_svid(sub, kid="nope"),
        "another domain's key": example.jwt_svid(sub, key=other.jwt_key),
        "unknown domain": other.jwt_svid("spiffe://other.org/agents/triage"),
        "unmapped workload": example.jwt_svid("spiffe://example.org/batch/job"),
        "HS256": jwt.encode({"sub": sub, "aud": "ztinfra", "exp": int(time.time()) + 60}, "a-test-hmac-secret-of-32-bytes!!",
                            algorithm="HS256", headers={"kid": "test-jwt-1"}),
    }
    with service.client() as c:
        for why, token in cases.items():
            answer = exchange(c, token)
            assert answer.status_code == 400, (why, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["error"] in ("invalid_grant", "invalid_request"), (why, answer.text)
        # A claim its mapping does not allow; a grant that is not one.
        answer = exchange(c, example.jwt_svid(sub), workflow="nightly")
        assert answer.status_code == 400 and "may not claim `workflow`" in answer.json()["detail"]
        answer = c.post("/oauth2/token", data={"grant_type": "password"})
        assert answer.json()["error"] == "unsupported_grant_type"
        # client_credentials needs an X.509-SVID, which this connection did not present.
        answer = c.post("/oauth2/token", data={"grant_type": "client_credentials"})
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"


def test_an_x509_svid_gets_a_bound_token_that_is_refused_from_another_certificate(service, example):
    agent = example.svid(service.dir, "agent", ["spiffe://example.org/agents/triage"])
    gateway = example.svid(service.dir, "gateway", ["spiffe://example.org/gateway"])
    # curl, over mutual TLS with the agent's X.509-SVID.
    status, issued = service.curl("/oauth2/token", "-d", "grant_type=client_credentials", "-d", "model=gpt-5",
                                  cert=agent)
    assert status == 200, issued
    der = x509.load_pem_x509_certificate(agent[0].read_bytes()).public_bytes(serialization.Encoding.DER)
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert issued["cnf"] == {"x5t#S256": thumbprint}
    token = issued["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["cnf"] == {"x5t#S256": thumbprint}
    body = json.dumps({"action": "tool.call", "resource": "ticket-1"})
    args = ["-H", f"authorization: Bearer {token}", "-H", "content-type: application/json", "-d", body]
    status, answer = service.curl("/v1/decide", *args, cert=agent)
    assert status == 200 and answer["decision"] == "allow", answer
    session = service.record(answer["evidence"]["seq"])["request"]["context"]["session"]
    assert session["bound"] is True and session["workload"] == "spiffe://example.org/agents/triage"

    # The same token from another certificate, from none, and passed on by an enforcement point.
    status, refused = service.curl("/v1/decide", *args, cert=gateway)
    assert status == 401 and "another certificate" in refused["detail"], refused
    with service.client() as c:
        refused = decide(c, token)
        assert refused.status_code == 401 and "bound to a client certificate" in refused.json()["detail"]
    with service.client(gateway) as c:
        refused = c.post("/v1/decide", headers={"zt-agent-token": token},
                         json={"action": "tool.call", "resource": "ticket-1"})
        assert refused.status_code == 401, refused.text

        # The gateway's own SVID makes it an enforcement point: it may assert an actor, and the
        # record names its SPIFFE ID.
        asserted = c.post("/v1/decide", json={"actor": "someone", "action": "doc.read", "resource": "r"})
        assert asserted.status_code == 200, asserted.text
        record = service.record(asserted.json()["evidence"]["seq"])
        assert record["caller"] == {"kind": "pep", "name": "gateway", "spiffe_id": "spiffe://example.org/gateway"}
        # An enforcement point does not administer.
        assert c.post("/v1/agents", json={"name": "x", "owner": "y"}).status_code in (401, 403)

    # The agent's SVID is no caller credential: it starts sessions, and decides through them.
    with service.client(agent) as c:
        answer = c.post("/v1/decide", json={"actor": "triage-bot", "action": "doc.read", "resource": "r"})
        assert answer.status_code == 401 and "/oauth2/token" in answer.json()["detail"]


def test_a_bound_session_receives_a_delegation_that_stays_bound_to_its_certificate(service, example):
    agent = example.svid(service.dir, "agent", ["spiffe://example.org/agents/triage"])
    # (A `scope` beside client_credentials, as OAuth clients often send, is no delegation.)
    status, issued = service.curl("/oauth2/token", "-d", "grant_type=client_credentials", "-d", "scope=tool.call",
                                  cert=agent)
    assert status == 200 and issued["cnf"], issued
    broker = subprocess.run([ZTINFRA, "credentials", "add", "launcher", "--role", "broker", "--data-dir", service.data],
                            check=True, capture_output=True, text=True).stdout.strip()
    access = "urn:ietf:params:oauth:token-type:access_token"
    with service.client() as c:
        started = c.post("/v1/sessions", headers={"authorization": f"Bearer {broker}"},
                         json={"agent": "triage-bot", "on_behalf_of": "alice"})
        assert started.status_code == 201, started.text
        # The delegating party holds the actor's token but not its certificate: accepted, and
        # the delegated token is bound to the actor's certificate.
        delegated = exchange(c, started.json()["access_token"], subject_token_type=access,
                             actor_token=issued["access_token"], actor_token_type=access, scope="tool.call")
        assert delegated.status_code == 200, delegated.text
        token = delegated.json()["access_token"]
        assert jwt.decode(token, options={"verify_signature": False})["cnf"] == issued["cnf"]
        refused = decide(c, token)
        assert refused.status_code == 401 and "bound to a client certificate" in refused.json()["detail"]
    with service.client(agent) as c:
        answer = decide(c, token)
        assert answer.status_code == 200 and answer.json()["decision"] == "allow", answer.text


def handshake_refused(service: Service, cert: tuple[Path, Path]) -> str:
    """Connects with `cert` and asks for the bundle: returns how the service refused."""
    context = ssl.create_default_context(cafile=str(service.ca))
    context.load_cert_chain(str(cert[0]), str(cert[1]))
    host, port = service.base.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                # TLS 1.3: the server reads the client certificate after the client's handshake
                # ends, and answers a bad one with an alert on the next read.
                tls.sendall(b"GET /v1/bundle HTTP/1.1\r\nhost: localhost\r\n\r\n")
                data = tls.recv(100)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
            return str(e)
    assert not data.startswith(b"HTTP/1.1 200"), data
    return "closed"


def test_certificates_that_break_a_spiffe_rule_are_refused_at_the_handshake(service, example):
    other = Domain("other.org")
    d = service.dir
    good = example.svid(d, "good", ["spiffe://example.org/agents/triage"])
    refused = {
        "another trust domain": other.svid(d, "other", ["spiffe://other.org/agents/triage"]),
        "signed by another domain's CA": other.svid(d, "forged", ["spiffe://example.org/agents/triage"]),
        "expired": example.svid(d, "expired", ["spiffe://example.org/agents/triage"], expired=True),
        "self-signed": example.svid(d, "self", ["spiffe://example.org/agents/triage"], self_signed=True),
        "two URI SANs": example.svid(d, "two", ["spiffe://example.org/agents/a", "spiffe://example.org/agents/b"]),
        "no URI SAN": example.svid(d, "none", []),
        "not a SPIFFE ID": example.svid(d, "https", ["https://example.org/agents/triage"]),
        "a CA as leaf": example.svid(d, "ca", ["spiffe://example.org/agents/triage"], ca=True),
    }
    for why, cert in refused.items():
        how = handshake_refused(service, cert)
        assert "alert" in how.lower() or how == "closed" or "reset" in how.lower(), (why, how)
        # curl sees the same.
        done = subprocess.run(
            ["curl", "-sS", "--cacert", str(service.ca), "--cert", str(cert[0]), "--key", str(cert[1]),
             service.base + "/v1/bundle"], capture_output=True, text=True, timeout=20,
        )
        assert done.returncode != 0, (why, done.stdout)
    # The good one, on the same listener, is let in.
    with service.client(good) as c:
        assert c.get("/v1/bundle").status_code == 200


def test_the_service_issues_svids_that_openssl_and_spiffe_accept(service, tmp_path):
    broker = subprocess.run(
        [ZTINFRA, "credentials", "add", "launcher", "--role", "broker", "--data-dir", service.data],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    # From a CSR made by openssl: the private key stays here.
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", tmp_path / "own.key"],
                   check=True)
    csr = subprocess.run(["openssl", "req", "-new", "-key", tmp_path / "own.key", "-subj", "/CN=ignored"],
                         check=True, capture_output=True, text=True).stdout
    with service.client() as c:
        started = c.post("/v1/sessions", headers={"authorization": f"Bearer {broker}"}, json={
            "agent": "triage-bot", "on_behalf_of": "alice", "ttl": 600, "svid": {"csr": csr},
        })
        assert started.status_code == 201, started.text
        session = started.json()
        svid = session["svid"]
        assert "private_key" not in svid and svid["spiffe_id"] == session["spiffe_id"]
        generated = c.post("/v1/sessions", headers={"authorization": f"Bearer {broker}"}, json={
            "agent": "triage-bot", "on_behalf_of": "alice", "svid": {"generate": True},
        }).json()["svid"]
        assert generated["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
        bad = c.post("/v1/sessions", headers={"authorization": f"Bearer {broker}"}, json={
            "agent": "triage-bot", "on_behalf_of": "alice", "svid": {"csr": "not a csr"},
        })
        assert bad.status_code == 400, bad.text
        bundle = c.get("/v1/bundle").json()

    (tmp_path / "chain.pem").write_text(svid["certificate_chain"])
    (tmp_path / "bundle.pem").write_text(svid["bundle"])
    verified = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "bundle.pem", tmp_path / "chain.pem"],
                              capture_output=True, text=True)
    assert verified.returncode == 0 and verified.stdout.strip().endswith("OK"), verified
    text = subprocess.run(["openssl", "x509", "-in", tmp_path / "chain.pem", "-noout", "-text"],
                          check=True, capture_output=True, text=True).stdout
    assert text.count("URI:") == 1 and f"URI:{session['spiffe_id']}" in text, text
    assert "CA:FALSE" in text
    leaf = x509.load_pem_x509_certificate(svid["certificate_chain"].encode())
    lifetime = leaf.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    assert lifetime <= datetime.timedelta(seconds=600), lifetime
    # The SPIFFE library parses it as an X.509-SVID, with the key it was issued for.
    parsed = spiffe.X509Svid.parse(svid["certificate_chain"].encode(), (tmp_path / "own.key").read_bytes())
    assert str(parsed.spiffe_id) == session["spiffe_id"]
    parsed = spiffe.X509Svid.parse(generated["certificate_chain"].encode(), generated["private_key"].encode())
    assert str(parsed.spiffe_id) == generated["spiffe_id"]
    # And the service's bundle, in the SPIFFE format, holds its CA (and its token keys).
    domain = spiffe.TrustDomain("ztinfra.local")
    x509_keys = [k for k in bundle["keys"] if k["use"] == "x509-svid"]
    own = spiffe.X509Bundle.parse_raw(domain, base64.b64decode(x509_keys[0]["x5c"][0]))
    assert [a.public_bytes(serialization.Encoding.PEM).decode() for a in own.x509_authorities] == [svid["bundle"]]
    jwt_keys = {"keys": [k for k in bundle["keys"] if k["use"] == "jwt-svid"]}
    assert spiffe.JwtBundle.parse(domain, json.dumps(jwt_keys).encode()).jwt_authorities
    # The issued SVID opens a mutual TLS connection to the service (its own domain is trusted).
    (tmp_path / "generated.crt").write_text(generated["certificate_chain"])
    (tmp_path / "generated.key").write_text(generated["private_key"])
    os.chmod(tmp_path / "generated.key", 0o600)
    with service.client((tmp_path / "generated.crt", tmp_path / "generated.key")) as c:
        assert c.get("/v1/bundle").status_code == 200


def test_a_changed_bundle_file_is_read_again(service, example):
    agent = example.svid(service.dir, "agent", ["spiffe://example.org/agents/triage"])
    with service.client(agent) as c:
        assert c.get("/v1/bundle").status_code == 200
    # The domain's CA rotates: the new bundle no longer holds the old CA.
    rotated = Domain("example.org")
    (service.dir / "example.org.bundle.json").write_text(rotated.bundle_json())
    new_agent = rotated.svid(service.dir, "new-agent", ["spiffe://example.org/agents/triage"])
    deadline = time.time() + 15
    while True:
        try:
            with service.client(new_agent) as c:
                if c.get("/v1/bundle").status_code == 200:
                    break
        except (httpx.HTTPError, ssl.SSLError):
            pass
        assert time.time() < deadline, "the new bundle was not read within 15 s"
        time.sleep(0.5)
    assert handshake_refused(service, agent)
    # A bundle that no longer reads leaves the last good one in use.
    (service.dir / "example.org.bundle.json").write_text("{not json")
    time.sleep(5)
    with service.client(new_agent) as c:
        assert c.get("/v1/bundle").status_code == 200


def test_required_client_certificates_refuse_connections_without_one(tmp_path, example):
    server, service = start(tmp_path, example, required=True)
    try:
        with pytest.raises((httpx.HTTPError, ssl.SSLError)):
            with service.client() as c:
                c.get("/v1/bundle")
        agent = example.svid(tmp_path, "agent", ["spiffe://example.org/agents/triage"])
        with service.client(agent) as c:
            assert c.get("/v1/bundle").status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_command_line_reaches_a_tls_service_and_presents_an_svid(service, example):
    gateway = example.svid(service.dir, "gateway", ["spiffe://example.org/gateway"])
    os.chmod(gateway[1], 0o600)
    tls = ["--server", service.base, "--tls-ca", str(service.ca)]
    # `ztinfra decide` as the enforcement point named by its X.509-SVID: no credential.
    done = subprocess.run(
        [ZTINFRA, "decide", *tls, "--tls-cert", gateway[0], "--tls-key", gateway[1],
         "--actor", "someone", "--action", "doc.read", "--resource", "r", "--json"],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 1, done.stderr  # deny: an asserted actor is no workload
    answer = json.loads(done.stdout)
    assert service.record(answer["evidence"]["seq"])["caller"]["spiffe_id"] == "spiffe://example.org/gateway"
    # `ztinfra agents` with the admin credential, over TLS.
    listed = subprocess.run([ZTINFRA, "agents", "list", *tls, "--data-dir", service.data],
                            capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0 and "triage-bot" in listed.stdout, listed.stderr
    # An https server without the CA to check it by is refused before anything is sent.
    done = subprocess.run([ZTINFRA, "decide", "--server", service.base, "--actor", "a", "--action", "b",
                           "--resource", "c"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--tls-ca" in done.stderr, done.stderr


def test_the_server_certificate_is_read_again_when_its_files_change(service):
    def served_serial() -> int:
        context = ssl.create_default_context(cafile=str(service.ca))
        host, port = service.base.removeprefix("https://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number

    before = served_serial()
    # Renewed in place, as spiffe-helper or a certificate manager would.
    subprocess.run([ZTINFRA, "ca", "server-cert", "--data-dir", service.data, "--name", "localhost",
                    "--name", "127.0.0.1"], check=True, capture_output=True)
    renewed = x509.load_pem_x509_certificate((service.data / "keys/server.crt").read_bytes()).serial_number
    assert renewed != before
    deadline = time.time() + 15
    while served_serial() != renewed:
        assert time.time() < deadline, "the renewed certificate was not served within 15 s"
        time.sleep(0.5)
    # A malformed form gets an OAuth error, not a bare 422.
    with service.client() as c:
        answer = c.post("/oauth2/token", content=b"{}", headers={"content-type": "application/json"})
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_request", answer.text
