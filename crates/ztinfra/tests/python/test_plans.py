"""Plan-then-Execute: a planner submits a plan, each step is decided at submission, and an
accepted plan's steps are single-use capabilities of its executor, used in order, for exactly
the step's action, resource and arguments. Every refusal is a deny with its own reason.
"""

import hashlib
import json
import subprocess
import urllib.request

import pytest
from ztclient import ROOT, ZTINFRA, call

POLICIES = ROOT / "examples/delegation"


class Service:
    def __init__(self, base, data):
        self.base = base
        self.admin = (data / "admin.token").read_text().strip()
        self.broker = self.credential(data, "launcher", "broker")
        self.auditor = self.credential(data, "audit", "auditor")
        for agent in ("planner", "executor"):
            status, body = call("POST", f"{base}/v1/agents", self.admin, {"name": agent, "owner": "team-ai"})
            assert status == 201, body

    @staticmethod
    def credential(data, name, role):
        return subprocess.run(
            [ZTINFRA, "credentials", "add", name, "--role", role, "--data-dir", data],
            check=True, capture_output=True, text=True,
        ).stdout.strip()

    def session(self, agent):
        status, body = call("POST", f"{self.base}/v1/sessions", self.broker, {"agent": agent, "on_behalf_of": "alice"})
        assert status == 201, body
        return body

    def submit(self, planner_token, plan):
        return call("POST", f"{self.base}/v1/plans", planner_token, plan)

    def step(self, token, step, action, resource, context=None):
        """A decision presenting a step capability; the status and answer."""
        body = json.dumps({"action": action, "resource": resource, "context": context or {}}).encode()
        headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
        if step is not None:
            headers["zt-plan-step"] = step
        request = urllib.request.Request(f"{self.base}/v1/decide", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture
def service(tmp_path):
    data = tmp_path / "data"
    server = subprocess.Popen(
        [ZTINFRA, "serve", "--listen", "127.0.0.1:0", "--policies", POLICIES, "--data-dir", data, "--no-watch"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = server.stdout.readline()
        assert line.startswith("ztinfra listening on "), line
        yield Service(line.removeprefix("ztinfra listening on ").strip(), data)
    finally:
        server.terminate()
        server.wait(timeout=10)


ARGS = hashlib.sha256(b'{"id":7}').hexdigest()


def three_steps(executor):
    return {
        "executor": executor,
        "steps": [
            {"action": "crm.invoices.read", "resource": "crm://invoices/2026-Q3/7", "arguments_sha256": ARGS},
            {"action": "crm.reports.write", "resource": "crm://reports/q3-summary"},
            {"action": "crm.mail.send", "resource": "mailto:cfo@example.com"},
        ],
    }


def denied(answer, fragment):
    assert answer["decision"] == "deny", answer
    assert answer["reasons"][0]["kind"] == "plan", answer
    assert fragment in answer["reasons"][0]["message"], answer


def test_a_plan_runs_step_by_step_once_and_in_order(service):
    planner = service.session("planner")
    executor = service.session("executor")
    token = executor["access_token"]
    status, plan = service.submit(planner["access_token"], three_steps(executor["session_id"]))
    assert status == 201 and plan["status"] == "accepted", plan
    assert [s["decision"] for s in plan["steps"]] == ["allow", "allow", "allow"]
    pid = plan["plan"]

    # The id is the SHA-256 of the canonical plan, which the record of its submission holds.
    status, shown = call("GET", f"{service.base}/v1/plans/{pid}", service.auditor)
    assert status == 200, shown
    assert hashlib.sha256(shown["canonical"].encode()).hexdigest() == pid
    canonical = json.loads(shown["canonical"])
    assert canonical["planner"] == planner["session_id"] and canonical["ordered"] is True
    status, record = call("GET", f"{service.base}/v1/evidence/{plan['evidence']['seq']}", service.auditor)
    assert record["record"]["kind"] == "plan.submit" and record["record"]["request"]["canonical"] == shown["canonical"]

    # Without the capability the executor may do nothing (the policies ask for a plan).
    status, answer = service.step(token, None, "crm.invoices.read", "crm://invoices/2026-Q3/7")
    assert answer["decision"] == "deny" and answer["reasons"][0]["kind"] == "default_deny", answer
    # Out of order.
    status, answer = service.step(token, f"{pid}/1", "crm.reports.write", "crm://reports/q3-summary")
    denied(answer, "waits for step 0")
    # Other arguments, then the right ones, then a replay.
    status, answer = service.step(token, f"{pid}/0", "crm.invoices.read", "crm://invoices/2026-Q3/7",
                                  {"arguments_sha256": hashlib.sha256(b'{"id":8}').hexdigest()})
    denied(answer, "other arguments")
    status, first = service.step(token, f"{pid}/0", "crm.invoices.read", "crm://invoices/2026-Q3/7",
                                 {"arguments_sha256": ARGS})
    assert first["decision"] == "allow", first
    status, answer = service.step(token, f"{pid}/0", "crm.invoices.read", "crm://invoices/2026-Q3/7",
                                  {"arguments_sha256": ARGS})
    denied(answer, "used already")
    assert first["decision_id"] in answer["reasons"][0]["message"]
    # Each step decision's record names the plan and the step.
    status, record = call("GET", f"{service.base}/v1/evidence/{first['evidence']['seq']}", service.auditor)
    assert record["record"]["request"]["context"]["plan"] == {"id": pid, "step": 0}

    # Another executor, another action, another resource: each its own deny.
    status, answer = service.step(planner["access_token"], f"{pid}/1", "crm.reports.write", "crm://reports/q3-summary")
    denied(answer, "for the executor session")
    status, answer = service.step(token, f"{pid}/1", "crm.reports.delete", "crm://reports/q3-summary")
    denied(answer, "is `crm.reports.write`")
    status, answer = service.step(token, f"{pid}/1", "crm.reports.write", "crm://reports/other")
    denied(answer, "is on `crm://reports/q3-summary`")
    status, answer = service.step(token, f"{pid}/1", "crm.reports.write", "crm://reports/q3-summary")
    assert answer["decision"] == "allow", answer
    # A step the plan does not have, and a plan altered by one digit.
    denied(service.step(token, f"{pid}/3", "crm.mail.send", "mailto:cfo@example.com")[1], "has 3 steps")
    altered = ("0" if pid[0] != "0" else "1") + pid[1:]
    denied(service.step(token, f"{altered}/2", "crm.mail.send", "mailto:cfo@example.com")[1], "no accepted plan")

    # Revoked meanwhile: the last step is void.
    status, _ = call("POST", f"{service.base}/v1/plans/{pid}/revoke", service.admin)
    assert status == 204
    denied(service.step(token, f"{pid}/2", "crm.mail.send", "mailto:cfo@example.com")[1], "revoked")
    status, shown = call("GET", f"{service.base}/v1/plans/{pid}", service.auditor)
    assert shown["revoked"] is True and [s["used"] for s in shown["steps"]] == [True, True, False]


def test_a_plan_with_a_denied_step_is_rejected_and_bad_plans_are_refused(service):
    planner = service.session("planner")
    executor = service.session("executor")
    plan = three_steps(executor["session_id"])
    plan["steps"].append({"action": "crm.invoices.delete", "resource": "crm://invoices/2026-Q3/7"})
    status, answer = service.submit(planner["access_token"], plan)
    assert status == 200 and answer["status"] == "rejected", answer
    last = answer["steps"][3]
    assert last["decision"] == "deny" and last["reasons"][0]["policy"] == "no-deletes-in-plans", last
    assert all(s["decision"] == "allow" for s in answer["steps"][:3])
    denied(service.step(executor["access_token"], f"{answer['plan']}/0", "crm.invoices.read",
                        "crm://invoices/2026-Q3/7", {"arguments_sha256": ARGS})[1], "no accepted plan")

    # The same accepted plan twice is one plan.
    good = three_steps(executor["session_id"])
    assert service.submit(planner["access_token"], good)[0] == 201
    status, body = service.submit(planner["access_token"], good)
    assert status == 409, body

    for bad, fragment in [
        ({"executor": executor["session_id"], "steps": []}, "1 to 64"),
        ({"steps": [{"action": "a.b", "resource": "r"}]}, "names no executor"),
        ({"executor": "0" * 32, "steps": [{"action": "a.b", "resource": "r"}]}, "not known"),
        ({"executor": executor["session_id"], "steps": [{"action": "a..b", "resource": "r"}]}, ""),
        ({"executor": executor["session_id"], "steps": [{"action": "a.b", "resource": "r", "arguments_sha256": "xyz"}]}, "64 hex"),
        ({"executor": executor["session_id"], "steps": [{"action": "a.b", "resource": "r", "context": {"plan": 1}}]}, "service sets"),
        ({"executor": executor["session_id"], "steps": [{"action": "a.b", "resource": "r", "extra": 1}]}, "extra"),
        ({"executor": executor["session_id"], "steps": [{"action": "a.b", "resource": "r"}], "ttl": 999999}, "outlive"),
    ]:
        status, body = service.submit(planner["access_token"], bad)
        assert status == 400, (bad, body)
        assert fragment in json.dumps(body), (fragment, body)
    # Only a session submits, with its own token.
    status, body = service.submit(service.broker, good)
    assert status in (401, 403), body
    # A malformed capability, and a `plan` sent in the context.
    status, body = service.step(executor["access_token"], "not-a-step", "a.b", "r")
    assert status == 400 and "ZT-Plan-Step" in body["detail"], body
    status, body = service.step(executor["access_token"], None, "a.b", "r", {"plan": {"id": "x", "step": 0}})
    assert status == 400 and "/context/plan" in json.dumps(body), body
