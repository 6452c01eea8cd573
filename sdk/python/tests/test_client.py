"""The client against a real `ztinfra serve`, and against services that misbehave: whatever
goes wrong, nothing reads as allowed."""

import asyncio
import base64
import dataclasses
import http.server
import json
import socket
import subprocess
import threading

import pytest
from conftest import ROOT, ZTINFRA, closed_port_url

from ztinfra import AsyncClient, Client, Decision, ProblemError, ToolGuard, UnavailableError, arguments_digest
from ztinfra.evidence import VerificationError, verify_receipt


def agent(service, **lineage):
    session = Client(service.base, service.broker).start_session("billing-bot", on_behalf_of="dana", **lineage)
    return session, Client(service.base, session.access_token)


def test_the_three_outcomes_typed_with_their_evidence(langgraph_service):
    session, client = agent(langgraph_service, workflow="refunds")
    assert session.spiffe_id.startswith("spiffe://") and session.session_id in session.spiffe_id
    assert "access_token" not in repr(session) and session.access_token not in repr(client)

    read = client.decide("billing.read_invoice", "inv-7")
    assert read.allowed and read.decision == "allow"
    assert [(r.kind, r.policy) for r in read.reasons] == [("permit", "billing-reads")]
    assert read.evidence is not None and read.evidence.seq > 0 and len(read.evidence.hash) == 64
    record = langgraph_service.record(read.evidence.seq)
    assert record["decision_id"] == read.decision_id and record["request"]["context"]["session"]["workflow"] == "refunds"

    delete = client.decide("billing.delete_invoice", "inv-7")
    assert not delete.allowed and delete.decision == "deny" and delete.reasons[0].kind == "default_deny"
    assert "deny by default" in delete.message

    refund = client.decide("billing.refund_invoice", "inv-7", {"ticket": "FIN-1"})
    assert not refund.allowed and refund.decision == "approval_required"
    assert refund.approval.status == "pending" and refund.approval.group == "finance"
    assert refund.approval_id == refund.reasons[0].approval
    # Presenting it before anyone answered: still waiting.
    assert client.decide("billing.refund_invoice", "inv-7", {"ticket": "FIN-1"},
                         approval=refund.approval_id).decision == "approval_required"

    # The agent waits for the answer (a long poll) while an approver answers.
    threading.Timer(0.5, langgraph_service.answer, args=(refund.approval_id,)).start()
    approval = client.approval(refund.approval_id, wait=10)
    assert approval.status == "approved" and approval.reason == "checked with the customer"
    assert approval.request["action"] == "billing.refund_invoice"

    used = client.decide("billing.refund_invoice", "inv-7", {"ticket": "FIN-1"}, approval=refund.approval_id)
    assert used.allowed and used.reasons[0].kind == "approval"
    again = client.decide("billing.refund_invoice", "inv-7", {"ticket": "FIN-1"}, approval=refund.approval_id)
    assert not again.allowed and "used already" in again.message


def test_refusals_are_problems_with_their_details(langgraph_service):
    with pytest.raises(ProblemError) as unauthenticated:
        Client(langgraph_service.base, "not-a-token").decide("billing.read_invoice", "inv-7")
    assert unauthenticated.value.status == 401 and unauthenticated.value.type.startswith("urn:zt-infra:problem:")
    _, client = agent(langgraph_service)
    with pytest.raises(ProblemError) as invalid:
        client.decide("billing.read_invoice", "inv-7", {"amount": 1.5})  # Cedar has no floats
    assert invalid.value.status == 400 and invalid.value.detail
    with pytest.raises(ValueError):
        client.decide("", "inv-7")


def test_a_tool_guard_names_the_call_and_presents_an_approval_once_approved(langgraph_service):
    _, client = agent(langgraph_service)
    guard = ToolGuard(client, namespace="billing", resource="invoice_id", context={"channel": "chat"})
    args = {"invoice_id": "inv-7", "amount": 120.0}
    assert guard.request("refund_invoice", args) == {
        "action": "billing.refund_invoice", "resource": "inv-7",
        "context": {"channel": "chat", "tool": {"name": "refund_invoice", "arguments_sha256": arguments_digest(args)}},
    }
    assert guard.request("list_invoices", {})["resource"] == "tool/list_invoices"
    asked = guard.check("refund_invoice", args)
    assert asked.decision == "approval_required"
    langgraph_service.answer(asked.approval_id)
    # Without presenting: the same approval, approved now.
    assert guard.check("refund_invoice", args, present_approved=False).approval.status == "approved"
    # Another amount is another request: a new approval, not this one.
    other = guard.check("refund_invoice", {**args, "amount": 1000.0})
    assert other.decision == "approval_required" and other.approval_id != asked.approval_id
    used = guard.check("refund_invoice", args)
    assert used.allowed and used.reasons[0].approval == asked.approval_id
    record = langgraph_service.record(used.evidence.seq)
    assert record["request"]["context"]["tool"]["arguments_sha256"] == arguments_digest(args)


def test_the_async_client_gives_the_same_answers(langgraph_service):
    session, _ = agent(langgraph_service)

    async def run():
        async with AsyncClient(langgraph_service.base, session.access_token) as client:
            allow = await client.decide("billing.read_invoice", "inv-7")
            deny = await client.decide("billing.delete_invoice", "inv-7")
            batch = await client.decide_batch([
                {"action": "billing.read_invoice", "resource": "inv-1"},
                {"action": "billing.delete_invoice", "resource": "inv-1"},
            ])
            return allow, deny, batch

    allow, deny, batch = asyncio.run(run())
    assert allow.allowed and not deny.allowed
    assert [d.decision for d in batch] == ["allow", "deny"]


