"""ZT-Infra for Python: the decision service's client, and adapters that put a decision before
every tool call in LangGraph (`ztinfra.langgraph`), the OpenAI Agents SDK
(`ztinfra.openai_agents`) and A2A (`ztinfra.a2a`). Every path fails closed: what could not be
decided is denied."""

from ._client import AsyncClient, Client
from ._model import (
    Approval,
    ApprovalTicket,
    Decision,
    ProblemError,
    Reason,
    Receipt,
    Session,
    UnavailableError,
    ZtInfraError,
)
from .guard import ToolGuard, arguments_digest

__all__ = [
    "Approval", "ApprovalTicket", "AsyncClient", "Client", "Decision", "ProblemError", "Reason",
    "Receipt", "Session", "ToolGuard", "UnavailableError", "ZtInfraError", "arguments_digest",
]
