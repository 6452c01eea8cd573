"""The OpenAI Agents SDK: a decision before every function tool call, approvals as the SDK's own
interruptions, and hosted MCP approval requests answered by policy.

    from ztinfra import AsyncClient, ToolGuard
    from ztinfra.openai_agents import AgentsGuard

    zt = AgentsGuard(ToolGuard(aclient=AsyncClient(URL, session.access_token), namespace="db",
                               resource="table"))
    agent = Agent(name="ops", tools=zt.protect([drop_table, list_tables]), ...)

    result = await Runner.run(agent, "...")
    while result.interruptions:                 # calls that wait for a ZT-Infra approval
        state = await zt.settle(result, wait=30)  # approve/reject as the approvers answered
        result = await Runner.run(agent, state)

- `needs_approval` (set on each protected tool) decides the call: `approval_required` makes it a
  `ToolApprovalItem` in `result.interruptions`; any other answer is kept for the guardrail.
- The tool input guardrail (also set) lets an allowed call run and rejects every other with
  the reasons (`reject_content`: the model reads them and the run goes on). A call approved with
  `state.approve(...)` is decided again with its ZT-Infra approval: approving in the SDK alone
  does not make it run, the approvers of the policy's group do.
- `settle` reads each interruption's approval and maps its outcome: approved -> `state.approve`,
  denied or expired -> `state.reject` with the approvers' reason; still pending stays
  interrupted.
- `on_mcp_approval_request` is the `on_approval_request` of a `HostedMCPTool`: the call
  (`<namespace>.<server_label>.<tool>`) is approved only when policy allows it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from agents import (
    FunctionTool,
    MCPToolApprovalFunctionResult,
    MCPToolApprovalRequest,
    RunContextWrapper,
    RunState,
    ToolApprovalItem,
    ToolGuardrailFunctionOutput,
    ToolInputGuardrailData,
    tool_input_guardrail,
)

from ._model import ApprovalTicket, Decision, ZtInfraError
from .guard import ToolGuard, arguments_digest, refusal

# Decisions made by `needs_approval` and not yet taken by the guardrail (a run that stops
# between the two leaves them): the oldest are dropped beyond this many, and a decision older
# than DECIDED_FOR_SECS is not applied (the call is decided again).
PENDING_LIMIT = 1024
DECIDED_FOR_SECS = 60.0


class AgentsGuard:
    def __init__(self, guard: ToolGuard):
        if guard.aclient is None:
            raise ValueError("the Agents SDK runs tools in async code: give the ToolGuard an AsyncClient")
        self.guard = guard
        # call id -> (arguments digest, when, the decision needs_approval made for it)
        self._decided: OrderedDict[str, tuple[str, float, Decision]] = OrderedDict()
        # call id -> the approval the call waits for
        self._asked: OrderedDict[str, ApprovalTicket] = OrderedDict()
        self.input_guardrail = tool_input_guardrail(name="ztinfra")(self._guardrail)

    def protect(self, tools: Sequence[FunctionTool]) -> list[FunctionTool]:
        """Copies of the tools with this guard's `needs_approval` and input guardrail."""
        protected = []
        for tool in tools:
            if not isinstance(tool, FunctionTool):
                raise TypeError(f"only function tools can be protected here, not {type(tool).__name__}")
            guardrails = [*(tool.tool_input_guardrails or []), self.input_guardrail]
            protected.append(dataclasses.replace(
                tool, needs_approval=self._needs_approval_for(tool.name), tool_input_guardrails=guardrails))
        return protected

    def _needs_approval_for(self, name: str):
        async def needs_approval(_ctx: RunContextWrapper[Any], params: dict[str, Any], call_id: str) -> bool:
            decision = await self.guard.acheck(name, params, present_approved=False)
            if decision.waiting is not None:
                _remember(self._asked, call_id, decision.approval)
                return True
            _remember(self._decided, call_id, (arguments_digest(params), time.monotonic(), decision))
            return False

        return needs_approval

    async def _guardrail(self, data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
        ctx = data.context
        args = _arguments(ctx.tool_arguments)
        if isinstance(args, str):
            return ToolGuardrailFunctionOutput.reject_content(f"`{ctx.tool_name}` was not run: {args}")
        decided = self._decided.pop(ctx.tool_call_id, None)
        ticket = self._asked.pop(ctx.tool_call_id, None)
        if (decided is not None and decided[0] == arguments_digest(args)
                and time.monotonic() - decided[1] < DECIDED_FOR_SECS):
            decision = decided[2]
        elif ticket is not None:
            decision = await self.guard.acheck(ctx.tool_name, args, approval=ticket.id)
        else:
            # Not seen by needs_approval in this process (a state resumed elsewhere): decide now,
            # presenting an approval that approvers gave already.
            decision = await self.guard.acheck(ctx.tool_name, args)
        info = {"decision": decision.decision, "decision_id": decision.decision_id,
                "approval_id": decision.approval_id}
        if decision.allowed:
            return ToolGuardrailFunctionOutput.allow(output_info=info)
        return ToolGuardrailFunctionOutput.reject_content(refusal(decision, ctx.tool_name), output_info=info)

    def approval_of(self, item: ToolApprovalItem) -> ApprovalTicket | None:
        """The ZT-Infra approval an interruption waits for (None: not one of this guard's)."""
        raw = item.raw_item
        call_id = raw.get("call_id") if isinstance(raw, dict) else getattr(raw, "call_id", None)
        return self._asked.get(call_id) if isinstance(call_id, str) else None

    async def settle(self, result_or_state: Any, *, wait: float = 0) -> RunState:
        """The run's state with each interruption this guard made answered as its approvers
        answered (waiting up to `wait` seconds, at most 60, for each still pending)."""
        state = result_or_state if isinstance(result_or_state, RunState) else result_or_state.to_state()
        for item in state.get_interruptions():
            ticket = self.approval_of(item)
            if ticket is None:
                continue
            try:
                approval = await self.guard.aclient.approval(ticket.id, wait=wait or None)
            except ZtInfraError:
                continue  # unanswered as far as we know: it stays interrupted
            if approval.status == "approved":
                state.approve(item)
            elif approval.status in ("denied", "expired"):
                why = f": {approval.reason}" if approval.reason else ""
                state.reject(item, rejection_message=(
                    f"`{item.tool_name}` was not run: approval {approval.id} was {approval.status}{why}"))
        return state

    async def on_mcp_approval_request(self, request: MCPToolApprovalRequest) -> MCPToolApprovalFunctionResult:
        """For `HostedMCPTool(on_approval_request=...)`."""
        data = request.data
        args = _arguments(data.arguments)
        if isinstance(args, str):
            return {"approve": False, "reason": f"not run: {args}"}
        tool = f"{data.server_label}.{data.name}"
        decision = await self.guard.acheck(tool, args)
        if decision.allowed:
            return {"approve": True}
        return {"approve": False, "reason": refusal(decision, tool)}


def _arguments(text: str | None) -> dict[str, Any] | str:
    """A call's arguments (a JSON object), or why they are not."""
    try:
        args = json.loads(text or "{}")
    except ValueError as e:
        return f"the arguments are not JSON ({e})"
    return args if isinstance(args, dict) else "the arguments are not an object"


def _remember(table: OrderedDict, key: str, value: Any) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > PENDING_LIMIT:
        table.popitem(last=False)
