"""Two A2A agents, the protected one behind ZT-Infra (README, "A2A").

`invoice-agent` is an A2A server (JSON-RPC, on a loopback port) whose executor is wrapped by
`GuardedAgentExecutor`; `orchestrator` is an A2A client that presents its ZT-Infra session
token. The orchestrator asks for a summary (allowed), a refund (the task is auth-required until
finance approves, then runs), and a deletion (rejected). Offline: no model, no network but
loopback.

    ZT_URL=http://127.0.0.1:8181 ZT_BROKER_TOKEN=... python agent.py
"""

import asyncio
import os
import socket
import sys
import threading
import uuid

import uvicorn
from a2a.client import create_client
from a2a.helpers.proto_helpers import get_message_text, new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.request_handlers import DefaultRequestHandlerV2
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities, AgentCard, AgentInterface, AgentSkill, GetTaskRequest, HTTPAuthSecurityScheme,
    Message, Part, Role, SecurityRequirement, SecurityScheme, SendMessageConfiguration, SendMessageRequest,
    StringList, TaskState,
)
from starlette.applications import Starlette

from ztinfra import Client
from ztinfra.a2a import GuardedAgentExecutor, session_client_config


class InvoiceAgent(AgentExecutor):
    """The protected agent's own work (here: an answer per skill)."""

    ran: list[str] = []

    async def execute(self, context: RequestContext, event_queue) -> None:
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        text = get_message_text(context.message)
        self.ran.append(text)
        await updater.complete(new_text_message(f"done: {text}", context_id=context.context_id,
                                                task_id=context.task_id))

    async def cancel(self, context: RequestContext, event_queue) -> None:
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


def card(url: str) -> AgentCard:
    skills = [AgentSkill(id=s, name=s, description=f"{s} invoices", tags=["invoices"]) for s in ("summarize", "refund")]
    return AgentCard(
        name="invoice-agent", description="Summarizes and refunds invoices", version="1.0.0",
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=False), default_input_modes=["text/plain"],
        default_output_modes=["text/plain"], skills=skills,
        # Callers authenticate with their ZT-Infra session token.
        security_schemes={"ztinfra": SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(
            scheme="bearer", bearer_format="JWT", description="a ZT-Infra agent session token"))},
        security_requirements=[SecurityRequirement(schemes={"ztinfra": StringList(list=[])})],
    )


def serve(zt_url: str) -> tuple[str, uvicorn.Server]:
    """The protected agent on a loopback port of the system's choosing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    agent_card = card(url)
    executor = GuardedAgentExecutor(InvoiceAgent(), zt_url, agent="invoice-agent")
    handler = DefaultRequestHandlerV2(executor, InMemoryTaskStore(), agent_card)
    app = Starlette(routes=[*create_agent_card_routes(agent_card), *create_jsonrpc_routes(handler, "/")])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        threading.Event().wait(0.05)
    return url, server


def ask(skill: str, text: str) -> SendMessageRequest:
    message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=text)])
    message.metadata.update({"skill": skill})
    # Answer at once, even when the task waits (for an approval): the caller polls it.
    return SendMessageRequest(message=message, configuration=SendMessageConfiguration(return_immediately=True))


async def orchestrate(url: str, token: str) -> None:
    client = await create_client(url, client_config=session_client_config(token, streaming=False))
    for skill, text in (("summarize", "invoices of ACME in Q3"), ("refund", "refund invoice inv-7"),
                        ("delete", "delete invoice inv-7")):
        task = None
        async for response in client.send_message(ask(skill, text)):
            task = response.task if response.HasField("task") else task
        while task.status.state in (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING,
                                    TaskState.TASK_STATE_AUTH_REQUIRED):
            if task.status.state == TaskState.TASK_STATE_AUTH_REQUIRED:
                about = dict(task.status.message.metadata["ztinfra"])
                print(f"waiting: {skill} needs approval {about['approval_id']} (group {about['group']})", flush=True)
                while task.status.state == TaskState.TASK_STATE_AUTH_REQUIRED:
                    await asyncio.sleep(0.5)
                    task = await client.get_task(GetTaskRequest(id=task.id))
            else:
                await asyncio.sleep(0.2)
                task = await client.get_task(GetTaskRequest(id=task.id))
        state = TaskState.Name(task.status.state).removeprefix("TASK_STATE_").lower()
        print(f"{skill}: {state}: {get_message_text(task.status.message)}", flush=True)
    await client.close()


def main() -> int:
    zt_url, broker = os.environ["ZT_URL"], os.environ["ZT_BROKER_TOKEN"]
    url, server = serve(zt_url)
    session = Client(zt_url, broker).start_session("orchestrator", on_behalf_of="dana", workflow="month-end")
    asyncio.run(orchestrate(url, session.access_token))
    print(f"ran: {InvoiceAgent.ran}")
    server.should_exit = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
