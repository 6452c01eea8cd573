"""LangGraph: a decision before every tool call of a `ToolNode`.

    from ztinfra import Client, ToolGuard
    from ztinfra.langgraph import guarded_tool_node

    guard = ToolGuard(Client(URL, session.access_token), namespace="crm", resource="invoice_id")
    tools = guarded_tool_node([read_invoice, delete_invoice], guard)   # a ToolNode

- allow: the tool runs.
- deny (or no decision): the tool does not run; the model gets a `ToolMessage` with
  `status="error"` and the reasons, and the graph goes on.
- approval_required: the node calls `interrupt(...)` with the request shape of LangChain's
  human-in-the-loop middleware (`action_requests`, `review_configs`) and a `ztinfra` member that
  holds the approval's id. Approvers answer it in ZT-Infra (console, CLI or API). Resuming with
  `Command(resume={"decisions": [{"type": "approve"}]})` decides the call again with the approval
  (the service allows it once, if approvers approved); `{"type": "reject", "message": ...}`
  leaves it unrun. The resume value cannot approve anything by itself.

One interrupt per tool node run: when a model asks for several calls at once, each that needs an
approval interrupts in turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import ToolMessage
from langgraph.prebuilt import ToolNode
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import interrupt

from ._model import Decision
from .guard import ToolGuard, refusal


class ToolCallGuard:
    """A `wrap_tool_call` (sync) and `awrap_tool_call` (async: `.awrap`) for `ToolNode`."""

    def __init__(self, guard: ToolGuard):
        self.guard = guard

    def __call__(self, request: ToolCallRequest, execute):
        call = request.tool_call
        name, args = call["name"], call.get("args") or {}
        if self.guard.client is None:
            # Never run unguarded: a sync run of a graph whose guard can only decide in async code.
            cause = "the guard has an async client only: run the graph with ainvoke or astream"
            return _message(call, f"`{name}` was not run: {cause}", Decision.unavailable(cause))
        decision = self.guard.check(name, args, present_approved=False)
        if decision.waiting is not None:
            answer = interrupt(review_request(name, args, decision, self.guard))
            rejected = rejection(answer)
            if rejected is not None:
                return _message(call, f"`{name}` was not run: the reviewer rejected it: {rejected}", decision)
            decision = self.guard.check(name, args, approval=decision.approval_id)
        if decision.allowed:
            return execute(request)
        return _message(call, refusal(decision, name), decision)

    async def awrap(self, request: ToolCallRequest, execute):
        call = request.tool_call
        name, args = call["name"], call.get("args") or {}
        decision = await self._acheck(name, args, present_approved=False)
        if decision.waiting is not None:
            answer = interrupt(review_request(name, args, decision, self.guard))
            rejected = rejection(answer)
            if rejected is not None:
                return _message(call, f"`{name}` was not run: the reviewer rejected it: {rejected}", decision)
            decision = await self._acheck(name, args, approval=decision.approval_id)
        if decision.allowed:
            return await execute(request)
        return _message(call, refusal(decision, name), decision)

    async def _acheck(self, name: str, args: dict[str, Any], **options: Any) -> Decision:
        if self.guard.aclient is not None:
            return await self.guard.acheck(name, args, **options)
        return await asyncio.to_thread(self.guard.check, name, args, **options)


def guarded_tool_node(tools: Sequence[Any], guard: ToolGuard, **kwargs: Any) -> ToolNode:
    """A `ToolNode` whose every call is decided first, whether the graph runs sync or async (a
    ToolNode without a wrapper for the way it runs would run tools unguarded)."""
    if "wrap_tool_call" in kwargs or "awrap_tool_call" in kwargs:
        raise ValueError("guarded_tool_node sets wrap_tool_call and awrap_tool_call itself")
    wrapper = ToolCallGuard(guard)
    return ToolNode(tools, wrap_tool_call=wrapper, awrap_tool_call=wrapper.awrap, **kwargs)


def review_request(tool: str, args: dict[str, Any], decision: Decision, guard: ToolGuard) -> dict[str, Any]:
    """The interrupt's value: the human-in-the-loop middleware's request, and the approval."""
    ticket = decision.approval
    assert ticket is not None
    request = guard.request(tool, args)
    return {
        "action_requests": [{"name": tool, "args": args, "description": refusal(decision, tool)}],
        "review_configs": [{"action_name": tool, "allowed_decisions": ["approve", "reject"]}],
        "ztinfra": {
            "approval_id": ticket.id, "status": ticket.status, "group": ticket.group,
            "needed": ticket.needed, "expires_at": ticket.expires_at, "status_url": ticket.status_url,
            "decision_id": decision.decision_id, "action": request["action"], "resource": request["resource"],
        },
    }


def rejection(answer: Any) -> str | None:
    """None when the resume value says go on; otherwise why not. Anything not understood is a
    rejection."""
    if isinstance(answer, dict) and isinstance(answer.get("decisions"), list) and len(answer["decisions"]) == 1:
        answer = answer["decisions"][0]
    if answer is True or answer == "approve" or (isinstance(answer, dict) and answer.get("type") == "approve"):
        return None
    if isinstance(answer, dict) and answer.get("type") == "reject":
        return str(answer.get("message") or "no reason given")
    if answer is False or answer == "reject":
        return "no reason given"
    return f"the resume value was not understood ({str(answer)[:100]}), so the call stays unrun"


def _message(call: dict[str, Any], text: str, decision: Decision) -> ToolMessage:
    return ToolMessage(
        content=text, tool_call_id=call["id"], name=call["name"], status="error",
        artifact={"ztinfra": {"decision": decision.decision, "decision_id": decision.decision_id,
                              "approval_id": decision.approval_id}},
    )
