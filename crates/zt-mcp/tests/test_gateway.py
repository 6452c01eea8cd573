"""End-to-end tests of `ztinfra mcp-gateway` with parts this project did not write.

The client is the official Python MCP SDK; the upstream servers are real MCP servers from the
registries: `mcp-server-time` (PyPI, stdio), `@modelcontextprotocol/server-filesystem` (npm,
stdio) and `@modelcontextprotocol/server-everything` (npm, streamable HTTP). The gateway binary
is the one `cargo build` made. `scripts/test.sh` installs the pinned peers and runs this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

ROOT = Path(__file__).resolve().parents[3]
PEERS = Path(__file__).resolve().parent / "peers"
ZTINFRA = Path(os.environ.get("ZTINFRA_BIN", ROOT / "target" / "debug" / "ztinfra"))
POLICIES = ROOT / "examples" / "mcp" / "policies"
NODE_BIN = PEERS / "node_modules" / ".bin"

# A test token (never a real credential) and the actor the gateway config maps it to.
TEST_TOKEN = "zt-test-token-not-a-secret"
TEST_TOKEN_SHA256 = hashlib.sha256(TEST_TOKEN.encode()).hexdigest()

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def gateway_params(tmp_path: Path, *extra: str, command: list[str] | None = None, env: dict | None = None):
    """A stdio gateway in front of `command`, deciding in process with the example policies."""
    args = ["mcp-gateway", "--policies", str(POLICIES), "--data-dir", str(tmp_path / "data"), *extra]
    if command is not None:
        args += ["--", *command]
    return StdioServerParameters(command=str(ZTINFRA), args=args, env={**os.environ, **(env or {})})


TIME_SERVER = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]


def fs_config(tmp_path: Path, root: Path, **top: str) -> Path:
    """A gateway config for the filesystem server: `write_file` acts on its `path`."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    lines += [
        "[[server]]",
        'name = "fs"',
        f"command = {json.dumps([str(NODE_BIN / 'mcp-server-filesystem'), str(root)])}",
        'tools.write_file.resource = "/path"',
        'tools.read_text_file.resource = "/path"',
        "[[client]]",
        f'token_sha256 = "{TEST_TOKEN_SHA256}"',
        'actor = "demo-agent"',
    ]
    path = tmp_path / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def export_and_verify(data_dir: Path) -> list[dict]:
    """Exports the gateway's evidence log, verifies it offline, and returns its records."""
    keys = subprocess.run([ZTINFRA, "keys", "export", "--data-dir", data_dir], check=True, capture_output=True, text=True)
    (data_dir / "keys.json").write_text(keys.stdout)
    export = data_dir / "log.jsonl"
    subprocess.run([ZTINFRA, "evidence", "export", "--data-dir", data_dir, "-o", export], check=True, capture_output=True)
    verdict = subprocess.run(
        [ZTINFRA, "evidence", "verify", export, "--keys", data_dir / "keys.json"], capture_output=True, text=True
    )
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    lines = [json.loads(line) for line in export.read_text().splitlines() if line.strip()]
    return [line["record"] for line in lines if line["type"] == "record"]


def text_of(result) -> str:
    return "\n".join(block.text for block in result.content if getattr(block, "text", None) is not None)


async def test_stdio_allows_denies_hides_and_leaves_verifiable_evidence(tmp_path):
    params = gateway_params(tmp_path, "--server-name", "time", "--actor", "demo-agent", command=TIME_SERVER)
    async with Client(params) as client:
        tools = [t.name for t in (await client.list_tools()).tools]
        # convert_time exists upstream, but no policy could ever permit it: hidden.
        assert tools == ["get_current_time"]

        allowed = await client.call_tool("get_current_time", {"timezone": "Europe/Paris"})
        assert not allowed.is_error
        answer = json.loads(text_of(allowed))
        assert answer["timezone"] == "Europe/Paris"
        assert answer["datetime"].endswith(("+01:00", "+02:00"))

        denied = await client.call_tool(
            "convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
        )
        assert denied.is_error
        decision = denied.structured_content
        assert decision["decision"] == "deny"
        assert decision["action"] == "mcp.time.convert_time"
        assert decision["reasons"][0]["kind"] == "default_deny"
        assert "denied by policy" in text_of(denied)
        assert decision["decision_id"] in text_of(denied)
        seq = decision["evidence"]["seq"]

    records = export_and_verify(tmp_path / "data")
    assert [r["request"]["action"] for r in records] == ["mcp.time.get_current_time", "mcp.time.convert_time"]
    assert [r["decision"] for r in records] == ["allow", "deny"]
    # The denied call's record holds its request, with the digest of its (canonical) arguments.
    record = records[seq]
    assert record["decision_id"] == decision["decision_id"]
    assert record["request"]["actor"] == "demo-agent"
    digest = hashlib.sha256(b'{"source_timezone":"UTC","target_timezone":"Asia/Tokyo","time":"12:00"}').hexdigest()
    assert record["request"]["context"]["mcp"]["arguments_sha256"] == digest


