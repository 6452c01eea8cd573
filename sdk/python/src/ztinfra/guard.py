"""What every framework adapter does with a tool call, once: name it as a decision request,
decide it, and fail closed.

A tool call `<tool>(args)` is the request

    action   "<namespace>.<tool>"
    resource the argument named by `resource` (or what a function of the call returns), and
             `tool/<tool>` when there is none
    context  {"tool": {"name": "<tool>", "arguments_sha256": "<hex>"}, ...static context}

The arguments' digest (SHA-256 of their canonical JSON) binds an approval to the exact call: a
changed argument is another request. The arguments themselves are not sent (they may hold
what the evidence log should not); a `context` function can add what policies need.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from ._client import AsyncClient, Client
from ._model import Decision, ZtInfraError

Resource = str | Callable[[str, Mapping[str, Any]], str | None] | None
Context = Mapping[str, Any] | Callable[[str, Mapping[str, Any]], Mapping[str, Any]] | None


def arguments_digest(args: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the arguments' canonical JSON (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ToolGuard:
    """Decides tool calls for one agent (the client's session token) and never raises: a call
    that could not be decided is denied (`reasons[0].kind == "unavailable"`).

    `check` is for sync code (with `client`), `acheck` for async code (with `aclient`)."""

    def __init__(self, client: Client | None = None, *, aclient: AsyncClient | None = None,
                 namespace: str, resource: Resource = None, context: Context = None):
        if client is None and aclient is None:
            raise ValueError("a ToolGuard needs a Client or an AsyncClient")
        if not namespace or any(c.isspace() for c in namespace):
            raise ValueError(f"a namespace is a word such as `crm` or `db`, not {namespace!r}")
        self.client, self.aclient = client, aclient
        self.namespace = namespace
        self._resource, self._context = resource, context

    def request(self, tool: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """The decision request for a call of `tool` with `args`."""
        if isinstance(self._resource, str):
            value = args.get(self._resource)
            resource = None if value is None else str(value)
        elif callable(self._resource):
            resource = self._resource(tool, args)
        else:
            resource = None
        if resource is None:
            resource = f"tool/{tool}"
        extra = self._context(tool, args) if callable(self._context) else (self._context or {})
        context = {**extra, "tool": {"name": tool, "arguments_sha256": arguments_digest(args)}}
        return {"action": f"{self.namespace}.{tool}", "resource": resource, "context": context}

    def check(self, tool: str, args: Mapping[str, Any], *, approval: str | None = None,
              present_approved: bool = True) -> Decision:
        """Decides the call. When the answer is `approval_required` and the approval it names is
        approved already (asked before, answered since), it is presented at once, unless
        `present_approved` is false."""
        if self.client is None:
            raise TypeError("this ToolGuard was made for async code: use acheck")
        try:
            request = self.request(tool, args)
            decision = self.client.decide(**request, approval=approval)
            if present_approved and approval is None and _approved(decision):
                decision = self.client.decide(**request, approval=decision.approval_id)
            return decision
        except (ZtInfraError, ValueError, TypeError) as e:
            return Decision.unavailable(str(e))

    async def acheck(self, tool: str, args: Mapping[str, Any], *, approval: str | None = None,
                     present_approved: bool = True) -> Decision:
        if self.aclient is None:
            raise TypeError("this ToolGuard was made for sync code: use check")
        try:
            request = self.request(tool, args)
            decision = await self.aclient.decide(**request, approval=approval)
            if present_approved and approval is None and _approved(decision):
                decision = await self.aclient.decide(**request, approval=decision.approval_id)
            return decision
        except (ZtInfraError, ValueError, TypeError) as e:
            return Decision.unavailable(str(e))


def _approved(decision: Decision) -> bool:
    return decision.waiting is not None and decision.waiting.status == "approved"


def refusal(decision: Decision, tool: str) -> str:
    """What a model reads when a call did not run: the outcome, its reasons and where to look."""
    if decision.waiting is not None:
        ticket = decision.approval
        return (f"`{tool}` was not run: it needs the approval of {ticket.needed} of group "
                f"`{ticket.group}` (approval {ticket.id}, {ticket.status}). {decision.message}")
    if decision.decision_id is None:
        return f"`{tool}` was not run: {decision.message}"
    return f"`{tool}` was not run: denied by policy (decision {decision.decision_id}): {decision.message}"