def test_authzen_evaluations_read_as_decisions(langgraph_service):
    pep = langgraph_service.credential("gateway", "pep")
    client = Client(langgraph_service.base, pep)
    allow = client.evaluate({"type": "Agent", "id": "billing-bot"}, "billing.read_invoice", {"type": "invoice", "id": "inv-7"})
    deny = client.evaluate({"type": "Agent", "id": "billing-bot"}, "billing.delete_invoice", {"type": "invoice", "id": "inv-7"})
    assert allow.allowed and allow.decision_id and allow.evidence is not None
    assert not deny.allowed and deny.decision == "deny" and deny.reasons


# Services that misbehave: a port nobody listens on, and a local HTTP server that answers what
# the test tells it to (counting the requests it was sent).

class Fake:
    def __init__(self, status, body, content_type="application/json", drop=False):
        self.hits = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def handle_one(self):
                fake.hits += 1
                self.rfile.read(int(self.headers.get("content-length") or 0))
                if drop:  # the request arrived; the connection dies before any answer
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = handle_one

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.server.shutdown()


@pytest.mark.parametrize("status, body", [
    (200, {"decision": "allow", "decision_id": "x", "reasons": []}),   # an allow without evidence
    (500, {"title": "internal"}),
    (200, b"<html>a proxy's page</html>"),
    (200, {"decision": "maybe", "reasons": []}),
    (200, {"decision": "allow", "reasons": "all good"}),
    (404, b"not json"),
])
def test_nothing_that_is_not_a_durable_allow_reads_as_allowed(status, body):
    with Fake(status, body) as fake:
        try:
            decision = Client(fake.url, "t", retries=0).decide("a.b", "r")
        except (UnavailableError, ProblemError):
            decision = None
        assert decision is None or not decision.allowed
        guarded = ToolGuard(Client(fake.url, "t", retries=0), namespace="a").check("b", {})
        assert not guarded.allowed and guarded.decision == "deny"


def test_no_service_is_a_deny_with_its_cause():
    client = Client(closed_port_url(), "t", retries=1, timeout=1)
    with pytest.raises(UnavailableError):
        client.decide("a.b", "r")
    decision = ToolGuard(client, namespace="a").check("b", {})
    assert not decision.allowed and decision.reasons[0].kind == "unavailable" and "ConnectError" in decision.message

    async def run():
        return await ToolGuard(aclient=AsyncClient(client.base_url, retries=0), namespace="a").acheck("b", {})

    assert asyncio.run(run()).reasons[0].kind == "unavailable"


def test_a_decision_that_may_have_been_made_is_not_asked_again_but_a_read_is():
    with Fake(200, {}, drop=True) as fake:
        with pytest.raises(UnavailableError):
            Client(fake.url, "t", retries=3).decide("a.b", "r")
        assert fake.hits == 1
        with pytest.raises(UnavailableError):
            Client(fake.url, "t", retries=3).get("/v1/evidence/1")
        assert fake.hits == 1 + 4
    with Fake(503, {"title": "shutting down"}) as fake:
        with pytest.raises(UnavailableError):
            Client(fake.url, "t", retries=2).decide("a.b", "r")
        assert fake.hits == 1
        with pytest.raises(UnavailableError):
            Client(fake.url, "t", retries=2).approval("01a23da1-4793-7727-841a-ce9e03a53c71")
        assert fake.hits == 1 + 3


def test_the_unavailable_decision_is_a_deny():
    decision = Decision.unavailable("timed out")
    assert decision.decision == "deny" and not decision.allowed and decision.decision_id is None


@pytest.mark.parametrize("example", ["langgraph", "openai-agents", "a2a"])
def test_the_examples_policies_pass_their_own_tests(example):
    checked = subprocess.run([ZTINFRA, "policy", "check", str(ROOT / "examples" / example)],
                             capture_output=True, text=True)
    assert checked.returncode == 0 and "0 failed" in checked.stdout, checked.stdout + checked.stderr


def test_a_receipt_verifies_against_the_log_keys_and_a_forged_one_does_not(langgraph_service):
    _, client = agent(langgraph_service)
    decision = client.decide("billing.read_invoice", "inv-7")
    auditor = Client(langgraph_service.base, langgraph_service.auditor)
    keys = subprocess.run([ZTINFRA, "keys", "export", "--data-dir", str(langgraph_service.data)],
                          check=True, capture_output=True, text=True).stdout
    verified = verify_receipt(auditor, decision, keys)
    assert (verified.log, verified.seq) == (decision.evidence.log, decision.evidence.seq)
    assert verified.tree_size > decision.evidence.seq and verified.key_id
    assert verify_receipt(auditor, decision).seq == decision.evidence.seq  # the served keys

    forged = dataclasses.replace(decision, evidence=dataclasses.replace(decision.evidence, hash="00" * 32))
    with pytest.raises(VerificationError, match="does not match the receipt's hash"):
        verify_receipt(auditor, forged, keys)
    other = dataclasses.replace(decision, decision_id="01a23dc3-cfa5-742c-990d-e1dbc41d843a")
    with pytest.raises(VerificationError, match="another decision"):
        verify_receipt(auditor, other, keys)
    # Keys that did not sign the checkpoint.
    ring = json.loads(keys)
    ring = ring[0] if isinstance(ring, list) else ring
    foreign = {**ring, "keys": [{"key_id": "0" * 16, "public_key": base64.b64encode(bytes(32)).decode()}]}
    with pytest.raises(VerificationError, match="not signed by any of the given keys"):
        verify_receipt(auditor, decision, foreign)