async def test_annotate_mode_lists_never_allowed_tools_marked(tmp_path):
    params = gateway_params(
        tmp_path, "--server-name", "time", "--actor", "demo-agent", "--tools-list", "annotate", command=TIME_SERVER
    )
    async with Client(params) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == {"get_current_time", "convert_time"}
        assert tools["convert_time"].description.startswith("[never allowed by policy")
        assert tools["convert_time"].meta["io.zt-infra/could-allow"] is False
        assert not (tools["get_current_time"].meta or {}).get("io.zt-infra/could-allow") is False


async def test_a_denied_call_never_reaches_the_server(tmp_path):
    root = tmp_path / "files"
    (root / "scratch").mkdir(parents=True)
    (root / "notes.txt").write_text("hello from the test\n")
    params = gateway_params(tmp_path, "--config", str(fs_config(tmp_path, root, actor="demo-agent")))
    async with Client(params) as client:
        read = await client.call_tool("read_text_file", {"path": str(root / "notes.txt")})
        assert not read.is_error, text_of(read)
        assert "hello from the test" in text_of(read)

        # Allowed: under scratch/, the server writes the file.
        ok = await client.call_tool("write_file", {"path": str(root / "scratch" / "a.txt"), "content": "allowed"})
        assert not ok.is_error, text_of(ok)
        assert (root / "scratch" / "a.txt").read_text() == "allowed"

        # Denied: elsewhere, and the file never appears.
        target = root / "outside.txt"
        denied = await client.call_tool("write_file", {"path": str(target), "content": "must not be written"})
        assert denied.is_error
        assert denied.structured_content["decision"] == "deny"
        assert denied.structured_content["resource"] == str(target)
        assert not target.exists()

        # Malformed: the mapped argument is missing: JSON-RPC invalid params, nothing written.
        with pytest.raises(MCPError) as error:
            await client.call_tool("write_file", {"content": "no path"})
        assert error.value.error.code == -32602
        assert "/path" in error.value.error.message

        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"read_text_file", "write_file", "list_directory"} <= tools
        assert "move_file" not in tools and "create_directory" not in tools


