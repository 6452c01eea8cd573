"""Agent session tokens, checked by a JWT library this project did not write (PyJWT).

A broker obtains a session token over HTTP; PyJWT verifies it against the JWKS the service
publishes (found through its RFC 8414 metadata), with issuer, audience and `typ`; the token then
decides. A token PyJWT signs with a key of its own, under the service's key id, is refused.
"""

import base64
import subprocess
import urllib.error
import urllib.request
import zlib

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ztclient import ROOT, ZTINFRA, call

DEMO = ROOT / "examples/demo"


@pytest.fixture
def service(tmp_path):
    data = tmp_path / "data"
    server = subprocess.Popen(
        [ZTINFRA, "serve", "--listen", "127.0.0.1:0", "--policies", DEMO, "--data-dir", data, "--no-watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = server.stdout.readline()
        assert line.startswith("ztinfra listening on "), line
        yield line.removeprefix("ztinfra listening on ").strip(), data
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_session_token_verifies_with_pyjwt_and_decides(service):
    base, data = service
    admin = (data / "admin.token").read_text().strip()
    broker = subprocess.run(
        [ZTINFRA, "credentials", "add", "launcher", "--role", "broker", "--data-dir", data],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    status, _ = call("POST", f"{base}/v1/agents", admin, {"name": "demo-agent", "owner": "team-sre"})
    assert status == 201
    status, session = call(
        "POST", f"{base}/v1/sessions", broker,
        {"agent": "demo-agent", "on_behalf_of": "alice", "lineage": {"model": "gpt-5", "sandbox": "sbx-1"}},
    )
    assert status == 201, session
    token = session["access_token"]

    status, metadata = call("GET", f"{base}/.well-known/oauth-authorization-server")
    assert status == 200
    assert metadata["issuer"] == base
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt" and header["alg"] == "EdDSA"
    keys = jwt.PyJWKClient(metadata["jwks_uri"])
    key = keys.get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token, key.key, algorithms=["EdDSA"], audience=metadata["ztinfra_access_token_audience"],
        issuer=metadata["issuer"], options={"require": ["exp", "iat", "nbf", "sub", "jti"]},
    )
    assert claims["sub"] == session["spiffe_id"] == f"spiffe://ztinfra.local/agent/demo-agent/session/{session['session_id']}"
    assert claims["client_id"] == "demo-agent"
    assert claims["exp"] - claims["iat"] == 900
    lineage = claims["urn:ztinfra:session"]
    assert lineage["on_behalf_of"] == "alice"
    assert lineage["lineage"] == {"model": "gpt-5", "sandbox": "sbx-1", "broker": "launcher"}
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, key.key, algorithms=["EdDSA"], audience="another-service", issuer=metadata["issuer"])
    with pytest.raises(jwt.InvalidIssuerError):
        jwt.decode(token, key.key, algorithms=["EdDSA"], audience="ztinfra", issuer="https://elsewhere.example")

    # The token decides: the actor is its agent.
    status, decided = call(
        "POST", f"{base}/v1/decide", token,
        {"action": "aws.ec2.describe_instances", "resource": "i-1", "context": {"env": "prod"}},
    )
    assert status == 200 and decided["decision"] == "allow", decided

    # Claims PyJWT signs with its own key, under the service's key id: refused.
    forged = jwt.encode(
        {**claims, "urn:ztinfra:session": {**lineage, "agent": "demo-agent"}},
        Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"typ": "at+jwt", "kid": header["kid"]},
    )
    status, problem = call("POST", f"{base}/v1/decide", forged, {"action": "aws.ec2.describe_instances", "resource": "i-1"})
    assert status == 401
    assert problem["detail"] == "the token's signature does not verify"

    # The token's place in the Token Status List, read as a verifier would: a JWT signed with
    # the same keys, its list zlib-compressed; the bit turns to 1 when the session is revoked.
    reference = claims["status"]["status_list"]
    assert reference["uri"] == metadata["ztinfra_status_list_uri"]

    def status_bit() -> int:
        with urllib.request.urlopen(reference["uri"], timeout=10) as response:
            assert response.headers["content-type"] == "application/statuslist+jwt"
            listed = response.read().decode()
        assert jwt.get_unverified_header(listed)["typ"] == "statuslist+jwt"
        body = jwt.decode(listed, keys.get_signing_key_from_jwt(listed).key, algorithms=["EdDSA"])
        assert body["sub"] == reference["uri"] and body["status_list"]["bits"] == 1
        lst = body["status_list"]["lst"]
        bits = zlib.decompress(base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4)))
        return (bits[reference["idx"] // 8] >> (reference["idx"] % 8)) & 1

    assert status_bit() == 0
    revoke = urllib.request.Request(
        f"{base}/oauth2/revoke", data=f"token={token}".encode(),
        headers={"content-type": "application/x-www-form-urlencoded"}, method="POST",
    )
    with urllib.request.urlopen(revoke, timeout=10) as response:
        assert response.status == 200
    assert status_bit() == 1
    status, _ = call("POST", f"{base}/v1/decide", token, {"action": "aws.ec2.describe_instances", "resource": "i-1"})
    assert status == 401
