"""A real `ztinfra serve` for the SDK's tests: on an example's policies and approver groups, in a
temporary data directory, with the credentials a walkthrough makes (a broker that starts agent
sessions, an approver, an auditor)."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]
ZTINFRA = os.environ.get("ZTINFRA_BIN", str(ROOT / "target/debug/ztinfra"))


class Service:
    def __init__(self, base: str, data: Path, example: Path):
        self.base, self.data, self.example = base, data, example
        self.admin = (data / "admin.token").read_text().strip()
        self.broker = self.credential("launcher", "broker")
        self.approver = self.credential("alice", "approver")
        self.auditor = self.credential("audit", "auditor")

    def credential(self, name: str, role: str) -> str:
        return subprocess.run(
            [ZTINFRA, "credentials", "add", name, "--role", role, "--data-dir", str(self.data)],
            check=True, capture_output=True, text=True,
        ).stdout.strip()

    def register(self, agent: str) -> None:
        response = httpx.post(f"{self.base}/v1/agents", json={"name": agent, "owner": "tests"},
                              headers={"authorization": f"Bearer {self.admin}"})
        assert response.status_code == 201, response.text

    def token_file(self, name: str) -> Path:
        """A file holding the credential `name` (`alice`: the approver), for the CLI."""
        path = self.data / f"{name}.token"
        path.write_text({"alice": self.approver, "launcher": self.broker, "audit": self.auditor}[name])
        path.chmod(0o600)
        return path

    def answer(self, approval: str, verdict: str = "approve", reason: str = "checked with the customer"):
        response = httpx.post(f"{self.base}/v1/approvals/{approval}/{verdict}", json={"reason": reason},
                              headers={"authorization": f"Bearer {self.approver}"})
        assert response.status_code == 200, response.text

    def pending(self) -> list[dict]:
        response = httpx.get(f"{self.base}/v1/approvals", params={"status": "pending"},
                             headers={"authorization": f"Bearer {self.approver}"})
        assert response.status_code == 200, response.text
        return response.json()["approvals"]

    def decided(self) -> list[str]:
        """The actions of the decisions on record, oldest first."""
        response = httpx.get(f"{self.base}/v1/evidence", params={"kind": "decision", "limit": "200"},
                             headers={"authorization": f"Bearer {self.auditor}"})
        assert response.status_code == 200, response.text
        found = sorted(response.json()["records"], key=lambda r: r["seq"])
        return [r["action"] for r in found]

    def record(self, seq: int) -> dict:
        response = httpx.get(f"{self.base}/v1/evidence/{seq}", headers={"authorization": f"Bearer {self.auditor}"})
        assert response.status_code == 200, response.text
        return response.json()["record"]


def walk_through(service: Service, example: str, reason: str) -> tuple[list[str], str, str]:
    """Runs `examples/<example>/agent.py` as its README walkthrough does: when it says it waits
    for an approval, the approver approves it with the CLI. The lines before that one, that
    line, and the rest of the output."""
    env = {**os.environ, "ZT_URL": service.base, "ZT_BROKER_TOKEN": service.broker}
    agent = subprocess.Popen([sys.executable, str(ROOT / "examples" / example / "agent.py")], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    before = []
    for line in agent.stdout:
        if line.startswith("waiting: "):
            break
        before.append(line)
    else:
        raise AssertionError(f"the example never waited for an approval: {before} {agent.stderr.read()}")
    approval = line.split("needs approval ")[1].split()[0]
    subprocess.run([ZTINFRA, "approvals", "approve", approval, "--reason", reason,
                    "--token-file", str(service.token_file("alice"))],
                   check=True, capture_output=True, env={**os.environ, "ZTINFRA_SERVER": service.base})
    out, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    return before, line, out


def closed_port_url() -> str:
    """A loopback URL nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@contextlib.contextmanager
def serve(tmp_path: Path, example: str):
    """`ztinfra serve` on `examples/<example>`: yields a `Service`, stops it after."""
    source = ROOT / "examples" / example
    workdir = tmp_path / example
    shutil.copytree(source, workdir, ignore=shutil.ignore_patterns(".zt", "*.token", "__pycache__"))
    config = workdir / "ztinfra.toml"
    server = subprocess.Popen(
        [ZTINFRA, "serve", "--config", str(config), "--listen", "127.0.0.1:0", "--no-watch"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = server.stdout.readline()
        assert line.startswith("ztinfra listening on "), line
        yield Service(line.removeprefix("ztinfra listening on ").strip(), workdir / ".zt", workdir)
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def langgraph_service(tmp_path):
    with serve(tmp_path, "langgraph") as service:
        service.register("billing-bot")
        yield service


@pytest.fixture
def agents_service(tmp_path):
    with serve(tmp_path, "openai-agents") as service:
        service.register("support-bot")
        yield service


@pytest.fixture
def a2a_service(tmp_path):
    with serve(tmp_path, "a2a") as service:
        service.register("orchestrator")
        service.register("intruder")
        yield service
