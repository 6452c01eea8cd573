"""What the service answers, typed. Parsing is strict where it matters: an answer that is not
one of the three outcomes, or an allow without its evidence receipt, never reads as allowed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("allow", "deny", "approval_required")


class ZtInfraError(Exception):
    """Anything that kept the client from getting an answer."""


class ProblemError(ZtInfraError):
    """The service refused the request (an RFC 9457 problem: bad input, no credential, ...)."""

    def __init__(self, status: int, problem: dict[str, Any]):
        self.status = status
        self.type = str(problem.get("type", "about:blank"))
        self.title = str(problem.get("title", ""))
        self.detail = str(problem.get("detail", ""))
        self.problem = problem
        super().__init__(f"{status} {self.title}: {self.detail}" if self.detail else f"{status} {self.title}")


class UnavailableError(ZtInfraError):
    """No answer: the service could not be reached, timed out, failed, or answered something
    that is not a decision."""


@dataclass(frozen=True)
class Reason:
    kind: str
    message: str
    policy: str | None = None
    approval: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, raw: Any) -> Reason:
        if not isinstance(raw, dict):
            raise UnavailableError(f"a reason is not an object: {raw!r}")
        return cls(kind=str(raw.get("kind", "")), message=str(raw.get("message", "")),
                   policy=raw.get("policy"), approval=raw.get("approval"), raw=raw)


@dataclass(frozen=True)
class Receipt:
    """Where a decision's record is in the evidence log."""

    log: str
    seq: int
    hash: str
    checkpoint_size: int

    @classmethod
    def parse(cls, raw: Any) -> Receipt | None:
        if not isinstance(raw, dict):
            return None
        try:
            return cls(log=str(raw["log"]), seq=int(raw["seq"]), hash=str(raw["hash"]),
                       checkpoint_size=int(raw["checkpoint_size"]))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class ApprovalTicket:
    """The approval a decision waits for."""

    id: str
    status: str
    group: str
    needed: int
    expires_at: int
    status_url: str

    @classmethod
    def parse(cls, raw: Any) -> ApprovalTicket | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
            return None
        return cls(id=raw["id"], status=str(raw.get("status", "")), group=str(raw.get("group", "")),
                   needed=int(raw.get("needed", 1)), expires_at=int(raw.get("expires_at", 0)),
                   status_url=str(raw.get("status_url", "")))


@dataclass(frozen=True)
class Decision:
    """One decision. `allowed` is true only for an allow that was put on the evidence log."""

    decision: str
    decision_id: str | None
    reasons: tuple[Reason, ...]
    policy_version: str | None = None
    approval: ApprovalTicket | None = None
    evidence: Receipt | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def allowed(self) -> bool:
        return self.decision == "allow" and self.evidence is not None

    @property
    def waiting(self) -> ApprovalTicket | None:
        """With `approval_required`: the approval the request waits for."""
        return self.approval if self.decision == "approval_required" else None

    @property
    def approval_id(self) -> str | None:
        return self.approval.id if self.approval else None

    @property
    def message(self) -> str:
        """The reasons' messages, for a person or a model to read."""
        return "; ".join(r.message for r in self.reasons if r.message) or self.decision

    @classmethod
    def parse(cls, raw: Any) -> Decision:
        if not isinstance(raw, dict) or raw.get("decision") not in OUTCOMES:
            raise UnavailableError(f"the answer is not a decision: {str(raw)[:200]}")
        reasons = raw.get("reasons") or []
        if not isinstance(reasons, list):
            raise UnavailableError("the decision's reasons are not a list")
        evidence = Receipt.parse(raw.get("evidence"))
        if raw["decision"] == "allow" and evidence is None:
            # The service allows only what it put on record: this did not come from it whole.
            raise UnavailableError("an allow without its evidence receipt")
        return cls(decision=raw["decision"], decision_id=raw.get("decision_id"),
                   reasons=tuple(Reason.parse(r) for r in reasons),
                   policy_version=raw.get("policy_version"),
                   approval=ApprovalTicket.parse(raw.get("approval")), evidence=evidence, raw=raw)

    @classmethod
    def parse_authzen(cls, raw: Any) -> Decision:
        """An AuthZEN answer (`{"decision": bool, "context": {...}}`) in the same shape."""
        if not isinstance(raw, dict) or not isinstance(raw.get("decision"), bool):
            raise UnavailableError(f"the answer is not an AuthZEN decision: {str(raw)[:200]}")
        context = raw.get("context") if isinstance(raw.get("context"), dict) else {}
        waits = ApprovalTicket.parse(context.get("approval")) is not None
        outcome = "allow" if raw["decision"] else ("approval_required" if waits else "deny")
        # Read with the same checks as the service's own answer.
        return dataclasses.replace(cls.parse({**context, "decision": outcome}), raw=raw)

    @classmethod
    def unavailable(cls, cause: str) -> Decision:
        """The deny an enforcement point applies when it could not get a decision."""
        return cls(decision="deny", decision_id=None,
                   reasons=(Reason(kind="unavailable", message=f"no decision could be had ({cause}): denied"),))


@dataclass(frozen=True)
class Session:
    """An agent session the service started: its token is the agent's credential."""

    session_id: str
    spiffe_id: str
    access_token: str = field(repr=False)
    expires_in: int
    evidence: Receipt | None = None

    @classmethod
    def parse(cls, raw: Any) -> Session:
        try:
            return cls(session_id=raw["session_id"], spiffe_id=raw["spiffe_id"],
                       access_token=raw["access_token"], expires_in=int(raw["expires_in"]),
                       evidence=Receipt.parse(raw.get("evidence")))
        except (KeyError, TypeError, ValueError) as e:
            raise UnavailableError(f"the answer is not a session: {e}") from None


@dataclass(frozen=True)
class Approval:
    """An approval as its readers see it (`GET /v1/approvals/{id}`)."""

    id: str
    status: str
    actor: str
    request: dict[str, Any]
    answers: tuple[dict[str, Any], ...]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def reason(self) -> str:
        """The last answer's reason (why it was approved or denied), or empty."""
        return str(self.answers[-1].get("reason", "")) if self.answers else ""

    @classmethod
    def parse(cls, raw: Any) -> Approval:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not isinstance(raw.get("status"), str):
            raise UnavailableError(f"the answer is not an approval: {str(raw)[:200]}")
        return cls(id=raw["id"], status=raw["status"], actor=str(raw.get("actor", "")),
                   request=raw.get("request") or {}, answers=tuple(raw.get("answers") or ()), raw=raw)
