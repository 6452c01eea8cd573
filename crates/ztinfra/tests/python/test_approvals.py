"""Human approval: a permit marked `@approval` makes a decision `approval_required`; people of
the named group answer it; the agent's repeated request with the approval is allowed once, for
exactly that request and session, and every other use is a deny with its own reason. The
examples/approvals policies and group settings, a real `ztinfra serve` process.
"""

import contextlib
import hashlib
import hmac
import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import pytest
from ztclient import ROOT, ZTINFRA, call, serving

EXAMPLE = ROOT / "examples/approvals"
DROP = {"action": "db.tables.drop", "resource": "db://prod/orders", "context": {"ticket": "OPS-42"}}


class Service:
    def __init__(self, base, data, policies):
        self.base, self.data, self.policies = base, data, policies
        self.admin = (data / "admin.token").read_text().strip()
        self.broker = self.credential("launcher", "broker")
        self.auditor = self.credential("audit", "auditor")
        # alice and bob answer for sre-oncall; carol, dave and frank for security; mallory for
        # nobody; `ops-bot` is named like the agent (a party to its own requests).
        self.people = {name: self.credential(name, "approver")
                       for name in ("alice", "bob", "carol", "dave", "frank", "mallory", "ops-bot")}
        status, body = call("POST", f"{base}/v1/agents", self.admin, {"name": "ops-bot", "owner": "platform"})
        assert status == 201, body

    def credential(self, name, role):
        return subprocess.run(
            [ZTINFRA, "credentials", "add", name, "--role", role, "--data-dir", self.data],
            check=True, capture_output=True, text=True,
        ).stdout.strip()

    def session(self, on_behalf_of="frank"):
        status, body = call("POST", f"{self.base}/v1/sessions", self.broker,
                            {"agent": "ops-bot", "on_behalf_of": on_behalf_of})
        assert status == 201, body
        return body["access_token"]

    def decide(self, token, request, approval=None, path="/v1/decide"):
        headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
        if approval is not None:
            headers["zt-approval"] = approval
        req = urllib.request.Request(f"{self.base}{path}", data=json.dumps(request).encode(),
                                     headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def answer(self, who, approval, verdict="approve", reason="checked the ticket"):
        body = None if reason is None else {"reason": reason}
        return call("POST", f"{self.base}/v1/approvals/{approval}/{verdict}", self.people[who], body)

    def record(self, seq):
        status, body = call("GET", f"{self.base}/v1/evidence/{seq}", self.auditor)
        assert status == 200, body
        return body["record"]


@contextlib.contextmanager
def start(tmp_path, extra="", edit=lambda text: text):
    """`ztinfra serve` on the example's policies and groups (with `extra` config appended, and
    the config text passed through `edit`)."""
    policies = tmp_path / "policies"
    shutil.copytree(EXAMPLE, policies, ignore=shutil.ignore_patterns("*.toml", ".zt", ".gitignore"))
    # A short-lived approval, to see one expire.
    (policies / "quick.cedar").write_text(
        '@id("restart-quickly") @approval("sre-oncall") @approval_ttl("2s")\n'
        'permit (principal == Agent::"ops-bot", action == Action::"svc.restart", resource);\n'
        # A policy that reads `context.behaviour`, so that requests carry it: an approval is
        # bound to the request without it (it changes from one try to the next).
        '@id("no-storms") forbid (principal, action, resource)\n'
        'when { context has behaviour && context.behaviour.rate_last_minute > 100000 };\n'
    )
    config = tmp_path / "ztinfra.toml"
    config.write_text((EXAMPLE / "ztinfra.toml").read_text()
                      .replace('data_dir = ".zt"', f'data_dir = "{tmp_path / "data"}"')
                      .replace('policies = "."', f'policies = "{policies}"')
                      .replace('"carol", "dave", "erin"', '"carol", "dave", "frank"')
                      .replace('"alice", "bob"', '"alice", "bob", "ops-bot"') + extra)
    config.write_text(edit(config.read_text()))
    with serving(config) as base:
        yield Service(base, tmp_path / "data", policies)


@pytest.fixture
def service(tmp_path):
    with start(tmp_path) as service:
        yield service


def reason(answer):
    assert answer["decision"] == "deny", answer
    return answer["reasons"][0]["message"]


def test_an_approved_action_is_allowed_once_for_exactly_its_request(service):
    token = service.session()
    status, asked = service.decide(token, DROP)
    assert status == 200 and asked["decision"] == "approval_required", asked
    ticket = asked["approval"]
    aid = ticket["id"]
    assert (ticket["status"], ticket["group"], ticket["needed"]) == ("pending", "sre-oncall", 1)
    assert asked["reasons"][0] == {**asked["reasons"][0], "kind": "approval", "policy": "drop-needs-sre", "approval": aid}
    # Asking again names the same approval; presenting it before it is answered still waits.
    assert service.decide(token, DROP)[1]["approval"]["id"] == aid
    assert service.decide(token, DROP, aid)[1]["decision"] == "approval_required"

    # What the approver sees: the request as decided, with the session the service bound.
    status, shown = call("GET", f"{service.base}/v1/approvals/{aid}", service.people["alice"])
    assert status == 200 and shown["status"] == "pending", shown
    assert shown["request"]["context"]["session"]["on_behalf_of"] == "frank"
    assert shown["request"]["context"]["ticket"] == "OPS-42" and shown["policy"] == "drop-needs-sre"

    # Who may not answer: outside the group, the agent itself, an auditor, no reason.
    status, body = service.answer("mallory", aid)
    assert status == 403 and "not an approver of group `sre-oncall`" in body["detail"], body
    status, body = service.answer("ops-bot", aid)
    assert status == 403 and "a party to the request" in body["detail"], body
    status, body = call("POST", f"{service.base}/v1/approvals/{aid}/approve", service.auditor, {"reason": "x"})
    assert status == 403, body
    status, body = service.answer("alice", aid, reason=" ")
    assert status == 400 and "reason" in body["detail"], body

    # The agent waits for the answer (long poll) while alice approves.
    waited = {}
    waiter = threading.Thread(target=lambda: waited.update(
        zip(("status", "body"), call("GET", f"{service.base}/v1/approvals/{aid}?wait=20s", token))))
    waiter.start()
    time.sleep(0.5)
    status, approved = service.answer("alice", aid, reason="OPS-42: orders archived")
    assert status == 200 and approved["status"] == "approved", approved
    waiter.join(timeout=15)
    assert waited["status"] == 200 and waited["body"]["status"] == "approved", waited
    status, body = service.answer("bob", aid)
    assert status == 409 and "approved already" in body["detail"], body
    status, body = service.answer("alice", aid, "deny")
    assert status == 409, body

    # Another session, changed context: each denied with its reason, the approval kept.
    other = service.session()
    assert "another session" in reason(service.decide(other, DROP, aid)[1])
    changed = {**DROP, "context": {"ticket": "OPS-43"}}
    assert "another request" in reason(service.decide(token, changed, aid)[1])
    # The retry: allowed once; the next one is denied naming the decision that used it.
    status, allowed = service.decide(token, DROP, aid)
    assert allowed["decision"] == "allow", allowed
    assert allowed["reasons"][0]["approval"] == aid and "approved by alice" in allowed["reasons"][0]["message"]
    again = reason(service.decide(token, DROP, aid)[1])
    assert "used already" in again and allowed["decision_id"] in again

    # The evidence links the request, the answer and the use by the approval id.
    asking = service.record(asked["evidence"]["seq"])
    assert asking["decision"] == "approval_required" and asking["reasons"][0]["approval"] == aid
    used = service.record(allowed["evidence"]["seq"])
    assert used["decision"] == "allow" and used["reasons"][0]["approval"] == aid
    answers = [service.record(seq) for seq in range(asked["evidence"]["seq"], allowed["evidence"]["seq"])]
    approvals = [r for r in answers if r.get("kind") == "approval.approve"]
    assert len(approvals) == 1 and approvals[0]["request"]["approval"] == aid, answers
    assert approvals[0]["caller"]["name"] == "alice" and approvals[0]["request"]["reason"] == "OPS-42: orders archived"
    status, shown = call("GET", f"{service.base}/v1/approvals/{aid}", service.auditor)
    assert shown["used_by"] == allowed["decision_id"] and shown["answers"][0]["approver"] == "alice"


def test_four_eyes_denials_expiry_forbids_and_policy_changes(service):
    token = service.session(on_behalf_of="frank")
    iam = {"action": "iam.roles.attach", "resource": "role/admin", "context": {"user": "svc-ci"}}
    aid = service.decide(token, iam)[1]["approval"]["id"]
    # Four eyes: the person the session acts for may not approve; one person counts once.
    status, body = service.answer("frank", aid)
    assert status == 403 and "a party" in body["detail"], body
    status, first = service.answer("carol", aid)
    assert status == 200 and first["status"] == "pending" and first["approvals"] == 1, first
    assert service.answer("carol", aid)[0] == 409
    assert service.decide(token, iam, aid)[1]["decision"] == "approval_required"
    status, second = service.answer("dave", aid)
    assert second["status"] == "approved" and second["approvals"] == 2, second
    assert service.decide(token, iam, aid)[1]["decision"] == "allow"

    # A denial closes it: the retry is denied, and a later approval is refused.
    other = {**iam, "resource": "role/owner"}
    did = service.decide(token, other)[1]["approval"]["id"]
    assert service.answer("carol", did, "deny", "no owner roles for CI")[0] == 200
    assert "was denied" in reason(service.decide(token, other, did)[1])
    status, body = service.answer("dave", did)
    assert status == 409 and "denied already" in body["detail"], body
    status, listed = call("GET", f"{service.base}/v1/approvals?status=denied", service.auditor)
    assert [a["id"] for a in listed["approvals"]] == [did], listed

    # Expired: neither answered nor used.
    restart = {"action": "svc.restart", "resource": "svc://api"}
    eid = service.decide(token, restart)[1]["approval"]["id"]
    time.sleep(2.5)
    status, body = service.answer("alice", eid)
    assert status == 409 and "expired" in body["detail"], body
    assert "expired" in reason(service.decide(token, restart, eid)[1])
    status, listed = call("GET", f"{service.base}/v1/approvals?status=expired", service.people["bob"])
    assert eid in [a["id"] for a in listed["approvals"]], listed

    # A forbid wins, approval or not.
    audit = {"action": "db.tables.drop", "resource": "db://prod/audit_log"}
    status, answer = service.decide(token, audit)
    assert answer["decision"] == "deny" and answer["reasons"][0]["policy"] == "never-the-audit-tables"

    # The retry is decided by the policies active then: a forbid added meanwhile denies, and an
    # approval for a policy that no longer asks does not count.
    drop = {"action": "db.tables.drop", "resource": "db://prod/sessions"}
    aid = service.decide(token, drop)[1]["approval"]["id"]
    assert service.answer("bob", aid)[0] == 200
    freeze = service.policies / "freeze.cedar"
    freeze.write_text('@id("change-freeze") forbid (principal, action == Action::"db.tables.drop", resource);\n')
    assert call("POST", f"{service.base}/v1/policies/reload", service.admin)[0] == 200
    answer = service.decide(token, drop, aid)[1]
    assert answer["decision"] == "deny" and answer["reasons"][0]["policy"] == "change-freeze", answer
    freeze.unlink()
    text = (service.policies / "policies.cedar").read_text()
    (service.policies / "policies.cedar").write_text(text.replace('"drop-needs-sre"', '"drop-needs-two"')
                                                     .replace('@approval_ttl("15m")', '@approval_ttl("15m") @approvals_needed("2")'))
    assert call("POST", f"{service.base}/v1/policies/reload", service.admin)[0] == 200
    assert "does not ask" in reason(service.decide(token, drop, aid)[1])


def test_bad_input_and_the_other_interfaces(service):
    token = service.session()
    # Malformed and unknown ids.
    status, body = call("GET", f"{service.base}/v1/approvals/not-an-id", service.auditor)
    assert status == 400 and "not an approval id" in body["detail"], body
    unknown = "01a23adf-05a7-75a3-95a7-72f8cb35b151"
    assert call("GET", f"{service.base}/v1/approvals/{unknown}", service.auditor)[0] == 404
    assert service.answer("alice", unknown)[0] == 404
    assert "not known" in reason(service.decide(token, DROP, unknown)[1])
    status, body = service.decide(token, DROP, "nope")
    assert status == 400 and "ZT-Approval" in body["detail"], body
    for query in ("status=later", "limit=0", "limit=x", "color=red"):
        status, body = call("GET", f"{service.base}/v1/approvals?{query}", service.auditor)
        assert status == 400, (query, body)
    aid = service.decide(token, DROP)[1]["approval"]["id"]
    status, body = call("GET", f"{service.base}/v1/approvals/{aid}?wait=2h", service.auditor)
    assert status == 400 and "wait" in body["detail"], body
    status, body = service.answer("alice", aid, reason=None)
    assert status in (400, 415, 422), body
    # No credential, a pep, another session: nothing to see.
    assert call("GET", f"{service.base}/v1/approvals")[0] == 401
    assert call("GET", f"{service.base}/v1/approvals", token)[0] == 403
    assert call("GET", f"{service.base}/v1/approvals/{aid}", service.session())[0] == 404

    # AuthZEN and the reference contract have two outcomes: false / 403, with the approval.
    evaluation = {"subject": {"type": "Agent", "id": "ops-bot"}, "action": {"name": "db.tables.drop"},
                  "resource": {"type": "Resource", "id": "db://prod/orders"}, "context": {"ticket": "OPS-42"}}
    status, answer = service.decide(token, evaluation, path="/access/v1/evaluation")
    assert status == 200 and answer["decision"] is False, answer
    assert answer["context"]["approval_required"] is True and answer["context"]["approval"]["id"], answer
    status, answer = service.decide(token, DROP, path="/actions")
    assert status == 403 and answer["decision"] == "deny" and answer["ok"] is False, answer
    assert answer["context"]["approval"]["status"] == "pending", answer


def test_the_command_line_answers_and_decide_exits_3(service):
    env = {"ZTINFRA_SERVER": service.base, "PATH": "/usr/bin:/bin"}
    pep = service.credential("gate", "pep")
    ask = [ZTINFRA, "decide", "--actor", "ops-bot", "--action", "db.tables.drop", "--resource", "db://prod/users",
           "--token", pep]
    waiting = subprocess.run(ask, capture_output=True, text=True, env=env)
    assert waiting.returncode == 3, waiting
    assert "waits for approval" in waiting.stderr
    aid = waiting.stderr.split("--approval ")[1].split()[0]
    alice = service.data / "alice.token"
    alice.write_text(service.people["alice"])
    listed = subprocess.run([ZTINFRA, "approvals", "list", "--token-file", alice], capture_output=True, text=True, env=env)
    assert listed.returncode == 0 and aid in listed.stdout and "db://prod/users" in listed.stdout, listed
    shown = subprocess.run([ZTINFRA, "approvals", "show", aid, "--token-file", alice], capture_output=True, text=True, env=env)
    assert "asked by:     policy `drop-needs-sre`" in shown.stdout, shown
    approved = subprocess.run([ZTINFRA, "approvals", "approve", aid, "--reason", "users table is a copy",
                               "--token-file", alice], capture_output=True, text=True, env=env)
    assert approved.returncode == 0 and "approved now" in approved.stderr, approved
    again = subprocess.run([ZTINFRA, "approvals", "deny", aid, "--reason", "x", "--token-file", alice],
                           capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "409" in again.stderr, again
    assert subprocess.run(ask + ["--approval", aid], capture_output=True, env=env).returncode == 0
    assert subprocess.run(ask + ["--approval", aid], capture_output=True, env=env).returncode == 1


def test_a_plan_step_that_needs_approval_waits_for_it_then_runs_once(service):
    status, body = call("POST", f"{service.base}/v1/agents", service.admin, {"name": "planner", "owner": "platform"})
    assert status == 201, body
    status, planner = call("POST", f"{service.base}/v1/sessions", service.broker, {"agent": "planner", "on_behalf_of": "frank"})
    status, started = call("POST", f"{service.base}/v1/sessions", service.broker, {"agent": "ops-bot", "on_behalf_of": "frank"})
    assert status == 201, started
    executor, session_id = started["access_token"], started["session_id"]
    plan = {"executor": session_id, "steps": [
        {"action": "db.tables.read", "resource": "db://prod/orders"},
        {"action": "db.tables.drop", "resource": "db://prod/orders"},
    ]}
    status, submitted = call("POST", f"{service.base}/v1/plans", planner["access_token"], plan)
    assert status == 201 and submitted["status"] == "pending_approval", submitted
    assert [s["decision"] for s in submitted["steps"]] == ["allow", "approval_required"]
    ticket = submitted["steps"][1]["approval"]
    pid = submitted["plan"]

    def step(n, resource="db://prod/orders", action=None, token=executor):
        body = {"action": action or plan["steps"][n]["action"], "resource": resource}
        req = urllib.request.Request(f"{service.base}/v1/decide", data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json", "authorization": f"Bearer {token}",
                                              "zt-plan-step": f"{pid}/{n}"})
        with urllib.request.urlopen(req, timeout=10) as response:
            return json.loads(response.read())

    assert step(0)["decision"] == "allow"
    # Another session, or another resource, presenting the step is refused as a plan matter:
    # no approval is asked for what is not exactly the step.
    pending = len(call("GET", f"{service.base}/v1/approvals?status=pending", service.auditor)[1]["approvals"])
    wrong = step(1, token=service.session())
    assert wrong["decision"] == "deny" and wrong["reasons"][0]["kind"] == "plan" and "approval" not in wrong, wrong
    wrong = step(1, resource="db://prod/users")
    assert wrong["decision"] == "deny" and wrong["reasons"][0]["kind"] == "plan" and "approval" not in wrong, wrong
    assert len(call("GET", f"{service.base}/v1/approvals?status=pending", service.auditor)[1]["approvals"]) == pending
    # The step waits for the approval asked at submission (the same one, not a new one).
    waiting = step(1)
    assert waiting["decision"] == "approval_required" and waiting["approval"]["id"] == ticket["id"], waiting
    status, shown = call("GET", f"{service.base}/v1/approvals/{ticket['id']}", service.auditor)
    assert shown["session"] == session_id and shown["request"]["context"]["plan"] == {"id": pid, "step": 1}
    assert service.answer("bob", ticket["id"], reason="the drop in plan " + pid[:8])[0] == 200
    # Approved: the step is the capability, used once, without presenting the approval.
    done = step(1)
    assert done["decision"] == "allow" and done["reasons"][0]["approval"] == ticket["id"], done
    replay = step(1)
    assert replay["decision"] == "deny", replay
    assert "used already" in replay["reasons"][0]["message"], replay


CIBA = "urn:openid:params:grant-type:ciba"


def test_ciba_poll_mode_with_authlib(service):
    from authlib.integrations.httpx_client import OAuth2Client
    from authlib.common.errors import AuthlibBaseError

    status, metadata = call("GET", f"{service.base}/.well-known/oauth-authorization-server")
    assert CIBA in metadata["grant_types_supported"] and metadata["backchannel_token_delivery_modes_supported"] == ["poll"]
    endpoint, token_endpoint = metadata["backchannel_authentication_endpoint"], metadata["token_endpoint"]
    token = service.session()

    def client(bearer=token):
        return OAuth2Client(client_id="ops-bot", token_endpoint_auth_method="none",
                            headers={"authorization": f"Bearer {bearer}"} if bearer else None)

    def detail(action, resource, context=None):
        return json.dumps([{"type": "ztinfra_action", "actions": [action], "locations": [resource],
                            **({"context": context} if context is not None else {})}])

    def ask(action="db.tables.drop", resource="db://prod/orders", context=None, bearer=token, **extra):
        with client(bearer) as c:
            answer = c.request("POST", endpoint, withhold_token=True, data={
                "scope": "openid", "authorization_details": detail(action, resource, context), **extra})
            return answer.status_code, answer.json()

    def poll(auth_req_id, bearer=token):
        with client(bearer) as c:
            try:
                return c.fetch_token(token_endpoint, grant_type=CIBA, auth_req_id=auth_req_id)
            except AuthlibBaseError as e:
                return e.error

    status, asked = ask(context={"ticket": "OPS-42"}, binding_message="drop orders, ticket OPS-42")
    assert status == 200 and asked["interval"] == 2 and 0 < asked["expires_in"] <= 900, asked
    rid = asked["auth_req_id"]
    assert poll(rid) == "authorization_pending"
    assert poll(rid) == "slow_down"
    # The approver sees the binding message with the request.
    status, shown = call("GET", f"{service.base}/v1/approvals/{rid}", service.people["alice"])
    assert shown["note"] == "drop orders, ticket OPS-42" and shown["request"]["context"]["ticket"] == "OPS-42"
    assert service.answer("alice", rid, reason="matches OPS-42")[0] == 200
    time.sleep(2.1)
    issued = poll(rid)
    assert issued["token_type"] == "Bearer" and issued["authorization_details"][0]["actions"] == ["db.tables.drop"], issued
    approval_token = issued["access_token"]

    # The token is good for exactly that action, once, without presenting anything else.
    other = service.decide(approval_token, {**DROP, "resource": "db://prod/carts"})[1]
    assert other["decision"] == "deny" and "another request" in other["reasons"][0]["message"], other
    read = service.decide(approval_token, {"action": "db.tables.read", "resource": "db://prod/orders"})[1]
    assert read["decision"] == "deny" and "carries approval" in read["reasons"][0]["message"], read
    status, allowed = service.decide(approval_token, DROP)
    assert allowed["decision"] == "allow" and allowed["reasons"][0]["approval"] == rid, allowed
    assert "used already" in reason(service.decide(approval_token, DROP)[1])
    time.sleep(2.1)
    assert poll(rid) == "invalid_grant"

    # Denied, expired, and requests that are not the client's.
    status, other = ask(resource="db://prod/carts")
    assert service.answer("bob", other["auth_req_id"], "deny", "not today")[0] == 200
    assert poll(other["auth_req_id"]) == "access_denied"
    status, quick = ask(action="svc.restart", resource="svc://api")
    time.sleep(2.5)
    assert poll(quick["auth_req_id"]) == "expired_token"
    status, mine = ask(resource="db://prod/users")
    assert poll(mine["auth_req_id"], bearer=service.session()) == "invalid_grant"
    assert poll("01a23adf-05a7-75a3-95a7-72f8cb35b151") == "invalid_grant"
    assert poll(mine["auth_req_id"], bearer=None) == "invalid_client"

    # What is not a backchannel request.
    status, body = ask(bearer=None)
    assert status == 401 and body["error"] == "invalid_client", body
    status, body = ask(action="db.tables.read")
    assert status == 400 and "without a person's approval" in body["error_description"], body
    status, body = ask(resource="db://prod/audit_log")
    assert status == 403 and body["error"] == "access_denied", body
    status, body = ask(binding_message="x" * 300)
    assert status == 400 and body["error"] == "invalid_binding_message", body
    with client() as c:
        answer = c.request("POST", endpoint, withhold_token=True, data={"authorization_details": json.dumps([{"type": "other"}])})
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_request", answer.json()


# A test secret, not a real one.
WEBHOOK_SECRET = "test-webhook-secret-not-a-real-one-0123456789"


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver that checks deliveries as the README says: the HMAC-SHA256 signature
    over `<id>.<timestamp>.<body>`, a timestamp within 5 minutes, and each id once. It fails
    the first attempt it gets (503), to make the service retry."""

    def __init__(self):
        self.accepted, self.attempts, self.seen, self.failed_once = [], 0, set(), False
        super().__init__(("127.0.0.1", 0), ReceiverHandler)

    def check(self, headers, body: bytes):
        delivery, stamp, signed = (headers.get(h) for h in ("zt-webhook-id", "zt-webhook-timestamp", "zt-webhook-signature"))
        if not (delivery and stamp and signed):
            return 400
        expected = "v1=" + hmac.new(WEBHOOK_SECRET.encode(), f"{delivery}.{stamp}.".encode() + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signed):
            return 401
        if abs(time.time() - int(stamp)) > 300:
            return 401
        if delivery in self.seen:
            return 409
        self.seen.add(delivery)
        return 200


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        receiver = self.server
        receiver.attempts += 1
        if not receiver.failed_once:
            receiver.failed_once = True
            status = 503
        else:
            status = receiver.check(self.headers, body)
            if status == 200:
                receiver.accepted.append((dict(self.headers), body))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_new_approvals_are_posted_to_the_group_webhook_signed_and_retried(tmp_path):
    secret = tmp_path / "sre.secret"
    secret.write_text(WEBHOOK_SECRET)
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    port = receiver.server_address[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]

    def hooks(text):
        text = text.replace('members = ["alice", "bob", "ops-bot"]',
                            f'members = ["alice", "bob", "ops-bot"]\nwebhook = "http://127.0.0.1:{port}/hook"\n'
                            f'webhook_secret_file = "{secret}"', 1)
        # The security group's receiver is down: its approvals are asked all the same.
        return text.replace('members = ["carol", "dave", "frank"]',
                            f'members = ["carol", "dave", "frank"]\nwebhook = "http://127.0.0.1:{dead}/"\n'
                            f'webhook_secret_file = "{secret}"', 1)

    try:
        with start(tmp_path, edit=hooks) as service:
            token = service.session()
            iam = service.decide(token, {"action": "iam.roles.attach", "resource": "role/admin"})[1]
            assert iam["decision"] == "approval_required", iam
            asked = service.decide(token, DROP)[1]
            aid = asked["approval"]["id"]
            deadline = time.monotonic() + 15
            while not receiver.accepted and time.monotonic() < deadline:
                time.sleep(0.1)
            assert receiver.accepted, f"nothing delivered after {receiver.attempts} attempts"
            headers, body = receiver.accepted[0]
            assert receiver.attempts == 2  # the first failed (503) and was retried
            sent = json.loads(body)
            assert sent["type"] == "approval.requested" and sent["approval"]["id"] == aid
            assert sent["approval"]["group"] == "sre-oncall" and sent["approval"]["request"]["action"] == "db.tables.drop"
            assert sent["approval"]["status_url"] == f"/v1/approvals/{aid}"
            assert WEBHOOK_SECRET not in body.decode()

            # On the receiver: a forged signature, a replay, and an old timestamp are refused.
            def post(extra_headers, data=body):
                request = urllib.request.Request(f"http://127.0.0.1:{port}/hook", data=data, method="POST",
                                                 headers={"content-type": "application/json", **extra_headers})
                try:
                    with urllib.request.urlopen(request, timeout=5) as response:
                        return response.status
                except urllib.error.HTTPError as e:
                    return e.code

            names = ("zt-webhook-id", "zt-webhook-timestamp", "zt-webhook-signature")
            original = {name: headers.get(name) or headers.get(name.title()) for name in names}
            assert post(original) == 409
            forged = {**original, "zt-webhook-signature": "v1=" + "0" * 64}
            assert post(forged) == 401
            assert post(original, data=body.replace(b"db.tables.drop", b"db.tables.read")) == 401
            old = str(int(time.time()) - 3600)
            stale = {"zt-webhook-id": "fresh-id", "zt-webhook-timestamp": old,
                     "zt-webhook-signature": "v1=" + hmac.new(WEBHOOK_SECRET.encode(), f"fresh-id.{old}.".encode() + body,
                                                            hashlib.sha256).hexdigest()}
            assert post(stale) == 401
            # The approval itself is unchanged by any of it.
            assert call("GET", f"{service.base}/v1/approvals/{aid}", service.auditor)[1]["status"] == "pending"
    finally:
        receiver.shutdown()


def test_bad_webhook_settings_stop_the_start(tmp_path):
    short = tmp_path / "short.secret"
    short.write_text("too short")
    for setting, expected in [
        (f'webhook = "http://127.0.0.1:9/"\nwebhook_secret_file = "{short}"', "shorter than 32 bytes"),
        ('webhook = "http://127.0.0.1:9/"', "go together"),
        (f'webhook = "ftp://x/"\nwebhook_secret_file = "{short}"', "http:// or https://"),
    ]:
        config = tmp_path / "bad.toml"
        config.write_text(f'data_dir = "{tmp_path / "data"}"\npolicies = "{EXAMPLE}"\n'
                          f'[approvals.groups.sre-oncall]\nmembers = ["alice"]\n{setting}\n')
        done = subprocess.run([ZTINFRA, "serve", "--config", config, "--listen", "127.0.0.1:0"],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode != 0 and expected in done.stderr, (setting, done.stderr)


def test_policy_check_runs_approval_tests_and_refuses_bad_annotations(tmp_path):
    checked = subprocess.run([ZTINFRA, "policy", "check", EXAMPLE], capture_output=True, text=True)
    assert checked.returncode == 0 and "4 passed, 0 failed" in checked.stdout, checked.stdout + checked.stderr
    policies = tmp_path / "bad"
    shutil.copytree(EXAMPLE, policies, ignore=shutil.ignore_patterns("*.toml", ".zt", ".gitignore"))
    (policies / "bad.cedar").write_text('@id("x") @approval("sre") forbid (principal, action, resource);\n')
    refused = subprocess.run([ZTINFRA, "policy", "check", policies], capture_output=True, text=True)
    assert refused.returncode == 1 and "a forbid cannot be approved away" in refused.stdout + refused.stderr, refused
