"""Delegation by token exchange (RFC 8693) bounded by authorization details (RFC 9396), against
parts this project did not write:

- a real OpenID provider, the npm `oidc-provider` package (tests/python/oidc), issues the
  human's ID token and serves the JWKS this service fetches;
- `authlib`'s OAuth 2 client performs every token exchange;
- PyJWT verifies each delegated token against the service's JWKS and reads its nested `act`.

A second issuer, whose test key PyJWT holds, stands for tokens the provider would not make
(expired ones, another issuer's), through a JWKS file.
"""

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import jwt
import pytest
from authlib.integrations.httpx_client import OAuth2Client
from cryptography.hazmat.primitives.asymmetric import ec
from ztclient import ROOT, ZTINFRA, call

POLICIES = ROOT / "examples/delegation"
OIDC = Path(__file__).resolve().parent / "oidc"

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
JWT = "urn:ietf:params:oauth:token-type:jwt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def oidc_issuer():
    """The OpenID provider, on a port of its own; yields its issuer URL."""
    if shutil.which("node") is None or not (OIDC / "node_modules/oidc-provider").is_dir():
        pytest.fail("the test OpenID provider is not installed: npm ci --prefix crates/ztinfra/tests/python/oidc")
    port = free_port()
    provider = subprocess.Popen(
        ["node", str(OIDC / "issuer.mjs"), str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        line = provider.stdout.readline()
        assert line.startswith("ready "), line
        yield line.removeprefix("ready ").strip()
    finally:
        provider.terminate()
        provider.wait(timeout=10)


def id_token(issuer: str, sub: str, **extra) -> str:
    query = urllib.parse.urlencode({"sub": sub, **{k: json.dumps(v) if k == "may_act" else v for k, v in extra.items()}})
    with urllib.request.urlopen(f"{issuer}/test/id-token?{query}", timeout=10) as response:
        return response.read().decode()


class KeyedIssuer:
    """An issuer whose test key (P-256, made here) PyJWT signs with; its JWKS is a file."""

    ISSUER = "https://idp.test.example"

    def __init__(self, directory: Path):
        self.key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": "test-1", "alg": "ES256", "use": "sig"})
        self.jwks = directory / "idp.jwks.json"
        self.jwks.write_text(json.dumps({"keys": [jwk]}))

    def token(self, sub: str, iss: str | None = None, exp_in: int = 300, aud: str = "ztinfra-console") -> str:
        now = int(time.time())
        claims = {"iss": iss or self.ISSUER, "sub": sub, "aud": aud, "iat": now, "exp": now + exp_in}
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": "test-1"})


class Service:
    def __init__(self, base: str, data: Path):
        self.base = base
        self.data = data
        self.admin = (data / "admin.token").read_text().strip()
        self.broker = self.credential("launcher", "broker")
        self.auditor = self.credential("audit", "auditor")
        self.metadata = call("GET", f"{base}/.well-known/oauth-authorization-server")[1]
        self.jwks = jwt.PyJWKClient(self.metadata["jwks_uri"])
        for agent in ("orchestrator", "retrieval"):
            status, body = call("POST", f"{base}/v1/agents", self.admin, {"name": agent, "owner": "team-ai"})
            assert status == 201, body

    def credential(self, name: str, role: str) -> str:
        return subprocess.run(
            [ZTINFRA, "credentials", "add", name, "--role", role, "--data-dir", self.data],
            check=True, capture_output=True, text=True,
        ).stdout.strip()

    def session(self, agent: str) -> dict:
        status, body = call("POST", f"{self.base}/v1/sessions", self.broker, {"agent": agent, "on_behalf_of": "alice"})
        assert status == 201, body
        return body

    def exchange(self, subject: str, subject_type: str, actor: str, **params) -> tuple[int, dict]:
        """A token exchange made by authlib's OAuth 2 client; the raw answer."""
        with OAuth2Client(client_id="orchestrator", token_endpoint_auth_method="none") as client:
            body = {
                "subject_token": subject,
                "subject_token_type": subject_type,
                "actor_token": actor,
                "actor_token_type": ACCESS,
                **{k: json.dumps(v) if k == "authorization_details" else v for k, v in params.items()},
            }
            try:
                token = client.fetch_token(self.metadata["token_endpoint"], grant_type=EXCHANGE, **body)
                return 200, dict(token)
            except Exception as e:  # authlib raises OAuthError with the RFC 6749 members
                error = getattr(e, "error", None)
                assert error, f"not an OAuth error: {e!r}"
                return 400, {"error": error, "error_description": getattr(e, "description", "")}

    def verify(self, token: str) -> dict:
        key = self.jwks.get_signing_key_from_jwt(token)
        return jwt.decode(
            token, key.key, algorithms=["EdDSA"], audience=self.metadata["ztinfra_access_token_audience"],
            issuer=self.metadata["issuer"], options={"require": ["exp", "iat", "sub", "jti"]},
        )

    def decide(self, token: str, action: str, resource: str) -> tuple[int, dict]:
        return call("POST", f"{self.base}/v1/decide", token, {"action": action, "resource": resource})

    def record(self, seq: int) -> dict:
        status, body = call("GET", f"{self.base}/v1/evidence/{seq}", self.auditor)
        assert status == 200, body
        return body


@pytest.fixture
def service(tmp_path, oidc_issuer):
    idp = KeyedIssuer(tmp_path)
    config = tmp_path / "ztinfra.toml"
    config.write_text(
        f"""
[delegation]
max_depth = 2

[[delegation.issuers]]
issuer = "{oidc_issuer}"
jwks_uri = "{oidc_issuer}/jwks"
audiences = ["ztinfra-console"]

[[delegation.issuers]]
issuer = "{KeyedIssuer.ISSUER}"
jwks_file = "{idp.jwks.name}"
audiences = ["ztinfra-console"]
"""
    )
    data = tmp_path / "data"
    server = subprocess.Popen(
        [ZTINFRA, "serve", "--config", config, "--listen", "127.0.0.1:0", "--policies", POLICIES,
         "--data-dir", data, "--no-watch"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = server.stdout.readline()
        assert line.startswith("ztinfra listening on "), line
        yield Service(line.removeprefix("ztinfra listening on ").strip(), data), oidc_issuer, idp
    finally:
        server.terminate()
        server.wait(timeout=10)


INVOICES = {
    "type": "ztinfra_action",
    "actions": ["crm.invoices.read", "crm.invoices.write"],
    "locations": ["crm://invoices/2026-Q3/*"],
    "max_uses": 20,
}


def test_a_persons_authority_narrows_at_each_hop_and_bounds_every_decision(service):
    zt, issuer, _ = service
    orchestrator = zt.session("orchestrator")
    retrieval = zt.session("retrieval")
    alice = id_token(issuer, "alice")

    # Alice (her ID token from the OpenID provider) to the orchestrator.
    status, first = zt.exchange(alice, ID_TOKEN, orchestrator["access_token"], authorization_details=[INVOICES])
    assert status == 200, first
    assert first["issued_token_type"] == ACCESS and first["token_type"] == "Bearer"
    assert first["authorization_details"] == [INVOICES]
    claims = zt.verify(first["access_token"])
    assert claims["sub"] == "alice"
    assert claims["act"] == {"sub": orchestrator["spiffe_id"], "client_id": "orchestrator"}
    assert claims["jti"] == first["delegation_id"]
    assert claims["urn:ztinfra:delegation"]["origin"] == {"kind": "human", "sub": "alice", "iss": issuer}
    assert claims["exp"] <= jwt.decode(alice, options={"verify_signature": False})["exp"]

    # The orchestrator narrows it to one invoice, two reads, for the retrieval agent.
    narrow = {"type": "ztinfra_action", "actions": ["crm.invoices.read"],
              "locations": ["crm://invoices/2026-Q3/7"], "max_uses": 2}
    status, second = zt.exchange(first["access_token"], ACCESS, retrieval["access_token"],
                                 authorization_details=[narrow])
    assert status == 200, second
    claims = zt.verify(second["access_token"])
    assert claims["sub"] == "alice"
    # RFC 8693 section 4.1: the current actor outermost, the one before it nested inside.
    assert claims["act"]["sub"] == retrieval["spiffe_id"]
    assert claims["act"]["act"]["sub"] == orchestrator["spiffe_id"]
    assert "act" not in claims["act"]["act"]
    assert claims["authorization_details"] == [narrow]
    assert claims["urn:ztinfra:delegation"]["depth"] == 2

    token = second["access_token"]
    status, allowed = zt.decide(token, "crm.invoices.read", "crm://invoices/2026-Q3/7")
    assert status == 200 and allowed["decision"] == "allow", allowed
    record = zt.record(allowed["evidence"]["seq"])["record"]
    assert record["caller"]["delegation"]["chain"] == ["alice", orchestrator["spiffe_id"], retrieval["spiffe_id"]]
    delegation = record["request"]["context"]["delegation"]
    assert delegation["actors"] == ["orchestrator", "retrieval"]
    assert delegation["origin"] == "alice" and delegation["depth"] == 2 and delegation["delegator"] == "orchestrator"

    # Outside the narrowed authority: another invoice, another action. The policies alone
    # would allow the first; the bound denies it, with a reason of its own kind.
    status, other = zt.decide(token, "crm.invoices.read", "crm://invoices/2026-Q3/8")
    assert other["decision"] == "deny" and other["reasons"][0]["kind"] == "delegation", other
    assert "outside the authority delegated" in other["reasons"][0]["message"]
    status, write = zt.decide(token, "crm.invoices.write", "crm://invoices/2026-Q3/7")
    assert write["decision"] == "deny", write
    # The second use, then none left.
    assert zt.decide(token, "crm.invoices.read", "crm://invoices/2026-Q3/7")[1]["decision"] == "allow"
    status, spent = zt.decide(token, "crm.invoices.read", "crm://invoices/2026-Q3/7")
    assert spent["decision"] == "deny" and "spent" in spent["reasons"][0]["message"], spent
    # The orchestrator's own token still works within its wider bound; the two uses handed
    # down were taken from its twenty.
    status, wide = zt.decide(first["access_token"], "crm.invoices.write", "crm://invoices/2026-Q3/9")
    assert wide["decision"] == "allow", wide


def test_every_widening_and_bad_token_is_refused_with_its_oauth_error(service):
    zt, issuer, idp = service
    orchestrator = zt.session("orchestrator")
    retrieval = zt.session("retrieval")
    alice = id_token(issuer, "alice")
    status, first = zt.exchange(alice, ID_TOKEN, orchestrator["access_token"], authorization_details=[INVOICES])
    assert status == 200, first
    held = first["access_token"]

    def refused(expected_error, fragment, subject=held, subject_type=ACCESS, actor=None, **params):
        status, body = zt.exchange(subject, subject_type, actor or retrieval["access_token"], **params)
        assert status == 400 and body["error"] == expected_error, body
        assert fragment in body["error_description"], body
        return body

    read = {"type": "ztinfra_action", "actions": ["crm.invoices.read"], "locations": ["crm://invoices/2026-Q3/1"],
            "max_uses": 1}
    # Widening: actions, locations, uses, lifetime.
    refused("invalid_target", "crm.invoices.delete", authorization_details=[{**read, "actions": ["crm.invoices.delete"]}])
    refused("invalid_target", "crm://invoices/*", authorization_details=[{**read, "locations": ["crm://invoices/*"]}])
    refused("invalid_target", "any resource", authorization_details=[{k: v for k, v in read.items() if k != "locations"}])
    refused("invalid_request", "limited to 20 uses", authorization_details=[{**read, "max_uses": 21}])
    refused("invalid_request", "uncounted", authorization_details=[{k: v for k, v in read.items() if k != "max_uses"}])
    refused("invalid_request", "outlive", authorization_details=[read], ttl="86400")
    # Malformed or unknown details, and none at all.
    refused("invalid_request", "does not know", authorization_details=[{**read, "type": "payment_initiation"}])
    refused("invalid_request", "max_uses", authorization_details=[{**read, "max_uses": 0}])
    refused("invalid_request", "name the authority")
    # The policies: the orchestrator may hand reads only to the retrieval agent.
    refused("invalid_grant", "ztinfra.token.exchange", actor=zt.session("orchestrator")["access_token"],
            authorization_details=[read])
    refused("invalid_grant", "denied",
            authorization_details=[{**read, "actions": ["crm.invoices.write"]}])

    # Too deep: a third hop where two are allowed.
    status, second = zt.exchange(held, ACCESS, retrieval["access_token"], authorization_details=[read])
    assert status == 200, second
    refused("invalid_request", "2 are allowed", subject=second["access_token"],
            actor=zt.session("retrieval")["access_token"], authorization_details=[read])

    # Bad tokens.
    refused("invalid_request", "actor_token", subject=alice, subject_type=ID_TOKEN, actor=held,
            authorization_details=[read])  # a delegated token is not an actor's own
    refused("invalid_grant", "not one this service trusts", subject=idp.token("alice", iss="https://evil.example"),
            subject_type=JWT, authorization_details=[read])
    refused("invalid_grant", "expired", subject=idp.token("alice", exp_in=-120), subject_type=JWT,
            authorization_details=[read])
    refused("invalid_grant", "audiences", subject=idp.token("alice", aud="another-app"), subject_type=JWT,
            authorization_details=[read])
    refused("invalid_request", "not accepted", subject=idp.token("alice"),
            subject_type="urn:ietf:params:oauth:token-type:saml2", authorization_details=[read])
    refused("invalid_grant", "actor token", subject=alice, subject_type=ID_TOKEN, actor="not-a-token",
            authorization_details=[read])
    # The test issuer's own token is good (its JWKS file), but it may not act for the retrieval
    # agent directly: no policy lets a person delegate to it.
    refused("invalid_grant", "denied", subject=idp.token("bob"), subject_type=JWT, authorization_details=[read])
    # may_act (RFC 8693 section 4.4) in the person's token names who may receive it.
    limited = id_token(issuer, "alice", may_act={"client_id": "some-other-agent"})
    refused("invalid_grant", "may_act", subject=limited, subject_type=ID_TOKEN,
            actor=orchestrator["access_token"], authorization_details=[read])
    allowed = id_token(issuer, "alice", may_act={"sub": orchestrator["spiffe_id"]})
    assert zt.exchange(allowed, ID_TOKEN, orchestrator["access_token"], authorization_details=[read])[0] == 200

    # An expired actor token.
    status, brief = call("POST", f"{zt.base}/v1/sessions", zt.broker,
                         {"agent": "retrieval", "on_behalf_of": "alice", "ttl": 1})
    assert status == 201, brief
    time.sleep(1.2)
    refused("invalid_grant", "expired", actor=brief["access_token"], authorization_details=[read])

    # Without actor_token, without actor_token_type, and with a requested type not issued here
    # (plain HTTP: authlib would not send these).
    for form, fragment in [
        ({"actor_token_type": ACCESS, "authorization_details": json.dumps([read])}, "needs `actor_token`"),
        ({"actor_token": held}, "actor_token_type"),
        ({"actor_token": held, "actor_token_type": ACCESS, "requested_token_type": "urn:x"}, "requested_token_type"),
    ]:
        data = urllib.parse.urlencode({"grant_type": EXCHANGE, "subject_token": alice,
                                       "subject_token_type": ID_TOKEN, **form}).encode()
        request = urllib.request.Request(zt.metadata["token_endpoint"], data=data, method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=10)
        body = json.loads(e.value.read())
        assert e.value.code == 400 and body["error"] == "invalid_request" and fragment in body["error_description"]


def test_revoking_any_link_voids_every_token_below_it(service):
    zt, issuer, _ = service
    orchestrator = zt.session("orchestrator")
    retrieval = zt.session("retrieval")
    alice = id_token(issuer, "alice")
    read = {"type": "ztinfra_action", "actions": ["crm.invoices.read"]}
    first = zt.exchange(alice, ID_TOKEN, orchestrator["access_token"], authorization_details=[read])[1]
    second = zt.exchange(first["access_token"], ACCESS, retrieval["access_token"], authorization_details=[read])[1]
    assert zt.decide(second["access_token"], "crm.invoices.read", "crm://invoices/1")[1]["decision"] == "allow"

    # The holder of the first delegated token revokes it (RFC 7009): the second, made from it,
    # is void too; the sessions themselves stay.
    data = urllib.parse.urlencode({"token": first["access_token"]}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{zt.base}/oauth2/revoke", data=data), timeout=10) as r:
        assert r.status == 200
    for token in (first["access_token"], second["access_token"]):
        status, body = zt.decide(token, "crm.invoices.read", "crm://invoices/1")
        assert status == 401 and "revoked" in body["detail"], body
    status, own = zt.decide(retrieval["access_token"], "crm.invoices.read", "crm://invoices/1")
    assert status == 200, own

    # A new chain, cut at the orchestrator's session by an admin.
    first = zt.exchange(alice, ID_TOKEN, orchestrator["access_token"], authorization_details=[read])[1]
    second = zt.exchange(first["access_token"], ACCESS, retrieval["access_token"], authorization_details=[read])[1]
    status, _ = call("POST", f"{zt.base}/v1/sessions/{orchestrator['session_id']}/revoke", zt.admin)
    assert status == 200
    status, body = zt.decide(second["access_token"], "crm.invoices.read", "crm://invoices/1")
    assert status == 401 and orchestrator["session_id"] in body["detail"], body

    # And an admin revokes a delegation by id.
    orchestrator = zt.session("orchestrator")
    first = zt.exchange(alice, ID_TOKEN, orchestrator["access_token"], authorization_details=[read])[1]
    status, _ = call("POST", f"{zt.base}/v1/delegations/{first['delegation_id']}/revoke", zt.admin)
    assert status == 204
    assert zt.decide(first["access_token"], "crm.invoices.read", "crm://invoices/1")[0] == 401
    status, body = call("POST", f"{zt.base}/v1/delegations/0000/revoke", zt.admin)
    assert status == 404, body


def test_a_quarantined_delegator_holds_what_it_delegated(service):
    zt, issuer, _ = service
    orchestrator = zt.session("orchestrator")
    retrieval = zt.session("retrieval")
    read = {"type": "ztinfra_action", "actions": ["crm.invoices.read"]}
    first = zt.exchange(id_token(issuer, "alice"), ID_TOKEN, orchestrator["access_token"], authorization_details=[read])[1]
    second = zt.exchange(first["access_token"], ACCESS, retrieval["access_token"], authorization_details=[read])[1]
    assert zt.decide(second["access_token"], "crm.invoices.read", "crm://invoices/1")[1]["decision"] == "allow"

    # Quarantine is not revocation: the tokens stay valid, and every decision made with one
    # whose chain holds the quarantined session is denied, with a reason of its own kind.
    target = f"/v1/sessions/{orchestrator['session_id']}/quarantine"
    status, body = call("POST", f"{zt.base}{target}", zt.admin, {"reason": "INC-7"})
    assert status == 200, body
    status, held = zt.decide(second["access_token"], "crm.invoices.read", "crm://invoices/1")
    assert status == 200 and held["decision"] == "deny", held
    assert held["reasons"][0]["kind"] == "quarantine", held
    assert held["reasons"][0]["quarantine"] == f"session:{orchestrator['session_id']}", held
    # The retrieval agent's own session is not held (its policies decide: no delegation, no
    # invoices).
    own = zt.decide(retrieval["access_token"], "crm.invoices.read", "crm://invoices/1")[1]
    assert own["reasons"][0]["kind"] == "default_deny", own

    status, _ = call("DELETE", f"{zt.base}{target}", zt.admin)
    assert status == 200
    assert zt.decide(second["access_token"], "crm.invoices.read", "crm://invoices/1")[1]["decision"] == "allow"


TXN = "urn:ietf:params:oauth:token-type:txn_token"


def test_a_transaction_token_carries_the_chain_to_services_that_decide_on_it(service):
    zt, issuer, _ = service
    orchestrator = zt.session("orchestrator")
    retrieval = zt.session("retrieval")
    alice = id_token(issuer, "alice")
    read = {"type": "ztinfra_action", "actions": ["crm.invoices.read", "crm.reports.read"]}
    first = zt.exchange(alice, ID_TOKEN, orchestrator["access_token"], authorization_details=[read])[1]
    second = zt.exchange(first["access_token"], ACCESS, retrieval["access_token"], authorization_details=[read])[1]

    # The retrieval agent asks for a Transaction Token for its call (authlib, token exchange).
    with OAuth2Client(client_id="retrieval", token_endpoint_auth_method="none") as client:
        answer = client.fetch_token(
            zt.metadata["token_endpoint"], grant_type=EXCHANGE, subject_token=second["access_token"],
            subject_token_type=ACCESS, requested_token_type=TXN, scope="crm.reports.read",
        )
    assert answer["issued_token_type"] == TXN and answer["token_type"] == "N_A"
    txn = answer["access_token"]
    assert jwt.get_unverified_header(txn)["typ"] == "txntoken+jwt"
    key = zt.jwks.get_signing_key_from_jwt(txn)
    claims = jwt.decode(txn, key.key, algorithms=["EdDSA"], audience="ztinfra.local", issuer=zt.metadata["issuer"])
    assert claims["sub"] == "alice" and claims["scope"] == "crm.reports.read"
    assert claims["req_wl"] == retrieval["spiffe_id"] and claims["txn"] == answer["txn"]
    assert claims["tctx"]["delegation"]["actors"] == ["orchestrator", "retrieval"]
    assert claims["tctx"]["authorization_details"] == [read]
    assert claims["exp"] - claims["iat"] <= 300

    # A service deeper in the chain (an enforcement point deciding for `reporting-svc`) passes
    # the token on; the policies decide on its context.
    pep = zt.credential("reporting-gw", "pep")

    def decide(txn_token):
        body = json.dumps({"actor": "reporting-svc", "action": "crm.reports.read", "resource": "crm://reports/q3"})
        headers = {"content-type": "application/json", "authorization": f"Bearer {pep}"}
        if txn_token is not None:
            headers["txn-token"] = txn_token
        request = urllib.request.Request(f"{zt.base}/v1/decide", data=body.encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    status, allowed = decide(txn)
    assert status == 200 and allowed["decision"] == "allow", allowed
    assert allowed["reasons"][0]["policy"] == "reports-for-alices-transactions"
    record = zt.record(allowed["evidence"]["seq"])["record"]
    assert record["request"]["context"]["transaction"]["txn"] == answer["txn"]
    assert decide(None)[1]["decision"] == "deny"
    # A session's access token is not a Transaction Token; an altered one does not verify.
    for bad in (second["access_token"], txn[:-4] + ("AAAA" if not txn.endswith("AAAA") else "BBBB")):
        status, body = decide(bad)
        assert status == 401 and "Txn-Token" in body["detail"], body

    # The scope stays inside the subject's authority; a Transaction Token is asked without an
    # actor and lives minutes.
    for params, error, fragment in [
        ({"scope": "crm.invoices.write"}, "invalid_target", "crm.invoices.write"),
        ({"ttl": "3600"}, "invalid_request", "600"),
        ({"actor_token": retrieval["access_token"], "actor_token_type": ACCESS}, "invalid_request", "without `actor_token`"),
    ]:
        data = urllib.parse.urlencode({"grant_type": EXCHANGE, "subject_token": second["access_token"],
                                       "subject_token_type": ACCESS, "requested_token_type": TXN, **params}).encode()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(zt.metadata["token_endpoint"], data=data), timeout=10)
        body = json.loads(e.value.read())
        assert body["error"] == error and fragment in body["error_description"], body


def test_a_plan_step_refused_by_the_delegated_bound_is_not_used_up(service):
    zt, issuer, _ = service
    orchestrator = zt.session("orchestrator")
    retrieval = zt.session("retrieval")
    alice = id_token(issuer, "alice")
    first = zt.exchange(alice, ID_TOKEN, orchestrator["access_token"], authorization_details=[INVOICES])[1]

    def narrowed(invoice):
        entry = {"type": "ztinfra_action", "actions": ["crm.invoices.read"], "locations": [f"crm://invoices/2026-Q3/{invoice}"], "max_uses": 1}
        return zt.exchange(first["access_token"], ACCESS, retrieval["access_token"], authorization_details=[entry])[1]["access_token"]

    status, plan = call("POST", f"{zt.base}/v1/plans", orchestrator["access_token"], {
        "executor": retrieval["session_id"],
        "steps": [{"action": "crm.invoices.read", "resource": "crm://invoices/2026-Q3/7"}],
    })
    assert status == 201 and plan["status"] == "accepted", plan

    def step(token):
        body = json.dumps({"action": "crm.invoices.read", "resource": "crm://invoices/2026-Q3/7"}).encode()
        request = urllib.request.Request(f"{zt.base}/v1/decide", data=body, headers={
            "content-type": "application/json", "authorization": f"Bearer {token}", "zt-plan-step": f"{plan['plan']}/0"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    # A token for invoice 8 only: the step is outside it, and stays unused.
    outside = step(narrowed(8))
    assert outside["decision"] == "deny" and outside["reasons"][0]["kind"] == "delegation", outside
    inside = step(narrowed(7))
    assert inside["decision"] == "allow", inside
    again = step(narrowed(7))
    assert again["decision"] == "deny" and "used already" in again["reasons"][0]["message"], again
