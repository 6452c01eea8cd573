"""Behaviour as a decision input: the service hands policies what it observed of the agent and
its session (`context.behaviour`), policies hold a first delete for a person and quarantine a
probing session, an operator quarantines and releases, and what was observed outlives a
restart. The examples/behaviour policies and settings, a real `ztinfra serve` process; the
README walkthrough, scripted.
"""

import contextlib
import json
import shutil
import subprocess
import time
import urllib.request

import pytest
from ztclient import ROOT, ZTINFRA, call, serving

EXAMPLE = ROOT / "examples/behaviour"
PROBES = ["admin.users.list", "secrets.read", "iam.keys.create", "billing.export", "shell.exec"]


class Service:
    def __init__(self, base, data):
        self.base, self.data = base, data
        self.admin = (data / "admin.token").read_text().strip()

    def credential(self, name, role):
        return subprocess.run(
            [ZTINFRA, "credentials", "add", name, "--role", role, "--data-dir", self.data],
            check=True, capture_output=True, text=True,
        ).stdout.strip()

    def session(self, broker):
        status, body = call("POST", f"{self.base}/v1/sessions", broker, {"agent": "files-bot", "on_behalf_of": "dana"})
        assert status == 201, body
        return body

    def decide(self, token, action, resource, approval=None, context=None):
        headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
        if approval is not None:
            headers["zt-approval"] = approval
        body = {"action": action, "resource": resource, "context": context or {}}
        req = urllib.request.Request(f"{self.base}/v1/decide", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            return {"status": e.code, **json.loads(e.read())}

    def record(self, auditor, answer):
        status, body = call("GET", f"{self.base}/v1/evidence/{answer['evidence']['seq']}", auditor)
        assert status == 200, body
        return body["record"]

    def cli(self, *args, check=True):
        done = subprocess.run(
            [ZTINFRA, "agents", *args, "--server", self.base, "--data-dir", self.data],
            capture_output=True, text=True, timeout=30,
        )
        assert not check or done.returncode == 0, done
        return done


@contextlib.contextmanager
def start(tmp_path, extra=""):
    config = tmp_path / "ztinfra.toml"
    config.write_text((EXAMPLE / "ztinfra.toml").read_text()
                      .replace('data_dir = ".zt"', f'data_dir = "{tmp_path / "data"}"')
                      .replace('policies = "."', f'policies = "{EXAMPLE}"')
                      .replace("share_secs = 2", "share_secs = 1") + extra)
    with serving(config) as base:
        yield Service(base, tmp_path / "data")


def test_the_example_policies_pass_their_tests():
    done = subprocess.run([ZTINFRA, "policy", "check", EXAMPLE], capture_output=True, text=True)
    assert done.returncode == 0, done
    assert "policy tests: 6 passed, 0 failed" in done.stdout, done.stdout


def test_normal_work_first_delete_and_probing_quarantine(tmp_path):
    with start(tmp_path) as service:
        broker = service.credential("launcher", "broker")
        auditor = service.credential("audit", "auditor")
        alice = service.credential("alice", "approver")
        status, body = call("POST", f"{service.base}/v1/agents", service.admin,
                            {"name": "files-bot", "owner": "docs-team"})
        assert status == 201, body
        started = service.session(broker)
        token, session_id = started["access_token"], started["session_id"]

        # What the service observes cannot be sent.
        sent = service.decide(token, "files.read", "doc/1", context={"behaviour": {"novel_action": False}})
        assert sent["status"] == 400 and "set by the service" in json.dumps(sent), sent

        # Everyday work is allowed, and each record holds what the policies saw.
        first = service.decide(token, "files.read", "doc/1")
        assert first["decision"] == "allow", first
        seen = service.record(auditor, first)["request"]["context"]["behaviour"]
        assert seen["novel_action"] is True and seen["rate_last_minute"] == 0, seen
        assert seen["session_decisions"] == 0 and seen["session_age_s"] >= 0, seen
        second = service.decide(token, "files.read", "doc/2")
        seen = service.record(auditor, second)["request"]["context"]["behaviour"]
        assert seen["novel_action"] is False and seen["novel_resource_type"] is False, seen
        assert seen["rate_last_minute"] == 1 and seen["distinct_resources_recent"] == 1, seen
        assert seen["session_decisions"] == 1, seen
        assert service.decide(token, "files.write", "doc/3")["decision"] == "allow"

        # The first delete waits for the owner; approved, the agent's retry is allowed, and
        # from then on deletes are known.
        held = service.decide(token, "files.delete", "doc/3")
        assert held["decision"] == "approval_required", held
        assert held["reasons"][0]["policy"] == "first-delete", held
        approval = held["approval"]["id"]
        status, body = call("POST", f"{service.base}/v1/approvals/{approval}/approve", alice,
                            {"reason": "cleanup ticket DOC-7"})
        assert status == 200, body
        done = service.decide(token, "files.delete", "doc/3", approval=approval)
        assert done["decision"] == "allow", done
        assert service.decide(token, "files.delete", "doc/4")["decision"] == "allow"

        # Probing: five actions it never used, each denied by default ...
        for action in PROBES:
            denied = service.decide(token, action, "vault/root")
            assert denied["decision"] == "deny", denied
            assert denied["reasons"][0]["kind"] == "default_deny", denied
        # ... then a sixth: the probing forbid quarantines the session.
        caught = service.decide(token, "network.scan", "10.0.0.0/8")
        assert caught["decision"] == "deny", caught
        assert caught["reasons"][0]["policy"] == "probing", caught
        assert caught["reasons"][0]["quarantine"] == "session", caught
        seen = service.record(auditor, caught)["request"]["context"]["behaviour"]
        assert seen["denies_recent"] == 5 and seen["novel_action"] is True, seen
        assert seen["session_denies_recent"] == 5, seen

        # Its next action, allowed by policy, is denied: the session is held.
        held = service.decide(token, "files.read", "doc/1")
        assert held["decision"] == "deny", held
        assert held["reasons"][0]["kind"] == "quarantine", held
        assert held["reasons"][0]["quarantine"] == f"session:{session_id}", held
        # A child session it starts is held with it.
        status, child = call("POST", f"{service.base}/v1/sessions", token,
                             {"agent": "files-bot", "parent_session": session_id})
        assert status == 201, child
        assert service.decide(child["access_token"], "files.read", "doc/1")["reasons"][0]["kind"] == "quarantine"
        # Another session of the agent is not.
        other = service.session(broker)["access_token"]
        assert service.decide(other, "files.read", "doc/9")["decision"] == "allow"

        # The quarantine is on record, and listed.
        status, found = call("GET", f"{service.base}/v1/evidence?kind=quarantine.start", auditor)
        assert status == 200, found
        assert len(found["records"]) == 1, found
        listed = service.cli("quarantines").stdout
        assert f"session:{session_id}" in listed and "policy:probing" in listed, listed

        # What an auditor sees of the agent.
        status, view = call("GET", f"{service.base}/v1/agents/files-bot/behaviour", auditor)
        assert status == 200, view
        assert {"files.read", "files.write", "files.delete"} <= set(view["known_actions"]), view
        assert not set(PROBES) & set(view["known_actions"]), view
        assert view["denies_recent"] >= 8 and view["rate_last_minute"] >= 15, view
        status, _ = call("GET", f"{service.base}/v1/agents/files-bot/behaviour", token)
        assert status in (401, 403)

        # An operator releases the session: its work is allowed again.
        assert service.cli("release", "--session", session_id).returncode == 0
        assert service.decide(token, "files.read", "doc/1")["decision"] == "allow"
        assert service.cli("release", "--session", session_id, check=False).returncode != 0

        # An operator quarantines the whole agent: every session is held, then released.
        service.cli("quarantine", "files-bot", "--reason", "incident INC-12")
        held = service.decide(other, "files.read", "doc/9")
        assert held["reasons"][0]["kind"] == "quarantine" and "INC-12" in held["reasons"][0]["message"], held
        service.cli("release", "files-bot")
        assert service.decide(other, "files.read", "doc/9")["decision"] == "allow"
        status, found = call("GET", f"{service.base}/v1/evidence?kind=quarantine.release", auditor)
        assert len(found["records"]) == 2, found
        missing = service.cli("quarantine", "nobody-bot", check=False)
        assert missing.returncode != 0 and "no agent" in missing.stderr, missing


def test_a_burst_waits_for_the_owner(tmp_path):
    with start(tmp_path, extra='metrics_agents = ["files-bot"]\n') as service:
        broker = service.credential("launcher", "broker")
        call("POST", f"{service.base}/v1/agents", service.admin, {"name": "files-bot", "owner": "docs-team"})
        token = service.session(broker)["access_token"]
        # A new agent is measured against ten decisions a minute (min_baseline_per_hour = 600):
        # more than ten times that in a minute is a burst.
        answers = [service.decide(token, "files.read", f"doc/{i}")["decision"] for i in range(110)]
        assert answers[:100] == ["allow"] * 100, answers
        assert answers[-1] == "approval_required", answers
        # The agent named in `metrics_agents` has counters of its own; no other agent does.
        with urllib.request.urlopen(f"{service.base}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        counted = {line.split("{")[1].split("}")[0]: float(line.split()[-1])
                   for line in metrics.splitlines() if line.startswith("ztinfra_agent_decisions_total{")}
        by_decision = {labels.split('decision="')[1].split('"')[0]: n for labels, n in counted.items()}
        assert all('agent="files-bot"' in labels for labels in counted), counted
        assert by_decision["allow"] == answers.count("allow"), counted
        assert by_decision["approval_required"] == answers.count("approval_required"), counted
        # The number of tracked agents is brought up to date each `share_secs` (1 s here).
        deadline = time.monotonic() + 5
        while "ztinfra_behaviour_tracked_agents 1" not in metrics and time.monotonic() < deadline:
            time.sleep(0.2)
            with urllib.request.urlopen(f"{service.base}/metrics", timeout=10) as response:
                metrics = response.read().decode()
        assert "ztinfra_behaviour_tracked_agents 1" in metrics


def test_what_was_observed_outlives_a_restart(tmp_path):
    with start(tmp_path) as service:
        broker = service.credential("launcher", "broker")
        call("POST", f"{service.base}/v1/agents", service.admin, {"name": "files-bot", "owner": "docs-team"})
        token = service.session(broker)["access_token"]
        assert service.decide(token, "files.read", "doc/1")["decision"] == "allow"
        status, body = call("POST", f"{service.base}/v1/agents/files-bot/quarantine", service.admin,
                            {"reason": "kept across restarts"})
        assert status == 200, body
        # Written to the store every second (share_secs = 1 here).
        time.sleep(2.5)
    with start(tmp_path) as service:
        auditor = service.credential("audit", "auditor")
        status, view = call("GET", f"{service.base}/v1/agents/files-bot/behaviour", auditor)
        assert status == 200, view
        assert "files.read" in view["known_actions"], view
        assert view["quarantine"]["reason"] == "kept across restarts", view
        broker = service.credential("launcher2", "broker")
        token = service.session(broker)["access_token"]
        held = service.decide(token, "files.read", "doc/1")
        assert held["reasons"][0]["kind"] == "quarantine", held
        service.cli("release", "files-bot")
        allowed = service.decide(token, "files.read", "doc/1")
        assert allowed["decision"] == "allow", allowed