async def test_session_token_on_stdio_picks_the_actor(tmp_path):
    root = tmp_path / "files"
    (root / "scratch").mkdir(parents=True)
    # No configured actor: the token stands for demo-agent, the only one allowed to write.
    config = fs_config(tmp_path, root)
    params = gateway_params(tmp_path, "--config", str(config), env={"ZTINFRA_SESSION_TOKEN": TEST_TOKEN})
    async with Client(params) as client:
        ok = await client.call_tool("write_file", {"path": str(root / "scratch" / "t.txt"), "content": "x"})
        assert not ok.is_error, text_of(ok)
    # An unknown token: the gateway refuses to start, and says why.
    started = subprocess.run(
        [ZTINFRA, "mcp-gateway", "--config", config, "--policies", POLICIES, "--data-dir", tmp_path / "d2"],
        env={**os.environ, "ZTINFRA_SESSION_TOKEN": "wrong"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode != 0
    assert "ZTINFRA_SESSION_TOKEN is neither an agent session token nor a configured client token" in started.stderr
    assert "wrong" not in started.stderr


async def test_the_upstream_server_does_not_see_the_gateways_secrets(tmp_path):
    # A policy set that lets one actor read the upstream's environment (server-everything's
    # get-env tool), run with a session token and a store URL in the gateway's environment.
    policies = tmp_path / "policies"
    policies.mkdir()
    for file in POLICIES.iterdir():
        (policies / file.name).write_text(file.read_text())
    (policies / "env.cedar").write_text(
        'permit(principal == Agent::"demo-agent", action == Action::"mcp.everything.get-env", resource);\n'
    )
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[[server]]
name = "everything"
command = [{json.dumps(str(NODE_BIN / "mcp-server-everything"))}, "stdio"]
[[client]]
token_sha256 = "{TEST_TOKEN_SHA256}"
actor = "demo-agent"
"""
    )
    params = StdioServerParameters(
        command=str(ZTINFRA),
        args=["mcp-gateway", "--config", str(config), "--policies", str(policies), "--data-dir", str(tmp_path / "d")],
        env={**os.environ, "ZTINFRA_SESSION_TOKEN": TEST_TOKEN, "ZTINFRA_LOG": "info", "VISIBLE_TO_TOOLS": "yes"},
    )
    async with Client(params) as client:
        result = await client.call_tool("get-env", {})
        assert not result.is_error, text_of(result)
        env = text_of(result)
        assert "VISIBLE_TO_TOOLS" in env
        assert TEST_TOKEN not in env
        assert "ZTINFRA_" not in env


async def test_resource_reads_pass_through_or_are_decided(tmp_path):
    everything = [str(NODE_BIN / "mcp-server-everything"), "stdio"]
    for decided in (False, True):
        flags = ["--server-name", "everything", "--actor", "demo-agent"]
        if decided:
            flags.append("--decide-resource-reads")
        data = tmp_path / ("decided" if decided else "open")
        params = gateway_params(data, *flags, command=everything)
        async with Client(params) as client:
            resources = (await client.list_resources()).resources
            assert resources, "server-everything lists resources"
            uri = str(resources[0].uri)
            if not decided:
                read = await client.read_resource(uri)
                assert read.contents and str(read.contents[0].uri) == uri
                continue
            # No policy permits mcp.everything.resources.read: denied, with the decision.
            with pytest.raises(MCPError) as error:
                await client.read_resource(uri)
            assert error.value.error.code == -32003
            assert "mcp.everything.resources.read" in error.value.error.message
            assert error.value.error.data["decision"] == "deny"
            assert error.value.error.data["resource"] == uri
        if decided:
            records = export_and_verify(data / "data")
            assert [(r["request"]["action"], r["request"]["resource"]) for r in records] == [
                ("mcp.everything.resources.read", uri)
            ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


@contextmanager
def running(args: list, port: int, env: dict | None = None):
    process = subprocess.Popen(
        [str(a) for a in args], env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_port(port, process)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def test_fail_closed_when_the_control_plane_is_down(tmp_path):
    root = tmp_path / "files"
    (root / "scratch").mkdir(parents=True)
    port = free_port()
    serve = [ZTINFRA, "serve", "--listen", f"127.0.0.1:{port}", "--policies", POLICIES, "--data-dir", tmp_path / "pdp"]
    # The service authenticates its callers (the default): the gateway presents a pep credential.
    made = subprocess.run(
        [ZTINFRA, "credentials", "add", "mcp-gateway", "--role", "pep", "--data-dir", tmp_path / "pdp"],
        check=True, capture_output=True, text=True,
    )
    token_file = tmp_path / "gateway.token"
    token_file.write_text(made.stdout)
    url = f"http://127.0.0.1:{port}"
    config = fs_config(tmp_path, root, actor="demo-agent", decide_url=url, decide_token_file=str(token_file))
    params = StdioServerParameters(command=str(ZTINFRA), args=["mcp-gateway", "--config", str(config)])
    (tmp_path / "anonymous").mkdir()
    anonymous = StdioServerParameters(
        command=str(ZTINFRA), args=["mcp-gateway", "--config", str(fs_config(tmp_path / "anonymous", root, actor="demo-agent", decide_url=url))]
    )
    with running(serve, port) as server:
        # A gateway without a credential gets no decision: denied, and told why.
        async with Client(anonymous) as client:
            refused = await client.call_tool("write_file", {"path": str(root / "scratch" / "anon.txt"), "content": "x"})
            assert refused.is_error
            assert "refused the gateway's credential or the agent's session (HTTP 401" in text_of(refused)
            assert not (root / "scratch" / "anon.txt").exists()
        async with Client(params) as client:
            ok = await client.call_tool("write_file", {"path": str(root / "scratch" / "up.txt"), "content": "pdp up"})
            assert not ok.is_error, text_of(ok)
            assert (root / "scratch" / "up.txt").read_text() == "pdp up"
            # The remote service says which tools could ever be allowed.
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"read_text_file", "write_file", "list_directory"} <= tools
            assert "move_file" not in tools

            server.send_signal(signal.SIGKILL)
            server.wait()
            # Without it, no tool could be: the list is empty.
            assert (await client.list_tools()).tools == []
            down = await client.call_tool("write_file", {"path": str(root / "scratch" / "down.txt"), "content": "pdp down"})
            assert down.is_error
            assert down.structured_content["decision"] == "deny"
            assert "no decision could be obtained" in text_of(down)
            assert not (root / "scratch" / "down.txt").exists()
    # The remote service's log holds the decision made while it was up, and verifies.
    records = export_and_verify(tmp_path / "pdp")
    assert [(r["request"]["action"], r["decision"]) for r in records] == [("mcp.fs.write_file", "allow")]
    # Each record names the enforcement point that asked.
    assert records[0]["caller"] == {"kind": "pep", "name": "mcp-gateway"}


def api(method: str, url: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    """One call to the decision service's API with a bearer credential."""
    answer = httpx2.request(method, url, headers={"authorization": f"Bearer {token}"}, json=body, timeout=10)
    return answer.status_code, answer.json()


async def test_a_real_agent_session_acts_through_the_gateway_until_revoked(tmp_path):
    root = tmp_path / "files"
    (root / "scratch").mkdir(parents=True)
    port = free_port()
    pdp = tmp_path / "pdp"
    serve = [ZTINFRA, "serve", "--listen", f"127.0.0.1:{port}", "--policies", POLICIES, "--data-dir", pdp]

    def cli(*args: str) -> str:
        return subprocess.run([ZTINFRA, *args, "--data-dir", pdp], check=True, capture_output=True, text=True).stdout.strip()

    (tmp_path / "gateway.token").write_text(cli("credentials", "add", "mcp-gateway", "--role", "pep"))
    broker = cli("credentials", "add", "launcher", "--role", "broker")
    base = f"http://127.0.0.1:{port}"
    # No `actor` in the config: the agent is the session's.
    config = fs_config(tmp_path, root, decide_url=base, decide_token_file=str(tmp_path / "gateway.token"))
    with running(serve, port):
        admin = (pdp / "admin.token").read_text().strip()
        assert api("POST", f"{base}/v1/agents", admin, {"name": "demo-agent", "owner": "team-sre"})[0] == 201
        status, session = api(
            "POST", f"{base}/v1/sessions", broker,
            {"agent": "demo-agent", "on_behalf_of": "alice", "lineage": {"model": "gpt-5", "sandbox": "sbx-1"}},
        )
        assert status == 201, session
        params = StdioServerParameters(
            command=str(ZTINFRA), args=["mcp-gateway", "--config", str(config)],
            env={**os.environ, "ZTINFRA_SESSION_TOKEN": session["access_token"]},
        )
        async with Client(params) as client:
            assert "write_file" in {t.name for t in (await client.list_tools()).tools}
            ok = await client.call_tool("write_file", {"path": str(root / "scratch" / "a.txt"), "content": "by a session"})
            assert not ok.is_error, text_of(ok)
            # Revoked while the gateway runs: its very next call is denied, and says why.
            assert api("POST", f"{base}/v1/sessions/{session['session_id']}/revoke", admin)[0] == 200
            denied = await client.call_tool("write_file", {"path": str(root / "scratch" / "b.txt"), "content": "revoked"})
            assert denied.is_error
            assert "was revoked" in text_of(denied), text_of(denied)
            assert not (root / "scratch" / "b.txt").exists()
    records = export_and_verify(pdp)
    # The session's start, the one call allowed, and the revocation: all on record, verified.
    assert [r.get("kind", r["decision"]) for r in records] == ["session.start", "allow", "session.revoke"]
    assert records[1]["caller"] == {"kind": "pep", "name": "mcp-gateway", "session": session["session_id"]}
    seen = records[1]["request"]["context"]["session"]
    assert seen["verified"] is True and seen["via"] == "mcp-gateway" and seen["on_behalf_of"] == "alice"


def canonical_sha256(arguments: dict) -> str:
    """SHA-256 of the RFC 8785 form of plain JSON arguments (strings, no numbers)."""
    return hashlib.sha256(json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


async def test_an_agent_executes_a_plan_through_the_gateway_step_by_step(tmp_path):
    root = tmp_path / "files"
    (root / "scratch").mkdir(parents=True)
    port = free_port()
    pdp = tmp_path / "pdp"
    serve = [ZTINFRA, "serve", "--listen", f"127.0.0.1:{port}", "--policies", POLICIES, "--data-dir", pdp]

    def cli(*args: str) -> str:
        return subprocess.run([ZTINFRA, *args, "--data-dir", pdp], check=True, capture_output=True, text=True).stdout.strip()

    (tmp_path / "gateway.token").write_text(cli("credentials", "add", "mcp-gateway", "--role", "pep"))
    broker = cli("credentials", "add", "launcher", "--role", "broker")
    base = f"http://127.0.0.1:{port}"
    config = fs_config(tmp_path, root, decide_url=base, decide_token_file=str(tmp_path / "gateway.token"))
    first = {"path": str(root / "scratch" / "1.txt"), "content": "step one"}
    second = {"path": str(root / "scratch" / "2.txt"), "content": "step two"}
    with running(serve, port):
        admin = (pdp / "admin.token").read_text().strip()
        for agent in ("demo-agent", "planner"):
            assert api("POST", f"{base}/v1/agents", admin, {"name": agent, "owner": "team-sre"})[0] == 201
        sessions = {
            agent: api("POST", f"{base}/v1/sessions", broker, {"agent": agent, "on_behalf_of": "alice"})[1]
            for agent in ("demo-agent", "planner")
        }
        executor = sessions["demo-agent"]
        steps = [
            {"action": "mcp.fs.write_file", "resource": args["path"], "arguments_sha256": canonical_sha256(args),
             "context": {"mcp": {"server": "fs", "tool": "write_file", "fields": {"path": args["path"]}}}}
            for args in (first, second)
        ]
        status, plan = api("POST", f"{base}/v1/plans", sessions["planner"]["access_token"],
                           {"executor": executor["session_id"], "steps": steps})
        assert status == 201 and plan["status"] == "accepted", plan
        params = StdioServerParameters(
            command=str(ZTINFRA), args=["mcp-gateway", "--config", str(config)],
            env={**os.environ, "ZTINFRA_SESSION_TOKEN": executor["access_token"], "ZTINFRA_PLAN": plan["plan"]},
        )
        async with Client(params) as client:
            # The second step first: it is not the next one.
            early = await client.call_tool("write_file", second)
            assert early.is_error and "is on" in text_of(early), text_of(early)
            # The first step with other content: other arguments.
            other = await client.call_tool("write_file", {**first, "content": "not the plan"})
            assert other.is_error and "other arguments" in text_of(other), text_of(other)
            ok = await client.call_tool("write_file", first)
            assert not ok.is_error, text_of(ok)
            # Now the second is next; the first again is not.
            again = await client.call_tool("write_file", first)
            assert again.is_error and "is on" in text_of(again), text_of(again)
            ok = await client.call_tool("write_file", second)
            assert not ok.is_error, text_of(ok)
            # Every step is used: nothing more runs under the plan.
            done = await client.call_tool("write_file", second)
            assert done.is_error and "used already" in text_of(done), text_of(done)
    assert (root / "scratch" / "1.txt").read_text() == "step one"
    assert (root / "scratch" / "2.txt").read_text() == "step two"
    records = export_and_verify(pdp)
    allowed = [r for r in records if r["decision"] == "allow" and r["request"].get("context", {}).get("plan")]
    # The two submission decisions and the two executions, each naming the plan and its step.
    assert [r["request"]["context"]["plan"]["step"] for r in allowed] == [0, 1, 0, 1]
    assert {r["request"]["context"]["plan"]["id"] for r in allowed} == {plan["plan"]}


async def test_a_call_that_needs_approval_runs_when_the_same_call_is_made_again_approved(tmp_path):
    root = tmp_path / "files"
    (root / "release").mkdir(parents=True)
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    (policies / "release.cedar").write_text(
        '@id("releases-need-sre") @approval("sre-oncall")\n'
        'permit(principal == Agent::"demo-agent", action == Action::"mcp.fs.write_file", resource)\n'
        'when { context has mcp && context.mcp has fields && context.mcp.fields has path'
        ' && context.mcp.fields.path like "*/release/*" };\n'
    )
    port = free_port()
    pdp = tmp_path / "pdp"
    settings = tmp_path / "ztinfra.toml"
    settings.write_text(f'data_dir = "{pdp}"\npolicies = "{policies}"\n'
                        '[approvals.groups.sre-oncall]\nmembers = ["alice"]\n')
    serve = [ZTINFRA, "serve", "--config", settings, "--listen", f"127.0.0.1:{port}", "--no-watch"]

    def cli(*args: str) -> str:
        return subprocess.run([ZTINFRA, *args, "--data-dir", pdp], check=True, capture_output=True, text=True).stdout.strip()

    (tmp_path / "gateway.token").write_text(cli("credentials", "add", "mcp-gateway", "--role", "pep"))
    broker = cli("credentials", "add", "launcher", "--role", "broker")
    alice = cli("credentials", "add", "alice", "--role", "approver")
    base = f"http://127.0.0.1:{port}"
    config = fs_config(tmp_path, root, decide_url=base, decide_token_file=str(tmp_path / "gateway.token"))
    release = {"path": str(root / "release" / "v2.txt"), "content": "ship it"}
    with running(serve, port):
        admin = (pdp / "admin.token").read_text().strip()
        assert api("POST", f"{base}/v1/agents", admin, {"name": "demo-agent", "owner": "team-sre"})[0] == 201
        session = api("POST", f"{base}/v1/sessions", broker, {"agent": "demo-agent", "on_behalf_of": "bob"})[1]
        params = StdioServerParameters(
            command=str(ZTINFRA), args=["mcp-gateway", "--config", str(config)],
            env={**os.environ, "ZTINFRA_SESSION_TOKEN": session["access_token"]},
        )
        async with Client(params) as client:
            waiting = await client.call_tool("write_file", release)
            assert waiting.is_error and "waits for a person's approval" in text_of(waiting), text_of(waiting)
            ticket = waiting.structured_content["approval"]
            assert waiting.structured_content["decision"] == "approval_required"
            assert ticket["status"] == "pending" and ticket["status_url"] == f"/v1/approvals/{ticket['id']}"
            assert not (root / "release" / "v2.txt").exists()
            # Made again before anyone answers: it still waits, for the same approval.
            again = await client.call_tool("write_file", release)
            assert again.is_error and again.structured_content["approval"]["id"] == ticket["id"]
            status, approved = api("POST", f"{base}/v1/approvals/{ticket['id']}/approve", alice,
                                   {"reason": "release v2 signed off"})
            assert status == 200 and approved["status"] == "approved", approved
            # Other arguments are another request: they wait for an approval of their own.
            other = await client.call_tool("write_file", {**release, "content": "something else"})
            assert other.is_error and other.structured_content["approval"]["id"] != ticket["id"]
            ok = await client.call_tool("write_file", release)
            assert not ok.is_error, text_of(ok)
            assert (root / "release" / "v2.txt").read_text() == "ship it"
            # Used once: the same call once more waits for a new approval.
            once_more = await client.call_tool("write_file", release)
            assert once_more.is_error and once_more.structured_content["approval"]["id"] != ticket["id"]
    records = export_and_verify(pdp)
    linked = [r for r in records if ticket["id"] in json.dumps(r)]
    assert [r.get("kind", r["decision"]) for r in linked] == [
        "approval_required", "approval_required", "approval.approve", "allow"], linked


def mint_svid(keys: Path, spiffe_id: str, out: Path) -> tuple[Path, Path]:
    """An X.509-SVID for `spiffe_id`, made by openssl with the service's own CA key."""
    key, csr, crt, ext = (out / f"svid.{x}" for x in ("key", "csr", "crt", "ext"))
    ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   f"extendedKeyUsage=clientAuth\nsubjectAltName=URI:{spiffe_id}\n")
    for command in (
        ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key],
        ["req", "-new", "-key", key, "-subj", "/O=test", "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", keys / "ca.crt", "-CAkey", keys / "ca.key", "-CAcreateserial",
         "-days", "1", "-extfile", ext, "-out", crt],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return crt, key


async def test_the_gateway_asks_over_mutual_tls_with_its_own_svid(tmp_path):
    root = tmp_path / "files"
    (root / "scratch").mkdir(parents=True)
    port = free_port()
    pdp = tmp_path / "pdp"
    for command in (["ca", "init"], ["ca", "server-cert", "--name", "127.0.0.1"]):
        subprocess.run([ZTINFRA, *command, "--data-dir", pdp], check=True, capture_output=True)
    keys = pdp / "keys"
    crt, key = mint_svid(keys, "spiffe://ztinfra.local/mcp-gateway", tmp_path)
    (tmp_path / "pdp.toml").write_text(
        f'tls_cert = "{keys}/server.crt"\ntls_key = "{keys}/server.key"\n[workloads]\n[[workloads.callers]]\n'
        'spiffe_id = "spiffe://ztinfra.local/mcp-gateway"\nname = "mcp-gateway"\nrole = "pep"\n'
    )
    serve = [ZTINFRA, "serve", "--config", tmp_path / "pdp.toml", "--listen", f"127.0.0.1:{port}",
             "--policies", POLICIES, "--data-dir", pdp]
    base = f"https://127.0.0.1:{port}"
    with running(serve, port):
        # No credential: the gateway's X.509-SVID is its identity.
        config = fs_config(tmp_path, root, actor="demo-agent", decide_url=base, decide_tls_ca=str(keys / "ca.crt"),
                           decide_tls_cert=str(crt), decide_tls_key=str(key))
        async with Client(StdioServerParameters(command=str(ZTINFRA), args=["mcp-gateway", "--config", str(config)])) as client:
            ok = await client.call_tool("write_file", {"path": str(root / "scratch" / "a.txt"), "content": "over mTLS"})
            assert not ok.is_error, text_of(ok)
        # Without its certificate it is nobody: every call is denied.
        (tmp_path / "anonymous").mkdir()
        config = fs_config(tmp_path / "anonymous", root, actor="demo-agent", decide_url=base,
                           decide_tls_ca=str(keys / "ca.crt"))
        async with Client(StdioServerParameters(command=str(ZTINFRA), args=["mcp-gateway", "--config", str(config)])) as client:
            denied = await client.call_tool("write_file", {"path": str(root / "scratch" / "b.txt"), "content": "no"})
            assert denied.is_error and not (root / "scratch" / "b.txt").exists()
    records = export_and_verify(pdp)
    assert [(r["request"]["action"], r["decision"]) for r in records] == [("mcp.fs.write_file", "allow")]
    assert records[0]["caller"] == {"kind": "pep", "name": "mcp-gateway", "spiffe_id": "spiffe://ztinfra.local/mcp-gateway"}


@asynccontextmanager
async def http_client(url: str, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with Client(streamable_http_client(url, http_client=create_mcp_http_client(headers=headers))) as client:
        yield client


async def test_streamable_http_clients_may_present_agent_session_tokens(tmp_path):
    root = tmp_path / "files"
    (root / "scratch").mkdir(parents=True)
    port, gateway_port = free_port(), free_port()
    pdp = tmp_path / "pdp"

    def cli(*args: str) -> str:
        return subprocess.run([ZTINFRA, *args, "--data-dir", pdp], check=True, capture_output=True, text=True).stdout.strip()

    (tmp_path / "gateway.token").write_text(cli("credentials", "add", "mcp-gateway", "--role", "pep"))
    broker = cli("credentials", "add", "launcher", "--role", "broker")
    base = f"http://127.0.0.1:{port}"
    config = fs_config(
        tmp_path, root, listen=f"127.0.0.1:{gateway_port}", decide_url=base,
        decide_token_file=str(tmp_path / "gateway.token"),
    )
    serve = [ZTINFRA, "serve", "--listen", f"127.0.0.1:{port}", "--policies", POLICIES, "--data-dir", pdp]
    with running(serve, port), running([ZTINFRA, "mcp-gateway", "--config", config], gateway_port):
        admin = (pdp / "admin.token").read_text().strip()
        assert api("POST", f"{base}/v1/agents", admin, {"name": "demo-agent", "owner": "team-sre"})[0] == 201
        status, session = api("POST", f"{base}/v1/sessions", broker, {"agent": "demo-agent", "on_behalf_of": "bob"})
        assert status == 201, session
        url = f"http://127.0.0.1:{gateway_port}/mcp/fs"
        async with http_client(url, session["access_token"]) as client:
            ok = await client.call_tool("write_file", {"path": str(root / "scratch" / "h.txt"), "content": "over http"})
            assert not ok.is_error, text_of(ok)
            assert api("POST", f"{base}/v1/sessions/{session['session_id']}/revoke", admin)[0] == 200
            # Revoked: the gateway's next request with it is refused before any decision.
            with pytest.raises(Exception):
                await client.call_tool("write_file", {"path": str(root / "scratch" / "i.txt"), "content": "no"})
        assert not (root / "scratch" / "i.txt").exists()
        async with httpx2.AsyncClient() as raw:
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
            response = await raw.post(url, json=body, headers={
                "Authorization": f"Bearer {session['access_token']}", "Accept": "application/json, text/event-stream",
            })
            assert response.status_code == 401
            assert 'error="invalid_token"' in response.headers["www-authenticate"]
    records = export_and_verify(pdp)
    decisions = [r for r in records if "kind" not in r]
    assert [r["caller"].get("session") for r in decisions] == [session["session_id"]]


async def test_streamable_http_gateway_in_front_of_a_streamable_http_server(tmp_path):
    upstream_port, gateway_port = free_port(), free_port()
    everything = [NODE_BIN / "mcp-server-everything", "streamableHttp"]
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
listen = "127.0.0.1:{gateway_port}"
policies = "{POLICIES}"
data_dir = "{tmp_path / 'data'}"
[[server]]
name = "everything"
url = "http://127.0.0.1:{upstream_port}/mcp"
[[client]]
token_sha256 = "{TEST_TOKEN_SHA256}"
actor = "demo-agent"
"""
    )
    with running(everything, upstream_port, env={"PORT": str(upstream_port)}):
        with running([ZTINFRA, "mcp-gateway", "--config", config], gateway_port):
            base = f"http://127.0.0.1:{gateway_port}"
            url = f"{base}/mcp/everything"

            # No token, or a wrong one: 401 with the challenge that names the metadata.
            async with httpx2.AsyncClient() as raw:
                body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
                for headers, error in [({}, None), ({"Authorization": "Bearer wrong"}, "invalid_token")]:
                    response = await raw.post(url, json=body, headers={**headers, "Accept": "application/json, text/event-stream"})
                    assert response.status_code == 401
                    challenge = response.headers["www-authenticate"]
                    assert f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp/everything"' in challenge
                    assert (error is None) == ("invalid_token" not in challenge)
                    assert response.headers["content-type"] == "application/problem+json"
                # A message that repeats a member name reads differently to different parsers:
                # refused before the SDK reads it.
                authorized = {"Authorization": f"Bearer {TEST_TOKEN}", "Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
                repeated = '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "name": "get-env", "arguments": {}}}'
                response = await raw.post(url, content=repeated, headers=authorized)
                assert response.status_code == 400
                assert response.json()["errors"][0]["pointer"] == "/params/name"
                # A foreign Host is refused (DNS rebinding).
                response = await raw.post(url, json=body, headers={**authorized, "Host": "attacker.example"})
                assert response.status_code in (400, 403, 421)
                metadata = (await raw.get(f"{base}/.well-known/oauth-protected-resource/mcp/everything")).json()
                assert metadata["resource"] == url
                assert metadata["bearer_methods_supported"] == ["header"]

            async with http_client(url, TEST_TOKEN) as client:
                tools = sorted(t.name for t in (await client.list_tools()).tools)
                assert tools == ["echo", "get-sum"]
                echoed = await client.call_tool("echo", {"message": "through the gateway"})
                assert not echoed.is_error
                assert "through the gateway" in text_of(echoed)
                total = await client.call_tool("get-sum", {"a": 2, "b": 40})
                assert "42" in text_of(total)
                denied = await client.call_tool("get-env", {})
                assert denied.is_error
                assert denied.structured_content["decision"] == "deny"
                assert denied.structured_content["action"] == "mcp.everything.get-env"
                # Resources pass through.
                resources = await client.list_resources()
                assert len(resources.resources) > 0
    records = export_and_verify(tmp_path / "data")
    assert [r["request"]["action"] for r in records] == [
        "mcp.everything.echo",
        "mcp.everything.get-sum",
        "mcp.everything.get-env",
    ]
    assert records[2]["decision_id"] == denied.structured_content["decision_id"]
    assert records[0]["request"]["actor"] == "demo-agent"
