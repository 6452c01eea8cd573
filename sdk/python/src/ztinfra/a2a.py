"""A2A (`a2a-sdk`): every incoming message decided for the calling agent before the protected
agent runs it.

    from ztinfra.a2a import GuardedAgentExecutor, session_client_config

    executor = GuardedAgentExecutor(MyExecutor(), "http://127.0.0.1:8181", agent="invoice-agent")
    handler = DefaultRequestHandlerV2(executor, InMemoryTaskStore(), card)   # as usual

- Who calls: the caller presents its ZT-Infra session token as its A2A credential (HTTP
  `Authorization: Bearer`, the agent card's bearer security scheme). The decision is asked with
  that token, so the actor is the caller's verified agent, never a name in the message. No
  token: the task is rejected.
- The request: action `a2a.<agent>.<skill>` (the skill from the message's `metadata.skill`,
  else `message`) on the resource `agent/<agent>`, with the SHA-256 of the message's parts in
  `context.tool.arguments_sha256`.
- allow: the wrapped executor runs. deny (or no decision): the task is `TASK_STATE_REJECTED`,
  with the reasons in its status message. approval_required: the task is
  `TASK_STATE_AUTH_REQUIRED` (out of band: the status message and its `metadata.ztinfra` name
  the approval), the executor waits for approvers, and the task runs once they approve or is
  rejected when they deny or it expires.

`session_client_config(token)` is the client side: an A2A `ClientConfig` whose HTTP client
presents the session token.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from a2a.client import ClientConfig
from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events.event_queue_v2 import EventQueue
from a2a.server.tasks import TaskUpdater
from a2a.types.a2a_pb2 import Message, Role, TaskState
from google.protobuf.json_format import MessageToDict

from ._client import AsyncClient
from ._model import Decision, Reason, ZtInfraError
from .guard import ToolGuard, refusal


class GuardedAgentExecutor(AgentExecutor):
    def __init__(self, inner: AgentExecutor, service_url: str, *, agent: str, namespace: str = "a2a",
                 approval_timeout: float = 900.0, timeout: float = 5.0):
        if not agent or "." in agent or any(c.isspace() for c in agent):
            raise ValueError(f"the protected agent's name is a word such as `invoice-agent`, not {agent!r}")
        self.inner = inner
        self.service_url = service_url
        self.agent = agent
        self.namespace = f"{namespace}.{agent}"
        self.approval_timeout = approval_timeout
        self.timeout = timeout

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        message = context.message
        if context.current_task is None and message is not None:
            await event_queue.enqueue_event(new_task_from_user_message(message))
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        token = _bearer(context.call_context.state.get("headers") or {})
        if token is None:
            await updater.reject(self._say(context, "not run: the caller presented no ZT-Infra session token "
                                                    "(Authorization: Bearer)"))
            return
        client = AsyncClient(self.service_url, token, timeout=self.timeout)
        try:
            guard = ToolGuard(aclient=client, namespace=self.namespace, resource=lambda *_: f"agent/{self.agent}")
            skill, args = _call(message)
            decision = await guard.acheck(skill, args, present_approved=False)
            if decision.waiting is not None:
                decision = await self._wait_for_approval(context, updater, guard, client, skill, args, decision)
            if decision.allowed:
                await self.inner.execute(context, event_queue)
            else:
                await updater.reject(self._say(context, refusal(decision, skill), decision))
        finally:
            await client.aclose()

    async def _wait_for_approval(self, context, updater, guard, client, skill, args, decision: Decision) -> Decision:
        ticket = decision.approval
        await updater.update_status(TaskState.TASK_STATE_AUTH_REQUIRED, self._say(context, refusal(decision, skill), decision),
                                    metadata={"ztinfra": _about(decision)})
        deadline = time.monotonic() + self.approval_timeout
        status = ticket.status
        while status == "pending" and time.monotonic() < deadline:
            try:
                status = (await client.approval(ticket.id, wait=min(30.0, max(1.0, deadline - time.monotonic())))).status
            except ZtInfraError:
                await asyncio.sleep(1.0)  # not known: ask again until the deadline
        if status != "approved":
            return Decision(decision="deny", decision_id=decision.decision_id, reasons=(
                Reason(kind="approval", message=f"approval {ticket.id} is {status}: the task is not run"),))
        await updater.start_work()
        return await guard.acheck(skill, args, approval=ticket.id)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        await self.inner.cancel(context, event_queue)

    def _say(self, context: RequestContext, text: str, decision: Decision | None = None) -> Message:
        message = new_text_message(text, context_id=context.context_id, task_id=context.task_id, role=Role.ROLE_AGENT)
        if decision is not None:
            message.metadata.update({"ztinfra": _about(decision)})
        return message


def session_client_config(token: str, *, timeout: float = 30.0, **config: Any) -> ClientConfig:
    """An A2A `ClientConfig` whose requests present the agent's ZT-Infra session token."""
    http = httpx.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=timeout)
    return ClientConfig(httpx_client=http, **config)


def _bearer(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization") or headers.get("Authorization") or ""
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _call(message: Message | None) -> tuple[str, dict[str, Any]]:
    """The skill a message asks for, and what is digested of it (its parts)."""
    if message is None:
        return "message", {}
    as_dict = MessageToDict(message, preserving_proto_field_name=True)
    skill = str((as_dict.get("metadata") or {}).get("skill") or "message")
    return skill, {"parts": as_dict.get("parts", [])}


def _about(decision: Decision) -> dict[str, Any]:
    about: dict[str, Any] = {"decision": decision.decision, "decision_id": decision.decision_id or ""}
    if decision.approval is not None:
        about.update(approval_id=decision.approval.id, group=decision.approval.group,
                     status_url=decision.approval.status_url)
    return about

