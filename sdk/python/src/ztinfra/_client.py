"""The decision service's HTTP API, sync (`Client`) and async (`AsyncClient`).

Each operation is written once, as a `_Call` (what to send, which statuses answer it, how to read
the answer); the two clients only send calls. A call is retried only where that is safe: any
call when the connection could not be made (nothing was sent), and reads (GET) also after a
failure in flight or a 502/503/504. A decision request that may have reached the service is
never sent again: it would be a second decision, with a second record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._model import (
    Approval,
    Decision,
    ProblemError,
    Session,
    UnavailableError,
)

USER_AGENT = "ztinfra-python/0.1.0"
RETRY_STATUSES = (502, 503, 504)


@dataclass
class _Call:
    method: str
    path: str
    parse: Callable[[Any], Any]
    body: Any = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expect: tuple[int, ...] = (200,)
    # Extra seconds to wait for the answer beyond the client's timeout (a long poll).
    longer: float = 0.0

    @property
    def idempotent(self) -> bool:
        return self.method == "GET"


def _decision_body(action: str, resource: str, context: dict[str, Any] | None,
                   actor: str | None) -> dict[str, Any]:
    if not isinstance(action, str) or not action:
        raise ValueError("an action is a non-empty string")
    if not isinstance(resource, str):
        raise ValueError("a resource is a string")
    body: dict[str, Any] = {"action": action, "resource": resource}
    if context:
        body["context"] = context
    if actor is not None:
        body["actor"] = actor
    return body


def _decide(action, resource, context=None, *, actor=None, approval=None) -> _Call:
    headers = {"zt-approval": approval} if approval else {}
    return _Call("POST", "/v1/decide", Decision.parse,
                 body=_decision_body(action, resource, context, actor), headers=headers)


def _decide_batch(requests: list[dict[str, Any]]) -> _Call:
    def parse(raw: Any) -> list[Decision]:
        decisions = raw.get("decisions") if isinstance(raw, dict) else None
        if not isinstance(decisions, list) or len(decisions) != len(requests):
            raise UnavailableError("the batch answer does not hold one decision per request")
        return [Decision.parse(d) for d in decisions]

    return _Call("POST", "/v1/decide/batch", parse, body={"requests": list(requests)})


def _evaluate(subject: dict[str, Any], action: dict[str, Any] | str, resource: dict[str, Any],
              context: dict[str, Any] | None = None) -> _Call:
    body: dict[str, Any] = {"subject": subject, "resource": resource,
                            "action": {"name": action} if isinstance(action, str) else action}
    if context:
        body["context"] = context
    return _Call("POST", "/access/v1/evaluation", Decision.parse_authzen, body=body)


def _start_session(agent: str, *, on_behalf_of=None, parent_session=None, ticket=None, ttl=None,
                   workflow=None, model=None, tool_manifest=None, sandbox=None) -> _Call:
    lineage = {k: v for k, v in (("workflow", workflow), ("model", model),
                                 ("tool_manifest", tool_manifest), ("sandbox", sandbox)) if v is not None}
    body: dict[str, Any] = {"agent": agent}
    for name, value in (("lineage", lineage or None), ("on_behalf_of", on_behalf_of),
                        ("parent_session", parent_session), ("ticket", ticket), ("ttl", ttl)):
        if value is not None:
            body[name] = value
    return _Call("POST", "/v1/sessions", Session.parse, body=body, expect=(201,))


def _approval(approval_id: str, wait: float | None = None) -> _Call:
    if not approval_id or "/" in approval_id:
        raise ValueError(f"not an approval id: {approval_id!r}")
    params = None
    longer = 0.0
    if wait:
        seconds = max(1, min(60, int(wait)))
        params, longer = {"wait": f"{seconds}s"}, float(seconds)
    return _Call("GET", f"/v1/approvals/{approval_id}", Approval.parse, params=params, longer=longer)


def _read(path: str) -> _Call:
    return _Call("GET", path, lambda raw: raw)


def _answer(call: _Call, response: httpx.Response) -> Any:
    """The parsed answer, or the error it is."""
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = None
    if response.status_code in call.expect:
        if body is None:
            raise UnavailableError(f"{call.method} {call.path}: {response.status_code} without a JSON body")
        return call.parse(body)
    if 400 <= response.status_code < 500:
        raise ProblemError(response.status_code, body if isinstance(body, dict) else {"title": response.reason_phrase})
    detail = body.get("detail", "") if isinstance(body, dict) else ""
    raise UnavailableError(f"{call.method} {call.path}: {response.status_code} {response.reason_phrase} {detail}".rstrip())


def _retryable(call: _Call, error: Exception | None, response: httpx.Response | None) -> bool:
    if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
        return True
    if not call.idempotent:
        return False
    return error is not None or (response is not None and response.status_code in RETRY_STATUSES)


class _Base:
    def __init__(self, base_url: str, token: str | None, timeout: float, retries: int):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the service's URL must be http:// or https://, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = max(0, retries)

    def __repr__(self) -> str:  # never the token
        return f"{type(self).__name__}({self.base_url!r}, token={'set' if self.token else None})"

    def _request(self, call: _Call) -> dict[str, Any]:
        headers = {"user-agent": USER_AGENT, "accept": "application/json", **call.headers}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        return {"method": call.method, "url": self.base_url + call.path, "json": call.body,
                "params": call.params, "headers": headers,
                "timeout": httpx.Timeout(self.timeout + call.longer, connect=self.timeout)}

    def _backoff(self, attempt: int) -> float:
        return min(1.0, 0.05 * (2 ** attempt))

    @staticmethod
    def _failed(call: _Call, error: Exception) -> UnavailableError:
        return UnavailableError(f"{call.method} {call.path}: {type(error).__name__}: {error}")


class Client(_Base):
    """The decision API with one credential (a session token, an enforcement point's or a
    broker's). Methods raise `ProblemError` when the service refuses and `UnavailableError` when
    there is no answer; nothing returns an allow that the service did not give."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 5.0, retries: int = 2,
                 verify: Any = True, cert: Any = None, http: httpx.Client | None = None):
        super().__init__(base_url, token, timeout, retries)
        self._http = http or httpx.Client(verify=verify, cert=cert)

    def with_token(self, token: str) -> Client:
        """The same service and connections, another credential."""
        return Client(self.base_url, token, timeout=self.timeout, retries=self.retries, http=self._http)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def _send(self, call: _Call) -> Any:
        for attempt in range(self.retries + 1):
            error, response = None, None
            try:
                response = self._http.request(**self._request(call))
            except httpx.HTTPError as e:
                error = e
            if attempt < self.retries and _retryable(call, error, response):
                time.sleep(self._backoff(attempt))
                continue
            if error is not None:
                raise self._failed(call, error) from None
            return _answer(call, response)
        raise AssertionError("unreachable")

    def decide(self, action: str, resource: str, context: dict[str, Any] | None = None, *,
               actor: str | None = None, approval: str | None = None) -> Decision:
        """`POST /v1/decide`. With a session token the actor is the session's agent; `approval`
        presents an approved approval (`ZT-Approval`)."""
        return self._send(_decide(action, resource, context, actor=actor, approval=approval))

    def decide_batch(self, requests: list[dict[str, Any]]) -> list[Decision]:
        return self._send(_decide_batch(requests))

    def evaluate(self, subject: dict[str, Any], action: dict[str, Any] | str, resource: dict[str, Any],
                 context: dict[str, Any] | None = None) -> Decision:
        """An AuthZEN evaluation (`POST /access/v1/evaluation`)."""
        return self._send(_evaluate(subject, action, resource, context))

    def start_session(self, agent: str, **lineage: Any) -> Session:
        """`POST /v1/sessions` with a broker's credential, or a session's own for a child
        (`parent_session=`). Lineage: `on_behalf_of`, `workflow`, `model`, `tool_manifest`,
        `sandbox`, `ticket`, `ttl`."""
        return self._send(_start_session(agent, **lineage))

    def approval(self, approval_id: str, *, wait: float | None = None) -> Approval:
        """`GET /v1/approvals/{id}`; `wait` (seconds, at most 60) waits for an answer."""
        return self._send(_approval(approval_id, wait))

    def get(self, path: str) -> Any:
        """Any JSON resource of the API (for example `/v1/evidence/12`)."""
        return self._send(_read(path))


