"""A2A (the real `a2a-sdk` from PyPI, pinned in tests/requirements.txt): the protected agent of
examples/a2a, served over JSON-RPC by the SDK's own request handler with its executor wrapped by
`GuardedAgentExecutor`, called by the SDK's own client; a real `ztinfra serve` decides."""

import asyncio
import importlib.util

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.helpers.proto_helpers import get_message_text
from a2a.types import GetTaskRequest, TaskState
from conftest import ROOT, closed_port_url, walk_through

from ztinfra import Client
from ztinfra.a2a import session_client_config

spec = importlib.util.spec_from_file_location("a2a_example", ROOT / "examples/a2a/agent.py")
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)


@pytest.fixture
def invoice_agent(a2a_service):
    example.InvoiceAgent.ran.clear()
    url, server = example.serve(a2a_service.base)
    yield url
    server.should_exit = True


def token(service, agent):
    return Client(service.base, service.broker).start_session(agent, on_behalf_of="dana").access_token


ENDED = (TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_REJECTED)


async def send(url, config, skill, text, until=ENDED):
    """Sends one message and polls its task until it is in one of the states `until`."""
    client = await create_client(url, client_config=config)
    try:
        task = None
        async for response in client.send_message(example.ask(skill, text)):
            task = response.task if response.HasField("task") else task
        return await poll(client, task, until)
    finally:
        await client.close()


async def poll(client, task, until=ENDED):
    for _ in range(100):
        if task.status.state in until:
            return task
        await asyncio.sleep(0.1)
        task = await client.get_task(GetTaskRequest(id=task.id))
    raise AssertionError(f"the task did not reach {until}: {task}")


def test_allowed_messages_run_and_others_are_rejected_tasks(a2a_service, invoice_agent):
    orchestrator = session_client_config(token(a2a_service, "orchestrator"), streaming=False)
    task = asyncio.run(send(invoice_agent, orchestrator, "summarize", "Q3"))
    assert task.status.state == TaskState.TASK_STATE_COMPLETED and get_message_text(task.status.message) == "done: Q3"

    # Another skill, another caller, no caller at all: rejected, with the reason; never run.
    task = asyncio.run(send(invoice_agent, session_client_config(token(a2a_service, "orchestrator"), streaming=False),
                            "delete", "inv-7"))
    assert task.status.state == TaskState.TASK_STATE_REJECTED
    assert "deny by default" in get_message_text(task.status.message)
    assert task.status.message.metadata["ztinfra"]["decision"] == "deny"
    intruder = session_client_config(token(a2a_service, "intruder"), streaming=False)
    task = asyncio.run(send(invoice_agent, intruder, "summarize", "Q3"))
    assert task.status.state == TaskState.TASK_STATE_REJECTED
    anonymous = ClientConfig(httpx_client=httpx.AsyncClient(), streaming=False)
    task = asyncio.run(send(invoice_agent, anonymous, "summarize", "Q3"))
    assert task.status.state == TaskState.TASK_STATE_REJECTED and "no ZT-Infra session token" in get_message_text(task.status.message)
    assert example.InvoiceAgent.ran == ["Q3"]
    # The decisions name the verified callers, not anything the message said.
    assert a2a_service.decided() == ["a2a.invoice-agent.summarize", "a2a.invoice-agent.delete",
                                     "a2a.invoice-agent.summarize"]


def test_a_message_that_needs_approval_waits_auth_required_and_runs_or_not_as_approvers_answer(a2a_service, invoice_agent):
    config = session_client_config(token(a2a_service, "orchestrator"), streaming=False)
    waiting = (TaskState.TASK_STATE_AUTH_REQUIRED,)

    async def run():
        client = await create_client(invoice_agent, client_config=config)
        first = await send(invoice_agent, config, "refund", "inv-7", until=waiting)
        assert example.InvoiceAgent.ran == []
        a2a_service.answer(first.status.message.metadata["ztinfra"]["approval_id"])
        done = await poll(client, first)
        second = await send(invoice_agent, config, "refund", "inv-8", until=waiting)
        a2a_service.answer(second.status.message.metadata["ztinfra"]["approval_id"], "deny", "not this one")
        denied = await poll(client, second)
        await client.close()
        return first, done, denied

    first, done, denied = asyncio.run(run())
    assert "needs the approval of 1 of group `finance`" in get_message_text(first.status.message)
    assert done.status.state == TaskState.TASK_STATE_COMPLETED and get_message_text(done.status.message) == "done: inv-7"
    assert denied.status.state == TaskState.TASK_STATE_REJECTED and "is denied" in get_message_text(denied.status.message)
    assert example.InvoiceAgent.ran == ["inv-7"]


def test_without_a_decision_no_message_runs(a2a_service):
    example.InvoiceAgent.ran.clear()
    url, server = example.serve(closed_port_url())
    try:
        config = session_client_config(token(a2a_service, "orchestrator"), streaming=False)
        task = asyncio.run(send(url, config, "summarize", "Q3"))
    finally:
        server.should_exit = True
    assert task.status.state == TaskState.TASK_STATE_REJECTED
    assert "no decision could be had" in get_message_text(task.status.message) and example.InvoiceAgent.ran == []


def test_the_example_runs_as_the_readme_says(a2a_service):
    before, waiting, out = walk_through(a2a_service, "a2a", "refund agreed")
    assert before == ["summarize: completed: done: invoices of ACME in Q3\n"]
    assert waiting.startswith("waiting: refund needs approval ") and waiting.rstrip().endswith("(group finance)")
    assert "refund: completed: done: refund invoice inv-7" in out
    assert "delete: rejected: `delete` was not run: denied by policy" in out
    assert out.rstrip().endswith("ran: ['invoices of ACME in Q3', 'refund invoice inv-7']")