class AsyncClient(_Base):
    """`Client`, with `await`."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 5.0, retries: int = 2,
                 verify: Any = True, cert: Any = None, http: httpx.AsyncClient | None = None):
        super().__init__(base_url, token, timeout, retries)
        self._http = http or httpx.AsyncClient(verify=verify, cert=cert)

    def with_token(self, token: str) -> AsyncClient:
        return AsyncClient(self.base_url, token, timeout=self.timeout, retries=self.retries, http=self._http)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.aclose()

    async def _send(self, call: _Call) -> Any:
        for attempt in range(self.retries + 1):
            error, response = None, None
            try:
                response = await self._http.request(**self._request(call))
            except httpx.HTTPError as e:
                error = e
            if attempt < self.retries and _retryable(call, error, response):
                await asyncio.sleep(self._backoff(attempt))
                continue
            if error is not None:
                raise self._failed(call, error) from None
            return _answer(call, response)
        raise AssertionError("unreachable")

    async def decide(self, action: str, resource: str, context: dict[str, Any] | None = None, *,
                     actor: str | None = None, approval: str | None = None) -> Decision:
        return await self._send(_decide(action, resource, context, actor=actor, approval=approval))

    async def decide_batch(self, requests: list[dict[str, Any]]) -> list[Decision]:
        return await self._send(_decide_batch(requests))

    async def evaluate(self, subject: dict[str, Any], action: dict[str, Any] | str, resource: dict[str, Any],
                       context: dict[str, Any] | None = None) -> Decision:
        return await self._send(_evaluate(subject, action, resource, context))

    async def start_session(self, agent: str, **lineage: Any) -> Session:
        return await self._send(_start_session(agent, **lineage))

    async def approval(self, approval_id: str, *, wait: float | None = None) -> Approval:
        return await self._send(_approval(approval_id, wait))

    async def get(self, path: str) -> Any:
        return await self._send(_read(path))
